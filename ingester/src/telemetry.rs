//! The ingester's metrics (Prometheus text on `/metrics`), `/health` and
//! `/ready`, and logging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sink::rows::Table;

type Labels = Vec<(&'static str, String)>;

/// What one durable record told the accounting, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Ticks skipped.
    pub gaps: u64,
    /// Gaps filled.
    pub late: u64,
    /// Ticks made durable again.
    pub duplicates: u64,
    /// Ticks the agent reported dropped (newly).
    pub agent_dropped: u64,
}

/// Every metric the ingester exposes.
pub struct Stats {
    registry: Registry,
    /// Records consumed.
    pub records_in: Counter,
    /// Record bytes consumed.
    pub bytes_in: Counter,
    /// Rows decoded from records.
    pub rows_in: Counter,
    /// Records that failed to decode.
    pub decode_errors: Counter,
    /// Consumer errors.
    pub consumer_errors: Counter,
    /// INSERT retries.
    pub insert_retries: Counter,
    /// Offset commits.
    pub commits: Counter,
    /// Failed commits.
    pub commit_errors: Counter,
    /// Bytes of records consumed and not yet durable.
    pub in_flight_bytes: Gauge,
    /// 1 while the memory budget stops consumption.
    pub consumption_paused: Gauge,
    /// Partitions assigned to this member.
    pub assigned_partitions: Gauge,
    /// Rows inserted, all shards and tables.
    pub rows_inserted_total: Counter,
    /// Dead letters, all kinds.
    pub dead_letters_total: Counter,
    /// Fetches repeated from further back over an offset gap.
    pub fetch_rewinds: Counter,
    /// Offsets given up on after every rewind failed to fetch them.
    pub offsets_missing: Counter,
    /// Ranges of offsets a previous owner journaled and this member built
    /// again, identically (ClickHouse drops what had landed).
    pub ranges_rebuilt: Counter,
    /// Ranges written to the insert journal.
    pub ranges_journaled: Counter,
    /// Failed writes or reads of the insert journal (retried).
    pub journal_errors: Counter,
    /// Rebalances librdkafka reported as failed (the group coordinator
    /// answered with an error; the member keeps or loses partitions as the
    /// next rebalance decides).
    pub rebalance_errors: Counter,
    /// Times a partition stalled on a schema problem (its records rejected
    /// one after another).
    pub schema_stalls: Counter,
    /// Partitions stalled now; any makes the ingester unready.
    pub partitions_stalled: Gauge,
    /// Tick numbers skipped (per agent instance).
    pub seq_gaps: Counter,
    /// Skipped ticks that arrived later.
    pub seq_late: Counter,
    /// Ticks made durable more than once.
    pub seq_duplicates: Counter,
    /// Ticks the agents report they dropped.
    pub agent_dropped: Counter,
    freshness: Histogram,
    shard_up: Family<Vec<(&'static str, String)>, Gauge>,
    replica_up: Family<Vec<(&'static str, String)>, Gauge>,
    consumer_lag: Family<Vec<(&'static str, String)>, Gauge>,
    lag_series: std::sync::Mutex<Vec<Vec<(&'static str, String)>>>,
    /// Sum of the per-partition lag last reported.
    pub total_lag: std::sync::atomic::AtomicI64,
    /// Whether this member has joined the group (had an assignment).
    pub joined: AtomicBool,
    inserted: Family<Labels, Counter>,
    dead: Family<Labels, Counter>,
    insert_seconds: Family<Labels, Histogram>,
    batch_rows: Family<Labels, Histogram>,
    ready: AtomicBool,
    shard_down: AtomicBool,
    shards_down: std::sync::Mutex<std::collections::BTreeSet<usize>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Buckets of `freshness_seconds`: fine around the few seconds a healthy
/// pipeline takes (batch age plus an insert), coarse beyond, up to an hour
/// of backlog.
const FRESHNESS_BUCKETS: [f64; 22] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl Stats {
    /// Creates and registers every metric.
    pub fn new() -> Stats {
        let mut registry = Registry::with_prefix("spillway_ingester");
        let s = Stats {
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            rows_in: Counter::default(),
            decode_errors: Counter::default(),
            consumer_errors: Counter::default(),
            insert_retries: Counter::default(),
            commits: Counter::default(),
            commit_errors: Counter::default(),
            in_flight_bytes: Gauge::default(),
            consumption_paused: Gauge::default(),
            assigned_partitions: Gauge::default(),
            fetch_rewinds: Counter::default(),
            offsets_missing: Counter::default(),
            ranges_rebuilt: Counter::default(),
            ranges_journaled: Counter::default(),
            journal_errors: Counter::default(),
            rebalance_errors: Counter::default(),
            schema_stalls: Counter::default(),
            partitions_stalled: Gauge::default(),
            rows_inserted_total: Counter::default(),
            dead_letters_total: Counter::default(),
            seq_gaps: Counter::default(),
            seq_late: Counter::default(),
            seq_duplicates: Counter::default(),
            agent_dropped: Counter::default(),
            freshness: Histogram::new(FRESHNESS_BUCKETS.iter().copied()),
            shard_up: Family::default(),
            replica_up: Family::default(),
            consumer_lag: Family::default(),
            lag_series: std::sync::Mutex::default(),
            total_lag: std::sync::atomic::AtomicI64::new(0),
            joined: AtomicBool::new(false),
            inserted: Family::default(),
            dead: Family::default(),
            insert_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            batch_rows: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 4.0, 12))
            }),
            ready: AtomicBool::new(false),
            shard_down: AtomicBool::new(false),
            shards_down: std::sync::Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("records", "Records consumed", s.records_in.clone());
        registry.register("record_bytes", "Record bytes consumed", s.bytes_in.clone());
        registry.register("rows", "Rows decoded from records", s.rows_in.clone());
        registry.register(
            "decode_errors",
            "Records that failed to decode",
            s.decode_errors.clone(),
        );
        registry.register(
            "consumer_errors",
            "Kafka consumer errors",
            s.consumer_errors.clone(),
        );
        registry.register(
            "insert_retries",
            "INSERTs retried after a retryable error",
            s.insert_retries.clone(),
        );
        registry.register("commits", "Offset commits", s.commits.clone());
        registry.register(
            "commit_errors",
            "Failed offset commits",
            s.commit_errors.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Bytes of records consumed, not yet durable",
            s.in_flight_bytes.clone(),
        );
        registry.register(
            "consumption_paused",
            "1 while the memory budget stops consumption",
            s.consumption_paused.clone(),
        );
        registry.register(
            "rows_inserted",
            "Rows inserted per shard and table",
            s.inserted.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by error kind",
            s.dead.clone(),
        );
        registry.register(
            "insert_duration_seconds",
            "INSERT latency per shard and table",
            s.insert_seconds.clone(),
        );
        registry.register("batch_rows", "Rows per INSERT", s.batch_rows.clone());
        registry.register(
            "assigned_partitions",
            "Partitions assigned to this member",
            s.assigned_partitions.clone(),
        );
        registry.register(
            "fetch_rewinds",
            "Fetches repeated from further back because the broker skipped offsets",
            s.fetch_rewinds.clone(),
        );
        registry.register(
            "offsets_missing",
            "Offsets the broker did not return after every rewind (records lost to compaction or aborted transactions, or a broker fault)",
            s.offsets_missing.clone(),
        );
        registry.register(
            "ranges_rebuilt",
            "Ranges of offsets a previous owner journaled, built again identically (ClickHouse drops what had landed)",
            s.ranges_rebuilt.clone(),
        );
        registry.register(
            "ranges_journaled",
            "Ranges of offsets written to the insert journal before their INSERTs",
            s.ranges_journaled.clone(),
        );
        registry.register(
            "journal_errors",
            "Failed writes or reads of the insert journal (retried)",
            s.journal_errors.clone(),
        );
        registry.register(
            "rebalance_errors",
            "Rebalances that failed (an error from the group coordinator)",
            s.rebalance_errors.clone(),
        );
        registry.register(
            "schema_stalls",
            "Times a partition stalled on a schema problem (its records rejected in a row)",
            s.schema_stalls.clone(),
        );
        registry.register(
            "partitions_stalled",
            "Partitions paused now on a schema problem; any makes /ready 503",
            s.partitions_stalled.clone(),
        );
        registry.register(
            "seq_gaps",
            "Agent ticks skipped (gaps in tick numbers)",
            s.seq_gaps.clone(),
        );
        registry.register(
            "seq_late",
            "Skipped agent ticks that arrived later",
            s.seq_late.clone(),
        );
        registry.register(
            "seq_duplicates",
            "Agent ticks made durable more than once",
            s.seq_duplicates.clone(),
        );
        registry.register(
            "agent_dropped_ticks",
            "Ticks the agents report they dropped (full spool)",
            s.agent_dropped.clone(),
        );
        registry.register(
            "freshness_seconds",
            "Collection to durable in ClickHouse",
            s.freshness.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between the committed offset and the end of each assigned partition",
            s.consumer_lag.clone(),
        );
        registry.register(
            "shard_up",
            "1 while one of the shard's replicas answers (last request or probe succeeded)",
            s.shard_up.clone(),
        );
        registry.register(
            "replica_up",
            "1 while the replica answers (last request or probe succeeded)",
            s.replica_up.clone(),
        );
        Stats { registry, ..s }
    }

    /// Counts rows inserted.
    pub fn rows_inserted(&self, shard: usize, table: Table, rows: u64) {
        self.inserted
            .get_or_create(&labels(shard, table))
            .inc_by(rows);
        self.rows_inserted_total.inc_by(rows);
    }

    /// Records one batch's insert.
    pub fn batch_inserted(
        &self,
        shard: usize,
        table: Table,
        rows: usize,
        _bytes: usize,
        took: Duration,
    ) {
        let l = labels(shard, table);
        self.insert_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        self.batch_rows.get_or_create(&l).observe(rows as f64);
    }

    /// Counts a dead letter.
    pub fn dead_letters(&self, kind: &str) {
        self.dead
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
        self.dead_letters_total.inc();
    }

    /// Dead letters of one kind so far.
    pub fn dead_letter_count(&self, kind: &str) -> u64 {
        self.dead
            .get_or_create(&vec![("kind", kind.to_owned())])
            .get()
    }

    /// Marks the ingester started (or stopping).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// Ready: started, joined the group, every shard answers, and no
    /// partition is stalled on a schema problem.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
            && self.joined.load(Relaxed)
            && !self.shard_down.load(Relaxed)
            && self.partitions_stalled.get() == 0
    }

    /// Records whether a shard answered.
    pub fn shard_up(&self, shard: usize, up: bool) {
        self.shard_up
            .get_or_create(&vec![("shard", shard.to_string())])
            .set(i64::from(up));
        let mut mask = self.shards_down.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            mask.remove(&shard);
        } else {
            mask.insert(shard);
        }
        self.shard_down.store(!mask.is_empty(), Relaxed);
    }

    /// Records whether one replica of a shard answered.
    pub fn replica_up(&self, shard: usize, replica: &str, up: bool) {
        self.replica_up
            .get_or_create(&vec![
                ("shard", shard.to_string()),
                ("replica", replica.to_owned()),
            ])
            .set(i64::from(up));
    }

    /// Replaces the per-partition lag series with `lags` (topic, partition,
    /// records); partitions no longer listed disappear.
    pub fn set_consumer_lag(&self, lags: &[(String, i32, i64)]) {
        let mut series = self.lag_series.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: Vec<Vec<(&'static str, String)>> = lags
            .iter()
            .map(|(t, p, _)| vec![("topic", t.clone()), ("partition", p.to_string())])
            .collect();
        for old in series.iter().filter(|s| !fresh.contains(s)) {
            self.consumer_lag.remove(old);
        }
        for (labels, (_, _, lag)) in fresh.iter().zip(lags) {
            self.consumer_lag.get_or_create(labels).set(*lag);
        }
        *series = fresh;
        self.total_lag
            .store(lags.iter().map(|(_, _, l)| *l).sum(), Relaxed);
    }

    /// Counts what the data accounting saw of one durable record.
    pub fn observed(&self, seen: &Observed, freshness_ms: u64) {
        self.seq_gaps.inc_by(seen.gaps);
        self.seq_late.inc_by(seen.late);
        self.seq_duplicates.inc_by(seen.duplicates);
        self.agent_dropped.inc_by(seen.agent_dropped);
        self.freshness.observe(freshness_ms as f64 / 1000.0);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn labels(shard: usize, table: Table) -> Labels {
    vec![
        ("shard", shard.to_string()),
        ("table", table.name().to_owned()),
    ]
}

/// The ingester's HTTP routes: `/health`, `/ready` and `/metrics`.
pub fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .with_state(stats)
}

async fn metrics(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        stats.render(),
    )
}

async fn ready(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    if stats.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
