//! The fold: `state + input → new state + journal entries`.
//!
//! `Engine::apply` first fires every timer due up to the processing clock
//! (period close, due dates, dunning retries, expiry warnings, rollup hours),
//! then validates the input completely before changing anything, so a
//! rejected input leaves the state exactly as it was.

use std::sync::Arc;

use rust_decimal::Decimal;

use super::account::{
    AccountState, BilledKey, ClosedAggregate, ClosedPeriod, MetricUsage, PeriodUsage, RollupBucket,
};
use super::aggregation::{self, AggState, Aggregation};
use super::alerts::parse_alerts;
use super::config::EngineConfig;
use super::dedup::{self, Seen};
use super::events::{
    AccountCommand, AccountKind, AdjustmentKind, CreditSource, DomainEvent, Input, IssuedInvoice,
    JournalEntry, Line, LineKind, PaymentEvent, PaymentKind, PlanChangeEffective, UsageRecorded,
};
use super::money::{round_ratio_half_even, Currency, Minor};
use super::name::{self, Name};
use super::plan::{Charge, Plan, PlanBook};
use super::rating::{display_unit_price, line_amount, line_amount_with_free};
use super::reject::Rejection;
use super::time::{next_period, period_containing, Anchor, Period, Timestamp, MICROS_PER_HOUR};
use super::tripwire::{find_card_number, mask_card_numbers};

/// What happened to an input that was not rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Seen before with the same payload: counted and ignored.
    Duplicate,
}

/// The billing engine: rules (`config`) and the price book. Pure.
#[derive(Debug, Clone)]
pub struct Engine {
    pub config: EngineConfig,
    pub plans: PlanBook,
}

/// Where journal entries go while one input or timer is folded.
pub(crate) struct Emit<'a> {
    pub out: &'a mut Vec<JournalEntry>,
    pub at: Timestamp,
    cause: &'a str,
    /// The causation id, made shared on the first entry and reused.
    shared: Option<Arc<str>>,
}

impl<'a> Emit<'a> {
    pub fn new(out: &'a mut Vec<JournalEntry>, at: Timestamp, cause: &'a str) -> Emit<'a> {
        Emit {
            out,
            at,
            cause,
            shared: None,
        }
    }

    // The fold's per-event steps are `inline(always)`, like the decoder's:
    // with `overflow-checks` (release) they stopped being inlined into
    // `Engine::apply` and the core path lost 6.5%; inlined, 3.1%
    // (BENCHMARKS.md, "Core path after issue 12").
    #[inline(always)]
    pub fn push(&mut self, st: &mut AccountState, event: DomainEvent) {
        st.journal_seq += 1;
        let cause = self.cause;
        let causation_id = self.shared.get_or_insert_with(|| Arc::from(cause)).clone();
        self.out.push(JournalEntry {
            account_id: st.account_id.clone(),
            seq: st.journal_seq,
            at: self.at,
            causation_id,
            event,
        });
    }
}

/// A draft invoice as it stands now: what the running total reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub invoice_id: String,
    pub period: Period,
    pub lines: Vec<Line>,
    pub subtotal: Minor,
    pub tax: Minor,
    pub total: Minor,
}

fn check_text(field: &str, value: &str) -> Result<(), Rejection> {
    match find_card_number(value) {
        Some(_) => Err(Rejection::CardNumber {
            field: field.to_string(),
            masked: mask_card_numbers(value),
        }),
        None => Ok(()),
    }
}

/// A duration as configured: "35d", "5h", "30m" or "90s".
fn duration_text(micros: i64) -> String {
    use super::time::{MICROS_PER_DAY, MICROS_PER_MINUTE, MICROS_PER_SECOND};
    for (unit, suffix) in [
        (MICROS_PER_DAY, "d"),
        (MICROS_PER_HOUR, "h"),
        (MICROS_PER_MINUTE, "m"),
    ] {
        if micros % unit == 0 {
            return format!("{}{suffix}", micros / unit);
        }
    }
    format!("{}s", micros / MICROS_PER_SECOND)
}

/// A quantity or amount written with 13 or more digits is read as text by
/// SPEC §4's rule: a card number given as a number is still a card
/// number. (Cheap: most numbers are far below 10^12 and never formatted.)
fn check_number(field: &str, value: Decimal) -> Result<(), Rejection> {
    const TWELVE_DIGITS: i128 = 999_999_999_999;
    if value.mantissa().abs() <= TWELVE_DIGITS {
        return Ok(());
    }
    check_text(field, &value.to_string())
}

/// Most plan segments of one period: at most `MAX_PLAN_SEGMENTS - 1`
/// immediate plan changes in a period (each keeps its own usage).
pub const MAX_PLAN_SEGMENTS: usize = 8;

/// What a period's segments on each plan used of its charges' free units.
/// A plan's free units of an additive charge (`Aggregation::is_additive`:
/// `sum`, `count`, `time_weighted`) apply once per period across all the
/// period's segments on that plan and version (an immediate change A → B
/// → A does not give A's allowance twice), used in segment order: a
/// segment gets what its plan's earlier segments in the period left. A
/// level-like charge (`max`, `latest`, `unique_count`, `percentile`)
/// measures its level again in each segment, which has the charge's full
/// free units: 8 seats in each of A's two segments are 8 seats, not 16.
#[derive(Debug, Default)]
struct FreeUnitsUsed(Vec<(String, u32, String, Decimal)>);

impl FreeUnitsUsed {
    /// The free units of `charge` (aggregated by `kind`) left for a
    /// segment on `plan` that rates `quantity`, which it then uses.
    fn take(
        &mut self,
        plan: &Plan,
        charge: &Charge,
        kind: Aggregation,
        quantity: Decimal,
    ) -> Decimal {
        if charge.free_units.is_zero() || !kind.is_additive() {
            return charge.free_units;
        }
        let key = |(p, v, m, _): &&mut (String, u32, String, Decimal)| {
            (p.as_str(), *v, m.as_str())
                == (plan.plan_id.as_str(), plan.version, charge.metric.as_str())
        };
        match self.0.iter_mut().find(key) {
            Some((.., used)) => {
                let left = (charge.free_units - *used).max(Decimal::ZERO);
                *used = used.saturating_add(quantity);
                left
            }
            None => {
                self.0.push((
                    plan.plan_id.clone(),
                    plan.version,
                    charge.metric.clone(),
                    quantity,
                ));
                charge.free_units
            }
        }
    }
}

/// The subject that holds the usage of every subject past the cap.
pub const OTHER_SUBJECT: &str = "(other)";

/// Add `qty` of `subject` to a metric's breakdown, which names at most
/// `cap` subjects: when it is full, a subject's event larger than the
/// smallest named subject's total takes that subject's place (whose total
/// moves to `OTHER_SUBJECT`), any other goes to `OTHER_SUBJECT`. The
/// breakdown always sums to the metric's total. Returns the subject's name
/// (shared with the breakdown when it is named there).
fn add_subject(
    subjects: &mut Vec<(Name, Decimal)>,
    subject: &str,
    qty: Decimal,
    cap: usize,
) -> Name {
    let t = name::tag(subject);
    if let Some((s, q)) = subjects.iter_mut().find(|(s, _)| s.is(t, subject)) {
        *q = q.saturating_add(qty);
        return s.clone();
    }
    let name = Name::new(subject);
    let other_tag = name::tag(OTHER_SUBJECT);
    let is_other = |s: &Name| s.is(other_tag, OTHER_SUBJECT);
    let named = subjects.iter().filter(|(s, _)| !is_other(s)).count();
    if named < cap {
        // Exact growth: this vector is resident for every active account.
        subjects.reserve_exact(1);
        subjects.push((name.clone(), qty));
        return name;
    }
    let smallest = subjects
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !is_other(s))
        .min_by_key(|(_, (_, q))| *q)
        .map(|(i, (_, q))| (i, *q));
    let to_other = match smallest {
        Some((i, q)) if qty > q => std::mem::replace(&mut subjects[i], (name.clone(), qty)).1,
        _ => qty,
    };
    match subjects.iter_mut().find(|(s, _)| is_other(s)) {
        Some((_, q)) => *q = q.saturating_add(to_other),
        None => {
            subjects.reserve_exact(1);
            subjects.push((Name::new(OTHER_SUBJECT), to_other));
        }
    }
    name
}

/// `add_subject` for a line's breakdown (late usage lines).
fn add_line_subject(
    subjects: &mut std::collections::BTreeMap<String, Decimal>,
    subject: &str,
    qty: Decimal,
    cap: usize,
) {
    if let Some(q) = subjects.get_mut(subject) {
        *q = q.saturating_add(qty);
        return;
    }
    let named = subjects.len() - usize::from(subjects.contains_key(OTHER_SUBJECT));
    if named < cap {
        subjects.insert(subject.to_string(), qty);
        return;
    }
    let smallest = subjects
        .iter()
        .filter(|(s, _)| s.as_str() != OTHER_SUBJECT)
        .min_by_key(|(_, q)| **q)
        .map(|(s, q)| (s.clone(), *q));
    let to_other = match smallest {
        Some((s, q)) if qty > q => {
            subjects.remove(&s);
            subjects.insert(subject.to_string(), qty);
            q
        }
        _ => qty,
    };
    let other = subjects.entry(OTHER_SUBJECT.to_string()).or_default();
    *other = other.saturating_add(to_other);
}

/// Why usage is refused whose period total no line could carry.
fn too_dear(st: &AccountState, metric: &str, total: Decimal) -> String {
    format!(
        "the charge for {metric} on the period total {total} would exceed the largest amount one line may carry ({})",
        st.currency.format(Minor::MAX_AMOUNT)
    )
}

/// `amount × part / whole`, rounded half-to-even once to minor units.
pub fn prorate(currency: Currency, amount: Decimal, part: i64, whole: i64) -> Minor {
    let exact = || -> Option<i128> {
        let scale_up = 10i128.checked_pow(currency.exponent())?;
        let num = amount
            .mantissa()
            .checked_mul(scale_up)?
            .checked_mul(i128::from(part))?;
        let den = 10i128
            .checked_pow(amount.scale())?
            .checked_mul(i128::from(whole))?;
        Some(round_ratio_half_even(num, den))
    };
    match exact().and_then(|v| i64::try_from(v).ok()) {
        Some(v) => Minor(v),
        // Beyond i128 (not for a plan within the bounds): 28-digit
        // decimal arithmetic, held at the largest amount a line may carry.
        None => amount
            .checked_mul(Decimal::from(part))
            .and_then(|a| a.checked_div(Decimal::from(whole)))
            .and_then(|a| currency.round(a))
            .filter(|a| a.within(Minor::MAX_AMOUNT))
            .unwrap_or(Minor::MAX_AMOUNT),
    }
}

impl Engine {
    pub fn new(config: EngineConfig, plans: PlanBook) -> Engine {
        Engine { config, plans }
    }

    /// Apply one input at processing instant `now`. Journal entries of
    /// every change (timers that came due first, then the input's) are
    /// appended to `out`. `slot` is `None` for an account never opened.
    pub fn apply(
        &self,
        slot: &mut Option<AccountState>,
        input: &Input,
        now: Timestamp,
        out: &mut Vec<JournalEntry>,
    ) -> Result<Outcome, Rejection> {
        if let Some(st) = slot.as_mut() {
            self.advance(st, now, out);
        }
        self.check_envelope(input, now)?;
        let key = dedup::key(input.event_id());
        let fingerprint = dedup::fingerprint(input);
        let Some(st) = slot.as_mut() else {
            return match input {
                Input::Account(
                    cmd @ AccountCommand {
                        kind: AccountKind::AccountOpened { .. },
                        ..
                    },
                ) => {
                    let mut st = self.open_account(cmd, now, out)?;
                    st.dedup
                        .insert(key, fingerprint, dedup::remembered_from(input, now));
                    self.refresh_timer(&mut st);
                    self.advance(&mut st, now, out);
                    *slot = Some(st);
                    Ok(Outcome::Applied)
                }
                _ => Err(Rejection::UnknownAccount {
                    account_id: input.account_id().to_string(),
                }),
            };
        };
        // One probe: the id is recorded now and taken back if the input is
        // rejected (rejections leave no trace, so a fixed input can be
        // replayed from the dead-letter topic).
        let from = dedup::remembered_from(input, now);
        match st.dedup.check_and_insert(key, fingerprint, from) {
            Seen::Duplicate => return Ok(Outcome::Duplicate),
            Seen::Conflict => {
                return Err(Rejection::Conflict {
                    event_id: input.event_id().to_string(),
                })
            }
            Seen::New => {}
        }
        // An id new to the window may still be a redelivery whose id was
        // forgotten: accept it only if it is younger than the late window,
        // within which the window remembers every id (`InputWindows`).
        // `st.clock` (advanced above, never backwards) is the clock the
        // window expires by. An opening is refused by existence instead.
        let earliest = self.config.earliest_accepted(st.clock);
        if input.occurred_at() < earliest
            && !matches!(
                input,
                Input::Account(AccountCommand {
                    kind: AccountKind::AccountOpened { .. },
                    ..
                })
            )
        {
            st.dedup.remove(key);
            return Err(Rejection::TooOld {
                occurred_at: input.occurred_at(),
                earliest,
                limit: format!(
                    "billing.late_window ({}) accepts: dedup may have forgotten an older id",
                    duration_text(self.config.windows.late_micros())
                ),
            });
        }
        let mut emit = Emit::new(out, now, input.event_id());
        let applied = match input {
            Input::Usage(u) => self.apply_usage(st, u, &mut emit),
            Input::Payment(p) => self.apply_payment(st, p, &mut emit),
            Input::Account(a) => self.apply_account(st, a, &mut emit),
        };
        if let Err(rejection) = applied {
            st.dedup.remove(key);
            return Err(rejection);
        }
        self.check_thresholds(st, &mut emit);
        self.check_invoice_at(st, &mut emit);
        st.clock = st.clock.max(now);
        match input {
            // Usage only ever adds a rollup bucket: its close is the one
            // timer it can bring forward (exact, and no full recompute).
            Input::Usage(u) => {
                let close = u
                    .occurred_at
                    .hour_floor()
                    .plus(MICROS_PER_HOUR + self.config.rollup_lateness_micros);
                st.next_timer = Some(st.next_timer.map_or(close, |t| t.min(close)));
                debug_assert_eq!(st.next_timer, self.compute_next_timer(st));
            }
            _ => self.refresh_timer(st),
        }
        Ok(Outcome::Applied)
    }

    /// Checks that need no account state, in this order: card numbers
    /// first (SPEC §4: whatever else is wrong with an input, a card number
    /// in it is what it is rejected for, masked), then the environment
    /// (every input must name this instance's: one that names none is
    /// refused like one that names another, SPEC §7), then the
    /// future-skew limit.
    fn check_envelope(&self, input: &Input, now: Timestamp) -> Result<(), Rejection> {
        match input {
            Input::Usage(u) => {
                check_text("subject", &u.subject)?;
                check_text("metric", &u.metric)?;
                for (k, v) in &u.attributes {
                    check_text("attributes (key)", k)?;
                    // The field name is only built when the check fails.
                    if find_card_number(v).is_some() {
                        check_text(&format!("attributes.{k}"), v)?;
                    }
                }
                check_number("quantity", u.quantity)?;
            }
            Input::Payment(p) => match &p.kind {
                PaymentKind::PaymentFailed { reason, .. } => check_text("reason", reason)?,
                PaymentKind::PaymentRefunded { reason, amount, .. } => {
                    check_text("reason", reason)?;
                    check_number("amount", *amount)?;
                }
                PaymentKind::BankTransferReceived {
                    reference, amount, ..
                } => {
                    check_text("reference", reference)?;
                    check_number("amount", *amount)?;
                }
                PaymentKind::PaymentMethodAttached { brand, .. } => check_text("brand", brand)?,
                PaymentKind::CreditToppedUp { amount, .. }
                | PaymentKind::PaymentSucceeded { amount, .. } => check_number("amount", *amount)?,
                PaymentKind::PaymentMethodDetached { .. } => {}
            },
            Input::Account(a) => match &a.kind {
                AccountKind::AdjustmentIssued { reason, amount, .. } => {
                    check_text("reason", reason)?;
                    check_number("amount", *amount)?;
                }
                AccountKind::CouponApplied { coupon } => {
                    check_text("coupon_id", &coupon.coupon_id)?;
                    for c in &coupon.charges {
                        check_text("charges", c)?;
                    }
                    if let Some(a) = coupon.amount_off {
                        check_number("amount_off", a)?;
                    }
                }
                AccountKind::ThresholdsSet { currency, .. } => check_text("currency", currency)?,
                _ => {}
            },
        }
        let env = match input {
            Input::Usage(u) => Some(u.environment.as_str()),
            Input::Payment(p) => p.environment.as_deref(),
            Input::Account(a) => a.environment.as_deref(),
        };
        if env != Some(self.config.environment.as_str()) {
            return Err(Rejection::WrongEnvironment {
                expected: self.config.environment.clone(),
                got: env.map(str::to_string),
            });
        }
        let occurred_at = input.occurred_at();
        if occurred_at.0 > now.0.saturating_add(self.config.future_tolerance_micros) {
            return Err(Rejection::FromFuture { occurred_at, now });
        }
        Ok(())
    }

    // ---- timers ---------------------------------------------------------

    /// The earliest instant at which this account has something to do on
    /// its own (no input needed), if any.
    /// Read from the state, where every change keeps it current, so the
    /// per-event timer check touches one field.
    pub fn next_timer(&self, st: &AccountState) -> Option<Timestamp> {
        st.next_timer
    }

    fn refresh_timer(&self, st: &mut AccountState) {
        st.next_timer = self.compute_next_timer(st);
    }

    fn compute_next_timer(&self, st: &AccountState) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        if !st.finished {
            consider(st.current.end.plus(self.config.grace_micros));
        }
        for inv in &st.invoices {
            if !inv.overdue {
                consider(inv.due_at);
            }
            if let Some(r) = inv.next_retry_at {
                consider(r);
            }
        }
        if let Some(pm) = &st.payment_method {
            if !pm.warned {
                consider(pm.warn_at);
            }
        }
        if let Some(g) = self.grant_timers(st) {
            consider(g);
        }
        if let Some(h) = st.rollups.iter().map(|r| r.hour).min() {
            consider(h.plus(MICROS_PER_HOUR + self.config.rollup_lateness_micros));
        }
        next
    }

    /// Fire every timer due at or before `now`, each at its own instant
    /// and in time order, as if the clock had passed over them.
    pub fn advance(&self, st: &mut AccountState, now: Timestamp, out: &mut Vec<JournalEntry>) {
        while let Some(t) = st.next_timer {
            if t > now {
                break;
            }
            self.fire(st, t, out);
            self.refresh_timer(st);
        }
        // The account's clock never goes back, so neither does the expiry
        // cutoff nor the late-window check that reads the same clock.
        st.clock = st.clock.max(now);
        st.dedup.expire(self.config.dedup_forget_before(st.clock));
    }

    fn fire(&self, st: &mut AccountState, t: Timestamp, out: &mut Vec<JournalEntry>) {
        // Credit grants first: a grant expiring at the close instant is
        // gone before the close draws credit.
        if self.grant_timer_due(st, t) {
            let cause = format!("timer:credit:{}", t.0);
            self.fire_grant_timers(st, &mut Emit::new(&mut *out, t, &cause));
        }
        if !st.finished && st.current.end.plus(self.config.grace_micros) <= t {
            let cause = format!("timer:close:{}", st.current.start);
            let mut emit = Emit::new(&mut *out, t, &cause);
            self.close_period(st, &mut emit);
            // The next draft opened with its own alerts armed.
            self.check_thresholds(st, &mut emit);
            self.check_invoice_at(st, &mut emit);
        }
        // Micros, not RFC 3339: this runs for every rollup hour of every
        // account, and formatting a date showed up in the core-path profile.
        let cause = format!("timer:{}", t.0);
        let mut emit = Emit::new(out, t, &cause);
        self.fire_invoice_timers(st, &mut emit);
        let warn = st
            .payment_method
            .as_deref()
            .filter(|pm| !pm.warned && pm.warn_at <= t)
            .cloned();
        if let Some(pm) = warn {
            if let Some(m) = st.payment_method.as_mut() {
                m.warned = true;
            }
            emit.push(
                st,
                DomainEvent::PaymentMethodExpiring {
                    token_ref: pm.token_ref,
                    brand: pm.brand,
                    last4: pm.last4,
                    expires: pm.expires,
                },
            );
        }
        self.emit_rollups(st, &mut emit);
    }

    fn emit_rollups(&self, st: &mut AccountState, emit: &mut Emit) {
        let lateness = MICROS_PER_HOUR + self.config.rollup_lateness_micros;
        if !st.rollups.iter().any(|r| r.hour.plus(lateness) <= emit.at) {
            return;
        }
        // Buckets are kept sorted (see `add_to_rollup`), so the closed hours
        // are a prefix: emit and drain it in place, no sort, no allocation.
        let n = st
            .rollups
            .partition_point(|r| r.hour.plus(lateness) <= emit.at);
        let mut buckets = std::mem::take(&mut st.rollups);
        for r in buckets.drain(..n) {
            emit.push(
                st,
                DomainEvent::UsageRolledUp {
                    hour: r.hour,
                    metric: r.metric.into_shared(),
                    subject: r.subject.into_shared(),
                    quantity: r.quantity,
                    count: r.count,
                    correction: r.correction,
                },
            );
        }
        // Keep a small buffer for the next hour; give back a large one
        // (a busy hour of many subjects) so idle accounts stay small.
        if buckets.is_empty() && buckets.capacity() > 4 {
            buckets = Vec::new();
        }
        st.rollups = buckets;
    }

    // ---- periods and invoices --------------------------------------------

    /// The plan (id and version) in force for the period starting at `start`.
    fn plan_for(&self, st: &AccountState, start: Timestamp) -> (String, u32) {
        let (id, version) = self.plan_for_ref(st, start);
        (id.to_string(), version)
    }

    /// The plan the recurring fee of period `p` is charged on, in advance:
    /// the plan of its first segment when an immediate change in the grace
    /// window already split it, else the plan in force at its start.
    fn fee_plan(&self, st: &AccountState, p: Period) -> Option<Arc<Plan>> {
        let (id, version) = match st.open.iter().find(|u| u.period == p) {
            Some(u) => (u.plan_id.as_str(), u.plan_version),
            None => self.plan_for_ref(st, p.start),
        };
        self.plans.get_version(id, version).cloned()
    }

    /// The usage of `metric` in the open period `period` (at `idx` of
    /// `st.open` if open already, else opened now, in period order), and
    /// in it the metric (at `known` if counted already, else added with
    /// `aggregation` and its `state`). Inlined: it is on the fold's path.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn metric_usage<'s>(
        &self,
        st: &'s mut AccountState,
        idx: Option<usize>,
        period: Period,
        known: Option<usize>,
        metric: &str,
        aggregation: Aggregation,
        state: Option<Box<AggState>>,
    ) -> &'s mut MetricUsage {
        let idx = match idx {
            Some(i) => i,
            None => {
                let (plan_id, plan_version) = self.plan_for(st, period.start);
                let at = st.open.partition_point(|o| o.period.start < period.start);
                // Exact growth: this vector is resident for every account.
                st.open.reserve_exact(1);
                st.open.insert(
                    at,
                    PeriodUsage {
                        period,
                        plan_id,
                        plan_version,
                        since: None,
                        until: None,
                        metrics: Vec::new(),
                    },
                );
                at
            }
        };
        let open = &mut st.open[idx];
        match known {
            Some(k) => &mut open.metrics[k],
            None => {
                open.metrics.reserve_exact(1);
                open.metrics.push(MetricUsage {
                    metric: Name::new(metric),
                    total: Decimal::ZERO,
                    subjects: Vec::new(),
                    aggregation,
                    state,
                });
                open.metrics.last_mut().expect("just pushed")
            }
        }
    }

    /// The charge of `metric` in plan `plan_id`: `unknown_plan` or
    /// `unknown_metric` otherwise.
    #[inline]
    fn charge_of(&self, plan_id: &str, version: u32, metric: &str) -> Result<&Charge, Rejection> {
        let plan = self
            .plan(plan_id, version)
            .ok_or_else(|| Self::unknown_plan(plan_id, version))?;
        plan.charge(metric).ok_or_else(|| Rejection::UnknownMetric {
            metric: metric.to_string(),
            plan_id: plan_id.to_string(),
        })
    }

    fn plan_for_ref<'s>(&self, st: &'s AccountState, start: Timestamp) -> (&'s str, u32) {
        match &st.pending_plan {
            Some((plan, effective)) if *effective <= start => (plan, st.pending_plan_version),
            _ => (&st.plan_id, st.plan_version),
        }
    }

    /// One version of a plan.
    #[inline]
    fn plan(&self, plan_id: &str, version: u32) -> Option<&Plan> {
        self.plans.get_version(plan_id, version).map(|p| p.as_ref())
    }

    /// `unknown_plan` for a plan version the book does not have.
    fn unknown_plan(plan_id: &str, version: u32) -> Rejection {
        Rejection::UnknownPlan {
            plan_id: if version == 1 {
                plan_id.to_string()
            } else {
                format!("{plan_id} version {version}")
            },
        }
    }

    /// Share of `p` the account was open for within the segment `seg`
    /// (the whole period but after an immediate plan change), as (part,
    /// whole) micros.
    fn share(st: &AccountState, p: Period, seg: (Timestamp, Timestamp)) -> (i64, i64) {
        let (from, to) = Self::span(st, seg);
        (to.0 - from.0, p.length())
    }

    /// The part of the segment `seg` of a period the account was open
    /// for, `[from, to)`: what time_weighted and percentile aggregate over.
    fn span(st: &AccountState, seg: (Timestamp, Timestamp)) -> (Timestamp, Timestamp) {
        let from = seg.0.max(st.opened_at);
        let to = st.closed_at.map_or(seg.1, |c| c.min(seg.1)).max(from);
        (from, to)
    }

    /// The quantity a metric's line is rated on (its total for `sum`).
    fn metric_quantity(
        st: &AccountState,
        m: &MetricUsage,
        p: Period,
        seg: (Timestamp, Timestamp),
    ) -> Option<Decimal> {
        if m.aggregation.is_sum() {
            return Some(m.total);
        }
        let (from, to) = Self::span(st, seg);
        aggregation::value(m.aggregation, m.total, m.state.as_deref(), p, from, to)
    }

    fn minimum_for(
        &self,
        st: &AccountState,
        plan: &Plan,
        p: Period,
        seg: (Timestamp, Timestamp),
    ) -> Minor {
        let (part, whole) = Self::share(st, p, seg);
        prorate(st.currency, plan.minimum_spend, part, whole)
    }

    /// What the lines of a segment of a period split by an immediate plan
    /// change say (`None` for a whole period: its lines read as before).
    /// `api::lineage` reads the segment's bounds back from it.
    fn segment_note(
        plan_id: &str,
        version: u32,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        p: Period,
    ) -> Option<String> {
        if since.is_none() && until.is_none() {
            return None;
        }
        Some(format!(
            "on plan {plan_id} (version {version}) from {} to {}",
            since.unwrap_or(p.start),
            until.unwrap_or(p.end)
        ))
    }

    /// The amount of `charge` on `total` in the account's currency, if a
    /// line can carry it (`Minor::MAX_AMOUNT`).
    fn line_amount(st: &AccountState, charge: &Charge, total: Decimal) -> Option<Minor> {
        line_amount(charge, total, st.currency, Minor::MAX_AMOUNT)
    }

    /// Usage and minimum-spend lines of a period (or of one of its plan
    /// segments, with what the earlier ones used of the free units in
    /// `free`), with the usage sum.
    fn usage_lines(
        &self,
        st: &AccountState,
        usage: Option<&PeriodUsage>,
        plan: Option<&Plan>,
        p: Period,
        free: &mut FreeUnitsUsed,
    ) -> Vec<Line> {
        let mut lines = Vec::new();
        let Some(plan) = plan else { return lines };
        let mut usage_sum = Minor::ZERO;
        let seg = usage.map_or((p.start, p.end), PeriodUsage::bounds);
        let split = usage.is_some_and(|u| u.since.is_some() || u.until.is_some());
        let note =
            usage.and_then(|u| Self::segment_note(&u.plan_id, u.plan_version, u.since, u.until, p));
        for m in usage.map(|u| u.metrics.as_slice()).unwrap_or_default() {
            let Some(charge) = plan.charge(m.metric.as_str()) else {
                continue;
            };
            // Usage is refused before its total can outgrow a line; only a
            // plan replaced by a dearer one mid-period can get here with
            // `None`: the line is not billed, and says so.
            let quantity = Self::metric_quantity(st, m, p, seg);
            let amount = quantity.and_then(|q| {
                // A whole period has its plan's free units; a segment what
                // the plan's earlier segments left.
                let free = if split {
                    free.take(plan, charge, m.aggregation, q)
                } else {
                    charge.free_units
                };
                line_amount_with_free(charge, q, free, st.currency, Minor::MAX_AMOUNT)
            });
            let (amount, description) = match amount {
                Some(amount) => (amount, note.clone()),
                None => (
                    Minor::ZERO,
                    Some(format!(
                        "not billed: the charge on this total exceeds the largest amount one line may carry ({}); bill it with a debit adjustment",
                        st.currency.format(Minor::MAX_AMOUNT)
                    )),
                ),
            };
            usage_sum = usage_sum.saturating_add(amount);
            lines.push(Line {
                kind: LineKind::Usage,
                metric: Some(m.metric.as_str().to_string()),
                quantity: quantity.unwrap_or(m.total),
                unit_price: display_unit_price(charge),
                amount,
                for_period: p,
                subjects: m
                    .subjects
                    .iter()
                    .map(|(s, q)| (s.to_string(), *q))
                    .collect(),
                description,
            });
        }
        let minimum = self.minimum_for(st, plan, p, seg);
        if usage_sum < minimum {
            let text = format!("minimum spend {}", st.currency.format(minimum));
            lines.push(Line {
                kind: LineKind::MinimumSpend,
                metric: None,
                quantity: Decimal::ONE,
                unit_price: None,
                amount: minimum.saturating_sub(usage_sum),
                for_period: p,
                subjects: Default::default(),
                description: Some(match &note {
                    Some(n) => format!("{text} {n}"),
                    None => text,
                }),
            });
        }
        lines
    }

    fn fee_line(st: &AccountState, plan: &Plan, p: Period) -> Option<Line> {
        let (part, whole) = Self::share(st, p, (p.start, p.end));
        let amount = prorate(st.currency, plan.recurring_fee, part, whole);
        amount.is_positive().then(|| Line {
            kind: LineKind::RecurringFee,
            metric: None,
            quantity: Decimal::ONE,
            unit_price: None,
            amount,
            for_period: p,
            subjects: Default::default(),
            description: Some(if part == whole {
                format!("{} recurring fee", plan.plan_id)
            } else {
                let hours = |m: i64| {
                    (Decimal::from(m) / Decimal::from(MICROS_PER_HOUR))
                        .round_dp(2)
                        .normalize()
                };
                format!(
                    "{} recurring fee, prorated for {} of {} hours",
                    plan.plan_id,
                    hours(part),
                    hours(whole)
                )
            }),
        })
    }

    /// The draft invoice of the current period as it stands now: the
    /// whole period's lines, including what interim invoices of the period
    /// already billed (`interim.rs`; the preview shows the rest).
    pub fn draft(&self, st: &AccountState) -> Draft {
        let lines = self.draft_lines(st, true);
        let subtotal = Minor::saturating_sum(lines.iter().map(|l| l.amount));
        let tax = self.tax(st, subtotal);
        Draft {
            invoice_id: st.draft_invoice_id.clone(),
            period: st.current,
            lines,
            subtotal,
            tax,
            total: subtotal.saturating_add(tax),
        }
    }

    /// The lines of the current period's invoice if it closed now, as the
    /// close builds them; when `whole` is false, what has accrued so far
    /// (`interim.rs`): without the period's own minimum-spend true-up and
    /// without the next period's fee in advance, which only the period's
    /// final invoice bills.
    pub(crate) fn draft_lines(&self, st: &AccountState, whole: bool) -> Vec<Line> {
        let p = st.current;
        let mut lines = Vec::new();
        let mut segments = st.open.iter().filter(|u| u.period == p).peekable();
        let mut free = FreeUnitsUsed::default();
        if segments.peek().is_none() {
            let (id, version) = self.plan_for_ref(st, p.start);
            lines = self.usage_lines(st, None, self.plan(id, version), p, &mut free);
        }
        for u in segments {
            let plan = self.plan(&u.plan_id, u.plan_version);
            lines.extend(self.usage_lines(st, Some(u), plan, p, &mut free));
        }
        if !whole {
            lines.retain(|l| l.kind != LineKind::MinimumSpend);
        }
        lines.extend(st.pending_lines.iter().cloned());
        let next = next_period(p, st.timezone, st.anchor);
        if whole && st.closed_at.is_none_or(|c| c >= next.start) {
            if let Some(plan) = self.fee_plan(st, next) {
                lines.extend(Self::fee_line(st, &plan, next));
            }
        }
        if let Some(line) = Self::discount_line(st, p, &lines) {
            lines.push(line);
        }
        lines
    }

    /// The invoice the account's current period will be issued as if no
    /// further input arrives (the upcoming invoice: `billstream preview`,
    /// `GET …/upcoming-invoice`), or `None` once the account has issued its
    /// final invoice. Worked out by the code that issues invoices: a copy
    /// of the state is advanced to `now` (timers due by then fire, as they
    /// would), then to the current period's close (period end + grace),
    /// where the close timer issues the draft — usage lines, late lines and
    /// adjustments waiting, the next period's fee, the coupon's discount,
    /// tax, credit drawn grant by grant as it will be at that instant
    /// (a grant expiring before it is not counted) and the amount due.
    /// `st` is not changed; nothing is journaled.
    pub fn preview(&self, st: &AccountState, now: Timestamp) -> Option<IssuedInvoice> {
        let mut copy = st.clone();
        let mut scratch = Vec::new();
        self.advance(&mut copy, now, &mut scratch);
        if copy.finished {
            return None;
        }
        let invoice_id = copy.draft_invoice_id.clone();
        let close = copy.current.end.plus(self.config.grace_micros).max(now);
        scratch.clear();
        self.advance(&mut copy, close, &mut scratch);
        scratch.into_iter().find_map(|e| match e.event {
            DomainEvent::InvoiceIssued { invoice } if invoice.invoice_id == invoice_id => {
                Some(*invoice)
            }
            _ => None,
        })
    }

    /// Tax on `subtotal`, rounded once; the rate is in [0, 1), so it is
    /// smaller than the subtotal and of its sign.
    pub(crate) fn tax(&self, st: &AccountState, subtotal: Minor) -> Minor {
        st.currency
            .to_major(subtotal)
            .checked_mul(st.tax_rate)
            .and_then(|t| st.currency.round(t))
            .unwrap_or(Minor::ZERO)
    }

    pub(crate) fn invoice_id(account_id: &str, seq: u32) -> String {
        format!("inv_{account_id}_{seq:05}")
    }

    /// Issue the current period's draft (period end + grace has passed) and
    /// open the next period's.
    fn close_period(&self, st: &mut AccountState, emit: &mut Emit) {
        let p = st.current;
        // The period's usage: one entry, or one per plan segment after an
        // immediate plan change, at the front (`open` is in period order).
        let n = st.open.iter().take_while(|u| u.period == p).count();
        let mut segments: Vec<PeriodUsage> = st.open.drain(..n).collect();
        if segments.is_empty() {
            let (plan_id, plan_version) = self.plan_for(st, p.start);
            segments.push(PeriodUsage {
                period: p,
                plan_id,
                plan_version,
                since: None,
                until: None,
                metrics: Vec::new(),
            });
        }
        let mut lines = Vec::new();
        let mut free = FreeUnitsUsed::default();
        for usage in segments {
            let plan = self.plans.get_version(&usage.plan_id, usage.plan_version);
            let seg_lines =
                self.usage_lines(st, Some(&usage), plan.map(|p| p.as_ref()), p, &mut free);
            let billed = seg_lines
                .iter()
                .map(|l| match &l.metric {
                    Some(m) => (BilledKey::Metric(m.clone()), l.amount),
                    None => (BilledKey::MinimumSpend, l.amount),
                })
                .collect();
            lines.extend(seg_lines);
            let seg = usage.bounds();
            let mut totals = Vec::new();
            let mut aggregates = Vec::new();
            for m in usage.metrics {
                let value = Self::metric_quantity(st, &m, p, seg).unwrap_or(m.total);
                totals.push((m.metric.to_string(), value));
                if !m.aggregation.is_sum() {
                    aggregates.push(ClosedAggregate {
                        metric: m.metric.to_string(),
                        aggregation: m.aggregation,
                        total: m.total,
                        state: m.state,
                    });
                }
            }
            let split = usage.since.is_some() || usage.until.is_some();
            st.closed.push(ClosedPeriod {
                period: p,
                plan_id: usage.plan_id,
                plan_version: usage.plan_version,
                since: usage.since,
                until: usage.until,
                totals,
                aggregates,
                billed,
                free_units_per_period: split,
            });
        }
        // Keep the issued periods late input can still reach: those ending
        // after the earliest accepted instant (the clock only moves on).
        let earliest = self.config.earliest_accepted(emit.at);
        st.closed.retain(|c| c.period.end > earliest);
        lines.append(&mut st.pending_lines);

        let next = next_period(p, st.timezone, st.anchor);
        let last = st.closed_at.is_some_and(|c| c < next.start);
        if !last {
            if let Some((new_plan, effective)) = st.pending_plan.clone() {
                if effective <= next.start {
                    let from = std::mem::replace(&mut st.plan_id, new_plan.clone());
                    let version = st.pending_plan_version;
                    let from_version = std::mem::replace(&mut st.plan_version, version);
                    st.pending_plan = None;
                    emit.push(
                        st,
                        DomainEvent::PlanChanged {
                            from_plan_id: from,
                            plan_id: new_plan,
                            effective_at: next.start,
                            from_version,
                            version,
                            immediate: false,
                        },
                    );
                }
            }
            if let Some(plan) = self.fee_plan(st, next) {
                lines.extend(Self::fee_line(st, &plan, next));
            }
        }
        let invoice_id = std::mem::take(&mut st.draft_invoice_id);
        self.apply_discount(st, &invoice_id, p, &mut lines, emit);
        // After interim invoices (`interim.rs`) the final one bills the
        // rest: the period's lines less what they billed, key by key, with
        // the tax on the period's whole subtotal less the tax they carried.
        let earlier = st.interim.take();
        let prior = earlier
            .as_deref()
            .map_or((Minor::ZERO, Minor::ZERO), |i| (i.subtotal, i.tax));
        if let Some(invoiced) = earlier {
            lines = invoiced.rest_of(st.currency, lines);
        }
        let seq = st.invoice_seq;
        self.issue(st, invoice_id, seq, p, lines, prior, false, emit);
        if last {
            st.finished = true;
        } else {
            st.current = next;
            self.open_draft(st, emit);
        }
    }

    fn open_draft(&self, st: &mut AccountState, emit: &mut Emit) {
        st.invoice_seq += 1;
        st.draft_invoice_id = Self::invoice_id(&st.account_id, st.invoice_seq);
        st.thresholds_reached.clear();
        let (invoice_id, period) = (st.draft_invoice_id.clone(), st.current);
        emit.push(st, DomainEvent::InvoiceOpened { invoice_id, period });
    }

    // ---- usage ------------------------------------------------------------

    #[inline(always)]
    fn apply_usage(
        &self,
        st: &mut AccountState,
        u: &UsageRecorded,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        let bad_qty = |reason: &str| Rejection::InvalidQuantity {
            quantity: u.quantity.to_string(),
            reason: reason.into(),
        };
        if u.quantity.is_sign_negative() && !u.quantity.is_zero() {
            return Err(bad_qty("must not be negative"));
        }
        if u.quantity > self.config.max_quantity {
            return Err(bad_qty(&format!(
                "exceeds the per-event maximum {}",
                self.config.max_quantity
            )));
        }
        if u.occurred_at < st.opened_at {
            return Err(Rejection::BeforeAccountOpened {
                occurred_at: u.occurred_at,
                opened_at: st.opened_at,
            });
        }
        if let Some(closed_at) = st.closed_at {
            if u.occurred_at >= closed_at {
                return Err(Rejection::AccountClosed { closed_at });
            }
        }
        let period = if st.current.contains(u.occurred_at) {
            st.current
        } else {
            period_containing(u.occurred_at, st.timezone, st.anchor)
        };
        let late = period.start < st.current.start;
        let (metric, subject) = if late {
            self.apply_late_usage(st, u, period)?;
            (Name::new(&u.metric), Name::new(&u.subject))
        } else {
            let metric_tag = name::tag(&u.metric);
            // The period's usage (its plan segment's, after an immediate
            // plan change).
            let idx = st
                .open
                .iter()
                .position(|o| o.period == period && o.holds(u.occurred_at));
            // A metric already in the period was checked against the
            // period's plan when it arrived first: no plan lookup then.
            let known = idx.and_then(|i| {
                st.open[i]
                    .metrics
                    .iter()
                    .position(|m| m.metric.is(metric_tag, &u.metric))
            });
            // Not `sum`: the aggregation's own path (a metric already in
            // the period says which; the first event asks the plan).
            let aggregated = match (idx, known) {
                (Some(i), Some(k)) => !st.open[i].metrics[k].aggregation.is_sum(),
                _ => self.first_is_aggregated(st, &u.metric, period, idx),
            };
            if aggregated {
                self.apply_aggregated_usage(st, u, period, idx, known)?
            } else {
                let old_total = match (idx, known) {
                    (Some(i), Some(k)) => st.open[i].metrics[k].total,
                    _ => Decimal::ZERO,
                };
                let new_total = old_total
                    .checked_add(u.quantity)
                    .ok_or_else(|| bad_qty("period total would overflow"))?;
                // Below the price book's safe total no line can outgrow
                // `Minor::MAX_AMOUNT`: one comparison per event; above it, rate.
                let rate_it = new_total > self.plans.safe_total();
                if known.is_none() || rate_it {
                    let (plan_id, version) = match idx {
                        Some(i) => (st.open[i].plan_id.as_str(), st.open[i].plan_version),
                        None => self.plan_for_ref(st, period.start),
                    };
                    let charge = self.charge_of(plan_id, version, &u.metric)?;
                    if rate_it && Self::line_amount(st, charge, new_total).is_none() {
                        return Err(bad_qty(&too_dear(st, &u.metric, new_total)));
                    }
                }
                let m =
                    self.metric_usage(st, idx, period, known, &u.metric, Aggregation::Sum, None);
                m.total = new_total;
                let subject = add_subject(
                    &mut m.subjects,
                    &u.subject,
                    u.quantity,
                    self.config.max_subjects,
                );
                (m.metric.clone(), subject)
            }
        };
        self.add_to_rollup(st, u, &metric, &subject, emit.at);
        emit.push(
            st,
            DomainEvent::UsageApplied {
                subject: subject.into_shared(),
                metric: metric.into_shared(),
                quantity: u.quantity,
                occurred_at: u.occurred_at,
                period_start: period.start,
                late,
            },
        );
        Ok(())
    }

    /// Whether the first event of `metric` in `period` is aggregated
    /// otherwise than by `sum` (an unpriced metric is refused on the sum path).
    fn first_is_aggregated(
        &self,
        st: &AccountState,
        metric: &str,
        period: Period,
        idx: Option<usize>,
    ) -> bool {
        let (plan_id, version) = match idx {
            Some(i) => (st.open[i].plan_id.as_str(), st.open[i].plan_version),
            None => self.plan_for_ref(st, period.start),
        };
        self.plan(plan_id, version)
            .and_then(|p| p.charge(metric))
            .is_some_and(|c| !c.aggregation.kind.is_sum())
    }

    /// Usage of an open period for a charge aggregated otherwise than by
    /// `sum`: admitted by the aggregation (attribute present, state within
    /// its cap), checked to rate within a line, then added. Returns the
    /// metric's and subject's names.
    fn apply_aggregated_usage(
        &self,
        st: &mut AccountState,
        u: &UsageRecorded,
        period: Period,
        idx: Option<usize>,
        known: Option<usize>,
    ) -> Result<(Name, Name), Rejection> {
        let (plan_id, version) = match idx {
            Some(i) => (st.open[i].plan_id.as_str(), st.open[i].plan_version),
            None => self.plan_for_ref(st, period.start),
        };
        let charge = self.charge_of(plan_id, version, &u.metric)?;
        let seg = idx.map_or((period.start, period.end), |i| st.open[i].bounds());
        let fresh;
        let (kind, total, state) = match (idx, known) {
            (Some(i), Some(k)) => {
                let m = &st.open[i].metrics[k];
                (m.aggregation, m.total, m.state.as_deref())
            }
            _ => {
                fresh = charge.aggregation.new_state();
                (charge.aggregation.kind, Decimal::ZERO, fresh.as_deref())
            }
        };
        aggregation::admit(kind, state, &u.metric, u)?;
        let (from, to) = Self::span(st, seg);
        let bad_qty = |reason: String| Rejection::InvalidQuantity {
            quantity: u.quantity.to_string(),
            reason,
        };
        let bound = aggregation::bound_after(kind, total, u.quantity, from, to)
            .ok_or_else(|| bad_qty("the period's value would overflow".into()))?;
        // Below the safe total no line can outgrow `Minor::MAX_AMOUNT`;
        // above it, work the value out on a copy and rate it.
        if bound > self.plans.safe_total() {
            let (mut t, mut s) = (total, state.cloned());
            aggregation::add(kind, &mut t, s.as_mut(), period, u);
            let v = aggregation::value(kind, t, s.as_ref(), period, from, to)
                .ok_or_else(|| bad_qty("the period's value would overflow".into()))?;
            if Self::line_amount(st, charge, v).is_none() {
                return Err(bad_qty(too_dear(st, &u.metric, v)));
            }
        }
        let state = match known {
            Some(_) => None,
            None => charge.aggregation.new_state(),
        };
        let m = self.metric_usage(st, idx, period, known, &u.metric, kind, state);
        aggregation::add(kind, &mut m.total, m.state.as_deref_mut(), period, u);
        let subject = add_subject(
            &mut m.subjects,
            &u.subject,
            Decimal::ONE,
            self.config.max_subjects,
        );
        Ok((m.metric.clone(), subject))
    }

    /// Usage for an issued period: bill the difference between the
    /// period's charge on its new total and what was billed already, and
    /// re-true the minimum spend, as lines on the next invoice.
    fn apply_late_usage(
        &self,
        st: &mut AccountState,
        u: &UsageRecorded,
        period: Period,
    ) -> Result<(), Rejection> {
        // The issued period (its plan segment, after an immediate change).
        let ci = st
            .closed
            .iter()
            .position(|c| c.period == period && c.holds(u.occurred_at))
            .ok_or(Rejection::TooLate {
                period_start: period.start,
            })?;
        let plan_id = st.closed[ci].plan_id.clone();
        let version = st.closed[ci].plan_version;
        let plan = self
            .plan(&plan_id, version)
            .ok_or_else(|| Self::unknown_plan(&plan_id, version))?;
        let seg = st.closed[ci].bounds();
        let note = {
            let c = &st.closed[ci];
            Self::segment_note(&c.plan_id, c.plan_version, c.since, c.until, period)
        };
        let with_note = |text: String| match &note {
            Some(n) => format!("{text} {n}"),
            None => text,
        };
        let late_text = with_note(format!(
            "late usage for the period starting {}",
            period.start
        ));
        let min_text = with_note(format!(
            "minimum spend correction for the period starting {}",
            period.start
        ));
        let charge = plan
            .charge(&u.metric)
            .ok_or_else(|| Rejection::UnknownMetric {
                metric: u.metric.clone(),
                plan_id: plan_id.clone(),
            })?;
        let closed = &st.closed[ci];
        let old_total = closed
            .totals
            .iter()
            .find(|(m, _)| *m == u.metric)
            .map(|(_, q)| *q);
        let overflow = || Rejection::InvalidQuantity {
            quantity: u.quantity.to_string(),
            reason: "period total would overflow".into(),
        };
        // The aggregation the period was rated with: its kept state's, else
        // `sum` for a metric it summed, else the charge's for a first event.
        let agg_at = closed.aggregates.iter().position(|a| a.metric == u.metric);
        let kind = match (agg_at, old_total) {
            (Some(i), _) => closed.aggregates[i].aggregation,
            (None, Some(_)) => Aggregation::Sum,
            (None, None) => charge.aggregation.kind,
        };
        let old_total = old_total.unwrap_or(Decimal::ZERO);
        // (new value, its change for the late line, the subject's share of
        // the line, the new aggregation state).
        let (new_total, line_quantity, subject_quantity, aggregate) = if kind.is_sum() {
            let new_total = old_total.checked_add(u.quantity).ok_or_else(overflow)?;
            (new_total, u.quantity, u.quantity, None)
        } else {
            let (total, state) = match agg_at {
                Some(i) => (
                    closed.aggregates[i].total,
                    closed.aggregates[i].state.clone(),
                ),
                None => (Decimal::ZERO, charge.aggregation.new_state()),
            };
            aggregation::admit(kind, state.as_deref(), &u.metric, u)?;
            let mut aggregate = ClosedAggregate {
                metric: u.metric.clone(),
                aggregation: kind,
                total,
                state,
            };
            aggregation::add(
                kind,
                &mut aggregate.total,
                aggregate.state.as_deref_mut(),
                period,
                u,
            );
            let (from, to) = Self::span(st, seg);
            let value = aggregation::value(
                kind,
                aggregate.total,
                aggregate.state.as_deref(),
                period,
                from,
                to,
            )
            .ok_or_else(overflow)?;
            let change = value.checked_sub(old_total).ok_or_else(overflow)?;
            (value, change, Decimal::ONE, Some((agg_at, aggregate)))
        };
        // The segments whose lines change: this one and, when the charge
        // is additive and has free units, the period's later segments on
        // the same plan and version, whose share of them the late usage
        // moves (a plan's free units apply once per period, in segment
        // order: `FreeUnitsUsed`), unless the period was closed before that
        // rule (`ClosedPeriod::free_units_per_period`).
        let mut targets = vec![ci];
        if !charge.free_units.is_zero() && kind.is_additive() && st.closed[ci].free_units_per_period
        {
            let start = seg.0;
            targets.extend((0..st.closed.len()).filter(|&j| {
                let o = &st.closed[j];
                j != ci
                    && o.period == period
                    && (o.plan_id.as_str(), o.plan_version) == (plan_id.as_str(), version)
                    && o.bounds().0 > start
                    && o.totals.iter().any(|(m, _)| *m == u.metric)
            }));
        }
        let too_dear_here = |total: Decimal| Rejection::InvalidQuantity {
            quantity: u.quantity.to_string(),
            reason: too_dear(st, &u.metric, total),
        };
        // Per target: (index, new amount of the metric, its change, new
        // minimum-spend true-up, its change).
        let mut rerated = Vec::with_capacity(targets.len());
        for &j in &targets {
            let c = &st.closed[j];
            let billed_of = |key: &BilledKey| {
                c.billed
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(Minor::ZERO, |(_, a)| *a)
            };
            let total = if j == ci {
                new_total
            } else {
                c.totals
                    .iter()
                    .find(|(m, _)| *m == u.metric)
                    .map_or(Decimal::ZERO, |(_, q)| *q)
            };
            let free =
                Self::closed_free_left(st, j, &u.metric, charge, kind, Some((ci, new_total)));
            let new_amount =
                line_amount_with_free(charge, total, free, st.currency, Minor::MAX_AMOUNT)
                    .ok_or_else(|| too_dear_here(total))?;
            // Both within `Minor::MAX_AMOUNT`: the difference fits.
            let delta = new_amount.saturating_sub(billed_of(&BilledKey::Metric(u.metric.clone())));
            // Minimum spend on the new totals (a charge that no longer rates
            // within a line counts what it was billed).
            let mut usage_sum = new_amount;
            for (m, q) in &c.totals {
                if *m != u.metric {
                    if let Some(other) = plan.charge(m) {
                        let kind = c.aggregation_of(m);
                        let free = Self::closed_free_left(st, j, m, other, kind, None);
                        let amount =
                            line_amount_with_free(other, *q, free, st.currency, Minor::MAX_AMOUNT)
                                .unwrap_or_else(|| billed_of(&BilledKey::Metric(m.clone())));
                        usage_sum = usage_sum.saturating_add(amount);
                    }
                }
            }
            let minimum = self.minimum_for(st, plan, period, c.bounds());
            let new_true_up = if usage_sum < minimum {
                minimum.saturating_sub(usage_sum)
            } else {
                Minor::ZERO
            };
            let min_delta = new_true_up.saturating_sub(billed_of(&BilledKey::MinimumSpend));
            rerated.push((j, new_amount, delta, new_true_up, min_delta));
        }
        let unit_price = display_unit_price(charge);
        // A non-additive value that did not move (a lower sample, a known
        // value) needs no line.
        let unchanged =
            aggregate.is_some() && line_quantity.is_zero() && rerated[0].2 == Minor::ZERO;

        // Validated: now change state.
        let closed = &mut st.closed[ci];
        match aggregate {
            Some((Some(i), a)) => closed.aggregates[i] = a,
            Some((None, a)) => closed.aggregates.push(a),
            None => {}
        }
        match closed.totals.iter_mut().find(|(m, _)| *m == u.metric) {
            Some((_, q)) => *q = new_total,
            None => closed.totals.push((u.metric.clone(), new_total)),
        }
        for (j, new_amount, delta, new_true_up, min_delta) in rerated {
            let closed = &mut st.closed[j];
            for (key, amount) in [
                (BilledKey::Metric(u.metric.clone()), new_amount),
                (BilledKey::MinimumSpend, new_true_up),
            ] {
                match closed.billed.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, a)) => *a = amount,
                    None if amount != Minor::ZERO => closed.billed.push((key, amount)),
                    None => {}
                }
            }
            let note = Self::segment_note(
                &closed.plan_id,
                closed.plan_version,
                closed.since,
                closed.until,
                period,
            );
            let with_note = |text: String| match &note {
                Some(n) => format!("{text} {n}"),
                None => text,
            };
            // This segment's late line carries the usage; a later one's
            // only the change of its share of the free units.
            let (late_text, quantity, subjects) = if j == ci {
                let subjects: std::collections::BTreeMap<String, Decimal> =
                    [(u.subject.clone(), subject_quantity)]
                        .into_iter()
                        .collect();
                (late_text.clone(), line_quantity, subjects)
            } else {
                let text = with_note(format!(
                    "free units used earlier in the period changed by late usage for the period starting {}",
                    period.start
                ));
                (text, Decimal::ZERO, Default::default())
            };
            let pending = st.pending_lines.iter_mut().find(|l| {
                l.kind == LineKind::LateUsage
                    && l.for_period == period
                    && l.metric.as_deref() == Some(u.metric.as_str())
                    && l.description.as_deref() == Some(late_text.as_str())
            });
            match pending {
                _ if j == ci && unchanged => {}
                _ if j != ci && delta == Minor::ZERO => {}
                Some(line) => {
                    // At most the period's new total (checked above).
                    line.quantity = line.quantity.saturating_add(quantity);
                    line.amount = line.amount.saturating_add(delta);
                    if j == ci {
                        add_line_subject(
                            &mut line.subjects,
                            &u.subject,
                            subject_quantity,
                            self.config.max_subjects,
                        );
                    }
                }
                None => st.pending_lines.push(Line {
                    kind: LineKind::LateUsage,
                    metric: Some(u.metric.clone()),
                    quantity,
                    unit_price,
                    amount: delta,
                    for_period: period,
                    subjects,
                    description: Some(late_text),
                }),
            }
            if min_delta != Minor::ZERO {
                let min_text = if j == ci {
                    min_text.clone()
                } else {
                    with_note(format!(
                        "minimum spend correction for the period starting {}",
                        period.start
                    ))
                };
                let pending_min = st.pending_lines.iter_mut().find(|l| {
                    l.kind == LineKind::MinimumSpend
                        && l.for_period == period
                        && l.description.as_deref() == Some(min_text.as_str())
                });
                match pending_min {
                    Some(line) => line.amount = line.amount.saturating_add(min_delta),
                    None => st.pending_lines.push(Line {
                        kind: LineKind::MinimumSpend,
                        metric: None,
                        quantity: Decimal::ONE,
                        unit_price: None,
                        amount: min_delta,
                        for_period: period,
                        subjects: Default::default(),
                        description: Some(min_text),
                    }),
                }
            }
        }
        Ok(())
    }

    /// The free units of `charge` (of `metric`, aggregated by `kind`)
    /// left for the issued segment `j` once the period's earlier segments
    /// on the same plan and version used theirs (`FreeUnitsUsed`), with the
    /// total of `metric` in segment `changed.0` taken as `changed.1` (the
    /// late usage's). All of them for a level-like aggregation, and in a
    /// period closed before free units were shared.
    fn closed_free_left(
        st: &AccountState,
        j: usize,
        metric: &str,
        charge: &Charge,
        kind: Aggregation,
        changed: Option<(usize, Decimal)>,
    ) -> Decimal {
        let c = &st.closed[j];
        if charge.free_units.is_zero() || !kind.is_additive() || !c.free_units_per_period {
            return charge.free_units;
        }
        let start = c.bounds().0;
        let mut used = Decimal::ZERO;
        for (i, o) in st.closed.iter().enumerate() {
            if o.period == c.period
                && (o.plan_id.as_str(), o.plan_version) == (c.plan_id.as_str(), c.plan_version)
                && o.bounds().0 < start
            {
                let total = match changed {
                    Some((at, total)) if at == i => Some(total),
                    _ => o.totals.iter().find(|(m, _)| m == metric).map(|(_, q)| *q),
                };
                used = used.saturating_add(total.unwrap_or(Decimal::ZERO));
            }
        }
        (charge.free_units - used).max(Decimal::ZERO)
    }

    #[inline(always)]
    fn add_to_rollup(
        &self,
        st: &mut AccountState,
        u: &UsageRecorded,
        metric: &Name,
        subject: &Name,
        now: Timestamp,
    ) {
        let hour = u.occurred_at.hour_floor();
        let closed = hour.plus(MICROS_PER_HOUR + self.config.rollup_lateness_micros) <= now;
        // Newest hours sit at the end: search from there.
        match st
            .rollups
            .iter_mut()
            .rev()
            .find(|r| r.hour == hour && r.metric == *metric && r.subject == *subject)
        {
            Some(r) => {
                r.quantity = r.quantity.saturating_add(u.quantity);
                r.count += 1;
            }
            None => {
                // At most `max_subjects` named buckets per hour and metric;
                // past them, the hour's `OTHER_SUBJECT` bucket takes the usage.
                let key = (hour, metric.as_str());
                let lo = st
                    .rollups
                    .partition_point(|r| (r.hour, r.metric.as_str()) < key);
                let hi =
                    lo + st.rollups[lo..].partition_point(|r| (r.hour, r.metric.as_str()) == key);
                let named = st.rollups[lo..hi]
                    .iter()
                    .filter(|r| r.subject.as_str() != OTHER_SUBJECT)
                    .count();
                if named >= self.config.max_subjects && subject.as_str() != OTHER_SUBJECT {
                    let other = Name::new(OTHER_SUBJECT);
                    return self.add_to_rollup(st, u, metric, &other, now);
                }
                // Insert in (hour, metric, subject) order: emission order is
                // then deterministic and needs no sort.
                let at = st.rollups.partition_point(|r| {
                    (r.hour, r.metric.as_str(), r.subject.as_str())
                        < (hour, metric.as_str(), subject.as_str())
                });
                st.rollups.insert(
                    at,
                    RollupBucket {
                        hour,
                        metric: metric.clone(),
                        subject: subject.clone(),
                        quantity: u.quantity,
                        count: 1,
                        correction: closed,
                    },
                );
            }
        }
    }

    // ---- account commands ------------------------------------------------

    fn open_account(
        &self,
        cmd: &AccountCommand,
        now: Timestamp,
        out: &mut Vec<JournalEntry>,
    ) -> Result<AccountState, Rejection> {
        let AccountKind::AccountOpened {
            plan_id,
            currency,
            timezone,
            tax_rate,
            billing_anchor,
            thresholds,
            invoice_at,
        } = &cmd.kind
        else {
            unreachable!("open_account is only called for AccountOpened");
        };
        let field = |field: &str, reason: String| Rejection::InvalidField {
            field: field.into(),
            reason,
        };
        if cmd.account_id.is_empty() {
            return Err(field("account_id", "must not be empty".into()));
        }
        let environment = cmd.environment.clone().ok_or_else(|| {
            field(
                "environment",
                "AccountOpened must name its environment".into(),
            )
        })?;
        let currency_v = Currency::from_code(currency).ok_or_else(|| {
            field(
                "currency",
                format!("{currency:?} is not a known ISO 4217 code"),
            )
        })?;
        let tz: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| field("timezone", format!("{timezone:?} is not an IANA timezone")))?;
        if tax_rate.is_sign_negative() || *tax_rate >= Decimal::ONE {
            return Err(field("tax_rate", format!("{tax_rate} must be in [0, 1)")));
        }
        if let Anchor::DayOfMonth(d) = billing_anchor {
            if !(1..=31).contains(d) {
                return Err(field("billing_anchor", format!("day {d} must be 1..=31")));
            }
        }
        // A new account subscribes to the plan's latest version.
        let plan = self
            .plans
            .get(plan_id)
            .ok_or_else(|| Rejection::UnknownPlan {
                plan_id: plan_id.clone(),
            })?;
        if plan.currency != currency_v {
            return Err(Rejection::CurrencyMismatch {
                expected: currency.clone(),
                got: plan.currency.code().to_string(),
            });
        }
        let opened_at = cmd.occurred_at;
        // Every period from the opening to now is closed in this one apply:
        // bound how far back that reaches.
        let earliest = now.plus(-self.config.max_backdating_micros);
        if opened_at < earliest {
            return Err(Rejection::TooOld {
                occurred_at: opened_at,
                earliest,
                limit: format!(
                    "billing.max_backdating ({}) accepts for an AccountOpened",
                    duration_text(self.config.max_backdating_micros)
                ),
            });
        }
        let (thresholds, invoice_at) = parse_alerts(currency_v, thresholds, *invoice_at)?;
        let current = period_containing(opened_at, tz, *billing_anchor);
        let mut st = AccountState {
            account_id: Arc::from(cmd.account_id.as_str()),
            environment,
            opened_at,
            currency: currency_v,
            timezone: tz,
            tax_rate: *tax_rate,
            anchor: *billing_anchor,
            plan_id: plan_id.clone(),
            plan_version: plan.version,
            pending_plan: None,
            pending_plan_version: 1,
            closed_at: None,
            finished: false,
            journal_seq: 0,
            invoice_seq: 0,
            credit_note_seq: 0,
            current,
            draft_invoice_id: String::new(),
            open: Vec::new(),
            closed: Vec::new(),
            pending_lines: Vec::new(),
            credit: Minor::ZERO,
            grants: Vec::new(),
            grant_seq: 0,
            coupon: None,
            thresholds: Vec::new(),
            thresholds_reached: Vec::new(),
            invoice_at: None,
            interim: None,
            credit_low_armed: false,
            invoices: Vec::new(),
            payment_method: None,
            rollups: Vec::new(),
            clock: now,
            next_timer: None,
            dedup: Default::default(),
        };
        let mut emit = Emit::new(out, now, &cmd.event_id);
        emit.push(
            &mut st,
            DomainEvent::AccountOpened {
                plan_id: plan_id.clone(),
                currency: currency.clone(),
                timezone: timezone.clone(),
                tax_rate: *tax_rate,
                anchor: *billing_anchor,
                opened_at,
            },
        );
        if !thresholds.is_empty() || invoice_at.is_some() {
            Self::put_alerts(&mut st, thresholds, invoice_at, &mut emit);
        }
        // The recurring fee is charged in advance: the rest of the first
        // period, prorated, is invoiced at once.
        if let Some(line) = Self::fee_line(&st, plan, current) {
            st.invoice_seq += 1;
            let seq = st.invoice_seq;
            let id = Self::invoice_id(&st.account_id, seq);
            let none = (Minor::ZERO, Minor::ZERO);
            self.issue(
                &mut st,
                id,
                seq,
                current,
                vec![line],
                none,
                false,
                &mut emit,
            );
        }
        self.open_draft(&mut st, &mut emit);
        self.check_thresholds(&mut st, &mut emit);
        self.check_invoice_at(&mut st, &mut emit);
        Ok(st)
    }

    fn apply_account(
        &self,
        st: &mut AccountState,
        a: &AccountCommand,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        match &a.kind {
            AccountKind::AccountOpened { .. } => Err(Rejection::AccountAlreadyOpen {
                account_id: st.account_id.to_string(),
            }),
            AccountKind::PlanChanged {
                plan_id,
                effective,
                version,
            } => {
                // The version named, else the latest now: pinned from here
                // on, whatever is published before it takes effect.
                let plan = match version {
                    Some(v) => self.plans.get_version(plan_id, *v),
                    None => self.plans.get(plan_id),
                }
                .ok_or_else(|| Self::unknown_plan(plan_id, version.unwrap_or(1)))?;
                if plan.currency != st.currency {
                    return Err(Rejection::CurrencyMismatch {
                        expected: st.currency.code().to_string(),
                        got: plan.currency.code().to_string(),
                    });
                }
                if let Some(closed_at) = st.closed_at {
                    return Err(Rejection::AccountClosed { closed_at });
                }
                if *effective == PlanChangeEffective::Immediately {
                    return self.change_plan_now(st, plan, a.occurred_at, emit);
                }
                let from = a.occurred_at.max(st.current.start);
                let effective_at = period_containing(from, st.timezone, st.anchor).end;
                st.pending_plan = Some((plan_id.clone(), effective_at));
                st.pending_plan_version = plan.version;
                emit.push(
                    st,
                    DomainEvent::PlanChangeScheduled {
                        plan_id: plan_id.clone(),
                        effective_at,
                    },
                );
                Ok(())
            }
            AccountKind::AccountClosed => {
                if let Some(closed_at) = st.closed_at {
                    return Err(Rejection::AccountClosed { closed_at });
                }
                let closed_at = a.occurred_at.max(st.opened_at);
                st.closed_at = Some(closed_at);
                st.pending_plan = None;
                emit.push(st, DomainEvent::AccountClosed { closed_at });
                Ok(())
            }
            AccountKind::AdjustmentIssued {
                adjustment,
                amount,
                currency,
                reason,
                invoice_id,
                grant,
            } => {
                let amount = self.money_in(st, *amount, currency)?;
                match adjustment {
                    AdjustmentKind::CreditNote => {
                        self.credit_room(st, amount)?;
                        self.grant_room(st, grant, emit.at)?;
                        st.credit_note_seq += 1;
                        let credit_note_id =
                            format!("cn_{}_{:05}", st.account_id, st.credit_note_seq);
                        emit.push(
                            st,
                            DomainEvent::CreditNoteIssued {
                                credit_note_id,
                                amount,
                                reason: reason.clone(),
                                invoice_id: invoice_id.clone(),
                            },
                        );
                        self.add_granted_credit(st, amount, CreditSource::CreditNote, grant, emit);
                        self.pay_from_credit(st, emit);
                    }
                    AdjustmentKind::Debit => {
                        if !grant.is_default() {
                            return Err(Rejection::InvalidField {
                                field: "grant".into(),
                                reason: "a debit adjustment carries no credit grant; grant fields apply to credit notes".into(),
                            });
                        }
                        let pending = Minor::checked_sum(
                            st.pending_lines.iter().map(|l| l.amount).chain([amount]),
                        );
                        if !pending.is_some_and(|p| p.within(Minor::MAX_BALANCE)) {
                            return Err(Rejection::InvalidAmount {
                                amount: st.currency.format(amount),
                                reason: format!(
                                    "the lines waiting for the next invoice would exceed {}",
                                    st.currency.format(Minor::MAX_BALANCE)
                                ),
                            });
                        }
                        st.pending_lines.push(Line {
                            kind: LineKind::Adjustment,
                            metric: None,
                            quantity: Decimal::ONE,
                            unit_price: None,
                            amount,
                            for_period: st.current,
                            subjects: Default::default(),
                            description: Some(reason.clone()),
                        });
                        emit.push(
                            st,
                            DomainEvent::DebitAdjustmentAdded {
                                amount,
                                reason: reason.clone(),
                            },
                        );
                    }
                }
                Ok(())
            }
            AccountKind::CouponApplied { coupon } => self.apply_coupon(st, coupon, emit),
            AccountKind::ThresholdsSet {
                thresholds,
                currency,
                invoice_at,
                keeps_invoice_at,
            } => {
                let invoice_at = (!keeps_invoice_at).then_some(*invoice_at);
                self.set_thresholds(st, thresholds, invoice_at, currency, emit)
            }
        }
    }

    /// `PlanChanged` with `effective: immediately` (issue 13): from `at`
    /// (its `occurred_at`, not before the draft's period, the opening nor
    /// the previous immediate change) the account is on `plan`, which must
    /// not be the plan and version already in force there. The period holding `at` is split into
    /// plan segments, so its usage before `at` is rated on the old plan's
    /// charges and after it on the new plan's, each with its own tiers and
    /// its minimum spend prorated by its segment; the unused part of the
    /// old recurring fee is credited and the new fee charged for the rest
    /// of the period, both by the exact fraction the first period's fee is
    /// prorated by (`prorate`), as two lines on the draft (no interim
    /// invoice). The fee of the period after is the new plan's.
    fn change_plan_now(
        &self,
        st: &mut AccountState,
        plan: &Plan,
        at: Timestamp,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        // Not before the last immediate change (an out-of-order or
        // backdated change is clamped forward to it): segments follow the
        // order changes are applied in, so each instant is on one plan
        // and each fee is credited at most once for it.
        let last_change = st.open.iter().filter_map(|o| o.since).max();
        let at = at
            .max(st.current.start)
            .max(st.opened_at)
            .max(last_change.unwrap_or(Timestamp(i64::MIN)));
        // The draft's period, or the next one during the close's grace.
        let pe = if st.current.contains(at) {
            st.current
        } else {
            period_containing(at, st.timezone, st.anchor)
        };
        let segments = st.open.iter().filter(|o| o.period == pe).count();
        if segments >= MAX_PLAN_SEGMENTS {
            return Err(Rejection::InvalidField {
                field: "effective".into(),
                reason: format!(
                    "a period is split by at most {} immediate plan changes; change it with effective next_period",
                    MAX_PLAN_SEGMENTS - 1
                ),
            });
        }
        let held = st.open.iter().position(|o| o.period == pe && o.holds(at));
        let (old_id, old_version) = match held {
            Some(i) => (st.open[i].plan_id.clone(), st.open[i].plan_version),
            None => self.plan_for(st, pe.start),
        };
        if (old_id.as_str(), old_version) == (plan.plan_id.as_str(), plan.version) {
            // A segment on the same plan would be rated with its own free
            // units and tiers again, for nothing.
            return Err(Rejection::InvalidField {
                field: "plan_id".into(),
                reason: format!(
                    "{} version {} is already the current plan; an immediate change must name another plan or version",
                    plan.plan_id, plan.version
                ),
            });
        }
        let old = self
            .plan(&old_id, old_version)
            .ok_or_else(|| Self::unknown_plan(&old_id, old_version))?;
        let (rest, whole) = (pe.end.0 - at.0, pe.length());
        let credit = prorate(st.currency, old.recurring_fee, rest, whole);
        let charge = prorate(st.currency, plan.recurring_fee, rest, whole);
        let pending = Minor::checked_sum(
            st.pending_lines
                .iter()
                .map(|l| l.amount)
                .chain([charge, Minor::ZERO.saturating_sub(credit)]),
        );
        if !pending.is_some_and(|p| p.within(Minor::MAX_BALANCE)) {
            return Err(Rejection::InvalidAmount {
                amount: st.currency.format(charge),
                reason: format!(
                    "the lines waiting for the next invoice would exceed {}",
                    st.currency.format(Minor::MAX_BALANCE)
                ),
            });
        }
        let hours = |m: i64| {
            (Decimal::from(m) / Decimal::from(MICROS_PER_HOUR))
                .round_dp(2)
                .normalize()
        };
        let fee = |amount: Minor, description: String| Line {
            kind: LineKind::RecurringFee,
            metric: None,
            quantity: Decimal::ONE,
            unit_price: None,
            amount,
            for_period: pe,
            subjects: Default::default(),
            description: Some(description),
        };
        let mut lines = Vec::with_capacity(2);
        if credit.is_positive() {
            lines.push(fee(
                Minor::ZERO.saturating_sub(credit),
                format!(
                    "{} recurring fee credited for the unused {} of {} hours (plan changed to {})",
                    old.plan_id,
                    hours(rest),
                    hours(whole),
                    plan.plan_id
                ),
            ));
        }
        if charge.is_positive() {
            lines.push(fee(
                charge,
                format!(
                    "{} recurring fee, prorated for {} of {} hours (plan changed from {})",
                    plan.plan_id,
                    hours(rest),
                    hours(whole),
                    old.plan_id
                ),
            ));
        }
        // Validated: now change state.
        let segment = |since, until| PeriodUsage {
            period: pe,
            plan_id: plan.plan_id.clone(),
            plan_version: plan.version,
            since,
            until,
            metrics: Vec::new(),
        };
        // At the start of the segment in force (a change clamped to the
        // one before, or at the draft's start) the new plan replaces the
        // old on it rather than leave an empty segment; not at the start of
        // the next period during the grace window, whose fee in advance is
        // charged on its first segment's plan (`fee_plan`).
        let in_draft = pe == st.current;
        let replaces = |o: &PeriodUsage| {
            o.since == Some(at) || (o.since.is_none() && at == pe.start && in_draft)
        };
        match held {
            Some(i) if replaces(&st.open[i]) => {
                st.open[i].plan_id = plan.plan_id.clone();
                st.open[i].plan_version = plan.version;
            }
            Some(i) => {
                let until = st.open[i].until.replace(at);
                st.open.insert(i + 1, segment(Some(at), until));
            }
            None => {
                let i = st.open.partition_point(|o| o.period.start < pe.start);
                if at > pe.start || !in_draft {
                    let mut before = segment(None, Some(at));
                    before.plan_id = old_id.clone();
                    before.plan_version = old_version;
                    st.open.insert(i, before);
                    st.open.insert(i + 1, segment(Some(at), None));
                } else {
                    st.open.insert(i, segment(None, None));
                }
            }
        }
        st.pending_lines.extend(lines);
        st.plan_id = plan.plan_id.clone();
        st.plan_version = plan.version;
        st.pending_plan = None;
        emit.push(
            st,
            DomainEvent::PlanChanged {
                from_plan_id: old_id,
                plan_id: plan.plan_id.clone(),
                effective_at: at,
                from_version: old_version,
                version: plan.version,
                immediate: true,
            },
        );
        Ok(())
    }

    /// A positive amount in the account's currency, exact to the minor unit.
    pub(crate) fn money_in(
        &self,
        st: &AccountState,
        amount: Decimal,
        currency: &str,
    ) -> Result<Minor, Rejection> {
        if currency != st.currency.code() {
            return Err(Rejection::CurrencyMismatch {
                expected: st.currency.code().to_string(),
                got: currency.to_string(),
            });
        }
        let bad = |reason: &str| Rejection::InvalidAmount {
            amount: amount.to_string(),
            reason: reason.into(),
        };
        if amount <= Decimal::ZERO {
            return Err(bad("must be positive"));
        }
        let minor = st.currency.exact(amount).ok_or_else(|| {
            bad(&format!(
                "must have at most {} decimals and fit in 64 bits",
                st.currency.exponent()
            ))
        })?;
        if !minor.within(Minor::MAX_AMOUNT) {
            return Err(bad(&format!(
                "above the largest amount, {}",
                st.currency.format(Minor::MAX_AMOUNT)
            )));
        }
        Ok(minor)
    }

    fn apply_payment(
        &self,
        st: &mut AccountState,
        p: &PaymentEvent,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        self.settle_payment(st, p, emit)
    }
}
