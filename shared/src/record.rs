//! The record types of the wire contract, as the rest of Spillway sees them.
//!
//! These are the *validated* forms: a value of these types that came out of
//! [`crate::codec::decode`] has passed every check in `docs/record-format.md`.
//! The MessagePack layout itself lives in `codec.rs`.

use std::fmt;

/// The schema version this build writes, and the only one it reads.
///
/// Adding an optional field does not bump it (readers ignore unknown fields);
/// only a change that old readers would misread does.
pub const SCHEMA_VERSION: u32 = 1;

/// One message on the metrics topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// One collection tick of one agent instance.
    Metrics(MetricsRecord),
    /// A heartbeat describing the agent's own health.
    Status(StatusRecord),
}

impl Record {
    /// The stable host id, which is also the Kafka message key.
    pub fn host_id(&self) -> &str {
        &self.origin().host_id
    }

    /// Who produced the record.
    pub fn origin(&self) -> &Origin {
        match self {
            Record::Metrics(m) => &m.origin,
            Record::Status(s) => &s.origin,
        }
    }

    /// The record type as written in the `type` field and the `spillway-type` header.
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::Metrics(_) => RecordType::Metrics,
            Record::Status(_) => RecordType::Status,
        }
    }
}

/// The two record types of schema version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// A [`MetricsRecord`].
    Metrics,
    /// A [`StatusRecord`].
    Status,
}

impl RecordType {
    /// The string used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Metrics => "metrics",
            RecordType::Status => "status",
        }
    }

    /// Parses the wire string; `None` for anything this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "metrics" => Some(RecordType::Metrics),
            "status" => Some(RecordType::Status),
            _ => None,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who produced a record: fields shared by every record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Stable identity of the host (e.g. `/etc/machine-id`); the Kafka key.
    pub host_id: String,
    /// The host's name at collection time; informational, may change.
    pub hostname: String,
    /// Identity of one agent process run, new at each start. Sequence numbers
    /// are scoped to it.
    pub instance_id: String,
    /// Version of the software that produced the record.
    pub agent_version: String,
}

/// One agent instance's samples from one collection tick.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRecord {
    /// Who produced it.
    pub origin: Origin,
    /// Tick number, starting at 0 for each instance and increasing by one per
    /// tick, so that gaps and duplicates are measurable downstream.
    pub seq: u64,
    /// Collection time, milliseconds since the Unix epoch, UTC.
    pub time_ms: u64,
    /// The collection interval in milliseconds (> 0).
    pub interval_ms: u32,
    /// When a tick is too large for one message it is split into `parts`
    /// records with the same `seq`; `part` is this one's index (0-based).
    pub part: u32,
    /// Number of records the tick was split into (1 when whole).
    pub parts: u32,
    /// The measurements.
    pub samples: Vec<Sample>,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, OpenTelemetry semantic-convention style, e.g. `system.cpu.utilization`.
    pub name: String,
    /// The value; always finite.
    pub value: f64,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// Unit in UCUM notation as OpenTelemetry uses it: `1`, `By`, `s`, `{packet}`.
    pub unit: String,
    /// Labels in the producer's order; keys are unique.
    pub labels: Vec<Label>,
}

/// One key/value label of a sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label key, e.g. `cpu.mode`.
    pub key: String,
    /// Label value, any UTF-8 string.
    pub value: String,
}

impl Label {
    /// Builds a label from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The kind of a sample's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that can go up and down (utilization, bytes used, a rate).
    Gauge,
    /// A monotonic cumulative total since some start (bytes sent since boot).
    Counter,
}

impl MetricKind {
    /// The string used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        }
    }

    /// Parses the wire string; `None` for anything this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gauge" => Some(MetricKind::Gauge),
            "counter" => Some(MetricKind::Counter),
            _ => None,
        }
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent heartbeat: its health and what it had to drop.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRecord {
    /// Who produced it.
    pub origin: Origin,
    /// When the status was taken, milliseconds since the Unix epoch, UTC.
    pub time_ms: u64,
    /// Milliseconds since this agent instance started.
    pub uptime_ms: u64,
    /// The newest metrics `seq` this instance has produced, if any.
    pub last_seq: Option<u64>,
    /// Bytes held in the disk spool, waiting for the broker.
    pub spool_bytes: u64,
    /// Records held in the disk spool.
    pub spool_records: u64,
    /// Metrics sequence ranges this instance dropped (spool full) and has not
    /// reported before, oldest first.
    pub dropped: Vec<SeqRange>,
    /// The last error seen while publishing, if the last attempt failed.
    pub last_error: Option<String>,
}

/// An inclusive range of metrics sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqRange {
    /// First sequence number in the range.
    pub first: u64,
    /// Last sequence number in the range (>= `first`).
    pub last: u64,
}

impl SeqRange {
    /// How many sequence numbers the range covers.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true: a range covers at least one number. Present for clippy's
    /// `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}
