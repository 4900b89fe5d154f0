//! The three ways contracts can fail, kept apart because each has a
//! different next step: a `DecodeError` sends one input to the dead-letter
//! topic and processing moves on; a `ContractError` means the embedded
//! schemas or a registry schema are unusable and the process must not
//! start; an `EncodeError` is a bug in this crate (an output that does not
//! fit its own schema) and stops the batch.

/// Why input bytes could not be turned into an engine input. Always a
/// property of the record, never of the process: the record goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than the 5 bytes of a Confluent frame (magic byte + schema id).
    #[error("record too short for Confluent framing (need 5 bytes, got {0})")]
    TooShort(usize),
    /// Neither Confluent Avro (first byte 0x00) nor JSON (first non-blank byte `{`).
    #[error("unrecognised payload: first byte {0:#04x} is neither 0x00 (Confluent Avro) nor '{{' (CloudEvents JSON)")]
    BadMagic(u8),
    /// The frame names a schema id that is neither in the manifest nor registered.
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    /// The frame names a schema id whose writer schema (from the Schema
    /// Registry) this build cannot read: not an input record, another
    /// schema type, or not resolvable into this build's reader schema.
    #[error("schema id {id} cannot be read as a billstream input: {reason}")]
    IncompatibleSchema { id: u32, reason: String },
    /// The Avro body does not match its schema (truncated, bad varint, bad union branch, trailing bytes…).
    #[error("Avro body does not match its schema: {0}")]
    BodyMismatch(String),
    /// A field decoded but its value is not acceptable (quantity not a decimal, timestamp out of range, unknown enum value…).
    #[error("{field} {reason}")]
    InvalidField { field: String, reason: String },
    /// The JSON text is not valid JSON.
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// Valid JSON, but not a CloudEvents 1.0 structured-mode usage event.
    #[error("not a CloudEvents 1.0 usage event: {0}")]
    NotCloudEvent(String),
}

impl DecodeError {
    /// Short machine-readable kind for DLQ records and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooShort(_) => "too_short",
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::IncompatibleSchema { .. } => "incompatible_schema",
            DecodeError::BodyMismatch(_) => "body_mismatch",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::NotCloudEvent(_) => "not_cloud_event",
        }
    }

    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> DecodeError {
        DecodeError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The schema catalog or a registry schema cannot be used. Fatal at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// `schemas/manifest.json` is not the expected shape.
    #[error("schemas/manifest.json: {0}")]
    Manifest(String),
    /// A schema file does not parse as Avro or breaks a catalog rule.
    #[error("schemas/{file}: {reason}")]
    Schema { file: String, reason: String },
    /// The manifest and the embedded files disagree (missing file, duplicate id, name mismatch).
    #[error("schema catalog: {0}")]
    Catalog(String),
    /// A writer schema cannot be read into the engine record it claims to be.
    #[error("schema {name}: {reason}")]
    Incompatible { name: String, reason: String },
}

/// An output record does not fit its own Avro schema: a bug in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// No schema of that record name in the catalog.
    #[error("no schema for record {0}")]
    UnknownRecord(String),
    /// A JSON value does not fit the schema at `path`.
    #[error("{record}.{path}: {reason}")]
    Mismatch {
        record: String,
        path: String,
        reason: String,
    },
    /// apache-avro refused the value.
    #[error("Avro encoding of {record} failed: {reason}")]
    Avro { record: String, reason: String },
}
