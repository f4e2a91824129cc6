//! The storage layout on whichever ClickHouse the environment names (the
//! suite runs this file against ClickHouse 18.16, the legacy profile, and
//! against ClickHouse 26.9 in chdb, the modern profile): migrations applied
//! twice change nothing, and an installation made by the previous layout
//! upgrades in place with its data still queryable.

use std::time::Duration;

use anyhow::{Result, ensure};
use spillway_e2e::ingest::{count, ingester_config};
use spillway_e2e::process::Service;
use spillway_e2e::sql::{documented_queries, run_everywhere};
use spillway_e2e::{TestEnv, unique_name};

/// Runs `spillway-ingester migrate ARGS` on database `db`; returns its output.
fn migrate(env: &TestEnv, dir: &std::path::Path, db: &str, args: &[&str]) -> Result<String> {
    let mut m = Service::ingester(
        &dir.join(unique_name("migrate")),
        &ingester_config(env, "unused", "unused", db),
        &[&["migrate"], args].concat(),
    )?;
    let ok = m.wait(Duration::from_secs(120))?;
    let log = m.log();
    ensure!(ok, "migrate {args:?} failed:\n{log}");
    Ok(log)
}

/// Every table's definition on every shard.
async fn schema(env: &TestEnv, db: &str) -> Result<Vec<String>> {
    run_everywhere(
        env,
        db,
        "SELECT name, create_table_query FROM system.tables \
         WHERE database = currentDatabase() ORDER BY name",
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn migrations_applied_twice_change_nothing() -> Result<()> {
    let env = TestEnv::from_env();
    env.require_clickhouse(0).await?;
    let dir = tempfile::tempdir()?;
    let db = unique_name("e2e_migrate");
    let first = migrate(&env, dir.path(), &db, &[])?;
    ensure!(first.contains("applied   0006_storage_v2"), "{first}");
    let profile = if first.contains("profile   modern") {
        "modern"
    } else {
        "legacy"
    };
    println!("profile {profile}:\n{first}");
    let before = schema(&env, &db).await?;
    let second = migrate(&env, dir.path(), &db, &[])?;
    ensure!(
        !second.contains("applied") && !second.contains("ttl "),
        "the second run changed something:\n{second}"
    );
    ensure!(
        second.contains(&format!("profile   {profile} (recorded by ")),
        "{second}"
    );
    ensure!(
        schema(&env, &db).await? == before,
        "the schema changed on the second run"
    );
    // A profile cannot be swapped under existing tables.
    let other = if profile == "modern" {
        "legacy"
    } else {
        "modern"
    };
    let mut m = Service::ingester(
        &dir.path().join("swap"),
        &ingester_config(&env, "unused", "unused", &db),
        &["migrate", "--profile", other],
    )?;
    ensure!(
        !m.wait(Duration::from_secs(60))?,
        "--profile {other} was accepted"
    );
    ensure!(m.log().contains("cannot change that"), "{}", m.log());
    Ok(())
}

/// Rows as the previous ingester wrote them: label arrays stored, `ingested`
/// by the server, for two hosts over the last two hours.
fn v1_samples() -> String {
    let mut rows = Vec::new();
    for (h, host) in ["old-host-a", "old-host-b"].iter().enumerate() {
        for tick in 0..12u64 {
            let ago = 7200 - tick * 600;
            for (mode, value) in [("idle", 0.75 - h as f64 * 0.1), ("user", 0.2)] {
                rows.push(format!(
                    "(now() - {ago}, 0, '{host}', '{host}', 'system.cpu.utilization', \
                     'cpu.mode={mode}', ['cpu.mode'], ['{mode}'], {value}, 'gauge', '1', 'i{h}', {tick})"
                ));
            }
            rows.push(format!(
                "(now() - {ago}, 0, '{host}', '{host}', 'system.uptime', '', [], [], {}, 'gauge', 's', 'i{h}', {tick})",
                tick * 600
            ));
        }
    }
    format!(
        "INSERT INTO samples (time, time_ms, host_id, hostname, metric, labels, label_keys, \
         label_values, value, kind, unit, instance_id, seq) VALUES {}",
        rows.join(", ")
    )
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn an_installation_of_the_previous_layout_upgrades_in_place() -> Result<()> {
    let env = TestEnv::from_env();
    env.require_clickhouse(0).await?;
    let dir = tempfile::tempdir()?;
    let db = unique_name("e2e_upgrade");
    // The previous layout, and data written in it.
    let old = migrate(&env, dir.path(), &db, &["--until", "0005"])?;
    ensure!(!old.contains("0006"), "{old}");
    let ch = env.clickhouse(0).with_database(&db);
    ch.query(&v1_samples()).execute().await?;
    ch.query(
        "INSERT INTO agent_status (time, time_ms, host_id, hostname, instance_id, agent_version, \
         uptime_ms, last_seq, spool_bytes, spool_records, dropped_first, dropped_last, last_error) \
         VALUES (now() - 600, 0, 'old-host-a', 'old-host-a', 'i0', 'v1', 1, 10, 0, 0, [3], [4], '')",
    )
    .execute()
    .await?;
    ch.query(
        "INSERT INTO ingester_status (time, ingester, records, rows_inserted, dead_letters, \
         insert_retries, consumer_lag, assigned_partitions, in_flight_bytes, paused) \
         VALUES (now() - 600, 'old-ingester', 5, 200, 0, 0, 0, 2, 0, 0)",
    )
    .execute()
    .await?;
    let rows = count(&env, 0, &db, "SELECT count() FROM samples").await?;
    ensure!(rows == 2 * 12 * 3, "{rows} rows written in the old layout");

    let upgrade = migrate(&env, dir.path(), &db, &[])?;
    println!("{upgrade}");
    ensure!(upgrade.contains("applied   0006_storage_v2"), "{upgrade}");

    // The old rows, through the new layout.
    let n = |sql: &'static str| count(&env, 0, &db, sql);
    ensure!(
        n("SELECT count() FROM samples").await? == rows,
        "rows lost in the upgrade"
    );
    ensure!(
        n(
            "SELECT count() FROM samples WHERE label_values[indexOf(label_keys, 'cpu.mode')] \
           = extract(labels, 'cpu.mode=(.*)') AND metric = 'system.cpu.utilization'"
        )
        .await?
            == 2 * 12 * 2,
        "label arrays of old rows do not read back from labels"
    );
    ensure!(
        n("SELECT toUInt64(sum(c)) FROM (SELECT countMerge(count) AS c FROM samples_1h GROUP BY hour, host_id, metric, labels)")
            .await?
            == rows,
        "the 1-hour tier was not filled from the old rows"
    );
    ensure!(
        n("SELECT toUInt64(sum(c)) FROM (SELECT countMerge(count) AS c FROM samples_1m GROUP BY minute, host_id, metric, labels)")
            .await?
            == rows,
        "the 1-minute tier lost old minutes"
    );
    ensure!(
        n("SELECT count() FROM agent_status").await? == 1,
        "heartbeats not carried over"
    );
    ensure!(
        n("SELECT count() FROM agent_status_latest").await? == 1,
        "latest state not filled"
    );
    ensure!(
        n("SELECT count() FROM ingester_status").await? == 1,
        "the ingester's accounting not carried over"
    );
    // Where the server has the replica macros (and, before 24.8,
    // ZooKeeper), every table an INSERT reaches became replicated in place.
    if n("SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')").await? == 2 {
        ensure!(
            n(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() \
               AND name IN ('samples', 'samples_1m', 'samples_1h', 'agent_status', \
               'agent_status_latest', 'ingest_quality', 'ingester_status', 'ingest_journal') \
               AND engine LIKE 'Replicated%'"
            )
            .await?
                == 8,
            "not every table an INSERT reaches is replicated after the upgrade"
        );
    }

    // Every documented query runs; those about CPU see the old hosts.
    for q in documented_queries()? {
        let out = run_everywhere(&env, &db, &q.sql).await?.concat();
        if q.title.contains("Busiest hosts") || q.title.contains("1-hour tier") {
            ensure!(
                out.contains("old-host-a") || out.contains("old-host-b"),
                "`{}` does not see the old rows:\n{out}",
                q.title
            );
        }
    }

    // New rows go into the upgraded tables (the new ingester's columns).
    ch.query(
        "INSERT INTO samples (time, time_ms, host_id, hostname, metric, labels, value, kind, unit, instance_id, seq) \
         VALUES (now(), 0, 'new-host', 'new-host', 'system.cpu.utilization', 'cpu.mode=idle', 0.5, 'gauge', '1', 'n', 0)",
    )
    .execute()
    .await?;
    ensure!(
        n("SELECT count() FROM samples").await? == rows + 1,
        "new rows not accepted"
    );
    Ok(())
}
