//! spillway-agent: collects host metrics each tick and publishes one
//! MessagePack record per tick to Kafka, spooling to disk while the broker is
//! away.
//!
//! Layout:
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`collect`]: the collectors (one file per family) and the per-tick
//!   scheduler with its time budget.
//! - [`publish`]: the producer, the bounded memory queue, and the hand-off to
//!   the spool.
//! - [`schedule`]: when ticks happen (wall-clock slots, missed slots counted).
//! - [`spool`]: the crash-safe disk spool with its byte cap.
//! - [`telemetry`]: the agent's own counters, `/health` and `/metrics`, logs.
//!
//! [`run`] wires them together: a tick loop aligned to the wall clock feeds a
//! bounded channel; the publisher task drains it.

pub mod collect;
pub mod config;
pub mod otlp;
pub mod producer;
pub mod publish;
pub mod schedule;
pub mod spool;
pub mod telemetry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use spillway_shared::lock;
use spillway_shared::{MetricsRecord, Origin, Record, StatusRecord, encode, encode_split};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::collect::Collection;
use crate::config::{Config, ProcessEnv};
use crate::publish::{DropLog, Publisher, SharedDropLog};
use crate::schedule::Schedule;
use crate::spool::{Entry, EntryKind, Spool};
use crate::telemetry::AgentStats;

/// The agent's version, as published in every record.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Records waiting between the tick loop and the publisher. The publisher
/// never blocks for long (it spools), so a handful is plenty.
const CHANNEL_CAPACITY: usize = 16;

/// Most dropped ranges in one status record (the contract's limit).
const MAX_REPORTED_RANGES: usize = 1024;

/// Who this agent is: the host, and this process run. In a container with
/// `collect.host_root`, the host's id and name come from the host's files.
pub fn origin(config: &Config) -> Origin {
    let root = config.collect.host_root.as_deref();
    let hostname = if !config.agent.hostname.is_empty() {
        config.agent.hostname.clone()
    } else {
        root.and_then(|r| first_line(&r.join("etc/hostname")))
            .or_else(|| sysinfo::System::host_name().ok())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let host_id = if !config.agent.host_id.is_empty() {
        config.agent.host_id.clone()
    } else {
        root.and_then(|r| first_line(&r.join("etc/machine-id")))
            .or_else(|| first_line(std::path::Path::new("/etc/machine-id")))
            .unwrap_or_else(|| hostname.clone())
    };
    Origin {
        host_id,
        hostname,
        instance_id: uuid::Uuid::new_v4().to_string(),
        agent_version: VERSION.to_owned(),
    }
}

/// The first line of a file, trimmed; `None` when unreadable or empty.
fn first_line(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

pub use spillway_shared::now_ms;

/// A phase offset in `[0, max)`, drawn once per process.
fn random_offset(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random_range(0..max.as_millis().max(1) as u64))
}

/// The schedule for `config`, with a fresh phase offset.
fn schedule(config: &Config) -> Schedule {
    Schedule::new(
        config.agent.interval,
        random_offset(config.agent.jitter),
        config.agent.interval.min(Duration::from_secs(1)) / 2,
    )
}

/// Collects one tick right away (after priming the counters for `prime`),
/// without Kafka: the `once` subcommand.
pub async fn collect_once(config: &Config, prime: Duration) -> Record {
    let stats = Arc::new(AgentStats::default());
    let collection = Collection::new(config, stats);
    tokio::time::sleep(prime).await;
    let tick = collection.tick().await;
    Record::Metrics(MetricsRecord {
        origin: origin(config),
        seq: 0,
        time_ms: now_ms(),
        interval_ms: config.agent.interval.as_millis() as u32,
        part: 0,
        parts: 1,
        samples: tick.samples,
    })
}

struct Running {
    tx: mpsc::Sender<Entry>,
    task: JoinHandle<Spool>,
}

fn start_publisher(
    config: &Config,
    key: &str,
    spool: Spool,
    stats: &Arc<AgentStats>,
    drops: &SharedDropLog,
) -> anyhow::Result<Running> {
    let publisher = Publisher::new(config, key.to_owned(), spool, stats.clone(), drops.clone())
        .context("cannot create the Kafka producer")?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    // The publisher writes and fsyncs the spool synchronously: it runs on a
    // thread of the blocking pool, not on the runtime's one async thread,
    // so a slow disk never delays a tick. (The main thread drives the
    // runtime's timers and I/O meanwhile, as Handle::block_on requires.)
    let handle = tokio::runtime::Handle::current();
    let shutdown_timeout = config.agent.shutdown_timeout;
    let task =
        tokio::task::spawn_blocking(move || handle.block_on(publisher.run(rx, shutdown_timeout)));
    Ok(Running { tx, task })
}

async fn stop_publisher(running: Running) -> anyhow::Result<Spool> {
    drop(running.tx);
    running.task.await.context("publisher task failed")
}

/// Runs the agent until `shutdown` is cancelled. On SIGHUP (Unix) it reloads
/// `config_path`; buffered records are kept across the reload.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut agent = Agent::start(config)?;
    let http_shutdown = shutdown.child_token();
    let stats = agent.stats.clone();
    spillway_shared::process::spawn_http(
        agent.config.http.listen,
        || telemetry::router(stats),
        http_shutdown.clone(),
    );
    let otlp = otlp::start(&agent.config.telemetry, &agent.origin, agent.stats.clone())?;
    let mut reload = reload_signal()?;
    loop {
        let next = agent.ticks.next(now_ms());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reload.recv() => {
                agent = agent.reload(config_path.as_deref()).await?;
                continue;
            }
            _ = tokio::time::sleep(next.wait) => {}
        }
        agent.tick(next.slot).await?;
    }

    info!("shutting down: flushing");
    let spool = agent.stop().await?;
    http_shutdown.cancel();
    if let Some(provider) = otlp {
        // The final export is a blocking HTTP call.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
    info!(spooled_records = spool.records(), "spillway-agent stopped");
    Ok(())
}

/// The running agent: what a tick, a status and a reload change.
struct Agent {
    config: Config,
    origin: Origin,
    stats: Arc<AgentStats>,
    /// Ticks dropped, for the status records.
    drops: SharedDropLog,
    /// The publisher task and its queue.
    running: Running,
    collection: Collection,
    ticks: Schedule,
    /// The next tick's number.
    seq: u64,
    started: Instant,
    next_status: Instant,
}

impl Agent {
    /// Opens the spool (replaying what an earlier run left), starts the
    /// publisher and the collectors.
    fn start(config: Config) -> anyhow::Result<Agent> {
        let origin = origin(&config);
        info!(host_id = %origin.host_id, instance_id = %origin.instance_id,
              interval = ?config.agent.interval, brokers = %config.kafka.brokers,
              topic = %config.kafka.topic, "spillway-agent starting");
        let stats = Arc::new(AgentStats::default());
        let drops: SharedDropLog = Arc::new(Mutex::new(DropLog::default()));
        let (spool, report) = open_spool(&config)?;
        stats.add_spool_truncated(report.truncated_bytes);
        if report.truncated_bytes > 0 {
            warn!(
                bytes = report.truncated_bytes,
                "spool had a torn tail (crash mid-write); truncated it"
            );
        }
        if report.records > 0 {
            info!(
                records = report.records,
                "spool holds records from an earlier run; replaying"
            );
        }
        let running = start_publisher(&config, &origin.host_id, spool, &stats, &drops)?;
        let collection = Collection::new(&config, stats.clone());
        info!(collectors = ?collection.names(), "collectors ready");
        Ok(Agent {
            ticks: schedule(&config),
            config,
            origin,
            stats,
            drops,
            running,
            collection,
            seq: 0,
            started: Instant::now(),
            next_status: Instant::now(),
        })
    }

    /// SIGHUP: loads the file again and, if it is valid, restarts the
    /// publisher (new Kafka settings and certificates) on the same spool.
    async fn reload(mut self, path: Option<&std::path::Path>) -> anyhow::Result<Agent> {
        let Some(path) = path else {
            warn!("SIGHUP ignored: the agent was started without a config file");
            return Ok(self);
        };
        let new = match Config::load(Some(path), &ProcessEnv) {
            Ok(new) => new,
            Err(errors) => {
                error!(%errors, "reload failed; keeping the running configuration");
                return Ok(self);
            }
        };
        if new.buffer != self.config.buffer {
            warn!("buffer settings change only at restart; the spool is kept as it is");
        }
        let spool = stop_publisher(self.running).await?;
        self.running =
            start_publisher(&new, &self.origin.host_id, spool, &self.stats, &self.drops)?;
        self.collection = Collection::new(&new, self.stats.clone());
        let timing = |c: &Config| (c.agent.interval, c.agent.jitter);
        if timing(&new) != timing(&self.config) {
            self.ticks = schedule(&new);
        }
        self.config = Config {
            buffer: self.config.buffer.clone(),
            ..new
        };
        info!("configuration reloaded");
        Ok(self)
    }

    /// One tick: collects, publishes the record (split if it is too big),
    /// and a status record when one is due.
    async fn tick(&mut self, slot: u64) -> anyhow::Result<()> {
        let missed = self.ticks.mark(slot);
        if missed > 0 {
            self.stats.add_missed(missed);
            warn!(
                missed,
                interval = ?self.config.agent.interval,
                "the previous tick ran past the next slot; slots missed"
            );
        }
        let time_ms = now_ms();
        let tick = self.collection.tick().await;
        self.stats.add_tick();
        let record = MetricsRecord {
            origin: self.origin.clone(),
            seq: self.seq,
            time_ms,
            interval_ms: self.config.agent.interval.as_millis() as u32,
            part: 0,
            parts: 1,
            samples: tick.samples,
        };
        self.publish(&record).await?;
        self.seq += 1;
        if Instant::now() >= self.next_status {
            self.send_status().await?;
            self.next_status = Instant::now() + self.config.agent.status_interval;
        }
        Ok(())
    }

    /// Hands a tick's record, in as many parts as the message size limit
    /// asks, to the publisher.
    async fn publish(&self, record: &MetricsRecord) -> anyhow::Result<()> {
        let seq = record.seq;
        let parts = match encode_split(record, self.config.kafka.max_message_bytes) {
            Ok(parts) => parts,
            Err(e) => {
                // Cannot happen with the contract's limits; reported like a drop.
                error!(seq, error = %e, "tick cannot be encoded; dropped");
                lock(&self.drops).add([seq]);
                return Ok(());
            }
        };
        if parts.len() > 1 {
            self.stats.add_split();
            info!(
                seq,
                parts = parts.len(),
                "tick split to fit the message size limit"
            );
        }
        for bytes in parts {
            let entry = Entry {
                kind: EntryKind::Metrics,
                seq,
                bytes,
            };
            if self.running.tx.send(entry).await.is_err() {
                anyhow::bail!("publisher stopped unexpectedly");
            }
        }
        Ok(())
    }

    async fn send_status(&self) -> anyhow::Result<()> {
        send_status(
            &self.running,
            &self.origin,
            self.started,
            self.seq.checked_sub(1),
            &self.stats,
            &self.drops,
        )
        .await
    }

    /// A last status record, then the publisher's flush: the spool it
    /// leaves.
    async fn stop(self) -> anyhow::Result<Spool> {
        self.send_status().await?;
        stop_publisher(self.running).await
    }
}

fn open_spool(config: &Config) -> anyhow::Result<(Spool, spool::OpenReport)> {
    let b = &config.buffer;
    Spool::open(
        &b.spool_dir,
        b.spool_max_bytes,
        b.spool_segment_bytes,
        b.fsync,
    )
    .with_context(|| format!("cannot open the spool in {}", b.spool_dir.display()))
}

async fn send_status(
    running: &Running,
    origin: &Origin,
    started: Instant,
    last_seq: Option<u64>,
    stats: &AgentStats,
    drops: &SharedDropLog,
) -> anyhow::Result<()> {
    let snap = stats.snapshot();
    let (dropped, token) = lock(drops).to_report(MAX_REPORTED_RANGES);
    if !dropped.is_empty() {
        warn!(ranges = ?dropped, "reporting dropped ticks in the status record");
    }
    let record = Record::Status(StatusRecord {
        origin: origin.clone(),
        time_ms: now_ms(),
        uptime_ms: started.elapsed().as_millis() as u64,
        last_seq,
        spool_bytes: snap.spool_bytes,
        spool_records: snap.spool_records,
        dropped,
        last_error: snap.last_error.map(|mut e| {
            e.truncate(e.floor_char_boundary(4096));
            e
        }),
    });
    let bytes = encode(&record).context("cannot encode status record")?;
    running
        .tx
        .send(Entry {
            kind: EntryKind::Status,
            // For status entries the spool's seq field carries the drop-log token.
            seq: token,
            bytes,
        })
        .await
        .map_err(|_| anyhow::anyhow!("publisher stopped unexpectedly"))
}

fn reload_signal() -> anyhow::Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    #[test]
    fn in_a_container_the_host_names_itself_from_its_own_files() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("etc")).expect("etc");
        std::fs::write(root.path().join("etc/machine-id"), "0123abcd\n").expect("machine-id");
        std::fs::write(root.path().join("etc/hostname"), "db-7\n").expect("hostname");
        let mut config = Config::default();
        config.collect.host_root = Some(root.path().to_owned());
        let o = origin(&config);
        assert_eq!(
            (o.host_id.as_str(), o.hostname.as_str()),
            ("0123abcd", "db-7")
        );

        // Configured values win; an empty machine-id (as Debian images
        // ship) falls back to this system's id or the host name.
        config.agent.host_id = "configured".into();
        config.agent.hostname = "named".into();
        let o = origin(&config);
        assert_eq!(
            (o.host_id.as_str(), o.hostname.as_str()),
            ("configured", "named")
        );
        config.agent = AgentConfig::default();
        std::fs::write(root.path().join("etc/machine-id"), "").expect("machine-id");
        assert_ne!(origin(&config).host_id, "");
    }
}
