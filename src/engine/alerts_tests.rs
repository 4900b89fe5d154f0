//! Behaviour tests of spend alerts (issue 13, item 3). Amounts are worked
//! out in the comments. Plans are those of `tests.rs`: `volume` has no fee
//! and no minimum and bills `api.calls` at 1.00 each up to 100 calls, at
//! 0.50 each (every call) above; `flat` has a 31.00 fee charged in advance
//! (so on the draft from the start) and `container.hours` at 0.0125.
//! Periods are calendar months in UTC; the watched amount is the draft's
//! subtotal, before tax and credit.

use super::events::*;
use super::fold::Outcome;
use super::money::Minor;
use super::tests::{d, ts, Harness};
use super::Rejection;
use crate::contracts::outputs::{outputs_for, OutputTopic};

fn set(h: &mut Harness, amounts: &[&str], at: &str) -> Result<Outcome, Rejection> {
    h.command(
        AccountKind::ThresholdsSet {
            thresholds: amounts.iter().map(|a| d(a)).collect(),
            currency: "EUR".into(),
            invoice_at: None,
            keeps_invoice_at: false,
        },
        at,
    )
}

/// Every alert fired: (draft invoice, threshold, draft subtotal).
fn alerts(h: &Harness) -> Vec<(String, Minor, Minor)> {
    h.events()
        .filter_map(|e| match e {
            DomainEvent::SpendThresholdReached {
                invoice_id,
                threshold,
                amount,
                ..
            } => Some((invoice_id.clone(), *threshold, *amount)),
            _ => None,
        })
        .collect()
}

fn calls(h: &mut Harness, n: &str, at: &str) {
    h.usage("api.calls", "k-1", n, at).unwrap();
}

#[test]
fn issue_13_one_event_crossing_two_thresholds_fires_both_once() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["10.00", "20.00", "50.00"], "2026-03-01T01:00:00Z").unwrap();
    // Nothing on the draft yet (no fee, no minimum): 0.00, nothing fires.
    assert!(alerts(&h).is_empty());
    // 25 calls × 1.00 = 25.00: past 10.00 and 20.00 at once, not 50.00.
    calls(&mut h, "25", "2026-03-02T00:00:00Z");
    let march = h.st().draft_invoice_id.clone();
    assert_eq!(
        alerts(&h),
        vec![
            (march.clone(), Minor(1000), Minor(2500)),
            (march.clone(), Minor(2000), Minor(2500)),
        ]
    );
    // 5 more: 30.00, still below 50.00 — nothing new.
    calls(&mut h, "5", "2026-03-03T00:00:00Z");
    assert_eq!(alerts(&h).len(), 2);
    // 20 more: 50 calls = 50.00, exactly the threshold: it fires.
    calls(&mut h, "20", "2026-03-04T00:00:00Z");
    assert_eq!(alerts(&h)[2], (march, Minor(5000), Minor(5000)));
    // One journal entry per alert.
    assert_eq!(h.count("spend_threshold_reached"), 3);
}

#[test]
fn issue_13_recrossing_a_threshold_in_the_same_period_fires_nothing() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["80.00"], "2026-03-01T01:00:00Z").unwrap();
    // 90 calls × 1.00 = 90.00: fires 80.00.
    calls(&mut h, "90", "2026-03-02T00:00:00Z");
    assert_eq!(alerts(&h).len(), 1);
    // 20 more: 110 calls, all at 0.50 = 55.00, back below 80.00.
    calls(&mut h, "20", "2026-03-03T00:00:00Z");
    assert_eq!(h.engine.draft(h.st()).subtotal, Minor(5500));
    // 60 more: 170 × 0.50 = 85.00, above 80.00 again: nothing fires.
    calls(&mut h, "60", "2026-03-04T00:00:00Z");
    assert_eq!(h.engine.draft(h.st()).subtotal, Minor(8500));
    assert_eq!(alerts(&h).len(), 1);
    // Setting the same thresholds again does not re-arm them either.
    set(&mut h, &["80.00", "200.00"], "2026-03-05T00:00:00Z").unwrap();
    assert_eq!(alerts(&h).len(), 1);
}

#[test]
fn issue_13_a_new_period_rearms_every_threshold() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["20.00"], "2026-03-01T01:00:00Z").unwrap();
    // March: 25 calls = 25.00, fires once.
    calls(&mut h, "25", "2026-03-10T00:00:00Z");
    let march = h.st().draft_invoice_id.clone();
    // The close issues March and opens April's draft at 0.00: nothing.
    h.advance("2026-04-01T01:00:00Z");
    let april = h.st().draft_invoice_id.clone();
    assert_ne!(march, april);
    assert_eq!(alerts(&h).len(), 1);
    // April: 30 calls = 30.00, the threshold fires again, for April's draft.
    calls(&mut h, "30", "2026-04-02T00:00:00Z");
    assert_eq!(
        alerts(&h),
        vec![
            (march, Minor(2000), Minor(2500)),
            (april, Minor(2000), Minor(3000)),
        ]
    );
}

#[test]
fn issue_13_a_redelivered_event_fires_nothing_even_after_a_snapshot_round_trip() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["20.00"], "2026-03-01T01:00:00Z").unwrap();
    let at = ts("2026-03-02T00:00:00Z");
    // 25 calls = 25.00: fires.
    h.usage_at("u-1", "api.calls", "k-1", "25", at, at).unwrap();
    assert_eq!(alerts(&h).len(), 1);
    // The same event again: a duplicate, nothing fires.
    assert_eq!(
        h.usage_at("u-1", "api.calls", "k-1", "25", at, at),
        Ok(Outcome::Duplicate)
    );
    // Through the store's snapshot (JSON; the dedup window is stored next
    // to it) the reached threshold is kept: a restart and a redelivery
    // fire nothing, a new event neither.
    let bytes = serde_json::to_vec(h.st()).unwrap();
    let mut restored: super::AccountState = serde_json::from_slice(&bytes).unwrap();
    restored.dedup = h.st().dedup.clone();
    h.state = Some(restored);
    assert_eq!(h.st().thresholds_reached, vec![Minor(2000)]);
    assert_eq!(
        h.usage_at("u-1", "api.calls", "k-1", "25", at, at),
        Ok(Outcome::Duplicate)
    );
    calls(&mut h, "1", "2026-03-03T00:00:00Z");
    assert_eq!(alerts(&h).len(), 1);
}

#[test]
fn issue_13_late_usage_that_pushes_the_draft_over_fires_once() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["5.00"], "2026-03-01T01:00:00Z").unwrap();
    // March: 3 calls = 3.00, below 5.00.
    calls(&mut h, "3", "2026-03-20T00:00:00Z");
    h.advance("2026-04-01T01:00:00Z");
    assert!(alerts(&h).is_empty());
    // A late March event of 6 calls: March is now 9 calls = 9.00, 3.00
    // billed, so a 6.00 late line lands on April's draft: 6.00 ≥ 5.00.
    let late = ts("2026-03-31T23:00:00Z");
    h.usage_at(
        "u-late",
        "api.calls",
        "k-1",
        "6",
        late,
        ts("2026-04-01T02:00:00Z"),
    )
    .unwrap();
    let april = h.st().draft_invoice_id.clone();
    assert_eq!(alerts(&h), vec![(april, Minor(500), Minor(600))]);
    // Redelivered: nothing more.
    assert_eq!(
        h.usage_at(
            "u-late",
            "api.calls",
            "k-1",
            "6",
            late,
            ts("2026-04-01T03:00:00Z")
        ),
        Ok(Outcome::Duplicate)
    );
    assert_eq!(alerts(&h).len(), 1);
}

#[test]
fn issue_13_the_fee_charged_in_advance_counts_and_thresholds_reached_fire_when_set() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    // March's draft carries April's 31.00 fee from the start: setting a
    // 30.00 threshold fires it at once, on the command.
    set(&mut h, &["40.00", "30.00"], "2026-03-01T01:00:00Z").unwrap();
    let march = h.st().draft_invoice_id.clone();
    assert_eq!(alerts(&h), vec![(march.clone(), Minor(3000), Minor(3100))]);
    // 800 container-hours × 0.0125 = 10.00: 41.00 ≥ 40.00.
    h.usage("container.hours", "c-1", "800", "2026-03-02T00:00:00Z")
        .unwrap();
    assert_eq!(alerts(&h)[1], (march, Minor(4000), Minor(4100)));
    // At the close April's draft opens with May's 31.00 fee: 30.00 fires
    // again at the close, caused by the close timer.
    h.advance("2026-04-01T01:00:00Z");
    let april = h.st().draft_invoice_id.clone();
    assert_eq!(alerts(&h)[2], (april, Minor(3000), Minor(3100)));
    let entry = h
        .journal
        .iter()
        .rfind(|e| e.event.name() == "spend_threshold_reached")
        .unwrap();
    assert!(entry.causation_id.starts_with("timer:close:"));
}

#[test]
fn issue_13_thresholds_are_validated_naming_the_field_and_deduplicated() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    let field = |r: Result<Outcome, Rejection>| match r {
        Err(Rejection::InvalidField { field, .. }) => field,
        other => panic!("expected invalid_field, got {other:?}"),
    };
    let at = "2026-03-01T01:00:00Z";
    assert_eq!(field(set(&mut h, &["10.00", "0"], at)), "thresholds[1]");
    assert_eq!(field(set(&mut h, &["-1.00"], at)), "thresholds[0]");
    // EUR has 2 decimals: 10.001 is not an amount of it.
    assert_eq!(field(set(&mut h, &["10.001"], at)), "thresholds[0]");
    let eleven: Vec<String> = (1..=11).map(|i| format!("{i}.00")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    assert_eq!(field(set(&mut h, &eleven, at)), "thresholds");
    let usd = h.command(
        AccountKind::ThresholdsSet {
            thresholds: vec![d("10.00")],
            currency: "USD".into(),
            invoice_at: None,
            keeps_invoice_at: false,
        },
        at,
    );
    assert_eq!(field(usd), "currency");
    // A rejection changes nothing.
    assert!(h.st().thresholds.is_empty());
    assert_eq!(h.count("thresholds_set"), 0);
    // Duplicates dropped (20 = 20.00), kept ascending, journaled.
    set(&mut h, &["20.00", "10", "20"], at).unwrap();
    assert_eq!(h.st().thresholds, vec![Minor(1000), Minor(2000)]);
    assert!(h.events().any(|e| *e
        == DomainEvent::ThresholdsSet {
            thresholds: vec![Minor(1000), Minor(2000)],
            invoice_at: None,
        }));
    // An empty list removes them: 50 calls = 50.00 fires nothing.
    set(&mut h, &[], "2026-03-02T00:00:00Z").unwrap();
    calls(&mut h, "50", "2026-03-03T00:00:00Z");
    assert!(alerts(&h).is_empty());
}

#[test]
fn issue_13_spend_threshold_reached_is_a_notification_with_threshold_and_amount() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    set(&mut h, &["20.00"], "2026-03-01T01:00:00Z").unwrap();
    calls(&mut h, "25", "2026-03-02T00:00:00Z");
    let entry = h
        .journal
        .iter()
        .find(|e| e.event.name() == "spend_threshold_reached")
        .unwrap();
    let out = outputs_for(entry, h.st().currency);
    let n = out
        .iter()
        .find(|r| r.topic == OutputTopic::Notifications)
        .expect("a notification");
    assert_eq!(n.json["kind"], "spend_threshold_reached");
    assert_eq!(n.json["threshold"], "20.00");
    assert_eq!(n.json["amount"], "25.00");
    assert_eq!(n.json["invoice_id"], h.st().draft_invoice_id.as_str());
    assert!(out.iter().any(|r| r.topic == OutputTopic::Journal));
}
