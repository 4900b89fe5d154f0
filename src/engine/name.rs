//! Names of metrics and subjects as the account state keeps them: shared
//! (`Arc<str>`, so journal entries and rollup buckets point at the same
//! bytes) and tagged with a hash kept inline, so finding a name among an
//! account's few compares integers first and reads only the matching
//! name's bytes. With many accounts that is a cache miss saved per
//! compare on the hot path.

use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The tag of a name (not persisted: recomputed when a snapshot is read).
pub fn tag(text: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(text.as_bytes());
    h.finish()
}

#[derive(Clone)]
pub struct Name {
    tag: u64,
    text: Arc<str>,
}

impl Name {
    pub fn new(text: &str) -> Name {
        Name {
            tag: tag(text),
            text: Arc::from(text),
        }
    }

    /// Whether this is `text`, whose tag the caller computed once.
    #[inline]
    pub fn is(&self, tag: u64, text: &str) -> bool {
        self.tag == tag && *self.text == *text
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The shared text, for journal entries (no copy).
    pub fn shared(&self) -> Arc<str> {
        self.text.clone()
    }

    /// The shared text, giving up this handle (no reference-count traffic).
    pub fn into_shared(self) -> Arc<str> {
        self.text
    }

    /// Approximate heap bytes held (the text and its reference counts).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + 16
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.tag == other.tag && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Name::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_survives_a_snapshot_round_trip_with_its_tag() {
        let n = Name::new("container.hours");
        let back: Name = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        assert!(back.is(tag("container.hours"), "container.hours"));
        assert!(!back.is(tag("disk.gb_hours"), "disk.gb_hours"));
    }
}
