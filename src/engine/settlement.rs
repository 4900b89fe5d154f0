//! Settlement and dunning: how issued invoices get paid.
//!
//! At issue: prepaid credit first, then a charge request on the saved
//! payment method, otherwise wait for a bank transfer. Money that arrives
//! later pays open invoices oldest first; overpayment becomes credit; so
//! does a negative invoice's credit (`pay_from_credit`, the one path).
//! Failed charges are retried on the dunning schedule; due dates turn
//! unpaid invoices overdue.

use super::account::{AccountState, OpenInvoice, PaymentMethod};
use super::credit::{drawn_of, GrantKind, GrantTerms};
use super::events::{
    CreditSource, DomainEvent, DunningStop, IssuedInvoice, Line, PaymentEvent, PaymentKind,
};
use super::fold::{Emit, Engine};
use super::money::Minor;
use super::reject::Rejection;
use super::time::{Period, Timestamp};

/// The gateway's idempotency key for one attempt at one invoice.
pub fn charge_id(invoice_id: &str, attempt: u32) -> String {
    format!("{invoice_id}/attempt-{attempt}")
}

/// The attempt number a charge id stands for, if it belongs to `invoice_id`.
fn attempt_of(charge_id: &str, invoice_id: &str) -> Option<u32> {
    charge_id
        .strip_prefix(invoice_id)?
        .strip_prefix("/attempt-")?
        .parse()
        .ok()
}

/// First instant after the month "YYYY-MM" ends, in UTC.
fn expiry_end(expires: &str) -> Option<Timestamp> {
    let (y, m) = expires.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    if !(1..=12).contains(&m) {
        return None;
    }
    let d = chrono::NaiveDate::from_ymd_opt(ny, nm, 1)?;
    Some(Timestamp(
        d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros(),
    ))
}

impl Engine {
    /// Issue an invoice with `lines` and settle it as far as credit and
    /// the payment method allow. `earlier` is the (subtotal, tax) the
    /// period's interim invoices already carried (`interim.rs`; zero
    /// otherwise): the tax is that on the period's cumulative subtotal less
    /// the tax already invoiced, so the period's invoices carry exactly the
    /// tax one invoice for the period would. `interim`: an interim
    /// invoice of threshold invoicing, not the period's final one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue(
        &self,
        st: &mut AccountState,
        invoice_id: String,
        seq: u32,
        period: Period,
        lines: Vec<Line>,
        earlier: (Minor, Minor),
        interim: bool,
        emit: &mut Emit,
    ) {
        // Every line is bounded (plan limits, `Minor::MAX_AMOUNT` per line,
        // `Minor::MAX_BALANCE` for the lines waiting), so these sums sit far
        // inside `i64`; saturating is the last line, and keeps the sign.
        let subtotal = Minor::saturating_sum(lines.iter().map(|l| l.amount));
        let tax = self
            .tax(st, earlier.0.saturating_add(subtotal))
            .saturating_sub(earlier.1);
        let total = subtotal.saturating_add(tax);
        // Credit is drawn grant by grant (`credit.rs`): what each gave is
        // journaled with `CreditApplied`, and the invoice splits it by kind.
        let wanted = if total.is_positive() && st.credit.is_positive() {
            total.min(st.credit)
        } else {
            Minor::ZERO
        };
        let draws = if wanted.is_positive() {
            Self::draw_credit(st, wanted, None, emit.at)
        } else {
            Vec::new()
        };
        let credit_applied = Minor::saturating_sum(draws.iter().map(|d| d.amount));
        let credit_applied_promotional = drawn_of(&draws, GrantKind::Promotional);
        let amount_due = total.saturating_sub(credit_applied).max(Minor::ZERO);
        let due_at = emit.at.plus(self.config.payment_terms_micros);
        let number = format!("{}-{seq:05}", st.account_id);
        emit.push(
            st,
            DomainEvent::InvoiceIssued {
                invoice: Box::new(IssuedInvoice {
                    invoice_id: invoice_id.clone(),
                    number: number.clone(),
                    period,
                    issued_at: emit.at,
                    due_at,
                    currency: st.currency.code().to_string(),
                    lines,
                    subtotal,
                    tax,
                    total,
                    credit_applied,
                    credit_applied_promotional,
                    amount_due,
                    interim,
                }),
            },
        );
        if credit_applied.is_positive() {
            let balance = st.credit;
            emit.push(
                st,
                DomainEvent::CreditApplied {
                    invoice_id: invoice_id.clone(),
                    amount: credit_applied,
                    balance,
                    grants: draws,
                },
            );
            self.check_credit_low(st, emit);
        }
        if total < Minor::ZERO {
            self.add_credit(
                st,
                total.saturating_neg(),
                CreditSource::NegativeInvoice,
                emit,
            );
        }
        if amount_due.is_positive() {
            st.invoices.push(OpenInvoice {
                invoice_id,
                number,
                issued_at: emit.at,
                due_at,
                amount_due,
                paid: Minor::ZERO,
                overdue: false,
                attempts: 0,
                outstanding: None,
                next_retry_at: None,
                dunning_stopped: None,
            });
            let idx = st.invoices.len() - 1;
            self.request_charge(st, idx, emit);
        } else {
            emit.push(st, DomainEvent::InvoicePaid { invoice_id, total });
        }
        if total < Minor::ZERO {
            // A negative invoice's credit pays open invoices (an interim
            // invoice of the period, an earlier unpaid one) the way a
            // top-up's does, so nothing is dunned while credit covers it.
            self.pay_from_credit(st, emit);
        }
    }

    /// Ask the gateway for the next attempt on invoice `idx`, if a payment
    /// method is attached and no attempt is outstanding.
    fn request_charge(&self, st: &mut AccountState, idx: usize, emit: &mut Emit) {
        let Some(pm) = &st.payment_method else { return };
        let token_ref = pm.token_ref.clone();
        let inv = &mut st.invoices[idx];
        if inv.outstanding.is_some() {
            return;
        }
        inv.attempts += 1;
        inv.outstanding = Some(inv.attempts);
        inv.next_retry_at = None;
        let event = DomainEvent::ChargeRequested {
            charge_id: charge_id(&inv.invoice_id, inv.attempts),
            invoice_id: inv.invoice_id.clone(),
            amount: inv.remaining(),
            token_ref,
            attempt: inv.attempts,
        };
        emit.push(st, event);
    }

    /// Refuse an input that would take the credit balance past
    /// `Minor::MAX_BALANCE` (checked before anything changes).
    pub(crate) fn credit_room(&self, st: &AccountState, amount: Minor) -> Result<(), Rejection> {
        match st.credit.checked_add(amount) {
            Some(c) if c.within(Minor::MAX_BALANCE) => Ok(()),
            _ => Err(Rejection::InvalidAmount {
                amount: st.currency.format(amount),
                reason: format!(
                    "the credit balance would exceed the largest balance, {}",
                    st.currency.format(Minor::MAX_BALANCE)
                ),
            }),
        }
    }

    /// Add to the credit balance: paid credit without expiry (overpayments,
    /// unmatched transfers, negative invoices, and inputs without grant
    /// fields). Inputs check `credit_room` first; a negative invoice (a
    /// timer, which cannot be refused) saturates.
    pub(crate) fn add_credit(
        &self,
        st: &mut AccountState,
        amount: Minor,
        source: CreditSource,
        emit: &mut Emit,
    ) {
        self.add_granted_credit(st, amount, source, &GrantTerms::default(), emit);
    }

    /// `add_credit` under `terms` (inputs check `grant_room` first).
    pub(crate) fn add_granted_credit(
        &self,
        st: &mut AccountState,
        amount: Minor,
        source: CreditSource,
        terms: &GrantTerms,
        emit: &mut Emit,
    ) {
        self.grant_credit(st, amount, source, terms, emit);
        let threshold = st
            .currency
            .round(self.config.credit_low_threshold)
            .unwrap_or(Minor::ZERO);
        if st.credit >= threshold {
            st.credit_low_armed = true;
        }
    }

    pub(crate) fn check_credit_low(&self, st: &mut AccountState, emit: &mut Emit) {
        let threshold = st
            .currency
            .round(self.config.credit_low_threshold)
            .unwrap_or(Minor::ZERO);
        if st.credit_low_armed && st.credit < threshold {
            st.credit_low_armed = false;
            let balance = st.credit;
            emit.push(st, DomainEvent::CreditLow { balance, threshold });
        }
    }

    /// Put `amount` towards invoice `idx`; returns what was left over.
    fn pay_invoice(
        &self,
        st: &mut AccountState,
        idx: usize,
        amount: Minor,
        emit: &mut Emit,
    ) -> Minor {
        let inv = &mut st.invoices[idx];
        let take = amount.min(inv.remaining());
        inv.paid = inv.paid.saturating_add(take);
        let (invoice_id, paid, remaining) = (inv.invoice_id.clone(), inv.paid, inv.remaining());
        if remaining == Minor::ZERO {
            let total = st.invoices.remove(idx).amount_due;
            emit.push(st, DomainEvent::InvoicePaid { invoice_id, total });
        } else {
            emit.push(
                st,
                DomainEvent::InvoicePartiallyPaid {
                    invoice_id,
                    amount_paid: paid,
                    amount_due: remaining,
                },
            );
        }
        amount.saturating_sub(take)
    }

    /// Pay open invoices from credit, oldest first.
    pub(crate) fn pay_from_credit(&self, st: &mut AccountState, emit: &mut Emit) {
        while st.credit.is_positive() && !st.invoices.is_empty() {
            let wanted = st.credit.min(st.invoices[0].remaining());
            let draws = Self::draw_credit(st, wanted, None, emit.at);
            let take = Minor::saturating_sum(draws.iter().map(|d| d.amount));
            if !take.is_positive() {
                break;
            }
            let (invoice_id, balance) = (st.invoices[0].invoice_id.clone(), st.credit);
            emit.push(
                st,
                DomainEvent::CreditApplied {
                    invoice_id,
                    amount: take,
                    balance,
                    grants: draws,
                },
            );
            self.pay_invoice(st, 0, take, emit);
        }
        self.check_credit_low(st, emit);
    }

    /// Due dates and dunning retries that have come due at `emit.at`.
    pub(crate) fn fire_invoice_timers(&self, st: &mut AccountState, emit: &mut Emit) {
        let t = emit.at;
        let mut i = 0;
        while i < st.invoices.len() {
            let inv = &mut st.invoices[i];
            if !inv.overdue && inv.due_at <= t {
                inv.overdue = true;
                let (invoice_id, amount_due, due_at) =
                    (inv.invoice_id.clone(), inv.remaining(), inv.due_at);
                emit.push(
                    st,
                    DomainEvent::InvoiceOverdue {
                        invoice_id: invoice_id.clone(),
                        amount_due,
                        due_at,
                    },
                );
                emit.push(
                    st,
                    DomainEvent::AccountPastDue {
                        invoice_id,
                        amount_due,
                    },
                );
            }
            let inv = &mut st.invoices[i];
            if inv.next_retry_at.is_some_and(|r| r <= t) {
                inv.next_retry_at = None;
                // Without a payment method the retry waits for one to be attached.
                self.request_charge(st, i, emit);
            }
            i += 1;
        }
    }

    pub(crate) fn settle_payment(
        &self,
        st: &mut AccountState,
        p: &PaymentEvent,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        match &p.kind {
            PaymentKind::CreditToppedUp {
                amount,
                currency,
                grant,
            } => {
                let amount = self.money_in(st, *amount, currency)?;
                self.credit_room(st, amount)?;
                self.grant_room(st, grant, emit.at)?;
                self.add_granted_credit(st, amount, CreditSource::TopUp, grant, emit);
                self.pay_from_credit(st, emit);
            }
            PaymentKind::PaymentSucceeded {
                charge_id,
                invoice_id,
                amount,
                currency,
            } => {
                let amount = self.money_in(st, *amount, currency)?;
                let attempt = self.known_attempt(st, charge_id, invoice_id)?;
                let owed = st
                    .invoices
                    .iter()
                    .find(|i| i.invoice_id == *invoice_id)
                    .map_or(Minor::ZERO, |i| i.remaining());
                self.credit_room(st, amount.saturating_sub(owed.min(amount)))?;
                emit.push(
                    st,
                    DomainEvent::PaymentSucceeded {
                        charge_id: charge_id.clone(),
                        invoice_id: invoice_id.clone(),
                        amount,
                    },
                );
                let leftover = match st.invoices.iter().position(|i| i.invoice_id == *invoice_id) {
                    Some(idx) => {
                        if st.invoices[idx].outstanding == Some(attempt) {
                            st.invoices[idx].outstanding = None;
                        }
                        self.pay_invoice(st, idx, amount, emit)
                    }
                    // Already paid (by credit or a transfer): the money is credit.
                    None => amount,
                };
                if leftover.is_positive() {
                    self.add_credit(st, leftover, CreditSource::Overpayment, emit);
                    self.pay_from_credit(st, emit);
                }
            }
            PaymentKind::PaymentFailed {
                charge_id,
                invoice_id,
                retryable,
                reason,
            } => {
                let attempt = self.known_attempt(st, charge_id, invoice_id)?;
                let schedule = &self.config.retry_schedule_micros;
                let mut next_retry_at = None;
                let mut stopped = None;
                if let Some(inv) = st.invoices.iter_mut().find(|i| i.invoice_id == *invoice_id) {
                    if inv.outstanding == Some(attempt) {
                        inv.outstanding = None;
                        if !retryable {
                            stopped = Some(DunningStop::NonRetryable);
                        } else if let Some(delay) = schedule.get(attempt as usize - 1) {
                            next_retry_at = Some(emit.at.plus(*delay));
                        } else {
                            stopped = Some(DunningStop::Exhausted);
                        }
                        inv.next_retry_at = next_retry_at;
                        inv.dunning_stopped = stopped;
                    }
                }
                emit.push(
                    st,
                    DomainEvent::PaymentFailed {
                        charge_id: charge_id.clone(),
                        invoice_id: invoice_id.clone(),
                        attempt,
                        retryable: *retryable,
                        reason: reason.clone(),
                        next_retry_at,
                    },
                );
                if let Some(reason) = stopped {
                    emit.push(
                        st,
                        DomainEvent::DunningStopped {
                            invoice_id: invoice_id.clone(),
                            reason,
                        },
                    );
                }
            }
            PaymentKind::PaymentRefunded {
                amount,
                currency,
                reason,
            } => {
                let amount = self.money_in(st, *amount, currency)?;
                // Only paid credit is the customer's money to refund.
                let refundable = Self::refundable(st, emit.at);
                if amount > refundable {
                    return Err(Rejection::RefundExceedsCredit {
                        amount: st.currency.format(amount),
                        balance: st.currency.format(refundable),
                    });
                }
                let grants = Self::draw_credit(st, amount, Some(GrantKind::Paid), emit.at);
                let balance = st.credit;
                emit.push(
                    st,
                    DomainEvent::CreditRefunded {
                        amount,
                        balance,
                        reason: reason.clone(),
                        grants,
                    },
                );
            }
            PaymentKind::BankTransferReceived {
                reference,
                amount,
                currency,
            } => {
                let amount = self.money_in(st, *amount, currency)?;
                let idx = st
                    .invoices
                    .iter()
                    .position(|i| i.number == *reference || i.invoice_id == *reference);
                let owed = idx.map_or(Minor::ZERO, |i| st.invoices[i].remaining());
                self.credit_room(st, amount.saturating_sub(owed.min(amount)))?;
                let invoice_id = idx.map(|i| st.invoices[i].invoice_id.clone());
                emit.push(
                    st,
                    DomainEvent::BankTransferApplied {
                        reference: reference.clone(),
                        invoice_id,
                        amount,
                    },
                );
                let leftover = match idx {
                    Some(i) => self.pay_invoice(st, i, amount, emit),
                    None => amount,
                };
                if leftover.is_positive() {
                    let source = if idx.is_some() {
                        CreditSource::Overpayment
                    } else {
                        CreditSource::UnmatchedTransfer
                    };
                    self.add_credit(st, leftover, source, emit);
                    self.pay_from_credit(st, emit);
                }
            }
            PaymentKind::PaymentMethodAttached {
                token_ref,
                brand,
                last4,
                expires,
            } => {
                let field = |field: &str, reason: &str| Rejection::InvalidField {
                    field: field.into(),
                    reason: reason.into(),
                };
                if token_ref.is_empty() {
                    return Err(field("token_ref", "must not be empty"));
                }
                if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(field("last4", "must be exactly 4 digits"));
                }
                let end = expiry_end(expires)
                    .ok_or_else(|| field("expires", "must be a month, YYYY-MM"))?;
                st.payment_method = Some(Box::new(PaymentMethod {
                    token_ref: token_ref.clone(),
                    brand: brand.clone(),
                    last4: last4.clone(),
                    expires: expires.clone(),
                    warn_at: end.plus(-self.config.expiry_warning_micros),
                    warned: false,
                }));
                emit.push(
                    st,
                    DomainEvent::PaymentMethodAttached {
                        token_ref: token_ref.clone(),
                        brand: brand.clone(),
                        last4: last4.clone(),
                        expires: expires.clone(),
                    },
                );
                // A new method is a new chance for invoices waiting on one.
                for i in 0..st.invoices.len() {
                    let inv = &mut st.invoices[i];
                    if inv.outstanding.is_none() && inv.next_retry_at.is_none() {
                        inv.dunning_stopped = None;
                        self.request_charge(st, i, emit);
                    }
                }
            }
            PaymentKind::PaymentMethodDetached { token_ref } => {
                if st
                    .payment_method
                    .as_ref()
                    .is_none_or(|pm| pm.token_ref != *token_ref)
                {
                    return Err(Rejection::UnknownPaymentMethod {
                        token_ref: token_ref.clone(),
                    });
                }
                st.payment_method = None;
                emit.push(
                    st,
                    DomainEvent::PaymentMethodDetached {
                        token_ref: token_ref.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// The attempt a payment result refers to, if this account issued it.
    fn known_attempt(
        &self,
        st: &AccountState,
        charge_id: &str,
        invoice_id: &str,
    ) -> Result<u32, Rejection> {
        let unknown = || Rejection::UnknownCharge {
            charge_id: charge_id.to_string(),
            invoice_id: invoice_id.to_string(),
        };
        let attempt = attempt_of(charge_id, invoice_id)
            .filter(|a| *a >= 1)
            .ok_or_else(unknown)?;
        match st.invoices.iter().find(|i| i.invoice_id == invoice_id) {
            Some(inv) if attempt <= inv.attempts => Ok(attempt),
            Some(_) => Err(unknown()),
            // Not open: it must be an invoice this account issued before.
            None => {
                let seq: u32 = invoice_id
                    .strip_prefix("inv_")
                    .and_then(|r| r.strip_prefix(&*st.account_id))
                    .and_then(|r| r.strip_prefix('_'))
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(unknown)?;
                if seq >= 1 && seq <= st.invoice_seq && invoice_id != st.draft_invoice_id {
                    Ok(attempt)
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_ids_are_derived_from_invoice_and_attempt() {
        assert_eq!(charge_id("inv_a_00001", 2), "inv_a_00001/attempt-2");
        assert_eq!(attempt_of("inv_a_00001/attempt-2", "inv_a_00001"), Some(2));
        assert_eq!(attempt_of("inv_a_00001/attempt-2", "inv_a_00002"), None);
        assert_eq!(attempt_of("garbage", "inv_a_00001"), None);
    }

    #[test]
    fn expiry_month_ends_at_next_month_start() {
        assert_eq!(
            expiry_end("2026-12"),
            Timestamp::parse_rfc3339("2027-01-01T00:00:00Z")
        );
        assert_eq!(expiry_end("2026-13"), None);
        assert_eq!(expiry_end("26-1"), None);
    }
}
