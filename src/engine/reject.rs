//! Why an input was not applied. Every rejection becomes a dead-letter
//! record with its kind and a readable reason; nothing is dropped silently.

use super::time::Timestamp;

/// A typed reason for refusing an input. `kind()` is a small fixed set of
/// names (a metrics label and the DLQ `error_kind`); `Display` is the
/// human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Same event id seen before with a different payload.
    #[error("event id {event_id:?} was already applied with a different payload")]
    Conflict { event_id: String },
    /// The event claims to happen later than the processing clock allows.
    #[error(
        "occurred_at {occurred_at} is more than the allowed skew after the processing clock {now}"
    )]
    FromFuture {
        occurred_at: Timestamp,
        now: Timestamp,
    },
    /// The event happened before its account was opened.
    #[error("occurred_at {occurred_at} is before the account opened at {opened_at}")]
    BeforeAccountOpened {
        occurred_at: Timestamp,
        opened_at: Timestamp,
    },
    /// Usage after the account was closed.
    #[error("the account was closed at {closed_at}")]
    AccountClosed { closed_at: Timestamp },
    /// No account with this id has been opened.
    #[error("account {account_id:?} is not open")]
    UnknownAccount { account_id: String },
    /// `AccountOpened` for an account that already exists.
    #[error("account {account_id:?} is already open")]
    AccountAlreadyOpen { account_id: String },
    /// The plan id is not in the price book.
    #[error("plan {plan_id:?} is not in the price book")]
    UnknownPlan { plan_id: String },
    /// The account's plan for that period does not price this metric.
    #[error("metric {metric:?} is not priced by plan {plan_id:?}")]
    UnknownMetric { metric: String, plan_id: String },
    /// Quantity negative, too large, or would overflow the period total.
    #[error("quantity {quantity}: {reason}")]
    InvalidQuantity { quantity: String, reason: String },
    /// Money amount not positive, finer than the minor unit, or too large.
    #[error("amount {amount}: {reason}")]
    InvalidAmount { amount: String, reason: String },
    /// The event's currency is not the account's.
    #[error("currency {got} does not match the account's {expected}")]
    CurrencyMismatch { expected: String, got: String },
    /// A free-text field looks like a payment card number (masked here).
    #[error("field {field} looks like a card number: {masked:?}")]
    CardNumber { field: String, masked: String },
    /// The event belongs to another environment than this instance serves,
    /// or names none (`got: None`): it is never applied (SPEC §7).
    #[error("{}", wrong_environment(expected, got.as_deref()))]
    WrongEnvironment {
        expected: String,
        got: Option<String>,
    },
    /// A payment result for a charge this account never requested.
    #[error("charge {charge_id:?} of invoice {invoice_id:?} is not known for this account")]
    UnknownCharge {
        charge_id: String,
        invoice_id: String,
    },
    /// A field has a value the engine cannot use.
    #[error("field {field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// Usage for a period older than the late window kept in state.
    #[error("usage for the period starting {period_start} is older than the late-usage window")]
    TooLate { period_start: Timestamp },
    /// Older than the engine accepts: `occurred_at` before the late window
    /// (the id of such an input may be forgotten by dedup, so it could be a
    /// redelivery), or an opening backdated beyond `billing.max_backdating`.
    /// Kind `too_late`.
    #[error("occurred_at {occurred_at} is before {earliest}, the earliest {limit}")]
    TooOld {
        occurred_at: Timestamp,
        earliest: Timestamp,
        limit: String,
    },
    /// A refund larger than the account's paid credit balance
    /// (promotional credit is never refunded).
    #[error("refund of {amount} exceeds the credit balance {balance} (paid credit; promotional credit is not refundable)")]
    RefundExceedsCredit { amount: String, balance: String },
    /// A top-up or credit note that needs a new credit grant while the
    /// account holds as many live grants as it may.
    #[error("the account holds {live} live credit grants, as many as billing.max_credit_grants ({limit}) allows; credit with the terms of an existing grant (kind, priority, expires_at) merges into it, or wait for grants to be used or expire")]
    TooManyGrants { live: usize, limit: usize },
    /// A payment method command that does not match the attached method.
    #[error("payment method {token_ref:?} is not the one attached")]
    UnknownPaymentMethod { token_ref: String },
    /// The record's Kafka key is not the id its payload is about (the
    /// account id on input topics, the plan id on the plans topic), or it
    /// has none: the key decides the partition, and so the owner.
    #[error(
        "record key {} is not the payload's {field} {expected:?}; the topic is keyed by {field}",
        key.as_deref().map_or_else(|| "(none)".to_string(), |k| format!("{k:?}"))
    )]
    KeyMismatch {
        key: Option<String>,
        field: &'static str,
        expected: String,
    },
    /// The record is not in the partition its key hashes to under the
    /// producers' partitioner (`kafka.input_partitioner`): the account's
    /// other records, and its state, may be owned by another member.
    #[error("record key {key:?} hashes to partition {expected} of {partitions} under {partitioner} (kafka.input_partitioner), but the record is in partition {partition}: another member may own this account; produce it keyed with that partitioner (librdkafka: partitioner=murmur2_random for murmur2)")]
    WrongPartition {
        key: String,
        partition: u32,
        expected: u32,
        partitions: u32,
        partitioner: &'static str,
    },
}

fn wrong_environment(expected: &str, got: Option<&str>) -> String {
    match got {
        Some(got) => format!("event for environment {got:?} reached an instance serving {expected:?}"),
        None => format!(
            "event names no environment; this instance serves {expected:?} and applies only events that name it"
        ),
    }
}

impl Rejection {
    /// Stable snake_case name of the reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Conflict { .. } => "conflict",
            Rejection::FromFuture { .. } => "from_future",
            Rejection::BeforeAccountOpened { .. } => "before_account_opened",
            Rejection::AccountClosed { .. } => "account_closed",
            Rejection::UnknownAccount { .. } => "unknown_account",
            Rejection::AccountAlreadyOpen { .. } => "account_already_open",
            Rejection::UnknownPlan { .. } => "unknown_plan",
            Rejection::UnknownMetric { .. } => "unknown_metric",
            Rejection::InvalidQuantity { .. } => "invalid_quantity",
            Rejection::InvalidAmount { .. } => "invalid_amount",
            Rejection::CurrencyMismatch { .. } => "currency_mismatch",
            Rejection::CardNumber { .. } => "card_number",
            Rejection::WrongEnvironment { .. } => "wrong_environment",
            Rejection::UnknownCharge { .. } => "unknown_charge",
            Rejection::InvalidField { .. } => "invalid_field",
            Rejection::TooLate { .. } | Rejection::TooOld { .. } => "too_late",
            Rejection::RefundExceedsCredit { .. } => "refund_exceeds_credit",
            Rejection::TooManyGrants { .. } => "too_many_grants",
            Rejection::UnknownPaymentMethod { .. } => "unknown_payment_method",
            Rejection::KeyMismatch { .. } => "key_mismatch",
            Rejection::WrongPartition { .. } => "wrong_partition",
        }
    }

    /// Every kind, for dashboards and tests that enumerate reasons.
    pub const KINDS: &'static [&'static str] = &[
        "conflict",
        "from_future",
        "before_account_opened",
        "account_closed",
        "unknown_account",
        "account_already_open",
        "unknown_plan",
        "unknown_metric",
        "invalid_quantity",
        "invalid_amount",
        "currency_mismatch",
        "card_number",
        "wrong_environment",
        "unknown_charge",
        "invalid_field",
        "too_late",
        "refund_exceeds_credit",
        "too_many_grants",
        "unknown_payment_method",
        "key_mismatch",
        "wrong_partition",
    ];
}
