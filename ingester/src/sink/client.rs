//! The ClickHouse client behind [`Sink`]: one `clickhouse::Client` per
//! server, a shard's requests on one of its replicas ([`Replicas`]),
//! RowBinary bodies compressed with LZ4, the column check before a table's
//! first INSERT, deduplication by token or by content, the journal.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::insert_formatted::CompressedData;
use tracing::{info, warn};

use crate::config::ClickHouseConfig;
use crate::sink::replicas::Replicas;
use crate::sink::rows::{JournalRow, Rows};
use crate::sink::{Sink, SinkError};

/// How a shard drops an INSERT it has already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dedup {
    /// By `insert_deduplication_token` (ClickHouse 22.2 and later), views
    /// included.
    Token,
    /// By the data's hash, in Replicated tables (older servers; views are
    /// skipped along with a dropped block).
    Content,
    /// Not at all: an older server whose `samples` is not replicated.
    None,
}

/// The real sink: the replicas of every shard.
#[derive(Clone)]
pub struct ClickHouseSink {
    shards: Arc<Vec<Replicas>>,
    timeout: Duration,
    /// Per shard, learnt at its first INSERT.
    traits: Arc<Vec<tokio::sync::OnceCell<ShardTraits>>>,
    buffers: Buffers,
    /// When each (shard, table) was last found to take our rows.
    schema_checked:
        Arc<std::sync::Mutex<std::collections::HashMap<(usize, &'static str), Instant>>>,
}

/// Serialization buffers kept between INSERTs. A fresh buffer of several
/// megabytes per INSERT cost more than the serialization itself: the
/// allocator hands large blocks back to the kernel, so every INSERT paid
/// page faults and zeroing, plus copies as the buffer grew.
#[derive(Clone, Default)]
struct Buffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    /// Buffers kept at most (about one per INSERT in flight).
    const KEEP: usize = 8;

    fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut kept = self.lock();
        if kept.len() < Self::KEEP {
            kept.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        spillway_shared::lock(&self.0)
    }
}

/// The journal's table. A range is journaled on the first shard that
/// takes the write (in the configured order), and read from all of them.
const JOURNAL_TABLE: &str = "ingest_journal";

impl ClickHouseSink {
    /// Builds the clients (no connection yet); fails only on TLS material
    /// that cannot be used.
    pub fn new(config: &ClickHouseConfig) -> Result<ClickHouseSink, crate::tls::TlsError> {
        Ok(ClickHouseSink {
            shards: Arc::new(
                config
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Replicas::new(i, s))
                    .collect::<Result<_, _>>()?,
            ),
            timeout: config.insert_timeout,
            traits: Arc::new(
                config
                    .shards
                    .iter()
                    .map(|_| tokio::sync::OnceCell::new())
                    .collect(),
            ),
            buffers: Buffers::default(),
            schema_checked: Arc::default(),
        })
    }

    /// Every shard's replicas (for probes and their metrics).
    pub fn shards(&self) -> &[Replicas] {
        &self.shards
    }

    /// Runs `work` on the active replica of `shard` and records how it
    /// ended: a retryable failure moves the shard's next request to
    /// another replica.
    async fn on_replica<'a, T, F, Fut>(&'a self, shard: usize, work: F) -> Result<T, SinkError>
    where
        F: FnOnce(&'a clickhouse::Client, &'a str) -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        let replicas = &self.shards[shard];
        let (i, replica) = replicas.active();
        let result = work(&replica.client, &replica.url).await;
        replicas.record(i, !result.as_ref().is_err_and(SinkError::is_retryable));
        result
    }

    /// How `shard` deduplicates and where its samples go, asked once (of
    /// whichever replica is active: a shard's replicas run one release).
    async fn traits(
        &self,
        shard: usize,
        client: &clickhouse::Client,
        url: &str,
    ) -> Result<ShardTraits, clickhouse::error::Error> {
        self.traits[shard]
            .get_or_try_init(|| async move {
                let version: String = client.query("SELECT version()").fetch_one().await?;
                let v = parse_version(&version).unwrap_or((0, 0));
                let dedup = if v >= TOKEN_VERSION {
                    Dedup::Token
                } else {
                    let replicated: u64 = client
                        .query(
                            "SELECT count() FROM system.tables WHERE database = currentDatabase() \
                             AND name = 'samples' AND engine LIKE 'Replicated%'",
                        )
                        .fetch_one()
                        .await?;
                    if replicated > 0 {
                        Dedup::Content
                    } else {
                        Dedup::None
                    }
                };
                match dedup {
                    Dedup::None => warn!(
                        shard = %url, version,
                        "ClickHouse before 22.2 and `samples` is not replicated: a crash can store \
                         rows twice (docs/operations.md, \"Exactly-once\")"
                    ),
                    _ => info!(shard = %url, version, ?dedup, "inserts are deduplicated"),
                }
                // The legacy profile's entry table (migration 0008): its
                // views feed `samples` and the tiers, each deduplicating.
                let entry: u64 = client
                    .query(
                        "SELECT count() FROM system.tables WHERE database = currentDatabase() \
                         AND name = 'samples_in'",
                    )
                    .fetch_one()
                    .await?;
                let samples_table = if entry > 0 { "samples_in" } else { "samples" };
                Ok(ShardTraits {
                    dedup,
                    samples_table,
                })
            })
            .await
            .copied()
    }

    /// What in `table` on `shard` does not take `rows` (empty: all fine).
    /// Asked again after a failed INSERT and every [`SCHEMA_RECHECK`]: a
    /// type changed to another of the same width fails nothing and would
    /// store garbage.
    async fn schema_problems<R: serde::Serialize + clickhouse::Row>(
        &self,
        shard: usize,
        client: &clickhouse::Client,
        table: &'static str,
        real: &'static str,
        rows: &[R],
    ) -> Result<Vec<String>, SinkError> {
        let Some(row) = rows.first() else {
            return Ok(Vec::new());
        };
        let fresh = spillway_shared::lock(&self.schema_checked)
            .get(&(shard, table))
            .is_some_and(|at| at.elapsed() < SCHEMA_RECHECK);
        if fresh {
            return Ok(Vec::new());
        }
        let wires = crate::sink::schema::wire_types(row)?;
        // An entry table's views convert into the real table's types, so
        // both must take the rows.
        let mut problems = Vec::new();
        for name in std::iter::once(table).chain((table != real).then_some(real)) {
            let columns: Vec<(String, String)> = client
                .query(
                    "SELECT name, type FROM system.columns \
                     WHERE database = currentDatabase() AND table = ?",
                )
                .bind(name)
                .fetch_all()
                .await?;
            // A missing table is retried as before (a migration may be on
            // its way); the INSERT says so.
            if !columns.is_empty() {
                problems.extend(
                    crate::sink::schema::mismatches(R::COLUMN_NAMES, &wires, &columns)
                        .into_iter()
                        .map(|p| format!("{name}: {p}")),
                );
            }
        }
        if problems.is_empty() {
            spillway_shared::lock(&self.schema_checked).insert((shard, table), Instant::now());
        }
        Ok(problems)
    }

    fn schema_unverified(&self, shard: usize, table: &'static str) {
        spillway_shared::lock(&self.schema_checked).remove(&(shard, table));
    }

    /// One INSERT of `rows`, sent as a single compressed block (see
    /// `rowbinary.rs`: a body cut short is rejected, never stored in part).
    async fn insert_rows<R: serde::Serialize + clickhouse::Row>(
        &self,
        client: &clickhouse::Client,
        table: &str,
        rows: &[R],
        token: Option<&str>,
        dedup: Dedup,
    ) -> Result<(), SinkError> {
        let data = {
            let mut body = self.buffers.take();
            let data = crate::sink::rowbinary::write_rows(&mut body, rows)
                .map_err(SinkError::from)
                .and_then(|()| Ok(CompressedData::new(&body, clickhouse::Compression::Lz4)?));
            self.buffers.give_back(body);
            data?
        };
        // The columns by name: a table may have more (with defaults).
        let columns = R::COLUMN_NAMES
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut insert = client
            .insert_formatted_with(format!("INSERT INTO {table} ({columns}) FORMAT RowBinary"))
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        if let Some(token) = token
            && dedup == Dedup::Token
        {
            insert = insert
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        }
        insert.send_compressed(data).await?;
        Ok(insert.end().await?)
    }

    async fn timed<T, E: Into<SinkError>>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, work).await {
            Err(_) => Err(SinkError::retryable(format!(
                "{what} timed out after {:?}",
                self.timeout
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

/// How long a table found to take our rows is trusted without asking again.
const SCHEMA_RECHECK: Duration = Duration::from_secs(30);

/// What a shard's first INSERT learns about it.
#[derive(Debug, Clone, Copy)]
struct ShardTraits {
    dedup: Dedup,
    /// Where sample rows are inserted: `samples`, or `samples_in` on a
    /// legacy server whose tiers are replicated (migration 0008).
    samples_table: &'static str,
}

/// The first release with `insert_deduplication_token`.
const TOKEN_VERSION: (u32, u32) = (22, 2);

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct RangeRow {
    first_offset: i64,
    last_offset: i64,
}

impl Sink for ClickHouseSink {
    async fn insert(
        &self,
        shard: usize,
        rows: &Rows,
        token: Option<&str>,
    ) -> Result<(), SinkError> {
        self.on_replica(shard, |client, url| async move {
            let traits = self
                .timed("asking the server", self.traits(shard, client, url))
                .await?;
            let table = match rows {
                Rows::Samples(_) => traits.samples_table,
                _ => rows.table().name(),
            };
            let real = rows.table().name();
            let check = async {
                match rows {
                    Rows::Samples(r) => self.schema_problems(shard, client, table, real, r).await,
                    Rows::Status(r) => self.schema_problems(shard, client, table, real, r).await,
                    Rows::Quality(r) => self.schema_problems(shard, client, table, real, r).await,
                    Rows::IngesterStatus(r) => {
                        self.schema_problems(shard, client, table, real, r).await
                    }
                }
            };
            let problems = self
                .timed(&format!("checking the columns of {table}"), check)
                .await?;
            if !problems.is_empty() {
                self.schema_unverified(shard, table);
                return Err(SinkError::schema(format!(
                    "on {url}: {}",
                    problems.join("; ")
                )));
            }
            let dedup = traits.dedup;
            let work = async {
                match rows {
                    Rows::Samples(r) => self.insert_rows(client, table, r, token, dedup).await,
                    Rows::Status(r) => self.insert_rows(client, table, r, token, dedup).await,
                    Rows::Quality(r) => self.insert_rows(client, table, r, token, dedup).await,
                    Rows::IngesterStatus(r) => {
                        self.insert_rows(client, table, r, token, dedup).await
                    }
                }
            };
            let result = self
                .timed(&format!("insert into {table} on {url}"), work)
                .await;
            if result.is_err() {
                // A failed INSERT may be a changed table: look again first.
                self.schema_unverified(shard, table);
            }
            result
        })
        .await
    }

    async fn write_journal(&self, rows: &[JournalRow]) -> Result<(), SinkError> {
        // The first shard that takes it: a shard that is down stops only
        // the ranges with rows for it, not every range.
        let mut failed = None;
        for shard in 0..self.shards.len() {
            let written = self
                .on_replica(shard, |client, url| async move {
                    let work = async {
                        let mut insert = client.insert::<JournalRow>(JOURNAL_TABLE).await?;
                        for row in rows {
                            insert.write(row).await?;
                        }
                        insert.end().await
                    };
                    self.timed(&format!("journal write on {url}"), work).await
                })
                .await;
            match written {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => failed = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(failed.unwrap_or_else(|| SinkError::retryable("no shard to journal on")))
    }

    async fn read_journal(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<Vec<(i64, i64)>, SinkError> {
        // A range may be journaled on any shard: all of them must answer.
        let mut ranges = Vec::new();
        for shard in 0..self.shards.len() {
            let rows = self
                .on_replica(shard, |client, url| async move {
                    let work = client
                        .query(
                            "SELECT first_offset, last_offset FROM ingest_journal \
                             WHERE consumer_group = ? AND topic = ? AND partition = ? \
                             AND last_offset >= ?",
                        )
                        .bind(group)
                        .bind(topic)
                        .bind(partition)
                        .bind(from)
                        .fetch_all::<RangeRow>();
                    self.timed(&format!("journal read on {url}"), work).await
                })
                .await?;
            ranges.extend(rows.into_iter().map(|r| (r.first_offset, r.last_offset)));
        }
        Ok(ranges)
    }
}

/// Parses the leading `MAJOR.MINOR` of a version string.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}
