//! The reports printed: a readable table (the provider report one row per
//! provider and day; the settlement report one column per month, its
//! figures down the side), CSV (one header line, one line per row,
//! RFC 4180 quoting, a text that a spreadsheet would take for a formula
//! prefixed with `'`) or JSON (rows as objects, and the checks). Amounts
//! are decimals in major units of the row's currency ("31.00", "1200" for
//! JPY), never floats.

use serde_json::{json, Map, Value};

use super::{Check, MonthRow, ProviderDay, ProviderReport, SettlementReport};

/// One cell: a count, an amount (an exact decimal, written as text) or a
/// text (days, codes, provider names and reasons: hostile text may be in
/// them).
enum Cell {
    Count(u64),
    Amount(String),
    Text(String),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Count(n) => n.to_string(),
            Cell::Amount(t) | Cell::Text(t) => t.clone(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Count(n) => json!(n),
            Cell::Amount(t) | Cell::Text(t) => json!(t),
        }
    }

    /// Its CSV field. A text starting with `=`, `+`, `-`, `@`, a tab or a
    /// carriage return would be a formula to a spreadsheet: it gets a
    /// leading `'` (OWASP's advice on CSV injection). Counts and amounts
    /// (`-12.50`) are numbers and stay as they are.
    fn csv(&self) -> String {
        match self {
            Cell::Text(t) if t.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                csv_field(&format!("'{t}"))
            }
            _ => csv_field(&self.text()),
        }
    }
}

pub const PROVIDER_COLUMNS: [&str; 12] = [
    "day",
    "provider",
    "currency",
    "requested",
    "requested_amount",
    "succeeded",
    "succeeded_amount",
    "failed",
    "failed_amount",
    "failed_by_reason",
    "refunded",
    "refunded_amount",
];

fn provider_cells(r: &ProviderDay) -> Vec<Cell> {
    let c = r.currency;
    let reasons = r
        .failed_by_reason
        .iter()
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        Cell::Text(r.day.clone()),
        Cell::Text(r.provider.clone()),
        Cell::Text(c.code().to_string()),
        Cell::Count(r.requested),
        Cell::Amount(c.format(r.requested_amount)),
        Cell::Count(r.succeeded),
        Cell::Amount(c.format(r.succeeded_amount)),
        Cell::Count(r.failed),
        Cell::Amount(c.format(r.failed_amount)),
        Cell::Text(reasons),
        Cell::Count(r.refunded),
        Cell::Amount(c.format(r.refunded_amount)),
    ]
}

pub const MONTH_COLUMNS: [&str; 19] = [
    "month",
    "currency",
    "invoices",
    "invoiced",
    "credit_applied_paid",
    "credit_applied_promotional",
    "collected",
    "outstanding_opening",
    "outstanding",
    "overdue",
    "credit_granted_paid",
    "credit_granted_promotional",
    "credit_refunded",
    "credit_expired_paid",
    "credit_expired_promotional",
    "credit_paid_opening",
    "credit_paid",
    "credit_promotional_opening",
    "credit_promotional",
];

/// The settlement table's row labels, in `MONTH_COLUMNS` order after the
/// month and currency.
const MONTH_LABELS: [&str; 17] = [
    "invoices issued",
    "invoiced",
    "credit applied, paid",
    "credit applied, promotional",
    "collected",
    "outstanding at start",
    "outstanding at end",
    "  of which overdue",
    "credit granted, paid",
    "credit granted, promotional",
    "credit refunded",
    "credit expired, paid",
    "credit expired, promotional",
    "credit held, paid, at start",
    "credit held, paid, at end",
    "credit held, promotional, at start",
    "credit held, promotional, at end",
];

fn month_cells(r: &MonthRow) -> Vec<Cell> {
    let c = r.currency;
    let mut cells = vec![
        Cell::Text(r.month.clone()),
        Cell::Text(c.code().to_string()),
        Cell::Count(r.invoices),
    ];
    for amount in [
        r.invoiced,
        r.credit_applied_paid,
        r.credit_applied_promotional,
        r.collected,
        r.outstanding_opening,
        r.outstanding,
        r.overdue,
        r.credit_granted_paid,
        r.credit_granted_promotional,
        r.credit_refunded,
        r.credit_expired_paid,
        r.credit_expired_promotional,
        r.credit_paid_opening,
        r.credit_paid,
        r.credit_promotional_opening,
        r.credit_promotional,
    ] {
        cells.push(Cell::Amount(c.format(amount)));
    }
    cells
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(columns: &[&str], rows: impl Iterator<Item = Vec<Cell>>) -> String {
    let mut out = columns.join(",");
    out.push('\n');
    for cells in rows {
        let line: Vec<String> = cells.iter().map(Cell::csv).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

pub fn providers_csv(r: &ProviderReport) -> String {
    csv(&PROVIDER_COLUMNS, r.rows.iter().map(provider_cells))
}

pub fn settlement_csv(r: &SettlementReport) -> String {
    csv(&MONTH_COLUMNS, r.rows.iter().map(month_cells))
}

fn objects(columns: &[&str], rows: impl Iterator<Item = Vec<Cell>>) -> Value {
    Value::Array(
        rows.map(|cells| {
            Value::Object(
                columns
                    .iter()
                    .zip(&cells)
                    .map(|(k, c)| (k.to_string(), c.json()))
                    .collect::<Map<_, _>>(),
            )
        })
        .collect(),
    )
}

pub fn providers_json(r: &ProviderReport, source: &str) -> Value {
    json!({
        "report": "providers",
        "source": source,
        "window": r.window,
        "rows": objects(&PROVIDER_COLUMNS, r.rows.iter().map(provider_cells)),
        "checks": r.checks,
    })
}

pub fn settlement_json(r: &SettlementReport, source: &str) -> Value {
    json!({
        "report": "settlement",
        "source": source,
        "window": r.window,
        "rows": objects(&MONTH_COLUMNS, r.rows.iter().map(month_cells)),
        "checks": r.checks,
    })
}

/// Lines of cells in columns two spaces apart: the columns in `left`
/// left-aligned, the others (counts and amounts) right-aligned.
fn aligned(lines: &[Vec<String>], left: &[usize]) -> String {
    let width = |i: usize| {
        lines
            .iter()
            .map(|l| l[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..lines.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if left.contains(&i) {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn checks_text(checks: &[Check]) -> String {
    let failed = checks.iter().filter(|c| !c.ok).count();
    let mut out = if failed == 0 {
        format!(
            "Reconciles with the journal: {} checks, all equal.\n",
            checks.len()
        )
    } else {
        format!(
            "DOES NOT RECONCILE with the journal: {failed} of {} checks differ:\n",
            checks.len()
        )
    };
    for c in checks.iter().filter(|c| !c.ok) {
        out.push_str(&format!(
            "  {}: report {}, journal {}\n",
            c.what, c.report, c.journal
        ));
    }
    out
}

pub fn providers_table(r: &ProviderReport, source: &str) -> String {
    let mut out = format!("Provider report from {source}\n\n");
    if r.rows.is_empty() {
        out.push_str("No charge requests, results or refunds in the window.\n");
    } else {
        let mut lines = vec![PROVIDER_COLUMNS.map(String::from).to_vec()];
        lines.extend(
            r.rows
                .iter()
                .map(|row| provider_cells(row).iter().map(Cell::text).collect()),
        );
        // The reasons column last, so the numbers line up.
        let lines: Vec<Vec<String>> = lines
            .into_iter()
            .map(|mut l| {
                let reasons = l.remove(9);
                l.push(reasons);
                l
            })
            .collect();
        out.push_str(&aligned(&lines, &[0, 1, 2, 11]));
    }
    out.push('\n');
    out.push_str(&checks_text(&r.checks));
    out
}

pub fn settlement_table(r: &SettlementReport, source: &str) -> String {
    let mut out = format!("Settlement report from {source}\n\n");
    if r.rows.is_empty() {
        out.push_str("No journal entries in the window.\n");
    } else {
        let columns: Vec<Vec<String>> = r
            .rows
            .iter()
            .map(|row| month_cells(row).iter().map(Cell::text).collect())
            .collect();
        let mut lines = vec![std::iter::once(String::new())
            .chain(columns.iter().map(|c| format!("{} {}", c[0], c[1])))
            .collect::<Vec<_>>()];
        for (i, label) in MONTH_LABELS.iter().enumerate() {
            lines.push(
                std::iter::once(label.to_string())
                    .chain(columns.iter().map(|c| c[i + 2].clone()))
                    .collect(),
            );
        }
        out.push_str(&aligned(&lines, &[0]));
    }
    out.push('\n');
    out.push_str(&checks_text(&r.checks));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::money::{Currency, Minor};
    use crate::report::Window;

    fn day(provider: &str, reason: &str, refunded_amount: Minor) -> ProviderDay {
        ProviderDay {
            day: "2026-03-01".into(),
            provider: provider.into(),
            currency: Currency::from_code("EUR").unwrap(),
            requested: 1,
            requested_amount: Minor(1250),
            succeeded: 0,
            succeeded_amount: Minor::ZERO,
            failed: 1,
            failed_amount: Minor(1250),
            failed_by_reason: BTreeMap::from([(reason.to_string(), 1)]),
            refunded: 1,
            refunded_amount,
        }
    }

    #[test]
    fn f9_csv_text_starting_with_a_formula_character_gets_a_quote_and_amounts_stay_numbers() {
        let report = ProviderReport {
            window: Window::All,
            rows: vec![
                day("@acme", "=HYPERLINK(\"http://evil.example\")", Minor(-1250)),
                day("-eu", "+cmd", Minor(-1250)),
                day("acme", "\tx", Minor(-1250)),
                day("acme", "\rx", Minor(-1250)),
            ],
            checks: vec![],
        };
        let csv = providers_csv(&report);
        let lines: Vec<&str> = csv.lines().collect();
        // A reason is text: the formula is quoted out, the cell still
        // RFC 4180-quoted for its quotes.
        assert_eq!(
            lines[1],
            "2026-03-01,'@acme,EUR,1,12.50,0,0.00,1,12.50,\"'=HYPERLINK(\"\"http://evil.example\"\")=1\",1,-12.50"
        );
        assert_eq!(
            lines[2],
            "2026-03-01,'-eu,EUR,1,12.50,0,0.00,1,12.50,'+cmd=1,1,-12.50"
        );
        assert_eq!(
            lines[3],
            "2026-03-01,acme,EUR,1,12.50,0,0.00,1,12.50,'\tx=1,1,-12.50"
        );
        assert!(csv.contains(",1,12.50,\"'\rx=1\",1,-12.50\n"), "{csv:?}");
        // The JSON keeps the values as they are: it has no formulas.
        let json = providers_json(&report, "test");
        assert_eq!(
            json["rows"][0]["failed_by_reason"],
            "=HYPERLINK(\"http://evil.example\")=1"
        );
        assert_eq!(json["rows"][0]["refunded_amount"], "-12.50");
    }
}
