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
use serde::Serialize;

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
    /// Inside the window in which this invoice was the draft.
    drafting: bool,
    /// The issue entry was seen: stop reading.
    pub done: bool,
    pub inputs: Vec<LineInput>,
    /// Debit adjustments already matched (each entry backs one line).
    skip_adjustments: usize,
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
            drafting: false,
            done: false,
            inputs: Vec::new(),
            skip_adjustments,
        })
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
                self.drafting = true;
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
                        *late && self.drafting && line.metric.as_deref() == Some(&**metric)
                    }
                    // On the period's own invoice the true-up covers its
                    // on-time usage; as a correction, the late usage.
                    LineKind::MinimumSpend => {
                        if period_start == self.invoice.period.start {
                            !late
                        } else {
                            *late && self.drafting
                        }
                    }
                    LineKind::RecurringFee | LineKind::Adjustment => false,
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
                    && self.drafting
                    && *amount == line.amount
                    && line.description.as_deref() == Some(reason.as_str()) =>
            {
                if self.skip_adjustments > 0 {
                    self.skip_adjustments -= 1;
                } else if !self
                    .inputs
                    .iter()
                    .any(|i| i.entry_type == "debit_adjustment_added")
                {
                    self.take(stored, None);
                }
            }
            _ => {}
        }
    }
}
