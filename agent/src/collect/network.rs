//! Network traffic per interface, from `/proc/net/dev`.

use std::collections::HashMap;
use std::time::Instant;

use procfs::net::DeviceStatus;

use super::{CollectError, Collector, Samples, rate};
use crate::config::CollectConfig;

pub(crate) struct NetworkCollector {
    ignore: Vec<String>,
    prev: HashMap<String, DeviceStatus>,
    prev_at: Instant,
}

impl NetworkCollector {
    pub(crate) fn new(c: &CollectConfig) -> Self {
        let mut n = NetworkCollector {
            ignore: c.network_ignore_interfaces.clone(),
            prev: HashMap::new(),
            prev_at: Instant::now(),
        };
        if let Ok(now) = n.read() {
            n.prev = now;
        }
        n
    }

    fn read(&self) -> Result<HashMap<String, DeviceStatus>, CollectError> {
        let mut devs = procfs::net::dev_status()
            .map_err(|e| CollectError::Other(format!("/proc/net/dev: {e}")))?;
        devs.retain(|name, _| !self.ignore.iter().any(|i| i == name));
        Ok(devs)
    }
}

/// (metric, unit, receive, transmit) for each counter family of an interface.
fn families(d: &DeviceStatus) -> [(&'static str, &'static str, u64, u64); 4] {
    [
        ("system.network.io", "By", d.recv_bytes, d.sent_bytes),
        (
            "system.network.packets",
            "{packet}",
            d.recv_packets,
            d.sent_packets,
        ),
        ("system.network.errors", "{error}", d.recv_errs, d.sent_errs),
        (
            "system.network.packet.dropped",
            "{packet}",
            d.recv_drop,
            d.sent_drop,
        ),
    ]
}

impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let now = self.read()?;
        let elapsed = self.prev_at.elapsed();
        for (name, d) in &now {
            let prev = self.prev.get(name).map(families);
            for (i, (metric, unit, rx, tx)) in families(d).into_iter().enumerate() {
                for (dir, v, pv) in [
                    ("receive", rx, prev.map(|p| p[i].2)),
                    ("transmit", tx, prev.map(|p| p[i].3)),
                ] {
                    let l = [
                        ("network.interface.name", name.as_str()),
                        ("network.io.direction", dir),
                    ];
                    out.counter(metric, unit, v as f64, &l);
                    if let Some(r) = pv.and_then(|pv| rate(pv, v, elapsed)) {
                        out.gauge(&format!("{metric}.rate"), &format!("{unit}/s"), r, &l);
                    }
                }
            }
        }
        self.prev = now;
        self.prev_at = Instant::now();
        Ok(())
    }
}
