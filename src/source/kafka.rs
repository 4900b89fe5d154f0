//! The Kafka source: a consumer group over the input topics, read in
//! batches, with offsets committed only after the batch's state is durable
//! and its outputs are published; and the plans topic, read in full as a
//! global table before processing starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::engine::time::Timestamp;

/// Errors of the Kafka edges, by what happens next.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The client could not be created or configured: fatal at start-up.
    #[error("kafka client: {0}")]
    Client(String),
    /// A broker call failed; safe to retry (nothing committed).
    #[error("kafka: {0}")]
    Transient(String),
    /// A Kafka transaction failed and was aborted: none of its records
    /// and offsets became visible (the state behind them is durable, so
    /// whoever owns the partitions next publishes them).
    #[error("kafka transaction aborted: {0}")]
    Aborted(String),
}

fn client(settings: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.kafka.brokers)
        .set(
            "session.timeout.ms",
            settings.kafka.session_timeout.as_millis().to_string(),
        )
        .set("socket.keepalive.enable", "true");
    c
}

/// Apply the configured extra librdkafka properties (`kafka.properties`)
/// last, right before the client is created.
/// A producer's config with the partitioner the input topics are
/// checked against (`kafka.input_partitioner`), so what billstream itself
/// produces (payment results of the gateway emulator, replayed dead
/// letters, outputs) lands where the check expects it.
pub fn with_input_partitioner<'c>(
    c: &'c mut ClientConfig,
    settings: &Settings,
) -> &'c mut ClientConfig {
    if let Some(name) = settings.kafka.input_partitioner.librdkafka_name() {
        c.set("partitioner", name);
    }
    c
}

pub fn with_properties<'c>(c: &'c mut ClientConfig, settings: &Settings) -> &'c mut ClientConfig {
    for (k, v) in &settings.kafka.properties {
        c.set(k, v);
    }
    c
}

/// `call` until it succeeds or `deadline` passes (then its last error, as
/// `Transient`, naming `what`). Metadata, watermark and offset requests
/// fail for a moment while a topic is new or its leader moves
/// (`NotLeaderForPartition`, `LeaderNotAvailable`: seen on Apache Kafka
/// right after `topics create`, which stopped `run` at start); that must
/// not stop a member.
fn retrying<T>(
    what: &str,
    deadline: Instant,
    mut call: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> Result<T, KafkaError> {
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() + Duration::from_millis(250) < deadline => {
                tracing::debug!(what, error = %e, "kafka request failed; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(KafkaError::Transient(format!("{what}: {e}"))),
        }
    }
}

/// A change of the input partitions this member owns, as the group
/// coordinator handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// These (topic, partition)s are now ours.
    Assigned(Vec<(String, i32)>),
    /// These (topic, partition)s are being taken from us. The group waits
    /// (this member has not rejoined, its fetchers are paused) until the
    /// loop has handed them over and called `KafkaSource::let_go`; unless
    /// the assignment was already lost (session timeout) or the consumer
    /// is closing, when they are gone already.
    Revoked(Vec<(String, i32)>),
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Records what the rebalance callbacks saw; librdkafka runs them inside
/// `recv`, on the thread of the processing loop, so the loop reads them
/// right after the call that ran them.
#[derive(Default)]
pub struct GroupContext {
    changes: Mutex<Vec<GroupChange>>,
    /// Consumer lag per (topic, partition) from librdkafka's latest
    /// statistics (every `statistics.interval.ms`).
    lag: Mutex<Vec<(String, i32, i64)>>,
    /// Set with every push, so the per-record check takes no lock.
    pending: AtomicBool,
    /// A revocation the loop has not let go of yet (`KafkaSource::let_go`).
    unassign_owed: AtomicBool,
    /// The consumer is being closed: a revocation is let go at once, there
    /// being no loop left to hand anything over.
    closing: AtomicBool,
}

impl GroupContext {
    fn push(&self, change: GroupChange) {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(change);
        self.pending.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<GroupChange> {
        self.pending.store(false, Ordering::Release);
        std::mem::take(
            &mut *self
                .changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = Vec::new();
        for (name, topic) in &statistics.topics {
            for (partition, p) in &topic.partitions {
                // -1 = unknown (not fetched yet, or not assigned here).
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.push((name.clone(), *partition, p.consumer_lag));
                }
            }
        }
        *self
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lag;
    }
}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; those records will be delivered again and skipped as replays");
        }
    }

    /// The default handling of rdkafka (assign or unassign inside the
    /// callback) except for a revocation: the hand-over (write what the
    /// checkpoint held, publish it, commit the offsets) must finish before
    /// the next owner gets the partitions, and it is async work of the
    /// processing loop, whose thread this callback runs on (inside
    /// `recv`). So the callback only records the revocation and returns
    /// without unassigning: librdkafka then waits in its
    /// `WAIT_UNASSIGN_CALL` state, fetchers paused and heartbeats going,
    /// and does not rejoin (so the group cannot hand the partitions to
    /// anyone) until the loop calls `KafkaSource::let_go` after the
    /// hand-over, bounded by `max.poll.interval.ms`. The offsets are
    /// committed while this member still owns the partitions in the
    /// current generation, as Java's `onPartitionsRevoked` does.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = match consumer.rebalance_protocol() {
                    rdkafka::consumer::RebalanceProtocol::Cooperative => {
                        consumer.incremental_assign(tpl)
                    }
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = assigned {
                    eprintln!("warning: kafka rebalance: assign: {e}");
                }
                self.push(GroupChange::Assigned(partitions_of(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions_of(tpl);
                if self.closing.load(Ordering::Acquire) || consumer.assignment_lost() {
                    // Lost (the group moved on without us: a hand-over
                    // would be fenced anyway) or closing: let go now.
                    if let Err(e) = unassign(consumer, tpl) {
                        eprintln!("warning: kafka rebalance: unassign: {e}");
                    }
                } else {
                    self.unassign_owed.store(true, Ordering::Release);
                }
                self.push(GroupChange::Revoked(revoked));
            }
            other => {
                eprintln!("warning: kafka rebalance: {other:?}");
                if let Err(e) = unassign(consumer, tpl) {
                    eprintln!("warning: kafka rebalance: unassign: {e}");
                }
            }
        }
    }
}

/// Give up `tpl` (all of the assignment under the eager protocol).
fn unassign<C: Consumer<G>, G: ConsumerContext>(
    consumer: &C,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    }
}

/// What `next_batch` hands out: records, and the group changes seen while
/// collecting them. A batch stops at the first change, so
/// `records[..before_changes]` arrived under the old assignment and the
/// rest under the new one.
#[derive(Default)]
pub struct SourceBatch {
    pub records: Vec<OwnedMessage>,
    pub changes: Vec<GroupChange>,
    pub before_changes: usize,
    /// When the first record arrived.
    pub first_at: Option<Instant>,
}

/// The input topics (usage, payments, accounts) in a consumer group.
pub struct KafkaSource {
    consumer: StreamConsumer<GroupContext>,
    /// Per (topic, partition): the offset after the last record processed,
    /// and the offset last handed to a commit (a handful of partitions:
    /// searched, not hashed, and no allocation per record).
    offsets: Vec<Position>,
    /// The input topics, and the partition count they shared when this
    /// member started (`check_co_partitioned`).
    topics: [String; 3],
    partitions: Option<usize>,
    /// With `kafka.transactional`, the progress topic, which must exist
    /// and be co-partitioned with the inputs.
    progress: Option<String>,
    /// Per input (topic, partition): the timestamp (ms) of the last record
    /// fetched, capped at the wall clock: the partition's stream time
    /// (`timers_floor`). The last, not the largest: one record stamped
    /// ahead of the others moves it only until the next record is read.
    stream_time: Vec<((String, i32), i64)>,
}

/// Where one input partition stands.
struct Position {
    topic: String,
    partition: i32,
    processed: i64,
    committed: i64,
}

/// A record timestamp as a partition's stream time: never ahead of the
/// wall clock, so a record stamped in the future (a producer's clock
/// ahead, or a hostile timestamp) cannot make a partition with a backlog
/// look caught up to every timer.
fn stream_time_of(record_ms: i64, wall_ms: i64) -> i64 {
    record_ms.min(wall_ms)
}

/// Per input (topic, partition), the lowest offset whose effects are not
/// durable yet (`Processor::commit_floor`): no commit reaches past it.
pub type Floor = [((String, i32), i64)];

impl KafkaSource {
    pub fn connect(settings: &Settings) -> Result<KafkaSource, KafkaError> {
        let mut config = client(settings);
        config
            .set("group.id", &settings.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // The range assignor gives one member partition p of every
            // input topic together: the topics are co-partitioned by
            // account, so one account's records all reach one member.
            .set("partition.assignment.strategy", "range")
            .set(
                "max.poll.interval.ms",
                settings.kafka.max_poll_interval.as_millis().to_string(),
            )
            // Bounded prefetch: librdkafka stops fetching a partition
            // while this much is queued for it and not yet handed out.
            .set(
                "queued.max.messages.kbytes",
                settings.batch.prefetch_kbytes.to_string(),
            )
            // Consumer lag for the metrics.
            .set("statistics.interval.ms", "5000");
        if let Some(id) = &settings.kafka.group_instance_id {
            // Static membership: a restart with the same id takes this
            // member's place (and partitions) without a rebalance.
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<GroupContext> = with_properties(&mut config, settings)
            .create_with_context(GroupContext::default())
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        let topics = [
            settings.topics.usage.as_str(),
            settings.topics.payments.as_str(),
            settings.topics.accounts.as_str(),
        ];
        let mut source = KafkaSource {
            consumer,
            offsets: Vec::new(),
            topics: topics.map(str::to_string),
            partitions: None,
            progress: settings
                .kafka
                .transactional
                .then(|| settings.topics.progress.clone()),
            stream_time: Vec::new(),
        };
        source.check_co_partitioned()?;
        source
            .consumer
            .subscribe(&topics)
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok(source)
    }

    /// The input topics' partition count, once known (`check_co_partitioned`).
    pub fn partition_count(&self) -> Option<u32> {
        self.partitions.and_then(|n| u32::try_from(n).ok())
    }

    /// Refuse input topics that are not co-partitioned: one account's
    /// records must be in partition p of every input topic, owned by one
    /// member, which holds only while the topics have one partition count
    /// (and producers key every topic by account with one partitioner).
    /// Checked at start and on every assignment: partitions added while
    /// running (to one topic, or to all: keys then move to other
    /// partitions, away from their accounts' state) stop the member.
    /// Topics that do not exist yet are left out.
    pub fn check_co_partitioned(&mut self) -> Result<(), KafkaError> {
        let mut counts = Vec::new();
        for topic in &self.topics {
            let metadata = retrying(
                &format!("metadata of {topic}"),
                Instant::now() + Duration::from_secs(30),
                || {
                    self.consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                },
            )?;
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    counts.push((topic.as_str(), t.partitions().len()));
                }
            }
        }
        if let Some(progress) = &self.progress {
            let metadata = retrying(
                &format!("metadata of {progress}"),
                Instant::now() + Duration::from_secs(30),
                || {
                    self.consumer
                        .fetch_metadata(Some(progress), Duration::from_secs(5))
                },
            )?;
            match metadata.topics().iter().find(|t| t.name() == progress) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    counts.push((progress.as_str(), t.partitions().len()));
                }
                _ => {
                    return Err(KafkaError::Client(format!(
                        "topics.progress: topic {progress} does not exist; kafka.transactional needs it, compacted and with the input topics' partition count (`billstream topics create` makes it)"
                    )))
                }
            }
        }
        let described = || {
            counts
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if counts.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(KafkaError::Client(format!(
                "the input topics have different partition counts ({}): one account's records must be in the same partition of every input topic, so every input topic needs the same partition count (`billstream topics create` makes them so)",
                described()
            )));
        }
        if let Some(&(_, now)) = counts.first() {
            match self.partitions {
                Some(before) if before != now => {
                    return Err(KafkaError::Client(format!(
                        "partitions were added to the input topics while running ({before} then {}): records of an account now hash to another partition than its state; billstream stops rather than give an account two owners",
                        described()
                    )))
                }
                _ => self.partitions = Some(now),
            }
        }
        Ok(())
    }

    /// Up to `max` records, waiting at most `wait` after the first one
    /// (and at most `idle` for the first); cut short by a group change.
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
        idle: Duration,
    ) -> Result<SourceBatch, KafkaError> {
        let mut batch = SourceBatch::default();
        let context = self.consumer.context().clone();
        let mut deadline = Instant::now() + idle;
        let mut started = false;
        while batch.records.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let received = tokio::time::timeout(left, self.consumer.recv()).await;
            if context.pending() {
                batch.before_changes = batch.records.len();
                batch.changes = context.take();
                if let Ok(r) = received {
                    batch.records.push(
                        r.map_err(|e| KafkaError::Transient(e.to_string()))?
                            .detach(),
                    );
                }
                return Ok(batch);
            }
            match received {
                Err(_) => break,
                Ok(r) => {
                    batch.records.push(
                        r.map_err(|e| KafkaError::Transient(e.to_string()))?
                            .detach(),
                    );
                    if !started {
                        started = true;
                        let now = Instant::now();
                        batch.first_at = Some(now);
                        deadline = now + wait;
                    }
                }
            }
        }
        batch.before_changes = batch.records.len();
        self.note_stream_time(&batch.records);
        Ok(batch)
    }

    fn note_stream_time(&mut self, records: &[OwnedMessage]) {
        let mut last: Option<usize> = None;
        let wall_ms = chrono::Utc::now().timestamp_millis();
        for m in records {
            let Some(ms) = m.timestamp().to_millis() else {
                continue;
            };
            let ms = stream_time_of(ms, wall_ms);
            let same = |e: &((String, i32), i64)| e.0 .1 == m.partition() && e.0 .0 == m.topic();
            let i = match last.filter(|&i| same(&self.stream_time[i])) {
                Some(i) => i,
                None => match self.stream_time.iter().position(same) {
                    Some(i) => i,
                    None => {
                        self.stream_time
                            .push(((m.topic().to_string(), m.partition()), i64::MIN));
                        self.stream_time.len() - 1
                    }
                },
            };
            self.stream_time[i].1 = ms;
            last = Some(i);
        }
    }

    /// How far the processing clock `now` may move timers (period closes,
    /// due dates, retries, rollups): to `now` while every input partition
    /// this member reads is read to its end, else no further than the
    /// latest record timestamp read from a partition that is not, so a
    /// timer is ordered after the records appended before it came due
    /// however far behind the member is (a backlog after an outage, a
    /// slow member) — outputs a function of the log, not of the lag
    /// (issue 15). Held back by at most `hold`, so a partition that is
    /// never read cannot stop every timer.
    pub fn timers_floor(&self, now: Timestamp, hold: Duration) -> Timestamp {
        let hold = i64::try_from(hold.as_micros()).unwrap_or(i64::MAX);
        let cap = now.0.saturating_sub(hold);
        let Ok(positions) = self.consumer.position() else {
            return Timestamp(cap);
        };
        let mut floor = now.0;
        for e in positions.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            if !self.topics.iter().any(|t| t == topic) {
                continue;
            }
            // Where the next record to read is: after the last one handed
            // out (past any transaction markers), else the group's
            // committed offset.
            let next = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => self
                    .offsets
                    .iter()
                    .find(|o| o.partition == partition && o.topic == topic)
                    .map(|o| o.committed)
                    .filter(|c| *c >= 0),
            };
            let read_to_end = match (next, self.cached_watermarks(topic, partition)) {
                (Some(next), Some((low, high))) => next.max(low) >= high,
                (None, Some((low, high))) => low >= high,
                _ => false,
            };
            if !read_to_end {
                let read = self
                    .stream_time
                    .iter()
                    .find(|((t, p), _)| *p == partition && t == topic)
                    .map_or(i64::MIN, |(_, ms)| ms.saturating_mul(1000));
                floor = floor.min(read);
            }
        }
        Timestamp(floor.max(cap).min(now.0))
    }

    /// The low and high watermarks of `topic`/`partition` as of the last
    /// fetch response (no request to the broker); `None` before one.
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // rust-rdkafka 0.39 has only `fetch_watermarks`, a broker round
        // trip; librdkafka keeps the watermarks of every fetch response.
        // SAFETY: the handle is valid while `self.consumer` lives, the
        // topic name is a NUL-terminated string that outlives the call,
        // and the two out-parameters are plain integers.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && low >= 0
            && high >= 0)
            .then_some((low, high))
    }

    /// Consumer lag per (topic, partition) as of librdkafka's latest
    /// statistics.
    pub fn consumer_lag(&self) -> Vec<(String, i32, i64)> {
        self.consumer
            .context()
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Remember that `records` were processed: their offsets are committed
    /// by the next `commit`, up to the floor it is given.
    pub fn processed(&mut self, records: &[OwnedMessage]) {
        for m in records {
            let next = m.offset() + 1;
            match self
                .offsets
                .iter_mut()
                .find(|o| o.partition == m.partition() && o.topic == m.topic())
            {
                Some(o) => o.processed = o.processed.max(next),
                None => self.offsets.push(Position {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    processed: next,
                    committed: -1,
                }),
            }
        }
    }

    /// What may be committed now: per partition the processed offset held
    /// below `floor`, where that moved past the last commit.
    fn committable(&self, floor: &Floor) -> Result<Option<TopicPartitionList>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for o in &self.offsets {
            let held = floor
                .iter()
                .find(|((t, p), _)| *p == o.partition && *t == o.topic)
                .map_or(i64::MAX, |(_, f)| *f);
            let next = o.processed.min(held);
            if next > o.committed {
                tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(next))
                    .map_err(|e| KafkaError::Transient(e.to_string()))?;
            }
        }
        Ok((tpl.count() > 0).then_some(tpl))
    }

    /// Remember that the offsets in `tpl` are committed (or handed to a
    /// commit whose failure is harmless).
    pub fn committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let (Offset::Offset(at), Some(o)) = (
                e.offset(),
                self.offsets
                    .iter_mut()
                    .find(|o| o.partition == e.partition() && o.topic == e.topic()),
            ) {
                o.committed = o.committed.max(at);
            }
        }
    }

    /// The offsets `commit` would commit, handed over instead (to a Kafka
    /// transaction, which calls `committed` once it is), with the group's
    /// metadata; `None` when nothing moved.
    pub fn take_offsets(
        &self,
        floor: &Floor,
    ) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, KafkaError> {
        let Some(tpl) = self.committable(floor)? else {
            return Ok(None);
        };
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| KafkaError::Transient("no consumer group metadata".into()))?;
        Ok(Some((tpl, group)))
    }

    /// The offsets a Kafka transaction commits: what `take_offsets` would
    /// hand over, plus every other partition this member has committed
    /// from, at its last committed offset again. Committing in every
    /// transaction makes the broker check that this member still belongs
    /// to the group's current generation (KIP-447): a member that lost its
    /// partitions to a rebalance cannot commit a transaction any more, so
    /// its outputs stay invisible to `read_committed` readers. `None` when
    /// this member has no position at all yet.
    pub fn transaction_offsets(
        &self,
        floor: &Floor,
    ) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, KafkaError> {
        let mut tpl = self.committable(floor)?.unwrap_or_default();
        for o in &self.offsets {
            if o.committed >= 0 && tpl.find_partition(&o.topic, o.partition).is_none() {
                tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.committed))
                    .map_err(|e| KafkaError::Transient(e.to_string()))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(None);
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| KafkaError::Transient("no consumer group metadata".into()))?;
        Ok(Some((tpl, group)))
    }

    /// Commit the processed records below `floor` (call after their state
    /// is durable and their outputs are published). A failed commit loses
    /// nothing: the records are delivered again and skipped as replays by
    /// the positions kept with each account's state. `CommitMode::Async`
    /// returns at once (a failure is logged by the context); `Sync` waits
    /// for the broker.
    pub fn commit(&mut self, mode: CommitMode, floor: &Floor) -> Result<(), KafkaError> {
        match self.committable(floor)? {
            None => Ok(()),
            Some(tpl) => {
                self.committed(&tpl);
                self.consumer
                    .commit(&tpl, mode)
                    .map_err(|e| KafkaError::Transient(e.to_string()))
            }
        }
    }

    /// Whether `partition` of `topic` (an input topic this member reads)
    /// has records it has not processed yet: the broker's high watermark is
    /// past the offset after the last record processed here, or, when none
    /// was, past the group's committed offset (its start when none). Asks
    /// the broker; called only for partitions where a record waits for its
    /// account's opening.
    pub fn has_unprocessed(&self, topic: &str, partition: i32) -> Result<bool, KafkaError> {
        let timeout = Duration::from_secs(5);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (low, high) = retrying(
            &format!("watermarks of {topic}/{partition}"),
            deadline,
            || self.consumer.fetch_watermarks(topic, partition, timeout),
        )?;
        let next = match self
            .offsets
            .iter()
            .find(|o| o.partition == partition && o.topic == topic)
        {
            Some(o) => o.processed,
            None => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = retrying(
                    &format!("committed offset of {topic}/{partition}"),
                    deadline,
                    || self.consumer.committed_offsets(tpl.clone(), timeout),
                )?;
                match committed
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                }
            }
        };
        Ok(next < high)
    }

    /// Learn the group's committed offsets of newly assigned partitions
    /// (as positions processed up to there), so that `transaction_offsets`
    /// can commit them again before this member has processed anything,
    /// and `timers_floor` knows where a partition not read from yet stands.
    pub fn learn_committed(&mut self, partitions: &[(String, i32)]) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            if !self
                .offsets
                .iter()
                .any(|o| o.partition == *partition && o.topic == *topic)
            {
                tpl.add_partition(topic, *partition);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let committed = retrying(
            "committed offsets of the assigned partitions",
            Instant::now() + Duration::from_secs(30),
            || {
                self.consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(5))
            },
        )?;
        for e in committed.elements() {
            if let Offset::Offset(at) = e.offset() {
                self.offsets.push(Position {
                    topic: e.topic().to_string(),
                    partition: e.partition(),
                    processed: at,
                    committed: at,
                });
            }
        }
        Ok(())
    }

    /// Finish a revocation (`GroupContext::rebalance`) once the revoked
    /// partitions are handed over: unassign them, so the member rejoins
    /// and the group can give them to their next owner. Nothing when no
    /// revocation is owed (lost, or closing: already let go).
    pub fn let_go(&self, revoked: &[(String, i32)]) -> Result<(), KafkaError> {
        if !self
            .consumer
            .context()
            .unassign_owed
            .swap(false, Ordering::AcqRel)
        {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in revoked {
            tpl.add_partition(topic, *partition);
        }
        unassign(&self.consumer, &tpl).map_err(|e| KafkaError::Client(format!("unassign: {e}")))
    }

    /// Forget the positions of partitions this member no longer reads.
    pub fn forget(&mut self, partitions: &BTreeSet<(String, i32)>) {
        self.offsets
            .retain(|o| !partitions.contains(&(o.topic.clone(), o.partition)));
        self.stream_time.retain(|(tp, _)| !partitions.contains(tp));
    }
}

impl Drop for KafkaSource {
    /// A revocation still owed (the loop stopped or failed between seeing
    /// it and letting go) is let go now, and any revocation the close
    /// itself triggers is let go at once: no loop is left to hand over.
    fn drop(&mut self) {
        let context = self.consumer.context();
        context.closing.store(true, Ordering::Release);
        if context.unassign_owed.swap(false, Ordering::AcqRel) {
            if let Ok(assignment) = self.consumer.assignment() {
                let _ = unassign(&self.consumer, &assignment);
            }
        }
    }
}

/// Partition `partition` of the transactional progress topic
/// (`topics.progress`), as committed: each account's latest record, as
/// (key, payload). Waits first until no transaction that wrote below the
/// partition's end as it is now is still open (its last stable offset has
/// reached that end), so a previous owner's transaction in flight is seen
/// if it commits and never if it aborts.
pub fn read_progress(
    settings: &Settings,
    partition: i32,
    timeout: Duration,
) -> Result<std::collections::HashMap<String, Vec<u8>>, KafkaError> {
    let topic = settings.topics.progress.clone();
    let deadline = Instant::now() + timeout;
    let mut config = client(settings);
    config.set("isolation.level", "read_uncommitted");
    let uncommitted: BaseConsumer = with_properties(&mut config, settings)
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let (_, end) = retrying(&format!("end of {topic}/{partition}"), deadline, || {
        uncommitted.fetch_watermarks(&topic, partition, Duration::from_secs(5))
    })?;
    let mut config = client(settings);
    config
        .set("group.id", format!("{}-progress", settings.kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<QuietEnd> = with_properties(&mut config, settings)
        .create_with_context(QuietEnd)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    // For a read_committed client librdkafka answers the last stable
    // offset (librdkafka 1.7.1+, confluentinc/librdkafka#3428).
    loop {
        let (low, stable) = retrying(
            &format!("stable end of {topic}/{partition}"),
            deadline,
            || consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)),
        )?;
        if stable >= end {
            if stable <= low {
                return Ok(Default::default());
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(KafkaError::Transient(format!(
                "{topic}/{partition}: a transaction below offset {end} is still open after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Beginning)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let mut latest = std::collections::HashMap::new();
    loop {
        if Instant::now() > deadline {
            return Err(KafkaError::Transient(format!(
                "{topic}/{partition} not read to its end within {timeout:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(latest),
            Some(Err(e)) => return Err(KafkaError::Transient(format!("{topic}/{partition}: {e}"))),
            Some(Ok(m)) => {
                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    match m.payload() {
                        Some(p) => {
                            latest.insert(key.to_string(), p.to_vec());
                        }
                        None => {
                            latest.remove(key);
                        }
                    }
                }
            }
        }
    }
}

/// Every record of `topic` (all partitions, from the start to the end as
/// it is when called), handed to `each` in partition order; no group
/// offsets are used or committed. A partition is done at its last record
/// or at its end as the consumer sees it (a topic written in transactions
/// ends with a commit marker no record stands for).
pub fn read_whole_topic(
    settings: &Settings,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut config = client(settings);
    config
        .set("group.id", format!("{}-reader", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<QuietEnd> =
        with_properties(&mut config, settings).create_with_context(QuietEnd)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} not found on {}", settings.kafka.brokers);
    }
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            list.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{topic}: not read to its end within {}s (partitions left: {:?})",
                timeout.as_secs(),
                ends.keys().collect::<Vec<_>>()
            );
        }
        let m = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
                continue;
            }
            Some(m) => m?,
        };
        each(&m)?;
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(())
}

/// A consumer context for reading a partition to its end: the end of
/// the partition is an event the reader waits for, not an error to log.
struct QuietEnd;

impl ClientContext for QuietEnd {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEnd {}

/// The plans topic, read as a global table (all partitions, no group):
/// in full before processing starts, then followed.
pub struct PlanFollower {
    consumer: BaseConsumer,
    topic: String,
    /// Reads the plans topic's true end (read_uncommitted: a transaction
    /// still open counts), for `has_unread`.
    ends: BaseConsumer,
    partitions: Vec<i32>,
}

impl PlanFollower {
    /// Every record of the plans topic up to its end as it is now, then a
    /// follower for what comes after.
    pub fn read_to_end(
        settings: &Settings,
        timeout: Duration,
    ) -> Result<(PlanFollower, Vec<OwnedMessage>), KafkaError> {
        let mut config = client(settings);
        config
            .set("group.id", format!("{}-plans", settings.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = with_properties(&mut config, settings)
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        let topic = settings.topics.plans.clone();
        let deadline = Instant::now() + timeout;
        let metadata = retrying(&format!("metadata of {topic}"), deadline, || {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))
        })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in &partitions {
            let (low, high) = retrying(&format!("watermarks of {topic}/{p}"), deadline, || {
                consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5))
            })?;
            if high > low {
                ends.insert(*p, high);
            }
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                .map_err(|e| KafkaError::Client(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        let mut records = Vec::new();
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(KafkaError::Transient(format!(
                    "plans topic {topic} not read to its end within {timeout:?}"
                )));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.map_err(|e| KafkaError::Transient(e.to_string()))?;
            if ends
                .get(&msg.partition())
                .is_some_and(|end| msg.offset() + 1 >= *end)
            {
                ends.remove(&msg.partition());
            }
            records.push(msg.detach());
        }
        let mut config = client(settings);
        config.set("isolation.level", "read_uncommitted");
        let ends: BaseConsumer = with_properties(&mut config, settings)
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok((
            PlanFollower {
                consumer,
                topic,
                ends,
                partitions,
            },
            records,
        ))
    }

    /// Whether the plans topic holds records this follower has not
    /// handed out yet (including records of a transaction still open): a
    /// plan an opening names may be among them. Asks the broker.
    pub fn has_unread(&self) -> Result<bool, KafkaError> {
        let position = self
            .consumer
            .position()
            .map_err(|e| KafkaError::Transient(format!("{}: position: {e}", self.topic)))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in &self.partitions {
            let (low, end) = retrying(&format!("end of {}/{p}", self.topic), deadline, || {
                self.ends
                    .fetch_watermarks(&self.topic, *p, Duration::from_secs(5))
            })?;
            let at = match position.find_partition(&self.topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at,
                // Nothing handed out yet: unread if the partition has any.
                _ => low,
            };
            if end > at {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Plan records published since the last call (never waits).
    pub fn poll_new(&self) -> Result<Vec<OwnedMessage>, KafkaError> {
        let mut records = Vec::new();
        while let Some(msg) = self.consumer.poll(Duration::ZERO) {
            records.push(
                msg.map_err(|e| KafkaError::Transient(format!("{}: {e}", self.topic)))?
                    .detach(),
            );
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_stamped_in_the_future_counts_as_the_wall_clock_for_stream_time() {
        assert_eq!(super::stream_time_of(5_000, 9_000), 5_000);
        assert_eq!(super::stream_time_of(i64::MAX, 9_000), 9_000);
        assert_eq!(super::stream_time_of(i64::MIN, 9_000), i64::MIN);
    }

    use super::*;
    use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};

    /// The first `billstream run` of a CI run stopped at start on
    /// `NotLeaderForPartition` for a plans topic created a moment before:
    /// a transient answer is asked again until the deadline.
    #[test]
    fn a_transient_broker_answer_is_asked_again_until_the_deadline() {
        let mut calls = 0;
        let got = retrying(
            "watermarks of t/0",
            Instant::now() + Duration::from_secs(5),
            || {
                calls += 1;
                if calls < 3 {
                    Err(RdError::MetadataFetch(
                        RDKafkaErrorCode::NotLeaderForPartition,
                    ))
                } else {
                    Ok((0_i64, 7_i64))
                }
            },
        );
        assert_eq!(got.unwrap(), (0, 7));
        assert_eq!(calls, 3);

        let started = Instant::now();
        let err = retrying::<()>(
            "metadata of t",
            Instant::now() + Duration::from_millis(600),
            || Err(RdError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable)),
        )
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.contains("metadata of t"), "{err}");
    }
}
