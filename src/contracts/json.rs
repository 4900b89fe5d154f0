//! The pinned JSON shapes of SPEC §2, for `billstream simulate` input
//! files, CloudEvents `data` and anything else that speaks JSON. Field
//! names are the Avro schemas'; money and quantities are decimal strings
//! (a JSON number is refused: a float is never exact), times RFC 3339.
//! Errors name the field and say what was expected, because they reach
//! a person as `file:line: error`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use super::decimal::{decimal_field, rfc3339_field, truncate, DECIMAL_EXPECTED};
use super::decode::Decoded;
use super::errors::DecodeError;
use crate::engine::aggregation::{Aggregation, AggregationSpec};
use crate::engine::credit::{GrantKind, GrantTerms};
use crate::engine::discount::CouponTerms;
use crate::engine::events::{
    AccountCommand, AccountKind, AdjustmentKind, Input, PaymentEvent, PaymentKind,
    PlanChangeEffective, UsageRecorded,
};
use crate::engine::money::Currency;
use crate::engine::plan::{Charge, Model, Plan, Tier};
use crate::engine::time::{Anchor, Timestamp};

const USAGE_FIELDS: &[&str] = &[
    "event_id",
    "account_id",
    "subject",
    "metric",
    "quantity",
    "occurred_at",
    "environment",
    "attributes",
];
const ACCOUNT_OPENED_FIELDS: &[&str] = &[
    "event_id",
    "account_id",
    "kind",
    "plan_id",
    "currency",
    "timezone",
    "tax_rate",
    "opened_at",
    "environment",
    "billing_anchor",
    "thresholds",
    "invoice_at",
];
const PLAN_FIELDS: &[&str] = &[
    "plan_id",
    "version",
    "currency",
    "recurring_fee",
    "minimum_spend",
    "charges",
];
const CHARGE_FIELDS: &[&str] = &[
    "metric",
    "model",
    "unit_price",
    "package_size",
    "free_units",
    "tiers",
    "aggregation",
    "aggregation_field",
    "aggregation_percentile",
    "aggregation_window",
];
const TIER_FIELDS: &[&str] = &["up_to", "unit_price", "flat_fee"];
/// Fields every payment and account command (other than opening) has.
const COMMON_FIELDS: &[&str] = &[
    "event_id",
    "account_id",
    "kind",
    "occurred_at",
    "environment",
];

const PAYMENT_KINDS: &[(&str, &[&str])] = &[
    ("credit_topped_up", &["amount", "currency", "grant"]),
    (
        "payment_succeeded",
        &["charge_id", "invoice_id", "amount", "currency"],
    ),
    (
        "payment_failed",
        &["charge_id", "invoice_id", "retryable", "reason"],
    ),
    ("payment_refunded", &["amount", "currency", "reason"]),
    (
        "bank_transfer_received",
        &["reference", "amount", "currency"],
    ),
    (
        "payment_method_attached",
        &["token_ref", "brand", "last4", "expires"],
    ),
    ("payment_method_detached", &["token_ref"]),
];
const ACCOUNT_KINDS: &[(&str, &[&str])] = &[
    ("plan_changed", &["plan_id", "effective", "version"]),
    ("account_closed", &[]),
    (
        "adjustment_issued",
        &[
            "adjustment",
            "amount",
            "currency",
            "reason",
            "invoice_id",
            "grant",
        ],
    ),
    (
        "coupon_applied",
        &[
            "coupon_id",
            "percent_off",
            "amount_off",
            "currency",
            "periods",
            "charges",
        ],
    ),
    ("thresholds_set", &["thresholds", "currency", "invoice_at"]),
];
/// Fields of a top-up's or credit note's `grant` object.
const GRANT_FIELDS: &[&str] = &["kind", "expires_at", "priority"];

/// Parse one line of a simulate input file: a usage, account, payment or
/// plan record. Unknown fields are refused (they are usually typos).
pub fn parse_line(line: &str) -> Result<Decoded, DecodeError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(DecodeError::BadJson("a line must be a JSON object".into()));
    };
    parse_object(&obj)
}

/// Parse one record already read as a JSON object.
pub fn parse_object(obj: &Map<String, Value>) -> Result<Decoded, DecodeError> {
    let o = Obj {
        map: obj,
        path: String::new(),
    };
    match obj.get("kind") {
        Some(Value::String(kind)) => {
            if kind == "account_opened" {
                return Ok(Decoded::Input(Input::Account(account_opened(&o)?)));
            }
            if let Some((_, fields)) = PAYMENT_KINDS.iter().find(|(k, _)| k == kind) {
                o.only(&[COMMON_FIELDS, fields])?;
                return Ok(Decoded::Input(Input::Payment(payment(&o, kind)?)));
            }
            if let Some((_, fields)) = ACCOUNT_KINDS.iter().find(|(k, _)| k == kind) {
                o.only(&[COMMON_FIELDS, fields])?;
                return Ok(Decoded::Input(Input::Account(account_command(&o, kind)?)));
            }
            let known: Vec<&str> = std::iter::once("account_opened")
                .chain(PAYMENT_KINDS.iter().chain(ACCOUNT_KINDS).map(|(k, _)| *k))
                .collect();
            Err(DecodeError::field("kind", format!("{:?} is not a known kind; expected one of {}", truncate(kind), known.join(", "))))
        }
        Some(_) => Err(DecodeError::field("kind", "must be a string")),
        None if obj.contains_key("quantity") || obj.contains_key("metric") => {
            Ok(Decoded::Input(Input::Usage(usage_from_object(obj, true)?)))
        }
        None if obj.contains_key("opened_at") => Ok(Decoded::Input(Input::Account(account_opened(&o)?))),
        None if obj.contains_key("charges") || (obj.contains_key("plan_id") && !obj.contains_key("account_id")) => {
            Ok(Decoded::Plan(plan(&o)?))
        }
        None => Err(DecodeError::BadJson(
            "cannot tell what this record is: expected usage (metric, quantity…), an account opening (opened_at…), \
             a payment or account command (kind…) or a plan (plan_id, charges…)"
                .into(),
        )),
    }
}

/// A usage record from its pinned JSON fields. `strict` refuses unknown
/// fields (simulate files); CloudEvents producers may add their own.
pub(crate) fn usage_from_object(
    obj: &Map<String, Value>,
    strict: bool,
) -> Result<UsageRecorded, DecodeError> {
    let o = Obj {
        map: obj,
        path: String::new(),
    };
    if strict {
        o.only(&[USAGE_FIELDS])?;
    }
    Ok(UsageRecorded {
        event_id: o.str("event_id")?,
        account_id: o.str("account_id")?,
        subject: o.str("subject")?,
        metric: o.str("metric")?,
        quantity: o.decimal("quantity")?,
        occurred_at: o.time("occurred_at")?,
        environment: o.str("environment")?,
        attributes: o.str_map("attributes")?,
    })
}

fn account_opened(o: &Obj<'_>) -> Result<AccountCommand, DecodeError> {
    o.only(&[ACCOUNT_OPENED_FIELDS])?;
    Ok(AccountCommand {
        event_id: o.str("event_id")?,
        account_id: o.str("account_id")?,
        occurred_at: o.time("opened_at")?,
        environment: Some(o.str("environment")?),
        kind: AccountKind::AccountOpened {
            plan_id: o.str("plan_id")?,
            currency: o.str("currency")?,
            timezone: o.str("timezone")?,
            tax_rate: o.decimal("tax_rate")?,
            billing_anchor: o.anchor("billing_anchor")?,
            // Optional (issue 13): absent, the account has no alerts.
            thresholds: match o.get("thresholds") {
                None | Some(Value::Null) => Vec::new(),
                Some(_) => o.decimal_list("thresholds")?,
            },
            invoice_at: o.opt_decimal("invoice_at")?,
        },
    })
}

fn payment(o: &Obj<'_>, kind: &str) -> Result<PaymentEvent, DecodeError> {
    let kind = match kind {
        "credit_topped_up" => PaymentKind::CreditToppedUp {
            amount: o.decimal("amount")?,
            currency: o.str("currency")?,
            grant: o.grant("grant")?,
        },
        "payment_succeeded" => PaymentKind::PaymentSucceeded {
            charge_id: o.str("charge_id")?,
            invoice_id: o.str("invoice_id")?,
            amount: o.decimal("amount")?,
            currency: o.str("currency")?,
        },
        "payment_failed" => PaymentKind::PaymentFailed {
            charge_id: o.str("charge_id")?,
            invoice_id: o.str("invoice_id")?,
            retryable: o.boolean("retryable")?,
            reason: o.str("reason")?,
        },
        "payment_refunded" => PaymentKind::PaymentRefunded {
            amount: o.decimal("amount")?,
            currency: o.str("currency")?,
            reason: o.str("reason")?,
        },
        "bank_transfer_received" => PaymentKind::BankTransferReceived {
            reference: o.str("reference")?,
            amount: o.decimal("amount")?,
            currency: o.str("currency")?,
        },
        "payment_method_attached" => PaymentKind::PaymentMethodAttached {
            token_ref: o.str("token_ref")?,
            brand: o.str("brand")?,
            last4: o.str("last4")?,
            expires: o.str("expires")?,
        },
        _ => PaymentKind::PaymentMethodDetached {
            token_ref: o.str("token_ref")?,
        },
    };
    Ok(PaymentEvent {
        event_id: o.str("event_id")?,
        account_id: o.str("account_id")?,
        occurred_at: o.time("occurred_at")?,
        environment: o.opt_str("environment")?,
        kind,
    })
}

fn account_command(o: &Obj<'_>, kind: &str) -> Result<AccountCommand, DecodeError> {
    let kind = match kind {
        "plan_changed" => AccountKind::PlanChanged {
            plan_id: o.str("plan_id")?,
            effective: match o.opt_str("effective")? {
                None => PlanChangeEffective::NextPeriod,
                Some(name) => PlanChangeEffective::from_name(&name).ok_or_else(|| {
                    o.err(
                        "effective",
                        format!(
                            "must be \"next_period\" or \"immediately\", got {:?}",
                            truncate(&name)
                        ),
                    )
                })?,
            },
            version: o.opt_u32("version")?,
        },
        "account_closed" => AccountKind::AccountClosed,
        "coupon_applied" => AccountKind::CouponApplied {
            coupon: CouponTerms {
                coupon_id: o.str("coupon_id")?,
                percent_off: o.opt_decimal("percent_off")?,
                amount_off: o.opt_decimal("amount_off")?,
                currency: o.opt_str("currency")?,
                periods: o.opt_u32("periods")?,
                charges: o.str_list("charges")?,
            },
        },
        "thresholds_set" => AccountKind::ThresholdsSet {
            thresholds: o.decimal_list("thresholds")?,
            currency: o.str("currency")?,
            // Absent (as in version 1 of the Avro record): the account's
            // `invoice_at` stays; `null` clears it.
            invoice_at: o.opt_decimal("invoice_at")?,
            keeps_invoice_at: !o.has("invoice_at"),
        },
        _ => AccountKind::AdjustmentIssued {
            adjustment: match o.str("adjustment")?.as_str() {
                "credit_note" => AdjustmentKind::CreditNote,
                "debit" => AdjustmentKind::Debit,
                other => {
                    return Err(o.err(
                        "adjustment",
                        format!(
                            "must be \"credit_note\" or \"debit\", got {:?}",
                            truncate(other)
                        ),
                    ))
                }
            },
            amount: o.decimal("amount")?,
            currency: o.str("currency")?,
            reason: o.str("reason")?,
            invoice_id: o.opt_str("invoice_id")?,
            grant: o.grant("grant")?,
        },
    };
    Ok(AccountCommand {
        event_id: o.str("event_id")?,
        account_id: o.str("account_id")?,
        occurred_at: o.time("occurred_at")?,
        environment: o.opt_str("environment")?,
        kind,
    })
}

fn plan(o: &Obj<'_>) -> Result<Plan, DecodeError> {
    o.only(&[PLAN_FIELDS])?;
    let code = o.str("currency")?;
    let currency = Currency::from_code(&code).ok_or_else(|| {
        o.err(
            "currency",
            format!(
                "{:?} is not a known ISO 4217 currency code",
                truncate(&code)
            ),
        )
    })?;
    let charges = o
        .objects("charges")?
        .into_iter()
        .map(|c| {
            c.only(&[CHARGE_FIELDS])?;
            let model = match c.str("model")?.as_str() {
                "per_unit" => Model::PerUnit,
                "graduated" => Model::Graduated,
                "volume" => Model::Volume,
                "package" => Model::Package,
                other => {
                    return Err(c.err(
                        "model",
                        format!(
                            "must be one of per_unit, graduated, volume, package, got {:?}",
                            truncate(other)
                        ),
                    ))
                }
            };
            let tiers = c
                .objects("tiers")?
                .into_iter()
                .map(|t| {
                    t.only(&[TIER_FIELDS])?;
                    Ok(Tier {
                        up_to: t.opt_decimal("up_to")?,
                        unit_price: t.decimal("unit_price")?,
                        flat_fee: t.decimal_or_zero("flat_fee")?,
                    })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            Ok(Charge {
                metric: c.str("metric")?,
                model,
                unit_price: c.decimal_or_zero("unit_price")?,
                package_size: c.opt_decimal("package_size")?,
                free_units: c.decimal_or_zero("free_units")?,
                tiers,
                aggregation: AggregationSpec {
                    kind: match c.opt_str("aggregation")? {
                        None => Aggregation::Sum,
                        Some(name) => Aggregation::from_name(&name).ok_or_else(|| {
                            c.err(
                                "aggregation",
                                format!(
                                    "must be one of {}, got {:?}",
                                    Aggregation::ALL.map(Aggregation::name).join(", "),
                                    truncate(&name)
                                ),
                            )
                        })?,
                    },
                    field: c.opt_str("aggregation_field")?,
                    percentile: c.opt_decimal("aggregation_percentile")?,
                    window: c.opt_str("aggregation_window")?,
                },
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(Plan {
        plan_id: o.str("plan_id")?,
        currency,
        recurring_fee: o.decimal_or_zero("recurring_fee")?,
        minimum_spend: o.decimal_or_zero("minimum_spend")?,
        // Absent: version 1 (every plan before versions).
        version: o.opt_u32("version")?.unwrap_or(1),
        charges,
    })
}

/// A JSON object being read, with the path of its fields for errors
/// (`charges[0].tiers[1].up_to`).
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn name(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        }
    }

    fn err(&self, field: &str, reason: impl Into<String>) -> DecodeError {
        DecodeError::field(self.name(field), reason)
    }

    /// Refuse fields outside the given lists.
    fn only(&self, allowed: &[&[&str]]) -> Result<(), DecodeError> {
        match self
            .map
            .keys()
            .find(|k| !allowed.iter().any(|list| list.contains(&k.as_str())))
        {
            None => Ok(()),
            Some(k) => {
                let expected: Vec<&str> = allowed.iter().flat_map(|l| l.iter().copied()).collect();
                Err(self.err(
                    truncate(k),
                    format!(
                        "is not a known field here; expected {}",
                        expected.join(", ")
                    ),
                ))
            }
        }
    }

    /// Whether the field is there, `null` included.
    fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// The field, `None` when absent or null.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn str(&self, field: &str) -> Result<String, DecodeError> {
        self.opt_str(field)?
            .ok_or_else(|| self.err(field, "is required (a string)"))
    }

    fn opt_str(&self, field: &str) -> Result<Option<String>, DecodeError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "must be a string")),
        }
    }

    fn opt_decimal(&self, field: &str) -> Result<Option<Decimal>, DecodeError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => decimal_field(&self.name(field), s).map(Some),
            Some(Value::Number(n)) => Err(self.err(
                field,
                format!("{DECIMAL_EXPECTED}, not the JSON number {n} (a float is never exact)"),
            )),
            Some(_) => Err(self.err(field, DECIMAL_EXPECTED)),
        }
    }

    fn decimal(&self, field: &str) -> Result<Decimal, DecodeError> {
        self.opt_decimal(field)?.ok_or_else(|| {
            self.err(
                field,
                format!(
                    "is required ({})",
                    DECIMAL_EXPECTED.trim_start_matches("must be ")
                ),
            )
        })
    }

    fn decimal_or_zero(&self, field: &str) -> Result<Decimal, DecodeError> {
        Ok(self.opt_decimal(field)?.unwrap_or(Decimal::ZERO))
    }

    fn time(&self, field: &str) -> Result<Timestamp, DecodeError> {
        match self.get(field) {
            Some(Value::String(s)) => rfc3339_field(&self.name(field), s),
            Some(_) => Err(self.err(
                field,
                "must be an RFC 3339 time string, e.g. \"2026-01-31T23:00:00Z\"",
            )),
            None => Err(self.err(
                field,
                "is required (an RFC 3339 time, e.g. \"2026-01-31T23:00:00Z\")",
            )),
        }
    }

    /// A non-negative 32-bit integer, `None` when absent or null.
    fn opt_u32(&self, field: &str) -> Result<Option<u32>, DecodeError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.err(field, "must be a non-negative 32-bit integer")),
            Some(_) => Err(self.err(field, "must be an integer")),
        }
    }

    /// An array of exact decimal strings (required; `[]` is empty).
    fn decimal_list(&self, field: &str) -> Result<Vec<Decimal>, DecodeError> {
        match self.get(field) {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => decimal_field(&format!("{}[{i}]", self.name(field)), s),
                    _ => Err(self.err(field, "must be an array of exact decimal strings")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "must be an array of exact decimal strings")),
            None => Err(self.err(
                field,
                "is required (an array of exact decimal strings; [] removes every threshold)",
            )),
        }
    }

    /// An array of strings (absent or null = empty).
    fn str_list(&self, field: &str) -> Result<Vec<String>, DecodeError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.err(field, "must be an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "must be an array of strings")),
        }
    }

    fn boolean(&self, field: &str) -> Result<bool, DecodeError> {
        match self.get(field) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(field, "must be true or false")),
            None => Err(self.err(field, "is required (true or false)")),
        }
    }

    fn str_map(&self, field: &str) -> Result<BTreeMap<String, String>, DecodeError> {
        match self.get(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(self.err(&format!("{field}.{}", truncate(k)), "must be a string")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "must be an object of strings")),
        }
    }

    fn anchor(&self, field: &str) -> Result<Anchor, DecodeError> {
        let bad = || {
            self.err(
                field,
                "must be \"calendar\" or a day of month \"1\" to \"31\"",
            )
        };
        match self.get(field) {
            None => Ok(Anchor::Calendar),
            Some(Value::String(s)) => parse_anchor(s).ok_or_else(bad),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|d| parse_anchor(&d.to_string()))
                .ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    }

    /// A top-up's or credit note's `grant` object: `kind` (`paid`, the
    /// default, or `promotional`), `expires_at` (RFC 3339, optional),
    /// `priority` (an integer, default 0, lower drawn first).
    fn grant(&self, field: &str) -> Result<GrantTerms, DecodeError> {
        let map = match self.get(field) {
            None => return Ok(GrantTerms::default()),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(self.err(field, "must be an object: kind, expires_at, priority")),
        };
        let g = Obj {
            map,
            path: self.name(field),
        };
        g.only(&[GRANT_FIELDS])?;
        let kind = match g.opt_str("kind")?.as_deref() {
            None | Some("paid") => GrantKind::Paid,
            Some("promotional") => GrantKind::Promotional,
            Some(other) => {
                return Err(g.err(
                    "kind",
                    format!(
                        "must be \"paid\" or \"promotional\", got {:?}",
                        truncate(other)
                    ),
                ))
            }
        };
        let expires_at = match g.get("expires_at") {
            None => None,
            Some(_) => Some(g.time("expires_at")?),
        };
        let priority = match g.get("priority") {
            None => 0,
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| g.err("priority", "must be a 32-bit integer"))?,
            Some(_) => return Err(g.err("priority", "must be an integer (lower is drawn first)")),
        };
        Ok(GrantTerms {
            kind,
            expires_at,
            priority,
        })
    }

    /// An array of objects (absent = empty).
    fn objects(&self, field: &str) -> Result<Vec<Obj<'a>>, DecodeError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(map) => Ok(Obj {
                        map,
                        path: format!("{}[{i}]", self.name(field)),
                    }),
                    _ => Err(self.err(&format!("{field}[{i}]"), "must be an object")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "must be an array")),
        }
    }
}

/// `"calendar"` or a day of month `"1"`..`"31"`.
pub(crate) fn parse_anchor(s: &str) -> Option<Anchor> {
    if s == "calendar" {
        return Some(Anchor::Calendar);
    }
    let valid = !s.is_empty()
        && s.len() <= 2
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0');
    s.parse::<u8>()
        .ok()
        .filter(|d| valid && (1..=31).contains(d))
        .map(Anchor::DayOfMonth)
}

/// The wire form of an anchor; `None` for the calendar default.
pub(crate) fn anchor_text(anchor: Anchor) -> Option<String> {
    match anchor {
        Anchor::Calendar => None,
        Anchor::DayOfMonth(d) => Some(d.to_string()),
    }
}

/// The Avro record an input is encoded as.
pub fn input_record(input: &Input) -> &'static str {
    match input {
        Input::Usage(_) => "UsageRecorded",
        Input::Payment(p) => match p.kind {
            PaymentKind::CreditToppedUp { .. } => "CreditToppedUp",
            PaymentKind::PaymentSucceeded { .. } => "PaymentSucceeded",
            PaymentKind::PaymentFailed { .. } => "PaymentFailed",
            PaymentKind::PaymentRefunded { .. } => "PaymentRefunded",
            PaymentKind::BankTransferReceived { .. } => "BankTransferReceived",
            PaymentKind::PaymentMethodAttached { .. } => "PaymentMethodAttached",
            PaymentKind::PaymentMethodDetached { .. } => "PaymentMethodDetached",
        },
        Input::Account(a) => match a.kind {
            AccountKind::AccountOpened { .. } => "AccountOpened",
            AccountKind::PlanChanged { .. } => "PlanChanged",
            AccountKind::AccountClosed => "AccountClosed",
            AccountKind::AdjustmentIssued { .. } => "AdjustmentIssued",
            AccountKind::CouponApplied { .. } => "CouponApplied",
            AccountKind::ThresholdsSet { .. } => "ThresholdsSet",
        },
    }
}

/// The pinned JSON shape of an input, as `parse_line` reads it back.
pub fn input_to_json(input: &Input) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match input {
        Input::Usage(u) => {
            put("event_id", json!(u.event_id));
            put("account_id", json!(u.account_id));
            put("subject", json!(u.subject));
            put("metric", json!(u.metric));
            put("quantity", json!(u.quantity.to_string()));
            put("occurred_at", json!(u.occurred_at.to_rfc3339()));
            put("environment", json!(u.environment));
            put("attributes", json!(u.attributes));
        }
        Input::Payment(p) => {
            put("event_id", json!(p.event_id));
            put("account_id", json!(p.account_id));
            put("kind", json!(p.kind.name()));
            put("occurred_at", json!(p.occurred_at.to_rfc3339()));
            if let Some(env) = &p.environment {
                put("environment", json!(env));
            }
            match &p.kind {
                PaymentKind::CreditToppedUp {
                    amount,
                    currency,
                    grant,
                } => {
                    put("amount", json!(amount.to_string()));
                    put("currency", json!(currency));
                    if !grant.is_default() {
                        put("grant", grant_to_json(grant));
                    }
                }
                PaymentKind::PaymentSucceeded {
                    charge_id,
                    invoice_id,
                    amount,
                    currency,
                } => {
                    put("charge_id", json!(charge_id));
                    put("invoice_id", json!(invoice_id));
                    put("amount", json!(amount.to_string()));
                    put("currency", json!(currency));
                }
                PaymentKind::PaymentFailed {
                    charge_id,
                    invoice_id,
                    retryable,
                    reason,
                } => {
                    put("charge_id", json!(charge_id));
                    put("invoice_id", json!(invoice_id));
                    put("retryable", json!(retryable));
                    put("reason", json!(reason));
                }
                PaymentKind::PaymentRefunded {
                    amount,
                    currency,
                    reason,
                } => {
                    put("amount", json!(amount.to_string()));
                    put("currency", json!(currency));
                    put("reason", json!(reason));
                }
                PaymentKind::BankTransferReceived {
                    reference,
                    amount,
                    currency,
                } => {
                    put("reference", json!(reference));
                    put("amount", json!(amount.to_string()));
                    put("currency", json!(currency));
                }
                PaymentKind::PaymentMethodAttached {
                    token_ref,
                    brand,
                    last4,
                    expires,
                } => {
                    put("token_ref", json!(token_ref));
                    put("brand", json!(brand));
                    put("last4", json!(last4));
                    put("expires", json!(expires));
                }
                PaymentKind::PaymentMethodDetached { token_ref } => {
                    put("token_ref", json!(token_ref))
                }
            }
        }
        Input::Account(a) => {
            put("event_id", json!(a.event_id));
            put("account_id", json!(a.account_id));
            put("kind", json!(a.kind.name()));
            if let AccountKind::AccountOpened {
                plan_id,
                currency,
                timezone,
                tax_rate,
                billing_anchor,
                thresholds,
                invoice_at,
            } = &a.kind
            {
                put("plan_id", json!(plan_id));
                put("currency", json!(currency));
                put("timezone", json!(timezone));
                put("tax_rate", json!(tax_rate.to_string()));
                put("opened_at", json!(a.occurred_at.to_rfc3339()));
                if let Some(env) = &a.environment {
                    put("environment", json!(env));
                }
                if let Some(day) = anchor_text(*billing_anchor) {
                    put("billing_anchor", json!(day));
                }
                if !thresholds.is_empty() {
                    let amounts: Vec<String> = thresholds.iter().map(|t| t.to_string()).collect();
                    put("thresholds", json!(amounts));
                }
                if let Some(a) = invoice_at {
                    put("invoice_at", json!(a.to_string()));
                }
            } else {
                put("occurred_at", json!(a.occurred_at.to_rfc3339()));
                if let Some(env) = &a.environment {
                    put("environment", json!(env));
                }
                match &a.kind {
                    AccountKind::PlanChanged {
                        plan_id,
                        effective,
                        version,
                    } => {
                        put("plan_id", json!(plan_id));
                        if !effective.is_next_period() {
                            put("effective", json!(effective.name()));
                        }
                        if let Some(v) = version {
                            put("version", json!(v));
                        }
                    }
                    AccountKind::AdjustmentIssued {
                        adjustment,
                        amount,
                        currency,
                        reason,
                        invoice_id,
                        grant,
                    } => {
                        if !grant.is_default() {
                            put("grant", grant_to_json(grant));
                        }
                        let adjustment = match adjustment {
                            AdjustmentKind::CreditNote => "credit_note",
                            AdjustmentKind::Debit => "debit",
                        };
                        put("adjustment", json!(adjustment));
                        put("amount", json!(amount.to_string()));
                        put("currency", json!(currency));
                        put("reason", json!(reason));
                        if let Some(id) = invoice_id {
                            put("invoice_id", json!(id));
                        }
                    }
                    AccountKind::CouponApplied { coupon: c } => {
                        put("coupon_id", json!(c.coupon_id));
                        if let Some(p) = c.percent_off {
                            put("percent_off", json!(p.to_string()));
                        }
                        if let Some(a) = c.amount_off {
                            put("amount_off", json!(a.to_string()));
                        }
                        if let Some(cur) = &c.currency {
                            put("currency", json!(cur));
                        }
                        if let Some(n) = c.periods {
                            put("periods", json!(n));
                        }
                        if !c.charges.is_empty() {
                            put("charges", json!(c.charges));
                        }
                    }
                    AccountKind::ThresholdsSet {
                        thresholds,
                        currency,
                        invoice_at,
                        keeps_invoice_at,
                    } => {
                        let amounts: Vec<String> =
                            thresholds.iter().map(|t| t.to_string()).collect();
                        put("thresholds", json!(amounts));
                        put("currency", json!(currency));
                        // Absent keeps the account's; null clears it.
                        if !keeps_invoice_at {
                            put("invoice_at", json!(invoice_at.map(|a| a.to_string())));
                        }
                    }
                    AccountKind::AccountOpened { .. } | AccountKind::AccountClosed => {}
                }
            }
        }
    }
    Value::Object(m)
}

/// The pinned JSON shape of a grant's terms.
pub fn grant_to_json(g: &GrantTerms) -> Value {
    json!({
        "kind": g.kind.name(),
        "expires_at": g.expires_at.map(|t| t.to_rfc3339()),
        "priority": g.priority,
    })
}

/// The pinned JSON shape of a plan.
pub fn plan_to_json(plan: &Plan) -> Value {
    let model = |m: Model| match m {
        Model::PerUnit => "per_unit",
        Model::Graduated => "graduated",
        Model::Volume => "volume",
        Model::Package => "package",
    };
    json!({
        "plan_id": plan.plan_id,
        "version": plan.version,
        "currency": plan.currency.code(),
        "recurring_fee": plan.recurring_fee.to_string(),
        "minimum_spend": plan.minimum_spend.to_string(),
        "charges": plan.charges.iter().map(|c| json!({
            "metric": c.metric,
            "model": model(c.model),
            "unit_price": c.unit_price.to_string(),
            "package_size": c.package_size.map(|d| d.to_string()),
            "free_units": c.free_units.to_string(),
            "tiers": c.tiers.iter().map(|t| json!({
                "up_to": t.up_to.map(|d| d.to_string()),
                "unit_price": t.unit_price.to_string(),
                "flat_fee": t.flat_fee.to_string(),
            })).collect::<Vec<_>>(),
            "aggregation": c.aggregation.kind.name(),
            "aggregation_field": c.aggregation.field,
            "aggregation_percentile": c.aggregation.percentile.map(|d| d.to_string()),
            "aggregation_window": c.aggregation.window,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    /// One input of every kind, for round-trip tests here and in the codecs.
    pub(crate) fn sample_inputs() -> Vec<Input> {
        let at = ts("2026-03-01T10:00:00.25Z");
        let pay = |id: &str, kind| {
            Input::Payment(PaymentEvent {
                event_id: id.into(),
                account_id: "acct-1".into(),
                occurred_at: at,
                environment: None,
                kind,
            })
        };
        let acct = |id: &str, kind| {
            Input::Account(AccountCommand {
                event_id: id.into(),
                account_id: "acct-1".into(),
                occurred_at: at,
                environment: Some("prod".into()),
                kind,
            })
        };
        vec![
            Input::Usage(UsageRecorded {
                event_id: "u-1".into(),
                account_id: "acct-1".into(),
                subject: "app-7".into(),
                metric: "container.hours".into(),
                quantity: d("1.50"),
                occurred_at: at,
                environment: "prod".into(),
                attributes: [("region".to_string(), "eu".to_string())].into(),
            }),
            pay(
                "p-1",
                PaymentKind::CreditToppedUp {
                    amount: d("25.00"),
                    currency: "EUR".into(),
                    grant: Default::default(),
                },
            ),
            // Issue 13: a top-up with grant terms (version 2 of the schema).
            pay(
                "p-1g",
                PaymentKind::CreditToppedUp {
                    amount: d("10.00"),
                    currency: "EUR".into(),
                    grant: GrantTerms {
                        kind: GrantKind::Promotional,
                        expires_at: Some(ts("2026-06-01T00:00:00Z")),
                        priority: -2,
                    },
                },
            ),
            pay(
                "p-2",
                PaymentKind::PaymentSucceeded {
                    charge_id: "ch-1".into(),
                    invoice_id: "inv-1".into(),
                    amount: d("10"),
                    currency: "EUR".into(),
                },
            ),
            pay(
                "p-3",
                PaymentKind::PaymentFailed {
                    charge_id: "ch-1".into(),
                    invoice_id: "inv-1".into(),
                    retryable: true,
                    reason: "insufficient_funds".into(),
                },
            ),
            pay(
                "p-4",
                PaymentKind::PaymentRefunded {
                    amount: d("1.00"),
                    currency: "EUR".into(),
                    reason: "goodwill".into(),
                },
            ),
            pay(
                "p-5",
                PaymentKind::BankTransferReceived {
                    reference: "INV-2026-0001".into(),
                    amount: d("3.5"),
                    currency: "EUR".into(),
                },
            ),
            pay(
                "p-6",
                PaymentKind::PaymentMethodAttached {
                    token_ref: "psp:tok_1".into(),
                    brand: "visa".into(),
                    last4: "4242".into(),
                    expires: "2027-08".into(),
                },
            ),
            pay(
                "p-7",
                PaymentKind::PaymentMethodDetached {
                    token_ref: "psp:tok_1".into(),
                },
            ),
            acct(
                "a-1",
                AccountKind::AccountOpened {
                    plan_id: "pro".into(),
                    currency: "EUR".into(),
                    timezone: "Europe/Berlin".into(),
                    tax_rate: d("0.19"),
                    billing_anchor: Anchor::DayOfMonth(15),
                    thresholds: Vec::new(),
                    invoice_at: None,
                },
            ),
            acct(
                "a-1b",
                AccountKind::AccountOpened {
                    plan_id: "pro".into(),
                    currency: "JPY".into(),
                    timezone: "Asia/Tokyo".into(),
                    tax_rate: d("0.1"),
                    billing_anchor: Anchor::Calendar,
                    thresholds: Vec::new(),
                    invoice_at: None,
                },
            ),
            acct(
                "a-2",
                AccountKind::PlanChanged {
                    plan_id: "team".into(),
                    effective: PlanChangeEffective::NextPeriod,
                    version: None,
                },
            ),
            acct(
                "a-2b",
                AccountKind::PlanChanged {
                    plan_id: "team".into(),
                    effective: PlanChangeEffective::Immediately,
                    version: Some(2),
                },
            ),
            acct("a-3", AccountKind::AccountClosed),
            acct(
                "a-5",
                AccountKind::CouponApplied {
                    coupon: CouponTerms {
                        coupon_id: "WELCOME".into(),
                        percent_off: Some(d("12.5")),
                        periods: Some(3),
                        charges: vec!["api.calls".into()],
                        ..CouponTerms::default()
                    },
                },
            ),
            acct(
                "a-7",
                AccountKind::ThresholdsSet {
                    thresholds: vec![d("50.00"), d("100")],
                    currency: "EUR".into(),
                    invoice_at: None,
                    keeps_invoice_at: false,
                },
            ),
            acct(
                "a-6",
                AccountKind::CouponApplied {
                    coupon: CouponTerms {
                        coupon_id: "TENOFF".into(),
                        amount_off: Some(d("10.00")),
                        currency: Some("EUR".into()),
                        ..CouponTerms::default()
                    },
                },
            ),
            acct(
                "a-4",
                AccountKind::AdjustmentIssued {
                    adjustment: AdjustmentKind::CreditNote,
                    amount: d("5.00"),
                    currency: "EUR".into(),
                    reason: "outage".into(),
                    invoice_id: Some("inv-1".into()),
                    grant: Default::default(),
                },
            ),
        ]
    }

    pub(crate) fn sample_plan() -> Plan {
        Plan {
            plan_id: "pro".into(),
            currency: Currency::from_code("EUR").unwrap(),
            recurring_fee: d("19.00"),
            minimum_spend: d("0"),
            version: 1,
            charges: vec![
                Charge {
                    metric: "api.calls".into(),
                    model: Model::Graduated,
                    unit_price: d("0"),
                    package_size: None,
                    free_units: d("1000"),
                    tiers: vec![
                        Tier {
                            up_to: Some(d("10000")),
                            unit_price: d("0.001"),
                            flat_fee: d("0"),
                        },
                        Tier {
                            up_to: None,
                            unit_price: d("0.0005"),
                            flat_fee: d("2.00"),
                        },
                    ],
                    aggregation: Default::default(),
                },
                Charge {
                    metric: "disk.gb_hours".into(),
                    model: Model::Package,
                    unit_price: d("1.00"),
                    package_size: Some(d("100")),
                    free_units: d("0"),
                    tiers: vec![],
                    aggregation: Default::default(),
                },
            ],
        }
    }

    #[test]
    fn every_input_round_trips_through_its_json_shape() {
        for input in sample_inputs() {
            let line = input_to_json(&input).to_string();
            assert_eq!(parse_line(&line), Ok(Decoded::Input(input)), "{line}");
        }
        let plan = sample_plan();
        assert_eq!(
            parse_line(&plan_to_json(&plan).to_string()),
            Ok(Decoded::Plan(plan))
        );
    }

    #[test]
    fn pinned_usage_line_parses() {
        let line = r#"{"event_id":"e1","account_id":"a1","subject":"app","metric":"api.calls","quantity":"12",
            "occurred_at":"2026-01-31T23:00:00+01:00","environment":"prod","attributes":{"k":"v"}}"#;
        let Ok(Decoded::Input(Input::Usage(u))) = parse_line(line) else {
            panic!("not usage")
        };
        assert_eq!(u.quantity, d("12"));
        assert_eq!(u.occurred_at, ts("2026-01-31T22:00:00Z"));
        assert_eq!(u.attributes.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn account_opened_line_without_kind_parses() {
        let line = r#"{"event_id":"e1","account_id":"a1","plan_id":"pro","currency":"EUR","timezone":"UTC",
            "tax_rate":"0.2","opened_at":"2026-01-01T00:00:00Z","environment":"prod"}"#;
        let Ok(Decoded::Input(Input::Account(a))) = parse_line(line) else {
            panic!("not an account")
        };
        assert!(matches!(
            a.kind,
            AccountKind::AccountOpened {
                billing_anchor: Anchor::Calendar,
                ..
            }
        ));
        assert_eq!(a.environment.as_deref(), Some("prod"));
    }

    fn error_of(line: &str) -> String {
        parse_line(line)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn float_quantity_is_refused_with_a_clear_error() {
        let e = error_of(
            r#"{"event_id":"e","account_id":"a","subject":"s","metric":"m","quantity":1.5,"occurred_at":"2026-01-01T00:00:00Z","environment":"prod"}"#,
        );
        assert!(
            e.starts_with("quantity must be a decimal string, e.g. \"1.5\""),
            "{e}"
        );
        let e = error_of(
            r#"{"event_id":"e","account_id":"a","subject":"s","metric":"m","quantity":"1,5","occurred_at":"2026-01-01T00:00:00Z","environment":"prod"}"#,
        );
        assert!(e.starts_with("quantity must be a decimal string"), "{e}");
    }

    #[test]
    fn issue_13_thresholds_set_parses_from_the_pinned_shape_and_bad_ones_name_the_field() {
        let line = r#"{"event_id":"t1","account_id":"acct-a","kind":"thresholds_set","occurred_at":"2026-03-02T00:00:00Z","environment":"prod","thresholds":["50.00","100.00","250"],"currency":"EUR"}"#;
        let Ok(Decoded::Input(Input::Account(a))) = parse_line(line) else {
            panic!("{line}");
        };
        assert_eq!(
            a.kind,
            AccountKind::ThresholdsSet {
                thresholds: vec![d("50.00"), d("100.00"), d("250")],
                currency: "EUR".into(),
                invoice_at: None,
                // No `invoice_at` key: the account's stays.
                keeps_invoice_at: true,
            }
        );
        for (bad, expected) in [
            (
                r#""thresholds":[50]"#,
                "thresholds must be an array of exact decimal strings",
            ),
            (
                r#""thresholds":["5O"]"#,
                "thresholds[0] must be a decimal string",
            ),
            (r#""thresholds":"50""#, "thresholds must be an array"),
            (r#""thresholds":null"#, "thresholds is required"),
        ] {
            let l = line.replace(r#""thresholds":["50.00","100.00","250"]"#, bad);
            let e = error_of(&l);
            assert!(e.starts_with(expected), "{l}: {e}");
        }
        let e = error_of(&line.replace(r#","currency":"EUR""#, ""));
        assert!(e.starts_with("currency is required"), "{e}");
    }

    #[test]
    fn issue_13_invoice_at_and_alerts_on_account_opened_parse_from_the_pinned_shapes() {
        // The shapes README ("Threshold invoicing") pins.
        let set = r#"{"event_id":"t2","account_id":"acct-a","kind":"thresholds_set","occurred_at":"2026-03-02T00:00:00Z","environment":"prod","thresholds":["50.00"],"currency":"EUR","invoice_at":"200.00"}"#;
        let Ok(Decoded::Input(Input::Account(a))) = parse_line(set) else {
            panic!("{set}");
        };
        assert_eq!(
            a.kind,
            AccountKind::ThresholdsSet {
                thresholds: vec![d("50.00")],
                currency: "EUR".into(),
                invoice_at: Some(d("200.00")),
                keeps_invoice_at: false,
            }
        );
        let open = r#"{"event_id":"o1","account_id":"acct-a","plan_id":"pro","currency":"EUR","timezone":"Europe/Berlin","tax_rate":"0.19","opened_at":"2026-03-01T00:00:00Z","environment":"prod","thresholds":["50.00","100.00"],"invoice_at":"200.00"}"#;
        let Ok(Decoded::Input(Input::Account(a))) = parse_line(open) else {
            panic!("{open}");
        };
        let AccountKind::AccountOpened {
            thresholds,
            invoice_at,
            ..
        } = &a.kind
        else {
            panic!("not an opening: {:?}", a.kind)
        };
        assert_eq!(thresholds, &vec![d("50.00"), d("100.00")]);
        assert_eq!(invoice_at, &Some(d("200.00")));
        // Both optional: an opening without them has none (old producers).
        let bare = open.replace(
            r#","thresholds":["50.00","100.00"],"invoice_at":"200.00""#,
            "",
        );
        let Ok(Decoded::Input(Input::Account(a))) = parse_line(&bare) else {
            panic!("{bare}");
        };
        assert!(matches!(
            &a.kind,
            AccountKind::AccountOpened { thresholds, invoice_at: None, .. } if thresholds.is_empty()
        ));
        // Bad values name the field.
        let e = error_of(&set.replace(r#""invoice_at":"200.00""#, r#""invoice_at":200"#));
        assert!(e.starts_with("invoice_at"), "{e}");
        let e =
            error_of(&open.replace(r#""thresholds":["50.00","100.00"]"#, r#""thresholds":[50]"#));
        assert!(e.starts_with("thresholds"), "{e}");
        // And the line encodes to the newest Avro schema and decodes back.
        for line in [set, open] {
            let Ok(Decoded::Input(input)) = parse_line(line) else {
                panic!("{line}")
            };
            let catalog = crate::contracts::catalog::Catalog::load().unwrap();
            let bytes = catalog.encode_input(&input).unwrap();
            let back = crate::contracts::decode::Decoder::new(&catalog)
                .unwrap()
                .decode(&bytes)
                .unwrap();
            assert_eq!(back, Decoded::Input(input), "{line}");
        }
    }

    #[test]
    fn issue_13_grant_fields_parse_from_the_pinned_shape_and_bad_ones_name_the_field() {
        let line = r#"{"event_id":"t","account_id":"a","kind":"credit_topped_up","occurred_at":"2026-03-01T00:00:00Z","amount":"5.00","currency":"EUR","grant":{"kind":"promotional","expires_at":"2026-04-01T00:00:00Z","priority":3}}"#;
        let Ok(Decoded::Input(Input::Payment(p))) = parse_line(line) else {
            panic!("{line}");
        };
        let PaymentKind::CreditToppedUp { grant, .. } = p.kind else {
            panic!("not a top-up");
        };
        assert_eq!(
            grant,
            GrantTerms {
                kind: GrantKind::Promotional,
                expires_at: Some(ts("2026-04-01T00:00:00Z")),
                priority: 3,
            }
        );
        // Every grant field is optional: `{}` is paid, no expiry, priority 0.
        let empty = line.replace(
            r#"{"kind":"promotional","expires_at":"2026-04-01T00:00:00Z","priority":3}"#,
            "{}",
        );
        let Ok(Decoded::Input(Input::Payment(p))) = parse_line(&empty) else {
            panic!("{empty}");
        };
        assert!(matches!(p.kind, PaymentKind::CreditToppedUp { grant, .. } if grant.is_default()));
        for (bad, expected) in [
            (
                r#""grant":{"kind":"free"}"#,
                "grant.kind must be \"paid\" or \"promotional\"",
            ),
            (
                r#""grant":{"priority":"1"}"#,
                "grant.priority must be an integer",
            ),
            (
                r#""grant":{"expires_at":"soon"}"#,
                "grant.expires_at must be an RFC 3339 time",
            ),
            (
                r#""grant":{"expiry":"2026-04-01T00:00:00Z"}"#,
                "grant.expiry is not a known field",
            ),
            (r#""grant":"promotional""#, "grant must be an object"),
        ] {
            let line = format!(
                r#"{{"event_id":"t","account_id":"a","kind":"credit_topped_up","occurred_at":"2026-03-01T00:00:00Z","amount":"5.00","currency":"EUR",{bad}}}"#
            );
            let err = error_of(&line);
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn bad_lines_name_the_field_and_what_was_expected() {
        let cases = [
            (
                r#"{"event_id":"e","account_id":"a","subject":"s","metric":"m","quantity":"1","occurred_at":"soon","environment":"prod"}"#,
                "occurred_at must be an RFC 3339 time",
            ),
            (
                r#"{"event_id":"e","account_id":"a","subject":"s","metric":"m","quantity":"1","occurred_at":"2026-01-01T00:00:00Z"}"#,
                "environment is required",
            ),
            (
                r#"{"event_id":"e","account_id":"a","subject":"s","metric":"m","quantitiy":"1","quantity":"1","occurred_at":"2026-01-01T00:00:00Z","environment":"p"}"#,
                "quantitiy is not a known field",
            ),
            (
                r#"{"event_id":"e","account_id":"a","kind":"payment_failed","occurred_at":"2026-01-01T00:00:00Z","charge_id":"c","invoice_id":"i","retryable":"no","reason":"x"}"#,
                "retryable must be true or false",
            ),
            (
                r#"{"event_id":"e","account_id":"a","kind":"refund","occurred_at":"2026-01-01T00:00:00Z"}"#,
                "kind \"refund\" is not a known kind",
            ),
            (
                r#"{"plan_id":"p","currency":"EUR","charges":[{"metric":"m","model":"tiered"}]}"#,
                "charges[0].model must be one of per_unit",
            ),
            (
                r#"{"plan_id":"p","currency":"EUR","charges":[{"metric":"m","model":"volume","tiers":[{"up_to":10,"unit_price":"1"}]}]}"#,
                "charges[0].tiers[0].up_to must be a decimal string",
            ),
            (
                r#"{"plan_id":"p","currency":"XXX"}"#,
                "currency \"XXX\" is not a known ISO 4217",
            ),
            (
                r#"{"event_id":"e","account_id":"a","plan_id":"pro","currency":"EUR","timezone":"UTC","tax_rate":"0.2","opened_at":"2026-01-01T00:00:00Z","environment":"prod","billing_anchor":"32"}"#,
                "billing_anchor must be \"calendar\"",
            ),
            (r#"{"hello":"world"}"#, "cannot tell what this record is"),
            (r#"[1,2]"#, "a line must be a JSON object"),
            (r#"{"event_id":"#, "invalid JSON"),
        ];
        for (line, expected) in cases {
            let e = error_of(line);
            assert!(
                e.contains(expected),
                "{line}\n  gave {e:?}\n  expected {expected:?}"
            );
        }
    }

    #[test]
    fn anchors_parse_strictly() {
        assert_eq!(parse_anchor("calendar"), Some(Anchor::Calendar));
        assert_eq!(parse_anchor("1"), Some(Anchor::DayOfMonth(1)));
        assert_eq!(parse_anchor("31"), Some(Anchor::DayOfMonth(31)));
        for bad in ["0", "32", "01", "", "+1", "1.0", "calendar "] {
            assert_eq!(parse_anchor(bad), None, "{bad}");
        }
    }

    #[test]
    fn issue_13_plan_changed_and_versioned_plan_json_shapes_parse_as_pinned_in_the_readme() {
        // The lines of README "Plan changes and plan versions", verbatim.
        let immediate = r#"{"event_id":"c1","account_id":"acct-a","kind":"plan_changed","plan_id":"pro","version":2,"effective":"immediately","occurred_at":"2026-04-17T00:00:00+09:00","environment":"prod"}"#;
        let old = r#"{"event_id":"c2","account_id":"acct-a","kind":"plan_changed","plan_id":"pro","occurred_at":"2026-04-17T00:00:00Z","environment":"prod"}"#;
        let plan_v2 = r#"{"plan_id":"pro","version":2,"currency":"EUR","recurring_fee":"120.00","charges":[{"metric":"api.calls","model":"per_unit","unit_price":"0.002"}]}"#;
        let plan_old = r#"{"plan_id":"pro","currency":"EUR","recurring_fee":"90.00","charges":[]}"#;
        let readme = include_str!("../../README.md");
        for line in [immediate, old, plan_v2, plan_old] {
            assert!(readme.contains(line), "not pinned in README: {line}");
        }
        let kind = |line: &str| match parse_line(line) {
            Ok(Decoded::Input(Input::Account(a))) => a.kind,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            kind(immediate),
            AccountKind::PlanChanged {
                plan_id: "pro".into(),
                effective: PlanChangeEffective::Immediately,
                version: Some(2),
            }
        );
        // Without the new fields: next_period, the latest version.
        assert_eq!(
            kind(old),
            AccountKind::PlanChanged {
                plan_id: "pro".into(),
                effective: PlanChangeEffective::NextPeriod,
                version: None,
            }
        );
        let version = |line: &str| match parse_line(line) {
            Ok(Decoded::Plan(p)) => p.version,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(version(plan_v2), 2);
        assert_eq!(version(plan_old), 1);
        // Bad values name the field.
        let e = parse_line(&immediate.replace("immediately", "now")).unwrap_err();
        assert!(e.to_string().contains("effective"), "{e}");
        let e = parse_line(&immediate.replace(r#""version":2"#, r#""version":"2""#)).unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
        let e = parse_line(&plan_v2.replace(r#""version":2"#, r#""version":-1"#)).unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
    }
}
