//! A simulated world for the demo: accounts with plans, timezones and ways
//! of paying; their daily usage; and a payment gateway and customers that
//! react to charge requests and invoices through the same events a real
//! gateway and bank would send. Deterministic for a given seed.

mod world;

pub use world::{demo_plans, Reaction, World, WorldEvent};
