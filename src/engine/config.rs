//! The engine's rules that are settings: grace, terms, dunning schedule,
//! windows. Defaults follow SPEC §3–§4 and match `config/default.toml`
//! (a test checks they agree); `crate::config` builds this from the
//! validated configuration.

use rust_decimal::Decimal;

use super::time::{MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The one environment this instance serves (e.g. "prod").
    pub environment: String,
    /// Time after period end before the draft is issued (default 1 h).
    pub grace_micros: i64,
    /// Payment terms: due date = issue + this (default 14 days).
    pub payment_terms_micros: i64,
    /// Delays of the dunning retries after a retryable failure
    /// (default 1, 3 and 7 days).
    pub retry_schedule_micros: Vec<i64>,
    /// How far in the future `occurred_at` may be (default 5 min).
    pub future_tolerance_micros: i64,
    /// How long event ids are remembered for dedup (default 35 days).
    pub dedup_window_micros: i64,
    /// Issued periods kept for pricing late usage (default 3).
    pub late_periods: usize,
    /// Credit balance (major units) under which `CreditLow` is sent.
    pub credit_low_threshold: Decimal,
    /// Warn this long before a payment method expires (default 30 days).
    pub expiry_warning_micros: i64,
    /// An hour's rollup is emitted this long after the hour ends.
    pub rollup_lateness_micros: i64,
    /// Largest quantity one usage event may carry.
    pub max_quantity: Decimal,
    /// Subjects named per account, metric and period (and per rollup
    /// hour); the rest are summed into one `(other)` subject.
    pub max_subjects: usize,
}

impl EngineConfig {
    pub fn new(environment: impl Into<String>) -> EngineConfig {
        EngineConfig {
            environment: environment.into(),
            grace_micros: MICROS_PER_HOUR,
            payment_terms_micros: 14 * MICROS_PER_DAY,
            retry_schedule_micros: vec![MICROS_PER_DAY, 3 * MICROS_PER_DAY, 7 * MICROS_PER_DAY],
            future_tolerance_micros: 5 * MICROS_PER_MINUTE,
            dedup_window_micros: 35 * MICROS_PER_DAY,
            late_periods: 3,
            credit_low_threshold: Decimal::from(5),
            expiry_warning_micros: 30 * MICROS_PER_DAY,
            rollup_lateness_micros: 5 * MICROS_PER_MINUTE,
            max_quantity: Decimal::from(1_000_000_000_000i64),
            max_subjects: 100,
        }
    }
}
