//! Space and inodes per mounted filesystem, from `/proc/mounts` and `statvfs`.
//! With `collect.host_root` (a container watching its host), from the host's
//! mount table, `/proc/1/mounts`, with `statvfs` under the host root.
//!
//! `statvfs` on a hung network mount blocks; the scheduler's time budget
//! bounds the tick (the collector is skipped while it is stuck). A mount whose
//! `statvfs` took longer than [`SLOW_STAT`] is remembered and skipped from
//! then on (until the agent restarts or reloads), with a warning, so that one
//! bad mount does not cost the other filesystems their metrics every tick.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use procfs::{Current, FromRead, MountEntry};

use super::{CollectError, Collector, Samples};
use crate::config::CollectConfig;

/// A `statvfs` slower than this marks its mount as hung.
const SLOW_STAT: Duration = Duration::from_secs(1);

pub(crate) struct FilesystemCollector {
    ignore_types: HashSet<String>,
    ignore_prefixes: Vec<String>,
    /// Mounts that were too slow to answer; skipped from then on.
    hung: HashSet<String>,
    /// The host's root as mounted here, when watching the host from a container.
    host_root: Option<PathBuf>,
}

impl FilesystemCollector {
    pub(crate) fn new(c: &CollectConfig) -> Self {
        FilesystemCollector {
            ignore_types: c.filesystem_ignore_types.iter().cloned().collect(),
            ignore_prefixes: c.filesystem_ignore_mount_prefixes.clone(),
            hung: HashSet::new(),
            host_root: c.host_root.clone(),
        }
    }

    /// The mount table: this system's, or the host's (its init process's).
    fn mounts(&self) -> Result<Vec<MountEntry>, CollectError> {
        match &self.host_root {
            None => Vec::<MountEntry>::current()
                .map_err(|e| CollectError::Other(format!("/proc/mounts: {e}"))),
            Some(_) => Vec::<MountEntry>::from_file("/proc/1/mounts").map_err(|e| {
                CollectError::Other(format!(
                    "/proc/1/mounts (the host's mounts; the container needs the host's PID namespace): {e}"
                ))
            }),
        }
    }

    /// Where a mount point of the table is reachable from here.
    fn stat_path(&self, mountpoint: &str) -> PathBuf {
        match &self.host_root {
            None => PathBuf::from(mountpoint),
            Some(root) => root.join(mountpoint.trim_start_matches('/')),
        }
    }
}

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let mounts = self.mounts()?;
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
            let stat = rustix::fs::statvfs(self.stat_path(&m.fs_file));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mountpoints(host_root: Option<&str>) -> Vec<String> {
        let config = CollectConfig {
            host_root: host_root.map(PathBuf::from),
            ..CollectConfig::default()
        };
        let mut c = FilesystemCollector::new(&config);
        let mut out = Samples::default();
        c.collect(&mut out).expect("filesystems");
        let mut seen: Vec<String> = out
            .into_vec()
            .into_iter()
            .filter(|s| s.name == "system.filesystem.limit")
            .flat_map(|s| s.labels)
            .filter(|l| l.key == "system.filesystem.mountpoint")
            .map(|l| l.value)
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn a_host_root_reads_the_hosts_mount_table_and_reports_its_own_paths() {
        // Here the "host" is this system, its root mounted at `/`: the same
        // filesystems, named as the host names them (no prefix).
        let own = mountpoints(None);
        assert!(!own.is_empty(), "no filesystem measured");
        assert_eq!(mountpoints(Some("/")), own);
    }

    #[test]
    fn mount_points_resolve_under_the_host_root() {
        let c = FilesystemCollector::new(&CollectConfig {
            host_root: Some("/host".into()),
            ..CollectConfig::default()
        });
        assert_eq!(c.stat_path("/"), PathBuf::from("/host"));
        assert_eq!(c.stat_path("/var/lib"), PathBuf::from("/host/var/lib"));
        let own = FilesystemCollector::new(&CollectConfig::default());
        assert_eq!(own.stat_path("/var/lib"), PathBuf::from("/var/lib"));
    }
}
