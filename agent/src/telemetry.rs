//! The agent's view of itself: counters shared by the collectors and the
//! publisher, the optional HTTP listener (`/health`, `/metrics`), and logging.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use spillway_shared::lock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Counters and gauges about the agent, updated lock-free on the hot paths.
#[derive(Debug, Default)]
pub struct AgentStats {
    durations: Mutex<BTreeMap<&'static str, Duration>>,
    skips: Mutex<BTreeMap<&'static str, u64>>,
    non_finite: AtomicU64,
    ticks: AtomicU64,
    missed: AtomicU64,
    published: AtomicU64,
    spooled: AtomicU64,
    dropped: AtomicU64,
    split: AtomicU64,
    spool_bytes: AtomicU64,
    spool_records: AtomicU64,
    spool_truncated_bytes: AtomicU64,
    last_latency_us: AtomicU64,
    broker_ok: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// A consistent-enough copy of [`AgentStats`] for reporting.
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Last duration of each collector.
    pub collection_durations: BTreeMap<&'static str, Duration>,
    /// Ticks each collector was skipped (late, stuck or failed).
    pub skips: BTreeMap<&'static str, u64>,
    /// Samples dropped for a non-finite value.
    pub non_finite: u64,
    /// Collection ticks.
    pub ticks: u64,
    /// Tick slots that went by while an earlier tick was still running.
    pub missed: u64,
    /// Records the broker acknowledged.
    pub published: u64,
    /// Records written to the spool.
    pub spooled: u64,
    /// Records dropped at the spool cap.
    pub dropped: u64,
    /// Ticks split because they exceeded the message size limit.
    pub split: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Records in the spool.
    pub spool_records: u64,
    /// Bytes cut from a torn spool tail (a crash mid-write) at start-up.
    pub spool_truncated_bytes: u64,
    /// Latency of the last acknowledged delivery.
    pub last_publish_latency: Option<Duration>,
    /// Whether the last delivery attempt succeeded.
    pub broker_ok: bool,
    /// The last delivery error.
    pub last_error: Option<String>,
}

impl AgentStats {
    /// Records how long a collector took.
    pub fn record_collection(&self, collector: &'static str, took: Duration) {
        lock(&self.durations).insert(collector, took);
    }
    /// Records that a collector was skipped this tick.
    pub fn record_skip(&self, collector: &'static str) {
        *lock(&self.skips).entry(collector).or_default() += 1;
    }
    /// Counts samples dropped for a non-finite value.
    pub fn add_non_finite(&self, n: u64) {
        self.non_finite.fetch_add(n, Relaxed);
    }
    /// Counts a collection tick.
    pub fn add_tick(&self) {
        self.ticks.fetch_add(1, Relaxed);
    }
    /// Counts tick slots missed because an earlier tick ran past them.
    pub fn add_missed(&self, n: u64) {
        self.missed.fetch_add(n, Relaxed);
    }
    /// Counts a tick that had to be split.
    pub fn add_split(&self) {
        self.split.fetch_add(1, Relaxed);
    }
    /// Records a successful delivery.
    pub fn record_published(&self, latency: Duration) {
        self.published.fetch_add(1, Relaxed);
        self.last_latency_us
            .store(latency.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
        self.broker_ok.store(true, Relaxed);
        *lock(&self.last_error) = None;
    }
    /// Records a failed delivery.
    pub fn record_publish_error(&self, error: String) {
        self.broker_ok.store(false, Relaxed);
        *lock(&self.last_error) = Some(error);
    }
    /// Counts records written to the spool.
    pub fn add_spooled(&self, n: u64) {
        self.spooled.fetch_add(n, Relaxed);
    }
    /// Counts records dropped at the spool cap.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }
    /// Counts bytes cut from a torn spool tail.
    pub fn add_spool_truncated(&self, bytes: u64) {
        self.spool_truncated_bytes.fetch_add(bytes, Relaxed);
    }
    /// Sets the spool's current size.
    pub fn set_spool(&self, bytes: u64, records: u64) {
        self.spool_bytes.store(bytes, Relaxed);
        self.spool_records.store(records, Relaxed);
    }
    /// The last delivery error, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Copies the current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let us = self.last_latency_us.load(Relaxed);
        StatsSnapshot {
            collection_durations: lock(&self.durations).clone(),
            skips: lock(&self.skips).clone(),
            non_finite: self.non_finite.load(Relaxed),
            ticks: self.ticks.load(Relaxed),
            published: self.published.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            missed: self.missed.load(Relaxed),
            split: self.split.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            spool_records: self.spool_records.load(Relaxed),
            spool_truncated_bytes: self.spool_truncated_bytes.load(Relaxed),
            last_publish_latency: (us > 0).then(|| Duration::from_micros(us)),
            broker_ok: self.broker_ok.load(Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// This process's resource use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUsage {
    /// Resident set size.
    pub rss_bytes: Option<u64>,
    /// User plus system CPU time.
    pub cpu_seconds: Option<f64>,
}

/// Reads this process's RSS and CPU time.
#[cfg(target_os = "linux")]
pub fn process_usage() -> ProcessUsage {
    match procfs::process::Process::myself().and_then(|p| p.stat()) {
        Ok(stat) => {
            let tps = procfs::ticks_per_second() as f64;
            ProcessUsage {
                rss_bytes: Some(stat.rss * procfs::page_size()),
                cpu_seconds: Some((stat.utime + stat.stime) as f64 / tps),
            }
        }
        Err(_) => ProcessUsage::default(),
    }
}

/// Reads this process's RSS and CPU time.
#[cfg(not(target_os = "linux"))]
pub fn process_usage() -> ProcessUsage {
    let mut sys = match sysinfo::System::new() {
        Ok(s) => s,
        Err(_) => return ProcessUsage::default(),
    };
    let Ok(pid) = sysinfo::get_current_pid() else {
        return ProcessUsage::default();
    };
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), false);
    sys.process(pid)
        .map(|p| ProcessUsage {
            rss_bytes: Some(p.memory()),
            cpu_seconds: Some(p.accumulated_cpu_time() as f64 / 1000.0),
        })
        .unwrap_or_default()
}

/// The agent's metrics as a prometheus-client collector: read from
/// [`AgentStats`] (and this process's usage) at each scrape, so the hot
/// paths keep their plain atomics. Counter names get `_total` from the
/// encoder, as in the ingester's registry.
#[derive(Debug)]
struct Exposition(Arc<AgentStats>);

/// One metric of a scrape: a plain value, or one value per collector.
enum Value {
    Counter(f64),
    Gauge(f64),
    PerCollector(MetricType, Vec<(&'static str, f64)>),
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let usage = process_usage();
        let count = |n: u64| Value::Counter(n as f64);
        let mut metrics = vec![
            ("ticks", "Collection ticks.", count(s.ticks)),
            (
                "ticks_missed",
                "Tick slots that went by while an earlier tick was still running (no record for them).",
                count(s.missed),
            ),
            (
                "records_published",
                "Records acknowledged by the broker.",
                count(s.published),
            ),
            (
                "records_spooled",
                "Records written to the disk spool.",
                count(s.spooled),
            ),
            (
                "records_dropped",
                "Records dropped at the spool cap (reported in status records).",
                count(s.dropped),
            ),
            (
                "spool_truncated_bytes",
                "Bytes cut from a torn spool tail (a crash mid-write) when the spool was opened.",
                count(s.spool_truncated_bytes),
            ),
            (
                "ticks_split",
                "Ticks split to fit the message size limit.",
                count(s.split),
            ),
            (
                "samples_non_finite",
                "Samples dropped for a NaN or infinite value.",
                count(s.non_finite),
            ),
            (
                "spool_bytes",
                "Bytes in the disk spool.",
                Value::Gauge(s.spool_bytes as f64),
            ),
            (
                "spool_records",
                "Records in the disk spool.",
                Value::Gauge(s.spool_records as f64),
            ),
            (
                "broker_up",
                "1 if the last delivery succeeded.",
                Value::Gauge(if s.broker_ok { 1.0 } else { 0.0 }),
            ),
            (
                "collection_duration_seconds",
                "Last run time of each collector.",
                Value::PerCollector(
                    MetricType::Gauge,
                    s.collection_durations
                        .iter()
                        .map(|(c, d)| (*c, d.as_secs_f64()))
                        .collect(),
                ),
            ),
            (
                "collector_skips",
                "Ticks a collector was skipped (late, stuck or failed).",
                Value::PerCollector(
                    MetricType::Counter,
                    s.skips.iter().map(|(c, n)| (*c, *n as f64)).collect(),
                ),
            ),
        ];
        if let Some(rss) = usage.rss_bytes {
            metrics.push((
                "memory_rss_bytes",
                "Resident set size.",
                Value::Gauge(rss as f64),
            ));
        }
        if let Some(cpu) = usage.cpu_seconds {
            metrics.push(("cpu_seconds", "CPU time used.", Value::Counter(cpu)));
        }
        if let Some(l) = s.last_publish_latency {
            metrics.push((
                "publish_latency_seconds",
                "Latency of the last acknowledged delivery.",
                Value::Gauge(l.as_secs_f64()),
            ));
        }
        for (name, help, value) in metrics {
            match value {
                Value::Counter(v) => ConstCounter::new(v).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)?,
                Value::Gauge(v) => ConstGauge::new(v).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?,
                Value::PerCollector(kind, values) => {
                    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                    for (collector, v) in values {
                        let labels = [("collector", collector)];
                        let one = family.encode_family(&labels)?;
                        match kind {
                            MetricType::Counter => ConstCounter::new(v).encode(one)?,
                            _ => ConstGauge::new(v).encode(one)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The agent's metrics in the text format of prometheus-client (the
/// library the ingester's `/metrics` uses too).
pub fn render_metrics(stats: &Arc<AgentStats>) -> String {
    let mut registry = Registry::with_prefix("spillway_agent");
    registry.register_collector(Box::new(Exposition(stats.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// The agent's HTTP routes: `/health` and `/metrics`.
pub fn router(stats: Arc<AgentStats>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(stats)
}

async fn metrics(State(stats): State<Arc<AgentStats>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&stats),
    )
}

async fn health(State(stats): State<Arc<AgentStats>>) -> impl IntoResponse {
    let s = stats.snapshot();
    let body = serde_json::json!({
        "broker_reachable": s.broker_ok,
        "last_error": s.last_error,
        "spool_bytes": s.spool_bytes,
        "spool_records": s.spool_records,
        "records_dropped": s.dropped,
    });
    // The agent is healthy while it collects; an unreachable broker is
    // degraded, not failed, because the spool keeps the data.
    (StatusCode::OK, axum::Json(body))
}
