//! Space and inodes per mounted filesystem, from `/proc/mounts` and `statvfs`.
//!
//! `statvfs` on a hung network mount blocks; the scheduler's time budget
//! bounds the tick (the collector is skipped while it is stuck). A mount whose
//! `statvfs` took longer than [`SLOW_STAT`] is remembered and skipped from
//! then on (until the agent restarts or reloads), with a warning, so that one
//! bad mount does not cost the other filesystems their metrics every tick.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use procfs::Current;

use super::{CollectError, Collector, Samples};
use crate::config::CollectConfig;

/// A `statvfs` slower than this marks its mount as hung.
const SLOW_STAT: Duration = Duration::from_secs(1);

pub(crate) struct FilesystemCollector {
    ignore_types: HashSet<String>,
    ignore_prefixes: Vec<String>,
    /// Mounts that were too slow to answer; skipped from then on.
    hung: HashSet<String>,
}

impl FilesystemCollector {
    pub(crate) fn new(c: &CollectConfig) -> Self {
        FilesystemCollector {
            ignore_types: c.filesystem_ignore_types.iter().cloned().collect(),
            ignore_prefixes: c.filesystem_ignore_mount_prefixes.clone(),
            hung: HashSet::new(),
        }
    }
}

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let mounts = Vec::<procfs::MountEntry>::current()
            .map_err(|e| CollectError::Other(format!("/proc/mounts: {e}")))?;
        let mut seen = HashSet::new();
        for m in mounts {
            if self.ignore_types.contains(&m.fs_vfstype)
                || self
                    .ignore_prefixes
                    .iter()
                    .any(|p| m.fs_file.starts_with(p.as_str()))
                || self.hung.contains(&m.fs_file)
                || !seen.insert(m.fs_file.clone())
            {
                continue;
            }
            let started = Instant::now();
            let stat = rustix::fs::statvfs(m.fs_file.as_str());
            if started.elapsed() > SLOW_STAT {
                tracing::warn!(mountpoint = %m.fs_file, took = ?started.elapsed(),
                    "filesystem was slow to answer statvfs; skipping it from now on");
                self.hung.insert(m.fs_file.clone());
                continue;
            }
            let Ok(st) = stat else { continue };
            let frsize = st.f_frsize;
            let total = st.f_blocks * frsize;
            if total == 0 {
                continue;
            }
            let free = st.f_bfree * frsize;
            let avail = st.f_bavail * frsize;
            let used = total - free;
            let labels = [
                ("system.device", m.fs_spec.as_str()),
                ("system.filesystem.mountpoint", m.fs_file.as_str()),
                ("system.filesystem.type", m.fs_vfstype.as_str()),
            ];
            out.gauge("system.filesystem.limit", "By", total as f64, &labels);
            for (state, v) in [("used", used), ("free", avail), ("reserved", free - avail)] {
                let mut l = labels.to_vec();
                l.push(("system.filesystem.state", state));
                out.gauge("system.filesystem.usage", "By", v as f64, &l);
            }
            // As df computes Use%: the reserved blocks are not available to users.
            let usable = used + avail;
            if usable > 0 {
                out.gauge(
                    "system.filesystem.utilization",
                    "1",
                    used as f64 / usable as f64,
                    &labels,
                );
            }
            if st.f_files > 0 {
                out.gauge(
                    "system.filesystem.inodes.limit",
                    "{inode}",
                    st.f_files as f64,
                    &labels,
                );
                for (state, v) in [("used", st.f_files - st.f_ffree), ("free", st.f_ffree)] {
                    let mut l = labels.to_vec();
                    l.push(("system.filesystem.state", state));
                    out.gauge("system.filesystem.inodes.usage", "{inode}", v as f64, &l);
                }
            }
        }
        Ok(())
    }
}
