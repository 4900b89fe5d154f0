//! The lineage of an invoice line: the input events (ids and topic,
//! partition, offset) whose journal entries made it.
//!
//! The journal keeps, with each entry, the input position behind it (see
//! `runtime::processor::StoredJournalEntry`), and a `UsageApplied` entry's
//! causation id is the usage event's id. So a line is traced by reading
//! the account's journal up to the invoice's `InvoiceIssued` entry:
//! - a usage line: the on-time `UsageApplied` entries of its metric and
//!   period; a plan segment's line (an immediate plan change split the
//!   period, its description names the segment) those that occurred in
//!   the segment, `[since, until)`;
//! - a difference line (threshold invoicing: the period's total less what
//!   its earlier invoices billed, `engine::interim`): the entries applied
//!   while this invoice was the draft, i.e. since the period's previous
//!   invoice, for a metric aggregated by `sum` or `count`; for another
//!   aggregation (max, latest, percentile…) the line's quantity is not a
//!   sum of events, so the events behind it are the period's whole set
//!   (`Tracer::whole_period`);
//! - a late-usage line: the late `UsageApplied` entries of its metric and
//!   period made while this invoice was the draft (after its
//!   `InvoiceOpened`);
//! - a minimum-spend line: the usage entries of its period it tops up;
//! - a recurring fee: the entries that put the plan in force for the
//!   period (`AccountOpened`, a scheduled or immediate plan change); the
//!   proration lines of an immediate plan change (the old fee credited, the
//!   new one charged for the rest of the period): that `PlanChanged`;
//! - an adjustment: the `DebitAdjustmentAdded` entry with its amount and
//!   reason made while this invoice was the draft.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::views::time;
use crate::engine::events::{DomainEvent, IssuedInvoice, Line, LineKind};
use crate::engine::interim::INVOICED_EARLIER;
use crate::engine::time::{Timestamp, MICROS_PER_HOUR};
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
    /// The plan segment the line rates, `[since, until)`.
    segment: Option<(Timestamp, Timestamp)>,
    /// The line bills the period's total less earlier invoices'.
    difference: bool,
    /// A difference line's quantity is not a sum of events: trace the
    /// period's whole set.
    whole_period: bool,
    /// The immediate plan change a proration line comes from: (from plan,
    /// to plan, hours of the period left, as the description writes them).
    proration: Option<(&'a str, &'a str, &'a str)>,
}

/// The `[since, until)` of a plan segment's line, from the note
/// `Engine::segment_note` starts its description with.
fn segment_of(description: &str) -> Option<(Timestamp, Timestamp)> {
    let rest = description.strip_prefix("on plan ")?;
    let (_, bounds) = rest.split_once(" from ")?;
    let (since, until) = bounds.split_once(" to ")?;
    let until = until.split_once(';').map_or(until, |(u, _)| u);
    Some((
        Timestamp::parse_rfc3339(since)?,
        Timestamp::parse_rfc3339(until)?,
    ))
}

/// (from plan, to plan, hours left) of an immediate plan change's
/// proration line, as `Engine::change_plan_now` describes it.
fn proration_of(description: &str) -> Option<(&str, &str, &str)> {
    fn inside<'d>(tail: &'d str, open: &str) -> Option<(&'d str, &'d str)> {
        let hours = tail.split_once(" of ")?.0;
        let plan = tail.split_once(open)?.1.split_once(')')?.0;
        Some((hours, plan))
    }
    if let Some((from, tail)) = description.split_once(" recurring fee credited for the unused ") {
        let (hours, to) = inside(tail, "(plan changed to ")?;
        return Some((from, to, hours));
    }
    let (to, tail) = description.split_once(" recurring fee, prorated for ")?;
    let (hours, from) = inside(tail, "(plan changed from ")?;
    Some((from, to, hours))
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
        let description = line.description.as_deref().unwrap_or_default();
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
            segment: segment_of(description),
            difference: description.contains(INVOICED_EARLIER),
            whole_period: false,
            proration: (line.kind == LineKind::RecurringFee)
                .then(|| proration_of(description))
                .flatten(),
        })
    }

    /// Whether the line is a difference line: its quantity is the period's
    /// total less what the period's earlier invoices billed.
    pub fn difference(&self) -> bool {
        self.difference
    }

    /// Whether a difference line is traced to the period's whole usage.
    pub fn traces_whole_period(&self) -> bool {
        self.difference && self.whole_period
    }

    /// The line's metric is not aggregated by adding events (not `sum` nor
    /// `count`): a difference line is traced to the period's whole usage.
    pub fn whole_period(&mut self) {
        self.whole_period = true;
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
                occurred_at,
                late,
            } if *p == period_start
                && self
                    .segment
                    .is_none_or(|(since, until)| since <= *occurred_at && *occurred_at < until) =>
            {
                let wanted = match line.kind {
                    LineKind::Usage => {
                        !late
                            && line.metric.as_deref() == Some(&**metric)
                            && (!self.difference || self.whole_period || self.state.drafting)
                    }
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
            DomainEvent::AccountOpened { .. }
                if line.kind == LineKind::RecurringFee && self.proration.is_none() =>
            {
                self.take(stored, None);
            }
            DomainEvent::PlanChangeScheduled { effective_at, .. }
                if line.kind == LineKind::RecurringFee
                    && self.proration.is_none()
                    && *effective_at <= period_start =>
            {
                self.take(stored, None);
            }
            // The fee of a period after an immediate change is on its plan.
            DomainEvent::PlanChanged {
                effective_at,
                immediate: true,
                ..
            } if line.kind == LineKind::RecurringFee
                && self.proration.is_none()
                && *effective_at <= period_start =>
            {
                self.take(stored, None);
            }
            DomainEvent::PlanChanged {
                from_plan_id,
                plan_id,
                effective_at,
                immediate: true,
                ..
            } if self.proration.is_some_and(|(from, to, hours)| {
                *from_plan_id == from
                    && *plan_id == to
                    && line.for_period.contains(*effective_at)
                    && hours_left(line.for_period.end, *effective_at) == hours
            }) =>
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

/// The hours from `at` to `end` as a proration line writes them.
fn hours_left(end: Timestamp, at: Timestamp) -> String {
    (Decimal::from(end.0 - at.0) / Decimal::from(MICROS_PER_HOUR))
        .round_dp(2)
        .normalize()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_line_and_a_proration_line_name_what_they_trace() {
        let ts = |s| Timestamp::parse_rfc3339(s).unwrap();
        let segment = "on plan p (version 1) from 2026-03-01T00:00:00Z to 2026-03-16T00:00:00Z";
        let range = Some((ts("2026-03-01T00:00:00Z"), ts("2026-03-16T00:00:00Z")));
        assert_eq!(segment_of(segment), range);
        let difference = format!("{segment}; €1.00 of €2.00 {INVOICED_EARLIER}");
        assert_eq!(segment_of(&difference), range);
        assert_eq!(segment_of("p recurring fee"), None);
        assert_eq!(
            proration_of(
                "p recurring fee credited for the unused 384 of 744 hours (plan changed to q)"
            ),
            Some(("p", "q", "384"))
        );
        assert_eq!(
            proration_of("q recurring fee, prorated for 384.5 of 744 hours (plan changed from p); €1.00 of €2.00 invoiced earlier in the period"),
            Some(("p", "q", "384.5"))
        );
        assert_eq!(proration_of("p recurring fee"), None);
        assert_eq!(
            hours_left(ts("2026-04-01T00:00:00Z"), ts("2026-03-16T00:00:00Z")),
            "384"
        );
    }
}
