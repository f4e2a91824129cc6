//! Component test of the whole pipeline in one process: librdkafka's mock
//! cluster as the broker, a fake sink behind the `Sink` trait as ClickHouse.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use spillway_ingester::config::Config;
use spillway_ingester::dlq::DeadLetters;
use spillway_ingester::sink::{Rows, Sink, SinkError};
use spillway_ingester::telemetry::Stats;
use spillway_shared::{Label, MetricKind, MetricsRecord, Origin, Record, Sample, encode};
use tokio_util::sync::CancellationToken;

/// Stores sample rows; rejects any batch holding a row of `bad_host` for
/// its data, as ClickHouse does with a type mismatch; fails the first
/// `flaky` inserts as a network error would.
#[derive(Clone, Default)]
struct FakeSink {
    rows: Arc<Mutex<Vec<(String, u64)>>>,
    bad_host: String,
    flaky: Arc<Mutex<u32>>,
}

impl Sink for FakeSink {
    async fn insert(&self, _shard: usize, rows: &Rows) -> Result<(), SinkError> {
        {
            let mut flaky = self.flaky.lock().unwrap();
            if *flaky > 0 {
                *flaky -= 1;
                return Err(SinkError::Retryable("connection refused".into()));
            }
        }
        let Rows::Samples(rows) = rows else {
            return Ok(());
        };
        if rows.iter().any(|r| *r.host_id == *self.bad_host) {
            return Err(SinkError::Data {
                code: 53,
                message: "Type mismatch".into(),
            });
        }
        let mut stored = self.rows.lock().unwrap();
        stored.extend(rows.iter().map(|r| (r.host_id.to_string(), r.seq)));
        Ok(())
    }
}

fn record(host: &str, seq: u64) -> Vec<u8> {
    encode(&Record::Metrics(MetricsRecord {
        origin: Origin {
            host_id: host.into(),
            hostname: host.into(),
            instance_id: "i".into(),
            agent_version: "t".into(),
        },
        seq,
        time_ms: 1_763_776_800_000 + seq * 1000,
        interval_ms: 1000,
        part: 0,
        parts: 1,
        samples: (0..3)
            .map(|i| Sample {
                name: format!("m{i}"),
                value: i as f64,
                kind: MetricKind::Gauge,
                unit: "1".into(),
                labels: vec![Label::new("k", "v")],
            })
            .collect(),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_sink_bad_ones_the_dlq_and_offsets_the_end() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("metrics", 3, 1).unwrap();
    mock.create_topic("metrics.dlq", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let hosts = ["a", "b", "c", "bad", "d"];
    for seq in 0..20u64 {
        for host in hosts {
            let payload = record(host, seq);
            producer
                .send(BaseRecord::to("metrics").key(host).payload(&payload))
                .unwrap();
        }
    }
    // Undecodable: goes to the dead-letter topic from the decoder.
    producer
        .send(BaseRecord::to("metrics").key("x").payload(&b"\xc1junk"[..]))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut config = Config::default();
    config.kafka.brokers = brokers.clone();
    config.kafka.topics = vec!["metrics".into()];
    config.kafka.group_id = "g".into();
    config.kafka.session_timeout = Duration::from_secs(6);
    config.batch.max_age = Duration::from_millis(100);
    config.batch.max_rows = 30;
    config.pipeline.memory_budget_bytes = 1 << 20;
    let sink = FakeSink {
        bad_host: "bad".into(),
        flaky: Arc::new(Mutex::new(2)),
        ..Default::default()
    };
    let dlq_producer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let dlq = DeadLetters::new(dlq_producer, "metrics.dlq".into());
    let stats = Arc::new(Stats::new());
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(spillway_ingester::consume::run(
        config,
        sink.clone(),
        dlq,
        stats.clone(),
        None,
        shutdown.clone(),
    ));

    let good = 4 * 20 * 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.rows.lock().unwrap().len() < good || stats.dead_letters_total.get() < 21 {
        assert!(Instant::now() < deadline, "pipeline did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    pipeline.await.unwrap().unwrap();

    let mut rows = sink.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), good, "no row inserted twice");
    rows.sort();
    rows.dedup();
    assert_eq!(
        rows.len(),
        good / 3,
        "every good tick, once per (host, seq)"
    );
    assert!(rows.iter().all(|(h, _)| h != "bad"));
    assert_eq!(stats.dead_letter_count("insert_rejected"), 20);
    assert_eq!(stats.dead_letter_count("not_a_map"), 1);
    assert!(
        stats.insert_retries.get() >= 2,
        "the flaky inserts were retried"
    );

    // Every offset was committed: the group is at the end of each partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "g")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("metrics", p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let mut total = 0;
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks("metrics", e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            Offset::Offset(high),
            "partition {}",
            e.partition()
        );
        total += high;
    }
    assert_eq!(total, 101);
}
