//! The card-number tripwire (SPEC §4, privacy).
//!
//! Free-text fields are scanned for anything that looks like a payment card
//! number: 13–19 contiguous digits, or the usual groupings (4-4-4-4,
//! 4-4-4-4-3, 4-6-5, 4-6-4) separated by single spaces or dashes, not part
//! of a longer digit run, passing the Luhn check. Identifiers are never
//! scanned: a UUID's digit groups can pass Luhn by chance.

/// Groupings checked, longest first so the widest match wins.
const GROUPINGS: &[&[usize]] = &[&[4, 4, 4, 4, 3], &[4, 4, 4, 4], &[4, 6, 5], &[4, 6, 4]];

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Byte range `[start, end)` of the first card-like number in `text`.
pub fn find_card_number(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    if b.len() < 13 {
        return None;
    }
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A maximal contiguous run starting at i.
        let run_end = b[i..]
            .iter()
            .position(|c| !c.is_ascii_digit())
            .map_or(b.len(), |p| i + p);
        let run = run_end - i;
        if (13..=19).contains(&run) && luhn_valid(&b[i..run_end]) {
            return Some((i, run_end));
        }
        for grouping in GROUPINGS {
            if let Some(end) = match_grouping(b, i, grouping) {
                let digits: Vec<u8> = b[i..end]
                    .iter()
                    .copied()
                    .filter(u8::is_ascii_digit)
                    .collect();
                if luhn_valid(&digits) {
                    return Some((i, end));
                }
            }
        }
        i = run_end;
    }
    None
}

/// Match `grouping` at `start`: digit groups of the given sizes separated by
/// exactly one space or dash, with no digit right before or after.
fn match_grouping(b: &[u8], start: usize, grouping: &[usize]) -> Option<usize> {
    let mut pos = start;
    for (g, &len) in grouping.iter().enumerate() {
        if g > 0 {
            match b.get(pos) {
                Some(b' ') | Some(b'-') => pos += 1,
                _ => return None,
            }
        }
        let group = b.get(pos..pos + len)?;
        if !group.iter().all(u8::is_ascii_digit) {
            return None;
        }
        pos += len;
    }
    match b.get(pos) {
        Some(c) if c.is_ascii_digit() => None,
        _ => Some(pos),
    }
}

/// `text` with the digits of every card-like number masked except the last
/// four, so a DLQ record shows where it was without holding the number.
pub fn mask_card_numbers(text: &str) -> String {
    let mut out = text.to_string();
    let mut from = 0;
    while let Some((s, e)) = find_card_number(&out[from..]).map(|(s, e)| (s + from, e + from)) {
        let digit_positions: Vec<usize> = (s..e)
            .filter(|&p| out.as_bytes()[p].is_ascii_digit())
            .collect();
        let keep = digit_positions.len().saturating_sub(4);
        let mut bytes = out.into_bytes();
        for &p in &digit_positions[..keep] {
            bytes[p] = b'*';
        }
        out = String::from_utf8(bytes).expect("ASCII digits replaced by ASCII");
        from = e;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // 4111 1111 1111 1111 is the classic Visa test number (Luhn-valid).
    #[test]
    fn contiguous_card_number_is_found() {
        assert!(find_card_number("card 4111111111111111 here").is_some());
    }

    #[test]
    fn grouped_card_numbers_are_found() {
        assert!(find_card_number("4111 1111 1111 1111").is_some());
        assert!(find_card_number("4111-1111-1111-1111").is_some());
        // Amex test number 3782 822463 10005 (4-6-5).
        assert!(find_card_number("amex 3782 822463 10005").is_some());
        // Diners test number 3056 930902 5904 (4-6-4).
        assert!(find_card_number("diners 3056-930902-5904").is_some());
    }

    #[test]
    fn luhn_failure_is_not_a_card() {
        assert!(find_card_number("4111111111111112").is_none());
    }

    #[test]
    fn digits_inside_a_longer_run_are_not_a_card() {
        // 20 digits: longer than any card, and its 16-digit prefix is Luhn-valid.
        assert!(find_card_number("41111111111111110000").is_none());
        assert!(find_card_number("94111 1111 1111 1111").is_none());
    }

    #[test]
    fn double_separators_do_not_match() {
        assert!(find_card_number("4111  1111  1111  1111").is_none());
    }

    #[test]
    fn short_numbers_and_plain_text_pass() {
        assert!(find_card_number("container-1234 ran 12 hours").is_none());
        assert!(find_card_number("order 123456789012").is_none());
    }

    #[test]
    fn mask_keeps_last_four_digits() {
        assert_eq!(
            mask_card_numbers("pay 4111-1111-1111-1111 now"),
            "pay ****-****-****-1111 now"
        );
        assert_eq!(mask_card_numbers("4111111111111111"), "************1111");
    }
}
