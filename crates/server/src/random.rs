//! Where a node's randomness comes from: the OS's cryptographically secure generator in
//! production, or a seed in a simulation (so that a seed replays the same ids and jitter).
//!
//! ```text
//!   tenant ids, generated keys and secrets ──► App::random ──► Random::Os        (getrandom)
//!   the pullers' backoff jitter            ──┘             └─► Random::seeded(n) (SplitMix64)
//! ```
//!
//! A seeded source makes predictable keys: it exists for simulations only, which is why
//! [`crate::StartOptions::production`] never uses one.

use std::sync::Mutex;

/// A node's source of random bytes (see the module doc).
#[derive(Debug)]
pub enum Random {
    Os,
    Seeded(Mutex<u64>),
}

impl Random {
    /// A deterministic source for a simulation.
    pub fn seeded(seed: u64) -> Random {
        Random::Seeded(Mutex::new(seed))
    }

    /// Fills `bytes`. From the OS: a machine that cannot provide random bytes cannot make keys,
    /// and that stops the process rather than weaken them.
    pub fn fill(&self, bytes: &mut [u8]) {
        match self {
            Random::Os => {
                getrandom::fill(bytes).expect("the OS random number generator is unavailable")
            }
            Random::Seeded(state) => {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                for chunk in bytes.chunks_mut(8) {
                    let word = split_mix(&mut state).to_le_bytes();
                    chunk.copy_from_slice(&word[..chunk.len()]);
                }
            }
        }
    }

    pub fn next_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A fresh id: a random (version 4) UUID.
    pub fn new_id(&self) -> String {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let h = hex(&bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// A fresh secret (API keys, cluster secrets): 128 bits, as 32 hex characters.
    pub fn new_secret(&self) -> String {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        hex(&bytes)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secrets are 32 hex characters (128 random bits), never the same twice; tenant ids are
    /// version 4 UUIDs.
    #[test]
    fn secrets_and_ids_are_random_and_well_formed() {
        let random = Random::Os;
        let secrets: std::collections::BTreeSet<String> =
            (0..1_000).map(|_| random.new_secret()).collect();
        assert_eq!(secrets.len(), 1_000);
        assert!(secrets
            .iter()
            .all(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())));
        let id = random.new_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(
            matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')),
            "{id}"
        );
        assert_ne!(random.new_id(), id);
    }

    #[test]
    fn a_seed_replays_the_same_values() {
        let (a, b) = (Random::seeded(7), Random::seeded(7));
        let draws = |r: &Random| (r.new_id(), r.new_secret(), r.next_u64());
        assert_eq!(draws(&a), draws(&b));
        assert_ne!(draws(&a), draws(&Random::seeded(8)));
    }
}
