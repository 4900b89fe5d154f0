//! The Kafka sink: output records, Avro-encoded with Confluent framing
//! (under the manifest's or the Schema Registry's ids), keyed by account,
//! with the cause's `traceparent` header (and, with `kafka.id_headers`,
//! `event_id` and `causation_id` headers), through an idempotent producer.
//! `publish` returns once every record is acknowledged, so callers can
//! then mark them published and commit input offsets.
//!
//! In shadow mode (`run.mode`) `send`, the one way records reach the
//! producer, drops charge requests and notifications (`sink::publishes`),
//! and the output topics are the shadow ones the configuration names.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

use std::sync::atomic::{AtomicU64, Ordering};

use super::publishes;
use crate::config::{RunMode, Settings};
use crate::contracts::{Catalog, OutputRecord, OutputTopic, SchemaIds};
use crate::source::kafka::KafkaError;

pub struct KafkaSink {
    producer: FutureProducer,
    /// `kafka.transactional`: outputs (and, in the loop, input offsets)
    /// are written in Kafka transactions.
    transactional: bool,
    /// `kafka.id_headers`: `event_id` and `causation_id` headers too.
    id_headers: bool,
    /// `kafka.max_record_bytes`: a larger record goes out bounded
    /// (`contracts::bounded`) instead of failing the publish.
    max_record_bytes: usize,
    catalog: &'static Catalog,
    /// The schema id of each record type in the frame.
    ids: SchemaIds,
    names: [String; 6],
    /// `topics.progress`.
    progress_topic: String,
    /// `run.mode`.
    mode: RunMode,
    /// Records dropped in shadow mode: charge requests, notifications.
    withheld: AtomicU64,
}

/// A record of the transactional progress topic (`topics.progress`): an
/// account's latest published journal seq, to the account's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRecord {
    pub key: String,
    pub partition: i32,
    pub payload: Vec<u8>,
}

impl KafkaSink {
    /// With `kafka.transactional`, the producer gets
    /// `kafka.transactional_id` and its transactions are initialised here,
    /// which fences an earlier producer with the same id (this instance
    /// before a crash) and aborts its open transaction.
    pub fn connect(
        settings: &Settings,
        catalog: &'static Catalog,
        ids: SchemaIds,
    ) -> Result<KafkaSink, KafkaError> {
        let mut config = ClientConfig::new();
        if let Some(id) = &settings.kafka.transactional_id {
            config.set("transactional.id", id);
        }
        config
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // One produce request in flight per broker: with up to 1 MB
            // per request that still allows 1 MB per round trip, and it
            // stops librdkafka's broker thread from busy-polling while it
            // waits for slow acks (measured on the test broker: 80 → 30 µs
            // of CPU per record at the same throughput; BENCHMARKS.md; a
            // similar report: confluentinc/librdkafka#2986). Override
            // with kafka.properties.
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "60000")
            // Room for the largest record the sink makes (kafka.max_record_bytes,
            // librdkafka's default otherwise); kafka.properties may override.
            .set(
                "message.max.bytes",
                (settings.kafka.max_record_bytes + 1024)
                    .max(1_000_000)
                    .to_string(),
            );
        crate::source::kafka::with_input_partitioner(&mut config, settings);
        let producer: FutureProducer = crate::source::kafka::with_properties(&mut config, settings)
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        if settings.kafka.transactional {
            producer
                .init_transactions(TXN_TIMEOUT)
                .map_err(|e| KafkaError::Client(format!("init_transactions: {e}")))?;
        }
        let t = &settings.topics;
        if let RunMode::Shadow { prefix } = &settings.run {
            // The configuration names shadow topics; a sink that would
            // write anywhere else in shadow mode is a bug, stop here.
            for name in [
                &t.invoices,
                &t.usage_rollups,
                &t.journal,
                &t.dlq,
                &t.progress,
            ] {
                if !name.starts_with(prefix.as_str()) {
                    return Err(KafkaError::Client(format!(
                        "shadow mode: output topic {name} is not a shadow topic (run.shadow_prefix {prefix:?})"
                    )));
                }
            }
        }
        Ok(KafkaSink {
            producer,
            transactional: settings.kafka.transactional,
            id_headers: settings.kafka.id_headers,
            max_record_bytes: settings.kafka.max_record_bytes,
            catalog,
            ids,
            names: [
                t.invoices.clone(),
                t.charges.clone(),
                t.notifications.clone(),
                t.usage_rollups.clone(),
                t.journal.clone(),
                t.dlq.clone(),
            ],
            progress_topic: t.progress.clone(),
            mode: settings.run.clone(),
            withheld: AtomicU64::new(0),
        })
    }

    fn topic(&self, t: OutputTopic) -> &str {
        let i = OutputTopic::ALL
            .iter()
            .position(|x| *x == t)
            .expect("every topic is listed");
        &self.names[i]
    }

    /// Publish and wait for every acknowledgement (in a transaction of its
    /// own with `kafka.transactional`).
    pub async fn publish(&self, records: &[OutputRecord]) -> Result<(), KafkaError> {
        if self.transactional {
            if records.is_empty() {
                return Ok(());
            }
            return self.publish_in_transaction(records, &[], None).await;
        }
        self.send(records).await?.acknowledged().await
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Records not published because this is a shadow (charge requests,
    /// notifications), since the sink was connected.
    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::Relaxed)
    }

    /// With `kafka.transactional`: one transaction holding `records`, the
    /// `progress` records (`topics.progress`, each to its partition) and,
    /// when given, the consumer group's next offsets for the inputs behind
    /// them, so all become visible (to `read_committed` readers) and
    /// committed together, or none.
    ///
    /// Every record is acknowledged before the offsets are sent, so a
    /// transaction whose offsets the group coordinator accepted (this
    /// member still in the group's generation, KIP-447) has all its
    /// records below the end that a next owner waits on.
    ///
    /// Errors: `Aborted` when the transaction was aborted (nothing of it
    /// is visible); `Transient` when its outcome is unknown (the commit
    /// timed out, or the abort failed): the caller must not go on with
    /// this producer; a restart with the same `transactional.id` completes
    /// or aborts it, and the progress topic says which.
    pub async fn publish_in_transaction(
        &self,
        records: &[OutputRecord],
        progress: &[ProgressRecord],
        offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
    ) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction()).await?;
        let staged = async {
            let in_flight = self.send(records).await?;
            let marks = self.send_progress(progress).await?;
            in_flight.acknowledged().await?;
            marks.acknowledged().await?;
            if let Some((tpl, group)) = offsets {
                let producer = self.producer.clone();
                blocking(move || producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT))
                    .await?;
            }
            Ok::<(), KafkaError>(())
        }
        .await;
        if let Err(e) = staged {
            return Err(self.abort(e).await);
        }
        // A commit that fails with a retriable error is asked again (its
        // outcome is not known until it succeeds); one that needs an abort
        // is aborted; anything else leaves the outcome unknown.
        let deadline = std::time::Instant::now() + TXN_TIMEOUT;
        loop {
            let producer = self.producer.clone();
            let committed =
                tokio::task::spawn_blocking(move || producer.commit_transaction(TXN_TIMEOUT))
                    .await
                    .map_err(|e| KafkaError::Transient(format!("commit_transaction: {e}")))?;
            match committed {
                Ok(()) => return Ok(()),
                Err(RdKafkaError::Transaction(e))
                    if e.is_retriable() && std::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "transaction commit not confirmed yet; asking again");
                }
                Err(RdKafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    return Err(self
                        .abort(KafkaError::Transient(format!("commit_transaction: {e}")))
                        .await);
                }
                Err(e) => {
                    return Err(KafkaError::Transient(format!(
                        "commit_transaction: {e}: outcome unknown (a restart with the same transactional.id resolves it)"
                    )))
                }
            }
        }
    }

    /// Abort the open transaction after `cause`: `Aborted` if it was,
    /// `Transient` (outcome unknown) if the abort failed too.
    async fn abort(&self, cause: KafkaError) -> KafkaError {
        let producer = self.producer.clone();
        match blocking(move || producer.abort_transaction(TXN_TIMEOUT)).await {
            Ok(()) => KafkaError::Aborted(cause.to_string()),
            Err(abort) => {
                tracing::warn!(error = %cause, abort = %abort, "transaction failed and could not be aborted");
                KafkaError::Transient(format!(
                    "{cause}; the abort failed too ({abort}): outcome unknown"
                ))
            }
        }
    }

    /// Hand the progress records to the producer (inside a transaction).
    async fn send_progress(&self, progress: &[ProgressRecord]) -> Result<InFlight, KafkaError> {
        let mut pending = std::collections::VecDeque::with_capacity(progress.len());
        for r in progress {
            let record = FutureRecord::to(&self.progress_topic)
                .key(r.key.as_bytes())
                .payload(&r.payload)
                .partition(r.partition);
            self.enqueue(record, &mut pending).await?;
        }
        Ok(InFlight {
            pending: pending.into(),
        })
    }

    /// Hand `records` to the producer, in order: the returned `InFlight`
    /// resolves once every one is acknowledged. Records sent later to the
    /// same partition are written after these (the idempotent producer
    /// keeps order per partition through retries). When the producer's
    /// queue is full, waits for acknowledgements to make room, so a batch
    /// may have more outputs than the queue holds.
    pub async fn send(&self, records: &[OutputRecord]) -> Result<InFlight, KafkaError> {
        let mut pending = std::collections::VecDeque::with_capacity(records.len());
        for r in records {
            if !publishes(&self.mode, r.topic) {
                self.withheld.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (payload, bounded) = self
                .catalog
                .encode_output_bounded_with(r, &self.ids, self.payload_limit(r))
                .map_err(|e| {
                    KafkaError::Client(format!(
                        "encode {} for {}: {e}",
                        r.kind,
                        self.topic(r.topic)
                    ))
                })?;
            if bounded.is_some() {
                tracing::warn!(
                    topic = self.topic(r.topic),
                    kind = r.kind,
                    event_id = %r.event_id,
                    limit = self.max_record_bytes,
                    "output over kafka.max_record_bytes sent in its bounded form"
                );
            }
            let mut headers = OwnedHeaders::new();
            if self.id_headers {
                headers = headers
                    .insert(Header {
                        key: "event_id",
                        value: Some(r.event_id.as_bytes()),
                    })
                    .insert(Header {
                        key: "causation_id",
                        value: Some(r.causation_id.as_bytes()),
                    });
            }
            if let Some(trace) = &r.traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(trace.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(self.topic(r.topic))
                .key(r.key.as_bytes())
                .payload(&payload);
            if headers.count() > 0 {
                record = record.headers(headers);
            }
            self.enqueue(record, &mut pending).await?;
        }
        Ok(InFlight {
            pending: pending.into(),
        })
    }

    /// Hand one record to the producer, after `pending` (ours, in order).
    /// While the producer's queue is full, make room: the oldest of ours is
    /// acknowledged first; with none of ours queued, the queue holds
    /// earlier batches' records, which drain on their own.
    async fn enqueue<K, P>(
        &self,
        mut record: FutureRecord<'_, K, P>,
        pending: &mut std::collections::VecDeque<DeliveryFuture>,
    ) -> Result<(), KafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    return Ok(());
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match pending.pop_front() {
                        Some(oldest) => acknowledged(oldest).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((e, _)) => return Err(KafkaError::Transient(format!("enqueue: {e}"))),
            }
        }
    }

    /// The payload bytes `r` may take: `kafka.max_record_bytes` less its
    /// key, its headers and Kafka's per-record framing.
    fn payload_limit(&self, r: &OutputRecord) -> usize {
        /// Record framing (lengths, attributes, header counts), rounded up.
        const FRAMING: usize = 512;
        let mut headers = r
            .traceparent
            .as_ref()
            .map_or(0, |t| "traceparent".len() + t.len());
        if self.id_headers {
            headers +=
                "event_id".len() + r.event_id.len() + "causation_id".len() + r.causation_id.len();
        }
        self.max_record_bytes
            .saturating_sub(r.key.len() + headers + FRAMING)
    }

    /// Wait until everything sent so far is delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(|e| KafkaError::Transient(e.to_string()))
    }
}

/// Records handed to the producer and not yet known to be acknowledged.
#[must_use = "an output is published only once it is acknowledged"]
pub struct InFlight {
    pending: Vec<DeliveryFuture>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Wait for every acknowledgement; the first failure is the error
    /// (the producer already retried it; nothing behind it may be marked
    /// published).
    pub async fn acknowledged(self) -> Result<(), KafkaError> {
        for delivery in self.pending {
            acknowledged(delivery).await?;
        }
        Ok(())
    }
}

/// How long a transaction call may take before it fails.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A blocking librdkafka transaction call, off the async threads.
async fn blocking(
    call: impl FnOnce() -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| KafkaError::Transient(format!("transaction call: {e}")))?
        .map_err(|e| KafkaError::Transient(format!("transaction: {e}")))
}

async fn acknowledged(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(KafkaError::Transient(format!("delivery: {e}"))),
        Err(_) => Err(KafkaError::Transient("producer dropped a delivery".into())),
    }
}
