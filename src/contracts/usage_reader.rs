//! The hot path: Avro bodies of `UsageRecorded` decoded straight into the
//! engine type, about a million a second per core.
//!
//! apache-avro's `from_avro_datum` resolves the schema and builds a
//! `types::Value` tree on every call. Instead, `UsageReader::compile` walks
//! the parsed schemas once — the reader schema from `schemas/` and the
//! writer schema the bytes were written with (the same one unless a
//! registry says otherwise) — and produces a flat program: one op per
//! writer field, in writer order, that either reads the field into its slot
//! of `UsageRecorded` or skips it by type. Field names, order and types all
//! come from the schemas; the only thing written here is which engine field
//! each schema field fills.

use std::collections::BTreeMap;

use apache_avro::Schema;

use super::avro_binary::{Cursor, Skip};
use super::decimal::{decimal_field, timestamp_field};
use super::errors::{ContractError, DecodeError};
use crate::engine::events::UsageRecorded;

/// The fields of `UsageRecorded` a schema field can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    EventId,
    AccountId,
    Subject,
    Metric,
    Quantity,
    Environment,
    OccurredAt,
    Attributes,
}

/// String slots, indexing `Slots::strs`.
const STR_SLOTS: [Slot; 6] = [
    Slot::EventId,
    Slot::AccountId,
    Slot::Subject,
    Slot::Metric,
    Slot::Quantity,
    Slot::Environment,
];

impl Slot {
    fn for_field(name: &str) -> Option<Slot> {
        Some(match name {
            "event_id" => Slot::EventId,
            "account_id" => Slot::AccountId,
            "subject" => Slot::Subject,
            "metric" => Slot::Metric,
            "quantity" => Slot::Quantity,
            "environment" => Slot::Environment,
            "occurred_at" => Slot::OccurredAt,
            "attributes" => Slot::Attributes,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Slot::EventId => "event_id",
            Slot::AccountId => "account_id",
            Slot::Subject => "subject",
            Slot::Metric => "metric",
            Slot::Quantity => "quantity",
            Slot::Environment => "environment",
            Slot::OccurredAt => "occurred_at",
            Slot::Attributes => "attributes",
        }
    }

    fn str_index(self) -> Option<usize> {
        STR_SLOTS.iter().position(|s| *s == self)
    }
}

/// How a field's value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Str(usize),
    /// A long timestamp; multiply by `scale` to get micros.
    Time {
        scale: i64,
    },
    StrMap,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Read {
        slot: Slot,
        read: Read,
        /// `Some((branches, value_branch))` when the writer made the field a union with null.
        union: Option<(usize, usize)>,
    },
    Skip(Skip),
}

/// What the reader schema gives a field the writer did not write.
#[derive(Debug, Clone, Default, PartialEq)]
struct Defaults {
    strs: [Option<String>; 6],
    occurred_at: Option<i64>,
    attributes: Option<BTreeMap<String, String>>,
}

/// A compiled `UsageRecorded` reader for one writer schema.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReader {
    ops: Vec<Op>,
    defaults: Defaults,
}

/// What was read, borrowed from the input until the record is complete.
#[derive(Default)]
struct Slots<'a> {
    strs: [Option<&'a str>; 6],
    occurred_at: Option<i64>,
    attributes: Option<BTreeMap<String, String>>,
}

fn fields_of<'s>(
    schema: &'s Schema,
    what: &str,
) -> Result<&'s [apache_avro::schema::RecordField], ContractError> {
    match schema {
        Schema::Record(r) => Ok(&r.fields),
        _ => Err(incompatible(format!("the {what} schema is not a record"))),
    }
}

fn incompatible(reason: String) -> ContractError {
    ContractError::Incompatible {
        name: "billstream.v1.UsageRecorded".into(),
        reason,
    }
}

/// How a slot's value must be encoded, given the field's (non-union) schema.
fn read_for(slot: Slot, schema: &Schema) -> Option<Read> {
    match (slot, schema) {
        (Slot::OccurredAt, Schema::TimestampMicros | Schema::Long) => Some(Read::Time { scale: 1 }),
        (Slot::OccurredAt, Schema::TimestampMillis) => Some(Read::Time { scale: 1000 }),
        (Slot::Attributes, Schema::Map(m)) if *m.types == Schema::String => Some(Read::StrMap),
        (s, Schema::String) => s.str_index().map(Read::Str),
        _ => None,
    }
}

/// The read of a slot and, for a `[null, T]` union, its shape.
fn read_with_union(slot: Slot, schema: &Schema) -> Option<(Read, Option<(usize, usize)>)> {
    if let Schema::Union(u) = schema {
        let v = u.variants();
        let nulls = v.iter().filter(|s| **s == Schema::Null).count();
        if v.len() != 2 || nulls != 1 {
            return None;
        }
        let value_branch = v.iter().position(|s| *s != Schema::Null)?;
        return read_for(slot, &v[value_branch]).map(|r| (r, Some((2, value_branch))));
    }
    read_for(slot, schema).map(|r| (r, None))
}

impl UsageReader {
    /// Compile the reader for bytes written with `writer`, read as `reader`
    /// (the `UsageRecorded.avsc` of this build).
    pub fn compile(reader: &Schema, writer: &Schema) -> Result<UsageReader, ContractError> {
        let reader_fields = fields_of(reader, "reader")?;
        let writer_fields = fields_of(writer, "writer")?;
        // Every reader field must be a slot of the engine type, of the right type.
        let mut reader_slots = Vec::with_capacity(reader_fields.len());
        for f in reader_fields {
            let slot = Slot::for_field(&f.name).ok_or_else(|| {
                incompatible(format!(
                    "field {} has no place in the engine's UsageRecorded",
                    f.name
                ))
            })?;
            read_with_union(slot, &f.schema).ok_or_else(|| {
                incompatible(format!(
                    "field {} has an unexpected type in the reader schema",
                    f.name
                ))
            })?;
            reader_slots.push((slot, f));
        }
        for slot in STR_SLOTS
            .iter()
            .chain(&[Slot::OccurredAt, Slot::Attributes])
        {
            if !reader_slots.iter().any(|(s, _)| s == slot) {
                return Err(incompatible(format!(
                    "the reader schema lacks {}",
                    slot.name()
                )));
            }
        }
        let mut ops = Vec::with_capacity(writer_fields.len());
        let mut written = Vec::new();
        for f in writer_fields {
            let slot = reader_slots
                .iter()
                .find(|(_, r)| r.name == f.name)
                .map(|(s, _)| *s);
            match slot {
                Some(slot) => {
                    let (read, union) = read_with_union(slot, &f.schema).ok_or_else(|| {
                        incompatible(format!(
                            "writer field {} cannot be read as {}",
                            f.name,
                            slot.name()
                        ))
                    })?;
                    ops.push(Op::Read { slot, read, union });
                    written.push(slot);
                }
                None => ops.push(Op::Skip(Skip::compile(&f.schema).map_err(incompatible)?)),
            }
        }
        let mut defaults = Defaults::default();
        for (slot, f) in &reader_slots {
            if written.contains(slot) {
                continue;
            }
            let missing = || {
                incompatible(format!(
                    "the writer schema lacks {} and the reader schema gives no default",
                    f.name
                ))
            };
            let default = f.default.as_ref().ok_or_else(missing)?;
            match (slot.str_index(), slot) {
                (Some(i), _) => {
                    defaults.strs[i] = Some(default.as_str().ok_or_else(missing)?.to_string())
                }
                (None, Slot::OccurredAt) => {
                    defaults.occurred_at = Some(default.as_i64().ok_or_else(missing)?)
                }
                (None, _) => {
                    let obj = default.as_object().ok_or_else(missing)?;
                    let map = obj
                        .iter()
                        .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect::<Option<BTreeMap<_, _>>>()
                        .ok_or_else(missing)?;
                    defaults.attributes = Some(map);
                }
            }
        }
        Ok(UsageReader { ops, defaults })
    }

    /// Decode one Avro body (without framing). Never panics.
    pub fn read(&self, body: &[u8]) -> Result<UsageRecorded, DecodeError> {
        let s = self.read_slots(body)?;
        self.build(s)
    }

    /// Decode one Avro body into `out`, reusing its string buffers: the
    /// hot path decodes record after record without allocating. On error
    /// `out` holds unspecified (but valid) values.
    pub fn read_into(&self, body: &[u8], out: &mut UsageRecorded) -> Result<(), DecodeError> {
        let s = self.read_slots(body)?;
        let str_at = |i: usize| -> Result<&str, DecodeError> {
            match (
                s.strs.get(i).copied().flatten(),
                self.defaults.strs.get(i).and_then(Option::as_ref),
            ) {
                (Some(v), _) => Ok(v),
                (None, Some(d)) => Ok(d.as_str()),
                (None, None) => Err(DecodeError::field(STR_SLOTS[i].name(), "must not be null")),
            }
        };
        for (i, field) in [
            (0, &mut out.event_id),
            (1, &mut out.account_id),
            (2, &mut out.subject),
            (3, &mut out.metric),
            (5, &mut out.environment),
        ] {
            let v = str_at(i)?;
            field.clear();
            field.push_str(v);
        }
        out.quantity = decimal_field("quantity", str_at(4)?)?;
        out.occurred_at = match s.occurred_at.or(self.defaults.occurred_at) {
            Some(t) => timestamp_field("occurred_at", t)?,
            None => return Err(DecodeError::field("occurred_at", "must not be null")),
        };
        match s.attributes.or_else(|| self.defaults.attributes.clone()) {
            Some(map) => out.attributes = map,
            None => out.attributes.clear(),
        }
        Ok(())
    }

    fn read_slots<'b>(&self, body: &'b [u8]) -> Result<Slots<'b>, DecodeError> {
        let mut c = Cursor::new(body);
        let mut s = Slots::default();
        for op in &self.ops {
            match op {
                Op::Skip(skip) => skip.run(&mut c)?,
                Op::Read { slot, read, union } => {
                    if let Some((branches, value_branch)) = union {
                        if c.branch(*branches)? != *value_branch {
                            continue; // null: the default applies
                        }
                    }
                    match read {
                        Read::Str(i) => {
                            if let Some(x) = s.strs.get_mut(*i) {
                                *x = Some(c.str()?);
                            }
                        }
                        Read::Time { scale } => {
                            let v = c.long()?;
                            let micros = v.checked_mul(*scale).ok_or_else(|| {
                                DecodeError::field(
                                    slot.name(),
                                    format!("timestamp {v} is out of range"),
                                )
                            })?;
                            s.occurred_at = Some(micros);
                        }
                        Read::StrMap => s.attributes = Some(read_str_map(&mut c)?),
                    }
                }
            }
        }
        c.finish()?;
        Ok(s)
    }

    fn build(&self, s: Slots<'_>) -> Result<UsageRecorded, DecodeError> {
        let str_at = |i: usize| -> Result<String, DecodeError> {
            match (
                s.strs.get(i).copied().flatten(),
                self.defaults.strs.get(i).and_then(Option::as_ref),
            ) {
                (Some(v), _) => Ok(v.to_string()),
                (None, Some(d)) => Ok(d.clone()),
                (None, None) => Err(DecodeError::field(STR_SLOTS[i].name(), "must not be null")),
            }
        };
        let quantity_text = match (s.strs[4], &self.defaults.strs[4]) {
            (Some(q), _) => q,
            (None, Some(d)) => d.as_str(),
            (None, None) => return Err(DecodeError::field("quantity", "must not be null")),
        };
        let quantity = decimal_field("quantity", quantity_text)?;
        let occurred_at = match s.occurred_at.or(self.defaults.occurred_at) {
            Some(t) => timestamp_field("occurred_at", t)?,
            None => return Err(DecodeError::field("occurred_at", "must not be null")),
        };
        Ok(UsageRecorded {
            event_id: str_at(0)?,
            account_id: str_at(1)?,
            subject: str_at(2)?,
            metric: str_at(3)?,
            quantity,
            occurred_at,
            environment: str_at(5)?,
            attributes: s
                .attributes
                .or_else(|| self.defaults.attributes.clone())
                .unwrap_or_default(),
        })
    }
}

fn read_str_map(c: &mut Cursor<'_>) -> Result<BTreeMap<String, String>, DecodeError> {
    let mut map = BTreeMap::new();
    loop {
        let n = c.block_count(2)?;
        if n == 0 {
            return Ok(map);
        }
        for _ in 0..n {
            let k = c.str()?;
            let v = c.str()?;
            map.insert(k.to_string(), v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::catalog::Catalog;
    use apache_avro::types::Value;
    use proptest::prelude::*;

    fn usage_schema() -> Schema {
        Catalog::shared()
            .unwrap()
            .by_record("UsageRecorded")
            .unwrap()
            .schema
            .clone()
    }

    fn record(attrs: &[(&str, &str)], quantity: &str, at: i64) -> Value {
        Value::Record(vec![
            ("event_id".into(), Value::String("e-1".into())),
            ("account_id".into(), Value::String("acct-1".into())),
            ("subject".into(), Value::String("app-7".into())),
            ("metric".into(), Value::String("container.hours".into())),
            ("quantity".into(), Value::String(quantity.into())),
            ("occurred_at".into(), Value::TimestampMicros(at)),
            ("environment".into(), Value::String("prod".into())),
            (
                "attributes".into(),
                Value::Map(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                        .collect(),
                ),
            ),
        ])
    }

    #[test]
    fn fast_reader_equals_apache_avro_decode() {
        let schema = usage_schema();
        let reader = UsageReader::compile(&schema, &schema).unwrap();
        for (attrs, q, at) in [
            (vec![], "1", 0),
            (
                vec![("region", "eu-west"), ("tier", "gold")],
                "0.000001",
                1_767_225_600_000_000,
            ),
            (vec![("ü", "✓")], "-12.50", -1),
        ] {
            let bytes = apache_avro::to_avro_datum(&schema, record(&attrs, q, at)).unwrap();
            let fast = reader.read(&bytes).unwrap();
            // The same bytes through apache-avro, converted field by field.
            let Value::Record(fields) =
                apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap()
            else {
                panic!("not a record")
            };
            let get = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            assert_eq!(get("event_id"), Value::String(fast.event_id.clone()));
            assert_eq!(get("quantity"), Value::String(fast.quantity.to_string()));
            assert_eq!(
                get("occurred_at"),
                Value::TimestampMicros(fast.occurred_at.0)
            );
            let Value::Map(m) = get("attributes") else {
                panic!("not a map")
            };
            assert_eq!(m.len(), fast.attributes.len());
            for (k, v) in &fast.attributes {
                assert_eq!(m.get(k), Some(&Value::String(v.clone())));
            }
            assert_eq!(fast.metric, "container.hours");
            assert_eq!(fast.environment, "prod");
        }
    }

    #[test]
    fn writer_with_extra_and_reordered_fields_is_resolved() {
        let reader_schema = usage_schema();
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"UsageRecorded","namespace":"billstream.v1","fields":[
              {"name":"metric","type":"string"},
              {"name":"trace","type":{"type":"array","items":{"type":"map","values":"long"}}},
              {"name":"account_id","type":"string"},
              {"name":"event_id","type":"string"},
              {"name":"subject","type":"string"},
              {"name":"quantity","type":"string"},
              {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"environment","type":["null","string"]},
              {"name":"score","type":"double"}]}"#,
        )
        .unwrap();
        let reader = UsageReader::compile(&reader_schema, &writer).unwrap();
        let value = Value::Record(vec![
            ("metric".into(), Value::String("api.calls".into())),
            (
                "trace".into(),
                Value::Array(vec![Value::Map([("a".to_string(), Value::Long(5))].into())]),
            ),
            ("account_id".into(), Value::String("a".into())),
            ("event_id".into(), Value::String("e".into())),
            ("subject".into(), Value::String("s".into())),
            ("quantity".into(), Value::String("3".into())),
            ("occurred_at".into(), Value::TimestampMillis(1_000)),
            (
                "environment".into(),
                Value::Union(1, Box::new(Value::String("prod".into()))),
            ),
            ("score".into(), Value::Double(0.5)),
        ]);
        let bytes = apache_avro::to_avro_datum(&writer, value).unwrap();
        let u = reader.read(&bytes).unwrap();
        assert_eq!(
            (u.metric.as_str(), u.environment.as_str(), u.occurred_at.0),
            ("api.calls", "prod", 1_000_000)
        );
        assert!(
            u.attributes.is_empty(),
            "attributes take the reader default"
        );
        // A null environment has no default: the record is refused, not guessed.
        let null_env = Value::Record(vec![
            ("metric".into(), Value::String("api.calls".into())),
            ("trace".into(), Value::Array(vec![])),
            ("account_id".into(), Value::String("a".into())),
            ("event_id".into(), Value::String("e".into())),
            ("subject".into(), Value::String("s".into())),
            ("quantity".into(), Value::String("3".into())),
            ("occurred_at".into(), Value::TimestampMillis(1_000)),
            ("environment".into(), Value::Union(0, Box::new(Value::Null))),
            ("score".into(), Value::Double(0.5)),
        ]);
        let bytes = apache_avro::to_avro_datum(&writer, null_env).unwrap();
        assert!(
            matches!(reader.read(&bytes), Err(DecodeError::InvalidField { field, .. }) if field == "environment")
        );
    }

    #[test]
    fn writer_missing_a_required_field_does_not_compile() {
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"UsageRecorded","fields":[{"name":"event_id","type":"string"}]}"#,
        )
        .unwrap();
        assert!(UsageReader::compile(&usage_schema(), &writer).is_err());
    }

    #[test]
    fn bad_values_name_their_field() {
        let schema = usage_schema();
        let reader = UsageReader::compile(&schema, &schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema, record(&[], "1e3", 0)).unwrap();
        assert!(
            matches!(reader.read(&bytes), Err(DecodeError::InvalidField { field, .. }) if field == "quantity")
        );
        let bytes = apache_avro::to_avro_datum(&schema, record(&[], "1", i64::MAX)).unwrap();
        assert!(
            matches!(reader.read(&bytes), Err(DecodeError::InvalidField { field, .. }) if field == "occurred_at")
        );
        let mut bytes = apache_avro::to_avro_datum(&schema, record(&[], "1", 0)).unwrap();
        bytes.push(0);
        assert!(matches!(
            reader.read(&bytes),
            Err(DecodeError::BodyMismatch(_))
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_body_is_an_error() {
        let schema = usage_schema();
        let reader = UsageReader::compile(&schema, &schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema, record(&[("k", "v")], "2.5", 42)).unwrap();
        for n in 0..bytes.len() {
            assert!(reader.read(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        assert!(reader.read(&bytes).is_ok());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let schema = usage_schema();
            let reader = UsageReader::compile(&schema, &schema).unwrap();
            let _ = reader.read(&bytes);
        }

        #[test]
        fn mutated_valid_bodies_never_panic(i in 0usize..64, b in any::<u8>(), cut in 0usize..80) {
            let schema = usage_schema();
            let reader = UsageReader::compile(&schema, &schema).unwrap();
            let mut bytes = apache_avro::to_avro_datum(&schema, record(&[("k", "v")], "2.5", 42)).unwrap();
            let n = bytes.len();
            bytes[i % n] = b;
            bytes.truncate(cut.max(1));
            let _ = reader.read(&bytes);
        }
    }
}
