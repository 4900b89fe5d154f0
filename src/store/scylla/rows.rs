//! From CQL rows to the store's types: pure, so the mapping (signedness,
//! nulls, the history filter of dedup ids) is unit-tested without a
//! database.

use std::collections::BTreeMap;

use super::plan::AccountMeta;
use super::stamp::{in_history, FencedRange};
use crate::store::{
    DeadLetterRecord, DedupRecord, InputOffset, JournalRecord, SnapshotVersion, StoredAccount,
};

/// `SELECT partition, snapshot, journal_head, published_upto, next_timer,
/// input_offsets, fenced_ranges, dead_letters, WRITETIME(snapshot),
/// WRITETIME(published_upto) FROM accounts WHERE account_id = ?`.
pub type AccountRow = (
    Option<i32>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<BTreeMap<(String, i32), i64>>,
    Option<Vec<(i64, i64, i64)>>,
    Option<BTreeMap<String, Vec<u8>>>,
    Option<i64>,
    Option<i64>,
);

/// `SELECT seq, at, entry FROM journal WHERE account_id = ? AND block = ?
/// AND seq >= ? AND seq <= ?` (the upper bound is the account's head).
pub type JournalRow = (i64, Option<i64>, Option<Vec<u8>>);

/// `SELECT seen_at, event_key, fingerprint, WRITETIME(fingerprint) FROM dedup ...`.
pub type DedupRow = (i64, Vec<u8>, Option<i64>, Option<i64>);

fn unsigned(value: Option<i64>, what: &str) -> Result<u64, String> {
    let v = value.unwrap_or(0);
    u64::try_from(v).map_err(|_| format!("{what} is negative ({v})"))
}

/// The account's row as `AccountMeta` and its snapshot, or `None` for an
/// account never written (no snapshot).
pub fn account_from_row(row: AccountRow) -> Result<Option<(AccountMeta, Vec<u8>)>, String> {
    let (
        partition,
        snapshot,
        head,
        published,
        next_timer,
        offsets,
        fenced,
        dead_letters,
        snapshot_stamp,
        published_stamp,
    ) = row;
    let Some(snapshot) = snapshot else {
        return Ok(None);
    };
    let partition = partition.ok_or("partition is null")?;
    let snapshot_stamp = snapshot_stamp.unwrap_or(0);
    let meta = AccountMeta {
        exists: true,
        partition: u32::try_from(partition)
            .map_err(|_| format!("partition is negative ({partition})"))?,
        journal_head: unsigned(head, "journal_head")?,
        published_upto: unsigned(published, "published_upto")?,
        next_timer,
        offsets: offsets.unwrap_or_default(),
        fenced: fenced
            .unwrap_or_default()
            .into_iter()
            .map(FencedRange::from_tuple)
            .collect(),
        dead_letters: dead_letters.unwrap_or_default(),
        snapshot_stamp,
        last_stamp: snapshot_stamp.max(published_stamp.unwrap_or(0)),
        unsure: false,
    };
    Ok(Some((meta, snapshot)))
}

/// What `load_account` returns for a loaded account.
pub fn stored_account(meta: &AccountMeta, snapshot: Vec<u8>) -> StoredAccount {
    StoredAccount {
        snapshot,
        journal_head: meta.journal_head,
        // Never past the head, whatever a fenced writer left.
        published_upto: meta.published_upto.min(meta.journal_head),
        offsets: meta
            .offsets
            .iter()
            .map(|((topic, partition), next)| InputOffset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect(),
        next_timer: meta.next_timer,
        dead_letters: meta
            .dead_letters
            .iter()
            .map(|(id, bytes)| DeadLetterRecord {
                id: id.clone(),
                bytes: bytes.clone(),
            })
            .collect(),
        version: SnapshotVersion {
            stamp: meta.snapshot_stamp,
            fenced: meta.fenced.iter().map(|r| r.to_tuple()).collect(),
        },
    }
}

/// A journal row.
pub fn journal_record(row: JournalRow) -> Result<JournalRecord, String> {
    let (seq, at, entry) = row;
    Ok(JournalRecord {
        seq: unsigned(Some(seq), "seq")?,
        at: at.unwrap_or(0),
        bytes: entry.unwrap_or_default(),
    })
}

/// A dedup row, if it is part of the account's history (see
/// `stamp::in_history`).
pub fn dedup_record(row: DedupRow, meta: &AccountMeta) -> Result<Option<DedupRecord>, String> {
    let (seen_at, key, fingerprint, stamp) = row;
    let key: [u8; 16] = key
        .as_slice()
        .try_into()
        .map_err(|_| format!("event_key has {} bytes, not 16", key.len()))?;
    if !in_history(&meta.fenced, meta.snapshot_stamp, stamp.unwrap_or(0)) {
        return Ok(None);
    }
    Ok(Some(DedupRecord {
        key: u128::from_be_bytes(key),
        // The same 64 bits that were written.
        fingerprint: fingerprint.unwrap_or(0) as u64,
        seen_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::stamp::stamp;

    fn account_row() -> AccountRow {
        let mut offsets = BTreeMap::new();
        offsets.insert(("usage".to_string(), 3), 100);
        offsets.insert(("accounts".to_string(), 3), 7);
        (
            Some(3),
            Some(b"snap".to_vec()),
            Some(12),
            Some(15),
            Some(9_000),
            Some(offsets),
            Some(vec![(1, 5, 0)]),
            Some(BTreeMap::from([("d1".to_string(), b"letter".to_vec())])),
            Some(stamp(2, 8).unwrap()),
            Some(stamp(2, 9).unwrap()),
        )
    }

    #[test]
    fn account_row_maps_to_meta_and_stored_account() {
        let (meta, snapshot) = account_from_row(account_row()).unwrap().unwrap();
        assert_eq!(meta.partition, 3);
        assert_eq!(meta.snapshot_stamp, stamp(2, 8).unwrap());
        assert_eq!(meta.last_stamp, stamp(2, 9).unwrap());
        assert_eq!(meta.fenced.len(), 1);
        let stored = stored_account(&meta, snapshot);
        assert_eq!(stored.snapshot, b"snap");
        assert_eq!(stored.journal_head, 12);
        assert_eq!(stored.published_upto, 12, "clamped to the head");
        assert_eq!(stored.next_timer, Some(9_000));
        assert_eq!(
            stored.dead_letters,
            [DeadLetterRecord {
                id: "d1".into(),
                bytes: b"letter".to_vec()
            }]
        );
        assert_eq!(
            stored.offsets,
            [
                InputOffset {
                    topic: "accounts".into(),
                    partition: 3,
                    next: 7
                },
                InputOffset {
                    topic: "usage".into(),
                    partition: 3,
                    next: 100
                }
            ]
        );
    }

    #[test]
    fn no_snapshot_means_no_account_and_bad_values_are_errors() {
        let mut row = account_row();
        row.1 = None;
        assert_eq!(account_from_row(row).unwrap(), None);
        let mut row = account_row();
        row.2 = Some(-1);
        assert!(account_from_row(row).unwrap_err().contains("journal_head"));
        let mut row = account_row();
        row.0 = None;
        assert!(account_from_row(row).is_err());
    }

    #[test]
    fn journal_rows_map_and_a_negative_seq_is_an_error() {
        assert_eq!(
            journal_record((5, Some(50), Some(vec![5]))).unwrap(),
            JournalRecord {
                seq: 5,
                at: 50,
                bytes: vec![5]
            }
        );
        assert!(journal_record((-1, None, None)).is_err());
    }

    #[test]
    fn dedup_rows_round_trip_and_outside_history_are_dropped() {
        let (meta, _) = account_from_row(account_row()).unwrap().unwrap();
        let key = u128::MAX - 5;
        let row = |s: i64| (250, key.to_be_bytes().to_vec(), Some(-2), Some(s));
        assert_eq!(
            dedup_record(row(stamp(2, 8).unwrap()), &meta).unwrap(),
            Some(DedupRecord {
                key,
                fingerprint: u64::MAX - 1,
                seen_at: 250
            })
        );
        // After the snapshot's write (a write that never completed).
        assert_eq!(
            dedup_record(row(stamp(2, 9).unwrap()), &meta).unwrap(),
            None
        );
        // Inside a fenced range.
        assert_eq!(dedup_record(row(3), &meta).unwrap(), None);
        let short = (1, vec![1, 2], Some(0), Some(1));
        assert!(dedup_record(short, &meta).is_err());
    }
}
