//! `billstream run` with a Schema Registry: at start-up, the registry id of
//! every schema of this build, looked up under its record subject (outputs
//! are framed with them, inputs under them are read with this build's
//! schemas); then, batch by batch, the writer schema of every id a batch
//! carries that the decoder does not know yet (a producer's evolved
//! schema), fetched once and taught to the decoder before the batch is
//! decoded, which stays synchronous.
//!
//! Failure behaviour: an id the registry does not have is remembered for
//! `NEGATIVE_TTL` and its records are dead-lettered (`unknown_schema_id`);
//! a schema this build cannot read is refused for good (ids are immutable
//! in a registry) and dead-lettered (`incompatible_schema`). A registry
//! that does not answer (after the client's retries) stops the loop with
//! an error instead: its records are good, and dead-lettering them because
//! of an outage would lose them from the billing stream; a restart reads
//! the batch again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::{RegistrySettings, Topics};
use crate::contracts::catalog::{Catalog, SchemaIds};
use crate::contracts::decode::Decoder;
use crate::contracts::framing;

use super::client::{RegistryClient, RegistryError};
use super::subjects::subjects;

/// How long an id the registry did not have is not asked for again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// The registry id of every schema of `catalog`, in catalog order, from
/// its `<topic>-<record full name>` subject. Schemas that are not there
/// stop the start (`NotRegistered`, naming them and the command to run).
pub async fn registry_ids(
    client: &RegistryClient,
    catalog: &Catalog,
    topics: &Topics,
) -> Result<SchemaIds, RegistryError> {
    let list = subjects(catalog, topics).map_err(|e| RegistryError::Setup(e.to_string()))?;
    let mut ids = vec![0; catalog.entries().len()];
    let mut missing = Vec::new();
    for s in list.iter().filter(|s| s.by_record) {
        let entry = &catalog.entries()[s.index];
        match client.lookup(&s.name, entry.text).await? {
            Some(found) => ids[s.index] = found.id,
            None => missing.push(s.name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(RegistryError::NotRegistered {
            url: client.url().to_string(),
            subjects: missing,
        });
    }
    SchemaIds::from_ids(catalog, ids).map_err(|e| RegistryError::BadAnswer {
        method: "POST",
        url: client.url().to_string(),
        reason: e.to_string(),
    })
}

/// What one `learn` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    /// Writer schemas fetched and taught to the decoder.
    pub registered: usize,
    /// Writer schemas fetched that this build cannot read.
    pub refused: usize,
    /// Ids the registry does not have.
    pub unknown: usize,
}

/// Writer schemas by id, learnt from the registry as records need them.
/// Without a registry (`manifest()`), learning does nothing.
#[derive(Debug)]
pub struct WriterSchemas {
    client: Option<RegistryClient>,
    /// Ids the registry did not have, and when it said so.
    unknown: HashMap<u32, Instant>,
    negative_ttl: Duration,
}

impl WriterSchemas {
    /// The schema ids and writer schemas for `billstream run`: with a
    /// registry configured, its ids (looked up now); the manifest's
    /// otherwise.
    pub async fn for_settings(
        registry: Option<&RegistrySettings>,
        catalog: &Catalog,
        topics: &Topics,
    ) -> Result<(SchemaIds, WriterSchemas), RegistryError> {
        let Some(settings) = registry else {
            return Ok((SchemaIds::manifest(catalog), WriterSchemas::manifest()));
        };
        let client = RegistryClient::new(settings)?;
        let ids = registry_ids(&client, catalog, topics).await?;
        Ok((ids, WriterSchemas::registry(client)))
    }

    /// No registry: ids are the manifest's, nothing is ever fetched.
    pub fn manifest() -> WriterSchemas {
        WriterSchemas {
            client: None,
            unknown: HashMap::new(),
            negative_ttl: NEGATIVE_TTL,
        }
    }

    pub fn registry(client: RegistryClient) -> WriterSchemas {
        WriterSchemas {
            client: Some(client),
            ..WriterSchemas::manifest()
        }
    }

    /// Another time to remember unknown ids (tests).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> WriterSchemas {
        self.negative_ttl = ttl;
        self
    }

    /// The registry behind it, if any.
    pub fn registry_url(&self) -> Option<&str> {
        self.client.as_ref().map(RegistryClient::url)
    }

    /// Before a batch is decoded: fetch the writer schema of every
    /// Confluent-framed id among `payloads` that `decoder` does not know
    /// (and that the registry did not lately say it lacks), and teach it
    /// to `decoder` (`register_writer_schema`), or refuse it there when
    /// this build cannot read it. An error means the registry did not
    /// answer after the client's retries, or refused the request: stop.
    pub async fn learn<'a>(
        &mut self,
        decoder: &mut Decoder,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Learned, RegistryError> {
        let mut learned = Learned::default();
        let Some(client) = &self.client else {
            return Ok(learned);
        };
        let now = Instant::now();
        let ttl = self.negative_ttl;
        self.unknown
            .retain(|_, since| now.duration_since(*since) < ttl);
        let mut wanted: Vec<u32> = Vec::new();
        let mut last = None;
        for bytes in payloads {
            if bytes.len() < framing::HEADER_LEN || bytes[0] != framing::MAGIC {
                continue;
            }
            let Ok((id, _)) = framing::split(bytes) else {
                continue;
            };
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if !decoder.knows(id) && !self.unknown.contains_key(&id) && !wanted.contains(&id) {
                wanted.push(id);
            }
        }
        for id in wanted {
            let fetched =
                client
                    .schema_by_id(id)
                    .await
                    .map_err(|e| RegistryError::WriterSchema {
                        id,
                        source: Box::new(e),
                    })?;
            match fetched {
                None => {
                    tracing::warn!(
                        schema_id = id,
                        registry = client.url(),
                        "schema id not in the Schema Registry: its records go to the DLQ as unknown_schema_id (asked again in {} s)",
                        ttl.as_secs()
                    );
                    self.unknown.insert(id, now);
                    learned.unknown += 1;
                }
                Some(s) if !s.schema_type.eq_ignore_ascii_case("AVRO") => {
                    let reason = format!("a {} schema; billstream reads Avro", s.schema_type);
                    tracing::warn!(schema_id = id, %reason, "writer schema refused");
                    decoder.refuse(id, reason);
                    learned.refused += 1;
                }
                Some(s) => match decoder.register_writer_schema(id, &s.schema) {
                    Ok(()) => {
                        tracing::info!(
                            schema_id = id,
                            "writer schema learnt from the Schema Registry"
                        );
                        learned.registered += 1;
                    }
                    Err(e) => {
                        tracing::warn!(schema_id = id, error = %e, "writer schema refused: its records go to the DLQ as incompatible_schema");
                        decoder.refuse(id, e.to_string());
                        learned.refused += 1;
                    }
                },
            }
        }
        Ok(learned)
    }
}
