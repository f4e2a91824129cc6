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
//!   of both binaries; `retry` (feature `process`): their one retry policy.
//! - [`lock`] and [`now_ms`]: two helpers every thread of both programs uses.
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
#[cfg(feature = "process")]
pub mod retry;
pub mod settings;
pub mod throttle;

pub use codec::{
    DecodeError, EncodeError, Limits, SplitError, Wire, decode, encode, encode_into, encode_split,
};
pub use record::{
    Label, MetricKind, MetricsRecord, Origin, Record, RecordType, SCHEMA_VERSION, Sample, SeqRange,
    StatusRecord,
};

/// Locks `m`, taking the data over from a holder that panicked: every
/// mutex in both programs guards data a panic leaves whole.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
