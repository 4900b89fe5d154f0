//! Threshold invoicing (progressive billing, issue 13 item 3): an interim
//! invoice for what has accrued on the running draft whenever it reaches
//! the account's `invoice_at`.
//!
//! `invoice_at` is set with the spend alerts (a `ThresholdsSet` command or
//! the `AccountOpened` fields, `alerts.rs`). The rules, in one place:
//! - **Accrued** is the draft's lines (`Engine::draft_lines`) without the
//!   period's own minimum-spend true-up, which only a period's end can
//!   tell, and without the next period's fee in advance, which only the
//!   period's final invoice bills (never an interim one: a close or a
//!   downgrade in the period would otherwise take it back as credit while
//!   the interim invoice is dunned): usage lines rated on the period's
//!   totals so far (tiers, volume, aggregations on the period's value),
//!   late-usage, debit and proration lines waiting for the next invoice,
//!   and the coupon's line worked out on those lines.
//! - **Invoiced** (`Invoiced`, account state) is what the period's interim
//!   invoices billed, per line key (kind, metric, period, description; the
//!   discount line by kind and period alone) with their subtotal and tax.
//! - **When**: after every input the account applies and after a close
//!   opens the next draft (the same points as the spend alerts), an
//!   interim invoice is issued if the accrued amount not invoiced yet is
//!   at least `invoice_at`. So after one, the next is due when as much
//!   again has accrued.
//! - **What it bills**: the accrued lines less what was invoiced, key by
//!   key (`Invoiced::rest_of`): a key not invoiced before keeps its lines
//!   as they are; one invoiced before becomes one line of the difference
//!   (its description says how much of what total was invoiced earlier; a
//!   key gone from the draft is billed back negative). Tiers and minimum
//!   spend are thus rated on the period's totals, never per invoice.
//! - **Tax**: per invoice, the tax on the period's cumulative subtotal
//!   less the tax the period's earlier invoices carried (`Engine::issue`'s
//!   `earlier`): every invoice's tax is rounded once, and the period's
//!   invoices carry exactly the tax one invoice for the period would.
//! - **The final invoice** (the close, unchanged otherwise) bills the
//!   period's lines, minimum spend and discount included, less what was
//!   invoiced, the same way. So a period's invoices add up, line key by
//!   line key, subtotal, tax and total, to the single invoice the period
//!   would have had, to the minor unit (it may be negative, e.g. when a
//!   `latest` gauge fell or an immediate downgrade credited the fee back:
//!   it becomes credit like any negative invoice, which pays the open
//!   invoices, an unpaid interim one included, as a top-up's does).
//! - **Ids**: the interim invoice is issued under the draft's id and number
//!   and a new draft for the same period is opened under the next number
//!   (`InvoiceOpened`), so ids stay in issue order. Credit, the charge
//!   request and dunning are those of any invoice (`Engine::issue`).
//! - **Once**: the ledger is state, so a redelivered input (refused by
//!   dedup) or a replay issues nothing twice; it is emptied by the close.
//! - Accounts without `invoice_at` pay one `Option` check per input; with
//!   it, the draft is worked out once per input.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::AccountState;
use super::events::{DomainEvent, Line, LineKind};
use super::fold::{Emit, Engine};
use super::money::{Currency, Minor};
use super::time::Period;

/// How a difference line's description ends its note (the lineage of a
/// line tells a difference line by it, `api::lineage`).
pub const INVOICED_EARLIER: &str = "invoiced earlier in the period";

/// What the current period's interim invoices billed for one line key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicedLine {
    pub kind: LineKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub for_period: Period,
    /// The lines' description (`None` for the discount line: its text
    /// changes with the amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub quantity: Decimal,
    pub amount: Minor,
}

/// What the current period's interim invoices billed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoiced {
    /// Interim invoices issued in the period.
    pub invoices: u32,
    /// Their subtotal and tax, summed (= the accrued subtotal at the last
    /// one, and the tax on it).
    pub subtotal: Minor,
    pub tax: Minor,
    /// Per line key, in the order first billed.
    pub lines: Vec<InvoicedLine>,
}

type Key<'a> = (LineKind, Option<&'a str>, Period, Option<&'a str>);

fn key_of(l: &Line) -> Key<'_> {
    let description = match l.kind {
        LineKind::Discount => None,
        _ => l.description.as_deref(),
    };
    (l.kind, l.metric.as_deref(), l.for_period, description)
}

fn invoiced_key(i: &InvoicedLine) -> Key<'_> {
    (
        i.kind,
        i.metric.as_deref(),
        i.for_period,
        i.description.as_deref(),
    )
}

/// `lines` summed per key, in the order keys first appear.
fn by_key(lines: &[Line]) -> Vec<InvoicedLine> {
    let mut out: Vec<InvoicedLine> = Vec::new();
    for l in lines {
        let k = key_of(l);
        match out.iter_mut().find(|i| invoiced_key(i) == k) {
            Some(i) => {
                i.amount = i.amount.saturating_add(l.amount);
                i.quantity = i.quantity.saturating_add(l.quantity);
            }
            None => out.push(InvoicedLine {
                kind: k.0,
                metric: k.1.map(str::to_string),
                for_period: k.2,
                description: k.3.map(str::to_string),
                quantity: l.quantity,
                amount: l.amount,
            }),
        }
    }
    out
}

impl Invoiced {
    /// Heap bytes held (for `AccountState::resident_bytes`).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Invoiced>()
            + self.lines.capacity() * std::mem::size_of::<InvoicedLine>()
            + self
                .lines
                .iter()
                .map(|l| {
                    l.metric.as_ref().map_or(0, String::capacity)
                        + l.description.as_ref().map_or(0, String::capacity)
                })
                .sum::<usize>()
    }

    /// The lines that bill `lines` (the period's, cumulative) less what
    /// was invoiced, key by key: see the module's rules.
    pub fn rest_of(&self, currency: Currency, lines: Vec<Line>) -> Vec<Line> {
        let totals = by_key(&lines);
        let mut out = Vec::with_capacity(lines.len());
        let mut done: Vec<Key> = Vec::new();
        for l in &lines {
            let k = key_of(l);
            let Some(before) = self.lines.iter().find(|i| invoiced_key(i) == k) else {
                out.push(l.clone());
                continue;
            };
            if done.contains(&k) {
                continue;
            }
            done.push(k);
            let total = totals
                .iter()
                .find(|t| invoiced_key(t) == k)
                .expect("every key of lines is in its totals");
            let amount = total.amount.saturating_sub(before.amount);
            let quantity = total.quantity.saturating_sub(before.quantity);
            if amount.is_zero() && quantity.is_zero() {
                continue;
            }
            out.push(Line {
                kind: l.kind,
                metric: l.metric.clone(),
                quantity,
                unit_price: l.unit_price,
                amount,
                for_period: l.for_period,
                subjects: Default::default(),
                description: Some(Self::less(currency, l, before.amount, total.amount)),
            });
        }
        for before in &self.lines {
            if totals
                .iter()
                .any(|t| invoiced_key(t) == invoiced_key(before))
            {
                continue;
            }
            if before.amount.is_zero() && before.quantity.is_zero() {
                continue;
            }
            let template = Line {
                kind: before.kind,
                metric: before.metric.clone(),
                quantity: Decimal::ZERO,
                unit_price: None,
                amount: Minor::ZERO,
                for_period: before.for_period,
                subjects: Default::default(),
                description: before.description.clone(),
            };
            out.push(Line {
                quantity: Decimal::ZERO.saturating_sub(before.quantity),
                amount: before.amount.saturating_neg(),
                description: Some(Self::less(currency, &template, before.amount, Minor::ZERO)),
                ..template
            });
        }
        out
    }

    /// A difference line's description.
    fn less(currency: Currency, l: &Line, invoiced: Minor, total: Minor) -> String {
        let note = format!(
            "{} of {} {INVOICED_EARLIER}",
            currency.format(invoiced),
            currency.format(total)
        );
        match &l.description {
            Some(d) => format!("{d}; {note}"),
            None => note,
        }
    }
}

impl Engine {
    /// Issue an interim invoice if what has accrued and is not invoiced
    /// reaches `invoice_at` (see the module's rules). Inlined: on the
    /// fold's path it is one check for an account without it.
    #[inline(always)]
    pub(crate) fn check_invoice_at(&self, st: &mut AccountState, emit: &mut Emit) {
        if let Some(at) = st.invoice_at {
            self.invoice_accrued(st, at, emit);
        }
    }

    fn invoice_accrued(&self, st: &mut AccountState, at: Minor, emit: &mut Emit) {
        if st.finished {
            return;
        }
        let accrued = self.draft_lines(st, false);
        let lines = match st.interim.as_deref() {
            Some(invoiced) => invoiced.rest_of(st.currency, accrued.clone()),
            None => accrued.clone(),
        };
        let current = st.current;
        if Minor::saturating_sum(lines.iter().map(|l| l.amount)) < at {
            return;
        }
        let prior = st
            .interim
            .as_deref()
            .map_or((Minor::ZERO, Minor::ZERO), |i| (i.subtotal, i.tax));
        let subtotal = Minor::saturating_sum(accrued.iter().map(|l| l.amount));
        let mut invoiced = st.interim.take().map_or_else(Default::default, |b| *b);
        invoiced.invoices += 1;
        invoiced.subtotal = subtotal;
        invoiced.tax = self.tax(st, subtotal);
        invoiced.lines = by_key(&accrued);
        st.interim = Some(Box::new(invoiced));
        // Issued under the draft's id; the rest of the period gets the next.
        let seq = st.invoice_seq;
        st.invoice_seq += 1;
        let next_id = Self::invoice_id(&st.account_id, st.invoice_seq);
        let invoice_id = std::mem::replace(&mut st.draft_invoice_id, next_id);
        self.issue(st, invoice_id, seq, current, lines, prior, true, emit);
        let (invoice_id, period) = (st.draft_invoice_id.clone(), st.current);
        emit.push(st, DomainEvent::InvoiceOpened { invoice_id, period });
    }
}

/// Per key, what `lines` bill (for tests: the period's invoices' lines
/// summed key by key equal the single invoice's).
#[cfg(test)]
pub(crate) fn amounts_by_key(lines: &[Line]) -> std::collections::BTreeMap<String, Minor> {
    let mut out = std::collections::BTreeMap::new();
    for l in by_key(lines) {
        let k = format!("{:?}/{:?}/{}", l.kind, l.metric, l.for_period.start);
        let e = out.entry(k).or_insert(Minor::ZERO);
        *e = e.saturating_add(l.amount);
    }
    out
}
