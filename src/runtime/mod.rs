//! The runtime: drives decoded records and timers through the engine,
//! persists each batch, and hands the outputs of durable state to a sink.

mod processor;

pub use processor::{Processor, ProcessorStats, SourcePos};
