//! The JSON the API answers with. Money is a decimal string in the
//! account's currency ("12.30"), instants are RFC 3339, quantities exact
//! decimal strings. The payment method appears masked (brand, last four
//! digits, expiry month): the token reference is withheld, and the state
//! never held more than that (SPEC §4, Privacy).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::engine::account::{AccountState, OpenInvoice};
use crate::engine::credit::{draw_order, CreditGrant};
use crate::engine::events::{DunningStop, Line};
use crate::engine::fold::Draft;
use crate::engine::money::{Currency, Minor};
use crate::engine::time::{Period, Timestamp};

pub fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// The fields the live state and the state as of an instant share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountCore {
    pub account_id: String,
    pub currency: String,
    pub timezone: String,
    pub tax_rate: String,
    pub opened_at: String,
    pub closed_at: Option<String>,
    pub plan_id: String,
    pub pending_plan: Option<PendingPlan>,
    /// Prepaid credit.
    pub credit: String,
    /// The credit by grant, in the order it is drawn (priority, earliest
    /// expiry, oldest).
    pub credit_grants: Vec<GrantView>,
    /// Still owed on issued invoices.
    pub outstanding: String,
    /// The most advanced collection stage of the open invoices.
    pub dunning_stage: &'static str,
    pub payment_method: Option<MaskedPaymentMethod>,
    /// Issued invoices not fully paid, oldest first.
    pub open_invoices: Vec<OpenInvoiceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantView {
    pub grant_id: String,
    /// `paid` or `promotional`.
    pub kind: &'static str,
    pub priority: i32,
    pub expires_at: Option<String>,
    pub granted_at: String,
    /// Everything credited to the grant.
    pub granted: String,
    /// Its balance.
    pub remaining: String,
}

fn grant_views(c: Currency, grants: &[CreditGrant]) -> Vec<GrantView> {
    draw_order(grants)
        .into_iter()
        .map(|i| {
            let g = &grants[i];
            GrantView {
                grant_id: g.grant_id.clone(),
                kind: g.kind.name(),
                priority: g.priority,
                expires_at: g.expires_at.map(time),
                granted_at: time(g.granted_at),
                granted: c.format(g.granted),
                remaining: c.format(g.remaining),
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingPlan {
    pub plan_id: String,
    pub effective_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskedPaymentMethod {
    pub brand: String,
    pub last4: String,
    pub expires: String,
    /// For display: "visa •••• 4242".
    pub masked: String,
}

impl MaskedPaymentMethod {
    pub fn new(brand: &str, last4: &str, expires: &str) -> MaskedPaymentMethod {
        MaskedPaymentMethod {
            brand: brand.to_string(),
            last4: last4.to_string(),
            expires: expires.to_string(),
            masked: format!("{brand} •••• {last4}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenInvoiceView {
    pub invoice_id: String,
    pub number: String,
    pub issued_at: String,
    pub due_at: String,
    /// Left to pay after credit at issue.
    pub amount_due: String,
    pub paid: String,
    pub remaining: String,
    pub overdue: bool,
    pub charge_attempts: u32,
    /// The attempt whose result is awaited.
    pub charge_outstanding: Option<u32>,
    pub next_retry_at: Option<String>,
    pub dunning_stopped: Option<DunningStop>,
    /// `overdue`, `dunning_stopped`, `retry_scheduled`, `charge_pending`
    /// or `awaiting_payment`.
    pub stage: &'static str,
}

/// Collection stages, least advanced first.
const STAGES: [&str; 6] = [
    "none",
    "awaiting_payment",
    "charge_pending",
    "retry_scheduled",
    "dunning_stopped",
    "overdue",
];

pub fn stage_of(inv: &OpenInvoice) -> &'static str {
    if inv.overdue {
        "overdue"
    } else if inv.dunning_stopped.is_some() {
        "dunning_stopped"
    } else if inv.next_retry_at.is_some() {
        "retry_scheduled"
    } else if inv.outstanding.is_some() {
        "charge_pending"
    } else {
        "awaiting_payment"
    }
}

pub fn open_invoice_view(c: Currency, inv: &OpenInvoice) -> OpenInvoiceView {
    OpenInvoiceView {
        invoice_id: inv.invoice_id.clone(),
        number: inv.number.clone(),
        issued_at: time(inv.issued_at),
        due_at: time(inv.due_at),
        amount_due: c.format(inv.amount_due),
        paid: c.format(inv.paid),
        remaining: c.format(inv.remaining()),
        overdue: inv.overdue,
        charge_attempts: inv.attempts,
        charge_outstanding: inv.outstanding,
        next_retry_at: inv.next_retry_at.map(time),
        dunning_stopped: inv.dunning_stopped,
        stage: stage_of(inv),
    }
}

pub fn dunning_stage(invoices: &[OpenInvoiceView]) -> &'static str {
    invoices
        .iter()
        .map(|i| i.stage)
        .max_by_key(|s| STAGES.iter().position(|x| x == s))
        .unwrap_or("none")
}

/// Everything but the draft, from whatever holds these facts.
pub struct CoreParts<'a> {
    pub account_id: &'a str,
    pub currency: Currency,
    pub timezone: &'a str,
    pub tax_rate: String,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
    pub plan_id: &'a str,
    pub pending_plan: Option<(&'a str, Timestamp)>,
    pub credit: Minor,
    pub grants: &'a [CreditGrant],
    pub invoices: &'a [OpenInvoice],
    pub payment_method: Option<MaskedPaymentMethod>,
}

impl CoreParts<'_> {
    pub fn view(self) -> AccountCore {
        let c = self.currency;
        let open_invoices: Vec<OpenInvoiceView> = self
            .invoices
            .iter()
            .map(|i| open_invoice_view(c, i))
            .collect();
        AccountCore {
            account_id: self.account_id.to_string(),
            currency: c.code().to_string(),
            timezone: self.timezone.to_string(),
            tax_rate: self.tax_rate,
            opened_at: time(self.opened_at),
            closed_at: self.closed_at.map(time),
            plan_id: self.plan_id.to_string(),
            pending_plan: self.pending_plan.map(|(p, at)| PendingPlan {
                plan_id: p.to_string(),
                effective_at: time(at),
            }),
            credit: c.format(self.credit),
            credit_grants: grant_views(c, self.grants),
            outstanding: c.format(Minor::saturating_sum(
                self.invoices.iter().map(OpenInvoice::remaining),
            )),
            dunning_stage: dunning_stage(&open_invoices),
            payment_method: self.payment_method,
            open_invoices,
        }
    }
}

/// `GET /v1/accounts/{account_id}`: the snapshot of record, with the
/// draft invoice priced as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub core: AccountCore,
    /// Processing clock of the account's last change.
    pub clock: String,
    /// Last journal sequence number.
    pub journal_seq: u64,
    /// `None` once a closed account's final invoice is issued.
    pub draft: Option<DraftView>,
    /// Spend alerts and threshold invoicing (`alerts.rs`, `interim.rs`).
    pub alerts: AlertsView,
}

/// An account's spend alerts and threshold invoicing as they stand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertsView {
    /// The spend thresholds, ascending (empty: none).
    pub thresholds: Vec<String>,
    /// Those the current period's draft has reached (each fires once per
    /// period).
    pub thresholds_reached: Vec<String>,
    /// The threshold invoicing amount (`None`: no interim invoices).
    pub invoice_at: Option<String>,
    /// What the current period's interim invoices billed.
    pub invoiced_this_period: InterimView,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterimView {
    /// Interim invoices issued in the current period.
    pub invoices: u32,
    /// Their subtotal and tax, summed.
    pub subtotal: String,
    pub tax: String,
}

fn alerts_view(st: &AccountState) -> AlertsView {
    let c = st.currency;
    let amounts = |v: &[Minor]| v.iter().map(|m| c.format(*m)).collect();
    let interim = st.interim.as_deref();
    AlertsView {
        thresholds: amounts(&st.thresholds),
        thresholds_reached: amounts(&st.thresholds_reached),
        invoice_at: st.invoice_at.map(|m| c.format(m)),
        invoiced_this_period: InterimView {
            invoices: interim.map_or(0, |i| i.invoices),
            subtotal: c.format(interim.map_or(Minor::ZERO, |i| i.subtotal)),
            tax: c.format(interim.map_or(Minor::ZERO, |i| i.tax)),
        },
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DraftView {
    pub invoice_id: String,
    pub period_start: String,
    pub period_end: String,
    pub lines: Vec<LineView>,
    pub subtotal: String,
    pub tax: String,
    /// The running total.
    pub total: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineView {
    pub kind: crate::engine::events::LineKind,
    pub metric: Option<String>,
    pub quantity: String,
    pub unit_price: Option<String>,
    pub amount: String,
    pub for_period_start: String,
    pub for_period_end: String,
    pub subjects: BTreeMap<String, String>,
    pub description: Option<String>,
}

pub fn line_view(c: Currency, l: &Line) -> LineView {
    LineView {
        kind: l.kind,
        metric: l.metric.clone(),
        quantity: l.quantity.to_string(),
        unit_price: l.unit_price.map(|p| p.to_string()),
        amount: c.format(l.amount),
        for_period_start: time(l.for_period.start),
        for_period_end: time(l.for_period.end),
        subjects: l
            .subjects
            .iter()
            .map(|(s, q)| (s.clone(), q.to_string()))
            .collect(),
        description: l.description.clone(),
    }
}

pub fn account_view(st: &AccountState, draft: Option<Draft>) -> AccountView {
    let c = st.currency;
    let core = CoreParts {
        account_id: &st.account_id,
        currency: c,
        timezone: st.timezone.name(),
        tax_rate: st.tax_rate.to_string(),
        opened_at: st.opened_at,
        closed_at: st.closed_at,
        plan_id: &st.plan_id,
        pending_plan: st.pending_plan.as_ref().map(|(p, at)| (p.as_str(), *at)),
        credit: st.credit,
        grants: &st.grants,
        invoices: &st.invoices,
        payment_method: st
            .payment_method
            .as_deref()
            .map(|pm| MaskedPaymentMethod::new(&pm.brand, &pm.last4, &pm.expires)),
    }
    .view();
    AccountView {
        core,
        clock: time(st.clock),
        journal_seq: st.journal_seq,
        draft: draft.map(|d| DraftView {
            invoice_id: d.invoice_id,
            period_start: time(d.period.start),
            period_end: time(d.period.end),
            lines: d.lines.iter().map(|l| line_view(c, l)).collect(),
            subtotal: c.format(d.subtotal),
            tax: c.format(d.tax),
            total: c.format(d.total),
        }),
        alerts: alerts_view(st),
    }
}

/// Fields holding minor units in the engine's serialized events and
/// invoices (`Minor` is a bare integer there).
const MONEY_FIELDS: [&str; 11] = [
    "amount",
    "invoice_at",
    "eligible",
    "balance",
    "threshold",
    "total",
    "amount_due",
    "amount_paid",
    "subtotal",
    "tax",
    "credit_applied",
];

/// Fields holding instants (micros) there.
const TIME_FIELDS: [&str; 12] = [
    "at",
    "occurred_at",
    "period_start",
    "effective_at",
    "closed_at",
    "opened_at",
    "due_at",
    "issued_at",
    "next_retry_at",
    "hour",
    "start",
    "end",
];

/// Render a serialized engine record (a domain event, an issued invoice)
/// for readers: integer money fields become decimal strings in `currency`,
/// integer instants RFC 3339. Every other value is kept as it is.
pub fn render(value: &mut Value, currency: Currency) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::Number(n) if MONEY_FIELDS.contains(&k.as_str()) => {
                        if let Some(i) = n.as_i64() {
                            *v = Value::String(currency.format(Minor(i)));
                        }
                    }
                    Value::Number(n) if TIME_FIELDS.contains(&k.as_str()) => {
                        if let Some(i) = n.as_i64() {
                            *v = Value::String(time(Timestamp(i)));
                        }
                    }
                    // A ThresholdsSet's amounts.
                    Value::Array(items) if k == "thresholds" => {
                        for item in items.iter_mut() {
                            if let Some(i) = item.as_i64() {
                                *item = Value::String(currency.format(Minor(i)));
                            }
                        }
                    }
                    _ => render(v, currency),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| render(v, currency)),
        _ => {}
    }
}

/// A serialized engine record, rendered.
pub fn rendered<T: Serialize>(record: &T, currency: Currency) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    render(&mut v, currency);
    v
}

pub fn period_json(p: Period) -> Value {
    serde_json::json!({"start": time(p.start), "end": time(p.end)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::DomainEvent;
    use serde_json::json;

    #[test]
    fn money_and_instants_render_as_strings_everything_else_is_kept() {
        let eur = Currency::from_code("EUR").unwrap();
        let e = DomainEvent::PaymentFailed {
            charge_id: "inv_a_00001/attempt-1".into(),
            invoice_id: "inv_a_00001".into(),
            attempt: 1,
            retryable: true,
            reason: "insufficient_funds".into(),
            next_retry_at: Some(Timestamp::parse_rfc3339("2026-03-02T00:00:00Z").unwrap()),
        };
        assert_eq!(
            rendered(&e, eur),
            json!({"type": "payment_failed", "charge_id": "inv_a_00001/attempt-1",
                   "invoice_id": "inv_a_00001", "attempt": 1, "retryable": true,
                   "reason": "insufficient_funds", "next_retry_at": "2026-03-02T00:00:00Z"})
        );
        let e = DomainEvent::CreditApplied {
            invoice_id: "i".into(),
            amount: Minor(1234),
            balance: Minor(-5),
            grants: Vec::new(),
        };
        assert_eq!(
            rendered(&e, eur),
            json!({"type": "credit_applied", "invoice_id": "i", "amount": "12.34", "balance": "-0.05"})
        );
        let e = DomainEvent::ThresholdsSet {
            thresholds: vec![Minor(5000), Minor(10000)],
            invoice_at: Some(Minor(20000)),
        };
        assert_eq!(
            rendered(&e, eur),
            json!({"type": "thresholds_set", "thresholds": ["50.00", "100.00"], "invoice_at": "200.00"})
        );
        let e = DomainEvent::SpendThresholdReached {
            invoice_id: "i".into(),
            period_start: Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap(),
            threshold: Minor(5000),
            amount: Minor(5250),
        };
        assert_eq!(
            rendered(&e, eur),
            json!({"type": "spend_threshold_reached", "invoice_id": "i",
                   "period_start": "2026-03-01T00:00:00Z", "threshold": "50.00", "amount": "52.50"})
        );
    }
}
