//! Input bytes to engine inputs: the one entry point the Kafka and file
//! sources call. The first byte says the encoding — 0x00 is Confluent Avro,
//! `{` is a CloudEvents JSON usage event — and the schema id says the
//! record. Usage goes through the compiled fast reader; the rarer payment,
//! account and plan records through apache-avro (after a bounds-checking
//! walk, so no hostile length can make it allocate). Nothing here panics,
//! whatever the bytes.

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use rust_decimal::Decimal;

use super::avro_binary::{Cursor, Skip};
use super::catalog::{Catalog, SchemaIds, NAMESPACE};
use super::cloudevents;
use super::decimal::{decimal_field, timestamp_field, truncate};
use super::errors::{ContractError, DecodeError};
use super::framing;
use super::json::parse_anchor;
use super::usage_reader::UsageReader;
use crate::engine::aggregation::{Aggregation, AggregationSpec};
use crate::engine::credit::{GrantKind, GrantTerms};
use crate::engine::discount::CouponTerms;
use crate::engine::events::{
    AccountCommand, AccountKind, AdjustmentKind, Input, PaymentEvent, PaymentKind,
    PlanChangeEffective,
};
use crate::engine::money::Currency;
use crate::engine::plan::{Charge, Model, Plan, Tier};
use crate::engine::time::Timestamp;

/// What one input record decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Input(Input),
    /// A price-book entry from the plans topic.
    Plan(Plan),
}

/// The input records decoded through apache-avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cold {
    CreditToppedUp,
    PaymentSucceeded,
    PaymentFailed,
    PaymentRefunded,
    BankTransferReceived,
    PaymentMethodAttached,
    PaymentMethodDetached,
    AccountOpened,
    PlanChanged,
    AccountClosed,
    AdjustmentIssued,
    CouponApplied,
    ThresholdsSet,
    Plan,
}

impl Cold {
    fn for_record(name: &str) -> Option<Cold> {
        Some(match name {
            "CreditToppedUp" => Cold::CreditToppedUp,
            "PaymentSucceeded" => Cold::PaymentSucceeded,
            "PaymentFailed" => Cold::PaymentFailed,
            "PaymentRefunded" => Cold::PaymentRefunded,
            "BankTransferReceived" => Cold::BankTransferReceived,
            "PaymentMethodAttached" => Cold::PaymentMethodAttached,
            "PaymentMethodDetached" => Cold::PaymentMethodDetached,
            "AccountOpened" => Cold::AccountOpened,
            "PlanChanged" => Cold::PlanChanged,
            "AccountClosed" => Cold::AccountClosed,
            "AdjustmentIssued" => Cold::AdjustmentIssued,
            "CouponApplied" => Cold::CouponApplied,
            "ThresholdsSet" => Cold::ThresholdsSet,
            "Plan" => Cold::Plan,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
enum Reader {
    Usage(UsageReader),
    Cold {
        kind: Cold,
        /// Bounds check of the writer's encoding, run before apache-avro.
        walk: Skip,
        writer: Box<Schema>,
        /// Set when the writer schema differs from this build's: resolve into it.
        reader: Option<Box<Schema>>,
    },
}

/// Decodes input records. Built once per process from the catalog; a
/// registry-backed source adds the writer schemas it meets by id.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Few entries; a linear scan beats hashing, and usage comes first.
    readers: Vec<(u32, Reader)>,
    /// This build's input schemas by short record name, for writer schemas.
    own: HashMap<String, Schema>,
    /// Ids whose writer schema a registry gave but this build cannot read,
    /// with the reason (their records are dead-lettered with it).
    refused: Vec<(u32, String)>,
}

impl Decoder {
    /// Compile a reader for every input schema of the catalog, under the
    /// manifest's ids: the current version's, and the ids of the earlier
    /// versions (`Catalog::history`), whose records are read by schema
    /// resolution into the current one, as a registry's evolved writer
    /// schemas are.
    pub fn new(catalog: &Catalog) -> Result<Decoder, ContractError> {
        Decoder::with_ids(catalog, &SchemaIds::manifest(catalog))
    }

    /// The same under other ids (a Schema Registry's): records framed with
    /// a manifest id are then unknown unless the registry says otherwise.
    /// Earlier versions are read under the writer-only ids `ids` lists.
    pub fn with_ids(catalog: &Catalog, ids: &SchemaIds) -> Result<Decoder, ContractError> {
        let mut decoder = Decoder {
            readers: Vec::new(),
            own: HashMap::new(),
            refused: Vec::new(),
        };
        for (i, e) in catalog.entries().iter().enumerate() {
            if e.record == "UsageRecorded" || Cold::for_record(&e.record).is_some() {
                decoder.own.insert(e.record.clone(), e.schema.clone());
                decoder.add(ids.get(i), &e.record, &e.schema)?;
            }
        }
        if !decoder.own.contains_key("UsageRecorded") {
            return Err(ContractError::Catalog("no UsageRecorded schema".into()));
        }
        for (id, index) in ids.earlier() {
            let e = &catalog.history()[index];
            if decoder.own.contains_key(&e.record) {
                decoder.add(id, &e.record, &e.schema)?;
            }
        }
        Ok(decoder)
    }

    /// Accept records written with `writer_schema` (the text of an Avro
    /// schema, e.g. from a Schema Registry) under `id`. Its full name must
    /// be one of this build's input records; fields are matched by name,
    /// extra writer fields skipped, missing ones taken from defaults.
    pub fn register_writer_schema(
        &mut self,
        id: u32,
        writer_schema: &str,
    ) -> Result<(), ContractError> {
        let writer = Schema::parse_str(writer_schema).map_err(|e| ContractError::Incompatible {
            name: format!("schema id {id}"),
            reason: e.to_string(),
        })?;
        let Schema::Record(r) = &writer else {
            return Err(ContractError::Incompatible {
                name: format!("schema id {id}"),
                reason: "not a record".into(),
            });
        };
        let full = r.name.fullname(None);
        let short = full
            .strip_prefix(NAMESPACE)
            .and_then(|s| s.strip_prefix('.'))
            .filter(|s| self.own.contains_key(*s))
            .ok_or_else(|| ContractError::Incompatible {
                name: full.clone(),
                reason: format!("not an input record of namespace {NAMESPACE}"),
            })?
            .to_string();
        self.readers.retain(|(i, _)| *i != id);
        self.refused.retain(|(i, _)| *i != id);
        self.add(id, &short, &writer)
    }

    /// Whether records framed with `id` have a reader, or were refused.
    pub fn knows(&self, id: u32) -> bool {
        self.readers.iter().any(|(i, _)| *i == id) || self.refused.iter().any(|(i, _)| *i == id)
    }

    /// Remember that the writer schema of `id` cannot be read (`reason`):
    /// its records become `DecodeError::IncompatibleSchema` dead letters
    /// instead of `UnknownSchemaId`.
    pub fn refuse(&mut self, id: u32, reason: String) {
        self.readers.retain(|(i, _)| *i != id);
        self.refused.retain(|(i, _)| *i != id);
        self.refused.push((id, reason));
    }

    fn add(&mut self, id: u32, record: &str, writer: &Schema) -> Result<(), ContractError> {
        let own = self
            .own
            .get(record)
            .ok_or_else(|| ContractError::Catalog(format!("no schema for {record}")))?;
        let reader = if record == "UsageRecorded" {
            Reader::Usage(UsageReader::compile(own, writer)?)
        } else {
            let kind = Cold::for_record(record)
                .ok_or_else(|| ContractError::Catalog(format!("{record} is not an input")))?;
            let walk = Skip::compile(writer).map_err(|reason| ContractError::Incompatible {
                name: record.to_string(),
                reason,
            })?;
            let reader = if writer.canonical_form() == own.canonical_form() {
                None
            } else {
                // Refuse at registration what resolution would refuse per record.
                let compat =
                    apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, own);
                compat.map_err(|e| ContractError::Incompatible {
                    name: record.to_string(),
                    reason: e.to_string(),
                })?;
                Some(Box::new(own.clone()))
            };
            Reader::Cold {
                kind,
                walk,
                writer: Box::new(writer.clone()),
                reader,
            }
        };
        self.readers.push((id, reader));
        Ok(())
    }

    /// Decode one record: Confluent Avro (first byte 0x00) or a CloudEvents
    /// JSON usage event (first non-blank byte `{`).
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        match bytes.first() {
            None => Err(DecodeError::TooShort(0)),
            Some(&framing::MAGIC) => self.decode_avro(bytes),
            Some(&first) => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => {
                    cloudevents::decode_usage(bytes).map(|u| Decoded::Input(Input::Usage(u)))
                }
                Some(&b) => Err(DecodeError::BadMagic(b)),
                None => Err(DecodeError::BadMagic(first)),
            },
        }
    }

    /// Decode into `scratch`, reusing its string buffers when the record
    /// and `scratch` are both usage: the hot path then allocates nothing
    /// per record. Other records decode as `decode` does. On error
    /// `scratch` holds unspecified values and must not be used.
    pub fn decode_into(&self, bytes: &[u8], scratch: &mut Decoded) -> Result<(), DecodeError> {
        if bytes.first() == Some(&framing::MAGIC) {
            let (id, body) = framing::split(bytes)?;
            let reader = self.readers.iter().find(|(i, _)| *i == id).map(|(_, r)| r);
            if let (Some(Reader::Usage(r)), Decoded::Input(Input::Usage(u))) =
                (reader, &mut *scratch)
            {
                return r.read_into(body, u);
            }
        }
        *scratch = self.decode(bytes)?;
        Ok(())
    }

    /// Decode one Confluent-framed Avro record.
    pub fn decode_avro(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let (id, body) = framing::split(bytes)?;
        let Some(reader) = self.readers.iter().find(|(i, _)| *i == id).map(|(_, r)| r) else {
            return Err(match self.refused.iter().find(|(i, _)| *i == id) {
                Some((_, reason)) => DecodeError::IncompatibleSchema {
                    id,
                    reason: reason.clone(),
                },
                None => DecodeError::UnknownSchemaId(id),
            });
        };
        match reader {
            Reader::Usage(r) => r.read(body).map(|u| Decoded::Input(Input::Usage(u))),
            Reader::Cold {
                kind,
                walk,
                writer,
                reader,
            } => {
                let mut c = Cursor::new(body);
                walk.run(&mut c)?;
                c.finish()?;
                let value = apache_avro::from_avro_datum(writer, &mut &body[..], reader.as_deref())
                    .map_err(|e| DecodeError::BodyMismatch(e.to_string()))?;
                let Value::Record(fields) = value else {
                    return Err(DecodeError::BodyMismatch("not a record".into()));
                };
                cold(*kind, &Fields(&fields), writer)
            }
        }
    }
}

/// The fields of a decoded record, read by name.
struct Fields<'a>(&'a [(String, Value)]);

impl Fields<'_> {
    /// The field's value with any union unwrapped; `None` for absent or null.
    fn get(&self, name: &str) -> Option<&Value> {
        let mut v = self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)?;
        while let Value::Union(_, inner) = v {
            v = inner;
        }
        (*v != Value::Null).then_some(v)
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DecodeError::field(name, "must be a string")),
        }
    }

    fn str(&self, name: &str) -> Result<String, DecodeError> {
        self.opt_str(name)?
            .ok_or_else(|| DecodeError::field(name, "is required"))
    }

    fn opt_decimal(&self, name: &str) -> Result<Option<Decimal>, DecodeError> {
        self.opt_str(name)?
            .map(|s| decimal_field(name, &s))
            .transpose()
    }

    fn decimal(&self, name: &str) -> Result<Decimal, DecodeError> {
        self.opt_decimal(name)?
            .ok_or_else(|| DecodeError::field(name, "is required"))
    }

    fn decimal_or_zero(&self, name: &str) -> Result<Decimal, DecodeError> {
        Ok(self.opt_decimal(name)?.unwrap_or(Decimal::ZERO))
    }

    fn time(&self, name: &str) -> Result<Timestamp, DecodeError> {
        let micros = match self.get(name) {
            Some(Value::TimestampMicros(v) | Value::Long(v) | Value::LocalTimestampMicros(v)) => *v,
            Some(Value::TimestampMillis(v)) => v.checked_mul(1000).ok_or_else(|| {
                DecodeError::field(name, format!("timestamp {v} ms is out of range"))
            })?,
            Some(_) => return Err(DecodeError::field(name, "must be a timestamp")),
            None => return Err(DecodeError::field(name, "is required")),
        };
        timestamp_field(name, micros)
    }

    /// A non-negative int, `None` when absent or null.
    fn opt_u32(&self, name: &str) -> Result<Option<u32>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(n)) => u32::try_from(*n)
                .map(Some)
                .map_err(|_| DecodeError::field(name, "must not be negative")),
            Some(_) => Err(DecodeError::field(name, "must be an int")),
        }
    }

    /// An array of exact decimal strings (absent = empty).
    fn decimals(&self, name: &str) -> Result<Vec<Decimal>, DecodeError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => decimal_field(&format!("{name}[{i}]"), s),
                    _ => Err(DecodeError::field(name, "must be an array of strings")),
                })
                .collect(),
            Some(_) => Err(DecodeError::field(name, "must be an array")),
        }
    }

    /// An array of strings (absent = empty).
    fn strings(&self, name: &str) -> Result<Vec<String>, DecodeError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(DecodeError::field(name, "must be an array of strings")),
                })
                .collect(),
            Some(_) => Err(DecodeError::field(name, "must be an array")),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, DecodeError> {
        match self.get(name) {
            Some(Value::Boolean(b)) => Ok(*b),
            _ => Err(DecodeError::field(name, "must be a boolean")),
        }
    }

    fn symbol(&self, name: &str) -> Result<&str, DecodeError> {
        match self.get(name) {
            Some(Value::Enum(_, s) | Value::String(s)) => Ok(s),
            _ => Err(DecodeError::field(name, "must be an enum symbol")),
        }
    }

    /// A top-up's or credit note's grant terms (version 2 of their
    /// schemas); absent or null (version 1, or no grant) is the default.
    fn grant(&self, name: &str) -> Result<GrantTerms, DecodeError> {
        let g = match self.get(name) {
            None => return Ok(GrantTerms::default()),
            Some(Value::Record(fields)) => Fields(fields),
            Some(_) => return Err(DecodeError::field(name, "must be a record")),
        };
        let kind = match g.get("kind") {
            None => GrantKind::Paid,
            Some(Value::Enum(_, s) | Value::String(s)) => match s.as_str() {
                "paid" => GrantKind::Paid,
                "promotional" => GrantKind::Promotional,
                other => {
                    return Err(DecodeError::field(
                        "grant.kind",
                        format!("unknown symbol {:?}", truncate(other)),
                    ))
                }
            },
            Some(_) => return Err(DecodeError::field("grant.kind", "must be an enum symbol")),
        };
        let expires_at = match g.get("expires_at") {
            None => None,
            Some(_) => Some(
                g.time("expires_at")
                    .map_err(|_| DecodeError::field("grant.expires_at", "must be a timestamp"))?,
            ),
        };
        let priority = match g.get("priority") {
            None => 0,
            Some(Value::Int(p)) => *p,
            Some(_) => return Err(DecodeError::field("grant.priority", "must be an int")),
        };
        Ok(GrantTerms {
            kind,
            expires_at,
            priority,
        })
    }

    fn records(&self, name: &str) -> Result<Vec<Fields<'_>>, DecodeError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Record(f) => Ok(Fields(f)),
                    _ => Err(DecodeError::field(name, "must be an array of records")),
                })
                .collect(),
            Some(_) => Err(DecodeError::field(name, "must be an array")),
        }
    }
}

/// Whether the writer schema of a record has the top-level field `name`
/// (resolution into this build's schema fills a missing one with its
/// default, so the decoded fields cannot tell).
fn written(writer: &Schema, name: &str) -> bool {
    matches!(writer, Schema::Record(r) if r.lookup.contains_key(name))
}

fn cold(kind: Cold, f: &Fields<'_>, writer: &Schema) -> Result<Decoded, DecodeError> {
    let payment = |kind: PaymentKind| -> Result<Decoded, DecodeError> {
        Ok(Decoded::Input(Input::Payment(PaymentEvent {
            event_id: f.str("event_id")?,
            account_id: f.str("account_id")?,
            occurred_at: f.time("occurred_at")?,
            environment: f.opt_str("environment")?,
            kind,
        })))
    };
    let account = |kind: AccountKind| -> Result<Decoded, DecodeError> {
        Ok(Decoded::Input(Input::Account(AccountCommand {
            event_id: f.str("event_id")?,
            account_id: f.str("account_id")?,
            occurred_at: f.time("occurred_at")?,
            environment: f.opt_str("environment")?,
            kind,
        })))
    };
    match kind {
        Cold::CreditToppedUp => payment(PaymentKind::CreditToppedUp {
            amount: f.decimal("amount")?,
            currency: f.str("currency")?,
            grant: f.grant("grant")?,
        }),
        Cold::PaymentSucceeded => payment(PaymentKind::PaymentSucceeded {
            charge_id: f.str("charge_id")?,
            invoice_id: f.str("invoice_id")?,
            amount: f.decimal("amount")?,
            currency: f.str("currency")?,
        }),
        Cold::PaymentFailed => payment(PaymentKind::PaymentFailed {
            charge_id: f.str("charge_id")?,
            invoice_id: f.str("invoice_id")?,
            retryable: f.boolean("retryable")?,
            reason: f.str("reason")?,
        }),
        Cold::PaymentRefunded => payment(PaymentKind::PaymentRefunded {
            amount: f.decimal("amount")?,
            currency: f.str("currency")?,
            reason: f.str("reason")?,
        }),
        Cold::BankTransferReceived => payment(PaymentKind::BankTransferReceived {
            reference: f.str("reference")?,
            amount: f.decimal("amount")?,
            currency: f.str("currency")?,
        }),
        Cold::PaymentMethodAttached => payment(PaymentKind::PaymentMethodAttached {
            token_ref: f.str("token_ref")?,
            brand: f.str("brand")?,
            last4: f.str("last4")?,
            expires: f.str("expires")?,
        }),
        Cold::PaymentMethodDetached => payment(PaymentKind::PaymentMethodDetached {
            token_ref: f.str("token_ref")?,
        }),
        Cold::AccountOpened => {
            let anchor = match f.opt_str("billing_anchor")? {
                None => Default::default(),
                Some(s) => parse_anchor(&s).ok_or_else(|| {
                    DecodeError::field(
                        "billing_anchor",
                        format!(
                            "must be \"calendar\" or \"1\"..\"31\", got {:?}",
                            truncate(&s)
                        ),
                    )
                })?,
            };
            Ok(Decoded::Input(Input::Account(AccountCommand {
                event_id: f.str("event_id")?,
                account_id: f.str("account_id")?,
                occurred_at: f.time("opened_at")?,
                environment: Some(f.str("environment")?),
                kind: AccountKind::AccountOpened {
                    plan_id: f.str("plan_id")?,
                    currency: f.str("currency")?,
                    timezone: f.str("timezone")?,
                    tax_rate: f.decimal("tax_rate")?,
                    billing_anchor: anchor,
                    // Version 2 (issue 13); absent in version 1: none.
                    thresholds: f.decimals("thresholds")?,
                    invoice_at: f.opt_decimal("invoice_at")?,
                },
            })))
        }
        Cold::PlanChanged => account(AccountKind::PlanChanged {
            plan_id: f.str("plan_id")?,
            // Absent (version 1 of the schema) or null: next_period.
            effective: match f.get("effective") {
                None => PlanChangeEffective::NextPeriod,
                Some(_) => {
                    let name = f.symbol("effective")?;
                    PlanChangeEffective::from_name(name).ok_or_else(|| {
                        DecodeError::field(
                            "effective",
                            format!("unknown symbol {:?}", truncate(name)),
                        )
                    })?
                }
            },
            version: f.opt_u32("version")?,
        }),
        Cold::AccountClosed => account(AccountKind::AccountClosed),
        Cold::AdjustmentIssued => {
            let adjustment = match f.symbol("adjustment")? {
                "credit_note" => AdjustmentKind::CreditNote,
                "debit" => AdjustmentKind::Debit,
                other => {
                    return Err(DecodeError::field(
                        "adjustment",
                        format!("unknown symbol {:?}", truncate(other)),
                    ))
                }
            };
            account(AccountKind::AdjustmentIssued {
                adjustment,
                amount: f.decimal("amount")?,
                currency: f.str("currency")?,
                reason: f.str("reason")?,
                invoice_id: f.opt_str("invoice_id")?,
                grant: f.grant("grant")?,
            })
        }
        Cold::CouponApplied => account(AccountKind::CouponApplied {
            coupon: CouponTerms {
                coupon_id: f.str("coupon_id")?,
                percent_off: f.opt_decimal("percent_off")?,
                amount_off: f.opt_decimal("amount_off")?,
                currency: f.opt_str("currency")?,
                periods: f.opt_u32("periods")?,
                charges: f.strings("charges")?,
            },
        }),
        Cold::ThresholdsSet => account(AccountKind::ThresholdsSet {
            thresholds: f.decimals("thresholds")?,
            currency: f.str("currency")?,
            // Version 2 (issue 13): an amount, or null to clear it. A
            // version 1 record (no such field; its producer only sets
            // alerts) leaves the account's `invoice_at` as it is.
            invoice_at: f.opt_decimal("invoice_at")?,
            keeps_invoice_at: !written(writer, "invoice_at"),
        }),
        Cold::Plan => plan(f).map(Decoded::Plan),
    }
}

fn plan(f: &Fields<'_>) -> Result<Plan, DecodeError> {
    let code = f.str("currency")?;
    let currency = Currency::from_code(&code).ok_or_else(|| {
        DecodeError::field(
            "currency",
            format!("{:?} is not a known ISO 4217 code", truncate(&code)),
        )
    })?;
    let mut charges = Vec::new();
    for c in f.records("charges")? {
        let model = match c.symbol("model")? {
            "per_unit" => Model::PerUnit,
            "graduated" => Model::Graduated,
            "volume" => Model::Volume,
            "package" => Model::Package,
            other => {
                return Err(DecodeError::field(
                    "charges.model",
                    format!("unknown symbol {:?}", truncate(other)),
                ))
            }
        };
        let tiers = c
            .records("tiers")?
            .iter()
            .map(|t| {
                Ok(Tier {
                    up_to: t.opt_decimal("up_to")?,
                    unit_price: t.decimal("unit_price")?,
                    flat_fee: t.decimal_or_zero("flat_fee")?,
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        charges.push(Charge {
            metric: c.str("metric")?,
            model,
            unit_price: c.decimal_or_zero("unit_price")?,
            package_size: c.opt_decimal("package_size")?,
            free_units: c.decimal_or_zero("free_units")?,
            tiers,
            aggregation: AggregationSpec {
                kind: match c.get("aggregation") {
                    // A record written before the field existed: `sum`.
                    None => Aggregation::Sum,
                    Some(_) => {
                        let name = c.symbol("aggregation")?;
                        Aggregation::from_name(name).ok_or_else(|| {
                            DecodeError::field(
                                "charges.aggregation",
                                format!("unknown symbol {:?}", truncate(name)),
                            )
                        })?
                    }
                },
                field: c.opt_str("aggregation_field")?,
                percentile: c.opt_decimal("aggregation_percentile")?,
                window: c.opt_str("aggregation_window")?,
            },
        });
    }
    Ok(Plan {
        plan_id: f.str("plan_id")?,
        currency,
        recurring_fee: f.decimal_or_zero("recurring_fee")?,
        minimum_spend: f.decimal_or_zero("minimum_spend")?,
        // Absent before version 3 of the schema: version 1.
        version: f.opt_u32("version")?.unwrap_or(1),
        charges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::json::tests::{sample_inputs, sample_plan};
    use proptest::prelude::*;

    fn decoder() -> Decoder {
        Decoder::new(Catalog::shared().unwrap()).unwrap()
    }

    #[test]
    fn decode_into_reuses_buffers_and_equals_decode() {
        let catalog = Catalog::load().unwrap();
        let decoder = Decoder::new(&catalog).unwrap();
        let mut scratch = Decoded::Plan(crate::engine::plan::Plan {
            plan_id: "x".into(),
            currency: crate::engine::money::Currency::from_code("EUR").unwrap(),
            recurring_fee: Default::default(),
            minimum_spend: Default::default(),
            version: 1,
            charges: vec![],
        });
        for i in 0..3 {
            let mut u = crate::engine::events::UsageRecorded {
                event_id: format!("e-{i}"),
                account_id: format!("acct-{i}"),
                subject: "app".into(),
                metric: "m".into(),
                quantity: rust_decimal::Decimal::new(15 + i, 1),
                occurred_at: crate::engine::time::Timestamp(1_700_000_000_000_000 + i),
                environment: "prod".into(),
                attributes: Default::default(),
            };
            if i == 1 {
                u.attributes.insert("region".into(), "eu".into());
            }
            let bytes = catalog.encode_input(&Input::Usage(u.clone())).unwrap();
            decoder.decode_into(&bytes, &mut scratch).unwrap();
            assert_eq!(scratch, decoder.decode(&bytes).unwrap());
            assert_eq!(scratch, Decoded::Input(Input::Usage(u)));
        }
        assert!(decoder
            .decode_into(&[0, 0, 0, 0, 1, 0xff], &mut scratch)
            .is_err());
    }

    #[test]
    fn every_input_round_trips_through_avro() {
        let catalog = Catalog::shared().unwrap();
        let d = decoder();
        for input in sample_inputs() {
            let bytes = catalog.encode_input(&input).unwrap();
            assert_eq!(d.decode(&bytes), Ok(Decoded::Input(input)));
        }
        let plan = sample_plan();
        let bytes = catalog.encode_plan(&plan).unwrap();
        assert_eq!(d.decode(&bytes), Ok(Decoded::Plan(plan)));
    }

    #[test]
    fn cloud_event_is_recognised_by_its_first_byte() {
        let text = br#"  {"specversion":"1.0","type":"billing.usage.v1","source":"s","id":"x","time":"2026-01-01T00:00:00Z",
            "data":{"account_id":"a","subject":"s","metric":"m","quantity":"1","environment":"prod"}}"#;
        assert!(matches!(
            decoder().decode(text),
            Ok(Decoded::Input(Input::Usage(_)))
        ));
    }

    #[test]
    fn every_decode_error_kind_is_reachable() {
        let catalog = Catalog::shared().unwrap();
        let d = decoder();
        let usage = catalog.encode_input(&sample_inputs()[0]).unwrap();
        assert_eq!(d.decode(&[]), Err(DecodeError::TooShort(0)));
        assert_eq!(d.decode(&[0, 0, 0]), Err(DecodeError::TooShort(3)));
        assert_eq!(d.decode(b"\x07abc"), Err(DecodeError::BadMagic(7)));
        assert_eq!(d.decode(b"  x"), Err(DecodeError::BadMagic(b'x')));
        assert_eq!(
            d.decode(&[0, 0, 0, 3, 232, 1]),
            Err(DecodeError::UnknownSchemaId(1000))
        );
        assert!(matches!(
            d.decode(&usage[..usage.len() - 1]),
            Err(DecodeError::BodyMismatch(_))
        ));
        let bad_quantity = catalog
            .encode_input(&Input::Usage(crate::engine::events::UsageRecorded {
                quantity: Decimal::new(15, 1),
                ..match &sample_inputs()[0] {
                    Input::Usage(u) => u.clone(),
                    _ => unreachable!(),
                }
            }))
            .unwrap();
        // Patch "1.5" into "1x5" in place: same length, not a decimal.
        let pos = bad_quantity.windows(3).position(|w| w == b"1.5").unwrap();
        let mut patched = bad_quantity.clone();
        patched[pos + 1] = b'x';
        assert!(
            matches!(d.decode(&patched), Err(DecodeError::InvalidField { field, .. }) if field == "quantity")
        );
        assert!(matches!(d.decode(b"{oops"), Err(DecodeError::BadJson(_))));
        assert!(matches!(
            d.decode(br#"{"specversion":"0.3"}"#),
            Err(DecodeError::NotCloudEvent(_))
        ));
    }

    #[test]
    fn cold_records_with_bad_values_name_the_field() {
        let catalog = Catalog::shared().unwrap();
        let d = decoder();
        let json = serde_json::json!({"event_id":"e","account_id":"a","occurred_at":"2026-01-01T00:00:00Z",
            "amount":"lots","currency":"EUR"});
        let bytes = catalog.encode_json("CreditToppedUp", &json, &[]).unwrap();
        assert!(
            matches!(d.decode(&bytes), Err(DecodeError::InvalidField { field, .. }) if field == "amount")
        );
        let json = serde_json::json!({"event_id":"e","account_id":"a","plan_id":"p","currency":"EUR","timezone":"UTC",
            "tax_rate":"0","opened_at":"2026-01-01T00:00:00Z","environment":"prod","billing_anchor":"every tuesday"});
        let bytes = catalog.encode_json("AccountOpened", &json, &[]).unwrap();
        assert!(
            matches!(d.decode(&bytes), Err(DecodeError::InvalidField { field, .. }) if field == "billing_anchor")
        );
    }

    fn aggregated_plan() -> Plan {
        use crate::engine::aggregation::{Aggregation, AggregationSpec};
        let mut plan = sample_plan();
        plan.charges[0].aggregation = AggregationSpec {
            kind: Aggregation::Percentile,
            field: None,
            percentile: Some(Decimal::from(95)),
            window: Some("5m".into()),
        };
        plan.charges[1].aggregation = AggregationSpec {
            kind: Aggregation::UniqueCount,
            field: Some("user_id".into()),
            percentile: None,
            window: None,
        };
        plan
    }

    #[test]
    fn issue_13_plan_aggregations_round_trip_through_avro_and_json() {
        let catalog = Catalog::shared().unwrap();
        let plan = aggregated_plan();
        let bytes = catalog.encode_plan(&plan).unwrap();
        assert_eq!(decoder().decode(&bytes), Ok(Decoded::Plan(plan.clone())));
        let line = crate::contracts::json::plan_to_json(&plan).to_string();
        assert!(line.contains(r#""aggregation":"percentile""#), "{line}");
        assert_eq!(
            crate::contracts::json::parse_line(&line),
            Ok(Decoded::Plan(plan))
        );
        // A JSON plan without the fields is `sum`; an unknown one is named.
        let mut json = crate::contracts::json::plan_to_json(&sample_plan());
        for c in json["charges"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            c.retain(|k, _| !k.starts_with("aggregation"));
        }
        assert_eq!(
            crate::contracts::json::parse_line(&json.to_string()),
            Ok(Decoded::Plan(sample_plan()))
        );
        json["charges"][0]["aggregation"] = serde_json::json!("median");
        let e = crate::contracts::json::parse_line(&json.to_string()).unwrap_err();
        assert!(e.to_string().contains("aggregation"), "{e}");
    }

    #[test]
    fn issue_13_old_plan_records_without_aggregation_decode_to_sum() {
        // The Plan schema as it was before issue 13: Charge without the
        // four aggregation fields.
        let mut old: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/history/Plan.v2.avsc")).unwrap();
        let charge_fields = old["fields"][4]["type"]["items"]["fields"]
            .as_array_mut()
            .unwrap();
        charge_fields.retain(|f| !f["name"].as_str().unwrap().starts_with("aggregation"));
        assert_eq!(charge_fields.len(), 6);
        let old_text = old.to_string();
        let mut d = decoder();
        d.register_writer_schema(4300, &old_text).unwrap();
        let old_schema = Schema::parse_str(&old_text).unwrap();
        let mut json = crate::contracts::json::plan_to_json(&sample_plan());
        json.as_object_mut().unwrap().remove("version");
        for c in json["charges"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            c.retain(|k, _| !k.starts_with("aggregation"));
        }
        let body = super::super::encode::avro_body(&old_schema, "Plan", &json, &[]).unwrap();
        let Ok(Decoded::Plan(plan)) = d.decode(&framing::encode(4300, &body)) else {
            panic!("old plan record not decoded")
        };
        assert!(plan
            .charges
            .iter()
            .all(|c| c.aggregation == Default::default()));
        assert_eq!(plan, sample_plan());
    }

    #[test]
    fn issue_13_an_old_producers_plan_record_decodes_to_sum() {
        // A producer still on the Plan schema of before issue 13 (kept as
        // schemas/history/Plan.v1.avsc: charges without the aggregation
        // fields) frames its records with that schema's id, 13, as it
        // always did. No registry: the manifest alone must say how to read
        // them.
        let old = Schema::parse_str(include_str!("../../schemas/history/Plan.v1.avsc")).unwrap();
        let mut json = crate::contracts::json::plan_to_json(&sample_plan());
        json.as_object_mut().unwrap().remove("version");
        for c in json["charges"].as_array_mut().unwrap() {
            c.as_object_mut()
                .unwrap()
                .retain(|k, _| !k.starts_with("aggregation"));
        }
        let body = super::super::encode::avro_body(&old, "Plan", &json, &[]).unwrap();
        let framed = framing::encode(13, &body);
        let Ok(Decoded::Plan(plan)) = decoder().decode(&framed) else {
            panic!(
                "an old producer's plan record: {:?}",
                decoder().decode(&framed)
            )
        };
        assert!(plan
            .charges
            .iter()
            .all(|c| c.aggregation.kind == crate::engine::aggregation::Aggregation::Sum));
        assert_eq!(plan, sample_plan());
    }

    /// `json` with every field `schema` does not have left out, at any depth.
    fn pruned_to(schema: &Schema, json: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as Json;
        match (schema, json) {
            (Schema::Record(r), Json::Object(obj)) => Json::Object(
                r.fields
                    .iter()
                    .filter_map(|f| Some((f.name.clone(), pruned_to(&f.schema, obj.get(&f.name)?))))
                    .collect(),
            ),
            (Schema::Array(a), Json::Array(items)) => {
                Json::Array(items.iter().map(|i| pruned_to(&a.items, i)).collect())
            }
            (Schema::Map(m), Json::Object(obj)) => Json::Object(
                obj.iter()
                    .map(|(k, v)| (k.clone(), pruned_to(&m.types, v)))
                    .collect(),
            ),
            (Schema::Union(u), Json::Object(_)) => u
                .variants()
                .iter()
                .find(|b| matches!(b, Schema::Record(_) | Schema::Map(_)))
                .map_or_else(|| json.clone(), |b| pruned_to(b, json)),
            _ => json.clone(),
        }
    }

    /// A value of `schema` with something in every field (first branch
    /// that is not null, first symbol, one item), for records no sample
    /// of this module covers.
    fn filled(schema: &Schema) -> Value {
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(true),
            Schema::Int => Value::Int(1),
            Schema::Long => Value::Long(1),
            Schema::Float => Value::Float(1.0),
            Schema::Double => Value::Double(1.0),
            Schema::Bytes => Value::Bytes(b"1".to_vec()),
            Schema::String => Value::String("1".into()),
            Schema::TimestampMicros => Value::TimestampMicros(1),
            Schema::TimestampMillis => Value::TimestampMillis(1),
            Schema::Enum(e) => Value::Enum(0, e.symbols[0].clone()),
            Schema::Array(a) => Value::Array(vec![filled(&a.items)]),
            Schema::Map(m) => Value::Map([("k".to_string(), filled(&m.types))].into()),
            Schema::Union(u) => {
                let (i, b) = u
                    .variants()
                    .iter()
                    .enumerate()
                    .find(|(_, b)| **b != Schema::Null)
                    .unwrap_or((0, &Schema::Null));
                Value::Union(i as u32, Box::new(filled(b)))
            }
            Schema::Record(r) => Value::Record(
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), filled(&f.schema)))
                    .collect(),
            ),
            other => panic!("no filler for {other:?}: extend `filled`"),
        }
    }

    #[test]
    fn every_earlier_schema_version_in_the_manifest_decodes_with_this_build() {
        // For every version in the manifest's history (schemas/history): a
        // record its producers write, framed with its id, reads with this
        // build into what the same record reads as when written with the
        // current version (new fields at their defaults).
        let catalog = Catalog::shared().unwrap();
        let d = decoder();
        let mut samples: Vec<(&str, serde_json::Value)> = sample_inputs()
            .iter()
            .map(|i| {
                (
                    crate::contracts::json::input_record(i),
                    crate::contracts::json::input_to_json(i),
                )
            })
            .collect();
        samples.push((
            "Plan",
            crate::contracts::json::plan_to_json(&aggregated_plan()),
        ));
        assert!(!catalog.history().is_empty());
        for old in catalog.history() {
            let current = catalog.current_of(old);
            let framed_old = |body: &[u8]| framing::encode(old.id, body);
            if !d.own.contains_key(&old.record) {
                // Not an input: billstream does not decode it, but its
                // consumers resolve it into the current version.
                let body = apache_avro::to_avro_datum(&old.schema, filled(&old.schema)).unwrap();
                let read = apache_avro::from_avro_datum(
                    &old.schema,
                    &mut &body[..],
                    Some(&current.schema),
                );
                assert!(read.is_ok(), "{}: {read:?}", old.file);
                continue;
            }
            let mut covered = 0;
            for (_, json) in samples.iter().filter(|(r, _)| *r == old.record) {
                let json = pruned_to(&old.schema, json);
                let body = super::super::encode::avro_body(&old.schema, &old.record, &json, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", old.file));
                let as_current = catalog.encode_json(&old.record, &json, &[]).unwrap();
                assert_ne!(as_current[..5], framed_old(&body)[..5]);
                let mut expected = d.decode(&as_current).unwrap();
                // The one difference by design: a ThresholdsSet written
                // without `invoice_at` leaves the account's as it is, where
                // the current version's default (null) clears it.
                if let Decoded::Input(Input::Account(AccountCommand {
                    kind:
                        AccountKind::ThresholdsSet {
                            keeps_invoice_at, ..
                        },
                    ..
                })) = &mut expected
                {
                    *keeps_invoice_at = !written(&old.schema, "invoice_at");
                }
                assert_eq!(
                    d.decode(&framed_old(&body)),
                    Ok(expected),
                    "{} (id {}) read as {} (id {})",
                    old.file,
                    old.id,
                    current.file,
                    current.id
                );
                covered += 1;
            }
            assert!(
                covered > 0,
                "no sample of {} to write with {}",
                old.record,
                old.file
            );
        }
    }

    #[test]
    fn registered_writer_schema_with_an_extra_field_decodes() {
        let mut d = decoder();
        let writer = r#"{"type":"record","name":"CreditToppedUp","namespace":"billstream.v1","fields":[
            {"name":"event_id","type":"string"},{"name":"account_id","type":"string"},
            {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"amount","type":"string"},{"name":"currency","type":"string"},
            {"name":"channel","type":"string"}]}"#;
        d.register_writer_schema(4242, writer).unwrap();
        let schema = Schema::parse_str(writer).unwrap();
        let value = Value::Record(vec![
            ("event_id".into(), Value::String("e".into())),
            ("account_id".into(), Value::String("a".into())),
            ("occurred_at".into(), Value::TimestampMicros(5)),
            ("amount".into(), Value::String("9.99".into())),
            ("currency".into(), Value::String("EUR".into())),
            ("channel".into(), Value::String("app".into())),
        ]);
        let bytes = framing::encode(4242, &apache_avro::to_avro_datum(&schema, value).unwrap());
        let Ok(Decoded::Input(Input::Payment(p))) = d.decode(&bytes) else {
            panic!("not decoded")
        };
        assert_eq!(
            p.environment, None,
            "the missing optional field takes its default"
        );
        assert!(matches!(p.kind, PaymentKind::CreditToppedUp { .. }));
        assert!(d
            .register_writer_schema(4243, r#"{"type":"record","name":"Other","fields":[]}"#)
            .is_err());
    }

    #[test]
    fn registry_ids_replace_the_manifest_ids_and_refused_ids_say_why() {
        let catalog = Catalog::shared().unwrap();
        let n = catalog.entries().len() as u32;
        let ids = SchemaIds::from_ids(catalog, (0..n).map(|i| 9000 + i).collect()).unwrap();
        let mut d = Decoder::with_ids(catalog, &ids).unwrap();
        let input = &sample_inputs()[0];
        let manifest_framed = catalog.encode_input(input).unwrap();
        let usage_index = catalog.index_of("UsageRecorded").unwrap();
        let registry_framed = framing::encode(ids.get(usage_index), &manifest_framed[5..]);
        assert_eq!(
            d.decode(&registry_framed),
            Ok(Decoded::Input(input.clone()))
        );
        let manifest_id = catalog.entries()[usage_index].id;
        assert!(d.knows(ids.get(usage_index)) && !d.knows(manifest_id));
        assert_eq!(
            d.decode(&manifest_framed),
            Err(DecodeError::UnknownSchemaId(manifest_id))
        );
        d.refuse(manifest_id, "not an input record".into());
        assert!(d.knows(manifest_id));
        let refused = d.decode(&manifest_framed).unwrap_err();
        assert_eq!(refused.kind(), "incompatible_schema");
        assert_eq!(
            refused.to_string(),
            format!(
                "schema id {manifest_id} cannot be read as a billstream input: not an input record"
            )
        );
        let mut scratch = Decoded::Input(input.clone());
        assert_eq!(d.decode_into(&manifest_framed, &mut scratch), Err(refused));
        // A later registration of the same id lifts the refusal.
        let usage_text = catalog.entries()[usage_index].text;
        d.register_writer_schema(manifest_id, usage_text).unwrap();
        assert_eq!(
            d.decode(&manifest_framed),
            Ok(Decoded::Input(input.clone()))
        );
    }

    #[test]
    fn random_and_truncated_bytes_never_panic() {
        let catalog = Catalog::shared().unwrap();
        let d = decoder();
        let mut samples: Vec<Vec<u8>> = sample_inputs()
            .iter()
            .map(|i| catalog.encode_input(i).unwrap())
            .collect();
        samples.push(catalog.encode_plan(&sample_plan()).unwrap());
        for s in &samples {
            for n in 0..s.len() {
                assert!(d.decode(&s[..n]).is_err());
            }
        }
    }

    /// Every schema id of the manifest, current and earlier versions (read
    /// from it, so a version added later is covered without a change here).
    fn manifest_ids() -> Vec<u32> {
        let catalog = Catalog::shared().unwrap();
        catalog
            .entries()
            .iter()
            .chain(catalog.history())
            .map(|e| e.id)
            .collect()
    }

    #[test]
    fn the_fuzzed_schema_ids_are_every_id_of_the_manifest() {
        let text = include_str!("../../schemas/manifest.json");
        let manifest: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut listed: Vec<u64> = Vec::new();
        for s in manifest["schemas"].as_array().unwrap() {
            listed.push(s["id"].as_u64().unwrap());
            for h in s["history"].as_array().into_iter().flatten() {
                listed.push(h["id"].as_u64().unwrap());
            }
        }
        let mut fuzzed: Vec<u64> = manifest_ids().into_iter().map(u64::from).collect();
        listed.sort_unstable();
        fuzzed.sort_unstable();
        assert_eq!(fuzzed, listed);
        // Earlier versions and every record, inputs and outputs alike.
        for id in [9, 26, 1009, 1026, 2013, 2015, 2021, 24] {
            assert!(fuzzed.contains(&id), "{id}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bodies_under_every_schema_id_never_panic(id in proptest::sample::select(manifest_ids()), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = decoder();
            let _ = d.decode(&framing::encode(id, &body));
        }

        #[test]
        fn corrupted_valid_records_never_panic(which in 0usize..14, at in any::<usize>(), byte in any::<u8>()) {
            let catalog = Catalog::shared().unwrap();
            let d = decoder();
            let mut bytes = match sample_inputs().get(which) {
                Some(i) => catalog.encode_input(i).unwrap(),
                None => catalog.encode_plan(&sample_plan()).unwrap(),
            };
            let n = bytes.len();
            bytes[5 + at % (n - 5)] = byte;
            let _ = d.decode(&bytes);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = decoder().decode(text.as_bytes());
            let _ = decoder().decode(format!("{{{text}").as_bytes());
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::contracts::json::tests::sample_inputs;

    /// Rough decode rate of framed usage records; run in release:
    /// `cargo test --release --lib decode_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_speed() {
        let catalog = Catalog::shared().unwrap();
        let decoder = Decoder::new(catalog).unwrap();
        let Input::Usage(base) = &sample_inputs()[0] else {
            panic!("sample 0 is usage")
        };
        let records: Vec<Vec<u8>> = (0..10_000)
            .map(|i| {
                let mut u = base.clone();
                u.event_id = format!("0195f3a2-7c1e-7e4b-9a{i:010}");
                u.quantity = Decimal::new(i, 3);
                catalog.encode_input(&Input::Usage(u)).unwrap()
            })
            .collect();
        let start = std::time::Instant::now();
        let mut ok = 0usize;
        for _ in 0..100 {
            for r in &records {
                ok += usize::from(decoder.decode(r).is_ok());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "decoded {ok} usage records in {secs:.3}s: {:.0} records/s",
            ok as f64 / secs
        );
        assert_eq!(ok, 1_000_000);
    }
}
