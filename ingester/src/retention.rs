//! Retention: drops whole partitions whose newest row is older than the
//! configured number of days. It works on every server version (ClickHouse
//! 18.16 has no TTL) and never rewrites data: a partition goes entirely or
//! not at all, so up to a day (a month for `ingest_quality`) more than the
//! setting is kept.
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

/// The tables with a retention, and their setting.
fn tables(r: &RetentionConfig) -> [(&'static str, u32); 3] {
    [
        ("samples", r.samples_days),
        ("samples_1m", r.rollup_days),
        ("ingest_quality", r.quality_days),
    ]
}

/// Drops the expired partitions of one shard.
pub async fn prune_shard(
    shard: &ShardConfig,
    retention: &RetentionConfig,
) -> Result<Vec<Dropped>, clickhouse::error::Error> {
    let client = crate::sink::client(shard);
    let mut dropped = Vec::new();
    for (table, days) in tables(retention) {
        if days == 0 {
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
        for shard in &shards {
            let work = prune_shard(shard, &retention);
            match tokio::time::timeout(Duration::from_secs(300), work).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(shard = %shard.url, error = %e, "retention check failed"),
                Err(_) => warn!(shard = %shard.url, "retention check timed out"),
            }
        }
    }
}
