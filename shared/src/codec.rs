//! MessagePack encoding and validating decoding of records.
//!
//! The layout is specified in `docs/record-format.md`; the golden vectors in
//! `tests/golden.rs` pin it byte for byte. Records are MessagePack **maps with
//! field names** so that any language can produce them and readers can ignore
//! fields they do not know.
//!
//! Decoding is two steps: rmp-serde reads a lenient wire struct in which every
//! field is optional, then `validate` turns it into the typed records of
//! [`crate::record`], naming the offending field in every error. Errors are
//! rare, so the decoder only pays for serde's path tracking when it already
//! failed: it decodes again with `serde_path_to_error` to name the field.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::record::{
    Label, MetricKind, MetricsRecord, Origin, Record, RecordType, SCHEMA_VERSION, Sample, SeqRange,
    StatusRecord,
};

/// Bounds that a decoded record must respect. The defaults are the contract's
/// limits (see `docs/record-format.md`); a reader may only tighten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded record, in bytes. Default 1 MiB, Kafka's default
    /// `message.max.bytes`.
    pub max_record_bytes: usize,
    /// Most samples in one metrics record. Default 10,000.
    pub max_samples: usize,
    /// Most labels on one sample. Default 32.
    pub max_labels: usize,
    /// Longest metric name or label key, in bytes. Default 128.
    pub max_name_len: usize,
    /// Longest label value, in bytes. Default 1,024.
    pub max_label_value_len: usize,
    /// Longest unit, in bytes. Default 32.
    pub max_unit_len: usize,
    /// Longest `host_id`, `instance_id` or `agent_version`, in bytes. Default 128.
    pub max_id_len: usize,
    /// Longest `hostname`, in bytes. Default 255 (the DNS limit).
    pub max_hostname_len: usize,
    /// Longest `last_error`, in bytes. Default 4,096.
    pub max_error_len: usize,
    /// Most `dropped` ranges in one status record. Default 1,024.
    pub max_dropped_ranges: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 1024 * 1024,
            max_samples: 10_000,
            max_labels: 32,
            max_name_len: 128,
            max_label_value_len: 1024,
            max_unit_len: 32,
            max_id_len: 128,
            max_hostname_len: 255,
            max_error_len: 4096,
            max_dropped_ranges: 1024,
        }
    }
}

/// Why a record was rejected. Every variant that concerns one field names it
/// with a path such as `samples[3].labels.cpu`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The encoded record exceeds [`Limits::max_record_bytes`].
    #[error("record is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The input is empty or its top level is not a MessagePack map.
    #[error("record is not a MessagePack map (first byte {first})")]
    NotAMap {
        /// The first byte, as hex, or `none` for empty input.
        first: String,
    },
    /// The bytes are not valid MessagePack, or a field has the wrong type.
    #[error("malformed record at `{field}`: {detail}")]
    Malformed {
        /// Path of the field being read when decoding failed (`.` for the top).
        field: String,
        /// What the MessagePack reader said.
        detail: String,
    },
    /// A required field is absent or nil.
    #[error("missing field `{field}`")]
    MissingField {
        /// Path of the missing field.
        field: String,
    },
    /// `schema` is a version this build does not read.
    #[error("unsupported schema version {found} (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// The version found.
        found: u64,
    },
    /// `type` is not `metrics` or `status`.
    #[error("unknown record type {found:?}")]
    UnknownType {
        /// The type found.
        found: String,
    },
    /// A sample's `kind` is not `gauge` or `counter`.
    #[error("`{field}` has unknown metric kind {found:?}")]
    UnknownKind {
        /// Path of the field.
        field: String,
        /// The kind found.
        found: String,
    },
    /// A list is longer than its limit.
    #[error("`{field}` has {count} entries, over the limit of {limit}")]
    TooMany {
        /// Path of the list.
        field: String,
        /// Entries found.
        count: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A string is longer than its limit.
    #[error("`{field}` is {len} bytes, over the limit of {limit}")]
    TooLong {
        /// Path of the string.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A sample value is NaN or infinite.
    #[error("`{field}` is not finite ({value})")]
    NonFinite {
        /// Path of the value.
        field: String,
        /// The value found.
        value: f64,
    },
    /// A field breaks a rule of the contract other than those above.
    #[error("`{field}` is invalid: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// The rule it breaks.
        reason: &'static str,
    },
}

impl DecodeError {
    /// A short, stable name for the kind of error, for metrics labels and
    /// dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotAMap { .. } => "not_a_map",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::UnsupportedSchema { .. } => "unsupported_schema",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::TooMany { .. } => "too_many",
            DecodeError::TooLong { .. } => "too_long",
            DecodeError::NonFinite { .. } => "non_finite",
            DecodeError::Invalid { .. } => "invalid",
        }
    }

    /// The path of the offending field, when the error concerns one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Malformed { field, .. }
            | DecodeError::MissingField { field }
            | DecodeError::UnknownKind { field, .. }
            | DecodeError::TooMany { field, .. }
            | DecodeError::TooLong { field, .. }
            | DecodeError::NonFinite { field, .. }
            | DecodeError::Invalid { field, .. } => Some(field),
            DecodeError::UnsupportedSchema { .. } => Some("schema"),
            DecodeError::UnknownType { .. } => Some("type"),
            DecodeError::TooLarge { .. } | DecodeError::NotAMap { .. } => None,
        }
    }
}

/// Encoding failed. With the types of this crate that only happens when the
/// MessagePack writer fails, which writing to a `Vec` never does; it is a
/// `Result` so that callers need not trust that.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode record: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

/// Encodes a record as a MessagePack map with field names.
pub fn encode(record: &Record) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(encoded_len_hint(record));
    encode_into(record, &mut buf)?;
    Ok(buf)
}

/// Encodes a record, appending to `buf`.
pub fn encode_into(record: &Record, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut ser = rmp_serde::Serializer::new(buf).with_struct_map();
    Wire(record).serialize(&mut ser)?;
    Ok(())
}

/// A record in its wire layout, for any serde format: MessagePack through
/// [`encode`], or JSON for humans (`spillway-agent once --format json`).
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a>(pub &'a Record);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Record::Metrics(m) => MetricsOut(m).serialize(s),
            Record::Status(st) => StatusOut(st).serialize(s),
        }
    }
}

/// Encodes a metrics record into as few messages as fit in `max_bytes` each:
/// one when it fits, otherwise `parts` records with the same `seq` that split
/// the samples evenly (see `part`/`parts` in `docs/record-format.md`).
///
/// Fails only if a single sample cannot fit, which the contract's string and
/// label limits rule out for any `max_bytes` of 64 KiB or more.
pub fn encode_split(record: &MetricsRecord, max_bytes: usize) -> Result<Vec<Vec<u8>>, SplitError> {
    let whole = encode(&Record::Metrics(record.clone()))?;
    if whole.len() <= max_bytes {
        return Ok(vec![whole]);
    }
    let n = record.samples.len();
    // Start from the size ratio and add parts until every part fits.
    let mut parts = whole.len().div_ceil(max_bytes).max(2);
    while parts <= n.max(1) {
        let chunk = n.div_ceil(parts);
        let chunks: Vec<&[Sample]> = record.samples.chunks(chunk.max(1)).collect();
        let count = u32::try_from(chunks.len()).map_err(|_| SplitError::TooLarge { max_bytes })?;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, samples) in chunks.into_iter().enumerate() {
            let part = MetricsRecord {
                origin: record.origin.clone(),
                seq: record.seq,
                time_ms: record.time_ms,
                interval_ms: record.interval_ms,
                part: i as u32,
                parts: count,
                samples: samples.to_vec(),
            };
            out.push(encode(&Record::Metrics(part))?);
        }
        if out.iter().all(|b| b.len() <= max_bytes) {
            return Ok(out);
        }
        parts = parts * 3 / 2 + 1;
    }
    Err(SplitError::TooLarge { max_bytes })
}

/// A record could not be split to fit.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Even one sample per part exceeds the limit.
    #[error("a single sample does not fit in {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: usize,
    },
}

fn encoded_len_hint(record: &Record) -> usize {
    match record {
        Record::Metrics(m) => 160 + m.samples.len() * 64,
        Record::Status(_) => 256,
    }
}

/// Decodes and validates one record.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Record, DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_record_bytes,
        });
    }
    match bytes.first() {
        // fixmap, map16, map32
        Some(0x80..=0x8f | 0xde | 0xdf) => {}
        Some(b) => {
            return Err(DecodeError::NotAMap {
                first: format!("0x{b:02x}"),
            });
        }
        None => {
            return Err(DecodeError::NotAMap {
                first: "none".into(),
            });
        }
    }
    let wire: WireIn = match rmp_serde::from_slice(bytes) {
        Ok(w) => w,
        Err(e) => return Err(malformed(bytes, e)),
    };
    validate(wire, limits)
}

/// Decodes and validates one record from any self-describing serde format
/// with the wire layout, such as the JSON that `spillway-agent once` prints.
/// The size limit is the caller's to enforce; errors do not name the field.
pub fn decode_from<'de, D: Deserializer<'de>>(
    de: D,
    limits: &Limits,
) -> Result<Record, DecodeError> {
    let wire = WireIn::deserialize(de).map_err(|e| DecodeError::Malformed {
        field: ".".into(),
        detail: e.to_string(),
    })?;
    validate(wire, limits)
}

/// Builds the error for input rmp-serde refused, naming the field by decoding
/// again with path tracking (only on this slow path).
fn malformed(bytes: &[u8], first_error: rmp_serde::decode::Error) -> DecodeError {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    match serde_path_to_error::deserialize::<_, WireIn>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            DecodeError::Malformed {
                field: path,
                detail: e.into_inner().to_string(),
            }
        }
        Ok(_) => DecodeError::Malformed {
            field: ".".into(),
            detail: first_error.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------
// Writing

struct MetricsOut<'a>(&'a MetricsRecord);

impl Serialize for MetricsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let split = m.parts != 1;
        let mut st = s.serialize_struct("MetricsRecord", if split { 12 } else { 10 })?;
        st.serialize_field("schema", &SCHEMA_VERSION)?;
        st.serialize_field("type", RecordType::Metrics.as_str())?;
        serialize_origin(&mut st, &m.origin)?;
        st.serialize_field("seq", &m.seq)?;
        st.serialize_field("time_ms", &m.time_ms)?;
        st.serialize_field("interval_ms", &m.interval_ms)?;
        if split {
            st.serialize_field("part", &m.part)?;
            st.serialize_field("parts", &m.parts)?;
        }
        st.serialize_field("samples", &SamplesOut(&m.samples))?;
        st.end()
    }
}

struct StatusOut<'a>(&'a StatusRecord);

impl Serialize for StatusOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut st = s.serialize_struct("StatusRecord", 13)?;
        st.serialize_field("schema", &SCHEMA_VERSION)?;
        st.serialize_field("type", RecordType::Status.as_str())?;
        serialize_origin(&mut st, &r.origin)?;
        st.serialize_field("time_ms", &r.time_ms)?;
        st.serialize_field("uptime_ms", &r.uptime_ms)?;
        st.serialize_field("last_seq", &r.last_seq)?;
        st.serialize_field("spool_bytes", &r.spool_bytes)?;
        st.serialize_field("spool_records", &r.spool_records)?;
        let dropped: Vec<[u64; 2]> = r.dropped.iter().map(|d| [d.first, d.last]).collect();
        st.serialize_field("dropped", &dropped)?;
        st.serialize_field("last_error", &r.last_error)?;
        st.end()
    }
}

fn serialize_origin<S: SerializeStruct>(st: &mut S, o: &Origin) -> Result<(), S::Error> {
    st.serialize_field("host_id", &o.host_id)?;
    st.serialize_field("hostname", &o.hostname)?;
    st.serialize_field("instance_id", &o.instance_id)?;
    st.serialize_field("agent_version", &o.agent_version)
}

struct SamplesOut<'a>(&'a [Sample]);

impl Serialize for SamplesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SampleOut))
    }
}

struct SampleOut<'a>(&'a Sample);

impl Serialize for SampleOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        let mut st = s.serialize_struct("Sample", 5)?;
        st.serialize_field("name", &x.name)?;
        st.serialize_field("value", &x.value)?;
        st.serialize_field("kind", x.kind.as_str())?;
        st.serialize_field("unit", &x.unit)?;
        st.serialize_field("labels", &LabelsOut(&x.labels))?;
        st.end()
    }
}

struct LabelsOut<'a>(&'a [Label]);

impl Serialize for LabelsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for l in self.0 {
            map.serialize_entry(&l.key, &l.value)?;
        }
        map.end()
    }
}

// ---------------------------------------------------------------------------
// Reading: the lenient wire form. Every field is optional here so that a
// missing one is reported by `validate` with its name, not by serde.

#[derive(Deserialize)]
struct WireIn {
    schema: Option<u64>,
    #[serde(rename = "type")]
    record_type: Option<String>,
    host_id: Option<String>,
    hostname: Option<String>,
    instance_id: Option<String>,
    agent_version: Option<String>,
    seq: Option<u64>,
    time_ms: Option<u64>,
    interval_ms: Option<u64>,
    part: Option<u64>,
    parts: Option<u64>,
    samples: Option<Vec<WireSample>>,
    uptime_ms: Option<u64>,
    last_seq: Option<u64>,
    spool_bytes: Option<u64>,
    spool_records: Option<u64>,
    dropped: Option<Vec<(u64, u64)>>,
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct WireSample {
    name: Option<String>,
    value: Option<f64>,
    kind: Option<WireKind>,
    unit: Option<String>,
    labels: Option<WireLabels>,
}

/// A metric kind as read: known kinds cost no allocation.
enum WireKind {
    Known(MetricKind),
    Unknown(String),
}

impl<'de> Deserialize<'de> for WireKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl Visitor<'_> for KindVisitor {
            type Value = WireKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metric kind string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireKind, E> {
                Ok(match MetricKind::parse(v) {
                    Some(k) => WireKind::Known(k),
                    None => WireKind::Unknown(v.to_owned()),
                })
            }
        }
        d.deserialize_str(KindVisitor)
    }
}

/// Labels as read: a map of string to string, in wire order.
struct WireLabels(Vec<Label>);

impl<'de> Deserialize<'de> for WireLabels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = WireLabels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of label keys to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireLabels, A::Error> {
                // The record size cap bounds this; the hint is capped so a
                // lying length prefix cannot make us allocate up front.
                let mut labels = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    labels.push(Label { key, value });
                }
                Ok(WireLabels(labels))
            }
        }
        d.deserialize_map(LabelsVisitor)
    }
}

// ---------------------------------------------------------------------------
// Validation

fn validate(w: WireIn, limits: &Limits) -> Result<Record, DecodeError> {
    let schema = w.schema.ok_or_else(|| missing("schema"))?;
    if schema != u64::from(SCHEMA_VERSION) {
        return Err(DecodeError::UnsupportedSchema { found: schema });
    }
    let record_type = w.record_type.ok_or_else(|| missing("type"))?;
    let record_type =
        RecordType::parse(&record_type).ok_or(DecodeError::UnknownType { found: record_type })?;

    let origin = Origin {
        host_id: required_id("host_id", w.host_id, limits.max_id_len)?,
        hostname: bounded("hostname", w.hostname, limits.max_hostname_len)?,
        instance_id: required_id("instance_id", w.instance_id, limits.max_id_len)?,
        agent_version: bounded("agent_version", w.agent_version, limits.max_id_len)?,
    };
    let time_ms = w.time_ms.ok_or_else(|| missing("time_ms"))?;

    match record_type {
        RecordType::Metrics => {
            let seq = w.seq.ok_or_else(|| missing("seq"))?;
            let interval_ms = w.interval_ms.ok_or_else(|| missing("interval_ms"))?;
            let interval_ms = u32::try_from(interval_ms)
                .ok()
                .filter(|&i| i > 0)
                .ok_or_else(|| invalid("interval_ms", "must be between 1 and 4294967295"))?;
            let (part, parts) = match (w.part, w.parts) {
                (None, None) => (0, 1),
                (Some(part), Some(parts)) => {
                    let parts = u32::try_from(parts)
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| invalid("parts", "must be between 1 and 4294967295"))?;
                    let part = u32::try_from(part)
                        .ok()
                        .filter(|&p| p < parts)
                        .ok_or_else(|| invalid("part", "must be less than `parts`"))?;
                    (part, parts)
                }
                (Some(_), None) => return Err(missing("parts")),
                (None, Some(_)) => return Err(missing("part")),
            };
            let samples = w.samples.ok_or_else(|| missing("samples"))?;
            if samples.len() > limits.max_samples {
                return Err(DecodeError::TooMany {
                    field: "samples".into(),
                    count: samples.len(),
                    limit: limits.max_samples,
                });
            }
            let samples = samples
                .into_iter()
                .enumerate()
                .map(|(i, s)| validate_sample(i, s, limits))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Record::Metrics(MetricsRecord {
                origin,
                seq,
                time_ms,
                interval_ms,
                part,
                parts,
                samples,
            }))
        }
        RecordType::Status => {
            let dropped = w.dropped.unwrap_or_default();
            if dropped.len() > limits.max_dropped_ranges {
                return Err(DecodeError::TooMany {
                    field: "dropped".into(),
                    count: dropped.len(),
                    limit: limits.max_dropped_ranges,
                });
            }
            let mut ranges = Vec::with_capacity(dropped.len());
            for (i, (first, last)) in dropped.into_iter().enumerate() {
                if first > last {
                    return Err(DecodeError::Invalid {
                        field: format!("dropped[{i}]"),
                        reason: "first is greater than last",
                    });
                }
                ranges.push(SeqRange { first, last });
            }
            let last_error = match w.last_error {
                Some(e) => Some(bounded("last_error", Some(e), limits.max_error_len)?),
                None => None,
            };
            Ok(Record::Status(StatusRecord {
                origin,
                time_ms,
                uptime_ms: w.uptime_ms.ok_or_else(|| missing("uptime_ms"))?,
                last_seq: w.last_seq,
                spool_bytes: w.spool_bytes.unwrap_or(0),
                spool_records: w.spool_records.unwrap_or(0),
                dropped: ranges,
                last_error,
            }))
        }
    }
}

fn validate_sample(i: usize, s: WireSample, limits: &Limits) -> Result<Sample, DecodeError> {
    let path = |field: &str| format!("samples[{i}].{field}");
    let name = s.name.ok_or_else(|| DecodeError::MissingField {
        field: path("name"),
    })?;
    check_name(&name, limits.max_name_len, || path("name"))?;
    let value = s.value.ok_or_else(|| DecodeError::MissingField {
        field: path("value"),
    })?;
    if !value.is_finite() {
        return Err(DecodeError::NonFinite {
            field: path("value"),
            value,
        });
    }
    let kind = match s.kind {
        Some(WireKind::Known(k)) => k,
        Some(WireKind::Unknown(found)) => {
            return Err(DecodeError::UnknownKind {
                field: path("kind"),
                found,
            });
        }
        None => {
            return Err(DecodeError::MissingField {
                field: path("kind"),
            });
        }
    };
    let unit = s.unit.unwrap_or_default();
    check_len(&unit, limits.max_unit_len, || path("unit"))?;
    let labels = s.labels.map(|l| l.0).unwrap_or_default();
    if labels.len() > limits.max_labels {
        return Err(DecodeError::TooMany {
            field: path("labels"),
            count: labels.len(),
            limit: limits.max_labels,
        });
    }
    for (j, label) in labels.iter().enumerate() {
        check_name(&label.key, limits.max_name_len, || {
            format!("samples[{i}].labels[{j}]")
        })?;
        check_len(&label.value, limits.max_label_value_len, || {
            format!("samples[{i}].labels.{}", label.key)
        })?;
        if labels[..j].iter().any(|l| l.key == label.key) {
            return Err(DecodeError::Invalid {
                field: format!("samples[{i}].labels.{}", label.key),
                reason: "duplicate label key",
            });
        }
    }
    Ok(Sample {
        name,
        value,
        kind,
        unit,
        labels,
    })
}

fn missing(field: &str) -> DecodeError {
    DecodeError::MissingField {
        field: field.into(),
    }
}

fn invalid(field: &str, reason: &'static str) -> DecodeError {
    DecodeError::Invalid {
        field: field.into(),
        reason,
    }
}

fn check_len(s: &str, limit: usize, field: impl FnOnce() -> String) -> Result<(), DecodeError> {
    if s.len() > limit {
        return Err(DecodeError::TooLong {
            field: field(),
            len: s.len(),
            limit,
        });
    }
    Ok(())
}

/// Metric names and label keys: `[A-Za-z_:][A-Za-z0-9_:./-]*`, which admits
/// both OpenTelemetry (`system.cpu.time`) and Prometheus (`node_load1`) names.
fn check_name(s: &str, limit: usize, field: impl FnOnce() -> String) -> Result<(), DecodeError> {
    if s.len() > limit {
        return Err(DecodeError::TooLong {
            field: field(),
            len: s.len(),
            limit,
        });
    }
    if !is_valid_name(s) {
        return Err(DecodeError::Invalid {
            field: field(),
            reason: "must match [A-Za-z_:][A-Za-z0-9_:./-]*",
        });
    }
    Ok(())
}

/// Whether `s` is a valid metric name or label key (see `docs/record-format.md`).
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'/' | b'-'))
}

fn required_id(
    field: &'static str,
    v: Option<String>,
    limit: usize,
) -> Result<String, DecodeError> {
    let v = bounded(field, v, limit)?;
    if v.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(v)
}

fn bounded(field: &'static str, v: Option<String>, limit: usize) -> Result<String, DecodeError> {
    let v = v.ok_or_else(|| missing(field))?;
    check_len(&v, limit, || field.into())?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            host_id: "h1".into(),
            hostname: "web-1".into(),
            instance_id: "i1".into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn metrics(samples: Vec<Sample>) -> Record {
        Record::Metrics(MetricsRecord {
            origin: origin(),
            seq: 7,
            time_ms: 1_700_000_000_000,
            interval_ms: 10_000,
            part: 0,
            parts: 1,
            samples,
        })
    }

    fn sample(name: &str, value: f64) -> Sample {
        Sample {
            name: name.into(),
            value,
            kind: MetricKind::Gauge,
            unit: "1".into(),
            labels: vec![Label::new("cpu", "0")],
        }
    }

    #[test]
    fn round_trips_metrics_and_status() {
        let m = metrics(vec![sample("system.cpu.utilization", 0.25)]);
        assert_eq!(decode(&encode(&m).unwrap(), &Limits::default()).unwrap(), m);
        let s = Record::Status(StatusRecord {
            origin: origin(),
            time_ms: 5,
            uptime_ms: 6,
            last_seq: Some(9),
            spool_bytes: 100,
            spool_records: 2,
            dropped: vec![SeqRange { first: 1, last: 3 }],
            last_error: Some("broker down".into()),
        });
        assert_eq!(decode(&encode(&s).unwrap(), &Limits::default()).unwrap(), s);
    }

    #[test]
    fn rejects_non_finite_values_naming_the_sample() {
        // The encoder writes whatever it is given; the decoder enforces the rule.
        let m = metrics(vec![sample("a", 1.0), sample("b", f64::NAN)]);
        let err = decode(&encode(&m).unwrap(), &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "non_finite");
        assert_eq!(err.field(), Some("samples[1].value"));
    }

    #[test]
    fn enforces_size_and_count_limits() {
        let m = metrics(vec![sample("a", 1.0); 3]);
        let bytes = encode(&m).unwrap();
        let tight = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&bytes, &tight),
            Err(DecodeError::TooMany {
                count: 3,
                limit: 2,
                ..
            })
        ));
        let tiny = Limits {
            max_record_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&bytes, &tiny),
            Err(DecodeError::TooLarge { limit: 10, .. })
        ));
    }

    #[test]
    fn rejects_bad_names_and_duplicate_labels() {
        let err = decode(
            &encode(&metrics(vec![sample("9lives", 1.0)])).unwrap(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("samples[0].name"));

        let mut s = sample("ok", 1.0);
        s.labels.push(Label::new("cpu", "1"));
        let err = decode(&encode(&metrics(vec![s])).unwrap(), &Limits::default()).unwrap_err();
        assert_eq!(err.field(), Some("samples[0].labels.cpu"));
    }

    #[test]
    fn names_the_field_of_a_type_error() {
        // {"schema": 1, "type": "metrics", "seq": "x"}
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 3).unwrap();
        for (k, v) in [
            ("schema", None),
            ("type", Some("metrics")),
            ("seq", Some("x")),
        ] {
            rmp::encode::write_str(&mut buf, k).unwrap();
            match v {
                None => rmp::encode::write_uint(&mut buf, 1).map(drop).unwrap(),
                Some(v) => rmp::encode::write_str(&mut buf, v).unwrap(),
            }
        }
        let err = decode(&buf, &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "malformed");
        assert_eq!(err.field(), Some("seq"), "{err}");
    }

    #[test]
    fn rejects_non_maps_and_empty_input() {
        assert_eq!(
            decode(&[], &Limits::default()).unwrap_err().kind(),
            "not_a_map"
        );
        // A compact (array-encoded) record is not accepted.
        assert_eq!(
            decode(&[0x93, 0x01, 0x02, 0x03], &Limits::default())
                .unwrap_err()
                .kind(),
            "not_a_map"
        );
    }

    #[test]
    fn oversized_ticks_are_split_into_parts_that_fit() {
        let samples: Vec<Sample> = (0..500).map(|i| sample(&format!("m{i}"), 1.0)).collect();
        let Record::Metrics(m) = metrics(samples) else {
            unreachable!()
        };
        let parts = encode_split(&m, 4096).unwrap();
        assert!(parts.len() > 1);
        let mut back = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= 4096);
            let Record::Metrics(r) = decode(p, &Limits::default()).unwrap() else {
                panic!()
            };
            assert_eq!(
                (r.seq, r.part as usize, r.parts as usize),
                (7, i, parts.len())
            );
            back.extend(r.samples);
        }
        assert_eq!(back, m.samples);
        assert_eq!(encode_split(&m, 1 << 20).unwrap().len(), 1);
    }

    #[test]
    fn name_rule() {
        for ok in ["system.cpu.time", "node_load1", "a:b", "_x", "disk/io-time"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "1x", ".x", "a b", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
