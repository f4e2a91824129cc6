//! Helpers for tests that run the ingester: its config, migrations, and
//! counting what reached ClickHouse.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::TestEnv;
use crate::process::Service;

/// The ingester's config for `topic`, `group` and database `db` on every
/// ClickHouse server of `env` (one shard each).
pub fn ingester_config(env: &TestEnv, topic: &str, group: &str, db: &str) -> String {
    let shards: String = env
        .clickhouse_urls
        .iter()
        .map(|url| {
            format!(
                "[[clickhouse.shards]]\nurl = \"{url}\"\ndatabase = \"{db}\"\nuser = \"{}\"\npassword = \"{}\"\n",
                env.clickhouse_user, env.clickhouse_password
            )
        })
        .collect();
    let cluster = env
        .clickhouse_cluster
        .as_ref()
        .map(|c| format!("[clickhouse]\ncluster = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
session_timeout = "6s"

[batch]
max_age = "300ms"

{cluster}
{shards}
"#,
        brokers = env.kafka_brokers
    )
}

pub async fn count(env: &TestEnv, shard: usize, db: &str, sql: &str) -> Result<u64> {
    Ok(env
        .clickhouse(shard)
        .with_database(db)
        .query(sql)
        .fetch_one::<u64>()
        .await?)
}

pub async fn total_rows(env: &TestEnv, db: &str) -> Result<u64> {
    let mut n = 0;
    for shard in 0..env.clickhouse_urls.len() {
        n += count(env, shard, db, "SELECT count() FROM samples").await?;
    }
    Ok(n)
}

pub async fn wait_rows(
    env: &TestEnv,
    db: &str,
    expected: u64,
    timeout: Duration,
    log: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = total_rows(env, db).await?;
        if n >= expected {
            ensure!(
                n == expected,
                "{n} rows in ClickHouse, expected exactly {expected}"
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {n} of {expected} rows after {timeout:?}; ingester log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Rows the 1-minute and 1-hour tiers account for (the sum of their
/// `count` states) over all shards: with exactly-once inserts each equals
/// the number of distinct raw rows.
pub async fn rollup_rows(env: &TestEnv, db: &str) -> Result<(u64, u64)> {
    let (mut minute, mut hour) = (0, 0);
    for shard in 0..env.clickhouse_urls.len() {
        minute += count(
            env,
            shard,
            db,
            "SELECT toUInt64(countMerge(count)) FROM samples_1m",
        )
        .await?;
        hour += count(
            env,
            shard,
            db,
            "SELECT toUInt64(countMerge(count)) FROM samples_1h",
        )
        .await?;
    }
    Ok((minute, hour))
}

/// Runs `spillway-ingester migrate` and returns its output.
pub fn migrate(env: &TestEnv, dir: &std::path::Path, topic: &str, db: &str) -> Result<String> {
    let mut m = Service::ingester(
        dir,
        &ingester_config(env, topic, "unused", db),
        &["migrate"],
    )?;
    let ok = m.wait(Duration::from_secs(60))?;
    let log = m.log();
    ensure!(ok, "migrate failed:\n{log}");
    Ok(log)
}

/// Distinct (instance, seq, metric, labels) rows over all shards: duplicates
/// from redelivery count once.
pub async fn distinct_rows(env: &TestEnv, db: &str) -> Result<u64> {
    let mut n = 0;
    for shard in 0..env.clickhouse_urls.len() {
        n += count(
            env,
            shard,
            db,
            "SELECT count() FROM (SELECT DISTINCT instance_id, seq, metric, labels FROM samples)",
        )
        .await?;
    }
    Ok(n)
}

/// Produces `hosts × ticks` simulated records of 40 samples with the
/// ingester's `loadgen`; returns the rows they make.
pub fn loadgen(
    env: &TestEnv,
    dir: &std::path::Path,
    topic: &str,
    prefix: &str,
    hosts: u64,
    ticks: u64,
) -> Result<u64> {
    let (mut g, rows) = start_loadgen(env, dir, topic, prefix, hosts, ticks)?;
    ensure!(
        g.wait(Duration::from_secs(300))?,
        "loadgen failed:\n{}",
        g.log()
    );
    Ok(rows)
}

/// Starts [`loadgen`] without waiting for it: the process, and the rows
/// it will have made.
pub fn start_loadgen(
    env: &TestEnv,
    dir: &std::path::Path,
    topic: &str,
    prefix: &str,
    hosts: u64,
    ticks: u64,
) -> Result<(Service, u64)> {
    let args = loadgen_args(topic, prefix, hosts, ticks);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = Service::ingester(
        &dir.join(format!("loadgen-{prefix}")),
        &ingester_config(env, topic, "loadgen", "unused"),
        &args,
    )?;
    Ok((g, hosts * ticks * 40))
}

/// The arguments of `spillway-ingester loadgen` for `hosts × ticks` records
/// of 40 samples, host names starting with `prefix`.
pub fn loadgen_args(topic: &str, prefix: &str, hosts: u64, ticks: u64) -> Vec<String> {
    [
        "loadgen",
        "--topic",
        topic,
        "--hosts",
        &hosts.to_string(),
        "--ticks",
        &ticks.to_string(),
        "--samples",
        "40",
        "--host-prefix",
        prefix,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A fresh topic (`partitions`), database and consumer group named after
/// `prefix`, the migrations applied, and one ingester consuming it.
pub struct Ingesting {
    pub topic: String,
    pub group: String,
    pub db: String,
    pub ingester: Service,
}

/// Sets up [`Ingesting`] on `env`, with the ingester's files in `dir`.
pub async fn start_ingesting(
    env: &TestEnv,
    dir: &std::path::Path,
    prefix: &str,
    partitions: i32,
) -> Result<Ingesting> {
    let (topic, group, db) = (
        crate::unique_name(prefix),
        crate::unique_name("g"),
        crate::unique_name(prefix),
    );
    env.create_topic(&topic, partitions).await?;
    migrate(env, dir, &topic, &db)?;
    let ingester = Service::ingester(
        &dir.join("ingester"),
        &ingester_config(env, &topic, &group, &db),
        &[],
    )?;
    Ok(Ingesting {
        topic,
        group,
        db,
        ingester,
    })
}

/// Runs `sql` (an ALTER) in database `db` on every shard.
pub async fn alter_everywhere(env: &TestEnv, db: &str, sql: &str) -> Result<()> {
    for shard in 0..env.clickhouse_urls.len() {
        env.clickhouse(shard)
            .with_database(db)
            .query(sql)
            .execute()
            .await
            .with_context(|| format!("{sql} on shard {shard}"))?;
    }
    Ok(())
}

/// Records in the dead-letter topic of `topic` (one partition).
pub fn dead_letters(env: &TestEnv, topic: &str) -> Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = env.kafka_config().create()?;
    let (low, high) = consumer
        .fetch_watermarks(&format!("{topic}.dlq"), 0, Duration::from_secs(10))
        .context("cannot read the dead-letter topic's offsets")?;
    Ok(high - low)
}

/// What the data accounting (`ingest_quality`, every shard) reports over
/// all hosts: ticks still missing (`gaps - late`) and ticks made durable
/// twice. After a run whose rows are exact in `samples`, both must be 0.
pub async fn accounting_errors(env: &TestEnv, db: &str) -> Result<(i64, u64)> {
    let (mut missing, mut duplicates) = (0i64, 0u64);
    for shard in 0..env.clickhouse_urls.len() {
        let (m, d): (i64, u64) = env
            .clickhouse(shard)
            .with_database(db)
            .query(
                "SELECT toInt64(sum(gaps)) - toInt64(sum(late)), toUInt64(sum(duplicates)) \
                 FROM ingest_quality",
            )
            .fetch_one()
            .await
            .with_context(|| format!("reading ingest_quality on shard {shard}"))?;
        missing += m;
        duplicates += d;
    }
    Ok((missing, duplicates))
}

/// `config` (one `url` per shard, the first server of each, as
/// [`ingester_config`] writes it) with each shard's `replicas` instead.
pub fn with_replicas(
    config: &str,
    shards: &[Vec<crate::clickhouse_server::LocalClickHouse>],
) -> String {
    shards.iter().fold(config.to_owned(), |config, shard| {
        let urls: Vec<String> = shard.iter().map(|s| format!("\"{}\"", s.url())).collect();
        config.replace(
            &format!("url = \"{}\"\n", shard[0].url()),
            &format!("replicas = [{}]\n", urls.join(", ")),
        )
    })
}

/// Runs `spillway-ingester migrate` with a whole `config` (files in `dir`);
/// returns its output.
pub fn migrate_with(dir: &std::path::Path, config: &str) -> Result<String> {
    let mut m = Service::ingester(dir, config, &["migrate"])?;
    let ok = m.wait(Duration::from_secs(120))?;
    ensure!(ok, "migrate failed:\n{}", m.log());
    Ok(m.log())
}

/// One agent instance's ticks in ClickHouse, over every shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub host_id: String,
    pub instance_id: String,
    pub distinct: u64,
    pub max_seq: u64,
    pub rows: u64,
    pub distinct_rows: u64,
}

/// Every agent instance of `hosts` in ClickHouse, with its tick numbers and
/// its rows (a host lives on one shard).
pub async fn ticks(env: &TestEnv, db: &str, hosts: &[String]) -> Result<Vec<Ticks>> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct R {
        host_id: String,
        instance_id: String,
        distinct: u64,
        max_seq: u64,
        rows: u64,
        distinct_rows: u64,
    }
    let list = hosts
        .iter()
        .map(|h| format!("'{h}'"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::new();
    for shard in 0..env.clickhouse_urls.len() {
        let rows: Vec<R> = env
            .clickhouse(shard)
            .with_database(db)
            .query(&format!(
                "SELECT host_id, instance_id, uniqExact(seq) AS distinct, max(seq) AS max_seq, \
                 count() AS rows, uniqExact(seq, metric, labels) AS distinct_rows \
                 FROM samples WHERE host_id IN ({list}) GROUP BY host_id, instance_id \
                 ORDER BY host_id, instance_id"
            ))
            .fetch_all()
            .await?;
        out.extend(rows.into_iter().map(|r| Ticks {
            host_id: r.host_id,
            instance_id: r.instance_id,
            distinct: r.distinct,
            max_seq: r.max_seq,
            rows: r.rows,
            distinct_rows: r.distinct_rows,
        }));
    }
    Ok(out)
}

/// Whether every instance's ticks are contiguous from 0.
pub fn contiguous(t: &[Ticks]) -> bool {
    t.iter().all(|i| i.distinct == i.max_seq + 1)
}

/// The ticks of `host` stored more than once, over every shard: (instance,
/// seq) and how many times. A tick's rows are one per series, so a tick
/// stored n times has n rows per series; a tick with some of its rows
/// repeated is an error.
pub async fn repeated_ticks(
    env: &TestEnv,
    db: &str,
    host: &str,
) -> Result<std::collections::BTreeMap<(String, u64), u64>> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct R {
        instance_id: String,
        seq: u64,
        rows: u64,
        series: u64,
    }
    let mut out = std::collections::BTreeMap::new();
    for shard in 0..env.clickhouse_urls.len() {
        let rows: Vec<R> = env
            .clickhouse(shard)
            .with_database(db)
            .query(
                "SELECT instance_id, seq, count() AS rows, uniqExact(metric, labels) AS series \
                 FROM samples WHERE host_id = ? GROUP BY instance_id, seq \
                 HAVING rows > series ORDER BY instance_id, seq",
            )
            .bind(host)
            .fetch_all()
            .await?;
        for r in rows {
            ensure!(
                r.rows % r.series == 0,
                "{}/{} tick {}: {} rows of {} series, some rows stored more often than others",
                host,
                r.instance_id,
                r.seq,
                r.rows,
                r.series
            );
            out.insert((r.instance_id, r.seq), r.rows / r.series);
        }
    }
    Ok(out)
}
