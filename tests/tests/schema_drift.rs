//! A column's type changed under a running ingester: every row of the table
//! is rejected. That is a schema problem, not poison: the partitions pause,
//! `/ready` answers 503 and nothing goes to the dead-letter topic; once the
//! column is put back, everything lands once. With the pause turned off,
//! the same records go to the dead-letter topic, and `replay-dlq` brings
//! exactly them back once the column is fixed, even when killed and rerun.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use spillway_e2e::ingest::{
    alter_everywhere, count, dead_letters, distinct_rows, ingester_config, loadgen, migrate,
    total_rows, wait_rows,
};
use spillway_e2e::process::{Service, agent_metric, free_port, ready};
use spillway_e2e::{TestEnv, unique_name};

/// A metric's value from the ingester's `/metrics`, 0 when absent.
async fn metric(port: u16, name: &str) -> f64 {
    agent_metric(port, name).await.unwrap_or(0.0)
}

/// The column changed, and how to put it back.
const BREAK: &str = "ALTER TABLE samples MODIFY COLUMN seq UInt32";
const FIX: &str = "ALTER TABLE samples MODIFY COLUMN seq UInt64";

/// The replay's journal rows (one per replayed record).
const REPLAYED: &str =
    "SELECT count() FROM ingest_journal WHERE consumer_group = 'spillway-replay-dlq'";

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
    while metric(port, "spillway_ingester_partitions_stalled").await < 1.0 {
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
    let stalls = metric(port, "spillway_ingester_schema_stalls_total").await;
    println!(
        "schema drift: produced {produced}, stored {stored}, lost {}, duplicates {}, \
         dead letters {letters}, landed {:?} after the fix, {} stalls",
        produced.saturating_sub(distinct),
        stored - distinct,
        fixed.elapsed(),
        stalls
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

/// Dead letters from a broken table plus poison; after the fix, `replay-dlq`
/// inserts exactly the fixable ones, once, though killed midway and rerun.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn replay_dlq_brings_back_exactly_the_fixable_letters_once_even_when_killed() -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_replay"),
        unique_name("g"),
        unique_name("e2e_replay"),
    );
    env.create_topic(&topic, 2).await?;
    migrate(&env, dir.path(), &topic, &db)?;
    // Configured never to pause: what the table rejects is dead-lettered.
    let config = ingester_config(&env, &topic, &group, &db)
        .replace("[batch]", "[pipeline]\nrejects_before_pause = 0\n\n[batch]");
    let mut ingester = Service::ingester(&dir.path().join("ingester"), &config, &[])?;
    let before = loadgen(&env, dir.path(), &topic, "before", 20, 2)?;
    wait_rows(&env, &db, before, Duration::from_secs(60), || {
        ingester.log()
    })
    .await?;

    alter_everywhere(&env, &db, BREAK).await?;
    // 1,000 records the broken table rejects, and 3 that never decode.
    let fixable_records = 50 * 20;
    let fixable = loadgen(&env, dir.path(), &topic, "broken", 50, 20)?;
    let producer: FutureProducer = env.kafka_config().create()?;
    let poison = 3;
    for i in 0..poison {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("poison-{i}"))
                    .payload(&b"not msgpack"[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let expected_letters = fixable_records + poison;
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead_letters(&env, &topic)? < expected_letters {
        ensure!(
            Instant::now() < deadline,
            "{} of {expected_letters} dead letters; log:\n{}",
            dead_letters(&env, &topic)?,
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    alter_everywhere(&env, &db, FIX).await?;
    let after = loadgen(&env, dir.path(), &topic, "after", 20, 2)?;
    wait_rows(&env, &db, before + after, Duration::from_secs(60), || {
        ingester.log()
    })
    .await?;
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );

    // A dry run writes nothing and says what it would do.
    let mut dry = Service::ingester(
        &dir.path().join("dry"),
        &config,
        &["replay-dlq", "--dry-run"],
    )?;
    ensure!(
        dry.wait(Duration::from_secs(120))?,
        "dry run failed:\n{}",
        dry.log()
    );
    ensure!(
        dry.log().contains(&format!(
            "{fixable_records} records would be inserted ({fixable} rows), {poison} still failing"
        )),
        "dry run report:\n{}",
        dry.log()
    );
    ensure!(
        distinct_rows(&env, &db).await? == before + after,
        "the dry run inserted rows"
    );

    // Killed once part of it is journaled, then run again to the end.
    let mut replay = Service::ingester(&dir.path().join("replay"), &config, &["replay-dlq"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&env, 0, &db, REPLAYED).await? == 0 {
        ensure!(
            Instant::now() < deadline && replay.pid().is_some(),
            "nothing journaled by the replay:\n{}",
            replay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished_early = replay.log().contains("replay-dlq: read");
    replay.kill9()?;
    let at_kill = distinct_rows(&env, &db).await?;
    let journaled_at_kill = count(&env, 0, &db, REPLAYED).await?;
    let mut rerun = Service::ingester(&dir.path().join("rerun"), &config, &["replay-dlq"])?;
    ensure!(
        rerun.wait(Duration::from_secs(300))?,
        "replay failed:\n{}",
        rerun.log()
    );
    let (stored, distinct) = (
        total_rows(&env, &db).await?,
        distinct_rows(&env, &db).await?,
    );
    let produced = before + fixable + after;
    println!(
        "replay-dlq: {expected_letters} letters ({poison} poison); killed with {} rows in and \
         {journaled_at_kill} journaled{}; after the rerun: produced {produced}, stored {stored}, \
         lost {}, duplicates {}",
        at_kill - before - after,
        if finished_early {
            " (it had already finished)"
        } else {
            ""
        },
        produced.saturating_sub(distinct),
        stored - distinct
    );
    ensure!(
        !finished_early,
        "the replay finished before it could be killed"
    );
    ensure!(distinct == produced, "{} rows lost", produced - distinct);
    ensure!(stored == distinct, "{} duplicate rows", stored - distinct);
    ensure!(
        rerun
            .log()
            .contains(&format!("{poison} still failing (not_a_map {poison})")),
        "the poison is not reported as still failing:\n{}",
        rerun.log()
    );

    // A third run finds everything replayed and inserts nothing.
    let mut third = Service::ingester(&dir.path().join("third"), &config, &["replay-dlq"])?;
    ensure!(
        third.wait(Duration::from_secs(120))?,
        "third run failed:\n{}",
        third.log()
    );
    ensure!(
        third.log().contains(&format!(
            "{fixable_records} already replayed, 0 records inserted"
        )),
        "third run report:\n{}",
        third.log()
    );
    ensure!(
        total_rows(&env, &db).await? == stored,
        "the third run inserted rows"
    );
    Ok(())
}
