//! Discounts: a coupon on an account, taken off its period invoices as a
//! line of its own, before tax.
//!
//! A `CouponApplied` command (accounts topic) puts a coupon on the account:
//! a percentage or a fixed amount off, for `periods` period invoices or
//! forever, on every charge or only on some (by metric). It applies from
//! the current draft on and replaces any coupon the account had. At each
//! period close the coupon's line is worked out on the lines it applies
//! to (`discount_amount`), journaled with `DiscountApplied`, and one period
//! is counted off, whatever the amount (a period without eligible lines
//! still uses one up). The count is state, so it survives restarts and is
//! never touched by late usage or duplicates.
//!
//! The rules, in one place:
//! - **Eligible lines**: usage, late usage, minimum spend and recurring fee
//!   lines; with `charges`, only the usage and late usage lines of those
//!   metrics. Debit adjustments are never discounted. The eligible
//!   subtotal is their sum, floored at zero.
//! - **Percentage**: the eligible subtotal × `percent_off` / 100, rounded
//!   once, half-to-even, to the minor unit (as tax is).
//! - **Fixed amount**: `amount_off` per period invoice, at most the eligible
//!   subtotal: the part larger than it is forfeited for that invoice (it is
//!   not carried to the next one and never becomes credit).
//! - So the discount line never takes the lines it applies to below zero,
//!   and tax is computed on the subtotal after it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::AccountState;
use super::events::{DomainEvent, Line, LineKind};
use super::fold::{Emit, Engine};
use super::money::{Currency, Minor};
use super::reject::Rejection;
use super::time::Period;

/// The longest coupon id accepted (it is shown on invoices).
pub const MAX_COUPON_ID: usize = 100;

/// A coupon as a `CouponApplied` command gives it (exactly one of
/// `percent_off` and `amount_off`; `amount_off` in `currency`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponTerms {
    pub coupon_id: String,
    /// Percent off, in (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_off: Option<Decimal>,
    /// Fixed amount off each period invoice, in major units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_off: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Period invoices it applies to (at least 1); `None`: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods: Option<u32>,
    /// Metrics whose charges it applies to; empty: every eligible line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<String>,
}

/// How much a coupon takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Off {
    /// Percent of the eligible subtotal, in (0, 100].
    Percent(Decimal),
    /// A fixed amount per period invoice, in the account's currency.
    Amount(Minor),
}

/// The coupon an account holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub coupon_id: String,
    pub off: Off,
    /// Period invoices still to discount; `None`: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods_left: Option<u32>,
    /// Metrics it is limited to (empty: not limited).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<String>,
}

impl Coupon {
    /// Whether `line` is one the coupon applies to.
    pub fn applies_to(&self, line: &Line) -> bool {
        match line.kind {
            LineKind::Usage | LineKind::LateUsage => {
                self.charges.is_empty()
                    || line
                        .metric
                        .as_ref()
                        .is_some_and(|m| self.charges.iter().any(|c| c == m))
            }
            LineKind::MinimumSpend | LineKind::RecurringFee => self.charges.is_empty(),
            LineKind::Adjustment | LineKind::Discount => false,
        }
    }

    /// The eligible subtotal of `lines` (floored at zero) and the amount
    /// off it (zero up to that subtotal), by the rules of this module.
    pub fn discount_amount(&self, currency: Currency, lines: &[Line]) -> (Minor, Minor) {
        let eligible = Minor::saturating_sum(
            lines
                .iter()
                .filter(|l| self.applies_to(l))
                .map(|l| l.amount),
        )
        .max(Minor::ZERO);
        let off = match self.off {
            Off::Percent(p) => currency
                .to_major(eligible)
                .checked_mul(p)
                .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
                .and_then(|x| currency.round(x))
                .unwrap_or(Minor::ZERO),
            Off::Amount(a) => a,
        };
        (eligible, off.clamp(Minor::ZERO, eligible))
    }

    /// How the line describes the coupon.
    fn describe(&self, currency: Currency, eligible: Minor, amount: Minor) -> String {
        let what = match self.off {
            Off::Percent(p) => format!("{}% off", p.normalize()),
            Off::Amount(a) if a > amount => format!(
                "{} off, limited to the eligible {}",
                currency.format(a),
                currency.format(eligible)
            ),
            Off::Amount(a) => format!("{} off", currency.format(a)),
        };
        if self.charges.is_empty() {
            format!("coupon {}: {what}", self.coupon_id)
        } else {
            format!(
                "coupon {}: {what} {}",
                self.coupon_id,
                self.charges.join(", ")
            )
        }
    }
}

impl Engine {
    /// Validate a `CouponApplied` and put the coupon on the account.
    pub(crate) fn apply_coupon(
        &self,
        st: &mut AccountState,
        terms: &CouponTerms,
        emit: &mut Emit,
    ) -> Result<(), Rejection> {
        let field = |field: &str, reason: String| Rejection::InvalidField {
            field: field.into(),
            reason,
        };
        if let Some(closed_at) = st.closed_at {
            return Err(Rejection::AccountClosed { closed_at });
        }
        if terms.coupon_id.is_empty() || terms.coupon_id.len() > MAX_COUPON_ID {
            return Err(field(
                "coupon_id",
                format!("must be 1 to {MAX_COUPON_ID} bytes"),
            ));
        }
        let off = match (terms.percent_off, terms.amount_off) {
            (Some(p), None) => {
                if p <= Decimal::ZERO || p > Decimal::ONE_HUNDRED {
                    return Err(field("percent_off", format!("{p} must be in (0, 100]")));
                }
                if terms.currency.is_some() {
                    return Err(field(
                        "currency",
                        "only an amount_off coupon names a currency".into(),
                    ));
                }
                Off::Percent(p)
            }
            (None, Some(a)) => {
                let currency = terms.currency.as_deref().ok_or_else(|| {
                    field(
                        "currency",
                        "an amount_off coupon must name its currency".into(),
                    )
                })?;
                Off::Amount(self.money_in(st, a, currency)?)
            }
            _ => {
                return Err(field(
                    "percent_off",
                    "a coupon gives exactly one of percent_off and amount_off".into(),
                ))
            }
        };
        if terms.periods == Some(0) {
            return Err(field(
                "periods",
                "must be at least 1 (null: forever)".into(),
            ));
        }
        let mut charges = terms.charges.clone();
        charges.sort();
        charges.dedup();
        // Every name must be a charge of the plan the account is on (which
        // also bounds the list by the plan's charges).
        let plan_id = st.plan_id.clone();
        if let Some(plan) = self.plans.get_version(&plan_id, st.plan_version) {
            if let Some(m) = charges.iter().find(|m| plan.charge(m).is_none()) {
                return Err(Rejection::UnknownMetric {
                    metric: m.clone(),
                    plan_id,
                });
            }
        }
        let replaced = st.coupon.as_ref().map(|c| c.coupon_id.clone());
        st.coupon = Some(Box::new(Coupon {
            coupon_id: terms.coupon_id.clone(),
            off,
            periods_left: terms.periods,
            charges,
        }));
        emit.push(
            st,
            DomainEvent::CouponApplied {
                coupon: Box::new(terms.clone()),
                replaced,
            },
        );
        Ok(())
    }

    /// The coupon's line for an invoice of `period` with `lines`, if the
    /// account holds a coupon and it takes anything off.
    pub fn discount_line(st: &AccountState, period: Period, lines: &[Line]) -> Option<Line> {
        let coupon = st.coupon.as_deref()?;
        let (eligible, amount) = coupon.discount_amount(st.currency, lines);
        amount.is_positive().then(|| Line {
            kind: LineKind::Discount,
            metric: None,
            quantity: Decimal::ONE,
            unit_price: None,
            amount: amount.saturating_neg(),
            for_period: period,
            subjects: Default::default(),
            description: Some(coupon.describe(st.currency, eligible, amount)),
        })
    }

    /// At a period close: add the coupon's line to `lines`, journal it and
    /// count the period off (the coupon ends after its last one).
    pub(crate) fn apply_discount(
        &self,
        st: &mut AccountState,
        invoice_id: &str,
        period: Period,
        lines: &mut Vec<Line>,
        emit: &mut Emit,
    ) {
        let Some(coupon) = st.coupon.as_deref_mut() else {
            return;
        };
        let (eligible, amount) = coupon.discount_amount(st.currency, lines);
        if let Some(n) = coupon.periods_left.as_mut() {
            *n = n.saturating_sub(1);
        }
        let (coupon_id, periods_left) = (coupon.coupon_id.clone(), coupon.periods_left);
        if let Some(line) = Self::discount_line(st, period, lines) {
            lines.push(line);
        }
        if periods_left == Some(0) {
            st.coupon = None;
        }
        emit.push(
            st,
            DomainEvent::DiscountApplied {
                coupon_id,
                invoice_id: invoice_id.to_string(),
                amount,
                eligible,
                periods_left,
            },
        );
    }
}
