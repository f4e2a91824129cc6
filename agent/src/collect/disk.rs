//! Disk I/O per block device, from `/proc/diskstats`.
//!
//! Only whole devices are reported (those listed in `/sys/block`), so that a
//! disk's partitions do not count its I/O twice.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use procfs::{Current, DiskStats};

use super::{CollectError, Collector, Samples, rate};
use crate::config::CollectConfig;

const SECTOR_BYTES: u64 = 512;

#[derive(Clone, Copy)]
struct Reading {
    read_bytes: u64,
    write_bytes: u64,
    reads: u64,
    writes: u64,
    read_ms: u64,
    write_ms: u64,
    io_ms: u64,
}

pub(crate) struct DiskCollector {
    ignore_prefixes: Vec<String>,
    prev: HashMap<String, Reading>,
    prev_at: Instant,
}

impl DiskCollector {
    pub(crate) fn new(c: &CollectConfig) -> Self {
        let mut d = DiskCollector {
            ignore_prefixes: c.disk_ignore_prefixes.clone(),
            prev: HashMap::new(),
            prev_at: Instant::now(),
        };
        if let Ok(now) = d.read() {
            d.prev = now;
        }
        d
    }

    fn read(&self) -> Result<HashMap<String, Reading>, CollectError> {
        let stats = DiskStats::current()
            .map_err(|e| CollectError::Other(format!("/proc/diskstats: {e}")))?;
        let sys_block = Path::new("/sys/block");
        let check_whole = sys_block.is_dir();
        Ok(stats
            .0
            .into_iter()
            .filter(|d| {
                !self
                    .ignore_prefixes
                    .iter()
                    .any(|p| d.name.starts_with(p.as_str()))
            })
            .filter(|d| !check_whole || sys_block.join(&d.name).exists())
            .map(|d| {
                (
                    d.name,
                    Reading {
                        read_bytes: d.sectors_read * SECTOR_BYTES,
                        write_bytes: d.sectors_written * SECTOR_BYTES,
                        reads: d.reads,
                        writes: d.writes,
                        read_ms: d.time_reading,
                        write_ms: d.time_writing,
                        io_ms: d.time_in_progress,
                    },
                )
            })
            .collect())
    }
}

impl Collector for DiskCollector {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let now = self.read()?;
        let elapsed = self.prev_at.elapsed();
        for (dev, r) in &now {
            let dev = dev.as_str();
            for (dir, bytes, ops) in [
                ("read", r.read_bytes, r.reads),
                ("write", r.write_bytes, r.writes),
            ] {
                let l = [("system.device", dev), ("disk.io.direction", dir)];
                out.counter("system.disk.io", "By", bytes as f64, &l);
                out.counter("system.disk.operations", "{operation}", ops as f64, &l);
            }
            out.counter(
                "system.disk.io_time",
                "s",
                r.io_ms as f64 / 1000.0,
                &[("system.device", dev)],
            );
            let Some(p) = self.prev.get(dev) else {
                continue;
            };
            for (dir, pb, nb, po, no) in [
                ("read", p.read_bytes, r.read_bytes, p.reads, r.reads),
                ("write", p.write_bytes, r.write_bytes, p.writes, r.writes),
            ] {
                let l = [("system.device", dev), ("disk.io.direction", dir)];
                if let Some(v) = rate(pb, nb, elapsed) {
                    out.gauge("system.disk.io.rate", "By/s", v, &l);
                }
                if let Some(v) = rate(po, no, elapsed) {
                    out.gauge("system.disk.operations.rate", "{operation}/s", v, &l);
                }
            }
            let l = [("system.device", dev)];
            // await: mean time per completed operation over the interval.
            let ops = (r.reads + r.writes).saturating_sub(p.reads + p.writes);
            let ms = (r.read_ms + r.write_ms).saturating_sub(p.read_ms + p.write_ms);
            let await_s = if ops > 0 {
                ms as f64 / ops as f64 / 1000.0
            } else {
                0.0
            };
            out.gauge("system.disk.await", "s", await_s, &l);
            if let Some(busy_ms_per_s) = rate(p.io_ms, r.io_ms, elapsed) {
                out.gauge(
                    "system.disk.utilization",
                    "1",
                    (busy_ms_per_s / 1000.0).min(1.0),
                    &l,
                );
            }
        }
        self.prev = now;
        self.prev_at = Instant::now();
        Ok(())
    }
}
