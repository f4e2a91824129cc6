//! Host metric collection: one file per collector family, and the scheduler
//! that runs them each tick within a time budget.
//!
//! Collectors do blocking I/O (procfs reads, `statvfs`, child processes), so
//! each runs on tokio's blocking pool, never on the async workers. They run
//! one after another: a whole tick takes a few milliseconds, and one blocking
//! thread (reused from tick to tick) costs less memory than one per collector.
//! A collector that overruns its budget is reported and skipped for that tick;
//! the tick is published without it, and the next collector starts at once
//! on another thread. If it is still stuck at the next tick (a hung NFS
//! mount), it is skipped again rather than started twice.
#![deny(clippy::unwrap_used, clippy::expect_used)]

#[cfg(target_os = "linux")]
mod cpu;
#[cfg(target_os = "linux")]
mod disk;
mod exec;
#[cfg(target_os = "linux")]
mod filesystem;
#[cfg(target_os = "linux")]
mod memory;
#[cfg(target_os = "linux")]
mod network;
mod processes;
mod prom;
mod selfstats;
#[cfg(target_os = "linux")]
mod system;
mod textfile;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spillway_shared::{Label, MetricKind, Sample};
use tracing::warn;

use crate::config::Config;
use crate::telemetry::AgentStats;

/// A collector failed to read its source.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Reading a kernel or system file failed.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

/// One family of metrics. `collect` is blocking and appends to `out`.
pub trait Collector: Send + 'static {
    /// The collector's name, as used in `collect.disable`.
    fn name(&self) -> &'static str;
    /// Reads the source and appends samples.
    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError>;
}

/// A sample buffer with helpers that keep the call sites short.
#[derive(Debug, Default)]
pub struct Samples {
    samples: Vec<Sample>,
    /// Samples dropped because their value was NaN or infinite.
    pub non_finite: u64,
}

impl Samples {
    /// Appends one sample; non-finite values are counted and dropped, since
    /// the wire contract rejects them.
    pub fn push(
        &mut self,
        name: &str,
        kind: MetricKind,
        unit: &str,
        value: f64,
        labels: &[(&str, &str)],
    ) {
        if !value.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.samples.push(Sample {
            name: name.to_owned(),
            value,
            kind,
            unit: unit.to_owned(),
            labels: labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
        });
    }

    /// Appends a gauge.
    pub fn gauge(&mut self, name: &str, unit: &str, value: f64, labels: &[(&str, &str)]) {
        self.push(name, MetricKind::Gauge, unit, value, labels);
    }

    /// Appends a counter.
    pub fn counter(&mut self, name: &str, unit: &str, value: f64, labels: &[(&str, &str)]) {
        self.push(name, MetricKind::Counter, unit, value, labels);
    }

    /// Appends an already built sample (from a parser), dropping it if not finite.
    pub fn push_sample(&mut self, sample: Sample) {
        if sample.value.is_finite() {
            self.samples.push(sample);
        } else {
            self.non_finite += 1;
        }
    }

    /// Parses Prometheus text exposition (what the `textfile` and `exec`
    /// inputs read) into samples, with `extra` labels on each. Returns how
    /// many samples were skipped for a name or label key the wire contract
    /// does not accept. Public for the fuzz target (`fuzz/`).
    pub fn parse_prometheus(
        &mut self,
        text: &str,
        extra: &[(&str, &str)],
    ) -> Result<u64, std::io::Error> {
        prom::parse_into(text, extra, self).map(|s| s.0)
    }

    /// The samples collected so far.
    pub fn into_vec(self) -> Vec<Sample> {
        self.samples
    }

    /// How many samples are held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Per-second rate of a monotonic counter between two readings. A counter
/// that went backwards (wrapped, or the device was reset) yields no rate.
pub(crate) fn rate(prev: u64, now: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (now >= prev && secs > 0.0).then(|| (now - prev) as f64 / secs)
}

struct Slot {
    name: &'static str,
    collector: Arc<Mutex<Box<dyn Collector>>>,
}

/// What one tick produced.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// All samples, in collector order.
    pub samples: Vec<Sample>,
    /// Collectors skipped this tick (late, still stuck, or failed), with why.
    pub skipped: Vec<(&'static str, String)>,
}

/// Runs the enabled collectors each tick.
pub struct Collection {
    slots: Vec<Slot>,
    budget: Duration,
    stats: Arc<AgentStats>,
}

impl Collection {
    /// Builds the enabled collectors and primes their counters, so that the
    /// first tick already has correct rates and utilizations.
    pub fn new(config: &Config, stats: Arc<AgentStats>) -> Collection {
        let mut collectors: Vec<Box<dyn Collector>> = Vec::new();
        let c = &config.collect;
        #[cfg(target_os = "linux")]
        {
            if config.enabled("cpu") {
                collectors.push(Box::new(cpu::CpuCollector::new(c.per_cpu)));
            }
            if config.enabled("memory") {
                collectors.push(Box::new(memory::MemoryCollector));
            }
            if config.enabled("filesystem") {
                collectors.push(Box::new(filesystem::FilesystemCollector::new(c)));
            }
            if config.enabled("disk") {
                collectors.push(Box::new(disk::DiskCollector::new(c)));
            }
            if config.enabled("network") {
                collectors.push(Box::new(network::NetworkCollector::new(c)));
            }
            if config.enabled("system") {
                collectors.push(Box::new(system::SystemCollector));
            }
        }
        if config.enabled("processes") {
            collectors.push(Box::new(processes::ProcessCollector::new(c.top_processes)));
        }
        if let Some(dir) = &c.textfile_dir {
            collectors.push(Box::new(textfile::TextfileCollector::new(dir.clone())));
        }
        for x in &c.exec {
            collectors.push(Box::new(exec::ExecCollector::new(x)));
        }
        if config.enabled("agent") {
            collectors.push(Box::new(selfstats::SelfCollector::new(stats.clone())));
        }
        Collection {
            slots: collectors
                .into_iter()
                .map(|c| Slot {
                    name: c.name(),
                    collector: Arc::new(Mutex::new(c)),
                })
                .collect(),
            budget: config
                .agent
                .collector_timeout
                .min(config.agent.interval * 4 / 5),
            stats,
        }
    }

    /// Names of the collectors, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.name).collect()
    }

    /// Runs every collector in turn on the blocking pool, each within the
    /// time budget.
    pub async fn tick(&self) -> TickOutcome {
        let mut results = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let collector = slot.collector.clone();
            let name = slot.name;
            let budget = self.budget;
            let stats = self.stats.clone();
            let run = async move {
                let task = tokio::task::spawn_blocking(move || {
                    // A collector still running from an earlier tick holds the
                    // lock: skip rather than queue behind it.
                    let mut guard = match collector.try_lock() {
                        Ok(g) => g,
                        Err(std::sync::TryLockError::WouldBlock) => {
                            return Err("still running from an earlier tick".to_owned());
                        }
                        // A panic inside a collector poisons the lock; the
                        // collector's own state is still usable.
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    };
                    let started = Instant::now();
                    let mut out = Samples::default();
                    let result = guard.collect(&mut out);
                    Ok((out, result, started.elapsed()))
                });
                let outcome = match tokio::time::timeout(budget, task).await {
                    Err(_) => Err(format!("over its {budget:?} budget")),
                    Ok(Err(join)) => Err(format!("panicked: {join}")),
                    Ok(Ok(Err(skip))) => Err(skip),
                    Ok(Ok(Ok((out, result, took)))) => {
                        stats.record_collection(name, took);
                        match result {
                            Ok(()) => Ok(out),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                (name, outcome)
            };
            results.push(run.await);
        }
        let mut tick = TickOutcome::default();
        for (name, outcome) in results {
            match outcome {
                Ok(out) => {
                    if out.non_finite > 0 {
                        self.stats.add_non_finite(out.non_finite);
                    }
                    tick.samples.extend(out.into_vec());
                }
                Err(why) => {
                    warn!(collector = name, reason = %why, "collector skipped this tick");
                    self.stats.record_skip(name);
                    tick.skipped.push((name, why));
                }
            }
        }
        tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_handles_resets_and_zero_elapsed() {
        assert_eq!(rate(100, 300, Duration::from_secs(2)), Some(100.0));
        assert_eq!(rate(300, 100, Duration::from_secs(2)), None);
        assert_eq!(rate(1, 2, Duration::ZERO), None);
    }

    #[test]
    fn samples_drop_non_finite_values() {
        let mut s = Samples::default();
        s.gauge("a", "1", f64::NAN, &[]);
        s.gauge("b", "1", 1.0, &[("k", "v")]);
        assert_eq!(s.non_finite, 1);
        let v = s.into_vec();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels, vec![Label::new("k", "v")]);
    }

    struct Slow;
    impl Collector for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
            std::thread::sleep(Duration::from_millis(300));
            out.gauge("slow", "1", 1.0, &[]);
            Ok(())
        }
    }

    struct Fast;
    impl Collector for Fast {
        fn name(&self) -> &'static str {
            "fast"
        }
        fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
            out.gauge("fast", "1", 1.0, &[]);
            Ok(())
        }
    }

    fn collection(budget: Duration, collectors: Vec<Box<dyn Collector>>) -> Collection {
        Collection {
            slots: collectors
                .into_iter()
                .map(|c| Slot {
                    name: c.name(),
                    collector: Arc::new(Mutex::new(c)),
                })
                .collect(),
            budget,
            stats: Arc::new(AgentStats::default()),
        }
    }

    #[tokio::test]
    async fn a_late_collector_is_skipped_not_waited_for() {
        let c = collection(
            Duration::from_millis(50),
            vec![Box::new(Slow), Box::new(Fast)],
        );
        let started = Instant::now();
        let tick = c.tick().await;
        assert!(started.elapsed() < Duration::from_millis(250));
        assert_eq!(tick.samples.len(), 1);
        assert_eq!(tick.samples[0].name, "fast");
        assert_eq!(tick.skipped.len(), 1);
        assert_eq!(tick.skipped[0].0, "slow");
        // Still stuck at the next tick: skipped again, not started twice.
        let tick = c.tick().await;
        assert_eq!(tick.skipped[0].1, "still running from an earlier tick");
    }
}
