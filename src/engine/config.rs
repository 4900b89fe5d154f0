//! The engine's rules that are settings: grace, terms, dunning schedule,
//! windows. Defaults follow SPEC §3–§4 and match `config/default.toml`
//! (a test checks they agree); `crate::config` builds this from the
//! validated configuration.

use rust_decimal::Decimal;

use super::time::{Timestamp, MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE};

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
    /// How old an input may be and how long its id is remembered: one
    /// pair, consistent by construction (`InputWindows::new`).
    pub windows: InputWindows,
    /// How far before the processing clock an `AccountOpened` may be dated
    /// (default 400 days): bounds the periods one opening closes at once.
    pub max_backdating_micros: i64,
    /// Credit balance (major units) under which `CreditLow` is sent.
    pub credit_low_threshold: Decimal,
    /// Warn this long before a payment method expires (default 30 days).
    pub expiry_warning_micros: i64,
    /// Send `CreditExpiring` this long before a credit grant expires
    /// (default 7 days).
    pub credit_expiry_warning_micros: i64,
    /// Live credit grants per account a top-up or credit note may make
    /// (default 32); one that needs another is dead-lettered.
    pub max_credit_grants: usize,
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
            windows: InputWindows::DEFAULT,
            max_backdating_micros: 400 * MICROS_PER_DAY,
            credit_low_threshold: Decimal::from(5),
            expiry_warning_micros: 30 * MICROS_PER_DAY,
            credit_expiry_warning_micros: 7 * MICROS_PER_DAY,
            max_credit_grants: 32,
            rollup_lateness_micros: 5 * MICROS_PER_MINUTE,
            max_quantity: Decimal::from(1_000_000_000_000i64),
            max_subjects: 100,
        }
    }
}

impl EngineConfig {
    /// The earliest `occurred_at` an input may carry when the account's
    /// processing clock reads `clock` (`AccountOpened` of a new account
    /// excepted: `max_backdating` bounds it): older input is `too_late`.
    pub fn earliest_accepted(&self, clock: Timestamp) -> Timestamp {
        clock.plus(-self.windows.late_micros())
    }

    /// Dedup ids remembered from an instant before this are forgotten once
    /// the account's clock reads `clock`; stores load the ids from here on.
    /// The extra `future_tolerance` also covers ids stored before issue 12,
    /// which count from their first processing instant, at most that much
    /// before their `occurred_at`.
    pub fn dedup_forget_before(&self, clock: Timestamp) -> i64 {
        clock
            .0
            .saturating_sub(self.windows.dedup_micros())
            .saturating_sub(self.future_tolerance_micros)
    }
}

/// The late window (how old, by `occurred_at` against the account's
/// processing clock, an input may be) and the dedup window (how long an id
/// is remembered, counted from the later of its `occurred_at` and its first
/// processing). Only `new` makes one, and it refuses a late window longer
/// than the dedup window: no input can be accepted once its id could have
/// been forgotten (SPEC §4), whatever the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputWindows {
    late_micros: i64,
    dedup_micros: i64,
}

/// A window setting `InputWindows::new` refused: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowError {
    /// `"late_window"` or `"dedup_window"`.
    pub setting: &'static str,
    pub reason: String,
}

impl InputWindows {
    /// 35 days each (SPEC §4's dedup window).
    pub const DEFAULT: InputWindows = InputWindows {
        late_micros: 35 * MICROS_PER_DAY,
        dedup_micros: 35 * MICROS_PER_DAY,
    };
    /// SPEC §4: ids are remembered for at least 35 days.
    pub const MIN_DEDUP_MICROS: i64 = 35 * MICROS_PER_DAY;
    /// Bounds the ids (and issued periods) one account keeps.
    pub const MAX_DEDUP_MICROS: i64 = 400 * MICROS_PER_DAY;
    /// Below a day, ordinary delivery delays would be `too_late`.
    pub const MIN_LATE_MICROS: i64 = MICROS_PER_DAY;

    pub fn new(late_micros: i64, dedup_micros: i64) -> Result<InputWindows, WindowError> {
        let refuse = |setting, reason: &str| {
            Err(WindowError {
                setting,
                reason: reason.to_string(),
            })
        };
        if dedup_micros < Self::MIN_DEDUP_MICROS {
            return refuse("dedup_window", "must be at least 35 days (SPEC §4)");
        }
        if dedup_micros > Self::MAX_DEDUP_MICROS {
            return refuse("dedup_window", "must be at most 400 days");
        }
        if late_micros < Self::MIN_LATE_MICROS {
            return refuse("late_window", "must be at least 1 day");
        }
        if late_micros > dedup_micros {
            return refuse(
                "late_window",
                "must not be longer than billing.dedup_window: input older than the \
                 dedup window could be a redelivery whose id was forgotten",
            );
        }
        Ok(InputWindows {
            late_micros,
            dedup_micros,
        })
    }

    pub fn late_micros(self) -> i64 {
        self.late_micros
    }

    pub fn dedup_micros(self) -> i64 {
        self.dedup_micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_12_a_late_window_longer_than_the_dedup_window_is_refused() {
        let day = MICROS_PER_DAY;
        assert_eq!(
            InputWindows::new(35 * day, 35 * day),
            Ok(InputWindows::DEFAULT)
        );
        assert!(InputWindows::new(7 * day, 60 * day).is_ok());
        for (late, dedup, setting) in [
            (36 * day, 35 * day, "late_window"),
            (90 * day, 60 * day, "late_window"),
            (day / 2, 35 * day, "late_window"),
            (7 * day, 34 * day, "dedup_window"),
            (7 * day, 401 * day, "dedup_window"),
        ] {
            assert_eq!(
                InputWindows::new(late, dedup).unwrap_err().setting,
                setting,
                "late {late} dedup {dedup}"
            );
        }
    }
}
