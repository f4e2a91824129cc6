//! Simulated agents: records built with the shared codec, for tests and
//! benchmarks. Every host gets its own instance id and contiguous sequence
//! numbers, so completeness can be checked downstream.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use spillway_shared::now_ms;
use spillway_shared::{Label, MetricKind, MetricsRecord, Origin, Record, Sample, encode, kafka};

/// What to simulate.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Topic to produce to.
    #[arg(long, default_value = kafka::DEFAULT_TOPIC)]
    pub topic: String,
    /// Number of simulated hosts.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Ticks per host.
    #[arg(long, default_value_t = 10)]
    pub ticks: u64,
    /// Samples per tick.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    /// Prefix of the host ids.
    #[arg(long, default_value = "sim")]
    pub host_prefix: String,
    /// Partitions, if the topic has to be created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Time of the first tick, ms since the epoch (default: now). Ignored
    /// with `--interval`.
    #[arg(long)]
    pub start_ms: Option<u64>,
    /// Run in real time, as agents do: every host ticks once per interval
    /// (hosts spread evenly over it) and each record is stamped with the
    /// time it is produced. Without it, every tick is produced as fast as
    /// the broker takes them, stamped 10 s apart from `--start-ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// What the samples look like: `uniform` (`--samples` synthetic gauges
    /// and counters) or `host` (an agent's record: CPU by mode and per CPU,
    /// memory, filesystems, disks, network, load, processes, with values
    /// that behave like a host's; `--samples` is ignored).
    #[arg(long, value_enum, default_value = "uniform")]
    pub values: ValueShape,
}

/// The shape of simulated samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueShape {
    /// `--samples` samples of 20 synthetic metrics.
    Uniform,
    /// Agent-shaped samples with host-like values.
    Host,
}

/// Simulated interval between ticks when producing as fast as possible.
const FAST_INTERVAL_MS: u64 = 10_000;

/// One simulated tick of host `h`, collected at `time_ms`.
pub fn record(
    args: &LoadgenArgs,
    h: usize,
    instance: &str,
    seq: u64,
    time_ms: u64,
    interval_ms: u32,
) -> Record {
    let host_id = format!("{}-{h:05}", args.host_prefix);
    Record::Metrics(MetricsRecord {
        origin: Origin {
            hostname: host_id.clone(),
            host_id,
            instance_id: instance.to_owned(),
            agent_version: "loadgen".into(),
        },
        seq,
        time_ms,
        interval_ms,
        part: 0,
        parts: 1,
        samples: match args.values {
            ValueShape::Host => host_samples(h, seq, time_ms, interval_ms),
            ValueShape::Uniform => uniform_samples(args, h, seq),
        },
    })
}

fn uniform_samples(args: &LoadgenArgs, h: usize, seq: u64) -> Vec<Sample> {
    (0..args.samples)
        .map(|i| Sample {
            name: format!("sim.metric_{}", i % 20),
            value: ((h as u64 * 31 + seq * 7 + i as u64) % 1000) as f64 / 10.0,
            kind: if i % 5 == 0 {
                MetricKind::Counter
            } else {
                MetricKind::Gauge
            },
            unit: "1".into(),
            labels: vec![Label::new("slot", (i / 20).to_string())],
        })
        .collect()
}

/// A deterministic pseudo-random number in [0, 1) for (a, b, c).
fn noise(a: u64, b: u64, c: u64) -> f64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

/// A value that drifts slowly around `mid` (± `swing`), different per host.
fn drift(h: u64, seq: u64, key: u64, mid: f64, swing: f64) -> f64 {
    let phase = noise(h, key, 0) * std::f64::consts::TAU;
    let slow = (seq as f64 / 90.0 + phase).sin();
    mid + swing * (0.8 * slow + 0.2 * (noise(h, seq, key) - 0.5))
}

/// A cumulative counter: an integer that grows by about `rate` per second,
/// and its per-second rate over the last interval.
fn counter(h: u64, seq: u64, key: u64, rate: f64, interval_s: f64) -> (f64, f64) {
    let at = |s: u64| {
        let base = (noise(h, key, 1) * 1e9).floor();
        // The integral of a rate that swings between 0.5 and 1.5 × `rate`.
        let phase = noise(h, key, 2) * std::f64::consts::TAU;
        let t = s as f64 * interval_s;
        base + (rate
            * (t - 40.0
                * interval_s
                * ((t / (40.0 * interval_s) + phase).cos() - phase.cos())
                * 0.5))
            .floor()
    };
    let now = at(seq);
    let rate = if seq == 0 {
        0.0
    } else {
        (now - at(seq - 1)) / interval_s
    };
    (now, rate)
}

fn gauge(name: &str, unit: &str, value: f64, labels: &[(&str, &str)]) -> Sample {
    Sample {
        name: name.to_owned(),
        value,
        kind: MetricKind::Gauge,
        unit: unit.to_owned(),
        labels: labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
    }
}

/// An agent-shaped record's samples, with values that behave like a host's:
/// CPU time in 100 Hz jiffies (ratios k/N), byte counts in pages and blocks,
/// constants (limits), slow drifts, counters and their rates.
fn host_samples(h: usize, seq: u64, time_ms: u64, interval_ms: u32) -> Vec<Sample> {
    const MODES: [&str; 8] = [
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "interrupt",
        "softirq",
        "steal",
    ];
    let hu = h as u64;
    let interval_s = f64::from(interval_ms.max(1)) / 1000.0;
    let cpus = [2u64, 4, 8, 16][h % 4];
    let mut out = Vec::with_capacity(160);
    // CPU: jiffies per mode, whole machine and per CPU.
    let per_cpu_jiffies = (100.0 * interval_s).round() as u64;
    let mut total = [0u64; 8];
    for cpu in 0..cpus {
        let busy = drift(hu, seq, 10 + cpu, 0.25, 0.2).clamp(0.0, 1.0);
        let j = per_cpu_jiffies as f64;
        let user = (j * busy * 0.7).round() as u64;
        let system = (j * busy * 0.25).round() as u64;
        let iowait = (j * busy * 0.05 * noise(hu, seq, cpu)).round() as u64;
        let softirq = u64::from(noise(hu, seq, 100 + cpu) < 0.1);
        let used = (user + system + iowait + softirq).min(per_cpu_jiffies);
        let jiffies = [
            user,
            0,
            system,
            per_cpu_jiffies - used,
            iowait,
            0,
            softirq,
            0,
        ];
        let n = cpu.to_string();
        for (m, mode) in MODES.iter().enumerate() {
            total[m] += jiffies[m];
            out.push(gauge(
                "system.cpu.utilization",
                "1",
                jiffies[m] as f64 / per_cpu_jiffies as f64,
                &[("cpu.logical_number", &n), ("cpu.mode", mode)],
            ));
        }
    }
    let all: u64 = total.iter().sum();
    for (m, mode) in MODES.iter().enumerate() {
        out.push(gauge(
            "system.cpu.utilization",
            "1",
            total[m] as f64 / all.max(1) as f64,
            &[("cpu.mode", mode)],
        ));
    }
    out.push(gauge("system.cpu.logical.count", "{cpu}", cpus as f64, &[]));
    for (key, name) in [(1, "1m"), (5, "5m"), (15, "15m")] {
        let load = drift(
            hu,
            seq / key,
            30 + key,
            cpus as f64 * 0.3,
            cpus as f64 * 0.2,
        );
        out.push(gauge(
            &format!("system.cpu.load_average.{name}"),
            "{thread}",
            (load.max(0.0) * 100.0).round() / 100.0,
            &[],
        ));
    }
    // Memory: in 4 KiB pages, a limit that never changes.
    let total_mem = (cpus * 4) << 30;
    let page = 4096.0;
    let used = (drift(hu, seq, 40, 0.45, 0.15) * total_mem as f64 / page).round() * page;
    let cached = (drift(hu, seq, 41, 0.3, 0.05) * total_mem as f64 / page).round() * page;
    let buffers = (drift(hu, seq, 42, 0.02, 0.005) * total_mem as f64 / page).round() * page;
    let free = total_mem as f64 - used - cached - buffers;
    for (state, v) in [
        ("used", used),
        ("free", free),
        ("buffers", buffers),
        ("cached", cached),
    ] {
        out.push(gauge(
            "system.memory.usage",
            "By",
            v,
            &[("system.memory.state", state)],
        ));
    }
    out.push(gauge("system.memory.limit", "By", total_mem as f64, &[]));
    out.push(gauge(
        "system.memory.utilization",
        "1",
        used / total_mem as f64,
        &[],
    ));
    out.push(gauge(
        "system.linux.memory.available",
        "By",
        free + cached,
        &[],
    ));
    // Filesystems: 4 KiB blocks; `/data` fills slowly on some hosts.
    for (f, (mount, device, size)) in [
        ("/", "/dev/sda1", 100u64 << 30),
        ("/data", "/dev/sdb1", 1u64 << 40),
    ]
    .iter()
    .enumerate()
    {
        let growth = if h.is_multiple_of(7) {
            4096.0 * 50.0
        } else {
            0.0
        };
        let base = (noise(hu, f as u64, 50) * 0.6 + 0.1) * *size as f64;
        let used = ((base + growth * seq as f64) / 4096.0).round() * 4096.0;
        let reserved = (*size as f64 * 0.05 / 4096.0).round() * 4096.0;
        let free = *size as f64 - used - reserved;
        let labels = |state| {
            vec![
                ("system.device", *device),
                ("system.filesystem.mountpoint", *mount),
                ("system.filesystem.type", "ext4"),
                ("system.filesystem.state", state),
            ]
        };
        for (state, v) in [("used", used), ("free", free), ("reserved", reserved)] {
            out.push(gauge("system.filesystem.usage", "By", v, &labels(state)));
        }
        let l = [
            ("system.device", *device),
            ("system.filesystem.mountpoint", *mount),
        ];
        out.push(gauge("system.filesystem.limit", "By", *size as f64, &l));
        out.push(gauge(
            "system.filesystem.utilization",
            "1",
            used / *size as f64,
            &l,
        ));
    }
    // Disks and network: counters and their rates.
    let mut counters = |name: &str, unit: &str, rate: f64, key: u64, labels: &[(&str, &str)]| {
        let (value, per_s) = counter(hu, seq, key, rate, interval_s);
        let mut c = gauge(name, unit, value, labels);
        c.kind = MetricKind::Counter;
        out.push(c);
        out.push(gauge(
            &format!("{name}.rate"),
            &format!("{unit}/s"),
            per_s,
            labels,
        ));
    };
    for (d, dir) in ["read", "write"].iter().enumerate() {
        let l = [("system.device", "sda"), ("disk.io.direction", *dir)];
        counters(
            "system.disk.io",
            "By",
            2e6 * (d as f64 + 1.0),
            60 + d as u64,
            &l,
        );
        counters(
            "system.disk.operations",
            "{operation}",
            80.0,
            62 + d as u64,
            &l,
        );
    }
    for (i, iface) in ["lo", "eth0", "eth1"].iter().enumerate() {
        for (d, dir) in ["receive", "transmit"].iter().enumerate() {
            let l = [
                ("network.interface.name", *iface),
                ("network.io.direction", *dir),
            ];
            let k = 70 + (i * 2 + d) as u64 * 4;
            let busy = if i == 2 { 0.0 } else { 1.0 };
            counters("system.network.io", "By", busy * 1e6, k, &l);
            counters(
                "system.network.packets",
                "{packet}",
                busy * 900.0,
                k + 1,
                &l,
            );
            counters("system.network.errors", "{error}", 0.0, k + 2, &l);
            counters("system.network.packet.dropped", "{packet}", 0.0, k + 3, &l);
        }
    }
    out.push(gauge(
        "system.uptime",
        "s",
        (time_ms / 1000 - 1_700_000_000 + hu * 3600) as f64,
        &[],
    ));
    // Processes: a stable top-N with drifting memory and jiffy-ratio CPU.
    for p in 0..8u64 {
        let pid = (1000 + hu * 17 + p * 131).to_string();
        let name = format!("proc-{p}");
        let l = [
            ("process.pid", pid.as_str()),
            ("process.executable.name", name.as_str()),
        ];
        let jiffies = (drift(hu, seq, 200 + p, 0.05, 0.05).max(0.0) * 100.0 * interval_s).round();
        out.push(gauge(
            "process.cpu.utilization",
            "1",
            f64::from(jiffies as f32 / (100.0 * interval_s) as f32),
            &l,
        ));
        let rss = (drift(hu, seq, 300 + p, 2e8, 5e7) / page).round() * page;
        out.push(gauge("process.memory.usage", "By", rss, &l));
    }
    out
}

/// Produces `hosts × ticks` records and waits until all are acknowledged.
/// `base` holds the brokers and their security settings
/// ([`crate::config::KafkaConfig::client_config`]).
pub async fn run(base: &ClientConfig, args: &LoadgenArgs) -> anyhow::Result<()> {
    let base = base.clone();
    crate::tools::topics::ensure_topic(&base, &args.topic, args.partitions).await?;
    let producer: FutureProducer = base
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .context("cannot create producer")?;
    let start_ms = args.start_ms.unwrap_or_else(now_ms);
    let started = tokio::time::Instant::now();
    let instances: Vec<String> = (0..args.hosts)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut pending = Vec::new();
    for seq in 0..args.ticks {
        for (h, instance) in instances.iter().enumerate() {
            let r = match args.interval {
                Some(interval) => {
                    let slot = interval.mul_f64(h as f64 / args.hosts as f64);
                    let due = started + interval * u32::try_from(seq)? + slot;
                    tokio::time::sleep_until(due).await;
                    let interval_ms = u32::try_from(interval.as_millis())?;
                    record(args, h, instance, seq, now_ms(), interval_ms)
                }
                None => {
                    let time_ms = start_ms + seq * FAST_INTERVAL_MS;
                    record(args, h, instance, seq, time_ms, FAST_INTERVAL_MS as u32)
                }
            };
            let payload = encode(&r)?;
            let headers =
                kafka::headers(&r)
                    .into_iter()
                    .fold(OwnedHeaders::new(), |acc, (key, value)| {
                        acc.insert(Header {
                            key,
                            value: Some(value),
                        })
                    });
            let delivery = loop {
                let rec = FutureRecord::to(&args.topic)
                    .key(r.host_id())
                    .payload(&payload)
                    .headers(headers.clone());
                match producer.send_result(rec) {
                    Ok(d) => break d,
                    // Queue full: let deliveries drain, then try again.
                    Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            pending.push(delivery);
            if pending.len() >= 10_000 {
                for d in pending.drain(..) {
                    d.await?.map_err(|(e, _)| e)?;
                }
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    println!(
        "produced {} records, {} samples, to {}",
        args.hosts as u64 * args.ticks,
        args.hosts as u64 * args.ticks * args.samples as u64,
        args.topic
    );
    Ok(())
}
