//! The DLQ topic read from start to end (every partition, no consumer
//! group, nothing committed), and dead letters republished to their source
//! topics, each under its original key with a `billstream_replay_of`
//! header naming the dead letter.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    let mut out = TopicRead {
        records: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    crate::source::kafka::read_whole_topic(settings, topic, timeout, |m| {
        let at = format!("{topic}/{}/{}", m.partition(), m.offset());
        match DlqRecord::from_avro(catalog, m.payload().unwrap_or_default(), at.clone()) {
            Ok(r) => {
                if seen.insert(r.event_id.clone()) {
                    out.records.push(r);
                }
            }
            Err(e) => out.unreadable.push((at, e)),
        }
        Ok(())
    })?;
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
        crate::source::kafka::with_input_partitioner(&mut config, settings);
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
