//! Records → table rows. One metrics record gives one `samples` row per
//! sample; one status record gives one `agent_status` row.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::mem::size_of;
use std::sync::Arc;

use serde::Serialize;
use spillway_shared::{Label, MetricKind, MetricsRecord, StatusRecord};

use crate::precision::{Precision, Rounding};

/// The tables the ingester writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `samples`.
    Samples,
    /// `agent_status`.
    AgentStatus,
    /// `ingest_quality`.
    IngestQuality,
    /// `ingester_status`.
    IngesterStatus,
}

impl Table {
    /// The table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Samples => "samples",
            Table::AgentStatus => "agent_status",
            Table::IngestQuality => "ingest_quality",
            Table::IngesterStatus => "ingester_status",
        }
    }
}

/// A row of `samples` (RowBinary). The record-wide strings are shared by
/// all rows of a record. `label_keys` and `label_values` are not sent: the
/// tables derive them from `labels` (ALIAS columns).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct SampleRow {
    /// Collection time, seconds.
    pub time: u32,
    /// Collection time, milliseconds.
    pub time_ms: u64,
    /// Host id.
    pub host_id: Arc<str>,
    /// Host name.
    pub hostname: Arc<str>,
    /// Metric name.
    pub metric: String,
    /// The labels in one spelling per series: `k=v` pairs sorted by key,
    /// joined by `,`; a `,` or `\\` inside a value is escaped with `\\`.
    pub labels: String,
    /// The value, rounded to the metric's stored precision (gauges only).
    pub value: f64,
    /// `Enum8('gauge' = 1, 'counter' = 2)`.
    pub kind: i8,
    /// Unit.
    pub unit: String,
    /// Agent instance.
    pub instance_id: Arc<str>,
    /// Tick number.
    pub seq: u64,
}

/// A row of `agent_status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct StatusRow {
    /// When the status was taken, seconds.
    pub time: u32,
    /// Same, milliseconds.
    pub time_ms: u64,
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Agent instance.
    pub instance_id: String,
    /// Agent version.
    pub agent_version: String,
    /// Uptime.
    pub uptime_ms: u64,
    /// Newest tick, or -1.
    pub last_seq: i64,
    /// Spool size.
    pub spool_bytes: u64,
    /// Spool records.
    pub spool_records: u64,
    /// Dropped ranges, first seqs.
    pub dropped_first: Vec<u64>,
    /// Dropped ranges, last seqs.
    pub dropped_last: Vec<u64>,
    /// Last publish error, or empty.
    pub last_error: String,
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// Appends the labels' one spelling to `out`: sorted by key (the caller
/// sorts), `k=v` joined by `,`, with `,` and `\\` in values escaped by a
/// `\\` so that the spelling splits back into the same pairs. Keys cannot
/// contain either (the record format's name rule), nor `=`.
pub fn spell_labels(labels: &[Label], out: &mut String) {
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&l.key);
        out.push('=');
        if l.value.contains([',', '\\']) {
            for c in l.value.chars() {
                if c == ',' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(&l.value);
        }
    }
}

/// The rows of a metrics record, which it consumes: names and units move
/// into the rows rather than being copied. Labels are sorted by key so that
/// a series has one spelling whatever order the producer used; gauges are
/// rounded to the precision `precision` gives their metric.
pub fn sample_rows(m: MetricsRecord, precision: &Precision, out: &mut Vec<SampleRow>) {
    out.reserve(m.samples.len());
    let host_id: Arc<str> = Arc::from(m.origin.host_id);
    let hostname: Arc<str> = Arc::from(m.origin.hostname);
    let instance_id: Arc<str> = Arc::from(m.origin.instance_id);
    let time = secs(m.time_ms);
    // Samples of one metric come in runs: look its rule up once per run.
    let mut rule: Option<Rounding> = None;
    for s in m.samples {
        let mut labels = s.labels;
        labels.sort_unstable_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        let mut joined =
            String::with_capacity(labels.iter().map(|l| l.key.len() + l.value.len() + 2).sum());
        spell_labels(&labels, &mut joined);
        let (kind, value) = match s.kind {
            MetricKind::Gauge => {
                let r = match rule {
                    Some(r) if out.last().is_some_and(|prev| prev.metric == s.name) => r,
                    _ => precision.rule(&s.name),
                };
                rule = Some(r);
                (1, r.apply(s.value))
            }
            MetricKind::Counter => (2, s.value),
        };
        out.push(SampleRow {
            time,
            time_ms: m.time_ms,
            host_id: host_id.clone(),
            hostname: hostname.clone(),
            metric: s.name,
            labels: joined,
            value,
            kind,
            unit: s.unit,
            instance_id: instance_id.clone(),
            seq: m.seq,
        });
    }
}

/// The row of a status record.
pub fn status_row(s: &StatusRecord) -> StatusRow {
    StatusRow {
        time: secs(s.time_ms),
        time_ms: s.time_ms,
        host_id: s.origin.host_id.clone(),
        hostname: s.origin.hostname.clone(),
        instance_id: s.origin.instance_id.clone(),
        agent_version: s.origin.agent_version.clone(),
        uptime_ms: s.uptime_ms,
        last_seq: s.last_seq.and_then(|x| i64::try_from(x).ok()).unwrap_or(-1),
        spool_bytes: s.spool_bytes,
        spool_records: s.spool_records,
        dropped_first: s.dropped.iter().map(|r| r.first).collect(),
        dropped_last: s.dropped.iter().map(|r| r.last).collect(),
        last_error: s.last_error.clone().unwrap_or_default(),
    }
}

/// Approximate RowBinary size of a row, for the byte limit of a batch.
pub fn sample_row_size(r: &SampleRow) -> usize {
    48 + r.host_id.len()
        + r.hostname.len()
        + r.metric.len()
        + r.labels.len()
        + r.unit.len()
        + r.instance_id.len()
}

/// Approximate memory a row holds (inline, heap and allocator overhead),
/// for the memory budget; the record-wide shared strings are left out.
pub fn sample_row_mem(r: &SampleRow) -> usize {
    // glibc malloc: 16 bytes of overhead per allocation, rounded up.
    const ALLOC: usize = 16;
    size_of::<SampleRow>()
        + r.metric.capacity()
        + r.labels.capacity()
        + r.unit.capacity()
        + 3 * ALLOC
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// `samples` rows.
    Samples(Vec<SampleRow>),
    /// `agent_status` rows.
    Status(Vec<StatusRow>),
    /// `ingest_quality` rows.
    Quality(Vec<QualityRow>),
    /// `ingester_status` rows.
    IngesterStatus(Vec<IngesterStatusRow>),
}

impl Rows {
    /// The table they go to.
    pub fn table(&self) -> Table {
        match self {
            Rows::Samples(_) => Table::Samples,
            Rows::Status(_) => Table::AgentStatus,
            Rows::Quality(_) => Table::IngestQuality,
            Rows::IngesterStatus(_) => Table::IngesterStatus,
        }
    }

    /// No rows, for `table`.
    pub fn empty(table: Table) -> Rows {
        Rows::with_capacity(table, 0)
    }

    /// No rows, for `table`, with room for `n`.
    pub fn with_capacity(table: Table, n: usize) -> Rows {
        match table {
            Table::Samples => Rows::Samples(Vec::with_capacity(n)),
            Table::AgentStatus => Rows::Status(Vec::with_capacity(n)),
            Table::IngestQuality => Rows::Quality(Vec::with_capacity(n)),
            Table::IngesterStatus => Rows::IngesterStatus(Vec::with_capacity(n)),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Rows::Samples(r) => r.len(),
            Rows::Status(r) => r.len(),
            Rows::Quality(r) => r.len(),
            Rows::IngesterStatus(r) => r.len(),
        }
    }

    /// Moves `other`'s rows to the end; rows of another table are a bug and
    /// are ignored (batches are keyed by table).
    pub fn append(&mut self, other: Rows) {
        match (self, other) {
            (Rows::Samples(a), Rows::Samples(mut b)) => a.append(&mut b),
            (Rows::Status(a), Rows::Status(mut b)) => a.append(&mut b),
            (Rows::Quality(a), Rows::Quality(mut b)) => a.append(&mut b),
            (Rows::IngesterStatus(a), Rows::IngesterStatus(mut b)) => a.append(&mut b),
            (me, other) => debug_assert!(
                false,
                "rows for {} appended to {}",
                other.table().name(),
                me.table().name()
            ),
        }
    }

    /// Splits off the rows from `at` on.
    pub fn split_off(&mut self, at: usize) -> Rows {
        match self {
            Rows::Samples(r) => Rows::Samples(r.split_off(at)),
            Rows::Status(r) => Rows::Status(r.split_off(at)),
            Rows::Quality(r) => Rows::Quality(r.split_off(at)),
            Rows::IngesterStatus(r) => Rows::IngesterStatus(r.split_off(at)),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A row of `ingest_quality`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct QualityRow {
    /// Start of the period, seconds.
    pub period_start: u32,
    /// End of the period, seconds.
    pub period_end: u32,
    /// The ingester that wrote the summary.
    pub ingester: String,
    /// Host id.
    pub host_id: String,
    /// Agent instance.
    pub instance_id: String,
    /// Records made durable in the period (metrics and status).
    pub records: u64,
    /// Lowest tick made durable in the period.
    pub first_seq: u64,
    /// Highest tick made durable in the period.
    pub last_seq: u64,
    /// Ticks skipped.
    pub gaps: u64,
    /// Ticks that filled an earlier gap.
    pub late: u64,
    /// Ticks made durable again.
    pub duplicates: u64,
    /// Ticks the agent reported dropped.
    pub agent_dropped: u64,
    /// Freshness, median, milliseconds.
    pub freshness_p50_ms: u32,
    /// Freshness, 99th percentile, milliseconds.
    pub freshness_p99_ms: u32,
    /// Freshness, worst, milliseconds.
    pub freshness_max_ms: u32,
}

/// A row of `ingester_status`: the pipeline's own counters over one period.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct IngesterStatusRow {
    /// End of the period, seconds.
    pub time: u32,
    /// The ingester.
    pub ingester: String,
    /// Records consumed in the period.
    pub records: u64,
    /// Rows inserted in the period.
    pub rows_inserted: u64,
    /// Records dead-lettered in the period.
    pub dead_letters: u64,
    /// INSERTs retried in the period.
    pub insert_retries: u64,
    /// Records behind the committed offsets, all assigned partitions.
    pub consumer_lag: i64,
    /// Partitions assigned.
    pub assigned_partitions: i64,
    /// Bytes consumed, not yet durable.
    pub in_flight_bytes: i64,
    /// 1 while consumption is paused.
    pub paused: u8,
}

/// One range as stored in `ingest_journal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct JournalRow {
    /// When it was cut (seconds); the journal's retention reads it.
    pub time: u32,
    /// The consumer group: two groups reading one topic cut it independently.
    pub consumer_group: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// First offset of the range.
    pub first_offset: i64,
    /// Last offset of the range (inclusive).
    pub last_offset: i64,
    /// Records in it (fewer than the offsets it spans if some are missing).
    pub records: u32,
    /// The member that cut it.
    pub ingester: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_shared::{Origin, Sample};

    #[test]
    fn labels_are_sorted_into_one_spelling() {
        let m = MetricsRecord {
            origin: Origin {
                host_id: "h".into(),
                hostname: "n".into(),
                instance_id: "i".into(),
                agent_version: "v".into(),
            },
            seq: 3,
            time_ms: 1_700_000_000_123,
            interval_ms: 1000,
            part: 0,
            parts: 1,
            samples: vec![Sample {
                name: "m".into(),
                value: 1.0,
                kind: MetricKind::Counter,
                unit: "By".into(),
                labels: vec![Label::new("z", "1"), Label::new("a", "2")],
            }],
        };
        let mut rows = Vec::new();
        sample_rows(m, &Precision::default(), &mut rows);
        assert_eq!(rows[0].labels, "a=2,z=1");
        assert_eq!(rows[0].time, 1_700_000_000);
        assert_eq!(rows[0].kind, 2);
        // The budget counts what the row holds in memory, which is more
        // than its RowBinary size.
        assert!(sample_row_mem(&rows[0]) > sample_row_size(&rows[0]));
        assert!(sample_row_mem(&rows[0]) > size_of::<SampleRow>() + 2 * 16);
    }

    #[test]
    fn separators_in_values_are_escaped() {
        let mut out = String::new();
        spell_labels(
            &[
                Label::new("a", "x,y"),
                Label::new("b", "c\\d=e"),
                Label::new("c", ""),
            ],
            &mut out,
        );
        assert_eq!(out, "a=x\\,y,b=c\\\\d=e,c=");
        out.clear();
        spell_labels(&[Label::new("cpu.mode", "idle")], &mut out);
        assert_eq!(out, "cpu.mode=idle");
    }
}
