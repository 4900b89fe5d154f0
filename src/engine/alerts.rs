//! Spend alerts: amounts of the running draft at which the account is told
//! it has reached them (issue 13, item 3).
//!
//! A `ThresholdsSet` command (accounts topic) gives the account up to
//! `MAX_THRESHOLDS` positive amounts in its currency; they replace those it
//! had (an empty list removes them). Duplicates are dropped and the rest
//! kept in ascending order.
//!
//! The rules, in one place:
//! - **The amount watched** is the running draft's subtotal, before tax and
//!   credit: exactly `Engine::draft(st).subtotal`, what the read API shows
//!   as the draft and what the period's invoice would carry if it closed
//!   now — usage and minimum-spend lines of the current period, late-usage
//!   and debit-adjustment lines waiting for it, the next period's recurring
//!   fee (charged in advance, so it is on the draft from the period's
//!   first instant) and the coupon's discount line.
//! - **When** it is checked: after every input the account applies (usage,
//!   late usage, adjustments, coupons, the `ThresholdsSet` itself…) and
//!   after a period close has opened the next draft. Every threshold at or
//!   below the subtotal that has not fired in this period fires then, in
//!   ascending order, one `SpendThresholdReached` each: one event that
//!   crosses two thresholds fires both.
//! - **Once per period**: the thresholds reached are state
//!   (`thresholds_reached`), emptied when the next draft opens, so a
//!   duplicate or redelivered input (refused by dedup before it changes
//!   anything) and a replay fire nothing twice, and a subtotal that falls
//!   (a `latest` gauge, a coupon) and rises again fires nothing again.
//!   Setting the thresholds again keeps what was reached this period.
//! - Accounts without thresholds pay one emptiness check per input; those
//!   with thresholds work the draft out once per input until every
//!   threshold has fired in the period.

use rust_decimal::Decimal;

use super::account::AccountState;
use super::events::DomainEvent;
use super::fold::{Emit, Engine};
use super::money::{Currency, Minor};
use super::reject::Rejection;

/// The most thresholds an account may have.
pub const MAX_THRESHOLDS: usize = 10;

/// Check thresholds and `invoice_at` in `currency`: the thresholds
/// deduplicated and ascending, in minor units. Errors name the field.
pub(crate) fn parse_alerts(
    currency: Currency,
    thresholds: &[Decimal],
    invoice_at: Option<Decimal>,
) -> Result<(Vec<Minor>, Option<Minor>), Rejection> {
    if thresholds.len() > MAX_THRESHOLDS {
        return Err(Rejection::InvalidField {
            field: "thresholds".into(),
            reason: format!(
                "{} thresholds given, at most {MAX_THRESHOLDS} allowed",
                thresholds.len()
            ),
        });
    }
    let amount = |field: String, t: Decimal| {
        let bad = |reason: String| Rejection::InvalidField {
            field: field.clone(),
            reason: format!("{t} {reason}"),
        };
        if t <= Decimal::ZERO {
            return Err(bad("must be positive".into()));
        }
        let minor = currency.exact(t).ok_or_else(|| {
            bad(format!(
                "must have at most {} decimals and fit in 64 bits",
                currency.exponent()
            ))
        })?;
        if !minor.within(Minor::MAX_AMOUNT) {
            return Err(bad(format!(
                "is above the largest amount, {}",
                currency.format(Minor::MAX_AMOUNT)
            )));
        }
        Ok(minor)
    };
    let mut amounts = Vec::with_capacity(thresholds.len());
    for (i, t) in thresholds.iter().enumerate() {
        amounts.push(amount(format!("thresholds[{i}]"), *t)?);
    }
    amounts.sort();
    amounts.dedup();
    let invoice_at = invoice_at
        .map(|a| amount("invoice_at".into(), a))
        .transpose()?;
    Ok((amounts, invoice_at))
}

impl Engine {
    /// Validate a `ThresholdsSet` and put its thresholds and `invoice_at`
    /// on the account: the thresholds replaced, `invoice_at` replaced when
    /// the command gives it (`Some`: an amount, or `None` to clear it) and
    /// kept when it does not (`None`: a version 1 record).
    pub(crate) fn set_thresholds(
        &self,
        st: &mut AccountState,
        thresholds: &[Decimal],
        invoice_at: Option<Option<Decimal>>,
        currency: &str,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        if let Some(closed_at) = st.closed_at {
            return Err(Rejection::AccountClosed { closed_at });
        }
        if currency != st.currency.code() {
            return Err(Rejection::InvalidField {
                field: "currency".into(),
                reason: format!(
                    "{currency:?} is not the account's currency, {}",
                    st.currency.code()
                ),
            });
        }
        let (amounts, given) = parse_alerts(st.currency, thresholds, invoice_at.flatten())?;
        let invoice_at = match invoice_at {
            Some(_) => given,
            None => st.invoice_at,
        };
        Self::put_alerts(st, amounts, invoice_at, emit);
        Ok(())
    }

    /// Put validated alerts on the account and journal them.
    pub(crate) fn put_alerts(
        st: &mut AccountState,
        amounts: Vec<Minor>,
        invoice_at: Option<Minor>,
        emit: &mut Emit,
    ) {
        st.thresholds_reached.retain(|r| amounts.contains(r));
        st.thresholds = amounts.clone();
        st.invoice_at = invoice_at;
        emit.push(
            st,
            DomainEvent::ThresholdsSet {
                thresholds: amounts,
                invoice_at,
            },
        );
    }

    /// Fire the spend alerts the running draft has reached and that have
    /// not fired in this period (see the module's rules). Inlined: on the
    /// fold's path it is one emptiness check for an account without alerts.
    #[inline(always)]
    pub(crate) fn check_thresholds(&self, st: &mut AccountState, emit: &mut Emit) {
        if !st.thresholds.is_empty() {
            self.fire_thresholds(st, emit);
        }
    }

    fn fire_thresholds(&self, st: &mut AccountState, emit: &mut Emit) {
        if st.finished || st.thresholds.len() == st.thresholds_reached.len() {
            return;
        }
        let amount = self.draft(st).subtotal;
        let due: Vec<Minor> = st
            .thresholds
            .iter()
            .copied()
            .filter(|t| *t <= amount && !st.thresholds_reached.contains(t))
            .collect();
        for threshold in due {
            st.thresholds_reached.push(threshold);
            let (invoice_id, period_start) = (st.draft_invoice_id.clone(), st.current.start);
            emit.push(
                st,
                DomainEvent::SpendThresholdReached {
                    invoice_id,
                    period_start,
                    threshold,
                    amount,
                },
            );
        }
    }
}
