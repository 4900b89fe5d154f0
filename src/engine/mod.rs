//! The billing engine: a pure per-account fold.
//!
//! `state + input → new state + domain events`, with the clock passed in.
//! Nothing in this module does I/O or reads a clock; the runtime, the demo
//! and the tests all drive the same code.

pub mod account;
pub mod aggregation;
pub mod alerts;
pub mod config;
pub mod credit;
pub mod dedup;
pub mod discount;
pub mod events;
pub mod fold;
pub mod interim;
pub mod money;
pub mod name;
pub mod plan;
pub mod rating;
pub mod reject;
pub mod settlement;
pub mod time;
pub mod tripwire;

pub use account::AccountState;
pub use config::EngineConfig;
pub use events::{DomainEvent, Input, JournalEntry};
pub use fold::Engine;
pub use reject::Rejection;
#[cfg(test)]
mod aggregation_tests;
#[cfg(test)]
mod alerts_tests;
#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod credit_tests;
#[cfg(test)]
mod discount_tests;
#[cfg(test)]
mod interim_tests;
#[cfg(test)]
mod plan_change_tests;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
