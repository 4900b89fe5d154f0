//! Write timestamps that fence: every CQL write of the ScyllaDB store
//! carries `USING TIMESTAMP stamp(epoch, counter)`, the partition's
//! ownership epoch in the high 32 bits and a per-account write counter in
//! the low 32 bits.
//!
//! ScyllaDB resolves concurrent writes of one cell by the highest
//! timestamp, so any write of a newer epoch beats any write of an older
//! one, whatever order they reach the replicas in and whatever the clocks
//! say: no wall clock is involved. Within an epoch there is one writer per
//! account, and its counter only grows, so its own writes apply in order.
//!
//! What timestamps cannot do is undo a cell the new owner has not written
//! yet. For dedup ids (the one such record that could drop an input) the
//! new owner notes, on its first write of an account, the stamps a fenced
//! writer may have used since the state it loaded: a `FencedRange`. Dedup
//! ids stamped inside a fenced range are not part of the account's history
//! and are ignored when loaded.

/// Bits of the per-account write counter.
const COUNTER_BITS: u32 = 32;
const COUNTER_MASK: i64 = (1 << COUNTER_BITS) - 1;
/// Highest epoch a stamp can carry (the sign bit stays clear).
pub const MAX_EPOCH: u64 = (1 << 31) - 1;

/// Why no stamp can be given to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampError {
    /// The account was last written by a newer epoch: the writer is fenced.
    Stale { current: u64 },
    /// The epoch does not fit in a stamp.
    EpochTooLarge,
    /// 2^32 - 1 writes of one account in one epoch.
    CounterExhausted,
}

/// The stamp of write number `counter` of an account in `epoch`.
pub fn stamp(epoch: u64, counter: u64) -> Result<i64, StampError> {
    if epoch > MAX_EPOCH {
        return Err(StampError::EpochTooLarge);
    }
    if counter > COUNTER_MASK as u64 {
        return Err(StampError::CounterExhausted);
    }
    Ok(((epoch as i64) << COUNTER_BITS) | counter as i64)
}

/// The epoch that wrote a stamp (0 for 0, "never written").
pub fn epoch_of(stamp: i64) -> u64 {
    (stamp.max(0) >> COUNTER_BITS) as u64
}

/// The stamp of the next write by `epoch` of an account whose latest
/// write carried `last` (0 = never written).
pub fn next_stamp(last: i64, epoch: u64) -> Result<i64, StampError> {
    let last_epoch = epoch_of(last);
    if last_epoch > epoch {
        return Err(StampError::Stale {
            current: last_epoch,
        });
    }
    if last_epoch == epoch && last > 0 {
        stamp(epoch, (last & COUNTER_MASK) as u64 + 1)
    } else {
        stamp(epoch, 1)
    }
}

/// Stamps strictly between `after` and `before` belong to a writer that
/// was fenced: the new owner loaded the state stamped `after` and first
/// wrote with `before`. `noted_at_ms` (wall clock, Unix milliseconds) lets
/// old ranges be forgotten once nothing they cover is read any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencedRange {
    pub after: i64,
    pub before: i64,
    pub noted_at_ms: i64,
}

impl FencedRange {
    /// The CQL tuple `(after, before, noted_at_ms)`.
    pub fn to_tuple(self) -> (i64, i64, i64) {
        (self.after, self.before, self.noted_at_ms)
    }

    pub fn from_tuple((after, before, noted_at_ms): (i64, i64, i64)) -> Self {
        FencedRange {
            after,
            before,
            noted_at_ms,
        }
    }

    pub fn covers(&self, stamp: i64) -> bool {
        self.after < stamp && stamp < self.before
    }
}

/// Ranges are kept this long (about a year: longer than any dedup window
/// billstream accepts in practice), then forgotten.
pub const FENCED_RANGE_KEEP_MS: i64 = 400 * 86_400 * 1_000;

/// The ranges to store with a write stamped `first` of an account whose
/// last complete write (the snapshot's stamp) is `snapshot`: `ranges`, plus
/// the stamps between the two when the write opens a new epoch on the
/// account (a takeover: a fenced writer may have written in between) or
/// follows a write of this store whose outcome is unknown (`unsure`).
/// Ranges older than `FENCED_RANGE_KEEP_MS` are dropped.
pub fn ranges_after_write(
    ranges: &[FencedRange],
    snapshot: i64,
    first: i64,
    unsure: bool,
    now_ms: i64,
) -> Vec<FencedRange> {
    let mut kept: Vec<FencedRange> = ranges
        .iter()
        .copied()
        .filter(|r| now_ms.saturating_sub(r.noted_at_ms) <= FENCED_RANGE_KEEP_MS)
        .collect();
    let opens_epoch = snapshot == 0 || epoch_of(snapshot) < epoch_of(first);
    if (opens_epoch || unsure) && first.saturating_sub(snapshot) > 1 {
        kept.push(FencedRange {
            after: snapshot,
            before: first,
            noted_at_ms: now_ms,
        });
    }
    kept
}

/// Whether a dedup id stamped `stamp` belongs to the account's history:
/// written with or before the snapshot's write (`snapshot` stamp; later
/// stamps are writes whose snapshot never landed) and not by a fenced
/// writer.
pub fn in_history(ranges: &[FencedRange], snapshot: i64, stamp: i64) -> bool {
    stamp <= snapshot && !is_fenced(ranges, stamp)
}

/// Whether a record stamped `stamp` was written by a fenced writer.
pub fn is_fenced(ranges: &[FencedRange], stamp: i64) -> bool {
    ranges.iter().any(|r| r.covers(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_epoch_always_stamps_higher() {
        let old_last = stamp(4, COUNTER_MASK as u64).unwrap();
        let new_first = next_stamp(0, 5).unwrap();
        assert!(new_first > old_last);
        assert_eq!(epoch_of(new_first), 5);
        assert_eq!(epoch_of(old_last), 4);
    }

    #[test]
    fn next_stamp_counts_within_an_epoch_and_restarts_in_a_new_one() {
        let first = next_stamp(0, 3).unwrap();
        assert_eq!(first, (3 << 32) | 1);
        let second = next_stamp(first, 3).unwrap();
        assert_eq!(second, first + 1);
        let taken_over = next_stamp(second, 7).unwrap();
        assert_eq!(taken_over, (7 << 32) | 1);
        // Epoch 0 (a partition never claimed) counts from 1 too.
        assert_eq!(next_stamp(0, 0).unwrap(), 1);
        assert_eq!(next_stamp(1, 0).unwrap(), 2);
    }

    #[test]
    fn an_older_epoch_is_stale() {
        let last = stamp(9, 12).unwrap();
        assert_eq!(next_stamp(last, 8), Err(StampError::Stale { current: 9 }));
    }

    #[test]
    fn limits_are_errors_not_wraps() {
        assert_eq!(stamp(MAX_EPOCH + 1, 1), Err(StampError::EpochTooLarge));
        let full = stamp(2, COUNTER_MASK as u64).unwrap();
        assert_eq!(next_stamp(full, 2), Err(StampError::CounterExhausted));
        let top = stamp(MAX_EPOCH, COUNTER_MASK as u64).unwrap();
        assert!(top > 0, "stamps stay positive");
    }

    #[test]
    fn takeover_fences_the_stamps_between_load_and_first_write() {
        let loaded = stamp(2, 40).unwrap();
        let first = next_stamp(loaded, 3).unwrap();
        let ranges = ranges_after_write(&[], loaded, first, false, 1_000);
        assert_eq!(
            ranges,
            [FencedRange {
                after: loaded,
                before: first,
                noted_at_ms: 1_000
            }]
        );
        // A zombie of epoch 2 wrote after the load: fenced.
        assert!(is_fenced(&ranges, stamp(2, 41).unwrap()));
        // What was loaded, and what the new owner writes, are not.
        assert!(!is_fenced(&ranges, loaded));
        assert!(!is_fenced(&ranges, stamp(2, 39).unwrap()));
        assert!(!is_fenced(&ranges, first));
        // Later writes of the same epoch add nothing.
        let again = ranges_after_write(&ranges, first, first + 1, false, 2_000);
        assert_eq!(again, ranges);
        // History: up to the snapshot, minus the fenced range.
        let snapshot = first + 1;
        assert!(in_history(&again, snapshot, loaded));
        assert!(in_history(&again, snapshot, snapshot));
        assert!(!in_history(&again, snapshot, stamp(2, 41).unwrap()));
        // Written after the snapshot's write: its snapshot never landed.
        assert!(!in_history(&again, snapshot, snapshot + 1));
    }

    #[test]
    fn an_account_first_written_by_the_new_owner_fences_everything_before() {
        // The new owner found no account: anything older is a zombie's.
        let first = next_stamp(0, 6).unwrap();
        let ranges = ranges_after_write(&[], 0, first, false, 5);
        assert!(is_fenced(&ranges, stamp(5, 1).unwrap()));
        assert!(!is_fenced(&ranges, first));
        // Epoch 0 on a fresh account: nothing to fence.
        assert!(ranges_after_write(&[], 0, next_stamp(0, 0).unwrap(), false, 5).is_empty());
    }

    #[test]
    fn a_write_after_an_unknown_outcome_fences_the_stamps_it_skipped() {
        // Snapshot at 3, a write stamped 4 failed (it may land later, or
        // half of it may have): the next write is stamped 5.
        let snapshot = stamp(1, 3).unwrap();
        let next = stamp(1, 5).unwrap();
        let ranges = ranges_after_write(&[], snapshot, next, true, 0);
        assert!(is_fenced(&ranges, stamp(1, 4).unwrap()));
        // Without a failure, a gap (a watermark write) fences nothing.
        assert!(ranges_after_write(&[], snapshot, next, false, 0).is_empty());
    }

    #[test]
    fn old_ranges_are_forgotten() {
        let old = FencedRange {
            after: 1,
            before: 10,
            noted_at_ms: 0,
        };
        let loaded = stamp(1, 1).unwrap();
        let kept = ranges_after_write(&[old], loaded, loaded + 1, false, FENCED_RANGE_KEEP_MS);
        assert_eq!(kept, [old]);
        let kept = ranges_after_write(&[old], loaded, loaded + 1, false, FENCED_RANGE_KEEP_MS + 1);
        assert!(kept.is_empty());
    }
}
