//! The ScyllaDB state store: the state of record at scale.
//!
//! `schema` renders `schemas/cql/billstream.cql` for `billstream migrate`;
//! `stamp` makes write timestamps that fence a lost owner's writes; `plan`
//! turns one account's write into the mutations of its batches; `rows`
//! maps rows back; `statements` holds the prepared statements; `store` is
//! the `StateStore` itself.

mod plan;
mod rows;
mod schema;
mod stamp;
mod statements;
mod store;
#[cfg(test)]
mod typecheck;

pub use schema::{render as render_schema, statements as schema_statements, Backend, SCHEMA_CQL};
pub use store::{connect_session, detect_backend, migrate, Migration, ScyllaStore};
