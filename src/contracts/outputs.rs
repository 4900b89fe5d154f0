//! Output records derived from journal entries: what the invoices,
//! charges, notifications, rollups and journal topics carry for each state
//! change. Ids are deterministic (UUID v5 of account, journal sequence and
//! topic), so a replay after a crash re-emits byte-identical records that
//! consumers dedupe by `event_id`. The JSON uses the Avro schemas' field
//! names — money as decimal strings of the account's currency, times RFC
//! 3339 — and `Catalog::encode_output` turns it into Avro.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::engine::events::{DomainEvent, IssuedInvoice, JournalEntry, Line, LineKind};
use crate::engine::money::{Currency, Minor};
use crate::engine::time::Timestamp;

/// The namespace of every output id. Never change it: ids would change.
pub const OUTPUT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_5f0e_8a2b_4c3d_9e7f_b1a2_c3d4_e5f6);

/// The topics outputs go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputTopic {
    Invoices,
    Charges,
    Notifications,
    UsageRollups,
    Journal,
    Dlq,
}

impl OutputTopic {
    pub const ALL: [OutputTopic; 6] = [
        OutputTopic::Invoices,
        OutputTopic::Charges,
        OutputTopic::Notifications,
        OutputTopic::UsageRollups,
        OutputTopic::Journal,
        OutputTopic::Dlq,
    ];

    /// Topic name without the configurable prefix.
    pub fn default_name(self) -> &'static str {
        match self {
            OutputTopic::Invoices => "billing.invoices.v1",
            OutputTopic::Charges => "billing.charges.v1",
            OutputTopic::Notifications => "billing.notifications.v1",
            OutputTopic::UsageRollups => "billing.usage-rollups.v1",
            OutputTopic::Journal => "billing.journal.v1",
            OutputTopic::Dlq => "billing.dlq.v1",
        }
    }
}

/// One record for one output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub topic: OutputTopic,
    /// Kafka key: the account id.
    pub key: String,
    pub event_id: String,
    pub causation_id: String,
    /// Avro record name of `json` (`InvoiceIssued`, `Notification`…).
    pub kind: &'static str,
    /// The record in its pinned JSON shape, `event_id` and `causation_id` included.
    pub json: Value,
    /// W3C `traceparent` header: the trace of the input record behind this
    /// output, continued (`None` when that input carried none).
    pub traceparent: Option<String>,
}

/// The `traceparent` an output of `input` (a W3C trace context of an input
/// record) carries: the same trace id and flags, and a span id derived from
/// the output's `event_id`, so a republished output carries the same header.
/// `None` when `input` is not a valid version-00 traceparent.
pub fn child_traceparent(input: &str, event_id: &str) -> Option<String> {
    let mut parts = input.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.next().is_some()
        || version != "00"
        || !hex(trace_id, 32)
        || !hex(parent, 16)
        || !hex(flags, 2)
        || trace_id.bytes().all(|b| b == b'0')
        || parent.bytes().all(|b| b == b'0')
    {
        return None;
    }
    let span = xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()).max(1);
    Some(format!("00-{trace_id}-{span:016x}-{flags}"))
}

/// The deterministic id of the output of journal entry `seq` of an account on `topic`.
pub fn output_event_id(account_id: &str, seq: u64, topic: OutputTopic) -> String {
    let name = format!("{account_id}/{seq}/{}", topic.default_name());
    Uuid::new_v5(&OUTPUT_ID_NAMESPACE, name.as_bytes()).to_string()
}

fn line_kind(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Usage => "usage",
        LineKind::LateUsage => "late_usage",
        LineKind::MinimumSpend => "minimum_spend",
        LineKind::RecurringFee => "recurring_fee",
        LineKind::Adjustment => "adjustment",
        LineKind::Discount => "discount",
    }
}

fn time(t: Timestamp) -> Value {
    Value::String(t.to_rfc3339())
}

/// Builds the records of one entry.
struct Emit<'a> {
    entry: &'a JournalEntry,
    currency: Currency,
    out: Vec<OutputRecord>,
}

impl Emit<'_> {
    fn money(&self, m: Minor) -> Value {
        Value::String(self.currency.format(m))
    }

    /// Add a record with the common fields, then `fields`.
    fn push(&mut self, topic: OutputTopic, kind: &'static str, fields: Value) {
        let e = self.entry;
        let event_id = output_event_id(&e.account_id, e.seq, topic);
        let mut m = Map::new();
        m.insert("event_id".into(), json!(event_id));
        m.insert("causation_id".into(), json!(e.causation_id));
        m.insert("account_id".into(), json!(e.account_id));
        if topic != OutputTopic::Journal {
            m.insert("occurred_at".into(), time(e.at));
        }
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        self.out.push(OutputRecord {
            topic,
            key: e.account_id.to_string(),
            event_id,
            causation_id: e.causation_id.to_string(),
            kind,
            json: Value::Object(m),
            traceparent: None,
        });
    }

    /// A notification: every field present, null where it does not apply.
    fn notify(&mut self, kind: &str, fields: Value) {
        let mut m = Map::new();
        m.insert("kind".into(), json!(kind));
        for f in [
            "invoice_id",
            "invoice_number",
            "amount",
            "amount_due",
            "balance",
            "threshold",
            "due_at",
            "next_retry_at",
            "reason",
            "token_ref",
            "brand",
            "expires",
            "action_required",
            "grant_id",
            "grant_kind",
            "expires_at",
        ] {
            m.insert(f.into(), Value::Null);
        }
        m.insert("currency".into(), json!(self.currency.code()));
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        self.push(OutputTopic::Notifications, "Notification", Value::Object(m));
    }

    fn line(&self, l: &Line, currency: Currency) -> Value {
        json!({
            "kind": line_kind(l.kind),
            "metric": l.metric,
            "quantity": l.quantity.to_string(),
            "unit_price": l.unit_price.map(|p| p.to_string()),
            "amount": currency.format(l.amount),
            "for_period": {"start": time(l.for_period.start), "end": time(l.for_period.end)},
            "subjects": l.subjects.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect::<Map<_, _>>(),
            "description": l.description,
        })
    }

    fn invoice_issued(&mut self, inv: &IssuedInvoice) {
        let currency = Currency::from_code(&inv.currency).unwrap_or(self.currency);
        let fmt = |m: Minor| currency.format(m);
        let fields = json!({
            "invoice_id": inv.invoice_id,
            "number": inv.number,
            "period_start": time(inv.period.start),
            "period_end": time(inv.period.end),
            "issued_at": time(inv.issued_at),
            "due_at": time(inv.due_at),
            "currency": currency.code(),
            "lines": inv.lines.iter().map(|l| self.line(l, currency)).collect::<Vec<_>>(),
            "subtotal": fmt(inv.subtotal),
            "tax": fmt(inv.tax),
            "total": fmt(inv.total),
            "credit_applied": fmt(inv.credit_applied),
            "credit_applied_paid": fmt(inv.credit_applied_paid()),
            "credit_applied_promotional": fmt(inv.credit_applied_promotional),
            "amount_due": fmt(inv.amount_due),
            "interim": inv.interim,
        });
        self.push(OutputTopic::Invoices, "InvoiceIssued", fields);
        self.notify(
            "invoice_issued",
            json!({
                "invoice_id": inv.invoice_id,
                "invoice_number": inv.number,
                "amount": fmt(inv.total),
                "amount_due": fmt(inv.amount_due),
                "currency": currency.code(),
                "due_at": time(inv.due_at),
            }),
        );
    }
}

/// The records one journal entry produces: always its journal record,
/// plus the invoice, charge, notification and rollup records it implies.
/// `currency` is the account's; money is rendered in it.
pub fn outputs_for(entry: &JournalEntry, currency: Currency) -> Vec<OutputRecord> {
    let mut e = Emit {
        entry,
        currency,
        out: Vec::with_capacity(3),
    };
    let code = currency.code();
    match &entry.event {
        DomainEvent::InvoiceOpened { invoice_id, period } => e.push(
            OutputTopic::Invoices,
            "InvoiceOpened",
            json!({"invoice_id": invoice_id, "period_start": time(period.start), "period_end": time(period.end), "currency": code}),
        ),
        DomainEvent::InvoiceIssued { invoice } => e.invoice_issued(invoice),
        DomainEvent::InvoicePaid { invoice_id, total } => {
            let total = e.money(*total);
            e.push(OutputTopic::Invoices, "InvoicePaid", json!({"invoice_id": invoice_id, "total": total, "currency": code}));
        }
        DomainEvent::InvoicePartiallyPaid { invoice_id, amount_paid, amount_due } => {
            let (paid, due) = (e.money(*amount_paid), e.money(*amount_due));
            e.push(
                OutputTopic::Invoices,
                "InvoicePartiallyPaid",
                json!({"invoice_id": invoice_id, "amount_paid": paid, "amount_due": due, "currency": code}),
            );
        }
        DomainEvent::InvoiceOverdue { invoice_id, amount_due, due_at } => {
            let due = e.money(*amount_due);
            e.push(
                OutputTopic::Invoices,
                "InvoiceOverdue",
                json!({"invoice_id": invoice_id, "amount_due": due, "due_at": time(*due_at), "currency": code}),
            );
            e.notify(
                "invoice_overdue",
                json!({"invoice_id": invoice_id, "amount_due": due, "due_at": time(*due_at), "action_required": "pay_invoice"}),
            );
        }
        DomainEvent::CreditNoteIssued { credit_note_id, amount, reason, invoice_id } => {
            let amount = e.money(*amount);
            e.push(
                OutputTopic::Invoices,
                "CreditNoteIssued",
                json!({"credit_note_id": credit_note_id, "amount": amount, "reason": reason, "invoice_id": invoice_id, "currency": code}),
            );
        }
        DomainEvent::ChargeRequested { charge_id, invoice_id, amount, token_ref, attempt } => {
            let amount = e.money(*amount);
            e.push(
                OutputTopic::Charges,
                "ChargeRequested",
                json!({"charge_id": charge_id, "invoice_id": invoice_id, "amount": amount, "currency": code,
                       "token_ref": token_ref, "attempt": attempt}),
            );
        }
        DomainEvent::PaymentSucceeded { invoice_id, amount, .. } => {
            let amount = e.money(*amount);
            e.notify("payment_succeeded", json!({"invoice_id": invoice_id, "amount": amount}));
        }
        DomainEvent::PaymentFailed { invoice_id, retryable, reason, next_retry_at, .. } => {
            let stopped = !retryable || next_retry_at.is_none();
            e.notify(
                "payment_failed",
                json!({"invoice_id": invoice_id, "reason": reason, "next_retry_at": next_retry_at.map(time),
                       "action_required": stopped.then_some("update_payment_method")}),
            );
        }
        DomainEvent::CreditLow { balance, threshold } => {
            let (balance, threshold) = (e.money(*balance), e.money(*threshold));
            e.notify("credit_low", json!({"balance": balance, "threshold": threshold, "action_required": "top_up_credit"}));
        }
        DomainEvent::PaymentMethodExpiring { token_ref, brand, expires, .. } => e.notify(
            "payment_method_expiring",
            json!({"token_ref": token_ref, "brand": brand, "expires": expires, "action_required": "update_payment_method"}),
        ),
        DomainEvent::CreditApplied { invoice_id, amount, balance, .. } => {
            let (amount, balance) = (e.money(*amount), e.money(*balance));
            e.notify("credit_applied", json!({"invoice_id": invoice_id, "amount": amount, "balance": balance}));
        }
        DomainEvent::CreditExpiring { grant_id, kind, amount, expires_at } => {
            let amount = e.money(*amount);
            e.notify(
                "credit_expiring",
                json!({"grant_id": grant_id, "grant_kind": kind.name(), "amount": amount, "expires_at": time(*expires_at)}),
            );
        }
        DomainEvent::CreditExpired { grant_id, kind, amount, balance, expires_at } => {
            let (amount, balance) = (e.money(*amount), e.money(*balance));
            e.notify(
                "credit_expired",
                json!({"grant_id": grant_id, "grant_kind": kind.name(), "amount": amount, "balance": balance,
                       "expires_at": time(*expires_at)}),
            );
        }
        DomainEvent::SpendThresholdReached { invoice_id, threshold, amount, .. } => {
            let (threshold, amount) = (e.money(*threshold), e.money(*amount));
            e.notify("spend_threshold_reached", json!({"invoice_id": invoice_id, "amount": amount, "threshold": threshold}));
        }
        DomainEvent::UsageRolledUp { hour, metric, subject, quantity, count, correction } => e.push(
            OutputTopic::UsageRollups,
            "UsageRollup",
            json!({"hour_start": time(*hour), "metric": metric, "subject": subject, "quantity": quantity.to_string(),
                   "count": count, "correction": correction}),
        ),
        DomainEvent::AccountOpened { .. }
        | DomainEvent::PlanChangeScheduled { .. }
        | DomainEvent::PlanChanged { .. }
        | DomainEvent::AccountClosed { .. }
        | DomainEvent::UsageApplied { .. }
        | DomainEvent::CreditAdded { .. }
        | DomainEvent::CreditRefunded { .. }
        | DomainEvent::DunningStopped { .. }
        | DomainEvent::BankTransferApplied { .. }
        | DomainEvent::AccountPastDue { .. }
        | DomainEvent::PaymentMethodAttached { .. }
        | DomainEvent::PaymentMethodDetached { .. }
        | DomainEvent::DebitAdjustmentAdded { .. }
        | DomainEvent::CouponApplied { .. }
        | DomainEvent::DiscountApplied { .. }
        | DomainEvent::ThresholdsSet { .. } => {}
    }
    let payload = serde_json::to_string(&entry.event).unwrap_or_else(|err| {
        json!({"type": entry.event.name(), "unserialisable": err.to_string()}).to_string()
    });
    e.push(
        OutputTopic::Journal,
        "JournalEntry",
        json!({"seq": entry.seq, "at": time(entry.at), "type": entry.event.name(), "payload": payload}),
    );
    e.out
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn child_traceparent_keeps_the_trace_and_makes_a_span_per_output() {
        let input = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let a = child_traceparent(input, "evt-1").unwrap();
        let b = child_traceparent(input, "evt-2").unwrap();
        assert!(a.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(a.ends_with("-01"));
        assert_eq!(a.len(), input.len());
        assert_ne!(a, b);
        assert_eq!(
            a,
            child_traceparent(input, "evt-1").unwrap(),
            "deterministic"
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(child_traceparent(bad, "e"), None, "{bad:?}");
        }
    }

    use super::*;
    use crate::contracts::catalog::Catalog;
    use crate::engine::credit::{GrantDraw, GrantKind, GrantRef};
    use crate::engine::events::{CreditSource, DunningStop};
    use crate::engine::time::{Anchor, Period};
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn eur() -> Currency {
        Currency::from_code("EUR").unwrap()
    }

    /// One domain event of every kind.
    pub(crate) fn sample_events() -> Vec<DomainEvent> {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let period = Period {
            start: ts("2026-03-01T00:00:00Z"),
            end: ts("2026-04-01T00:00:00Z"),
        };
        let invoice = IssuedInvoice {
            invoice_id: "inv-1".into(),
            number: "INV-2026-0001".into(),
            period,
            issued_at: ts("2026-04-01T01:00:00Z"),
            due_at: ts("2026-04-15T01:00:00Z"),
            currency: "EUR".into(),
            lines: vec![
                Line {
                    kind: LineKind::Usage,
                    metric: Some("api.calls".into()),
                    quantity: d("12000"),
                    unit_price: Some(d("0.001")),
                    amount: Minor(1200),
                    for_period: period,
                    subjects: [
                        ("app-1".to_string(), d("7000")),
                        ("app-2".to_string(), d("5000")),
                    ]
                    .into(),
                    description: None,
                },
                Line {
                    kind: LineKind::RecurringFee,
                    metric: None,
                    quantity: d("1"),
                    unit_price: None,
                    amount: Minor(1900),
                    for_period: Period {
                        start: period.end,
                        end: ts("2026-05-01T00:00:00Z"),
                    },
                    subjects: Default::default(),
                    description: Some("Pro plan, April".into()),
                },
                Line {
                    kind: LineKind::Discount,
                    metric: None,
                    quantity: d("1"),
                    unit_price: None,
                    amount: Minor(-310),
                    for_period: period,
                    subjects: Default::default(),
                    description: Some("coupon TEN: 10% off".into()),
                },
            ],
            subtotal: Minor(2790),
            tax: Minor(530),
            total: Minor(3320),
            credit_applied: Minor(500),
            credit_applied_promotional: Minor(200),
            amount_due: Minor(2820),
            interim: false,
        };
        vec![
            DomainEvent::AccountOpened {
                plan_id: "pro".into(),
                currency: "EUR".into(),
                timezone: "UTC".into(),
                tax_rate: d("0.19"),
                anchor: Anchor::Calendar,
                opened_at: ts("2026-03-01T00:00:00Z"),
            },
            DomainEvent::PlanChangeScheduled {
                plan_id: "team".into(),
                effective_at: period.end,
            },
            DomainEvent::PlanChanged {
                from_plan_id: "pro".into(),
                plan_id: "team".into(),
                effective_at: period.end,
                from_version: 1,
                version: 2,
                immediate: true,
            },
            DomainEvent::AccountClosed {
                closed_at: period.end,
            },
            DomainEvent::UsageApplied {
                subject: "app-1".into(),
                metric: "api.calls".into(),
                quantity: d("1"),
                occurred_at: period.start,
                period_start: period.start,
                late: false,
            },
            DomainEvent::InvoiceOpened {
                invoice_id: "inv-1".into(),
                period,
            },
            DomainEvent::InvoiceIssued {
                invoice: Box::new(invoice),
            },
            DomainEvent::CreditAdded {
                source: CreditSource::TopUp,
                amount: Minor(1000),
                balance: Minor(1500),
                grant: Some(GrantRef {
                    grant_id: "gr_a_00001".into(),
                    kind: GrantKind::Promotional,
                    priority: 0,
                    expires_at: Some(ts("2026-04-08T00:00:00Z")),
                }),
            },
            DomainEvent::CreditApplied {
                invoice_id: "inv-1".into(),
                amount: Minor(500),
                balance: Minor(1000),
                grants: vec![GrantDraw {
                    grant_id: "gr_a_00001".into(),
                    kind: GrantKind::Promotional,
                    amount: Minor(500),
                }],
            },
            DomainEvent::CreditRefunded {
                amount: Minor(100),
                balance: Minor(900),
                reason: "goodwill".into(),
                grants: vec![],
            },
            DomainEvent::CreditExpiring {
                grant_id: "gr_a_00001".into(),
                kind: GrantKind::Promotional,
                amount: Minor(500),
                expires_at: ts("2026-04-08T00:00:00Z"),
            },
            DomainEvent::CreditExpired {
                grant_id: "gr_a_00001".into(),
                kind: GrantKind::Promotional,
                amount: Minor(500),
                balance: Minor(400),
                expires_at: ts("2026-04-08T00:00:00Z"),
            },
            DomainEvent::SpendThresholdReached {
                invoice_id: "inv-2".into(),
                period_start: ts("2026-04-01T00:00:00Z"),
                threshold: Minor(5000),
                amount: Minor(5250),
            },
            DomainEvent::CreditLow {
                balance: Minor(90),
                threshold: Minor(100),
            },
            DomainEvent::ChargeRequested {
                charge_id: "ch-1".into(),
                invoice_id: "inv-1".into(),
                amount: Minor(3189),
                token_ref: "psp:tok".into(),
                attempt: 1,
            },
            DomainEvent::PaymentSucceeded {
                charge_id: "ch-1".into(),
                invoice_id: "inv-1".into(),
                amount: Minor(3189),
            },
            DomainEvent::PaymentFailed {
                charge_id: "ch-1".into(),
                invoice_id: "inv-1".into(),
                attempt: 1,
                retryable: true,
                reason: "insufficient_funds".into(),
                next_retry_at: Some(ts("2026-04-02T01:00:00Z")),
            },
            DomainEvent::DunningStopped {
                invoice_id: "inv-1".into(),
                reason: DunningStop::Exhausted,
            },
            DomainEvent::BankTransferApplied {
                reference: "INV-2026-0001".into(),
                invoice_id: None,
                amount: Minor(10),
            },
            DomainEvent::InvoicePaid {
                invoice_id: "inv-1".into(),
                total: Minor(3320),
            },
            DomainEvent::InvoicePartiallyPaid {
                invoice_id: "inv-1".into(),
                amount_paid: Minor(10),
                amount_due: Minor(3179),
            },
            DomainEvent::InvoiceOverdue {
                invoice_id: "inv-1".into(),
                amount_due: Minor(3179),
                due_at: ts("2026-04-15T01:00:00Z"),
            },
            DomainEvent::AccountPastDue {
                invoice_id: "inv-1".into(),
                amount_due: Minor(3179),
            },
            DomainEvent::PaymentMethodAttached {
                token_ref: "psp:tok".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2026-05".into(),
            },
            DomainEvent::PaymentMethodDetached {
                token_ref: "psp:tok".into(),
            },
            DomainEvent::PaymentMethodExpiring {
                token_ref: "psp:tok".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2026-05".into(),
            },
            DomainEvent::DebitAdjustmentAdded {
                amount: Minor(250),
                reason: "setup".into(),
            },
            DomainEvent::CreditNoteIssued {
                credit_note_id: "cn-1".into(),
                amount: Minor(500),
                reason: "outage".into(),
                invoice_id: Some("inv-1".into()),
            },
            DomainEvent::UsageRolledUp {
                hour: ts("2026-03-01T10:00:00Z"),
                metric: "api.calls".into(),
                subject: "app-1".into(),
                quantity: d("120.5"),
                count: 12,
                correction: false,
            },
        ]
    }

    fn entry(seq: u64, event: DomainEvent) -> JournalEntry {
        JournalEntry {
            account_id: "acct-1".into(),
            seq,
            at: ts("2026-04-01T01:00:00Z"),
            causation_id: "u-1".into(),
            event,
        }
    }

    fn routes(event: DomainEvent) -> Vec<(OutputTopic, &'static str)> {
        outputs_for(&entry(1, event), eur())
            .iter()
            .map(|r| (r.topic, r.kind))
            .collect()
    }

    #[test]
    fn every_entry_has_one_journal_record_last() {
        for (i, event) in sample_events().into_iter().enumerate() {
            let out = outputs_for(&entry(i as u64 + 1, event), eur());
            assert_eq!(
                out.iter()
                    .filter(|r| r.topic == OutputTopic::Journal)
                    .count(),
                1
            );
            assert_eq!(out.last().map(|r| r.kind), Some("JournalEntry"));
        }
    }

    #[test]
    fn records_are_routed_to_their_topics() {
        use OutputTopic::*;
        let ev = sample_events();
        let find = |name: &str| ev.iter().find(|e| e.name() == name).cloned().unwrap();
        assert_eq!(routes(find("usage_applied")), [(Journal, "JournalEntry")]);
        assert_eq!(
            routes(find("invoice_issued")),
            [
                (Invoices, "InvoiceIssued"),
                (Notifications, "Notification"),
                (Journal, "JournalEntry")
            ]
        );
        assert_eq!(
            routes(find("invoice_overdue")),
            [
                (Invoices, "InvoiceOverdue"),
                (Notifications, "Notification"),
                (Journal, "JournalEntry")
            ]
        );
        assert_eq!(
            routes(find("charge_requested")),
            [(Charges, "ChargeRequested"), (Journal, "JournalEntry")]
        );
        assert_eq!(
            routes(find("usage_rolled_up")),
            [(UsageRollups, "UsageRollup"), (Journal, "JournalEntry")]
        );
        for (name, kind) in [
            ("invoice_opened", "InvoiceOpened"),
            ("invoice_paid", "InvoicePaid"),
            ("invoice_partially_paid", "InvoicePartiallyPaid"),
            ("credit_note_issued", "CreditNoteIssued"),
        ] {
            assert_eq!(
                routes(find(name)),
                [(Invoices, kind), (Journal, "JournalEntry")],
                "{name}"
            );
        }
        for name in [
            "payment_succeeded",
            "payment_failed",
            "credit_low",
            "payment_method_expiring",
            "credit_applied",
        ] {
            assert_eq!(
                routes(find(name)),
                [(Notifications, "Notification"), (Journal, "JournalEntry")],
                "{name}"
            );
        }
    }

    #[test]
    fn output_ids_are_stable_and_distinct_per_topic() {
        let ev = sample_events();
        let issued = ev
            .iter()
            .find(|e| e.name() == "invoice_issued")
            .cloned()
            .unwrap();
        let a = outputs_for(&entry(7, issued.clone()), eur());
        let b = outputs_for(&entry(7, issued.clone()), eur());
        assert_eq!(a, b, "a replay produces identical records");
        let ids: std::collections::HashSet<_> = a.iter().map(|r| r.event_id.clone()).collect();
        assert_eq!(ids.len(), a.len());
        let c = outputs_for(&entry(8, issued), eur());
        assert!(a.iter().zip(&c).all(|(x, y)| x.event_id != y.event_id));
        // Pinned: changing the namespace or the name format would break dedup downstream.
        assert_eq!(
            output_event_id("acct-1", 7, OutputTopic::Journal),
            output_event_id("acct-1", 7, OutputTopic::Journal)
        );
        assert_eq!(a[0].event_id, a[0].json["event_id"]);
        assert_eq!(a[0].causation_id, "u-1");
        assert_eq!(a[0].key, "acct-1");
    }

    #[test]
    fn failed_payment_asks_for_action_only_when_retries_stop() {
        let failed = |retryable: bool, next: Option<Timestamp>| {
            let out = outputs_for(
                &entry(
                    1,
                    DomainEvent::PaymentFailed {
                        charge_id: "c".into(),
                        invoice_id: "i".into(),
                        attempt: 2,
                        retryable,
                        reason: "card_expired".into(),
                        next_retry_at: next,
                    },
                ),
                eur(),
            );
            out[0].json.clone()
        };
        let retry = failed(true, Some(ts("2026-04-04T00:00:00Z")));
        assert_eq!(retry["action_required"], Value::Null);
        assert_eq!(retry["next_retry_at"], "2026-04-04T00:00:00Z");
        assert_eq!(
            failed(false, None)["action_required"],
            "update_payment_method"
        );
        assert_eq!(
            failed(true, None)["action_required"],
            "update_payment_method"
        );
    }

    #[test]
    fn invoice_issued_uses_the_pinned_fields_and_decimal_money() {
        let ev = sample_events();
        let issued = ev
            .iter()
            .find(|e| e.name() == "invoice_issued")
            .cloned()
            .unwrap();
        let j = &outputs_for(&entry(3, issued), eur())[0].json;
        for f in [
            "event_id",
            "invoice_id",
            "account_id",
            "number",
            "period_start",
            "period_end",
            "issued_at",
            "due_at",
            "currency",
            "lines",
            "subtotal",
            "tax",
            "total",
            "credit_applied",
            "amount_due",
        ] {
            assert!(j.get(f).is_some(), "missing {f}");
        }
        assert_eq!(j["total"], "33.20");
        assert_eq!(j["period_start"], "2026-03-01T00:00:00Z");
        // The coupon's line: its own kind, a negative amount.
        assert_eq!(j["lines"][2]["kind"], "discount");
        assert_eq!(j["lines"][2]["amount"], "-3.10");
        let line = &j["lines"][0];
        for f in [
            "kind",
            "metric",
            "quantity",
            "amount",
            "for_period",
            "subjects",
        ] {
            assert!(line.get(f).is_some(), "line missing {f}");
        }
        assert_eq!(line["amount"], "12.00");
        assert_eq!(line["subjects"]["app-1"], "7000");
    }

    #[test]
    fn every_output_record_validates_against_its_avro_schema() {
        let catalog = Catalog::shared().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (i, event) in sample_events().into_iter().enumerate() {
            for r in outputs_for(&entry(i as u64 + 1, event), eur()) {
                let bytes = catalog
                    .encode_output(&r)
                    .unwrap_or_else(|e| panic!("{}: {e}", r.kind));
                let entry = catalog.by_record(r.kind).unwrap();
                assert_eq!(
                    entry.topic,
                    r.topic.default_name(),
                    "{} goes to the manifest's topic",
                    r.kind
                );
                let (id, body) = crate::contracts::framing::split(&bytes).unwrap();
                assert_eq!(id, entry.id);
                let mut rest = body;
                let value = apache_avro::from_avro_datum(&entry.schema, &mut rest, None).unwrap();
                assert!(rest.is_empty(), "{}: trailing bytes", r.kind);
                assert!(value.validate(&entry.schema));
                seen.insert(r.kind);
            }
        }
        assert_eq!(
            seen.len(),
            10,
            "every output record kind except DeadLetter: {seen:?}"
        );
    }
}
