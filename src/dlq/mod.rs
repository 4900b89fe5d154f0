//! Dead-letter tools (`billstream dlq list|show|replay`): read dead
//! letters back from the DLQ topic or the embedded mode's file (`record`),
//! select them and decide which may be replayed (`select`), and read and
//! republish them on Kafka with a replay log (`kafka`).

pub mod kafka;
pub mod record;
pub mod replay;
pub mod select;

pub use record::DlqRecord;
pub use replay::{plan, Decision};
pub use select::{refusal, Filter, CARD_NUMBER_KIND};
