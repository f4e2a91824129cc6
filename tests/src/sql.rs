//! The SQL users run: the queries of docs/queries.md, read from the file.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::TestEnv;

/// A documented query and what its result must contain.
pub struct Documented {
    /// Its heading.
    pub title: String,
    /// `rows`, or a string the results must contain.
    pub expect: String,
    /// The SQL.
    pub sql: String,
}

/// Reads every ```sql block of docs/queries.md with the `<!-- expect: X -->`
/// line before it: `rows` (some shard returns a row) or a string that must
/// appear in the results.
pub fn documented_queries() -> Result<Vec<Documented>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/queries.md");
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    let (mut title, mut expect) = (String::new(), None::<String>);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("## ") {
            title = t.to_owned();
        } else if let Some(e) = line
            .strip_prefix("<!-- expect: ")
            .and_then(|e| e.strip_suffix(" -->"))
        {
            expect = Some(e.to_owned());
        } else if line == "```sql" {
            let sql: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let Some(expect) = expect.take() else {
                bail!("query `{title}` has no <!-- expect: --> line");
            };
            out.push(Documented {
                title: title.clone(),
                expect,
                sql: sql.join("\n"),
            });
        }
    }
    Ok(out)
}

/// The tables that exist per shard and as `<table>_all` over every shard.
const SHARDED: [&str; 7] = [
    "samples",
    "samples_1m",
    "samples_1h",
    "agent_status",
    "agent_status_latest",
    "ingest_quality",
    "ingester_status",
];

/// The query over one server's own tables: each `<table>_all` the recipes
/// read becomes `<table>`.
pub fn per_shard(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.strip_suffix("_all") {
            Some(stem) if SHARDED.contains(&stem) => out.push_str(stem),
            _ => out.push_str(word),
        }
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Runs `sql` on one shard; returns the result as text in `format`.
pub async fn run_on(
    env: &TestEnv,
    shard: usize,
    db: &str,
    sql: &str,
    format: &str,
) -> Result<String> {
    let bytes = env
        .clickhouse(shard)
        .with_database(db)
        .query(sql)
        .fetch_bytes(format)?
        .collect()
        .await
        .with_context(|| format!("shard {shard}:\n{sql}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `sql` on every shard; returns the shards' TSV results.
pub async fn run_everywhere(env: &TestEnv, db: &str, sql: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for shard in 0..env.clickhouse_urls.len() {
        out.push(run_on(env, shard, db, sql, "TSV").await?);
    }
    Ok(out)
}

/// The table that takes `samples` rows written directly (synthetic rows):
/// `samples_in` on a legacy server with replicated tiers (migration 0008),
/// whose views feed `samples` and the tiers; else `samples` itself.
pub async fn samples_entry(ch: &clickhouse::Client) -> Result<&'static str> {
    let entry: u64 = ch
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'samples_in'")
        .fetch_one()
        .await?;
    Ok(if entry > 0 { "samples_in" } else { "samples" })
}
