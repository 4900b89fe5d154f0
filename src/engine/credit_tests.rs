//! Behaviour tests of credit grants (issue 13, item 2): draw order, expiry
//! on the event-time clock, the grant cap, refunds, dedup. Amounts are
//! worked out in the comments. Plans are those of `tests.rs`: `tiered`
//! has no recurring fee (graduated 0.10 up to 100 GB-h, then 0.05 and a
//! 1.00 flat fee; minimum spend 10.00), `flat` a 31.00 fee; tax is 20%.

use super::credit::{GrantKind, GrantTerms};
use super::events::*;
use super::fold::Outcome;
use super::money::Minor;
use super::tests::{d, ts, Harness};

fn terms(kind: GrantKind, expires_at: Option<&str>, priority: i32) -> GrantTerms {
    GrantTerms {
        kind,
        expires_at: expires_at.map(ts),
        priority,
    }
}

fn promo(expires_at: Option<&str>) -> GrantTerms {
    terms(GrantKind::Promotional, expires_at, 0)
}

fn top_up(amount: &str, grant: GrantTerms) -> PaymentKind {
    PaymentKind::CreditToppedUp {
        amount: d(amount),
        currency: "EUR".into(),
        grant,
    }
}

/// A payment that happened at `occurred` and is processed at `now`.
fn payment(
    id: &str,
    kind: PaymentKind,
    occurred: &str,
    now: &str,
) -> (Input, crate::engine::time::Timestamp) {
    (
        Input::Payment(PaymentEvent {
            event_id: id.into(),
            account_id: "acct".into(),
            occurred_at: ts(occurred),
            environment: Some("prod".into()),
            kind,
        }),
        ts(now),
    )
}

/// 150 GB-h in March on `tiered`: 100 × 0.10 + 50 × 0.05 + 1.00 = 13.50,
/// above the 10.00 minimum; tax 2.70; total 16.20.
fn tiered_march_usage(h: &mut Harness) {
    h.usage("disk.gb_hours", "bucket-1", "150", "2026-03-10T00:00:00Z")
        .unwrap();
}

fn expired(h: &Harness) -> Vec<(String, Minor, crate::engine::time::Timestamp)> {
    h.journal
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::CreditExpired {
                grant_id, amount, ..
            } => Some((grant_id.clone(), *amount, e.at)),
            _ => None,
        })
        .collect()
}

#[test]
fn credit_is_applied_by_priority_then_earliest_expiry_then_oldest() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    // gr_1: paid 5.00, no expiry, priority 0 (the oldest)
    h.pay(
        top_up("5.00", GrantTerms::default()),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    // gr_2: promotional 4.00, expires 1 June
    h.pay(
        top_up("4.00", promo(Some("2026-06-01T00:00:00Z"))),
        "2026-03-03T00:00:00Z",
    )
    .unwrap();
    // gr_3: promotional 3.00, expires 1 May (earlier than gr_2)
    h.pay(
        top_up("3.00", promo(Some("2026-05-01T00:00:00Z"))),
        "2026-03-04T00:00:00Z",
    )
    .unwrap();
    // gr_4: paid 10.00 at priority 1: drawn last
    h.pay(
        top_up("10.00", terms(GrantKind::Paid, None, 1)),
        "2026-03-05T00:00:00Z",
    )
    .unwrap();
    tiered_march_usage(&mut h);
    h.advance("2026-04-01T01:00:00Z");
    // 16.20 drawn: gr_3 3.00, gr_2 4.00, gr_1 5.00, then gr_4 4.20 (of 10.00).
    let inv = h.invoices()[0];
    assert_eq!(inv.total, Minor(1620));
    assert_eq!(inv.credit_applied, Minor(1620));
    assert_eq!(inv.credit_applied_promotional, Minor(700));
    assert_eq!(inv.credit_applied_paid(), Minor(920));
    assert_eq!(inv.amount_due, Minor::ZERO);
    let draws: Vec<(String, GrantKind, Minor)> = h
        .events()
        .find_map(|e| match e {
            DomainEvent::CreditApplied { grants, .. } => Some(grants.clone()),
            _ => None,
        })
        .unwrap()
        .into_iter()
        .map(|g| (g.grant_id, g.kind, g.amount))
        .collect();
    assert_eq!(
        draws,
        vec![
            (
                "gr_acct_00003".to_string(),
                GrantKind::Promotional,
                Minor(300)
            ),
            (
                "gr_acct_00002".to_string(),
                GrantKind::Promotional,
                Minor(400)
            ),
            ("gr_acct_00001".to_string(), GrantKind::Paid, Minor(500)),
            ("gr_acct_00004".to_string(), GrantKind::Paid, Minor(420)),
        ]
    );
    // 10.00 − 4.20 = 5.80 left, all of it gr_4.
    let st = h.st();
    assert_eq!(st.credit, Minor(580));
    assert_eq!(st.grants.len(), 1);
    assert_eq!(
        (st.grants[0].grant_id.as_str(), st.grants[0].remaining),
        ("gr_acct_00004", Minor(580))
    );
}

#[test]
fn a_grant_expiring_mid_period_pays_before_it_expires_and_nothing_after() {
    let mut h = Harness::new();
    // Opening invoice: 31.00 + 20% = 37.20, waiting for payment.
    h.open("flat", "2026-03-01T00:00:00Z");
    // Promotional 50.00 until 20 March pays it at once: 12.80 left.
    h.pay(
        top_up("50.00", promo(Some("2026-03-20T00:00:00Z"))),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.count("invoice_paid"), 1);
    assert_eq!(h.st().credit, Minor(1280));
    h.advance("2026-04-01T01:00:00Z");
    // Warned 7 days ahead (13 March), expired on 20 March, each at its own
    // instant on the event-time clock, with what was left: 12.80.
    let warned: Vec<_> = h
        .journal
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::CreditExpiring {
                amount, expires_at, ..
            } => Some((*amount, *expires_at, e.at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        warned,
        vec![(
            Minor(1280),
            ts("2026-03-20T00:00:00Z"),
            ts("2026-03-13T00:00:00Z")
        )]
    );
    assert_eq!(
        expired(&h),
        vec![(
            "gr_acct_00001".to_string(),
            Minor(1280),
            ts("2026-03-20T00:00:00Z")
        )]
    );
    // April's invoice (the April fee in advance, 37.20) gets no credit.
    let april = h.invoices()[1];
    assert_eq!(
        (april.total, april.credit_applied, april.amount_due),
        (Minor(3720), Minor::ZERO, Minor(3720))
    );
    assert_eq!(h.st().credit, Minor::ZERO);
    assert!(h.st().grants.is_empty());
}

#[test]
fn an_expired_grant_is_never_applied_even_when_it_expires_at_the_close_instant() {
    // The close fires at 1 April 01:00 (period end + 1 h grace).
    for (expires_at, applied, expired_amount) in [
        // Expired at the close instant: 0 applied, all 20.00 expires.
        ("2026-04-01T01:00:00Z", Minor::ZERO, Minor(2000)),
        // One microsecond later: 16.20 applied, the other 3.80 expires.
        ("2026-04-01T01:00:00.000001Z", Minor(1620), Minor(380)),
    ] {
        let mut h = Harness::new();
        h.open("tiered", "2026-03-01T00:00:00Z");
        h.pay(
            top_up("20.00", promo(Some(expires_at))),
            "2026-03-02T00:00:00Z",
        )
        .unwrap();
        tiered_march_usage(&mut h);
        h.advance("2026-04-02T00:00:00Z");
        let inv = h.invoices()[0];
        assert_eq!(
            (inv.credit_applied, inv.credit_applied_promotional),
            (applied, applied),
            "{expires_at}"
        );
        let exp = expired(&h);
        assert_eq!(exp.len(), 1, "{expires_at}");
        assert_eq!(
            (exp[0].1, exp[0].2),
            (expired_amount, ts(expires_at)),
            "{expires_at}"
        );
    }
}

#[test]
fn a_late_top_up_pays_the_open_invoice_and_one_expired_before_it_is_processed_is_refused() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    tiered_march_usage(&mut h);
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(h.invoices()[0].amount_due, Minor(1620));
    // Paid 20.00 on 25 March, processed on 2 April (after the close): it
    // pays the 16.20 open invoice when it arrives; 3.80 left.
    let (input, now) = payment(
        "late",
        top_up("20.00", GrantTerms::default()),
        "2026-03-25T00:00:00Z",
        "2026-04-02T00:00:00Z",
    );
    assert_eq!(h.feed(input, now), Ok(Outcome::Applied));
    assert_eq!(h.count("invoice_paid"), 1);
    assert_eq!(h.st().credit, Minor(380));
    // A promotional grant that expired on 1 April, processed on 2 April:
    // refused, naming the field; nothing changes.
    let (input, now) = payment(
        "late-expired",
        top_up("10.00", promo(Some("2026-04-01T00:00:00Z"))),
        "2026-03-25T00:00:00Z",
        "2026-04-02T00:00:00Z",
    );
    let err = h.feed(input, now).unwrap_err();
    assert_eq!(err.kind(), "invalid_field");
    assert!(err.to_string().contains("grant.expires_at"), "{err}");
    assert_eq!(h.st().credit, Minor(380));
}

#[test]
fn a_redelivered_top_up_grants_once_and_the_same_id_with_other_terms_conflicts() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    let grant = promo(Some("2026-06-01T00:00:00Z"));
    let (input, now) = payment(
        "t1",
        top_up("10.00", grant),
        "2026-03-02T00:00:00Z",
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(h.feed(input.clone(), now), Ok(Outcome::Applied));
    assert_eq!(
        h.feed(input, ts("2026-03-09T00:00:00Z")),
        Ok(Outcome::Duplicate)
    );
    // 10.00 once, in one grant.
    assert_eq!(h.st().credit, Minor(1000));
    assert_eq!(h.st().grants.len(), 1);
    assert_eq!(h.count("credit_added"), 1);
    let other = GrantTerms {
        priority: 1,
        ..grant
    };
    let (input, now) = payment(
        "t1",
        top_up("10.00", other),
        "2026-03-02T00:00:00Z",
        "2026-03-09T00:00:00Z",
    );
    assert_eq!(h.feed(input, now).unwrap_err().kind(), "conflict");
}

#[test]
fn a_top_up_without_grant_fields_keeps_the_dedup_identity_it_had_before_grants() {
    // The dedup fingerprint of a payment is its canonical JSON: default
    // terms are left out, so an id remembered before grants existed still
    // matches its redelivery (a duplicate, not a conflict).
    let (input, _) = payment(
        "t1",
        top_up("10.00", GrantTerms::default()),
        "2026-03-02T00:00:00Z",
        "2026-03-02T00:00:00Z",
    );
    let Input::Payment(p) = &input else {
        unreachable!()
    };
    assert_eq!(
        serde_json::to_string(p).unwrap(),
        r#"{"event_id":"t1","account_id":"acct","occurred_at":1772409600000000,"environment":"prod","kind":{"kind":"credit_topped_up","amount":"10.00","currency":"EUR"}}"#
    );
}

#[test]
fn a_top_up_past_the_grant_cap_is_dead_lettered_unless_it_merges_into_a_grant_of_its_terms() {
    let mut h = Harness::new();
    h.engine.config.max_credit_grants = 2;
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.pay(
        top_up("1.00", GrantTerms::default()),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    h.pay(top_up("1.00", promo(None)), "2026-03-02T01:00:00Z")
        .unwrap();
    // A third set of terms needs a third grant: refused, credit unchanged.
    let err = h
        .pay(
            top_up("1.00", terms(GrantKind::Promotional, None, 1)),
            "2026-03-02T02:00:00Z",
        )
        .unwrap_err();
    assert_eq!(err.kind(), "too_many_grants");
    assert!(
        err.to_string().contains("billing.max_credit_grants (2)"),
        "{err}"
    );
    assert_eq!(h.st().credit, Minor(200));
    // Promotional, priority 0, no expiry: the youngest grant of those terms
    // is the promotional one; it merges (2.00 in it now).
    h.pay(top_up("1.00", promo(None)), "2026-03-02T03:00:00Z")
        .unwrap();
    assert_eq!(h.st().grants.len(), 2);
    assert_eq!(h.st().grants[1].remaining, Minor(200));
    // Paid at priority 0 without expiry would be drawn after that
    // promotional grant, not with the older paid one: a new grant, refused.
    let err = h
        .pay(
            top_up("1.00", GrantTerms::default()),
            "2026-03-02T04:00:00Z",
        )
        .unwrap_err();
    assert_eq!(err.kind(), "too_many_grants");
    // Credit the engine adds itself is never refused: an unmatched 1.00
    // transfer becomes a third (paid) grant.
    h.pay(
        PaymentKind::BankTransferReceived {
            reference: "unknown".into(),
            amount: d("1.00"),
            currency: "EUR".into(),
        },
        "2026-03-02T05:00:00Z",
    )
    .unwrap();
    assert_eq!(h.st().grants.len(), 3);
    assert_eq!(h.st().credit, Minor(400));
}

#[test]
fn promotional_credit_is_not_refunded() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.pay(top_up("10.00", promo(None)), "2026-03-02T00:00:00Z")
        .unwrap();
    h.pay(
        top_up("5.00", GrantTerms::default()),
        "2026-03-02T01:00:00Z",
    )
    .unwrap();
    let refund = |amount: &str| PaymentKind::PaymentRefunded {
        amount: d(amount),
        currency: "EUR".into(),
        reason: "requested".into(),
    };
    // 15.00 of credit, but only the 5.00 paid is the customer's money.
    let err = h.pay(refund("6.00"), "2026-03-03T00:00:00Z").unwrap_err();
    assert_eq!(err.kind(), "refund_exceeds_credit");
    assert!(err.to_string().contains("5.00"), "{err}");
    h.pay(refund("5.00"), "2026-03-03T01:00:00Z").unwrap();
    assert_eq!(h.st().credit, Minor(1000));
    assert_eq!(h.st().grants[0].kind, GrantKind::Promotional);
}

#[test]
fn a_credit_note_may_carry_grant_terms_and_a_debit_may_not() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    let adjust = |adjustment, grant| AccountKind::AdjustmentIssued {
        adjustment,
        amount: d("5.00"),
        currency: "EUR".into(),
        reason: "goodwill".into(),
        invoice_id: None,
        grant,
    };
    let grant = promo(Some("2026-05-01T00:00:00Z"));
    h.command(
        adjust(AdjustmentKind::CreditNote, grant),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    let g = &h.st().grants[0];
    assert_eq!(
        (g.kind, g.expires_at, g.remaining),
        (GrantKind::Promotional, grant.expires_at, Minor(500))
    );
    let err = h
        .command(adjust(AdjustmentKind::Debit, grant), "2026-03-02T01:00:00Z")
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_field");
    assert!(err.to_string().contains("grant"), "{err}");
}

#[test]
fn a_grant_expiring_within_the_warning_period_is_warned_about_at_once() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    // Expires in 3 days, less than the 7-day warning: warned by the top-up itself.
    h.pay(
        top_up("10.00", promo(Some("2026-03-05T00:00:00Z"))),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    let last = h.journal.last().unwrap();
    assert!(matches!(
        last.event,
        DomainEvent::CreditExpiring {
            amount: Minor(1000),
            ..
        }
    ));
    assert_eq!(last.at, ts("2026-03-02T00:00:00Z"));
    h.advance("2026-03-06T00:00:00Z");
    assert_eq!(h.count("credit_expiring"), 1);
    assert_eq!(h.count("credit_expired"), 1);
}

#[test]
fn credit_of_a_snapshot_from_before_grants_is_one_paid_grant() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.pay(
        top_up("20.00", GrantTerms::default()),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    // As a snapshot written before grants reads: credit, no grants.
    let st = h.state.as_mut().unwrap();
    st.grants.clear();
    st.grant_seq = 0;
    tiered_march_usage(&mut h);
    h.advance("2026-04-01T01:00:00Z");
    // 16.20 paid credit applied; 3.80 left in the one paid grant.
    let inv = h.invoices()[0];
    assert_eq!(
        (inv.credit_applied, inv.credit_applied_paid()),
        (Minor(1620), Minor(1620))
    );
    let st = h.st();
    assert_eq!(st.credit, Minor(380));
    assert_eq!(st.grants.len(), 1);
    assert_eq!(
        (st.grants[0].kind, st.grants[0].remaining),
        (GrantKind::Paid, Minor(380))
    );
}
