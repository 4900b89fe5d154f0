//! The Avro schemas of `schemas/`, embedded at build time and parsed once.
//!
//! The `.avsc` files are the single source of truth: this file only lists
//! their names, checks them against `schemas/manifest.json` (which gives
//! each its Confluent schema id and topic when no registry is configured)
//! and hands out the parsed `apache_avro::Schema`s. No schema is written
//! in Rust.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use apache_avro::Schema;
use serde::Deserialize;

use super::errors::ContractError;

/// Namespace of every record.
pub const NAMESPACE: &str = "billstream.v1";

/// The manifest, embedded.
const MANIFEST: &str = include_str!("../../schemas/manifest.json");

/// Embed schema files by name, as `(file name, text)` pairs.
macro_rules! embed_schemas {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("../../schemas/", $file)))),*]
    };
}

/// Every schema file, embedded. Adding a schema means adding it here and
/// to the manifest; `Catalog::load` refuses any disagreement.
const FILES: &[(&str, &str)] = embed_schemas![
    "UsageRecorded.avsc",
    "CreditToppedUp.avsc",
    "PaymentSucceeded.avsc",
    "PaymentFailed.avsc",
    "PaymentRefunded.avsc",
    "BankTransferReceived.avsc",
    "PaymentMethodAttached.avsc",
    "PaymentMethodDetached.avsc",
    "AccountOpened.avsc",
    "PlanChanged.avsc",
    "AccountClosed.avsc",
    "AdjustmentIssued.avsc",
    "Plan.avsc",
    "InvoiceOpened.avsc",
    "InvoiceIssued.avsc",
    "InvoicePaid.avsc",
    "InvoicePartiallyPaid.avsc",
    "InvoiceOverdue.avsc",
    "CreditNoteIssued.avsc",
    "ChargeRequested.avsc",
    "Notification.avsc",
    "UsageRollup.avsc",
    "JournalEntry.avsc",
    "DeadLetter.avsc",
];

/// Topics whose records carry `event_id` and `causation_id` (outputs).
const OUTPUT_TOPICS: &[&str] = &[
    "billing.invoices.v1",
    "billing.charges.v1",
    "billing.notifications.v1",
    "billing.usage-rollups.v1",
    "billing.journal.v1",
    "billing.dlq.v1",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    schemas: Vec<ManifestEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    id: u32,
    name: String,
    file: String,
    topic: String,
}

/// One parsed schema and where it is used.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    /// Confluent schema id from the manifest.
    pub id: u32,
    /// Full name, e.g. `billstream.v1.UsageRecorded`.
    pub name: String,
    /// Short record name, e.g. `UsageRecorded`.
    pub record: String,
    /// File name under `schemas/`.
    pub file: &'static str,
    /// Default topic the record travels on.
    pub topic: String,
    /// The `.avsc` text, for registering it with a Schema Registry.
    pub text: &'static str,
    /// The parsed schema.
    pub schema: Schema,
}

impl SchemaEntry {
    /// Field names of the record, in schema order.
    pub fn field_names(&self) -> Vec<&str> {
        match &self.schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// The Confluent schema id each schema of the catalog travels under: the
/// manifest's, or the ones a Schema Registry gave (`contracts::registry`).
/// Indexed like `Catalog::entries`, so finding an id costs one array read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaIds {
    ids: Box<[u32]>,
}

impl SchemaIds {
    /// The ids of `schemas/manifest.json`.
    pub fn manifest(catalog: &Catalog) -> SchemaIds {
        SchemaIds {
            ids: catalog.entries.iter().map(|e| e.id).collect(),
        }
    }

    /// Ids from elsewhere, one per entry of `catalog`, in its order.
    pub fn from_ids(catalog: &Catalog, ids: Vec<u32>) -> Result<SchemaIds, ContractError> {
        if ids.len() != catalog.entries.len() {
            return Err(ContractError::Catalog(format!(
                "{} schema ids for {} schemas",
                ids.len(),
                catalog.entries.len()
            )));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(ContractError::Catalog(format!(
                "schema id {dup} names two different schemas"
            )));
        }
        Ok(SchemaIds { ids: ids.into() })
    }

    /// The id of the catalog's `index`-th entry.
    pub fn get(&self, index: usize) -> u32 {
        self.ids[index]
    }

    /// Every id, in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }
}

/// One line of `billstream schemas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSummary {
    pub id: u32,
    pub name: String,
    pub topic: String,
    pub fields: usize,
}

/// All schemas, parsed once.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<SchemaEntry>,
    by_id: HashMap<u32, usize>,
    by_record: HashMap<String, usize>,
}

impl Catalog {
    /// Parse the embedded schemas and check them against the manifest.
    pub fn load() -> Result<Catalog, ContractError> {
        let manifest: Manifest =
            serde_json::from_str(MANIFEST).map_err(|e| ContractError::Manifest(e.to_string()))?;
        let files: HashMap<&str, &'static str> = FILES.iter().copied().collect();
        let mut listed = HashSet::new();
        let mut entries = Vec::with_capacity(manifest.schemas.len());
        let mut by_id = HashMap::new();
        let mut by_record = HashMap::new();
        for m in manifest.schemas {
            let Some((&file, &text)) = files.get_key_value(m.file.as_str()) else {
                return Err(ContractError::Catalog(format!(
                    "manifest lists {} but it is not embedded (add it to FILES in src/contracts/catalog.rs)",
                    m.file
                )));
            };
            if !listed.insert(file) {
                return Err(ContractError::Catalog(format!(
                    "{file} is listed twice in the manifest"
                )));
            }
            if m.topic.is_empty() {
                return Err(ContractError::Manifest(format!(
                    "{file} has an empty topic"
                )));
            }
            let bad = |reason: String| ContractError::Schema {
                file: file.to_string(),
                reason,
            };
            let schema = Schema::parse_str(text).map_err(|e| bad(e.to_string()))?;
            let Schema::Record(record) = &schema else {
                return Err(bad("the top-level schema must be a record".into()));
            };
            let full = record.name.fullname(None);
            if full != m.name {
                return Err(bad(format!(
                    "record is {full} but the manifest says {}",
                    m.name
                )));
            }
            if record.name.namespace.as_deref() != Some(NAMESPACE) {
                return Err(bad(format!("namespace must be {NAMESPACE}")));
            }
            let short = record.name.name.clone();
            if file.strip_suffix(".avsc") != Some(short.as_str()) {
                return Err(bad(format!("file name must be {short}.avsc")));
            }
            let index = entries.len();
            if by_id.insert(m.id, index).is_some() {
                return Err(ContractError::Catalog(format!(
                    "schema id {} is used twice",
                    m.id
                )));
            }
            if by_record.insert(short.clone(), index).is_some() {
                return Err(ContractError::Catalog(format!(
                    "record {short} is defined twice"
                )));
            }
            entries.push(SchemaEntry {
                id: m.id,
                name: full,
                record: short,
                file,
                topic: m.topic,
                text,
                schema,
            });
        }
        if let Some((file, _)) = FILES.iter().find(|(f, _)| !listed.contains(f)) {
            return Err(ContractError::Catalog(format!(
                "{file} is embedded but not listed in the manifest"
            )));
        }
        Ok(Catalog {
            entries,
            by_id,
            by_record,
        })
    }

    /// The catalog of this build, loaded on first use and shared.
    pub fn shared() -> Result<&'static Catalog, ContractError> {
        static SHARED: OnceLock<Result<Catalog, ContractError>> = OnceLock::new();
        SHARED
            .get_or_init(Catalog::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Every schema, in manifest order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// Where a record (short or full name) is in `entries`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let short = name
            .strip_prefix(NAMESPACE)
            .and_then(|n| n.strip_prefix('.'))
            .unwrap_or(name);
        self.by_record.get(short).copied()
    }

    pub fn by_id(&self, id: u32) -> Option<&SchemaEntry> {
        self.by_id.get(&id).map(|&i| &self.entries[i])
    }

    /// Look up by short record name (`InvoiceIssued`) or full name.
    pub fn by_record(&self, name: &str) -> Option<&SchemaEntry> {
        self.index_of(name).map(|i| &self.entries[i])
    }

    /// Check the rules every schema must keep beyond parsing, and that the
    /// input decoder compiles against them; one summary per schema.
    pub fn validate_all(&self) -> Result<Vec<SchemaSummary>, ContractError> {
        let mut out = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let bad = |reason: String| ContractError::Schema {
                file: e.file.to_string(),
                reason,
            };
            let fields = e.field_names();
            if fields.is_empty() {
                return Err(bad("a record needs fields".into()));
            }
            if !fields.contains(&"event_id") && e.record != "Plan" {
                return Err(bad("every event record needs an event_id".into()));
            }
            if OUTPUT_TOPICS.contains(&e.topic.as_str()) && !fields.contains(&"causation_id") {
                return Err(bad("every output record needs a causation_id".into()));
            }
            // Self-contained (no named references), so every reader can walk it.
            super::avro_binary::Skip::compile(&e.schema).map_err(bad)?;
            out.push(SchemaSummary {
                id: e.id,
                name: e.name.clone(),
                topic: e.topic.clone(),
                fields: fields.len(),
            });
        }
        super::decode::Decoder::new(self)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_in_the_manifest_parses_and_validates() {
        let catalog = Catalog::load().unwrap();
        let summary = catalog.validate_all().unwrap();
        assert_eq!(summary.len(), FILES.len());
        let usage = &summary[0];
        assert_eq!(
            (usage.id, usage.name.as_str(), usage.topic.as_str()),
            (1, "billstream.v1.UsageRecorded", "billing.usage.v1")
        );
        assert_eq!(usage.fields, 8);
    }

    #[test]
    fn lookups_by_id_and_name_agree() {
        let catalog = Catalog::shared().unwrap();
        for e in catalog.entries() {
            assert_eq!(catalog.by_id(e.id).map(|x| &x.name), Some(&e.name));
            assert_eq!(catalog.by_record(&e.record).map(|x| x.id), Some(e.id));
            assert_eq!(catalog.by_record(&e.name).map(|x| x.id), Some(e.id));
        }
        assert!(catalog.by_id(0).is_none());
        assert!(catalog.by_record("Nope").is_none());
    }

    #[test]
    fn schema_ids_are_one_per_entry_and_distinct() {
        let catalog = Catalog::shared().unwrap();
        let manifest = SchemaIds::manifest(catalog);
        assert!(manifest.iter().eq(catalog.entries().iter().map(|e| e.id)));
        let n = catalog.entries().len() as u32;
        let ids = SchemaIds::from_ids(catalog, (0..n).map(|i| 1000 + i).collect()).unwrap();
        assert_eq!(ids.get(catalog.index_of("UsageRecorded").unwrap()), 1000);
        assert!(SchemaIds::from_ids(catalog, vec![1]).is_err());
        assert!(SchemaIds::from_ids(catalog, vec![7; n as usize]).is_err());
    }

    #[test]
    fn output_records_carry_event_and_causation_ids() {
        let catalog = Catalog::shared().unwrap();
        let outputs: Vec<_> = catalog
            .entries()
            .iter()
            .filter(|e| OUTPUT_TOPICS.contains(&e.topic.as_str()))
            .collect();
        assert_eq!(outputs.len(), 11);
        for e in outputs {
            let f = e.field_names();
            assert!(
                f.contains(&"event_id") && f.contains(&"causation_id"),
                "{}",
                e.name
            );
        }
    }
}
