//! `billstream reconcile`: a legacy biller's invoices against billstream's
//! issued invoices, per account and period, to the minor unit.
//!
//! An account's invoices of one period (the month its billing period
//! starts in, in the account's time zone) are compared as one: billstream's
//! are summed (the invoice an opening issues and the period's closing
//! invoice share a period), by `total` (subtotal + tax, before credit) and,
//! when the legacy invoice has lines, line by line: usage and late-usage
//! lines by metric, the others by kind (`recurring_fee`, `minimum_spend`,
//! `adjustment`), and the tax as `tax`. A difference (billstream − legacy)
//! larger than the tolerance is a mismatch; each differing line lists the
//! input events behind billstream's amount, traced through the published
//! journal (`api::lineage`). Money is exact: integer minor units, decimals
//! only to print and to compare with the tolerance.

pub mod billstream;
pub mod legacy;

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::api::lineage::Tracer;
use crate::engine::events::{DomainEvent, LineKind};
use crate::engine::money::{Currency, Minor};
use crate::runtime::StoredJournalEntry;
use billstream::Issued;
use legacy::LegacyInvoice;

/// An input event behind a differing line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub event_id: String,
    pub entry_type: &'static str,
    pub journal_seq: u64,
    pub invoice_id: String,
    pub quantity: Option<String>,
    pub subject: Option<String>,
}

/// One line whose amounts differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineDiff {
    pub line: String,
    /// `None`: the side has no such line.
    pub legacy: Option<String>,
    pub billstream: Option<String>,
    /// billstream − legacy.
    pub difference: String,
    pub inputs: Vec<Input>,
}

/// One account and period both sides have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compared {
    pub account: String,
    pub period: String,
    pub currency: String,
    /// Set when billstream's currency is another.
    pub billstream_currency: Option<String>,
    pub legacy_total: String,
    pub billstream_total: String,
    pub difference: Option<String>,
    pub invoices: Vec<String>,
    pub legacy_at: String,
    pub lines: Vec<LineDiff>,
}

/// One account and period only one side has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OneSided {
    pub account: String,
    pub period: String,
    pub currency: String,
    pub total: String,
    /// billstream's invoice ids, or the legacy file and line.
    pub from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrencyTotals {
    pub currency: String,
    pub legacy: String,
    pub billstream: String,
    pub difference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub legacy_invoices: usize,
    pub billstream_invoices: usize,
    pub matched: usize,
    pub mismatched: usize,
    pub only_legacy: usize,
    pub only_billstream: usize,
    pub tolerance: String,
    pub period: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub legacy: String,
    pub against: String,
    pub summary: Summary,
    pub totals: Vec<CurrencyTotals>,
    pub matches: Vec<Compared>,
    pub mismatches: Vec<Compared>,
    pub only_legacy: Vec<OneSided>,
    pub only_billstream: Vec<OneSided>,
    /// Why no input events are listed, when they cannot be.
    pub lineage_note: Option<String>,
}

impl Report {
    /// Everything matched within the tolerance.
    pub fn all_match(&self) -> bool {
        self.mismatches.is_empty() && self.only_legacy.is_empty() && self.only_billstream.is_empty()
    }
}

/// billstream's invoices of one account and period, summed.
struct Group<'a> {
    currency: Currency,
    total: Minor,
    lines: BTreeMap<String, Minor>,
    invoices: Vec<&'a Issued>,
    /// More than one currency among them.
    mixed: bool,
}

fn sum(a: Minor, b: Minor) -> anyhow::Result<Minor> {
    a.checked_add(b)
        .ok_or_else(|| anyhow::anyhow!("amounts overflow"))
}

fn within(c: Currency, diff: Minor, tolerance: Decimal) -> bool {
    c.to_major(diff).abs() <= tolerance
}

/// The name of a billstream line (as `billstream::issued_from_json` names it).
fn line_name(kind: LineKind, metric: Option<&str>) -> String {
    match (kind, metric) {
        (LineKind::Usage | LineKind::LateUsage, Some(m)) => m.to_string(),
        (LineKind::Usage, None) => "usage".into(),
        (LineKind::LateUsage, None) => "late_usage".into(),
        (LineKind::MinimumSpend, _) => "minimum_spend".into(),
        (LineKind::RecurringFee, _) => "recurring_fee".into(),
        (LineKind::Adjustment, _) => "adjustment".into(),
        (LineKind::Discount, _) => "discount".into(),
    }
}

/// The inputs behind the lines named `name` of `invoices`, from the
/// account's journal.
fn inputs_behind(journal: &[StoredJournalEntry], invoices: &[&Issued], name: &str) -> Vec<Input> {
    let mut out = Vec::new();
    for inv in invoices {
        let Some(issued) = journal.iter().find_map(|e| match &e.entry.event {
            DomainEvent::InvoiceIssued { invoice } if invoice.invoice_id == inv.invoice_id => {
                Some(invoice.as_ref())
            }
            _ => None,
        }) else {
            continue;
        };
        for (i, line) in issued.lines.iter().enumerate() {
            if line_name(line.kind, line.metric.as_deref()) != name {
                continue;
            }
            let Some(mut tracer) = Tracer::new(issued, i) else {
                continue;
            };
            for e in journal {
                tracer.see(e);
                if tracer.done {
                    break;
                }
            }
            out.extend(tracer.inputs.into_iter().map(|x| Input {
                event_id: x.event_id,
                entry_type: x.entry_type,
                journal_seq: x.journal_seq,
                invoice_id: inv.invoice_id.clone(),
                quantity: x.quantity,
                subject: x.subject,
            }));
        }
    }
    out
}

/// Compare `legacy` with `ours`, keeping only `period` when given.
pub fn reconcile(
    legacy: &[LegacyInvoice],
    legacy_name: &str,
    ours: &billstream::Read,
    period: Option<&str>,
    tolerance: Decimal,
) -> anyhow::Result<Report> {
    let keep = |p: &str| period.is_none_or(|want| want == p);
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for inv in ours.invoices.iter().filter(|i| keep(&i.period)) {
        let g = groups
            .entry((inv.account.clone(), inv.period.clone()))
            .or_insert_with(|| Group {
                currency: inv.currency,
                total: Minor(0),
                lines: BTreeMap::new(),
                invoices: Vec::new(),
                mixed: false,
            });
        g.mixed |= g.currency != inv.currency;
        g.total = sum(g.total, inv.total)?;
        for (name, amount) in &inv.lines {
            let l = g.lines.entry(name.clone()).or_insert(Minor(0));
            *l = sum(*l, *amount)?;
        }
        g.invoices.push(inv);
    }
    let legacy: BTreeMap<(String, String), &LegacyInvoice> = legacy
        .iter()
        .filter(|l| keep(&l.period))
        .map(|l| ((l.account.clone(), l.period.clone()), l))
        .collect();
    let mut report = Report {
        legacy: legacy_name.to_string(),
        against: ours.source.clone(),
        summary: Summary {
            legacy_invoices: legacy.len(),
            billstream_invoices: groups.values().map(|g| g.invoices.len()).sum(),
            matched: 0,
            mismatched: 0,
            only_legacy: 0,
            only_billstream: 0,
            tolerance: tolerance.to_string(),
            period: period.map(str::to_string),
        },
        totals: Vec::new(),
        matches: Vec::new(),
        mismatches: Vec::new(),
        only_legacy: Vec::new(),
        only_billstream: Vec::new(),
        lineage_note: None,
    };
    let mut totals: BTreeMap<String, (Currency, Minor, Minor)> = BTreeMap::new();
    let mut add_total = |c: Currency, legacy: Minor, ours: Minor| -> anyhow::Result<()> {
        let t = totals
            .entry(c.code().to_string())
            .or_insert((c, Minor(0), Minor(0)));
        t.1 = sum(t.1, legacy)?;
        t.2 = sum(t.2, ours)?;
        Ok(())
    };
    let keys: BTreeSet<&(String, String)> = groups.keys().chain(legacy.keys()).collect();
    for key in keys {
        let (account, period) = key.clone();
        match (legacy.get(key), groups.get(key)) {
            (Some(l), None) => {
                add_total(l.currency, l.total, Minor(0))?;
                report.only_legacy.push(OneSided {
                    account,
                    period,
                    currency: l.currency.code().to_string(),
                    total: l.currency.format(l.total),
                    from: vec![l.at.clone()],
                });
            }
            (None, Some(g)) => {
                add_total(g.currency, Minor(0), g.total)?;
                report.only_billstream.push(OneSided {
                    account,
                    period,
                    currency: g.currency.code().to_string(),
                    total: g.currency.format(g.total),
                    from: g.invoices.iter().map(|i| i.invoice_id.clone()).collect(),
                });
            }
            (Some(l), Some(g)) => {
                let c = l.currency;
                let same_currency = g.currency == c && !g.mixed;
                if same_currency {
                    add_total(c, l.total, g.total)?;
                } else {
                    add_total(c, l.total, Minor(0))?;
                    add_total(g.currency, Minor(0), g.total)?;
                }
                let diff = g
                    .total
                    .checked_sub(l.total)
                    .ok_or_else(|| anyhow::anyhow!("amounts overflow"))?;
                let mut lines = Vec::new();
                if same_currency && !l.lines.is_empty() {
                    let names: BTreeSet<&String> = l.lines.keys().chain(g.lines.keys()).collect();
                    for name in names {
                        let (a, b) = (l.lines.get(name), g.lines.get(name));
                        let d = b
                            .copied()
                            .unwrap_or(Minor(0))
                            .checked_sub(a.copied().unwrap_or(Minor(0)))
                            .ok_or_else(|| anyhow::anyhow!("amounts overflow"))?;
                        if within(c, d, tolerance) && a.is_some() == b.is_some() {
                            continue;
                        }
                        let inputs = match ours.journal.get(&account) {
                            Some(j) if b.is_some() => inputs_behind(j, &g.invoices, name),
                            _ => Vec::new(),
                        };
                        lines.push(LineDiff {
                            line: name.clone(),
                            legacy: a.map(|m| c.format(*m)),
                            billstream: b.map(|m| c.format(*m)),
                            difference: c.format(d),
                            inputs,
                        });
                    }
                }
                let matched = same_currency && within(c, diff, tolerance) && lines.is_empty();
                let row = Compared {
                    account,
                    period,
                    currency: c.code().to_string(),
                    billstream_currency: (!same_currency).then(|| {
                        g.invoices
                            .iter()
                            .map(|i| i.currency.code().to_string())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join("+")
                    }),
                    legacy_total: c.format(l.total),
                    billstream_total: g.currency.format(g.total),
                    difference: same_currency.then(|| c.format(diff)),
                    invoices: g.invoices.iter().map(|i| i.invoice_id.clone()).collect(),
                    legacy_at: l.at.clone(),
                    lines,
                };
                if matched {
                    report.matches.push(row);
                } else {
                    report.mismatches.push(row);
                }
            }
            (None, None) => unreachable!("a key of one side"),
        }
    }
    report.totals = totals
        .into_values()
        .map(|(c, l, o)| CurrencyTotals {
            currency: c.code().to_string(),
            legacy: c.format(l),
            billstream: c.format(o),
            difference: c.format(o.saturating_sub(l)),
        })
        .collect();
    report.summary.matched = report.matches.len();
    report.summary.mismatched = report.mismatches.len();
    report.summary.only_legacy = report.only_legacy.len();
    report.summary.only_billstream = report.only_billstream.len();
    let line_diffs = report.mismatches.iter().any(|m| !m.lines.is_empty());
    if line_diffs && !ours.journal_found {
        report.lineage_note =
            Some("no journal was read, so the input events behind lines are not listed".into());
    }
    Ok(report)
}

/// Most input events the table lists per line (the JSON has them all).
const TABLE_INPUTS: usize = 8;

/// The report as a readable table.
pub fn table(r: &Report) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut details: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut all: Vec<(&str, &str, usize, u8)> = Vec::new(); // (account, period, index, kind)
    for (i, c) in r.matches.iter().enumerate() {
        all.push((&c.account, &c.period, i, 0));
    }
    for (i, c) in r.mismatches.iter().enumerate() {
        all.push((&c.account, &c.period, i, 1));
    }
    for (i, c) in r.only_legacy.iter().enumerate() {
        all.push((&c.account, &c.period, i, 2));
    }
    for (i, c) in r.only_billstream.iter().enumerate() {
        all.push((&c.account, &c.period, i, 3));
    }
    all.sort();
    rows.push(
        [
            "account",
            "period",
            "currency",
            "legacy",
            "billstream",
            "difference",
            "status",
        ]
        .map(str::to_string),
    );
    for (_, _, i, kind) in all {
        match kind {
            0 | 1 => {
                let c = if kind == 0 {
                    &r.matches[i]
                } else {
                    &r.mismatches[i]
                };
                let status = match (kind, &c.billstream_currency) {
                    (0, _) => "match".to_string(),
                    (_, Some(other)) => format!("MISMATCH: billstream bills in {other}"),
                    _ => "MISMATCH".to_string(),
                };
                rows.push([
                    c.account.clone(),
                    c.period.clone(),
                    c.currency.clone(),
                    c.legacy_total.clone(),
                    c.billstream_total.clone(),
                    c.difference.clone().unwrap_or_else(|| "-".into()),
                    status,
                ]);
                let mut d = Vec::new();
                for l in &c.lines {
                    d.push(format!(
                        "  line {}: legacy {}, billstream {}, difference {}",
                        l.line,
                        l.legacy.as_deref().unwrap_or("(none)"),
                        l.billstream.as_deref().unwrap_or("(none)"),
                        l.difference
                    ));
                    if !l.inputs.is_empty() {
                        let shown: Vec<String> = l
                            .inputs
                            .iter()
                            .take(TABLE_INPUTS)
                            .map(|x| match (&x.quantity, &x.subject) {
                                (Some(q), Some(s)) => {
                                    format!("{} ({} {q} of {s})", x.event_id, x.entry_type)
                                }
                                _ => format!("{} ({})", x.event_id, x.entry_type),
                            })
                            .collect();
                        let more = l.inputs.len().saturating_sub(TABLE_INPUTS);
                        d.push(format!(
                            "    inputs behind billstream's line: {}{}",
                            shown.join(", "),
                            if more > 0 {
                                format!(", and {more} more (--json lists them all)")
                            } else {
                                String::new()
                            }
                        ));
                    }
                }
                if kind == 1 {
                    d.push(format!(
                        "    billstream invoices: {}; legacy: {}",
                        c.invoices.join(", "),
                        c.legacy_at
                    ));
                }
                if !d.is_empty() {
                    details.insert(rows.len() - 1, d);
                }
            }
            _ => {
                let (c, legacy) = if kind == 2 {
                    (&r.only_legacy[i], true)
                } else {
                    (&r.only_billstream[i], false)
                };
                rows.push([
                    c.account.clone(),
                    c.period.clone(),
                    c.currency.clone(),
                    if legacy { c.total.clone() } else { "-".into() },
                    if legacy { "-".into() } else { c.total.clone() },
                    "-".into(),
                    format!(
                        "only in {} ({})",
                        if legacy { "legacy" } else { "billstream" },
                        c.from.join(", ")
                    ),
                ]);
            }
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|col| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "billstream reconcile: legacy {} against {}{}, tolerance {}\n\n",
        r.legacy,
        r.against,
        r.summary
            .period
            .as_deref()
            .map(|p| format!(", period {p}"))
            .unwrap_or_default(),
        r.summary.tolerance
    );
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(col, cell)| {
                if col == 6 {
                    cell.clone()
                } else if (3..=5).contains(&col) {
                    format!("{cell:>w$}", w = widths[col])
                } else {
                    format!("{cell:<w$}", w = widths[col])
                }
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
        for d in details.get(&n).into_iter().flatten() {
            out.push_str(d);
            out.push('\n');
        }
    }
    out.push('\n');
    for t in &r.totals {
        out.push_str(&format!(
            "Totals {}: legacy {}, billstream {}, difference {}\n",
            t.currency, t.legacy, t.billstream, t.difference
        ));
    }
    let s = &r.summary;
    out.push_str(&format!(
        "{} account-periods: {} match, {} mismatch, {} only in legacy, {} only in billstream ({} legacy invoices, {} billstream invoices)\n",
        s.matched + s.mismatched + s.only_legacy + s.only_billstream,
        s.matched,
        s.mismatched,
        s.only_legacy,
        s.only_billstream,
        s.legacy_invoices,
        s.billstream_invoices
    ));
    if let Some(note) = &r.lineage_note {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}
