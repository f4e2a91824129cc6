//! The wire contract between Spillway's agents and ingesters.
//!
//! Anyone can produce records from `docs/record-format.md` alone; this crate
//! is the reference implementation.
//!
//! Layout:
//! - [`record`]: the validated record types ([`Record`], [`MetricsRecord`],
//!   [`StatusRecord`], [`Sample`]).
//! - [`codec`]: MessagePack encoding and validating decoding, with [`Limits`]
//!   and the typed [`DecodeError`].
//! - [`kafka`]: message key, headers and the default topic.
//! - [`kafka_security`]: the `[kafka.tls]` and `[kafka.sasl]` blocks both
//!   programs read, and the librdkafka properties they become.
//! - [`settings`]: configuration plumbing shared by the two binaries.
//! - [`throttle`]: collapsing repeated log messages (also shared by both).
//! - `kafka_log` (feature `rdkafka`): librdkafka's messages, throttled, into
//!   `tracing`.
//! - `process` (feature `process`): logging, signals and the HTTP listener
//!   of both binaries.
//!
//! Without its features, this crate does no I/O apart from reading
//! configuration files ([`settings`]) and depends on no Kafka or ClickHouse
//! client.

pub mod codec;
pub mod kafka;
#[cfg(feature = "rdkafka")]
pub mod kafka_log;
pub mod kafka_security;
#[cfg(feature = "process")]
pub mod process;
pub mod record;
pub mod settings;
pub mod throttle;

pub use codec::{
    DecodeError, EncodeError, Limits, SplitError, Wire, decode, encode, encode_into, encode_split,
};
pub use record::{
    Label, MetricKind, MetricsRecord, Origin, Record, RecordType, SCHEMA_VERSION, Sample, SeqRange,
    StatusRecord,
};
