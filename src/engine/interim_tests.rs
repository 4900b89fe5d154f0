//! Behaviour tests of threshold invoicing (issue 13, item 3: `invoice_at`,
//! interim invoices). Amounts are worked out in the comments. Plans are
//! those of `tests.rs`: `tiered` has no fee, bills `disk.gb_hours`
//! graduated (0.10 up to 100, then 0.05 plus a 1.00 flat fee) and has a
//! 10.00 minimum spend; `flat` has a 31.00 fee in advance and
//! `container.hours` at 0.0125. Tax is 20%, periods are UTC months and the
//! close is an hour after the period's end.

use rust_decimal::Decimal;

use super::events::*;
use super::fold::{Engine, Outcome};
use super::interim::amounts_by_key;
use super::money::{Currency, Minor};
use super::plan::{Charge, Model, Plan};
use super::tests::{d, open_cmd, plans, ts, usage, Harness};
use super::{AccountState, EngineConfig, Rejection};

fn invoice_at(h: &mut Harness, amount: &str, at: &str) -> Result<Outcome, Rejection> {
    h.command(
        AccountKind::ThresholdsSet {
            thresholds: Vec::new(),
            currency: "EUR".into(),
            invoice_at: Some(d(amount)),
            keeps_invoice_at: false,
        },
        at,
    )
}

fn gb(h: &mut Harness, qty: &str, at: &str) {
    h.usage("disk.gb_hours", "bucket-1", qty, at).unwrap();
}

/// (id, subtotal, tax, total) of every invoice issued.
fn issued(h: &Harness) -> Vec<(String, Minor, Minor, Minor)> {
    h.invoices()
        .iter()
        .map(|i| (i.invoice_id.clone(), i.subtotal, i.tax, i.total))
        .collect()
}

/// The same usage on an account without `invoice_at`: its one March invoice.
fn single_invoice(usages: &[(&str, &str)]) -> IssuedInvoice {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    for (qty, at) in usages {
        gb(&mut h, qty, at);
    }
    h.advance("2026-04-01T02:00:00Z");
    h.invoices()[0].clone()
}

fn sum(invoices: &[&IssuedInvoice], f: impl Fn(&IssuedInvoice) -> Minor) -> Minor {
    Minor::saturating_sum(invoices.iter().map(|i| f(i)))
}

#[test]
fn issue_13_an_interim_invoice_is_issued_when_the_accrued_amount_reaches_invoice_at() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    // 30 GB-h × 0.10 = 3.00 accrued (the 10.00 minimum is a period-end
    // true-up, not accrued): below 5.00, nothing issued.
    gb(&mut h, "30", "2026-03-05T00:00:00Z");
    assert!(h.invoices().is_empty());
    assert_eq!(h.st().draft_invoice_id, "inv_acct_00001");
    // 60 GB-h × 0.10 = 6.00 ≥ 5.00: an interim invoice under the draft's
    // id for 6.00, tax 20% = 1.20, total 7.20; a new draft opens.
    gb(&mut h, "30", "2026-03-10T00:00:00Z");
    let inv = h.invoices()[0].clone();
    assert_eq!(inv.invoice_id, "inv_acct_00001");
    assert_eq!(inv.number, "acct-00001");
    assert_eq!(inv.period.start, ts("2026-03-01T00:00:00Z"));
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(inv.lines[0].kind, LineKind::Usage);
    assert_eq!(inv.lines[0].quantity, d("60"));
    assert_eq!(
        (inv.subtotal, inv.tax, inv.total, inv.amount_due),
        (Minor(600), Minor(120), Minor(720), Minor(720))
    );
    assert_eq!(h.st().draft_invoice_id, "inv_acct_00002");
    assert!(h.events().any(|e| matches!(e,
        DomainEvent::InvoiceOpened { invoice_id, period }
            if invoice_id == "inv_acct_00002" && period.start == ts("2026-03-01T00:00:00Z"))));
    // Nothing more accrued: no second interim at the next input.
    gb(&mut h, "0", "2026-03-11T00:00:00Z");
    assert_eq!(h.invoices().len(), 1);
}

#[test]
fn issue_13_the_final_invoice_covers_the_rest_and_the_period_adds_up_with_graduated_tiers_and_tax()
{
    let usages = [
        ("60", "2026-03-05T00:00:00Z"),
        ("50", "2026-03-20T00:00:00Z"),
        ("40", "2026-03-25T00:00:00Z"),
    ];
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    for (qty, at) in usages {
        gb(&mut h, qty, at);
    }
    h.advance("2026-04-01T02:00:00Z");
    // 60 GB-h: 6.00 ≥ 5.00 → interim 1: 6.00, tax 1.20.
    // 110 GB-h: 100 × 0.10 + 10 × 0.05 + 1.00 = 11.50; 5.50 not invoiced
    //   ≥ 5.00 → interim 2: 5.50, tax = 20% of 11.50 (2.30) − 1.20 = 1.10.
    // 150 GB-h: 10.00 + 2.50 + 1.00 = 13.50; 2.00 not invoiced < 5.00.
    // Close: the final invoice bills 2.00, tax 20% of 13.50 (2.70) − 2.30
    //   = 0.40; the minimum (10.00) is met, no true-up.
    assert_eq!(
        issued(&h),
        vec![
            ("inv_acct_00001".into(), Minor(600), Minor(120), Minor(720)),
            ("inv_acct_00002".into(), Minor(550), Minor(110), Minor(660)),
            ("inv_acct_00003".into(), Minor(200), Minor(40), Minor(240)),
        ]
    );
    // The second interim's usage line is the difference: 50 GB-h, 5.50.
    let second = &h.invoices()[1].lines[0];
    assert_eq!((second.quantity, second.amount), (d("50"), Minor(550)));
    assert!(second
        .description
        .as_deref()
        .unwrap()
        .contains("6.00 of 11.50 invoiced earlier in the period"));
    // One invoice for the same usage: 13.50, tax 2.70, total 16.20 — what
    // the three add up to, line by line.
    let one = single_invoice(&usages);
    let all = h.invoices();
    assert_eq!(sum(&all, |i| i.subtotal), one.subtotal);
    assert_eq!(sum(&all, |i| i.tax), one.tax);
    assert_eq!(sum(&all, |i| i.total), one.total);
    assert_eq!(one.total, Minor(1620));
    let lines: Vec<Line> = all.iter().flat_map(|i| i.lines.clone()).collect();
    assert_eq!(amounts_by_key(&lines), amounts_by_key(&one.lines));
}

#[test]
fn issue_13_tax_is_exact_across_interim_invoices_where_rounding_each_would_drift() {
    let usages = [
        ("0.3", "2026-03-05T00:00:00Z"),
        ("0.3", "2026-03-06T00:00:00Z"),
    ];
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "0.03", "2026-03-01T01:00:00Z").unwrap();
    for (qty, at) in usages {
        gb(&mut h, qty, at);
    }
    h.advance("2026-04-01T02:00:00Z");
    // 0.3 GB-h = 0.03: interim 1, tax 20% of 0.03 = 0.006 → 0.01.
    // 0.6 GB-h = 0.06: interim 2 for 0.03, tax 20% of 0.06 = 0.012 → 0.01,
    //   less the 0.01 invoiced: 0.00 (rounding each: 0.01 again).
    // Close: minimum spend 10.00 − 0.06 = 9.94 true-up; tax 20% of 10.00 =
    //   2.00 less 0.01: 1.99 (rounding it alone: 1.988 → 1.99, and the
    //   period would carry 2.01 instead of 2.00).
    assert_eq!(
        issued(&h),
        vec![
            ("inv_acct_00001".into(), Minor(3), Minor(1), Minor(4)),
            ("inv_acct_00002".into(), Minor(3), Minor(0), Minor(3)),
            ("inv_acct_00003".into(), Minor(994), Minor(199), Minor(1193)),
        ]
    );
    let one = single_invoice(&usages);
    assert_eq!((one.subtotal, one.tax), (Minor(1000), Minor(200)));
    let all = h.invoices();
    assert_eq!(sum(&all, |i| i.tax), one.tax);
    assert_eq!(sum(&all, |i| i.total), one.total);
}

#[test]
fn issue_13_a_redelivered_event_issues_no_second_interim_even_after_a_snapshot_round_trip() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    let at = ts("2026-03-10T00:00:00Z");
    let u = Input::Usage(usage("u-1", "acct", "bucket-1", "disk.gb_hours", "60", at));
    assert_eq!(h.feed(u.clone(), at), Ok(Outcome::Applied));
    assert_eq!(h.count("invoice_issued"), 1);
    assert_eq!(h.feed(u.clone(), at), Ok(Outcome::Duplicate));
    // Restart: the state from a snapshot (the dedup window is persisted
    // next to it and comes back with it).
    let mut restored: AccountState =
        serde_json::from_str(&serde_json::to_string(h.st()).unwrap()).unwrap();
    restored.dedup = h.st().dedup.clone();
    assert_eq!(restored.interim, h.st().interim);
    h.state = Some(restored);
    assert_eq!(h.feed(u, at.plus(1)), Ok(Outcome::Duplicate));
    assert_eq!(h.count("invoice_issued"), 1);
    // The close bills the rest: the 10.00 minimum less the 6.00 invoiced.
    h.advance("2026-04-01T02:00:00Z");
    let last = h.invoices()[1].clone();
    assert_eq!(last.subtotal, Minor(400));
}

#[test]
fn issue_13_usage_arriving_after_an_interim_is_rated_on_the_period_total() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "8.00", "2026-03-01T01:00:00Z").unwrap();
    gb(&mut h, "90", "2026-03-10T00:00:00Z");
    // 90 × 0.10 = 9.00 ≥ 8.00: interim 1 for 9.00.
    assert_eq!(h.invoices()[0].subtotal, Minor(900));
    // Usage of 2 March arriving on the 21st (late for the interim, not for
    // the period): 140 GB-h = 10.00 + 40 × 0.05 + 1.00 = 13.00, rated on
    // the period's total; 4.00 not invoiced < 8.00.
    let u = usage(
        "u-late",
        "acct",
        "bucket-2",
        "disk.gb_hours",
        "50",
        ts("2026-03-02T00:00:00Z"),
    );
    h.feed(Input::Usage(u), ts("2026-03-21T00:00:00Z")).unwrap();
    assert_eq!(h.invoices().len(), 1);
    h.advance("2026-04-01T02:00:00Z");
    // Final: 13.00 − 9.00 = 4.00, tax 20% of 13.00 (2.60) − 1.80 = 0.80.
    let last = h.invoices()[1].clone();
    assert_eq!((last.subtotal, last.tax), (Minor(400), Minor(80)));
    assert_eq!(last.lines[0].quantity, d("50"));
    // Usage of March arriving in April (after March's close) is a late
    // line on April's draft: 10 GB-h at the top tier, 10 × 0.05 = 0.50;
    // with 7.60 of April usage (76 GB-h) the 8.10 accrued reaches 8.00.
    let u = usage(
        "u-later",
        "acct",
        "bucket-2",
        "disk.gb_hours",
        "10",
        ts("2026-03-30T00:00:00Z"),
    );
    h.feed(Input::Usage(u), ts("2026-04-02T00:00:00Z")).unwrap();
    assert_eq!(h.invoices().len(), 2);
    gb(&mut h, "76", "2026-04-03T00:00:00Z");
    let april = h.invoices()[2].clone();
    assert_eq!(april.subtotal, Minor(810));
    assert!(april
        .lines
        .iter()
        .any(|l| l.kind == LineKind::LateUsage && l.amount == Minor(50)));
}

#[test]
fn issue_13_credit_is_applied_to_an_interim_invoice_and_the_card_charged_the_rest() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.attach_card("2026-03-01T00:30:00Z");
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("5.00"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-01T00:40:00Z",
    )
    .unwrap();
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    gb(&mut h, "60", "2026-03-10T00:00:00Z");
    // Interim: 6.00 + 1.20 tax = 7.20; 5.00 of credit first, 2.20 charged.
    let inv = h.invoices()[0].clone();
    assert_eq!(
        (inv.total, inv.credit_applied, inv.amount_due),
        (Minor(720), Minor(500), Minor(220))
    );
    assert_eq!(
        h.charges(),
        vec![(
            "inv_acct_00001/attempt-1".into(),
            "inv_acct_00001".into(),
            Minor(220),
            1
        )]
    );
    assert_eq!(h.st().credit, Minor::ZERO);
}

#[test]
fn issue_13_the_fee_in_advance_is_never_on_an_interim_invoice_but_on_the_final_one() {
    let mut h = Harness::new();
    // Opened on 1 March: March's fee, 31.00, is invoiced at once.
    h.open("flat", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "10.00", "2026-03-01T01:00:00Z").unwrap();
    // April's fee (31.00) is on the draft, but it is not accrued usage:
    // nothing issued.
    h.usage("container.hours", "c-1", "100", "2026-03-02T00:00:00Z")
        .unwrap();
    assert_eq!(h.invoices().len(), 1);
    // 800 h × 0.0125 = 10.00 ≥ 10.00: interim for the 10.00 alone.
    h.usage("container.hours", "c-1", "700", "2026-03-03T00:00:00Z")
        .unwrap();
    let interim = h.invoices()[1].clone();
    assert_eq!(interim.subtotal, Minor(1000));
    assert!(interim.lines.iter().all(|l| l.kind == LineKind::Usage));
    h.advance("2026-04-01T02:00:00Z");
    // March's final invoice: April's fee and nothing else (no usage since).
    let last = h.invoices()[2].clone();
    assert_eq!(last.lines.len(), 1, "{:?}", last.lines);
    assert_eq!(last.lines[0].kind, LineKind::RecurringFee);
    assert_eq!(last.subtotal, Minor(3100));
}

/// `tests.rs`'s plans and `fee100`: a 100.00 fee in advance and
/// `container.hours` at 1.00.
fn fee100_harness() -> Harness {
    let mut book = plans();
    book.upsert(Plan {
        plan_id: "fee100".into(),
        currency: Currency::from_code("EUR").unwrap(),
        recurring_fee: d("100.00"),
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![Charge {
            metric: "container.hours".into(),
            model: Model::PerUnit,
            unit_price: d("1.00"),
            package_size: None,
            free_units: Decimal::ZERO,
            tiers: vec![],
            aggregation: Default::default(),
        }],
    })
    .unwrap();
    let mut h = Harness::new();
    h.engine = Engine::new(EngineConfig::new("prod"), book);
    // Opened on 1 March: March's fee, 100.00 + 20.00 tax, charged to the
    // card and paid.
    h.open("fee100", "2026-03-01T00:00:00Z");
    h.attach_card("2026-03-01T00:10:00Z");
    let (charge_id, invoice_id, _, _) = h.charges()[0].clone();
    succeed(
        &mut h,
        charge_id,
        invoice_id,
        "120.00",
        "2026-03-01T00:20:00Z",
    );
    invoice_at(&mut h, "50.00", "2026-03-01T01:00:00Z").unwrap();
    h
}

fn succeed(h: &mut Harness, charge_id: String, invoice_id: String, amount: &str, at: &str) {
    h.pay(
        PaymentKind::PaymentSucceeded {
            charge_id,
            invoice_id,
            amount: d(amount),
            currency: "EUR".into(),
        },
        at,
    )
    .unwrap();
}

fn overdue_events(h: &Harness) -> usize {
    h.count("invoice_overdue") + h.count("account_past_due")
}

#[test]
fn issue_13_an_interim_invoice_bills_no_fee_in_advance_so_a_close_strands_no_credit() {
    let mut h = fee100_harness();
    // Day 5: 50 h × 1.00 = 50.00 reaches invoice_at: the interim invoice
    // bills the usage alone, 50.00 + 10.00 tax, not April's 100.00 fee.
    h.usage("container.hours", "c-1", "50", "2026-03-05T00:00:00Z")
        .unwrap();
    let interim = h.invoices()[1].clone();
    assert!(
        interim
            .lines
            .iter()
            .all(|l| l.kind != LineKind::RecurringFee),
        "{:?}",
        interim.lines
    );
    assert_eq!(
        (interim.subtotal, interim.total),
        (Minor(5000), Minor(6000))
    );
    let (charge_id, invoice_id, amount, _) = h.charges()[1].clone();
    assert_eq!(
        (invoice_id.as_str(), amount),
        (interim.invoice_id.as_str(), Minor(6000))
    );
    succeed(
        &mut h,
        charge_id,
        invoice_id,
        "60.00",
        "2026-03-06T00:00:00Z",
    );
    // Day 10: closed. The final invoice has nothing left to bill (no usage
    // since, no fee after a close): no negative invoice, no credit.
    h.command(AccountKind::AccountClosed, "2026-03-10T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T00:00:00Z");
    assert!(h.st().finished);
    let last = h.invoices()[2].clone();
    assert_eq!(last.total, Minor::ZERO, "{:?}", last.lines);
    assert_eq!(h.st().credit, Minor::ZERO);
    assert!(h.st().invoices.is_empty());
    assert_eq!(overdue_events(&h), 0);
    // The customer was charged March's fee and the usage + tax, no more.
    let charged: Vec<Minor> = h.charges().iter().map(|c| c.2).collect();
    assert_eq!(charged, vec![Minor(12000), Minor(6000)]);
}

#[test]
fn issue_13_a_downgrades_negative_final_invoice_pays_the_open_interim_invoice() {
    let mut h = fee100_harness();
    h.usage("container.hours", "c-1", "50", "2026-03-05T00:00:00Z")
        .unwrap();
    let interim = h.invoices()[1].clone();
    assert_eq!(interim.total, Minor(6000));
    // The gateway never answers the interim's charge. Day 6: down to
    // `volume` (no fee): 26 of March's 31 days of the 100.00 fee come
    // back, -83.87, on the draft.
    h.command(
        AccountKind::PlanChanged {
            plan_id: "volume".into(),
            effective: PlanChangeEffective::Immediately,
            version: None,
        },
        "2026-03-06T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-04-01T02:00:00Z");
    // March's final invoice: -83.87, tax 20% of (50.00 - 83.87) = -6.77
    // less the 10.00 invoiced = -16.77; total -100.64 becomes credit and
    // pays the interim's 60.00 at once; 40.64 is left.
    let last = h.invoices()[2].clone();
    assert_eq!(last.total, Minor(-10064));
    assert!(h.events().any(|e| matches!(e,
        DomainEvent::CreditApplied { invoice_id, amount, .. }
            if *invoice_id == interim.invoice_id && *amount == Minor(6000))));
    assert!(h.st().invoices.is_empty());
    assert_eq!(h.st().credit, Minor(4064));
    // Nothing is dunned after the close (the interim went overdue on
    // 19 March, before the credit existed: once).
    let past_due = overdue_events(&h);
    h.advance("2026-05-01T00:00:00Z");
    assert_eq!(overdue_events(&h), past_due);
    assert_eq!(h.charges().len(), 2);
}

#[test]
fn issue_13_the_preview_is_the_rest_of_the_period_after_an_interim() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    gb(&mut h, "60", "2026-03-10T00:00:00Z");
    gb(&mut h, "20", "2026-03-12T00:00:00Z");
    // 80 GB-h = 8.00 so far, 6.00 invoiced; at the close the 10.00
    // minimum lifts it: the rest is 4.00 (2.00 usage + 2.00 true-up).
    let preview = h
        .engine
        .preview(h.st(), ts("2026-03-12T00:00:00Z"))
        .unwrap();
    assert_eq!(preview.invoice_id, "inv_acct_00002");
    assert_eq!((preview.subtotal, preview.tax), (Minor(400), Minor(80)));
    h.advance("2026-04-01T02:00:00Z");
    assert_eq!(*h.invoices()[1], preview);
}

#[test]
fn issue_13_account_opened_may_carry_the_alerts_and_invoice_at_bad_ones_name_the_field() {
    let mut h = Harness::new();
    let open = |thresholds: Vec<&str>, invoice_at: Option<&str>| {
        let Input::Account(mut cmd) = open_cmd("o-1", "tiered", ts("2026-03-01T00:00:00Z")) else {
            unreachable!()
        };
        if let AccountKind::AccountOpened {
            thresholds: t,
            invoice_at: i,
            ..
        } = &mut cmd.kind
        {
            *t = thresholds.into_iter().map(d).collect();
            *i = invoice_at.map(d);
        }
        Input::Account(cmd)
    };
    let at = ts("2026-03-01T00:00:00Z");
    let e = h.feed(open(vec!["5.00"], Some("0")), at).unwrap_err();
    assert!(
        matches!(&e, Rejection::InvalidField { field, .. } if field == "invoice_at"),
        "{e:?}"
    );
    let e = h.feed(open(vec!["5.001"], None), at).unwrap_err();
    assert!(
        matches!(&e, Rejection::InvalidField { field, .. } if field == "thresholds[0]"),
        "{e:?}"
    );
    assert!(h.state.is_none() && h.journal.is_empty());
    h.feed(open(vec!["5.00"], Some("6.00")), at).unwrap();
    assert_eq!(h.st().thresholds, vec![Minor(500)]);
    assert_eq!(h.st().invoice_at, Some(Minor(600)));
    assert!(h.events().any(|e| *e
        == DomainEvent::ThresholdsSet {
            thresholds: vec![Minor(500)],
            invoice_at: Some(Minor(600)),
        }));
    // 60 GB-h = 6.00: the 5.00 alert fires and the 6.00 interim is issued.
    gb(&mut h, "60", "2026-03-10T00:00:00Z");
    assert_eq!(h.count("spend_threshold_reached"), 1);
    assert_eq!(h.invoices()[0].subtotal, Minor(600));
}

/// A `ThresholdsSet` as a producer writes it: Avro framed with the id of
/// `version` (1: schemas/history/ThresholdsSet.v1.avsc, id 26; 2: the
/// current schema, id 1026), decoded as the runtime does.
fn thresholds_set_record(h: &mut Harness, version: u32, json: serde_json::Value) -> Input {
    use crate::contracts::catalog::Catalog;
    use crate::contracts::decode::{Decoded, Decoder};
    let catalog = Catalog::shared().unwrap();
    let entry = catalog
        .history()
        .iter()
        .chain(catalog.entries())
        .find(|e| e.record == "ThresholdsSet" && e.version == version)
        .unwrap();
    let mut json = json;
    json["event_id"] = serde_json::json!(h.next_id());
    let body =
        crate::contracts::encode::avro_body(&entry.schema, "ThresholdsSet", &json, &[]).unwrap();
    let framed = crate::contracts::framing::encode(entry.id, &body);
    match Decoder::new(catalog).unwrap().decode(&framed) {
        Ok(Decoded::Input(input)) => input,
        other => panic!("ThresholdsSet version {version}: {other:?}"),
    }
}

#[test]
fn issue_13_a_version_1_thresholds_set_keeps_invoice_at_and_an_explicit_null_clears_it() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    let at = ts("2026-03-02T00:00:00Z");
    let base = serde_json::json!({"account_id": "acct", "occurred_at": "2026-03-02T00:00:00Z",
        "environment": "prod", "thresholds": ["50.00"], "currency": "EUR"});
    // An old producer (version 1, no `invoice_at` field) changes only the
    // alerts: progressive billing stays on at 5.00 (500 minor units).
    let v1 = thresholds_set_record(&mut h, 1, base.clone());
    h.feed(v1, at).unwrap();
    assert_eq!(h.st().thresholds, vec![Minor(5000)]);
    assert_eq!(h.st().invoice_at, Some(Minor(500)));
    // So 60 GB-h × 0.10 = 6.00 ≥ 5.00 still issues an interim invoice of
    // 6.00 + 20% tax = 7.20.
    gb(&mut h, "60", "2026-03-05T00:00:00Z");
    assert_eq!(issued(&h)[0].3, Minor(720));
    // Version 2 with `invoice_at: null` says "none": cleared.
    let mut null = base.clone();
    null["invoice_at"] = serde_json::Value::Null;
    let v2 = thresholds_set_record(&mut h, 2, null);
    h.feed(v2, ts("2026-03-06T00:00:00Z")).unwrap();
    assert_eq!(h.st().invoice_at, None);
    // After which 60 GB-h more (12.00 accrued, 6.00 not invoiced) issue
    // nothing more.
    gb(&mut h, "60", "2026-03-07T00:00:00Z");
    assert_eq!(h.invoices().len(), 1);
}

/// `AccountCommand` with `ThresholdsSet` as it was before
/// `keeps_invoice_at` existed, serialized as that code did: what the dedup
/// windows of accounts that applied a version 1 record then remember.
#[derive(serde::Serialize)]
struct PreFlagCommand {
    event_id: String,
    account_id: String,
    occurred_at: super::time::Timestamp,
    environment: Option<String>,
    kind: PreFlagKind,
}

#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PreFlagKind {
    ThresholdsSet {
        thresholds: Vec<Decimal>,
        currency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoice_at: Option<Decimal>,
    },
}

#[test]
fn issue_13_a_version_1_thresholds_set_redelivered_after_the_upgrade_is_a_duplicate() {
    use super::dedup::{fingerprint, key};
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    let base = serde_json::json!({"account_id": "acct", "occurred_at": "2026-03-02T00:00:00Z",
        "environment": "prod", "thresholds": ["50.00"], "currency": "EUR"});
    let v1 = thresholds_set_record(&mut h, 1, base.clone());
    let Input::Account(cmd) = &v1 else {
        panic!("{v1:?}")
    };
    // Before the flag, this record decoded to the same command without it:
    // its fingerprint was the xxh3 of that JSON.
    let pre = PreFlagCommand {
        event_id: cmd.event_id.clone(),
        account_id: "acct".into(),
        occurred_at: ts("2026-03-02T00:00:00Z"),
        environment: Some("prod".into()),
        kind: PreFlagKind::ThresholdsSet {
            thresholds: vec![d("50.00")],
            currency: "EUR".into(),
            invoice_at: None,
        },
    };
    let before = xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&pre).unwrap());
    assert_eq!(fingerprint(&v1), before);
    // So the account that applied it before the upgrade (its dedup window
    // remembers that fingerprint) counts its redelivery as a duplicate,
    // not a `conflict` dead letter.
    let at = ts("2026-03-02T00:00:00Z");
    h.state
        .as_mut()
        .unwrap()
        .dedup
        .insert(key(&cmd.event_id), before, at.0);
    assert_eq!(h.feed(v1.clone(), at), Ok(Outcome::Duplicate));
    // Conflicts are still told apart: another threshold, or an amount for
    // invoice_at, under the same id is another payload.
    let mut other = base.clone();
    other["thresholds"] = serde_json::json!(["60.00"]);
    let mut with_amount = base;
    with_amount["invoice_at"] = serde_json::json!("5.00");
    for json in [other, with_amount] {
        let mut input = thresholds_set_record(&mut h, 2, json);
        if let Input::Account(c) = &mut input {
            c.event_id = cmd.event_id.clone();
        }
        assert_ne!(fingerprint(&input), before, "{input:?}");
    }
}

#[test]
fn issue_13_a_json_thresholds_set_without_invoice_at_keeps_it_and_null_clears_it() {
    use crate::contracts::decode::Decoded;
    use crate::contracts::json::parse_line;
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    let line = |id: &str, extra: &str| {
        let text = format!(
            r#"{{"event_id":"{id}","account_id":"acct","kind":"thresholds_set","occurred_at":"2026-03-02T00:00:00Z","environment":"prod","thresholds":["50.00"],"currency":"EUR"{extra}}}"#
        );
        match parse_line(&text) {
            Ok(Decoded::Input(input)) => input,
            other => panic!("{text}: {other:?}"),
        }
    };
    let at = ts("2026-03-02T00:00:00Z");
    h.feed(line("j1", ""), at).unwrap();
    assert_eq!(h.st().invoice_at, Some(Minor(500)));
    h.feed(line("j2", r#","invoice_at":"7.50""#), at).unwrap();
    assert_eq!(h.st().invoice_at, Some(Minor(750)));
    h.feed(line("j3", r#","invoice_at":null"#), at).unwrap();
    assert_eq!(h.st().invoice_at, None);
}

#[test]
fn issue_13_an_interim_invoice_is_flagged_interim_and_the_final_one_is_not() {
    use crate::contracts::catalog::Catalog;
    use crate::contracts::outputs::{outputs_for, OutputTopic};
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    invoice_at(&mut h, "5.00", "2026-03-01T01:00:00Z").unwrap();
    // 60 GB-h × 0.10 = 6.00 ≥ 5.00: an interim invoice of 6.00.
    gb(&mut h, "60", "2026-03-10T00:00:00Z");
    // The close bills the rest: the 10.00 minimum spend less the 6.00
    // invoiced = 4.00 (the minimum-spend true-up), final, not interim.
    h.advance("2026-04-01T02:00:00Z");
    let flags: Vec<(Minor, bool)> = h
        .invoices()
        .iter()
        .map(|i| (i.subtotal, i.interim))
        .collect();
    assert_eq!(flags, vec![(Minor(600), true), (Minor(400), false)]);
    // On the invoices topic: `interim` in the JSON and in the Avro record
    // (InvoiceIssued version 4).
    let catalog = Catalog::shared().unwrap();
    let eur = Currency::from_code("EUR").unwrap();
    let mut seen = Vec::new();
    for entry in h.journal.iter() {
        if let DomainEvent::InvoiceIssued { .. } = entry.event {
            for out in outputs_for(entry, eur) {
                if out.topic == OutputTopic::Invoices && out.kind == "InvoiceIssued" {
                    catalog.encode_output(&out).unwrap();
                    seen.push(out.json["interim"].clone());
                }
            }
        }
    }
    assert_eq!(
        seen,
        vec![serde_json::json!(true), serde_json::json!(false)]
    );
}
