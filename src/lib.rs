//! billstream: a usage-based billing engine.
//!
//! The modules follow the data path: `contracts` decodes bytes into engine
//! inputs, `engine` folds them into per-account state (pure, no I/O),
//! `store` persists state, `runtime` drives batches through engine and store
//! and hands outputs to the sinks, `cli` wires it all for the commands.

pub mod api;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod dlq;
pub mod engine;
pub mod gateway;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
