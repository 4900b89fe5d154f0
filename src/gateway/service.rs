//! The Kafka loop of the emulator (below).
