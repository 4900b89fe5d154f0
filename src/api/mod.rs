//! The read-only HTTP API for support and accounting (SPEC §1): an
//! account's state, its invoices, its journal, its state as of a past
//! instant, the lineage of an invoice line, and the provider and
//! settlement reports across accounts. Nothing here writes.

pub mod auth;
pub mod console;
pub mod history;
pub mod lineage;
pub mod paging;
pub mod reports;
pub mod routes;
mod serve;
pub mod views;

pub use auth::{Verifier, READ_ROLE};
pub use routes::{router, ApiState, ROUTES};
pub use serve::{serve, spawn_with_processor};
