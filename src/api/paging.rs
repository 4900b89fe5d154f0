//! Paging of the list routes (`/invoices`, a line's lineage): a `limit`
//! (default `DEFAULT_PAGE`, at most `MAX_PAGE`) and an opaque `cursor`,
//! the `next` of the previous page.
//!
//! A cursor is the hex form of a small JSON object: the listing it belongs
//! to (route and path parameters) and where the previous page stopped. It
//! is opaque to clients and not signed: a hand-made cursor can only change
//! the caller's own view of data it may read anyway; one that does not
//! decode, or belongs to another listing, is a 400.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::routes::ApiError;

/// Items per page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// Items per page at most.
pub const MAX_PAGE: usize = 1000;

/// The query of a paged route.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// `limit` as given: absent is the default; anything but an integer in
/// 1..=`MAX_PAGE` is a 400.
pub fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "`limit` = {text:?} is not a whole number between 1 and {MAX_PAGE} (default {DEFAULT_PAGE})"
        ))),
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    /// The listing: route name and path parameters.
    of: Vec<String>,
    at: T,
}

/// The cursor that resumes `listing` (route name and path parameters) at
/// `position`.
pub fn encode_cursor<T: Serialize>(listing: &[&str], position: T) -> String {
    let envelope = Envelope {
        of: listing.iter().map(|s| s.to_string()).collect(),
        at: position,
    };
    // Serialising plain data to a string cannot fail.
    let json = serde_json::to_vec(&envelope).unwrap_or_default();
    json.iter().map(|b| format!("{b:02x}")).collect()
}

/// The position in `cursor`, which must be a cursor of `listing`.
pub fn decode_cursor<T: DeserializeOwned>(cursor: &str, listing: &[&str]) -> Result<T, ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "`cursor` {why}: pass the `next` of the previous page of this listing unchanged, \
             or no cursor for the first page"
        ))
    };
    if cursor.is_empty() {
        return Err(bad("is empty"));
    }
    let bytes = decode_hex(cursor).ok_or_else(|| bad("is not a cursor"))?;
    let envelope: Envelope<T> =
        serde_json::from_slice(&bytes).map_err(|_| bad("is not a cursor"))?;
    if envelope.of != listing {
        return Err(bad("belongs to another listing"));
    }
    Ok(envelope.at)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_for_its_own_listing_only() {
        let c = encode_cursor(&["invoices", "a1"], "inv_a1_00002");
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        let back: String = decode_cursor(&c, &["invoices", "a1"]).unwrap();
        assert_eq!(back, "inv_a1_00002");
        for other in [
            &["invoices", "a2"][..],
            &["lineage", "a1"],
            &["invoices", "a1", ""],
        ] {
            let e = decode_cursor::<String>(&c, other).unwrap_err();
            assert!(e.to_string().contains("another listing"), "{e}");
        }
        for bad in ["", "0", "zz", "00", "é1"] {
            assert!(
                decode_cursor::<String>(bad, &["invoices", "a1"]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limit_is_a_whole_number_in_range() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(parse_limit(Some("1")).unwrap(), 1);
        assert_eq!(parse_limit(Some("1000")).unwrap(), MAX_PAGE);
        for bad in ["0", "1001", "-1", "", "abc", "1.5", " 5"] {
            let e = parse_limit(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("`limit`"), "{bad:?}: {e}");
        }
    }
}
