//! What the reports are computed from: the published journal, by account
//! in seq order (the audit trail: every charge request, result, refund,
//! invoice and credit movement is an entry), read from an output folder of
//! `simulate`/`demo` or from the journal topic; and the window a report is
//! cut to (`--month`, `--day`). Days and months are UTC dates of the
//! entry's instant (`at`: when billstream recorded the change).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;
use crate::engine::events::DomainEvent;
use crate::engine::money::{Currency, Minor};
use crate::reconcile::billstream::{by_account, file_ending, journal_from_json, read_topic};
use crate::runtime::StoredJournalEntry;

/// Journal entries by account, each account's in seq order.
pub type Journal = BTreeMap<String, Vec<StoredJournalEntry>>;

/// Why a report cannot be made from a journal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// No entry of the account says its currency (no `account_opened`, no
    /// invoice): its amounts cannot be reported. The journal read is cut
    /// short (a topic with retention, a partial folder).
    #[error("account {0:?}: no account_opened or invoice in the journal says its currency (is the journal complete?)")]
    NoCurrency(String),
    /// A sum left the range of minor units: a corrupt journal.
    #[error("amounts of {0} overflow")]
    Overflow(String),
}

/// The part of the journal a report shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "value")]
pub enum Window {
    All,
    /// `YYYY-MM`
    Month(String),
    /// `YYYY-MM-DD`
    Day(String),
}

impl Window {
    /// From `--month` / `--day` (at most one), checked.
    pub fn parse(month: Option<&str>, day: Option<&str>) -> Result<Window, String> {
        match (month, day) {
            (Some(_), Some(_)) => Err("give --month or --day, not both".into()),
            (Some(m), None) => chrono::NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d")
                .ok()
                .filter(|_| m.len() == 7)
                .map(|_| Window::Month(m.to_string()))
                .ok_or_else(|| format!("--month {m:?} is not a month written YYYY-MM")),
            (None, Some(d)) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .ok()
                .filter(|_| d.len() == 10)
                .map(|_| Window::Day(d.to_string()))
                .ok_or_else(|| format!("--day {d:?} is not a date written YYYY-MM-DD")),
            (None, None) => Ok(Window::All),
        }
    }

    /// A day (`YYYY-MM-DD`) is in the window.
    pub fn has_day(&self, day: &str) -> bool {
        match self {
            Window::All => true,
            Window::Month(m) => day.starts_with(m.as_str()),
            Window::Day(d) => day == d,
        }
    }

    /// A month (`YYYY-MM`) is in the window (a day's window: its month).
    pub fn has_month(&self, month: &str) -> bool {
        match self {
            Window::All => true,
            Window::Month(m) => month == m,
            Window::Day(d) => d.starts_with(month),
        }
    }
}

/// The UTC day of an entry, `YYYY-MM-DD`.
pub fn day_of(e: &StoredJournalEntry) -> String {
    e.entry.at.to_rfc3339()[..10].to_string()
}

/// The UTC month of an entry, `YYYY-MM`.
pub fn month_of(e: &StoredJournalEntry) -> String {
    e.entry.at.to_rfc3339()[..7].to_string()
}

/// The account's currency: its opening's, else its first invoice's.
pub fn currency_of(account: &str, entries: &[StoredJournalEntry]) -> Result<Currency, ReportError> {
    entries
        .iter()
        .find_map(|e| match &e.entry.event {
            DomainEvent::AccountOpened { currency, .. } => Currency::from_code(currency),
            DomainEvent::InvoiceIssued { invoice } => Currency::from_code(&invoice.currency),
            _ => None,
        })
        .ok_or_else(|| ReportError::NoCurrency(account.to_string()))
}

/// `a + b`, or the overflow named by `what`.
pub fn add(a: Minor, b: Minor, what: &str) -> Result<Minor, ReportError> {
    a.checked_add(b)
        .ok_or_else(|| ReportError::Overflow(what.to_string()))
}

/// `a - b`, or the overflow named by `what`.
pub fn sub(a: Minor, b: Minor, what: &str) -> Result<Minor, ReportError> {
    a.checked_sub(b)
        .ok_or_else(|| ReportError::Overflow(what.to_string()))
}

/// The journal of an output folder of `simulate` or `demo`: its
/// `billing.journal.v1.jsonl` (or a shadow's, `<prefix>billing.journal.v1.jsonl`).
pub fn read_dir(dir: &Path) -> anyhow::Result<(Journal, String)> {
    let Some(file) = file_ending(dir, "billing.journal.v1.jsonl")? else {
        anyhow::bail!(
            "{}: no billing.journal.v1.jsonl (is it the output folder of simulate or demo?)",
            dir.display()
        );
    };
    let text = std::fs::read_to_string(&file)?;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", file.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        entries.push(journal_from_json(&v).map_err(|e| anyhow::anyhow!("{at}: {e}"))?);
    }
    Ok((by_account(entries), file.display().to_string()))
}

/// The journal topic of the configuration (`topics.journal`; a shadow's in
/// shadow mode), read from start to end without a consumer group.
pub fn read_topic_journal(
    settings: &Settings,
    timeout: Duration,
) -> anyhow::Result<(Journal, String)> {
    let topic = &settings.topics.journal;
    let mut entries = Vec::new();
    for (record, v) in read_topic(settings, topic, timeout)? {
        if record == "JournalEntry" {
            entries.push(journal_from_json(&v).map_err(|e| anyhow::anyhow!("{topic}: {e}"))?);
        }
    }
    Ok((by_account(entries), format!("topic {topic}")))
}

/// Journals built by hand for the unit tests.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use rust_decimal::Decimal;

    use super::Journal;
    use crate::engine::credit::{GrantDraw, GrantKind, GrantRef};
    use crate::engine::events::{CreditSource, DomainEvent, IssuedInvoice, JournalEntry};
    use crate::engine::money::Minor;
    use crate::engine::time::{Anchor, Period, Timestamp};
    use crate::runtime::StoredJournalEntry;

    /// An account opening in `currency`.
    pub fn opened(currency: &str) -> DomainEvent {
        DomainEvent::AccountOpened {
            plan_id: "p".into(),
            currency: currency.into(),
            timezone: "UTC".into(),
            tax_rate: Decimal::ZERO,
            anchor: Anchor::Calendar,
            opened_at: Timestamp(0),
        }
    }

    /// An invoice of `total` minor units, `promo` of `credit` from
    /// promotional grants, the rest due.
    pub fn issued(invoice_id: &str, total: i64, credit: i64, promo: i64) -> DomainEvent {
        DomainEvent::InvoiceIssued {
            invoice: Box::new(IssuedInvoice {
                invoice_id: invoice_id.into(),
                number: invoice_id.into(),
                period: Period {
                    start: Timestamp(0),
                    end: Timestamp(1),
                },
                issued_at: Timestamp(0),
                due_at: Timestamp(0),
                currency: "EUR".into(),
                lines: Vec::new(),
                subtotal: Minor(total),
                tax: Minor::ZERO,
                total: Minor(total),
                credit_applied: Minor(credit),
                credit_applied_promotional: Minor(promo),
                amount_due: Minor((total - credit).max(0)),
                interim: false,
            }),
        }
    }

    pub fn charge(invoice_id: &str, attempt: u32, amount: i64, token: &str) -> DomainEvent {
        DomainEvent::ChargeRequested {
            charge_id: format!("{invoice_id}/attempt-{attempt}"),
            invoice_id: invoice_id.into(),
            amount: Minor(amount),
            token_ref: token.into(),
            attempt,
        }
    }

    pub fn succeeded(invoice_id: &str, attempt: u32, amount: i64) -> DomainEvent {
        DomainEvent::PaymentSucceeded {
            charge_id: format!("{invoice_id}/attempt-{attempt}"),
            invoice_id: invoice_id.into(),
            amount: Minor(amount),
        }
    }

    pub fn failed(invoice_id: &str, attempt: u32, reason: &str) -> DomainEvent {
        DomainEvent::PaymentFailed {
            charge_id: format!("{invoice_id}/attempt-{attempt}"),
            invoice_id: invoice_id.into(),
            attempt,
            retryable: true,
            reason: reason.into(),
            next_retry_at: None,
        }
    }

    pub fn attached(token: &str) -> DomainEvent {
        DomainEvent::PaymentMethodAttached {
            token_ref: token.into(),
            brand: "visa".into(),
            last4: "4242".into(),
            expires: "2030-01".into(),
        }
    }

    /// Credit of `kind` added, the balance after it.
    pub fn credit_added(
        source: CreditSource,
        kind: GrantKind,
        amount: i64,
        balance: i64,
    ) -> DomainEvent {
        DomainEvent::CreditAdded {
            source,
            amount: Minor(amount),
            balance: Minor(balance),
            grant: Some(GrantRef {
                grant_id: "g".into(),
                kind,
                priority: 0,
                expires_at: None,
            }),
        }
    }

    /// Credit drawn: (kind, amount) per grant.
    pub fn draws(d: &[(GrantKind, i64)]) -> Vec<GrantDraw> {
        d.iter()
            .map(|(kind, amount)| GrantDraw {
                grant_id: "g".into(),
                kind: *kind,
                amount: Minor(*amount),
            })
            .collect()
    }

    pub fn credit_applied(invoice_id: &str, d: &[(GrantKind, i64)], balance: i64) -> DomainEvent {
        DomainEvent::CreditApplied {
            invoice_id: invoice_id.into(),
            amount: Minor(d.iter().map(|x| x.1).sum()),
            balance: Minor(balance),
            grants: draws(d),
        }
    }

    pub fn refunded(amount: i64, balance: i64) -> DomainEvent {
        DomainEvent::CreditRefunded {
            amount: Minor(amount),
            balance: Minor(balance),
            reason: "goodwill".into(),
            grants: draws(&[(GrantKind::Paid, amount)]),
        }
    }

    pub fn paid(invoice_id: &str, total: i64) -> DomainEvent {
        DomainEvent::InvoicePaid {
            invoice_id: invoice_id.into(),
            total: Minor(total),
        }
    }

    pub fn partially_paid(invoice_id: &str, paid: i64, due: i64) -> DomainEvent {
        DomainEvent::InvoicePartiallyPaid {
            invoice_id: invoice_id.into(),
            amount_paid: Minor(paid),
            amount_due: Minor(due),
        }
    }

    pub fn overdue(invoice_id: &str, due: i64) -> DomainEvent {
        DomainEvent::InvoiceOverdue {
            invoice_id: invoice_id.into(),
            amount_due: Minor(due),
            due_at: Timestamp(0),
        }
    }

    /// Entries appended per account, numbered in order.
    #[derive(Default)]
    pub struct Builder(pub Journal);

    impl Builder {
        pub fn at(&mut self, account: &str, at: &str, event: DomainEvent) -> &mut Self {
            let entries = self.0.entry(account.to_string()).or_default();
            let seq = entries.len() as u64 + 1;
            entries.push(StoredJournalEntry {
                entry: JournalEntry {
                    account_id: Arc::from(account),
                    seq,
                    at: Timestamp::parse_rfc3339(at).expect("test instant"),
                    causation_id: Arc::from(format!("cause-{seq}").as_str()),
                    event,
                },
                source: None,
            });
            self
        }
    }
}
