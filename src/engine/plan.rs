//! The price book: plans with a recurring fee and per-metric charges.
//!
//! Plans arrive on a compacted topic read in full by every instance; the
//! engine sees them as an immutable `PlanBook` and validates each plan once
//! when it is added, so rating never meets a malformed plan.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::Currency;

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
}

/// A plan: a recurring fee per period (charged in advance), a minimum
/// spend per period, and per-metric charges. Amounts are in major units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub plan_id: String,
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
                metric: c.metric.clone(),
                reason: reason.into(),
            };
            if c.unit_price.is_sign_negative() && !c.unit_price.is_zero() {
                return Err(bad("unit_price must not be negative"));
            }
            if c.free_units.is_sign_negative() && !c.free_units.is_zero() {
                return Err(bad("free_units must not be negative"));
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

/// All known plans, by id. Cheap to clone (shared plans).
#[derive(Debug, Clone, Default)]
pub struct PlanBook {
    /// Looked up once per usage event: a fast hasher, not SipHash (plan
    /// ids are not attacker-chosen keys of an open-ended map).
    plans: FxHashMap<String, Arc<Plan>>,
}

impl PlanBook {
    pub fn new() -> PlanBook {
        PlanBook::default()
    }

    /// Add or replace a plan after validating it.
    pub fn upsert(&mut self, plan: Plan) -> Result<(), PlanError> {
        plan.validate()?;
        self.plans.insert(plan.plan_id.clone(), Arc::new(plan));
        Ok(())
    }

    pub fn get(&self, plan_id: &str) -> Option<&Arc<Plan>> {
        self.plans.get(plan_id)
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.plans.values()
    }
}
