//! The foundation end to end: the wire contract through a real broker, and the
//! `clickhouse` crate against a real ClickHouse.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use spillway_e2e::{TestEnv, unique_name};
use spillway_shared::{
    Label, Limits, MetricKind, MetricsRecord, Origin, Record, Sample, decode, encode, kafka,
};

fn record(seq: u64) -> Record {
    Record::Metrics(MetricsRecord {
        origin: Origin {
            host_id: "e2e-host".into(),
            hostname: "e2e".into(),
            instance_id: uuid_like(),
            agent_version: "test".into(),
        },
        seq,
        time_ms: 1_763_776_800_000 + seq * 1000,
        interval_ms: 1000,
        part: 0,
        parts: 1,
        samples: vec![Sample {
            name: "system.cpu.utilization".into(),
            value: 0.5,
            kind: MetricKind::Gauge,
            unit: "1".into(),
            labels: vec![Label::new("cpu.mode", "user")],
        }],
    })
}

fn uuid_like() -> String {
    unique_name("instance")
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn record_goes_through_the_real_broker_and_decodes_equal() -> Result<()> {
    let env = TestEnv::from_env();
    let topic = unique_name("e2e_foundation");
    env.create_topic(&topic, 1).await?;

    let producer: FutureProducer = env
        .kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let sent: Vec<Record> = (0..3).map(record).collect();
    for r in &sent {
        let payload = encode(r)?;
        let mut headers = OwnedHeaders::new();
        for (key, value) in kafka::headers(r) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(kafka::key(r))
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .context("produce")?;
    }

    let consumer: StreamConsumer = env
        .kafka_config()
        .set("group.id", unique_name("e2e_group"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message within 30 s")??;
        assert_eq!(msg.key(), Some("e2e-host".as_bytes()));
        let headers = msg.headers().context("message has no headers")?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header(kafka::HEADER_CONTENT_TYPE).as_deref(),
            Some(kafka::CONTENT_TYPE)
        );
        assert_eq!(header(kafka::HEADER_SCHEMA).as_deref(), Some("1"));
        assert_eq!(header(kafka::HEADER_TYPE).as_deref(), Some("metrics"));
        let Some(payload) = msg.payload() else {
            bail!("message without payload");
        };
        received.push(decode(payload, &Limits::default())?);
    }
    assert_eq!(received, sent);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
struct SampleRow {
    time: u32,
    host_id: String,
    name: String,
    label_keys: Vec<String>,
    label_values: Vec<String>,
    value: f64,
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn rows_inserted_into_real_clickhouse_read_back_equal() -> Result<()> {
    let env = TestEnv::from_env();
    let db = unique_name("e2e_foundation");
    let client = env.fresh_database(0, &db).await?;
    // Syntax that ClickHouse 18.16 and current releases both accept.
    client
        .query(
            "CREATE TABLE samples (time DateTime, host_id String, name String, \
             label_keys Array(String), label_values Array(String), value Float64) \
             ENGINE = MergeTree() PARTITION BY toDate(time) ORDER BY (name, host_id, time)",
        )
        .execute()
        .await?;

    let rows: Vec<SampleRow> = (0..1000u32)
        .map(|i| SampleRow {
            time: 1_763_776_800 + i,
            host_id: format!("host-{}", i % 7),
            name: "system.cpu.utilization".into(),
            label_keys: vec!["cpu.mode".into()],
            label_values: vec![if i % 2 == 0 { "user" } else { "system" }.into()],
            value: f64::from(i) / 1000.0,
        })
        .collect();
    let mut insert = client.insert::<SampleRow>("samples").await?;
    for row in &rows {
        insert.write(row).await?;
    }
    insert.end().await?;

    let mut back = client
        .query("SELECT ?fields FROM samples ORDER BY time")
        .fetch_all::<SampleRow>()
        .await?;
    back.sort_by_key(|r| r.time);
    assert_eq!(back, rows);

    client
        .query(&format!("DROP DATABASE {db}"))
        .execute()
        .await?;
    Ok(())
}
