//! Component test of the whole pipeline in one process: librdkafka's mock
//! cluster as the broker, a fake sink behind the `Sink` trait as ClickHouse.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use spillway_ingester::config::Config;
use spillway_ingester::pipeline::dlq::DeadLetters;
use spillway_ingester::pipeline::journal::token;
use spillway_ingester::sink::rows::JournalRow;
use spillway_ingester::sink::rows::Rows;
use spillway_ingester::sink::{Sink, SinkError};
use spillway_ingester::telemetry::Stats;
use spillway_shared::kafka_log::LogContext;
use spillway_shared::{Label, MetricKind, MetricsRecord, Origin, Record, Sample, encode};
use tokio_util::sync::CancellationToken;

/// Stores sample rows, dropping an INSERT whose token it has seen as
/// ClickHouse does; rejects any batch holding a row of `bad_host` for its
/// data, as ClickHouse does with a type mismatch; fails the first `flaky`
/// inserts as a network error would; keeps the journal in memory.
#[derive(Clone, Default)]
struct FakeSink {
    rows: Arc<Mutex<Vec<(String, u64)>>>,
    tokens: Arc<Mutex<HashSet<String>>>,
    journal: Arc<Mutex<Vec<JournalRow>>>,
    bad_host: String,
    flaky: Arc<Mutex<u32>>,
    /// While set, every sample row is rejected (a column's type changed).
    drift: Arc<std::sync::atomic::AtomicBool>,
}

impl Sink for FakeSink {
    async fn insert(
        &self,
        _shard: usize,
        rows: &Rows,
        token: Option<&str>,
    ) -> Result<(), SinkError> {
        {
            let mut flaky = self.flaky.lock().unwrap();
            if *flaky > 0 {
                *flaky -= 1;
                return Err(SinkError::retryable("connection refused"));
            }
        }
        let Rows::Samples(rows) = rows else {
            return Ok(());
        };
        if self.drift.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SinkError::Data {
                code: 33,
                message: "Cannot read all data".into(),
            });
        }
        if rows.iter().any(|r| *r.host_id == *self.bad_host) {
            return Err(SinkError::Data {
                code: 53,
                message: "Type mismatch".into(),
            });
        }
        if let Some(token) = token
            && !self.tokens.lock().unwrap().insert(token.to_owned())
        {
            return Ok(());
        }
        let mut stored = self.rows.lock().unwrap();
        stored.extend(rows.iter().map(|r| (r.host_id.to_string(), r.seq)));
        Ok(())
    }

    async fn write_journal(&self, rows: &[JournalRow]) -> Result<(), SinkError> {
        self.journal.lock().unwrap().extend_from_slice(rows);
        Ok(())
    }

    async fn read_journal(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<Vec<(i64, i64)>, SinkError> {
        Ok(self
            .journal
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r.consumer_group == group
                    && r.topic == topic
                    && r.partition == partition
                    && r.last_offset >= from
            })
            .map(|r| (r.first_offset, r.last_offset))
            .collect())
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

/// A mock cluster with `topic` (`partitions`) and its dead-letter topic.
fn cluster(
    topic: &str,
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, partitions, 1).unwrap();
    mock.create_topic(&format!("{topic}.dlq"), 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

/// Starts the pipeline on `topic` in group `group`, writing to `sink`.
fn start(
    mut config: Config,
    brokers: &str,
    topic: &str,
    group: &str,
    sink: &FakeSink,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Arc<Stats>,
    CancellationToken,
) {
    config.kafka.brokers = brokers.to_owned();
    config.kafka.topics = vec![topic.to_owned()];
    config.kafka.group_id = group.to_owned();
    config.kafka.session_timeout = Duration::from_secs(6);
    config.batch.max_age = Duration::from_millis(100);
    let dlq = DeadLetters::new(
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create_with_context(LogContext::default())
            .unwrap(),
        format!("{topic}.dlq"),
    );
    let stats = Arc::new(Stats::new());
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(spillway_ingester::pipeline::consume::run(
        config,
        sink.clone(),
        dlq,
        stats.clone(),
        None,
        shutdown.clone(),
    ));
    (pipeline, stats, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_sink_bad_ones_the_dlq_and_offsets_the_end() {
    let (_mock, brokers) = cluster("metrics", 3);

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
    config.batch.max_rows = 30;
    config.pipeline.memory_budget_bytes = 1 << 20;
    // Every record of host "bad" is rejected, and its partition may hold no
    // other host: a run of 20 rejections, which by default would pause the
    // partition as a schema problem (tested below). Here: isolation only.
    config.pipeline.rejects_before_pause = 0;
    let sink = FakeSink {
        bad_host: "bad".into(),
        flaky: Arc::new(Mutex::new(2)),
        ..Default::default()
    };
    let (pipeline, stats, shutdown) = start(config, &brokers, "metrics", "g", &sink);

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

/// A member that takes a partition over after a crash rebuilds the ranges
/// its last owner journaled, at exactly their boundaries and with their
/// tokens, so the sink drops the one that had landed; then it cuts new
/// ranges of its own and journals them first. The broker's commit metadata
/// plays no part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_rebuilds_the_journaled_ranges_and_nothing_lands_twice() {
    let (_mock, brokers) = cluster("m", 1);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for seq in 0..30u64 {
        let payload = record("h", seq);
        producer
            .send(BaseRecord::to("m").key("h").payload(&payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // The last owner committed 10, journaled 10..=14, 15..=19 and 20..=24,
    // inserted 15..=19 (a later range finished first), then died.
    let owner: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "g2")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("m", 0, Offset::Offset(10))
        .unwrap();
    owner
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(owner);
    let sink = FakeSink::default();
    for (first, last) in [(10, 14), (15, 19), (20, 24)] {
        sink.journal.lock().unwrap().push(JournalRow {
            time: 0,
            consumer_group: "g2".into(),
            topic: "m".into(),
            partition: 0,
            first_offset: first,
            last_offset: last,
            records: 5,
            ingester: "dead".into(),
        });
    }
    sink.tokens
        .lock()
        .unwrap()
        .insert(token("g2", "m", 0, 15, 19));
    sink.rows
        .lock()
        .unwrap()
        .extend((15..20).flat_map(|seq| std::iter::repeat_n(("h".to_owned(), seq), 3)));

    let mut config = Config::default();
    // Ranges of its own are cut at 9 rows (3 records).
    config.batch.max_rows = 9;
    let (pipeline, stats, shutdown) = start(config, &brokers, "m", "g2", &sink);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.rows.lock().unwrap().len() < 20 * 3 {
        assert!(Instant::now() < deadline, "pipeline did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a wrongly re-inserted record time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    pipeline.await.unwrap().unwrap();

    let mut rows = sink.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 20 * 3, "no row stored twice");
    rows.sort();
    rows.dedup();
    let seqs: Vec<u64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(
        seqs,
        (10..30).collect::<Vec<_>>(),
        "every record from 10 on"
    );
    assert_eq!(stats.ranges_rebuilt.get(), 3);
    let tokens = sink.tokens.lock().unwrap().clone();
    for (first, last) in [(10, 14), (20, 24)] {
        assert!(tokens.contains(&token("g2", "m", 0, first, last)));
    }
    // Its own ranges were journaled: 25..=27 and 28..=29.
    let own: Vec<(i64, i64)> = sink
        .journal
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.ingester != "dead")
        .map(|r| (r.first_offset, r.last_offset))
        .collect();
    assert_eq!(own, vec![(25, 27), (28, 29)]);
}

/// Every record of the partition rejected (a column's type changed under the
/// ingester): after `rejects_before_pause` rejections in a row the partition
/// stalls instead of emptying into the dead-letter topic, the ingester is
/// unready, and once the server accepts the rows again everything lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_rejected_row_after_row_pauses_instead_of_dead_lettering() {
    let (_mock, brokers) = cluster("drift", 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for seq in 0..40u64 {
        for host in ["a", "b", "c"] {
            let payload = record(host, seq);
            producer
                .send(BaseRecord::to("drift").key(host).payload(&payload))
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut config = Config::default();
    config.pipeline.rejects_before_pause = 4;
    let sink = FakeSink::default();
    sink.drift.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pipeline, stats, shutdown) = start(config, &brokers, "drift", "g3", &sink);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.partitions_stalled.get() == 0 {
        assert!(Instant::now() < deadline, "no partition stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !stats.is_ready(),
        "a stalled partition makes the ingester unready"
    );
    // Held for a while: retried, never dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats.dead_letters_total.get(), 0, "nothing dead-lettered");
    assert!(sink.rows.lock().unwrap().is_empty());

    sink.drift
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.rows.lock().unwrap().len() < 40 * 3 * 3 || stats.partitions_stalled.get() > 0 {
        assert!(Instant::now() < deadline, "the stalled rows did not land");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stats.schema_stalls.get() >= 1);
    assert_eq!(stats.dead_letters_total.get(), 0);
    shutdown.cancel();
    pipeline.await.unwrap().unwrap();
    let mut rows = sink.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 40 * 3 * 3, "no row twice");
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), 40 * 3);
}
