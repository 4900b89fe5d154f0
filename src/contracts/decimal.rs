//! One grammar for the exact decimal strings that carry money and
//! quantities in every contract (Avro strings, JSON, CloudEvents), and the
//! range every timestamp must fall in, so the codecs cannot disagree.

use rust_decimal::Decimal;

use crate::engine::time::Timestamp;

/// What a decimal field must look like, for error messages.
pub const DECIMAL_EXPECTED: &str = "must be a decimal string, e.g. \"1.5\"";

/// Parse `-?[0-9]+(\.[0-9]+)?` exactly (no exponent, no `_`, no `+`, no
/// rounding: more than 28 significant digits is refused).
pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return None;
    }
    Decimal::from_str_exact(s).ok()
}

/// Parse a decimal field, naming it in the error.
pub(crate) fn decimal_field(field: &str, s: &str) -> Result<Decimal, super::DecodeError> {
    parse_decimal(s).ok_or_else(|| {
        super::DecodeError::field(field, format!("{DECIMAL_EXPECTED}, got {:?}", truncate(s)))
    })
}

/// 0001-01-01T00:00:00Z in micros: RFC 3339 has four-digit years only.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in micros.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// A timestamp field in UTC micros, checked to be within years 1..=9999.
pub(crate) fn timestamp_field(field: &str, micros: i64) -> Result<Timestamp, super::DecodeError> {
    if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
        Ok(Timestamp(micros))
    } else {
        Err(super::DecodeError::field(
            field,
            format!("timestamp {micros} is out of range (years 1 to 9999)"),
        ))
    }
}

/// Parse an RFC 3339 timestamp field.
pub(crate) fn rfc3339_field(field: &str, s: &str) -> Result<Timestamp, super::DecodeError> {
    match Timestamp::parse_rfc3339(s) {
        Some(t) => timestamp_field(field, t.0),
        None => Err(super::DecodeError::field(
            field,
            format!(
                "must be an RFC 3339 time, e.g. \"2026-01-31T23:00:00Z\", got {:?}",
                truncate(s)
            ),
        )),
    }
}

/// At most 64 characters of a bad value, so an error message stays short.
pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_grammar_is_strict() {
        for good in ["0", "1", "-1", "1.5", "0.000001", "12.30", "-0.05"] {
            assert!(parse_decimal(good).is_some(), "{good}");
        }
        for bad in [
            "", "-", "1.", ".5", "+1", "1e3", "1_000", " 1", "1 ", "NaN", "1.2.3", "0x10", "١",
        ] {
            assert!(parse_decimal(bad).is_none(), "{bad}");
        }
        // Scale is kept: "1.50" stays 1.50, so it renders back unchanged.
        assert_eq!(
            parse_decimal("1.50").map(|d| d.to_string()),
            Some("1.50".to_string())
        );
        // Too many digits would round: refused instead.
        assert!(parse_decimal("1.00000000000000000000000000001").is_none());
    }

    #[test]
    fn timestamps_outside_four_digit_years_are_refused() {
        assert!(timestamp_field("t", 0).is_ok());
        assert!(timestamp_field("t", MAX_MICROS).is_ok());
        assert!(timestamp_field("t", MAX_MICROS + 1).is_err());
        assert!(timestamp_field("t", i64::MIN).is_err());
        assert!(rfc3339_field("t", "2026-01-31T23:00:00Z").is_ok());
        assert!(rfc3339_field("t", "yesterday").is_err());
    }
}
