//! The state store: where billing state of record lives.
//!
//! The trait is shaped for ScyllaDB (per-account partitions, one batched
//! write per account, no cross-account transactions) and implemented twice:
//! `scylla` for production, and an embedded store for the demo,
//! simulations, tests and single-machine use.
//! The store sees opaque bytes: the runtime serializes engine state, so the
//! same trait serves every backend without knowing billing rules.

mod embedded;
pub mod scylla;
mod stats;

pub use embedded::EmbeddedStore;
pub use scylla::ScyllaStore;
pub use stats::{StoreOp, StoreStats};

use std::future::Future;

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// One journal entry of one account: `seq` is the account's journal
/// sequence number, strictly increasing from 1 without gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub seq: u64,
    pub at: Micros,
    pub bytes: Vec<u8>,
}

/// An invoice document for the read API, upserted by `invoice_id`
/// (status changes rewrite it; an issued invoice's lines never change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRecord {
    pub invoice_id: String,
    pub bytes: Vec<u8>,
}

/// An input event id seen by an account, kept for the dedup window.
/// `key` is a 128-bit hash of the event id, `fingerprint` a hash of its
/// payload (same key + other fingerprint = conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRecord {
    pub key: u128,
    pub fingerprint: u64,
    pub seen_at: Micros,
}

/// The position after the last input record applied to an account, per
/// source (topic, partition): records below it are replays.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InputOffset {
    pub topic: String,
    pub partition: i32,
    /// Next offset to apply (last applied + 1).
    pub next: i64,
}

/// A dead letter kept with the account whose input position records the
/// rejected record (see `AccountWrite::dead_letters`): `id` is its
/// `event_id`, `bytes` the record as the runtime will publish it (opaque
/// to the store).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetterRecord {
    pub id: String,
    pub bytes: Vec<u8>,
}

/// Everything one batch changes for one account, written atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountWrite {
    pub account_id: String,
    /// Logical partition the account belongs to (timers are scanned and
    /// ownership is fenced per partition).
    pub partition: u32,
    /// Ownership epoch of the writer for `partition`; a write with an epoch
    /// older than the partition's current one fails with `Fenced`.
    pub epoch: u64,
    /// New snapshot of the account state (replaces the previous one).
    pub snapshot: Vec<u8>,
    /// Journal entries appended by this batch, in order.
    pub journal: Vec<JournalRecord>,
    /// Invoice documents created or updated by this batch.
    pub invoices: Vec<InvoiceRecord>,
    /// Event ids first seen in this batch.
    pub dedup: Vec<DedupRecord>,
    /// The account's next timer after this batch (replaces the previous
    /// one; `None` = no timer).
    pub next_timer: Option<Micros>,
    /// Input positions after this batch (upserted per topic/partition).
    pub offsets: Vec<InputOffset>,
    /// Outputs of journal entries up to this seq were acknowledged by the
    /// sink (carried on the next write instead of a write of its own; the
    /// watermark only rises and never passes the journal head).
    pub published_upto: Option<u64>,
    /// Dead letters of this batch's rejected records of the account (whose
    /// positions `offsets` moves past): kept, in the same atomic write, until
    /// the sink acknowledged them, so a crash before publishing cannot lose
    /// them (the replayed record is skipped as below the position).
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Ids of kept dead letters the sink acknowledged since the account's
    /// last write: no longer kept (ids not kept are ignored).
    pub dead_letters_published: Vec<String>,
}

/// What `load_account` returns: the latest snapshot and what sits next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    pub snapshot: Vec<u8>,
    /// Highest journal seq written (0 if none).
    pub journal_head: u64,
    /// Highest journal seq whose outputs were acknowledged by the sink.
    pub published_upto: u64,
    pub offsets: Vec<InputOffset>,
    pub next_timer: Option<Micros>,
    /// Dead letters kept and not yet acknowledged, ordered by id.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Which write this snapshot is, for reading its dedup window later
    /// (`StateStore::load_dedup_of`).
    pub version: SnapshotVersion,
}

/// What a store needs to read the dedup window that belongs to one
/// snapshot it returned, however the account's row moved since: on the
/// CQL store the snapshot's write stamp and the fenced stamp ranges beside
/// it (dedup rows of a later write, such as one of a fenced writer that
/// landed after a new owner loaded the snapshot, are not that snapshot's
/// history); nothing on the embedded store, whose writes are atomic and
/// whose fenced writes never land.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotVersion {
    /// The snapshot's write stamp (0: none kept).
    pub stamp: i64,
    /// Stamp ranges of fenced writers, as (after, before, noted at ms).
    pub fenced: Vec<(i64, i64, i64)>,
}

/// One account as `load_partition` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedAccount {
    pub account_id: String,
    pub stored: StoredAccount,
    /// Its dedup records seen at or after the `dedup_since` asked for.
    pub dedup: Vec<DedupRecord>,
}

/// Store failures, by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another instance owns the partition with a newer epoch: stop
    /// processing it, do not retry.
    #[error(
        "partition {partition} is owned by epoch {current}, this writer has epoch {attempted}"
    )]
    Fenced {
        partition: u32,
        current: u64,
        attempted: u64,
    },
    /// A journal append would leave a gap or rewrite an entry: a bug in the
    /// caller, never retried.
    #[error("journal of account {account_id}: expected seq {expected}, got {got}")]
    JournalSequence {
        account_id: String,
        expected: u64,
        got: u64,
    },
    /// The backend failed (I/O, timeout); safe to retry the same write.
    #[error("store backend: {0}")]
    Backend(String),
}

/// The state store. Every method is one logical store operation, counted in
/// `stats()`. Writes of one account are atomic; no operation spans accounts
/// transactionally (`commit` may group several accounts' writes for
/// efficiency, but each account's write must stand on its own).
pub trait StateStore: Send + Sync + 'static {
    /// Persist the writes of one batch: each account's write is atomic.
    fn commit(
        &self,
        writes: &[AccountWrite],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Latest snapshot of an account, or `None` if it was never written.
    fn load_account(
        &self,
        account_id: &str,
    ) -> impl Future<Output = Result<Option<StoredAccount>, StoreError>> + Send;

    /// Dedup records of an account seen at or after `since`.
    fn load_dedup(
        &self,
        account_id: &str,
        since: Micros,
    ) -> impl Future<Output = Result<Vec<DedupRecord>, StoreError>> + Send;

    /// `load_dedup` as of the snapshot `version` (`StoredAccount::version`)
    /// rather than the account's row as it is now: what a processor that
    /// loaded that snapshot earlier reads before the account's first input.
    /// The default is `load_dedup` (stores whose writes never land fenced).
    fn load_dedup_of(
        &self,
        account_id: &str,
        since: Micros,
        _version: &SnapshotVersion,
    ) -> impl Future<Output = Result<Vec<DedupRecord>, StoreError>> + Send {
        self.load_dedup(account_id, since)
    }

    /// Up to `limit` journal entries of an account with `seq >= from_seq`, in order.
    fn read_journal(
        &self,
        account_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JournalRecord>, StoreError>> + Send;

    /// Record that outputs of journal entries up to `seq` were acknowledged.
    fn mark_published(
        &self,
        account_id: &str,
        partition: u32,
        epoch: u64,
        seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One invoice document.
    fn invoice(
        &self,
        account_id: &str,
        invoice_id: &str,
    ) -> impl Future<Output = Result<Option<InvoiceRecord>, StoreError>> + Send;

    /// All invoice documents of an account, ordered by invoice id.
    fn invoices(
        &self,
        account_id: &str,
    ) -> impl Future<Output = Result<Vec<InvoiceRecord>, StoreError>> + Send;

    /// Accounts of `partition` whose next timer is at or before `up_to`,
    /// earliest first, at most `limit`.
    fn due_timers(
        &self,
        partition: u32,
        up_to: Micros,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Micros, String)>, StoreError>> + Send;

    /// All account ids of `partition` (for recovery and rebuilds).
    fn accounts(
        &self,
        partition: u32,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `limit` ids of accounts with a stored snapshot, across every
    /// partition, each once, in no particular order (the embedded store:
    /// id order). A scan of the account rows that stops at `limit`: for
    /// reports and the console (`api::reports`), never the hot path.
    /// Counted as `ListAccounts`.
    fn all_accounts(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Every account of `partition` with its snapshot and, when
    /// `dedup_since` is given, its dedup records seen at or after it (else
    /// none are read: the caller loads them with `load_dedup` when it
    /// needs them), in no particular order: what a new owner loads after
    /// claiming the partition. A store that can read them in one pass
    /// overrides this (counted once as `LoadPartition`); the default reads
    /// them account by account (each call counted as itself).
    fn load_partition(
        &self,
        partition: u32,
        dedup_since: Option<Micros>,
    ) -> impl Future<Output = Result<Vec<LoadedAccount>, StoreError>> + Send {
        async move {
            let mut loaded = Vec::new();
            for account_id in self.accounts(partition).await? {
                let Some(stored) = self.load_account(&account_id).await? else {
                    continue;
                };
                let dedup = match dedup_since {
                    Some(since) => self.load_dedup(&account_id, since).await?,
                    None => Vec::new(),
                };
                loaded.push(LoadedAccount {
                    account_id,
                    stored,
                    dedup,
                });
            }
            Ok(loaded)
        }
    }

    /// Take ownership of `partition`: returns the new epoch, strictly
    /// greater than any epoch granted before. Writes with older epochs fail.
    fn claim_partition(
        &self,
        partition: u32,
        owner: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Operation counters shared by every store implementation.
    fn stats(&self) -> &StoreStats;
}
