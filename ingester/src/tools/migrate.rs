//! Schema migrations: the files of `migrations/`, embedded in the binary and
//! applied in order to every shard by `spillway-ingester migrate`.
//!
//! Each shard tracks what it applied in `schema_migrations` (file name,
//! checksum). Applying twice changes nothing; a file whose checksum changed
//! after it was applied stops the run with an error. A file may start with
//! `-- min_server_version: MAJOR.MINOR`; on an older server it is skipped,
//! reported and not recorded, so a run after a server upgrade applies it.
//!
//! **Profiles.** One wire and one set of column names and RowBinary types,
//! two physical layouts: `modern` (ClickHouse 24.8 and later:
//! LowCardinality, codecs, TTL, deduplication windows) and `legacy` (older
//! servers down to 18.16: plain types, retention by partition drops). A
//! migration may come as one file for both (`0001_samples.sql`) or as one
//! file per profile (`0006_storage_v2.modern.sql`, `.legacy.sql`); the
//! runner applies the variant of the shard's profile. A shard keeps the
//! profile its tables were built with; a new one takes it from the server's
//! version (or `migrate --profile`).
//!
//! **Guards.** ClickHouse 18.16 has no `IF [NOT] EXISTS` for columns, so a
//! statement may be preceded by `-- if: SELECT ...`: it runs only when that
//! query returns a non-zero number. Files stay safe to re-run after a
//! failure half-way.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;

use crate::config::{RetentionConfig, ShardConfig};
use crate::sink::parse_version;

/// A physical layout of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Plain types, no codecs or TTL: ClickHouse 18.16 up to 24.7.
    Legacy,
    /// LowCardinality, codecs, TTL, deduplication windows: 24.8 and later.
    Modern,
}

/// The oldest server the modern profile is built for: 24.8, the oldest
/// long-term-support release whose insert deduplication covers materialized
/// views the way current releases do (the exactly-once path relies on it).
pub const MODERN_MIN_VERSION: (u32, u32) = (24, 8);

impl Profile {
    /// The profile for a server version.
    pub fn for_server(version: (u32, u32)) -> Profile {
        if version >= MODERN_MIN_VERSION {
            Profile::Modern
        } else {
            Profile::Legacy
        }
    }

    /// `legacy` or `modern`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Legacy => "legacy",
            Profile::Modern => "modern",
        }
    }

    /// The profile a migration file name is for, if only one.
    pub fn of_file(name: &str) -> Option<Profile> {
        if name.ends_with(".legacy.sql") {
            Some(Profile::Legacy)
        } else if name.ends_with(".modern.sql") {
            Some(Profile::Modern)
        } else {
            None
        }
    }
}

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// File name, e.g. `0001_samples.sql`; its order is the apply order.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

impl Migration {
    /// What the variants of one migration share: the name up to the first
    /// `.` (`0006_storage_v2`).
    pub fn version(&self) -> &'static str {
        self.name.split('.').next().unwrap_or(self.name)
    }
}

/// Every migration, in order. A unit test checks that this list matches
/// the `migrations/` directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_samples.sql",
        sql: include_str!("../../../migrations/0001_samples.sql"),
    },
    Migration {
        name: "0002_agent_status.sql",
        sql: include_str!("../../../migrations/0002_agent_status.sql"),
    },
    Migration {
        name: "0003_samples_1m.sql",
        sql: include_str!("../../../migrations/0003_samples_1m.sql"),
    },
    Migration {
        name: "0004_ingest_quality.sql",
        sql: include_str!("../../../migrations/0004_ingest_quality.sql"),
    },
    Migration {
        name: "0005_ingester_status.sql",
        sql: include_str!("../../../migrations/0005_ingester_status.sql"),
    },
    Migration {
        name: "0006_storage_v2.legacy.sql",
        sql: include_str!("../../../migrations/0006_storage_v2.legacy.sql"),
    },
    Migration {
        name: "0006_storage_v2.modern.sql",
        sql: include_str!("../../../migrations/0006_storage_v2.modern.sql"),
    },
    Migration {
        name: "0007_exactly_once.legacy.sql",
        sql: include_str!("../../../migrations/0007_exactly_once.legacy.sql"),
    },
    Migration {
        name: "0007_exactly_once.modern.sql",
        sql: include_str!("../../../migrations/0007_exactly_once.modern.sql"),
    },
    Migration {
        name: "0008_rollups_exactly_once.legacy.sql",
        sql: include_str!("../../../migrations/0008_rollups_exactly_once.legacy.sql"),
    },
    Migration {
        name: "0008_rollups_exactly_once.modern.sql",
        sql: include_str!("../../../migrations/0008_rollups_exactly_once.modern.sql"),
    },
    Migration {
        name: "0009_replicas.legacy.sql",
        sql: include_str!("../../../migrations/0009_replicas.legacy.sql"),
    },
    Migration {
        name: "0009_replicas.modern.sql",
        sql: include_str!("../../../migrations/0009_replicas.modern.sql"),
    },
];

/// What to check when a server cannot be reached at all.
fn hint(e: &clickhouse::error::Error) -> &'static str {
    match e {
        clickhouse::error::Error::Network(_) => {
            " (no ClickHouse answers at that URL: set `clickhouse.shards` in the configuration \
             or SPILLWAY_INGESTER_CLICKHOUSE_URLS)"
        }
        _ => "",
    }
}

/// Migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The shard's TLS settings cannot be used.
    #[error("shard {url}: {source}")]
    Tls {
        /// The shard.
        url: String,
        /// What is wrong.
        source: crate::tls::TlsError,
    },
    /// ClickHouse refused or could not be reached. (The client's error is
    /// the source: printed once, after this, by whoever prints the chain.)
    #[error("shard {url}: {context}{}", hint(source))]
    ClickHouse {
        /// The shard.
        url: String,
        /// What was being done.
        context: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// The shard's tables are in another profile than the one asked for.
    #[error(
        "shard {url}: its tables are in the {tables} profile ({file} applied); \
         `--profile {asked}` cannot change that: see docs/operations.md, \"Schema profiles\""
    )]
    ProfileMismatch {
        /// The shard.
        url: String,
        /// The profile of the tables.
        tables: &'static str,
        /// A file that shows it.
        file: String,
        /// The profile asked for.
        asked: &'static str,
    },
    /// An applied file was edited afterwards.
    #[error(
        "shard {url}: migration {name} changed since it was applied (checksum {applied} became {now}); \
         add a new migration instead of editing an applied one"
    )]
    Changed {
        /// The shard.
        url: String,
        /// The file.
        name: String,
        /// Checksum recorded.
        applied: String,
        /// Checksum now.
        now: String,
    },
}

/// What a run did on one shard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardReport {
    /// The shard's URL.
    pub url: String,
    /// The server's version string.
    pub server_version: String,
    /// The profile of the shard's tables, and why.
    pub profile: Option<(Profile, String)>,
    /// Files applied now.
    pub applied: Vec<String>,
    /// Files skipped now, with why.
    pub skipped: Vec<(String, String)>,
    /// Files that were already applied (or skipped) before.
    pub unchanged: Vec<String>,
    /// `_all` tables created (or re-created after a schema change).
    pub distributed: Vec<String>,
    /// TTLs set from `[retention]` (modern profile).
    pub ttl: Vec<String>,
}

/// What `migrate` is asked to do besides the files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster of the Distributed `_all` tables; without one, the `_all`
    /// tables read the local table (Merge), so the same queries serve both.
    pub cluster: Option<String>,
    /// A profile for a shard that has none yet (default: by server version).
    pub profile: Option<Profile>,
    /// Retention, for the modern profile's TTLs.
    pub retention: RetentionConfig,
    /// Apply only the migrations up to this version (`0005`); for tests of
    /// upgrades and for staged roll-outs.
    pub until: Option<String>,
}

/// The tables that get an `<name>_all` twin: Distributed over the cluster
/// when one is configured, else a Merge table over the local one.
pub const DISTRIBUTED: &[&str] = &[
    "samples",
    "samples_1m",
    "samples_1h",
    "agent_status",
    "agent_status_latest",
    "ingest_quality",
    "ingester_status",
];

/// Tables with a TTL on the modern profile: (table, time column, the
/// retention setting that gives its days).
pub fn ttls(r: &RetentionConfig) -> [(&'static str, &'static str, u32); 6] {
    [
        ("samples", "time", r.samples_days),
        ("samples_1m", "minute", r.rollup_days),
        ("samples_1h", "hour", r.rollup_1h_days),
        ("agent_status", "time", r.status_days),
        ("ingest_quality", "period_end", r.quality_days),
        ("ingest_journal", "time", r.journal_days),
    ]
}

/// A stable checksum of a file's text.
pub fn checksum(sql: &str) -> String {
    format!("{:016x}", twox_hash::XxHash64::oneshot(0, sql.as_bytes()))
}

/// The `min_server_version` a file declares, as (major, minor).
pub fn min_server_version(sql: &str) -> Option<(u32, u32)> {
    sql.lines()
        .take_while(|l| l.starts_with("--"))
        .find_map(|l| {
            l.trim_start_matches('-')
                .trim()
                .strip_prefix("min_server_version:")
        })
        .and_then(|v| parse_version(v.trim()))
}

/// One statement of a file, with its guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// A query whose non-zero result lets the statement run.
    pub guard: Option<String>,
    /// The statement.
    pub sql: String,
}

/// Splits a file into statements: `;` ends a statement at the end of a line.
/// Comment lines are dropped, but for `-- if: QUERY` before a statement.
pub fn statements(sql: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut guard = None;
    for line in sql.lines() {
        let trimmed = line.trim_start();
        if let Some(comment) = trimmed.strip_prefix("--") {
            if let Some(q) = comment.trim().strip_prefix("if:") {
                guard = Some(q.trim().to_owned());
            }
            continue;
        }
        let trimmed = line.trim_end();
        if let Some(stmt) = trimmed.strip_suffix(';') {
            cur.push_str(stmt);
            if !cur.trim().is_empty() {
                out.push(Statement {
                    guard: guard.take(),
                    sql: cur.trim().to_owned(),
                });
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(Statement {
            guard: guard.take(),
            sql: cur.trim().to_owned(),
        });
    }
    out
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AppliedRow {
    version: String,
    checksum: String,
}

#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct NewRow<'a> {
    version: &'a str,
    checksum: &'a str,
}

/// The profile for a shard: the one its applied files show, else the one
/// asked for, else the server's.
fn choose_profile(
    url: &str,
    applied: &[AppliedRow],
    asked: Option<Profile>,
    server: (u32, u32),
    server_version: &str,
) -> Result<(Profile, String), MigrateError> {
    if let Some((file, tables)) = applied
        .iter()
        .find_map(|r| Some((r.version.clone(), Profile::of_file(&r.version)?)))
    {
        if let Some(asked) = asked.filter(|a| *a != tables) {
            return Err(MigrateError::ProfileMismatch {
                url: url.to_owned(),
                tables: tables.name(),
                file,
                asked: asked.name(),
            });
        }
        return Ok((
            tables,
            format!("recorded by {file}, which built the tables"),
        ));
    }
    Ok(match asked {
        Some(p) => (p, "asked for with --profile".to_owned()),
        None => {
            let p = Profile::for_server(server);
            let why = match p {
                Profile::Modern => format!(
                    "ClickHouse {server_version} is {}.{} or newer",
                    MODERN_MIN_VERSION.0, MODERN_MIN_VERSION.1
                ),
                Profile::Legacy => format!(
                    "ClickHouse {server_version} is older than {}.{}",
                    MODERN_MIN_VERSION.0, MODERN_MIN_VERSION.1
                ),
            };
            (p, why)
        }
    })
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct EngineRow {
    engine_full: String,
}

/// Applies every migration to one shard, creates the `_all` tables and, on
/// the modern profile, sets the TTLs from `options.retention`.
pub async fn migrate_shard(
    shard: &ShardConfig,
    options: &Options,
) -> Result<ShardReport, MigrateError> {
    let url = shard.url.clone();
    let err = |context: &str| {
        let url = url.clone();
        let context = context.to_owned();
        move |source| MigrateError::ClickHouse {
            url,
            context,
            source,
        }
    };
    let tls = |source| MigrateError::Tls {
        url: shard.url.clone(),
        source,
    };
    let root = crate::sink::client(shard)
        .map_err(tls)?
        .with_database("default");
    root.query(&format!("CREATE DATABASE IF NOT EXISTS {}", shard.database))
        .execute()
        .await
        .map_err(err("create database"))?;
    let db = crate::sink::client(shard).map_err(tls)?;
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, checksum String, \
         applied_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version",
    )
    .execute()
    .await
    .map_err(err("create schema_migrations"))?;
    let server_version: String = db
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(err("read server version"))?;
    let server = parse_version(&server_version).unwrap_or((0, 0));
    let applied: Vec<AppliedRow> = db
        .query("SELECT version, checksum FROM schema_migrations")
        .fetch_all()
        .await
        .map_err(err("read schema_migrations"))?;
    let (profile, why) = choose_profile(&url, &applied, options.profile, server, &server_version)?;
    let mut report = ShardReport {
        url: url.clone(),
        server_version,
        profile: Some((profile, why)),
        ..Default::default()
    };
    for m in MIGRATIONS {
        if Profile::of_file(m.name).is_some_and(|p| p != profile) {
            continue;
        }
        if options
            .until
            .as_deref()
            .is_some_and(|until| m.version() > until && !m.version().starts_with(until))
        {
            continue;
        }
        let sum = checksum(m.sql);
        if let Some(row) = applied.iter().find(|r| r.version == m.name) {
            if row.checksum != sum {
                return Err(MigrateError::Changed {
                    url,
                    name: m.name.to_owned(),
                    applied: row.checksum.clone(),
                    now: sum,
                });
            }
            report.unchanged.push(m.name.to_owned());
            continue;
        }
        if let Some(min) = min_server_version(m.sql)
            && server < min
        {
            // Not recorded: a later run on an upgraded server applies it.
            report.skipped.push((
                m.name.to_owned(),
                format!(
                    "needs ClickHouse {}.{} or newer, server is {}",
                    min.0, min.1, report.server_version
                ),
            ));
            continue;
        }
        for stmt in statements(m.sql) {
            let context = format!("apply {}", m.name);
            if let Some(guard) = &stmt.guard {
                // Whatever number type the guard returns, read a UInt64.
                let go: u64 = db
                    .query_raw(&format!("SELECT toUInt64(({guard}))"))
                    .fetch_one()
                    .await
                    .map_err(err(&format!("{context}: guard `{guard}`")))?;
                if go == 0 {
                    continue;
                }
            }
            // Replicated tables name their ZooKeeper path after the database;
            // a table created anew takes its TTL at once.
            let sql = substitute(&stmt.sql, &shard.database, &options.retention);
            db.query_raw(&sql)
                .execute()
                .await
                .map_err(err(&format!("{context}: `{}`", first_line(&stmt.sql))))?;
        }
        let mut insert = db
            .insert::<NewRow<'_>>("schema_migrations")
            .await
            .map_err(err("record migration"))?;
        insert
            .write(&NewRow {
                version: m.name,
                checksum: &sum,
            })
            .await
            .map_err(err("record migration"))?;
        insert.end().await.map_err(err("record migration"))?;
        report.applied.push(m.name.to_owned());
    }
    let existing: Vec<String> = db
        .query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        .fetch_all()
        .await
        .map_err(err("list tables"))?;
    for table in DISTRIBUTED
        .iter()
        .filter(|t| existing.iter().any(|e| e == *t))
    {
        let all = format!("{table}_all");
        if !report.applied.is_empty() {
            db.query(&format!("DROP TABLE IF EXISTS {all}"))
                .execute()
                .await
                .map_err(err(&format!("drop {all}")))?;
        }
        let engine = match &options.cluster {
            Some(cluster) => format!("Distributed({cluster}, {}, {table})", shard.database),
            None => format!("Merge({}, '^{table}$')", shard.database),
        };
        db.query(&format!(
            "CREATE TABLE IF NOT EXISTS {all} AS {table} ENGINE = {engine}"
        ))
        .execute()
        .await
        .map_err(err(&format!("create {all}")))?;
        report.distributed.push(all);
    }
    if profile == Profile::Modern {
        let with_ttl = ttls(&options.retention);
        for (table, column, days) in with_ttl
            .into_iter()
            .filter(|(t, _, _)| existing.iter().any(|e| e == t))
        {
            let EngineRow { engine_full } = db
                .query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = ?")
                .bind(table)
                .fetch_one()
                .await
                .map_err(err(&format!("read the TTL of {table}")))?;
            let want = format!("TTL {column} + toIntervalDay({days})");
            let (sql, what) = if days == 0 {
                if !engine_full.contains(" TTL ") {
                    continue;
                }
                (
                    format!("ALTER TABLE {table} REMOVE TTL"),
                    format!("{table}: kept forever"),
                )
            } else {
                if engine_full.contains(&want) {
                    continue;
                }
                (
                    format!("ALTER TABLE {table} MODIFY TTL {column} + INTERVAL {days} DAY"),
                    format!("{table}: {days} days"),
                )
            };
            db.query(&sql)
                .execute()
                .await
                .map_err(err(&format!("set the TTL of {table}")))?;
            report.ttl.push(what);
        }
    }
    Ok(report)
}

/// A statement's `${database}` and `${ttl:TABLE}` (the table's TTL clause
/// from `[retention]`, empty when it keeps everything) filled in.
fn substitute(sql: &str, database: &str, retention: &RetentionConfig) -> String {
    let mut sql = sql.replace("${database}", database);
    for (table, column, days) in ttls(retention) {
        let clause = if days == 0 {
            String::new()
        } else {
            format!("TTL {column} + toIntervalDay({days})")
        };
        sql = sql.replace(&format!("${{ttl:{table}}}"), &clause);
    }
    sql
}

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn statements_and_versions() {
        let sql = "-- min_server_version: 20.3\n-- note\nCREATE TABLE a (x UInt8)\nENGINE = Log;\n\nSELECT 1;\n";
        assert_eq!(min_server_version(sql), Some((20, 3)));
        let sql: Vec<String> = statements(sql).into_iter().map(|s| s.sql).collect();
        assert_eq!(
            sql,
            vec!["CREATE TABLE a (x UInt8)\nENGINE = Log", "SELECT 1"]
        );
        assert_eq!(min_server_version(MIGRATIONS[0].sql), None);
        assert_eq!(parse_version("18.16.1"), Some((18, 16)));
        assert_eq!(statements(MIGRATIONS[2].sql).len(), 2);
    }

    #[test]
    fn guards_belong_to_the_next_statement() {
        let sql = "-- note\n-- if: SELECT 1\nALTER TABLE a\n  DROP COLUMN b;\nSELECT 2;\n";
        let s = statements(sql);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].guard.as_deref(), Some("SELECT 1"));
        assert_eq!(s[0].sql, "ALTER TABLE a\n  DROP COLUMN b");
        assert_eq!(s[1].guard, None);
    }

    #[test]
    fn profiles() {
        assert_eq!(Profile::for_server((18, 16)), Profile::Legacy);
        assert_eq!(Profile::for_server((24, 3)), Profile::Legacy);
        assert_eq!(Profile::for_server((24, 8)), Profile::Modern);
        assert_eq!(Profile::for_server((26, 9)), Profile::Modern);
        assert_eq!(
            Profile::of_file("0006_storage_v2.modern.sql"),
            Some(Profile::Modern)
        );
        assert_eq!(Profile::of_file("0001_samples.sql"), None);
        // Every per-profile migration has both variants, next to each other.
        for m in MIGRATIONS
            .iter()
            .filter(|m| Profile::of_file(m.name).is_some())
        {
            let n = MIGRATIONS
                .iter()
                .filter(|o| o.version() == m.version())
                .count();
            assert_eq!(n, 2, "{} needs a legacy and a modern variant", m.version());
        }
        let applied = |names: &[&str]| -> Vec<AppliedRow> {
            names
                .iter()
                .map(|n| AppliedRow {
                    version: (*n).to_owned(),
                    checksum: String::new(),
                })
                .collect()
        };
        // A shard keeps the profile its tables were built with.
        let old = applied(&["0001_samples.sql", "0006_storage_v2.legacy.sql"]);
        assert_eq!(
            choose_profile("u", &old, None, (26, 9), "26.9").unwrap().0,
            Profile::Legacy
        );
        assert!(choose_profile("u", &old, Some(Profile::Modern), (26, 9), "26.9").is_err());
        let fresh = applied(&["0001_samples.sql"]);
        assert_eq!(
            choose_profile("u", &fresh, None, (25, 8), "25.8")
                .unwrap()
                .0,
            Profile::Modern
        );
        assert_eq!(
            choose_profile("u", &fresh, Some(Profile::Legacy), (25, 8), "25.8")
                .unwrap()
                .0,
            Profile::Legacy
        );
    }
}
