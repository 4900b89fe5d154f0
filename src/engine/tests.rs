//! Behaviour tests of the fold, one per billing rule of SPEC §3–§4, on a
//! simulated clock.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::events::*;
use super::fold::{Engine, Outcome};
use super::money::Minor;
use super::plan::{Charge, Model, Plan, PlanBook, Tier};
use super::time::{Anchor, Timestamp, MICROS_PER_DAY, MICROS_PER_HOUR};
use super::{AccountState, EngineConfig, Rejection};

pub(crate) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub(crate) fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

pub(crate) fn plans() -> PlanBook {
    let mut book = PlanBook::new();
    let eur = super::money::Currency::from_code("EUR").unwrap();
    book.upsert(Plan {
        plan_id: "flat".into(),
        currency: eur,
        recurring_fee: d("31.00"),
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![
            Charge {
                metric: "container.hours".into(),
                model: Model::PerUnit,
                unit_price: d("0.0125"),
                package_size: None,
                free_units: Decimal::ZERO,
                tiers: vec![],
                aggregation: Default::default(),
            },
            Charge {
                metric: "api.calls".into(),
                model: Model::Package,
                unit_price: d("0.50"),
                package_size: Some(d("1000")),
                free_units: d("1000"),
                tiers: vec![],
                aggregation: Default::default(),
            },
        ],
    })
    .unwrap();
    book.upsert(Plan {
        plan_id: "tiered".into(),
        currency: eur,
        recurring_fee: Decimal::ZERO,
        minimum_spend: d("10.00"),
        version: 1,
        charges: vec![Charge {
            metric: "disk.gb_hours".into(),
            model: Model::Graduated,
            unit_price: Decimal::ZERO,
            package_size: None,
            free_units: Decimal::ZERO,
            tiers: vec![
                Tier {
                    up_to: Some(d("100")),
                    unit_price: d("0.10"),
                    flat_fee: Decimal::ZERO,
                },
                Tier {
                    up_to: None,
                    unit_price: d("0.05"),
                    flat_fee: d("1.00"),
                },
            ],
            aggregation: Default::default(),
        }],
    })
    .unwrap();
    book.upsert(Plan {
        plan_id: "volume".into(),
        currency: eur,
        recurring_fee: Decimal::ZERO,
        minimum_spend: Decimal::ZERO,
        version: 1,
        charges: vec![Charge {
            metric: "api.calls".into(),
            model: Model::Volume,
            unit_price: Decimal::ZERO,
            package_size: None,
            free_units: Decimal::ZERO,
            tiers: vec![
                Tier {
                    up_to: Some(d("100")),
                    unit_price: d("1.00"),
                    flat_fee: Decimal::ZERO,
                },
                Tier {
                    up_to: None,
                    unit_price: d("0.50"),
                    flat_fee: Decimal::ZERO,
                },
            ],
            aggregation: Default::default(),
        }],
    })
    .unwrap();
    book
}

/// One account driven through the engine, with everything it journaled.
pub(crate) struct Harness {
    pub engine: Engine,
    pub state: Option<AccountState>,
    pub journal: Vec<JournalEntry>,
    pub n: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            engine: Engine::new(EngineConfig::new("prod"), plans()),
            state: None,
            journal: Vec::new(),
            n: 0,
        }
    }

    pub fn st(&self) -> &AccountState {
        self.state.as_ref().unwrap()
    }

    pub fn feed(&mut self, input: Input, now: Timestamp) -> Result<Outcome, Rejection> {
        self.engine
            .apply(&mut self.state, &input, now, &mut self.journal)
    }

    pub fn next_id(&mut self) -> String {
        self.n += 1;
        format!("e{}", self.n)
    }

    pub fn open(&mut self, plan: &str, at: &str) {
        let id = self.next_id();
        self.feed(open_cmd(&id, plan, ts(at)), ts(at)).unwrap();
    }

    pub fn usage(
        &mut self,
        metric: &str,
        subject: &str,
        qty: &str,
        at: &str,
    ) -> Result<Outcome, Rejection> {
        let id = self.next_id();
        self.usage_at(&id, metric, subject, qty, ts(at), ts(at))
    }

    pub fn usage_at(
        &mut self,
        id: &str,
        metric: &str,
        subject: &str,
        qty: &str,
        occurred: Timestamp,
        now: Timestamp,
    ) -> Result<Outcome, Rejection> {
        self.feed(
            Input::Usage(usage(id, "acct", subject, metric, qty, occurred)),
            now,
        )
    }

    pub fn pay(&mut self, kind: PaymentKind, at: &str) -> Result<Outcome, Rejection> {
        let id = self.next_id();
        self.feed(
            Input::Payment(PaymentEvent {
                event_id: id,
                account_id: "acct".into(),
                occurred_at: ts(at),
                environment: Some("prod".into()),
                kind,
            }),
            ts(at),
        )
    }

    pub fn command(&mut self, kind: AccountKind, at: &str) -> Result<Outcome, Rejection> {
        let id = self.next_id();
        self.feed(
            Input::Account(AccountCommand {
                event_id: id,
                account_id: "acct".into(),
                occurred_at: ts(at),
                environment: Some("prod".into()),
                kind,
            }),
            ts(at),
        )
    }

    pub fn advance(&mut self, at: &str) {
        let st = self.state.as_mut().unwrap();
        self.engine.advance(st, ts(at), &mut self.journal);
    }

    pub fn events(&self) -> impl Iterator<Item = &DomainEvent> {
        self.journal.iter().map(|e| &e.event)
    }

    pub fn invoices(&self) -> Vec<&IssuedInvoice> {
        self.events()
            .filter_map(|e| match e {
                DomainEvent::InvoiceIssued { invoice } => Some(&**invoice),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.events().filter(|e| e.name() == name).count()
    }

    pub fn attach_card(&mut self, at: &str) {
        self.pay(
            PaymentKind::PaymentMethodAttached {
                token_ref: "tok_1".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                expires: "2030-12".into(),
            },
            at,
        )
        .unwrap();
    }

    pub fn charges(&self) -> Vec<(String, String, Minor, u32)> {
        self.events()
            .filter_map(|e| match e {
                DomainEvent::ChargeRequested {
                    charge_id,
                    invoice_id,
                    amount,
                    attempt,
                    ..
                } => Some((charge_id.clone(), invoice_id.clone(), *amount, *attempt)),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn open_cmd(id: &str, plan: &str, at: Timestamp) -> Input {
    Input::Account(AccountCommand {
        event_id: id.into(),
        account_id: "acct".into(),
        occurred_at: at,
        environment: Some("prod".into()),
        kind: AccountKind::AccountOpened {
            plan_id: plan.into(),
            currency: "EUR".into(),
            timezone: "UTC".into(),
            tax_rate: d("0.20"),
            billing_anchor: Anchor::Calendar,
            thresholds: Vec::new(),
            invoice_at: None,
        },
    })
}

pub(crate) fn usage(
    id: &str,
    account: &str,
    subject: &str,
    metric: &str,
    qty: &str,
    at: Timestamp,
) -> UsageRecorded {
    UsageRecorded {
        event_id: id.into(),
        account_id: account.into(),
        subject: subject.into(),
        metric: metric.into(),
        quantity: d(qty),
        occurred_at: at,
        environment: "prod".into(),
        attributes: Default::default(),
    }
}

#[test]
fn opening_invoices_the_rest_of_the_first_period_in_advance() {
    let mut h = Harness::new();
    // March has 31 days; opened at the start of day 22 → 10 of 31 days left.
    h.open("flat", "2026-03-22T00:00:00Z");
    let inv = &h.invoices()[0];
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(inv.lines[0].kind, LineKind::RecurringFee);
    // 31.00 × 10/31 = 10.00; tax 20% = 2.00
    assert_eq!(inv.subtotal, Minor(1000));
    assert_eq!(inv.tax, Minor(200));
    assert_eq!(inv.total, Minor(1200));
    assert_eq!(h.count("invoice_opened"), 1);
}

#[test]
fn usage_is_rated_on_the_period_total_and_rounded_once() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    // 3 × 0.3333 h at 0.0125 = 0.01249875: per-event rounding would give 0.00 each.
    for t in [
        "2026-03-02T00:00:00Z",
        "2026-03-03T00:00:00Z",
        "2026-03-04T00:00:00Z",
    ] {
        h.usage("container.hours", "app-1", "0.3333", t).unwrap();
    }
    h.usage("container.hours", "app-2", "800", "2026-03-05T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    let line = inv
        .lines
        .iter()
        .find(|l| l.kind == LineKind::Usage)
        .unwrap();
    assert_eq!(line.quantity, d("800.9999"));
    // 800.9999 × 0.0125 = 10.01249875 → 10.01
    assert_eq!(line.amount, Minor(1001));
    assert_eq!(line.subjects[&"app-1".to_string()], d("0.9999"));
    assert_eq!(line.subjects[&"app-2".to_string()], d("800"));
}

#[test]
fn period_closes_at_end_plus_grace_with_next_fee_in_advance_and_due_in_14_days() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.advance("2026-04-01T00:59:59Z");
    assert_eq!(
        h.invoices().len(),
        1,
        "not issued before the grace hour ends"
    );
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    assert_eq!(inv.issued_at, ts("2026-04-01T01:00:00Z"));
    assert_eq!(inv.due_at, ts("2026-04-15T01:00:00Z"));
    assert_eq!(inv.period.start, ts("2026-03-01T00:00:00Z"));
    let fee = inv
        .lines
        .iter()
        .find(|l| l.kind == LineKind::RecurringFee)
        .unwrap();
    assert_eq!(fee.for_period.start, ts("2026-04-01T00:00:00Z"));
    assert_eq!(fee.amount, Minor(3100));
}

#[test]
fn usage_in_the_grace_hour_still_lands_on_its_own_period() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let id = h.next_id();
    h.usage_at(
        &id,
        "container.hours",
        "a",
        "80",
        ts("2026-03-31T23:59:00Z"),
        ts("2026-04-01T00:30:00Z"),
    )
    .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let line = &h.invoices()[1].lines[0];
    assert_eq!((line.kind, line.amount), (LineKind::Usage, Minor(100)));
}

#[test]
fn graduated_tiers_and_minimum_spend_true_up() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.usage("disk.gb_hours", "bucket-1", "50", "2026-03-02T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[0];
    // 50 × 0.10 = 5.00; minimum 10.00 → true-up 5.00
    let amounts: Vec<_> = inv.lines.iter().map(|l| (l.kind, l.amount)).collect();
    assert_eq!(
        amounts,
        vec![
            (LineKind::Usage, Minor(500)),
            (LineKind::MinimumSpend, Minor(500))
        ]
    );
    h.usage("disk.gb_hours", "bucket-1", "200", "2026-04-02T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    // 100 × 0.10 + 100 × 0.05 + 1.00 flat = 16.00, above the minimum
    let inv = h.invoices()[1];
    assert_eq!(
        inv.lines
            .iter()
            .map(|l| (l.kind, l.amount))
            .collect::<Vec<_>>(),
        vec![(LineKind::Usage, Minor(1600))]
    );
}

#[test]
fn free_allowance_and_packages_round_up() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.usage("api.calls", "gw", "1000", "2026-03-02T00:00:00Z")
        .unwrap();
    h.usage("api.calls", "gw", "1001", "2026-03-03T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    // 2001 - 1000 free = 1001 → 2 packages × 0.50
    let line = h.invoices()[1]
        .lines
        .iter()
        .find(|l| l.metric.as_deref() == Some("api.calls"))
        .unwrap()
        .clone();
    assert_eq!(line.amount, Minor(100));
}

#[test]
fn late_usage_is_billed_as_the_tier_delta_on_the_next_invoice() {
    let mut h = Harness::new();
    h.open("tiered", "2026-03-01T00:00:00Z");
    h.usage("disk.gb_hours", "b", "90", "2026-03-10T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    // March: 90 × 0.10 = 9.00 + true-up 1.00
    let march = h.invoices()[0].clone();
    assert_eq!(march.subtotal, Minor(1000));
    // 20 more March units arrive in April: new March charge = 10.00 + 10 × 0.05 + 1.00 = 11.50.
    let id = h.next_id();
    h.usage_at(
        &id,
        "disk.gb_hours",
        "b",
        "20",
        ts("2026-03-20T00:00:00Z"),
        ts("2026-04-03T00:00:00Z"),
    )
    .unwrap();
    h.usage("disk.gb_hours", "b", "200", "2026-04-05T00:00:00Z")
        .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    let april = h.invoices()[1].clone();
    let late = april
        .lines
        .iter()
        .find(|l| l.kind == LineKind::LateUsage)
        .unwrap();
    assert_eq!(late.for_period.start, ts("2026-03-01T00:00:00Z"));
    assert_eq!(late.quantity, d("20"));
    // 11.50 − 9.00 billed = 2.50
    assert_eq!(late.amount, Minor(250));
    let min_fix = april
        .lines
        .iter()
        .find(|l| l.kind == LineKind::MinimumSpend)
        .unwrap();
    // The 1.00 true-up is no longer needed.
    assert_eq!(min_fix.amount, Minor(-100));
    // Lines of March now add up to the charge on its final total: 11.50.
    let march_sum: i64 = march
        .lines
        .iter()
        .chain(april.lines.iter())
        .filter(|l| l.for_period.start == ts("2026-03-01T00:00:00Z"))
        .map(|l| l.amount.0)
        .sum();
    assert_eq!(march_sum, 1150);
    // The issued March invoice did not change.
    assert_eq!(h.invoices()[0], &march);
}

#[test]
fn volume_pricing_late_usage_can_lower_the_charge() {
    let mut h = Harness::new();
    h.open("volume", "2026-03-01T00:00:00Z");
    h.usage("api.calls", "x", "100", "2026-03-10T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let id = h.next_id();
    h.usage_at(
        &id,
        "api.calls",
        "x",
        "20",
        ts("2026-03-20T00:00:00Z"),
        ts("2026-04-03T00:00:00Z"),
    )
    .unwrap();
    h.advance("2026-05-01T01:00:00Z");
    // 100 × 1.00 = 100.00 billed; 120 × 0.50 = 60.00 → −40.00; the April invoice is negative and becomes credit,
    // which pays 48.00 of March's open 120.00 at once.
    let april = h.invoices()[1];
    assert_eq!(april.lines[0].amount, Minor(-4000));
    assert_eq!(april.total, Minor(-4800));
    assert!(h.events().any(|e| matches!(e,
        DomainEvent::CreditAdded { source: CreditSource::NegativeInvoice, amount, .. }
            if *amount == Minor(4800))));
    assert_eq!(h.st().credit, Minor::ZERO);
    assert_eq!(h.st().invoices[0].remaining(), Minor(7200));
}

#[test]
fn settlement_uses_credit_then_the_card() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    // 31.00 + 20% = 37.20 due at opening, no method: waits.
    assert_eq!(h.charges().len(), 0);
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("10.00"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.count("invoice_partially_paid"), 1);
    h.attach_card("2026-03-03T00:00:00Z");
    let charges = h.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].2, Minor(2720));
    assert_eq!(charges[0].0, "inv_acct_00001/attempt-1");
    // Next period: credit applied first, rest charged.
    h.pay(
        PaymentKind::PaymentSucceeded {
            charge_id: charges[0].0.clone(),
            invoice_id: charges[0].1.clone(),
            amount: d("27.20"),
            currency: "EUR".into(),
        },
        "2026-03-03T01:00:00Z",
    )
    .unwrap();
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("7.20"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-04T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    assert_eq!(
        (inv.total, inv.credit_applied, inv.amount_due),
        (Minor(3720), Minor(720), Minor(3000))
    );
    assert_eq!(h.charges()[1].2, Minor(3000));
}

#[test]
fn invoice_without_method_waits_for_a_bank_transfer_and_partial_amounts_add_up() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.pay(
        PaymentKind::BankTransferReceived {
            reference: "acct-00001".into(),
            amount: d("20.00"),
            currency: "EUR".into(),
        },
        "2026-03-05T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.count("invoice_partially_paid"), 1);
    h.pay(
        PaymentKind::BankTransferReceived {
            reference: "acct-00001".into(),
            amount: d("20.00"),
            currency: "EUR".into(),
        },
        "2026-03-06T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.count("invoice_paid"), 1);
    // 40.00 − 37.20 = 2.80 overpaid → credit
    assert_eq!(h.st().credit, Minor(280));
}

#[test]
fn top_up_pays_open_invoices_oldest_first() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(h.st().invoices.len(), 2);
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("40.00"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-04-02T00:00:00Z",
    )
    .unwrap();
    let paid: Vec<_> = h
        .events()
        .filter_map(|e| match e {
            DomainEvent::InvoicePaid { invoice_id, .. } => Some(invoice_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(paid, vec!["inv_acct_00001".to_string()]);
    assert_eq!(h.st().invoices[0].invoice_id, "inv_acct_00002");
    assert_eq!(h.st().invoices[0].paid, Minor(280));
}

#[test]
fn issue_13_a_negative_invoices_credit_pays_an_open_invoice() {
    let mut h = Harness::new();
    // Opened on 1 March, no payment method: 31.00 + 20% = 37.20 open.
    h.open("flat", "2026-03-01T00:00:00Z");
    assert_eq!(h.st().invoices.len(), 1);
    // Down to `volume` (no fee) on 2 March: 30 of March's 31 days of the
    // 31.00 fee come back, -30.00, on the draft.
    h.command(
        AccountKind::PlanChanged {
            plan_id: "volume".into(),
            effective: PlanChangeEffective::Immediately,
            version: None,
        },
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-04-01T02:00:00Z");
    // March's invoice: -30.00, tax -6.00, total -36.00, which becomes
    // credit and pays 36.00 of the open 37.20 at once (as a top-up would).
    let march = h.invoices()[1].clone();
    assert_eq!(march.total, Minor(-3600));
    assert!(h.events().any(|e| matches!(e,
        DomainEvent::CreditAdded { source: CreditSource::NegativeInvoice, amount, .. }
            if *amount == Minor(3600))));
    assert!(h.events().any(|e| matches!(e,
        DomainEvent::CreditApplied { invoice_id, amount, .. }
            if invoice_id == "inv_acct_00001" && *amount == Minor(3600))));
    assert_eq!(h.st().credit, Minor::ZERO);
    assert_eq!(h.st().invoices.len(), 1);
    assert_eq!(h.st().invoices[0].remaining(), Minor(120));
}

#[test]
fn success_for_an_already_paid_invoice_becomes_credit() {
    let mut h = Harness::new();
    h.attach_card_after_open();
    let (cid, iid, _, _) = h.charges()[0].clone();
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("37.20"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    h.pay(
        PaymentKind::PaymentSucceeded {
            charge_id: cid,
            invoice_id: iid,
            amount: d("37.20"),
            currency: "EUR".into(),
        },
        "2026-03-02T01:00:00Z",
    )
    .unwrap();
    assert_eq!(h.st().credit, Minor(3720));
    assert_eq!(h.count("payment_succeeded"), 1);
}

impl Harness {
    fn attach_card_after_open(&mut self) {
        self.open("flat", "2026-03-01T00:00:00Z");
        self.attach_card("2026-03-01T00:10:00Z");
    }
}

#[test]
fn result_for_an_unknown_charge_is_rejected() {
    let mut h = Harness::new();
    h.attach_card_after_open();
    let r = h.pay(
        PaymentKind::PaymentFailed {
            charge_id: "inv_acct_00001/attempt-7".into(),
            invoice_id: "inv_acct_00001".into(),
            retryable: true,
            reason: "x".into(),
        },
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(r.unwrap_err().kind(), "unknown_charge");
    let r = h.pay(
        PaymentKind::PaymentSucceeded {
            charge_id: "ch_x".into(),
            invoice_id: "inv_other_00001".into(),
            amount: d("1.00"),
            currency: "EUR".into(),
        },
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(r.unwrap_err().kind(), "unknown_charge");
}

#[test]
fn retryable_failures_follow_the_dunning_schedule_then_stop() {
    let mut h = Harness::new();
    h.attach_card_after_open();
    let fail = |h: &mut Harness, at: &str| {
        let (cid, iid, _, _) = h.charges().last().unwrap().clone();
        h.pay(
            PaymentKind::PaymentFailed {
                charge_id: cid,
                invoice_id: iid,
                retryable: true,
                reason: "insufficient_funds".into(),
            },
            at,
        )
        .unwrap();
    };
    fail(&mut h, "2026-03-01T01:00:00Z");
    h.advance("2026-03-02T00:59:59Z");
    assert_eq!(h.charges().len(), 1);
    h.advance("2026-03-02T01:00:00Z"); // +1 day
    assert_eq!(h.charges().len(), 2);
    fail(&mut h, "2026-03-02T02:00:00Z");
    h.advance("2026-03-05T02:00:00Z"); // +3 days
    assert_eq!(h.charges().len(), 3);
    fail(&mut h, "2026-03-05T03:00:00Z");
    h.advance("2026-03-12T03:00:00Z"); // +7 days
    let charges = h.charges();
    assert_eq!(
        charges.iter().map(|c| c.3).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    fail(&mut h, "2026-03-12T04:00:00Z");
    h.advance("2026-03-30T00:00:00Z");
    assert_eq!(
        h.charges().len(),
        4,
        "no retry after the schedule is exhausted"
    );
    assert!(h.events().any(|e| matches!(
        e,
        DomainEvent::DunningStopped {
            reason: DunningStop::Exhausted,
            ..
        }
    )));
    // Every attempt has its own charge id, derived from (invoice, attempt).
    let ids: std::collections::BTreeSet<_> = charges.iter().map(|c| c.0.clone()).collect();
    assert_eq!(ids.len(), 4);
}

#[test]
fn non_retryable_failure_stops_dunning_until_a_new_method_is_attached() {
    let mut h = Harness::new();
    h.attach_card_after_open();
    let (cid, iid, _, _) = h.charges()[0].clone();
    h.pay(
        PaymentKind::PaymentFailed {
            charge_id: cid,
            invoice_id: iid,
            retryable: false,
            reason: "card_expired".into(),
        },
        "2026-03-01T01:00:00Z",
    )
    .unwrap();
    h.advance("2026-03-10T00:00:00Z");
    assert_eq!(h.charges().len(), 1);
    assert!(h.events().any(|e| matches!(
        e,
        DomainEvent::DunningStopped {
            reason: DunningStop::NonRetryable,
            ..
        }
    )));
    h.attach_card("2026-03-11T00:00:00Z");
    assert_eq!(h.charges().len(), 2);
    assert_eq!(h.charges()[1].3, 2);
}

#[test]
fn unpaid_invoice_goes_overdue_at_its_due_date() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.advance("2026-03-14T23:59:59Z");
    assert_eq!(h.count("invoice_overdue"), 0);
    h.advance("2026-03-15T00:00:00Z");
    assert_eq!(h.count("invoice_overdue"), 1);
    assert_eq!(h.count("account_past_due"), 1);
    h.advance("2026-03-20T00:00:00Z");
    assert_eq!(h.count("invoice_overdue"), 1, "overdue once");
}

#[test]
fn timers_fire_for_an_account_that_receives_no_events() {
    let mut h = Harness::new();
    h.open("flat", "2026-01-01T00:00:00Z");
    h.advance("2026-06-01T02:00:00Z");
    // Opening invoice + 5 period closes, each at its own instant.
    let issued: Vec<_> = h.invoices().iter().map(|i| i.issued_at).collect();
    assert_eq!(issued.len(), 6);
    assert_eq!(issued[1], ts("2026-02-01T01:00:00Z"));
    assert_eq!(issued[5], ts("2026-06-01T01:00:00Z"));
}

#[test]
fn credit_note_becomes_credit_and_debit_adjustment_a_line() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.command(
        AccountKind::AdjustmentIssued {
            adjustment: AdjustmentKind::CreditNote,
            amount: d("37.20"),
            currency: "EUR".into(),
            reason: "goodwill".into(),
            invoice_id: None,
            grant: Default::default(),
        },
        "2026-03-02T00:00:00Z",
    )
    .unwrap();
    assert_eq!(h.count("credit_note_issued"), 1);
    assert_eq!(h.count("invoice_paid"), 1);
    h.command(
        AccountKind::AdjustmentIssued {
            adjustment: AdjustmentKind::Debit,
            amount: d("5.00"),
            currency: "EUR".into(),
            reason: "setup".into(),
            invoice_id: None,
            grant: Default::default(),
        },
        "2026-03-03T00:00:00Z",
    )
    .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    assert!(h.invoices()[1]
        .lines
        .iter()
        .any(|l| l.kind == LineKind::Adjustment && l.amount == Minor(500)));
}

#[test]
fn credit_low_is_sent_once_when_credit_falls_below_the_threshold() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("100.00"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-01T00:01:00Z",
    )
    .unwrap();
    assert_eq!(h.count("credit_low"), 0);
    h.advance("2026-04-01T01:00:00Z"); // 100 − 37.20 − 37.20 = 25.60
    assert_eq!(h.count("credit_low"), 0);
    h.advance("2026-05-01T01:00:00Z"); // 25.60 − 37.20 → 0
    assert_eq!(h.count("credit_low"), 1);
    h.advance("2026-06-01T01:00:00Z");
    assert_eq!(h.count("credit_low"), 1);
}

#[test]
fn expiring_payment_method_is_warned_30_days_ahead() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.pay(
        PaymentKind::PaymentMethodAttached {
            token_ref: "tok".into(),
            brand: "visa".into(),
            last4: "4242".into(),
            expires: "2026-05".into(),
        },
        "2026-03-01T00:01:00Z",
    )
    .unwrap();
    // Valid through May → ends 2026-06-01; warning 30 days before = 2026-05-02.
    h.advance("2026-05-01T23:59:59Z");
    assert_eq!(h.count("payment_method_expiring"), 0);
    h.advance("2026-05-02T00:00:00Z");
    assert_eq!(h.count("payment_method_expiring"), 1);
}

#[test]
fn hourly_rollups_close_with_the_hour_and_late_usage_is_a_correction() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.usage("container.hours", "a", "1", "2026-03-02T10:10:00Z")
        .unwrap();
    h.usage("container.hours", "a", "2", "2026-03-02T10:50:00Z")
        .unwrap();
    h.usage("container.hours", "b", "4", "2026-03-02T10:55:00Z")
        .unwrap();
    h.advance("2026-03-02T11:04:59Z");
    assert_eq!(h.count("usage_rolled_up"), 0);
    h.advance("2026-03-02T11:05:00Z");
    let rollups: Vec<_> = h
        .events()
        .filter_map(|e| match e {
            DomainEvent::UsageRolledUp {
                subject,
                quantity,
                count,
                correction,
                ..
            } => Some((subject.clone(), *quantity, *count, *correction)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rollups,
        vec![
            ("a".into(), d("3"), 2, false),
            ("b".into(), d("4"), 1, false)
        ]
    );
    let id = h.next_id();
    h.usage_at(
        &id,
        "container.hours",
        "a",
        "5",
        ts("2026-03-02T10:30:00Z"),
        ts("2026-03-02T12:00:00Z"),
    )
    .unwrap();
    h.advance("2026-03-02T12:00:00Z");
    assert!(h.events().any(|e| matches!(
        e,
        DomainEvent::UsageRolledUp {
            correction: true,
            count: 1,
            ..
        }
    )));
}

#[test]
fn plan_change_takes_effect_at_the_next_period_start() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.command(
        AccountKind::PlanChanged {
            plan_id: "tiered".into(),
            effective: PlanChangeEffective::NextPeriod,
            version: None,
        },
        "2026-03-10T00:00:00Z",
    )
    .unwrap();
    h.usage("container.hours", "a", "80", "2026-03-11T00:00:00Z")
        .unwrap();
    h.advance("2026-04-01T01:00:00Z");
    let inv = h.invoices()[1];
    // March usage still rated on "flat"; no April fee since "tiered" has none.
    assert_eq!(
        inv.lines.iter().map(|l| l.kind).collect::<Vec<_>>(),
        vec![LineKind::Usage]
    );
    assert_eq!(h.st().plan_id, "tiered");
    assert_eq!(
        h.usage("container.hours", "a", "1", "2026-04-02T00:00:00Z")
            .unwrap_err()
            .kind(),
        "unknown_metric"
    );
}

#[test]
fn closed_account_gets_a_final_invoice_without_fee_and_no_more_periods() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.command(AccountKind::AccountClosed, "2026-03-15T00:00:00Z")
        .unwrap();
    assert_eq!(
        h.usage("container.hours", "a", "1", "2026-03-16T00:00:00Z")
            .unwrap_err()
            .kind(),
        "account_closed"
    );
    h.advance("2026-06-01T00:00:00Z");
    assert_eq!(h.invoices().len(), 2);
    assert!(h.invoices()[1]
        .lines
        .iter()
        .all(|l| l.kind != LineKind::RecurringFee));
}

#[test]
fn duplicate_event_is_ignored_and_same_id_other_payload_is_a_conflict() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let now = ts("2026-03-02T00:00:00Z");
    assert_eq!(
        h.usage_at("u1", "container.hours", "a", "5", now, now),
        Ok(Outcome::Applied)
    );
    let before = h.journal.len();
    assert_eq!(
        h.usage_at("u1", "container.hours", "a", "5.00", now, now),
        Ok(Outcome::Duplicate)
    );
    assert_eq!(h.journal.len(), before);
    assert_eq!(
        h.usage_at("u1", "container.hours", "a", "6", now, now)
            .unwrap_err()
            .kind(),
        "conflict"
    );
    assert_eq!(h.st().open[0].metrics[0].total, d("5"));
}

#[test]
fn validation_rejects_bad_usage_without_changing_state() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let now = ts("2026-03-02T00:00:00Z");
    let cases = [
        ("container.hours", "-1", now, "invalid_quantity"),
        ("container.hours", "1000000000001", now, "invalid_quantity"),
        (
            "container.hours",
            "1",
            now.plus(6 * 60 * 1_000_000),
            "from_future",
        ),
        (
            "container.hours",
            "1",
            ts("2026-02-27T00:00:00Z"),
            "before_account_opened",
        ),
        ("no.such.metric", "1", now, "unknown_metric"),
    ];
    h.advance("2026-03-02T00:00:00Z");
    for (i, (metric, qty, occurred, kind)) in cases.into_iter().enumerate() {
        let before = serde_json::to_string(h.st()).unwrap();
        let r = h.usage_at(&format!("bad{i}"), metric, "a", qty, occurred, now);
        assert_eq!(r.unwrap_err().kind(), kind);
        assert_eq!(
            serde_json::to_string(h.st()).unwrap(),
            before,
            "{kind} changed state"
        );
    }
    // Within the 5 minute tolerance is fine.
    assert!(h
        .usage_at(
            "ok",
            "container.hours",
            "a",
            "1",
            now.plus(4 * 60 * 1_000_000),
            now
        )
        .is_ok());
}

#[test]
fn unknown_account_and_unknown_plan_are_rejected() {
    let mut h = Harness::new();
    let now = ts("2026-03-02T00:00:00Z");
    assert_eq!(
        h.usage_at("u", "container.hours", "a", "1", now, now)
            .unwrap_err()
            .kind(),
        "unknown_account"
    );
    assert_eq!(
        h.feed(open_cmd("o", "nope", now), now).unwrap_err().kind(),
        "unknown_plan"
    );
    assert!(h.state.is_none());
}

#[test]
fn card_number_in_free_text_is_rejected_with_digits_masked_but_ids_are_not_scanned() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let now = ts("2026-03-02T00:00:00Z");
    let mut u = usage(
        "u1",
        "acct",
        "card 4111 1111 1111 1111",
        "container.hours",
        "1",
        now,
    );
    match h.feed(Input::Usage(u.clone()), now) {
        Err(Rejection::CardNumber { field, masked }) => {
            assert_eq!(field, "subject");
            assert_eq!(masked, "card **** **** **** 1111");
        }
        other => panic!("expected card rejection, got {other:?}"),
    }
    u.subject = "app".into();
    u.attributes
        .insert("note".into(), "4111-1111-1111-1111".into());
    assert_eq!(
        h.feed(Input::Usage(u.clone()), now).unwrap_err().kind(),
        "card_number"
    );
    // A UUID whose digit groups pass Luhn is an identifier: never scanned.
    u.attributes.clear();
    u.event_id = "4111111111111111".into();
    assert_eq!(h.feed(Input::Usage(u), now), Ok(Outcome::Applied));
}

#[test]
fn event_for_another_environment_is_rejected_and_never_charges() {
    let mut h = Harness::new();
    h.attach_card_after_open();
    let now = ts("2026-03-02T00:00:00Z");
    let mut u = usage("u", "acct", "a", "container.hours", "1", now);
    u.environment = "staging".into();
    assert_eq!(
        h.feed(Input::Usage(u), now).unwrap_err().kind(),
        "wrong_environment"
    );
    let r = h.feed(
        Input::Payment(PaymentEvent {
            event_id: "p".into(),
            account_id: "acct".into(),
            occurred_at: now,
            environment: Some("test".into()),
            kind: PaymentKind::PaymentMethodAttached {
                token_ref: "t".into(),
                brand: "visa".into(),
                last4: "1111".into(),
                expires: "2030-01".into(),
            },
        }),
        now,
    );
    assert_eq!(r.unwrap_err().kind(), "wrong_environment");
}

#[test]
fn money_with_sub_minor_digits_or_wrong_currency_is_rejected() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let r = h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("1.005"),
            currency: "EUR".into(),
            grant: Default::default(),
        },
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(r.unwrap_err().kind(), "invalid_amount");
    let r = h.pay(
        PaymentKind::CreditToppedUp {
            amount: d("1.00"),
            currency: "USD".into(),
            grant: Default::default(),
        },
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(r.unwrap_err().kind(), "currency_mismatch");
    let r = h.pay(
        PaymentKind::PaymentRefunded {
            amount: d("1.00"),
            currency: "EUR".into(),
            reason: "r".into(),
        },
        "2026-03-02T00:00:00Z",
    );
    assert_eq!(r.unwrap_err().kind(), "refund_exceeds_credit");
}

#[test]
fn resident_state_with_ten_subjects_fits_in_two_kilobytes() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    for s in 0..10 {
        h.usage(
            "container.hours",
            &format!("app-{s}"),
            "1",
            "2026-03-02T00:00:00Z",
        )
        .unwrap();
    }
    h.advance("2026-03-02T02:00:00Z"); // rollup hour closed
    let bytes = h.st().resident_bytes();
    eprintln!("resident state with 10 subjects: {bytes} bytes");
    assert!(bytes <= 2048, "resident state is {bytes} bytes");
}

#[test]
fn draft_shows_the_running_total() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.usage("container.hours", "a", "800", "2026-03-02T00:00:00Z")
        .unwrap();
    let draft = h.engine.draft(h.st());
    // 800 × 0.0125 = 10.00 + next fee 31.00 = 41.00, tax 8.20
    assert_eq!(
        (draft.subtotal, draft.tax, draft.total),
        (Minor(4100), Minor(820), Minor(4920))
    );
    h.advance("2026-04-01T01:00:00Z");
    assert_eq!(h.invoices()[1].total, draft.total);
}

#[test]
fn timers_fire_at_their_own_instant_when_the_clock_jumps() {
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    h.usage("container.hours", "a", "1", "2026-03-01T05:00:00Z")
        .unwrap();
    h.advance("2026-03-20T00:00:00Z");
    let overdue_at = h
        .journal
        .iter()
        .find(|e| e.event.name() == "invoice_overdue")
        .unwrap()
        .at;
    assert_eq!(overdue_at, ts("2026-03-15T00:00:00Z"));
    let rollup_at = h
        .journal
        .iter()
        .find(|e| e.event.name() == "usage_rolled_up")
        .unwrap()
        .at;
    assert_eq!(
        rollup_at.0,
        ts("2026-03-01T06:00:00Z").0 + 5 * 60 * 1_000_000
    );
    assert!(h
        .journal
        .windows(2)
        .all(|w| w[0].seq + 1 == w[1].seq && w[0].at <= w[1].at));
    let _ = (MICROS_PER_DAY, MICROS_PER_HOUR);
}

// ---- issue 12: redelivery after the dedup window, backdated openings ----

/// A stream of one account: opened on `flat` with a card, the opening
/// invoice paid by the card, a top-up, a credit note and March usage;
/// March is issued on 1 April.
fn issue_12_stream(h: &mut Harness) -> Vec<(Input, Timestamp)> {
    let pay = |id: &str, at: &str, kind: PaymentKind| {
        Input::Payment(PaymentEvent {
            event_id: id.into(),
            account_id: "acct".into(),
            occurred_at: ts(at),
            environment: Some("prod".into()),
            kind,
        })
    };
    let mut stream = vec![
        (
            open_cmd("open", "flat", ts("2026-03-01T00:00:00Z")),
            ts("2026-03-01T00:00:00Z"),
        ),
        (
            pay(
                "card",
                "2026-03-01T00:10:00Z",
                PaymentKind::PaymentMethodAttached {
                    token_ref: "tok_1".into(),
                    brand: "visa".into(),
                    last4: "4242".into(),
                    expires: "2030-12".into(),
                },
            ),
            ts("2026-03-01T00:10:00Z"),
        ),
        (
            pay(
                "paid-1",
                "2026-03-01T00:20:00Z",
                PaymentKind::PaymentSucceeded {
                    charge_id: "inv_acct_00001/attempt-1".into(),
                    invoice_id: "inv_acct_00001".into(),
                    amount: d("37.20"),
                    currency: "EUR".into(),
                },
            ),
            ts("2026-03-01T00:20:00Z"),
        ),
        (
            pay(
                "top-up",
                "2026-03-02T00:00:00Z",
                PaymentKind::CreditToppedUp {
                    amount: d("10.00"),
                    currency: "EUR".into(),
                    grant: Default::default(),
                },
            ),
            ts("2026-03-02T00:00:00Z"),
        ),
        (
            Input::Account(AccountCommand {
                event_id: "goodwill".into(),
                account_id: "acct".into(),
                occurred_at: ts("2026-03-02T01:00:00Z"),
                environment: Some("prod".into()),
                kind: AccountKind::AdjustmentIssued {
                    adjustment: AdjustmentKind::CreditNote,
                    amount: d("5.00"),
                    currency: "EUR".into(),
                    reason: "goodwill".into(),
                    invoice_id: None,
                    grant: Default::default(),
                },
            }),
            ts("2026-03-02T01:00:00Z"),
        ),
    ];
    for (i, day) in ["03", "10", "20", "28"].iter().enumerate() {
        let at = ts(&format!("2026-03-{day}T12:00:00Z"));
        stream.push((
            Input::Usage(usage(
                &format!("u{i}"),
                "acct",
                "app",
                "container.hours",
                "800",
                at,
            )),
            at,
        ));
    }
    for (input, now) in &stream {
        assert_eq!(
            h.feed(input.clone(), *now),
            Ok(Outcome::Applied),
            "{input:?}"
        );
    }
    h.advance("2026-04-01T01:00:00Z");
    stream
}

/// (charge id, invoice id, amount, attempt) of each charge request.
type Charges = Vec<(String, String, Minor, u32)>;

/// The invoices and charge requests of a harness.
fn money_out(h: &Harness) -> (Vec<IssuedInvoice>, Charges) {
    (h.invoices().into_iter().cloned().collect(), h.charges())
}

/// What one input of the stream looks like under the same id with another
/// payload (same occurred_at: a producer that reuses an id).
fn issue_12_conflicting(input: &Input) -> Input {
    let mut other = input.clone();
    match &mut other {
        Input::Usage(u) => u.quantity = d("5000"),
        Input::Payment(p) => match &mut p.kind {
            PaymentKind::CreditToppedUp { amount, .. }
            | PaymentKind::PaymentSucceeded { amount, .. } => *amount = d("500.00"),
            PaymentKind::PaymentMethodAttached { token_ref, .. } => *token_ref = "tok_2".into(),
            other => panic!("no conflicting payload for {other:?}"),
        },
        Input::Account(a) => match &mut a.kind {
            AccountKind::AdjustmentIssued { amount, .. } => *amount = d("500.00"),
            AccountKind::AccountOpened { plan_id, .. } => *plan_id = "tiered".into(),
            other => panic!("no conflicting payload for {other:?}"),
        },
    }
    other
}

#[test]
fn issue_12_redelivery_after_the_dedup_window_is_not_billed_twice() {
    // The stream alone, then the same stream with every record delivered
    // again 36 to 40 days after it was first applied (the dedup window is
    // 35 days), once with its own payload and once with another payload
    // under the same id. March is issued then, so usage would be a late
    // line and payments would become credit.
    let mut alone = Harness::new();
    issue_12_stream(&mut alone);
    let mut again = Harness::new();
    let stream = issue_12_stream(&mut again);
    let mut redeliveries: Vec<(Timestamp, Input)> = Vec::new();
    for (input, first_seen) in &stream {
        for days in [36, 40] {
            let now = first_seen.plus(days * MICROS_PER_DAY);
            redeliveries.push((now, input.clone()));
            redeliveries.push((now, issue_12_conflicting(input)));
        }
    }
    redeliveries.sort_by_key(|(now, _)| *now);
    let mut applied_again = Vec::new();
    for (now, redelivered) in redeliveries {
        if let Ok(Outcome::Applied) = again.feed(redelivered.clone(), now) {
            applied_again.push(format!("{} at {now}", redelivered.event_id()));
        }
    }
    assert_eq!(applied_again, Vec::<String>::new(), "applied again");
    alone.advance("2026-06-01T01:00:00Z");
    again.advance("2026-06-01T01:00:00Z");
    assert_eq!(money_out(&again), money_out(&alone));
    assert_eq!(again.st().credit, alone.st().credit);
    assert!(again
        .invoices()
        .iter()
        .all(|i| i.lines.iter().all(|l| l.kind != LineKind::LateUsage)));
}

#[test]
fn issue_12_redelivered_payments_after_the_dedup_window_never_become_credit() {
    let mut h = Harness::new();
    let stream = issue_12_stream(&mut h);
    let credit = h.st().credit;
    let charges = h.charges();
    // The top-up, the card's success for the paid opening invoice and the
    // credit note, delivered again 38 days later.
    for (input, first_seen) in &stream[2..5] {
        let now = first_seen.plus(38 * MICROS_PER_DAY);
        for redelivered in [input.clone(), issue_12_conflicting(input)] {
            let r = h.feed(redelivered.clone(), now);
            assert_eq!(
                r.as_ref().map_err(Rejection::kind),
                Err("too_late"),
                "{redelivered:?}"
            );
            let reason = r.unwrap_err().to_string();
            assert!(
                reason.ends_with("the earliest billing.late_window (35d) accepts: dedup may have forgotten an older id"),
                "{reason}"
            );
            assert_eq!(h.st().credit, credit, "{redelivered:?} changed the credit");
        }
    }
    assert_eq!(h.charges(), charges);
}

#[test]
fn issue_12_an_event_dated_ahead_of_the_clock_is_remembered_while_it_can_be_accepted() {
    // Usage 4 minutes ahead of the clock (inside the 5-minute tolerance)
    // is remembered from its own time, not from the processing clock:
    // delivered again just inside 35 days of its occurred_at, it is a
    // duplicate, not a second late line.
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let seen = ts("2026-03-02T00:00:00Z");
    let occurred = seen.plus(4 * 60 * 1_000_000);
    let r = h.usage_at("ahead", "container.hours", "a", "100", occurred, seen);
    assert_eq!(r, Ok(Outcome::Applied));
    let again = occurred.plus(35 * MICROS_PER_DAY - 60 * 1_000_000);
    let r = h.usage_at("ahead", "container.hours", "a", "100", occurred, again);
    assert_eq!(r, Ok(Outcome::Duplicate));
    let r = h.usage_at("ahead", "container.hours", "a", "7", occurred, again);
    assert_eq!(r.map_err(|e| e.kind()), Err("conflict"));
    assert!(h.st().pending_lines.is_empty());
}

#[test]
fn issue_12_a_processing_clock_that_steps_back_does_not_reopen_the_window() {
    // The account's clock reached 10 April; a later input carries an
    // earlier processing instant (a restarted instance with a skewed
    // clock). Usage of 2 March, forgotten by then, stays too late.
    let mut h = Harness::new();
    h.open("flat", "2026-03-01T00:00:00Z");
    let first = ts("2026-03-02T00:00:00Z");
    h.usage_at("u", "container.hours", "a", "100", first, first)
        .unwrap();
    h.advance("2026-04-10T00:00:00Z");
    let back = ts("2026-04-01T12:00:00Z");
    let r = h.usage_at("u", "container.hours", "a", "100", first, back);
    assert!(!matches!(r, Ok(Outcome::Applied)), "{r:?}");
    assert!(h.st().pending_lines.is_empty());
}

#[test]
fn issue_12_opening_backdated_beyond_max_backdating_is_dead_lettered() {
    let mut h = Harness::new();
    let now = ts("2026-03-01T02:00:00Z");
    // Thirty years back: hundreds of periods to close in one apply.
    let r = h.feed(open_cmd("old", "flat", ts("1996-03-01T00:00:00Z")), now);
    let e = r.unwrap_err();
    assert_eq!(e.kind(), "too_late");
    assert_eq!(
        e.to_string(),
        "occurred_at 1996-03-01T00:00:00Z is before 2025-01-25T02:00:00Z, the earliest \
         billing.max_backdating (400d) accepts for an AccountOpened"
    );
    assert!(h.state.is_none());
    assert!(h.journal.is_empty());
    // Within the limit (default 400 days) it still opens and catches up.
    let r = h.feed(open_cmd("recent", "flat", ts("2025-06-01T00:00:00Z")), now);
    assert_eq!(r, Ok(Outcome::Applied));
    assert_eq!(h.st().opened_at, ts("2025-06-01T00:00:00Z"));
    // June 2025 … February 2026 issued, March 2026 is the draft.
    assert_eq!(h.st().current.start, ts("2026-03-01T00:00:00Z"));
    assert_eq!(h.invoices().len(), 10);
}
