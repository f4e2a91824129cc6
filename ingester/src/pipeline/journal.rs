//! The insert journal: which ranges of offsets each partition was cut into.
//!
//! Exactly-once rests on two facts. ClickHouse drops an INSERT it has seen
//! (same `insert_deduplication_token` on modern servers; same data in a
//! Replicated table on legacy ones). And an INSERT built from a given range of
//! one partition's offsets is the same whoever builds it: the rows come from
//! the records alone, in offset order. So every range is written here
//! *before* any of its rows is inserted; the next owner of the partition
//! reads the ranges above the committed offset and cuts its records at
//! exactly those boundaries, and ClickHouse drops whatever had landed.
//!
//! The journal is a table on the first shard (`ingest_journal`), not the
//! offset commit's metadata: some brokers (tansu 0.6) store commit metadata
//! and never return it. ARCHITECTURE.md ("Delivery guarantees") gives the
//! reasons and what happens when it cannot be reached.
//!
//! One `worker` task runs the event loop's journal jobs one at a time:
//! writing closed ranges (only of partitions still owned by the assignment
//! that cut them) and reading a newly assigned partition's ranges.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::pipeline::message::PartitionId;
use crate::pipeline::ranges::{Closed, Span};
use crate::sink::rows::JournalRow;
use crate::sink::{Sink, SinkError};
use crate::telemetry::Stats;
use spillway_shared::retry::{Backoff, retry_until};
use spillway_shared::{lock, now_ms};

/// The deduplication token of every INSERT built from a range: what the
/// range is, not what its bytes are, so ClickHouse recognises the INSERT
/// however it was rebuilt. Tables deduplicate separately, so the INSERTs of
/// one range into different tables share it.
pub fn token(group: &str, topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{group}:{topic}:{partition}:{first}-{last}")
}

/// The ranges a new owner must rebuild, from the journal's entries for one
/// partition: those that start at or after `from` (the offset it starts
/// consuming at), in order, without overlaps.
///
/// An entry that straddles `from` cannot be rebuilt (its first records are
/// below where consumption starts; only a member of an older version, which
/// committed inside ranges, leaves one): it is dropped with a warning, and
/// its records go into new ranges. Overlapping entries come only from a
/// member that kept cutting after it lost the partition; the earliest is
/// kept.
pub fn to_rebuild(mut entries: Vec<(i64, i64)>, from: i64) -> Vec<(i64, i64)> {
    entries.sort_unstable();
    entries.dedup();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(entries.len());
    for (first, last) in entries {
        if last < from || first > last {
            continue;
        }
        if first < from {
            warn!(
                first,
                last, from, "a journaled range starts below the committed offset; not rebuilt"
            );
            continue;
        }
        if let Some(&(_, prev_last)) = out.last()
            && first <= prev_last
        {
            warn!(
                first,
                last, prev_last, "journaled ranges overlap; keeping the earlier"
            );
            continue;
        }
        out.push((first, last));
    }
    out
}

/// Work for the journal task.
pub(crate) enum JournalJob {
    Write(Vec<Closed>),
    Read(Vec<ToRead>),
}

/// What the journal task reports.
pub(crate) enum JournalDone {
    /// Journaled (or, for partitions no longer owned, given up on).
    Written(Vec<Closed>),
    /// The ranges to rebuild of (topic, partition, epoch).
    Read(Vec<ToRebuild>),
}

/// Partitions this member owns, shared with the journal task so that it
/// never journals a range of a partition that has gone to another member.
pub(crate) type Owned = Arc<Mutex<HashMap<PartitionId, u64>>>;

/// A newly assigned partition whose journal is to be read.
pub(crate) struct ToRead {
    pub(crate) id: PartitionId,
    /// The assignment that asks.
    pub(crate) epoch: u64,
    /// Where its consumption starts.
    pub(crate) from: i64,
}

/// The journaled ranges a newly assigned partition must rebuild.
pub(crate) struct ToRebuild {
    pub(crate) id: PartitionId,
    pub(crate) epoch: u64,
    pub(crate) ranges: Vec<Span>,
}

/// Who writes the journal's rows.
pub(crate) struct JournalIdentity {
    pub(crate) group: String,
    pub(crate) ingester: String,
}

/// The journal's rows for the closed ranges whose partition is still owned
/// by the assignment that cut them.
fn rows_to_write(closed: &[Closed], owned: &Owned, id: &JournalIdentity) -> Vec<JournalRow> {
    let owned = lock(owned);
    let time = u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX);
    closed
        .iter()
        .filter(|c| owned.get(&c.id) == Some(&c.epoch))
        .map(|c| JournalRow {
            time,
            consumer_group: id.group.clone(),
            topic: c.id.topic.clone(),
            partition: c.id.partition,
            first_offset: c.first,
            last_offset: c.last,
            records: c.records,
            ingester: id.ingester.clone(),
        })
        .collect()
}

/// Spawns the journal worker on `tasks`: the queue for its jobs (one at a
/// time: send the next once this one reports) and the queue of its reports.
pub(crate) fn spawn<S: Sink + 'static>(
    tasks: &tokio_util::task::TaskTracker,
    sink: S,
    id: JournalIdentity,
    owned: Owned,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> (mpsc::Sender<JournalJob>, mpsc::Receiver<JournalDone>) {
    let (jobs_tx, jobs) = mpsc::channel::<JournalJob>(1);
    let (done_tx, done) = mpsc::channel::<JournalDone>(1);
    tasks.spawn(worker(sink, id, owned, jobs, done_tx, stats, shutdown));
    (jobs_tx, done)
}

/// Runs journal jobs one at a time, each retried until it succeeds or the
/// pipeline shuts down. A range is written only while its partition is
/// still owned by the assignment that cut it.
async fn worker<S: Sink>(
    sink: S,
    who: JournalIdentity,
    owned: Owned,
    mut jobs: mpsc::Receiver<JournalJob>,
    done: mpsc::Sender<JournalDone>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    while let Some(job) = jobs.recv().await {
        let reply = match job {
            JournalJob::Write(closed) => {
                let written = retry_until(
                    &shutdown,
                    &mut Backoff::new(),
                    || {
                        // Partitions revoked meanwhile drop out between attempts.
                        let rows = rows_to_write(&closed, &owned, &who);
                        let sink = &sink;
                        async move {
                            if !rows.is_empty() {
                                sink.write_journal(&rows).await?;
                            }
                            Ok(rows.len())
                        }
                    },
                    |e: &SinkError, next| {
                        stats.journal_errors.inc();
                        warn!(error = %e, retry_in = ?next, "cannot write the insert journal; retrying");
                        true
                    },
                )
                .await;
                let Ok(written) = written else {
                    return;
                };
                stats.ranges_journaled.inc_by(written as u64);
                JournalDone::Written(closed)
            }
            JournalJob::Read(partitions) => {
                let mut read = Vec::with_capacity(partitions.len());
                for ToRead { id, epoch, from } in partitions {
                    let entries = retry_until(
                        &shutdown,
                        &mut Backoff::new(),
                        || sink.read_journal(&who.group, &id.topic, id.partition, from),
                        |e, next| {
                            stats.journal_errors.inc();
                            warn!(error = %e, partition = %id, retry_in = ?next,
                                  "cannot read the insert journal; the partition waits");
                            true
                        },
                    )
                    .await;
                    let Ok(entries) = entries else {
                        return;
                    };
                    read.push(ToRebuild {
                        id,
                        epoch,
                        ranges: to_rebuild(entries, from),
                    });
                }
                JournalDone::Read(read)
            }
        };
        if done.send(reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_at_or_above_the_start_are_rebuilt_in_order() {
        let entries = vec![(300, 399), (0, 99), (100, 199), (200, 299), (200, 299)];
        assert_eq!(to_rebuild(entries, 200), vec![(200, 299), (300, 399)]);
    }

    #[test]
    fn straddling_and_overlapping_ranges_are_dropped() {
        let entries = vec![(150, 249), (250, 300), (260, 280), (301, 301)];
        assert_eq!(to_rebuild(entries, 200), vec![(250, 300), (301, 301)]);
    }

    #[test]
    fn tokens_name_the_range() {
        assert_eq!(token("g", "t", 3, 10, 20), "g:t:3:10-20");
    }
}
