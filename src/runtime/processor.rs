//! The batch processor: fold → persist → emit, the same for every edge.
//!
//! Records of one account are applied in the order they arrive; accounts
//! are independent. Changes accumulate per account until `flush`, which
//! writes every dirty account once (snapshot, journal, invoices, dedup ids,
//! next timer, input positions) and only then returns the outputs, so
//! nothing is published before the state that produced it is durable.
//! Each account remembers the input position after the last record it
//! applied: a replayed record below it is skipped, never applied twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::contracts::{outputs_for, DeadLetter, DecodeError, Decoded, Decoder, OutputRecord};
use crate::engine::dedup;
use crate::engine::events::{DomainEvent, Input, JournalEntry, UsageRecorded};
use crate::engine::fold::Outcome;
use crate::engine::time::Timestamp;
use crate::engine::tripwire::mask_card_numbers;
use crate::engine::{AccountState, Engine, Rejection};
use crate::store::{
    AccountWrite, DedupRecord, InputOffset, InvoiceRecord, JournalRecord, StateStore, StoreError,
    StoredAccount,
};

/// Where an input record came from: topic (or file), partition, offset
/// (or line number). Kept with the journal entries it caused (lineage).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourcePos {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One record of a batch as it came off its topic: position, key (the
/// account id, as SPEC §2 keys every topic), bytes, processing instant.
pub struct BatchRecord<'a> {
    pub pos: SourcePos,
    pub key: Option<&'a str>,
    pub raw: &'a [u8],
    pub now: Timestamp,
    /// Order among one account's records of the batch that come from
    /// different topics: lower first (see `batch::group_by_account_ranked`).
    pub rank: u8,
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

#[derive(Default)]
struct Slot {
    state: Option<AccountState>,
    partition: u32,
    next_timer: Option<Timestamp>,
    journal: Vec<(JournalEntry, Option<SourcePos>)>,
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
}

/// The accounts and journal seqs whose outputs one or more flushes handed
/// out, waiting for the sink's acknowledgement (see
/// `Processor::take_unacked`).
#[derive(Debug, Default)]
#[must_use = "pass it to Processor::acknowledged once the outputs are acknowledged"]
pub struct Unacked(Vec<(String, u64)>);

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
    /// with the journal seq of the last entry handed out.
    awaiting_ack: Vec<(String, u64)>,
    pub stats: ProcessorStats,
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

    /// Make sure the account is in memory (loading it from the store).
    async fn load(
        &mut self,
        account_id: &str,
        partition: u32,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if !self.accounts.contains_key(account_id) {
            let loaded = match self.store.load_account(account_id).await? {
                Some(stored) => {
                    let since = now.0 - self.engine.config.dedup_window_micros;
                    let dedup = self.store.load_dedup(account_id, since).await?;
                    Some((stored, dedup))
                }
                None => None,
            };
            self.insert_slot(account_id, partition, loaded)?;
        }
        Ok(())
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
            if let Some(t) = slot.next_timer {
                self.timers.insert((t, account_id.to_string()));
            }
            slot.state = Some(state);
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
                *self.stats.rejected.entry(e.kind()).or_default() += 1;
                self.dead_letter(pos, key, e.kind(), e.to_string(), raw.to_vec(), now);
                return Ok(());
            }
            Ok(Decoded::Plan(plan)) => {
                let id = plan.plan_id.clone();
                match self.engine.plans.upsert(plan) {
                    Ok(()) => self.stats.plans_loaded += 1,
                    Err(e) => {
                        *self.stats.rejected.entry("invalid_plan").or_default() += 1;
                        self.dead_letter(
                            pos,
                            Some(&id),
                            "invalid_plan",
                            e.to_string(),
                            raw.to_vec(),
                            now,
                        )
                    }
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
        let order = super::batch::group_by_account_ranked(
            records.iter().map(|r| (r.key.unwrap_or(""), r.rank)),
            ranks,
        );
        let mut scratch = Decoded::Input(Input::Usage(UsageRecorded::default()));
        for i in order {
            let r = &records[i as usize];
            match decoder.decode_into(r.raw, &mut scratch) {
                Ok(()) => match &scratch {
                    Decoded::Input(input) => self.apply(&r.pos, r.key, r.raw, input, r.now).await?,
                    plan @ Decoded::Plan(_) => {
                        self.process(&r.pos, r.key, r.raw, Ok(plan.clone()), r.now)
                            .await?
                    }
                },
                Err(e) => self.process(&r.pos, r.key, r.raw, Err(e), r.now).await?,
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
        let account_id = input.account_id();
        let partition = u32::try_from(pos.partition).unwrap_or(0);
        self.load(account_id, partition, now).await?;
        let Self {
            accounts,
            engine,
            journal_buf,
            stats,
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
        for entry in out.drain(..) {
            let src = (*entry.causation_id == *input.event_id()).then(|| pos.clone());
            slot.journal.push((entry, src));
        }
        match &result {
            Ok(Outcome::Applied) => {
                slot.dedup.push(DedupRecord {
                    key: dedup::key(input.event_id()),
                    fingerprint: dedup::fingerprint(input),
                    seen_at: now.0,
                });
                stats.applied += 1;
            }
            Ok(Outcome::Duplicate) => stats.duplicates += 1,
            Err(_) => {}
        }
        if had_state {
            slot.offsets.insert(source.clone(), pos.offset + 1);
            slot.dirty_offsets.insert(source);
            self.mark_dirty(account_id);
        }
        if let Err(rejection) = result {
            *self.stats.rejected.entry(rejection.kind()).or_default() += 1;
            let payload = match &rejection {
                // Never keep a card number: mask the payload as text.
                Rejection::CardNumber { .. } => {
                    mask_card_numbers(&String::from_utf8_lossy(raw)).into_bytes()
                }
                _ => raw.to_vec(),
            };
            self.dead_letter(
                pos,
                key,
                rejection.kind(),
                rejection.to_string(),
                payload,
                now,
            );
        }
        Ok(())
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

    fn dead_letter(
        &mut self,
        pos: &SourcePos,
        key: Option<&str>,
        kind: &str,
        reason: String,
        payload: Vec<u8>,
        now: Timestamp,
    ) {
        let dl = DeadLetter {
            source_topic: pos.topic.clone(),
            partition: pos.partition,
            offset: pos.offset,
            key: key.map(str::to_string),
            error_kind: kind.to_string(),
            reason,
            payload,
            received_at: now,
        };
        let mut out = dl.to_output();
        out.traceparent = self.traceparent_of(pos, &out.event_id);
        self.dead_letters.push(out);
    }

    /// Trace contexts (W3C `traceparent`) of input records of the batch in
    /// hand, by position: the outputs they cause carry the trace on. Kept
    /// until the next `flush`.
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
                slot.journal.extend(out.drain(..).map(|e| (e, None)));
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
    /// from the store so its timers fire without input. Returns how many
    /// accounts were loaded.
    pub async fn assign_partition(
        &mut self,
        partition: u32,
        epoch: u64,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        self.epochs.insert(partition, epoch);
        let since = now.0 - self.engine.config.dedup_window_micros;
        let loaded = self.store.load_partition(partition, since).await?;
        let count = loaded.len();
        for account in loaded {
            if !self.accounts.contains_key(&account.account_id) {
                self.insert_slot(
                    &account.account_id,
                    partition,
                    Some((account.stored, account.dedup)),
                )?;
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
            .retain(|(id, _)| accounts.contains_key(id));
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

    /// Dead letters waiting to be published (they need no state write).
    pub fn pending_dead_letters(&self) -> usize {
        self.dead_letters.len()
    }

    /// Persist every changed account (one write each), then return the
    /// outputs of what was persisted, in journal order per account.
    pub async fn flush(&mut self) -> Result<Vec<OutputRecord>, StoreError> {
        let mut writes = Vec::with_capacity(self.dirty.len());
        for account_id in &self.dirty {
            let slot = self
                .accounts
                .get(account_id)
                .expect("dirty accounts are loaded");
            let Some(st) = &slot.state else { continue };
            let snapshot = serde_json::to_vec(st)
                .map_err(|e| StoreError::Backend(format!("snapshot of {account_id}: {e}")))?;
            let mut journal = Vec::with_capacity(slot.journal.len());
            let mut invoices = Vec::new();
            for (entry, source) in &slot.journal {
                if let DomainEvent::InvoiceIssued { invoice } = &entry.event {
                    invoices.push(InvoiceRecord {
                        invoice_id: invoice.invoice_id.clone(),
                        bytes: serde_json::to_vec(invoice)
                            .map_err(|e| StoreError::Backend(e.to_string()))?,
                    });
                }
                let stored = StoredJournalEntry {
                    entry: entry.clone(),
                    source: source.clone(),
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
        if !writes.is_empty() {
            self.store.commit(&writes).await?;
        }
        self.stats.batches += 1;
        let mut outputs = Vec::new();
        for account_id in std::mem::take(&mut self.dirty) {
            let slot = self
                .accounts
                .get_mut(&account_id)
                .expect("dirty accounts are loaded");
            slot.dirty = false;
            slot.dedup.clear();
            slot.dirty_offsets.clear();
            slot.mark_persisted = slot.mark_persisted.max(slot.published_mark);
            if let Some((last, _)) = slot.journal.last() {
                slot.journal_head = last.seq;
                self.awaiting_ack.push((account_id.clone(), last.seq));
            }
            let Some(st) = &slot.state else {
                slot.journal.clear();
                continue;
            };
            for (entry, source) in slot.journal.drain(..) {
                let mut out = outputs_for(&entry, st.currency);
                if let Some(pos) = source.filter(|_| !self.traces.is_empty()) {
                    for o in &mut out {
                        o.traceparent = self
                            .traces
                            .get(&pos)
                            .and_then(|t| crate::contracts::child_traceparent(t, &o.event_id));
                    }
                }
                outputs.extend(out);
            }
        }
        self.traces.clear();
        outputs.append(&mut self.dead_letters);
        Ok(outputs)
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
        for (account_id, seq) in unacked.0 {
            if let Some(slot) = self.accounts.get_mut(&account_id) {
                slot.published_mark = slot.published_mark.max(seq);
            }
        }
    }

    /// Write the published watermark of every account whose mark moved
    /// (at shutdown, so a clean restart republishes nothing).
    pub async fn persist_published_marks(&mut self) -> Result<(), StoreError> {
        let ids: Vec<String> = self
            .accounts
            .iter()
            .filter(|(_, s)| s.state.is_some() && s.published_mark > s.mark_persisted)
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

    /// Outputs of journal entries that were persisted but never
    /// acknowledged (a crash between commit and publish), re-derived from
    /// the journal with the same ids, for the loaded accounts of
    /// `partition`. Publish them, then call `published`.
    pub async fn unpublished_outputs(
        &mut self,
        partition: u32,
    ) -> Result<Vec<OutputRecord>, StoreError> {
        let mut outputs = Vec::new();
        for id in self.accounts_of(partition) {
            let Some(slot) = self.accounts.get(&id) else {
                continue;
            };
            let (head, published) = (slot.journal_head, slot.published_mark);
            if head <= published {
                continue;
            }
            let Some(currency) = slot.state.as_ref().map(|s| s.currency) else {
                continue;
            };
            let mut from = published + 1;
            while from <= head {
                let page = self.store.read_journal(&id, from, 1000).await?;
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
            self.awaiting_ack.push((id, head));
        }
        Ok(outputs)
    }
}
