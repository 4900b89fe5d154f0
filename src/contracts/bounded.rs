//! Outputs within the broker's record limit (`kafka.max_record_bytes`).
//!
//! An output that encodes larger than the limit would be refused by the
//! producer or the broker; the publish would fail, the loop stop, and a
//! restart republish the same record and stop again. Instead the sink
//! sends a bounded form of it: the same record type, `event_id` and key,
//! every money field unchanged, with the bulky parts cut and a note saying
//! so and where the full record is. The cut is deterministic, so a record
//! republished after a crash is cut the same way.
//!
//! In order, until the encoding fits: the kind's own cut (an invoice drops
//! its lines' subject breakdowns, then lines from the end; a dead letter
//! keeps the first KiB of its payload; a journal entry's payload becomes a
//! pointer to the journal in the state store); then every long string cut
//! short; then every array emptied, which fits the smallest limit allowed
//! (64 KiB) with room to spare.

use serde_json::{json, Value};

use super::catalog::{Catalog, SchemaIds};
use super::errors::EncodeError;
use super::outputs::OutputRecord;

/// What a cut string ends with.
pub const TRUNCATED: &str = "…[truncated]";

/// Payload bytes a bounded dead letter keeps.
const DEAD_LETTER_KEEP: usize = 1024;

impl Catalog {
    /// `record` as Confluent-framed Avro of at most `max_bytes`, and the
    /// bounded record when it had to be cut (`None`: sent as it is).
    pub fn encode_output_bounded(
        &self,
        record: &OutputRecord,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, Option<OutputRecord>), EncodeError> {
        bounded(record, max_bytes, |r| self.encode_output(r))
    }

    /// `encode_output_bounded` under the schema ids of `ids` (a Schema
    /// Registry's).
    pub fn encode_output_bounded_with(
        &self,
        record: &OutputRecord,
        ids: &SchemaIds,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, Option<OutputRecord>), EncodeError> {
        bounded(record, max_bytes, |r| self.encode_output_with(r, ids))
    }
}

fn bounded(
    record: &OutputRecord,
    max_bytes: usize,
    encode: impl Fn(&OutputRecord) -> Result<Vec<u8>, EncodeError>,
) -> Result<(Vec<u8>, Option<OutputRecord>), EncodeError> {
    let bytes = encode(record)?;
    if bytes.len() <= max_bytes {
        return Ok((bytes, None));
    }
    let size = bytes.len();
    let mut small = record.clone();
    let steps: [&dyn Fn(&mut Value); 6] = [
        &|j| cut_kind(record.kind, &record.key, j, size, max_bytes, false),
        &|j| cut_kind(record.kind, &record.key, j, size, max_bytes, true),
        &|j| cut_strings(j, 16 * 1024),
        &|j| cut_strings(j, 1024),
        &|j| cut_strings(j, 128),
        &empty_collections,
    ];
    for step in steps {
        step(&mut small.json);
        let bytes = encode(&small)?;
        if bytes.len() <= max_bytes {
            return Ok((bytes, Some(small)));
        }
    }
    // Only a limit below what any record needs gets here (the
    // configuration refuses one under 64 KiB).
    let bytes = encode(&small)?;
    Ok((bytes, Some(small)))
}

/// The note a cut record carries.
fn note(what: &str, size: usize, max: usize, full: &str) -> String {
    format!("{what} truncated: the record was {size} bytes, over the {max}-byte limit (kafka.max_record_bytes); the full record: {full}")
}

/// The cut of one record kind; `deep`: the second, harder one.
fn cut_kind(kind: &str, key: &str, json: &mut Value, size: usize, max: usize, deep: bool) {
    let Value::Object(m) = json else { return };
    match kind {
        "InvoiceIssued" => {
            let invoice_id = m
                .get("invoice_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let full = format!(
                "GET /v1/accounts/{key}/invoices/{invoice_id} on the read API, or the account's journal"
            );
            let Some(Value::Array(lines)) = m.get_mut("lines") else {
                return;
            };
            if !deep {
                for line in lines.iter_mut() {
                    let Value::Object(l) = line else { continue };
                    let had = l
                        .get("subjects")
                        .and_then(Value::as_object)
                        .is_some_and(|s| !s.is_empty());
                    if had {
                        l.insert("subjects".into(), json!({}));
                        append(l, "description", &note("subjects", size, max, &full));
                    }
                }
            } else {
                // Keep the first lines only; the totals stay as issued.
                let total = lines.len();
                let keep = total.min(16);
                lines.truncate(keep);
                if let Some(Value::Object(first)) = lines.first_mut() {
                    append(
                        first,
                        "description",
                        &note(
                            &format!("lines {keep} to {total} of {total}"),
                            size,
                            max,
                            &full,
                        ),
                    );
                }
            }
        }
        "DeadLetter" if !deep => {
            let at = format!(
                "{}/{}/{}",
                m.get("source_topic").and_then(Value::as_str).unwrap_or(""),
                m.get("partition").map(Value::to_string).unwrap_or_default(),
                m.get("offset").map(Value::to_string).unwrap_or_default(),
            );
            let base64 = m.get("payload_encoding").and_then(Value::as_str) == Some("base64");
            if let Some(Value::String(p)) = m.get_mut("payload") {
                let keep = if base64 {
                    // Whole groups of four: still valid base64.
                    (DEAD_LETTER_KEEP / 3 * 4).min(p.len())
                } else {
                    floor_char_boundary(p, DEAD_LETTER_KEEP)
                };
                p.truncate(keep);
            }
            if let Some(Value::String(r)) = m.get_mut("reason") {
                let keep = floor_char_boundary(r, 4096);
                r.truncate(keep);
            }
            let text = note(
                &format!("payload (first {DEAD_LETTER_KEEP} bytes kept) and reason"),
                size,
                max,
                &format!("the input record at {at} (topic/partition/offset)"),
            );
            append(m, "reason", &text);
        }
        "JournalEntry" if !deep => {
            let seq = m.get("seq").map(Value::to_string).unwrap_or_default();
            let kind = m
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let pointer = json!({
                "type": kind,
                "truncated": note(
                    "payload",
                    size,
                    max,
                    &format!("entry {seq} of account {key}'s journal in the state store: GET /v1/accounts/{key}/journal on the read API"),
                ),
            });
            m.insert("payload".into(), Value::String(pointer.to_string()));
        }
        _ => {}
    }
}

/// Add `text` to the string field `field` (null or absent: set it).
fn append(m: &mut serde_json::Map<String, Value>, field: &str, text: &str) {
    let value = match m.get(field).and_then(Value::as_str) {
        Some(old) if !old.is_empty() => format!("{old}; {text}"),
        _ => text.to_string(),
    };
    m.insert(field.into(), Value::String(value));
}

/// Every string value longer than `max` bytes cut to about `max` bytes,
/// ending in `TRUNCATED`. Short strings (times, amounts, enum symbols,
/// ids) are left as they are, so the record still fits its schema.
fn cut_strings(json: &mut Value, max: usize) {
    match json {
        Value::String(s) if s.len() > max => {
            let keep = floor_char_boundary(s, max.saturating_sub(TRUNCATED.len()));
            s.truncate(keep);
            s.push_str(TRUNCATED);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| cut_strings(v, max)),
        Value::Object(m) => m.values_mut().for_each(|v| cut_strings(v, max)),
        _ => {}
    }
}

/// The last resort: every array inside the record emptied (an array may
/// always be empty; the invoice's subject maps go with its lines).
fn empty_collections(json: &mut Value) {
    match json {
        Value::Array(items) => items.clear(),
        Value::Object(m) => m.values_mut().for_each(empty_collections),
        _ => {}
    }
}

/// The largest index `<= at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_cut_on_char_boundaries_and_say_so() {
        let mut v = json!({"a": "é".repeat(100), "b": "short", "c": ["x".repeat(50)]});
        cut_strings(&mut v, 40);
        let a = v["a"].as_str().unwrap();
        assert!(a.ends_with(TRUNCATED) && a.len() <= 40, "{a}");
        assert_eq!(v["b"], "short");
        assert!(v["c"][0].as_str().unwrap().ends_with(TRUNCATED));
    }
}
