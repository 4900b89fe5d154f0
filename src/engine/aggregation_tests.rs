//! Issue 13, item 1: aggregations per charge. One test per behaviour, each
//! with its amount worked out; periods are calendar months in UTC.

use rust_decimal::Decimal;

use super::aggregation::{
    time_weighted, Aggregation, AggregationSpec, MAX_GAUGE_READINGS, MAX_UNIQUE_VALUES,
};
use super::events::*;
use super::fold::{Engine, Outcome};
use super::money::{Currency, Minor};
use super::plan::{Charge, Model, Plan, PlanBook, PlanError, Tier};
use super::tests::{d, ts, usage, Harness};
use super::time::MICROS_PER_HOUR;
use super::{EngineConfig, Rejection};

fn charge(metric: &str, kind: Aggregation, unit_price: &str) -> Charge {
    Charge {
        metric: metric.into(),
        model: Model::PerUnit,
        unit_price: d(unit_price),
        package_size: None,
        free_units: Decimal::ZERO,
        tiers: vec![],
        aggregation: AggregationSpec {
            kind,
            ..Default::default()
        },
    }
}

/// Plan "metered": one per-unit charge per aggregation.
pub(crate) fn metered_plan() -> Plan {
    let mut users = charge("users", Aggregation::UniqueCount, "3.00");
    users.aggregation.field = Some("user_id".into());
    let mut bandwidth = charge("bandwidth.mbps", Aggregation::Percentile, "0.50");
    bandwidth.aggregation.percentile = Some(d("95"));
    Plan {
        plan_id: "metered".into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: Decimal::ZERO,
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![
            charge("requests", Aggregation::Count, "0.01"),
            charge("peak.cpu", Aggregation::Max, "2.00"),
            charge("seats", Aggregation::Latest, "10.00"),
            users,
            charge("storage.gb", Aggregation::TimeWeighted, "0.001"),
            bandwidth,
            charge("bytes", Aggregation::Sum, "0.01"),
        ],
    }
}

/// Plan "models": graduated, volume, package, free units and a minimum
/// spend, each on an aggregation other than sum.
fn models_plan() -> Plan {
    let tiers = |first: &str, rest: &str, up_to: &str| {
        vec![
            Tier {
                up_to: Some(d(up_to)),
                unit_price: d(first),
                flat_fee: Decimal::ZERO,
            },
            Tier {
                up_to: None,
                unit_price: d(rest),
                flat_fee: Decimal::ZERO,
            },
        ]
    };
    let mut seats = charge("seats", Aggregation::Latest, "0");
    seats.model = Model::Volume;
    seats.tiers = tiers("10.00", "8.00", "10");
    let mut peak = charge("peak.cpu", Aggregation::Max, "1.00");
    peak.model = Model::Package;
    peak.package_size = Some(d("100"));
    let mut users = charge("users", Aggregation::UniqueCount, "0");
    users.model = Model::Graduated;
    users.tiers = tiers("5.00", "1.00", "3");
    users.free_units = d("2");
    users.aggregation.field = Some("user_id".into());
    Plan {
        plan_id: "models".into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: Decimal::ZERO,
        minimum_spend: d("150.00"),
        version: 1,
        charges: vec![seats, peak, users],
    }
}

fn harness() -> Harness {
    let mut book = PlanBook::new();
    book.upsert(metered_plan()).unwrap();
    book.upsert(models_plan()).unwrap();
    Harness {
        engine: Engine::new(EngineConfig::new("prod"), book),
        state: None,
        journal: Vec::new(),
        n: 0,
    }
}

fn with_user(h: &mut Harness, user: Option<&str>, at: &str) -> Result<Outcome, Rejection> {
    let id = h.next_id();
    let mut u = usage(&id, "acct", "app", "users", "1", ts(at));
    if let Some(user) = user {
        u.attributes.insert("user_id".into(), user.into());
    }
    h.feed(Input::Usage(u), ts(at))
}

/// The March invoice's line of `metric` (issued after the grace hour).
fn march_line(h: &mut Harness, metric: &str) -> Line {
    h.advance("2026-04-01T01:00:00Z");
    h.invoices()
        .iter()
        .find(|i| i.period.start == ts("2026-03-01T00:00:00Z"))
        .expect("March invoice")
        .lines
        .iter()
        .find(|l| l.metric.as_deref() == Some(metric))
        .expect("line of the metric")
        .clone()
}

fn late_lines(h: &Harness, metric: &str) -> Vec<Line> {
    h.invoices()
        .iter()
        .flat_map(|i| i.lines.iter())
        .filter(|l| l.kind == LineKind::LateUsage && l.metric.as_deref() == Some(metric))
        .cloned()
        .collect()
}

#[test]
fn issue_13_count_bills_the_number_of_events_not_their_quantities() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("requests", "app-1", "500", "2026-03-02T00:00:00Z")
        .unwrap();
    h.usage("requests", "app-1", "0", "2026-03-03T00:00:00Z")
        .unwrap();
    h.usage("requests", "app-2", "7", "2026-03-04T00:00:00Z")
        .unwrap();
    let line = march_line(&mut h, "requests");
    // 3 events × 0.01 = 0.03
    assert_eq!(line.quantity, d("3"));
    assert_eq!(line.amount, Minor(3));
    // The breakdown counts events per subject.
    assert_eq!(line.subjects["app-1"], d("2"));
    assert_eq!(line.subjects["app-2"], d("1"));
}

#[test]
fn issue_13_max_bills_the_period_peak() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    for (q, at) in [
        ("3", "2026-03-02T00:00:00Z"),
        ("8.5", "2026-03-03T00:00:00Z"),
        ("4", "2026-03-04T00:00:00Z"),
    ] {
        h.usage("peak.cpu", "vm", q, at).unwrap();
    }
    let line = march_line(&mut h, "peak.cpu");
    // peak 8.5 × 2.00 = 17.00
    assert_eq!(line.quantity, d("8.5"));
    assert_eq!(line.amount, Minor(1700));
}

#[test]
fn issue_13_latest_bills_the_value_with_the_latest_occurred_at() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("seats", "org", "12", "2026-03-05T00:00:00Z")
        .unwrap();
    h.usage("seats", "org", "9", "2026-03-20T00:00:00Z")
        .unwrap();
    // Arrives later but happened earlier: not the latest.
    let id = h.next_id();
    h.usage_at(
        &id,
        "seats",
        "org",
        "15",
        ts("2026-03-10T00:00:00Z"),
        ts("2026-03-21T00:00:00Z"),
    )
    .unwrap();
    // Same instant as the latest: the larger value wins, 9 stays.
    let id = h.next_id();
    h.usage_at(
        &id,
        "seats",
        "org",
        "7",
        ts("2026-03-20T00:00:00Z"),
        ts("2026-03-21T00:00:00Z"),
    )
    .unwrap();
    let line = march_line(&mut h, "seats");
    // 9 seats × 10.00 = 90.00
    assert_eq!(line.quantity, d("9"));
    assert_eq!(line.amount, Minor(9000));
}

#[test]
fn issue_13_unique_count_bills_distinct_values_of_the_named_attribute() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    for (user, at) in [
        ("alice", "2026-03-02T00:00:00Z"),
        ("bob", "2026-03-03T00:00:00Z"),
        ("alice", "2026-03-04T00:00:00Z"),
        ("carol", "2026-03-05T00:00:00Z"),
    ] {
        with_user(&mut h, Some(user), at).unwrap();
    }
    // An event without the attribute is refused, naming it.
    let err = with_user(&mut h, None, "2026-03-06T00:00:00Z").unwrap_err();
    assert!(
        matches!(&err, Rejection::InvalidField { field, .. } if field == "attributes.user_id"),
        "{err:?}"
    );
    let line = march_line(&mut h, "users");
    // 3 distinct users × 3.00 = 9.00
    assert_eq!(line.quantity, d("3"));
    assert_eq!(line.amount, Minor(900));
}

#[test]
fn issue_13_unique_count_refuses_a_new_value_past_the_cap_but_counts_known_ones() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    for i in 0..MAX_UNIQUE_VALUES {
        with_user(&mut h, Some(&format!("u{i}")), "2026-03-02T00:00:00Z").unwrap();
    }
    let err = with_user(&mut h, Some("one-too-many"), "2026-03-03T00:00:00Z").unwrap_err();
    assert!(
        matches!(&err, Rejection::InvalidField { field, reason } if field == "attributes.user_id" && reason.contains("10000 distinct values")),
        "{err:?}"
    );
    // A value already counted still applies (it adds nothing).
    assert_eq!(
        with_user(&mut h, Some("u7"), "2026-03-03T00:00:00Z"),
        Ok(Outcome::Applied)
    );
    let line = march_line(&mut h, "users");
    // 10,000 users × 3.00 = 30,000.00
    assert_eq!(line.amount, Minor(3_000_000));
}

#[test]
fn issue_13_time_weighted_bills_unit_hours_of_the_gauge() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("storage.gb", "bucket", "100", "2026-03-01T00:00:00Z")
        .unwrap();
    h.usage("storage.gb", "bucket", "400", "2026-03-11T00:00:00Z")
        .unwrap();
    let line = march_line(&mut h, "storage.gb");
    // 100 GB for 10 days (240 h) = 24,000 GB-h, then 400 GB until the
    // period ends, 21 days (504 h) = 201,600 GB-h: 225,600 × 0.001 = 225.60
    assert_eq!(line.quantity, d("225600"));
    assert_eq!(line.amount, Minor(22560));
}

#[test]
fn issue_13_time_weighted_counts_zero_before_the_first_reading_and_rounds_unit_hours_once() {
    let at = ts("2026-03-31T23:00:00Z");
    // 1 unit held for 1 second: 1/3600 = 0.000277777… → 0.000277778 (9 decimals, half to even)
    assert_eq!(
        time_weighted(&[(at, d("1"))], at.plus(1_000_000)),
        Some(d("0.000277778"))
    );
    // Midpoints go to the even digit: 0.2 × 9 µs / 3.6e9 = 0.5e-9 → 0,
    // 0.6 × 9 µs / 3.6e9 = 1.5e-9 → 0.000000002
    assert_eq!(time_weighted(&[(at, d("0.2"))], at.plus(9)), Some(d("0")));
    assert_eq!(
        time_weighted(&[(at, d("0.6"))], at.plus(9)),
        Some(d("0.000000002"))
    );
    // Readings hold until the next one; nothing before the first.
    let h0 = ts("2026-03-01T00:00:00Z");
    let readings = [
        (h0.plus(2 * MICROS_PER_HOUR), d("3")),
        (h0.plus(5 * MICROS_PER_HOUR), d("1")),
    ];
    // 3 × 3 h + 1 × 1 h = 10
    assert_eq!(
        time_weighted(&readings, h0.plus(6 * MICROS_PER_HOUR)),
        Some(d("10"))
    );
}

#[test]
fn issue_13_time_weighted_refuses_a_reading_past_the_cap() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    let start = ts("2026-03-01T00:00:00Z");
    for i in 0..MAX_GAUGE_READINGS as i64 {
        let at = start.plus(i * 60 * 1_000_000);
        let id = h.next_id();
        h.usage_at(&id, "storage.gb", "b", "1", at, ts("2026-03-08T00:00:00Z"))
            .unwrap();
    }
    let id = h.next_id();
    let err = h
        .usage_at(
            &id,
            "storage.gb",
            "b",
            "1",
            ts("2026-03-20T00:00:00Z"),
            ts("2026-03-20T00:00:00Z"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Rejection::InvalidField { field, reason } if field == "occurred_at" && reason.contains("readings")),
        "{err:?}"
    );
}

#[test]
fn issue_13_percentile_bills_the_95th_of_window_maxima() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    let start = ts("2026-03-01T00:00:00Z");
    let five = 5 * 60 * 1_000_000;
    // 460 windows with usage: 447 peak at 20 Mbps (each also has a lower
    // sample of 5, the window keeps its max), 13 burst to 1000.
    for w in 0..460i64 {
        let at = start.plus(w * five);
        let q = if w % 35 == 0 && w / 35 < 13 {
            "1000"
        } else {
            "20"
        };
        let now = at.plus(60_000_000);
        for (i, q) in [(0, "5"), (1, q)] {
            let id = h.next_id();
            h.usage_at(&id, "bandwidth.mbps", "port", q, at.plus(i), now)
                .unwrap();
        }
    }
    let line = march_line(&mut h, "bandwidth.mbps");
    // March: 31 × 288 = 8,928 five-minute windows; nearest rank
    // ⌈0.95 × 8928⌉ = 8,482. 8,468 windows had no usage (0), so the value
    // is the 14th smallest of the 460 maxima: 20 (the 13 bursts are in the
    // top 5%, not billed). 20 × 0.50 = 10.00
    assert_eq!(line.quantity, d("20"));
    assert_eq!(line.amount, Minor(1000));
}

#[test]
fn issue_13_percentile_counts_windows_without_usage_as_zero() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    // 400 windows of 9 Mbps: 8,528 empty windows fill ranks 1..8,528, past 8,482.
    for w in 0..400i64 {
        let at = ts("2026-03-01T00:00:00Z").plus(w * 300_000_000);
        let id = h.next_id();
        h.usage_at(&id, "bandwidth.mbps", "port", "9", at, at.plus(1))
            .unwrap();
    }
    let line = march_line(&mut h, "bandwidth.mbps");
    assert_eq!(line.quantity, Decimal::ZERO);
    assert_eq!(line.amount, Minor::ZERO);
}

#[test]
fn issue_13_late_max_bills_the_difference_on_the_next_invoice() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("peak.cpu", "vm", "8.5", "2026-03-03T00:00:00Z")
        .unwrap();
    let line = march_line(&mut h, "peak.cpu");
    assert_eq!(line.amount, Minor(1700));
    // A late, higher peak for March: 12 × 2.00 = 24.00, 17.00 billed: +7.00
    let id = h.next_id();
    h.usage_at(
        &id,
        "peak.cpu",
        "vm",
        "12",
        ts("2026-03-12T00:00:00Z"),
        ts("2026-04-03T00:00:00Z"),
    )
    .unwrap();
    // A late, lower sample changes nothing: no line.
    let id = h.next_id();
    h.usage_at(
        &id,
        "peak.cpu",
        "vm",
        "3",
        ts("2026-03-13T00:00:00Z"),
        ts("2026-04-03T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let late = late_lines(&h, "peak.cpu");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].quantity, d("3.5"));
    assert_eq!(late[0].amount, Minor(700));
}

#[test]
fn issue_13_late_latest_can_lower_the_charge() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("seats", "org", "9", "2026-03-20T00:00:00Z")
        .unwrap();
    assert_eq!(march_line(&mut h, "seats").amount, Minor(9000));
    // A later reading for March arrives in April: 5 seats × 10.00 = 50.00,
    // 90.00 billed: −40.00 on the April invoice.
    let id = h.next_id();
    h.usage_at(
        &id,
        "seats",
        "org",
        "5",
        ts("2026-03-31T12:00:00Z"),
        ts("2026-04-02T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let late = late_lines(&h, "seats");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].quantity, d("-4"));
    assert_eq!(late[0].amount, Minor(-4000));
}

#[test]
fn issue_13_late_percentile_sample_re_computes_the_period() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    let start = ts("2026-03-01T00:00:00Z");
    // 450 windows at 10 Mbps: 8,478 zeros, rank 8,482 → the 4th smallest, 10.
    for w in 0..450i64 {
        let at = start.plus(w * 300_000_000);
        let id = h.next_id();
        h.usage_at(&id, "bandwidth.mbps", "port", "10", at, at.plus(1))
            .unwrap();
    }
    assert_eq!(march_line(&mut h, "bandwidth.mbps").amount, Minor(500));
    // Late samples raise 447 windows to 30: the maxima are 3 × 10 then
    // 447 × 30, the 4th smallest is 30: 30 × 0.50 = 15.00, 5.00 billed,
    // so the late lines add +10.00 (quantity +20).
    for w in 0..447i64 {
        let at = start.plus(w * 300_000_000 + 7);
        let id = h.next_id();
        h.usage_at(
            &id,
            "bandwidth.mbps",
            "port",
            "30",
            at,
            ts("2026-04-02T00:00:00Z"),
        )
        .unwrap();
    }
    h.advance("2026-05-01T01:00:00Z");
    let late = late_lines(&h, "bandwidth.mbps");
    let total = late.iter().map(|l| l.amount.0).sum::<i64>();
    assert_eq!(total, 1000);
    assert_eq!(late.iter().map(|l| l.quantity).sum::<Decimal>(), d("20"));
}

#[test]
fn issue_13_every_model_applies_on_top_of_any_aggregation() {
    let mut h = harness();
    h.open("models", "2026-03-01T00:00:00Z");
    h.usage("seats", "org", "12", "2026-03-02T00:00:00Z")
        .unwrap();
    h.usage("peak.cpu", "vm", "250", "2026-03-02T00:00:00Z")
        .unwrap();
    h.usage("peak.cpu", "vm", "40", "2026-03-03T00:00:00Z")
        .unwrap();
    for u in ["a", "b", "c", "d", "e", "f", "g", "a"] {
        with_user(&mut h, Some(u), "2026-03-04T00:00:00Z").unwrap();
    }
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[0].clone();
    let amount = |m: Option<&str>| {
        inv.lines
            .iter()
            .find(|l| l.metric.as_deref() == m)
            .unwrap()
            .amount
    };
    // Volume on latest: 12 seats, past the first tier (up to 10): 12 × 8.00 = 96.00
    assert_eq!(amount(Some("seats")), Minor(9600));
    // Package on max: peak 250 in packages of 100 → 3 × 1.00 = 3.00
    assert_eq!(amount(Some("peak.cpu")), Minor(300));
    // Graduated with 2 free on 7 distinct users: 5 billable, 3 × 5.00 + 2 × 1.00 = 17.00
    assert_eq!(amount(Some("users")), Minor(1700));
    // Minimum spend 150.00 − 116.00 of usage = 34.00
    assert_eq!(amount(None), Minor(3400));
}

#[test]
fn issue_13_sum_stays_the_default_and_keeps_no_aggregation_state() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    h.usage("bytes", "app", "5", "2026-03-02T00:00:00Z")
        .unwrap();
    h.usage("bytes", "app", "7", "2026-03-02T00:00:00Z")
        .unwrap();
    let snapshot = serde_json::to_string(h.st()).unwrap();
    assert!(!snapshot.contains("aggregation"), "{snapshot}");
    assert!(!snapshot.contains("\"state\""), "{snapshot}");
    // 12 × 0.01 = 0.12
    assert_eq!(march_line(&mut h, "bytes").amount, Minor(12));
}

fn refused(edit: impl FnOnce(&mut Charge)) -> String {
    let mut plan = metered_plan();
    edit(&mut plan.charges[0]);
    match plan.validate() {
        Err(e @ PlanError::Charge { .. }) => e.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn issue_13_plan_validation_names_the_inconsistent_aggregation_field() {
    let percentile = |p: &str| {
        refused(|c| {
            c.aggregation.kind = Aggregation::Percentile;
            c.aggregation.percentile = Some(d(p));
        })
    };
    for p in ["0", "-5", "100.5"] {
        assert!(
            percentile(p).contains("aggregation_percentile"),
            "{}",
            percentile(p)
        );
    }
    let e = refused(|c| c.aggregation.kind = Aggregation::Percentile);
    assert!(e.contains("aggregation_percentile"), "{e}");
    let e = refused(|c| c.aggregation.kind = Aggregation::UniqueCount);
    assert!(e.contains("aggregation_field"), "{e}");
    let e = refused(|c| c.aggregation.field = Some("user_id".into()));
    assert!(
        e.contains("aggregation_field") && e.contains("only unique_count"),
        "{e}"
    );
    for window in ["7m", "30s", "2d", "5x", "7s"] {
        let e = refused(|c| {
            c.aggregation.kind = Aggregation::Percentile;
            c.aggregation.percentile = Some(d("95"));
            c.aggregation.window = Some(window.into());
        });
        assert!(e.contains("aggregation_window"), "{window}: {e}");
    }
    let e = refused(|c| c.aggregation.window = Some("5m".into()));
    assert!(e.contains("aggregation_window"), "{e}");
    // 100 is allowed, and windows dividing a day are.
    for window in ["1m", "5m", "15m", "1h", "1d", "120s"] {
        let mut plan = metered_plan();
        let c = &mut plan.charges[0];
        c.aggregation.kind = Aggregation::Percentile;
        c.aggregation.percentile = Some(d("100"));
        c.aggregation.window = Some(window.into());
        assert_eq!(plan.validate(), Ok(()), "{window}");
    }
}

#[test]
fn issue_13_aggregation_state_is_counted_in_resident_bytes() {
    let mut h = harness();
    h.open("metered", "2026-03-01T00:00:00Z");
    let before = h.st().resident_bytes();
    for i in 0..100 {
        with_user(&mut h, Some(&format!("u{i}")), "2026-03-02T00:00:00Z").unwrap();
    }
    // 100 hashes of 16 bytes at least.
    assert!(h.st().resident_bytes() >= before + 1600);
}

// ---- properties ----------------------------------------------------------

mod properties {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use rust_decimal::{Decimal, RoundingStrategy};

    use super::*;
    use crate::engine::fold::Outcome;
    use crate::engine::rating::line_amount;
    use crate::engine::time::{period_containing, Period, Timestamp, MICROS_PER_HOUR};
    use crate::engine::{AccountState, JournalEntry};

    /// Plan "all": every aggregation, two percentiles whose value is not
    /// almost always 0 on a short stream (the peak hour, the median day).
    fn all_plan() -> Plan {
        let mut plan = metered_plan();
        plan.plan_id = "all".into();
        let mut hourly_peak = charge("hourly.peak", Aggregation::Percentile, "0.25");
        hourly_peak.aggregation.percentile = Some(d("100"));
        hourly_peak.aggregation.window = Some("1h".into());
        let mut daily_median = charge("daily.median", Aggregation::Percentile, "1.10");
        daily_median.aggregation.percentile = Some(d("50"));
        daily_median.aggregation.window = Some("1d".into());
        // Tiers and a minimum on the non-additive ones too.
        plan.charges[1].model = Model::Graduated;
        plan.charges[1].tiers = vec![
            Tier {
                up_to: Some(d("10")),
                unit_price: d("1.00"),
                flat_fee: Decimal::ZERO,
            },
            Tier {
                up_to: None,
                unit_price: d("0.30"),
                flat_fee: d("2.00"),
            },
        ];
        plan.minimum_spend = d("20.00");
        plan.charges.push(hourly_peak);
        plan.charges.push(daily_median);
        plan
    }

    const METRICS: [&str; 9] = [
        "requests",
        "peak.cpu",
        "seats",
        "users",
        "storage.gb",
        "bandwidth.mbps",
        "bytes",
        "hourly.peak",
        "daily.median",
    ];

    #[derive(Debug, Clone)]
    enum Op {
        /// Usage `back` hours before the clock (late when it crosses a period).
        Usage {
            metric: usize,
            qty: u32,
            back: u32,
            user: u8,
        },
        Wait(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..METRICS.len(), 0u32..3000, 0u32..900, 0u8..12)
                .prop_map(|(metric, qty, back, user)| Op::Usage { metric, qty, back, user }),
            1 => (1u32..200).prop_map(Op::Wait),
        ]
    }

    fn engine() -> Engine {
        let mut book = PlanBook::new();
        book.upsert(all_plan()).unwrap();
        Engine::new(EngineConfig::new("prod"), book)
    }

    fn script(ops: &[Op]) -> Vec<(Timestamp, Input)> {
        let start = ts("2026-01-10T00:00:00Z");
        let mut now = start;
        let mut out = vec![(now, super::super::tests::open_cmd("open", "all", now))];
        for (i, op) in ops.iter().enumerate() {
            now = now.plus(37 * 60 * 1_000_000);
            match op {
                Op::Wait(h) => now = now.plus(i64::from(*h) * MICROS_PER_HOUR),
                Op::Usage {
                    metric,
                    qty,
                    back,
                    user,
                } => {
                    let at = Timestamp((now.0 - i64::from(*back) * MICROS_PER_HOUR).max(start.0));
                    let q = Decimal::new(i64::from(*qty), 2).to_string();
                    let mut u = usage(&format!("u{i}"), "acct", "app", METRICS[*metric], &q, at);
                    u.attributes
                        .insert("user_id".into(), format!("user-{user}"));
                    out.push((now, Input::Usage(u)));
                }
            }
        }
        out
    }

    struct Run {
        state: Option<AccountState>,
        journal: Vec<JournalEntry>,
        applied: Vec<UsageRecorded>,
    }

    fn run(engine: &Engine, inputs: &[(Timestamp, Input)], end: Timestamp) -> Run {
        let mut r = Run {
            state: None,
            journal: Vec::new(),
            applied: Vec::new(),
        };
        for (now, input) in inputs {
            if let Ok(Outcome::Applied) = engine.apply(&mut r.state, input, *now, &mut r.journal) {
                if let Input::Usage(u) = input {
                    r.applied.push(u.clone());
                }
            }
        }
        engine.advance(r.state.as_mut().unwrap(), end, &mut r.journal);
        r
    }

    fn end_of(inputs: &[(Timestamp, Input)]) -> Timestamp {
        inputs.last().unwrap().0.plus(70 * 24 * MICROS_PER_HOUR)
    }

    /// The period's value worked out from scratch from its events (a
    /// reference independent of `aggregation`'s incremental state).
    fn reference(
        charge: &Charge,
        events: &[&UsageRecorded],
        p: Period,
        from: Timestamp,
    ) -> Decimal {
        let qs = events.iter().map(|u| u.quantity);
        match charge.aggregation.kind {
            Aggregation::Sum => qs.sum(),
            Aggregation::Count => Decimal::from(events.len()),
            Aggregation::Max => qs.max().unwrap_or_default(),
            Aggregation::Latest => events
                .iter()
                .map(|u| (u.occurred_at, u.quantity))
                .max()
                .map_or(Decimal::ZERO, |(_, q)| q),
            Aggregation::UniqueCount => Decimal::from(
                events
                    .iter()
                    .map(|u| &u.attributes["user_id"])
                    .collect::<BTreeSet<_>>()
                    .len(),
            ),
            Aggregation::TimeWeighted => {
                let mut at: BTreeMap<Timestamp, Decimal> = BTreeMap::new();
                for u in events {
                    let e = at.entry(u.occurred_at).or_default();
                    *e = (*e).max(u.quantity);
                }
                let times: Vec<_> = at.keys().copied().chain([p.end]).collect();
                let micros: Decimal = at
                    .values()
                    .zip(times.windows(2))
                    .map(|(q, t)| *q * Decimal::from(t[1].0 - t[0].0))
                    .sum();
                (micros / Decimal::from(MICROS_PER_HOUR))
                    .round_dp_with_strategy(9, RoundingStrategy::MidpointNearestEven)
                    .normalize()
            }
            Aggregation::Percentile => {
                let w = i64::from(charge.aggregation.window_secs()) * 1_000_000;
                let first = (from.0 - p.start.0) / w;
                let last = (p.end.0 - p.start.0 + w - 1) / w;
                let mut windows = vec![Decimal::ZERO; (last - first) as usize];
                for u in events {
                    let i = ((u.occurred_at.0 - p.start.0) / w - first) as usize;
                    windows[i] = windows[i].max(u.quantity);
                }
                windows.sort();
                let p = charge.aggregation.percentile.unwrap();
                let rank = (p * Decimal::from(windows.len()) / Decimal::ONE_HUNDRED).ceil();
                windows[usize::try_from(rank).unwrap() - 1]
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn issue_13_feeding_any_event_twice_changes_nothing_for_every_aggregation(
            ops in prop::collection::vec(op(), 1..90),
            dup_every in 1usize..4,
        ) {
            let eng = engine();
            let inputs = script(&ops);
            let end = end_of(&inputs);
            let once = run(&eng, &inputs, end);
            let mut twice = Vec::new();
            for (i, (t, input)) in inputs.iter().enumerate() {
                twice.push((*t, input.clone()));
                if i % dup_every == 0 {
                    twice.push((*t, input.clone()));
                }
            }
            // And every applied event of the last 30 days again at the end.
            let last = inputs.last().unwrap().0;
            twice.extend(inputs.iter().filter(|(t, i)| {
                last.0 - t.0 < 30 * 24 * MICROS_PER_HOUR
                    && matches!(i, Input::Usage(u) if once.applied.contains(u))
            }).map(|(_, i)| (last, i.clone())));
            let twice = run(&eng, &twice, end);
            prop_assert_eq!(
                serde_json::to_string(&once.state).unwrap(),
                serde_json::to_string(&twice.state).unwrap()
            );
            prop_assert_eq!(once.journal, twice.journal);
        }

        #[test]
        fn issue_13_late_events_make_the_lines_add_up_to_the_charge_on_the_final_value(
            ops in prop::collection::vec(op(), 1..140),
        ) {
            let eng = engine();
            let inputs = script(&ops);
            let r = run(&eng, &inputs, end_of(&inputs));
            let st = r.state.as_ref().unwrap();
            let mut by_period: BTreeMap<(Timestamp, &str), Vec<&UsageRecorded>> = BTreeMap::new();
            for u in &r.applied {
                let p = period_containing(u.occurred_at, st.timezone, st.anchor);
                by_period.entry((p.start, u.metric.as_str())).or_default().push(u);
            }
            let mut billed: BTreeMap<(Timestamp, String), Minor> = BTreeMap::new();
            for e in &r.journal {
                if let DomainEvent::InvoiceIssued { invoice } = &e.event {
                    for l in &invoice.lines {
                        if let (LineKind::Usage | LineKind::LateUsage, Some(m)) = (l.kind, &l.metric) {
                            let b = billed.entry((l.for_period.start, m.clone())).or_default();
                            *b = b.checked_add(l.amount).unwrap();
                        }
                    }
                }
            }
            let plan = eng.plans.get("all").unwrap();
            for ((start, metric), events) in &by_period {
                let p = period_containing(*start, st.timezone, st.anchor);
                let charge = plan.charge(metric).unwrap();
                let value = reference(charge, events, p, p.start.max(st.opened_at));
                let expected = line_amount(charge, value, st.currency, Minor::MAX_AMOUNT).unwrap();
                prop_assert_eq!(
                    billed.get(&(*start, metric.to_string())).copied().unwrap_or_default(),
                    expected,
                    "period {} metric {} value {}", start, metric, value
                );
            }
        }
    }
}
