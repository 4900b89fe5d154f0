//! Sinks: where output records go once the state behind them is durable.

mod file;
pub mod kafka;

pub use file::FileSink;

use crate::contracts::OutputRecord;

/// Publishes output records; returns once they are acknowledged.
pub trait Sink {
    fn publish(&mut self, records: &[OutputRecord]) -> std::io::Result<()>;
}
