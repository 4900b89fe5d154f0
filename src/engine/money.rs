//! Exact money: integer minor units of an ISO 4217 currency.
//!
//! Quantities and prices are exact decimals; an amount becomes money exactly
//! once, by rounding half-to-even to the currency's minor unit. Nothing here
//! ever touches a float.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency the engine knows the minor unit of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO 4217 codes and their minor-unit exponents. Currencies whose minor
/// unit is not 2 are listed explicitly; the others are the common ones.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("RON", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Look up a currency by its ISO 4217 code.
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, e)| Currency {
                code: c.as_bytes().try_into().expect("codes are 3 bytes"),
                exponent: *e,
            })
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("codes are ASCII")
    }

    /// Digits after the decimal point of the minor unit (2 for EUR, 0 for JPY).
    pub fn exponent(&self) -> u32 {
        u32::from(self.exponent)
    }

    /// Round an exact amount in major units half-to-even to minor units.
    /// `None` if it does not fit in an `i64`.
    pub fn round(&self, major: Decimal) -> Option<Minor> {
        let rounded =
            major.round_dp_with_strategy(self.exponent(), RoundingStrategy::MidpointNearestEven);
        let scaled = rounded.checked_mul(Decimal::from(10i64.pow(self.exponent())))?;
        i64::try_from(scaled.trunc()).ok().map(Minor)
    }

    /// Convert an amount given in major units to minor units exactly.
    /// `None` if it has more decimals than the minor unit or overflows.
    pub fn exact(&self, major: Decimal) -> Option<Minor> {
        if major.normalize().scale() > self.exponent() {
            return None;
        }
        self.round(major)
    }

    /// Minor units back to an exact decimal in major units.
    pub fn to_major(&self, amount: Minor) -> Decimal {
        Decimal::new(amount.0, self.exponent())
    }

    /// Render minor units as a decimal string with the minor unit's digits
    /// ("12.30", "-0.05", "1200" for JPY).
    pub fn format(&self, amount: Minor) -> String {
        self.to_major(amount).to_string()
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(code: String) -> Result<Self, String> {
        Currency::from_code(&code).ok_or_else(|| format!("unknown currency {code:?}"))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

/// An amount of money in minor units (cents); its currency is the account's.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Minor(pub i64);

impl Minor {
    pub const ZERO: Minor = Minor(0);

    /// The largest amount one line, payment or adjustment may carry:
    /// 10^15 minor units (10 trillion in a 2-decimal currency).
    pub const MAX_AMOUNT: Minor = Minor(1_000_000_000_000_000);

    /// The largest balance (credit, the lines waiting for the next
    /// invoice): 10^17 minor units, a hundred times less than `i64` holds.
    pub const MAX_BALANCE: Minor = Minor(100_000_000_000_000_000);

    /// `self + other`, `None` past `i64`.
    pub fn checked_add(self, other: Minor) -> Option<Minor> {
        self.0.checked_add(other.0).map(Minor)
    }

    /// `self - other`, `None` past `i64`.
    pub fn checked_sub(self, other: Minor) -> Option<Minor> {
        self.0.checked_sub(other.0).map(Minor)
    }

    /// `self + other`, held at the ends of `i64`: the sign is never wrong.
    /// For sums the bounds (`MAX_AMOUNT`, `MAX_BALANCE`, the plan limits)
    /// keep far inside `i64`; where a sum cannot be refused (a timer) this
    /// is the last line, never a wrap.
    pub fn saturating_add(self, other: Minor) -> Minor {
        Minor(self.0.saturating_add(other.0))
    }

    /// `self - other`, held at the ends of `i64` (see `saturating_add`).
    pub fn saturating_sub(self, other: Minor) -> Minor {
        Minor(self.0.saturating_sub(other.0))
    }

    /// The negated amount (`i64::MIN` is held at `i64::MAX`).
    pub fn saturating_neg(self) -> Minor {
        Minor(self.0.saturating_neg())
    }

    /// The exact sum of `amounts` (added in 128 bits, so no order of
    /// addition can overflow), `None` if it does not fit in `i64`.
    pub fn checked_sum<I: IntoIterator<Item = Minor>>(amounts: I) -> Option<Minor> {
        let exact: i128 = amounts.into_iter().map(|m| i128::from(m.0)).sum();
        i64::try_from(exact).ok().map(Minor)
    }

    /// The exact sum of `amounts`, held at the ends of `i64` (see
    /// `saturating_add`): it has the sign of the true sum.
    pub fn saturating_sum<I: IntoIterator<Item = Minor>>(amounts: I) -> Minor {
        let exact: i128 = amounts.into_iter().map(|m| i128::from(m.0)).sum();
        Minor(exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }

    /// Within `-bound..=bound`.
    pub fn within(self, bound: Minor) -> bool {
        self.0.unsigned_abs() <= bound.0.unsigned_abs()
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

/// Round the exact rational `num / den` half-to-even to an integer.
/// Used where a ratio of integers must be rounded once and exactly
/// (proration by the fraction of a period left). `den` must be positive.
pub fn round_ratio_half_even(num: i128, den: i128) -> i128 {
    debug_assert!(den > 0);
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    // `r` against `den - r`, not `2r` against `den`: no overflow near the ends.
    match r.cmp(&(den - r)) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn rounding_is_half_to_even_once() {
        let eur = Currency::from_code("EUR").unwrap();
        assert_eq!(eur.round(d("0.125")), Some(Minor(12)));
        assert_eq!(eur.round(d("0.135")), Some(Minor(14)));
        assert_eq!(eur.round(d("-0.125")), Some(Minor(-12)));
        assert_eq!(eur.round(d("0.12500001")), Some(Minor(13)));
    }

    #[test]
    fn zero_decimal_currency_rounds_to_whole_units() {
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(jpy.round(d("2.5")), Some(Minor(2)));
        assert_eq!(jpy.round(d("3.5")), Some(Minor(4)));
        assert_eq!(jpy.format(Minor(1200)), "1200");
    }

    #[test]
    fn exact_refuses_sub_minor_amounts() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(usd.exact(d("10.50")), Some(Minor(1050)));
        assert_eq!(usd.exact(d("10.500")), Some(Minor(1050)));
        assert_eq!(usd.exact(d("10.505")), None);
        let kwd = Currency::from_code("KWD").unwrap();
        assert_eq!(kwd.exact(d("1.005")), Some(Minor(1005)));
    }

    #[test]
    fn format_keeps_minor_digits() {
        let eur = Currency::from_code("EUR").unwrap();
        assert_eq!(eur.format(Minor(1230)), "12.30");
        assert_eq!(eur.format(Minor(-5)), "-0.05");
    }

    #[test]
    fn unknown_currency_is_refused() {
        assert!(Currency::from_code("XXX").is_none());
        assert!(Currency::try_from("eur".to_string()).is_err());
    }

    #[test]
    fn ratio_rounding_half_even() {
        assert_eq!(round_ratio_half_even(5, 2), 2);
        assert_eq!(round_ratio_half_even(7, 2), 4);
        assert_eq!(round_ratio_half_even(-5, 2), -2);
        assert_eq!(round_ratio_half_even(10, 3), 3);
        assert_eq!(round_ratio_half_even(11, 3), 4);
    }
}
