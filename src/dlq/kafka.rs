//! The DLQ topic read from start to end (every partition, no consumer
//! group, nothing committed), and dead letters republished to their source
//! topics, each under its original key with a `billstream_replay_of`
//! header naming the dead letter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::record::DlqRecord;
use crate::config::Settings;
use crate::contracts::Catalog;

/// Header of a replayed record: the id of the dead letter it came from.
pub const REPLAY_HEADER: &str = "billstream_replay_of";

/// The DLQ topic's dead letters, one per id (a dead letter republished
/// after a crash has the same id), in topic order; and the positions of
/// records that are no dead letters, with why.
pub struct TopicRead {
    pub records: Vec<DlqRecord>,
    pub unreadable: Vec<(String, String)>,
}

/// Read the whole DLQ topic of `settings` as it is now.
pub fn read_topic(settings: &Settings, timeout: Duration) -> anyhow::Result<TopicRead> {
    let catalog = Catalog::shared()?;
    let topic = settings.topics.dlq.as_str();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", "billstream-dlq-reader")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer =
        crate::source::kafka::with_properties(&mut config, settings).create()?;
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
    let mut out = TopicRead {
        records: Vec::new(),
        unreadable: Vec::new(),
    };
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&list)?;
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{topic}: not read to its end within {}s (partitions left: {:?})",
                timeout.as_secs(),
                ends.keys().collect::<Vec<_>>()
            );
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let at = format!("{topic}/{}/{}", m.partition(), m.offset());
        match DlqRecord::from_avro(catalog, m.payload().unwrap_or_default(), at.clone()) {
            Ok(r) => {
                if seen.insert(r.event_id.clone()) {
                    out.records.push(r);
                }
            }
            Err(e) => out.unreadable.push((at, e)),
        }
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(out)
}

/// Publishes dead letters' payloads back to their source topics.
pub struct Republisher {
    producer: FutureProducer,
}

impl Republisher {
    pub fn connect(settings: &Settings) -> anyhow::Result<Republisher> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        Ok(Republisher {
            producer: crate::source::kafka::with_properties(&mut config, settings).create()?,
        })
    }

    /// Publish `r`'s payload to its source topic under its key; the
    /// partition and offset it got.
    pub async fn republish(&self, r: &DlqRecord) -> anyhow::Result<(i32, i64)> {
        let headers = OwnedHeaders::new().insert(Header {
            key: REPLAY_HEADER,
            value: Some(r.event_id.as_bytes()),
        });
        let mut record = FutureRecord::to(&r.source_topic)
            .payload(&r.payload)
            .headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{}: {e}", r.source_topic))?;
        Ok((delivery.partition, delivery.offset))
    }
}
