//! JSON records to Confluent-framed Avro, guided by the schema: the output
//! records (built as pinned JSON in `outputs.rs`) and inputs (for tests,
//! benchmarks and the demo's producer). One schema-driven conversion means
//! the JSON and Avro forms of a record cannot drift apart: a JSON record
//! that does not fit its schema is an `EncodeError`, which the tests use
//! to prove every output validates. Correctness over speed: values go
//! through apache-avro, which checks them against the schema again.

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

use super::catalog::{Catalog, SchemaIds};
use super::dead_letter::base64_decode;
use super::errors::EncodeError;
use super::framing;
use super::json::{input_record, input_to_json, plan_to_json};
use super::outputs::OutputRecord;
use crate::engine::events::{AccountCommand, AccountKind, Input};
use crate::engine::plan::Plan;
use crate::engine::time::Timestamp;

/// Suffix of the JSON-only companion of a `bytes` field that says how the
/// bytes are written in JSON: `"utf8"` (the default) or `"base64"`.
pub const ENCODING_SUFFIX: &str = "_encoding";

impl Catalog {
    /// An output record as Confluent-framed Avro, with the manifest's id.
    pub fn encode_output(&self, record: &OutputRecord) -> Result<Vec<u8>, EncodeError> {
        self.encode_json(record.kind, &record.json, &[])
    }

    /// An output record as Confluent-framed Avro, with its id from `ids`
    /// (a Schema Registry's): the same bytes as `encode_output` but for
    /// the four of the frame.
    pub fn encode_output_with(
        &self,
        record: &OutputRecord,
        ids: &SchemaIds,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(record.kind, &record.json, &[], |i| ids.get(i))
    }

    /// An input as Confluent-framed Avro (tests, benchmarks, demo producer).
    pub fn encode_input(&self, input: &Input) -> Result<Vec<u8>, EncodeError> {
        let record = input_record(input);
        let json = input_to_json(input);
        // The JSON `kind` is the record's name in Avro, not a field.
        let ignore = &["kind"];
        if keeps_invoice_at(input) {
            // Only version 1 of `ThresholdsSet` (no `invoice_at` field) says
            // "leave the account's invoice_at as it is": write with it.
            if let Some(v1) = self
                .history()
                .iter()
                .find(|h| h.record == record && h.version == 1)
            {
                let body = avro_body(&v1.schema, record, &json, ignore)?;
                return Ok(framing::encode(v1.id, &body));
            }
        }
        self.encode_json(record, &json, ignore)
    }

    /// A plan as Confluent-framed Avro.
    pub fn encode_plan(&self, plan: &Plan) -> Result<Vec<u8>, EncodeError> {
        self.encode_json("Plan", &plan_to_json(plan), &[])
    }

    /// A pinned-JSON record of `record` (short name) as Confluent-framed
    /// Avro; JSON fields named in `ignore` are not part of the schema.
    pub fn encode_json(
        &self,
        record: &str,
        json: &Json,
        ignore: &[&str],
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(record, json, ignore, |i| self.entries()[i].id)
    }

    fn encode_framed(
        &self,
        record: &str,
        json: &Json,
        ignore: &[&str],
        id_of: impl Fn(usize) -> u32,
    ) -> Result<Vec<u8>, EncodeError> {
        let index = self
            .index_of(record)
            .ok_or_else(|| EncodeError::UnknownRecord(record.to_string()))?;
        let body = avro_body(&self.entries()[index].schema, record, json, ignore)?;
        Ok(framing::encode(id_of(index), &body))
    }

    /// The Avro `Value` of a pinned-JSON record (for a registry-framed sink
    /// or for inspection).
    pub fn avro_value(
        &self,
        record: &str,
        json: &Json,
        ignore: &[&str],
    ) -> Result<Value, EncodeError> {
        let entry = self
            .by_record(record)
            .ok_or_else(|| EncodeError::UnknownRecord(record.to_string()))?;
        to_value(&entry.schema, json, ignore, "").map_err(|(path, reason)| EncodeError::Mismatch {
            record: record.to_string(),
            path,
            reason,
        })
    }
}

/// A `ThresholdsSet` that leaves the account's `invoice_at` as it is.
fn keeps_invoice_at(input: &Input) -> bool {
    matches!(
        input,
        Input::Account(AccountCommand {
            kind: AccountKind::ThresholdsSet {
                keeps_invoice_at: true,
                ..
            },
            ..
        })
    )
}

/// The unframed Avro body of a pinned-JSON record.
pub fn avro_body(
    schema: &Schema,
    record: &str,
    json: &Json,
    ignore: &[&str],
) -> Result<Vec<u8>, EncodeError> {
    let value =
        to_value(schema, json, ignore, "").map_err(|(path, reason)| EncodeError::Mismatch {
            record: record.to_string(),
            path,
            reason,
        })?;
    apache_avro::to_avro_datum(schema, value).map_err(|e| EncodeError::Avro {
        record: record.to_string(),
        reason: e.to_string(),
    })
}

type Mismatch = (String, String);

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Convert pinned JSON to an Avro value of `schema`: times are RFC 3339
/// strings, decimals strings, enums their symbols, `[null, T]` unions
/// plain values or null.
fn to_value(schema: &Schema, json: &Json, ignore: &[&str], path: &str) -> Result<Value, Mismatch> {
    let wrong = |expected: &str| {
        Err((
            path.to_string(),
            format!("expected {expected}, got {}", kind_of(json)),
        ))
    };
    match (schema, json) {
        (Schema::Null, Json::Null) => Ok(Value::Null),
        (Schema::Boolean, Json::Bool(b)) => Ok(Value::Boolean(*b)),
        (Schema::Int, Json::Number(n)) => match n.as_i64().and_then(|v| i32::try_from(v).ok()) {
            Some(v) => Ok(Value::Int(v)),
            None => wrong("a 32-bit integer"),
        },
        (Schema::Long, Json::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Value::Long(v)),
            None => wrong("a 64-bit integer"),
        },
        (Schema::String, Json::String(s)) => Ok(Value::String(s.clone())),
        (Schema::Bytes, Json::String(s)) => Ok(Value::Bytes(s.as_bytes().to_vec())),
        (Schema::TimestampMicros, Json::String(s)) => match Timestamp::parse_rfc3339(s) {
            Some(t) => Ok(Value::TimestampMicros(t.0)),
            None => wrong("an RFC 3339 time"),
        },
        (Schema::Enum(e), Json::String(s)) => match e.symbols.iter().position(|x| x == s) {
            Some(i) => Ok(Value::Enum(i as u32, s.clone())),
            None => Err((
                path.to_string(),
                format!("{s:?} is not one of {}", e.symbols.join(", ")),
            )),
        },
        (Schema::Array(a), Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| to_value(&a.items, item, &[], &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Schema::Map(m), Json::Object(obj)) => obj
            .iter()
            .map(|(k, v)| Ok((k.clone(), to_value(&m.types, v, &[], &join(path, k))?)))
            .collect::<Result<HashMap<_, _>, _>>()
            .map(Value::Map),
        (Schema::Union(u), _) => {
            let branches = u.variants();
            if json.is_null() {
                return match branches.iter().position(|b| *b == Schema::Null) {
                    Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
                    None => wrong("a value (the field is not nullable)"),
                };
            }
            let mut last = None;
            for (i, b) in branches
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != Schema::Null)
            {
                match to_value(b, json, &[], path) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| (path.to_string(), "no branch of the union fits".into())))
        }
        (Schema::Record(r), Json::Object(obj)) => {
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let fpath = join(path, &f.name);
                let value = match (obj.get(&f.name), &f.schema) {
                    (Some(Json::String(s)), Schema::Bytes) => {
                        let encoding = obj
                            .get(&format!("{}{ENCODING_SUFFIX}", f.name))
                            .and_then(Json::as_str);
                        match encoding {
                            None | Some("utf8") => Value::Bytes(s.as_bytes().to_vec()),
                            Some("base64") => match base64_decode(s) {
                                Some(b) => Value::Bytes(b),
                                None => return Err((fpath, "is not valid base64".into())),
                            },
                            Some(other) => {
                                return Err((fpath, format!("unknown encoding {other:?}")))
                            }
                        }
                    }
                    (Some(v), s) => to_value(s, v, &[], &fpath)?,
                    (None, s) => match &f.default {
                        Some(default) => to_value(s, default, &[], &fpath)?,
                        None => match s {
                            Schema::Union(u) if u.variants().first() == Some(&Schema::Null) => {
                                Value::Union(0, Box::new(Value::Null))
                            }
                            _ => return Err((fpath, "is missing".into())),
                        },
                    },
                };
                fields.push((f.name.clone(), value));
            }
            let companion = |k: &str| {
                k.strip_suffix(ENCODING_SUFFIX).is_some_and(|base| {
                    r.fields
                        .iter()
                        .any(|f| f.name == base && f.schema == Schema::Bytes)
                })
            };
            if let Some(extra) = obj.keys().find(|k| {
                !r.lookup.contains_key(k.as_str()) && !ignore.contains(&k.as_str()) && !companion(k)
            }) {
                return Err((join(path, extra), "is not a field of the schema".into()));
            }
            Ok(Value::Record(fields))
        }
        (Schema::Null, _) => wrong("null"),
        (Schema::Boolean, _) => wrong("a boolean"),
        (Schema::Int | Schema::Long, _) => wrong("an integer"),
        (Schema::String | Schema::Bytes, _) => wrong("a string"),
        (Schema::TimestampMicros, _) => wrong("an RFC 3339 time string"),
        (Schema::Enum(_), _) => wrong("an enum symbol string"),
        (Schema::Array(_), _) => wrong("an array"),
        (Schema::Map(_) | Schema::Record(_), _) => wrong("an object"),
        (other, _) => Err((
            path.to_string(),
            format!("schema type {other:?} is not used by billstream's contracts"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_take_their_frame_id_from_the_id_mapping() {
        let catalog = Catalog::shared().unwrap();
        let record = crate::contracts::DeadLetter {
            source_topic: "billing.usage.v1".into(),
            partition: 0,
            offset: 7,
            key: Some("acct-1".into()),
            error_kind: "bad_magic".into(),
            reason: "r".into(),
            payload: b"x".to_vec(),
            received_at: crate::engine::time::Timestamp(0),
        }
        .to_output();
        let manifest = catalog.encode_output(&record).unwrap();
        let n = catalog.entries().len() as u32;
        let ids = SchemaIds::from_ids(catalog, (0..n).map(|i| 500 + i).collect()).unwrap();
        let registry = catalog.encode_output_with(&record, &ids).unwrap();
        let index = catalog.index_of("DeadLetter").unwrap() as u32;
        assert_eq!(framing::split(&registry).unwrap().0, 500 + index);
        assert_eq!(manifest[5..], registry[5..], "same body, other frame id");
        assert_eq!(
            catalog
                .encode_output_with(&record, &SchemaIds::manifest(catalog))
                .unwrap(),
            manifest
        );
    }

    #[test]
    fn json_that_does_not_fit_the_schema_is_refused_with_its_path() {
        let catalog = Catalog::shared().unwrap();
        let base = json!({"event_id":"e","account_id":"a","occurred_at":"2026-01-01T00:00:00Z","amount":"1","currency":"EUR"});
        assert!(catalog.encode_json("CreditToppedUp", &base, &[]).is_ok());
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("amount");
        let err = catalog
            .encode_json("CreditToppedUp", &missing, &[])
            .unwrap_err();
        assert_eq!(err.to_string(), "CreditToppedUp.amount: is missing");
        let mut extra = base.clone();
        extra["colour"] = json!("blue");
        assert!(catalog.encode_json("CreditToppedUp", &extra, &[]).is_err());
        assert!(catalog
            .encode_json("CreditToppedUp", &extra, &["colour"])
            .is_ok());
        let mut bad_time = base.clone();
        bad_time["occurred_at"] = json!(12);
        assert!(catalog
            .encode_json("CreditToppedUp", &bad_time, &[])
            .is_err());
        assert!(matches!(
            catalog.encode_json("Nope", &base, &[]),
            Err(EncodeError::UnknownRecord(_))
        ));
    }
}
