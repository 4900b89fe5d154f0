//! The Kafka source: a consumer group over the input topics, read in
//! batches, with offsets committed only after the batch's state is durable
//! and its outputs are published; and the plans topic, read in full as a
//! global table before processing starts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::contracts::{Decoded, Decoder};
use crate::engine::plan::Plan;

/// Errors of the Kafka edges, by what happens next.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The client could not be created or configured: fatal at start-up.
    #[error("kafka client: {0}")]
    Client(String),
    /// A broker call failed; safe to retry (nothing committed).
    #[error("kafka: {0}")]
    Transient(String),
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

/// The input topics (usage, payments, accounts) in a consumer group.
pub struct KafkaSource {
    consumer: StreamConsumer,
    /// Next offset to commit per (topic, partition), for records processed.
    pending: BTreeMap<(String, i32), i64>,
}

impl KafkaSource {
    pub fn connect(settings: &Settings) -> Result<KafkaSource, KafkaError> {
        let consumer: StreamConsumer = client(settings)
            .set("group.id", &settings.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "max.poll.interval.ms",
                settings.kafka.max_poll_interval.as_millis().to_string(),
            )
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        let topics = [
            settings.topics.usage.as_str(),
            settings.topics.payments.as_str(),
            settings.topics.accounts.as_str(),
        ];
        consumer
            .subscribe(&topics)
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok(KafkaSource {
            consumer,
            pending: BTreeMap::new(),
        })
    }

    /// Up to `max` records, waiting at most `wait` after the first one
    /// (and at most `idle` for the first).
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
        idle: Duration,
    ) -> Result<Vec<OwnedMessage>, KafkaError> {
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(idle, self.consumer.recv()).await {
            Err(_) => return Ok(batch),
            Ok(r) => r.map_err(|e| KafkaError::Transient(e.to_string()))?,
        };
        batch.push(first.detach());
        let deadline = Instant::now() + wait;
        while batch.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_) => break,
                Ok(r) => batch.push(
                    r.map_err(|e| KafkaError::Transient(e.to_string()))?
                        .detach(),
                ),
            }
        }
        for m in &batch {
            let next = self
                .pending
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *next = (*next).max(m.offset() + 1);
        }
        Ok(batch)
    }

    /// Commit every record handed out so far (call after its state is
    /// durable and its outputs are published).
    pub fn commit(&mut self) -> Result<(), KafkaError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.pending {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| KafkaError::Transient(e.to_string()))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| KafkaError::Transient(e.to_string()))?;
        self.pending.clear();
        Ok(())
    }
}

/// Read the whole plans topic (a compacted global table) up to its end
/// as it is now; the last record of a plan id wins.
pub fn read_plans(
    settings: &Settings,
    decoder: &Decoder,
    timeout: Duration,
) -> Result<(Vec<Plan>, Vec<String>), KafkaError> {
    let consumer: BaseConsumer = client(settings)
        .set("group.id", format!("{}-plans", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let topic = &settings.topics.plans;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| KafkaError::Transient(format!("metadata of {topic}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| KafkaError::Transient(format!("watermarks of {topic}/{p}: {e}")))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|e| KafkaError::Client(e.to_string()))?;
        }
    }
    let mut plans = BTreeMap::new();
    let mut errors = Vec::new();
    if ends.is_empty() {
        return Ok((Vec::new(), errors));
    }
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let deadline = Instant::now() + timeout;
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
        match msg.payload().map(|p| decoder.decode(p)) {
            Some(Ok(Decoded::Plan(plan))) => {
                plans.insert(plan.plan_id.clone(), plan);
            }
            Some(Ok(Decoded::Input(_))) => errors.push(format!(
                "{topic}/{}@{}: not a plan",
                msg.partition(),
                msg.offset()
            )),
            Some(Err(e)) => {
                errors.push(format!("{topic}/{}@{}: {e}", msg.partition(), msg.offset()))
            }
            None => {} // a tombstone: nothing to load
        }
        if ends
            .get(&msg.partition())
            .is_some_and(|end| msg.offset() + 1 >= *end)
        {
            ends.remove(&msg.partition());
        }
    }
    Ok((plans.into_values().collect(), errors))
}
