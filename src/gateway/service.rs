//! The emulator's Kafka loop: consume `billing.charges.v1` in its own
//! consumer group, decide each request (`outcome::decide`), publish the
//! result to `billing.payments.v1` after the provider's latency (again
//! after `duplicate_delay` when the outcome says so; later by
//! `out_of_order_delay` when it is held back), dead-letter a request it
//! cannot answer to `billing.dlq.v1`, and commit a partition's offset only
//! below the first request whose publishes are not all acknowledged. A
//! crash therefore answers some requests again, with the same bytes
//! (the outcome is a pure function of the charge), which the engine drops
//! as duplicates: no charge ever gets two different results.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::config::GatewayConfig;
use super::outcome::{decide, provider_of, Verdict};
use super::request::{decode_request, result_event, Rejected};
use crate::config::Settings;
use crate::contracts::{Catalog, DeadLetter};
use crate::engine::time::Timestamp;

/// What a run of the emulator did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GatewayStats {
    pub requests: u64,
    pub succeeded: u64,
    pub declined: u64,
    /// Results published a second time on purpose.
    pub duplicated: u64,
    /// Results held back so later ones overtake them.
    pub held_back: u64,
    pub dead_lettered: u64,
}

/// One record to publish, after a wait.
struct Publish {
    topic: String,
    key: String,
    payload: Vec<u8>,
    after: Duration,
}

/// The emulator's clients and rules.
pub struct Gateway {
    settings: Settings,
    config: GatewayConfig,
    catalog: &'static Catalog,
    consumer: StreamConsumer,
    producer: FutureProducer,
}

impl Gateway {
    /// Connect to the cluster of `settings` and subscribe to its charges
    /// topic in `config`'s group.
    pub fn connect(settings: &Settings, config: &GatewayConfig) -> anyhow::Result<Gateway> {
        if settings.kafka.schema_registry.is_some() {
            anyhow::bail!(
                "kafka.schema_registry_url: the gateway emulator reads and writes the schema ids of schemas/manifest.json only; run it against a billstream without a registry"
            );
        }
        let catalog = Catalog::shared()?;
        let mut consumer_config = ClientConfig::new();
        consumer_config
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.kafka.session_timeout.as_millis().to_string(),
            );
        let consumer: StreamConsumer =
            crate::source::kafka::with_properties(&mut consumer_config, settings).create()?;
        consumer.subscribe(&[settings.topics.charges.as_str()])?;
        let mut producer_config = ClientConfig::new();
        producer_config
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        crate::source::kafka::with_input_partitioner(&mut producer_config, settings);
        let producer: FutureProducer =
            crate::source::kafka::with_properties(&mut producer_config, settings).create()?;
        Ok(Gateway {
            settings: settings.clone(),
            config: config.clone(),
            catalog,
            consumer,
            producer,
        })
    }

    /// What to publish for one record of the charges topic, and how it
    /// counts.
    fn answer(&self, m: &BorrowedMessage<'_>, stats: &mut GatewayStats) -> Vec<Publish> {
        stats.requests += 1;
        let payload = m.payload().unwrap_or_default();
        let decided = decode_request(self.catalog, m.key(), payload).and_then(|request| {
            provider_of(&self.config, &request.token_ref)
                .map(|(name, provider)| {
                    let outcome = decide(self.config.seed, name, provider, &request);
                    (request, outcome)
                })
                .map_err(|reason| Rejected::new("unknown_provider", reason))
        });
        let (request, outcome) = match decided {
            Ok(decided) => decided,
            Err(rejected) => {
                stats.dead_lettered += 1;
                tracing::warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    kind = rejected.kind,
                    reason = %rejected.reason,
                    "charge request dead-lettered"
                );
                return self.dead_letter(m, rejected).into_iter().collect();
            }
        };
        match &outcome.verdict {
            Verdict::Succeeded => stats.succeeded += 1,
            Verdict::Declined { .. } => stats.declined += 1,
        }
        let result = result_event(&request, &outcome, &self.settings.environment);
        let bytes = match self.catalog.encode_input(&result) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Only a request whose fields the result schema cannot
                // carry gets here; it is the request's fault.
                stats.dead_lettered += 1;
                let rejected = Rejected::new("invalid_field", format!("result not encodable: {e}"));
                return self.dead_letter(m, rejected).into_iter().collect();
            }
        };
        let first = outcome.latency + outcome.held_back.unwrap_or_default();
        stats.held_back += u64::from(outcome.held_back.is_some());
        let mut out = vec![Publish {
            topic: self.settings.topics.payments.clone(),
            key: request.account_id.clone(),
            payload: bytes.clone(),
            after: first,
        }];
        if let Some(delay) = outcome.duplicate_after {
            stats.duplicated += 1;
            out.push(Publish {
                topic: self.settings.topics.payments.clone(),
                key: request.account_id,
                payload: bytes,
                after: first + delay,
            });
        }
        out
    }

    /// The dead letter of `m`, rejected as `rejected` (`None` if even the
    /// dead letter cannot be encoded, which the DLQ schema rules out).
    fn dead_letter(&self, m: &BorrowedMessage<'_>, rejected: Rejected) -> Option<Publish> {
        let received_at = m
            .timestamp()
            .to_millis()
            .map(|ms| Timestamp(ms.saturating_mul(1000)))
            .unwrap_or_else(|| Timestamp::from_datetime(chrono::Utc::now()));
        let letter = DeadLetter {
            source_topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            error_kind: rejected.kind.to_string(),
            reason: rejected.reason,
            payload: m.payload().unwrap_or_default().to_vec(),
            received_at,
        };
        let record = letter.to_output();
        match self.catalog.encode_output(&record) {
            Ok(payload) => Some(Publish {
                topic: self.settings.topics.dlq.clone(),
                key: record.key,
                payload,
                after: Duration::ZERO,
            }),
            Err(e) => {
                tracing::error!(error = %e, "dead letter not encodable; request skipped");
                None
            }
        }
    }

    /// Answer requests until `shutdown` completes, then publish what is
    /// still pending, commit, and return what was done. A publish that
    /// fails for good stops the loop with its error (uncommitted requests
    /// are answered again, identically, on the next start).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<GatewayStats> {
        let mut stats = GatewayStats::default();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(i32, i64), String>>();
        // Per partition: offsets whose publishes are not all acknowledged,
        // and the offset after the last request read.
        let mut pending: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(shutdown);
        let mut stopping = false;
        let mut failure = None;
        loop {
            if stopping && pending.values().all(BTreeSet::is_empty) {
                break;
            }
            tokio::select! {
                _ = &mut shutdown, if !stopping => {
                    stopping = true;
                }
                m = self.consumer.recv(), if !stopping => {
                    let m = m?;
                    let (partition, offset) = (m.partition(), m.offset());
                    let publishes = self.answer(&m, &mut stats);
                    next.insert(partition, offset + 1);
                    pending.entry(partition).or_default().insert(offset);
                    let producer = self.producer.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let result = publish_all(&producer, publishes).await;
                        let _ = done.send(result.map(|()| (partition, offset)));
                    });
                }
                Some(done) = done_rx.recv() => match done {
                    Ok((partition, offset)) => {
                        if let Some(set) = pending.get_mut(&partition) {
                            set.remove(&offset);
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
                _ = tick.tick() => self.commit(&pending, &next, &mut committed),
            }
        }
        self.commit(&pending, &next, &mut committed);
        match failure {
            Some(e) => Err(anyhow::anyhow!("publishing a charge result: {e}")),
            None => Ok(stats),
        }
    }

    /// Commit, for each assigned partition, the first offset not yet
    /// fully answered.
    fn commit(
        &self,
        pending: &BTreeMap<i32, BTreeSet<i64>>,
        next: &BTreeMap<i32, i64>,
        committed: &mut BTreeMap<i32, i64>,
    ) {
        let assigned: BTreeSet<i32> = match self.consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => return,
        };
        let mut list = TopicPartitionList::new();
        let mut changed = Vec::new();
        for (&partition, &after) in next {
            let floor = pending
                .get(&partition)
                .and_then(|set| set.first().copied())
                .unwrap_or(after);
            if assigned.contains(&partition) && committed.get(&partition) != Some(&floor) {
                let _ = list.add_partition_offset(
                    &self.settings.topics.charges,
                    partition,
                    Offset::Offset(floor),
                );
                changed.push((partition, floor));
            }
        }
        if changed.is_empty() {
            return;
        }
        match self.consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => committed.extend(changed),
            Err(e) => tracing::warn!(error = %e, "commit failed; retried on the next tick"),
        }
    }
}

/// Publish each record after its wait (counted from now), in order of
/// their waits, each acknowledged before the next.
async fn publish_all(producer: &FutureProducer, mut publishes: Vec<Publish>) -> Result<(), String> {
    publishes.sort_by_key(|p| p.after);
    let start = tokio::time::Instant::now();
    for p in publishes {
        tokio::time::sleep_until(start + p.after).await;
        producer
            .send(
                FutureRecord::to(&p.topic).key(&p.key).payload(&p.payload),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| format!("{}: {e}", p.topic))?;
    }
    Ok(())
}
