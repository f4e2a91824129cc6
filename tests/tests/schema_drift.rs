//! A column's type changed under a running ingester: every row of the table
//! is rejected. That is a schema problem, not poison: the partitions pause,
//! `/ready` answers 503 and nothing goes to the dead-letter topic; once the
//! column is put back, everything lands once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use spillway_e2e::ingest::{
    distinct_rows, ingester_config, loadgen, migrate, total_rows, wait_rows,
};
use spillway_e2e::process::{Service, free_port, http_get, ready};
use spillway_e2e::{TestEnv, unique_name};

/// The column changed, and how to put it back.
const BREAK: &str = "ALTER TABLE samples MODIFY COLUMN seq UInt32";
const FIX: &str = "ALTER TABLE samples MODIFY COLUMN seq UInt64";

#[tokio::test]
#[ignore = "needs the local stack"]
async fn a_column_type_changed_under_the_ingester_pauses_it_and_nothing_is_dead_lettered()
-> Result<()> {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_drift"),
        unique_name("g"),
        unique_name("e2e_drift"),
    );
    env.create_topic(&topic, 2).await?;
    migrate(&env, dir.path(), &topic, &db)?;
    let port = free_port()?;
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        ingester_config(&env, &topic, &group, &db)
    );
    let mut ingester = Service::ingester(&dir.path().join("ingester"), &config, &[])?;
    let before = loadgen(&env, dir.path(), &topic, "before", 50, 2)?;
    wait_rows(&env, &db, before, Duration::from_secs(60), || {
        ingester.log()
    })
    .await?;
    ensure!(ready(port) == Some(200), "not ready before the change");

    alter_everywhere(&env, &db, BREAK).await?;
    let during = loadgen(&env, dir.path(), &topic, "during", 50, 4)?;
    // Paused and unready, not dead-lettering.
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(port, "spillway_ingester_partitions_stalled") < 1.0 {
        ensure!(
            Instant::now() < deadline,
            "no partition stalled after the column changed; log:\n{}",
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(ready(port) == Some(503), "/ready is not 503 while stalled");
    // Hold it a while: retried, still nothing dead-lettered.
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        ready(port) == Some(503),
        "/ready came back while the column is still wrong"
    );
    let letters = dead_letters(&env, &topic)?;
    ensure!(
        letters == 0,
        "{letters} records dead-lettered while the schema was wrong; log:\n{}",
        ingester.log()
    );

    alter_everywhere(&env, &db, FIX).await?;
    let fixed = Instant::now();
    let deadline = fixed + Duration::from_secs(120);
    while distinct_rows(&env, &db).await? < before + during || ready(port) != Some(200) {
        ensure!(
            Instant::now() < deadline,
            "the stalled rows did not land after the fix; log:\n{}",
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (stored, distinct) = (
        total_rows(&env, &db).await?,
        distinct_rows(&env, &db).await?,
    );
    let letters = dead_letters(&env, &topic)?;
    let produced = before + during;
    println!(
        "schema drift: produced {produced}, stored {stored}, lost {}, duplicates {}, \
         dead letters {letters}, landed {:?} after the fix, {} stalls",
        produced.saturating_sub(distinct),
        stored - distinct,
        fixed.elapsed(),
        metric(port, "spillway_ingester_schema_stalls_total")
    );
    ensure!(distinct == produced, "{} rows lost", produced - distinct);
    ensure!(stored == distinct, "{} duplicate rows", stored - distinct);
    ensure!(letters == 0, "{letters} records dead-lettered");
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}

async fn alter_everywhere(env: &TestEnv, db: &str, sql: &str) -> Result<()> {
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

/// A metric's value from `/metrics`, 0 when absent.
fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Records in the dead-letter topic of `topic`.
fn dead_letters(env: &TestEnv, topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = env.kafka_config().create()?;
    let (low, high) = consumer
        .fetch_watermarks(&format!("{topic}.dlq"), 0, Duration::from_secs(10))
        .context("cannot read the dead-letter topic's offsets")?;
    Ok(high - low)
}
