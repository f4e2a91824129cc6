//! Load averages and uptime.

use procfs::{Current, LoadAverage, Uptime};

use super::{CollectError, Collector, Samples};

pub(crate) struct SystemCollector;

impl Collector for SystemCollector {
    fn name(&self) -> &'static str {
        "system"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let load = LoadAverage::current()
            .map_err(|e| CollectError::Other(format!("/proc/loadavg: {e}")))?;
        out.gauge(
            "system.cpu.load_average.1m",
            "{thread}",
            f64::from(load.one),
            &[],
        );
        out.gauge(
            "system.cpu.load_average.5m",
            "{thread}",
            f64::from(load.five),
            &[],
        );
        out.gauge(
            "system.cpu.load_average.15m",
            "{thread}",
            f64::from(load.fifteen),
            &[],
        );
        let up =
            Uptime::current().map_err(|e| CollectError::Other(format!("/proc/uptime: {e}")))?;
        out.gauge("system.uptime", "s", up.uptime, &[]);
        Ok(())
    }
}
