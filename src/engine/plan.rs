//! The price book: plans with a recurring fee and per-metric charges.
//!
//! Plans arrive on a compacted topic read in full by every instance; the
//! engine sees them as an immutable `PlanBook` and validates each plan once
//! when it is added, so rating never meets a malformed plan. Every value is
//! bounded (`MAX_FEE`, `MAX_PRICE`, `MAX_PLAN_QUANTITY`, their decimals,
//! `MAX_TIERS`, `MAX_CHARGES`): a plan beyond them is refused (a dead
//! letter in `run`, an error with file and line in `simulate`), so no fee,
//! price or tier can make an invoice that `i64` minor units cannot carry.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::aggregation::AggregationSpec;
use super::money::{Currency, Minor};
use super::rating;

/// Largest recurring fee, minimum spend or tier flat fee, in major units
/// (10^12: with at most 3 decimals of minor unit, within `Minor::MAX_AMOUNT`).
pub const MAX_FEE: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);
/// Most decimals of a fee (the minor unit has at most 3).
pub const FEE_DECIMALS: u32 = 6;
/// Largest unit price, in major units (10^9).
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Most decimals of a unit price (a price per byte still fits).
pub const PRICE_DECIMALS: u32 = 18;
/// Largest free allowance, package size or tier bound (10^24 units).
pub const MAX_PLAN_QUANTITY: Decimal =
    Decimal::from_parts(2_701_131_776, 466_537_709, 54_210, false, 0);
/// Most decimals of a plan quantity.
pub const QUANTITY_DECIMALS: u32 = 18;
/// Most tiers of one charge.
pub const MAX_TIERS: usize = 64;
/// Most charges of one plan (one invoice line each).
pub const MAX_CHARGES: usize = 256;
/// Longest plan id or metric name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a value is out of bounds, if it is: negative, above `max`, or with
/// more than `decimals` decimals.
fn out_of_range(v: Decimal, max: Decimal, decimals: u32) -> Option<String> {
    if v.is_sign_negative() && !v.is_zero() {
        Some("must not be negative".into())
    } else if v > max {
        Some(format!("{v} is above the largest allowed, {max}"))
    } else if v.normalize().scale() > decimals {
        Some(format!("{v} has more than {decimals} decimals"))
    } else {
        None
    }
}

/// How a metric's quantity in a period is turned into an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    PerUnit,
    Graduated,
    Volume,
    Package,
}

/// One tier; `up_to` is inclusive, `None` means no upper limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// The charge of one metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub metric: String,
    pub model: Model,
    #[serde(default)]
    pub unit_price: Decimal,
    #[serde(default)]
    pub package_size: Option<Decimal>,
    #[serde(default)]
    pub free_units: Decimal,
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// How the period's events become the rated quantity (default `sum`).
    #[serde(flatten, default)]
    pub aggregation: AggregationSpec,
}

/// Most versions of one plan the price book keeps.
pub const MAX_PLAN_VERSIONS: usize = 64;

/// The version of a plan record (or account state) written before plans
/// were versioned: every such record is version 1.
pub const fn first_version() -> u32 {
    1
}

/// A plan: a recurring fee per period (charged in advance), a minimum
/// spend per period, and per-metric charges. Amounts are in major units.
///
/// A plan is versioned: `(plan_id, version)` names one price list for good.
/// A record of a version the book has replaces it (what a record without a
/// version, version 1, always did); a new version is added next to the
/// others, and accounts stay on the version they are on until a
/// `PlanChanged` moves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub plan_id: String,
    /// Version of the plan (1 or more; 1 for a record without one).
    #[serde(default = "first_version")]
    pub version: u32,
    pub currency: Currency,
    #[serde(default)]
    pub recurring_fee: Decimal,
    #[serde(default)]
    pub minimum_spend: Decimal,
    #[serde(default)]
    pub charges: Vec<Charge>,
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan {plan}: {field} must not be negative")]
    Negative { plan: String, field: String },
    /// A value beyond the bounds every plan must keep.
    #[error("plan {plan}: {field}: {reason}")]
    OutOfRange {
        plan: String,
        field: String,
        reason: String,
    },
    #[error("plan {plan}: metric {metric:?} is charged twice")]
    DuplicateMetric { plan: String, metric: String },
    #[error("plan {plan}, metric {metric}: {reason}")]
    Charge {
        plan: String,
        metric: String,
        reason: String,
    },
    #[error("plan id must not be empty")]
    EmptyId,
}

impl Plan {
    /// The charge for `metric`, if the plan prices it.
    pub fn charge(&self, metric: &str) -> Option<&Charge> {
        self.charges.iter().find(|c| c.metric == metric)
    }

    /// Check the plan once, so rating can trust it.
    pub fn validate(&self) -> Result<(), PlanError> {
        let plan = || self.plan_id.clone();
        if self.plan_id.is_empty() {
            return Err(PlanError::EmptyId);
        }
        if self.version == 0 {
            return Err(PlanError::OutOfRange {
                plan: plan(),
                field: "version".into(),
                reason: "must be 1 or more".into(),
            });
        }
        if self.plan_id.len() > MAX_NAME_BYTES {
            return Err(PlanError::OutOfRange {
                plan: self.plan_id.chars().take(40).collect(),
                field: "plan_id".into(),
                reason: format!("longer than {MAX_NAME_BYTES} bytes"),
            });
        }
        for (field, v) in [
            ("recurring_fee", self.recurring_fee),
            ("minimum_spend", self.minimum_spend),
        ] {
            if v.is_sign_negative() && !v.is_zero() {
                return Err(PlanError::Negative {
                    plan: plan(),
                    field: field.into(),
                });
            }
            if let Some(reason) = out_of_range(v, MAX_FEE, FEE_DECIMALS) {
                return Err(PlanError::OutOfRange {
                    plan: plan(),
                    field: field.into(),
                    reason,
                });
            }
        }
        if self.charges.len() > MAX_CHARGES {
            return Err(PlanError::OutOfRange {
                plan: plan(),
                field: "charges".into(),
                reason: format!("{} charges, at most {MAX_CHARGES}", self.charges.len()),
            });
        }
        for (i, c) in self.charges.iter().enumerate() {
            if self.charges[..i].iter().any(|o| o.metric == c.metric) {
                return Err(PlanError::DuplicateMetric {
                    plan: plan(),
                    metric: c.metric.clone(),
                });
            }
            let bad = |reason: &str| PlanError::Charge {
                plan: plan(),
                metric: c.metric.chars().take(MAX_NAME_BYTES).collect(),
                reason: reason.into(),
            };
            if c.metric.is_empty() || c.metric.len() > MAX_NAME_BYTES {
                return Err(bad(&format!(
                    "metric must have 1 to {MAX_NAME_BYTES} bytes"
                )));
            }
            if c.unit_price.is_sign_negative() && !c.unit_price.is_zero() {
                return Err(bad("unit_price must not be negative"));
            }
            if c.free_units.is_sign_negative() && !c.free_units.is_zero() {
                return Err(bad("free_units must not be negative"));
            }
            let bounded = |field: &str, v: Decimal, max: Decimal, decimals: u32| match out_of_range(
                v, max, decimals,
            ) {
                Some(reason) => Err(bad(&format!("{field}: {reason}"))),
                None => Ok(()),
            };
            bounded("unit_price", c.unit_price, MAX_PRICE, PRICE_DECIMALS)?;
            bounded(
                "free_units",
                c.free_units,
                MAX_PLAN_QUANTITY,
                QUANTITY_DECIMALS,
            )?;
            if let Some(size) = c.package_size {
                bounded("package_size", size, MAX_PLAN_QUANTITY, QUANTITY_DECIMALS)?;
            }
            if c.tiers.len() > MAX_TIERS {
                return Err(bad(&format!(
                    "tiers: {} tiers, at most {MAX_TIERS}",
                    c.tiers.len()
                )));
            }
            for t in &c.tiers {
                bounded("tier unit_price", t.unit_price, MAX_PRICE, PRICE_DECIMALS)?;
                bounded("tier flat_fee", t.flat_fee, MAX_FEE, FEE_DECIMALS)?;
                if let Some(u) = t.up_to {
                    bounded("tier up_to", u, MAX_PLAN_QUANTITY, QUANTITY_DECIMALS)?;
                }
            }
            if let Err((field, reason)) = c.aggregation.check(MAX_NAME_BYTES) {
                return Err(bad(&format!("{field}: {reason}")));
            }
            match c.model {
                Model::PerUnit => {}
                Model::Package => match c.package_size {
                    Some(s) if s > Decimal::ZERO => {}
                    _ => return Err(bad("package model needs a positive package_size")),
                },
                Model::Graduated | Model::Volume => {
                    if c.tiers.is_empty() {
                        return Err(bad("tiered model needs at least one tier"));
                    }
                    let mut prev = Decimal::ZERO;
                    for (j, t) in c.tiers.iter().enumerate() {
                        if t.unit_price.is_sign_negative() && !t.unit_price.is_zero() {
                            return Err(bad("tier unit_price must not be negative"));
                        }
                        if t.flat_fee.is_sign_negative() && !t.flat_fee.is_zero() {
                            return Err(bad("tier flat_fee must not be negative"));
                        }
                        match t.up_to {
                            Some(u) if u <= prev && j > 0 => {
                                return Err(bad("tier up_to bounds must increase"))
                            }
                            Some(u) if u.is_sign_negative() => {
                                return Err(bad("tier up_to must not be negative"))
                            }
                            Some(u) => prev = u,
                            None if j + 1 != c.tiers.len() => {
                                return Err(bad("only the last tier may have no up_to"))
                            }
                            None => {}
                        }
                    }
                    if c.tiers.last().and_then(|t| t.up_to).is_some() {
                        return Err(bad(
                            "the last tier must have no up_to (null), so every quantity is priced",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// All known plans, by id and version. Cheap to clone (shared plans).
#[derive(Debug, Clone, Default)]
pub struct PlanBook {
    /// Looked up once per usage event: a fast hasher, not SipHash (plan
    /// ids are not attacker-chosen keys of an open-ended map). The
    /// versions of a plan, ascending (at most `MAX_PLAN_VERSIONS`).
    plans: FxHashMap<String, Vec<Arc<Plan>>>,
    /// Per plan and version, the smallest period total of any of its
    /// charges beyond which the charge might exceed `Minor::MAX_AMOUNT`
    /// (`rating::safe_total`).
    safe_totals: FxHashMap<(String, u32), Decimal>,
    /// The smallest of `safe_totals`: a usage total at or below it needs
    /// no rating to know its line fits (the hot path's one comparison).
    safe_total: Option<Decimal>,
}

impl PlanBook {
    pub fn new() -> PlanBook {
        PlanBook::default()
    }

    /// Add a plan version, or replace the version of the same number,
    /// after validating it. A version beyond `MAX_PLAN_VERSIONS` of its
    /// plan is refused.
    pub fn upsert(&mut self, plan: Plan) -> Result<(), PlanError> {
        plan.validate()?;
        let versions = self.plans.entry(plan.plan_id.clone()).or_default();
        let at = versions.partition_point(|p| p.version < plan.version);
        let replaces = versions.get(at).is_some_and(|p| p.version == plan.version);
        if !replaces && versions.len() >= MAX_PLAN_VERSIONS {
            return Err(PlanError::OutOfRange {
                plan: plan.plan_id.clone(),
                field: "version".into(),
                reason: format!(
                    "version {} refused: the book keeps at most {MAX_PLAN_VERSIONS} versions of a plan ({} to {} are kept, none is evicted, so no account's version changes); publish it as a new plan id",
                    plan.version,
                    versions.first().map_or(0, |p| p.version),
                    versions.last().map_or(0, |p| p.version),
                ),
            });
        }
        let safe = plan
            .charges
            .iter()
            .map(|c| rating::safe_total(c, plan.currency, Minor::MAX_AMOUNT))
            .min()
            .unwrap_or(Decimal::MAX);
        self.safe_totals
            .insert((plan.plan_id.clone(), plan.version), safe);
        self.safe_total = self.safe_totals.values().min().copied();
        let plan = Arc::new(plan);
        if replaces {
            versions[at] = plan;
        } else {
            versions.insert(at, plan);
        }
        Ok(())
    }

    /// A period total of any metric at or below this rates within
    /// `Minor::MAX_AMOUNT` under every plan of the book.
    pub fn safe_total(&self) -> Decimal {
        self.safe_total.unwrap_or(Decimal::MAX)
    }

    /// The latest version of a plan.
    pub fn get(&self, plan_id: &str) -> Option<&Arc<Plan>> {
        self.plans.get(plan_id).and_then(|v| v.last())
    }

    /// One version of a plan.
    #[inline]
    pub fn get_version(&self, plan_id: &str, version: u32) -> Option<&Arc<Plan>> {
        let versions = self.plans.get(plan_id)?;
        // Nearly always the latest: look there first.
        match versions.last() {
            Some(p) if p.version == version => Some(p),
            _ => versions.iter().find(|p| p.version == version),
        }
    }

    /// Number of plan ids.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The latest version of every plan.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.plans.values().filter_map(|v| v.last())
    }
}
