//! Credit grants: an account's prepaid credit as a short list of grants.
//!
//! A top-up or a credit note may say what kind of credit it is (paid or
//! promotional), when it expires and its priority. Credit is drawn in the
//! order priority (lower first) → earliest expiry (none last) → oldest;
//! an expired grant leaves the balance at its instant (a timer) and is
//! never drawn from again. Credit the engine adds itself (overpayments,
//! unmatched transfers, negative invoices) is paid credit that never
//! expires, at priority 0. `AccountState::credit` stays the sum of the
//! live grants' remaining amounts.

use serde::{Deserialize, Serialize};

use super::account::AccountState;
use super::events::{CreditSource, DomainEvent};
use super::fold::{Emit, Engine};
use super::money::Minor;
use super::reject::Rejection;
use super::time::Timestamp;

/// Paid credit is the customer's money; promotional credit is given.
/// Accounting keeps them apart, so invoices split `credit_applied` by kind.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    #[default]
    Paid,
    Promotional,
}

impl GrantKind {
    pub fn name(self) -> &'static str {
        match self {
            GrantKind::Paid => "paid",
            GrantKind::Promotional => "promotional",
        }
    }
}

/// The grant fields a top-up or credit note may carry. The default (paid,
/// no expiry, priority 0) is what credit was before grants, and is left
/// out of the input's serialized form, so an input without grant fields
/// keeps its dedup fingerprint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    #[serde(default)]
    pub kind: GrantKind,
    /// The grant is drawn from strictly before this instant, never at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Lower is drawn first.
    #[serde(default)]
    pub priority: i32,
}

impl GrantTerms {
    pub fn is_default(&self) -> bool {
        *self == GrantTerms::default()
    }
}

/// One live grant (remaining amount positive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditGrant {
    pub grant_id: String,
    pub kind: GrantKind,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Processing instant of the grant's first credit.
    pub granted_at: Timestamp,
    /// Everything credited to it (later credit of the same terms merges in).
    pub granted: Minor,
    pub remaining: Minor,
    /// `CreditExpiring` was sent.
    #[serde(default)]
    pub warned: bool,
}

/// A grant and its terms, as the journal names it when credit goes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRef {
    pub grant_id: String,
    pub kind: GrantKind,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// What one grant gave towards an invoice or a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantDraw {
    pub grant_id: String,
    pub kind: GrantKind,
    pub amount: Minor,
}

/// The sum of `draws` of `kind`.
pub fn drawn_of(draws: &[GrantDraw], kind: GrantKind) -> Minor {
    Minor::saturating_sum(draws.iter().filter(|d| d.kind == kind).map(|d| d.amount))
}

/// Where credit of `terms` goes: the youngest live grant with the same
/// priority and expiry, when it is of the same kind (two such grants would
/// be drawn one right after the other, so merging them changes no draw),
/// else a new grant (`None`).
pub fn merge_target(grants: &[CreditGrant], terms: &GrantTerms) -> Option<usize> {
    let (i, g) = grants
        .iter()
        .enumerate()
        .rev()
        .find(|(_, g)| g.priority == terms.priority && g.expires_at == terms.expires_at)?;
    (g.kind == terms.kind).then_some(i)
}

/// The live grants in draw order: priority, then earliest expiry (none
/// last), then oldest (the list is kept in the order grants were made).
pub fn draw_order(grants: &[CreditGrant]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..grants.len()).collect();
    order.sort_by_key(|&i| {
        let g = &grants[i];
        (g.priority, g.expires_at.map_or(i64::MAX, |t| t.0), i)
    });
    order
}

/// Take up to `amount` from the grants in draw order, skipping any that
/// has expired at `at` and, with `only`, those of another kind. Emptied
/// grants are removed. Returns what each grant gave.
pub fn draw(
    grants: &mut Vec<CreditGrant>,
    amount: Minor,
    at: Timestamp,
    only: Option<GrantKind>,
) -> Vec<GrantDraw> {
    let mut left = amount;
    let mut draws = Vec::new();
    for i in draw_order(grants) {
        if !left.is_positive() {
            break;
        }
        let g = &mut grants[i];
        if g.expires_at.is_some_and(|e| e <= at) || only.is_some_and(|k| k != g.kind) {
            continue;
        }
        let take = left.min(g.remaining);
        if !take.is_positive() {
            continue;
        }
        g.remaining = g.remaining.saturating_sub(take);
        left = left.saturating_sub(take);
        draws.push(GrantDraw {
            grant_id: g.grant_id.clone(),
            kind: g.kind,
            amount: take,
        });
    }
    grants.retain(|g| g.remaining.is_positive());
    draws
}

/// The balance of live grants of `kind` usable at `at`.
pub fn balance_of(grants: &[CreditGrant], kind: GrantKind, at: Timestamp) -> Minor {
    Minor::saturating_sum(
        grants
            .iter()
            .filter(|g| g.kind == kind && g.expires_at.is_none_or(|e| e > at))
            .map(|g| g.remaining),
    )
}

impl Engine {
    /// Refuse credit of `terms` that could never be drawn from (its expiry
    /// has passed at processing time `at`) or that needs a new grant while
    /// the account holds `max_credit_grants` (checked before anything changes).
    pub(crate) fn grant_room(
        &self,
        st: &AccountState,
        terms: &GrantTerms,
        at: Timestamp,
    ) -> Result<(), Rejection> {
        if let Some(e) = terms.expires_at.filter(|e| *e <= at) {
            return Err(Rejection::InvalidField {
                field: "grant.expires_at".into(),
                reason: format!(
                    "{e} has passed at processing time {at}: the credit could never be drawn from"
                ),
            });
        }
        // A snapshot from before grants holds its credit as one paid grant.
        let legacy = st.grants.is_empty() && st.credit.is_positive();
        let merges = if legacy {
            terms.is_default()
        } else {
            merge_target(&st.grants, terms).is_some()
        };
        let live = st.grants.len().max(usize::from(legacy));
        if !merges && live >= self.config.max_credit_grants {
            return Err(Rejection::TooManyGrants {
                live,
                limit: self.config.max_credit_grants,
            });
        }
        Ok(())
    }

    /// Credit of a snapshot written before grants existed becomes one paid
    /// grant, the first time credit moves.
    fn adopt_legacy_credit(st: &mut AccountState) {
        if st.grants.is_empty() && st.credit.is_positive() {
            st.grant_seq += 1;
            st.grants.push(CreditGrant {
                grant_id: Self::grant_id(st, st.grant_seq),
                kind: GrantKind::Paid,
                priority: 0,
                expires_at: None,
                granted_at: st.opened_at,
                granted: st.credit,
                remaining: st.credit,
                warned: false,
            });
        }
    }

    fn grant_id(st: &AccountState, seq: u32) -> String {
        format!("gr_{}_{seq:05}", st.account_id)
    }

    /// Add `amount` of credit under `terms`: into the grant `merge_target`
    /// names, else a new one. Inputs check `credit_room` and `grant_room`
    /// first; the engine's own credit (default terms) is never refused.
    /// A grant that expires within the warning period is warned about at once.
    pub(crate) fn grant_credit(
        &self,
        st: &mut AccountState,
        amount: Minor,
        source: CreditSource,
        terms: &GrantTerms,
        emit: &mut Emit,
    ) {
        Self::adopt_legacy_credit(st);
        let i = match merge_target(&st.grants, terms) {
            Some(i) => {
                let g = &mut st.grants[i];
                g.granted = g.granted.saturating_add(amount);
                g.remaining = g.remaining.saturating_add(amount);
                i
            }
            None => {
                st.grant_seq += 1;
                let grant_id = Self::grant_id(st, st.grant_seq);
                st.grants.push(CreditGrant {
                    grant_id,
                    kind: terms.kind,
                    priority: terms.priority,
                    expires_at: terms.expires_at,
                    granted_at: emit.at,
                    granted: amount,
                    remaining: amount,
                    warned: false,
                });
                st.grants.len() - 1
            }
        };
        st.credit = st.credit.saturating_add(amount);
        let g = &st.grants[i];
        let grant = GrantRef {
            grant_id: g.grant_id.clone(),
            kind: g.kind,
            priority: g.priority,
            expires_at: g.expires_at,
        };
        let balance = st.credit;
        emit.push(
            st,
            DomainEvent::CreditAdded {
                source,
                amount,
                balance,
                grant: Some(grant),
            },
        );
        let warning = self.config.credit_expiry_warning_micros;
        let g = &mut st.grants[i];
        if let Some(expires_at) = g.expires_at {
            if !g.warned && expires_at.plus(-warning) <= emit.at {
                g.warned = true;
                let event = DomainEvent::CreditExpiring {
                    grant_id: g.grant_id.clone(),
                    kind: g.kind,
                    amount: g.remaining,
                    expires_at,
                };
                emit.push(st, event);
            }
        }
    }

    /// Draw up to `amount` from the grants usable at `emit.at` (of kind
    /// `only`, if given), in draw order; the balance goes down by what
    /// they gave.
    pub(crate) fn draw_credit(
        st: &mut AccountState,
        amount: Minor,
        only: Option<GrantKind>,
        at: Timestamp,
    ) -> Vec<GrantDraw> {
        Self::adopt_legacy_credit(st);
        let draws = draw(&mut st.grants, amount, at, only);
        let drawn = Minor::saturating_sum(draws.iter().map(|d| d.amount));
        st.credit = st.credit.saturating_sub(drawn);
        draws
    }

    /// Paid credit usable at `at`: what a refund may take.
    pub(crate) fn refundable(st: &AccountState, at: Timestamp) -> Minor {
        if st.grants.is_empty() {
            return st.credit.max(Minor::ZERO);
        }
        balance_of(&st.grants, GrantKind::Paid, at)
    }

    /// The grant timers of `st` (warnings, expiries), for `next_timer`.
    pub(crate) fn grant_timers(&self, st: &AccountState) -> Option<Timestamp> {
        let warning = self.config.credit_expiry_warning_micros;
        st.grants
            .iter()
            .filter_map(|g| {
                let e = g.expires_at?;
                Some(if g.warned { e } else { e.plus(-warning).min(e) })
            })
            .min()
    }

    /// Warnings and expiries due at `emit.at`: `CreditExpiring` for a grant
    /// entering its warning period, then `CreditExpired` for each grant
    /// whose expiry has come (its remaining amount leaves the balance).
    /// Runs before the period close of the same instant, so an expired
    /// grant is never applied.
    pub(crate) fn fire_grant_timers(&self, st: &mut AccountState, emit: &mut Emit) {
        let t = emit.at;
        let warning = self.config.credit_expiry_warning_micros;
        for i in 0..st.grants.len() {
            let g = &mut st.grants[i];
            let Some(expires_at) = g.expires_at else {
                continue;
            };
            if !g.warned && expires_at.plus(-warning) <= t && t < expires_at {
                g.warned = true;
                let event = DomainEvent::CreditExpiring {
                    grant_id: g.grant_id.clone(),
                    kind: g.kind,
                    amount: g.remaining,
                    expires_at,
                };
                emit.push(st, event);
            }
        }
        let mut i = 0;
        while i < st.grants.len() {
            if st.grants[i].expires_at.is_some_and(|e| e <= t) {
                let g = st.grants.remove(i);
                st.credit = st.credit.saturating_sub(g.remaining);
                let balance = st.credit;
                emit.push(
                    st,
                    DomainEvent::CreditExpired {
                        grant_id: g.grant_id,
                        kind: g.kind,
                        amount: g.remaining,
                        balance,
                        expires_at: g.expires_at.unwrap_or(t),
                    },
                );
            } else {
                i += 1;
            }
        }
        self.check_credit_low(st, emit);
    }

    /// Whether a grant timer is due at `t`.
    pub(crate) fn grant_timer_due(&self, st: &AccountState, t: Timestamp) -> bool {
        !st.grants.is_empty() && self.grant_timers(st).is_some_and(|g| g <= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(
        id: &str,
        kind: GrantKind,
        priority: i32,
        expires: Option<i64>,
        amount: i64,
    ) -> CreditGrant {
        CreditGrant {
            grant_id: id.into(),
            kind,
            priority,
            expires_at: expires.map(Timestamp),
            granted_at: Timestamp(0),
            granted: Minor(amount),
            remaining: Minor(amount),
            warned: false,
        }
    }

    #[test]
    fn draw_order_is_priority_then_earliest_expiry_then_oldest() {
        use GrantKind::*;
        let grants = vec![
            grant("old-no-expiry", Paid, 0, None, 100),
            grant("late-expiry", Promotional, 0, Some(900), 100),
            grant("priority-1", Promotional, 1, Some(10), 100),
            grant("early-expiry", Paid, 0, Some(500), 100),
            grant("young-no-expiry", Paid, 0, None, 100),
        ];
        let names: Vec<&str> = draw_order(&grants)
            .iter()
            .map(|&i| grants[i].grant_id.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "early-expiry",
                "late-expiry",
                "old-no-expiry",
                "young-no-expiry",
                "priority-1"
            ]
        );
    }

    #[test]
    fn credit_merges_into_the_youngest_grant_of_its_priority_and_expiry_only_when_of_its_kind() {
        use GrantKind::*;
        let mut grants = vec![grant("a", Paid, 0, None, 100)];
        let paid = GrantTerms::default();
        let promo = GrantTerms {
            kind: Promotional,
            ..GrantTerms::default()
        };
        assert_eq!(merge_target(&grants, &paid), Some(0));
        assert_eq!(merge_target(&grants, &promo), None);
        grants.push(grant("b", Promotional, 0, None, 100));
        // A paid grant after "b" would be drawn after it: merging into "a" would not.
        assert_eq!(merge_target(&grants, &paid), None);
        assert_eq!(merge_target(&grants, &promo), Some(1));
    }
}
