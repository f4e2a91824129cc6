//! The SQL users run: every query in docs/queries.md and every panel of the
//! Grafana dashboard, against a real ClickHouse holding data from a real
//! agent that went through the real broker and ingester, plus a few
//! synthetic hosts for the questions a healthy fleet does not raise.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use spillway_e2e::ingest::{count, ingester_config, migrate};
use spillway_e2e::process::Service;
use spillway_e2e::sql::{documented_queries, fleet_wide, run_everywhere, samples_entry};
use spillway_e2e::{TestEnv, unique_name};

/// The Grafana ClickHouse plugin's macros and Grafana's own time-range
/// variables, expanded as they are for a range of `range` seconds ending
/// now, and the `host` variable.
fn expand_panel_sql(sql: &str, host: &str, range: u64) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let from = now - range;
    let mut out = sql
        .replace("${host}", host)
        .replace("${__from:date:seconds}", &from.to_string())
        .replace("${__to:date:seconds}", &now.to_string());
    while let Some(start) = out.find("$__timeFilter(") {
        let rest = &out[start + "$__timeFilter(".len()..];
        let end = rest.find(')').context("unclosed $__timeFilter")?;
        let column = rest[..end].to_owned();
        let expanded = format!("{column} >= toDateTime({from}) AND {column} <= toDateTime({now})");
        out.replace_range(start..start + "$__timeFilter(".len() + end + 1, &expanded);
    }
    ensure!(!out.contains('$'), "unexpanded macro in panel SQL:\n{out}");
    Ok(out)
}

/// Synthetic rows: a filesystem filling up, a host gone silent an hour ago,
/// an agent with missing ticks, a counter that resets, an agent that
/// dropped ticks.
async fn load_synthetic(env: &TestEnv, db: &str) -> Result<()> {
    let ch = env.clickhouse(0).with_database(db);
    let samples = samples_entry(&ch).await?;
    let fs = |ago: u64, state: &str, value: f64| {
        format!(
            "(now() - {ago}, 0, 'disk-filling-host', 'disk-filling-host', 'system.filesystem.usage', \
             'system.filesystem.mountpoint=/data,system.filesystem.state={state}', \
             {value}, 'gauge', 'By', 'i', 0)"
        )
    };
    let rows = [
        fs(3 * 3600, "used", 100e9),
        fs(3 * 3600, "free", 10e9),
        fs(60, "used", 105e9),
        fs(60, "free", 5e9),
    ]
    .join(", ");
    ch.query(&format!(
        "INSERT INTO {samples} (time, time_ms, host_id, hostname, metric, labels, \
         value, kind, unit, instance_id, seq) VALUES {rows}"
    ))
    .execute()
    .await?;
    ch.query(&format!(
        "INSERT INTO {samples} (time, time_ms, host_id, hostname, metric, value, kind, unit, seq) \
         VALUES (now() - 3600, 0, 'silent-host', 'silent-host', 'system.uptime', 1, 'gauge', 's', 0)"
    ))
    .execute()
    .await?;
    // A counter read once an hour; the host rebooted before the last reading.
    ch.query(&format!(
        "INSERT INTO {samples} (time, time_ms, host_id, hostname, metric, labels, value, kind, unit, \
         instance_id, seq) VALUES \
         (toStartOfHour(now()) - 3 * 3600 + 60, 0, 'reset-host', 'reset-host', 'system.network.io', \
          'network.io.direction=receive', 100, 'counter', 'By', 'a', 0), \
         (toStartOfHour(now()) - 2 * 3600 + 60, 0, 'reset-host', 'reset-host', 'system.network.io', \
          'network.io.direction=receive', 500, 'counter', 'By', 'a', 1), \
         (toStartOfHour(now()) - 3600 + 60, 0, 'reset-host', 'reset-host', 'system.network.io', \
          'network.io.direction=receive', 70, 'counter', 'By', 'b', 0)"
    ))
    .execute()
    .await?;
    ch.query(
        "INSERT INTO agent_status (time, time_ms, host_id, hostname, instance_id, agent_version, \
         uptime_ms, last_seq, spool_bytes, spool_records, dropped_first, dropped_last, last_error) \
         VALUES (now() - 1800, 0, 'drop-host', 'drop-host', 'i', 'e2e', 1000, 99, 0, 0, [40], [45], ''), \
         (now() - 1700, 0, 'drop-host', 'drop-host', 'i', 'e2e', 1100, 120, 0, 0, [], [], '')",
    )
    .execute()
    .await?;
    ch.query(
        "INSERT INTO ingest_quality (period_start, period_end, ingester, host_id, instance_id, \
         records, first_seq, last_seq, gaps, late, duplicates, agent_dropped, freshness_p50_ms, \
         freshness_p99_ms, freshness_max_ms) \
         VALUES (now() - 120, now() - 60, 'e2e', 'gappy-host', 'i', 57, 0, 59, 3, 0, 0, 0, 900, 1500, 1700)",
    )
    .execute()
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn documented_queries_and_dashboard_panels_run_on_real_data() -> Result<()> {
    let env = TestEnv::from_env();
    env.require_kafka()?;
    let dir = tempfile::tempdir()?;
    let (topic, group, db) = (
        unique_name("e2e_sql"),
        unique_name("g"),
        unique_name("e2e_sql"),
    );
    env.create_topic(&topic, 2).await?;
    migrate(&env, dir.path(), &topic, &db)?;
    let mut config = ingester_config(&env, &topic, &group, &db);
    config.push_str("\n[quality]\ninterval = \"2s\"\n");
    let mut ingester = Service::ingester(&dir.path().join("ingester"), &config, &[])?;
    let host = unique_name("sql-host");
    let agent_config = format!(
        r#"
[agent]
interval = "1s"
host_id = "{host}"
status_interval = "2s"
[collect]
top_processes = 5
[kafka]
brokers = "{brokers}"
topic = "{topic}"
[buffer]
spool_dir = "{spool}"
"#,
        brokers = env.kafka_brokers,
        spool = dir.path().join("spool").display()
    );
    let mut agent = Service::start(&dir.path().join("agent"), &agent_config)?;
    // A few ticks and a quality period or two.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ticks = 0;
        let mut periods = 0;
        for shard in 0..env.clickhouse_urls.len() {
            ticks += count(
                &env,
                shard,
                &db,
                "SELECT uniqExact(seq) FROM samples WHERE metric = 'system.uptime'",
            )
            .await?;
            periods += count(&env, shard, &db, "SELECT count() FROM ingest_quality").await?;
        }
        if ticks >= 5 && periods >= 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {ticks} ticks and {periods} quality rows after 60 s:\n{}\n{}",
            agent.log(),
            ingester.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hostname = run_everywhere(&env, &db, "SELECT any(hostname) FROM samples")
        .await?
        .into_iter()
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    ensure!(!hostname.is_empty(), "no hostname in samples");
    load_synthetic(&env, &db).await?;

    let queries = documented_queries()?;
    ensure!(
        queries.len() >= 8,
        "only {} documented queries",
        queries.len()
    );
    for q in &queries {
        let results = run_everywhere(&env, &db, &q.sql).await?;
        let all = results.concat();
        match q.expect.as_str() {
            "rows" => ensure!(!all.trim().is_empty(), "`{}` returned no rows", q.title),
            needle => ensure!(
                all.contains(needle),
                "`{}` did not find {needle}:\n{all}",
                q.title
            ),
        }
        println!("query ok: {} ({} bytes of results)", q.title, all.len());
        // Fleet-wide, as users of a sharded setup run it: the `_all` tables
        // on one server must give the same kind of answer.
        if env.clickhouse_cluster.is_some() {
            let sql = fleet_wide(&q.sql);
            let bytes = env
                .clickhouse(0)
                .with_database(&db)
                .query(&sql)
                .fetch_bytes("TSV")?
                .collect()
                .await
                .with_context(|| format!("fleet-wide `{}`:\n{sql}", q.title))?;
            let fleet = String::from_utf8_lossy(&bytes);
            match q.expect.as_str() {
                "rows" => ensure!(
                    !fleet.trim().is_empty(),
                    "fleet-wide `{}`: no rows",
                    q.title
                ),
                needle => ensure!(
                    fleet.contains(needle),
                    "fleet-wide `{}`: no {needle}",
                    q.title
                ),
            }
        }
    }

    // Every dashboard Grafana is given (docker-compose.yml mounts this folder).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut sqls = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry?.path())?)?;
        for panel in dashboard["panels"].as_array().context("no panels")? {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let title = panel["title"].as_str().unwrap_or("?").to_owned();
                sqls.push((
                    title,
                    target["rawSql"].as_str().context("rawSql")?.to_owned(),
                ));
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            sqls.push((
                format!("variable {}", variable["name"]),
                variable["query"]
                    .as_str()
                    .context("variable query")?
                    .to_owned(),
            ));
        }
    }
    ensure!(sqls.len() >= 12, "only {} panel queries", sqls.len());
    // The same dashboard serves one server and a cluster: every table it
    // reads is an `_all` table.
    for (title, sql) in &sqls {
        for table in sql.split("FROM ").skip(1).filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        }) {
            ensure!(
                table.ends_with("_all"),
                "`{title}` reads `{table}`, not an _all table"
            );
        }
    }
    // Each range reads its own tier: raw rows up to an hour, the 1-minute
    // tier up to three days, the 1-hour tier beyond.
    let mut empty = Vec::new();
    for (range, tier) in [(3600, "raw"), (86400, "1m"), (30 * 86400, "1h")] {
        for (title, sql) in &sqls {
            let sql = expand_panel_sql(sql, &hostname, range)?;
            let results = run_everywhere(&env, &db, &sql).await?;
            if results.concat().trim().is_empty() {
                empty.push(format!("{title} ({tier})"));
            }
        }
    }
    // Every panel shows this host's data or the synthetic hosts'.
    let unexpected: Vec<&String> = empty.iter().collect();
    ensure!(unexpected.is_empty(), "panels without data: {unexpected:?}");
    println!(
        "{} documented queries and {} dashboard queries ran",
        queries.len(),
        sqls.len()
    );

    ensure!(
        agent.terminate(Duration::from_secs(15))?,
        "agent exited non-zero"
    );
    ensure!(
        ingester.terminate(Duration::from_secs(30))?,
        "ingester exited non-zero"
    );
    Ok(())
}
