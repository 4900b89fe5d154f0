//! The runtime: drives decoded records and timers through the engine,
//! persists each batch, and hands the outputs of durable state to a sink.

pub mod batch;
mod processor;
pub mod service;

pub use processor::{
    BatchRecord, Checkpoint, Processor, ProcessorStats, PublishedMark, SourcePos,
    StoredJournalEntry, Unacked, WaitRule,
};
