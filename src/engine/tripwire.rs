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
    find_from(text.as_bytes(), 0)
}

/// The first card-like number in `b` at or after `from` (SPEC §4's rule;
/// the byte before `from` still counts as context).
fn find_from(b: &[u8], from: usize) -> Option<(usize, usize)> {
    if b.len() < 13 {
        return None;
    }
    let mut i = from;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A maximal contiguous run starting at i.
        let run_end = digit_run_end(b, i);
        let run = run_end - i;
        if (13..=19).contains(&run) && luhn_valid(&b[i..run_end]) {
            return Some((i, run_end));
        }
        for grouping in GROUPINGS {
            if let Some(end) = grouped_card_end(b, i, grouping) {
                if !b.get(end).is_some_and(u8::is_ascii_digit) {
                    return Some((i, end));
                }
            }
        }
        i = run_end;
    }
    None
}

/// Every card-like number in `b` by SPEC §4's rule, as byte ranges.
pub fn card_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some((s, e)) = find_from(b, from) {
        spans.push((s, e));
        from = e;
    }
    spans
}

/// Match `grouping` at `start`: digit groups of the given sizes separated by
/// exactly one space or dash. Returns the end; the caller decides whether a
/// digit may follow.
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
    Some(pos)
}

/// The end of the run of digits that starts at `start`.
fn digit_run_end(b: &[u8], start: usize) -> usize {
    b[start..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .map_or(b.len(), |p| start + p)
}

/// The end of `grouping` matched at `start` (`match_grouping`) when its
/// digits pass Luhn; whether a digit may follow is the caller's call.
fn grouped_card_end(b: &[u8], start: usize, grouping: &[usize]) -> Option<usize> {
    let end = match_grouping(b, start, grouping)?;
    let digits: Vec<u8> = b[start..end]
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    luhn_valid(&digits).then_some(end)
}

/// Every window of `b` that would be a card number if the bytes around it
/// were not digits: 13–19 contiguous digits anywhere inside a digit run,
/// and the groupings, Luhn-valid. For bytes whose structure is unknown (an
/// Avro body: a string's length byte can be an ASCII digit right before
/// or after the card), where SPEC §4's "not part of a longer digit run"
/// cannot be judged. Linear: Luhn sums come from prefix sums.
pub fn loose_card_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let run_end = digit_run_end(b, i);
        if run_end - i >= 13 {
            contiguous_windows(b, i, run_end, &mut spans);
        }
        i = run_end;
    }
    for start in 0..b.len() {
        // Every grouping starts with a group of four digits and a separator.
        if !matches!(b.get(start + 4), Some(b' ') | Some(b'-')) {
            continue;
        }
        for grouping in GROUPINGS {
            if let Some(end) = grouped_card_end(b, start, grouping) {
                spans.push((start, end));
            }
        }
    }
    spans
}

/// The Luhn-valid windows of 13–19 digits within the digit run `[s, e)`.
fn contiguous_windows(b: &[u8], s: usize, e: usize, out: &mut Vec<(usize, usize)>) {
    let run = &b[s..e];
    // plain[p][k], doubled[p][k]: sums over run[..k] of the digits at
    // positions of parity p, as they are and as Luhn doubles them.
    let mut plain = [vec![0u32; run.len() + 1], vec![0u32; run.len() + 1]];
    let mut doubled = [vec![0u32; run.len() + 1], vec![0u32; run.len() + 1]];
    for (k, d) in run.iter().enumerate() {
        let v = u32::from(d - b'0');
        let dv = if v * 2 > 9 { v * 2 - 9 } else { v * 2 };
        for p in 0..2 {
            let mine = k % 2 == p;
            plain[p][k + 1] = plain[p][k] + if mine { v } else { 0 };
            doubled[p][k + 1] = doubled[p][k] + if mine { dv } else { 0 };
        }
    }
    for from in 0..run.len() {
        for len in 13..=19 {
            let to = from + len;
            if to > run.len() {
                break;
            }
            // The last digit is not doubled, the one before it is, …
            let q = (to - 1) % 2;
            let sum = plain[q][to] - plain[q][from] + doubled[1 - q][to] - doubled[1 - q][from];
            if sum.is_multiple_of(10) {
                out.push((s + from, s + to));
            }
        }
    }
}

/// Mask the digits of `b[start..end]` with `*`, keeping the first
/// `keep_first` and the last four. Lengths never change.
pub fn mask_span(b: &mut [u8], (start, end): (usize, usize), keep_first: usize) {
    let digits: Vec<usize> = (start..end).filter(|&p| b[p].is_ascii_digit()).collect();
    let last = digits.len().saturating_sub(4);
    for &p in digits.get(keep_first.min(last)..last).unwrap_or(&[]) {
        b[p] = b'*';
    }
}

/// Mask the digits of every card-like number in `b` except the last four,
/// until none is left; the spans masked. One pass is not enough: masking a
/// long digit run ends it at its last four digits, after which a grouping
/// that was part of the run ("…4477 0777 0014 1017") is no longer inside a
/// longer run and is a card number by the rule (found by fuzzing). Every
/// span holds at least 13 unmasked digits and keeps 4, so each pass masks
/// at least 9 digits and this ends.
pub fn mask_card_spans(b: &mut [u8]) -> Vec<(usize, usize)> {
    let mut masked = Vec::new();
    loop {
        let spans = card_spans(b);
        if spans.is_empty() {
            return masked;
        }
        for &span in &spans {
            mask_span(b, span, 0);
        }
        masked.extend(spans);
    }
}

/// `text` with the digits of every card-like number masked except the last
/// four, so a DLQ record shows where it was without holding the number.
pub fn mask_card_numbers(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if mask_card_spans(&mut bytes).is_empty() {
        return text.to_string();
    }
    String::from_utf8(bytes).expect("ASCII digits replaced by ASCII")
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
    fn loose_spans_find_cards_inside_longer_digit_runs() {
        // '4' and '0' are Avro length bytes around the card here.
        let b = b"x44012888888881881002024";
        assert!(find_card_number(std::str::from_utf8(b).unwrap()).is_none());
        let spans = loose_card_spans(b);
        assert!(spans.contains(&(2, 18)), "{spans:?}");
        // Every window found passes Luhn, and a brute-force search agrees.
        let mut brute = Vec::new();
        for s in 0..b.len() {
            for e in s + 13..=(s + 19).min(b.len()) {
                if b[s..e].iter().all(u8::is_ascii_digit) && luhn_valid(&b[s..e]) {
                    brute.push((s, e));
                }
            }
        }
        let mut contiguous: Vec<_> = spans.clone();
        contiguous.sort_unstable();
        brute.sort_unstable();
        assert_eq!(contiguous, brute);
        assert!(loose_card_spans(b"9 4111 1111 1111 11119").contains(&(2, 21)));
        // One window only, failing Luhn.
        assert!(loose_card_spans(b"4222222222223").is_empty());
    }

    #[test]
    fn mask_span_keeps_first_and_last_digits_as_asked() {
        let mut b = *b"44012888888881881x";
        mask_span(&mut b, (1, 17), 1);
        assert_eq!(&b, b"44***********1881x");
        let mut b = *b"4111 1111 1111 1111";
        mask_span(&mut b, (0, 19), 0);
        assert_eq!(&b, b"**** **** **** 1111");
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
