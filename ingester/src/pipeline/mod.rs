//! From Kafka to durable rows and committed offsets, stage by stage:
//!
//! 1. `poll`: the consumer thread polls Kafka, cuts records into chunks and
//!    handles rebalances.
//! 2. `decode`: decoder threads turn each chunk's records into rows.
//! 3. [`consume`]: the event loop puts decoded chunks back in poll order,
//!    cuts ranges (`ranges`) into batches (`batch`), journals them
//!    ([`journal`]), holds the memory budget and commits offsets
//!    ([`offsets`]) once their rows are durable.
//! 4. `insert`: insert workers, one pool per shard; records a table rejects
//!    go to the dead-letter topic ([`dlq`]) or stall their partition
//!    (`stall`).
//! 5. [`quality`]: the data accounting written to `ingest_quality`.
//!
//! The messages the stages pass each other live in `message`, which depends
//! on no stage, so the stages' imports form no cycle.

mod batch;
pub mod consume;
pub(crate) mod decode;
pub mod dlq;
mod flow;
mod insert;
pub mod journal;
pub(crate) mod message;
pub mod offsets;
pub(crate) mod poll;
pub mod quality;
mod ranges;
mod stall;
