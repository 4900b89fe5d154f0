//! The lineage of an invoice line: the input events (ids and topic,
//! partition, offset) whose journal entries made it.
//!
//! The journal keeps, with each entry, the input position behind it (see
//! `runtime::processor::StoredJournalEntry`), and a `UsageApplied` entry's
//! causation id is the usage event's id. So a line is traced by reading
//! the account's journal up to the invoice's `InvoiceIssued` entry:
//! - a usage line: the on-time `UsageApplied` entries of its metric and
//!   period;
//! - a late-usage line: the late `UsageApplied` entries of its metric and
//!   period made while this invoice was the draft (after its
//!   `InvoiceOpened`);
//! - a minimum-spend line: the usage entries of its period it tops up;
//! - a recurring fee: the entries that put the plan in force for the
//!   period (`AccountOpened`, a scheduled plan change);
//! - an adjustment: the `DebitAdjustmentAdded` entry with its amount and
//!   reason made while this invoice was the draft.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::views::time;
use crate::engine::events::{DomainEvent, IssuedInvoice, Line, LineKind};
use crate::runtime::{SourcePos, StoredJournalEntry};

/// One input behind a line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineInput {
    /// The input event id (the journal entry's causation id).
    pub event_id: String,
    pub journal_seq: u64,
    pub at: String,
    /// Where the input was read: topic (or file), partition, offset.
    pub source: Option<SourcePos>,
    /// The journal entry's type.
    pub entry_type: &'static str,
    /// For usage: the quantity and subject it added.
    pub quantity: Option<String>,
    pub subject: Option<String>,
}

/// Collects the inputs behind one line while the journal is read in order.
pub struct Tracer<'a> {
    invoice: &'a IssuedInvoice,
    line: &'a Line,
    /// The issue entry was seen: stop reading.
    pub done: bool,
    pub inputs: Vec<LineInput>,
    state: TracerState,
}

/// What the tracer has learnt from the entries read so far: with the seq
/// of the last one, enough to resume after it (a page's cursor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracerState {
    /// Inside the window in which this invoice was the draft.
    drafting: bool,
    /// Matching debit adjustments still to pass over: they back earlier
    /// lines of the same amount and reason (each entry backs one line).
    skip_adjustments: usize,
    /// This (adjustment) line's entry was found.
    adjustment_taken: bool,
}

impl<'a> Tracer<'a> {
    pub fn new(invoice: &'a IssuedInvoice, line_index: usize) -> Option<Tracer<'a>> {
        let line = invoice.lines.get(line_index)?;
        // The n-th adjustment line with this amount and reason is backed
        // by the n-th matching entry.
        let skip_adjustments = invoice.lines[..line_index]
            .iter()
            .filter(|l| {
                l.kind == LineKind::Adjustment
                    && l.amount == line.amount
                    && l.description == line.description
            })
            .count();
        Some(Tracer {
            invoice,
            line,
            done: false,
            inputs: Vec::new(),
            state: TracerState {
                drafting: false,
                skip_adjustments,
                adjustment_taken: false,
            },
        })
    }

    /// Where the trace stands, to resume after the last entry seen.
    pub fn state(&self) -> TracerState {
        self.state
    }

    /// Continue a trace from `state` (the next entry read must follow the
    /// one it was taken after).
    pub fn resume(&mut self, state: TracerState) {
        self.state = state;
    }

    fn take(&mut self, stored: &StoredJournalEntry, quantity: Option<(Decimal, &str)>) {
        let e = &stored.entry;
        self.inputs.push(LineInput {
            event_id: e.causation_id.to_string(),
            journal_seq: e.seq,
            at: time(e.at),
            source: stored.source.clone(),
            entry_type: e.event.name(),
            quantity: quantity.map(|(q, _)| q.to_string()),
            subject: quantity.map(|(_, s)| s.to_string()),
        });
    }

    /// Look at the next journal entry.
    pub fn see(&mut self, stored: &StoredJournalEntry) {
        if self.done {
            return;
        }
        let line = self.line;
        let period_start = line.for_period.start;
        match &stored.entry.event {
            DomainEvent::InvoiceOpened { invoice_id, .. }
                if *invoice_id == self.invoice.invoice_id =>
            {
                self.state.drafting = true;
            }
            DomainEvent::InvoiceIssued { invoice }
                if invoice.invoice_id == self.invoice.invoice_id =>
            {
                self.done = true;
            }
            DomainEvent::UsageApplied {
                subject,
                metric,
                quantity,
                period_start: p,
                late,
                ..
            } if *p == period_start => {
                let wanted = match line.kind {
                    LineKind::Usage => !late && line.metric.as_deref() == Some(&**metric),
                    LineKind::LateUsage => {
                        *late && self.state.drafting && line.metric.as_deref() == Some(&**metric)
                    }
                    // On the period's own invoice the true-up covers its
                    // on-time usage; as a correction, the late usage.
                    LineKind::MinimumSpend => {
                        if period_start == self.invoice.period.start {
                            !late
                        } else {
                            *late && self.state.drafting
                        }
                    }
                    LineKind::RecurringFee | LineKind::Adjustment | LineKind::Discount => false,
                };
                if wanted {
                    self.take(stored, Some((*quantity, subject)));
                }
            }
            DomainEvent::AccountOpened { .. } if line.kind == LineKind::RecurringFee => {
                self.take(stored, None);
            }
            DomainEvent::PlanChangeScheduled { effective_at, .. }
                if line.kind == LineKind::RecurringFee && *effective_at <= period_start =>
            {
                self.take(stored, None);
            }
            DomainEvent::DebitAdjustmentAdded { amount, reason }
                if line.kind == LineKind::Adjustment
                    && self.state.drafting
                    && *amount == line.amount
                    && line.description.as_deref() == Some(reason.as_str()) =>
            {
                if self.state.skip_adjustments > 0 {
                    self.state.skip_adjustments -= 1;
                } else if !self.state.adjustment_taken {
                    self.state.adjustment_taken = true;
                    self.take(stored, None);
                }
            }
            // A discount line comes from the command that put its coupon
            // on the account (named at the start of its description).
            DomainEvent::CouponApplied { coupon, .. }
                if line.kind == LineKind::Discount
                    && line
                        .description
                        .as_deref()
                        .and_then(|d| d.strip_prefix("coupon "))
                        .and_then(|d| d.strip_prefix(coupon.coupon_id.as_str()))
                        .is_some_and(|rest| rest.starts_with(':')) =>
            {
                self.take(stored, None);
            }
            _ => {}
        }
    }
}
