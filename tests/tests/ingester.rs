//! The real ingester binary against the real broker and real ClickHouse
//! servers (two shards).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use spillway_e2e::ingest::{count, ingester_config, migrate, total_rows, wait_rows};
use spillway_e2e::process::Service;
use spillway_e2e::{TestEnv, unique_name};
use spillway_shared::{Label, MetricKind, MetricsRecord, Origin, Record, Sample, encode};

#[derive(Debug, Deserialize, clickhouse::Row)]
struct HostSeqs {
    host_id: String,
    seqs: u64,
    min_seq: u64,
    max_seq: u64,
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn migrations_apply_twice_without_change() -> Result<()> {
    let env = TestEnv::from_env();
    for shard in 0..env.clickhouse_urls.len() {
        env.require_clickhouse(shard).await?;
    }
    let dir = tempfile::tempdir()?;
    let db = unique_name("e2e_migrate");
    let first = migrate(&env, dir.path(), "t", &db)?;
    ensure!(
        first.matches("applied   0001_samples.sql").count() == env.clickhouse_urls.len(),
        "{first}"
    );
    std::fs::remove_file(dir.path().join("spillway-ingester.log"))?;
    let second = migrate(&env, dir.path(), "t", &db)?;
    ensure!(
        !second.contains("applied "),
        "second run applied something:\n{second}"
    );
    ensure!(
        second.matches("unchanged 0005_ingester_status.sql").count() == env.clickhouse_urls.len(),
        "{second}"
    );
    for shard in 0..env.clickhouse_urls.len() {
        let tables = count(
            &env,
            shard,
            &db,
            "SELECT count() FROM system.tables WHERE database = currentDatabase() \
             AND name IN ('samples', 'agent_status', 'samples_1m', 'samples_1m_mv', 'ingest_quality', \
             'ingester_status', 'schema_migrations')",
        )
        .await?;
        ensure!(tables == 7, "shard {shard} has {tables} of the 7 tables");
    }
    Ok(())
}

/// `check-config` lists every problem of a broken file at once and exits 2;
/// `run` refuses the same file the same way, before touching the network.
#[test]
fn check_config_rejects_a_broken_config_listing_every_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[kafka]
brokers = ""
topics = ["bad topic"]
[[clickhouse.shards]]
url = "127.0.0.1:8123"
database = "no-dashes"
[pipeline]
insert_concurrency = 0
[batch]
max_age = "0s"
"#,
    )?;
    let bin = spillway_e2e::process::bin_path("spillway-ingester", "SPILLWAY_E2E_INGESTER_BIN");
    for command in ["check-config", "run"] {
        let out = spillway_e2e::process::command_without_overrides(&bin)
            .args(["--config", path.to_str().context("path")?, command])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{command}: exit {:?}\n{stderr}",
            out.status
        );
        for needle in [
            "kafka.brokers",
            "`bad topic`",
            "shards[0].url",
            "shards[0].database",
            "insert_concurrency",
            "batch.max_age",
        ] {
            ensure!(
                stderr.contains(needle),
                "{command}: `{needle}` not reported:\n{stderr}"
            );
        }
    }
    // An unknown key is named too.
    std::fs::write(&path, "[kafka]\nbrokerz = \"x\"\n")?;
    let out = spillway_e2e::process::command_without_overrides(&bin)
        .args(["--config", path.to_str().context("path")?, "check-config"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains("brokerz"),
        "{stderr}"
    );
    Ok(())
}

/// Start-up against what is not there: an unreachable ClickHouse, a
/// database without the tables, an unreachable broker. Each is one message
/// on stderr naming the problem and how to fix it, exit code 1, within
/// seconds (no hang, no retry loop).
#[tokio::test]
#[ignore = "needs the local stack"]
async fn start_up_against_missing_servers_or_tables_fails_with_one_clear_message() -> Result<()> {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let (topic, db) = (unique_name("e2e_start"), unique_name("e2e_start"));
    let ch = env.clickhouse_url().to_owned();
    env.clickhouse(0)
        .query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await?;
    let closed = format!("127.0.0.1:{}", spillway_e2e::process::free_port()?);
    let cases = [
        (
            env.kafka_brokers.clone(),
            format!("http://{closed}"),
            "default".to_owned(),
            format!("ClickHouse at http://{closed} is not reachable"),
        ),
        (
            env.kafka_brokers.clone(),
            ch.clone(),
            db.clone(),
            format!("database {db} on {ch} lacks the samples"),
        ),
        (
            closed.clone(),
            ch.clone(),
            "default".to_owned(),
            format!("Kafka at {closed} is not reachable"),
        ),
        (
            env.kafka_brokers.clone(),
            ch.clone(),
            format!("{db}_missing"),
            format!(
                "database {db}_missing does not exist on {ch}: run `spillway-ingester migrate` first"
            ),
        ),
    ];
    let bin = spillway_e2e::process::bin_path("spillway-ingester", "SPILLWAY_E2E_INGESTER_BIN");
    for (brokers, url, database, want) in cases {
        // The broker case needs tables, so it gets a migrated database.
        let database = if brokers == closed {
            let migrated = unique_name("e2e_start");
            migrate(&env, dir.path(), &topic, &migrated)?;
            migrated
        } else {
            database
        };
        let path = dir.path().join("ingester.toml");
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
                 [[clickhouse.shards]]\nurl = \"{url}\"\ndatabase = \"{database}\"\n\
                 user = \"{}\"\npassword = \"{}\"\n",
                env.clickhouse_user, env.clickhouse_password
            ),
        )?;
        let started = Instant::now();
        let out = spillway_e2e::process::command_without_overrides(&bin)
            .args(["--config", path.to_str().context("path")?])
            .output()?;
        let took = started.elapsed();
        let stderr = spillway_e2e::strip_ansi(&String::from_utf8_lossy(&out.stderr));
        let last = stderr.lines().last().unwrap_or_default();
        ensure!(
            out.status.code() == Some(1)
                && last.starts_with("spillway-ingester: ")
                && last.contains(&want),
            "wanted exit 1 and `{want}`, got {:?}, last line `{last}`",
            out.status
        );
        ensure!(took < Duration::from_secs(30), "took {took:?} to fail");
        println!("{want}: exit 1 after {took:?}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn simulated_fleet_lands_complete_with_each_host_on_one_shard() -> Result<()> {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_fleet"),
        unique_name("g"),
        unique_name("e2e_fleet"),
    );
    env.create_topic(&topic, 4).await?;
    migrate(&env, dir.path(), &topic, &db)?;
    let (hosts, ticks, samples) = (300u64, 6u64, 40u64);
    let mut loadgen = Service::ingester(
        &dir.path().join("loadgen"),
        &ingester_config(&env, &topic, &group, &db),
        &[
            "loadgen",
            "--topic",
            &topic,
            "--hosts",
            &hosts.to_string(),
            "--ticks",
            &ticks.to_string(),
            "--samples",
            &samples.to_string(),
            "--host-prefix",
            "fleet",
        ],
    )?;
    ensure!(
        loadgen.wait(Duration::from_secs(120))?,
        "loadgen failed:\n{}",
        loadgen.log()
    );

    let mut ingester = Service::ingester(
        &dir.path().join("ingester"),
        &ingester_config(&env, &topic, &group, &db),
        &[],
    )?;
    let expected = hosts * ticks * samples;
    let started = Instant::now();
    wait_rows(&env, &db, expected, Duration::from_secs(120), || {
        ingester.log()
    })
    .await?;
    println!(
        "{expected} rows from {hosts} hosts in {:?}",
        started.elapsed()
    );

    // Every host on exactly one shard, with every tick.
    let mut shard_of: BTreeMap<String, usize> = BTreeMap::new();
    for shard in 0..env.clickhouse_urls.len() {
        let rows: Vec<HostSeqs> = env
            .clickhouse(shard)
            .with_database(&db)
            .query(
                "SELECT host_id, uniqExact(seq) AS seqs, min(seq) AS min_seq, max(seq) AS max_seq \
                 FROM samples GROUP BY host_id",
            )
            .fetch_all()
            .await?;
        for r in rows {
            ensure!(
                (r.seqs, r.min_seq, r.max_seq) == (ticks, 0, ticks - 1),
                "host {} has seqs {}..={} ({} distinct)",
                r.host_id,
                r.min_seq,
                r.max_seq,
                r.seqs
            );
            if let Some(other) = shard_of.insert(r.host_id.clone(), shard) {
                anyhow::bail!("host {} is on shards {other} and {shard}", r.host_id);
            }
        }
    }
    ensure!(
        shard_of.len() as u64 == hosts,
        "{} hosts found, {hosts} expected",
        shard_of.len()
    );
    if env.clickhouse_urls.len() > 1 {
        let per_shard: BTreeSet<usize> = shard_of.values().copied().collect();
        ensure!(
            per_shard.len() == env.clickhouse_urls.len(),
            "hosts did not spread over the shards"
        );
    }
    // The rollup saw every row too.
    let mut rolled = 0;
    for shard in 0..env.clickhouse_urls.len() {
        rolled += count(
            &env,
            shard,
            &db,
            "SELECT toUInt64(countMerge(count)) FROM samples_1m",
        )
        .await?;
    }
    ensure!(rolled == expected, "rollup counted {rolled} rows");

    // Offsets were committed: a second member of the group re-reads nothing.
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero:\n{}",
        ingester.log()
    );

    // The accounting (its last period is written on shutdown): every tick
    // of every host once, no gap, no duplicate.
    let mut quality = Quality::default();
    for shard in 0..env.clickhouse_urls.len() {
        let q: Quality = env
            .clickhouse(shard)
            .with_database(&db)
            .query(
                "SELECT sum(records) AS records, sum(gaps) AS gaps, sum(duplicates) AS duplicates, \
                 uniqExact(host_id) AS hosts FROM ingest_quality",
            )
            .fetch_one()
            .await?;
        quality.records += q.records;
        quality.gaps += q.gaps;
        quality.duplicates += q.duplicates;
        quality.hosts += q.hosts;
    }
    ensure!(
        quality
            == Quality {
                records: hosts * ticks,
                gaps: 0,
                duplicates: 0,
                hosts
            },
        "ingest_quality says {quality:?}"
    );

    // With a cluster, one query on one server sees the whole fleet.
    if let Some(cluster) = &env.clickhouse_cluster {
        let all = count(&env, 0, &db, "SELECT count() FROM samples_all").await?;
        ensure!(
            all == expected,
            "samples_all over cluster {cluster} has {all} rows"
        );
        let hosts_all = count(
            &env,
            0,
            &db,
            "SELECT uniqExact(host_id) FROM ingest_quality_all",
        )
        .await?;
        ensure!(
            hosts_all == hosts,
            "ingest_quality_all has {hosts_all} hosts"
        );
    } else {
        println!("Distributed tables not checked: SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER is not set");
    }
    let mut again = Service::ingester(
        &dir.path().join("again"),
        &ingester_config(&env, &topic, &group, &db),
        &[],
    )?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        again.terminate(Duration::from_secs(30))?,
        "second ingester exited non-zero"
    );
    ensure!(
        total_rows(&env, &db).await? == expected,
        "rows were inserted twice after a clean restart"
    );
    Ok(())
}

#[derive(Debug, Default, PartialEq, serde::Deserialize, clickhouse::Row)]
struct Quality {
    records: u64,
    gaps: u64,
    duplicates: u64,
    hosts: u64,
}

fn good_record(host: &str, seq: u64) -> Record {
    Record::Metrics(MetricsRecord {
        origin: Origin {
            host_id: host.into(),
            hostname: host.into(),
            instance_id: "i-1".into(),
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

/// A metrics record as a raw map, mangled by `f`, for poison that our own
/// encoder would never write.
fn raw_record(f: impl FnOnce(&mut Vec<(&'static str, rmpv::Value)>)) -> Vec<u8> {
    use rmpv::Value;
    let sample = Value::Map(vec![
        ("name".into(), "x.y".into()),
        ("value".into(), Value::F64(1.0)),
        ("kind".into(), "gauge".into()),
    ]);
    let mut fields: Vec<(&'static str, Value)> = vec![
        ("schema", 1.into()),
        ("type", "metrics".into()),
        ("host_id", "poison-host".into()),
        ("hostname", "p".into()),
        ("instance_id", "i".into()),
        ("agent_version", "t".into()),
        ("seq", 0.into()),
        ("time_ms", 1_763_776_800_000u64.into()),
        ("interval_ms", 1000.into()),
        ("samples", Value::Array(vec![sample])),
    ];
    f(&mut fields);
    let map = Value::Map(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).expect("encode");
    out
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn poison_goes_to_the_dead_letter_topic_and_ingestion_continues() -> Result<()> {
    use rmpv::Value;
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_poison"),
        unique_name("g"),
        unique_name("e2e_poison"),
    );
    env.create_topic(&topic, 2).await?;
    migrate(&env, dir.path(), &topic, &db)?;

    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("not_a_map", b"this is not msgpack".to_vec()),
        ("not_a_map", Vec::new()),
        ("unsupported_schema", raw_record(|f| f[0].1 = 99.into())),
        ("unknown_type", raw_record(|f| f[1].1 = "metricz".into())),
        (
            "missing_field",
            raw_record(|f| f.retain(|(k, _)| *k != "seq")),
        ),
        ("malformed", raw_record(|f| f[6].1 = "seven".into())),
        (
            "non_finite",
            raw_record(|f| {
                f[9].1 = Value::Array(vec![Value::Map(vec![
                    ("name".into(), "x.y".into()),
                    ("value".into(), Value::F64(f64::NAN)),
                    ("kind".into(), "gauge".into()),
                ])])
            }),
        ),
        (
            "unknown_kind",
            raw_record(|f| {
                f[9].1 = Value::Array(vec![Value::Map(vec![
                    ("name".into(), "x.y".into()),
                    ("value".into(), Value::F64(1.0)),
                    ("kind".into(), "histogram".into()),
                ])])
            }),
        ),
    ];
    let producer: FutureProducer = env.kafka_config().create()?;
    let good = 20u64;
    let mut sent_poison = Vec::new();
    for seq in 0..good {
        let r = good_record(&format!("good-{}", seq % 4), seq);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(r.host_id())
                    .payload(&encode(&r)?),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        if let Some((kind, bytes)) = poison.get(seq as usize) {
            let delivery = producer
                .send(
                    FutureRecord::<str, _>::to(&topic)
                        .key("poison")
                        .payload(bytes),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
            sent_poison.push((*kind, delivery.partition, delivery.offset));
        }
    }

    let mut ingester =
        Service::ingester(dir.path(), &ingester_config(&env, &topic, &group, &db), &[])?;
    wait_rows(&env, &db, good, Duration::from_secs(60), || ingester.log()).await?;

    let consumer: StreamConsumer = env
        .kafka_config()
        .set("group.id", unique_name("dlq_reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&format!("{topic}.dlq")])?;
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters.len() < sent_poison.len() && Instant::now() < deadline {
        let Ok(msg) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        let msg = msg?;
        let headers = msg.headers().context("dead letter without headers")?;
        let h = |name: &str| {
            headers
                .iter()
                .find(|x| x.key == name)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        ensure!(
            h("spillway-source-topic") == topic,
            "wrong source topic header"
        );
        ensure!(!h("spillway-error").is_empty(), "empty error header");
        letters.push((
            h("spillway-error-kind"),
            h("spillway-source-partition").parse::<i32>()?,
            h("spillway-source-offset").parse::<i64>()?,
            msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        ));
    }
    ensure!(
        letters.len() == sent_poison.len(),
        "{} dead letters, {} poison sent; ingester log:\n{}",
        letters.len(),
        sent_poison.len(),
        ingester.log()
    );
    for (kind, partition, offset) in &sent_poison {
        let l = letters
            .iter()
            .find(|l| l.1 == *partition && l.2 == *offset)
            .with_context(|| format!("no dead letter for {kind} at {partition}/{offset}"))?;
        ensure!(
            l.0 == *kind,
            "poison at {partition}/{offset}: expected kind {kind}, got {}",
            l.0
        );
    }
    let bodies: BTreeSet<Vec<u8>> = letters.iter().map(|l| l.3.clone()).collect();
    ensure!(
        bodies.len() >= poison.len() - 1,
        "dead letters do not carry the original bytes"
    );
    // Ingestion went on: more good records after the poison still land.
    for seq in good..good + 5 {
        let r = good_record("good-late", seq);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(r.host_id())
                    .payload(&encode(&r)?),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    wait_rows(&env, &db, good + 5, Duration::from_secs(30), || {
        ingester.log()
    })
    .await?;
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    // The pipeline's own account (written at shutdown) agrees.
    let dead = count(
        &env,
        0,
        &db,
        "SELECT toUInt64(sum(dead_letters)) FROM ingester_status",
    )
    .await?;
    ensure!(
        dead == sent_poison.len() as u64,
        "ingester_status counts {dead} dead letters, {} were sent",
        sent_poison.len()
    );
    Ok(())
}
