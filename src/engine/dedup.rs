//! Remembering event ids for the dedup window.
//!
//! An id is kept as a 128-bit hash with a 64-bit fingerprint of the payload:
//! the same id with the same payload is a duplicate (counted, ignored), the
//! same id with another payload is a conflict. Entries expire after the
//! window, oldest first.

use std::collections::{HashMap, VecDeque};

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use super::events::{Input, UsageRecorded};

/// What the window says about an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    seen: HashMap<u128, u64>,
    order: VecDeque<(i64, u128)>,
}

impl DedupWindow {
    pub fn check(&self, key: u128, fingerprint: u64) -> Seen {
        match self.seen.get(&key) {
            None => Seen::New,
            Some(f) if *f == fingerprint => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    pub fn insert(&mut self, key: u128, fingerprint: u64, seen_at: i64) {
        if self.seen.insert(key, fingerprint).is_none() {
            self.order.push_back((seen_at, key));
        }
    }

    /// Forget ids seen before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        while let Some(&(at, key)) = self.order.front() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Entries in the order they were seen, for persisting.
    pub fn entries(&self) -> impl Iterator<Item = (u128, u64, i64)> + '_ {
        self.order.iter().map(|&(at, k)| (k, self.seen[&k], at))
    }
}

/// The dedup key of an event id.
pub fn key(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

fn hash_usage(h: &mut Xxh3, u: &UsageRecorded) {
    for s in [&u.account_id, &u.subject, &u.metric, &u.environment] {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    // Normalized so "1.50" and "1.5" are the same payload.
    h.update(&u.quantity.normalize().serialize());
    h.update(&u.occurred_at.0.to_le_bytes());
    for (k, v) in &u.attributes {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
}

/// A fingerprint of an input's payload (everything but transport metadata).
pub fn fingerprint(input: &Input) -> u64 {
    let mut h = Xxh3::new();
    match input {
        Input::Usage(u) => hash_usage(&mut h, u),
        // Rare inputs: their canonical JSON is a fine payload identity.
        Input::Payment(p) => h.update(&serde_json::to_vec(p).unwrap_or_default()),
        Input::Account(a) => h.update(&serde_json::to_vec(a).unwrap_or_default()),
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
