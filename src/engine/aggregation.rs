//! Aggregations: how a charge turns a period's usage events into the one
//! quantity it is rated on.
//!
//! `sum` (the default) adds quantities; `count` counts events; `max` keeps
//! the peak; `latest` the value with the latest `occurred_at`;
//! `unique_count` counts distinct values of one attribute; `time_weighted`
//! integrates a gauge over the period in unit-hours; `percentile` takes
//! the maximum per fixed window and bills a percentile of the windows.
//! Every rule here is order-independent (a set, a maximum, a latest-wins
//! with a fixed tie-break), so redelivery, replay and late arrival give
//! the same value. The state each keeps is bounded (`MAX_UNIQUE_VALUES`,
//! `MAX_GAUGE_READINGS`, one entry per window) and costed in
//! ARCHITECTURE.md.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::events::UsageRecorded;
use super::money::round_ratio_half_even;
use super::reject::Rejection;
use super::time::{Period, Timestamp, MICROS_PER_HOUR, MICROS_PER_SECOND};

/// Most distinct values one `unique_count` charge keeps per period.
pub const MAX_UNIQUE_VALUES: usize = 10_000;
/// Most distinct reading instants one `time_weighted` charge keeps per period.
pub const MAX_GAUGE_READINGS: usize = 10_000;
/// `aggregation_window` when a `percentile` charge names none: 5 minutes.
pub const DEFAULT_WINDOW_SECS: u32 = 300;
/// Shortest window (a period of 31 days and an hour has at most 44,700).
pub const MIN_WINDOW_SECS: u32 = 60;
/// Longest window, one day; every window divides a day.
pub const MAX_WINDOW_SECS: u32 = 86_400;
/// Decimals unit-hours are rounded to (half to even), once per period.
pub const UNIT_HOUR_DECIMALS: u32 = 9;

/// How a charge aggregates its metric's events in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    #[default]
    Sum,
    Count,
    Max,
    Latest,
    UniqueCount,
    TimeWeighted,
    Percentile,
}

impl Aggregation {
    pub const ALL: [Aggregation; 7] = [
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::Max,
        Aggregation::Latest,
        Aggregation::UniqueCount,
        Aggregation::TimeWeighted,
        Aggregation::Percentile,
    ];

    /// The name in plan records (Avro symbol, JSON string).
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Max => "max",
            Aggregation::Latest => "latest",
            Aggregation::UniqueCount => "unique_count",
            Aggregation::TimeWeighted => "time_weighted",
            Aggregation::Percentile => "percentile",
        }
    }

    pub fn from_name(name: &str) -> Option<Aggregation> {
        Aggregation::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn is_sum(&self) -> bool {
        *self == Aggregation::Sum
    }

    /// Whether the values of two parts of a period add up to the value of
    /// the whole (`sum`, `count`, `time_weighted`), so that plan segments
    /// can share one allowance of free units. The others measure a level
    /// (`max`, `latest`, `unique_count`, `percentile`) that each segment
    /// measures again: each has the charge's full free units.
    pub fn is_additive(self) -> bool {
        matches!(
            self,
            Aggregation::Sum | Aggregation::Count | Aggregation::TimeWeighted
        )
    }
}

/// A charge's aggregation settings, as the plan record carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregationSpec {
    #[serde(rename = "aggregation", default)]
    pub kind: Aggregation,
    /// The attribute whose distinct values `unique_count` counts.
    #[serde(rename = "aggregation_field", default)]
    pub field: Option<String>,
    /// The percentile `percentile` bills, in (0, 100].
    #[serde(rename = "aggregation_percentile", default)]
    pub percentile: Option<Decimal>,
    /// The sample window of `percentile` ("5m"; default 5 minutes).
    #[serde(rename = "aggregation_window", default)]
    pub window: Option<String>,
}

/// Parse a window: a whole number of seconds, minutes, hours or days.
fn parse_window(text: &str) -> Option<u32> {
    let d = crate::config::parse_duration(text)?;
    if d.subsec_nanos() != 0 {
        return None;
    }
    u32::try_from(d.as_secs()).ok()
}

impl AggregationSpec {
    /// The settings' inconsistencies, as (field, reason).
    pub fn check(&self, max_name_bytes: usize) -> Result<(), (&'static str, String)> {
        let kind = self.kind.name();
        match (&self.field, self.kind) {
            (None, Aggregation::UniqueCount) => {
                return Err((
                    "aggregation_field",
                    "unique_count needs the attribute whose distinct values it counts".into(),
                ))
            }
            (Some(f), Aggregation::UniqueCount) if f.is_empty() || f.len() > max_name_bytes => {
                return Err((
                    "aggregation_field",
                    format!("must have 1 to {max_name_bytes} bytes"),
                ))
            }
            (Some(_), k) if k != Aggregation::UniqueCount => {
                return Err((
                    "aggregation_field",
                    format!("only unique_count reads it, this charge aggregates by {kind}"),
                ))
            }
            _ => {}
        }
        if self.kind != Aggregation::Percentile {
            if self.percentile.is_some() {
                return Err((
                    "aggregation_percentile",
                    format!("only percentile reads it, this charge aggregates by {kind}"),
                ));
            }
            if self.window.is_some() {
                return Err((
                    "aggregation_window",
                    format!("only percentile reads it, this charge aggregates by {kind}"),
                ));
            }
            return Ok(());
        }
        match self.percentile {
            None => {
                return Err((
                    "aggregation_percentile",
                    "percentile needs the percentile to bill, in (0, 100], e.g. 95".into(),
                ))
            }
            Some(p) if p <= Decimal::ZERO || p > Decimal::ONE_HUNDRED => {
                return Err(("aggregation_percentile", format!("{p} is not in (0, 100]")))
            }
            Some(p) if p.normalize().scale() > 6 => {
                return Err((
                    "aggregation_percentile",
                    format!("{p} has more than 6 decimals"),
                ))
            }
            Some(_) => {}
        }
        if let Some(text) = &self.window {
            let secs = parse_window(text).ok_or_else(|| {
                (
                    "aggregation_window",
                    format!("{text:?} is not a whole number of seconds, minutes, hours or days (e.g. \"5m\")"),
                )
            })?;
            if !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&secs)
                || !MAX_WINDOW_SECS.is_multiple_of(secs)
            {
                return Err((
                    "aggregation_window",
                    format!(
                        "{text:?} must be from 1 minute to 1 day and divide a day evenly (e.g. 1m, 5m, 15m, 1h)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The window of a (validated) percentile charge, in seconds.
    pub fn window_secs(&self) -> u32 {
        self.window
            .as_deref()
            .and_then(parse_window)
            .unwrap_or(DEFAULT_WINDOW_SECS)
    }

    /// The empty state of a period for this aggregation (`None`: the
    /// metric's total is all it needs).
    pub fn new_state(&self) -> Option<Box<AggState>> {
        let state = match self.kind {
            Aggregation::Sum | Aggregation::Count | Aggregation::Max => return None,
            Aggregation::Latest => AggState::Latest {
                at: Timestamp(i64::MIN),
            },
            Aggregation::UniqueCount => AggState::UniqueCount {
                field: self.field.clone().unwrap_or_default(),
                values: Vec::new(),
            },
            Aggregation::TimeWeighted => AggState::TimeWeighted {
                readings: Vec::new(),
            },
            Aggregation::Percentile => AggState::Percentile {
                percentile: self.percentile.unwrap_or(Decimal::ONE_HUNDRED),
                window_secs: self.window_secs(),
                maxima: Vec::new(),
            },
        };
        Some(Box::new(state))
    }
}

/// What a metric keeps in a period beyond its total, pinned when the
/// period's first event of the metric arrives (a plan republished later
/// in the period does not change how the period is aggregated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggState {
    /// When the kept value (the metric's total) occurred.
    Latest { at: Timestamp },
    /// 128-bit XXH3 hashes of the distinct values seen, sorted: 16 bytes
    /// a value whatever its length, and no customer data in the state.
    UniqueCount {
        field: String,
        values: Vec<[u64; 2]>,
    },
    /// Readings by instant, sorted; one per instant (the larger wins).
    TimeWeighted { readings: Vec<(Timestamp, Decimal)> },
    /// The maximum of each window that had usage, by window index from
    /// the period start, sorted.
    Percentile {
        percentile: Decimal,
        window_secs: u32,
        maxima: Vec<(u32, Decimal)>,
    },
}

impl AggState {
    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<AggState>()
            + match self {
                AggState::Latest { .. } => 0,
                AggState::UniqueCount { field, values } => {
                    field.capacity() + values.capacity() * 16
                }
                AggState::TimeWeighted { readings } => {
                    readings.capacity() * std::mem::size_of::<(Timestamp, Decimal)>()
                }
                AggState::Percentile { maxima, .. } => {
                    maxima.capacity() * std::mem::size_of::<(u32, Decimal)>()
                }
            }
    }
}

fn hash_value(v: &str) -> [u64; 2] {
    let h = xxhash_rust::xxh3::xxh3_128(v.as_bytes());
    [(h >> 64) as u64, h as u64]
}

fn window_index(period: Period, at: Timestamp, window_secs: u32) -> u32 {
    let w = i64::from(window_secs) * MICROS_PER_SECOND;
    u32::try_from((at.0 - period.start.0).max(0) / w).unwrap_or(u32::MAX)
}

/// Refuse an event the aggregation cannot take, before anything changes:
/// `unique_count` without its attribute, or a new value or reading past
/// the period's cap.
pub fn admit(
    kind: Aggregation,
    state: Option<&AggState>,
    metric: &str,
    u: &UsageRecorded,
) -> Result<(), Rejection> {
    match (kind, state) {
        (Aggregation::UniqueCount, Some(AggState::UniqueCount { field, values })) => {
            let Some(v) = u.attributes.get(field) else {
                return Err(Rejection::InvalidField {
                    field: format!("attributes.{field}"),
                    reason: format!(
                        "metric {metric} is charged on unique_count of attribute {field:?}; this event has none"
                    ),
                });
            };
            if values.len() >= MAX_UNIQUE_VALUES && values.binary_search(&hash_value(v)).is_err() {
                return Err(Rejection::InvalidField {
                    field: format!("attributes.{field}"),
                    reason: format!(
                        "metric {metric}: the period already counts {MAX_UNIQUE_VALUES} distinct values of {field:?}, the most one period keeps (unique_count); a new value is refused"
                    ),
                });
            }
        }
        (Aggregation::TimeWeighted, Some(AggState::TimeWeighted { readings }))
            if readings.len() >= MAX_GAUGE_READINGS
                && readings
                    .binary_search_by_key(&u.occurred_at, |r| r.0)
                    .is_err() =>
        {
            return Err(Rejection::InvalidField {
                field: "occurred_at".into(),
                reason: format!(
                    "metric {metric}: the period already holds {MAX_GAUGE_READINGS} readings at distinct instants, the most one period keeps (time_weighted); a reading at a new instant is refused"
                ),
            });
        }
        _ => {}
    }
    Ok(())
}

/// Add one admitted event of `period` to a metric's `total` and `state`.
/// `total` is the value for sum, count, max, latest and unique_count, and
/// the peak quantity for time_weighted and percentile (whose value needs
/// the period's span: `value`). Overflow of a sum is checked by the caller.
pub fn add(
    kind: Aggregation,
    total: &mut Decimal,
    state: Option<&mut AggState>,
    period: Period,
    u: &UsageRecorded,
) {
    let q = u.quantity;
    match (kind, state) {
        (Aggregation::Sum, _) => *total = total.saturating_add(q),
        (Aggregation::Count, _) => *total = total.saturating_add(Decimal::ONE),
        (Aggregation::Max, _) => *total = (*total).max(q),
        (Aggregation::Latest, Some(AggState::Latest { at })) => {
            // Latest `occurred_at` wins; at the same instant, the larger.
            if u.occurred_at > *at || (u.occurred_at == *at && q > *total) {
                *at = u.occurred_at;
                *total = q;
            }
        }
        (Aggregation::UniqueCount, Some(AggState::UniqueCount { field, values })) => {
            if let Some(v) = u.attributes.get(field.as_str()) {
                let h = hash_value(v);
                if let Err(i) = values.binary_search(&h) {
                    values.reserve_exact(1);
                    values.insert(i, h);
                }
                *total = Decimal::from(values.len());
            }
        }
        (Aggregation::TimeWeighted, Some(AggState::TimeWeighted { readings })) => {
            match readings.binary_search_by_key(&u.occurred_at, |r| r.0) {
                Ok(i) => readings[i].1 = readings[i].1.max(q),
                Err(i) => readings.insert(i, (u.occurred_at, q)),
            }
            *total = (*total).max(q);
        }
        (
            Aggregation::Percentile,
            Some(AggState::Percentile {
                window_secs,
                maxima,
                ..
            }),
        ) => {
            let w = window_index(period, u.occurred_at, *window_secs);
            match maxima.binary_search_by_key(&w, |m| m.0) {
                Ok(i) => maxima[i].1 = maxima[i].1.max(q),
                Err(i) => maxima.insert(i, (w, q)),
            }
            *total = (*total).max(q);
        }
        // A state of another kind (cannot happen: kind and state are made
        // together): the total alone, as a sum would.
        _ => *total = total.saturating_add(q),
    }
}

/// A cheap upper bound of the value after adding `q`, over the span
/// `[from, to)`: the hot path rates only above the price book's safe total.
pub fn bound_after(
    kind: Aggregation,
    total: Decimal,
    q: Decimal,
    from: Timestamp,
    to: Timestamp,
) -> Option<Decimal> {
    match kind {
        Aggregation::Sum => total.checked_add(q),
        Aggregation::Count | Aggregation::UniqueCount => total.checked_add(Decimal::ONE),
        Aggregation::Max | Aggregation::Latest | Aggregation::Percentile => Some(total.max(q)),
        Aggregation::TimeWeighted => {
            let hours = Decimal::from((to.0 - from.0).max(0)) / Decimal::from(MICROS_PER_HOUR);
            total.max(q).checked_mul(hours.ceil())
        }
    }
}

/// The quantity a charge is rated on, for a period whose account was
/// open over `[from, to)`. `None` only on arithmetic overflow.
pub fn value(
    kind: Aggregation,
    total: Decimal,
    state: Option<&AggState>,
    period: Period,
    from: Timestamp,
    to: Timestamp,
) -> Option<Decimal> {
    match (kind, state) {
        (Aggregation::TimeWeighted, Some(AggState::TimeWeighted { readings })) => {
            time_weighted(readings, to)
        }
        (
            Aggregation::Percentile,
            Some(AggState::Percentile {
                percentile,
                window_secs,
                maxima,
            }),
        ) => window_percentile(maxima, *percentile, *window_secs, period, from, to),
        _ => Some(total),
    }
}

/// Unit-hours of a gauge: each reading holds from its instant until the
/// next reading or `to` (the period's end, or the account's close); before
/// the period's first reading the gauge is 0. The sum of quantity ×
/// microseconds is exact; it is divided by 3.6 × 10^9 and rounded half to
/// even to `UNIT_HOUR_DECIMALS` decimals, once.
pub fn time_weighted(readings: &[(Timestamp, Decimal)], to: Timestamp) -> Option<Decimal> {
    let mut micros = Decimal::ZERO;
    for (i, (at, q)) in readings.iter().enumerate() {
        let until = readings.get(i + 1).map_or(to, |r| r.0).min(to);
        let held = (until.0 - at.0).max(0);
        if held > 0 {
            micros = micros.checked_add(q.checked_mul(Decimal::from(held))?)?;
        }
    }
    let micros = micros.normalize();
    let num = micros
        .mantissa()
        .checked_mul(10i128.checked_pow(UNIT_HOUR_DECIMALS)?)?;
    let den = 10i128
        .checked_pow(micros.scale())?
        .checked_mul(i128::from(MICROS_PER_HOUR))?;
    let rounded = round_ratio_half_even(num, den);
    Decimal::try_from_i128_with_scale(rounded, UNIT_HOUR_DECIMALS)
        .ok()
        .map(|d| d.normalize())
}

/// Windows `[from, to)` overlaps, aligned to the period start: `(first, n)`.
pub fn windows(period: Period, window_secs: u32, from: Timestamp, to: Timestamp) -> (i64, i64) {
    let w = i64::from(window_secs) * MICROS_PER_SECOND;
    let first = (from.0 - period.start.0).max(0) / w;
    let end = (to.0 - period.start.0).max(0);
    let last = end / w + i64::from(end % w != 0);
    (first, (last - first).max(0))
}

/// The nearest-rank percentile of the window maxima: of the `n` windows
/// the account was open for (a window without usage counts 0), sorted
/// ascending, the one at rank ⌈p × n / 100⌉.
pub fn window_percentile(
    maxima: &[(u32, Decimal)],
    p: Decimal,
    window_secs: u32,
    period: Period,
    from: Timestamp,
    to: Timestamp,
) -> Option<Decimal> {
    let (first, n) = windows(period, window_secs, from, to);
    if n == 0 {
        return Some(Decimal::ZERO);
    }
    let mut seen: Vec<Decimal> = maxima
        .iter()
        .filter(|(w, _)| (first..first + n).contains(&i64::from(*w)))
        .map(|(_, q)| *q)
        .collect();
    let rank = p
        .checked_mul(Decimal::from(n))?
        .checked_div(Decimal::ONE_HUNDRED)?
        .ceil();
    let rank = i64::try_from(rank).ok()?.clamp(1, n);
    let zeros = n - seen.len() as i64;
    if rank <= zeros {
        return Some(Decimal::ZERO);
    }
    let k = usize::try_from(rank - zeros - 1).ok()?;
    let (_, v, _) = seen.select_nth_unstable(k);
    Some(*v)
}
