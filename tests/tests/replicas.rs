//! Shards of replicas on real servers: `migrate` makes every table an INSERT
//! reaches replicated, and the ingester fails over between a shard's
//! replicas without losing or doubling a row (ClickHouse 18.16 with the
//! stack's ZooKeeper; four servers of this test's own, two shards of two).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use spillway_e2e::clickhouse_server::LocalClickHouse;
use spillway_e2e::ingest::{
    ingester_config, loadgen, migrate_with, rollup_rows, total_rows, with_replicas,
};
use spillway_e2e::process::{Service, free_port, http_get, ready};
use spillway_e2e::{TestEnv, unique_name};

/// Every table an INSERT reaches.
const INSERTED: [&str; 8] = [
    "samples",
    "samples_1m",
    "samples_1h",
    "agent_status",
    "agent_status_latest",
    "ingest_quality",
    "ingester_status",
    "ingest_journal",
];

/// The engines of the tables an INSERT reaches that are not replicated.
async fn not_replicated(url: &str, env: &TestEnv, db: &str) -> Result<Vec<String>> {
    let engines: Vec<(String, String)> = clickhouse::Client::default()
        .with_url(url)
        .with_user(&env.clickhouse_user)
        .with_password(&env.clickhouse_password)
        .with_validation(false)
        .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
        .bind(db)
        .fetch_all()
        .await?;
    Ok(INSERTED
        .iter()
        .filter_map(|t| match engines.iter().find(|(name, _)| name == t) {
            Some((_, engine)) if engine.starts_with("Replicated") => None,
            Some((_, engine)) => Some(format!("{t}: {engine}")),
            None => Some(format!("{t}: missing")),
        })
        .collect())
}

/// On the server under test (the stack's first ClickHouse, or in the suite's
/// modern step chdb with a ZooKeeper), which must define the `shard` and
/// `replica` macros: every table an INSERT reaches is replicated after
/// `migrate`, and a second run changes nothing.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn every_table_an_insert_reaches_is_replicated_where_the_server_has_replica_macros()
-> Result<()> {
    let env = TestEnv::from_env();
    let env = TestEnv {
        clickhouse_urls: vec![env.clickhouse_url().to_owned()],
        ..env
    };
    env.require_clickhouse(0).await?;
    let macros: u64 = env
        .clickhouse(0)
        .query("SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')")
        .fetch_one()
        .await?;
    ensure!(
        macros == 2,
        "{} defines no `shard` and `replica` macros: this test needs a replicated server",
        env.clickhouse_url()
    );
    let dir = tempfile::tempdir()?;
    let db = unique_name("e2e_repl");
    let config = ingester_config(&env, "unused", "unused", &db);
    let first = migrate_with(&dir.path().join("m1"), &config)?;
    let local = not_replicated(env.clickhouse_url(), &env, &db).await?;
    ensure!(
        local.is_empty(),
        "not replicated after migrate: {local:?}\n{first}"
    );
    let second = migrate_with(&dir.path().join("m2"), &config)?;
    ensure!(
        !second.contains("  applied "),
        "a second run applied something:\n{second}"
    );
    Ok(())
}

/// Rows of `db.table` on one server.
async fn rows_on(server: &LocalClickHouse, db: &str, sql: &str) -> Result<u64> {
    Ok(clickhouse::Client::default()
        .with_url(server.url())
        .with_database(db)
        .with_validation(false)
        .query(sql)
        .fetch_one::<u64>()
        .await?)
}

/// Waits until every replica of every shard holds as many raw rows as its
/// shard's first replica, and that is `expected` in all.
async fn wait_replicated(
    servers: &[Vec<LocalClickHouse>],
    db: &str,
    expected: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut counts = Vec::new();
        for shard in servers {
            let mut row = Vec::new();
            for server in shard {
                row.push(
                    rows_on(server, db, "SELECT count() FROM samples")
                        .await
                        .unwrap_or(u64::MAX),
                );
            }
            counts.push(row);
        }
        let total: u64 = counts.iter().map(|r| r[0]).sum();
        if total == expected && counts.iter().all(|r| r.iter().all(|&n| n == r[0])) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "replicas do not agree on {expected} rows after {timeout:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sample rows the ingester has had acknowledged, over all shards.
fn acknowledged(port: u16) -> u64 {
    let Some((_, metrics)) = http_get(port, "/metrics") else {
        return 0;
    };
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("spillway_ingester_rows_inserted_total{")
                && l.contains("table=\"samples\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits (up to a minute: each table's parts replicate on their own) until
/// the fleet-wide counts read on `server` are `expected` each; returns the
/// last counts read.
async fn wait_fleet(server: &LocalClickHouse, db: &str, expected: u64) -> Result<[u64; 4]> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = fleet_counts(server, db).await?;
        if counts == [expected; 4] || Instant::now() > deadline {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fleet-wide counts through the Distributed tables: raw rows, distinct
/// rows, and the rows the 1-minute and 1-hour tiers account for.
async fn fleet_counts(server: &LocalClickHouse, db: &str) -> Result<[u64; 4]> {
    Ok([
        rows_on(server, db, "SELECT count() FROM samples_all").await?,
        rows_on(
            server,
            db,
            "SELECT count() FROM (SELECT DISTINCT instance_id, seq, metric, labels FROM samples_all)",
        )
        .await?,
        rows_on(
            server,
            db,
            "SELECT toUInt64(countMerge(count)) FROM samples_1m_all",
        )
        .await?,
        rows_on(
            server,
            db,
            "SELECT toUInt64(countMerge(count)) FROM samples_1h_all",
        )
        .await?,
    ])
}

/// Two shards of two replicas. (1) The active replica of shard 0 is killed
/// (SIGKILL) mid-drain and a replica of shard 1 is stopped: the ingester
/// moves to the other replica, `/ready` stays 200, and once both come back
/// they catch up; every row is stored once, in the raw table and in both
/// tiers. (2) Both replicas of shard 1 down: shard 0 keeps taking rows,
/// shard 1's wait; when it is back, every row is stored once.
#[tokio::test]
#[ignore = "needs the local stack"]
async fn a_replica_killed_mid_drain_and_a_whole_shard_down_lose_nothing_and_store_nothing_twice()
-> Result<()> {
    let base = TestEnv::from_env();
    base.require_kafka()?;
    let dir = tempfile::tempdir()?;
    let mut servers = LocalClickHouse::start_cluster(&dir.path().join("clickhouse"), 2, 2)?;
    let env = TestEnv {
        clickhouse_urls: servers.iter().map(|s| s[0].url()).collect(),
        clickhouse_cluster: Some("spillway".to_owned()),
        ..base
    };
    let (topic, group, db) = (
        unique_name("e2e_replicas"),
        unique_name("g"),
        unique_name("e2e_replicas"),
    );
    env.create_topic(&topic, 4).await?;
    let port = free_port()?;
    // Small ranges: many INSERTs in flight when the replica is killed.
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        with_replicas(&ingester_config(&env, &topic, &group, &db), &servers).replace(
            "max_age = \"300ms\"",
            "max_age = \"300ms\"\nmax_rows = 2000"
        )
    );
    migrate_with(&dir.path().join("migrate"), &config)?;
    for server in servers.iter().flatten() {
        let local = not_replicated(&server.url(), &env, &db).await?;
        ensure!(local.is_empty(), "on {}: {local:?}", server.url());
    }

    // (1) A replica killed mid-drain, another stopped.
    let first = loadgen(&env, dir.path(), &topic, "a", 200, 25)?;
    let mut ingester = Service::ingester(&dir.path().join("ingester"), &config, &[])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while total_rows(&env, &db).await? == 0 {
        ensure!(
            Instant::now() < deadline,
            "no rows after 60 s:\n{}",
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    servers[0][0].kill()?;
    servers[1][1].kill()?;
    let killed = Instant::now();
    // Every row acknowledged while the replica is down: the ingester does
    // not wait for it. (A block the killed replica stored before it died,
    // whose retry the other replica drops as a duplicate through ZooKeeper,
    // is fetched from it when it is back.)
    let mut not_ready = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut moved, mut longest_pause) = (0, Instant::now(), Duration::ZERO);
    loop {
        let (now, at) = (acknowledged(port), Instant::now());
        if now > last {
            longest_pause = longest_pause.max(at - moved);
            (last, moved) = (now, at);
        }
        if now >= first {
            break;
        }
        if ready(port) != Some(200) {
            not_ready += 1;
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {first} rows acknowledged with a replica of each shard up:\n{}",
            acknowledged(port),
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = killed.elapsed();
    ensure!(
        ingester
            .log()
            .contains("the shard's requests go to another replica"),
        "the ingester never moved off the killed replica:\n{}",
        ingester.log()
    );
    // The probe publishes what the sink knows every second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = http_get(port, "/metrics").context("no /metrics")?;
    let down = format!(
        "spillway_ingester_replica_up{{shard=\"0\",replica=\"{}\"}} 0",
        servers[0][0].url()
    );
    let up = format!(
        "spillway_ingester_replica_up{{shard=\"0\",replica=\"{}\"}} 1",
        servers[0][1].url()
    );
    ensure!(
        metrics.contains(&down) && metrics.contains(&up),
        "/metrics lacks `{down}` or `{up}`:\n{metrics}"
    );
    ensure!(
        not_ready == 0 && ready(port) == Some(200),
        "/ready was not 200 {not_ready} time(s) while each shard had a replica"
    );
    println!("every row acknowledged {drained:?} after the kill; longest pause {longest_pause:?}");
    // Failover is at the first refused connection; the bound is loose for
    // a loaded 2-core machine.
    ensure!(
        longest_pause < Duration::from_secs(10),
        "acknowledgements paused for {longest_pause:?} during the failover"
    );
    servers[0][0].restart()?;
    servers[1][1].restart()?;
    wait_replicated(&servers, &db, first, Duration::from_secs(120)).await?;
    let fleet = wait_fleet(&servers[0][1], &db, first).await?;
    ensure!(
        fleet == [first; 4],
        "raw, distinct, 1-minute and 1-hour rows {fleet:?}, expected {first} each"
    );

    // (2) A whole shard down.
    servers[1][0].kill()?;
    servers[1][1].kill()?;
    let shard0 = rows_on(&servers[0][0], &db, "SELECT count() FROM samples").await?;
    let second = loadgen(&env, dir.path(), &topic, "b", 200, 10)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_on(&servers[0][0], &db, "SELECT count() FROM samples").await? == shard0 {
        ensure!(
            Instant::now() < deadline,
            "shard 0 took no rows while shard 1 was down:\n{}",
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(
        ready(port) == Some(503),
        "/ready is not 503 with every replica of shard 1 down"
    );
    servers[1][0].restart()?;
    servers[1][1].restart()?;
    wait_replicated(&servers, &db, first + second, Duration::from_secs(120)).await?;
    let fleet = wait_fleet(&servers[0][0], &db, first + second).await?;
    ensure!(
        fleet == [first + second; 4],
        "raw, distinct, 1-minute and 1-hour rows {fleet:?}, expected {} each",
        first + second
    );
    // And on each shard's first replica, once its tiers' parts are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut minute, mut hour) = rollup_rows(&env, &db).await?;
    while (minute, hour) != (first + second, first + second) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        (minute, hour) = rollup_rows(&env, &db).await?;
    }
    ensure!(
        (minute, hour) == (first + second, first + second),
        "tiers on the first replicas: {minute}, {hour}"
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "the ingester exited non-zero:\n{}",
        ingester.log()
    );
    Ok(())
}
