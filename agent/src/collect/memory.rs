//! Memory and swap from `/proc/meminfo`.

use procfs::{Current, Meminfo};

use super::{CollectError, Collector, Samples};

pub(crate) struct MemoryCollector;

impl Collector for MemoryCollector {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let m =
            Meminfo::current().map_err(|e| CollectError::Other(format!("/proc/meminfo: {e}")))?;
        let reclaimable = m.s_reclaimable.unwrap_or(0);
        // `used` as free(1) computes it: what is neither free nor reclaimable cache.
        let used = m
            .mem_total
            .saturating_sub(m.mem_free)
            .saturating_sub(m.buffers)
            .saturating_sub(m.cached)
            .saturating_sub(reclaimable);
        let available = m.mem_available.unwrap_or(m.mem_free + m.buffers + m.cached);
        let total = m.mem_total as f64;
        out.gauge("system.memory.limit", "By", total, &[]);
        for (state, v) in [
            ("used", used),
            ("free", m.mem_free),
            ("buffers", m.buffers),
            ("cached", m.cached + reclaimable),
        ] {
            out.gauge(
                "system.memory.usage",
                "By",
                v as f64,
                &[("system.memory.state", state)],
            );
        }
        out.gauge("system.linux.memory.available", "By", available as f64, &[]);
        if total > 0.0 {
            // Utilization counts what the kernel could not hand out right now.
            out.gauge(
                "system.memory.utilization",
                "1",
                (total - available as f64) / total,
                &[],
            );
        }
        out.gauge("system.paging.limit", "By", m.swap_total as f64, &[]);
        for (state, v) in [
            ("used", m.swap_total.saturating_sub(m.swap_free)),
            ("free", m.swap_free),
        ] {
            out.gauge(
                "system.paging.usage",
                "By",
                v as f64,
                &[("system.paging.state", state)],
            );
        }
        Ok(())
    }
}
