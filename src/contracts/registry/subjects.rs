//! Where each schema of the catalog lives in a Schema Registry, and
//! `billstream schemas register`. Subjects follow TopicRecordNameStrategy,
//! `<topic>-<record full name>` (most topics carry several record types),
//! with the topic names of the configuration (prefix and renames applied);
//! a topic that carries one record type also gets `<topic>-value`
//! (TopicNameStrategy), for consumers that use the default strategy. The
//! same names as `deploy/register-schemas.sh`.

use crate::config::Topics;
use crate::contracts::catalog::Catalog;
use crate::contracts::errors::ContractError;

use super::client::{RegistryClient, RegistryError};

/// One subject of one schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The subject name.
    pub name: String,
    /// The schema's place in `Catalog::entries`.
    pub index: usize,
    /// `<topic>-<record full name>`: the subject `billstream run` looks
    /// the schema's id up under (the other is `<topic>-value`).
    pub by_record: bool,
}

/// Every subject of every schema, in catalog order (the record subject of
/// a schema before its `-value` subject).
pub fn subjects(catalog: &Catalog, topics: &Topics) -> Result<Vec<Subject>, ContractError> {
    let mut out = Vec::new();
    for (index, e) in catalog.entries().iter().enumerate() {
        let topic = topics.configured(&e.topic).ok_or_else(|| {
            ContractError::Manifest(format!(
                "{} travels on {}, which is not a topic of the configuration",
                e.name, e.topic
            ))
        })?;
        out.push(Subject {
            name: format!("{topic}-{}", e.name),
            index,
            by_record: true,
        });
        let sharing = catalog
            .entries()
            .iter()
            .filter(|other| other.topic == e.topic)
            .count();
        if sharing == 1 {
            out.push(Subject {
                name: format!("{topic}-value"),
                index,
                by_record: false,
            });
        }
    }
    Ok(out)
}

/// What `register_all` did for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub subject: String,
    /// Record full name.
    pub record: String,
    pub id: u32,
    /// It was there already (nothing changed).
    pub already: bool,
}

/// Register every schema of `catalog` under its subjects; a schema already
/// under a subject is left alone, so running it again changes nothing.
pub async fn register_all(
    client: &RegistryClient,
    catalog: &Catalog,
    topics: &Topics,
) -> Result<Vec<Registration>, RegistryError> {
    let list = subjects(catalog, topics).map_err(|e| RegistryError::Setup(e.to_string()))?;
    let mut done = Vec::with_capacity(list.len());
    for s in list {
        let entry = &catalog.entries()[s.index];
        let (id, already) = match client.lookup(&s.name, entry.text).await? {
            Some(found) => (found.id, true),
            None => (client.register(&s.name, entry.text).await?, false),
        };
        done.push(Registration {
            subject: s.name,
            record: entry.name.clone(),
            id,
            already,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn subjects_are_topic_record_names_plus_value_for_single_record_topics() {
        let settings = Settings::from_layers(
            Some(("[kafka]\ntopic_prefix = \"acme.\"\n", "t.toml")),
            std::iter::empty(),
        )
        .unwrap();
        let catalog = Catalog::shared().unwrap();
        let list = subjects(catalog, &settings.topics).unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"acme.billing.usage.v1-billstream.v1.UsageRecorded"));
        assert!(names.contains(&"acme.billing.usage.v1-value"));
        assert!(names.contains(&"acme.billing.payments.v1-billstream.v1.PaymentFailed"));
        assert!(!names.contains(&"acme.billing.payments.v1-value"));
        // One record subject per schema, each naming its own entry.
        let by_record: Vec<&Subject> = list.iter().filter(|s| s.by_record).collect();
        assert_eq!(by_record.len(), catalog.entries().len());
        for (i, s) in by_record.iter().enumerate() {
            assert_eq!(s.index, i);
            assert!(s.name.ends_with(&catalog.entries()[i].name));
        }
    }
}
