//! Sinks: where output records go once the state behind them is durable.
//!
//! Shadow mode (`run.mode = "shadow"`) is enforced here, at the boundary:
//! every sink asks `publishes` for each record and drops what it refuses,
//! so no path through the runtime, a republish after a crash, a hand-over
//! or a future caller, can publish a charge request or a notification from
//! a shadow instance.

mod file;
pub mod kafka;

pub use file::FileSink;

use crate::config::RunMode;
use crate::contracts::{OutputRecord, OutputTopic};

/// Publishes output records; returns once they are acknowledged.
pub trait Sink {
    fn publish(&mut self, records: &[OutputRecord]) -> std::io::Result<()>;
}

/// Whether an instance in `mode` may publish records of `topic`. A shadow
/// publishes what lets its work be compared and operated (invoices, the
/// journal, rollups, dead letters: to its shadow topics), never what moves
/// money (charge requests) or reaches a customer (notifications).
pub fn publishes(mode: &RunMode, topic: OutputTopic) -> bool {
    match (mode, topic) {
        (RunMode::Live, _) => true,
        (
            RunMode::Shadow { .. },
            OutputTopic::Invoices
            | OutputTopic::UsageRollups
            | OutputTopic::Journal
            | OutputTopic::Dlq,
        ) => true,
        (RunMode::Shadow { .. }, OutputTopic::Charges | OutputTopic::Notifications) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_14_a_shadow_publishes_no_charge_and_no_notification() {
        let shadow = RunMode::Shadow {
            prefix: "shadow.".into(),
        };
        for topic in OutputTopic::ALL {
            assert!(publishes(&RunMode::Live, topic), "{topic:?}");
            let expected = !matches!(topic, OutputTopic::Charges | OutputTopic::Notifications);
            assert_eq!(publishes(&shadow, topic), expected, "{topic:?}");
        }
    }
}
