//! The provisioned Grafana alert rules, run as Grafana runs them: each rule's
//! query with the thresholds of deploy/grafana/alerting.env substituted,
//! against a real ClickHouse holding synthetic hosts that must fire and
//! hosts that must not, and the rule's math expression applied to each row.
//! docs/alerts.md's plain-SQL version of every rule runs too and must name
//! the same firing hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use spillway_e2e::ingest::migrate;
use spillway_e2e::sql::{run_on, samples_entry};
use spillway_e2e::{TestEnv, unique_name};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana")
        .join(path)
}

/// `KEY=VALUE` lines of an env file (comments and blank lines skipped).
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .context(format!("not KEY=VALUE: {line}"))?;
        vars.insert(k.to_owned(), v.to_owned());
    }
    Ok(vars)
}

/// Grafana's environment substitution in provisioning files: `$$` is a
/// literal `$`; `${NAME}` and `$NAME` are the variable. An unset variable is
/// an error here (Grafana would substitute an empty string).
fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').context("unclosed ${")?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let value = vars
            .get(name)
            .with_context(|| format!("${name} is not set in alerting.env"))?;
        out.push_str(value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// [`interpolate`] over every string value of a parsed file, as Grafana
/// does (comments and keys are left alone).
fn interpolate_values(v: &mut serde_norway::Value, vars: &BTreeMap<String, String>) -> Result<()> {
    match v {
        serde_norway::Value::String(s) => *s = interpolate(s, vars)?,
        serde_norway::Value::Sequence(items) => {
            for item in items {
                interpolate_values(item, vars)?;
            }
        }
        serde_norway::Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                interpolate_values(item, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One provisioned rule, as Grafana evaluates it.
struct Rule {
    title: String,
    sql: String,
    /// `$A > 85` and the like: the comparison and its threshold.
    op: String,
    threshold: f64,
}

impl Rule {
    fn fires(&self, value: f64) -> bool {
        match self.op.as_str() {
            ">" => value > self.threshold,
            ">=" => value >= self.threshold,
            "<" => value < self.threshold,
            "<=" => value <= self.threshold,
            _ => false,
        }
    }
}

/// Every rule of every file in the alerting provisioning folder.
fn provisioned_rules(vars: &BTreeMap<String, String>) -> Result<Vec<Rule>> {
    let dir = deploy("provisioning/alerting");
    let mut rules = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files {
        let mut doc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&file)?)
            .with_context(|| format!("{} is not YAML", file.display()))?;
        interpolate_values(&mut doc, vars).with_context(|| file.display().to_string())?;
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            for r in group["rules"]
                .as_sequence()
                .context("group without rules")?
            {
                rules.push(parse_rule(r)?);
            }
        }
    }
    Ok(rules)
}

fn parse_rule(r: &serde_norway::Value) -> Result<Rule> {
    let title = r["title"]
        .as_str()
        .context("rule without title")?
        .to_owned();
    let data = r["data"].as_sequence().context("rule without data")?;
    let query = |id: &str| {
        data.iter()
            .find(|d| d["refId"].as_str() == Some(id))
            .with_context(|| format!("`{title}` has no query {id}"))
    };
    ensure!(
        r["condition"].as_str() == Some("B"),
        "`{title}`: condition is not B"
    );
    let a = query("A")?;
    ensure!(
        a["datasourceUid"].as_str() == Some("spillway-clickhouse"),
        "`{title}` does not query the provisioned ClickHouse"
    );
    let sql = a["model"]["rawSql"]
        .as_str()
        .context("query A without rawSql")?;
    let expression = query("B")?["model"]["expression"]
        .as_str()
        .context("B without expression")?;
    let mut words = expression.split_whitespace();
    let (Some("$A"), Some(op), Some(threshold), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("`{title}`: expression `{expression}` is not `$A <op> <number>`");
    };
    if let Some(d) = r["for"].as_str() {
        ensure!(
            d.ends_with('s') || d.ends_with('m') || d.ends_with('h'),
            "`{title}`: `for: {d}` is not a duration"
        );
    }
    let threshold = threshold
        .parse()
        .with_context(|| format!("`{title}`: threshold {threshold}"))?;
    Ok(Rule {
        title,
        sql: sql.to_owned(),
        op: op.to_owned(),
        threshold,
    })
}

/// Runs `sql` on the first server (it reads the `_all` tables, so it sees
/// every shard) and returns each row's label columns joined by `/` with its
/// `value`.
async fn evaluate(env: &TestEnv, db: &str, sql: &str) -> Result<Vec<(String, f64)>> {
    let text = run_on(env, 0, db, sql, "TSVWithNames").await?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let value_at = header
        .iter()
        .position(|c| *c == "value")
        .with_context(|| format!("no `value` column in {header:?}"))?;
    let mut rows = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        let value: f64 = cells[value_at]
            .parse()
            .with_context(|| format!("value {line}"))?;
        let labels: Vec<&str> = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != value_at)
            .map(|(_, c)| *c)
            .collect();
        rows.push((labels.join("/"), value));
    }
    Ok(rows)
}

/// The rows of `rule` that fire, and every row seen.
async fn firing(env: &TestEnv, db: &str, rule: &Rule) -> Result<(BTreeSet<String>, String)> {
    let rows = evaluate(env, db, &rule.sql).await?;
    let fired = rows
        .iter()
        .filter(|(_, v)| rule.fires(*v))
        .map(|(l, _)| l.clone())
        .collect();
    Ok((fired, format!("{rows:?}")))
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/alerts.md");
    let text = std::fs::read_to_string(path)?;
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

#[tokio::test]
#[ignore = "needs the local stack"]
async fn alert_rules_fire_for_the_hosts_they_should_and_no_others() -> Result<()> {
    let env = TestEnv::from_env();
    let vars = read_env_file(&deploy("alerting.env"))?;
    let rules = provisioned_rules(&vars)?;
    ensure!(rules.len() >= 11, "only {} rules", rules.len());
    // Which row of each rule must fire and which must not.
    let expected: BTreeMap<&str, (&str, &str)> = [
        ("CPU busy", ("cpu-hot/cpu-hot", "cpu-calm/cpu-calm")),
        ("Memory used", ("mem-full/mem-full", "mem-ok/mem-ok")),
        (
            "Disk I/O wait",
            ("disk-slow/disk-slow/sdb", "disk-fast/disk-fast/sda"),
        ),
        (
            "Filesystem filling up",
            ("fs-filling/fs-filling//data", "fs-steady/fs-steady//data"),
        ),
        (
            "Host silent",
            ("host-gone/host-gone", "host-alive/host-alive"),
        ),
        ("Ticks missing", ("gaps-host", "gaps-none")),
        ("Records dead-lettered", ("ingester-dlq", "ingester-clean")),
        ("Consumer lag", ("ingester-behind", "ingester-current")),
        ("Ingester paused", ("ingester-stuck", "ingester-recovered")),
        (
            "Agent spool growing",
            (
                "spool-growing/spool-growing",
                "spool-draining/spool-draining",
            ),
        ),
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
    ensure!(
        firing(&env, &db, silent).await?.0.len() == 1,
        "`No ingester reporting` silent on an empty table"
    );
    load_ingesters(&env, &db, &[("ingester-old", 900, 0, 0, 0)]).await?;
    let (fired, rows) = firing(&env, &db, silent).await?;
    ensure!(
        fired.len() == 1,
        "no ingester for 15 min did not fire: {rows}"
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
    let (fired, rows) = firing(&env, &db, silent).await?;
    ensure!(fired.is_empty(), "ingesters reported 30 s ago, yet: {rows}");

    for rule in &rules {
        if rule.title == silent.title {
            continue;
        }
        let (fire, calm) = expected
            .get(rule.title.as_str())
            .with_context(|| format!("rule `{}` has no test hosts", rule.title))?;
        let (fired, rows) = firing(&env, &db, rule).await?;
        ensure!(
            fired.contains(*fire),
            "`{}`: {fire} did not fire; rows {rows}",
            rule.title
        );
        ensure!(
            !fired.contains(*calm),
            "`{}`: {calm} fired; rows {rows}",
            rule.title
        );
        println!("rule ok: {} (fires for {fired:?})", rule.title);
    }

    // docs/alerts.md: one plain-SQL check per rule, naming the same rows.
    let checks = documented_checks()?;
    for rule in &rules {
        let (_, sql) = checks
            .iter()
            .find(|(t, _)| *t == rule.title)
            .with_context(|| format!("docs/alerts.md has no SQL under `## {}`", rule.title))?;
        ensure!(
            sql.contains(rule.sql.trim()),
            "docs/alerts.md `{}` is not the provisioned query with alerting.env's values:\n{sql}",
            rule.title
        );
        let documented: BTreeSet<String> = evaluate(&env, &db, sql)
            .await?
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        let (fired, _) = firing(&env, &db, rule).await?;
        ensure!(
            documented == fired,
            "`{}`: docs/alerts.md finds {documented:?}, the rule {fired:?}",
            rule.title
        );
    }
    println!("{} rules and their documented checks ran", rules.len());
    Ok(())
}

#[test]
fn interpolation_follows_grafana() -> Result<()> {
    let vars: BTreeMap<String, String> = [("X".to_owned(), "85".to_owned())].into();
    assert_eq!(interpolate("$$A > ${X} and $X$", &vars).ok(), None);
    assert_eq!(interpolate("$$A > ${X} and $X", &vars)?, "$A > 85 and 85");
    assert!(interpolate("${Y}", &vars).is_err());
    Ok(())
}
