//! The legacy biller's invoices, from a CSV or a JSON-lines export.
//!
//! CSV: a header row naming the columns (any order, case-insensitive):
//! `account_id`, `period` (`YYYY-MM`), `currency` (ISO 4217), `total`, and
//! optionally `metric` and `amount`. A row without `metric` is an invoice;
//! a row with `metric` and `amount` is one of its lines (rows of the same
//! account and period are one invoice; the same metric twice is summed).
//! `total` must be on at least one row of an invoice and, where repeated,
//! the same. Fields may be quoted ("...", "" for a quote).
//!
//! JSON lines: one invoice per line, `{"account_id": "acct-1", "period":
//! "2026-03", "currency": "EUR", "total": "119.00", "lines": {"api.calls":
//! "12.00", "recurring_fee": "19.00"}}`; `lines` is optional (an object of
//! amounts by name, or an array of `{"metric", "amount"}`).
//!
//! Amounts are decimal strings in major units with at most the currency's
//! minor digits ("12.50" for EUR, "1200" for JPY); a JSON number is refused
//! (it may already have lost digits). Line names: a metric, or
//! `recurring_fee`, `minimum_spend`, `adjustment`, `tax`. Every error names
//! the file, the line and the field.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::engine::money::{Currency, Minor};

/// One legacy invoice (an account's invoice for one period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyInvoice {
    pub account: String,
    pub period: String,
    pub currency: Currency,
    pub total: Minor,
    /// Amounts by line name; empty when the export gives totals only.
    pub lines: BTreeMap<String, Minor>,
    /// `<file>:<line>` of its first row.
    pub at: String,
}

/// Bad legacy input: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: field `{field}`: {reason}")]
pub struct LegacyError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

/// Read `path`: JSON lines when its name ends in `.jsonl`, `.ndjson` or
/// `.json`, or its first non-blank character is `{`; CSV otherwise.
pub fn read(path: &Path) -> anyhow::Result<Vec<LegacyInvoice>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let json = match ext.as_deref() {
        Some("jsonl" | "ndjson" | "json") => true,
        Some("csv") => false,
        _ => text.trim_start().starts_with('{'),
    };
    Ok(if json {
        parse_jsonl(&name, &text)?
    } else {
        parse_csv(&name, &text)?
    })
}

fn period(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = t.len() == 7
        && t.as_bytes()[4] == b'-'
        && t[..4].bytes().all(|b| b.is_ascii_digit())
        && t[5..].parse::<u32>().is_ok_and(|m| (1..=12).contains(&m));
    if ok {
        Ok(t.to_string())
    } else {
        Err(format!("{text:?} is not a month written YYYY-MM"))
    }
}

fn currency(text: &str) -> Result<Currency, String> {
    Currency::from_code(text.trim())
        .ok_or_else(|| format!("{text:?} is not an ISO 4217 currency code billstream knows"))
}

/// An exact amount in `currency`'s minor units.
pub fn money(currency: Currency, text: &str) -> Result<Minor, String> {
    let t = text.trim();
    // Plain decimals only: "1e2" or "1,5" is a spreadsheet's float.
    let digits = t.strip_prefix('-').unwrap_or(t);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    if !plain {
        return Err(format!(
            "{text:?} is not a decimal amount (write e.g. \"12.50\")"
        ));
    }
    let d = Decimal::from_str(t)
        .map_err(|_| format!("{text:?} is not a decimal amount (e.g. \"12.50\")"))?;
    currency.exact(d).ok_or_else(|| {
        format!(
            "{t} has more decimals than {} has minor digits ({})",
            currency.code(),
            currency.exponent()
        )
    })
}

/// Split one CSV record (RFC 4180 quoting; no newlines inside fields).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                out.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    out.push(field);
    Ok(out)
}

/// Invoices being assembled from rows, in first-seen order.
struct Builder {
    file: String,
    order: Vec<(String, String)>,
    invoices: BTreeMap<(String, String), (LegacyInvoice, Option<Minor>)>,
}

impl Builder {
    fn err(&self, line: usize, field: &str, reason: impl Into<String>) -> LegacyError {
        LegacyError {
            file: self.file.clone(),
            line,
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

pub fn parse_csv(file: &str, text: &str) -> Result<Vec<LegacyInvoice>, LegacyError> {
    let mut b = Builder {
        file: file.to_string(),
        order: Vec::new(),
        invoices: BTreeMap::new(),
    };
    let mut rows = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = rows.next() else {
        return Err(b.err(1, "header", "the file is empty (expected a header row: account_id,period,currency,total[,metric,amount])"));
    };
    let columns = csv_fields(header).map_err(|e| b.err(header_line, "header", e))?;
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        let name =
            match c.trim().to_ascii_lowercase().as_str() {
                "account_id" | "account" => "account_id",
                "period" => "period",
                "currency" => "currency",
                "total" => "total",
                "metric" | "line" => "metric",
                "amount" => "amount",
                other => return Err(b.err(
                    header_line,
                    other,
                    "unknown column (expected account_id, period, currency, total, metric, amount)",
                )),
            };
        if index.insert(name, i).is_some() {
            return Err(b.err(header_line, name, "named twice in the header"));
        }
    }
    for required in ["account_id", "period", "currency", "total"] {
        if !index.contains_key(required) {
            return Err(b.err(header_line, required, "missing from the header"));
        }
    }
    if index.contains_key("metric") != index.contains_key("amount") {
        return Err(b.err(
            header_line,
            if index.contains_key("metric") {
                "amount"
            } else {
                "metric"
            },
            "lines need both a metric and an amount column",
        ));
    }
    for (n, row) in rows {
        let fields = csv_fields(row).map_err(|e| b.err(n, "row", e))?;
        if fields.len() != columns.len() {
            return Err(b.err(
                n,
                "row",
                format!(
                    "{} fields where the header names {}",
                    fields.len(),
                    columns.len()
                ),
            ));
        }
        let get = |name: &str| index.get(name).map_or("", |&i| fields[i].trim());
        let account = get("account_id");
        if account.is_empty() {
            return Err(b.err(n, "account_id", "must not be empty"));
        }
        let period = period(get("period")).map_err(|e| b.err(n, "period", e))?;
        let currency = currency(get("currency")).map_err(|e| b.err(n, "currency", e))?;
        let total = match get("total") {
            "" => None,
            t => Some(money(currency, t).map_err(|e| b.err(n, "total", e))?),
        };
        let line = match (get("metric"), get("amount")) {
            ("", "") => None,
            ("", _) => return Err(b.err(n, "metric", "an amount needs the line's metric")),
            (_, "") => return Err(b.err(n, "amount", "a line needs its amount")),
            (m, a) => Some((
                m.to_string(),
                money(currency, a).map_err(|e| b.err(n, "amount", e))?,
            )),
        };
        let key = (account.to_string(), period.clone());
        if !b.invoices.contains_key(&key) {
            b.order.push(key.clone());
            b.invoices.insert(
                key.clone(),
                (
                    LegacyInvoice {
                        account: account.to_string(),
                        period,
                        currency,
                        total: Minor(0),
                        lines: BTreeMap::new(),
                        at: format!("{file}:{n}"),
                    },
                    None,
                ),
            );
        }
        let file_name = b.file.clone();
        let (inv, seen_total) = b.invoices.get_mut(&key).expect("inserted");
        let err = |field: &str, reason: String| LegacyError {
            file: file_name.clone(),
            line: n,
            field: field.to_string(),
            reason,
        };
        if inv.currency != currency {
            return Err(err(
                "currency",
                format!(
                    "{} here, {} on {} for the same invoice",
                    currency.code(),
                    inv.currency.code(),
                    inv.at
                ),
            ));
        }
        if let Some(t) = total {
            match seen_total {
                Some(before) if *before != t => {
                    return Err(err(
                        "total",
                        format!(
                            "{} here, {} on an earlier row of the same invoice",
                            currency.format(t),
                            currency.format(*before)
                        ),
                    ))
                }
                _ => *seen_total = Some(t),
            }
        }
        if let Some((metric, amount)) = line {
            let sum = inv.lines.entry(metric).or_insert(Minor(0));
            *sum = sum
                .checked_add(amount)
                .ok_or_else(|| err("amount", "the line's sum overflows".into()))?;
        }
    }
    let mut out = Vec::with_capacity(b.order.len());
    for key in &b.order {
        let (mut inv, total) = b.invoices.remove(key).expect("listed");
        let Some(total) = total else {
            let line = inv
                .at
                .rsplit(':')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            return Err(LegacyError {
                file: file.to_string(),
                line,
                field: "total".into(),
                reason: format!(
                    "no row of {} {} gives the invoice total",
                    inv.account, inv.period
                ),
            });
        };
        inv.total = total;
        out.push(inv);
    }
    Ok(out)
}

pub fn parse_jsonl(file: &str, text: &str) -> Result<Vec<LegacyInvoice>, LegacyError> {
    let err = |line: usize, field: &str, reason: String| LegacyError {
        file: file.to_string(),
        line,
        field: field.to_string(),
        reason,
    };
    let mut out: Vec<LegacyInvoice> = Vec::new();
    let mut first: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| err(n, "line", format!("not a JSON object: {e}")))?;
        let Value::Object(o) = v else {
            return Err(err(n, "line", "not a JSON object".into()));
        };
        for k in o.keys() {
            if ![
                "account_id",
                "account",
                "period",
                "currency",
                "total",
                "lines",
            ]
            .contains(&k.as_str())
            {
                return Err(err(
                    n,
                    k,
                    "unknown field (expected account_id, period, currency, total, lines)".into(),
                ));
            }
        }
        let text = |field: &str| -> Result<&str, LegacyError> {
            match o.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
                Some(Value::Number(x)) => Err(err(
                    n,
                    field,
                    format!("{x} is a JSON number: write amounts as decimal strings (\"{x}\"), a number may already have lost digits"),
                )),
                Some(Value::String(_)) => Err(err(n, field, "must not be empty".into())),
                Some(other) => Err(err(n, field, format!("{other} is not a string"))),
                None => Err(err(n, field, "missing".into())),
            }
        };
        let account = if o.contains_key("account") && !o.contains_key("account_id") {
            text("account")?
        } else {
            text("account_id")?
        };
        let period = period(text("period")?).map_err(|e| err(n, "period", e))?;
        let currency = currency(text("currency")?).map_err(|e| err(n, "currency", e))?;
        let total = money(currency, text("total")?).map_err(|e| err(n, "total", e))?;
        let mut lines = BTreeMap::new();
        let mut add = |name: &str, field: String, value: &Value| -> Result<(), LegacyError> {
            let amount = match value {
                Value::String(s) => money(currency, s).map_err(|e| err(n, &field, e))?,
                Value::Number(x) => return Err(err(
                    n,
                    &field,
                    format!("{x} is a JSON number: write amounts as decimal strings (\"{x}\"), a number may already have lost digits"),
                )),
                other => return Err(err(n, &field, format!("{other} is not an amount"))),
            };
            if name.trim().is_empty() {
                return Err(err(n, &field, "a line needs a name".into()));
            }
            let sum: &mut Minor = lines.entry(name.to_string()).or_insert(Minor(0));
            *sum = sum
                .checked_add(amount)
                .ok_or_else(|| err(n, &field, "the line's sum overflows".into()))?;
            Ok(())
        };
        match o.get("lines") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, value) in m {
                    add(name, format!("lines.{name}"), value)?;
                }
            }
            Some(Value::Array(items)) => {
                for (k, item) in items.iter().enumerate() {
                    let metric = item
                        .get("metric")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err(n, &format!("lines[{k}].metric"), "missing".into()))?;
                    let amount = item
                        .get("amount")
                        .ok_or_else(|| err(n, &format!("lines[{k}].amount"), "missing".into()))?;
                    add(metric, format!("lines[{k}].amount"), amount)?;
                }
            }
            Some(other) => {
                return Err(err(
                    n,
                    "lines",
                    format!("{other} is not an object of amounts or an array of lines"),
                ))
            }
        }
        let key = (account.to_string(), period.clone());
        if let Some(before) = first.get(&key) {
            return Err(err(
                n,
                "period",
                format!("a second invoice for {account} {period} (the first is on line {before})"),
            ));
        }
        first.insert(key, n);
        out.push(LegacyInvoice {
            account: account.to_string(),
            period,
            currency,
            total,
            lines,
            at: format!("{file}:{n}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: i64) -> Minor {
        Minor(minor)
    }

    #[test]
    fn issue_14_csv_rows_make_invoices_with_lines() {
        let text = "account_id,period,currency,total,metric,amount\n\
                    acct-1,2026-03,EUR,119.00,,\n\
                    acct-1,2026-03,EUR,,api.calls,12.00\n\
                    acct-1,2026-03,EUR,119.00,api.calls,0.50\n\
                    \"acct,2\",2026-04,JPY,1200,,\n";
        let got = parse_csv("l.csv", text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].total, eur(11900));
        assert_eq!(got[0].lines["api.calls"], eur(1250));
        assert_eq!(got[0].at, "l.csv:2");
        assert_eq!(got[1].account, "acct,2");
        assert_eq!(got[1].total, Minor(1200));
        assert!(got[1].lines.is_empty());
    }

    #[test]
    fn issue_14_csv_errors_name_the_line_and_the_field() {
        let cases = [
            ("account_id,period,currency\n", 1, "total"),
            ("account_id,period,currency,total,colour\n", 1, "colour"),
            ("account_id,period,currency,total\na,2026-3,EUR,1.00\n", 2, "period"),
            ("account_id,period,currency,total\na,2026-03,EURO,1.00\n", 2, "currency"),
            ("account_id,period,currency,total\na,2026-03,EUR,1.005\n", 2, "total"),
            ("account_id,period,currency,total\na,2026-03,EUR,1.0e2\n", 2, "total"),
            ("account_id,period,currency,total\na,2026-03,EUR\n", 2, "row"),
            ("account_id,period,currency,total\n,2026-03,EUR,1.00\n", 2, "account_id"),
            (
                "account_id,period,currency,total,metric,amount\na,2026-03,EUR,1.00,,\na,2026-03,EUR,,m,x\n",
                3,
                "amount",
            ),
            (
                "account_id,period,currency,total,metric,amount\na,2026-03,EUR,1.00,,\na,2026-03,EUR,2.00,,\n",
                3,
                "total",
            ),
            (
                "account_id,period,currency,total,metric,amount\na,2026-03,EUR,1.00,,\na,2026-03,USD,,m,1\n",
                3,
                "currency",
            ),
            (
                "account_id,period,currency,total,metric,amount\n\na,2026-03,EUR,,m,1.00\n",
                3,
                "total",
            ),
        ];
        for (text, line, field) in cases {
            let e = parse_csv("l.csv", text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("l.csv:{line}: field `{field}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn issue_14_jsonl_invoices_and_errors_naming_line_and_field() {
        let text = "{\"account_id\":\"a\",\"period\":\"2026-03\",\"currency\":\"EUR\",\"total\":\"10.00\",\"lines\":{\"m\":\"4.00\",\"recurring_fee\":\"6.00\"}}\n\
                    \n\
                    {\"account_id\":\"b\",\"period\":\"2026-03\",\"currency\":\"EUR\",\"total\":\"1.00\",\"lines\":[{\"metric\":\"m\",\"amount\":\"1.00\"}]}\n";
        let got = parse_jsonl("l.jsonl", text).unwrap();
        assert_eq!(got[0].lines["m"], Minor(400));
        assert_eq!(got[0].lines["recurring_fee"], Minor(600));
        assert_eq!(got[1].at, "l.jsonl:3");
        let base = |more: &str| {
            format!("{{\"account_id\":\"a\",\"period\":\"2026-03\",\"currency\":\"EUR\"{more}}}")
        };
        let cases = [
            ("{not json".to_string(), "line"),
            (base(""), "total"),
            (base(",\"total\":10.5"), "total"),
            (base(",\"total\":\"10.001\""), "total"),
            (base(",\"total\":\"1\",\"lines\":{\"m\":\"x\"}"), "lines.m"),
            (base(",\"total\":\"1\",\"lines\":{\"m\":2}"), "lines.m"),
            (
                base(",\"total\":\"1\",\"lines\":[{\"amount\":\"1\"}]"),
                "lines[0].metric",
            ),
            (base(",\"total\":\"1\",\"colour\":\"red\""), "colour"),
        ];
        for (line, field) in cases {
            let text = format!(
                "{}\n{line}\n",
                base(",\"total\":\"1.00\"").replace("\"a\"", "\"z\"")
            );
            let e = parse_jsonl("l.jsonl", &text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (2, field), "{line}: {e}");
        }
        let twice = format!(
            "{}\n{}\n",
            base(",\"total\":\"1\""),
            base(",\"total\":\"2\"")
        );
        let e = parse_jsonl("l.jsonl", &twice).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "period"));
        assert!(e.reason.contains("line 1"), "{e}");
    }
}
