//! The demo's accounts, their usage, and how the gateway and customers
//! answer outputs (charge requests, invoices, credit-low notices).
//!
//! Besides the plain hosting plans the world shows each pricing feature
//! (issue 13): a `team` plan billing seats on `latest`, a `hosting-95` plan
//! billing bandwidth on the 95th `percentile` of hourly maxima, promotional
//! credit grants that expire during the run, immediate upgrades, spend
//! thresholds and coupons. The first six accounts (when there are that
//! many) show one feature each for sure; the rest get them at random.

use std::collections::BTreeMap;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::Value;

use super::gateway::{is_final_decline, DemoGateway};
use crate::contracts::{OutputRecord, OutputTopic};
use crate::engine::aggregation::{Aggregation, AggregationSpec};
use crate::engine::credit::{GrantKind, GrantTerms};
use crate::engine::discount::CouponTerms;
use crate::engine::events::*;
use crate::engine::money::Currency;
use crate::engine::plan::{Charge, Model, Plan, Tier};
use crate::engine::time::{Anchor, Timestamp, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("literal decimal")
}

fn charge(
    metric: &str,
    model: Model,
    unit_price: &str,
    free: &str,
    package: Option<&str>,
    tiers: Vec<Tier>,
) -> Charge {
    Charge {
        metric: metric.into(),
        model,
        unit_price: d(unit_price),
        package_size: package.map(d),
        free_units: d(free),
        tiers,
        aggregation: Default::default(),
    }
}

/// A per-unit charge on a non-`sum` aggregation.
fn aggregated(metric: &str, unit_price: &str, aggregation: AggregationSpec) -> Charge {
    Charge {
        aggregation,
        ..charge(metric, Model::PerUnit, unit_price, "0", None, vec![])
    }
}

fn tier(up_to: Option<&str>, unit_price: &str, flat_fee: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_price: d(unit_price),
        flat_fee: d(flat_fee),
    }
}

/// The demo price book: flat and tiered hosting plans, a pure usage plan
/// with a minimum spend, a streaming tariff, a per-seat plan billed on the
/// latest seat count and a hosting plan billing bandwidth on the 95th
/// percentile. Indexed as `PLAN_NAMES`.
pub fn demo_plans() -> Vec<Plan> {
    let eur = Currency::from_code("EUR").expect("EUR");
    let usd = Currency::from_code("USD").expect("USD");
    vec![
        Plan {
            plan_id: "starter".into(),
            currency: eur,
            recurring_fee: d("9.00"),
            minimum_spend: Decimal::ZERO,
            version: 1,
            charges: vec![
                charge(
                    "container.hours",
                    Model::PerUnit,
                    "0.0125",
                    "50",
                    None,
                    vec![],
                ),
                charge("disk.gb_hours", Model::PerUnit, "0.0002", "0", None, vec![]),
                charge(
                    "api.calls",
                    Model::Package,
                    "0.40",
                    "10000",
                    Some("10000"),
                    vec![],
                ),
            ],
        },
        Plan {
            plan_id: "pro".into(),
            currency: eur,
            recurring_fee: d("49.00"),
            minimum_spend: Decimal::ZERO,
            version: 1,
            charges: vec![
                charge(
                    "container.hours",
                    Model::Graduated,
                    "0",
                    "0",
                    None,
                    vec![
                        tier(Some("500"), "0.012", "0"),
                        tier(Some("2000"), "0.010", "0"),
                        tier(None, "0.008", "5.00"),
                    ],
                ),
                charge(
                    "disk.gb_hours",
                    Model::Volume,
                    "0",
                    "0",
                    None,
                    vec![
                        tier(Some("100000"), "0.00015", "0"),
                        tier(None, "0.00010", "2.00"),
                    ],
                ),
                charge(
                    "api.calls",
                    Model::PerUnit,
                    "0.00002",
                    "100000",
                    None,
                    vec![],
                ),
            ],
        },
        Plan {
            plan_id: "metered".into(),
            currency: usd,
            recurring_fee: Decimal::ZERO,
            minimum_spend: d("20.00"),
            version: 1,
            charges: vec![
                charge(
                    "container.hours",
                    Model::PerUnit,
                    "0.015",
                    "0",
                    None,
                    vec![],
                ),
                charge(
                    "disk.gb_hours",
                    Model::Graduated,
                    "0",
                    "0",
                    None,
                    vec![
                        tier(Some("50000"), "0.0002", "0"),
                        tier(None, "0.0001", "0"),
                    ],
                ),
                charge(
                    "api.calls",
                    Model::Package,
                    "0.25",
                    "0",
                    Some("5000"),
                    vec![],
                ),
            ],
        },
        Plan {
            plan_id: "stream".into(),
            currency: eur,
            recurring_fee: d("12.99"),
            minimum_spend: Decimal::ZERO,
            version: 1,
            charges: vec![],
        },
        Plan {
            plan_id: "team".into(),
            currency: eur,
            recurring_fee: d("5.00"),
            minimum_spend: Decimal::ZERO,
            version: 1,
            charges: vec![aggregated(
                SEATS,
                "8.00",
                AggregationSpec {
                    kind: Aggregation::Latest,
                    ..Default::default()
                },
            )],
        },
        Plan {
            plan_id: "hosting-95".into(),
            currency: usd,
            recurring_fee: d("20.00"),
            minimum_spend: Decimal::ZERO,
            version: 1,
            charges: vec![
                // Sampled every three hours: hourly windows (5-minute ones
                // would leave over 95% of the windows empty, and the 95th
                // percentile at zero).
                aggregated(
                    BANDWIDTH,
                    "0.35",
                    AggregationSpec {
                        kind: Aggregation::Percentile,
                        percentile: Some(d("95")),
                        window: Some("1h".into()),
                        ..Default::default()
                    },
                ),
                charge("disk.gb_hours", Model::PerUnit, "0.0002", "0", None, vec![]),
            ],
        },
    ]
}

/// Plan names by index in `demo_plans`.
const PLAN_NAMES: [&str; 6] = ["starter", "pro", "metered", "stream", "team", "hosting-95"];
const STARTER: usize = 0;
const PRO: usize = 1;
const METERED: usize = 2;
const STREAM: usize = 3;
const TEAM: usize = 4;
const HOSTING: usize = 5;
const SEATS: &str = "seats";
const BANDWIDTH: &str = "bandwidth.mbps";

const TIMEZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Europe/London",
];
const METRICS: &[&str] = &["container.hours", "disk.gb_hours", "api.calls"];

/// How an account pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payer {
    /// Saved card; `flaky` cards fail often, `expired` ones fail for good once.
    Card { flaky: bool, expired: bool },
    /// Tops up credit when asked.
    Prepaid,
    /// Pays invoices by bank transfer; `late` ones never pay.
    Transfer { never: bool },
}

/// The pricing features an account shows, beyond its plan's charges.
#[derive(Debug, Clone, Copy, Default)]
struct Extras {
    /// A promotional credit grant shortly after opening, expiring within
    /// the run.
    promo: bool,
    /// Moved at once (`effective: immediately`) to another plan on the
    /// 17th of the first month, in its timezone.
    upgrade: bool,
    /// Spend thresholds just above its recurring fee, and threshold
    /// invoicing (`invoice_at` 40).
    thresholds: bool,
    /// A coupon: 20% off for two periods, or 5.00 off each invoice.
    coupon: bool,
}

struct Account {
    id: String,
    plan: usize,
    payer: Payer,
    opened_at: Timestamp,
    /// Typical daily volume per metric.
    scale: [f64; 3],
    closes_at: Option<Timestamp>,
    extras: Extras,
    /// Seats in use (plan `team`), a gauge that moves now and then.
    seats: u32,
    /// Cards attached so far (new token references for replacements).
    cards: u32,
}

/// What the world puts on the input topics.
#[derive(Debug, Clone)]
pub enum WorldEvent {
    Input(Input),
    /// Bytes that do not decode (a broken producer).
    Garbage(Vec<u8>),
    /// Generate the next day's usage.
    Day(u32),
}

/// An event to deliver at a time.
pub struct Reaction {
    pub at: Timestamp,
    pub event: WorldEvent,
}

pub struct World {
    rng: ChaCha8Rng,
    gateway: DemoGateway,
    accounts: Vec<Account>,
    index: BTreeMap<String, usize>,
    pub start: Timestamp,
    pub days: u32,
    environment: String,
    seq: u64,
}

fn money(x: f64) -> Decimal {
    Decimal::from_f64_retain(x).unwrap_or_default().round_dp(2)
}

impl World {
    pub fn new(
        seed: u64,
        accounts: usize,
        start: Timestamp,
        days: u32,
        environment: &str,
        gateway: DemoGateway,
    ) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut list = Vec::with_capacity(accounts);
        for i in 0..accounts {
            let plan = match rng.random_range(0..100) {
                0..34 => STARTER,
                34..56 => PRO,
                56..68 => METERED,
                68..82 => STREAM,
                82..92 => TEAM,
                _ => HOSTING,
            };
            let payer = match rng.random_range(0..100) {
                0..55 => Payer::Card {
                    flaky: rng.random_bool(0.12),
                    expired: rng.random_bool(0.04),
                },
                55..75 => Payer::Prepaid,
                _ => Payer::Transfer {
                    never: rng.random_bool(0.1),
                },
            };
            // Most accounts exist from the start; some open during the first weeks.
            let opened_at = if rng.random_bool(0.7) {
                start.plus(rng.random_range(0..MICROS_PER_HOUR))
            } else {
                start.plus(rng.random_range(0..20 * MICROS_PER_DAY))
            };
            let big = if rng.random_bool(0.1) { 20.0 } else { 1.0 };
            let scale = [
                rng.random_range(5.0..60.0) * big,
                rng.random_range(500.0..5000.0) * big,
                rng.random_range(500.0..20000.0) * big,
            ];
            let closes_at = rng
                .random_bool(0.02)
                .then(|| start.plus(rng.random_range(35..(days.max(36) as i64)) * MICROS_PER_DAY));
            let extras = Extras {
                promo: rng.random_bool(0.08),
                upgrade: rng.random_bool(0.03),
                thresholds: rng.random_bool(0.08),
                coupon: rng.random_bool(0.06),
            };
            let seats = rng.random_range(3..40);
            let mut a = Account {
                id: format!("acct-{i:05}"),
                plan,
                payer,
                opened_at,
                scale,
                closes_at,
                extras,
                seats,
                cards: 0,
            };
            showcase(i, &mut a, start);
            list.push(a);
        }
        let index = list
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        World {
            rng,
            gateway,
            accounts: list,
            index,
            start,
            days,
            environment: environment.to_string(),
            seq: 0,
        }
    }

    pub fn plan_of(&self, account_id: &str) -> Option<&'static str> {
        self.index
            .get(account_id)
            .map(|i| PLAN_NAMES[self.accounts[*i].plan])
    }

    /// What the gateway did so far.
    pub fn gateway_report(&self) -> &super::gateway::GatewayReport {
        &self.gateway.report
    }

    fn account_command(
        &mut self,
        prefix: &str,
        account: &str,
        at: Timestamp,
        kind: AccountKind,
    ) -> Reaction {
        let event_id = self.id(prefix);
        Reaction {
            at,
            event: WorldEvent::Input(Input::Account(AccountCommand {
                event_id,
                account_id: account.into(),
                occurred_at: at,
                environment: Some(self.environment.clone()),
                kind,
            })),
        }
    }

    /// A saved card of account `i`: its provider is named in the token
    /// reference (flaky cards are with `riskpay`), and a card that expires
    /// carries its month there too, for the gateway.
    fn card(&mut self, i: usize, at: Timestamp, flaky: bool, expires: &str) -> Reaction {
        let provider = if flaky { "riskpay" } else { "acme" };
        let a = &mut self.accounts[i];
        a.cards += 1;
        let n = a.cards;
        let account = a.id.clone();
        let exp = if expires < "2029" {
            format!("exp{}_", expires.replace('-', ""))
        } else {
            String::new()
        };
        let (brand, last4) = if n == 1 {
            ("visa".to_string(), format!("{:04}", 1000 + i % 9000))
        } else {
            (
                "mastercard".to_string(),
                format!("{:04}", 5000 + (i + n as usize) % 4000),
            )
        };
        Reaction {
            at,
            event: self.payment(
                &account,
                at,
                PaymentKind::PaymentMethodAttached {
                    token_ref: format!("tok_{provider}_{exp}c{i:06}n{n}"),
                    brand,
                    last4,
                    expires: expires.into(),
                },
            ),
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{:08x}", self.seq)
    }

    fn payment(&mut self, account: &str, at: Timestamp, kind: PaymentKind) -> WorldEvent {
        let event_id = self.id("pay");
        WorldEvent::Input(Input::Payment(PaymentEvent {
            event_id,
            account_id: account.into(),
            occurred_at: at,
            environment: Some(self.environment.clone()),
            kind,
        }))
    }

    /// Account openings, first top-ups, saved cards, closures: the events known up front.
    pub fn initial_events(&mut self) -> Vec<Reaction> {
        let plans = demo_plans();
        let mut out = Vec::new();
        for i in 0..self.accounts.len() {
            let (id, plan, payer, at, closes_at, extras) = {
                let a = &self.accounts[i];
                (
                    a.id.clone(),
                    a.plan,
                    a.payer,
                    a.opened_at,
                    a.closes_at,
                    a.extras,
                )
            };
            let mut tz = TIMEZONES[self.rng.random_range(0..TIMEZONES.len())];
            if i == 3 {
                tz = "Asia/Tokyo"; // the showcase upgrade, as in the simulate golden test
            }
            let tax = ["0.19", "0.20", "0.07", "0"][self.rng.random_range(0..4)];
            let currency = plans[plan].currency.code().to_string();
            let event_id = self.id("open");
            out.push(Reaction {
                at,
                event: WorldEvent::Input(Input::Account(AccountCommand {
                    event_id,
                    account_id: id.clone(),
                    occurred_at: at,
                    environment: Some(self.environment.clone()),
                    kind: AccountKind::AccountOpened {
                        plan_id: plans[plan].plan_id.clone(),
                        currency: currency.clone(),
                        timezone: tz.into(),
                        tax_rate: d(tax),
                        billing_anchor: Anchor::Calendar,
                        thresholds: Vec::new(),
                        invoice_at: None,
                    },
                })),
            });
            let soon = at.plus(
                self.rng
                    .random_range(MICROS_PER_MINUTE..30 * MICROS_PER_MINUTE),
            );
            match payer {
                Payer::Card { flaky, expired } => {
                    // Some cards expire during the demo, to show the expiry
                    // warning (and the gateway's expired_card decline after
                    // it); some have expired already.
                    let expires = if expired {
                        "2025-12"
                    } else if self.rng.random_bool(0.1) {
                        "2026-02"
                    } else {
                        "2029-08"
                    };
                    out.push(self.card(i, soon, flaky, expires));
                }
                Payer::Prepaid => {
                    let amount = money(self.rng.random_range(50.0..200.0));
                    out.push(Reaction {
                        at: soon,
                        event: self.payment(
                            &id,
                            soon,
                            PaymentKind::CreditToppedUp {
                                amount,
                                currency: currency.clone(),
                                grant: Default::default(),
                            },
                        ),
                    });
                }
                Payer::Transfer { .. } => {}
            }
            if let Some(c) = closes_at {
                let event_id = self.id("close");
                out.push(Reaction {
                    at: c,
                    event: WorldEvent::Input(Input::Account(AccountCommand {
                        event_id,
                        account_id: id.clone(),
                        occurred_at: c,
                        environment: Some(self.environment.clone()),
                        kind: AccountKind::AccountClosed,
                    })),
                });
            }
            out.extend(self.features(i, &plans[plan], tz, soon));
            // A few plan changes and goodwill credit notes.
            // (Between the EUR plans that bill the same metrics: a team
            // moved to starter would go on reporting seats.)
            if self.rng.random_bool(0.03)
                && matches!(plan, STARTER | PRO | STREAM)
                && !extras.upgrade
            {
                let c = self
                    .start
                    .plus(self.rng.random_range(25..50) * MICROS_PER_DAY);
                let event_id = self.id("plan");
                let to = if plan == 0 { "pro" } else { "starter" };
                out.push(Reaction {
                    at: c,
                    event: WorldEvent::Input(Input::Account(AccountCommand {
                        event_id,
                        account_id: id.clone(),
                        occurred_at: c,
                        environment: Some(self.environment.clone()),
                        kind: AccountKind::PlanChanged {
                            plan_id: to.into(),
                            effective: Default::default(),
                            version: None,
                        },
                    })),
                });
            }
            if self.rng.random_bool(0.01) {
                let c = self
                    .start
                    .plus(self.rng.random_range(30..60) * MICROS_PER_DAY);
                let event_id = self.id("adj");
                out.push(Reaction {
                    at: c,
                    event: WorldEvent::Input(Input::Account(AccountCommand {
                        event_id,
                        account_id: id.clone(),
                        occurred_at: c,
                        environment: Some(self.environment.clone()),
                        kind: AccountKind::AdjustmentIssued {
                            adjustment: AdjustmentKind::CreditNote,
                            amount: d("5.00"),
                            currency,
                            reason: "goodwill: outage on 2026-01-12".into(),
                            invoice_id: None,
                            grant: Default::default(),
                        },
                    })),
                });
            }
        }
        out.push(Reaction {
            at: self.start,
            event: WorldEvent::Day(0),
        });
        out
    }

    /// The pricing-feature commands of account `i` (on `plan`, in `tz`),
    /// from `soon` after its opening: a promotional grant, an immediate
    /// upgrade on the 17th, spend thresholds, a coupon.
    fn features(&mut self, i: usize, plan: &Plan, tz: &str, soon: Timestamp) -> Vec<Reaction> {
        let (id, extras, opened) = {
            let a = &self.accounts[i];
            (a.id.clone(), a.extras, a.opened_at)
        };
        let currency = plan.currency.code().to_string();
        let mut out = Vec::new();
        if extras.promo {
            // Welcome credit two days in, expiring 10 to 40 days later:
            // drawn by a close before that, else it expires (in part).
            let at = opened.plus(2 * MICROS_PER_DAY + self.rng.random_range(0..MICROS_PER_HOUR));
            let days = if i == 2 {
                19
            } else {
                self.rng.random_range(10..40)
            };
            let amount = if i == 2 {
                d("15.00")
            } else {
                money(self.rng.random_range(10.0..40.0))
            };
            out.push(Reaction {
                at,
                event: self.payment(
                    &id,
                    at,
                    PaymentKind::CreditToppedUp {
                        amount,
                        currency: currency.clone(),
                        grant: GrantTerms {
                            kind: GrantKind::Promotional,
                            expires_at: Some(at.plus(days * MICROS_PER_DAY)),
                            priority: 0,
                        },
                    },
                ),
            });
        }
        let upgrade_to = match plan.plan_id.as_str() {
            "starter" | "stream" => Some("pro"),
            _ => None,
        };
        if let (true, Some(to)) = (extras.upgrade, upgrade_to) {
            if let Some(at) = seventeenth_after(opened, tz) {
                out.push(self.account_command(
                    "upgrade",
                    &id,
                    at,
                    AccountKind::PlanChanged {
                        plan_id: to.into(),
                        effective: PlanChangeEffective::Immediately,
                        version: None,
                    },
                ));
            }
        }
        if extras.thresholds {
            // Just above the fee that is on the draft from the start.
            let thresholds = ["5", "20", "50"]
                .iter()
                .map(|x| plan.recurring_fee + d(x))
                .collect();
            out.push(self.account_command(
                "alerts",
                &id,
                soon.plus(MICROS_PER_MINUTE),
                AccountKind::ThresholdsSet {
                    thresholds,
                    currency: currency.clone(),
                    // Threshold invoicing: an interim invoice whenever 40
                    // of usage has accrued.
                    invoice_at: Some(d("40")),
                    keeps_invoice_at: false,
                },
            ));
        }
        if extras.coupon {
            let coupon = if i == 5 || self.rng.random_bool(0.5) {
                CouponTerms {
                    coupon_id: "WELCOME20".into(),
                    percent_off: Some(d("20")),
                    amount_off: None,
                    currency: None,
                    periods: Some(2),
                    charges: vec![],
                }
            } else {
                CouponTerms {
                    coupon_id: "LOYAL5".into(),
                    percent_off: None,
                    amount_off: Some(d("5.00")),
                    currency: Some(currency),
                    periods: None,
                    charges: vec![],
                }
            };
            out.push(self.account_command(
                "coupon",
                &id,
                soon.plus(2 * MICROS_PER_MINUTE),
                AccountKind::CouponApplied { coupon },
            ));
        }
        out
    }

    /// One day of usage for every account, with a sprinkle of duplicates,
    /// late deliveries and malformed records; plus the next day's tick.
    pub fn day(&mut self, day: u32) -> Vec<Reaction> {
        let mut out = Vec::new();
        let day_start = self.start.plus(i64::from(day) * MICROS_PER_DAY);
        for i in 0..self.accounts.len() {
            let (id, plan, scale, opened, closes) = {
                let a = &self.accounts[i];
                (a.id.clone(), a.plan, a.scale, a.opened_at, a.closes_at)
            };
            if closes.is_some_and(|c| day_start >= c) {
                continue;
            }
            match plan {
                STREAM => continue, // the streaming tariff has no metered usage
                TEAM => {
                    out.extend(self.seat_reading(i, day_start));
                    continue;
                }
                HOSTING => {
                    out.extend(self.bandwidth_samples(i, day_start));
                }
                _ => {}
            }
            for (m, metric) in METRICS.iter().enumerate() {
                if plan == HOSTING && *metric != "disk.gb_hours" {
                    continue;
                }
                let n = self.rng.random_range(1..4);
                for _ in 0..n {
                    let at = day_start.plus(self.rng.random_range(0..MICROS_PER_DAY));
                    if at < opened || closes.is_some_and(|c| at >= c) {
                        continue;
                    }
                    let qty = Decimal::from_f64_retain(
                        scale[m] / n as f64 * self.rng.random_range(0.5..1.5),
                    )
                    .unwrap_or_default()
                    .round_dp(3);
                    let event_id = self.id("use");
                    let subject = format!("app-{}", self.rng.random_range(0..4));
                    let usage = UsageRecorded {
                        event_id,
                        account_id: id.clone(),
                        subject,
                        metric: (*metric).into(),
                        quantity: qty,
                        occurred_at: at,
                        environment: self.environment.clone(),
                        attributes: [("region".to_string(), "eu-west".to_string())]
                            .into_iter()
                            .collect(),
                    };
                    // Delivery: usually within a minute, sometimes days late.
                    let delay = if self.rng.random_bool(0.005) {
                        self.rng
                            .random_range(2 * MICROS_PER_DAY..10 * MICROS_PER_DAY)
                    } else {
                        self.rng.random_range(0..MICROS_PER_MINUTE)
                    };
                    if self.rng.random_bool(0.005) {
                        let again = at.plus(delay + self.rng.random_range(0..3 * MICROS_PER_DAY));
                        out.push(Reaction {
                            at: again,
                            event: WorldEvent::Input(Input::Usage(usage.clone())),
                        });
                    }
                    out.push(Reaction {
                        at: at.plus(delay),
                        event: WorldEvent::Input(Input::Usage(usage)),
                    });
                }
            }
        }
        // Malformed and hostile records, a few a day.
        for _ in 0..4 {
            let i = self.rng.random_range(0..self.accounts.len());
            let id = self.accounts[i].id.clone();
            let at = day_start.plus(self.rng.random_range(MICROS_PER_HOUR..MICROS_PER_DAY));
            let event_id = self.id("bad");
            let mut u = UsageRecorded {
                event_id,
                account_id: id,
                subject: "app-0".into(),
                metric: "container.hours".into(),
                quantity: d("1"),
                occurred_at: at,
                environment: self.environment.clone(),
                attributes: Default::default(),
            };
            let event = match self.rng.random_range(0..8) {
                0 => {
                    u.quantity = d("-3");
                    WorldEvent::Input(Input::Usage(u))
                }
                1 => {
                    u.metric = "gpu.hours".into();
                    WorldEvent::Input(Input::Usage(u))
                }
                2 => {
                    u.subject = "paid with 4111 1111 1111 1111".into();
                    WorldEvent::Input(Input::Usage(u))
                }
                3 => {
                    u.environment = "staging".into();
                    WorldEvent::Input(Input::Usage(u))
                }
                4 => {
                    u.occurred_at = at.plus(2 * MICROS_PER_DAY);
                    WorldEvent::Input(Input::Usage(u))
                }
                5 => {
                    u.account_id = "acct-unknown".into();
                    WorldEvent::Input(Input::Usage(u))
                }
                6 => WorldEvent::Garbage(b"\x00\x00\x00\x00\x01\x02".to_vec()),
                _ => WorldEvent::Garbage(b"{\"specversion\":\"1.0\",\"data\":".to_vec()),
            };
            out.push(Reaction { at, event });
        }
        if day + 1 < self.days {
            out.push(Reaction {
                at: day_start.plus(MICROS_PER_DAY),
                event: WorldEvent::Day(day + 1),
            });
        }
        out
    }

    /// A usage event of account `i`, delivered within a minute.
    fn usage(&mut self, i: usize, metric: &str, quantity: Decimal, at: Timestamp) -> Reaction {
        let event_id = self.id("use");
        let delay = self.rng.random_range(0..MICROS_PER_MINUTE);
        Reaction {
            at: at.plus(delay),
            event: WorldEvent::Input(Input::Usage(UsageRecorded {
                event_id,
                account_id: self.accounts[i].id.clone(),
                subject: "org".into(),
                metric: metric.into(),
                quantity,
                occurred_at: at,
                environment: self.environment.clone(),
                attributes: Default::default(),
            })),
        }
    }

    /// The day's seat count of a `team` account (billed on `latest`): the
    /// team grows or shrinks by a few seats now and then.
    fn seat_reading(&mut self, i: usize, day_start: Timestamp) -> Option<Reaction> {
        let at = day_start.plus(self.rng.random_range(0..MICROS_PER_DAY));
        if at < self.accounts[i].opened_at {
            return None;
        }
        if self.rng.random_bool(0.2) {
            let step = self.rng.random_range(1..4);
            let a = &mut self.accounts[i];
            a.seats = if self.rng.random_bool(0.6) {
                a.seats + step
            } else {
                a.seats.saturating_sub(step).max(1)
            };
        }
        let seats = Decimal::from(self.accounts[i].seats);
        Some(self.usage(i, SEATS, seats, at))
    }

    /// Bandwidth samples of a `hosting-95` account, one every three hours,
    /// with the odd burst (billed on the 95th percentile, bursts forgiven).
    fn bandwidth_samples(&mut self, i: usize, day_start: Timestamp) -> Vec<Reaction> {
        let (opened, base) = {
            let a = &self.accounts[i];
            (a.opened_at, a.scale[0] * 4.0)
        };
        let mut out = Vec::new();
        for slot in 0..8 {
            let at = day_start
                .plus(slot * 3 * MICROS_PER_HOUR + self.rng.random_range(0..3 * MICROS_PER_HOUR));
            if at < opened {
                continue;
            }
            let burst = if self.rng.random_bool(0.03) { 8.0 } else { 1.0 };
            let mbps = Decimal::from_f64_retain(base * burst * self.rng.random_range(0.6..1.4))
                .unwrap_or_default()
                .round_dp(1);
            out.push(self.usage(i, BANDWIDTH, mbps, at));
        }
        out
    }

    /// How the gateway and the customers answer what billstream published.
    pub fn react(&mut self, records: &[OutputRecord], now: Timestamp) -> Vec<Reaction> {
        let mut out = Vec::new();
        for r in records {
            let j = &r.json;
            let Some(&i) = self.index.get(&r.key) else {
                continue;
            };
            let payer = self.accounts[i].payer;
            let account = r.key.clone();
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            match (r.topic, r.kind, payer) {
                (OutputTopic::Charges, _, _) => {
                    // The gateway emulator's outcome function answers; a
                    // request it cannot answer stays unanswered (the
                    // emulator would dead-letter it) and the invoice goes
                    // overdue.
                    let Ok(deliveries) = self.gateway.answer(r) else {
                        continue;
                    };
                    let mut final_decline = false;
                    for d in deliveries {
                        final_decline |= is_final_decline(&d.input);
                        let after = i64::try_from(d.after.as_micros()).unwrap_or(i64::MAX);
                        out.push(Reaction {
                            at: now.plus(after),
                            event: WorldEvent::Input(d.input),
                        });
                    }
                    if final_decline {
                        // Most customers replace a card declined for good
                        // (expired, stolen) a few days later, with a
                        // reliable one; the others let the invoice go overdue.
                        if self.rng.random_bool(0.8) {
                            let at = now.plus(self.rng.random_range(2..6) * MICROS_PER_DAY);
                            self.accounts[i].payer = Payer::Card {
                                flaky: false,
                                expired: false,
                            };
                            out.push(self.card(i, at, false, "2030-11"));
                        }
                    }
                }
                (OutputTopic::Invoices, "InvoiceIssued", Payer::Transfer { never }) => {
                    let due: Decimal = j["amount_due"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_default();
                    if due <= Decimal::ZERO || never {
                        continue;
                    }
                    let at = now.plus(self.rng.random_range(1..20) * MICROS_PER_DAY);
                    let (reference, currency) = (s(&j["number"]), s(&j["currency"]));
                    if self.rng.random_bool(0.15) {
                        // Paid in two parts.
                        let half = (due / Decimal::TWO).round_dp(2);
                        out.push(Reaction {
                            at,
                            event: self.payment(
                                &account,
                                at,
                                PaymentKind::BankTransferReceived {
                                    reference: reference.clone(),
                                    amount: half,
                                    currency: currency.clone(),
                                },
                            ),
                        });
                        let at = at.plus(3 * MICROS_PER_DAY);
                        out.push(Reaction {
                            at,
                            event: self.payment(
                                &account,
                                at,
                                PaymentKind::BankTransferReceived {
                                    reference,
                                    amount: due - half,
                                    currency,
                                },
                            ),
                        });
                    } else {
                        out.push(Reaction {
                            at,
                            event: self.payment(
                                &account,
                                at,
                                PaymentKind::BankTransferReceived {
                                    reference,
                                    amount: due,
                                    currency,
                                },
                            ),
                        });
                    }
                }
                (OutputTopic::Invoices, "InvoiceIssued", Payer::Prepaid)
                | (OutputTopic::Notifications, "Notification", Payer::Prepaid) => {
                    let wants = match r.kind {
                        "InvoiceIssued" => j["amount_due"]
                            .as_str()
                            .and_then(|a| a.parse::<Decimal>().ok())
                            .is_some_and(|a| a > Decimal::ZERO),
                        _ => j["kind"].as_str() == Some("credit_low"),
                    };
                    if !wants {
                        continue;
                    }
                    let at = now.plus(self.rng.random_range(MICROS_PER_HOUR..3 * MICROS_PER_DAY));
                    let amount = money(self.rng.random_range(60.0..250.0));
                    let currency = s(&j["currency"]);
                    out.push(Reaction {
                        at,
                        event: self.payment(
                            &account,
                            at,
                            PaymentKind::CreditToppedUp {
                                amount,
                                currency,
                                grant: Default::default(),
                            },
                        ),
                    });
                }
                _ => {}
            }
        }
        out
    }
}

/// The first six accounts (when there are that many) show one feature each
/// for sure: seats on `latest`, bandwidth on the 95th percentile, an
/// expiring promotional grant, an immediate upgrade on the 17th (in
/// Asia/Tokyo), spend thresholds reached, a coupon.
fn showcase(i: usize, a: &mut Account, start: Timestamp) {
    if i >= 6 {
        return;
    }
    a.opened_at = start.plus(i as i64 * MICROS_PER_MINUTE);
    a.closes_at = None;
    let reliable = Payer::Card {
        flaky: false,
        expired: false,
    };
    match i {
        0 => a.plan = TEAM,
        1 => a.plan = HOSTING,
        2 => {
            a.plan = STARTER;
            a.payer = reliable;
            a.extras.promo = true;
        }
        3 => {
            a.plan = STARTER;
            a.payer = reliable;
            a.extras.upgrade = true;
        }
        4 => {
            a.plan = PRO;
            a.extras.thresholds = true;
            // Busy enough to cross every threshold in its first month.
            a.scale = [800.0, 60_000.0, 200_000.0];
        }
        _ => {
            a.plan = PRO;
            a.extras.coupon = true;
        }
    }
}

/// 00:00 on the first 17th of a month in `tz` at least a day after `t`.
fn seventeenth_after(t: Timestamp, tz: &str) -> Option<Timestamp> {
    use chrono::{Datelike, TimeZone};
    let tz: chrono_tz::Tz = tz.parse().ok()?;
    let local = t.plus(MICROS_PER_DAY).to_datetime().with_timezone(&tz);
    let (mut y, mut m) = (local.year(), local.month());
    if local.day() >= 17 {
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
    let at = tz.with_ymd_and_hms(y, m, 17, 0, 0, 0).single()?;
    Some(Timestamp::from_datetime(at.with_timezone(&chrono::Utc)))
}
