//! [`ShortStr`]: a string kept inline when it is short, for the short names a cluster record
//! repeats (each node action's and task's service; a node's hostname, hardware and image types,
//! flavor, image, SSH user, services and automators; the cluster's owner, tenant, types and
//! services). [`InlineStr`] is the same with another inline length: a node ID
//! ([`crate::NodeId`]) keeps its 36 bytes inline.
//!
//! A `String` of a few bytes costs a heap chunk of its own (32 bytes with glibc's malloc, and
//! an allocation to make and free on every decode); a one-machine cluster held 19 such
//! strings of 8 bytes or less, and its node 17 actions. Up to [`ShortStr::INLINE`] bytes are
//! kept in the value itself, 24 bytes in all, as a `String`; longer strings are on the heap. It
//! serializes as a string, so JSON does not change.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string of up to 22 bytes inline, 24 bytes in all (a `String`'s size).
pub type ShortStr = InlineStr<22>;

/// A string kept inline up to `N` bytes (`N` < 256), on the heap beyond. Compares, orders and
/// hashes as its text.
#[derive(Clone)]
pub struct InlineStr<const N: usize>(Repr<N>);

#[derive(Clone)]
enum Repr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> InlineStr<N> {
    /// The longest string kept inline, in bytes.
    pub const INLINE: usize = N;

    pub fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= N => {
                let mut bytes = [0; N];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                InlineStr(Repr::Inline { len, bytes })
            }
            _ => InlineStr(Repr::Heap(s.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Whole UTF-8 strings only are copied in (`new`), so this never fails.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }

    /// Whether the string is on the heap (longer than `N`).
    pub fn is_heap(&self) -> bool {
        matches!(self.0, Repr::Heap(_))
    }
}

impl<const N: usize> Default for InlineStr<N> {
    fn default() -> Self {
        Self::new("")
    }
}

impl<const N: usize> Deref for InlineStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for InlineStr<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> Borrow<str> for InlineStr<N> {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> From<&str> for InlineStr<N> {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl<const N: usize> From<String> for InlineStr<N> {
    fn from(s: String) -> Self {
        if s.len() <= Self::INLINE {
            Self::new(&s)
        } else {
            InlineStr(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl<const N: usize> PartialEq for InlineStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for InlineStr<N> {}

impl<const N: usize> PartialEq<str> for InlineStr<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for InlineStr<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> PartialEq<String> for InlineStr<N> {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<InlineStr<N>> for str {
    fn eq(&self, other: &InlineStr<N>) -> bool {
        self == other.as_str()
    }
}

impl<const N: usize> PartialEq<InlineStr<N>> for &str {
    fn eq(&self, other: &InlineStr<N>) -> bool {
        *self == other.as_str()
    }
}

impl<const N: usize> PartialEq<InlineStr<N>> for String {
    fn eq(&self, other: &InlineStr<N>) -> bool {
        self == other.as_str()
    }
}

impl<const N: usize> From<&String> for InlineStr<N> {
    fn from(s: &String) -> Self {
        Self::new(s)
    }
}

impl<const N: usize> From<InlineStr<N>> for String {
    fn from(s: InlineStr<N>) -> Self {
        match s.0 {
            Repr::Heap(b) => b.into_string(),
            Repr::Inline { .. } => s.as_str().to_string(),
        }
    }
}

impl<const N: usize> From<&InlineStr<N>> for String {
    fn from(s: &InlineStr<N>) -> Self {
        s.as_str().to_string()
    }
}

impl<const N: usize> PartialOrd for InlineStr<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for InlineStr<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl<const N: usize> Hash for InlineStr<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> Serialize for InlineStr<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for InlineStr<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Short<const M: usize>;
        impl<const M: usize> Visitor<'_> for Short<M> {
            type Value = InlineStr<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<InlineStr<M>, E> {
                Ok(InlineStr::new(s))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<InlineStr<M>, E> {
                Ok(InlineStr::from(s))
            }
        }
        deserializer.deserialize_str(Short::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_long_ones_on_the_heap_and_both_read_back() {
        assert_eq!(std::mem::size_of::<ShortStr>(), 24);
        for s in [
            "",
            "base",
            "é-ü-漢字",
            &"x".repeat(ShortStr::INLINE),
            &"y".repeat(ShortStr::INLINE + 1),
        ] {
            let short = ShortStr::from(s);
            assert_eq!(short.as_str(), s);
            assert_eq!(short.is_heap(), s.len() > ShortStr::INLINE, "{s}");
            assert_eq!(ShortStr::from(s.to_string()), short);
            let json = serde_json::to_string(&short).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            let back: ShortStr = serde_json::from_str(&json).unwrap();
            assert_eq!(back, short);
        }
        // An escaped string (decoded into a scratch buffer) and a non-string.
        let escaped: ShortStr = serde_json::from_str(r#""a\"b""#).unwrap();
        assert_eq!(escaped, "a\"b");
        assert!(serde_json::from_str::<ShortStr>("7").is_err());
        let (a, b) = (ShortStr::from("a"), ShortStr::from("b"));
        assert!(a < b);
        // Compared with and turned into strings both ways.
        let (str_a, string_a) = ("a", String::from("a"));
        assert_eq!(a, str_a);
        assert_eq!(str_a, a);
        assert_eq!(a, *str_a);
        assert_eq!(*str_a, a);
        assert_eq!(a, string_a);
        assert_eq!(string_a, a);
        assert_ne!(b, string_a);
        let long = ShortStr::from("z".repeat(ShortStr::INLINE + 1));
        assert_eq!(String::from(&a), "a");
        assert_eq!(String::from(long.clone()), long.as_str());
        assert_eq!(String::from(a), "a");
    }
}
