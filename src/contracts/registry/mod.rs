//! A Confluent-compatible Schema Registry, when one is configured
//! (`kafka.schema_registry_url`): the REST client, the subjects billstream's
//! schemas live under (and `billstream schemas register`), and the
//! resolution of schema ids for `billstream run`.

pub mod client;
pub mod resolver;
pub mod subjects;

pub use client::{RegisteredSchema, RegistryClient, RegistryError, RetryPolicy, SubjectVersion};
pub use resolver::{registry_ids, Learned, WriterSchemas, NEGATIVE_TTL};
pub use subjects::{register_all, subjects, Registration, Subject};
