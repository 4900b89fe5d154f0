//! Mid-period plan changes (issue 13, item 4): `effective: immediately`
//! prorates both recurring fees by the exact fraction and splits the
//! period's usage by plan; plans are versioned and an account stays on its
//! version. Amounts worked out in the comments.

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::aggregation::{Aggregation, AggregationSpec};
use super::events::*;
use super::fold::{prorate, Outcome};
use super::money::{Currency, Minor};
use super::plan::{Charge, Model, Plan, PlanBook, Tier};
use super::rating::line_amount;
use super::reject::Rejection;
use super::tests::{d, ts, Harness};
use super::time::Timestamp;

fn eur() -> Currency {
    Currency::from_code("EUR").unwrap()
}

/// `api.calls` graduated: up to `first_up_to` at `first`, the rest at `rest`.
fn graduated(first_up_to: &str, first: &str, rest: &str) -> Charge {
    Charge {
        metric: "api.calls".into(),
        model: Model::Graduated,
        unit_price: Decimal::ZERO,
        package_size: None,
        free_units: Decimal::ZERO,
        tiers: vec![
            Tier {
                up_to: Some(d(first_up_to)),
                unit_price: d(first),
                flat_fee: Decimal::ZERO,
            },
            Tier {
                up_to: None,
                unit_price: d(rest),
                flat_fee: Decimal::ZERO,
            },
        ],
        aggregation: Default::default(),
    }
}

fn plan(id: &str, version: u32, fee: &str, charge: Charge) -> Plan {
    Plan {
        plan_id: id.into(),
        version,
        currency: eur(),
        recurring_fee: d(fee),
        minimum_spend: Decimal::ZERO,
        charges: vec![charge],
    }
}

/// "basic" v1: 30.00 a month, api.calls 0.01 up to 1,000 then 0.005.
fn basic_v1() -> Plan {
    plan("basic", 1, "30.00", graduated("1000", "0.01", "0.005"))
}

/// "pro" v1: 90.00 a month, api.calls 0.008 up to 5,000 then 0.004.
fn pro_v1() -> Plan {
    plan("pro", 1, "90.00", graduated("5000", "0.008", "0.004"))
}

fn book() -> PlanBook {
    let mut b = PlanBook::new();
    b.upsert(basic_v1()).unwrap();
    b.upsert(pro_v1()).unwrap();
    b
}

fn harness() -> Harness {
    let mut h = Harness::new();
    h.engine.plans = book();
    h
}

fn change(plan_id: &str, effective: PlanChangeEffective, version: Option<u32>) -> AccountKind {
    AccountKind::PlanChanged {
        plan_id: plan_id.into(),
        effective,
        version,
    }
}

fn lines_of(inv: &IssuedInvoice, kind: LineKind) -> Vec<Minor> {
    inv.lines
        .iter()
        .filter(|l| l.kind == kind)
        .map(|l| l.amount)
        .collect()
}

#[test]
fn issue_13_immediate_upgrade_on_the_17th_credits_the_old_fee_charges_the_new_and_splits_usage() {
    let mut h = harness();
    // April has 30 days; opened on basic at its start: 30.00 in advance.
    h.open("basic", "2026-04-01T00:00:00Z");
    assert_eq!(h.invoices()[0].subtotal, Minor(3000));
    h.usage("api.calls", "app", "1500", "2026-04-05T00:00:00Z")
        .unwrap();
    h.command(
        change("pro", PlanChangeEffective::Immediately, None),
        "2026-04-17T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.st().plan_id, "pro");
    assert!(h.st().pending_plan.is_none());
    h.usage("api.calls", "app", "6000", "2026-04-20T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let inv = h.invoices()[1];
    // From the 17th 00:00 to May 1st: 14 of 30 days unused.
    //   basic fee credited: −30.00 × 14/30 = −14.00
    //   pro fee charged:     90.00 × 14/30 =  42.00
    //   May's fee, on pro, in advance:        90.00
    let mut fees = lines_of(inv, LineKind::RecurringFee);
    fees.sort();
    assert_eq!(fees, vec![Minor(-1400), Minor(4200), Minor(9000)]);
    // Usage before the change on basic's tiers: 1,000 × 0.01 + 500 ×
    // 0.005 = 12.50; after it on pro's: 5,000 × 0.008 + 1,000 × 0.004 =
    // 44.00 (all 7,500 on pro would be 50.00, on basic 42.50).
    let mut usage = lines_of(inv, LineKind::Usage);
    usage.sort();
    assert_eq!(usage, vec![Minor(1250), Minor(4400)]);
    // 12.50 + 44.00 − 14.00 + 42.00 + 90.00 = 174.50; tax 20% = 34.90.
    assert_eq!(inv.subtotal, Minor(17450));
    assert_eq!(inv.tax, Minor(3490));
    assert!(h.events().any(|e| matches!(
        e,
        DomainEvent::PlanChanged { immediate: true, plan_id, from_plan_id, .. }
            if plan_id == "pro" && from_plan_id == "basic"
    )));
}

#[test]
fn issue_13_the_draft_shows_the_proration_lines_at_once() {
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    h.command(
        change("pro", PlanChangeEffective::Immediately, None),
        "2026-04-17T00:00:00Z",
    )
    .unwrap();
    let draft = h.engine.draft(h.st());
    // −14.00 and +42.00 for April, and May's 90.00 on pro.
    let mut fees: Vec<_> = draft
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::RecurringFee)
        .map(|l| l.amount)
        .collect();
    fees.sort();
    assert_eq!(fees, vec![Minor(-1400), Minor(4200), Minor(9000)]);
}

#[test]
fn issue_13_late_usage_after_an_immediate_change_is_rated_on_the_plan_of_its_instant() {
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    h.usage("api.calls", "app", "1500", "2026-04-05T00:00:00Z")
        .unwrap();
    h.command(
        change("pro", PlanChangeEffective::Immediately, None),
        "2026-04-17T00:00:00Z",
    )
    .unwrap();
    h.usage("api.calls", "app", "6000", "2026-04-20T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    // Late, for before the change: basic on 1,600 = 10.00 + 600 × 0.005
    // = 13.00, billed 12.50: +0.50 (on pro's segment it would be +0.40).
    let id = h.next_id();
    h.usage_at(
        &id,
        "api.calls",
        "app",
        "100",
        ts("2026-04-10T00:00:00Z"),
        ts("2026-05-02T00:00:00Z"),
    )
    .unwrap();
    // Late, for after it: pro on 6,100 = 40.00 + 1,100 × 0.004 = 44.40,
    // billed 44.00: +0.40.
    let id = h.next_id();
    h.usage_at(
        &id,
        "api.calls",
        "app",
        "100",
        ts("2026-04-25T00:00:00Z"),
        ts("2026-05-02T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-06-01T01:00:00Z");
    let may = h.invoices()[2];
    let mut late = lines_of(may, LineKind::LateUsage);
    late.sort();
    assert_eq!(late, vec![Minor(40), Minor(50)]);
}

#[test]
fn issue_13_a_new_plan_version_does_not_reprice_a_running_period() {
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    h.usage("api.calls", "app", "1500", "2026-04-05T00:00:00Z")
        .unwrap();
    // basic v2 is published mid-April: 60.00 a month, 0.02 then 0.01.
    h.engine
        .plans
        .upsert(plan("basic", 2, "60.00", graduated("1000", "0.02", "0.01")))
        .unwrap();
    h.usage("api.calls", "app", "500", "2026-04-20T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let inv = h.invoices()[1];
    // Still v1 for April: 1,000 × 0.01 + 1,000 × 0.005 = 15.00 (v2: 30.00),
    // and the account stays on v1 for May's fee: 30.00 (v2: 60.00).
    assert_eq!(lines_of(inv, LineKind::Usage), vec![Minor(1500)]);
    assert_eq!(lines_of(inv, LineKind::RecurringFee), vec![Minor(3000)]);
    assert_eq!(h.st().plan_version, 1);
    // A new account subscribes to the latest version.
    let mut h2 = harness();
    h2.engine
        .plans
        .upsert(plan("basic", 2, "60.00", graduated("1000", "0.02", "0.01")))
        .unwrap();
    h2.open("basic", "2026-04-01T00:00:00Z");
    assert_eq!(h2.st().plan_version, 2);
    assert_eq!(h2.invoices()[0].subtotal, Minor(6000));
}

#[test]
fn issue_13_plan_changed_moves_to_the_version_it_names_or_else_the_latest() {
    let v2 = plan("pro", 2, "120.00", graduated("5000", "0.008", "0.004"));
    let v3 = plan("pro", 3, "150.00", graduated("5000", "0.008", "0.004"));
    // Named: version 2 although 3 is the latest. May's fee: 120.00.
    let mut h = harness();
    h.engine.plans.upsert(v2.clone()).unwrap();
    h.engine.plans.upsert(v3.clone()).unwrap();
    h.open("basic", "2026-04-01T00:00:00Z");
    h.command(
        change("pro", PlanChangeEffective::NextPeriod, Some(2)),
        "2026-04-10T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    assert_eq!((h.st().plan_id.as_str(), h.st().plan_version), ("pro", 2));
    assert_eq!(
        lines_of(h.invoices()[1], LineKind::RecurringFee),
        vec![Minor(12000)]
    );
    // Not named: the latest when the change is applied, 3 (150.00), even
    // if a version 4 is published before it takes effect.
    let mut h = harness();
    h.engine.plans.upsert(v2).unwrap();
    h.engine.plans.upsert(v3).unwrap();
    h.open("basic", "2026-04-01T00:00:00Z");
    h.command(
        change("pro", PlanChangeEffective::NextPeriod, None),
        "2026-04-10T00:00:00Z",
    )
    .unwrap();
    h.engine
        .plans
        .upsert(plan(
            "pro",
            4,
            "999.00",
            graduated("5000", "0.008", "0.004"),
        ))
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    assert_eq!((h.st().plan_id.as_str(), h.st().plan_version), ("pro", 3));
    assert_eq!(
        lines_of(h.invoices()[1], LineKind::RecurringFee),
        vec![Minor(15000)]
    );
    // A version the book does not have is refused, naming it.
    let e = h
        .command(
            change("pro", PlanChangeEffective::Immediately, Some(9)),
            "2026-05-03T00:00:00Z",
        )
        .unwrap_err();
    assert_eq!(e.kind(), "unknown_plan");
    assert!(e.to_string().contains("version 9"), "{e}");
}

#[test]
fn issue_13_an_immediate_plan_change_fed_twice_changes_nothing() {
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    let cmd = Input::Account(AccountCommand {
        event_id: "chg-1".into(),
        account_id: "acct".into(),
        occurred_at: ts("2026-04-17T00:00:00Z"),
        environment: Some("prod".into()),
        kind: change("pro", PlanChangeEffective::Immediately, None),
    });
    let at = ts("2026-04-17T00:00:00Z");
    assert_eq!(h.feed(cmd.clone(), at).unwrap(), Outcome::Applied);
    let (journal, lines) = (h.journal.len(), h.st().pending_lines.clone());
    let open = h.st().open.clone();
    assert_eq!(
        h.feed(cmd, ts("2026-04-18T00:00:00Z")).unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(h.journal.len(), journal);
    assert_eq!(h.st().pending_lines, lines);
    assert_eq!(h.st().open, open);
}

#[test]
fn issue_13_an_immediate_change_in_the_first_period_prorates_from_the_change() {
    let mut h = harness();
    // Opened on the 11th: basic for 20 of 30 days = 20.00 in advance.
    h.open("basic", "2026-04-11T00:00:00Z");
    assert_eq!(h.invoices()[0].subtotal, Minor(2000));
    // Upgrade on the 21st at noon: 9.5 of 30 days left.
    // basic credited −30.00 × 9.5/30 = −9.50; pro 90.00 × 9.5/30 = 28.50.
    h.command(
        change("pro", PlanChangeEffective::Immediately, None),
        "2026-04-21T12:00:00Z",
    )
    .unwrap();
    let mut fees: Vec<_> = h
        .st()
        .pending_lines
        .iter()
        .filter(|l| l.kind == LineKind::RecurringFee)
        .map(|l| l.amount)
        .collect();
    fees.sort();
    assert_eq!(fees, vec![Minor(-950), Minor(2850)]);
}

/// "team" v1: 60.00 a month, api.calls 0.009 up to 2,000 then 0.006.
fn team_v1() -> Plan {
    plan("team", 1, "60.00", graduated("2000", "0.009", "0.006"))
}

/// An immediate change to `plan_id` that happened at `occurred` and
/// arrives at `now`.
fn change_late(
    h: &mut Harness,
    plan_id: &str,
    occurred: &str,
    now: &str,
) -> Result<Outcome, Rejection> {
    let id = h.next_id();
    h.feed(
        Input::Account(AccountCommand {
            event_id: id,
            account_id: "acct".into(),
            occurred_at: ts(occurred),
            environment: Some("prod".into()),
            kind: change(plan_id, PlanChangeEffective::Immediately, None),
        }),
        ts(now),
    )
}

/// The recurring-fee lines billed for `period_start`'s period: its fee in
/// advance (on the invoice before) and its proration lines.
fn fee_lines_for(h: &Harness, period_start: Timestamp) -> Vec<Minor> {
    h.invoices()
        .iter()
        .flat_map(|i| i.lines.iter())
        .filter(|l| l.kind == LineKind::RecurringFee && l.for_period.start == period_start)
        .map(|l| l.amount)
        .collect()
}

#[test]
fn issue_13_an_out_of_order_immediate_change_takes_effect_at_the_previous_change() {
    let mut h = harness();
    h.engine.plans.upsert(team_v1()).unwrap();
    // April has 30 days; opened on basic at its start: 30.00 in advance.
    h.open("basic", "2026-04-01T00:00:00Z");
    // basic → pro on the 15th: 16 of 30 days left.
    //   basic credited −30.00 × 16/30 = −16.00; pro 90.00 × 16/30 = 48.00.
    change_late(
        &mut h,
        "pro",
        "2026-04-15T00:00:00Z",
        "2026-04-15T00:00:00Z",
    )
    .unwrap();
    // A change that happened on the 10th arrives on the 16th: the account
    // has been on pro since the 15th, so it takes effect then, from pro.
    //   pro credited −90.00 × 16/30 = −48.00; team 60.00 × 16/30 = 32.00.
    // (Before: basic credited again for [10th, end) = −20.00, team charged
    // 40.00 for [10th, end) while pro stayed charged for [15th, end).)
    change_late(
        &mut h,
        "team",
        "2026-04-10T00:00:00Z",
        "2026-04-16T00:00:00Z",
    )
    .unwrap();
    let effective: Vec<_> = h
        .events()
        .filter_map(|e| match e {
            DomainEvent::PlanChanged {
                from_plan_id,
                plan_id,
                effective_at,
                ..
            } => Some((from_plan_id.clone(), plan_id.clone(), *effective_at)),
            _ => None,
        })
        .collect();
    let d15 = ts("2026-04-15T00:00:00Z");
    assert_eq!(
        effective,
        vec![
            ("basic".to_string(), "pro".to_string(), d15),
            ("pro".to_string(), "team".to_string(), d15)
        ]
    );
    assert_eq!(h.st().plan_id, "team");
    // The segments: basic before the 15th, team from it; no overlap.
    let segments: Vec<_> = h
        .st()
        .open
        .iter()
        .map(|o| (o.plan_id.as_str(), o.bounds()))
        .collect();
    let (start, end) = (ts("2026-04-01T00:00:00Z"), ts("2026-05-01T00:00:00Z"));
    assert_eq!(
        segments,
        vec![("basic", (start, d15)), ("team", (d15, end))]
    );
    h.advance("2026-05-01T01:00:00Z");
    // April's fee lines: 30.00 − 16.00 + 48.00 − 48.00 + 32.00 = 46.00
    // = basic 30.00 × 14/30 (14.00) + team 60.00 × 16/30 (32.00).
    let mut fees = fee_lines_for(&h, start);
    fees.sort();
    assert_eq!(
        fees,
        vec![
            Minor(-4800),
            Minor(-1600),
            Minor(3000),
            Minor(3200),
            Minor(4800)
        ]
    );
    assert_eq!(Minor::saturating_sum(fees.into_iter()), Minor(4600));
    // basic is credited once, for [15th, end); May's fee is team's.
    assert_eq!(fee_lines_for(&h, end), vec![Minor(6000)]);
}

#[test]
fn issue_13_an_immediate_change_to_the_current_plan_is_refused() {
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    let open = h.st().open.clone();
    let e = h
        .command(
            change("basic", PlanChangeEffective::Immediately, None),
            "2026-04-10T00:00:00Z",
        )
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_field");
    let text = e.to_string();
    assert!(
        text.contains("plan_id") && text.contains("current plan"),
        "{text}"
    );
    assert!(h.st().pending_lines.is_empty());
    assert_eq!(h.st().open, open);
    // Also after a change: pro is now the current plan.
    h.command(
        change("pro", PlanChangeEffective::Immediately, None),
        "2026-04-12T00:00:00Z",
    )
    .unwrap();
    let e = h
        .command(
            change("pro", PlanChangeEffective::Immediately, Some(1)),
            "2026-04-14T00:00:00Z",
        )
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_field");
    // Refused: no third segment (it would be rated with pro's free units
    // and first tier again), still the one change's two.
    assert_eq!(h.st().open.len(), 2);
    // A next-period change to the current plan is still accepted (it
    // replaces a scheduled change and takes effect as a no-op).
    h.command(
        change("pro", PlanChangeEffective::NextPeriod, None),
        "2026-04-20T00:00:00Z",
    )
    .unwrap();
}

#[test]
fn issue_13_an_immediate_change_at_the_next_periods_start_in_the_grace_window_charges_its_fee_once()
{
    let mut h = harness();
    h.open("basic", "2026-04-01T00:00:00Z");
    // April has ended, its invoice is not issued yet (grace: one hour).
    // A change at May 1st 00:00 splits May at its start: May's fee in
    // advance stays basic's 30.00, credited whole (−30.00 × 31/31), and
    // pro's charged whole (90.00 × 31/31): May costs 90.00, once.
    change_late(
        &mut h,
        "pro",
        "2026-05-01T00:00:00Z",
        "2026-05-01T00:30:00Z",
    )
    .unwrap();
    // A second change at the same instant replaces pro on its segment:
    // pro credited −90.00, basic charged 30.00 (the plan and version it
    // names differ from pro's).
    change_late(
        &mut h,
        "basic",
        "2026-04-20T00:00:00Z",
        "2026-05-01T00:40:00Z",
    )
    .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let mut may = fee_lines_for(&h, ts("2026-05-01T00:00:00Z"));
    may.sort();
    assert_eq!(
        may,
        vec![
            Minor(-9000),
            Minor(-3000),
            Minor(3000),
            Minor(3000),
            Minor(9000)
        ]
    );
    assert_eq!(h.st().plan_id, "basic");
}

/// A plan of the property below: `id`, a fee in cents.
fn fee_plan(id: &str, cents: u32) -> Plan {
    plan(
        id,
        1,
        &Decimal::new(cents.into(), 2).to_string(),
        graduated("1000", "0.01", "0.005"),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of immediate changes, in or out of order: the
    /// period's segments tile it without overlap in the order the changes
    /// were applied, and its fee lines sum to each segment's fee for its
    /// exact fraction (each rounded as the proration lines are: the old
    /// fee credited once from the instant it stops), within one minor unit
    /// a line of the exact Σ fee × fraction.
    #[test]
    fn issue_13_fee_lines_sum_to_each_segments_fee_times_its_fraction(
        fees in proptest::collection::vec(0u32..50_000, 3),
        changes in proptest::collection::vec((0usize..3, 0i64..30 * 24 * 60 - 10), 0..10),
    ) {
        let ids = ["basic", "pro", "team"];
        let mut h = harness();
        for (id, cents) in ids.iter().zip(&fees) {
            h.engine.plans.upsert(fee_plan(id, *cents)).unwrap();
        }
        let (start, end) = (ts("2026-04-01T00:00:00Z"), ts("2026-05-01T00:00:00Z"));
        let minute = 60_000_000i64;
        h.open("basic", "2026-04-01T00:00:00Z");
        // Each arrives a minute after the one before, in April's last ten
        // minutes, whenever it happened.
        for (n, (p, m)) in changes.iter().enumerate() {
            let id = h.next_id();
            let occurred = Timestamp(start.0 + m * minute);
            let now = Timestamp(end.0 - (10 - n as i64) * minute);
            let _ = h.feed(Input::Account(AccountCommand {
                event_id: id,
                account_id: "acct".into(),
                occurred_at: occurred,
                environment: Some("prod".into()),
                kind: change(ids[*p], PlanChangeEffective::Immediately, None),
            }), now);
        }
        h.advance("2026-05-01T01:00:00Z");
        let segments: Vec<_> = h.st().closed.iter().filter(|c| c.period.start == start).collect();
        let fee_of = |id: &str| Decimal::new(fees[ids.iter().position(|i| *i == id).unwrap()].into(), 2);
        let len = end.0 - start.0;
        let mut at = start;
        let (mut rounded, mut exact) = (Minor::ZERO, Decimal::ZERO);
        for s in &segments {
            let (from, to) = s.bounds();
            prop_assert_eq!(from, at, "segments tile the period");
            prop_assert!(from < to || segments.len() == 1);
            at = to;
            let fee = fee_of(&s.plan_id);
            rounded = rounded
                .saturating_add(prorate(eur(), fee, end.0 - from.0, len))
                .saturating_sub(prorate(eur(), fee, end.0 - to.0, len));
            exact += fee * Decimal::from(to.0 - from.0) / Decimal::from(len) * Decimal::ONE_HUNDRED;
        }
        prop_assert_eq!(at, end);
        let lines = fee_lines_for(&h, start);
        let billed = Minor::saturating_sum(lines.iter().copied());
        prop_assert_eq!(billed, rounded);
        let off = (Decimal::from(billed.0) - exact).abs();
        prop_assert!(off <= Decimal::from(lines.len()), "{} vs {}", billed.0, exact);
        // The account ends on the last segment's plan; May's fee is its.
        let last = segments.last().unwrap();
        prop_assert_eq!(&h.st().plan_id, &last.plan_id);
        let may: Vec<_> = fee_lines_for(&h, end).into_iter().filter(|m| *m != Minor::ZERO).collect();
        let expected: Vec<_> = [prorate(eur(), fee_of(&last.plan_id), len, len)].into_iter().filter(|m| m.is_positive()).collect();
        prop_assert_eq!(may, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Money is conserved through an immediate change: what the account
    /// is invoiced for April and May's fee is exactly the old fee for the
    /// days before the change, the new one for the days after (each
    /// rounded as the proration lines are), each plan's charge on the
    /// usage of its part, and the tax on that: each fee line is asserted,
    /// and each invoice's tax is its subtotal × the rate, rounded once.
    #[test]
    fn issue_13_money_is_conserved_through_an_immediate_change(
        before in proptest::collection::vec((0u32..16, 1u32..5_000), 0..6),
        after in proptest::collection::vec((0u32..13, 1u32..5_000), 0..6),
        change_hour in 24u32..(29 * 24),
        old_fee in 0u32..50_000,
        new_fee in 0u32..50_000,
    ) {
        let mut h = harness();
        h.engine.plans.upsert(plan("basic", 1, &Decimal::new(old_fee.into(), 2).to_string(),
            graduated("1000", "0.01", "0.005"))).unwrap();
        h.engine.plans.upsert(plan("pro", 1, &Decimal::new(new_fee.into(), 2).to_string(),
            graduated("5000", "0.008", "0.004"))).unwrap();
        let start = ts("2026-04-01T00:00:00Z");
        let end = ts("2026-05-01T00:00:00Z");
        let hour = 3_600_000_000i64;
        let at = Timestamp(start.0 + i64::from(change_hour) * hour);
        h.open("basic", "2026-04-01T00:00:00Z");
        let (mut q_old, mut q_new) = (Decimal::ZERO, Decimal::ZERO);
        for (day, q) in &before {
            let t = Timestamp(start.0 + i64::from(*day) * 24 * hour);
            if t < at {
                let id = h.next_id();
                h.usage_at(&id, "api.calls", "a", &q.to_string(), t, t).unwrap();
                q_old += Decimal::from(*q);
            }
        }
        h.feed(Input::Account(AccountCommand {
            event_id: "chg".into(),
            account_id: "acct".into(),
            occurred_at: at,
            environment: Some("prod".into()),
            kind: change("pro", PlanChangeEffective::Immediately, None),
        }), at).unwrap();
        for (day, q) in &after {
            let t = Timestamp(at.0 + i64::from(*day) * 24 * hour);
            if t < end {
                let id = h.next_id();
                h.usage_at(&id, "api.calls", "a", &q.to_string(), t, t).unwrap();
                q_new += Decimal::from(*q);
            }
        }
        h.advance("2026-05-01T01:00:00Z");
        let inv = h.invoices();
        let issued: Minor = Minor::saturating_sum(inv.iter().map(|i| i.subtotal));
        let len = end.0 - start.0;
        let rest = end.0 - at.0;
        let old = Decimal::new(old_fee.into(), 2);
        let new = Decimal::new(new_fee.into(), 2);
        let fees = prorate(eur(), old, len, len)
            .saturating_sub(prorate(eur(), old, rest, len))
            .saturating_add(prorate(eur(), new, rest, len))
            .saturating_add(prorate(eur(), new, len, len));
        let rate = |p: &Plan, q: Decimal| line_amount(&p.charges[0], q, eur(), Minor::MAX_AMOUNT).unwrap();
        let usage = rate(&basic_v1(), q_old).saturating_add(rate(&pro_v1(), q_new));
        prop_assert_eq!(issued, fees.saturating_add(usage));
        // The fee lines themselves: April's fee in advance; then basic
        // credited once for [at, end), pro charged for it, May's on pro.
        let nonzero = |v: Vec<Minor>| -> Vec<Minor> {
            let mut v: Vec<_> = v.into_iter().filter(|m| *m != Minor::ZERO).collect();
            v.sort();
            v
        };
        prop_assert_eq!(
            nonzero(lines_of(inv[0], LineKind::RecurringFee)),
            nonzero(vec![prorate(eur(), old, len, len)])
        );
        prop_assert_eq!(
            nonzero(lines_of(inv[1], LineKind::RecurringFee)),
            nonzero(vec![
                Minor::ZERO.saturating_sub(prorate(eur(), old, rest, len)),
                prorate(eur(), new, rest, len),
                prorate(eur(), new, len, len),
            ])
        );
        // Tax on each invoice: its subtotal × 20%, rounded once.
        for i in &inv {
            let tax = eur().round(eur().to_major(i.subtotal) * d("0.20")).unwrap();
            prop_assert_eq!(i.tax, tax);
            prop_assert_eq!(i.total, i.subtotal.saturating_add(tax));
        }
    }
}

/// `api.calls` per unit at `price` with `free` free units a period.
fn per_unit_free(price: &str, free: &str) -> Charge {
    Charge {
        metric: "api.calls".into(),
        model: Model::PerUnit,
        unit_price: d(price),
        package_size: None,
        free_units: d(free),
        tiers: Vec::new(),
        aggregation: Default::default(),
    }
}

/// "starter" v1: no fee, api.calls 0.01 with 1,000 free a period; "scale"
/// v1: no fee, api.calls 0.02, none free. April, opened on starter; moved
/// at once to scale on the 10th and back to starter on the 20th.
fn starter_scale_starter() -> Harness {
    let mut h = harness();
    h.engine
        .plans
        .upsert(plan("starter", 1, "0", per_unit_free("0.01", "1000")))
        .unwrap();
    h.engine
        .plans
        .upsert(plan("scale", 1, "0", per_unit_free("0.02", "0")))
        .unwrap();
    h.open("starter", "2026-04-01T00:00:00Z");
    h.usage("api.calls", "app", "600", "2026-04-05T00:00:00Z")
        .unwrap();
    h.command(
        change("scale", PlanChangeEffective::Immediately, None),
        "2026-04-10T00:00:00Z",
    )
    .unwrap();
    h.usage("api.calls", "app", "300", "2026-04-12T00:00:00Z")
        .unwrap();
    h.command(
        change("starter", PlanChangeEffective::Immediately, None),
        "2026-04-20T00:00:00Z",
    )
    .unwrap();
    h.usage("api.calls", "app", "700", "2026-04-25T00:00:00Z")
        .unwrap();
    h
}

#[test]
fn issue_13_a_plans_free_units_apply_once_per_period_across_its_segments() {
    let mut h = starter_scale_starter();
    // Segment order: starter's 600 calls are all free (400 of the 1,000
    // left) = 0.00; scale's 300 × 0.02 = 6.00; starter again: 700 calls,
    // 400 free left, 300 × 0.01 = 3.00 (not 0.00: the allowance is the
    // plan's for the period, not per segment). The draft says so at once.
    let draft: Vec<Minor> = h
        .engine
        .draft(h.st())
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Usage)
        .map(|l| l.amount)
        .collect();
    assert_eq!(draft, vec![Minor(0), Minor(600), Minor(300)]);
    h.advance("2026-05-01T01:00:00Z");
    let inv = h.invoices()[0];
    assert_eq!(
        lines_of(inv, LineKind::Usage),
        vec![Minor(0), Minor(600), Minor(300)]
    );
    // 0.00 + 6.00 + 3.00 = 9.00; tax 20% = 1.80.
    assert_eq!((inv.subtotal, inv.tax), (Minor(900), Minor(180)));
}

#[test]
fn issue_13_late_usage_in_an_earlier_segment_moves_the_free_units_of_the_later_one() {
    let mut h = starter_scale_starter();
    h.advance("2026-05-01T01:00:00Z");
    // 200 more calls on April 6th (starter's first segment) arrive on May
    // 2nd: that segment's 800 calls are still free (+0.00), but only 200
    // free units are left for the last one: 500 × 0.01 = 5.00 instead of
    // 3.00, +2.00. Starter's 1,500 calls of April cost (1,500 − 1,000) ×
    // 0.01 = 5.00 in all, billed 3.00 + 2.00.
    h.usage_at(
        "late-1",
        "api.calls",
        "app",
        "200",
        ts("2026-04-06T00:00:00Z"),
        ts("2026-05-02T00:00:00Z"),
    )
    .unwrap();
    // A late event in the last segment uses what is left: 100 more on
    // April 26th are 100 × 0.01 = 1.00.
    h.usage_at(
        "late-2",
        "api.calls",
        "app",
        "100",
        ts("2026-04-26T00:00:00Z"),
        ts("2026-05-03T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-06-01T01:00:00Z");
    let may = h.invoices()[1];
    let late: Vec<(Decimal, Minor)> = may
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::LateUsage)
        .map(|l| (l.quantity, l.amount))
        .collect();
    assert_eq!(
        late,
        vec![
            (d("200"), Minor(0)),
            (Decimal::ZERO, Minor(200)),
            (d("100"), Minor(100))
        ],
        "{:#?}",
        may.lines
    );
    // Starter's 1,600 calls of April: (1,600 − 1,000) × 0.01 = 6.00 in
    // all, billed 3.00 in April and 0.00 + 2.00 + 1.00 late.
}

/// `metric` per unit at `price`, `free` free units, aggregated by `kind`.
fn level_charge(metric: &str, kind: Aggregation, price: &str, free: &str) -> Charge {
    Charge {
        metric: metric.into(),
        model: Model::PerUnit,
        unit_price: d(price),
        package_size: None,
        free_units: d(free),
        tiers: Vec::new(),
        aggregation: AggregationSpec {
            kind,
            ..Default::default()
        },
    }
}

/// April on plan `a`, moved at once to `b` on the 10th and back to `a` on
/// the 20th (both without fees), with the usage `events` (metric,
/// quantity, instant) fed in order.
fn a_b_a(a: Plan, b: Plan, events: &[(&str, &str, &str)]) -> Harness {
    let (a_id, b_id) = (a.plan_id.clone(), b.plan_id.clone());
    let mut h = harness();
    h.engine.plans.upsert(a).unwrap();
    h.engine.plans.upsert(b).unwrap();
    h.open(&a_id, "2026-04-01T00:00:00Z");
    let mut changes = [
        ("2026-04-10T00:00:00Z", b_id.as_str()),
        ("2026-04-20T00:00:00Z", a_id.as_str()),
    ]
    .into_iter()
    .peekable();
    for &(metric, qty, at) in events {
        while let Some((when, to)) = changes.next_if(|(when, _)| ts(when) <= ts(at)) {
            h.command(change(to, PlanChangeEffective::Immediately, None), when)
                .unwrap();
        }
        h.usage(metric, "app", qty, at).unwrap();
    }
    for (when, to) in changes {
        h.command(change(to, PlanChangeEffective::Immediately, None), when)
            .unwrap();
    }
    h
}

/// "seats-a": seats on `latest` at 10.00 with 5 free, peak.cpu on `max`
/// at 1.00 with 5 free; "seats-b": seats at 12.00 and peak.cpu at 1.50,
/// none free.
fn level_plans() -> (Plan, Plan) {
    let charges = |seats: &str, cpu: &str, free: &str| {
        vec![
            level_charge("seats", Aggregation::Latest, seats, free),
            level_charge("peak.cpu", Aggregation::Max, cpu, free),
        ]
    };
    let mut a = plan("seats-a", 1, "0", per_unit_free("0", "0"));
    a.charges = charges("10.00", "1.00", "5");
    let mut b = plan("seats-b", 1, "0", per_unit_free("0", "0"));
    b.charges = charges("12.00", "1.50", "0");
    (a, b)
}

/// The (metric, amount) of the lines of `kind`, in order.
fn metric_lines(lines: &[Line], kind: LineKind) -> Vec<(String, Minor)> {
    lines
        .iter()
        .filter(|l| l.kind == kind)
        .map(|l| (l.metric.clone().unwrap_or_default(), l.amount))
        .collect()
}

fn owned(lines: &[(&str, i64)]) -> Vec<(String, Minor)> {
    lines
        .iter()
        .map(|(m, a)| (m.to_string(), Minor(*a)))
        .collect()
}

#[test]
fn issue_13_level_aggregations_give_each_segment_the_full_free_units() {
    let (a, b) = level_plans();
    let mut h = a_b_a(
        a,
        b,
        &[
            ("seats", "8", "2026-04-02T00:00:00Z"),
            ("peak.cpu", "8", "2026-04-02T00:00:00Z"),
            ("peak.cpu", "3", "2026-04-03T00:00:00Z"),
            ("seats", "8", "2026-04-12T00:00:00Z"),
            ("peak.cpu", "8", "2026-04-12T00:00:00Z"),
            ("seats", "8", "2026-04-22T00:00:00Z"),
            ("peak.cpu", "6", "2026-04-22T00:00:00Z"),
        ],
    );
    // A seat count and a peak are levels measured again in each segment,
    // not parts of one period total: each segment on seats-a has its 5
    // free seats and 5 free units of peak. seats-a first: 8 seats, (8 − 5)
    // × 10.00 = 30.00; peak 8, (8 − 5) × 1.00 = 3.00. seats-b: 8 × 12.00 =
    // 96.00; 8 × 1.50 = 12.00. seats-a again: 8 seats, 30.00 (not 8 ×
    // 10.00 = 80.00 as if the first segment's 8 seats had used up the 5
    // free ones); peak 6, (6 − 5) × 1.00 = 1.00 (not 6.00).
    let expected = owned(&[
        ("seats", 3000),
        ("peak.cpu", 300),
        ("seats", 9600),
        ("peak.cpu", 1200),
        ("seats", 3000),
        ("peak.cpu", 100),
    ]);
    let draft = h.engine.draft(h.st());
    assert_eq!(metric_lines(&draft.lines, LineKind::Usage), expected);
    h.advance("2026-05-01T01:00:00Z");
    let inv = h.invoices()[0];
    assert_eq!(metric_lines(&inv.lines, LineKind::Usage), expected);
    // 30.00 + 3.00 + 96.00 + 12.00 + 30.00 + 1.00 = 172.00.
    assert_eq!(inv.subtotal, Minor(17200));
}

#[test]
fn issue_13_late_usage_on_a_level_aggregation_re_rates_only_its_own_segment() {
    let (a, b) = level_plans();
    let mut h = a_b_a(
        a,
        b,
        &[
            ("seats", "3", "2026-04-02T00:00:00Z"),
            ("peak.cpu", "3", "2026-04-02T00:00:00Z"),
            ("seats", "8", "2026-04-12T00:00:00Z"),
            ("peak.cpu", "8", "2026-04-12T00:00:00Z"),
            ("seats", "8", "2026-04-22T00:00:00Z"),
            ("peak.cpu", "6", "2026-04-22T00:00:00Z"),
        ],
    );
    h.advance("2026-05-01T01:00:00Z");
    // seats-a first: 3 seats and a peak of 3, within the 5 free: 0.00
    // each; seats-b: 96.00 and 12.00; seats-a again, with its own 5 free:
    // (8 − 5) × 10.00 = 30.00 and (6 − 5) × 1.00 = 1.00.
    assert_eq!(
        metric_lines(&h.invoices()[0].lines, LineKind::Usage),
        owned(&[
            ("seats", 0),
            ("peak.cpu", 0),
            ("seats", 9600),
            ("peak.cpu", 1200),
            ("seats", 3000),
            ("peak.cpu", 100),
        ])
    );
    // Late, in the first segment: 4 seats on April 3rd (the latest now:
    // 4, still free, +0.00 for 1 seat more) and a peak of 7 on April 4th
    // ((7 − 5) × 1.00 = 2.00, billed 0.00: +2.00 for 4 units more). The
    // last segment's levels did not move, nor its free units: no line for
    // it (not 10.00 for one free seat fewer, nor 2.00 for the peak).
    for (id, metric, qty, at) in [
        ("late-seats", "seats", "4", "2026-04-03T00:00:00Z"),
        ("late-cpu", "peak.cpu", "7", "2026-04-04T00:00:00Z"),
    ] {
        h.usage_at(id, metric, "app", qty, ts(at), ts("2026-05-02T00:00:00Z"))
            .unwrap();
    }
    h.advance("2026-06-01T01:00:00Z");
    let may = h.invoices()[1];
    let late: Vec<(String, Decimal, Minor)> = may
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::LateUsage)
        .map(|l| (l.metric.clone().unwrap_or_default(), l.quantity, l.amount))
        .collect();
    assert_eq!(
        late,
        vec![
            ("seats".to_string(), d("1"), Minor(0)),
            ("peak.cpu".to_string(), d("4"), Minor(200)),
        ],
        "{:#?}",
        may.lines
    );
}

/// The account's state through a snapshot as the store keeps it (JSON;
/// the dedup window is stored next to it), after `edit` on the JSON.
fn through_snapshot(h: &mut Harness, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json = serde_json::to_value(h.st()).unwrap();
    edit(&mut json);
    let mut restored: super::AccountState = serde_json::from_value(json).unwrap();
    restored.dedup = h.st().dedup.clone();
    h.state = Some(restored);
}

/// starter (1,000 calls free at 0.01) → scale → starter in April, with
/// 600 calls in each starter segment, closed.
fn six_hundred_twice() -> Harness {
    let starter = plan("starter", 1, "0", per_unit_free("0.01", "1000"));
    let scale = plan("scale", 1, "0", per_unit_free("0.02", "0"));
    let mut h = a_b_a(
        starter,
        scale,
        &[
            ("api.calls", "600", "2026-04-05T00:00:00Z"),
            ("api.calls", "600", "2026-04-25T00:00:00Z"),
        ],
    );
    h.advance("2026-05-01T01:00:00Z");
    h
}

/// One late call on April 6th (starter's first segment), arriving on May
/// 2nd; the late lines of May's invoice as (quantity, amount).
fn one_late_call(h: &mut Harness) -> Vec<(Decimal, Minor)> {
    h.usage_at(
        "late-1",
        "api.calls",
        "app",
        "1",
        ts("2026-04-06T00:00:00Z"),
        ts("2026-05-02T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-06-01T01:00:00Z");
    h.invoices()[1]
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::LateUsage)
        .map(|l| (l.quantity, l.amount))
        .collect()
}

#[test]
fn issue_13_a_period_closed_before_free_units_were_shared_keeps_its_rule_for_late_usage() {
    let mut h = six_hundred_twice();
    // The snapshot as the code before shared free units wrote it: no
    // record of the rule, and each starter segment rated with the full
    // 1,000 free calls, so the second one's 600 calls billed 0.00 (this
    // code bills it (600 − 400) × 0.01 = 2.00).
    through_snapshot(&mut h, |json| {
        let closed = json["closed"].as_array_mut().unwrap();
        for c in closed.iter_mut() {
            c.as_object_mut().unwrap().remove("free_units_per_period");
        }
        let last = closed
            .iter_mut()
            .rfind(|c| c["plan_id"] == "starter")
            .unwrap();
        last["billed"] = serde_json::json!([[{"Metric": "api.calls"}, 0]]);
    });
    // One late call in the first segment: 601 calls, all free under that
    // period's rule (+0.00). The second segment keeps its own 1,000 free
    // calls: no "free units used earlier" line (the rule of today would
    // leave it 399 free, (600 − 399) × 0.01 = 2.01 retroactively).
    assert_eq!(one_late_call(&mut h), vec![(d("1"), Minor(0))]);

    // A period closed by this code keeps sharing them through its
    // snapshot: the second segment had 400 free left (2.00 billed), now
    // 399: (600 − 399) × 0.01 = 2.01, +0.01.
    let mut h = six_hundred_twice();
    through_snapshot(&mut h, |_| {});
    assert_eq!(
        one_late_call(&mut h),
        vec![(d("1"), Minor(0)), (Decimal::ZERO, Minor(1))]
    );
}

#[test]
fn issue_13_a_65th_version_of_a_plan_is_refused_and_the_64_kept_stay_as_they_are() {
    use super::plan::{PlanError, MAX_PLAN_VERSIONS};
    let mut h = harness();
    // Versions 2..=64 of basic (version v: a fee of v euros); version 1 is
    // basic_v1, 30.00.
    for v in 2..=64u32 {
        h.engine
            .plans
            .upsert(plan(
                "basic",
                v,
                &v.to_string(),
                graduated("1000", "0.01", "0.005"),
            ))
            .unwrap();
    }
    assert_eq!(MAX_PLAN_VERSIONS, 64);
    h.open("basic", "2026-04-01T00:00:00Z");
    // Opened on the latest, version 64: 64.00 in advance.
    assert_eq!(h.st().plan_version, 64);
    assert_eq!(h.invoices()[0].subtotal, Minor(6400));
    let e = h
        .engine
        .plans
        .upsert(plan("basic", 65, "99", graduated("1000", "0.01", "0.005")))
        .unwrap_err();
    // A clear refusal naming the field (the processor dead-letters the
    // record `invalid_plan` with this text; `simulate` stops on it).
    assert!(matches!(&e, PlanError::OutOfRange { field, .. } if field == "version"));
    assert_eq!(
        e.to_string(),
        "plan basic: version: version 65 refused: the book keeps at most 64 versions of a plan \
         (1 to 64 are kept, none is evicted, so no account's version changes); publish it as a new plan id"
    );
    // Nothing evicted nor overwritten: 1 and 64 as they were, no 65.
    assert_eq!(h.engine.plans.get("basic").unwrap().version, 64);
    assert_eq!(
        h.engine
            .plans
            .get_version("basic", 1)
            .unwrap()
            .recurring_fee,
        d("30.00")
    );
    assert!(h.engine.plans.get_version("basic", 65).is_none());
    // A version the book keeps may still be republished in place.
    h.engine
        .plans
        .upsert(plan("basic", 64, "64", graduated("1000", "0.01", "0.005")))
        .unwrap();
    // Moving an account to the refused version is refused as unknown.
    let moved = h.command(
        change("basic", PlanChangeEffective::NextPeriod, Some(65)),
        "2026-04-10T00:00:00Z",
    );
    assert!(
        matches!(&moved, Err(Rejection::UnknownPlan { plan_id }) if plan_id == "basic version 65"),
        "{moved:?}"
    );
    // The account's May fee in advance is still version 64's.
    h.advance("2026-05-01T01:00:00Z");
    assert_eq!(
        lines_of(h.invoices()[1], LineKind::RecurringFee),
        vec![Minor(6400)]
    );
}
