//! Remembering event ids for the dedup window.
//!
//! An id is kept as a 128-bit hash with a 64-bit fingerprint of the payload:
//! the same id with the same payload is a duplicate (counted, ignored), the
//! same id with another payload is a conflict. Entries expire after the
//! window, oldest first.
//!
//! An id's window counts from the later of its event's `occurred_at` and
//! its first processing instant (`remembered_from`), and the fold refuses
//! (`too_late`) any input whose `occurred_at` is older than the late window,
//! which is never longer than the dedup window (`InputWindows`). So an id is
//! remembered for as long as its input could be accepted, by construction,
//! whatever the processing clock does (the expiry cutoff and the age check
//! both read the account's monotonic clock; `Engine::apply`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed, Xxh3};

use super::events::{AccountKind, Input, UsageRecorded};

/// What the window says about an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// The keys are already xxh3 hashes of the event ids: fold them instead of
/// hashing them again.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, k: u128) {
        self.0 = (k as u64) ^ ((k >> 64) as u64);
    }
}

/// One map from key to (fingerprint, remembered from), plus the oldest
/// such instant inline: the per-event expiry check reads one field,
/// and the map is swept only when something is actually due to expire.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    seen: HashMap<u128, (u64, i64), BuildHasherDefault<KeyHasher>>,
    oldest: i64,
}

impl DedupWindow {
    pub fn check(&self, key: u128, fingerprint: u64) -> Seen {
        match self.seen.get(&key) {
            None => Seen::New,
            Some((f, _)) if *f == fingerprint => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    /// `check`, and record the id when it is new, in one hash probe.
    pub fn check_and_insert(&mut self, key: u128, fingerprint: u64, seen_at: i64) -> Seen {
        use std::collections::hash_map::Entry;
        let was_empty = self.seen.is_empty();
        match self.seen.entry(key) {
            Entry::Occupied(e) if e.get().0 == fingerprint => Seen::Duplicate,
            Entry::Occupied(_) => Seen::Conflict,
            Entry::Vacant(v) => {
                v.insert((fingerprint, seen_at));
                if was_empty || seen_at < self.oldest {
                    self.oldest = seen_at;
                }
                Seen::New
            }
        }
    }

    /// Take back an id recorded by `check_and_insert` (its input was
    /// rejected). `oldest` may stay earlier than needed: that only makes
    /// the next expiry sweep sooner.
    pub fn remove(&mut self, key: u128) {
        self.seen.remove(&key);
    }

    pub fn insert(&mut self, key: u128, fingerprint: u64, seen_at: i64) {
        if self.seen.is_empty() || seen_at < self.oldest {
            self.oldest = seen_at;
        }
        self.seen.entry(key).or_insert((fingerprint, seen_at));
    }

    /// Forget ids remembered from before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        if self.seen.is_empty() || self.oldest >= cutoff {
            return;
        }
        self.seen.retain(|_, (_, at)| *at >= cutoff);
        self.oldest = self.seen.values().map(|(_, at)| *at).min().unwrap_or(0);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Entries (key, fingerprint, remembered from), in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (u128, u64, i64)> + '_ {
        self.seen.iter().map(|(k, (f, at))| (*k, *f, *at))
    }
}

/// The instant an input's id is remembered from: the later of its
/// `occurred_at` and the processing instant `now` of its first apply.
/// Never earlier than `occurred_at`, so the id outlives the input's
/// acceptability; never later than `now` + the future tolerance.
pub fn remembered_from(input: &Input, now: super::time::Timestamp) -> i64 {
    input.occurred_at().0.max(now.0)
}

/// The dedup key of an event id.
pub fn key(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

/// Usage payload fingerprint: one-shot xxh3 per field, chained through
/// the seed (no streaming state to set up on the hot path). Lengths are
/// hashed with the bytes, so field boundaries cannot shift.
fn hash_usage(u: &UsageRecorded) -> u64 {
    let mut h = 0u64;
    for s in [&u.account_id, &u.subject, &u.metric, &u.environment] {
        h = xxh3_64_with_seed(s.as_bytes(), h ^ s.len() as u64);
    }
    // Normalized so "1.50" and "1.5" are the same payload.
    h = xxh3_64_with_seed(&u.quantity.normalize().serialize(), h);
    h = xxh3_64_with_seed(&u.occurred_at.0.to_le_bytes(), h);
    for (k, v) in &u.attributes {
        h = xxh3_64_with_seed(k.as_bytes(), h ^ k.len() as u64);
        h = xxh3_64_with_seed(v.as_bytes(), h ^ v.len() as u64);
    }
    h
}

/// A fingerprint of an input's payload (everything but transport metadata).
pub fn fingerprint(input: &Input) -> u64 {
    let mut h = Xxh3::new();
    match input {
        Input::Usage(u) => return hash_usage(u),
        // Rare inputs: their canonical JSON is a fine payload identity.
        Input::Payment(p) => h.update(&serde_json::to_vec(p).unwrap_or_default()),
        Input::Account(a) => match &a.kind {
            // A command that does not speak of `invoice_at` (a version 1
            // record, a JSON line without the key) hashes as it did before
            // `keeps_invoice_at` existed, when it decoded to the same
            // command without the flag: one applied before the upgrade and
            // redelivered after it is a duplicate, not a conflict. (It is
            // the payload of a version 2 record with `invoice_at: null` too,
            // as it was then.) Every other field still tells payloads apart.
            AccountKind::ThresholdsSet {
                keeps_invoice_at: true,
                ..
            } => {
                let mut pre_flag = a.clone();
                if let AccountKind::ThresholdsSet {
                    keeps_invoice_at, ..
                } = &mut pre_flag.kind
                {
                    *keeps_invoice_at = false;
                }
                h.update(&serde_json::to_vec(&pre_flag).unwrap_or_default())
            }
            _ => h.update(&serde_json::to_vec(a).unwrap_or_default()),
        },
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_fingerprint_is_duplicate_other_is_conflict() {
        let mut w = DedupWindow::default();
        assert_eq!(w.check(1, 10), Seen::New);
        w.insert(1, 10, 0);
        assert_eq!(w.check(1, 10), Seen::Duplicate);
        assert_eq!(w.check(1, 11), Seen::Conflict);
    }

    #[test]
    fn expired_ids_are_forgotten_oldest_first() {
        let mut w = DedupWindow::default();
        w.insert(1, 10, 100);
        w.insert(2, 20, 200);
        w.expire(150);
        assert_eq!(w.check(1, 10), Seen::New);
        assert_eq!(w.check(2, 20), Seen::Duplicate);
    }
}
