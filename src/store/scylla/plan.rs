//! From one `AccountWrite` to the CQL mutations of one batch: pure, so the
//! write path's rules are unit-tested without a database.
//!
//! `plan_write` checks the write against what the store knows of the
//! account (`AccountMeta`: journal head, watermark, timer, offsets, last
//! stamp), stamps it (`stamp.rs`) and lists the mutations. All of them
//! concern one account: its row of `accounts` (the commit point), its
//! journal rows, its rows of `invoices` and `dedup`, and its entries of the
//! two index tables when its timer or partition moved. `split` orders them
//! into batches of one partition each, so no batch size limit of the
//! database applies (Cassandra and ScyllaDB check only batches that span
//! partitions).

use std::collections::BTreeMap;

use super::stamp::{next_stamp, ranges_after_write, FencedRange, StampError};
use crate::store::{AccountWrite, Micros, StoreError};

/// Width of a bucket of the timer index: one UTC day.
pub const TIMER_BUCKET_MICROS: i64 = 86_400 * 1_000_000;

/// Journal entries per partition of the `journal` table.
pub const JOURNAL_BLOCK: u64 = 10_000;

/// The `journal` partition (block) of entry `seq`.
pub fn journal_block(seq: u64) -> i64 {
    (seq / JOURNAL_BLOCK) as i64
}

/// The day bucket of a timer at `at`.
pub fn timer_bucket(at: Micros) -> i64 {
    at.div_euclid(TIMER_BUCKET_MICROS)
}

/// What the store knows of an account's row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountMeta {
    /// False for an account never written (then the rest is zero).
    pub exists: bool,
    pub partition: u32,
    pub journal_head: u64,
    pub published_upto: u64,
    pub next_timer: Option<Micros>,
    pub offsets: BTreeMap<(String, i32), i64>,
    pub fenced: Vec<FencedRange>,
    /// Dead letters kept in the row (id → record), until acknowledged.
    pub dead_letters: BTreeMap<String, Vec<u8>>,
    /// Stamp of the last complete write (the snapshot's; 0 = never written).
    pub snapshot_stamp: i64,
    /// Highest stamp used on the account as far as this store knows (the
    /// snapshot's, a later watermark write's, or a write that failed).
    pub last_stamp: i64,
    /// A write of this store with a stamp above `snapshot_stamp` failed:
    /// some of its rows may exist without its snapshot.
    pub unsure: bool,
}

/// One CQL mutation, borrowing its bytes from the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation<'a> {
    /// Every column of the account's row (all rewritten by every write, so
    /// the new owner's first write replaces all a fenced writer left). The
    /// commit point of the write.
    Account {
        account_id: &'a str,
        stamp: i64,
        partition: i32,
        snapshot: &'a [u8],
        journal_head: i64,
        published_upto: i64,
        next_timer: Option<i64>,
        offsets: BTreeMap<(String, i32), i64>,
        fenced: Vec<(i64, i64, i64)>,
        /// Every kept dead letter, the whole map (like `offsets`).
        dead_letters: BTreeMap<String, Vec<u8>>,
    },
    Journal {
        account_id: &'a str,
        stamp: i64,
        block: i64,
        seq: i64,
        at: i64,
        entry: &'a [u8],
    },
    Invoice {
        account_id: &'a str,
        stamp: i64,
        invoice_id: &'a str,
        document: &'a [u8],
    },
    Dedup {
        account_id: &'a str,
        stamp: i64,
        ttl_secs: i32,
        seen_at: i64,
        event_key: [u8; 16],
        fingerprint: i64,
    },
    TimerInsert {
        account_id: &'a str,
        stamp: i64,
        partition: i32,
        bucket: i64,
        at: i64,
    },
    TimerDelete {
        account_id: &'a str,
        stamp: i64,
        partition: i32,
        bucket: i64,
        at: i64,
    },
    BucketInsert {
        stamp: i64,
        partition: i32,
        bucket: i64,
    },
    PartitionAccountInsert {
        account_id: &'a str,
        stamp: i64,
        partition: i32,
    },
    PartitionAccountDelete {
        account_id: &'a str,
        stamp: i64,
        partition: i32,
    },
}

/// The mutations of one account's write and what the store knows after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan<'a> {
    pub mutations: Vec<Mutation<'a>>,
    /// Timer bucket the plan inserts into, if any (the caller remembers it).
    pub timer_bucket: Option<(u32, i64)>,
    pub after: AccountMeta,
}

/// Checks `w` against `prev` and plans it. `bucket_known` says whether the
/// store already listed a (partition, bucket) in `timer_buckets`.
pub fn plan_write<'a>(
    prev: &AccountMeta,
    w: &'a AccountWrite,
    dedup_ttl_secs: i32,
    now_ms: i64,
    bucket_known: impl Fn(u32, i64) -> bool,
) -> Result<WritePlan<'a>, StoreError> {
    let id = w.account_id.as_str();
    let mut expected = prev.journal_head + 1;
    for record in &w.journal {
        if record.seq != expected {
            return Err(StoreError::JournalSequence {
                account_id: w.account_id.clone(),
                expected,
                got: record.seq,
            });
        }
        expected += 1;
    }
    let journal_head = expected - 1;
    let stamp = next_stamp(prev.last_stamp, w.epoch)
        .map_err(|e| stamp_error(e, w.partition, w.epoch, id))?;
    let partition = cql_int(w.partition, "partition")?;
    let published_upto = prev
        .published_upto
        .max(w.published_upto.unwrap_or(0).min(journal_head));
    let mut offsets = prev.offsets.clone();
    for o in &w.offsets {
        offsets.insert((o.topic.clone(), o.partition), o.next);
    }
    let mut dead_letters = prev.dead_letters.clone();
    for id in &w.dead_letters_published {
        dead_letters.remove(id);
    }
    for d in &w.dead_letters {
        dead_letters.insert(d.id.clone(), d.bytes.clone());
    }
    let fenced = ranges_after_write(
        &prev.fenced,
        prev.snapshot_stamp,
        stamp,
        prev.unsure,
        now_ms,
    );

    let mut mutations = Vec::with_capacity(1 + w.journal.len() + w.dedup.len() + w.invoices.len());
    mutations.push(Mutation::Account {
        account_id: id,
        stamp,
        partition,
        snapshot: &w.snapshot,
        journal_head: cql_bigint(journal_head, "journal head")?,
        published_upto: cql_bigint(published_upto, "published watermark")?,
        next_timer: w.next_timer,
        offsets: offsets.clone(),
        fenced: fenced.iter().map(|r| r.to_tuple()).collect(),
        dead_letters: dead_letters.clone(),
    });
    for record in &w.journal {
        mutations.push(Mutation::Journal {
            account_id: id,
            stamp,
            block: journal_block(record.seq),
            seq: cql_bigint(record.seq, "journal seq")?,
            at: record.at,
            entry: &record.bytes,
        });
    }
    for invoice in &w.invoices {
        mutations.push(Mutation::Invoice {
            account_id: id,
            stamp,
            invoice_id: &invoice.invoice_id,
            document: &invoice.bytes,
        });
    }
    for record in &w.dedup {
        mutations.push(Mutation::Dedup {
            account_id: id,
            stamp,
            ttl_secs: dedup_ttl_secs,
            seen_at: record.seen_at,
            event_key: record.key.to_be_bytes(),
            // Stored as the same 64 bits, read back with `as u64`.
            fingerprint: record.fingerprint as i64,
        });
    }

    // Index rows: only when the timer or the partition moved.
    let moved = prev.exists && prev.partition != w.partition;
    let timer_moved = moved || prev.next_timer != w.next_timer;
    let mut timer_bucket_inserted = None;
    if timer_moved {
        if let (true, Some(old)) = (prev.exists, prev.next_timer) {
            mutations.push(Mutation::TimerDelete {
                account_id: id,
                stamp,
                partition: cql_int(prev.partition, "partition")?,
                bucket: timer_bucket(old),
                at: old,
            });
        }
        if let Some(at) = w.next_timer {
            let bucket = timer_bucket(at);
            mutations.push(Mutation::TimerInsert {
                account_id: id,
                stamp,
                partition,
                bucket,
                at,
            });
            if !bucket_known(w.partition, bucket) {
                mutations.push(Mutation::BucketInsert {
                    stamp,
                    partition,
                    bucket,
                });
            }
            timer_bucket_inserted = Some((w.partition, bucket));
        }
    }
    if moved {
        mutations.push(Mutation::PartitionAccountDelete {
            account_id: id,
            stamp,
            partition: cql_int(prev.partition, "partition")?,
        });
    }
    if !prev.exists || moved {
        mutations.push(Mutation::PartitionAccountInsert {
            account_id: id,
            stamp,
            partition,
        });
    }

    Ok(WritePlan {
        mutations,
        timer_bucket: timer_bucket_inserted,
        after: AccountMeta {
            exists: true,
            partition: w.partition,
            journal_head,
            published_upto,
            next_timer: w.next_timer,
            offsets,
            fenced,
            dead_letters,
            snapshot_stamp: stamp,
            last_stamp: stamp,
            unsure: false,
        },
    })
}

/// Largest batch the store sends, in estimated bytes of bound values. Every
/// batch is of one partition, which neither Cassandra's
/// `batch_size_fail_threshold` (50 KiB by default) nor ScyllaDB's (1 MiB)
/// applies to; the bound keeps each request small all the same.
pub const BATCH_BYTES: usize = 96 * 1024;

/// Estimated size of a mutation's bound values.
fn size_of(m: &Mutation<'_>) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match m {
            Mutation::Account {
                account_id,
                snapshot,
                offsets,
                fenced,
                dead_letters,
                ..
            } => {
                account_id.len()
                    + snapshot.len()
                    + offsets.keys().map(|(t, _)| t.len() + 16).sum::<usize>()
                    + fenced.len() * 24
                    + dead_letters
                        .iter()
                        .map(|(id, d)| id.len() + d.len() + 8)
                        .sum::<usize>()
            }
            Mutation::Journal {
                account_id, entry, ..
            } => account_id.len() + entry.len(),
            Mutation::Invoice {
                account_id,
                invoice_id,
                document,
                ..
            } => account_id.len() + invoice_id.len() + document.len(),
            Mutation::Dedup { account_id, .. } => account_id.len() + 32,
            Mutation::TimerInsert { account_id, .. }
            | Mutation::TimerDelete { account_id, .. }
            | Mutation::PartitionAccountInsert { account_id, .. }
            | Mutation::PartitionAccountDelete { account_id, .. } => account_id.len(),
            Mutation::BucketInsert { .. } => 0,
        }
}

/// Where a mutation goes relative to the commit point, and the
/// (table, partition) it writes (unique within one account's plan: the
/// account's own partitions, and at most one row of each index table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the commit point: rows nobody counts until it lands.
    Ahead(u8, i64),
    /// The commit point: the account's row.
    Commit,
    /// After the commit point: deletes of index rows it superseded.
    After(u8),
}

fn place(m: &Mutation<'_>) -> Place {
    match m {
        Mutation::Account { .. } => Place::Commit,
        Mutation::Dedup { .. } => Place::Ahead(0, 0),
        Mutation::Journal { block, .. } => Place::Ahead(1, *block),
        Mutation::Invoice { .. } => Place::Ahead(2, 0),
        Mutation::TimerInsert { .. } => Place::Ahead(3, 0),
        Mutation::BucketInsert { .. } => Place::Ahead(4, 0),
        Mutation::PartitionAccountInsert { .. } => Place::Ahead(5, 0),
        Mutation::TimerDelete { .. } => Place::After(0),
        Mutation::PartitionAccountDelete { .. } => Place::After(1),
    }
}

/// One UNLOGGED CQL batch of a plan, all of one partition: indexes into
/// `WritePlan::mutations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    pub mutations: Vec<usize>,
}

/// The batches of a plan in three steps, each batch of one partition and
/// (unless one mutation alone is larger) at most `budget` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    /// Sent first, together: dedup ids, journal rows, invoice documents and
    /// the index rows the write inserts. None counts before the commit
    /// point: readers stop at the journal head, ignore dedup ids stamped
    /// after the account row's write, check a timer row against the row's
    /// `next_timer`, and skip an account listed in a partition without a
    /// row. (An invoice document is a read-model row: the read API may show
    /// it before its commit point lands; ARCHITECTURE.md.)
    pub ahead: Vec<BatchPlan>,
    /// Then the commit point: the account's row, alone (one
    /// single-partition statement: atomic and isolated).
    pub commit: BatchPlan,
    /// Then, once the row landed, the deletes of index rows the write
    /// superseded (a moved timer, a moved partition), so an index never
    /// misses what a row says; a delete that fails leaves a row the
    /// readers filter out.
    pub after: Vec<BatchPlan>,
}

/// Orders a plan's mutations into `Batches`.
pub fn split(plan: &WritePlan<'_>, budget: usize) -> Batches {
    let mut ahead: Vec<(Place, Vec<usize>, usize)> = Vec::new();
    let mut commit = Vec::new();
    let mut after: Vec<(Place, Vec<usize>, usize)> = Vec::new();
    for (i, m) in plan.mutations.iter().enumerate() {
        let key = place(m);
        let groups = match key {
            Place::Commit => {
                commit.push(i);
                continue;
            }
            Place::Ahead(..) => &mut ahead,
            Place::After(..) => &mut after,
        };
        let size = size_of(m);
        match groups
            .iter_mut()
            .rev()
            .find(|(k, _, bytes)| *k == key && *bytes + size <= budget)
        {
            Some((_, ids, bytes)) => {
                ids.push(i);
                *bytes += size;
            }
            None => groups.push((key, vec![i], size)),
        }
    }
    let batches = |groups: Vec<(Place, Vec<usize>, usize)>| {
        groups
            .into_iter()
            .map(|(_, mutations, _)| BatchPlan { mutations })
            .collect()
    };
    Batches {
        ahead: batches(ahead),
        commit: BatchPlan { mutations: commit },
        after: batches(after),
    }
}

/// The stamp of a `mark_published` by `epoch`, or why there is none.
pub fn publish_stamp(
    prev: &AccountMeta,
    partition: u32,
    epoch: u64,
    account_id: &str,
) -> Result<i64, StoreError> {
    next_stamp(prev.last_stamp, epoch).map_err(|e| stamp_error(e, partition, epoch, account_id))
}

fn stamp_error(e: StampError, partition: u32, epoch: u64, account_id: &str) -> StoreError {
    match e {
        StampError::Stale { current } => StoreError::Fenced {
            partition,
            current,
            attempted: epoch,
        },
        StampError::EpochTooLarge => StoreError::Backend(format!(
            "scylla store: epoch {epoch} of partition {partition} does not fit a write timestamp"
        )),
        StampError::CounterExhausted => StoreError::Backend(format!(
            "scylla store: account {account_id} was written 2^32 times in epoch {epoch}; claim the partition again"
        )),
    }
}

/// A u32 as a CQL `int`.
pub fn cql_int(value: u32, what: &str) -> Result<i32, StoreError> {
    i32::try_from(value)
        .map_err(|_| StoreError::Backend(format!("scylla store: {what} {value} exceeds a CQL int")))
}

/// A u64 as a CQL `bigint`.
pub fn cql_bigint(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Backend(format!("scylla store: {what} {value} exceeds a CQL bigint"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::stamp::{epoch_of, stamp};
    use crate::store::{DedupRecord, InputOffset, InvoiceRecord, JournalRecord};

    fn write(seqs: std::ops::RangeInclusive<u64>) -> AccountWrite {
        AccountWrite {
            account_id: "acc".into(),
            partition: 2,
            epoch: 5,
            snapshot: b"snap".to_vec(),
            journal: seqs
                .map(|seq| JournalRecord {
                    seq,
                    at: seq as i64 * 10,
                    bytes: vec![seq as u8],
                })
                .collect(),
            invoices: Vec::new(),
            dedup: Vec::new(),
            next_timer: None,
            offsets: Vec::new(),
            published_upto: None,
            dead_letters: Vec::new(),
            dead_letters_published: Vec::new(),
        }
    }

    fn existing(head: u64, last_stamp: i64) -> AccountMeta {
        AccountMeta {
            exists: true,
            partition: 2,
            journal_head: head,
            snapshot_stamp: last_stamp,
            last_stamp,
            ..AccountMeta::default()
        }
    }

    #[test]
    fn usage_only_write_is_one_unlogged_partition_batch() {
        let prev = existing(3, stamp(5, 7).unwrap());
        let w = write(4..=5);
        let plan = plan_write(&prev, &w, 100, 0, |_, _| true).unwrap();
        assert_eq!(plan.mutations.len(), 3);
        let s = stamp(5, 8).unwrap();
        assert!(matches!(
            plan.mutations[0],
            Mutation::Account { stamp, journal_head: 5, published_upto: 0, partition: 2, .. } if stamp == s
        ));
        assert_eq!(
            plan.mutations[2],
            Mutation::Journal {
                account_id: "acc",
                stamp: s,
                block: 0,
                seq: 5,
                at: 50,
                entry: &[5]
            }
        );
        assert_eq!(plan.after.journal_head, 5);
        assert_eq!(plan.after.last_stamp, s);
    }

    #[test]
    fn journal_must_continue_the_head() {
        let prev = existing(3, 1);
        for (seqs, expected, got) in [(5..=5, 4, 5), (3..=4, 4, 3)] {
            let Err(StoreError::JournalSequence {
                expected: e,
                got: g,
                ..
            }) = plan_write(&prev, &write(seqs), 1, 0, |_, _| true)
            else {
                panic!("expected a journal sequence error");
            };
            assert_eq!((e, g), (expected, got));
        }
    }

    #[test]
    fn older_epoch_than_the_last_write_is_fenced() {
        let prev = existing(3, stamp(6, 1).unwrap());
        let w = write(4..=4);
        match plan_write(&prev, &w, 1, 0, |_, _| true) {
            Err(StoreError::Fenced {
                partition: 2,
                current: 6,
                attempted: 5,
            }) => {}
            other => panic!("expected Fenced, got {other:?}"),
        }
    }

    #[test]
    fn dedup_invoices_and_first_write_plan_index_rows() {
        let mut w = write(1..=1);
        w.dedup = vec![DedupRecord {
            key: 0x0102,
            fingerprint: u64::MAX,
            seen_at: 77,
        }];
        w.invoices = vec![InvoiceRecord {
            invoice_id: "inv-1".into(),
            bytes: b"doc".to_vec(),
        }];
        w.next_timer = Some(TIMER_BUCKET_MICROS + 5);
        w.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 2,
            next: 10,
        }];
        w.published_upto = Some(9);
        let plan = plan_write(&AccountMeta::default(), &w, 3_110_400, 1_000, |_, _| false).unwrap();
        let s = stamp(5, 1).unwrap();
        let mut offsets = BTreeMap::new();
        offsets.insert(("usage".to_string(), 2), 10);
        assert_eq!(
            plan.mutations,
            vec![
                Mutation::Account {
                    account_id: "acc",
                    stamp: s,
                    partition: 2,
                    snapshot: b"snap",
                    journal_head: 1,
                    // Never past the journal head.
                    published_upto: 1,
                    next_timer: Some(TIMER_BUCKET_MICROS + 5),
                    offsets,
                    // A new account: anything stamped before is a zombie's.
                    fenced: vec![(0, s, 1_000)],
                    dead_letters: BTreeMap::new(),
                },
                Mutation::Journal {
                    account_id: "acc",
                    stamp: s,
                    block: 0,
                    seq: 1,
                    at: 10,
                    entry: &[1]
                },
                Mutation::Invoice {
                    account_id: "acc",
                    stamp: s,
                    invoice_id: "inv-1",
                    document: b"doc"
                },
                Mutation::Dedup {
                    account_id: "acc",
                    stamp: s,
                    ttl_secs: 3_110_400,
                    seen_at: 77,
                    event_key: 0x0102u128.to_be_bytes(),
                    fingerprint: -1,
                },
                Mutation::TimerInsert {
                    account_id: "acc",
                    stamp: s,
                    partition: 2,
                    bucket: 1,
                    at: TIMER_BUCKET_MICROS + 5
                },
                Mutation::BucketInsert {
                    stamp: s,
                    partition: 2,
                    bucket: 1
                },
                Mutation::PartitionAccountInsert {
                    account_id: "acc",
                    stamp: s,
                    partition: 2
                },
            ]
        );
        assert_eq!(plan.timer_bucket, Some((2, 1)));
    }

    #[test]
    fn moved_timer_replaces_its_index_row_and_known_bucket_is_not_rewritten() {
        let mut prev = existing(1, stamp(5, 3).unwrap());
        prev.next_timer = Some(-1);
        let mut w = write(2..=2);
        w.next_timer = Some(100);
        let plan = plan_write(&prev, &w, 1, 0, |p, b| (p, b) == (2, 0)).unwrap();
        let s = stamp(5, 4).unwrap();
        assert_eq!(
            plan.mutations[2..],
            [
                Mutation::TimerDelete {
                    account_id: "acc",
                    stamp: s,
                    partition: 2,
                    bucket: -1,
                    at: -1
                },
                Mutation::TimerInsert {
                    account_id: "acc",
                    stamp: s,
                    partition: 2,
                    bucket: 0,
                    at: 100
                },
            ]
        );
        // Unchanged timer: no index row at all.
        let mut same = write(3..=3);
        same.next_timer = Some(100);
        let again = plan_write(&plan.after, &same, 1, 0, |_, _| true).unwrap();
        assert_eq!(again.mutations.len(), 2);
    }

    #[test]
    fn offsets_merge_and_watermark_never_goes_back() {
        let mut prev = existing(8, stamp(5, 1).unwrap());
        prev.published_upto = 6;
        prev.offsets.insert(("usage".into(), 2), 50);
        prev.offsets.insert(("payments".into(), 2), 7);
        let mut w = write(9..=9);
        w.offsets = vec![InputOffset {
            topic: "usage".into(),
            partition: 2,
            next: 60,
        }];
        w.published_upto = Some(3);
        let plan = plan_write(&prev, &w, 1, 0, |_, _| true).unwrap();
        assert_eq!(plan.after.published_upto, 6);
        assert_eq!(plan.after.offsets[&("usage".to_string(), 2)], 60);
        assert_eq!(plan.after.offsets[&("payments".to_string(), 2)], 7);
        let Mutation::Account { offsets, .. } = &plan.mutations[0] else {
            panic!("account row first");
        };
        assert_eq!(offsets.len(), 2, "the whole map is written every time");
    }

    #[test]
    fn dead_letters_are_kept_in_the_row_until_acknowledged() {
        let mut prev = existing(2, stamp(5, 1).unwrap());
        prev.dead_letters.insert("d1".into(), b"one".to_vec());
        prev.dead_letters.insert("d2".into(), b"two".to_vec());
        let mut w = write(3..=3);
        w.dead_letters_published = vec!["d1".into(), "unknown".into()];
        w.dead_letters = vec![crate::store::DeadLetterRecord {
            id: "d3".into(),
            bytes: b"three".to_vec(),
        }];
        let plan = plan_write(&prev, &w, 1, 0, |_, _| true).unwrap();
        let kept: Vec<&str> = plan.after.dead_letters.keys().map(String::as_str).collect();
        assert_eq!(kept, ["d2", "d3"]);
        let Mutation::Account { dead_letters, .. } = &plan.mutations[0] else {
            panic!("account row first");
        };
        assert_eq!(dead_letters, &plan.after.dead_letters, "the whole map");
        // Part of the commit point: the row alone.
        assert_eq!(split(&plan, BATCH_BYTES).commit.mutations, [0]);
    }

    #[test]
    fn takeover_write_notes_a_fenced_range_and_moves_partition_index() {
        let mut prev = existing(4, stamp(2, 9).unwrap());
        prev.partition = 1;
        let w = write(5..=5);
        let plan = plan_write(&prev, &w, 1, 42, |_, _| true).unwrap();
        assert_eq!(epoch_of(plan.after.last_stamp), 5);
        assert_eq!(plan.after.fenced.len(), 1);
        assert_eq!(plan.after.fenced[0].after, stamp(2, 9).unwrap());
        assert!(plan.mutations.contains(&Mutation::PartitionAccountDelete {
            account_id: "acc",
            stamp: plan.after.last_stamp,
            partition: 1
        }));
        assert!(plan.mutations.contains(&Mutation::PartitionAccountInsert {
            account_id: "acc",
            stamp: plan.after.last_stamp,
            partition: 2
        }));
    }

    #[test]
    fn dedup_and_journal_go_first_and_the_account_row_last() {
        let mut w = write(1..=2);
        w.dedup = (0..3)
            .map(|k| DedupRecord {
                key: k,
                fingerprint: 1,
                seen_at: 1,
            })
            .collect();
        let prev = existing(0, 1);
        let plan = plan_write(&prev, &w, 1, 0, |_, _| true).unwrap();
        let batches = split(&plan, BATCH_BYTES);
        assert_eq!(
            batches,
            Batches {
                ahead: vec![
                    BatchPlan {
                        mutations: vec![1, 2]
                    },
                    BatchPlan {
                        mutations: vec![3, 4, 5]
                    },
                ],
                commit: BatchPlan { mutations: vec![0] },
                after: Vec::new(),
            }
        );
    }

    #[test]
    fn journal_batches_stay_within_one_block_and_the_budget() {
        let prev = existing(JOURNAL_BLOCK - 3, 1);
        let mut w = write(JOURNAL_BLOCK - 2..=JOURNAL_BLOCK + 40);
        for r in &mut w.journal {
            r.bytes = vec![0; 10_000];
        }
        w.snapshot = vec![0; 20_000];
        let plan = plan_write(&prev, &w, 1, 0, |_, _| true).unwrap();
        let batches = split(&plan, BATCH_BYTES);
        assert_eq!(batches.commit.mutations, [0], "the account row alone");
        assert!(batches.after.is_empty());
        let mut seen: Vec<usize> = batches
            .ahead
            .iter()
            .chain([&batches.commit])
            .flat_map(|b| b.mutations.clone())
            .collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..plan.mutations.len()).collect::<Vec<_>>(),
            "each mutation once"
        );
        for b in &batches.ahead {
            let blocks: std::collections::BTreeSet<i64> = b
                .mutations
                .iter()
                .map(|&i| match plan.mutations[i] {
                    Mutation::Journal { block, .. } => block,
                    ref other => panic!("{other:?} before the commit point"),
                })
                .collect();
            assert_eq!(blocks.len(), 1, "a batch spans one journal partition");
            let bytes: usize = b
                .mutations
                .iter()
                .map(|&i| size_of(&plan.mutations[i]))
                .sum();
            assert!(bytes <= BATCH_BYTES, "batch of {bytes} bytes");
        }
        // The rows of block 0 and of block 1 are in different batches.
        assert!(batches.ahead.len() > 4);
    }

    /// The (table, partition key) a mutation writes.
    fn cql_partition(m: &Mutation<'_>) -> String {
        match m {
            Mutation::Account { account_id, .. } => format!("accounts/{account_id}"),
            Mutation::Journal {
                account_id, block, ..
            } => format!("journal/{account_id}/{block}"),
            Mutation::Invoice { account_id, .. } => format!("invoices/{account_id}"),
            Mutation::Dedup { account_id, .. } => format!("dedup/{account_id}"),
            Mutation::TimerInsert {
                partition, bucket, ..
            }
            | Mutation::TimerDelete {
                partition, bucket, ..
            } => format!("timers/{partition}/{bucket}"),
            Mutation::BucketInsert { partition, .. } => format!("timer_buckets/{partition}"),
            Mutation::PartitionAccountInsert { partition, .. }
            | Mutation::PartitionAccountDelete { partition, .. } => {
                format!("partition_accounts/{partition}")
            }
        }
    }

    #[test]
    fn issue_15_every_batch_is_one_partition_within_the_budget_and_deletes_follow_the_commit_point()
    {
        // A takeover write of an account with a moved timer and partition,
        // 300 invoice documents of 4 KiB, journal rows and dedup ids: about
        // 1.5 MiB, which one batch could not carry on Cassandra or ScyllaDB.
        let mut prev = existing(10, stamp(2, 9).unwrap());
        prev.partition = 1;
        prev.next_timer = Some(7);
        let mut w = write(11..=210);
        for r in &mut w.journal {
            r.bytes = vec![0; 2_000];
        }
        w.invoices = (0..300)
            .map(|i| InvoiceRecord {
                invoice_id: format!("inv-{i}"),
                bytes: vec![b'x'; 4_000],
            })
            .collect();
        w.dedup = (0..500)
            .map(|k| DedupRecord {
                key: k,
                fingerprint: 1,
                seen_at: 1,
            })
            .collect();
        w.next_timer = Some(TIMER_BUCKET_MICROS * 2);
        let plan = plan_write(&prev, &w, 1, 0, |_, _| false).unwrap();
        let batches = split(&plan, BATCH_BYTES);

        for b in batches
            .ahead
            .iter()
            .chain(&batches.after)
            .chain([&batches.commit])
        {
            let partitions: std::collections::BTreeSet<String> = b
                .mutations
                .iter()
                .map(|&i| cql_partition(&plan.mutations[i]))
                .collect();
            assert_eq!(partitions.len(), 1, "a batch spans {partitions:?}");
            let bytes: usize = b
                .mutations
                .iter()
                .map(|&i| size_of(&plan.mutations[i]))
                .sum();
            assert!(bytes <= BATCH_BYTES, "batch of {bytes} bytes");
        }
        assert_eq!(batches.commit.mutations, [0], "the account row alone");
        let kinds = |bs: &[BatchPlan]| -> Vec<&'static str> {
            let mut kinds: Vec<&'static str> = bs
                .iter()
                .flat_map(|b| b.mutations.iter())
                .map(|&i| match plan.mutations[i] {
                    Mutation::Account { .. } => "account",
                    Mutation::Journal { .. } => "journal",
                    Mutation::Invoice { .. } => "invoice",
                    Mutation::Dedup { .. } => "dedup",
                    Mutation::TimerInsert { .. } => "timer insert",
                    Mutation::TimerDelete { .. } => "timer delete",
                    Mutation::BucketInsert { .. } => "bucket insert",
                    Mutation::PartitionAccountInsert { .. } => "partition insert",
                    Mutation::PartitionAccountDelete { .. } => "partition delete",
                })
                .collect();
            kinds.dedup();
            kinds
        };
        assert_eq!(
            kinds(&batches.ahead),
            [
                "journal",
                "invoice",
                "dedup",
                "timer insert",
                "bucket insert",
                "partition insert"
            ]
        );
        // A delete before the row could leave the row's timer or partition
        // unindexed if the row then failed.
        assert_eq!(kinds(&batches.after), ["timer delete", "partition delete"]);
        let count: usize = batches
            .ahead
            .iter()
            .chain(&batches.after)
            .map(|b| b.mutations.len())
            .sum();
        assert_eq!(count + 1, plan.mutations.len(), "each mutation once");
    }

    #[test]
    fn journal_blocks_hold_ten_thousand_entries() {
        assert_eq!(journal_block(1), 0);
        assert_eq!(journal_block(9_999), 0);
        assert_eq!(journal_block(10_000), 1);
        assert_eq!(journal_block(123_456), 12);
    }

    #[test]
    fn timer_buckets_are_utc_days_also_before_1970() {
        assert_eq!(timer_bucket(0), 0);
        assert_eq!(timer_bucket(TIMER_BUCKET_MICROS - 1), 0);
        assert_eq!(timer_bucket(TIMER_BUCKET_MICROS), 1);
        assert_eq!(timer_bucket(-1), -1);
        // 2026-11-22T00:00:00Z is day 20,779.
        assert_eq!(timer_bucket(1_795_305_600_000_000), 20_779);
    }
}
