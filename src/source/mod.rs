//! Sources: where input records come from (Kafka consumer groups).

pub mod kafka;
pub mod partitioner;
