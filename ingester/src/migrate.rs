//! Schema migrations: the files of `migrations/`, embedded in the binary and
//! applied in order to every shard by `spillway-ingester migrate`.
//!
//! Each shard tracks what it applied in `schema_migrations` (version,
//! checksum). Applying twice changes nothing; a file whose checksum changed
//! after it was applied stops the run with an error. A file may start with
//! `-- min_server_version: MAJOR.MINOR`; on an older server it is skipped,
//! reported and not recorded, so a run after a server upgrade applies it.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;

use crate::config::ShardConfig;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// File name, e.g. `0001_samples.sql`; its order is the apply order.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order. A unit test checks that this list matches
/// the `migrations/` directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_samples.sql",
        sql: include_str!("../../migrations/0001_samples.sql"),
    },
    Migration {
        name: "0002_agent_status.sql",
        sql: include_str!("../../migrations/0002_agent_status.sql"),
    },
    Migration {
        name: "0003_samples_1m.sql",
        sql: include_str!("../../migrations/0003_samples_1m.sql"),
    },
    Migration {
        name: "0004_ingest_quality.sql",
        sql: include_str!("../../migrations/0004_ingest_quality.sql"),
    },
    Migration {
        name: "0005_ingester_status.sql",
        sql: include_str!("../../migrations/0005_ingester_status.sql"),
    },
];

/// Migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// ClickHouse refused or could not be reached.
    #[error("shard {url}: {context}: {source}")]
    ClickHouse {
        /// The shard.
        url: String,
        /// What was being done.
        context: String,
        /// The client's error.
        source: clickhouse::error::Error,
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
    /// Files applied now.
    pub applied: Vec<String>,
    /// Files skipped now, with why.
    pub skipped: Vec<(String, String)>,
    /// Files that were already applied (or skipped) before.
    pub unchanged: Vec<String>,
    /// Distributed tables created (or re-created after a schema change).
    pub distributed: Vec<String>,
}

/// The tables that get a Distributed `<name>_all` twin when a cluster is
/// configured.
pub const DISTRIBUTED: &[&str] = &[
    "samples",
    "samples_1m",
    "agent_status",
    "ingest_quality",
    "ingester_status",
];

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

/// Parses the leading `MAJOR.MINOR` of a version string.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Splits a file into statements: `;` ends a statement at the end of a line.
/// Comment-only lines are dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        let trimmed = line.trim_end();
        if let Some(stmt) = trimmed.strip_suffix(';') {
            cur.push_str(stmt);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
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

/// Applies every migration to one shard.
/// With `cluster`, also creates a Distributed `<table>_all` over the
/// cluster for each of [`DISTRIBUTED`], re-created when a migration ran so
/// that it follows the schema.
pub async fn migrate_shard(
    shard: &ShardConfig,
    cluster: Option<&str>,
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
    let root = crate::sink::client(shard).with_database("default");
    root.query(&format!("CREATE DATABASE IF NOT EXISTS {}", shard.database))
        .execute()
        .await
        .map_err(err("create database"))?;
    let db = crate::sink::client(shard);
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
    let mut report = ShardReport {
        url: url.clone(),
        server_version,
        ..Default::default()
    };
    for m in MIGRATIONS {
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
            db.query(&stmt)
                .execute()
                .await
                .map_err(err(&format!("apply {}", m.name)))?;
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
    if let Some(cluster) = cluster {
        for table in DISTRIBUTED {
            let all = format!("{table}_all");
            if !report.applied.is_empty() {
                db.query(&format!("DROP TABLE IF EXISTS {all}"))
                    .execute()
                    .await
                    .map_err(err(&format!("drop {all}")))?;
            }
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {all} AS {table} \
                 ENGINE = Distributed({cluster}, {db}, {table})",
                db = shard.database
            );
            db.query(&sql)
                .execute()
                .await
                .map_err(err(&format!("create {all}")))?;
            report.distributed.push(all);
        }
    }
    Ok(report)
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
        assert_eq!(
            statements(sql),
            vec!["CREATE TABLE a (x UInt8)\nENGINE = Log", "SELECT 1"]
        );
        assert_eq!(min_server_version(MIGRATIONS[0].sql), None);
        assert_eq!(parse_version("18.16.1"), Some((18, 16)));
        assert_eq!(statements(MIGRATIONS[2].sql).len(), 2);
    }
}
