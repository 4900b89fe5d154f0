//! The batch processor: fold → persist → emit, the same for every edge.
//!
//! Records of one account are applied in the order they arrive; accounts
//! are independent. Changes accumulate per account until a flush, which
//! writes each changed account once (snapshot, journal, invoices, dedup
//! ids, next timer, input positions) and only then returns the outputs, so
//! nothing is published before the state that produced it is durable.
//! Each account remembers the input position after the last record it
//! applied: a replayed record below it is skipped, never applied twice.
//! A record is applied only to the account its Kafka key names (the key
//! decides the partition, and so the owner): one whose key is not its
//! payload's `account_id`, or that has none, is dead-lettered
//! `key_mismatch`. A rejected record of an existing account moves that
//! position too, so its dead letter is written with the account and kept
//! in the store until the sink acknowledged it, like any output; a record
//! that touches no stored account (decode error, key mismatch, unknown
//! account) moves no stored position and leaves nothing in memory: its
//! dead letter is durable through the input offset, committed only after
//! the letter was acknowledged, and a redelivery makes it again under the
//! same id.
//!
//! `flush` writes every changed account. `flush_due` (the Kafka loop) may
//! hold an account whose only changes are usage in memory for later
//! flushes, under a `Checkpoint` policy, so that one write covers many
//! usage events; its outputs wait with it, and `commit_floor` says from
//! which input offsets on nothing may be committed until it is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::contracts::{
    outputs_for, DeadLetter, DecodeError, Decoded, Decoder, OutputRecord, OutputTopic,
};
use crate::engine::dedup;
use crate::engine::events::{DomainEvent, Input, JournalEntry, UsageRecorded};
use crate::engine::fold::Outcome;
use crate::engine::time::Timestamp;
use crate::engine::{AccountState, Engine, Rejection};
use crate::source::partitioner::Partitioner;
use crate::store::{
    AccountWrite, DeadLetterRecord, DedupRecord, InputOffset, InvoiceRecord, JournalRecord,
    LoadedAccount, SnapshotVersion, StateStore, StoreError, StoredAccount,
};

/// Dedup windows read at once before a batch is folded
/// (`Processor::load_dedup_windows`).
const LOAD_DEDUP_CONCURRENCY: usize = 64;

/// Where an input record came from: topic (or file), partition, offset
/// (or line number). Kept with the journal entries it caused (lineage).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePos {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One record of a batch as it came off its topic: position, key (the
/// account id, as SPEC §2 keys every topic), bytes, the processing clock.
pub struct BatchRecord<'a> {
    pub pos: SourcePos,
    pub key: Option<&'a str>,
    pub raw: &'a [u8],
    pub now: Timestamp,
    /// Order among one account's records of the batch that come from
    /// different topics with the same timestamp: lower first (see
    /// `batch::group_by_account_in_time`).
    pub rank: u8,
    /// When the record was produced (Kafka timestamp, ms since the epoch):
    /// the instant it is processed at (`record_instant`) and the start of
    /// the produce-to-persisted latency; `None` when unknown.
    pub produced_ms: Option<i64>,
}

/// The instant a record of an input topic is processed at, which every
/// change it causes is stamped with (journal `at`, an output's
/// `occurred_at`, a dead letter's time) and timers are advanced to before
/// it is applied: when it was appended to its topic (its Kafka timestamp),
/// raised to the instant its event occurred, and never past the processing
/// clock `now`. So outputs are a function of the record and the state it
/// is applied to, not of when it happens to be processed: a new owner
/// deriving them again after a takeover, or a replay, publishes the same
/// bytes under the same ids (issue 15). The cap keeps a record stamped in
/// the future (a producer's clock ahead, or a hostile stamp) from firing
/// timers early: such a record is processed at its event's `occurred_at`
/// (capped likewise), one with no timestamp at `now`. A record
/// stamped more than `hold` before `now` (a producer that stamps records
/// with their event time, or a backlog older than `kafka.timer_hold`) is
/// processed at `now − hold`, so deadlines it sets (an interim invoice's
/// due date, a retry schedule) are never more than `hold` in the past; the
/// same bound holds timers back (`KafkaSource::timers_floor`).
pub fn record_instant(
    now: Timestamp,
    hold: i64,
    produced_ms: Option<i64>,
    occurred_at: Option<Timestamp>,
) -> Timestamp {
    let Some(appended) = produced_ms.and_then(|ms| ms.checked_mul(1000)) else {
        return now;
    };
    let at = match occurred_at {
        // Stamped ahead of the clock: the stamp says nothing; the event's
        // own instant does.
        Some(o) if appended > now.0 => o.0,
        Some(o) => o.0.max(appended),
        None => appended,
    };
    Timestamp(at.min(now.0).max(now.0.saturating_sub(hold)))
}

/// When an account whose only changes are usage is written (see
/// `Processor::flush_due`): once it holds `events` unwritten records, or
/// its changes have waited `interval`, or more than `max_unwritten`
/// records wait across all accounts. Any other change (an invoice, a
/// payment, a charge, a notification, a rejected record) is written at the
/// next flush. Holding is always safe, whatever it holds: nothing held is
/// published, and its input offsets are not committed, so a crash re-reads
/// and re-applies it; it is a matter of latency and memory only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub events: u32,
    pub interval: Duration,
    pub max_unwritten: u64,
}

impl From<&crate::config::BatchSettings> for Checkpoint {
    fn from(b: &crate::config::BatchSettings) -> Checkpoint {
        Checkpoint {
            events: b.checkpoint_events,
            interval: b.checkpoint_interval,
            max_unwritten: b.max_unwritten_events,
        }
    }
}

impl Checkpoint {
    /// Every change is written at the next flush.
    pub const EVERY_FLUSH: Checkpoint = Checkpoint {
        events: 1,
        interval: Duration::ZERO,
        max_unwritten: 0,
    };
}

/// Whether a change may wait in memory for the checkpoint: usage and its
/// hourly rollups, whose outputs feed statistics; invoices, payments,
/// charges and notifications go out at the next flush.
fn may_wait(event: &DomainEvent) -> bool {
    matches!(
        event,
        DomainEvent::UsageApplied { .. } | DomainEvent::UsageRolledUp { .. }
    )
}

/// Which changed accounts a flush writes.
#[derive(Debug, Clone, Copy)]
enum Due<'a> {
    All,
    /// Those of these partitions (and any that must be written anyway).
    Partitions(&'a BTreeSet<u32>),
    /// Those the policy says are due at this instant.
    Policy(&'a Checkpoint, Instant),
}

/// A journal entry as stored: the entry and the input position behind it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredJournalEntry {
    #[serde(flatten)]
    pub entry: JournalEntry,
    pub source: Option<SourcePos>,
}

/// Counters of what happened to inputs, for summaries and metrics.
#[derive(Debug, Clone, Default)]
pub struct ProcessorStats {
    pub applied: u64,
    pub duplicates: u64,
    /// Records below an account's stored input position (redelivery).
    pub replays_skipped: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub plans_loaded: u64,
    pub batches: u64,
    /// Account timers that came due and were advanced.
    pub timers_fired: u64,
}

/// A journal entry not yet written: the input position behind it and
/// that input's `traceparent`, if it carried one.
struct Unwritten {
    entry: JournalEntry,
    source: Option<SourcePos>,
    trace: Option<Arc<str>>,
}

#[derive(Default)]
struct Slot {
    state: Option<AccountState>,
    partition: u32,
    next_timer: Option<Timestamp>,
    journal: Vec<Unwritten>,
    dedup: Vec<DedupRecord>,
    offsets: BTreeMap<(String, i32), i64>,
    dirty_offsets: BTreeSet<(String, i32)>,
    dirty: bool,
    /// Highest journal seq persisted (as loaded, then as flushed).
    journal_head: u64,
    /// Outputs up to this seq were acknowledged by the sink.
    published_mark: u64,
    /// The watermark as last written to the store.
    mark_persisted: u64,
    /// Records applied since the account was last written.
    held: u32,
    /// Something other than usage changed the account since its last
    /// write (or one of its records was rejected): write at the next flush.
    must_write: bool,
    /// When a flush first left this account's changes unwritten.
    held_since: Option<Instant>,
    /// Per input topic-partition, the offset of the first record applied
    /// since the last write: nothing from there on may be committed yet.
    first_unwritten: Vec<((String, i32), i64)>,
    /// Produce times (ms) of the records applied since the last write.
    produced: Vec<i64>,
    /// Dead letters of rejected records of this account not written yet
    /// (they go out with the write that records their positions).
    dead_letters: Vec<OutputRecord>,
    /// Ids of written dead letters the sink acknowledged: the next write
    /// tells the store to stop keeping them.
    dead_letters_acked: Vec<String>,
    /// Dead letters the store kept unacknowledged when the account was
    /// loaded (a crash before publishing): published again.
    recovered_dead_letters: Vec<OutputRecord>,
    /// Loaded on demand (not with its partition) with journal entries
    /// written but never acknowledged: their outputs, from this seq to
    /// `journal_head` as loaded, go out again with the account's next
    /// write, ahead of its new outputs.
    republish_from: Option<u64>,
    /// Loaded with its partition without its dedup window (`load_partition`
    /// reads only the accounts: a restart or rebalance then reads one row
    /// per account, not two); the window is read before the account's
    /// first input is applied (`Processor::load_dedup_windows`, `load`).
    /// Timers need no dedup window. The window read is the one of the
    /// snapshot loaded (`StateStore::load_dedup_of`), whatever the
    /// account's row became since.
    dedup_pending: Option<SnapshotVersion>,
}

impl Slot {
    /// Count what a committed transaction published (`PublishedMark`) as
    /// published: outputs up to its seq are not republished, and its dead
    /// letters the store still keeps are dropped with the next write.
    fn apply_published_mark(&mut self, mark: PublishedMark) {
        self.published_mark = self.published_mark.max(mark.seq.min(self.journal_head));
        let (published, kept): (Vec<OutputRecord>, Vec<OutputRecord>) =
            std::mem::take(&mut self.recovered_dead_letters)
                .into_iter()
                .partition(|d| mark.dead_letters.contains(&d.event_id));
        self.recovered_dead_letters = kept;
        self.dead_letters_acked
            .extend(published.into_iter().map(|d| d.event_id));
    }
}

/// The accounts and journal seqs whose outputs one or more flushes handed
/// out, waiting for the sink's acknowledgement (see
/// `Processor::take_unacked`).
#[derive(Debug, Default)]
#[must_use = "pass it to Processor::acknowledged once the outputs are acknowledged"]
pub struct Unacked(Vec<Handed>);

/// What one flush (or a republish) handed out for one account: outputs of
/// its journal up to `seq`, and the dead letters `dead_letters`.
#[derive(Debug)]
struct Handed {
    account_id: String,
    seq: u64,
    dead_letters: Vec<String>,
}

/// A dead letter as the store keeps it (`DeadLetterRecord::bytes`): the
/// record exactly as it was handed to the sink, so a republish sends the
/// same thing under the same id.
#[derive(Serialize, Deserialize)]
struct KeptDeadLetter {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    record: serde_json::Value,
}

fn keep_dead_letter(o: &OutputRecord) -> Result<DeadLetterRecord, StoreError> {
    let kept = KeptDeadLetter {
        key: o.key.clone(),
        traceparent: o.traceparent.clone(),
        record: o.json.clone(),
    };
    Ok(DeadLetterRecord {
        id: o.event_id.clone(),
        bytes: serde_json::to_vec(&kept)
            .map_err(|e| StoreError::Backend(format!("dead letter {}: {e}", o.event_id)))?,
    })
}

fn restore_dead_letter(
    account_id: &str,
    kept: &DeadLetterRecord,
) -> Result<OutputRecord, StoreError> {
    let k: KeptDeadLetter = serde_json::from_slice(&kept.bytes).map_err(|e| {
        StoreError::Backend(format!(
            "dead letter {} of {account_id} does not parse: {e}",
            kept.id
        ))
    })?;
    let causation_id = k.record["causation_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(OutputRecord {
        topic: OutputTopic::Dlq,
        key: k.key,
        event_id: kept.id.clone(),
        causation_id,
        kind: "DeadLetter",
        json: k.record,
        traceparent: k.traceparent,
    })
}

/// Folds records through the engine for the accounts of the partitions it
/// owns, and persists them in batches.
pub struct Processor<S: StateStore> {
    engine: Engine,
    store: Arc<S>,
    /// Ownership epoch per partition this processor owns.
    epochs: HashMap<u32, u64>,
    accounts: HashMap<String, Slot>,
    timers: BTreeSet<(Timestamp, String)>,
    dirty: Vec<String>,
    dead_letters: Vec<OutputRecord>,
    journal_buf: Vec<JournalEntry>,
    /// `traceparent` of the batch's traced input records (see `trace_inputs`).
    traces: HashMap<SourcePos, String>,
    /// Accounts whose flushed outputs wait for the sink's acknowledgement,
    /// with the journal seq of the last entry and the dead letters handed out.
    awaiting_ack: Vec<Handed>,
    /// Produce times (ms) of records whose effects are now written (or
    /// needed no write), for `take_persisted_produce_times`.
    persisted_produced: Vec<i64>,
    /// Which records of unknown accounts may wait (`set_waiting`), and the
    /// positions of those that did in the last batch (`take_waiting`).
    wait_rule: Option<WaitRule>,
    waiting: Vec<SourcePos>,
    /// Every record waiting now (until it is folded again): no offset is
    /// committed past one (`waiting_floor`).
    held_back: BTreeSet<SourcePos>,
    /// The input topics' partitioner and partition count: a record outside
    /// the partition its key hashes to is dead-lettered `wrong_partition`
    /// (`set_partitioning`; `None`: not checked).
    partitioning: Option<(Partitioner, u32)>,
    /// How far before the processing clock a record may be processed
    /// (`record_instant`; `kafka.timer_hold`), in micros.
    record_hold: i64,
    /// With `kafka.transactional`: what committed transactions published
    /// for accounts of owned partitions that are not loaded yet (the
    /// progress topic as read at assignment, `learn_published`), applied
    /// when each is loaded.
    kafka_marks: HashMap<String, (u32, PublishedMark)>,
    pub stats: ProcessorStats,
}

/// What committed Kafka transactions published for one account
/// (`kafka.transactional`), as the progress topic (`topics.progress`)
/// keeps it: outputs of its journal up to `seq`, and the dead letters
/// `dead_letters` kept with its state. A record of the progress topic is
/// written in the same transaction as the outputs it speaks of, so it is
/// visible exactly when they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedMark {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<String>,
}

/// Records of accounts not opened yet that may wait for their opening
/// instead of being dead-lettered `unknown_account` at once: Kafka orders
/// records only within one partition of one topic, so an opening produced
/// (and flushed) before an account's first payment or usage can still be
/// read after them. The Kafka loop sets this per batch.
#[derive(Debug, Clone, Default)]
pub struct WaitRule {
    /// The accounts topic: its own records never wait.
    pub accounts_topic: String,
    /// Partitions whose accounts-topic partition still has records to read.
    pub partitions: BTreeSet<i32>,
    /// Records that already waited as long as allowed.
    pub expired: BTreeSet<SourcePos>,
    /// The plans topic has records the plan follower has not handed out
    /// yet: an opening naming a plan not known yet may wait for it.
    pub plans_unread: bool,
}

impl WaitRule {
    fn may_wait(&self, pos: &SourcePos) -> bool {
        pos.topic != self.accounts_topic
            && self.partitions.contains(&pos.partition)
            && !self.expired.contains(pos)
    }

    /// An opening whose plan is not known yet, while the plans topic has
    /// unread records.
    fn may_wait_for_plan(&self, pos: &SourcePos) -> bool {
        self.plans_unread
            && pos.topic == self.accounts_topic
            && self.partitions.contains(&pos.partition)
            && !self.expired.contains(pos)
    }
}

impl<S: StateStore> Processor<S> {
    /// A processor that owns no partition yet (see `assign_partition`).
    pub fn new(engine: Engine, store: Arc<S>) -> Processor<S> {
        Processor {
            engine,
            store,
            epochs: HashMap::new(),
            accounts: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            dead_letters: Vec::new(),
            journal_buf: Vec::new(),
            awaiting_ack: Vec::new(),
            traces: HashMap::new(),
            wait_rule: None,
            waiting: Vec::new(),
            held_back: BTreeSet::new(),
            partitioning: None,
            record_hold: i64::MAX,
            kafka_marks: HashMap::new(),
            persisted_produced: Vec::new(),
            stats: ProcessorStats::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The partitions this processor owns, with their epochs.
    pub fn owned_partitions(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.epochs.iter().map(|(p, e)| (*p, *e))
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The state of an account, if it is loaded and open.
    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id).and_then(|s| s.state.as_ref())
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountState> {
        self.accounts.values().filter_map(|s| s.state.as_ref())
    }

    /// How many accounts this processor holds in memory (open or not).
    pub fn resident_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Make sure the account is in memory (loading it from the store).
    async fn load(
        &mut self,
        account_id: &str,
        partition: u32,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if let Some(version) = self
            .accounts
            .get(account_id)
            .and_then(|s| s.dedup_pending.clone())
        {
            let since = self.engine.config.dedup_forget_before(now);
            let dedup = self
                .store
                .load_dedup_of(account_id, since, &version)
                .await?;
            self.merge_dedup(account_id, dedup);
        }
        if !self.accounts.contains_key(account_id) {
            let loaded = match self.store.load_account(account_id).await? {
                Some(stored) => {
                    let since = self.engine.config.dedup_forget_before(now);
                    let dedup = self.store.load_dedup(account_id, since).await?;
                    Some((stored, dedup))
                }
                None => None,
            };
            self.insert_slot(account_id, partition, loaded)?;
            // Loaded on demand, so `unpublished_outputs` (which runs when a
            // partition is assigned) never saw it: whatever it has written
            // and not published goes out with its next write, which is due
            // now so that this does not wait for its next input.
            let slot = self.accounts.get_mut(account_id).expect("inserted");
            if slot.state.is_some() && slot.journal_head > slot.published_mark {
                slot.republish_from = Some(slot.published_mark + 1);
            }
            if slot.republish_from.is_some() || !slot.recovered_dead_letters.is_empty() {
                slot.must_write = true;
                self.mark_dirty(account_id);
            }
        }
        Ok(())
    }

    /// Read the dedup windows of the accounts of `keys` loaded without
    /// theirs, `LOAD_DEDUP_CONCURRENCY` reads in flight, before a batch is
    /// folded (record by record, each would wait for its own read).
    async fn load_dedup_windows<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k str>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let pending: BTreeMap<String, SnapshotVersion> = keys
            .filter_map(|k| {
                let version = self.accounts.get(k)?.dedup_pending.clone()?;
                Some((k.to_string(), version))
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        // A record of the batch is processed at its log time, as early as
        // `record_hold` before `now` (`record_instant`): the window must
        // reach back from there, as the one-record path's does.
        let earliest = Timestamp(now.0.saturating_sub(self.record_hold));
        let since = self.engine.config.dedup_forget_before(earliest);
        // Owned ids and store handles: futures borrowing them would make
        // the loop's future not `Send` (rust-lang/rust#102211, with
        // `buffer_unordered` over closures returning borrowing futures).
        let reads = pending.into_iter().map(|(id, version)| {
            let store = Arc::clone(&self.store);
            async move {
                let window = store.load_dedup_of(&id, since, &version).await?;
                Ok::<_, StoreError>((id, window))
            }
        });
        let windows: Vec<(String, Vec<DedupRecord>)> = futures::stream::iter(reads)
            .buffer_unordered(LOAD_DEDUP_CONCURRENCY)
            .try_collect()
            .await?;
        for (id, window) in windows {
            self.merge_dedup(&id, window);
        }
        Ok(())
    }

    /// Add an account's stored dedup window to what it remembers (ids it
    /// applied since it was loaded are in both: inserting is idempotent).
    fn merge_dedup(&mut self, account_id: &str, window: Vec<DedupRecord>) {
        if let Some(slot) = self.accounts.get_mut(account_id) {
            slot.dedup_pending = None;
            if let Some(state) = slot.state.as_mut() {
                for r in window {
                    state.dedup.insert(r.key, r.fingerprint, r.seen_at);
                }
            }
        }
    }

    /// Put an account in memory from what the store returned (`None`: an
    /// account the store has never seen).
    fn insert_slot(
        &mut self,
        account_id: &str,
        partition: u32,
        loaded: Option<(StoredAccount, Vec<DedupRecord>)>,
    ) -> Result<(), StoreError> {
        let mut slot = Slot {
            partition,
            ..Slot::default()
        };
        if let Some((stored, dedup)) = loaded {
            let mut state: AccountState =
                serde_json::from_slice(&stored.snapshot).map_err(|e| {
                    StoreError::Backend(format!("snapshot of {account_id} does not parse: {e}"))
                })?;
            for r in dedup {
                state.dedup.insert(r.key, r.fingerprint, r.seen_at);
            }
            slot.offsets = stored
                .offsets
                .into_iter()
                .map(|o| ((o.topic, o.partition), o.next))
                .collect();
            slot.next_timer = stored.next_timer.map(Timestamp);
            slot.journal_head = stored.journal_head;
            slot.published_mark = stored.published_upto;
            slot.mark_persisted = stored.published_upto;
            slot.recovered_dead_letters = stored
                .dead_letters
                .iter()
                .map(|d| restore_dead_letter(account_id, d))
                .collect::<Result<_, _>>()?;
            if let Some(t) = slot.next_timer {
                self.timers.insert((t, account_id.to_string()));
            }
            slot.state = Some(state);
            if let Some((_, mark)) = self.kafka_marks.remove(account_id) {
                slot.apply_published_mark(mark);
            }
        }
        self.accounts.insert(account_id.to_string(), slot);
        Ok(())
    }

    /// Process one decoded record (or its decode error) at processing
    /// instant `now`. `raw` is kept for dead letters.
    pub async fn process(
        &mut self,
        pos: &SourcePos,
        key: Option<&str>,
        raw: &[u8],
        decoded: Result<Decoded, DecodeError>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let input = match decoded {
            Err(e) => {
                self.dead_letter(pos, key, e.kind(), e.to_string(), raw, None, now, None);
                return Ok(());
            }
            Ok(Decoded::Plan(plan)) => {
                let id = plan.plan_id.clone();
                // The plans topic is compacted by key: a plan under another
                // plan's (or version's) key could be compacted away by it.
                // Version 1 is keyed `plan_id` (as before versions) or
                // `plan_id@1`, a later version `plan_id@version`. (A record
                // without a key cannot be on a compacted topic; the file
                // edges have no keys.)
                let versioned = format!("{id}@{}", plan.version);
                let fits = |k: &str| k == versioned || (plan.version == 1 && k == id);
                if key.is_some_and(|k| !fits(k)) {
                    let rejection = Rejection::KeyMismatch {
                        key: key.map(str::to_string),
                        field: "plan_id",
                        expected: if plan.version == 1 { id } else { versioned },
                    };
                    self.dead_letter(
                        pos,
                        key,
                        rejection.kind(),
                        rejection.to_string(),
                        raw,
                        None,
                        now,
                        None,
                    );
                    return Ok(());
                }
                match self.engine.plans.upsert(plan) {
                    Ok(()) => self.stats.plans_loaded += 1,
                    Err(e) => self.dead_letter(
                        pos,
                        Some(&id),
                        "invalid_plan",
                        e.to_string(),
                        raw,
                        None,
                        now,
                        None,
                    ),
                }
                return Ok(());
            }
            Ok(Decoded::Input(input)) => input,
        };
        self.apply(pos, key, raw, &input, now).await
    }

    /// Process a batch of input-topic records account by account: the
    /// batch is grouped on the record key (`batch::group_by_account`, each
    /// account's records in arrival order) and every record is decoded
    /// right before it is folded, into one reused buffer. An account's
    /// state is then hot in cache for all its records of the batch. (The
    /// plans topic is a global table read on its own, not part of these
    /// batches; a plan record met here is applied where it stands.)
    pub async fn process_batch(
        &mut self,
        decoder: &Decoder,
        records: &[BatchRecord<'_>],
    ) -> Result<(), StoreError> {
        let ranks = records.iter().map(|r| r.rank).max().unwrap_or(0) + 1;
        let times: Vec<i64> = records
            .iter()
            .map(|r| r.produced_ms.unwrap_or(i64::MIN))
            .collect();
        let order = super::batch::group_by_account_in_time(
            records.iter().map(|r| (r.key.unwrap_or(""), r.rank)),
            ranks,
            &times,
        );
        if let Some(first) = records.first() {
            self.load_dedup_windows(records.iter().filter_map(|r| r.key), first.now)
                .await?;
        }
        let mut scratch = Decoded::Input(Input::Usage(UsageRecorded::default()));
        for i in order {
            let r = &records[i as usize];
            let account = match decoder.decode_into(r.raw, &mut scratch) {
                Ok(()) => match &scratch {
                    Decoded::Input(input) => {
                        let at = record_instant(
                            r.now,
                            self.record_hold,
                            r.produced_ms,
                            Some(input.occurred_at()),
                        );
                        self.apply(&r.pos, r.key, r.raw, input, at).await?;
                        Some(input.account_id()).filter(|a| r.key == Some(*a))
                    }
                    plan @ Decoded::Plan(_) => {
                        self.process(&r.pos, r.key, r.raw, Ok(plan.clone()), r.now)
                            .await?;
                        None
                    }
                },
                Err(e) => {
                    let at = record_instant(r.now, self.record_hold, r.produced_ms, None);
                    self.process(&r.pos, r.key, r.raw, Err(e), at).await?;
                    None
                }
            };
            if let Some(produced) = r.produced_ms {
                // Timed when the account's write lands, or now if nothing
                // of the record waits to be written.
                match account
                    .and_then(|a| self.accounts.get_mut(a))
                    .filter(|s| s.dirty)
                {
                    Some(slot) => slot.produced.push(produced),
                    None => self.persisted_produced.push(produced),
                }
            }
        }
        Ok(())
    }

    /// Apply one decoded input.
    pub async fn apply(
        &mut self,
        pos: &SourcePos,
        key: Option<&str>,
        raw: &[u8],
        input: &Input,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if !self.held_back.is_empty() {
            self.held_back.remove(pos);
        }
        let account_id = input.account_id();
        let partition = u32::try_from(pos.partition).unwrap_or(0);
        // Applied under another key, or in a partition its key does not
        // hash to, the account would be folded by the owner of that
        // partition as well as by its own: two owners of one account.
        let misplaced = if key != Some(account_id) {
            Some(Rejection::KeyMismatch {
                key: key.map(str::to_string),
                field: "account_id",
                expected: account_id.to_string(),
            })
        } else {
            self.partitioning.and_then(|(partitioner, partitions)| {
                let expected = partitioner.partition_of(account_id.as_bytes(), partitions)?;
                (expected != partition).then(|| Rejection::WrongPartition {
                    key: account_id.to_string(),
                    partition,
                    expected,
                    partitions,
                    partitioner: partitioner.name(),
                })
            })
        };
        if let Some(rejection) = misplaced {
            self.dead_letter(
                pos,
                key,
                rejection.kind(),
                rejection.to_string(),
                raw,
                Some(input),
                now,
                None,
            );
            return Ok(());
        }
        self.load(account_id, partition, now).await?;
        let Self {
            accounts,
            engine,
            journal_buf,
            stats,
            traces,
            ..
        } = self;
        let slot = accounts.get_mut(account_id).expect("loaded above");
        let source = (pos.topic.clone(), pos.partition);
        if slot
            .offsets
            .get(&source)
            .is_some_and(|next| pos.offset < *next)
        {
            stats.replays_skipped += 1;
            return Ok(());
        }
        let out = journal_buf;
        let result = engine.apply(&mut slot.state, input, now, out);
        let had_state = slot.state.is_some();
        // Most batches carry no trace: skip hashing the position then.
        let trace: Option<Arc<str>> = if traces.is_empty() {
            None
        } else {
            traces.get(pos).map(|t| Arc::from(t.as_str()))
        };
        for entry in out.drain(..) {
            let own = *entry.causation_id == *input.event_id();
            slot.must_write |= !may_wait(&entry.event);
            slot.journal.push(Unwritten {
                entry,
                source: own.then(|| pos.clone()),
                trace: trace.clone().filter(|_| own),
            });
        }
        match &result {
            Ok(Outcome::Applied) => {
                slot.dedup.push(DedupRecord {
                    key: dedup::key(input.event_id()),
                    fingerprint: dedup::fingerprint(input),
                    seen_at: dedup::remembered_from(input, now),
                });
                stats.applied += 1;
            }
            Ok(Outcome::Duplicate) => stats.duplicates += 1,
            Err(_) => {}
        }
        if !had_state {
            // Never opened (or its opening was rejected): nothing of it is
            // kept in memory, however many such ids arrive.
            debug_assert!(slot.journal.is_empty() && !slot.dirty);
            accounts.remove(account_id);
        } else {
            if !slot.first_unwritten.iter().any(|(s, _)| *s == source) {
                slot.first_unwritten.push((source.clone(), pos.offset));
            }
            slot.held = slot.held.saturating_add(1);
            // A rejected record's position is written at the next flush,
            // with its dead letter (kept until acknowledged): a replay is
            // skipped, and a crash before publishing republishes the letter.
            slot.must_write |= result.is_err();
            slot.offsets.insert(source.clone(), pos.offset + 1);
            slot.dirty_offsets.insert(source);
            self.mark_dirty(account_id);
        }
        if let Err(rejection) = result {
            let waits = match rejection {
                Rejection::UnknownAccount { .. } => {
                    self.wait_rule.as_ref().is_some_and(|r| r.may_wait(pos))
                }
                // An opening (nothing of the account kept) whose plan the
                // plan follower may not have handed out yet.
                Rejection::UnknownPlan { .. } if !had_state => self
                    .wait_rule
                    .as_ref()
                    .is_some_and(|r| r.may_wait_for_plan(pos)),
                _ => false,
            };
            if waits {
                // Nothing of it was kept: it is folded again later, as if
                // it arrived then (its offset is not committed meanwhile).
                self.waiting.push(pos.clone());
                self.held_back.insert(pos.clone());
                return Ok(());
            }
            self.dead_letter(
                pos,
                key,
                rejection.kind(),
                rejection.to_string(),
                raw,
                Some(input),
                now,
                had_state.then_some(account_id),
            );
        }
        Ok(())
    }

    /// Which records of accounts not known yet may wait for their opening
    /// from now on (`None`: none, every one is dead-lettered at once).
    /// Check every input record against the partition its key hashes to
    /// under `partitioner` with `partitions` partitions (the Kafka loop
    /// sets it from `kafka.input_partitioner` and the input topics).
    pub fn set_partitioning(&mut self, partitioner: Partitioner, partitions: u32) {
        self.partitioning = (partitioner != Partitioner::Any && partitions > 0)
            .then_some((partitioner, partitions));
    }

    /// Process no record earlier than `hold` before the processing clock
    /// (`kafka.timer_hold`; see `record_instant`).
    pub fn set_record_hold(&mut self, hold: std::time::Duration) {
        self.record_hold = i64::try_from(hold.as_micros()).unwrap_or(i64::MAX);
    }

    pub fn set_waiting(&mut self, rule: Option<WaitRule>) {
        self.wait_rule = rule;
    }

    /// The positions of the records that waited since the last call:
    /// neither applied nor dead-lettered; the caller folds them again.
    pub fn take_waiting(&mut self) -> Vec<SourcePos> {
        std::mem::take(&mut self.waiting)
    }

    /// Per input (topic, partition), the lowest offset of a record waiting
    /// for its account's opening: no commit may reach past it (the record
    /// was never applied nor dead-lettered), whatever else is written.
    pub fn waiting_floor(&self) -> Vec<((String, i32), i64)> {
        let mut floor: Vec<((String, i32), i64)> = Vec::new();
        for pos in &self.held_back {
            let source = (pos.topic.clone(), pos.partition);
            if !floor.iter().any(|(s, _)| *s == source) {
                // Ordered by (topic, partition, offset): the first is lowest.
                floor.push((source, pos.offset));
            }
        }
        floor
    }

    fn mark_dirty(&mut self, account_id: &str) {
        let Some(slot) = self.accounts.get_mut(account_id) else {
            return;
        };
        if let Some(st) = &slot.state {
            let next = self.engine.next_timer(st);
            if next != slot.next_timer {
                if let Some(old) = slot.next_timer {
                    self.timers.remove(&(old, account_id.to_string()));
                }
                if let Some(t) = next {
                    self.timers.insert((t, account_id.to_string()));
                }
                slot.next_timer = next;
            }
        }
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(account_id.to_string());
        }
    }

    /// Count a rejected record and dead-letter it: with `account` when
    /// that account has state (written, and kept until acknowledged, with
    /// the position that moves past the record), else with the next flush,
    /// durable through the input offset (see the module doc). Every dead
    /// letter is made here, and masked here (`DeadLetter::redacted`: reason,
    /// key and payload; `decoded` is the input the bytes decoded to, if
    /// they did) before it is kept anywhere.
    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &mut self,
        pos: &SourcePos,
        key: Option<&str>,
        kind: &'static str,
        reason: String,
        raw: &[u8],
        decoded: Option<&Input>,
        now: Timestamp,
        account: Option<&str>,
    ) {
        *self.stats.rejected.entry(kind).or_default() += 1;
        let dl = DeadLetter {
            source_topic: pos.topic.clone(),
            partition: pos.partition,
            offset: pos.offset,
            key: key.map(str::to_string),
            error_kind: kind.to_string(),
            reason,
            payload: raw.to_vec(),
            received_at: now,
        }
        .redacted(decoded);
        let mut out = dl.to_output();
        out.traceparent = self.traceparent_of(pos, &out.event_id);
        match account.and_then(|a| self.accounts.get_mut(a)) {
            Some(slot) => slot.dead_letters.push(out),
            None => self.dead_letters.push(out),
        }
    }

    /// Trace contexts (W3C `traceparent`) of input records of the batch in
    /// hand, by position: the outputs they cause carry the trace on (kept
    /// with the journal entries they cause until those are written).
    pub fn trace_inputs(&mut self, traces: HashMap<SourcePos, String>) {
        self.traces = traces;
    }

    fn traceparent_of(&self, pos: &SourcePos, event_id: &str) -> Option<String> {
        self.traces
            .get(pos)
            .and_then(|t| crate::contracts::child_traceparent(t, event_id))
    }

    /// Fire the timers of every loaded account due at or before `now`,
    /// including accounts that received no input.
    pub fn advance_timers(&mut self, now: Timestamp) {
        while let Some((t, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            let (_, account_id) = self.timers.pop_first().expect("checked above");
            let Some(slot) = self.accounts.get_mut(&account_id) else {
                continue;
            };
            slot.next_timer = None;
            self.stats.timers_fired += 1;
            if let Some(st) = slot.state.as_mut() {
                let mut out = std::mem::take(&mut self.journal_buf);
                self.engine.advance(st, now, &mut out);
                slot.must_write |= out.iter().any(|e| !may_wait(&e.event));
                slot.journal.extend(out.drain(..).map(|entry| Unwritten {
                    entry,
                    source: None,
                    trace: None,
                }));
                self.journal_buf = out;
            }
            self.mark_dirty(&account_id);
        }
    }

    /// The earliest timer of any loaded account.
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Take over `partition` with the ownership `epoch` that
    /// `StateStore::claim_partition` granted: writes of its accounts carry
    /// that epoch from now on, and every account of the partition is loaded
    /// from the store so its timers fire without input (its dedup window
    /// is read later, before its first input). Returns how many accounts
    /// were loaded.
    pub async fn assign_partition(
        &mut self,
        partition: u32,
        epoch: u64,
    ) -> Result<usize, StoreError> {
        // The accounts only: each one's dedup window is read before its
        // first input is applied (`Slot::dedup_pending`).
        let loaded = self.store.load_partition(partition, None).await?;
        self.adopt_partition(partition, epoch, loaded)
    }

    /// `assign_partition` with the partition's accounts already read
    /// (`StateStore::load_partition` without a dedup instant, after the
    /// claim that granted `epoch`), so a member can read several
    /// partitions at once. Returns how many accounts were loaded.
    pub fn adopt_partition(
        &mut self,
        partition: u32,
        epoch: u64,
        loaded: Vec<LoadedAccount>,
    ) -> Result<usize, StoreError> {
        self.epochs.insert(partition, epoch);
        let count = loaded.len();
        for account in loaded {
            if !self.accounts.contains_key(&account.account_id) {
                let version = account.stored.version.clone();
                self.insert_slot(
                    &account.account_id,
                    partition,
                    Some((account.stored, account.dedup)),
                )?;
                if let Some(slot) = self.accounts.get_mut(&account.account_id) {
                    slot.dedup_pending = Some(version);
                }
            }
        }
        Ok(count)
    }

    /// Let go of `partition` (revoked, or lost to another owner): forget its
    /// epoch and drop its accounts from memory, with their timers and any
    /// change not yet flushed (whoever owns the partition next reloads it
    /// from the store and re-reads the records behind those changes, whose
    /// offsets were never committed). Returns how many accounts were dropped.
    pub fn release_partition(&mut self, partition: u32) -> usize {
        self.epochs.remove(&partition);
        self.kafka_marks.retain(|_, (p, _)| *p != partition);
        self.held_back
            .retain(|pos| u32::try_from(pos.partition).unwrap_or(0) != partition);
        let ids = self.accounts_of(partition);
        for id in &ids {
            if let Some(slot) = self.accounts.remove(id) {
                if let Some(t) = slot.next_timer {
                    self.timers.remove(&(t, id.clone()));
                }
            }
        }
        let accounts = &self.accounts;
        self.dirty.retain(|id| accounts.contains_key(id));
        self.awaiting_ack
            .retain(|h| accounts.contains_key(&h.account_id));
        ids.len()
    }

    /// Ids of the loaded accounts of `partition`.
    fn accounts_of(&self, partition: u32) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|(_, s)| s.partition == partition)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Dead letters waiting to be published: those that need no state
    /// write, and those to be written with their accounts.
    pub fn pending_dead_letters(&self) -> usize {
        self.dead_letters.len()
            + self
                .dirty
                .iter()
                .filter_map(|id| self.accounts.get(id))
                .map(|s| s.dead_letters.len())
                .sum::<usize>()
    }

    /// Persist every changed account (one write each), then return the
    /// outputs of what was persisted, in journal order per account.
    pub async fn flush(&mut self) -> Result<Vec<OutputRecord>, StoreError> {
        self.flush_where(Due::All).await
    }

    /// Persist the changed accounts that `policy` says are due at `now`
    /// (an account with any change other than usage always is), and return
    /// their outputs; the others stay in memory, their outputs with them,
    /// until a later flush. See `commit_floor` for the offsets they hold.
    pub async fn flush_due(
        &mut self,
        policy: &Checkpoint,
        now: Instant,
    ) -> Result<Vec<OutputRecord>, StoreError> {
        self.flush_where(Due::Policy(policy, now)).await
    }

    /// Persist every changed account of `partitions` (before letting them
    /// go), and any other account that must be written anyway.
    pub async fn flush_partitions(
        &mut self,
        partitions: &BTreeSet<u32>,
    ) -> Result<Vec<OutputRecord>, StoreError> {
        self.flush_where(Due::Partitions(partitions)).await
    }

    async fn flush_where(&mut self, due: Due<'_>) -> Result<Vec<OutputRecord>, StoreError> {
        let dirty = std::mem::take(&mut self.dirty);
        let held: u64 = dirty
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .map(|s| u64::from(s.held))
            .sum();
        let (to_write, kept): (Vec<String>, Vec<String>) = dirty.into_iter().partition(|id| {
            let slot = &self.accounts[id];
            slot.must_write
                || match due {
                    Due::All => true,
                    Due::Partitions(ps) => ps.contains(&slot.partition),
                    Due::Policy(policy, now) => {
                        held > policy.max_unwritten
                            || slot.held >= policy.events
                            || slot.held_since.is_some_and(|t| {
                                now.saturating_duration_since(t) >= policy.interval
                            })
                    }
                }
        });
        self.dirty = kept;
        if let Due::Policy(_, now) = due {
            for id in &self.dirty {
                let slot = self
                    .accounts
                    .get_mut(id)
                    .expect("dirty accounts are loaded");
                slot.held_since.get_or_insert(now);
            }
        }
        // Outputs of accounts loaded on demand that were never published
        // (`Slot::republish_from`), read before the write, sent ahead of
        // the new ones.
        let mut republished: HashMap<String, Vec<OutputRecord>> = HashMap::new();
        for id in &to_write {
            let slot = &self.accounts[id];
            if let (Some(from), Some(st)) = (slot.republish_from, &slot.state) {
                let mut out = Vec::new();
                if let Err(e) = self
                    .republish_journal(id, from, slot.journal_head, st.currency, &mut out)
                    .await
                {
                    self.dirty.extend(to_write);
                    return Err(e);
                }
                republished.insert(id.clone(), out);
            }
        }
        if let Err(e) = self.write(&to_write).await {
            // Nothing was written: every account stays changed.
            self.dirty.extend(to_write);
            return Err(e);
        }
        self.stats.batches += 1;
        let mut outputs = Vec::new();
        for account_id in to_write {
            let again = republished.remove(&account_id);
            let slot = self
                .accounts
                .get_mut(&account_id)
                .expect("dirty accounts are loaded");
            slot.dirty = false;
            slot.must_write = false;
            slot.republish_from = None;
            slot.held = 0;
            slot.held_since = None;
            slot.first_unwritten.clear();
            slot.dedup.clear();
            slot.dirty_offsets.clear();
            self.persisted_produced.append(&mut slot.produced);
            slot.mark_persisted = slot.mark_persisted.max(slot.published_mark);
            slot.dead_letters_acked.clear();
            // Written now, and kept by the store until acknowledged (with
            // any the store still kept at load that no republish took).
            let mut letters = std::mem::take(&mut slot.dead_letters);
            letters.append(&mut slot.recovered_dead_letters);
            let mut seq = slot.journal.last().map(|last| last.entry.seq);
            if let Some(seq) = seq {
                slot.journal_head = seq;
            }
            if let Some(mut again) = again {
                // Acknowledged with this write's outputs, up to its head.
                outputs.append(&mut again);
                seq = Some(slot.journal_head);
            }
            if seq.is_some() || !letters.is_empty() {
                self.awaiting_ack.push(Handed {
                    account_id: account_id.clone(),
                    seq: seq.unwrap_or(0),
                    dead_letters: letters.iter().map(|o| o.event_id.clone()).collect(),
                });
            }
            let Some(st) = &slot.state else {
                slot.journal.clear();
                outputs.append(&mut letters);
                continue;
            };
            for pending in slot.journal.drain(..) {
                let mut out = outputs_for(&pending.entry, st.currency);
                if let Some(trace) = &pending.trace {
                    for o in &mut out {
                        o.traceparent = crate::contracts::child_traceparent(trace, &o.event_id);
                    }
                }
                outputs.extend(out);
            }
            outputs.append(&mut letters);
        }
        self.traces.clear();
        outputs.append(&mut self.dead_letters);
        Ok(outputs)
    }

    /// Write `accounts` (all changed and loaded) to the store in one commit.
    async fn write(&self, accounts: &[String]) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(accounts.len());
        for account_id in accounts {
            let slot = &self.accounts[account_id];
            let Some(st) = &slot.state else { continue };
            let snapshot = serde_json::to_vec(st)
                .map_err(|e| StoreError::Backend(format!("snapshot of {account_id}: {e}")))?;
            let mut journal = Vec::with_capacity(slot.journal.len());
            let mut invoices = Vec::new();
            for pending in &slot.journal {
                let entry = &pending.entry;
                if let DomainEvent::InvoiceIssued { invoice } = &entry.event {
                    invoices.push(InvoiceRecord {
                        invoice_id: invoice.invoice_id.clone(),
                        bytes: serde_json::to_vec(invoice)
                            .map_err(|e| StoreError::Backend(e.to_string()))?,
                    });
                }
                let stored = StoredJournalEntry {
                    entry: entry.clone(),
                    source: pending.source.clone(),
                };
                journal.push(JournalRecord {
                    seq: entry.seq,
                    at: entry.at.0,
                    bytes: serde_json::to_vec(&stored)
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                });
            }
            writes.push(AccountWrite {
                account_id: account_id.clone(),
                partition: slot.partition,
                // A partition this processor does not own writes with
                // epoch 0, which the store fences once anyone claimed it.
                epoch: self.epochs.get(&slot.partition).copied().unwrap_or(0),
                snapshot,
                journal,
                invoices,
                dedup: slot.dedup.clone(),
                next_timer: slot.next_timer.map(|t| t.0),
                published_upto: (slot.published_mark > slot.mark_persisted)
                    .then_some(slot.published_mark),
                dead_letters: slot
                    .dead_letters
                    .iter()
                    .map(keep_dead_letter)
                    .collect::<Result<_, _>>()?,
                dead_letters_published: slot.dead_letters_acked.clone(),
                offsets: slot
                    .dirty_offsets
                    .iter()
                    .map(|(topic, partition)| InputOffset {
                        topic: topic.clone(),
                        partition: *partition,
                        next: slot.offsets[&(topic.clone(), *partition)],
                    })
                    .collect(),
            });
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.store.commit(&writes).await
    }

    /// Per input topic-partition, the lowest offset whose effects are not
    /// written yet (held by `flush_due`), or of a record waiting for its
    /// account's opening (`waiting_floor`): commit nothing at or above it.
    /// Empty when every change is written and nothing waits.
    pub fn commit_floor(&self) -> Vec<((String, i32), i64)> {
        let mut floor = self.waiting_floor();
        for slot in self.dirty.iter().filter_map(|id| self.accounts.get(id)) {
            for (source, first) in &slot.first_unwritten {
                match floor.iter_mut().find(|(s, _)| s == source) {
                    Some((_, f)) => *f = (*f).min(*first),
                    None => floor.push((source.clone(), *first)),
                }
            }
        }
        floor
    }

    /// The partitions of the accounts whose changes are not written yet.
    pub fn unwritten_partitions(&self) -> BTreeSet<u32> {
        self.dirty
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .map(|s| s.partition)
            .collect()
    }

    /// Records applied to accounts whose changes are not written yet.
    pub fn held_records(&self) -> u64 {
        self.dirty
            .iter()
            .filter_map(|id| self.accounts.get(id))
            .map(|s| u64::from(s.held))
            .sum()
    }

    /// Produce times (ms since the epoch) of the records whose effects
    /// were written since the last call (or needed no write).
    pub fn take_persisted_produce_times(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.persisted_produced)
    }

    /// With `kafka.transactional`, before `assign_partition`: what
    /// committed transactions published for accounts of `partition`, as
    /// read from the progress topic (account id → record). Each account
    /// then counts those outputs and dead letters as published when it is
    /// loaded (now or on demand), whatever watermark its stored state
    /// carries: a crash, takeover or hand-over between a transaction's
    /// commit and the account's next write publishes nothing twice.
    pub fn learn_published(
        &mut self,
        partition: u32,
        records: HashMap<String, Vec<u8>>,
    ) -> Result<usize, StoreError> {
        let count = records.len();
        for (account_id, bytes) in records {
            let mark: PublishedMark = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Backend(format!(
                    "progress record of {account_id} does not parse: {e}"
                ))
            })?;
            match self.accounts.get_mut(&account_id) {
                Some(slot) => slot.apply_published_mark(mark),
                None => {
                    self.kafka_marks.insert(account_id, (partition, mark));
                }
            }
        }
        Ok(count)
    }

    /// The progress records (`topics.progress`) for the outputs behind
    /// `unacked`, to be written in the transaction that publishes them:
    /// per account, its journal seq published so far including these, and
    /// the dead letters among them.
    pub fn progress_records(&self, unacked: &Unacked) -> Vec<(String, u32, PublishedMark)> {
        let mut marks: BTreeMap<&str, (u32, PublishedMark)> = BTreeMap::new();
        for handed in &unacked.0 {
            let Some(slot) = self.accounts.get(&handed.account_id) else {
                continue;
            };
            let (_, mark) = marks.entry(&handed.account_id).or_insert_with(|| {
                (
                    slot.partition,
                    PublishedMark {
                        seq: slot.published_mark,
                        dead_letters: Vec::new(),
                    },
                )
            });
            mark.seq = mark.seq.max(handed.seq);
            mark.dead_letters
                .extend(handed.dead_letters.iter().cloned());
        }
        marks
            .into_iter()
            .map(|(id, (p, mark))| (id.to_string(), p, mark))
            .collect()
    }

    /// The sink acknowledged every output `flush` (and
    /// `unpublished_outputs`) returned so far: remember it; the watermark
    /// is written with each account's next write (so a crash before that
    /// republishes those outputs with the same ids).
    pub fn published(&mut self) {
        let all = self.take_unacked();
        self.acknowledged(all);
    }

    /// What the outputs handed out since the last call stand for, to be
    /// passed to `acknowledged` once the sink confirmed them. Lets a caller
    /// keep several flushes in flight and confirm them one at a time.
    pub fn take_unacked(&mut self) -> Unacked {
        Unacked(std::mem::take(&mut self.awaiting_ack))
    }

    /// The sink acknowledged the outputs behind `unacked`. Accounts that
    /// were released in between are skipped (their next owner reads the
    /// watermark from the store and republishes the rest).
    pub fn acknowledged(&mut self, unacked: Unacked) {
        for handed in unacked.0 {
            if let Some(slot) = self.accounts.get_mut(&handed.account_id) {
                slot.published_mark = slot.published_mark.max(handed.seq);
                slot.dead_letters_acked.extend(handed.dead_letters);
            }
        }
    }

    /// Write the published watermark of every account whose mark moved,
    /// and drop its acknowledged dead letters from the store (at shutdown,
    /// so a clean restart republishes nothing).
    pub async fn persist_published_marks(&mut self) -> Result<(), StoreError> {
        let ids: Vec<String> = self
            .accounts
            .iter()
            .filter(|(_, s)| {
                s.state.is_some()
                    && (s.published_mark > s.mark_persisted || !s.dead_letters_acked.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.mark_dirty(id);
        }
        let outputs = self.flush().await?;
        debug_assert!(
            outputs.is_empty(),
            "no state changed, so nothing to publish"
        );
        self.published();
        Ok(())
    }

    /// Outputs that were persisted but never acknowledged (a crash between
    /// commit and publish), for the loaded accounts of `partition`: those
    /// of journal entries, re-derived from the journal with the same ids,
    /// and the dead letters the store kept. Publish them, then call
    /// `published`.
    pub async fn unpublished_outputs(
        &mut self,
        partition: u32,
    ) -> Result<Vec<OutputRecord>, StoreError> {
        let mut outputs = Vec::new();
        for id in self.accounts_of(partition) {
            let Some(slot) = self.accounts.get_mut(&id) else {
                continue;
            };
            let letters = std::mem::take(&mut slot.recovered_dead_letters);
            let (head, published) = (slot.journal_head, slot.published_mark);
            let currency = slot.state.as_ref().map(|s| s.currency);
            let seq = match currency {
                Some(currency) if head > published => {
                    self.republish_journal(&id, published + 1, head, currency, &mut outputs)
                        .await?;
                    head
                }
                _ => 0,
            };
            if seq > 0 || !letters.is_empty() {
                self.awaiting_ack.push(Handed {
                    account_id: id,
                    seq,
                    dead_letters: letters.iter().map(|o| o.event_id.clone()).collect(),
                });
            }
            outputs.extend(letters);
        }
        Ok(outputs)
    }

    /// Outputs of the journal entries `from..=head` of `id`, appended to
    /// `outputs`.
    async fn republish_journal(
        &self,
        id: &str,
        mut from: u64,
        head: u64,
        currency: crate::engine::money::Currency,
        outputs: &mut Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        while from <= head {
            let page = self.store.read_journal(id, from, 1000).await?;
            if page.is_empty() {
                break;
            }
            for record in &page {
                let stored_entry: StoredJournalEntry = serde_json::from_slice(&record.bytes)
                    .map_err(|e| {
                        StoreError::Backend(format!("journal {id}/{}: {e}", record.seq))
                    })?;
                outputs.extend(outputs_for(&stored_entry.entry, currency));
                from = record.seq + 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::record_instant;

    fn record_instant_h(
        now: Timestamp,
        produced_ms: Option<i64>,
        occurred_at: Option<Timestamp>,
    ) -> Timestamp {
        record_instant(now, HOLD, produced_ms, occurred_at)
    }
    use crate::engine::time::Timestamp;

    const S: i64 = 1_000_000;
    const HOLD: i64 = 3_600 * S;

    #[test]
    fn a_record_is_processed_at_its_log_time_whenever_it_is_read() {
        // Appended at t = 100 s: read at 150 s or at 900 s, processed at 100 s.
        let appended = Some(100_000);
        let occurred = Some(Timestamp(40 * S));
        assert_eq!(
            record_instant_h(Timestamp(150 * S), appended, occurred),
            Timestamp(100 * S)
        );
        assert_eq!(
            record_instant_h(Timestamp(900 * S), appended, occurred),
            Timestamp(100 * S)
        );
    }

    #[test]
    fn a_record_stamped_before_its_event_is_processed_at_the_event() {
        // Log time 0 (a producer that sets no timestamp of its own), event
        // at 40 s, read at 150 s: 40 s.
        assert_eq!(
            record_instant_h(Timestamp(150 * S), Some(0), Some(Timestamp(40 * S))),
            Timestamp(40 * S)
        );
    }

    #[test]
    fn a_record_stamped_in_the_future_or_not_at_all_is_processed_now() {
        let now = Timestamp(150 * S);
        assert_eq!(record_instant_h(now, Some(900_000), None), now);
        assert_eq!(
            record_instant_h(now, Some(100_000), Some(Timestamp(900 * S))),
            now
        );
        assert_eq!(record_instant_h(now, None, Some(Timestamp(40 * S))), now);
        // Stamped in the future, its event at 40 s: 40 s, not `now` (which
        // would fire every timer due by now before the records around it).
        assert_eq!(
            record_instant_h(now, Some(900_000), Some(Timestamp(40 * S))),
            Timestamp(40 * S)
        );
        assert_eq!(record_instant_h(now, Some(i64::MAX), None), now);
    }

    #[test]
    fn a_record_stamped_longer_ago_than_the_hold_is_processed_at_the_hold() {
        // An hour of hold; read at 10,000 s, stamped (or its event) at
        // 100 s: processed at 10,000 − 3,600 = 6,400 s, so a due date it
        // sets is at most an hour in the past.
        let now = Timestamp(10_000 * S);
        assert_eq!(
            record_instant_h(now, Some(100_000), Some(Timestamp(40 * S))),
            Timestamp(6_400 * S)
        );
        // Within the hold, its log time.
        assert_eq!(
            record_instant_h(now, Some(9_000_000), None),
            Timestamp(9_000 * S)
        );
        // No hold: log time, however old.
        assert_eq!(
            record_instant(now, i64::MAX, Some(100_000), None),
            Timestamp(100 * S)
        );
    }
}
