//! The one integration-test binary (one link on two cores); each module is
//! a test area.

mod api;
mod bounds;
mod console;
mod dashboards;
mod demo_smoke;
mod dlq;
mod gateway;
mod hostile_corpus;
mod kafka_bounded;
mod kafka_crash;
mod kafka_dunning;
mod kafka_e2e;
mod kafka_partitions;
mod kafka_redelivery;
mod kafka_tls;
mod kafka_txn;
mod preview_cli;
mod privacy;
mod processor_batch;
mod processor_rejections;
mod reconcile;
mod report;
mod schema_registry;
mod shadow;
mod simulate_golden;
mod store_conformance;
mod store_kill9;
mod store_write_economy;
mod support;
