//! Rating: a metric's total quantity in a period → an exact amount.
//!
//! A charge is always rated on the period's *total* quantity, never per
//! event, and the result is rounded once; that is what keeps tiers exact
//! and lets late usage be billed as the difference between two totals.

use rust_decimal::Decimal;

use super::money::{Currency, Minor};
use super::plan::{Charge, Model};

/// The exact (unrounded) amount of `charge` for `quantity` units in one
/// period, in major units. `None` only on arithmetic overflow.
pub fn rate(charge: &Charge, quantity: Decimal) -> Option<Decimal> {
    rate_with_free(charge, quantity, charge.free_units)
}

/// `rate` with `free` units free instead of the charge's own: what is left
/// of them after a period's earlier segments on the same plan used theirs
/// (a plan's free units apply once per period, `fold::FreeUnitsUsed`).
pub fn rate_with_free(charge: &Charge, quantity: Decimal, free: Decimal) -> Option<Decimal> {
    let billable = quantity.checked_sub(free)?.max(Decimal::ZERO);
    if billable.is_zero() {
        return Some(Decimal::ZERO);
    }
    match charge.model {
        Model::PerUnit => billable.checked_mul(charge.unit_price),
        Model::Package => {
            let size = charge.package_size?;
            let packages = billable.checked_div(size)?.ceil();
            packages.checked_mul(charge.unit_price)
        }
        Model::Graduated => {
            let mut total = Decimal::ZERO;
            let mut lower = Decimal::ZERO;
            for tier in &charge.tiers {
                let upper = tier.up_to.map_or(billable, |u| u.min(billable));
                if upper > lower {
                    let units = upper.checked_sub(lower)?;
                    total = total.checked_add(units.checked_mul(tier.unit_price)?)?;
                    total = total.checked_add(tier.flat_fee)?;
                }
                match tier.up_to {
                    Some(u) if u < billable => lower = u,
                    _ => break,
                }
            }
            Some(total)
        }
        Model::Volume => {
            let tier = charge
                .tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| billable <= u))?;
            billable
                .checked_mul(tier.unit_price)?
                .checked_add(tier.flat_fee)
        }
    }
}

/// The amount of `charge` for `quantity` in minor units of `currency`,
/// if it is at most `max` (`None`: it would not fit on a line).
pub fn line_amount(
    charge: &Charge,
    quantity: Decimal,
    currency: Currency,
    max: Minor,
) -> Option<Minor> {
    line_amount_with_free(charge, quantity, charge.free_units, currency, max)
}

/// `line_amount` with `free` units free (`rate_with_free`).
pub fn line_amount_with_free(
    charge: &Charge,
    quantity: Decimal,
    free: Decimal,
    currency: Currency,
    max: Minor,
) -> Option<Minor> {
    rate_with_free(charge, quantity, free)
        .and_then(|a| currency.round(a))
        .filter(|a| a.within(max))
}

/// A period total at or below which `charge` rates to at most `max` minor
/// units of `currency`, whatever its model: the dearest price applied to
/// every billable unit plus every flat fee bounds every model from above
/// (packages: one more package than the units fill). Conservative, so
/// the hot path can skip rating below it; above it, rate and compare.
pub fn safe_total(charge: &Charge, currency: Currency, max: Minor) -> Decimal {
    let inner = || -> Option<Decimal> {
        let budget = currency.to_major(max);
        let (price, flats) = match charge.model {
            Model::PerUnit | Model::Package => (charge.unit_price, Decimal::ZERO),
            Model::Graduated | Model::Volume => {
                let price = charge.tiers.iter().map(|t| t.unit_price).max()?;
                let mut flats = Decimal::ZERO;
                for t in &charge.tiers {
                    flats = flats.checked_add(t.flat_fee)?;
                }
                (price, flats)
            }
        };
        let budget = budget.checked_sub(flats)?;
        if budget <= Decimal::ZERO {
            return Some(Decimal::ZERO);
        }
        if price.is_zero() {
            return Some(Decimal::MAX);
        }
        // Past `Decimal`'s range: no total it can hold is too much.
        let units = budget
            .checked_div(price)
            .map_or(Decimal::MAX, |u| u.floor());
        let billable = match charge.model {
            Model::Package => {
                let packages = (units - Decimal::ONE).max(Decimal::ZERO);
                packages
                    .checked_mul(charge.package_size?)
                    .unwrap_or(Decimal::MAX)
            }
            _ => units,
        };
        Some(
            charge
                .free_units
                .checked_add(billable)
                .unwrap_or(Decimal::MAX),
        )
    };
    inner().unwrap_or(Decimal::ZERO)
}

/// The unit price to print on a line, where one price describes it.
pub fn display_unit_price(charge: &Charge) -> Option<Decimal> {
    match charge.model {
        Model::PerUnit | Model::Package => Some(charge.unit_price),
        Model::Graduated | Model::Volume => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::Tier;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn charge(model: Model) -> Charge {
        Charge {
            metric: "m".into(),
            model,
            unit_price: d("0.5"),
            package_size: Some(d("100")),
            free_units: Decimal::ZERO,
            tiers: vec![
                Tier {
                    up_to: Some(d("10")),
                    unit_price: d("1"),
                    flat_fee: d("0"),
                },
                Tier {
                    up_to: Some(d("100")),
                    unit_price: d("0.5"),
                    flat_fee: d("2"),
                },
                Tier {
                    up_to: None,
                    unit_price: d("0.1"),
                    flat_fee: d("0"),
                },
            ],
            aggregation: Default::default(),
        }
    }

    #[test]
    fn per_unit_multiplies_exactly() {
        assert_eq!(
            rate(&charge(Model::PerUnit), d("3.3333")),
            Some(d("1.66665"))
        );
    }

    #[test]
    fn zero_quantity_costs_nothing_even_with_flat_fees() {
        for m in [
            Model::PerUnit,
            Model::Graduated,
            Model::Volume,
            Model::Package,
        ] {
            assert_eq!(
                rate(&charge(m), Decimal::ZERO),
                Some(Decimal::ZERO),
                "{m:?}"
            );
        }
    }

    #[test]
    fn graduated_fills_tiers_in_order_and_adds_flat_fee_of_used_tiers() {
        let c = charge(Model::Graduated);
        // 10 × 1 = 10
        assert_eq!(rate(&c, d("10")), Some(d("10")));
        // 10 × 1 + 1 × 0.5 + flat 2 = 12.5
        assert_eq!(rate(&c, d("11")), Some(d("12.5")));
        // 10 + 90 × 0.5 + 2 + 50 × 0.1 = 62
        assert_eq!(rate(&c, d("150")), Some(d("62")));
    }

    #[test]
    fn tier_bounds_are_inclusive() {
        let c = charge(Model::Volume);
        // 10 falls in the first tier (up_to 10 inclusive): 10 × 1
        assert_eq!(rate(&c, d("10")), Some(d("10")));
        // 10.5 falls in the second: 10.5 × 0.5 + 2
        assert_eq!(rate(&c, d("10.5")), Some(d("7.25")));
    }

    #[test]
    fn volume_prices_all_units_at_the_reached_tier() {
        let c = charge(Model::Volume);
        assert_eq!(rate(&c, d("150")), Some(d("15.0")));
    }

    #[test]
    fn package_rounds_packages_up() {
        let c = charge(Model::Package);
        assert_eq!(rate(&c, d("1")), Some(d("0.5")));
        assert_eq!(rate(&c, d("100")), Some(d("0.5")));
        assert_eq!(rate(&c, d("100.01")), Some(d("1.0")));
    }

    #[test]
    fn free_allowance_is_deducted_before_tiers() {
        let mut c = charge(Model::Graduated);
        c.free_units = d("5");
        assert_eq!(rate(&c, d("5")), Some(d("0")));
        // 11 - 5 = 6 units, all in the first tier
        assert_eq!(rate(&c, d("11")), Some(d("6")));
    }
}
