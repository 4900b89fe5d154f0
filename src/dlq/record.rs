//! A dead letter as the operator tools read it back: from the DLQ topic
//! (Confluent-framed Avro `DeadLetter`) or from the JSON-lines file the
//! embedded mode writes (`<out>/billing.dlq.v1.jsonl`: the same record in
//! its pinned JSON, the payload as UTF-8 text or base64), with where it was
//! found, so `billstream dlq` can list, show and replay it.

use apache_avro::types::Value as Avro;
use serde_json::{json, Value};

use crate::contracts::dead_letter::{base64_decode, base64_encode};
use crate::contracts::{framing, Catalog};
use crate::engine::time::Timestamp;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqRecord {
    /// Deterministic id (from the rejected input's position).
    pub event_id: String,
    /// Topic (or input file) of the rejected record.
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub error_kind: String,
    pub reason: String,
    /// The rejected record's bytes, card-like digits masked.
    pub payload: Vec<u8>,
    pub received_at: Timestamp,
    /// Where the dead letter itself is: `<dlq topic>/<partition>/<offset>`
    /// or `<file>:<line>`.
    pub found_at: String,
}

impl DlqRecord {
    /// A record of the DLQ topic.
    pub fn from_avro(
        catalog: &Catalog,
        bytes: &[u8],
        found_at: String,
    ) -> Result<DlqRecord, String> {
        let (id, mut body) = framing::split(bytes).map_err(|e| e.to_string())?;
        let entry = catalog
            .by_id(id)
            .filter(|e| e.record == "DeadLetter")
            .ok_or_else(|| format!("schema id {id} is not a DeadLetter schema"))?;
        let value = apache_avro::from_avro_datum(&entry.schema, &mut body, None)
            .map_err(|e| format!("not a DeadLetter body: {e}"))?;
        let Avro::Record(fields) = value else {
            return Err("not a record".into());
        };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let text = |name: &str| match get(name) {
            Some(Avro::String(s)) => Ok(s.clone()),
            _ => Err(format!("{name}: missing")),
        };
        let key = match get("key") {
            Some(Avro::Union(_, inner)) => match inner.as_ref() {
                Avro::String(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        Ok(DlqRecord {
            event_id: text("event_id")?,
            source_topic: text("source_topic")?,
            partition: match get("partition") {
                Some(Avro::Int(p)) => *p,
                _ => return Err("partition: missing".into()),
            },
            offset: match get("offset") {
                Some(Avro::Long(o)) => *o,
                _ => return Err("offset: missing".into()),
            },
            key,
            error_kind: text("error_kind")?,
            reason: text("reason")?,
            payload: match get("payload") {
                Some(Avro::Bytes(b)) => b.clone(),
                _ => return Err("payload: missing".into()),
            },
            received_at: match get("received_at") {
                Some(Avro::TimestampMicros(t)) => Timestamp(*t),
                _ => return Err("received_at: missing".into()),
            },
            found_at,
        })
    }

    /// A line of the embedded mode's `billing.dlq.v1.jsonl`.
    pub fn from_json_line(line: &str, found_at: String) -> Result<DlqRecord, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let text = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{name}: missing"))
        };
        let payload_text = text("payload")?;
        let payload = match v.get("payload_encoding").and_then(Value::as_str) {
            Some("base64") => base64_decode(&payload_text).ok_or("payload: not base64")?,
            _ => payload_text.into_bytes(),
        };
        let received_at =
            Timestamp::parse_rfc3339(&text("received_at")?).ok_or("received_at: not RFC 3339")?;
        Ok(DlqRecord {
            event_id: text("event_id")?,
            source_topic: text("source_topic")?,
            partition: v
                .get("partition")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or("partition: missing")?,
            offset: v
                .get("offset")
                .and_then(Value::as_i64)
                .ok_or("offset: missing")?,
            key: v.get("key").and_then(Value::as_str).map(str::to_string),
            error_kind: text("error_kind")?,
            reason: text("reason")?,
            payload,
            received_at,
            found_at,
        })
    }

    /// `<source_topic>/<partition>/<offset>` of the rejected record.
    pub fn source(&self) -> String {
        format!("{}/{}/{}", self.source_topic, self.partition, self.offset)
    }

    /// The record as JSON for `show` and `list --json`: the payload as
    /// text when it is UTF-8, base64 otherwise (`payload_encoding`), and,
    /// when it is Confluent Avro of a schema this build knows, decoded
    /// (`payload_decoded`).
    pub fn to_json(&self, catalog: &Catalog) -> Value {
        let (payload, encoding) = match std::str::from_utf8(&self.payload) {
            Ok(text) => (text.to_string(), "utf8"),
            Err(_) => (base64_encode(&self.payload), "base64"),
        };
        json!({
            "event_id": self.event_id,
            "found_at": self.found_at,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "error_kind": self.error_kind,
            "reason": self.reason,
            "received_at": self.received_at.to_rfc3339(),
            "payload": payload,
            "payload_encoding": encoding,
            "payload_decoded": decode_avro(catalog, &self.payload),
        })
    }
}

/// The dead letters of the embedded mode's JSON-lines file, one per id
/// (`billstream dlq --file` and the console read it).
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<DlqRecord>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        let r = DlqRecord::from_json_line(&line, at.clone())
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        if seen.insert(r.event_id.clone()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The payload decoded as Avro of a known schema, as JSON (`null` if it is
/// not one).
fn decode_avro(catalog: &Catalog, bytes: &[u8]) -> Value {
    let Ok((id, mut body)) = framing::split(bytes) else {
        return Value::Null;
    };
    let Some(entry) = catalog.by_id(id) else {
        return Value::Null;
    };
    match apache_avro::from_avro_datum(&entry.schema, &mut body, None) {
        Ok(value) => json!({"record": entry.record, "fields": avro_json(&value)}),
        Err(_) => Value::Null,
    }
}

fn avro_json(v: &Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => json!(b),
        Avro::Int(n) => json!(n),
        Avro::Long(n) => json!(n),
        Avro::Float(x) => json!(x),
        Avro::Double(x) => json!(x),
        Avro::String(s) | Avro::Enum(_, s) => json!(s),
        Avro::TimestampMicros(t) => json!(Timestamp(*t).to_rfc3339()),
        Avro::TimestampMillis(t) => json!(Timestamp(t.saturating_mul(1000)).to_rfc3339()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!(base64_encode(b)),
        },
        Avro::Union(_, inner) => avro_json(inner),
        Avro::Array(items) => Value::Array(items.iter().map(avro_json).collect()),
        Avro::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), avro_json(v))).collect()),
        Avro::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_json(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::DeadLetter;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            source_topic: "billing.usage.v1".into(),
            partition: 2,
            offset: 77,
            key: Some("acct-1".into()),
            error_kind: "unknown_account".into(),
            reason: "account acct-1 is not open".into(),
            payload: payload.to_vec(),
            received_at: Timestamp::parse_rfc3339("2026-03-15T12:00:00Z").unwrap(),
        }
    }

    #[test]
    fn a_dead_letter_reads_back_the_same_from_the_topic_and_from_the_file() {
        let catalog = Catalog::shared().unwrap();
        for payload in [
            &b"{\"event_id\":\"u-1\"}"[..],
            &[0, 0, 0, 0, 1, 0xff, 0x80][..],
        ] {
            let out = letter(payload).to_output();
            let avro = catalog.encode_output(&out).unwrap();
            let from_topic = DlqRecord::from_avro(catalog, &avro, "dlq/0/5".into()).unwrap();
            let line = serde_json::to_string(&out.json).unwrap();
            let from_file = DlqRecord::from_json_line(&line, "f:1".into()).unwrap();
            assert_eq!(from_topic.payload, payload);
            assert_eq!(from_topic.event_id, out.event_id);
            assert_eq!(from_topic.source(), "billing.usage.v1/2/77");
            assert_eq!(from_topic.key.as_deref(), Some("acct-1"));
            assert_eq!(
                DlqRecord {
                    found_at: "f:1".into(),
                    ..from_topic
                },
                from_file
            );
        }
    }

    #[test]
    fn show_decodes_an_avro_payload_of_a_known_schema() {
        let catalog = Catalog::shared().unwrap();
        let bytes = catalog
            .encode_json(
                "CreditToppedUp",
                &json!({"event_id": "t-1", "account_id": "acct-1", "occurred_at": "2026-03-01T00:00:00Z",
                        "environment": "prod", "amount": "5.00", "currency": "EUR"}),
                &[],
            )
            .unwrap();
        let out = letter(&bytes).to_output();
        let r = DlqRecord::from_avro(catalog, &catalog.encode_output(&out).unwrap(), "x".into())
            .unwrap();
        let shown = r.to_json(catalog);
        assert_eq!(shown["payload_encoding"], "base64");
        assert_eq!(shown["payload_decoded"]["record"], "CreditToppedUp");
        assert_eq!(shown["payload_decoded"]["fields"]["amount"], "5.00");
        assert_eq!(shown["payload_decoded"]["fields"]["environment"], "prod");
        assert_eq!(letter(b"{}").to_output().json["payload"], "{}");
    }

    #[test]
    fn records_that_are_not_dead_letters_are_refused() {
        let catalog = Catalog::shared().unwrap();
        assert!(DlqRecord::from_avro(catalog, b"junk", "x".into()).is_err());
        assert!(DlqRecord::from_json_line("{\"event_id\":\"x\"}", "x".into()).is_err());
        assert!(DlqRecord::from_json_line("not json", "x".into()).is_err());
    }
}
