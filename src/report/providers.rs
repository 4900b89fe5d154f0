//! The provider report: per payment provider, UTC day and currency, the
//! charges billstream requested, the results it applied (succeeded, failed
//! by reason) and the refunds it paid out, with their amounts, from the
//! journal alone.
//!
//! The provider is the one the charge's token reference names
//! (`tok_<provider>_…`, parsed by the gateway's `TokenRef`); a result is
//! the provider's of the request it answers (its `charge_id`). A refund
//! names no provider on the contract: it is reported under the provider
//! of the account's payment method at that instant. Names in parentheses
//! are no provider's (`(unnamed)`: a token not of that form, or naming a
//! "provider" with a parenthesis, which none can have; `(unknown)`:
//! a result whose request is not in the journal read; `(none)`: a refund
//! with no payment method attached), so they cannot clash with one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::journal::{add, currency_of, day_of, Journal, ReportError, Window};
use super::Check;
use crate::engine::events::DomainEvent;
use crate::engine::money::{Currency, Minor};
use crate::gateway::TokenRef;

pub const UNNAMED: &str = "(unnamed)";
pub const UNKNOWN: &str = "(unknown)";
pub const NONE: &str = "(none)";

/// One provider's day in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDay {
    pub day: String,
    pub provider: String,
    pub currency: Currency,
    pub requested: u64,
    pub requested_amount: Minor,
    pub succeeded: u64,
    pub succeeded_amount: Minor,
    pub failed: u64,
    /// The amounts of the requests the failures answered.
    pub failed_amount: Minor,
    /// Failures by the provider's reason, counted.
    pub failed_by_reason: BTreeMap<String, u64>,
    pub refunded: u64,
    pub refunded_amount: Minor,
}

impl ProviderDay {
    fn new(day: String, provider: String, currency: Currency) -> ProviderDay {
        ProviderDay {
            day,
            provider,
            currency,
            requested: 0,
            requested_amount: Minor::ZERO,
            succeeded: 0,
            succeeded_amount: Minor::ZERO,
            failed: 0,
            failed_amount: Minor::ZERO,
            failed_by_reason: BTreeMap::new(),
            refunded: 0,
            refunded_amount: Minor::ZERO,
        }
    }
}

/// The rows (by day, provider, currency) and the checks against the journal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderReport {
    pub window: Window,
    #[serde(skip)]
    pub rows: Vec<ProviderDay>,
    pub checks: Vec<Check>,
}

type Key = (String, String, String);

/// The provider report of `journal` within `window`.
pub fn providers(journal: &Journal, window: &Window) -> Result<ProviderReport, ReportError> {
    let mut rows: BTreeMap<Key, ProviderDay> = BTreeMap::new();
    for (account, entries) in journal {
        let currency = currency_of(account, entries)?;
        // The provider and amount of each charge requested, by charge id.
        let mut charges: HashMap<&str, (String, Minor)> = HashMap::new();
        let mut method: Option<String> = None;
        for e in entries {
            let day = day_of(e);
            let keep = window.has_day(&day);
            match &e.entry.event {
                DomainEvent::PaymentMethodAttached { token_ref, .. } => {
                    method = Some(provider_named(token_ref));
                }
                DomainEvent::PaymentMethodDetached { .. } => method = None,
                DomainEvent::ChargeRequested {
                    charge_id,
                    amount,
                    token_ref,
                    ..
                } => {
                    let provider = provider_named(token_ref);
                    if keep {
                        let r = row_of(&mut rows, &day, &provider, currency);
                        r.requested += 1;
                        r.requested_amount = add(r.requested_amount, *amount, "charges requested")?;
                    }
                    charges.insert(charge_id, (provider, *amount));
                }
                DomainEvent::PaymentSucceeded {
                    charge_id, amount, ..
                } if keep => {
                    let provider = charges.get(charge_id.as_str()).map_or(UNKNOWN, |c| &c.0);
                    let r = row_of(&mut rows, &day, provider, currency);
                    r.succeeded += 1;
                    r.succeeded_amount = add(r.succeeded_amount, *amount, "charges succeeded")?;
                }
                DomainEvent::PaymentFailed {
                    charge_id, reason, ..
                } if keep => {
                    let (provider, amount) = charges
                        .get(charge_id.as_str())
                        .map_or((UNKNOWN, Minor::ZERO), |(p, a)| (p.as_str(), *a));
                    let r = row_of(&mut rows, &day, provider, currency);
                    r.failed += 1;
                    r.failed_amount = add(r.failed_amount, amount, "charges failed")?;
                    *r.failed_by_reason.entry(reason.clone()).or_default() += 1;
                }
                DomainEvent::CreditRefunded { amount, .. } if keep => {
                    let r = row_of(&mut rows, &day, method.as_deref().unwrap_or(NONE), currency);
                    r.refunded += 1;
                    r.refunded_amount = add(r.refunded_amount, *amount, "refunds")?;
                }
                _ => {}
            }
        }
    }
    let rows: Vec<ProviderDay> = rows.into_values().collect();
    let checks = check(journal, window, &rows)?;
    Ok(ProviderReport {
        window: window.clone(),
        rows,
        checks,
    })
}

/// The row of `day`, `provider` and `currency`, new if need be.
fn row_of<'a>(
    rows: &'a mut BTreeMap<Key, ProviderDay>,
    day: &str,
    provider: &str,
    currency: Currency,
) -> &'a mut ProviderDay {
    rows.entry((day.into(), provider.into(), currency.code().into()))
        .or_insert_with(|| ProviderDay::new(day.into(), provider.into(), currency))
}

/// The provider a token reference names. A name with a parenthesis is
/// none a provider can have (`gateway::config`: a-z, 0-9 and `-`), so
/// `tok_(none)_…` is `(unnamed)`, never the `(none)` marker.
pub fn provider_named(token_ref: &str) -> String {
    TokenRef::parse(token_ref)
        .provider
        .filter(|p| !p.contains(['(', ')']))
        .unwrap_or(UNNAMED)
        .to_string()
}

/// What the rows say and what the journal says, per currency.
#[derive(Default)]
struct Tally {
    requested: (u64, Minor),
    succeeded: (u64, Minor),
    failed: (u64, Minor),
    refunded: (u64, Minor),
}

fn tally(t: &mut (u64, Minor), n: u64, amount: Minor, what: &str) -> Result<(), ReportError> {
    t.0 += n;
    t.1 = add(t.1, amount, what)?;
    Ok(())
}

/// The rows against the journal, per currency: the number of charge
/// requests, results and refunds, and their amounts, counted entry by
/// entry without the grouping by provider and day (a result whose request
/// is outside the journal read counts no amount on either side).
fn check(
    journal: &Journal,
    window: &Window,
    rows: &[ProviderDay],
) -> Result<Vec<Check>, ReportError> {
    let mut from_rows: BTreeMap<String, (Currency, Tally)> = BTreeMap::new();
    for r in rows {
        let (_, t) = from_rows
            .entry(r.currency.code().to_string())
            .or_insert_with(|| (r.currency, Tally::default()));
        tally(&mut t.requested, r.requested, r.requested_amount, "rows")?;
        tally(&mut t.succeeded, r.succeeded, r.succeeded_amount, "rows")?;
        let reasons: u64 = r.failed_by_reason.values().sum();
        tally(&mut t.failed, reasons, r.failed_amount, "rows")?;
        tally(&mut t.refunded, r.refunded, r.refunded_amount, "rows")?;
    }
    let mut from_journal: BTreeMap<String, (Currency, Tally)> = BTreeMap::new();
    for (account, entries) in journal {
        let currency = currency_of(account, entries)?;
        let (_, t) = from_journal
            .entry(currency.code().to_string())
            .or_insert_with(|| (currency, Tally::default()));
        let requested: HashMap<&str, Minor> = entries
            .iter()
            .filter_map(|e| match &e.entry.event {
                DomainEvent::ChargeRequested {
                    charge_id, amount, ..
                } => Some((charge_id.as_str(), *amount)),
                _ => None,
            })
            .collect();
        for e in entries.iter().filter(|e| window.has_day(&day_of(e))) {
            match &e.entry.event {
                DomainEvent::ChargeRequested { amount, .. } => {
                    tally(&mut t.requested, 1, *amount, "journal")?
                }
                DomainEvent::PaymentSucceeded { amount, .. } => {
                    tally(&mut t.succeeded, 1, *amount, "journal")?
                }
                DomainEvent::PaymentFailed { charge_id, .. } => {
                    let amount = requested.get(charge_id.as_str()).copied();
                    tally(&mut t.failed, 1, amount.unwrap_or(Minor::ZERO), "journal")?
                }
                DomainEvent::CreditRefunded { amount, .. } => {
                    tally(&mut t.refunded, 1, *amount, "journal")?
                }
                _ => {}
            }
        }
    }
    let mut checks = Vec::new();
    for (code, (c, j)) in &from_journal {
        let empty = Tally::default();
        let r = from_rows.get(code).map_or(&empty, |(_, t)| t);
        for (what, row, journal) in [
            ("charges requested", r.requested, j.requested),
            ("charges succeeded", r.succeeded, j.succeeded),
            ("charges failed (by reason)", r.failed, j.failed),
            ("refunds", r.refunded, j.refunded),
        ] {
            checks.push(Check::new(
                format!("{what} {code}"),
                format!("{} for {}", row.0, c.format(row.1)),
                format!("{} for {}", journal.0, c.format(journal.1)),
            ));
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::journal::testing::*;

    fn row<'a>(r: &'a ProviderReport, day: &str, provider: &str) -> &'a ProviderDay {
        r.rows
            .iter()
            .find(|x| x.day == day && x.provider == provider)
            .unwrap_or_else(|| panic!("no row {day} {provider} in {:#?}", r.rows))
    }

    #[test]
    fn issue_14_provider_is_named_by_the_token_and_results_follow_their_request() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at(
                "a",
                "2026-03-01T00:00:00Z",
                charge("inv_a_1", 1, 3100, "tok_acme_x1"),
            )
            .at(
                "a",
                "2026-03-01T01:00:00Z",
                failed("inv_a_1", 1, "insufficient_funds"),
            )
            // The retry goes out the next day; its success answers it.
            .at(
                "a",
                "2026-03-02T00:00:00Z",
                charge("inv_a_1", 2, 3100, "tok_acme_x1"),
            )
            .at("a", "2026-03-02T05:00:00Z", succeeded("inv_a_1", 2, 3100));
        j.at("b", "2026-03-01T00:00:00Z", opened("EUR"))
            .at(
                "b",
                "2026-03-01T00:00:00Z",
                charge("inv_b_1", 1, 1000, "tok_globex_y"),
            )
            .at("b", "2026-03-01T03:00:00Z", succeeded("inv_b_1", 1, 1000));
        let r = providers(&j.0, &Window::All).unwrap();
        assert_eq!(r.rows.len(), 3, "{:#?}", r.rows);
        // acme on the 1st: one request of 31.00, failed for its 31.00.
        let acme1 = row(&r, "2026-03-01", "acme");
        assert_eq!((acme1.requested, acme1.requested_amount), (1, Minor(3100)));
        assert_eq!((acme1.failed, acme1.failed_amount), (1, Minor(3100)));
        assert_eq!(acme1.succeeded, 0);
        let acme2 = row(&r, "2026-03-02", "acme");
        assert_eq!((acme2.requested, acme2.succeeded), (1, 1));
        assert_eq!(acme2.succeeded_amount, Minor(3100));
        let globex = row(&r, "2026-03-01", "globex");
        assert_eq!((globex.requested, globex.succeeded), (1, 1));
        assert_eq!(globex.succeeded_amount, Minor(1000));
        assert!(r.checks.iter().all(|c| c.ok), "{:#?}", r.checks);
    }

    #[test]
    fn issue_14_failures_are_counted_by_reason_with_the_amount_requested() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"));
        for (i, reason) in ["do_not_honor", "card_expired", "do_not_honor"]
            .iter()
            .enumerate()
        {
            let inv = format!("inv_a_{i}");
            j.at(
                "a",
                "2026-03-01T00:00:00Z",
                charge(&inv, 1, 500 * (i as i64 + 1), "tok_acme_x"),
            )
            .at("a", "2026-03-01T01:00:00Z", failed(&inv, 1, reason));
        }
        let r = providers(&j.0, &Window::All).unwrap();
        let acme = row(&r, "2026-03-01", "acme");
        // 5.00 + 10.00 + 15.00 requested, all of it failed.
        assert_eq!((acme.failed, acme.failed_amount), (3, Minor(3000)));
        assert_eq!(
            acme.failed_by_reason,
            BTreeMap::from([
                ("card_expired".to_string(), 1),
                ("do_not_honor".to_string(), 2)
            ])
        );
    }

    #[test]
    fn issue_14_a_refund_is_the_provider_of_the_payment_method_then_attached() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at("a", "2026-03-05T00:00:00Z", refunded(200, 0))
            .at("a", "2026-03-06T00:00:00Z", attached("tok_globex_b1"))
            .at("a", "2026-03-07T00:00:00Z", refunded(300, 0))
            .at("a", "2026-03-08T00:00:00Z", attached("psp-card-7"))
            .at("a", "2026-03-09T00:00:00Z", refunded(100, 0));
        let r = providers(&j.0, &Window::All).unwrap();
        assert_eq!(row(&r, "2026-03-05", NONE).refunded_amount, Minor(200));
        assert_eq!(row(&r, "2026-03-07", "globex").refunded_amount, Minor(300));
        // A token not of the form tok_<provider>_… names no provider.
        assert_eq!(row(&r, "2026-03-09", UNNAMED).refunded, 1);
    }

    #[test]
    fn f9_a_token_naming_a_reserved_marker_is_not_reported_as_that_marker() {
        for marker in [NONE, UNKNOWN, UNNAMED] {
            let token = format!("tok_{marker}_x");
            assert_eq!(provider_named(&token), UNNAMED, "{token}");
        }
        assert_eq!(provider_named("tok_a(b_x"), UNNAMED);
        assert_eq!(provider_named("tok_acme-eu_x"), "acme-eu");
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR"))
            .at("a", "2026-03-05T00:00:00Z", refunded(200, 0))
            .at("a", "2026-03-05T00:00:00Z", attached("tok_(none)_x"))
            .at("a", "2026-03-05T00:00:00Z", refunded(300, 0));
        let r = providers(&j.0, &Window::All).unwrap();
        // The refund without a method is (none)'s alone.
        assert_eq!(row(&r, "2026-03-05", NONE).refunded_amount, Minor(200));
        assert_eq!(row(&r, "2026-03-05", UNNAMED).refunded_amount, Minor(300));
    }

    #[test]
    fn issue_14_a_result_without_its_request_in_the_journal_is_an_unknown_provider() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR")).at(
            "a",
            "2026-03-01T00:00:00Z",
            succeeded("inv_a_1", 1, 700),
        );
        let r = providers(&j.0, &Window::All).unwrap();
        assert_eq!(row(&r, "2026-03-01", UNKNOWN).succeeded_amount, Minor(700));
        assert!(r.checks.iter().all(|c| c.ok), "{:#?}", r.checks);
    }

    #[test]
    fn issue_14_the_window_keeps_utc_days_and_results_still_find_earlier_requests() {
        let mut j = Builder::default();
        j.at("a", "2026-03-31T23:00:00Z", opened("EUR"))
            .at(
                "a",
                "2026-03-31T23:30:00Z",
                charge("inv_a_1", 1, 900, "tok_acme_x"),
            )
            // 00:30 UTC on 1 April: an April day (days are UTC).
            .at(
                "a",
                "2026-04-01T00:30:00Z",
                failed("inv_a_1", 1, "do_not_honor"),
            );
        let april = providers(&j.0, &Window::Month("2026-04".into())).unwrap();
        assert_eq!(april.rows.len(), 1, "{:#?}", april.rows);
        // The failure is April's; its amount is the March request's 9.00.
        let acme = row(&april, "2026-04-01", "acme");
        assert_eq!(
            (acme.requested, acme.failed, acme.failed_amount),
            (0, 1, Minor(900))
        );
        let day = providers(&j.0, &Window::Day("2026-03-31".into())).unwrap();
        assert_eq!(row(&day, "2026-03-31", "acme").requested, 1);
        assert_eq!(day.rows.len(), 1);
        assert!(april.checks.iter().chain(&day.checks).all(|c| c.ok));
    }

    #[test]
    fn issue_14_currencies_are_reported_apart() {
        let mut j = Builder::default();
        j.at("a", "2026-03-01T00:00:00Z", opened("EUR")).at(
            "a",
            "2026-03-01T00:00:00Z",
            charge("inv_a_1", 1, 100, "tok_acme_x"),
        );
        j.at("b", "2026-03-01T00:00:00Z", opened("JPY")).at(
            "b",
            "2026-03-01T00:00:00Z",
            charge("inv_b_1", 1, 1200, "tok_acme_y"),
        );
        let r = providers(&j.0, &Window::All).unwrap();
        let amounts: Vec<(String, String)> = r
            .rows
            .iter()
            .map(|x| {
                (
                    x.currency.code().to_string(),
                    x.currency.format(x.requested_amount),
                )
            })
            .collect();
        // 100 cents are 1.00 EUR; 1200 yen are 1200 JPY.
        assert_eq!(
            amounts,
            [
                ("EUR".to_string(), "1.00".to_string()),
                ("JPY".to_string(), "1200".to_string())
            ]
        );
        assert_eq!(r.checks.len(), 8, "four checks per currency");
    }

    #[test]
    fn issue_14_an_account_without_a_currency_in_the_journal_is_an_error() {
        let mut j = Builder::default();
        j.at(
            "a",
            "2026-03-01T00:00:00Z",
            charge("inv_a_1", 1, 100, "tok_acme_x"),
        );
        assert_eq!(
            providers(&j.0, &Window::All),
            Err(ReportError::NoCurrency("a".into()))
        );
    }
}
