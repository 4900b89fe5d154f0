//! The billing state of one account, as the fold sees it.
//!
//! Small on purpose (it is resident for every active account): the open
//! periods' usage by metric and subject, a few issued periods kept to price
//! late usage, open invoices with their dunning progress, credit, the
//! payment method, and open hourly rollup buckets. The dedup window lives
//! next to it but is persisted separately.

use std::sync::Arc;

use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::aggregation::{AggState, Aggregation};
use super::credit::CreditGrant;
use super::dedup::DedupWindow;
use super::discount::Coupon;
use super::events::{DunningStop, Line};
use super::interim::Invoiced;
use super::money::{Currency, Minor};
use super::name::Name;
use super::plan::first_version;
use super::time::{Anchor, Period, Timestamp};

/// Usage of one metric in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricUsage {
    pub metric: Name,
    pub total: Decimal,
    /// Quantity by subject; a short vector beats a map at this size.
    /// Names are shared with journal entries and rollup buckets. For an
    /// aggregation other than `sum`, the number of events by subject.
    pub subjects: Vec<(Name, Decimal)>,
    /// How the metric is aggregated in this period, pinned by its first
    /// event (`total` is then what `aggregation::add` keeps).
    #[serde(default, skip_serializing_if = "Aggregation::is_sum")]
    pub aggregation: Aggregation,
    /// What the aggregation keeps beyond `total` (latest, unique_count,
    /// time_weighted, percentile); `None` for sum, count and max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<AggState>>,
}

/// A metric of an issued period aggregated otherwise than by `sum`: what
/// late usage needs to re-compute the period's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedAggregate {
    pub metric: String,
    pub aggregation: Aggregation,
    pub total: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<AggState>>,
}

/// Usage of a period whose invoice is not issued yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    pub period: Period,
    pub plan_id: String,
    /// The version of `plan_id` (1 in snapshots from before versions).
    #[serde(default = "first_version")]
    pub plan_version: u32,
    /// A segment of the period, `[since, until)`, when an immediate plan
    /// change split it (`None`: from the period's start, to its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    pub metrics: Vec<MetricUsage>,
}

/// Whether `[since, until)` (`None`: the period's own bound) holds `t`.
#[inline(always)]
pub fn segment_holds(since: Option<Timestamp>, until: Option<Timestamp>, t: Timestamp) -> bool {
    since.is_none_or(|s| s <= t) && until.is_none_or(|u| t < u)
}

impl PeriodUsage {
    /// Whether this (segment of the) period holds usage at `t`.
    #[inline(always)]
    pub fn holds(&self, t: Timestamp) -> bool {
        segment_holds(self.since, self.until, t)
    }

    /// The segment's bounds, `[from, to)`.
    pub fn bounds(&self) -> (Timestamp, Timestamp) {
        (
            self.since.unwrap_or(self.period.start),
            self.until.unwrap_or(self.period.end),
        )
    }
}

impl ClosedPeriod {
    /// Whether this (segment of the) issued period holds usage at `t`.
    pub fn holds(&self, t: Timestamp) -> bool {
        segment_holds(self.since, self.until, t)
    }

    /// The aggregation `metric` was rated with: its kept state's, else
    /// `sum`.
    pub fn aggregation_of(&self, metric: &str) -> Aggregation {
        self.aggregates
            .iter()
            .find(|a| a.metric == metric)
            .map_or(Aggregation::Sum, |a| a.aggregation)
    }

    /// The segment's bounds, `[from, to)`.
    pub fn bounds(&self) -> (Timestamp, Timestamp) {
        (
            self.since.unwrap_or(self.period.start),
            self.until.unwrap_or(self.period.end),
        )
    }
}

/// What a line of an issued period stands for, to price late usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BilledKey {
    Metric(String),
    MinimumSpend,
}

/// An issued period, kept for the late-usage window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    pub period: Period,
    pub plan_id: String,
    /// The version of `plan_id` (1 in snapshots from before versions).
    #[serde(default = "first_version")]
    pub plan_version: u32,
    /// The segment of the period it was rated on (see `PeriodUsage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Rated quantity per metric (the aggregated value), including late
    /// usage so far.
    pub totals: Vec<(String, Decimal)>,
    /// Aggregation state of the metrics not aggregated by `sum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<ClosedAggregate>,
    /// Amount billed so far per line key, including late lines not yet issued.
    pub billed: Vec<(BilledKey, Minor)>,
    /// The period was closed under the rule that the free units of an
    /// additive charge apply once per period across its segments on one
    /// plan and version (`fold::FreeUnitsUsed`), so late usage re-rates
    /// the plan's later segments. `false` in snapshots from before that
    /// rule: each segment was rated with the charge's full free units, and
    /// late usage re-rates only its own segment. Set only on the segments
    /// of a split period (a whole period has nothing to share).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_units_per_period: bool,
}

/// Collection state of an invoice not fully paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInvoice {
    pub invoice_id: String,
    pub number: String,
    pub issued_at: Timestamp,
    pub due_at: Timestamp,
    /// What was left to pay after credit at issue.
    pub amount_due: Minor,
    /// Paid since issue.
    pub paid: Minor,
    pub overdue: bool,
    /// Charge attempts requested so far.
    pub attempts: u32,
    /// The attempt whose result is awaited (at most one per invoice).
    pub outstanding: Option<u32>,
    pub next_retry_at: Option<Timestamp>,
    pub dunning_stopped: Option<DunningStop>,
}

impl OpenInvoice {
    pub fn remaining(&self) -> Minor {
        self.amount_due.saturating_sub(self.paid)
    }
}

/// The saved payment method: an opaque token reference, never card data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub token_ref: String,
    pub brand: String,
    pub last4: String,
    pub expires: String,
    /// When to send `PaymentMethodExpiring`.
    pub warn_at: Timestamp,
    pub warned: bool,
}

/// Usage of one (hour, metric, subject) waiting for the hour to close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupBucket {
    pub hour: Timestamp,
    pub metric: Name,
    pub subject: Name,
    pub quantity: Decimal,
    pub count: u64,
    pub correction: bool,
}

mod tz_serde {

    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// All billing state of one open account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: Arc<str>,
    pub environment: String,
    pub opened_at: Timestamp,
    pub currency: Currency,
    #[serde(with = "tz_serde")]
    pub timezone: Tz,
    pub tax_rate: Decimal,
    pub anchor: Anchor,
    pub plan_id: String,
    /// The version of `plan_id` the account is on: the latest when it
    /// subscribed or was moved (1 in snapshots from before versions).
    #[serde(default = "first_version")]
    pub plan_version: u32,
    /// A plan change waiting for the period starting at the given instant.
    pub pending_plan: Option<(String, Timestamp)>,
    /// The version of `pending_plan`'s plan, pinned when it was scheduled.
    #[serde(default = "first_version")]
    pub pending_plan_version: u32,
    pub closed_at: Option<Timestamp>,
    /// Set once the final invoice after closing was issued.
    pub finished: bool,
    /// Last journal sequence number used.
    pub journal_seq: u64,
    pub invoice_seq: u32,
    pub credit_note_seq: u32,
    /// The earliest period whose invoice is not issued yet.
    pub current: Period,
    /// Id the current period's invoice will be issued under.
    pub draft_invoice_id: String,
    /// Usage of unissued periods, earliest first.
    pub open: Vec<PeriodUsage>,
    /// Issued periods kept for late usage, oldest first.
    pub closed: Vec<ClosedPeriod>,
    /// Late-usage and adjustment lines waiting for the next invoice.
    pub pending_lines: Vec<Line>,
    /// Prepaid credit: the sum of `grants`' remaining amounts.
    pub credit: Minor,
    /// Live credit grants, in the order they were made (at most
    /// `EngineConfig::max_credit_grants` from inputs, see `credit.rs`).
    /// Empty in a snapshot from before grants: its credit becomes one paid
    /// grant the first time credit moves.
    #[serde(default)]
    pub grants: Vec<CreditGrant>,
    /// Last grant number used.
    #[serde(default)]
    pub grant_seq: u32,
    /// The coupon its period invoices are discounted by (`discount.rs`);
    /// absent in snapshots from before coupons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon: Option<Box<Coupon>>,
    /// Spend alert thresholds on the running draft's subtotal, ascending
    /// (`alerts.rs`); absent in snapshots from before alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Minor>,
    /// Those of `thresholds` already reached by the current draft (each
    /// alert fires once per period; emptied when a draft opens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds_reached: Vec<Minor>,
    /// Threshold invoicing (`interim.rs`): an interim invoice is issued when
    /// the draft's accrued, uninvoiced amount reaches it; absent in
    /// snapshots from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_at: Option<Minor>,
    /// What the current period's interim invoices have billed so far (none
    /// issued: `None`); the period's final invoice bills the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interim: Option<Box<Invoiced>>,
    /// `CreditLow` is sent when credit falls below the threshold while armed.
    pub credit_low_armed: bool,
    /// Issued invoices not fully paid, oldest first.
    pub invoices: Vec<OpenInvoice>,
    pub payment_method: Option<Box<PaymentMethod>>,
    pub rollups: Vec<RollupBucket>,
    /// Processing clock of the last change.
    pub clock: Timestamp,
    /// The account's next timer, kept current by every change
    /// (`Engine::next_timer` reads it).
    #[serde(default)]
    pub next_timer: Option<Timestamp>,
    /// Event ids of the dedup window; persisted separately from snapshots.
    #[serde(skip)]
    pub dedup: DedupWindow,
}

impl AccountState {
    /// Approximate heap + inline bytes held by this state, without the
    /// dedup window (the figure behind the "2 KB per account" budget).
    pub fn resident_bytes(&self) -> usize {
        fn s(x: &String) -> usize {
            x.capacity()
        }
        // A shared name: its bytes plus the two reference counts. Counted
        // at every holder, so names shared by several holders are over-counted.
        fn a(x: &Arc<str>) -> usize {
            x.len() + 16
        }
        // The dedup window is accounted separately (it is not billing state).
        let mut n = std::mem::size_of::<AccountState>() - std::mem::size_of::<DedupWindow>();
        n += a(&self.account_id)
            + s(&self.environment)
            + s(&self.plan_id)
            + s(&self.draft_invoice_id);
        n += self.pending_plan.as_ref().map_or(0, |(p, _)| s(p));
        n += self.open.capacity() * std::mem::size_of::<PeriodUsage>();
        for p in &self.open {
            n += s(&p.plan_id) + p.metrics.capacity() * std::mem::size_of::<MetricUsage>();
            for m in &p.metrics {
                n += m.metric.heap_bytes()
                    + m.subjects.capacity() * std::mem::size_of::<(Name, Decimal)>();
                n += m
                    .subjects
                    .iter()
                    .map(|(x, _)| x.heap_bytes())
                    .sum::<usize>();
                n += m.state.as_ref().map_or(0, |s| s.heap_bytes());
            }
        }
        n += self.closed.capacity() * std::mem::size_of::<ClosedPeriod>();
        for c in &self.closed {
            n += s(&c.plan_id) + c.totals.capacity() * std::mem::size_of::<(String, Decimal)>();
            n += c.totals.iter().map(|(x, _)| s(x)).sum::<usize>();
            n += c.aggregates.capacity() * std::mem::size_of::<ClosedAggregate>();
            n += c
                .aggregates
                .iter()
                .map(|a| s(&a.metric) + a.state.as_ref().map_or(0, |x| x.heap_bytes()))
                .sum::<usize>();
            n += c.billed.capacity() * std::mem::size_of::<(BilledKey, Minor)>();
            n += c
                .billed
                .iter()
                .map(|(k, _)| match k {
                    BilledKey::Metric(m) => s(m),
                    BilledKey::MinimumSpend => 0,
                })
                .sum::<usize>();
        }
        n += self.grants.capacity() * std::mem::size_of::<CreditGrant>();
        n += self.grants.iter().map(|g| s(&g.grant_id)).sum::<usize>();
        if let Some(c) = &self.coupon {
            n += std::mem::size_of::<Coupon>() + s(&c.coupon_id);
            n += c.charges.capacity() * std::mem::size_of::<String>();
            n += c.charges.iter().map(s).sum::<usize>();
        }
        n += (self.thresholds.capacity() + self.thresholds_reached.capacity())
            * std::mem::size_of::<Minor>();
        n += self.interim.as_ref().map_or(0, |i| i.heap_bytes());
        n += self.pending_lines.capacity() * std::mem::size_of::<Line>();
        n += self.invoices.capacity() * std::mem::size_of::<OpenInvoice>();
        n += self
            .invoices
            .iter()
            .map(|i| s(&i.invoice_id) + s(&i.number))
            .sum::<usize>();
        if let Some(pm) = &self.payment_method {
            n += std::mem::size_of::<PaymentMethod>();
            n += s(&pm.token_ref) + s(&pm.brand) + s(&pm.last4) + s(&pm.expires);
        }
        n += self.rollups.capacity() * std::mem::size_of::<RollupBucket>();
        n += self
            .rollups
            .iter()
            .map(|r| r.metric.heap_bytes() + r.subject.heap_bytes())
            .sum::<usize>();
        n
    }

    /// Total amount still owed on issued invoices.
    pub fn outstanding(&self) -> Minor {
        Minor::saturating_sum(self.invoices.iter().map(OpenInvoice::remaining))
    }
}
