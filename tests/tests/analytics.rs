//! The SQL users run: every query in docs/queries.md and every panel of the
//! Grafana dashboard, against a real ClickHouse holding data from a real
//! agent that went through the real broker and ingester, plus a few
//! synthetic hosts for the questions a healthy fleet does not raise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use spillway_e2e::grafana::dashboard::Dashboard;
use spillway_e2e::grafana::plugin::{Frame, TimeRange};
use spillway_e2e::ingest::{count, ingester_config, migrate};
use spillway_e2e::process::Service;
use spillway_e2e::sql::{documented_queries, per_shard, run_everywhere, run_on, samples_entry};
use spillway_e2e::{TestEnv, unique_name};

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
        // On each server's own tables (the recipes as a one-server user
        // runs them, `_all` dropped), then as written, fleet-wide.
        let results = run_everywhere(&env, &db, &per_shard(&q.sql)).await?;
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
        // As written: the `_all` tables on one server must give the same
        // kind of answer.
        if env.clickhouse_cluster.is_some() {
            let sql = q.sql.clone();
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

    // Every dashboard Grafana is given (docker-compose.yml mounts this
    // folder), run as Grafana and the ClickHouse plugin run it: variables
    // resolved by their own queries for the range, then the template
    // service, then the plugin's macros (spillway_e2e::grafana::dashboard).
    let datasources: BTreeSet<String> = ["spillway-clickhouse".to_owned()].into();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut dashboards = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        dashboards.push(
            Dashboard::parse(&text, &datasources).with_context(|| path.display().to_string())?,
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // The host variable's values are host ids (its texts are host names).
    let chosen: BTreeMap<String, String> = [("host".to_owned(), host.clone())].into();
    let tiers = ["samples_all", "samples_1m_all", "samples_1h_all"];
    let mut empty = Vec::new();
    let mut ran = 0;
    // Each range reads its own tier: raw rows up to an hour, the 1-minute
    // tier up to three days, the 1-hour tier beyond.
    for (range, tier) in [(3600, tiers[0]), (86400, tiers[1]), (30 * 86400, tiers[2])] {
        let range = TimeRange {
            from: now - range,
            to: now,
        };
        for dashboard in &dashboards {
            let values = dashboard
                .resolve(range, &chosen, |sql| {
                    let env = &env;
                    let db = &db;
                    async move {
                        let text = run_on(env, 0, db, &sql, "TSVWithNamesAndTypes").await?;
                        Frame::from_tsv_with_names_and_types(&text)
                    }
                })
                .await?;
            ensure!(
                values.get("samples").map(String::as_str) == Some(tier),
                "range {range:?} reads {values:?}"
            );
            ensure!(
                values.get("host") == Some(&host),
                "the host variable does not offer {host}: {values:?}"
            );
            for target in dashboard.targets()? {
                let sql = dashboard.expand(&target.sql, &values, range)?;
                // One table per query, and only `_all` tables: the same
                // dashboard serves one server and a cluster.
                let tables: Vec<String> = sql
                    .split("FROM ")
                    .skip(1)
                    .map(|rest| {
                        rest.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .filter(|name: &String| !name.is_empty())
                    .collect();
                for table in &tables {
                    ensure!(
                        table.ends_with("_all"),
                        "`{}` reads `{table}`, not an _all table",
                        target.panel
                    );
                }
                let read: BTreeSet<&String> = tables
                    .iter()
                    .filter(|t| tiers.contains(&t.as_str()))
                    .collect();
                ensure!(
                    read.len() <= 1,
                    "`{}` reads several tiers: {read:?}",
                    target.panel
                );
                let results = run_everywhere(&env, &db, &sql)
                    .await
                    .with_context(|| format!("`{}`:\n{sql}", target.panel))?;
                if results.concat().trim().is_empty() {
                    empty.push(format!("{} ({tier})", target.panel));
                }
                ran += 1;
            }
        }
    }
    // Every panel shows this host's data or the synthetic hosts'.
    ensure!(empty.is_empty(), "panels without data: {empty:?}");
    ensure!(ran >= 3 * 20, "only {ran} dashboard queries ran");
    println!(
        "{} documented queries and {ran} dashboard queries ran",
        queries.len()
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

/// A panel the docs point at (`the dashboard's "X" panel`, `panel "X"`)
/// must be on a provisioned dashboard.
#[test]
fn every_panel_the_docs_name_is_on_a_dashboard() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let datasources: BTreeSet<String> = ["spillway-clickhouse".to_owned()].into();
    let mut titles = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("deploy/grafana/dashboards"))? {
        let text = std::fs::read_to_string(entry?.path())?;
        titles.extend(Dashboard::parse(&text, &datasources)?.panel_titles());
    }
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        docs.push(entry?.path());
    }
    let mut named = 0;
    for doc in docs {
        let text = std::fs::read_to_string(&doc)?.replace('\n', " ");
        let quoted: Vec<&str> = text.split('"').collect();
        // Odd pieces are quoted; a quote followed by " panel" or preceded
        // by "panel " names a panel.
        for (i, piece) in quoted.iter().enumerate().skip(1).step_by(2) {
            let after = quoted.get(i + 1).copied().unwrap_or_default();
            let before = quoted[i - 1];
            if after.starts_with(" panel") || before.ends_with("panel ") {
                ensure!(
                    titles.contains(*piece),
                    "{} names a panel \"{piece}\" that no dashboard has",
                    doc.display()
                );
                named += 1;
            }
        }
    }
    ensure!(named >= 2, "only {named} panels named in the docs");
    Ok(())
}
