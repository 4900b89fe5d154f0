//! The readable summary printed after `demo` and `simulate`.
//!
//! Every figure comes from the output records as they are published (and,
//! for the demo, from what its gateway emulator did): the pricing features
//! of issue 13 (seats on `latest`, bandwidth on a percentile, promotional
//! credit that expired, immediate upgrades, spend alerts, discounts) are
//! read from the invoices, the notifications and the journal.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde_json::Value;

use crate::contracts::{OutputRecord, OutputTopic};
use crate::engine::aggregation::{Aggregation, AggregationSpec};
use crate::engine::plan::Plan;
use crate::runtime::ProcessorStats;
use crate::sim::GatewayReport;

/// Invoice lines of one aggregation: how many, on how many accounts, and
/// an example: the first line of an account's second period (its first,
/// from its opening, is usually part of a period), else its first line.
#[derive(Debug, Default)]
pub struct AggregatedLines {
    pub lines: u64,
    /// Lines per account.
    pub accounts: BTreeMap<String, u64>,
    /// (account, period month, quantity, unit price, amount, currency)
    pub example: Option<[String; 6]>,
    /// Whether `example` is of an account's second period or later.
    pub example_is_later: bool,
}

/// Money by currency, printed "12.50 EUR, 3.00 USD".
#[derive(Debug, Default)]
pub struct Amounts(pub BTreeMap<String, Decimal>);

impl Amounts {
    fn add(&mut self, currency: &str, amount: Decimal) {
        *self.0.entry(currency.to_string()).or_default() += amount;
    }
}

impl std::fmt::Display for Amounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(c, a)| format!("{a} {c}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// An immediate plan change seen in the journal, then its proration lines
/// on the invoice of its period.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub account: String,
    pub from: String,
    pub to: String,
    /// RFC 3339 instant it took effect.
    pub at: String,
    /// (credited, charged, currency) once the period's invoice is issued.
    pub fees: Option<(Decimal, Decimal, String)>,
}

/// The pricing features the outputs show.
#[derive(Debug, Default)]
pub struct Features {
    /// (plan, metric) → how the charge aggregates (from the price book).
    pub aggregations: BTreeMap<(String, String), AggregationSpec>,
    pub latest: AggregatedLines,
    pub percentile: AggregatedLines,
    /// The percentile billed (e.g. 95), from the first percentile line's charge.
    pub percentile_of: Option<Decimal>,
    pub promo_expired: u64,
    pub promo_expired_amount: Amounts,
    /// (account, amount, currency, expires_at)
    pub promo_example: Option<[String; 4]>,
    pub upgrades: Vec<Upgrade>,
    pub alerts: u64,
    pub alert_accounts: BTreeSet<String>,
    /// (account, threshold, draft subtotal, currency, at)
    pub alert_example: Option<[String; 5]>,
    /// Interim invoices of threshold invoicing (`interim: true`).
    pub interim: u64,
    pub interim_amount: Amounts,
    pub interim_accounts: BTreeSet<String>,
    /// (account, invoice id, total, currency)
    pub interim_example: Option<[String; 4]>,
    pub discounts: u64,
    pub discount_amount: Amounts,
    /// (account, description, amount, currency)
    pub discount_example: Option<[String; 4]>,
}

/// Figures gathered from the output records as they are published.
#[derive(Debug, Default)]
pub struct Summary {
    pub per_topic: BTreeMap<&'static str, u64>,
    pub invoices: u64,
    /// (currency, month "YYYY-MM" of the period start) → (count, total in major units as decimal).
    pub revenue: BTreeMap<(String, String), (u64, rust_decimal::Decimal)>,
    /// plan → (currency → total)
    pub revenue_by_plan: BTreeMap<(String, String), rust_decimal::Decimal>,
    pub charges: u64,
    pub retries: u64,
    pub notifications: BTreeMap<String, u64>,
    pub dlq: BTreeMap<String, u64>,
    pub paid: u64,
    pub overdue: u64,
    pub credit_notes: u64,
    pub features: Features,
    /// What the demo's gateway emulator did (`None` for `simulate`).
    pub gateway: Option<GatewayReport>,
}

fn dec(v: &Value) -> rust_decimal::Decimal {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// The month ("YYYY-MM") of the middle of a period `{start, end}`, as
/// revenue is counted.
fn month_of(period: &Value) -> String {
    let t = |k: &str| {
        period[k]
            .as_str()
            .and_then(crate::engine::time::Timestamp::parse_rfc3339)
    };
    match (t("start"), t("end")) {
        (Some(s), Some(e)) => {
            crate::engine::time::Timestamp((s.0 + e.0) / 2).to_rfc3339()[..7].to_string()
        }
        _ => "?".to_string(),
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

impl Summary {
    /// Learn how `plan`'s charges aggregate, to name its invoice lines.
    pub fn learn_plan(&mut self, plan: &Plan) {
        for c in &plan.charges {
            self.features.aggregations.insert(
                (plan.plan_id.clone(), c.metric.clone()),
                c.aggregation.clone(),
            );
        }
    }

    /// The aggregation of `metric` on `plan` (else on any plan billing it).
    fn aggregation(&self, plan: Option<&str>, metric: &str) -> Option<&AggregationSpec> {
        let a = &self.features.aggregations;
        plan.and_then(|p| a.get(&(p.to_string(), metric.to_string())))
            .or_else(|| a.iter().find(|((_, m), _)| m == metric).map(|(_, s)| s))
    }

    /// The issue-13 features of an issued invoice: usage lines of `latest`
    /// and `percentile` charges, discount lines, the proration lines of an
    /// immediate change in its period.
    fn invoice_features(&mut self, j: &Value, plan: Option<&str>) {
        let account = text(&j["account_id"]);
        let currency = text(&j["currency"]);
        let period = (text(&j["period_start"]), text(&j["period_end"]));
        let mut fees = (Decimal::ZERO, Decimal::ZERO);
        for l in j["lines"].as_array().into_iter().flatten() {
            let amount = dec(&l["amount"]);
            match l["kind"].as_str() {
                Some("usage") | Some("late_usage") => {
                    let metric = text(&l["metric"]);
                    let Some(spec) = self.aggregation(plan, &metric).cloned() else {
                        continue;
                    };
                    let lines = match spec.kind {
                        Aggregation::Latest => &mut self.features.latest,
                        Aggregation::Percentile => {
                            self.features
                                .percentile_of
                                .get_or_insert(spec.percentile.unwrap_or(Decimal::ONE_HUNDRED));
                            &mut self.features.percentile
                        }
                        _ => continue,
                    };
                    lines.lines += 1;
                    let seen = lines.accounts.entry(account.clone()).or_default();
                    *seen += 1;
                    let later = *seen > 1;
                    if (lines.example.is_none() || (later && !lines.example_is_later))
                        && amount > Decimal::ZERO
                    {
                        lines.example_is_later = later;
                        lines.example = Some([
                            format!("{account} ({metric})"),
                            format!("period {}", month_of(&l["for_period"])),
                            text(&l["quantity"]),
                            l["unit_price"].as_str().unwrap_or("tiered").to_string(),
                            amount.to_string(),
                            currency.clone(),
                        ]);
                    }
                }
                Some("discount") => {
                    let f = &mut self.features;
                    f.discounts += 1;
                    f.discount_amount.add(&currency, amount);
                    if f.discount_example.is_none() && amount != Decimal::ZERO {
                        f.discount_example = Some([
                            account.clone(),
                            text(&l["description"]),
                            amount.to_string(),
                            currency.clone(),
                        ]);
                    }
                }
                Some("recurring_fee")
                    if (
                        text(&l["for_period"]["start"]),
                        text(&l["for_period"]["end"]),
                    ) == period =>
                {
                    // A fee for the invoice's own period is a proration
                    // (fees are otherwise charged in advance, for the next).
                    if amount < Decimal::ZERO {
                        fees.0 += amount;
                    } else {
                        fees.1 += amount;
                    }
                }
                _ => {}
            }
        }
        if fees != (Decimal::ZERO, Decimal::ZERO) {
            if let Some(u) = self
                .features
                .upgrades
                .iter_mut()
                .find(|u| u.account == account && u.fees.is_none())
            {
                u.fees = Some((fees.0, fees.1, currency));
            }
        }
    }

    /// Account the outputs; `plan_of` names an account's plan for revenue by plan.
    pub fn add(&mut self, records: &[OutputRecord], plan_of: impl Fn(&str) -> Option<String>) {
        for r in records {
            *self.per_topic.entry(r.topic.default_name()).or_default() += 1;
            let j = &r.json;
            match (r.topic, r.kind) {
                (OutputTopic::Invoices, "InvoiceIssued") => {
                    self.invoices += 1;
                    let currency = j["currency"].as_str().unwrap_or("?").to_string();
                    // The period's middle names its month in the account's own timezone.
                    let t = |k: &str| {
                        j[k].as_str()
                            .and_then(crate::engine::time::Timestamp::parse_rfc3339)
                    };
                    let month = match (t("period_start"), t("period_end")) {
                        (Some(s), Some(e)) => crate::engine::time::Timestamp((s.0 + e.0) / 2)
                            .to_rfc3339()[..7]
                            .to_string(),
                        _ => "?".to_string(),
                    };
                    let total = dec(&j["total"]);
                    let e = self.revenue.entry((currency.clone(), month)).or_default();
                    e.0 += 1;
                    e.1 += total;
                    if j["interim"] == true {
                        let f = &mut self.features;
                        f.interim += 1;
                        f.interim_amount.add(&currency, total);
                        f.interim_accounts.insert(r.key.clone());
                        f.interim_example.get_or_insert_with(|| {
                            [
                                r.key.clone(),
                                text(&j["invoice_id"]),
                                total.to_string(),
                                currency.clone(),
                            ]
                        });
                    }
                    let plan = plan_of(&r.key);
                    self.invoice_features(j, plan.as_deref());
                    let plan = plan.unwrap_or_else(|| "?".into());
                    *self.revenue_by_plan.entry((plan, currency)).or_default() += total;
                }
                (OutputTopic::Invoices, "InvoicePaid") => self.paid += 1,
                (OutputTopic::Invoices, "InvoiceOverdue") => self.overdue += 1,
                (OutputTopic::Invoices, "CreditNoteIssued") => self.credit_notes += 1,
                (OutputTopic::Charges, _) => {
                    self.charges += 1;
                    if j["attempt"].as_i64().unwrap_or(1) > 1 {
                        self.retries += 1;
                    }
                }
                (OutputTopic::Notifications, _) => {
                    let f = &mut self.features;
                    match j["kind"].as_str() {
                        Some("credit_expired") if j["grant_kind"] == "promotional" => {
                            let amount = dec(&j["amount"]);
                            f.promo_expired += 1;
                            f.promo_expired_amount.add(&text(&j["currency"]), amount);
                            if f.promo_example.is_none() && amount > Decimal::ZERO {
                                f.promo_example = Some([
                                    r.key.clone(),
                                    amount.to_string(),
                                    text(&j["currency"]),
                                    text(&j["expires_at"]),
                                ]);
                            }
                        }
                        Some("spend_threshold_reached") => {
                            f.alerts += 1;
                            f.alert_accounts.insert(r.key.clone());
                            f.alert_example.get_or_insert_with(|| {
                                [
                                    r.key.clone(),
                                    text(&j["threshold"]),
                                    text(&j["amount"]),
                                    text(&j["currency"]),
                                    text(&j["occurred_at"]),
                                ]
                            });
                        }
                        _ => {}
                    }
                    *self
                        .notifications
                        .entry(j["kind"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
                (OutputTopic::Journal, _) if j["type"] == "plan_changed" => {
                    let payload: Value = j["payload"]
                        .as_str()
                        .and_then(|p| serde_json::from_str(p).ok())
                        .unwrap_or_default();
                    if payload["immediate"] == true {
                        self.features.upgrades.push(Upgrade {
                            account: r.key.clone(),
                            from: text(&payload["from_plan_id"]),
                            to: text(&payload["plan_id"]),
                            at: text(&j["at"]),
                            fees: None,
                        });
                    }
                }
                (OutputTopic::Dlq, _) => {
                    *self
                        .dlq
                        .entry(j["error_kind"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
                _ => {}
            }
        }
    }

    pub fn print(&self, stats: &ProcessorStats) {
        println!();
        println!(
            "Inputs: {} applied, {} duplicates ignored, {} rejected to the DLQ",
            stats.applied,
            stats.duplicates,
            self.dlq.values().sum::<u64>()
        );
        println!();
        println!(
            "Invoices issued: {}   paid: {}   overdue: {}   credit notes: {}",
            self.invoices, self.paid, self.overdue, self.credit_notes
        );
        println!();
        println!("Revenue by period month (invoice totals incl. tax):");
        println!(
            "  {:<8} {:<8} {:>9} {:>16}",
            "month", "currency", "invoices", "total"
        );
        for ((currency, month), (n, total)) in &self.revenue {
            println!(
                "  {month:<8} {currency:<8} {n:>9} {:>16}",
                total.round_dp(2)
            );
        }
        println!();
        println!("Revenue by plan:");
        for ((plan, currency), total) in &self.revenue_by_plan {
            println!("  {plan:<12} {currency:<4} {:>16}", total.round_dp(2));
        }
        println!();
        let n = |k: &str| self.notifications.get(k).copied().unwrap_or(0);
        println!("Dunning: {} charge requests ({} retries), {} payments succeeded, {} failed, {} invoices overdue",
            self.charges, self.retries, n("payment_succeeded"), n("payment_failed"), self.overdue);
        if let Some(g) = &self.gateway {
            print_gateway(g);
        }
        println!(
            "Notifications: {}",
            self.notifications
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.features.print();
        println!();
        if self.dlq.is_empty() {
            println!("Dead letters: none");
        } else {
            println!("Dead letters by reason:");
            for (k, v) in &self.dlq {
                println!("  {k:<24} {v:>8}");
            }
        }
        println!();
        println!("Records per output topic:");
        for (t, v) in &self.per_topic {
            println!("  {t:<28} {v:>10}");
        }
    }
}

/// What the demo's gateway emulator did, per provider, with a charge that
/// was declined and paid on a retry.
fn print_gateway(g: &GatewayReport) {
    let requests: u64 = g.providers.values().map(|p| p.requests).sum();
    let providers: Vec<String> = g
        .providers
        .iter()
        .map(|(name, p)| {
            let declines: Vec<String> = p
                .declined
                .iter()
                .map(|((code, retryable), n)| {
                    let kind = if *retryable { "retryable" } else { "final" };
                    format!("{code} {n} {kind}")
                })
                .collect();
            format!(
                "{name}: {} requests, {} succeeded, {} declined ({}), {} answered twice, {} held back",
                p.requests,
                p.succeeded,
                p.declined.values().sum::<u64>(),
                declines.join(", "),
                p.duplicated,
                p.held_back
            )
        })
        .collect();
    let mut line = format!(
        "Gateway emulator: {requests} charge requests answered by the outcome function of `billstream gateway` (seed {}); {}",
        g.seed,
        providers.join("; ")
    );
    if !g.rejected.is_empty() {
        let r: Vec<String> = g.rejected.iter().map(|(k, n)| format!("{k} {n}")).collect();
        line += &format!(
            "; not answered (dead letters of the emulator): {}",
            r.join(", ")
        );
    }
    if let Some(e) = &g.retry_example {
        line += &format!(
            "; e.g. {} {}: declined {}, paid on attempt {}: {} {}",
            e.account_id, e.invoice_id, e.declined, e.paid_on_attempt, e.amount, e.currency
        );
    }
    println!("{line}");
}

impl Features {
    fn is_empty(&self) -> bool {
        self.latest.lines == 0
            && self.percentile.lines == 0
            && self.promo_expired == 0
            && self.upgrades.is_empty()
            && self.alerts == 0
            && self.interim == 0
            && self.discounts == 0
    }

    fn print(&self) {
        if self.is_empty() {
            return;
        }
        println!();
        println!("Pricing features:");
        let aggregated = |label: &str, what: &str, l: &AggregatedLines| {
            if l.lines == 0 {
                return;
            }
            let mut line = format!(
                "  {label} {} invoice lines on {} accounts",
                l.lines,
                l.accounts.len()
            );
            if let Some([account, period, q, price, amount, currency]) = &l.example {
                line += &format!(
                    "; e.g. {account}, {period}: {what} {q} × {price} = {amount} {currency}"
                );
            }
            println!("{line}");
        };
        aggregated("seats billed on latest:", "latest seat count", &self.latest);
        let p = self.percentile_of.unwrap_or(Decimal::ONE_HUNDRED);
        aggregated(
            &format!("{p}th percentile bandwidth:"),
            &format!("{p}th percentile of window maxima"),
            &self.percentile,
        );
        if self.promo_expired > 0 {
            let mut line = format!(
                "  promotional credit expired: {} grants, {} in all",
                self.promo_expired, self.promo_expired_amount
            );
            if let Some([account, amount, currency, at]) = &self.promo_example {
                line += &format!("; e.g. {account}: {amount} {currency} expired at {at}");
            }
            println!("{line}");
        }
        if !self.upgrades.is_empty() {
            let mut line = format!(
                "  upgrade effective immediately: {} plan changes",
                self.upgrades.len()
            );
            if let Some(u) = self.upgrades.iter().find(|u| u.fees.is_some()) {
                let (credited, charged, currency) = u.fees.clone().unwrap_or_default();
                line += &format!(
                    "; e.g. {} {} → {} at {}: old fee credited {credited}, new fee charged {charged} {currency}",
                    u.account, u.from, u.to, u.at
                );
            }
            println!("{line}");
        }
        if self.alerts > 0 {
            let mut line = format!(
                "  spend alerts: {} thresholds reached on {} accounts",
                self.alerts,
                self.alert_accounts.len()
            );
            if let Some([account, threshold, amount, currency, at]) = &self.alert_example {
                line += &format!(
                    "; e.g. {account} reached {threshold} {currency} at {at} (draft subtotal {amount})"
                );
            }
            println!("{line}");
        }
        if self.interim > 0 {
            let mut line = format!(
                "  interim invoices: {} on {} accounts, {} in all",
                self.interim,
                self.interim_accounts.len(),
                self.interim_amount
            );
            if let Some([account, invoice, total, currency]) = &self.interim_example {
                line +=
                    &format!("; e.g. {account} {invoice}: {total} {currency} (invoice_at reached)");
            }
            println!("{line}");
        }
        if self.discounts > 0 {
            let mut line = format!(
                "  discounts: {} discount lines, {} in all",
                self.discounts, self.discount_amount
            );
            if let Some([account, description, amount, currency]) = &self.discount_example {
                line += &format!("; e.g. {account} {description}: {amount} {currency}");
            }
            println!("{line}");
        }
    }
}
