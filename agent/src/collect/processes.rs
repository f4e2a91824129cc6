//! Process counts by state and the top-N processes by CPU and by memory,
//! through sysinfo.
//!
//! CPU usage needs two readings of every process: the collector refreshes once
//! when it is built, so the first tick is right (Vector's host_metrics issue
//! #22474 published 0 because it refreshed only once). Cardinality is bounded:
//! at most `2 * top` processes per tick.

use std::collections::BTreeMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

use super::{CollectError, Collector, Samples};

pub(crate) struct ProcessCollector {
    top: usize,
    system: Option<System>,
    cpus: f64,
}

/// Processes only, not their threads (sysinfo lists every thread as a task
/// by default: hundreds of extra `/proc` reads on a busy server), and CPU and
/// memory only when the top-N list needs them.
fn refresh_kind(top: usize) -> ProcessRefreshKind {
    let kind = ProcessRefreshKind::nothing().without_tasks();
    if top == 0 {
        kind
    } else {
        kind.with_cpu().with_memory()
    }
}

impl ProcessCollector {
    pub(crate) fn new(top: usize) -> Self {
        let system = System::new().ok().map(|mut s| {
            s.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind(top));
            s
        });
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ProcessCollector { top, system, cpus }
    }
}

/// OpenTelemetry's `process.status` values where they exist.
fn status_name(s: ProcessStatus) -> String {
    match s {
        ProcessStatus::Run => "running".to_owned(),
        ProcessStatus::Sleep => "sleeping".to_owned(),
        ProcessStatus::Idle => "idle".to_owned(),
        ProcessStatus::Stop => "stopped".to_owned(),
        ProcessStatus::Zombie => "defunct".to_owned(),
        ProcessStatus::UninterruptibleDiskSleep => "disk_sleep".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let Some(system) = self.system.as_mut() else {
            return Err(CollectError::Other(
                "process information is not available on this system".into(),
            ));
        };
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind(self.top));
        let procs = system.processes();

        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for p in procs.values() {
            // Threads are listed as tasks of their process on Linux; count processes only.
            if p.thread_kind().is_some() {
                continue;
            }
            *by_state.entry(status_name(p.status())).or_default() += 1;
        }
        for (state, n) in &by_state {
            out.gauge(
                "system.process.count",
                "{process}",
                *n as f64,
                &[("process.status", state)],
            );
        }

        if self.top == 0 {
            return Ok(());
        }
        let mut list: Vec<(Pid, f32, u64)> = procs
            .iter()
            .filter(|(_, p)| p.thread_kind().is_none())
            .map(|(pid, p)| (*pid, p.cpu_usage(), p.memory()))
            .collect();
        let mut chosen: Vec<Pid> = Vec::with_capacity(2 * self.top);
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        chosen.extend(list.iter().take(self.top).map(|x| x.0));
        list.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        for x in list.iter().take(self.top) {
            if !chosen.contains(&x.0) {
                chosen.push(x.0);
            }
        }
        for pid in chosen {
            let Some(p) = procs.get(&pid) else { continue };
            let pid_s = pid.to_string();
            let name = p.name().to_string_lossy();
            let labels = [
                ("process.pid", pid_s.as_str()),
                ("process.executable.name", &*name),
            ];
            // sysinfo reports percent of one core; OpenTelemetry's utilization
            // is a fraction of all CPUs.
            out.gauge(
                "process.cpu.utilization",
                "1",
                f64::from(p.cpu_usage()) / 100.0 / self.cpus,
                &labels,
            );
            out.gauge("process.memory.usage", "By", p.memory() as f64, &labels);
        }
        Ok(())
    }
}
