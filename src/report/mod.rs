//! `billstream report`: the provider report (per payment provider and day)
//! and the settlement report (per month), as pure functions of the journal
//! (`journal` reads it and cuts the window), each with checks that its
//! figures reconcile with the journal; `render` prints them as a table,
//! CSV or JSON.

pub mod journal;
pub mod providers;
pub mod render;
pub mod settlement;

use serde::Serialize;

pub use journal::{Journal, ReportError, Window};
pub use providers::{providers, ProviderDay, ProviderReport};
pub use settlement::{settlement, MonthRow, SettlementReport};

/// One reconciliation: a figure as the report computes it and as the
/// journal states it; they must be equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub what: String,
    pub report: String,
    pub journal: String,
    pub ok: bool,
}

impl Check {
    pub fn new(what: String, report: String, journal: String) -> Check {
        let ok = report == journal;
        Check {
            what,
            report,
            journal,
            ok,
        }
    }
}
