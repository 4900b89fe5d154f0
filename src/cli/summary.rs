//! The readable summary printed after `demo` and `simulate`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::contracts::{OutputRecord, OutputTopic};
use crate::runtime::ProcessorStats;

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
}

fn dec(v: &Value) -> rust_decimal::Decimal {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

impl Summary {
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
                    let plan = plan_of(&r.key).unwrap_or_else(|| "?".into());
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
                    *self
                        .notifications
                        .entry(j["kind"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
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
        println!(
            "Notifications: {}",
            self.notifications
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
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
