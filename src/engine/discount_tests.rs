//! Behaviour tests of coupons (issue 13, item 5) and the invoice preview
//! (item 6). Amounts are worked out in the comments. Plans are those of
//! `tests.rs`: `flat` has a 31.00 fee, `container.hours` at 0.0125 and
//! `api.calls` in packages of 1000 at 0.50 after 1000 free; `tiered` has
//! no fee (graduated 0.10 up to 100 GB-h, then 0.05 and a 1.00 flat fee;
//! minimum spend 10.00); tax is 20%; periods are calendar months in UTC.

use super::credit::{GrantKind, GrantTerms};
use super::discount::CouponTerms;
use super::events::*;
use super::fold::Outcome;
use super::money::Minor;
use super::tests::{d, ts, Harness};
use super::Rejection;

fn percent(id: &str, p: &str, periods: Option<u32>) -> CouponTerms {
    CouponTerms {
        coupon_id: id.into(),
        percent_off: Some(d(p)),
        periods,
        ..CouponTerms::default()
    }
}

fn amount(id: &str, a: &str, periods: Option<u32>) -> CouponTerms {
    CouponTerms {
        coupon_id: id.into(),
        amount_off: Some(d(a)),
        currency: Some("EUR".into()),
        periods,
        ..CouponTerms::default()
    }
}

fn coupon(h: &mut Harness, terms: CouponTerms, at: &str) -> Result<Outcome, Rejection> {
    h.command(AccountKind::CouponApplied { coupon: terms }, at)
}

fn line(inv: &IssuedInvoice, kind: LineKind) -> Option<&Line> {
    inv.lines.iter().find(|l| l.kind == kind)
}

fn discounts(h: &Harness) -> Vec<(String, Minor, Minor, Option<u32>)> {
    h.events()
        .filter_map(|e| match e {
            DomainEvent::DiscountApplied {
                invoice_id,
                amount,
                eligible,
                periods_left,
                ..
            } => Some((invoice_id.clone(), *amount, *eligible, *periods_left)),
            _ => None,
        })
        .collect()
}

/// March on `flat`: 800 container-hours (10.00) and 3000 API calls
/// (1000 free, 2 packages: 1.00).
fn flat_march_usage(h: &mut Harness) {
    h.usage("container.hours", "app-1", "800", "2026-03-10T00:00:00Z")
        .unwrap();
    h.usage("api.calls", "app-1", "3000", "2026-03-11T00:00:00Z")
        .unwrap();
}

#[test]
fn issue_13_percentage_coupon_takes_its_share_of_every_charge_before_tax() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    coupon(&mut h, percent("TEN", "10", None), "2026-03-01T01:00:00Z").unwrap();
    flat_march_usage(&mut h);
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    // container 10.00 + api 1.00 + April's fee 31.00 = 42.00 eligible;
    // 10% = 4.20 off; subtotal 37.80; tax 20% = 7.56; total 45.36.
    let disc = line(inv, LineKind::Discount).expect("a discount line");
    assert_eq!(disc.amount, Minor(-420));
    assert_eq!(disc.description.as_deref(), Some("coupon TEN: 10% off"));
    assert_eq!(inv.subtotal, Minor(3780));
    assert_eq!(inv.tax, Minor(756));
    assert_eq!(inv.total, Minor(4536));
    assert_eq!(
        discounts(&h),
        vec![(inv.invoice_id.clone(), Minor(420), Minor(4200), None)]
    );
    // Forever: still on the account.
    assert!(h.st().coupon.is_some());
}

#[test]
fn issue_13_fixed_coupon_larger_than_the_eligible_subtotal_is_capped_and_the_rest_forfeited() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    coupon(
        &mut h,
        amount("BIG", "25.00", Some(2)),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    // March: 150 GB-h = 100 × 0.10 + 50 × 0.05 + 1.00 = 13.50 (above the
    // 10.00 minimum): 25.00 off is capped at 13.50, the 11.50 left is
    // forfeited. A debit adjustment of 3.00 is never discounted:
    // subtotal 13.50 − 13.50 + 3.00 = 3.00; tax 0.60; total 3.60.
    h.usage("disk.gb_hours", "b-1", "150", "2026-03-10T00:00:00Z")
        .unwrap();
    h.command(
        AccountKind::AdjustmentIssued {
            adjustment: AdjustmentKind::Debit,
            amount: d("3.00"),
            currency: "EUR".into(),
            reason: "setup".into(),
            invoice_id: None,
            grant: GrantTerms::default(),
        },
        "2026-03-12T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let march = h.invoices()[0];
    let disc = line(march, LineKind::Discount).unwrap();
    assert_eq!(disc.amount, Minor(-1350));
    assert_eq!(
        disc.description.as_deref(),
        Some("coupon BIG: 25.00 off, limited to the eligible 13.50")
    );
    assert_eq!(march.subtotal, Minor(300));
    assert_eq!(march.tax, Minor(60));
    assert_eq!(march.total, Minor(360));
    // April: 50 GB-h = 5.00, minimum spend true-up 5.00: 10.00 eligible,
    // 10.00 off (nothing of March's 11.50 carried over): total 0.00.
    h.usage("disk.gb_hours", "b-1", "50", "2026-04-10T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let april = h.invoices()[1];
    assert_eq!(
        line(april, LineKind::Discount).unwrap().amount,
        Minor(-1000)
    );
    assert_eq!(april.total, Minor::ZERO);
    // The forfeited part never became credit, and no invoice went negative.
    assert_eq!(h.st().credit, Minor::ZERO);
    assert_eq!(h.count("credit_added"), 0);
}

#[test]
fn issue_13_coupon_limited_to_one_charge_leaves_the_other_charges_and_the_fee_at_full_price() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let mut terms = percent("HALF-API", "50", None);
    terms.charges = vec!["api.calls".into()];
    coupon(&mut h, terms, "2026-03-01T01:00:00Z").unwrap();
    flat_march_usage(&mut h);
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    // Only api.calls (1.00) is eligible: 0.50 off. Container 10.00 and the
    // fee 31.00 stay: subtotal 41.50; tax 8.30; total 49.80.
    assert_eq!(line(inv, LineKind::Discount).unwrap().amount, Minor(-50));
    assert_eq!(inv.subtotal, Minor(4150));
    assert_eq!(inv.tax, Minor(830));
    assert_eq!(inv.total, Minor(4980));
}

#[test]
fn issue_13_coupon_for_two_periods_ends_after_its_second_invoice_through_late_usage_and_a_restart()
{
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    coupon(
        &mut h,
        percent("TWO", "10", Some(2)),
        "2026-03-05T00:00:00Z",
    )
    .unwrap();
    // March close: April's fee 31.00 → 3.10 off.
    h.advance("2026-04-01T01:00:00Z");
    // Restart: the count is state, it comes back with the snapshot.
    let json = serde_json::to_string(h.st()).unwrap();
    h.state = Some(serde_json::from_str(&json).unwrap());
    assert_eq!(h.st().coupon.as_ref().unwrap().periods_left, Some(1));
    // Late usage for March (80 h × 0.0125 = 1.00) goes on April's invoice
    // and is discounted with it; it counts no period of its own.
    h.usage_at(
        "late-1",
        "container.hours",
        "app-1",
        "80",
        ts("2026-03-31T00:00:00Z"),
        ts("2026-04-02T00:00:00Z"),
    )
    .unwrap();
    // April close: late 1.00 + May's fee 31.00 = 32.00 → 3.20 off.
    h.advance("2026-05-01T01:00:00Z");
    // May close: the coupon has ended, no discount.
    h.advance("2026-06-01T01:00:00Z");
    let invs = h.invoices();
    assert_eq!(
        line(invs[1], LineKind::Discount).unwrap().amount,
        Minor(-310)
    );
    assert_eq!(
        line(invs[2], LineKind::Discount).unwrap().amount,
        Minor(-320)
    );
    assert!(line(invs[3], LineKind::Discount).is_none());
    // 31.00 + tax 6.20 = 37.20, undiscounted.
    assert_eq!(invs[3].total, Minor(3720));
    assert_eq!(
        discounts(&h),
        vec![
            ("inv_acct_00002".into(), Minor(310), Minor(3100), Some(1)),
            ("inv_acct_00003".into(), Minor(320), Minor(3200), Some(0)),
        ]
    );
    assert!(h.st().coupon.is_none());
}

#[test]
fn issue_13_tax_is_computed_on_the_subtotal_after_the_discount() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    coupon(
        &mut h,
        percent("TWENTY", "20", Some(1)),
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    h.usage("disk.gb_hours", "b-1", "150", "2026-03-10T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[0];
    // 13.50 − 20% (2.70) = 10.80; tax 20% of 10.80 = 2.16 (not 2.70 of
    // 13.50); total 12.96.
    assert_eq!(inv.subtotal, Minor(1080));
    assert_eq!(inv.tax, Minor(216));
    assert_eq!(inv.total, Minor(1296));
}

#[test]
fn issue_13_percentage_discount_is_rounded_once_half_to_even_on_the_eligible_subtotal() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    coupon(&mut h, percent("TEN", "10", None), "2026-03-01T01:00:00Z").unwrap();
    // 20 h × 0.0125 = 0.25; with April's fee 31.00: 31.25 eligible;
    // 10% = 3.125 exactly → 3.12 (half to even; half-up would say 3.13).
    h.usage("container.hours", "app-1", "20", "2026-03-10T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    assert_eq!(line(inv, LineKind::Discount).unwrap().amount, Minor(-312));
    // 31.25 − 3.12 = 28.13; tax 5.626 → 5.63; total 33.76.
    assert_eq!(inv.subtotal, Minor(2813));
    assert_eq!(inv.tax, Minor(563));
    assert_eq!(inv.total, Minor(3376));
}

#[test]
fn issue_13_a_new_coupon_replaces_the_old_one_and_duplicates_change_nothing() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let cmd = |id: &str, terms: CouponTerms| {
        Input::Account(AccountCommand {
            event_id: id.into(),
            account_id: "acct".into(),
            occurred_at: ts("2026-03-02T00:00:00Z"),
            environment: Some("prod".into()),
            kind: AccountKind::CouponApplied { coupon: terms },
        })
    };
    let now = ts("2026-03-02T00:00:00Z");
    assert_eq!(
        h.feed(cmd("c1", percent("A", "10", Some(3))), now),
        Ok(Outcome::Applied)
    );
    assert_eq!(
        h.feed(cmd("c1", percent("A", "10", Some(3))), now),
        Ok(Outcome::Duplicate)
    );
    assert!(matches!(
        h.feed(cmd("c1", percent("A", "15", Some(3))), now),
        Err(Rejection::Conflict { .. })
    ));
    assert_eq!(
        h.feed(cmd("c2", amount("B", "5.00", None)), now),
        Ok(Outcome::Applied)
    );
    assert_eq!(h.count("coupon_applied"), 2);
    let replaced = h.events().find_map(|e| match e {
        DomainEvent::CouponApplied {
            replaced: Some(r), ..
        } => Some(r.clone()),
        _ => None,
    });
    assert_eq!(replaced.as_deref(), Some("A"));
    // B: 5.00 off April's fee 31.00 → 26.00; tax 5.20; total 31.20.
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(h.invoices()[1].total, Minor(3120));
}

#[test]
fn issue_13_a_coupon_that_cannot_apply_is_refused_naming_the_field() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let at = "2026-03-02T00:00:00Z";
    let field_of = |r: Result<Outcome, Rejection>| match r {
        Err(Rejection::InvalidField { field, .. }) => field,
        other => panic!("expected invalid_field, got {other:?}"),
    };
    let mut both = percent("X", "10", None);
    both.amount_off = Some(d("1.00"));
    assert_eq!(field_of(coupon(&mut h, both, at)), "percent_off");
    assert_eq!(
        field_of(coupon(&mut h, percent("X", "0", None), at)),
        "percent_off"
    );
    assert_eq!(
        field_of(coupon(&mut h, percent("X", "100.5", None), at)),
        "percent_off"
    );
    assert_eq!(
        field_of(coupon(&mut h, percent("X", "10", Some(0)), at)),
        "periods"
    );
    assert_eq!(
        field_of(coupon(&mut h, percent("", "10", None), at)),
        "coupon_id"
    );
    let mut no_currency = amount("X", "1.00", None);
    no_currency.currency = None;
    assert_eq!(field_of(coupon(&mut h, no_currency, at)), "currency");
    let mut usd = amount("X", "1.00", None);
    usd.currency = Some("USD".into());
    assert!(matches!(
        coupon(&mut h, usd, at),
        Err(Rejection::CurrencyMismatch { .. })
    ));
    assert!(matches!(
        coupon(&mut h, amount("X", "1.001", None), at),
        Err(Rejection::InvalidAmount { .. })
    ));
    let mut unknown = percent("X", "10", None);
    unknown.charges = vec!["disk.gb_hours".into()];
    assert!(matches!(
        coupon(&mut h, unknown, at),
        Err(Rejection::UnknownMetric { .. })
    ));
    assert!(matches!(
        coupon(&mut h, percent("4111 1111 1111 1111", "10", None), at),
        Err(Rejection::CardNumber { .. })
    ));
    // Nothing of it stuck.
    assert!(h.st().coupon.is_none());
    assert_eq!(h.count("coupon_applied"), 0);
}

#[test]
fn issue_13_the_running_draft_shows_the_discount_line() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    coupon(&mut h, percent("TEN", "10", None), "2026-03-01T01:00:00Z").unwrap();
    flat_march_usage(&mut h);
    let draft = h.engine.draft(h.st());
    // As at the close: 42.00 eligible, 4.20 off, subtotal 37.80.
    assert_eq!(draft.subtotal, Minor(3780));
    assert!(draft
        .lines
        .iter()
        .any(|l| l.kind == LineKind::Discount && l.amount == Minor(-420)));
}

// ---- preview (item 6) -----------------------------------------------------

/// An account with something of everything: usage, a coupon, a pending
/// debit, paid and promotional credit.
fn busy_account() -> Harness {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    coupon(&mut h, percent("TEN", "10", None), "2026-03-01T01:00:00Z").unwrap();
    flat_march_usage(&mut h);
    // The opening invoice (March's fee 31.00 + tax 6.20) is paid first, so
    // the credit below waits for the next invoice.
    h.pay(
        PaymentKind::BankTransferReceived {
            reference: "inv_acct_00001".into(),
            amount: d("37.20"),
            currency: "EUR".into(),
        },
        "2026-03-11T12:00:00Z",
    )
    .unwrap();
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("8.00"),
            currency: "EUR".into(),
            grant: GrantTerms {
                kind: GrantKind::Promotional,
                expires_at: Some(ts("2026-06-01T00:00:00Z")),
                priority: 0,
            },
        },
        "2026-03-12T00:00:00Z",
    )
    .unwrap();
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("5.00"),
            currency: "EUR".into(),
            grant: GrantTerms::default(),
        },
        "2026-03-13T00:00:00Z",
    )
    .unwrap();
    h.command(
        AccountKind::AdjustmentIssued {
            adjustment: AdjustmentKind::Debit,
            amount: d("2.00"),
            currency: "EUR".into(),
            reason: "setup".into(),
            invoice_id: None,
            grant: GrantTerms::default(),
        },
        "2026-03-14T00:00:00Z",
    )
    .unwrap();
    h
}

#[test]
fn issue_13_preview_equals_the_invoice_issued_when_the_period_closes_with_no_further_input() {
    let mut h = busy_account();
    let preview = h
        .engine
        .preview(h.st(), ts("2026-03-20T00:00:00Z"))
        .expect("an upcoming invoice");
    // 42.00 eligible − 4.20 + debit 2.00 = 39.80; tax 7.96; total 47.76;
    // credit: promotional 8.00 (expires earlier) then paid 5.00 = 13.00;
    // due 34.76.
    assert_eq!(preview.subtotal, Minor(3980));
    assert_eq!(preview.tax, Minor(796));
    assert_eq!(preview.total, Minor(4776));
    assert_eq!(preview.credit_applied_promotional, Minor(800));
    assert_eq!(preview.credit_applied_paid(), Minor(500));
    assert_eq!(preview.amount_due, Minor(3476));
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(*h.invoices()[1], preview);
}

#[test]
fn issue_13_preview_changes_no_state_and_journals_nothing() {
    let h = busy_account();
    let before = serde_json::to_string(h.st()).unwrap();
    let journal = h.journal.len();
    let _ = h.engine.preview(h.st(), ts("2026-03-20T00:00:00Z"));
    assert_eq!(serde_json::to_string(h.st()).unwrap(), before);
    assert_eq!(h.journal.len(), journal);
    assert_eq!(h.st().coupon.as_ref().unwrap().periods_left, None);
}

#[test]
fn issue_13_preview_does_not_count_credit_that_expires_before_the_close() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.usage("disk.gb_hours", "b-1", "150", "2026-03-10T00:00:00Z")
        .unwrap();
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("5.00"),
            currency: "EUR".into(),
            grant: GrantTerms {
                kind: GrantKind::Promotional,
                expires_at: Some(ts("2026-03-25T00:00:00Z")),
                priority: 0,
            },
        },
        "2026-03-12T00:00:00Z",
    )
    .unwrap();
    // 13.50 + tax 2.70 = 16.20; the 5.00 grant is gone by the close.
    let preview = h
        .engine
        .preview(h.st(), ts("2026-03-20T00:00:00Z"))
        .unwrap();
    assert_eq!(preview.credit_applied, Minor::ZERO);
    assert_eq!(preview.amount_due, Minor(1620));
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(*h.invoices()[0], preview);
}

#[test]
fn issue_13_a_closed_account_that_issued_its_final_invoice_has_no_upcoming_invoice() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.command(AccountKind::AccountClosed, "2026-03-15T00:00:00Z")
        .unwrap();
    // Before the close: the final invoice is upcoming.
    assert!(h
        .engine
        .preview(h.st(), ts("2026-03-20T00:00:00Z"))
        .is_some());
    h.advance("2026-04-01T01:00:00Z");
    assert!(h
        .engine
        .preview(h.st(), ts("2026-04-02T00:00:00Z"))
        .is_none());
}
