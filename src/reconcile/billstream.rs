//! billstream's side: the issued invoices (`InvoiceIssued` records) and
//! the journal behind them, from the embedded mode's output folder
//! (`<dir>/[prefix]billing.invoices.v1.jsonl` and `…journal.v1.jsonl`) or
//! from the configured invoices and journal topics (Avro, read from start
//! to end, no consumer group).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apache_avro::types::Value as Avro;
use rdkafka::message::Message;
use serde_json::{Map, Value};

use super::legacy::money;
use crate::config::Settings;
use crate::contracts::{framing, Catalog};
use crate::engine::events::{DomainEvent, JournalEntry};
use crate::engine::money::{Currency, Minor};
use crate::engine::time::Timestamp;
use crate::runtime::StoredJournalEntry;

/// One issued invoice as reconcile compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub account: String,
    pub invoice_id: String,
    /// `YYYY-MM`: the month its period starts in (`period_label`).
    pub period: String,
    pub currency: Currency,
    pub total: Minor,
    /// (line name, amount) in invoice order; the tax as a `tax` line.
    pub lines: Vec<(String, Minor)>,
}

/// What was read: the invoices (one per invoice id) and the journal by
/// account (in seq order), with where they came from.
pub struct Read {
    pub invoices: Vec<Issued>,
    pub journal: BTreeMap<String, Vec<StoredJournalEntry>>,
    pub journal_found: bool,
    pub source: String,
}

/// The month a period starting at `start` belongs to. Periods start at
/// local midnight of the account's time zone (UTC−12 to UTC+14), which is
/// up to 14 hours before that date's midnight in UTC: 14 hours later, the
/// UTC date is the local one.
pub fn period_label(start: Timestamp) -> String {
    start.plus(14 * 3_600_000_000).to_rfc3339()[..7].to_string()
}

/// The name reconcile gives an invoice line: its metric for usage and late
/// usage, else its kind.
fn line_name(kind: &str, metric: Option<&str>) -> String {
    match (kind, metric) {
        ("usage" | "late_usage", Some(m)) => m.to_string(),
        (k, _) => k.to_string(),
    }
}

/// An `InvoiceIssued` in its pinned JSON (the file sink's line, or the
/// Avro record converted).
pub fn issued_from_json(v: &Value) -> Result<Issued, String> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{k}: missing"))
    };
    let currency = Currency::from_code(text("currency")?)
        .ok_or_else(|| format!("currency {:?} unknown", text("currency")))?;
    let amount = |k: &str, t: &str| money(currency, t).map_err(|e| format!("{k}: {e}"));
    let start =
        Timestamp::parse_rfc3339(text("period_start")?).ok_or("period_start: not RFC 3339")?;
    let mut lines = Vec::new();
    for (i, l) in v
        .get("lines")
        .and_then(Value::as_array)
        .ok_or("lines: missing")?
        .iter()
        .enumerate()
    {
        let kind = l
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(format!("lines[{i}].kind: missing"))?;
        let metric = l.get("metric").and_then(Value::as_str);
        let a = l
            .get("amount")
            .and_then(Value::as_str)
            .ok_or(format!("lines[{i}].amount: missing"))?;
        lines.push((
            line_name(kind, metric),
            amount(&format!("lines[{i}].amount"), a)?,
        ));
    }
    lines.push(("tax".to_string(), amount("tax", text("tax")?)?));
    Ok(Issued {
        account: text("account_id")?.to_string(),
        invoice_id: text("invoice_id")?.to_string(),
        period: period_label(start),
        currency,
        total: amount("total", text("total")?)?,
        lines,
    })
}

/// A published journal record (pinned JSON) as the entry it was, without
/// the input position (that is in the store, not on the topic).
pub fn journal_from_json(v: &Value) -> Result<StoredJournalEntry, String> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{k}: missing"))
    };
    let event: DomainEvent = serde_json::from_str(text("payload")?)
        .map_err(|e| format!("payload: not a journal event: {e}"))?;
    Ok(StoredJournalEntry {
        entry: JournalEntry {
            account_id: text("account_id")?.into(),
            seq: v.get("seq").and_then(Value::as_u64).ok_or("seq: missing")?,
            at: Timestamp::parse_rfc3339(text("at")?).ok_or("at: not RFC 3339")?,
            causation_id: text("causation_id")?.into(),
            event,
        },
        source: None,
    })
}

/// An Avro value in the pinned JSON shape (timestamps as RFC 3339, enums
/// and unions as their value).
pub fn avro_to_json(v: &Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(*b),
        Avro::Int(i) => Value::from(*i),
        Avro::Long(i) => Value::from(*i),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s.clone()),
        Avro::Union(_, inner) => avro_to_json(inner),
        Avro::Array(items) => Value::Array(items.iter().map(avro_to_json).collect()),
        Avro::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Avro::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Avro::TimestampMicros(t) => Value::String(Timestamp(*t).to_rfc3339()),
        other => Value::String(format!("{other:?}")),
    }
}

/// The one file in `dir` whose name ends in `suffix` (`billing.invoices.v1.jsonl`,
/// with or without a shadow prefix).
pub fn file_ending(dir: &Path, suffix: &str) -> anyhow::Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => anyhow::bail!(
            "{}: several files end in {suffix} ({}): point --against at the output folder of one run",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Group journal entries by account, in seq order, one per (account, seq).
pub fn by_account(entries: Vec<StoredJournalEntry>) -> BTreeMap<String, Vec<StoredJournalEntry>> {
    let mut out: BTreeMap<String, BTreeMap<u64, StoredJournalEntry>> = BTreeMap::new();
    for e in entries {
        out.entry(e.entry.account_id.to_string())
            .or_default()
            .entry(e.entry.seq)
            .or_insert(e);
    }
    out.into_iter()
        .map(|(a, m)| (a, m.into_values().collect()))
        .collect()
}

/// Keep the first invoice of each id (a republish repeats it).
fn unique(invoices: Vec<Issued>) -> Vec<Issued> {
    let mut seen = BTreeSet::new();
    invoices
        .into_iter()
        .filter(|i| seen.insert(i.invoice_id.clone()))
        .collect()
}

/// The invoices and journal of an output folder of `simulate`/`demo`.
pub fn read_dir(dir: &Path, with_journal: bool) -> anyhow::Result<Read> {
    let Some(file) = file_ending(dir, "billing.invoices.v1.jsonl")? else {
        anyhow::bail!(
            "{}: no billing.invoices.v1.jsonl (is it the output folder of simulate or demo?)",
            dir.display()
        );
    };
    let mut invoices = Vec::new();
    let text = std::fs::read_to_string(&file)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", file.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        if v.get("lines").is_none() {
            continue; // opened, paid, overdue…: not an issued invoice
        }
        invoices.push(issued_from_json(&v).map_err(|e| anyhow::anyhow!("{at}: {e}"))?);
    }
    let journal_file = if with_journal {
        file_ending(dir, "billing.journal.v1.jsonl")?
    } else {
        None
    };
    let mut entries = Vec::new();
    if let Some(j) = &journal_file {
        let text = std::fs::read_to_string(j)?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", j.display(), i + 1);
            let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            entries.push(journal_from_json(&v).map_err(|e| anyhow::anyhow!("{at}: {e}"))?);
        }
    }
    Ok(Read {
        invoices: unique(invoices),
        journal: by_account(entries),
        journal_found: journal_file.is_some(),
        source: file.display().to_string(),
    })
}

/// Every record of `topic` (all partitions, start to end as of now), as
/// pinned JSON with its Avro record name.
pub fn read_topic(
    settings: &Settings,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Value)>> {
    let catalog = Catalog::shared()?;
    let mut out = Vec::new();
    crate::source::kafka::read_whole_topic(settings, topic, timeout, |m| {
        let at = format!("{topic}/{}/{}", m.partition(), m.offset());
        let bytes = m.payload().unwrap_or_default();
        let (id, mut body) = framing::split(bytes).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        let entry = catalog
            .by_id(id)
            .ok_or_else(|| anyhow::anyhow!("{at}: schema id {id} unknown"))?;
        let value = apache_avro::from_avro_datum(&entry.schema, &mut body, None)
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        out.push((entry.record.to_string(), avro_to_json(&value)));
        Ok(())
    })?;
    Ok(out)
}

/// The invoices and journal of the configured topics (`topics.invoices`,
/// `topics.journal`: the shadow ones in shadow mode).
pub fn read_topics(
    settings: &Settings,
    with_journal: bool,
    timeout: Duration,
) -> anyhow::Result<Read> {
    let topic = &settings.topics.invoices;
    let mut invoices = Vec::new();
    for (record, v) in read_topic(settings, topic, timeout)? {
        if record == "InvoiceIssued" {
            invoices.push(issued_from_json(&v).map_err(|e| anyhow::anyhow!("{topic}: {e}"))?);
        }
    }
    let mut entries = Vec::new();
    if with_journal {
        let journal = &settings.topics.journal;
        for (record, v) in read_topic(settings, journal, timeout)? {
            if record == "JournalEntry" {
                entries.push(journal_from_json(&v).map_err(|e| anyhow::anyhow!("{journal}: {e}"))?);
            }
        }
    }
    Ok(Read {
        invoices: unique(invoices),
        journal: by_account(entries),
        journal_found: with_journal,
        source: format!("topic {topic}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_14_a_period_is_the_local_month_it_starts_in() {
        let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
        // Berlin's March starts 2026-02-28T23:00Z; Kiribati's (UTC+14) at
        // 10:00Z the day before; Baker Island's (UTC−12) at 12:00Z.
        assert_eq!(period_label(at("2026-02-28T23:00:00Z")), "2026-03");
        assert_eq!(period_label(at("2026-02-28T10:00:00Z")), "2026-03");
        assert_eq!(period_label(at("2026-03-01T12:00:00Z")), "2026-03");
        assert_eq!(period_label(at("2026-03-01T00:00:00Z")), "2026-03");
        assert_eq!(period_label(at("2026-03-15T00:00:00Z")), "2026-03");
    }
}
