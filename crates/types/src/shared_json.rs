//! Decoding equal JSON values once: while a [`Memo`] is open on a thread, the fields that
//! [`deserialize`] decodes (a cluster's template and provider, a record's service
//! definitions) are decoded once per distinct JSON text, and equal texts give one shared
//! allocation.
//!
//! A snapshot part repeats each tenant's template and definitions in every cluster record:
//! about two fifths of decoding a one-machine cluster was parsing definitions that the state
//! then found equal to ones it held (`coopr-bench scale`). With a memo open, a repeated value
//! costs a scan of its text and a hash of it instead. Shared values must not be changed in
//! place (`Arc::make_mut` copies them), as for any value the state interns.
//!
//! Outside a memo, [`deserialize`] decodes as usual. Inside one, it reads the value's text
//! (`RawValue`), which only `serde_json`'s own deserializer gives: a memo is opened only around
//! `serde_json` decoding, and the fields that use it must not sit inside types that buffer
//! their content first (`#[serde(tag)]`, `untagged`, `flatten`): decoding those would fail
//! with an error while a memo is open.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Distinct texts a memo keeps; beyond, it starts again empty (a memo is for a run of
/// values that repeat, and its texts are held until it closes).
const MAX_ENTRIES: usize = 256;

thread_local! {
    static MEMO: RefCell<Option<Entries>> = const { RefCell::new(None) };
}

/// Decoded values by type and a hash of their text, with the text they were decoded from.
type Entries = HashMap<(TypeId, u64), Vec<(Box<RawValue>, Arc<dyn Any + Send + Sync>)>>;

/// A memo open on this thread until dropped (an outer one, if any, is put back then). It
/// cannot move to another thread (not `Send`), so a task cannot hold it across an `.await`.
pub struct Memo {
    outer: Option<Entries>,
    _thread: PhantomData<*const ()>,
}

impl Memo {
    pub fn open() -> Memo {
        let outer = MEMO.with(|m| m.borrow_mut().replace(Entries::new()));
        Memo {
            outer,
            _thread: PhantomData,
        }
    }
}

impl Drop for Memo {
    fn drop(&mut self) {
        let outer = self.outer.take();
        MEMO.with(|m| *m.borrow_mut() = outer);
    }
}

/// Decodes an `Arc<T>`, shared with every equal text decoded under the same open [`Memo`]
/// (`#[serde(deserialize_with = "coopr_types::shared_json::deserialize")]`).
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Arc<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Send + Sync + 'static,
{
    if !MEMO.with(|m| m.borrow().is_some()) {
        return T::deserialize(deserializer).map(Arc::new);
    }
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    let mut hasher = DefaultHasher::new();
    raw.get().hash(&mut hasher);
    let key = (TypeId::of::<T>(), hasher.finish());
    let found = MEMO.with(|m| {
        m.borrow().as_ref().and_then(|entries| {
            entries.get(&key)?.iter().find_map(|(text, value)| {
                (text.get() == raw.get())
                    .then(|| Arc::clone(value).downcast::<T>().ok())
                    .flatten()
            })
        })
    });
    if let Some(value) = found {
        return Ok(value);
    }
    let value: Arc<T> = Arc::new(serde_json::from_str(raw.get()).map_err(D::Error::custom)?);
    MEMO.with(|m| {
        if let Some(entries) = m.borrow_mut().as_mut() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            let shared: Arc<dyn Any + Send + Sync> = value.clone();
            entries.entry(key).or_default().push((raw, shared));
        }
    });
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "deserialize")]
        a: Arc<Vec<String>>,
        #[serde(deserialize_with = "deserialize")]
        b: Arc<Vec<String>>,
    }

    const SAME: &str = r#"{"a": ["x", "y\"z"], "b": ["x", "y\"z"]}"#;

    #[test]
    fn equal_texts_share_one_value_while_a_memo_is_open() {
        let apart: Holder = serde_json::from_str(SAME).unwrap();
        assert!(!Arc::ptr_eq(&apart.a, &apart.b));
        let (first, second) = {
            let _memo = Memo::open();
            let first: Holder = serde_json::from_str(SAME).unwrap();
            let second: Holder = serde_json::from_slice(SAME.as_bytes()).unwrap();
            (first, second)
        };
        assert_eq!(first, apart);
        assert!(Arc::ptr_eq(&first.a, &first.b) && Arc::ptr_eq(&first.a, &second.a));
        // Other texts are other values, and a closed memo shares nothing.
        let _memo = Memo::open();
        let other: Holder = serde_json::from_str(r#"{"a": ["x"], "b": ["x", "y\"z"]}"#).unwrap();
        assert_eq!(*other.a, ["x"]);
        assert!(!Arc::ptr_eq(&other.a, &other.b) && !Arc::ptr_eq(&other.b, &first.a));
        drop(_memo);
        let after: Holder = serde_json::from_str(SAME).unwrap();
        assert!(!Arc::ptr_eq(&after.a, &after.b));
        // A bad value inside is an error, not a panic.
        let _memo = Memo::open();
        assert!(serde_json::from_str::<Holder>(r#"{"a": [1], "b": []}"#).is_err());
    }

    #[test]
    fn a_memo_keeps_a_bounded_number_of_texts() {
        let _memo = Memo::open();
        for i in 0..(MAX_ENTRIES * 3) {
            let text = format!(r#"{{"a": ["{i}"], "b": ["{i}"]}}"#);
            let h: Holder = serde_json::from_str(&text).unwrap();
            assert!(Arc::ptr_eq(&h.a, &h.b));
        }
        let held = MEMO.with(|m| m.borrow().as_ref().map_or(0, HashMap::len));
        assert!(held <= MAX_ENTRIES, "{held}");
    }
}
