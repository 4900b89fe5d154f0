//! The Kafka processing loop behind `billstream run`: one consumer-group
//! member, driving the same `Processor` as every other edge.
//!
//! consume a batch → fold (grouped by account) → persist → publish →
//! commit input offsets, in that order, so that nothing is published before
//! the state behind it is durable and no offset is committed before its
//! effects are published. Two batches overlap: batch N's outputs travel to
//! the broker while batch N+1 is fetched, folded and persisted; N's
//! acknowledgements are awaited and its offsets committed only after that
//! (and before any group change is handled). The loop owns the partitions the group assigns
//! it: on assignment it claims each one in the store (a new ownership
//! epoch fences off the previous owner), loads its accounts so their
//! timers fire, and republishes outputs the previous owner persisted but
//! never saw acknowledged; on revocation it drops them from memory. The
//! stop future ends the loop after the batch in hand is persisted,
//! published and committed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::CommitMode;
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use crate::config::Settings;
use crate::contracts::registry::WriterSchemas;
use crate::contracts::{Catalog, Decoder, OutputRecord};
use crate::engine::plan::PlanBook;
use crate::engine::time::Timestamp;
use crate::engine::Engine;
use crate::runtime::{
    BatchRecord, Checkpoint, Processor, ProcessorStats, SourcePos, Unacked, WaitRule,
};
use crate::sink::kafka::{InFlight, KafkaSink, ProgressRecord};
use crate::source::kafka::{read_progress, GroupChange, KafkaSource, PlanFollower};
use crate::store::{StateStore, StoreError};
use crate::telemetry::Metrics;

/// Produce-to-persist latency, counted per millisecond up to ten minutes
/// (one overflow bucket above), so quantiles are exact to the millisecond.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; 600_001],
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, millis: u64) {
        let last = self.counts.len() - 1;
        self.counts[(millis as usize).min(last)] += 1;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The smallest latency (ms) at or below which a share `q` of the
    /// records fall; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(self.counts.len() as u64 - 1)
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }
}

/// What a running loop has done so far, readable from other threads
/// (benchmarks, tests, and later the metrics endpoint).
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records whose effects are durable and published (offsets
    /// handed to the commit, or held back only by records of other
    /// accounts that the checkpoint policy keeps unwritten).
    pub records_done: AtomicU64,
    /// Input records folded (their effects may still be held unwritten).
    pub records_folded: AtomicU64,
    pub batches: AtomicU64,
    /// Store partitions owned right now.
    pub partitions_owned: AtomicU64,
    /// Hand-overs of revoked partitions whose writes were refused because
    /// the next owner had claimed them first (it re-reads those records).
    pub handovers_fenced: AtomicU64,
    /// Set once the plans table is loaded and the member has partitions.
    pub ready: AtomicU64,
    pub latency: Mutex<LatencyHistogram>,
    /// Prometheus metrics, when served (`None` in tests and benchmarks
    /// that measure without them).
    pub metrics: Option<Arc<Metrics>>,
    /// When the first input record arrived (throughput is timed from it).
    pub first_record_at: std::sync::OnceLock<std::time::Instant>,
    /// Wall time spent in each phase of the loop, in microseconds, indexed
    /// by `Phase`.
    pub phase_micros: [AtomicU64; Phase::ALL.len()],
}

/// The phases of one turn of the loop, for timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for and collecting the batch's records.
    Fetch,
    /// Decoding and folding the batch, and timers.
    Fold,
    /// Writing the changed accounts to the store.
    Persist,
    /// Producing outputs and waiting for their acknowledgements.
    Publish,
    /// Committing input offsets.
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Fetch,
        Phase::Fold,
        Phase::Persist,
        Phase::Publish,
        Phase::Commit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Fold => "fold",
            Phase::Persist => "persist",
            Phase::Publish => "publish",
            Phase::Commit => "commit",
        }
    }
}

impl Progress {
    pub fn records_done(&self) -> u64 {
        self.records_done.load(Ordering::Relaxed)
    }

    /// Seconds spent so far in `phase`.
    pub fn phase_seconds(&self, phase: Phase) -> f64 {
        self.phase_micros[phase as usize].load(Ordering::Relaxed) as f64 / 1e6
    }

    fn timed(&self, phase: Phase, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        let took = now.duration_since(*since);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.phase_micros[phase as usize].fetch_add(micros, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.batch_duration
                .with_label_values(&[phase.name()])
                .observe(took.as_secs_f64());
        }
        *since = now;
    }
}

fn partition_of(p: i32) -> u32 {
    u32::try_from(p).unwrap_or(0)
}

/// Run one group member until `stop` resolves (then drain and commit) or
/// a fatal error. `owner` names this instance in ownership claims.
pub async fn serve<S: StateStore>(
    settings: &Settings,
    store: Arc<S>,
    owner: &str,
    progress: Arc<Progress>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<ProcessorStats> {
    let catalog = Catalog::shared()?;
    // Schema ids: the manifest's, or the registry's (looked up now: a
    // schema not registered stops the start). `writers` learns the writer
    // schemas of ids the decoder does not know, batch by batch.
    let (ids, mut writers) = WriterSchemas::for_settings(
        settings.kafka.schema_registry.as_ref(),
        catalog,
        &settings.topics,
    )
    .await?;
    if let Some(url) = writers.registry_url() {
        eprintln!("billstream run: schema ids from the Schema Registry at {url}");
    }
    let mut decoder = Decoder::with_ids(catalog, &ids)?;
    let clock = settings.clock;
    let checkpoint = Checkpoint::from(&settings.batch);
    let mut processor = Processor::new(
        Engine::new(settings.engine.clone(), PlanBook::new()),
        store.clone(),
    );

    let (plans, initial) = PlanFollower::read_to_end(settings, Duration::from_secs(60))?;
    apply_plan_records(
        &mut processor,
        &mut decoder,
        &mut writers,
        &initial,
        clock.now(),
    )
    .await?;
    eprintln!(
        "billstream run: {} plans loaded from {}",
        processor.engine().plans.len(),
        settings.topics.plans
    );
    let sink = KafkaSink::connect(settings, catalog, ids)?;
    let mut source = KafkaSource::connect(settings)?;
    eprintln!(
        "billstream run: consuming as group {} (member {owner})",
        settings.kafka.group_id
    );

    let mut assigned: BTreeSet<(String, i32)> = BTreeSet::new();
    // The previous batch: persisted, its outputs handed to the producer,
    // its acknowledgements and offset commit still to come. Waiting for
    // them only after the next batch is folded and persisted keeps the
    // producer, the store and the fold busy at the same time.
    let mut in_flight: Option<Published> = None;
    // Records of settled batches; those still held unwritten by the
    // checkpoint policy are not done yet (see `Progress::records_done`).
    let mut settled = Settled::default();
    // Records of accounts not opened yet, waiting for the accounts topic
    // (`kafka.unknown_account_wait`), with when each first waited.
    let mut waiting: Vec<(OwnedMessage, std::time::Instant)> = Vec::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let mut clock_in = std::time::Instant::now();
        let batch = tokio::select! {
            _ = &mut stop => break,
            b = source.next_batch(settings.batch.max_records, settings.batch.max_wait, Duration::from_millis(500)) => b?,
        };
        if let Some(at) = batch.first_at {
            progress.first_record_at.get_or_init(|| at);
        }
        let now = clock.now();
        let mut records = batch.records;
        if !batch.changes.is_empty() {
            // Finish the batch in flight before letting anything go.
            if let Some(done) = in_flight.take() {
                done.settle(
                    &mut processor,
                    &mut source,
                    &progress,
                    &mut settled,
                    CommitMode::Sync,
                    &mut clock_in,
                )
                .await?;
            }
            // Records fetched before a revocation belong to partitions we
            // no longer own: unprocessed, uncommitted, someone re-reads them.
            let revoked: BTreeSet<(String, i32)> = batch
                .changes
                .iter()
                .filter_map(|c| match c {
                    GroupChange::Revoked(list) => Some(list.iter().cloned()),
                    GroupChange::Assigned(_) => None,
                })
                .flatten()
                .collect();
            let after = records.split_off(batch.before_changes);
            records.retain(|m| !revoked.contains(&(m.topic().to_string(), m.partition())));
            records.extend(after);
            waiting.retain(|(m, _)| !revoked.contains(&(m.topic().to_string(), m.partition())));
            for change in batch.changes {
                if let Some(m) = &progress.metrics {
                    let kind = match change {
                        GroupChange::Assigned(_) => "assigned",
                        GroupChange::Revoked(_) => "revoked",
                    };
                    m.rebalances.with_label_values(&[kind]).inc();
                }
                on_group_change(
                    settings,
                    change,
                    &mut assigned,
                    &mut processor,
                    &mut source,
                    store.as_ref(),
                    &sink,
                    owner,
                    &progress,
                )
                .await?;
            }
            progress.partitions_owned.store(
                processor.owned_partitions().count() as u64,
                Ordering::Relaxed,
            );
            progress
                .ready
                .store(u64::from(!assigned.is_empty()), Ordering::Relaxed);
            if let Some(m) = &progress.metrics {
                m.partitions_owned
                    .set(processor.owned_partitions().count() as i64);
                m.ready.set(i64::from(!assigned.is_empty()));
            }
        }
        progress.timed(Phase::Fetch, &mut clock_in);
        let updates = plans.poll_new()?;
        apply_plan_records(&mut processor, &mut decoder, &mut writers, &updates, now).await?;
        let owned: BTreeSet<u32> = processor.owned_partitions().map(|(p, _)| p).collect();
        records.retain(|m| owned.contains(&partition_of(m.partition())));
        // Records that waited for their account's opening go first (each
        // is older than the records after it on its partition); those that
        // waited long enough are dead-lettered this time.
        let wait = settings.kafka.unknown_account_wait;
        let mut since: HashMap<SourcePos, std::time::Instant> = HashMap::new();
        let mut expired = BTreeSet::new();
        if !waiting.is_empty() {
            let mut again = Vec::with_capacity(waiting.len() + records.len());
            for (m, first) in waiting.drain(..) {
                let pos = pos_of(&m);
                if first.elapsed() >= wait {
                    expired.insert(pos.clone());
                }
                since.insert(pos, first);
                again.push(m);
            }
            again.append(&mut records);
            records = again;
        }
        // Openings may name a plan the follower has not handed out yet
        // (the topics have no order between them): asked only for batches
        // with account commands.
        let plans_unread = !wait.is_zero()
            && records
                .iter()
                .any(|m| m.topic() == settings.topics.accounts)
            && plans.has_unread()?;
        processor.set_waiting((!wait.is_zero()).then(|| {
            WaitRule {
                accounts_topic: settings.topics.accounts.clone(),
                partitions: owned
                    .iter()
                    .filter_map(|p| i32::try_from(*p).ok())
                    .collect(),
                expired,
                plans_unread,
            }
        }));
        // One span per batch: what is done for it (store writes, publishing,
        // dead letters) is logged inside; `outputs` is filled once known.
        let span = tracing::debug_span!(
            "batch",
            n = progress.batches.load(Ordering::Relaxed) + 1,
            records = records.len(),
            outputs = tracing::field::Empty,
        );

        // Writer schemas of ids not seen before, fetched before the
        // (synchronous) decode; a registry outage stops the loop here.
        writers
            .learn(&mut decoder, records.iter().filter_map(|m| m.payload()))
            .await?;
        let batch_records: Vec<BatchRecord<'_>> = records
            .iter()
            .map(|m| BatchRecord {
                pos: pos_of(m),
                key: m.key().and_then(|k| std::str::from_utf8(k).ok()),
                raw: m.payload().unwrap_or_default(),
                now,
                // On equal timestamps: account commands, then payments, then
                // usage (`batch::group_by_account_in_time`).
                produced_ms: m.timestamp().to_millis(),
                rank: if m.topic() == settings.topics.accounts {
                    0
                } else if m.topic() == settings.topics.payments {
                    1
                } else {
                    2
                },
            })
            .collect();
        processor.trace_inputs(traces_of(&records));
        let before = processor.stats.clone();
        processor
            .process_batch(&decoder, &batch_records)
            .instrument(span.clone())
            .await?;
        drop(batch_records);
        let held_back = processor.take_waiting();
        if !held_back.is_empty() {
            // Wait only while the accounts topic still has records to read
            // on the partition (the opening may be among them), or an
            // opening of the partition waits for its plan (whatever waits
            // behind it then waits with it). An opening waits only while
            // the plans topic has unread records.
            let accounts = settings.topics.accounts.as_str();
            let mut read_up: BTreeSet<i32> = BTreeSet::new();
            for p in held_back
                .iter()
                .map(|pos| pos.partition)
                .collect::<BTreeSet<_>>()
            {
                let opening_waits = plans_unread
                    && held_back
                        .iter()
                        .any(|pos| pos.partition == p && pos.topic == accounts);
                if !opening_waits && !source.has_unprocessed(accounts, p)? {
                    read_up.insert(p);
                }
            }
            let held_back: HashSet<SourcePos> = held_back.into_iter().collect();
            let now_instant = std::time::Instant::now();
            let (wait_more, folded): (Vec<OwnedMessage>, Vec<OwnedMessage>) = records
                .into_iter()
                .partition(|m| held_back.contains(&pos_of(m)));
            records = folded;
            for m in wait_more {
                let pos = pos_of(&m);
                let first = if read_up.contains(&pos.partition)
                    || (pos.topic == accounts && !plans_unread)
                {
                    // Nothing left to wait for: dead-lettered next batch.
                    now_instant.checked_sub(wait).unwrap_or(now_instant)
                } else {
                    since.get(&pos).copied().unwrap_or(now_instant)
                };
                waiting.push((m, first));
            }
        }
        progress
            .records_folded
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        processor.advance_timers(source.timers_floor(now, settings.kafka.timer_hold));
        if let Some(m) = &progress.metrics {
            count_batch(m, &records, &before, &processor.stats);
            m.timers_fired
                .inc_by(processor.stats.timers_fired - before.timers_fired);
            for (topic, partition, lag) in source.consumer_lag() {
                m.consumer_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set(lag);
            }
        }
        progress.timed(Phase::Fold, &mut clock_in);
        let outputs = processor
            .flush_due(&checkpoint, std::time::Instant::now())
            .instrument(span.clone())
            .await
            .map_err(fenced_is_fatal)?;
        let floor = processor.commit_floor();
        let held = processor.held_records();
        span.record("outputs", outputs.len());
        record_latency(&progress, &processor.take_persisted_produce_times());
        progress.timed(Phase::Persist, &mut clock_in);
        if sink.is_transactional() {
            // Outputs, their progress records and input offsets in one
            // transaction, batch by batch (no overlap: the commit is the
            // acknowledgement).
            source.processed(&records);
            transact(&mut processor, &sink, &mut source, &outputs, &floor)
                .instrument(span.clone())
                .await?;
            if let Some(m) = &progress.metrics {
                m.published(&outputs);
            }
            progress.timed(Phase::Publish, &mut clock_in);
            settled.add(&progress, records.len(), held);
            progress.batches.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let sent = Published {
            in_flight: sink.send(&outputs).instrument(span.clone()).await?,
            unacked: processor.take_unacked(),
            records,
            outputs,
            floor,
            held,
        };
        if !sent.records.is_empty() {
            span.in_scope(|| {
                tracing::debug!(
                    records = sent.records.len(),
                    outputs = sent.outputs.len(),
                    "batch persisted, outputs sent"
                )
            });
        }
        progress.timed(Phase::Publish, &mut clock_in);
        // The previous batch's acknowledgements had a whole batch to arrive.
        if let Some(done) = in_flight.replace(sent) {
            done.settle(
                &mut processor,
                &mut source,
                &progress,
                &mut settled,
                CommitMode::Async,
                &mut clock_in,
            )
            .instrument(span)
            .await?;
        }
        progress.batches.fetch_add(1, Ordering::Relaxed);
    }
    eprintln!("billstream run: stopping: persisting and committing");
    if let Some(done) = in_flight.take() {
        let mut clock_in = std::time::Instant::now();
        done.settle(
            &mut processor,
            &mut source,
            &progress,
            &mut settled,
            CommitMode::Sync,
            &mut clock_in,
        )
        .await?;
    }
    processor.advance_timers(source.timers_floor(clock.now(), settings.kafka.timer_hold));
    // Everything held by the checkpoint policy is written now.
    let held = processor.held_records();
    let started = std::time::Instant::now();
    let outputs = if sink.is_transactional() {
        // With the offsets of everything written, in one transaction.
        let due = processor.unwritten_partitions();
        let outputs = processor
            .flush_partitions(&due)
            .await
            .map_err(fenced_is_fatal)?;
        let floor = processor.commit_floor();
        transact(&mut processor, &sink, &mut source, &outputs, &floor).await?;
        outputs
    } else {
        match write_and_publish(&mut processor, &sink, None).await {
            Ok(outputs) => outputs,
            Err(e) => return Err(store_fenced_is_fatal(e)),
        }
    };
    record_latency(&progress, &processor.take_persisted_produce_times());
    eprintln!(
        "billstream run: stop wrote {held} held records and published {} outputs in {} ms",
        outputs.len(),
        started.elapsed().as_millis()
    );
    if let Some(m) = &progress.metrics {
        m.published(&outputs);
    }
    processor.published();
    settled.add(&progress, 0, 0);
    processor
        .persist_published_marks()
        .await
        .map_err(fenced_is_fatal)?;
    // Records still waiting for their account's opening stay uncommitted.
    // (With transactions the offsets went in the last one.)
    if !sink.is_transactional() {
        if let Err(e) = source.commit(CommitMode::Sync, &processor.commit_floor()) {
            eprintln!("warning: final offset commit failed ({e}); the next owner skips those records as replays");
        }
    }
    sink.flush(Duration::from_secs(10))?;
    if settings.run.is_shadow() {
        eprintln!(
            "billstream run: shadow mode: {} charge requests and notifications withheld (not published)",
            sink.withheld()
        );
    }
    Ok(processor.stats.clone())
}

/// A batch whose state is durable and whose outputs are with the producer.
struct Published {
    in_flight: InFlight,
    unacked: Unacked,
    records: Vec<OwnedMessage>,
    /// Kept for the metrics, counted once acknowledged.
    outputs: Vec<OutputRecord>,
    /// What the checkpoint policy held unwritten when it was persisted:
    /// offsets from the floor on stay uncommitted.
    floor: Vec<((String, i32), i64)>,
    held: u64,
}

/// Records of the batches settled so far.
#[derive(Default)]
struct Settled {
    records: u64,
}

impl Settled {
    /// Count a settled batch of `records`, with `held` records (of it or
    /// earlier ones) still unwritten, into `Progress::records_done`.
    fn add(&mut self, progress: &Progress, records: usize, held: u64) {
        self.records += records as u64;
        progress
            .records_done
            .fetch_max(self.records.saturating_sub(held), Ordering::Relaxed);
    }
}

impl Published {
    /// Wait for the outputs' acknowledgements, then mark them published
    /// and commit the batch's input offsets.
    async fn settle<S: StateStore>(
        self,
        processor: &mut Processor<S>,
        source: &mut KafkaSource,
        progress: &Progress,
        settled: &mut Settled,
        mode: CommitMode,
        clock_in: &mut std::time::Instant,
    ) -> anyhow::Result<()> {
        self.in_flight.acknowledged().await?;
        processor.acknowledged(self.unacked);
        if let Some(m) = &progress.metrics {
            m.published(&self.outputs);
        }
        progress.timed(Phase::Publish, clock_in);
        source.processed(&self.records);
        if let Err(e) = source.commit(mode, &self.floor) {
            eprintln!("warning: offset commit failed ({e}); those records will be delivered again and skipped as replays");
        }
        progress.timed(Phase::Commit, clock_in);
        settled.add(progress, self.records.len(), self.held);
        Ok(())
    }
}

/// `fenced_is_fatal` for an error that may hold a `StoreError`.
fn store_fenced_is_fatal(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<StoreError>() {
        Ok(store) => fenced_is_fatal(store),
        Err(other) => other,
    }
}

/// A fenced write means another instance claimed one of our partitions
/// while this batch was in hand (we missed the rebalance, e.g. stalled
/// past `kafka.max_poll_interval`). Nothing of the batch was published or
/// committed; stop, and let a restart rejoin the group.
fn fenced_is_fatal(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Fenced { .. } => anyhow::anyhow!(
            "{e}: another instance took this partition over; stopping without publishing or committing the batch in hand (a restart rejoins the group)"
        ),
        other => anyhow::Error::new(other).context("state store"),
    }
}

#[allow(clippy::too_many_arguments)] // the loop's parts, borrowed for one change
async fn on_group_change<S: StateStore>(
    settings: &Settings,
    change: GroupChange,
    assigned: &mut BTreeSet<(String, i32)>,
    processor: &mut Processor<S>,
    source: &mut KafkaSource,
    store: &S,
    sink: &KafkaSink,
    owner: &str,
    progress: &Progress,
) -> anyhow::Result<()> {
    match change {
        GroupChange::Assigned(list) => {
            source.check_co_partitioned()?;
            if let Some(n) = source.partition_count() {
                processor.set_partitioning(settings.kafka.input_partitioner, n);
            }
            processor.set_record_hold(settings.kafka.timer_hold);
            // Where each partition starts: the transaction's offsets, and
            // whether a partition is read to its end (`timers_floor`)
            // before anything was read from it.
            source.learn_committed(&list)?;
            let owned: BTreeSet<u32> = processor.owned_partitions().map(|(p, _)| p).collect();
            let mut fresh = BTreeSet::new();
            for (topic, p) in list {
                if !owned.contains(&partition_of(p)) {
                    fresh.insert(partition_of(p));
                }
                assigned.insert((topic, p));
            }
            // Claim every new partition first (each load must follow its
            // claim: an old owner's write after the claim is fenced, one
            // before it is in what the load reads), then load them all at
            // once, then take them over one by one.
            let began = std::time::Instant::now();
            let mut epochs = Vec::with_capacity(fresh.len());
            for &p in &fresh {
                let epoch = store
                    .claim_partition(p, owner)
                    .await
                    .with_context(|| format!("claiming partition {p}"))?;
                if sink.is_transactional() {
                    // What committed transactions already published for
                    // its accounts (whatever their stored watermark says).
                    let (settings, partition) = (settings.clone(), i32::try_from(p)?);
                    let marks = tokio::task::spawn_blocking(move || {
                        read_progress(&settings, partition, PROGRESS_READ)
                    })
                    .await??;
                    processor.learn_published(p, marks)?;
                }
                epochs.push((p, epoch));
            }
            let claimed = began.elapsed();
            let loads = futures::future::try_join_all(
                epochs.iter().map(|&(p, _)| store.load_partition(p, None)),
            )
            .await?;
            let load_took = began.elapsed() - claimed;
            for ((p, epoch), accounts) in epochs.into_iter().zip(loads) {
                let republishing = std::time::Instant::now();
                let loaded = processor.adopt_partition(p, epoch, accounts)?;
                // Outputs persisted before a crash but never acknowledged:
                // publish them again, with the same ids, before anything new.
                let recovered = processor.unpublished_outputs(p).await?;
                if sink.is_transactional() {
                    let floor = processor.commit_floor();
                    transact(processor, sink, source, &recovered, &floor).await?;
                } else {
                    sink.publish(&recovered).await?;
                    processor.published();
                }
                eprintln!(
                    "billstream run: partition {p} assigned (epoch {epoch}, {loaded} accounts loaded, {} outputs republished; claims {} ms, loads {} ms (all new partitions together), republish {} ms)",
                    recovered.len(),
                    claimed.as_millis(),
                    load_took.as_millis(),
                    republishing.elapsed().as_millis()
                );
            }
        }
        GroupChange::Revoked(list) => {
            for tp in &list {
                assigned.remove(tp);
            }
            let still: BTreeSet<u32> = assigned.iter().map(|(_, p)| partition_of(*p)).collect();
            let gone: BTreeSet<u32> = processor
                .owned_partitions()
                .map(|(p, _)| p)
                .filter(|p| !still.contains(p))
                .collect();
            hand_over(processor, source, sink, &gone, &list, progress).await?;
            for p in gone {
                let dropped = processor.release_partition(p);
                eprintln!("billstream run: partition {p} revoked ({dropped} accounts dropped from memory)");
            }
            // Only now may the group give them to their next owner.
            source.let_go(&list)?;
            source.forget(&list.into_iter().collect());
        }
    }
    Ok(())
}

/// Before partitions are let go: write what the checkpoint policy held of
/// their accounts, publish it, and commit their offsets, so the next owner
/// starts where this one stopped. If the next owner already claimed them
/// (the write is fenced), it is left to that owner: it reads the same
/// records again from the last commit, which never passed what was held.
async fn hand_over<S: StateStore>(
    processor: &mut Processor<S>,
    source: &mut KafkaSource,
    sink: &KafkaSink,
    gone: &BTreeSet<u32>,
    revoked: &[(String, i32)],
    progress: &Progress,
) -> anyhow::Result<()> {
    if gone.is_empty() {
        return Ok(());
    }
    if sink.is_transactional() {
        return hand_over_in_transaction(processor, source, sink, gone, revoked, progress).await;
    }
    let outputs = match write_and_publish(processor, sink, Some(gone)).await {
        Ok(outputs) => outputs,
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::Fenced { .. })) => {
            progress.handovers_fenced.fetch_add(1, Ordering::Relaxed);
            eprintln!("warning: partitions {gone:?} were claimed by their next owner before their held changes were written; it re-reads those records");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    record_latency(progress, &processor.take_persisted_produce_times());
    if let Some(m) = &progress.metrics {
        m.published(&outputs);
    }
    processor.published();
    let floor = hand_over_floor(processor.commit_floor(), processor.waiting_floor(), revoked);
    if let Err(e) = source.commit(CommitMode::Sync, &floor) {
        eprintln!("warning: offset commit at revocation failed ({e}); the next owner skips those records as replays");
    }
    Ok(())
}

/// The commit floor at a hand-over: the held offsets of the partitions that
/// stay still bound the commit (those of the revoked ones were just
/// written), and so do records waiting for their account's opening or
/// plan, on any partition, revoked or not (never folded: the next owner
/// must read them).
fn hand_over_floor(
    commit_floor: Vec<((String, i32), i64)>,
    waiting_floor: Vec<((String, i32), i64)>,
    revoked: &[(String, i32)],
) -> Vec<((String, i32), i64)> {
    let mut floor: Vec<((String, i32), i64)> = commit_floor
        .into_iter()
        .filter(|(tp, _)| !revoked.contains(tp))
        .collect();
    for (tp, offset) in waiting_floor {
        match floor.iter_mut().find(|(s, _)| *s == tp) {
            Some((_, f)) => *f = (*f).min(offset),
            None => floor.push((tp, offset)),
        }
    }
    floor
}

/// `hand_over` with `kafka.transactional`: the held changes of `gone`
/// are written, then published with their progress records and the
/// offsets in one transaction. It runs before this member lets go of the
/// partitions (`KafkaSource::let_go`), in the group's current generation,
/// so the transaction commits; should the group have moved on anyway (a
/// hand-over past the rebalance timeout, a lost assignment), it fails
/// (KIP-447) and is aborted, nothing of it is visible, and the next owner
/// publishes those outputs (the state is durable).
async fn hand_over_in_transaction<S: StateStore>(
    processor: &mut Processor<S>,
    source: &mut KafkaSource,
    sink: &KafkaSink,
    gone: &BTreeSet<u32>,
    revoked: &[(String, i32)],
    progress: &Progress,
) -> anyhow::Result<()> {
    let outputs = match processor.flush_partitions(gone).await {
        Ok(outputs) => outputs,
        Err(StoreError::Fenced { .. }) => {
            progress.handovers_fenced.fetch_add(1, Ordering::Relaxed);
            eprintln!("warning: partitions {gone:?} were claimed by their next owner before their held changes were written; it re-reads those records");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    record_latency(progress, &processor.take_persisted_produce_times());
    let floor = hand_over_floor(processor.commit_floor(), processor.waiting_floor(), revoked);
    match transact(processor, sink, source, &outputs, &floor).await {
        Ok(()) => {
            if let Some(m) = &progress.metrics {
                m.published(&outputs);
            }
            Ok(())
        }
        Err(crate::source::kafka::KafkaError::Aborted(e)) => {
            eprintln!("warning: the hand-over transaction of partitions {gone:?} was aborted ({e}); their next owner publishes those outputs");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// With `kafka.transactional`: publish `outputs` (everything the processor
/// handed out since its last acknowledgement), the progress record of each
/// account among them, and the input offsets below `floor`, in one
/// transaction; then count them published. No transaction when there is
/// nothing to publish and no offset moved.
async fn transact<S: StateStore>(
    processor: &mut Processor<S>,
    sink: &KafkaSink,
    source: &mut KafkaSource,
    outputs: &[OutputRecord],
    floor: &[((String, i32), i64)],
) -> Result<(), crate::source::kafka::KafkaError> {
    let unacked = processor.take_unacked();
    let marks: Vec<ProgressRecord> = processor
        .progress_records(&unacked)
        .into_iter()
        .map(|(account_id, partition, mark)| ProgressRecord {
            payload: serde_json::to_vec(&mark).expect("a mark serialises"),
            key: account_id,
            partition: i32::try_from(partition).unwrap_or(i32::MAX),
        })
        .collect();
    let offsets = if outputs.is_empty() && marks.is_empty() {
        source.take_offsets(floor)?
    } else {
        // Every partition's offset, so the broker checks this member's
        // generation (`transaction_offsets`).
        source.transaction_offsets(floor)?
    };
    if offsets.is_none() && outputs.is_empty() && marks.is_empty() {
        processor.acknowledged(unacked);
        return Ok(());
    }
    let tpl = offsets.as_ref().map(|(tpl, _)| tpl.clone());
    sink.publish_in_transaction(outputs, &marks, offsets)
        .await?;
    if let Some(tpl) = &tpl {
        source.committed(tpl);
    }
    processor.acknowledged(unacked);
    Ok(())
}

/// How long reading a partition of the progress topic at assignment may
/// take (including the wait for a previous owner's open transaction).
const PROGRESS_READ: Duration = Duration::from_secs(120);

/// Write the changes held for `partitions` (every partition: `None`) and
/// publish their outputs, returning once all are acknowledged. Without
/// transactions the partitions are written one at a time and each one's
/// outputs are handed to the producer before the next is written, so the
/// store writes and the publishing overlap (outputs still go out only
/// after the state that made them is durable). (With `kafka.transactional`
/// the callers write and then `transact` instead.) A store
/// error is returned as a `StoreError` inside the `anyhow::Error`; outputs
/// of partitions written before it may already be with the producer (they
/// are durable, so a republish sends them again under the same ids).
async fn write_and_publish<S: StateStore>(
    processor: &mut Processor<S>,
    sink: &KafkaSink,
    partitions: Option<&BTreeSet<u32>>,
) -> anyhow::Result<Vec<OutputRecord>> {
    // Every changed account belongs to one of these.
    let due: BTreeSet<u32> = processor
        .unwritten_partitions()
        .into_iter()
        .filter(|p| partitions.is_none_or(|ps| ps.contains(p)))
        .collect();
    let mut outputs = Vec::new();
    let mut sent = Vec::new();
    for p in due {
        let written = processor.flush_partitions(&BTreeSet::from([p])).await?;
        sent.push(sink.send(&written).await?);
        outputs.extend(written);
    }
    for in_flight in sent {
        in_flight.acknowledged().await?;
    }
    Ok(outputs)
}

/// Plan records go through the processor like any record: a plan that
/// does not decode or validate becomes a dead letter.
async fn apply_plan_records<S: StateStore>(
    processor: &mut Processor<S>,
    decoder: &mut Decoder,
    writers: &mut WriterSchemas,
    records: &[OwnedMessage],
    now: Timestamp,
) -> anyhow::Result<()> {
    writers
        .learn(decoder, records.iter().filter_map(|m| m.payload()))
        .await?;
    for m in records {
        let Some(raw) = m.payload() else { continue }; // tombstone
        let pos = SourcePos {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        processor
            .process(&pos, key, raw, decoder.decode(raw), now)
            .await?;
    }
    Ok(())
}

/// The W3C `traceparent` headers of a batch's input records, by position
/// (each traced record also logged at debug level with its trace id, so a
/// support engineer can find it by that id).
fn pos_of(m: &OwnedMessage) -> SourcePos {
    SourcePos {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
    }
}

fn traces_of(records: &[OwnedMessage]) -> std::collections::HashMap<SourcePos, String> {
    use rdkafka::message::Headers;
    let mut traces = std::collections::HashMap::new();
    for m in records {
        let Some(headers) = m.headers() else { continue };
        let Some(value) = headers
            .iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value)
        else {
            continue;
        };
        let Ok(trace) = std::str::from_utf8(value) else {
            continue;
        };
        tracing::debug!(
            traceparent = trace,
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "traced input record"
        );
        traces.insert(
            SourcePos {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
            },
            trace.to_string(),
        );
    }
    traces
}

/// Per-batch counters: records by topic, outcomes from the processor's
/// counters before and after the batch.
fn count_batch(
    m: &Metrics,
    records: &[OwnedMessage],
    before: &ProcessorStats,
    after: &ProcessorStats,
) {
    if records.is_empty() {
        return;
    }
    m.batch_records.observe(records.len() as f64);
    let mut per_topic: Vec<(&str, u64)> = Vec::new();
    for r in records {
        match per_topic.iter_mut().find(|(t, _)| *t == r.topic()) {
            Some((_, n)) => *n += 1,
            None => per_topic.push((r.topic(), 1)),
        }
    }
    for (topic, n) in per_topic {
        m.records_consumed.with_label_values(&[topic]).inc_by(n);
    }
    let rejected = |s: &ProcessorStats| s.rejected.values().sum::<u64>();
    for (outcome, n) in [
        ("applied", after.applied - before.applied),
        ("duplicate", after.duplicates - before.duplicates),
        ("replay", after.replays_skipped - before.replays_skipped),
        ("rejected", rejected(after) - rejected(before)),
    ] {
        if n > 0 {
            m.records_processed.with_label_values(&[outcome]).inc_by(n);
        }
    }
}

/// Produce-to-persisted latency of records whose effects were just
/// written (`produced`: their Kafka timestamps in ms).
fn record_latency(progress: &Progress, produced: &[i64]) {
    if produced.is_empty() {
        return;
    }
    let persisted = chrono::Utc::now().timestamp_millis();
    let mut h = progress
        .latency
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for at in produced {
        let millis = u64::try_from(persisted - at).unwrap_or(0);
        h.record(millis);
        if let Some(metrics) = &progress.metrics {
            metrics.persist_latency.observe(millis as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record waiting on a revoked partition keeps its offset
    /// uncommitted at the hand-over, in both modes: the transactional
    /// hand-over had filtered it out of the floor with the revoked
    /// partitions' held offsets (the commit floor includes the waiting
    /// floor), so its transaction would have committed past a record
    /// nobody folded.
    #[test]
    fn a_record_waiting_on_a_revoked_partition_bounds_the_hand_over_commit() {
        let tp = |p: i32| ("billing.usage.v1".to_string(), p);
        // Partition 0 revoked: its held offset 10 goes (written now), its
        // waiting record at 7 stays; partition 1 stays: held 20, waiting 25.
        let commit_floor = vec![(tp(0), 7), (tp(1), 20)];
        let waiting_floor = vec![(tp(0), 7), (tp(1), 25)];
        let floor = hand_over_floor(commit_floor, waiting_floor, &[tp(0)]);
        assert_eq!(floor, vec![(tp(1), 20), (tp(0), 7)]);
    }

    #[test]
    fn latency_quantiles_are_exact_to_the_millisecond() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        h.record(900_000);
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile(0.5), Some(51));
        assert_eq!(h.quantile(0.99), Some(100));
        assert_eq!(h.quantile(1.0), Some(600_000));
        h.clear();
        assert_eq!(h.count(), 0);
    }
}
