//! Simulated agents: records built with the shared codec, for tests and
//! benchmarks. Every host gets its own instance id and contiguous sequence
//! numbers, so completeness can be checked downstream.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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
        samples: (0..args.samples)
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
            .collect(),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Produces `hosts × ticks` records and waits until all are acknowledged.
pub async fn run(brokers: &str, args: &LoadgenArgs) -> anyhow::Result<()> {
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", brokers);
    crate::topics::ensure_topic(&base, &args.topic, args.partitions).await?;
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
