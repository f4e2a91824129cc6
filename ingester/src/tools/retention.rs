//! Retention on the legacy schema profile: drops whole partitions whose
//! newest row is older than the configured number of days (ClickHouse
//! before 24.8 gets no TTL from Spillway). It never rewrites data: a
//! partition goes entirely or not at all, so up to a day (a month for the
//! monthly-partitioned tables) more than the setting is kept. A table with a
//! TTL (the modern profile: `migrate` sets it from the same settings) is
//! left to the server, and a table that does not exist yet is skipped.
//!
//! The running ingester does this every `retention.check_interval`;
//! `spillway-ingester prune` does it once (for cron, or to check a setting).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{RetentionConfig, ShardConfig};

/// A partition dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Table.
    pub table: &'static str,
    /// `system.parts.partition_id`.
    pub partition_id: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct PartitionRow {
    partition_id: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct TableRow {
    name: String,
    engine_full: String,
}

/// The tables with a retention, and their setting.
fn tables(r: &RetentionConfig) -> impl Iterator<Item = (&'static str, u32)> {
    crate::tools::migrate::ttls(r)
        .into_iter()
        .map(|(table, _, days)| (table, days))
}

/// Why pruning a shard failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The shard's TLS settings cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// ClickHouse refused or could not be reached.
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// Drops the expired partitions of one shard.
pub async fn prune_shard(
    shard: &ShardConfig,
    retention: &RetentionConfig,
) -> Result<Vec<Dropped>, PruneError> {
    let client = crate::sink::client(shard)?;
    let existing: Vec<TableRow> = client
        .query("SELECT name, engine_full FROM system.tables WHERE database = ?")
        .bind(&shard.database)
        .fetch_all()
        .await?;
    let mut dropped = Vec::new();
    for (table, days) in tables(retention) {
        let Some(t) = existing.iter().find(|t| t.name == table) else {
            continue;
        };
        if days == 0 || t.engine_full.contains(" TTL ") {
            continue;
        }
        // `max_time` is the newest value of the partition key's DateTime
        // column in the part; a partition goes when all its parts are old.
        let expired: Vec<PartitionRow> = client
            .query(
                "SELECT partition_id FROM system.parts \
                 WHERE database = ? AND table = ? AND active \
                 GROUP BY partition_id \
                 HAVING max(max_time) < now() - ? * 86400 \
                 ORDER BY partition_id",
            )
            .bind(&shard.database)
            .bind(table)
            .bind(u64::from(days))
            .fetch_all()
            .await?;
        for p in expired {
            client
                .query(&format!("ALTER TABLE {table} DROP PARTITION ID ?"))
                .bind(&p.partition_id)
                .execute()
                .await?;
            info!(shard = %shard.url, table, partition_id = %p.partition_id, days,
                  "expired partition dropped");
            dropped.push(Dropped {
                table,
                partition_id: p.partition_id,
            });
        }
    }
    Ok(dropped)
}

/// Prunes every shard every `check_interval` until `shutdown`.
pub async fn run(
    shards: Vec<ShardConfig>,
    retention: RetentionConfig,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(retention.check_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        // Every replica: a partition dropped on one replica of a replicated
        // table is dropped on all, and then found on none.
        for shard in shards.iter().flat_map(ShardConfig::servers) {
            let work = prune_shard(&shard, &retention);
            match tokio::time::timeout(Duration::from_secs(300), work).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(shard = %shard.url, error = %e, "retention check failed"),
                Err(_) => warn!(shard = %shard.url, "retention check timed out"),
            }
        }
    }
}
