//! The demo's accounts, their usage, and how the gateway and customers
//! answer outputs (charge requests, invoices, credit-low notices).

use std::collections::BTreeMap;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::contracts::{OutputRecord, OutputTopic};
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

fn tier(up_to: Option<&str>, unit_price: &str, flat_fee: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_price: d(unit_price),
        flat_fee: d(flat_fee),
    }
}

/// The demo price book: flat and tiered hosting plans, a pure usage plan
/// with a minimum spend, and a streaming tariff.
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
    ]
}

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

struct Account {
    id: String,
    plan: usize,
    payer: Payer,
    opened_at: Timestamp,
    /// Typical daily volume per metric.
    scale: [f64; 3],
    closes_at: Option<Timestamp>,
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
    ) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut list = Vec::with_capacity(accounts);
        for i in 0..accounts {
            let plan = match rng.random_range(0..100) {
                0..40 => 0,
                40..65 => 1,
                65..80 => 2,
                _ => 3,
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
            list.push(Account {
                id: format!("acct-{i:05}"),
                plan,
                payer,
                opened_at,
                scale,
                closes_at,
            });
        }
        let index = list
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        World {
            rng,
            accounts: list,
            index,
            start,
            days,
            environment: environment.to_string(),
            seq: 0,
        }
    }

    pub fn plan_of(&self, account_id: &str) -> Option<&'static str> {
        const NAMES: [&str; 4] = ["starter", "pro", "metered", "stream"];
        self.index
            .get(account_id)
            .map(|i| NAMES[self.accounts[*i].plan])
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
            let (id, plan, payer, at, closes_at) = {
                let a = &self.accounts[i];
                (a.id.clone(), a.plan, a.payer, a.opened_at, a.closes_at)
            };
            let tz = TIMEZONES[self.rng.random_range(0..TIMEZONES.len())];
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
                Payer::Card { .. } => {
                    // Some cards expire during the demo, to show the expiry warning.
                    let expires = if self.rng.random_bool(0.1) {
                        "2026-02"
                    } else {
                        "2029-08"
                    };
                    out.push(Reaction {
                        at: soon,
                        event: self.payment(
                            &id,
                            soon,
                            PaymentKind::PaymentMethodAttached {
                                token_ref: format!("psp:tok_{i:06}"),
                                brand: "visa".into(),
                                last4: format!("{:04}", 1000 + i % 9000),
                                expires: expires.into(),
                            },
                        ),
                    });
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
            // A few plan changes and goodwill credit notes.
            if self.rng.random_bool(0.03) && plan != 2 {
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
            if plan == 3 {
                continue; // the streaming tariff has no metered usage
            }
            for (m, metric) in METRICS.iter().enumerate() {
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
                (OutputTopic::Charges, _, Payer::Card { flaky, expired }) => {
                    let at = now.plus(
                        self.rng
                            .random_range(MICROS_PER_MINUTE..2 * MICROS_PER_HOUR),
                    );
                    let (charge_id, invoice_id) = (s(&j["charge_id"]), s(&j["invoice_id"]));
                    let attempt = j["attempt"].as_i64().unwrap_or(1);
                    let roll: f64 = self.rng.random_range(0.0..1.0);
                    let kind = if expired && attempt == 1 {
                        PaymentKind::PaymentFailed {
                            charge_id,
                            invoice_id,
                            retryable: false,
                            reason: "card_expired".into(),
                        }
                    } else if (flaky && roll < 0.6) || roll < 0.05 {
                        PaymentKind::PaymentFailed {
                            charge_id,
                            invoice_id,
                            retryable: true,
                            reason: "insufficient_funds".into(),
                        }
                    } else {
                        PaymentKind::PaymentSucceeded {
                            charge_id,
                            invoice_id,
                            amount: j["amount"]
                                .as_str()
                                .and_then(|a| a.parse().ok())
                                .unwrap_or_default(),
                            currency: s(&j["currency"]),
                        }
                    };
                    out.push(Reaction {
                        at,
                        event: self.payment(&account, at, kind),
                    });
                    if expired && attempt == 1 {
                        // The customer replaces the card a few days later.
                        let at = at.plus(self.rng.random_range(2..6) * MICROS_PER_DAY);
                        self.accounts[i].payer = Payer::Card {
                            flaky,
                            expired: false,
                        };
                        out.push(Reaction {
                            at,
                            event: self.payment(
                                &account,
                                at,
                                PaymentKind::PaymentMethodAttached {
                                    token_ref: format!("psp:tok_{i:06}_b"),
                                    brand: "mastercard".into(),
                                    last4: "5454".into(),
                                    expires: "2030-11".into(),
                                },
                            ),
                        });
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
