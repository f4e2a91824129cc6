//! CPU utilization by mode, in total and per logical CPU, from `/proc/stat`.
//!
//! Utilization is the share of the interval's CPU time spent in each mode, so
//! it needs two readings: the collector reads once when it is built (priming),
//! which makes the first published tick correct.

use std::time::Instant;

use procfs::{CpuTime, CurrentSI, KernelStats};

use super::{CollectError, Collector, Samples};

pub(crate) struct CpuCollector {
    per_cpu: bool,
    prev: Option<KernelStats>,
    prev_at: Instant,
}

impl CpuCollector {
    pub(crate) fn new(per_cpu: bool) -> Self {
        CpuCollector {
            per_cpu,
            prev: KernelStats::current().ok(),
            prev_at: Instant::now(),
        }
    }
}

/// The modes of `/proc/stat`, in kernel order. Guest time is already counted
/// in `user` and `nice`, so it is not a mode of its own here.
fn modes(t: &CpuTime) -> [(&'static str, u64); 8] {
    [
        ("user", t.user),
        ("nice", t.nice),
        ("system", t.system),
        ("idle", t.idle),
        ("iowait", t.iowait.unwrap_or(0)),
        ("interrupt", t.irq.unwrap_or(0)),
        ("softirq", t.softirq.unwrap_or(0)),
        ("steal", t.steal.unwrap_or(0)),
    ]
}

/// Utilization per mode between two readings; `None` when no time passed.
pub(crate) fn utilization(
    p: &[(&'static str, u64); 8],
    n: &[(&'static str, u64); 8],
) -> Option<[(&'static str, f64); 8]> {
    let deltas: Vec<u64> = p
        .iter()
        .zip(n.iter())
        .map(|((_, a), (_, b))| b.saturating_sub(*a))
        .collect();
    let total: u64 = deltas.iter().sum();
    if total == 0 {
        return None;
    }
    let mut out = [("", 0.0); 8];
    for (i, ((mode, _), d)) in n.iter().zip(deltas).enumerate() {
        out[i] = (*mode, d as f64 / total as f64);
    }
    Some(out)
}

impl Collector for CpuCollector {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let now =
            KernelStats::current().map_err(|e| CollectError::Other(format!("/proc/stat: {e}")))?;
        out.gauge(
            "system.cpu.logical.count",
            "{cpu}",
            now.cpu_time.len() as f64,
            &[],
        );
        if let Some(prev) = &self.prev
            && self.prev_at.elapsed().as_millis() > 0
        {
            if let Some(u) = utilization(&modes(&prev.total), &modes(&now.total)) {
                for (mode, v) in u {
                    out.gauge("system.cpu.utilization", "1", v, &[("cpu.mode", mode)]);
                }
            }
            if self.per_cpu {
                for (i, (p, n)) in prev.cpu_time.iter().zip(now.cpu_time.iter()).enumerate() {
                    let cpu = i.to_string();
                    if let Some(u) = utilization(&modes(p), &modes(n)) {
                        for (mode, v) in u {
                            out.gauge(
                                "system.cpu.utilization",
                                "1",
                                v,
                                &[("cpu.logical_number", &cpu), ("cpu.mode", mode)],
                            );
                        }
                    }
                }
            }
        }
        self.prev = Some(now);
        self.prev_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: u64, system: u64, idle: u64, iowait: u64) -> [(&'static str, u64); 8] {
        [
            ("user", user),
            ("nice", 0),
            ("system", system),
            ("idle", idle),
            ("iowait", iowait),
            ("interrupt", 0),
            ("softirq", 0),
            ("steal", 0),
        ]
    }

    #[test]
    fn utilization_is_the_share_of_each_mode() {
        let u = utilization(&t(100, 50, 800, 50), &t(150, 75, 900, 75)).unwrap();
        let get = |m: &str| u.iter().find(|(k, _)| *k == m).unwrap().1;
        assert_eq!(get("user"), 0.25);
        assert_eq!(get("system"), 0.125);
        assert_eq!(get("idle"), 0.5);
        assert_eq!(get("iowait"), 0.125);
        assert!((u.iter().map(|(_, v)| v).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn no_elapsed_time_gives_no_utilization() {
        assert!(utilization(&t(1, 1, 1, 1), &t(1, 1, 1, 1)).is_none());
    }
}
