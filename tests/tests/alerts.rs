//! The provisioned Grafana alert rules, read and evaluated as Grafana does
//! (`spillway_e2e::grafana::alerting`, which follows Grafana's source field
//! by field): every rule file loads with the environment Compose gives
//! Grafana, no `$` sits where Grafana would not replace it, and each rule's
//! query runs on a real ClickHouse holding synthetic hosts that must fire
//! and hosts that must not, its expressions applied with Grafana's
//! semantics. docs/alerts.md's plain-SQL version of every rule must be the
//! rule's query and threshold, and name the same firing hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use spillway_e2e::grafana::alerting::{Expression, Rule, State, read_rules};
use spillway_e2e::grafana::plugin::{Frame, Labels};
use spillway_e2e::ingest::migrate;
use spillway_e2e::sql::{run_on, samples_entry};
use spillway_e2e::{TestEnv, compose, unique_name};

fn deploy(path: &str) -> PathBuf {
    compose::repo().join("deploy/grafana").join(path)
}

/// The uids of the provisioned data sources.
fn datasources() -> Result<BTreeSet<String>> {
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir(deploy("provisioning/datasources"))? {
        let doc: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(entry?.path())?)?;
        for ds in doc["datasources"].as_sequence().into_iter().flatten() {
            uids.insert(
                ds["uid"]
                    .as_str()
                    .context("data source without uid")?
                    .to_owned(),
            );
        }
    }
    Ok(uids)
}

/// Grafana's environment in docker-compose.yml (its `environment` and
/// `env_file`, as Compose resolves them).
fn grafana_environment() -> Result<BTreeMap<String, String>> {
    Ok(compose::environment(
        &compose::resolved()?["services"]["grafana"],
    ))
}

/// Every rule of every file in the alerting provisioning folder.
fn provisioned_rules() -> Result<Vec<Rule>> {
    let env = grafana_environment()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("provisioning/alerting"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut rules = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        rules.extend(
            read_rules(&text, &env, &datasources()?).with_context(|| file.display().to_string())?,
        );
    }
    Ok(rules)
}

#[test]
fn the_rule_files_load_as_grafana_loads_them() -> Result<()> {
    let rules = provisioned_rules()?;
    ensure!(rules.len() >= 11, "only {} rules", rules.len());
    Ok(())
}

/// The rules file of 2026-12-01 put `${SPILLWAY_...}` and `$$A` into the
/// query models, which Grafana passes through untouched: every rule of it
/// fails to evaluate in a real Grafana, and must fail here.
#[test]
fn rules_with_environment_references_in_their_models_are_rejected() -> Result<()> {
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/alerting-2026-12-01.yaml");
    let text = std::fs::read_to_string(old)?;
    let err = read_rules(&text, &grafana_environment()?, &datasources()?)
        .err()
        .context("the 2026-12-01 rules were accepted")?;
    let err = format!("{err:#}");
    println!("{err}");
    ensure!(
        err.contains("${SPILLWAY_ALERT_CPU_WINDOW_SECONDS}"),
        "{err}"
    );
    ensure!(
        err.lines().count() >= 11,
        "not every rule was rejected:\n{err}"
    );
    Ok(())
}

/// Runs every data source query of `rule` as at `now` on the first server
/// (the queries read the `_all` tables) and evaluates the rule: the label
/// sets that fire, and every instance seen.
async fn evaluate(env: &TestEnv, db: &str, rule: &Rule) -> Result<(BTreeSet<Labels>, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut frames = BTreeMap::new();
    for (ref_id, sql) in rule.sql_at(now)? {
        let text = run_on(env, 0, db, &sql, "TSVWithNamesAndTypes")
            .await
            .with_context(|| format!("`{}` query {ref_id}", rule.title))?;
        frames.insert(ref_id, Frame::from_tsv_with_names_and_types(&text)?);
    }
    let instances = rule.evaluate(&frames)?;
    let fired = instances
        .iter()
        .flatten()
        .filter(|(_, s)| *s == State::Alerting)
        .map(|(l, _)| l.clone())
        .collect();
    Ok((fired, format!("{instances:?}")))
}

/// Whether some firing instance has `value` as a label value.
fn names(fired: &BTreeSet<Labels>, value: &str) -> bool {
    fired.iter().any(|l| l.values().any(|v| v == value))
}

/// Inserts synthetic rows: for every rule, hosts that must fire and hosts
/// that must not.
async fn load_hosts(env: &TestEnv, db: &str) -> Result<()> {
    let ch = env.clickhouse(0).with_database(db);
    let table = samples_entry(&ch).await?;
    let mut rows = Vec::new();
    let mut sample = |host: &str, ago: u64, metric: &str, labels: &str, value: f64| {
        rows.push(format!(
            "(now() - {ago}, toUInt64(toUInt32(now()) - {ago}) * 1000, '{host}', '{host}', '{metric}', \
             '{labels}', {value}, 'gauge', '', 'i-{host}', {seq})",
            seq = rows.len()
        ));
    };
    for ago in [5, 15] {
        sample(
            "cpu-hot",
            ago,
            "system.cpu.utilization",
            "cpu.mode=idle",
            0.04,
        );
        sample(
            "cpu-calm",
            ago,
            "system.cpu.utilization",
            "cpu.mode=idle",
            0.60,
        );
        sample(
            "disk-slow",
            ago,
            "system.disk.await",
            "system.device=sdb",
            0.200,
        );
        sample(
            "disk-fast",
            ago,
            "system.disk.await",
            "system.device=sda",
            0.002,
        );
    }
    // Memory: the latest reading counts, not the worst.
    sample("mem-full", 5, "system.memory.utilization", "", 0.95);
    sample("mem-ok", 40, "system.memory.utilization", "", 0.97);
    sample("mem-ok", 5, "system.memory.utilization", "", 0.50);
    // Filesystems: 5 GB more used in 3 hours with 5 GB free (full in hours);
    // 0.1 GB in 3 hours with 500 GB free (years).
    let fs = "system.filesystem.mountpoint=/data,system.filesystem.state=";
    for (host, ago, used, free) in [
        ("fs-filling", 3 * 3600, 100e9, 10e9),
        ("fs-filling", 60, 105e9, 5e9),
        ("fs-steady", 3 * 3600, 100e9, 500.1e9),
        ("fs-steady", 60, 100.1e9, 500e9),
    ] {
        sample(
            host,
            ago,
            "system.filesystem.usage",
            &format!("{fs}used"),
            used,
        );
        sample(
            host,
            ago,
            "system.filesystem.usage",
            &format!("{fs}free"),
            free,
        );
    }
    // Ticks: every 10 s until 5 minutes ago (30 intervals silent); every
    // 10 s until now; every 60 s until 100 s ago (under 2 of its intervals).
    for i in 0..30 {
        sample("host-gone", 300 + 10 * i, "system.uptime", "", 1.0);
        sample("host-alive", 5 + 10 * i, "system.uptime", "", 1.0);
    }
    for i in 0..10 {
        sample("host-slow-ticks", 100 + 60 * i, "system.uptime", "", 1.0);
    }
    ch.query(&format!(
        "INSERT INTO {table} (time, time_ms, host_id, hostname, metric, labels, value, kind, unit, \
         instance_id, seq) VALUES {}",
        rows.join(", ")
    ))
    .execute()
    .await?;

    ch.query(
        "INSERT INTO ingest_quality (period_start, period_end, ingester, host_id, instance_id, \
         records, first_seq, last_seq, gaps, late, duplicates, agent_dropped, freshness_p50_ms, \
         freshness_p99_ms, freshness_max_ms) VALUES \
         (now() - 120, now() - 60, 'e2e', 'gaps-host', 'i', 57, 0, 59, 3, 0, 0, 0, 900, 1500, 1700), \
         (now() - 120, now() - 60, 'e2e', 'gaps-none', 'i', 60, 0, 59, 0, 0, 0, 0, 900, 1500, 1700)",
    )
    .execute()
    .await?;

    // Spool: growing, and draining after an outage.
    let status = |host: &str, ago: u64, spool: u64| {
        format!(
            "(now() - {ago}, toUInt64(toUInt32(now()) - {ago}) * 1000, '{host}', '{host}', 'i', 'e2e', \
             1000, 1, {bytes}, {spool}, [], [], '')",
            bytes = spool * 1000
        )
    };
    ch.query(&format!(
        "INSERT INTO agent_status (time, time_ms, host_id, hostname, instance_id, agent_version, \
         uptime_ms, last_seq, spool_bytes, spool_records, dropped_first, dropped_last, last_error) \
         VALUES {}",
        [
            status("spool-growing", 300, 10),
            status("spool-growing", 30, 50),
            status("spool-draining", 300, 50),
            status("spool-draining", 30, 10),
        ]
        .join(", ")
    ))
    .execute()
    .await?;
    Ok(())
}

/// Ingester reports: (ingester, seconds ago, dead letters, lag, paused).
async fn load_ingesters(env: &TestEnv, db: &str, rows: &[(&str, u64, u64, i64, u8)]) -> Result<()> {
    let values: Vec<String> = rows
        .iter()
        .map(|(name, ago, dead, lag, paused)| {
            format!("(now() - {ago}, '{name}', 100, 4000, {dead}, 0, {lag}, 2, 0, {paused})")
        })
        .collect();
    env.clickhouse(0)
        .with_database(db)
        .query(&format!(
            "INSERT INTO ingester_status (time, ingester, records, rows_inserted, dead_letters, \
             insert_retries, consumer_lag, assigned_partitions, in_flight_bytes, paused) VALUES {}",
            values.join(", ")
        ))
        .execute()
        .await?;
    Ok(())
}

/// The plain-SQL checks of docs/alerts.md: (heading, SQL).
fn documented_checks() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(compose::repo().join("docs/alerts.md"))?;
    let mut out = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("## ") {
            title = t.to_owned();
        } else if line == "```sql" {
            let sql: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            out.push((title.clone(), sql.join("\n")));
        }
    }
    Ok(out)
}

/// A rule as docs/alerts.md writes it for cron: its query, kept to the rows
/// past its threshold.
fn plain_sql(rule: &Rule) -> Result<String> {
    let (_, _, sql, _) = rule.queries.first().context("rule without a query")?;
    let Some(Expression::Threshold { kind, params, .. }) = rule.expressions.get(&rule.condition)
    else {
        anyhow::bail!("`{}`: the condition is not a threshold", rule.title);
    };
    let op = match kind.as_str() {
        "gt" => ">",
        "lt" => "<",
        other => anyhow::bail!(
            "`{}`: threshold {other} has no plain-SQL form here",
            rule.title
        ),
    };
    Ok(format!(
        "SELECT *\nFROM\n(\n{sql}\n)\nWHERE value {op} {}",
        params[0]
    ))
}

#[tokio::test]
#[ignore = "needs the local stack"]
async fn alert_rules_fire_for_the_hosts_they_should_and_no_others() -> Result<()> {
    let env = TestEnv::from_env();
    let rules = provisioned_rules()?;
    ensure!(rules.len() >= 11, "only {} rules", rules.len());
    // Which instance of each rule must fire (a label value) and which must not.
    let expected: BTreeMap<&str, (&str, &str)> = [
        ("CPU busy", ("cpu-hot", "cpu-calm")),
        ("Memory used", ("mem-full", "mem-ok")),
        ("Disk I/O wait", ("disk-slow", "disk-fast")),
        ("Filesystem filling up", ("fs-filling", "fs-steady")),
        ("Host silent", ("host-gone", "host-alive")),
        ("Ticks missing", ("gaps-host", "gaps-none")),
        ("Records dead-lettered", ("ingester-dlq", "ingester-clean")),
        ("Consumer lag", ("ingester-behind", "ingester-current")),
        ("Ingester paused", ("ingester-stuck", "ingester-recovered")),
        ("Agent spool growing", ("spool-growing", "spool-draining")),
    ]
    .into_iter()
    .collect();

    let dir = tempfile::tempdir()?;
    let db = unique_name("e2e_alerts");
    migrate(&env, dir.path(), "unused", &db)?;
    let silent = rules
        .iter()
        .find(|r| r.title == "No ingester reporting")
        .context("no `No ingester reporting` rule")?;
    // No ingester has ever reported, then only long ago: the pipeline is down.
    let (fired, seen) = evaluate(&env, &db, silent).await?;
    ensure!(
        fired.len() == 1,
        "`No ingester reporting` silent on an empty table: {seen}"
    );
    load_ingesters(&env, &db, &[("ingester-old", 900, 0, 0, 0)]).await?;
    let (fired, seen) = evaluate(&env, &db, silent).await?;
    ensure!(
        fired.len() == 1,
        "no ingester for 15 min did not fire: {seen}"
    );

    load_hosts(&env, &db).await?;
    load_ingesters(
        &env,
        &db,
        &[
            ("ingester-dlq", 60, 5, 0, 0),
            ("ingester-clean", 60, 0, 0, 0),
            ("ingester-behind", 30, 0, 500_000, 0),
            ("ingester-current", 90, 0, 900_000, 0),
            ("ingester-current", 30, 0, 10, 0),
            ("ingester-stuck", 150, 0, 0, 1),
            ("ingester-stuck", 90, 0, 0, 1),
            ("ingester-stuck", 30, 0, 0, 1),
            ("ingester-recovered", 150, 0, 0, 1),
            ("ingester-recovered", 90, 0, 0, 1),
            ("ingester-recovered", 30, 0, 0, 0),
        ],
    )
    .await?;
    let (fired, seen) = evaluate(&env, &db, silent).await?;
    ensure!(fired.is_empty(), "ingesters reported 30 s ago, yet: {seen}");

    for rule in &rules {
        if rule.title == silent.title {
            continue;
        }
        let (fire, calm) = expected
            .get(rule.title.as_str())
            .with_context(|| format!("rule `{}` has no test hosts", rule.title))?;
        let (fired, seen) = evaluate(&env, &db, rule).await?;
        ensure!(
            names(&fired, fire),
            "`{}`: {fire} did not fire; instances {seen}",
            rule.title
        );
        ensure!(
            !names(&fired, calm),
            "`{}`: {calm} fired; instances {seen}",
            rule.title
        );
        println!("rule ok: {} (fires for {fired:?})", rule.title);
    }

    // docs/alerts.md: one plain-SQL check per rule, the rule's query and
    // threshold, naming the same rows.
    let checks = documented_checks()?;
    for rule in &rules {
        let (_, sql) = checks
            .iter()
            .find(|(t, _)| *t == rule.title)
            .with_context(|| format!("docs/alerts.md has no SQL under `## {}`", rule.title))?;
        let want = plain_sql(rule)?;
        ensure!(
            *sql == want,
            "docs/alerts.md `{}` is not the rule's query and threshold; it should read:\n{want}",
            rule.title
        );
        let text = run_on(&env, 0, &db, sql, "TSVWithNamesAndTypes").await?;
        let documented = Frame::from_tsv_with_names_and_types(&text)?.rows.len();
        let (fired, _) = evaluate(&env, &db, rule).await?;
        ensure!(
            documented == fired.len(),
            "`{}`: docs/alerts.md finds {documented} rows, the rule fires {fired:?}",
            rule.title
        );
    }
    println!("{} rules and their documented checks ran", rules.len());
    Ok(())
}
