//! A simulated world for the demo: accounts with plans, timezones and ways
//! of paying; their daily usage; and customers and a payment gateway (the
//! `billstream gateway` emulator's outcome function, `gateway`) that react
//! to charge requests and invoices through the same events a real gateway
//! and bank would send. Deterministic for a given seed.

pub mod gateway;
mod world;

pub use gateway::{DemoGateway, GatewayReport, DEMO_GATEWAY};
pub use world::{demo_plans, Reaction, World, WorldEvent};
