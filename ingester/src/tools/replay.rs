//! `spillway-ingester replay-dlq`: ingest dead letters again once their
//! cause is fixed (a table repaired, a type put back).
//!
//! It reads the dead-letter topic from its start (or `--from-offset`) up to
//! the end it sees when it starts, keeps the letters the filters match
//! (`--kind`, `--since`/`--until` on the letter's timestamp, offsets), and
//! decodes and inserts each record exactly as the pipeline would, with the
//! same configuration.
//!
//! **Once, however often it is run or killed.** Each record is one INSERT
//! whose deduplication token names its source (`replay-dlq:topic:partition:
//! offset`; on a legacy replicated table its rows are the block ClickHouse
//! hashes), so inserting it again is dropped by the server. What was
//! replayed is written to `ingest_journal` (consumer group
//! [`REPLAY_GROUP`], one row per source record) and skipped by later runs,
//! beyond the server's deduplication window. A record dead-lettered twice
//! (letters are at least once) is replayed once. Nothing is committed to
//! Kafka and the dead-letter topic is left as it is.
//!
//! One INSERT per record is meant for what a dead-letter topic holds: the
//! exceptions. Thousands of letters take minutes and make as many parts,
//! which the server merges.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::decode::decode_record;
use crate::pipeline::message::Raw;
use crate::sink::rows::JournalRow;
use crate::sink::{Sink, SinkError};
use spillway_shared::now_ms;
use spillway_shared::retry::{Backoff, retry_until};

/// The journal's consumer group for replayed records.
pub const REPLAY_GROUP: &str = "spillway-replay-dlq";

/// Journal rows written at once (a crash before they are written is
/// covered by the INSERTs' deduplication).
const JOURNAL_EVERY: usize = 100;

/// What to replay.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Only letters of this kind (`spillway-error-kind`, e.g.
    /// `insert_rejected`); repeat for several. Default: every kind.
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// First offset of the dead-letter topic to read (each partition).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Last offset of the dead-letter topic to read, inclusive.
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Only letters written at or after this time (RFC 3339, UTC).
    #[arg(long)]
    pub since: Option<humantime::Timestamp>,
    /// Only letters written before this time (RFC 3339, UTC).
    #[arg(long)]
    pub until: Option<humantime::Timestamp>,
    /// Read, filter and decode, report what would be inserted; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Letters read from the dead-letter topic.
    pub read: u64,
    /// Letters the filters left out.
    pub filtered_out: u64,
    /// Letters for a record already met in this run (dead-lettered twice).
    pub repeated: u64,
    /// Records a previous run replayed (in the journal).
    pub already_replayed: u64,
    /// Records inserted (or, in a dry run, that would be).
    pub inserted: u64,
    /// Rows they made.
    pub rows: u64,
    /// Records that still cannot be ingested, by kind.
    pub still_failing: BTreeMap<String, u64>,
    /// A dry run: nothing was inserted.
    pub dry_run: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "read {} letters: {} filtered out, {} repeated, {} already replayed, \
             {} records {} ({} rows), {} still failing",
            self.read,
            self.filtered_out,
            self.repeated,
            self.already_replayed,
            self.inserted,
            if self.dry_run {
                "would be inserted"
            } else {
                "inserted"
            },
            self.rows,
            self.still_failing.values().sum::<u64>()
        )?;
        if !self.still_failing.is_empty() {
            let kinds: Vec<String> = self
                .still_failing
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        Ok(())
    }
}

/// One dead letter, as read.
struct Letter {
    kind: String,
    source: (String, i32, i64),
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// Reads the letter in `m`; `None` when its headers do not name a source.
fn letter(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Letter> {
    let headers = m.headers()?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Some(Letter {
        kind: header("spillway-error-kind").unwrap_or_default(),
        source: (
            header("spillway-source-topic")?,
            header("spillway-source-partition")?.parse().ok()?,
            header("spillway-source-offset")?.parse().ok()?,
        ),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    })
}

impl ReplayArgs {
    fn matches(&self, kind: &str, written: Option<SystemTime>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == kind) {
            return false;
        }
        let after = |t: &humantime::Timestamp| written.is_some_and(|w| w >= SystemTime::from(*t));
        self.since.as_ref().is_none_or(after) && self.until.as_ref().is_none_or(|t| !after(t))
    }
}

/// The Kafka timestamp of `m`, if it has one.
fn written(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<SystemTime> {
    let ms = m.timestamp().to_millis()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

/// Replays the dead letters `args` selects into `sink`.
pub async fn run<S: Sink>(
    config: &Config,
    args: &ReplayArgs,
    sink: &S,
    shutdown: &CancellationToken,
) -> Result<Report> {
    let topic = config.kafka.dlq_topic();
    let consumer: BaseConsumer = crate::pipeline::poll::consumer_config(config)
        .set("group.id", REPLAY_GROUP)
        .create()
        .context("cannot create the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(15))
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("the dead-letter topic {topic} does not exist");
    }
    // Read up to the end seen now: letters written meanwhile wait for the
    // next run.
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(15))
            .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
        let start = args.from_offset.map_or(low, |o| o.max(low));
        let end = args.to_offset.map_or(high, |o| (o + 1).min(high));
        if start < end {
            tpl.add_partition_offset(&topic, p, Offset::Offset(start))?;
            ends.insert(p, end);
        }
    }
    consumer.assign(&tpl)?;
    info!(%topic, partitions = ends.len(), dry_run = args.dry_run, "replaying dead letters");

    let mut replay = Replay {
        config,
        sink,
        shutdown,
        dry_run: args.dry_run,
        report: Report {
            dry_run: args.dry_run,
            ..Report::default()
        },
        seen: HashSet::new(),
        replayed: HashMap::new(),
        journal: Vec::new(),
        limits: spillway_shared::Limits::default(),
        precision: crate::precision::Precision::new(&config.storage.precision),
    };
    let mut done = HashSet::new();
    let mut last_progress = Instant::now();
    while done.len() < ends.len() && !shutdown.is_cancelled() {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // No letter: a partition whose last offsets hold no record (a
            // transaction marker) is done once its position passed the end.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let (Offset::Offset(at), Some(&end)) = (e.offset(), ends.get(&e.partition()))
                        && at >= end
                    {
                        done.insert(e.partition());
                    }
                }
            }
            continue;
        };
        let m = m.context("reading the dead-letter topic")?;
        let Some(&end) = ends.get(&m.partition()) else {
            continue;
        };
        if m.offset() + 1 >= end {
            done.insert(m.partition());
        }
        if m.offset() >= end {
            continue;
        }
        replay.report.read += 1;
        let Some(l) = letter(&m) else {
            warn!(
                offset = m.offset(),
                "a letter without source headers; left alone"
            );
            replay.report.filtered_out += 1;
            continue;
        };
        if !args.matches(&l.kind, written(&m)) {
            replay.report.filtered_out += 1;
            continue;
        }
        if !replay.one(l).await? {
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            info!(progress = %replay.report, "replaying");
            last_progress = Instant::now();
        }
    }
    replay.flush_journal().await?;
    if shutdown.is_cancelled() {
        bail!("stopped: {}", replay.report);
    }
    Ok(replay.report)
}

struct Replay<'a, S> {
    config: &'a Config,
    sink: &'a S,
    shutdown: &'a CancellationToken,
    dry_run: bool,
    report: Report,
    /// Sources met in this run.
    seen: HashSet<(String, i32, i64)>,
    /// Per source partition, the offsets the journal says were replayed.
    replayed: HashMap<(String, i32), HashSet<i64>>,
    /// Journal rows not written yet.
    journal: Vec<JournalRow>,
    /// Decoding as the pipeline does.
    limits: spillway_shared::Limits,
    precision: crate::precision::Precision,
}

impl<S: Sink> Replay<'_, S> {
    /// Replays one letter; false when shutting down.
    async fn one(&mut self, l: Letter) -> Result<bool> {
        if !self.seen.insert(l.source.clone()) {
            self.report.repeated += 1;
            return Ok(true);
        }
        let (topic, partition, offset) = l.source.clone();
        if self.already_replayed(&topic, partition, offset).await? {
            self.report.already_replayed += 1;
            return Ok(true);
        }
        let raw = Raw {
            topic: topic.clone(),
            partition,
            offset,
            key: l.key,
            payload: l.payload,
        };
        let shards = self.config.clickhouse.shards.len();
        let decoded = decode_record(raw, &self.limits, &self.precision, shards);
        let body = match decoded.outcome {
            Ok(body) => body,
            Err(rejected) => {
                *self
                    .report
                    .still_failing
                    .entry(rejected.kind.to_owned())
                    .or_default() += 1;
                return Ok(true);
            }
        };
        if self.dry_run {
            self.report.inserted += 1;
            self.report.rows += body.rows.len() as u64;
            return Ok(true);
        }
        let token = format!("replay-dlq:{topic}:{partition}:{offset}");
        let inserted = retry_until(
            self.shutdown,
            &mut Backoff::new(),
            || self.sink.insert(body.shard, &body.rows, Some(&token)),
            |e, next| {
                let again = e.is_retryable();
                if again {
                    warn!(error = %e, retry_in = ?next, "insert failed; retrying");
                }
                again
            },
        )
        .await;
        match inserted {
            Ok(()) => {}
            Err(SinkError::Data { code, message }) => {
                warn!(%topic, partition, offset, code, %message, "still rejected; left in the dead-letter topic");
                *self
                    .report
                    .still_failing
                    .entry(format!("insert_rejected (code {code})"))
                    .or_default() += 1;
                return Ok(true);
            }
            Err(SinkError::Encode(e)) => {
                warn!(%topic, partition, offset, error = %e, "still cannot be encoded; left in the dead-letter topic");
                *self
                    .report
                    .still_failing
                    .entry("insert_rejected (encode)".to_owned())
                    .or_default() += 1;
                return Ok(true);
            }
            Err(SinkError::Schema { message: why, .. }) => {
                bail!("the table does not take the rows yet ({why}); fix it and run again")
            }
            // Shutdown while retrying.
            Err(SinkError::Retryable { .. }) => return Ok(false),
        }
        self.report.inserted += 1;
        self.report.rows += body.rows.len() as u64;
        self.journal.push(JournalRow {
            time: u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX),
            consumer_group: REPLAY_GROUP.to_owned(),
            topic,
            partition,
            first_offset: offset,
            last_offset: offset,
            records: 1,
            ingester: self.config.quality.ingester_id(),
        });
        if self.journal.len() >= JOURNAL_EVERY {
            self.flush_journal().await?;
        }
        Ok(true)
    }

    /// Whether the journal holds `offset` of the source partition (read
    /// once per source partition).
    async fn already_replayed(&mut self, topic: &str, partition: i32, offset: i64) -> Result<bool> {
        let key = (topic.to_owned(), partition);
        if !self.replayed.contains_key(&key) {
            let ranges = self
                .sink
                .read_journal(REPLAY_GROUP, topic, partition, 0)
                .await
                .with_context(|| {
                    format!("cannot read the replay journal for {topic}/{partition}")
                })?;
            let offsets = ranges
                .into_iter()
                .flat_map(|(first, last)| first..=last)
                .collect();
            self.replayed.insert(key.clone(), offsets);
        }
        Ok(self.replayed.get(&key).is_some_and(|o| o.contains(&offset)))
    }

    async fn flush_journal(&mut self) -> Result<()> {
        if self.journal.is_empty() {
            return Ok(());
        }
        let written = retry_until(
            self.shutdown,
            &mut Backoff::new(),
            || self.sink.write_journal(&self.journal),
            |e, next| {
                warn!(error = %e, retry_in = ?next, "cannot write the replay journal; retrying");
                true
            },
        )
        .await;
        match written {
            Ok(()) => {
                self.journal.clear();
                Ok(())
            }
            // The INSERTs are deduplicated: a rerun drops them.
            Err(e) => bail!("stopped before the replay journal was written: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_kind_and_time() {
        let t = |s: &str| s.parse::<humantime::Timestamp>().ok();
        let at = |s: &str| t(s).map(SystemTime::from);
        let args = ReplayArgs {
            kinds: vec!["insert_rejected".into()],
            since: t("2026-12-01T00:00:00Z"),
            until: t("2026-12-02T00:00:00Z"),
            ..ReplayArgs::default()
        };
        assert!(args.matches("insert_rejected", at("2026-12-01T12:00:00Z")));
        assert!(!args.matches("not_a_map", at("2026-12-01T12:00:00Z")));
        assert!(!args.matches("insert_rejected", at("2026-11-30T12:00:00Z")));
        assert!(!args.matches("insert_rejected", at("2026-12-02T00:00:00Z")));
        // A letter without a timestamp cannot be placed in a time range.
        assert!(!args.matches("insert_rejected", None));
        assert!(ReplayArgs::default().matches("anything", None));
    }

    #[test]
    fn the_report_names_what_still_fails() {
        let mut r = Report {
            read: 5,
            inserted: 2,
            rows: 80,
            ..Report::default()
        };
        r.still_failing.insert("not_a_map".into(), 3);
        let text = r.to_string();
        assert!(text.contains("2 records inserted (80 rows)"), "{text}");
        assert!(text.contains("3 still failing (not_a_map 3)"), "{text}");
        r.dry_run = true;
        assert!(
            r.to_string()
                .contains("2 records would be inserted (80 rows)")
        );
    }
}
