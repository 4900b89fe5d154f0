//! The Avro schemas of `schemas/`, embedded at build time and parsed once.
//!
//! The `.avsc` files are the single source of truth: this file only lists
//! their names, checks them against `schemas/manifest.json` (which gives
//! each its Confluent schema id and topic when no registry is configured)
//! and hands out the parsed `apache_avro::Schema`s. No schema is written
//! in Rust.
//!
//! Without a registry a schema id must name one writer schema forever:
//! records framed with it are read with it. So a schema that changes after
//! its release gets a new id (version `v` of the schema first released as
//! id `n` is id `n + 1000·(v − 1)`), and its earlier versions stay in the
//! catalog under their ids, as writer-only schemas (`Catalog::history`,
//! files `schemas/history/<Record>.v<v>.avsc`) whose records are read by
//! Avro schema resolution into the current one. The manifest records each
//! version's fingerprint (CRC-64-AVRO of its Parsing Canonical Form), and
//! `Catalog::load` refuses a file whose encoding no longer matches it.

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

/// Every schema file, embedded: the current version of each record, then
/// the earlier versions kept under `history/`. Adding a schema or a version
/// means adding it here and to the manifest; `Catalog::load` refuses any
/// disagreement.
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
    "CouponApplied.avsc",
    "ThresholdsSet.avsc",
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
    "history/Plan.v1.avsc",
    "history/Plan.v2.avsc",
    "history/PlanChanged.v1.avsc",
    "history/CreditToppedUp.v1.avsc",
    "history/AdjustmentIssued.v1.avsc",
    "history/InvoiceIssued.v1.avsc",
    "history/InvoiceIssued.v2.avsc",
    "history/InvoiceIssued.v3.avsc",
    "history/Notification.v1.avsc",
    "history/Notification.v2.avsc",
    "history/AccountOpened.v1.avsc",
    "history/ThresholdsSet.v1.avsc",
];

/// The id of version `version` of the schema first released under `first`
/// (ids below `VERSION_STRIDE`): ids of new versions never collide with
/// the ids new schemas take, nor with each other.
pub const VERSION_STRIDE: u32 = 1000;

/// The rule a changed schema must follow, quoted by the errors that find
/// it broken.
const VERSION_RULE: &str = "a schema id names one writer schema for good (records framed with it \
are read with it, by this build and by every consumer without a Schema Registry), so a released \
schema is never changed in place: copy its released text to schemas/history/<Record>.v<v>.avsc \
and list it under the record's `history` with its id and fingerprint, then give the changed file \
the next version, the id <first id> + 1000 × (version − 1) and its new fingerprint \
(README, \"Schema versions and ids\")";

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
    /// The current version (1 when absent).
    #[serde(default = "first_version")]
    version: u32,
    name: String,
    file: String,
    topic: String,
    fingerprint: String,
    /// The earlier versions, oldest first.
    #[serde(default)]
    history: Vec<ManifestVersion>,
}

/// An earlier version of a record's schema, readable but never written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestVersion {
    id: u32,
    version: u32,
    file: String,
    fingerprint: String,
}

fn first_version() -> u32 {
    1
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's Parsing Canonical
/// Form, in hex: equal for two schemas exactly when they encode alike
/// (docs, defaults and aliases are not part of it).
pub fn fingerprint(schema: &Schema) -> String {
    schema
        .fingerprint::<apache_avro::rabin::Rabin>()
        .to_string()
}

/// The id of `version` of the schema whose version 1 is `first`.
pub fn version_id(first: u32, version: u32) -> Option<u32> {
    version
        .checked_sub(1)?
        .checked_mul(VERSION_STRIDE)?
        .checked_add(first)
}

/// One parsed schema (a version of a record) and where it is used.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    /// Confluent schema id from the manifest.
    pub id: u32,
    /// The record's schema version (1 for a schema never changed).
    pub version: u32,
    /// Full name, e.g. `billstream.v1.UsageRecorded`.
    pub name: String,
    /// Short record name, e.g. `UsageRecorded`.
    pub record: String,
    /// File name under `schemas/` (`history/<Record>.v<v>.avsc` for an
    /// earlier version).
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
/// With the manifest's ids it also lists the ids of the earlier versions
/// (`Catalog::history`), read but never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaIds {
    ids: Box<[u32]>,
    /// Writer-only ids and their place in `Catalog::history`.
    earlier: Box<[(u32, usize)]>,
}

impl SchemaIds {
    /// The ids of `schemas/manifest.json`: the newest version's of each
    /// record, and the earlier versions' as writer-only ids.
    pub fn manifest(catalog: &Catalog) -> SchemaIds {
        SchemaIds {
            ids: catalog.entries.iter().map(|e| e.id).collect(),
            earlier: catalog
                .history
                .iter()
                .enumerate()
                .map(|(i, h)| (h.id, i))
                .collect(),
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
        Ok(SchemaIds {
            ids: ids.into(),
            earlier: Box::new([]),
        })
    }

    /// The id of the catalog's `index`-th entry.
    pub fn get(&self, index: usize) -> u32 {
        self.ids[index]
    }

    /// Every id, in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }

    /// The writer-only ids of earlier versions, with their place in
    /// `Catalog::history` (none for a registry's ids: a registry gives the
    /// writer schema of any id it knows).
    pub fn earlier(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.earlier.iter().copied()
    }
}

/// One line of `billstream schemas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSummary {
    pub id: u32,
    pub version: u32,
    pub name: String,
    pub topic: String,
    pub fields: usize,
    /// For an earlier version: the id of the current one, which its
    /// records are read into.
    pub read_as: Option<u32>,
}

/// Where an id's schema is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Current(usize),
    Earlier(usize),
}

/// All schemas, parsed once.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<SchemaEntry>,
    /// Earlier versions, writer-only, in manifest order.
    history: Vec<SchemaEntry>,
    by_id: HashMap<u32, Slot>,
    by_record: HashMap<String, usize>,
}

impl Catalog {
    /// Parse the embedded schemas and check them against the manifest.
    pub fn load() -> Result<Catalog, ContractError> {
        Catalog::parse(MANIFEST, FILES)
    }

    /// Parse `files` (name under `schemas/`, text) and check them against
    /// the manifest text.
    fn parse(
        manifest: &str,
        embedded: &[(&'static str, &'static str)],
    ) -> Result<Catalog, ContractError> {
        let manifest: Manifest =
            serde_json::from_str(manifest).map_err(|e| ContractError::Manifest(e.to_string()))?;
        let files: HashMap<&str, &'static str> = embedded.iter().copied().collect();
        let mut listed = HashSet::new();
        let mut entries = Vec::with_capacity(manifest.schemas.len());
        let mut history = Vec::new();
        let mut by_id = HashMap::new();
        let mut by_record = HashMap::new();
        for m in manifest.schemas {
            if m.topic.is_empty() {
                return Err(ContractError::Manifest(format!(
                    "{} has an empty topic",
                    m.file
                )));
            }
            let found: Vec<u32> = m.history.iter().map(|h| h.version).collect();
            if !found.iter().copied().eq(1..m.version) {
                return Err(ContractError::Manifest(format!(
                    "{} is version {} of {}: its `history` must list versions 1 to {}, oldest first, not {found:?}",
                    m.file,
                    m.version,
                    m.name,
                    m.version.saturating_sub(1)
                )));
            }
            let first = m.history.first().map_or(m.id, |h| h.id);
            if first >= VERSION_STRIDE {
                return Err(ContractError::Manifest(format!(
                    "version 1 of {} has id {first}: first versions take ids below {VERSION_STRIDE} (later versions are {VERSION_STRIDE} apart)",
                    m.name
                )));
            }
            let versions = m
                .history
                .iter()
                .map(|h| (h.id, h.version, h.file.as_str(), h.fingerprint.as_str()))
                .chain([(m.id, m.version, m.file.as_str(), m.fingerprint.as_str())]);
            for (id, version, file, recorded) in versions {
                let current = version == m.version;
                let Some((&file, &text)) = files.get_key_value(file) else {
                    return Err(ContractError::Catalog(format!(
                        "manifest lists {file} but it is not embedded (add it to FILES in src/contracts/catalog.rs)"
                    )));
                };
                if !listed.insert(file) {
                    return Err(ContractError::Catalog(format!(
                        "{file} is listed twice in the manifest"
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
                let want = if current {
                    format!("{short}.avsc")
                } else {
                    format!("history/{short}.v{version}.avsc")
                };
                if file != want {
                    return Err(bad(format!("file name must be {want}")));
                }
                if version_id(first, version) != Some(id) {
                    return Err(bad(format!(
                        "version {version} of {short} must have id {} (version 1's id {first} + {VERSION_STRIDE} × {}), not {id}",
                        version_id(first, version).map_or("out of range".into(), |i| i.to_string()),
                        version - 1
                    )));
                }
                let actual = fingerprint(&schema);
                if actual != recorded {
                    let what = if current {
                        format!(
                            "it no longer encodes like the schema released as version {version}, id {id} (fingerprint {actual}, the manifest records {recorded}). \
                             Keep the released text as history/{short}.v{version}.avsc (id {id}, fingerprint {recorded}) and make this file version {}, id {}, fingerprint {actual}",
                            version + 1,
                            version_id(first, version + 1).map_or("out of range".into(), |i| i.to_string())
                        )
                    } else {
                        format!(
                            "an earlier version's file must never change: it no longer encodes like version {version}, id {id} (fingerprint {actual}, the manifest records {recorded}); restore it from git history"
                        )
                    };
                    return Err(bad(format!("{what}. The rule: {VERSION_RULE}")));
                }
                let entry = SchemaEntry {
                    id,
                    version,
                    name: full,
                    record: short,
                    file,
                    topic: m.topic.clone(),
                    text,
                    schema,
                };
                let slot = if current {
                    Slot::Current(entries.len())
                } else {
                    Slot::Earlier(history.len())
                };
                if by_id.insert(id, slot).is_some() {
                    return Err(ContractError::Catalog(format!(
                        "schema id {id} is used twice"
                    )));
                }
                if current {
                    if by_record
                        .insert(entry.record.clone(), entries.len())
                        .is_some()
                    {
                        return Err(ContractError::Catalog(format!(
                            "record {} is defined twice",
                            entry.record
                        )));
                    }
                    entries.push(entry);
                } else {
                    history.push(entry);
                }
            }
        }
        if let Some((file, _)) = embedded.iter().find(|(f, _)| !listed.contains(f)) {
            return Err(ContractError::Catalog(format!(
                "{file} is embedded but not listed in the manifest"
            )));
        }
        Ok(Catalog {
            entries,
            history,
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

    /// The current version of every schema, in manifest order: what
    /// billstream writes and reads into.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// The earlier versions of the schemas that changed after their
    /// release, in manifest order: writer-only, their records are read into
    /// the current version (`current_of`).
    pub fn history(&self) -> &[SchemaEntry] {
        &self.history
    }

    /// The current version of `entry`'s record.
    pub fn current_of(&self, entry: &SchemaEntry) -> &SchemaEntry {
        &self.entries[self.by_record[&entry.record]]
    }

    /// Where a record (short or full name) is in `entries`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let short = name
            .strip_prefix(NAMESPACE)
            .and_then(|n| n.strip_prefix('.'))
            .unwrap_or(name);
        self.by_record.get(short).copied()
    }

    /// The schema (current or earlier version) a manifest id names.
    pub fn by_id(&self, id: u32) -> Option<&SchemaEntry> {
        self.by_id.get(&id).map(|slot| match *slot {
            Slot::Current(i) => &self.entries[i],
            Slot::Earlier(i) => &self.history[i],
        })
    }

    /// Look up by short record name (`InvoiceIssued`) or full name.
    pub fn by_record(&self, name: &str) -> Option<&SchemaEntry> {
        self.index_of(name).map(|i| &self.entries[i])
    }

    /// Check the rules every schema must keep beyond parsing, that every
    /// earlier version resolves into the current one, and that the input
    /// decoder compiles against them; one summary per schema version
    /// (current versions first).
    pub fn validate_all(&self) -> Result<Vec<SchemaSummary>, ContractError> {
        let mut out = Vec::with_capacity(self.entries.len() + self.history.len());
        for e in self.entries.iter().chain(&self.history) {
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
            let current = self.current_of(e);
            let read_as = (current.id != e.id).then_some(current.id);
            if read_as.is_some() {
                apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                    &e.schema,
                    &current.schema,
                )
                .map_err(|err| {
                    bad(format!(
                        "version {} cannot be read as version {} ({}): {err}",
                        e.version, current.version, current.file
                    ))
                })?;
            }
            out.push(SchemaSummary {
                id: e.id,
                version: e.version,
                name: e.name.clone(),
                topic: e.topic.clone(),
                fields: fields.len(),
                read_as,
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

    /// `FILES` with `file`'s text replaced by `edit` of its JSON.
    fn files_with(
        file: &str,
        edit: impl Fn(&mut serde_json::Value),
    ) -> Vec<(&'static str, &'static str)> {
        FILES
            .iter()
            .map(|&(f, text)| {
                if f != file {
                    return (f, text);
                }
                let mut json: serde_json::Value = serde_json::from_str(text).unwrap();
                edit(&mut json);
                (f, &*json.to_string().leak())
            })
            .collect()
    }

    fn add_field(schema: &mut serde_json::Value) {
        schema["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}),
        );
    }

    #[test]
    fn every_schema_file_encodes_as_the_manifest_records_for_its_id() {
        // The guard of the version rule on the real files: Catalog::load
        // checks each version's fingerprint (a failure here says what to do).
        if let Err(e) = Catalog::load() {
            panic!("{e}");
        }
        let catalog = Catalog::shared().unwrap();
        for e in catalog.entries().iter().chain(catalog.history()) {
            assert_eq!(catalog.by_id(e.id).map(|x| x.file), Some(e.file));
        }
    }

    #[test]
    fn a_schema_changed_without_a_new_id_is_refused_with_the_rule() {
        // A field added to UsageRecorded.avsc, still listed as id 1: records
        // of producers on the released version would no longer decode.
        let files = files_with("UsageRecorded.avsc", add_field);
        let e = Catalog::parse(MANIFEST, &files).unwrap_err().to_string();
        for needed in [
            "UsageRecorded.avsc",
            "no longer encodes like the schema released as version 1, id 1",
            "history/UsageRecorded.v1.avsc (id 1, fingerprint e7b651701da8a45e)",
            "version 2, id 1001",
            "a released schema is never changed in place",
        ] {
            assert!(e.contains(needed), "{needed:?} not in: {e}");
        }
        // The same for a schema already at version 3: its next id is 3013.
        let files = files_with("Plan.avsc", add_field);
        let e = Catalog::parse(MANIFEST, &files).unwrap_err().to_string();
        assert!(
            e.contains("history/Plan.v3.avsc (id 2013") && e.contains("version 4, id 3013"),
            "{e}"
        );
        // An earlier version's file is frozen.
        let files = files_with("history/Plan.v1.avsc", add_field);
        let e = Catalog::parse(MANIFEST, &files).unwrap_err().to_string();
        assert!(e.contains("must never change"), "{e}");
        // A change that keeps the encoding (a doc) needs no new id.
        let files = files_with("UsageRecorded.avsc", |s| {
            s["doc"] = serde_json::json!("reworded");
        });
        assert!(Catalog::parse(MANIFEST, &files).is_ok());
    }

    #[test]
    fn versions_follow_the_id_rule_and_list_their_history() {
        let manifest: serde_json::Value = serde_json::from_str(MANIFEST).unwrap();
        let plan_at = manifest["schemas"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["file"] == "Plan.avsc")
            .unwrap();
        let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut m = manifest.clone();
            edit(&mut m["schemas"][plan_at]);
            Catalog::parse(&m.to_string(), FILES)
                .unwrap_err()
                .to_string()
        };
        let e = edited(&|p| p["id"] = serde_json::json!(25));
        assert!(e.contains("version 3 of Plan must have id 2013"), "{e}");
        let e = edited(&|p| p["history"] = serde_json::json!([]));
        assert!(e.contains("must list versions 1 to 2"), "{e}");
        let e = edited(&|p| p["history"][0]["id"] = serde_json::json!(1013));
        assert!(e.contains("first versions take ids below 1000"), "{e}");
        let e = edited(&|p| p["history"][0]["id"] = serde_json::json!(999));
        assert!(e.contains("version 2 of Plan must have id 1999"), "{e}");
    }

    #[test]
    fn every_file_in_schemas_history_is_a_listed_earlier_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/history");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| format!("history/{}", f.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let catalog = Catalog::shared().unwrap();
        let mut listed: Vec<String> = catalog
            .history()
            .iter()
            .map(|e| e.file.to_string())
            .collect();
        listed.sort();
        assert_eq!(on_disk, listed);
        for e in catalog.history() {
            let current = catalog.current_of(e);
            assert!(e.version < current.version && e.id != current.id);
            assert_eq!(e.id, version_id(e.id % VERSION_STRIDE, e.version).unwrap());
        }
    }
}
