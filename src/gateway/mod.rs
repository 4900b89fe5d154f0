//! The payment-gateway emulator (`billstream gateway`): answers the
//! engine's charge requests (`billing.charges.v1`) with charge results
//! (`billing.payments.v1`) the way several payment providers would, from a
//! seeded configuration, so dunning can be exercised end to end without a
//! real provider. `config` reads and validates the emulator's file,
//! `outcome` decides a charge's result as a pure function of the seed, the
//! provider's settings and the charge, `request` turns bytes into requests
//! and results into bytes, `service` is the Kafka loop.

pub mod config;
pub mod outcome;
pub mod request;
pub mod service;

pub use config::{Decline, GatewayConfig, GatewayConfigError, ProviderConfig};
pub use outcome::{decide, provider_of, Outcome, TokenRef, Verdict};
pub use request::{ChargeRequest, Rejected};
