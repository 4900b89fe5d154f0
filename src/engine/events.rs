//! What goes into the engine and what comes out of it.
//!
//! Inputs are the decoded records of the input topics; `DomainEvent`s are
//! the state changes the fold produces, in order, one journal entry each.
//! Output records for the other topics are derived from domain events by
//! the contracts layer, so nothing here knows about Avro or JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::credit::{GrantDraw, GrantKind, GrantRef, GrantTerms};
use super::discount::CouponTerms;
use super::money::Minor;
use super::time::{Anchor, Period, Timestamp};

/// `billing.usage.v1`: one measured use of a metric by a subject.
/// (`Default` is an empty record: a buffer to decode into.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecorded {
    pub event_id: String,
    pub account_id: String,
    pub subject: String,
    pub metric: String,
    pub quantity: Decimal,
    pub occurred_at: Timestamp,
    pub environment: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `billing.payments.v1`: money movements and payment-method changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub event_id: String,
    pub account_id: String,
    pub occurred_at: Timestamp,
    /// Optional on payment events: the account's environment is checked
    /// anyway; when present it must match the instance's.
    #[serde(default)]
    pub environment: Option<String>,
    pub kind: PaymentKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PaymentKind {
    CreditToppedUp {
        amount: Decimal,
        currency: String,
        /// Kind, expiry and priority of the credit (default: paid, no
        /// expiry, priority 0; left out when default).
        #[serde(default, skip_serializing_if = "GrantTerms::is_default")]
        grant: GrantTerms,
    },
    PaymentSucceeded {
        charge_id: String,
        invoice_id: String,
        amount: Decimal,
        currency: String,
    },
    PaymentFailed {
        charge_id: String,
        invoice_id: String,
        retryable: bool,
        reason: String,
    },
    /// Money paid back to the customer out of their credit balance.
    PaymentRefunded {
        amount: Decimal,
        currency: String,
        reason: String,
    },
    BankTransferReceived {
        reference: String,
        amount: Decimal,
        currency: String,
    },
    PaymentMethodAttached {
        token_ref: String,
        brand: String,
        last4: String,
        /// Last month the method is valid, "YYYY-MM".
        expires: String,
    },
    PaymentMethodDetached {
        token_ref: String,
    },
}

impl PaymentKind {
    pub fn name(&self) -> &'static str {
        match self {
            PaymentKind::CreditToppedUp { .. } => "credit_topped_up",
            PaymentKind::PaymentSucceeded { .. } => "payment_succeeded",
            PaymentKind::PaymentFailed { .. } => "payment_failed",
            PaymentKind::PaymentRefunded { .. } => "payment_refunded",
            PaymentKind::BankTransferReceived { .. } => "bank_transfer_received",
            PaymentKind::PaymentMethodAttached { .. } => "payment_method_attached",
            PaymentKind::PaymentMethodDetached { .. } => "payment_method_detached",
        }
    }
}

/// `billing.accounts.v1`: account lifecycle and money corrections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCommand {
    pub event_id: String,
    pub account_id: String,
    pub occurred_at: Timestamp,
    #[serde(default)]
    pub environment: Option<String>,
    pub kind: AccountKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// Money given back: becomes account credit.
    CreditNote,
    /// Money owed: a line on the next invoice.
    Debit,
}

/// When a `PlanChanged` takes effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanChangeEffective {
    /// At the start of the period after the one it occurred in.
    #[default]
    NextPeriod,
    /// At `occurred_at`: the rest of the period on the new plan.
    Immediately,
}

impl PlanChangeEffective {
    pub fn is_next_period(&self) -> bool {
        *self == PlanChangeEffective::NextPeriod
    }

    pub fn name(self) -> &'static str {
        match self {
            PlanChangeEffective::NextPeriod => "next_period",
            PlanChangeEffective::Immediately => "immediately",
        }
    }

    pub fn from_name(name: &str) -> Option<PlanChangeEffective> {
        match name {
            "next_period" => Some(PlanChangeEffective::NextPeriod),
            "immediately" => Some(PlanChangeEffective::Immediately),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountKind {
    AccountOpened {
        plan_id: String,
        currency: String,
        timezone: String,
        tax_rate: Decimal,
        #[serde(default)]
        billing_anchor: Anchor,
        /// Spend alerts from the opening on, as a `ThresholdsSet` gives
        /// them (absent: none): major units of `currency`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        thresholds: Vec<Decimal>,
        /// Threshold invoicing from the opening on (absent: none): see
        /// `interim.rs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoice_at: Option<Decimal>,
    },
    /// A move to another plan (`plan_change.rs`): at the next period
    /// start, or at once with both recurring fees prorated.
    PlanChanged {
        plan_id: String,
        /// When it takes effect (default `next_period`, as before the field).
        #[serde(default, skip_serializing_if = "PlanChangeEffective::is_next_period")]
        effective: PlanChangeEffective,
        /// The plan version moved to; `None`: the latest when applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
    AccountClosed,
    AdjustmentIssued {
        adjustment: AdjustmentKind,
        amount: Decimal,
        currency: String,
        reason: String,
        #[serde(default)]
        invoice_id: Option<String>,
        /// A credit note's grant fields (as a top-up's); a debit has none.
        #[serde(default, skip_serializing_if = "GrantTerms::is_default")]
        grant: GrantTerms,
    },
    /// A coupon for the account's invoices from the current draft on
    /// (replacing any coupon it had): see `discount.rs`.
    CouponApplied {
        coupon: CouponTerms,
    },
    /// The account's spend alerts (replacing those it had; empty: none):
    /// amounts in major units of `currency` (the account's) that the
    /// running draft's subtotal is watched for: see `alerts.rs`.
    ThresholdsSet {
        thresholds: Vec<Decimal>,
        currency: String,
        /// Threshold invoicing (`interim.rs`): an interim invoice is issued
        /// whenever what has accrued on the draft and is not invoiced yet
        /// reaches this amount; `None`: none (the command replaces it too,
        /// unless `keeps_invoice_at`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoice_at: Option<Decimal>,
        /// The command does not speak of `invoice_at` (a version 1 record,
        /// written before the field existed, or a JSON line without the
        /// key): the account's stays as it is and `invoice_at` is `None`.
        /// An explicit null (version 2, JSON `null`) clears it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keeps_invoice_at: bool,
    },
}

impl AccountKind {
    pub fn name(&self) -> &'static str {
        match self {
            AccountKind::AccountOpened { .. } => "account_opened",
            AccountKind::PlanChanged { .. } => "plan_changed",
            AccountKind::AccountClosed => "account_closed",
            AccountKind::AdjustmentIssued { .. } => "adjustment_issued",
            AccountKind::CouponApplied { .. } => "coupon_applied",
            AccountKind::ThresholdsSet { .. } => "thresholds_set",
        }
    }
}

/// Any input the fold accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    Usage(UsageRecorded),
    Payment(PaymentEvent),
    Account(AccountCommand),
}

impl Input {
    pub fn event_id(&self) -> &str {
        match self {
            Input::Usage(u) => &u.event_id,
            Input::Payment(p) => &p.event_id,
            Input::Account(a) => &a.event_id,
        }
    }

    pub fn account_id(&self) -> &str {
        match self {
            Input::Usage(u) => &u.account_id,
            Input::Payment(p) => &p.account_id,
            Input::Account(a) => &a.account_id,
        }
    }

    pub fn occurred_at(&self) -> Timestamp {
        match self {
            Input::Usage(u) => u.occurred_at,
            Input::Payment(p) => p.occurred_at,
            Input::Account(a) => a.occurred_at,
        }
    }

    /// Short name of the input kind, for metrics and DLQ records.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Input::Usage(_) => "usage_recorded",
            Input::Payment(p) => p.kind.name(),
            Input::Account(a) => a.kind.name(),
        }
    }
}

/// Kind of an invoice line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Usage of one metric in the invoice's own period.
    Usage,
    /// Usage that arrived after its period's invoice: the difference
    /// between the period's charge on its new total and what was billed.
    LateUsage,
    /// True-up to the plan's minimum spend for a period.
    MinimumSpend,
    /// The plan's recurring fee, charged in advance for `for_period`.
    RecurringFee,
    /// A debit adjustment issued by support or accounting.
    Adjustment,
    /// The account's coupon: a negative amount, before tax (`discount.rs`).
    Discount,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub kind: LineKind,
    #[serde(default)]
    pub metric: Option<String>,
    pub quantity: Decimal,
    #[serde(default)]
    pub unit_price: Option<Decimal>,
    pub amount: Minor,
    pub for_period: Period,
    /// Quantity by subject (app, bucket…), for the reader.
    #[serde(default)]
    pub subjects: BTreeMap<String, Decimal>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An issued, immutable invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedInvoice {
    pub invoice_id: String,
    pub number: String,
    pub period: Period,
    pub issued_at: Timestamp,
    pub due_at: Timestamp,
    pub currency: String,
    pub lines: Vec<Line>,
    pub subtotal: Minor,
    pub tax: Minor,
    pub total: Minor,
    /// Credit applied at issue, of every kind.
    pub credit_applied: Minor,
    /// The promotional part of `credit_applied`; the rest is paid credit.
    #[serde(default, skip_serializing_if = "Minor::is_zero")]
    pub credit_applied_promotional: Minor,
    pub amount_due: Minor,
    /// An interim invoice of threshold invoicing (`interim.rs`): it bills
    /// what had accrued in its period, and a later invoice of the same
    /// period bills the rest. `false` for a period's final invoice (and in
    /// invoices stored before the field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interim: bool,
}

impl IssuedInvoice {
    /// The paid part of `credit_applied`.
    pub fn credit_applied_paid(&self) -> Minor {
        self.credit_applied
            .saturating_sub(self.credit_applied_promotional)
    }
}

/// Why dunning stopped for an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DunningStop {
    /// The gateway said retrying cannot help (expired card, revoked mandate).
    NonRetryable,
    /// Every retry of the schedule failed.
    Exhausted,
}

/// Where credit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditSource {
    TopUp,
    Overpayment,
    CreditNote,
    UnmatchedTransfer,
    NegativeInvoice,
}

/// A state change of one account. Every one is a journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    AccountOpened {
        plan_id: String,
        currency: String,
        timezone: String,
        tax_rate: Decimal,
        anchor: Anchor,
        opened_at: Timestamp,
    },
    PlanChangeScheduled {
        plan_id: String,
        effective_at: Timestamp,
    },
    PlanChanged {
        from_plan_id: String,
        plan_id: String,
        effective_at: Timestamp,
        /// Versions moved from and to (1 in entries from before versions).
        #[serde(default = "super::plan::first_version")]
        from_version: u32,
        #[serde(default = "super::plan::first_version")]
        version: u32,
        /// Effective at once mid-period (`effective: immediately`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        immediate: bool,
    },
    AccountClosed {
        closed_at: Timestamp,
    },
    /// Usage added to a period; the input's `event_id` is the entry's
    /// `causation_id`. Names are shared with the account state, not copied.
    UsageApplied {
        subject: Arc<str>,
        metric: Arc<str>,
        quantity: Decimal,
        occurred_at: Timestamp,
        period_start: Timestamp,
        /// The period's invoice was already issued: billed as a late line.
        late: bool,
    },
    InvoiceOpened {
        invoice_id: String,
        period: Period,
    },
    InvoiceIssued {
        invoice: Box<IssuedInvoice>,
    },
    CreditAdded {
        source: CreditSource,
        amount: Minor,
        balance: Minor,
        /// The grant it went to (new or merged into) and its terms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<GrantRef>,
    },
    CreditApplied {
        invoice_id: String,
        amount: Minor,
        balance: Minor,
        /// What each grant gave, in draw order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        grants: Vec<GrantDraw>,
    },
    CreditRefunded {
        amount: Minor,
        balance: Minor,
        reason: String,
        /// What each (paid) grant gave, in draw order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        grants: Vec<GrantDraw>,
    },
    /// A grant expires within the warning period (`CreditExpiring`).
    CreditExpiring {
        grant_id: String,
        kind: GrantKind,
        amount: Minor,
        expires_at: Timestamp,
    },
    /// A grant expired: its remaining amount left the balance.
    CreditExpired {
        grant_id: String,
        kind: GrantKind,
        amount: Minor,
        balance: Minor,
        expires_at: Timestamp,
    },
    CreditLow {
        balance: Minor,
        threshold: Minor,
    },
    ChargeRequested {
        charge_id: String,
        invoice_id: String,
        amount: Minor,
        token_ref: String,
        attempt: u32,
    },
    PaymentSucceeded {
        charge_id: String,
        invoice_id: String,
        amount: Minor,
    },
    PaymentFailed {
        charge_id: String,
        invoice_id: String,
        attempt: u32,
        retryable: bool,
        reason: String,
        next_retry_at: Option<Timestamp>,
    },
    DunningStopped {
        invoice_id: String,
        reason: DunningStop,
    },
    BankTransferApplied {
        reference: String,
        invoice_id: Option<String>,
        amount: Minor,
    },
    InvoicePaid {
        invoice_id: String,
        total: Minor,
    },
    InvoicePartiallyPaid {
        invoice_id: String,
        amount_paid: Minor,
        amount_due: Minor,
    },
    InvoiceOverdue {
        invoice_id: String,
        amount_due: Minor,
        due_at: Timestamp,
    },
    AccountPastDue {
        invoice_id: String,
        amount_due: Minor,
    },
    PaymentMethodAttached {
        token_ref: String,
        brand: String,
        last4: String,
        expires: String,
    },
    PaymentMethodDetached {
        token_ref: String,
    },
    PaymentMethodExpiring {
        token_ref: String,
        brand: String,
        last4: String,
        expires: String,
    },
    DebitAdjustmentAdded {
        amount: Minor,
        reason: String,
    },
    CreditNoteIssued {
        credit_note_id: String,
        amount: Minor,
        reason: String,
        invoice_id: Option<String>,
    },
    /// A coupon was put on the account (`replaced`: the one it had).
    CouponApplied {
        coupon: Box<CouponTerms>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced: Option<String>,
    },
    /// A period's invoice was given the account's coupon: `amount` (zero
    /// or more) off `eligible`, the subtotal of the lines it applies to;
    /// `periods_left` after this one (`Some(0)`: the coupon has ended;
    /// `None`: forever).
    DiscountApplied {
        coupon_id: String,
        invoice_id: String,
        amount: Minor,
        eligible: Minor,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        periods_left: Option<u32>,
    },
    /// The account's spend alerts were set: the thresholds, in minor
    /// units, ascending, without duplicates (empty: none).
    ThresholdsSet {
        thresholds: Vec<Minor>,
        /// The threshold invoicing amount, in minor units (none: absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoice_at: Option<Minor>,
    },
    /// The running draft `invoice_id` of the period starting at
    /// `period_start` reached `threshold`: its subtotal was `amount`
    /// (at least the threshold). Once per threshold and period.
    SpendThresholdReached {
        invoice_id: String,
        period_start: Timestamp,
        threshold: Minor,
        amount: Minor,
    },
    UsageRolledUp {
        hour: Timestamp,
        metric: Arc<str>,
        subject: Arc<str>,
        quantity: Decimal,
        count: u64,
        /// A correction for an hour whose rollup was already emitted.
        correction: bool,
    },
}

impl DomainEvent {
    /// Stable snake_case name, used in the journal and output records.
    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::AccountOpened { .. } => "account_opened",
            DomainEvent::PlanChangeScheduled { .. } => "plan_change_scheduled",
            DomainEvent::PlanChanged { .. } => "plan_changed",
            DomainEvent::AccountClosed { .. } => "account_closed",
            DomainEvent::UsageApplied { .. } => "usage_applied",
            DomainEvent::InvoiceOpened { .. } => "invoice_opened",
            DomainEvent::InvoiceIssued { .. } => "invoice_issued",
            DomainEvent::CreditAdded { .. } => "credit_added",
            DomainEvent::CreditApplied { .. } => "credit_applied",
            DomainEvent::CreditRefunded { .. } => "credit_refunded",
            DomainEvent::CreditLow { .. } => "credit_low",
            DomainEvent::CreditExpiring { .. } => "credit_expiring",
            DomainEvent::CreditExpired { .. } => "credit_expired",
            DomainEvent::ChargeRequested { .. } => "charge_requested",
            DomainEvent::PaymentSucceeded { .. } => "payment_succeeded",
            DomainEvent::PaymentFailed { .. } => "payment_failed",
            DomainEvent::DunningStopped { .. } => "dunning_stopped",
            DomainEvent::BankTransferApplied { .. } => "bank_transfer_applied",
            DomainEvent::InvoicePaid { .. } => "invoice_paid",
            DomainEvent::InvoicePartiallyPaid { .. } => "invoice_partially_paid",
            DomainEvent::InvoiceOverdue { .. } => "invoice_overdue",
            DomainEvent::AccountPastDue { .. } => "account_past_due",
            DomainEvent::PaymentMethodAttached { .. } => "payment_method_attached",
            DomainEvent::PaymentMethodDetached { .. } => "payment_method_detached",
            DomainEvent::PaymentMethodExpiring { .. } => "payment_method_expiring",
            DomainEvent::DebitAdjustmentAdded { .. } => "debit_adjustment_added",
            DomainEvent::CreditNoteIssued { .. } => "credit_note_issued",
            DomainEvent::CouponApplied { .. } => "coupon_applied",
            DomainEvent::DiscountApplied { .. } => "discount_applied",
            DomainEvent::ThresholdsSet { .. } => "thresholds_set",
            DomainEvent::SpendThresholdReached { .. } => "spend_threshold_reached",
            DomainEvent::UsageRolledUp { .. } => "usage_rolled_up",
        }
    }
}

/// A domain event as it enters the journal: numbered, timed and tied to
/// what caused it (an input `event_id`, or a timer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Shared with the account state: cloning it does not allocate.
    pub account_id: Arc<str>,
    pub seq: u64,
    /// Processing instant the change was made at.
    pub at: Timestamp,
    /// The input event id, or `timer:<kind>:<instant>` for timer-driven changes.
    pub causation_id: Arc<str>,
    pub event: DomainEvent,
}
