//! An account's state as of a past instant, rebuilt from its journal.
//!
//! The engine has no "apply a journal entry" step (it folds inputs, and
//! the inputs are not kept), and re-running it would need the price book
//! as it was then, which the compacted plans topic does not keep. So the
//! state as of `T` is a projection: the journal entries of the longest
//! prefix with `at <= T` (a prefix, so the result is a state the account
//! really passed through) folded into the facts the journal records —
//! plan, credit balance, open invoices and their collection, payment
//! method, the draft's usage quantities and pending lines. The draft's
//! running total is left out: pricing past usage on today's price book
//! would be a guess, not history. `as_of_now_matches_the_snapshot` (in
//! tests/api.rs) checks this projection against the snapshot of record.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::views::{time, AccountCore, CoreParts, MaskedPaymentMethod};
use crate::engine::account::OpenInvoice;
use crate::engine::credit::CreditGrant;
use crate::engine::events::{DomainEvent, JournalEntry};
use crate::engine::money::{Currency, Minor};
use crate::engine::time::{Period, Timestamp};

/// `GET /v1/accounts/{account_id}/as-of?at=…`.
#[derive(Debug, Clone, Serialize)]
pub struct AccountAsOf {
    pub as_of: String,
    /// Last journal entry folded (0: the account did not exist yet).
    pub journal_seq: u64,
    /// When that entry was made.
    pub last_change_at: String,
    #[serde(flatten)]
    pub core: AccountCore,
    pub draft: Option<DraftUsage>,
}

/// The draft invoice as the journal records it: quantities, not prices.
#[derive(Debug, Clone, Serialize)]
pub struct DraftUsage {
    pub invoice_id: String,
    pub period_start: String,
    pub period_end: String,
    pub usage: Vec<MetricQuantity>,
    /// Usage of already issued periods, to be billed on this invoice.
    pub late_usage: Vec<MetricQuantity>,
    /// Debit adjustments to be billed on this invoice.
    pub adjustments: Vec<AdjustmentView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricQuantity {
    pub metric: String,
    pub for_period_start: String,
    pub quantity: String,
    pub subjects: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdjustmentView {
    pub amount: String,
    pub reason: String,
}

#[derive(Default)]
struct Usage {
    total: Decimal,
    subjects: BTreeMap<String, Decimal>,
}

struct PaymentMethod {
    token_ref: String,
    brand: String,
    last4: String,
    expires: String,
}

/// The fold over journal entries.
pub struct Projection {
    account_id: String,
    currency: Currency,
    timezone: String,
    tax_rate: Decimal,
    opened_at: Timestamp,
    closed_at: Option<Timestamp>,
    plan_id: String,
    pending_plan: Option<(String, Timestamp)>,
    credit: Minor,
    grants: Vec<CreditGrant>,
    invoices: Vec<OpenInvoice>,
    payment_method: Option<PaymentMethod>,
    draft: Option<(String, Period)>,
    /// Usage of unissued periods by (period start, metric).
    open_usage: BTreeMap<(Timestamp, String), Usage>,
    /// Late usage by (period start, metric) waiting for the next invoice.
    late_usage: BTreeMap<(Timestamp, String), Usage>,
    adjustments: Vec<(Minor, String)>,
    seq: u64,
    last_at: Timestamp,
}

impl Projection {
    /// Start from the account's first entry, which must be `AccountOpened`.
    pub fn open(first: &JournalEntry) -> Option<Projection> {
        let DomainEvent::AccountOpened {
            plan_id,
            currency,
            timezone,
            tax_rate,
            opened_at,
            ..
        } = &first.event
        else {
            return None;
        };
        Some(Projection {
            account_id: first.account_id.to_string(),
            currency: Currency::from_code(currency)?,
            timezone: timezone.clone(),
            tax_rate: *tax_rate,
            opened_at: *opened_at,
            closed_at: None,
            plan_id: plan_id.clone(),
            pending_plan: None,
            credit: Minor::ZERO,
            grants: Vec::new(),
            invoices: Vec::new(),
            payment_method: None,
            draft: None,
            open_usage: BTreeMap::new(),
            late_usage: BTreeMap::new(),
            adjustments: Vec::new(),
            seq: first.seq,
            last_at: first.at,
        })
    }

    /// Retries due by `t` have fired (a retry that found no payment method
    /// leaves no journal entry, only a cleared retry date).
    fn clear_retries_due(&mut self, t: Timestamp) {
        for inv in &mut self.invoices {
            if inv.next_retry_at.is_some_and(|r| r <= t) {
                inv.next_retry_at = None;
            }
        }
    }

    fn invoice(&mut self, invoice_id: &str) -> Option<&mut OpenInvoice> {
        self.invoices
            .iter_mut()
            .find(|i| i.invoice_id == invoice_id)
    }

    /// The credit grants as the journal names them: made or grown by
    /// `CreditAdded`, drawn by `CreditApplied` and `CreditRefunded`,
    /// removed by `CreditExpired` (credit from before grants has none).
    fn follow_grants(&mut self, entry: &JournalEntry) {
        match &entry.event {
            DomainEvent::CreditAdded {
                amount,
                grant: Some(r),
                ..
            } => match self.grants.iter_mut().find(|g| g.grant_id == r.grant_id) {
                Some(g) => {
                    g.granted = g.granted.saturating_add(*amount);
                    g.remaining = g.remaining.saturating_add(*amount);
                }
                None => self.grants.push(CreditGrant {
                    grant_id: r.grant_id.clone(),
                    kind: r.kind,
                    priority: r.priority,
                    expires_at: r.expires_at,
                    granted_at: entry.at,
                    granted: *amount,
                    remaining: *amount,
                    warned: false,
                }),
            },
            DomainEvent::CreditApplied { grants, .. }
            | DomainEvent::CreditRefunded { grants, .. } => {
                for d in grants {
                    if let Some(g) = self.grants.iter_mut().find(|g| g.grant_id == d.grant_id) {
                        g.remaining = g.remaining.saturating_sub(d.amount);
                    }
                }
                self.grants.retain(|g| g.remaining.is_positive());
            }
            DomainEvent::CreditExpired { grant_id, .. } => {
                self.grants.retain(|g| g.grant_id != *grant_id);
            }
            _ => {}
        }
    }

    /// Fold one more entry (entries come in journal order).
    pub fn apply(&mut self, entry: &JournalEntry) {
        self.clear_retries_due(entry.at);
        self.seq = entry.seq;
        self.last_at = entry.at;
        match &entry.event {
            DomainEvent::AccountOpened { .. } => {}
            DomainEvent::PlanChangeScheduled {
                plan_id,
                effective_at,
            } => self.pending_plan = Some((plan_id.clone(), *effective_at)),
            DomainEvent::PlanChanged { plan_id, .. } => {
                self.plan_id = plan_id.clone();
                self.pending_plan = None;
            }
            DomainEvent::AccountClosed { closed_at } => {
                self.closed_at = Some(*closed_at);
                self.pending_plan = None;
            }
            DomainEvent::UsageApplied {
                subject,
                metric,
                quantity,
                period_start,
                late,
                ..
            } => {
                let map = if *late {
                    &mut self.late_usage
                } else {
                    &mut self.open_usage
                };
                let u = map.entry((*period_start, metric.to_string())).or_default();
                u.total += quantity;
                *u.subjects.entry(subject.to_string()).or_default() += quantity;
            }
            DomainEvent::InvoiceOpened { invoice_id, period } => {
                self.draft = Some((invoice_id.clone(), *period));
            }
            DomainEvent::InvoiceIssued { invoice } => {
                if self
                    .draft
                    .as_ref()
                    .is_some_and(|(id, _)| *id == invoice.invoice_id)
                {
                    // The period's close: its usage and the pending lines
                    // are on this invoice now.
                    self.draft = None;
                    let start = invoice.period.start;
                    self.open_usage.retain(|(p, _), _| *p != start);
                    self.late_usage.clear();
                    self.adjustments.clear();
                }
                if invoice.amount_due.is_positive() {
                    self.invoices.push(OpenInvoice {
                        invoice_id: invoice.invoice_id.clone(),
                        number: invoice.number.clone(),
                        issued_at: invoice.issued_at,
                        due_at: invoice.due_at,
                        amount_due: invoice.amount_due,
                        paid: Minor::ZERO,
                        overdue: false,
                        attempts: 0,
                        outstanding: None,
                        next_retry_at: None,
                        dunning_stopped: None,
                    });
                }
            }
            DomainEvent::CreditAdded { balance, .. }
            | DomainEvent::CreditApplied { balance, .. }
            | DomainEvent::CreditRefunded { balance, .. }
            | DomainEvent::CreditExpired { balance, .. } => {
                self.credit = *balance;
                self.follow_grants(entry);
            }
            DomainEvent::ChargeRequested {
                invoice_id,
                attempt,
                ..
            } => {
                if let Some(inv) = self.invoice(invoice_id) {
                    inv.attempts = *attempt;
                    inv.outstanding = Some(*attempt);
                    inv.next_retry_at = None;
                }
            }
            DomainEvent::PaymentSucceeded {
                charge_id,
                invoice_id,
                ..
            } => {
                let attempt = charge_id
                    .rsplit_once("/attempt-")
                    .and_then(|(_, n)| n.parse::<u32>().ok());
                if let Some(inv) = self.invoice(invoice_id) {
                    if inv.outstanding.is_some() && inv.outstanding == attempt {
                        inv.outstanding = None;
                    }
                }
            }
            DomainEvent::PaymentFailed {
                invoice_id,
                attempt,
                next_retry_at,
                ..
            } => {
                if let Some(inv) = self.invoice(invoice_id) {
                    if inv.outstanding == Some(*attempt) {
                        inv.outstanding = None;
                        inv.next_retry_at = *next_retry_at;
                        inv.dunning_stopped = None;
                    }
                }
            }
            DomainEvent::DunningStopped { invoice_id, reason } => {
                if let Some(inv) = self.invoice(invoice_id) {
                    inv.dunning_stopped = Some(*reason);
                }
            }
            DomainEvent::InvoicePaid { invoice_id, .. } => {
                self.invoices.retain(|i| i.invoice_id != *invoice_id);
            }
            DomainEvent::InvoicePartiallyPaid {
                invoice_id,
                amount_paid,
                ..
            } => {
                if let Some(inv) = self.invoice(invoice_id) {
                    inv.paid = *amount_paid;
                }
            }
            DomainEvent::InvoiceOverdue { invoice_id, .. } => {
                if let Some(inv) = self.invoice(invoice_id) {
                    inv.overdue = true;
                }
            }
            DomainEvent::PaymentMethodAttached {
                token_ref,
                brand,
                last4,
                expires,
            } => {
                self.payment_method = Some(PaymentMethod {
                    token_ref: token_ref.clone(),
                    brand: brand.clone(),
                    last4: last4.clone(),
                    expires: expires.clone(),
                });
                // As the engine does: a new method restarts dunning of the
                // invoices that wait on none.
                for inv in &mut self.invoices {
                    if inv.outstanding.is_none() && inv.next_retry_at.is_none() {
                        inv.dunning_stopped = None;
                    }
                }
            }
            DomainEvent::PaymentMethodDetached { token_ref } => {
                if self
                    .payment_method
                    .as_ref()
                    .is_some_and(|pm| pm.token_ref == *token_ref)
                {
                    self.payment_method = None;
                }
            }
            DomainEvent::DebitAdjustmentAdded { amount, reason } => {
                self.adjustments.push((*amount, reason.clone()));
            }
            DomainEvent::CreditExpiring { grant_id, .. } => {
                if let Some(g) = self.grants.iter_mut().find(|g| g.grant_id == *grant_id) {
                    g.warned = true;
                }
            }
            DomainEvent::CreditLow { .. }
            | DomainEvent::BankTransferApplied { .. }
            | DomainEvent::AccountPastDue { .. }
            | DomainEvent::PaymentMethodExpiring { .. }
            | DomainEvent::CreditNoteIssued { .. }
            | DomainEvent::CouponApplied { .. }
            | DomainEvent::DiscountApplied { .. }
            | DomainEvent::ThresholdsSet { .. }
            | DomainEvent::SpendThresholdReached { .. }
            | DomainEvent::UsageRolledUp { .. } => {}
        }
    }

    /// The state as of `as_of` (at or after the last folded entry).
    pub fn view(mut self, as_of: Timestamp) -> AccountAsOf {
        self.clear_retries_due(as_of);
        let c = self.currency;
        let quantities = |map: &BTreeMap<(Timestamp, String), Usage>,
                          only: Option<Timestamp>|
         -> Vec<MetricQuantity> {
            map.iter()
                .filter(|((p, _), _)| only.is_none_or(|o| o == *p))
                .map(|((p, m), u)| MetricQuantity {
                    metric: m.clone(),
                    for_period_start: time(*p),
                    quantity: u.total.to_string(),
                    subjects: u
                        .subjects
                        .iter()
                        .map(|(s, q)| (s.clone(), q.to_string()))
                        .collect(),
                })
                .collect()
        };
        let draft = self.draft.as_ref().map(|(id, period)| DraftUsage {
            invoice_id: id.clone(),
            period_start: time(period.start),
            period_end: time(period.end),
            usage: quantities(&self.open_usage, Some(period.start)),
            late_usage: quantities(&self.late_usage, None),
            adjustments: self
                .adjustments
                .iter()
                .map(|(a, r)| AdjustmentView {
                    amount: c.format(*a),
                    reason: r.clone(),
                })
                .collect(),
        });
        let core = CoreParts {
            account_id: &self.account_id,
            currency: c,
            timezone: &self.timezone,
            tax_rate: self.tax_rate.to_string(),
            opened_at: self.opened_at,
            closed_at: self.closed_at,
            plan_id: &self.plan_id,
            pending_plan: self.pending_plan.as_ref().map(|(p, at)| (p.as_str(), *at)),
            credit: self.credit,
            grants: &self.grants,
            invoices: &self.invoices,
            payment_method: self
                .payment_method
                .as_ref()
                .map(|pm| MaskedPaymentMethod::new(&pm.brand, &pm.last4, &pm.expires)),
        }
        .view();
        AccountAsOf {
            as_of: time(as_of),
            journal_seq: self.seq,
            last_change_at: time(self.last_at),
            core,
            draft,
        }
    }
}
