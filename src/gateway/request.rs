//! The two edges of the emulator's contract: a `ChargeRequested` record
//! (Confluent-framed Avro, as `billstream run` publishes it on
//! `billing.charges.v1`) decoded into a `ChargeRequest`, or rejected with a
//! dead-letter kind and reason; and a decided outcome encoded as the
//! `PaymentSucceeded` / `PaymentFailed` input the engine reads from
//! `billing.payments.v1`. The result's bytes are a function of the request
//! and the outcome only, so a result published again (on purpose, or for a
//! redelivered request) is byte-identical and the engine drops it as a
//! duplicate.

use std::str::FromStr;

use apache_avro::types::Value;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::outcome::{Outcome, Verdict};
use crate::contracts::errors::DecodeError;
use crate::contracts::{framing, Catalog};
use crate::engine::events::{Input, PaymentEvent, PaymentKind};
use crate::engine::time::Timestamp;

/// The namespace of result event ids. Never change it: ids would change.
pub const RESULT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x4a7e_61c2_93d5_4f08_b6e1_27c9_d0a3_58f4);

/// A charge request as the emulator uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub event_id: String,
    pub account_id: String,
    /// When the engine asked (its processing instant).
    pub occurred_at: Timestamp,
    /// The idempotency key: one result per `charge_id`, ever.
    pub charge_id: String,
    pub invoice_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub token_ref: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A request the emulator cannot answer: a dead letter of this kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Machine-readable kind (a `DecodeError::kind()`, `invalid_field`,
    /// `key_mismatch` or `unknown_provider`).
    pub kind: &'static str,
    pub reason: String,
}

impl Rejected {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Rejected {
        Rejected {
            kind,
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for Rejected {
    fn from(e: DecodeError) -> Rejected {
        Rejected::new(e.kind(), e.to_string())
    }
}

/// Decode the record (`key`, `bytes`) of the charges topic.
pub fn decode_request(
    catalog: &Catalog,
    key: Option<&[u8]>,
    bytes: &[u8],
) -> Result<ChargeRequest, Rejected> {
    let (id, mut body) = framing::split(bytes).map_err(|e| match e {
        DecodeError::BadMagic(b) => Rejected::new(
            "bad_magic",
            format!(
                "first byte 0x{b:02x} is not 0x00: not a Confluent-framed Avro ChargeRequested"
            ),
        ),
        other => Rejected::from(other),
    })?;
    let entry = catalog
        .by_id(id)
        .filter(|e| e.record == "ChargeRequested")
        .ok_or_else(|| {
            Rejected::new(
                "unknown_schema_id",
                format!("schema id {id} is not a ChargeRequested schema of this billstream"),
            )
        })?;
    let value = apache_avro::from_avro_datum(&entry.schema, &mut body, None)
        .map_err(|e| Rejected::new("body_mismatch", format!("not a ChargeRequested body: {e}")))?;
    if !body.is_empty() {
        return Err(Rejected::new(
            "body_mismatch",
            format!("{} bytes after the ChargeRequested body", body.len()),
        ));
    }
    let Value::Record(fields) = value else {
        return Err(Rejected::new("body_mismatch", "not a record"));
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let text = |name: &str| -> Result<String, Rejected> {
        match field(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(Rejected::new(
                "invalid_field",
                format!("{name}: missing or empty"),
            )),
        }
    };
    let occurred_at = match field("occurred_at") {
        Some(Value::TimestampMicros(t)) => Timestamp(*t),
        _ => return Err(Rejected::new("invalid_field", "occurred_at: missing")),
    };
    let attempt = match field("attempt") {
        Some(Value::Int(n)) if *n >= 1 => *n as u32,
        _ => {
            return Err(Rejected::new(
                "invalid_field",
                "attempt: must be at least 1",
            ))
        }
    };
    let amount_text = text("amount")?;
    let amount = Decimal::from_str(&amount_text)
        .ok()
        .filter(|a| !a.is_sign_negative())
        .ok_or_else(|| {
            Rejected::new(
                "invalid_field",
                format!("amount: {amount_text:?} is not a non-negative decimal"),
            )
        })?;
    let currency = text("currency")?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Rejected::new(
            "invalid_field",
            format!("currency: {currency:?} is not an ISO 4217 code"),
        ));
    }
    let request = ChargeRequest {
        event_id: text("event_id")?,
        account_id: text("account_id")?,
        occurred_at,
        charge_id: text("charge_id")?,
        invoice_id: text("invoice_id")?,
        amount,
        currency,
        token_ref: text("token_ref")?,
        attempt,
    };
    if key != Some(request.account_id.as_bytes()) {
        return Err(Rejected::new(
            "key_mismatch",
            format!(
                "record key {:?} is not the payload's account_id {:?}",
                key.map(String::from_utf8_lossy).unwrap_or_default(),
                request.account_id
            ),
        ));
    }
    Ok(request)
}

/// The event id of the result of `charge_id`: the same for every result
/// the emulator ever gives that charge.
pub fn result_event_id(charge_id: &str) -> String {
    Uuid::new_v5(
        &RESULT_ID_NAMESPACE,
        format!("gateway/{charge_id}").as_bytes(),
    )
    .to_string()
}

/// The charge result of `request` decided as `outcome`, for `environment`.
pub fn result_event(request: &ChargeRequest, outcome: &Outcome, environment: &str) -> Input {
    let kind = match &outcome.verdict {
        Verdict::Succeeded => PaymentKind::PaymentSucceeded {
            charge_id: request.charge_id.clone(),
            invoice_id: request.invoice_id.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
        },
        Verdict::Declined { code, retryable } => PaymentKind::PaymentFailed {
            charge_id: request.charge_id.clone(),
            invoice_id: request.invoice_id.clone(),
            retryable: *retryable,
            reason: code.clone(),
        },
    };
    let latency = i64::try_from(outcome.latency.as_micros()).unwrap_or(i64::MAX);
    Input::Payment(PaymentEvent {
        event_id: result_event_id(&request.charge_id),
        account_id: request.account_id.clone(),
        occurred_at: request.occurred_at.plus(latency),
        environment: Some(environment.to_string()),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gateway::outcome::Verdict;

    pub(crate) fn request_bytes(catalog: &Catalog, fields: serde_json::Value) -> Vec<u8> {
        catalog
            .encode_json("ChargeRequested", &fields, &[])
            .unwrap()
    }

    fn fields() -> serde_json::Value {
        json!({"event_id": "e-1", "causation_id": "timer:x", "account_id": "acct-1",
               "occurred_at": "2026-03-01T01:00:00Z", "charge_id": "inv_acct-1_00001/attempt-1",
               "invoice_id": "inv_acct-1_00001", "amount": "33.00", "currency": "EUR",
               "token_ref": "tok_acme_1", "attempt": 1})
    }

    #[test]
    fn a_charge_request_decodes_into_its_fields() {
        let catalog = Catalog::shared().unwrap();
        let r =
            decode_request(catalog, Some(b"acct-1"), &request_bytes(catalog, fields())).unwrap();
        assert_eq!(r.charge_id, "inv_acct-1_00001/attempt-1");
        assert_eq!(r.amount, Decimal::from_str("33.00").unwrap());
        assert_eq!(r.attempt, 1);
        assert_eq!(
            r.occurred_at,
            Timestamp::parse_rfc3339("2026-03-01T01:00:00Z").unwrap()
        );
    }

    #[test]
    fn malformed_requests_are_rejected_with_a_kind_and_reason() {
        let catalog = Catalog::shared().unwrap();
        let with = |k: &str, v: serde_json::Value| {
            let mut f = fields();
            f[k] = v;
            request_bytes(catalog, f)
        };
        let other_record = catalog
            .encode_json(
                "CreditToppedUp",
                &json!({"event_id": "x", "account_id": "acct-1", "occurred_at": "2026-03-01T00:00:00Z",
                        "environment": null, "amount": "1.00", "currency": "EUR"}),
                &[],
            )
            .unwrap();
        let good = request_bytes(catalog, fields());
        /// (record bytes, key, the dead-letter kind expected).
        type Case<'a> = (Vec<u8>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Case> = vec![
            (b"garbage".to_vec(), Some(b"acct-1"), "bad_magic"),
            (vec![0, 0], Some(b"acct-1"), "too_short"),
            (other_record, Some(b"acct-1"), "unknown_schema_id"),
            (
                good[..good.len() - 3].to_vec(),
                Some(b"acct-1"),
                "body_mismatch",
            ),
            (
                [&good[..], &[1, 2]].concat(),
                Some(b"acct-1"),
                "body_mismatch",
            ),
            (
                with("amount", json!("12,30")),
                Some(b"acct-1"),
                "invalid_field",
            ),
            (
                with("amount", json!("-1.00")),
                Some(b"acct-1"),
                "invalid_field",
            ),
            (with("attempt", json!(0)), Some(b"acct-1"), "invalid_field"),
            (
                with("charge_id", json!("")),
                Some(b"acct-1"),
                "invalid_field",
            ),
            (
                with("currency", json!("euro")),
                Some(b"acct-1"),
                "invalid_field",
            ),
            (good.clone(), Some(b"acct-2"), "key_mismatch"),
            (good.clone(), None, "key_mismatch"),
        ];
        for (bytes, key, kind) in cases {
            let r = decode_request(catalog, key, &bytes).unwrap_err();
            assert_eq!(r.kind, kind, "{}", r.reason);
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn results_answer_the_charge_and_are_dated_request_plus_latency() {
        let catalog = Catalog::shared().unwrap();
        let r =
            decode_request(catalog, Some(b"acct-1"), &request_bytes(catalog, fields())).unwrap();
        let declined = Outcome {
            verdict: Verdict::Declined {
                code: "insufficient_funds".into(),
                retryable: true,
            },
            latency: std::time::Duration::from_millis(250),
            duplicate_after: None,
            held_back: None,
        };
        let Input::Payment(p) = result_event(&r, &declined, "prod") else {
            panic!("a payment event");
        };
        assert_eq!(p.account_id, "acct-1");
        assert_eq!(p.environment.as_deref(), Some("prod"));
        assert_eq!(p.occurred_at, r.occurred_at.plus(250_000));
        assert_eq!(p.event_id, result_event_id(&r.charge_id));
        assert_eq!(
            p.kind,
            PaymentKind::PaymentFailed {
                charge_id: r.charge_id.clone(),
                invoice_id: r.invoice_id.clone(),
                retryable: true,
                reason: "insufficient_funds".into()
            }
        );
        let ok = Outcome {
            verdict: Verdict::Succeeded,
            ..declined
        };
        let Input::Payment(p) = result_event(&r, &ok, "prod") else {
            panic!("a payment event");
        };
        assert!(
            matches!(p.kind, PaymentKind::PaymentSucceeded { amount, .. } if amount == r.amount)
        );
        // Each charge has its own result id; a charge always the same one.
        assert_eq!(
            result_event_id("a/attempt-1"),
            result_event_id("a/attempt-1")
        );
        assert_ne!(
            result_event_id("a/attempt-1"),
            result_event_id("a/attempt-2")
        );
    }
}
