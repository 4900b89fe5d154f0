//! Instants and billing periods.
//!
//! The engine never reads a clock: every instant is passed in. Periods are
//! calendar months in the account's IANA timezone, or months anchored on
//! the day the account opened; both are computed here from UTC micros.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

impl Timestamp {
    pub fn from_datetime(dt: DateTime<Utc>) -> Timestamp {
        Timestamp(dt.timestamp_micros())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Parse RFC 3339 ("2026-01-31T23:00:00Z").
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|dt| Timestamp(dt.with_timezone(&Utc).timestamp_micros()))
    }

    /// RFC 3339 in UTC with microseconds only when needed.
    pub fn to_rfc3339(self) -> String {
        let dt = self.to_datetime();
        if self.0 % MICROS_PER_SECOND == 0 {
            dt.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        } else {
            dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        }
    }

    pub fn plus(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }

    /// Start of the UTC hour containing this instant.
    pub fn hour_floor(self) -> Timestamp {
        Timestamp(self.0.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// How an account's periods are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// Calendar months in the account's timezone (the default).
    #[default]
    Calendar,
    /// Months starting on the given day of month (1..=31, clamped to the
    /// month's length), in the account's timezone.
    DayOfMonth(u8),
}

/// A billing period `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Period {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }

    pub fn length(&self) -> i64 {
        self.end.0 - self.start.0
    }
}

/// The local midnight at the start of `date` in `tz`, as UTC micros. A
/// midnight that does not exist (DST gap) moves to the first instant after.
fn local_midnight(tz: Tz, date: NaiveDate) -> Timestamp {
    let naive = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => Timestamp(dt.with_timezone(&Utc).timestamp_micros()),
        LocalResult::Ambiguous(first, _) => Timestamp(first.with_timezone(&Utc).timestamp_micros()),
        LocalResult::None => {
            // DST gap at midnight: the period starts at the first valid local minute.
            (1..=180)
                .find_map(|m| {
                    let t = naive + chrono::Duration::minutes(m);
                    tz.from_local_datetime(&t).earliest()
                })
                .map(|dt| Timestamp(dt.with_timezone(&Utc).timestamp_micros()))
                .unwrap_or(Timestamp(naive.and_utc().timestamp_micros()))
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

fn shift_month(year: i32, month: u32, by: i32) -> (i32, u32) {
    let idx = year * 12 + (month as i32 - 1) + by;
    (idx.div_euclid(12), (idx.rem_euclid(12) + 1) as u32)
}

fn anchor_date(year: i32, month: u32, anchor: Anchor) -> NaiveDate {
    let day = match anchor {
        Anchor::Calendar => 1,
        Anchor::DayOfMonth(d) => u32::from(d).clamp(1, days_in_month(year, month)),
    };
    NaiveDate::from_ymd_opt(year, month, day).expect("clamped day is valid")
}

/// The period of `anchor` in `tz` that contains `t`.
pub fn period_containing(t: Timestamp, tz: Tz, anchor: Anchor) -> Period {
    let local = tz.from_utc_datetime(&t.to_datetime().naive_utc());
    let (mut y, mut m) = (local.year(), local.month());
    // Start from this month's anchor; step back if t is before it.
    let mut start = local_midnight(tz, anchor_date(y, m, anchor));
    if t < start {
        (y, m) = shift_month(y, m, -1);
        start = local_midnight(tz, anchor_date(y, m, anchor));
    }
    let (ny, nm) = shift_month(y, m, 1);
    let end = local_midnight(tz, anchor_date(ny, nm, anchor));
    Period { start, end }
}

/// The period right after `p`.
pub fn next_period(p: Period, tz: Tz, anchor: Anchor) -> Period {
    period_containing(p.end, tz, anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn calendar_month_in_account_timezone() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-01-31T23:30Z is already February 1st in Berlin.
        let p = period_containing(ts("2026-01-31T23:30:00Z"), tz, Anchor::Calendar);
        assert_eq!(p.start, ts("2026-01-31T23:00:00Z"));
        assert_eq!(p.end, ts("2026-02-28T23:00:00Z"));
    }

    #[test]
    fn period_spanning_dst_change_has_exact_length() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let p = period_containing(ts("2026-03-15T12:00:00Z"), tz, Anchor::Calendar);
        assert_eq!(p.start, ts("2026-02-28T23:00:00Z"));
        assert_eq!(p.end, ts("2026-03-31T22:00:00Z"));
        assert_eq!(p.length(), (31 * 24 - 1) * MICROS_PER_HOUR);
    }

    #[test]
    fn anchored_period_clamps_to_short_months() {
        let tz: Tz = "UTC".parse().unwrap();
        let p = period_containing(ts("2026-02-10T00:00:00Z"), tz, Anchor::DayOfMonth(31));
        assert_eq!(p.start, ts("2026-01-31T00:00:00Z"));
        assert_eq!(p.end, ts("2026-02-28T00:00:00Z"));
        let n = next_period(p, tz, Anchor::DayOfMonth(31));
        assert_eq!(n.start, ts("2026-02-28T00:00:00Z"));
        assert_eq!(n.end, ts("2026-03-31T00:00:00Z"));
    }

    #[test]
    fn next_period_follows_without_gap() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let mut p = period_containing(ts("2026-01-05T00:00:00Z"), tz, Anchor::Calendar);
        for _ in 0..24 {
            let n = next_period(p, tz, Anchor::Calendar);
            assert_eq!(n.start, p.end);
            assert!(n.end > n.start);
            p = n;
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = ts("2026-05-01T10:11:12.000345Z");
        assert_eq!(t.to_rfc3339(), "2026-05-01T10:11:12.000345Z");
        assert_eq!(
            ts("2026-05-01T12:00:00+02:00").to_rfc3339(),
            "2026-05-01T10:00:00Z"
        );
    }
}
