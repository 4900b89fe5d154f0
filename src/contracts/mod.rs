//! Contracts: the bytes on the topics and in files, and their mapping to
//! and from engine types. Avro schemas in `schemas/` are the single source
//! of truth; this module loads them, frames and decodes inputs (Confluent
//! Avro or CloudEvents JSON) and derives and encodes outputs; with a
//! Schema Registry, `registry` gives the schema ids on the wire.

pub mod avro_binary;
pub mod bounded;
pub mod catalog;
pub mod cloudevents;
pub mod dead_letter;
pub mod decimal;
pub mod decode;
pub mod encode;
pub mod errors;
pub mod framing;
pub mod json;
pub mod outputs;
pub mod redact;
pub mod registry;
pub mod usage_reader;

pub use catalog::{Catalog, SchemaEntry, SchemaIds, SchemaSummary};
pub use dead_letter::DeadLetter;
pub use decode::{Decoded, Decoder};
pub use errors::{ContractError, DecodeError, EncodeError};
pub use json::{input_to_json, parse_line, plan_to_json};
pub use outputs::{child_traceparent, output_event_id, outputs_for, OutputRecord, OutputTopic};
