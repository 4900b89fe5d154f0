//! The settlement report: per UTC month and currency, what was invoiced,
//! paid with credit (paid and promotional apart) and collected, what is
//! outstanding and overdue at the month's end, and the credit the
//! customers hold (the liability, paid and promotional apart) with what
//! moved it, from the journal alone.
//!
//! Two figures are computed twice, from different entries, and must agree
//! (`checks`):
//! - receivables: outstanding at the month's end = outstanding at its
//!   start + invoiced − credit applied − collected (the flows), against the
//!   sum of the open invoices' amounts due as the invoice entries leave them
//!   (`invoice_issued`, `invoice_partially_paid`, `invoice_paid`);
//! - credit: paid + promotional liability at the month's end (the flows by
//!   grant kind), against the sum of each account's last `balance` in the
//!   journal (the running balance the credit entries carry).
//!
//! Invoiced counts an invoice's total when positive (a negative total is
//! credit given: `credit_added` from a negative invoice). Collected is the
//! money received from payments and bank transfers that went to invoices:
//! `payment_succeeded` + `bank_transfer_applied` − the part of them that
//! became credit (overpayments, unmatched transfers).

use std::collections::BTreeMap;

use serde::Serialize;

use super::journal::{add, currency_of, month_of, sub, Journal, ReportError, Window};
use super::Check;
use crate::engine::credit::{drawn_of, GrantDraw, GrantKind};
use crate::engine::events::{CreditSource, DomainEvent};
use crate::engine::money::{Currency, Minor};

/// One month in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthRow {
    pub month: String,
    pub currency: Currency,
    /// Invoices issued in the month.
    pub invoices: u64,
    pub invoiced: Minor,
    pub credit_applied_paid: Minor,
    pub credit_applied_promotional: Minor,
    pub collected: Minor,
    pub outstanding_opening: Minor,
    pub outstanding: Minor,
    /// The part of `outstanding` on invoices past their due date.
    pub overdue: Minor,
    pub credit_granted_paid: Minor,
    pub credit_granted_promotional: Minor,
    pub credit_refunded: Minor,
    pub credit_expired_paid: Minor,
    pub credit_expired_promotional: Minor,
    pub credit_paid_opening: Minor,
    pub credit_paid: Minor,
    pub credit_promotional_opening: Minor,
    pub credit_promotional: Minor,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettlementReport {
    pub window: Window,
    #[serde(skip)]
    pub rows: Vec<MonthRow>,
    pub checks: Vec<Check>,
}

/// What moved in one month of one currency, summed over accounts.
#[derive(Debug, Default)]
struct Flows {
    invoices: u64,
    invoiced: Minor,
    applied: [Minor; 2],
    /// Payments and bank transfers.
    received: Minor,
    /// The part of `received` that became credit.
    to_credit: Minor,
    granted: [Minor; 2],
    refunded: [Minor; 2],
    expired: [Minor; 2],
    /// Changes of the open invoices' amounts due, of their overdue part,
    /// and of the journal's credit balance.
    d_outstanding: Minor,
    d_overdue: Minor,
    d_balance: Minor,
}

const PAID: usize = 0;
const PROMO: usize = 1;

fn slot(kind: GrantKind) -> usize {
    match kind {
        GrantKind::Paid => PAID,
        GrantKind::Promotional => PROMO,
    }
}

/// `amount` split by grant kind; a journal written before grants (no
/// draws) drew paid credit.
fn by_kind(amount: Minor, draws: &[GrantDraw]) -> Result<[Minor; 2], ReportError> {
    let promo = drawn_of(draws, GrantKind::Promotional);
    Ok([sub(amount, promo, "credit drawn")?, promo])
}

fn add2(a: &mut [Minor; 2], b: [Minor; 2], what: &str) -> Result<(), ReportError> {
    a[PAID] = add(a[PAID], b[PAID], what)?;
    a[PROMO] = add(a[PROMO], b[PROMO], what)?;
    Ok(())
}

/// An open invoice: its amount due and whether it is overdue.
type Open = BTreeMap<String, (Minor, bool)>;

fn receivables(open: &Open) -> Result<(Minor, Minor), ReportError> {
    let mut due = Minor::ZERO;
    let mut overdue = Minor::ZERO;
    for (amount, late) in open.values() {
        due = add(due, *amount, "outstanding")?;
        if *late {
            overdue = add(overdue, *amount, "overdue")?;
        }
    }
    Ok((due, overdue))
}

/// The settlement report of `journal`, rows within `window` (the months
/// before it give the opening balances).
pub fn settlement(journal: &Journal, window: &Window) -> Result<SettlementReport, ReportError> {
    let mut flows: BTreeMap<(String, String), (Currency, Flows)> = BTreeMap::new();
    for (account, entries) in journal {
        let currency = currency_of(account, entries)?;
        let mut open = Open::new();
        let mut balance = Minor::ZERO;
        for e in entries {
            let (_, f) = flows
                .entry((currency.code().to_string(), month_of(e)))
                .or_insert_with(|| (currency, Flows::default()));
            let (due_before, overdue_before) = receivables(&open)?;
            let balance_before = balance;
            match &e.entry.event {
                DomainEvent::InvoiceIssued { invoice } => {
                    f.invoices += 1;
                    f.invoiced = add(f.invoiced, invoice.total.max(Minor::ZERO), "invoiced")?;
                    if invoice.amount_due.is_positive() {
                        open.insert(invoice.invoice_id.clone(), (invoice.amount_due, false));
                    }
                }
                DomainEvent::CreditApplied {
                    amount,
                    balance: b,
                    grants,
                    ..
                } => {
                    add2(&mut f.applied, by_kind(*amount, grants)?, "credit applied")?;
                    balance = *b;
                }
                DomainEvent::CreditAdded {
                    source,
                    amount,
                    balance: b,
                    grant,
                } => {
                    if matches!(
                        source,
                        CreditSource::Overpayment | CreditSource::UnmatchedTransfer
                    ) {
                        f.to_credit = add(f.to_credit, *amount, "collected")?;
                    }
                    let kind = grant.as_ref().map_or(GrantKind::Paid, |g| g.kind);
                    let s = slot(kind);
                    f.granted[s] = add(f.granted[s], *amount, "credit granted")?;
                    balance = *b;
                }
                DomainEvent::CreditRefunded {
                    amount,
                    balance: b,
                    grants,
                    ..
                } => {
                    add2(&mut f.refunded, by_kind(*amount, grants)?, "refunds")?;
                    balance = *b;
                }
                DomainEvent::CreditExpired {
                    kind,
                    amount,
                    balance: b,
                    ..
                } => {
                    let s = slot(*kind);
                    f.expired[s] = add(f.expired[s], *amount, "credit expired")?;
                    balance = *b;
                }
                DomainEvent::PaymentSucceeded { amount, .. }
                | DomainEvent::BankTransferApplied { amount, .. } => {
                    f.received = add(f.received, *amount, "collected")?;
                }
                DomainEvent::InvoicePartiallyPaid {
                    invoice_id,
                    amount_due,
                    ..
                } => {
                    if let Some(o) = open.get_mut(invoice_id) {
                        o.0 = *amount_due;
                    }
                }
                DomainEvent::InvoicePaid { invoice_id, .. } => {
                    open.remove(invoice_id);
                }
                DomainEvent::InvoiceOverdue { invoice_id, .. } => {
                    if let Some(o) = open.get_mut(invoice_id) {
                        o.1 = true;
                    }
                }
                _ => {}
            }
            let (due, overdue) = receivables(&open)?;
            f.d_outstanding = add(
                f.d_outstanding,
                sub(due, due_before, "outstanding")?,
                "outstanding",
            )?;
            f.d_overdue = add(
                f.d_overdue,
                sub(overdue, overdue_before, "overdue")?,
                "overdue",
            )?;
            f.d_balance = add(
                f.d_balance,
                sub(balance, balance_before, "credit")?,
                "credit",
            )?;
        }
    }
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    // Balances carried from month to month, per currency.
    let mut carried: BTreeMap<String, [Minor; 5]> = BTreeMap::new();
    for ((code, month), (currency, f)) in flows {
        let [outstanding_opening, overdue_opening, balance_opening, paid_opening, promo_opening] =
            *carried.entry(code.clone()).or_default();
        let outstanding = add(outstanding_opening, f.d_outstanding, "outstanding")?;
        let overdue = add(overdue_opening, f.d_overdue, "overdue")?;
        let journal_balance = add(balance_opening, f.d_balance, "credit")?;
        let mut liability = [paid_opening, promo_opening];
        add2(&mut liability, f.granted, "credit")?;
        for moved in [f.applied, f.refunded, f.expired] {
            for s in [PAID, PROMO] {
                liability[s] = sub(liability[s], moved[s], "credit")?;
            }
        }
        let collected = sub(f.received, f.to_credit, "collected")?;
        carried.insert(
            code.clone(),
            [
                outstanding,
                overdue,
                journal_balance,
                liability[PAID],
                liability[PROMO],
            ],
        );
        if !window.has_month(&month) {
            continue;
        }
        let c = currency;
        // Receivables by the flows.
        let mut flowed = add(outstanding_opening, f.invoiced, "outstanding")?;
        for out in [f.applied[PAID], f.applied[PROMO], collected] {
            flowed = sub(flowed, out, "outstanding")?;
        }
        checks.push(Check::new(
            format!("outstanding {month} {code} = opening + invoiced − credit applied − collected, against the open invoices' amounts due"),
            c.format(flowed),
            c.format(outstanding),
        ));
        checks.push(Check::new(
            format!(
                "credit {month} {code} = paid + promotional, against the journal's credit balances"
            ),
            c.format(add(liability[PAID], liability[PROMO], "credit")?),
            c.format(journal_balance),
        ));
        rows.push(MonthRow {
            month,
            currency,
            invoices: f.invoices,
            invoiced: f.invoiced,
            credit_applied_paid: f.applied[PAID],
            credit_applied_promotional: f.applied[PROMO],
            collected,
            outstanding_opening,
            outstanding,
            overdue,
            credit_granted_paid: f.granted[PAID],
            credit_granted_promotional: f.granted[PROMO],
            credit_refunded: add(f.refunded[PAID], f.refunded[PROMO], "refunds")?,
            credit_expired_paid: f.expired[PAID],
            credit_expired_promotional: f.expired[PROMO],
            credit_paid_opening: paid_opening,
            credit_paid: liability[PAID],
            credit_promotional_opening: promo_opening,
            credit_promotional: liability[PROMO],
        });
    }
    Ok(SettlementReport {
        window: window.clone(),
        rows,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::journal::testing::*;

    fn month<'a>(r: &'a SettlementReport, m: &str) -> &'a MonthRow {
        r.rows
            .iter()
            .find(|x| x.month == m)
            .unwrap_or_else(|| panic!("no row {m} in {:#?}", r.rows))
    }

    fn reconciles(r: &SettlementReport) {
        assert!(!r.checks.is_empty());
        assert!(r.checks.iter().all(|c| c.ok), "{:#?}", r.checks);
    }

    #[test]
    fn issue_14_outstanding_is_invoiced_less_credit_applied_less_collected() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            // 50.00 of promotional credit, then an invoice of 80.00 that
            // takes it: 30.00 due.
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                credit_added(CreditSource::TopUp, GrantKind::Promotional, 5000, 5000),
            )
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                issued("inv_a_1", 8000, 5000, 5000),
            )
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                credit_applied("inv_a_1", &[(GrantKind::Promotional, 5000)], 0),
            )
            // 10.00 arrives by card: 20.00 due, and overdue.
            .at("a", "2026-03-03T00:00:00Z", succeeded("inv_a_1", 1, 1000))
            .at(
                "a",
                "2026-03-03T00:00:00Z",
                partially_paid("inv_a_1", 1000, 2000),
            )
            .at("a", "2026-03-15T00:00:00Z", overdue("inv_a_1", 2000));
        let r = settlement(&j.0, &Window::All).unwrap();
        let m = month(&r, "2026-03");
        // 80.00 − 50.00 promotional − 10.00 collected = 20.00, all overdue.
        assert_eq!((m.invoices, m.invoiced), (1, Minor(8000)));
        assert_eq!(
            (m.credit_applied_paid, m.credit_applied_promotional),
            (Minor(0), Minor(5000))
        );
        assert_eq!(m.collected, Minor(1000));
        assert_eq!((m.outstanding, m.overdue), (Minor(2000), Minor(2000)));
        // 50.00 promotional granted and all of it applied: none held.
        assert_eq!(
            (m.credit_granted_promotional, m.credit_promotional),
            (Minor(5000), Minor(0))
        );
        reconciles(&r);
    }

    #[test]
    fn issue_14_an_overpayment_is_credit_not_collection() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at("a", "2026-03-01T00:00:00Z", issued("inv_a_1", 3000, 0, 0))
            // 45.00 paid against 30.00 due: 15.00 becomes paid credit.
            .at("a", "2026-03-02T00:00:00Z", succeeded("inv_a_1", 1, 4500))
            .at("a", "2026-03-02T00:00:00Z", paid("inv_a_1", 3000))
            .at(
                "a",
                "2026-03-02T00:00:00Z",
                credit_added(CreditSource::Overpayment, GrantKind::Paid, 1500, 1500),
            );
        let r = settlement(&j.0, &Window::All).unwrap();
        let m = month(&r, "2026-03");
        assert_eq!(m.collected, Minor(3000));
        assert_eq!(m.outstanding, Minor(0));
        assert_eq!(
            (m.credit_granted_paid, m.credit_paid),
            (Minor(1500), Minor(1500))
        );
        reconciles(&r);
    }

    #[test]
    fn issue_14_months_carry_their_closing_balances_into_the_next() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at(
                "a",
                "2026-03-10T00:00:00Z",
                credit_added(CreditSource::TopUp, GrantKind::Paid, 4000, 4000),
            )
            .at(
                "a",
                "2026-03-31T00:00:00Z",
                issued("inv_a_1", 10000, 4000, 0),
            )
            .at(
                "a",
                "2026-03-31T00:00:00Z",
                credit_applied("inv_a_1", &[(GrantKind::Paid, 4000)], 0),
            )
            // April: a top-up of 100.00 pays the 60.00 left; 40.00 stays
            // as credit, of which 15.00 is refunded.
            .at(
                "a",
                "2026-04-02T00:00:00Z",
                credit_added(CreditSource::TopUp, GrantKind::Paid, 10000, 10000),
            )
            .at(
                "a",
                "2026-04-02T00:00:00Z",
                credit_applied("inv_a_1", &[(GrantKind::Paid, 6000)], 4000),
            )
            .at("a", "2026-04-02T00:00:00Z", paid("inv_a_1", 6000))
            .at("a", "2026-04-20T00:00:00Z", refunded(1500, 2500));
        let all = settlement(&j.0, &Window::All).unwrap();
        let march = month(&all, "2026-03");
        // 100.00 − 40.00 credit = 60.00 outstanding at March's end.
        assert_eq!(
            (march.outstanding_opening, march.outstanding),
            (Minor(0), Minor(6000))
        );
        let april = settlement(&j.0, &Window::Month("2026-04".into())).unwrap();
        assert_eq!(april.rows.len(), 1);
        let a = month(&april, "2026-04");
        assert_eq!(
            (a.outstanding_opening, a.outstanding),
            (Minor(6000), Minor(0))
        );
        assert_eq!(
            a.collected,
            Minor(0),
            "a top-up is credit, applied as credit"
        );
        assert_eq!(a.credit_applied_paid, Minor(6000));
        // 0 + 100.00 − 60.00 − 15.00 = 25.00 paid credit held.
        assert_eq!(
            (a.credit_paid_opening, a.credit_refunded, a.credit_paid),
            (Minor(0), Minor(1500), Minor(2500))
        );
        reconciles(&april);
    }

    #[test]
    fn issue_14_expired_promotional_credit_leaves_the_liability() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                credit_added(CreditSource::TopUp, GrantKind::Promotional, 500, 500),
            )
            .at(
                "a",
                "2026-03-02T00:00:00Z",
                credit_added(CreditSource::CreditNote, GrantKind::Paid, 200, 700),
            )
            .at(
                "a",
                "2026-03-20T00:00:00Z",
                DomainEvent::CreditExpired {
                    grant_id: "g".into(),
                    kind: GrantKind::Promotional,
                    amount: Minor(500),
                    balance: Minor(200),
                    expires_at: crate::engine::time::Timestamp(0),
                },
            );
        let r = settlement(&j.0, &Window::All).unwrap();
        let m = month(&r, "2026-03");
        assert_eq!(
            (
                m.credit_expired_promotional,
                m.credit_promotional,
                m.credit_paid
            ),
            (Minor(500), Minor(0), Minor(200))
        );
        reconciles(&r);
    }

    #[test]
    fn issue_14_a_journal_whose_invoice_entries_disagree_with_its_money_fails_the_check() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at("a", "2026-03-01T00:00:00Z", issued("inv_a_1", 3000, 0, 0))
            // 10.00 received, but the invoice entry says 25.00 is still due.
            .at("a", "2026-03-02T00:00:00Z", succeeded("inv_a_1", 1, 1000))
            .at(
                "a",
                "2026-03-02T00:00:00Z",
                partially_paid("inv_a_1", 500, 2500),
            );
        let r = settlement(&j.0, &Window::All).unwrap();
        let failed: Vec<&Check> = r.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{:#?}", r.checks);
        // By the flows 30.00 − 10.00 = 20.00; the invoice says 25.00.
        assert_eq!(
            (failed[0].report.as_str(), failed[0].journal.as_str()),
            ("20.00", "25.00")
        );
        assert!(failed[0].what.starts_with("outstanding 2026-03 EUR"));
    }

    #[test]
    fn issue_14_a_credit_balance_the_flows_do_not_explain_fails_the_check() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            // 10.00 added, but the journal's balance says 12.00.
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                credit_added(CreditSource::TopUp, GrantKind::Paid, 1000, 1200),
            );
        let r = settlement(&j.0, &Window::All).unwrap();
        let failed: Vec<&Check> = r.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{:#?}", r.checks);
        assert_eq!(
            (failed[0].report.as_str(), failed[0].journal.as_str()),
            ("10.00", "12.00")
        );
    }
}
