//! The agent's own metrics: memory, CPU time, collection durations, spool
//! and publishing figures.

use std::sync::Arc;

use super::{CollectError, Collector, Samples};
use crate::telemetry::AgentStats;

pub(crate) struct SelfCollector {
    stats: Arc<AgentStats>,
}

impl SelfCollector {
    pub(crate) fn new(stats: Arc<AgentStats>) -> Self {
        SelfCollector { stats }
    }
}

impl Collector for SelfCollector {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let usage = crate::telemetry::process_usage();
        if let Some(rss) = usage.rss_bytes {
            out.gauge("spillway.agent.memory.rss", "By", rss as f64, &[]);
        }
        if let Some(cpu) = usage.cpu_seconds {
            out.counter("spillway.agent.cpu.time", "s", cpu, &[]);
        }
        let snap = self.stats.snapshot();
        for (collector, d) in &snap.collection_durations {
            out.gauge(
                "spillway.agent.collection.duration",
                "s",
                d.as_secs_f64(),
                &[("collector", collector)],
            );
        }
        out.gauge(
            "spillway.agent.spool.bytes",
            "By",
            snap.spool_bytes as f64,
            &[],
        );
        out.gauge(
            "spillway.agent.spool.records",
            "{record}",
            snap.spool_records as f64,
            &[],
        );
        out.counter(
            "spillway.agent.records.published",
            "{record}",
            snap.published as f64,
            &[],
        );
        out.counter(
            "spillway.agent.records.dropped",
            "{record}",
            snap.dropped as f64,
            &[],
        );
        out.counter(
            "spillway.agent.samples.non_finite",
            "{sample}",
            snap.non_finite as f64,
            &[],
        );
        if let Some(l) = snap.last_publish_latency {
            out.gauge("spillway.agent.publish.latency", "s", l.as_secs_f64(), &[]);
        }
        Ok(())
    }
}
