//! The Kafka sink: output records, Avro-encoded with Confluent framing,
//! keyed by account, with `event_id` and `causation_id` in headers, through
//! an idempotent producer. `publish` returns once every record is
//! acknowledged, so callers can then mark them published and commit input
//! offsets.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Settings;
use crate::contracts::{Catalog, OutputRecord, OutputTopic};
use crate::source::kafka::KafkaError;

pub struct KafkaSink {
    producer: FutureProducer,
    catalog: &'static Catalog,
    names: [String; 6],
}

impl KafkaSink {
    pub fn connect(
        settings: &Settings,
        catalog: &'static Catalog,
    ) -> Result<KafkaSink, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        let producer: FutureProducer = crate::source::kafka::with_properties(&mut config, settings)
            .create()
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        let t = &settings.topics;
        Ok(KafkaSink {
            producer,
            catalog,
            names: [
                t.invoices.clone(),
                t.charges.clone(),
                t.notifications.clone(),
                t.usage_rollups.clone(),
                t.journal.clone(),
                t.dlq.clone(),
            ],
        })
    }

    fn topic(&self, t: OutputTopic) -> &str {
        let i = OutputTopic::ALL
            .iter()
            .position(|x| *x == t)
            .expect("every topic is listed");
        &self.names[i]
    }

    /// Publish and wait for every acknowledgement.
    pub async fn publish(&self, records: &[OutputRecord]) -> Result<(), KafkaError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let payload = self.catalog.encode_output(r).map_err(|e| {
                KafkaError::Client(format!(
                    "encode {} for {}: {e}",
                    r.kind,
                    self.topic(r.topic)
                ))
            })?;
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "event_id",
                    value: Some(r.event_id.as_bytes()),
                })
                .insert(Header {
                    key: "causation_id",
                    value: Some(r.causation_id.as_bytes()),
                });
            let record = FutureRecord::to(self.topic(r.topic))
                .key(r.key.as_bytes())
                .payload(&payload)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => return Err(KafkaError::Transient(format!("enqueue: {e}"))),
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(KafkaError::Transient(format!("delivery: {e}"))),
                Err(_) => return Err(KafkaError::Transient("producer dropped a delivery".into())),
            }
        }
        Ok(())
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(|e| KafkaError::Transient(e.to_string()))
    }
}
