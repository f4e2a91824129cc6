//! Data accounting: per (host, agent instance), which ticks arrived, which
//! are missing or came twice, and how fresh they were when they became
//! durable. Summaries go to the `ingest_quality` table every
//! `quality.interval` and to the metrics as they happen.
//!
//! Definitions (also in docs/operations.md):
//! - a **gap** is a tick number skipped when a later one became durable;
//! - a gap filled later (a replayed spool, say) counts as **late**, so
//!   `gaps - late` is what is still missing;
//! - a **duplicate** is a tick (part 0 of it) made durable again;
//! - **agent_dropped** counts the ticks the agent itself reports it dropped
//!   (a full spool); those also show up as gaps;
//! - **freshness** is the time from collection to durable in ClickHouse.
//!
//! Only the last [`WINDOW`] ticks of each instance are remembered, so a tick
//! older than that is counted late without further checks.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use spillway_shared::SeqRange;

use crate::pipeline::batch::Batch;
use crate::pipeline::message::{Meta, PartitionId, RecordKind};
use crate::sink::rows::{IngesterStatusRow, QualityRow, Rows};
use crate::sink::shard::shard_for;
use crate::telemetry::Observed;
use crate::telemetry::Stats;

/// Ticks remembered per agent instance.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;
/// Freshness samples kept per instance and period; more are not sampled.
const MAX_FRESHNESS_SAMPLES: usize = 4096;
/// An instance idle for this many periods is forgotten.
const IDLE_PERIODS: u32 = 60;

/// What one tick told the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next tick, or the first one seen.
    InOrder,
    /// Newer than the newest, skipping this many.
    Gap(u64),
    /// A tick counted missing before, now here.
    Late,
    /// A tick already seen.
    Duplicate,
    /// Older than the window.
    TooOld,
}

/// The last [`WINDOW`] tick numbers of one instance, as two bitmaps (seen,
/// counted missing) indexed by `seq % WINDOW`.
#[derive(Debug, Clone, Default)]
pub struct SeqWindow {
    newest: Option<u64>,
    seen: [u64; WORDS],
    missing: [u64; WORDS],
}

fn bit(seq: u64) -> (usize, u64) {
    let slot = seq % WINDOW;
    ((slot / 64) as usize, 1 << (slot % 64))
}

impl SeqWindow {
    /// Records that `seq` became durable.
    pub fn observe(&mut self, seq: u64) -> Seen {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            self.set_seen(seq);
            return Seen::InOrder;
        };
        if seq > newest {
            // Reuse the slots of ticks leaving the window; mark the skipped
            // ones missing.
            let first_kept = (seq + 1).saturating_sub(WINDOW).max(newest + 1);
            for s in first_kept..=seq {
                let (w, m) = bit(s);
                self.seen[w] &= !m;
                if s < seq {
                    self.missing[w] |= m;
                } else {
                    self.missing[w] &= !m;
                }
            }
            self.newest = Some(seq);
            self.set_seen(seq);
            return match seq - newest - 1 {
                0 => Seen::InOrder,
                n => Seen::Gap(n),
            };
        }
        if newest - seq >= WINDOW {
            return Seen::TooOld;
        }
        let (w, m) = bit(seq);
        if self.seen[w] & m != 0 {
            return Seen::Duplicate;
        }
        self.seen[w] |= m;
        if self.missing[w] & m != 0 {
            self.missing[w] &= !m;
            Seen::Late
        } else {
            // Older than the first tick this ingester saw of the instance
            // (another member had the partition): nothing to say.
            Seen::InOrder
        }
    }

    fn set_seen(&mut self, seq: u64) {
        let (w, m) = bit(seq);
        self.seen[w] |= m;
    }
}

#[derive(Debug, Default)]
struct Instance {
    window: SeqWindow,
    /// The partition its records came from last.
    partition: Option<PartitionId>,
    /// Highest dropped tick already counted from the agent's reports, which
    /// repeat until delivered.
    dropped_counted: Option<u64>,
    idle_periods: u32,
    period: Period,
}

#[derive(Debug, Default)]
struct Period {
    records: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    gaps: u64,
    late: u64,
    duplicates: u64,
    agent_dropped: u64,
    freshness_ms: Vec<u32>,
}

/// The accounting of every agent instance whose records this ingester made
/// durable.
#[derive(Debug)]
pub struct Quality {
    ingester: String,
    period_start_ms: u64,
    instances: HashMap<(String, String), Instance>,
}

impl Quality {
    /// Starts the first period at `now_ms`.
    pub fn new(ingester: String, now_ms: u64) -> Quality {
        Quality {
            ingester,
            period_start_ms: now_ms,
            instances: HashMap::new(),
        }
    }

    /// The ingester's name in the summaries.
    pub fn ingester(&self) -> &str {
        &self.ingester
    }

    /// A record of `topic`/`partition` became durable at `now_ms`.
    pub(crate) fn observe(
        &mut self,
        meta: &Meta,
        topic: &str,
        partition: i32,
        now_ms: u64,
    ) -> Observed {
        let key = (meta.host_id.clone(), meta.instance_id.clone());
        let instance = self.instances.entry(key).or_default();
        if instance
            .partition
            .as_ref()
            .is_none_or(|p| p.partition != partition || p.topic != topic)
        {
            instance.partition = Some(PartitionId::new(topic, partition));
        }
        instance.idle_periods = 0;
        let p = &mut instance.period;
        p.records += 1;
        if p.freshness_ms.len() < MAX_FRESHNESS_SAMPLES {
            let ms = now_ms.saturating_sub(meta.time_ms);
            p.freshness_ms.push(u32::try_from(ms).unwrap_or(u32::MAX));
        }
        let mut seen = Observed::default();
        match &meta.kind {
            // Later parts of a split tick carry the same number.
            RecordKind::Metrics { part, .. } if *part > 0 => {}
            RecordKind::Metrics { tick, .. } => {
                p.first_seq = Some(p.first_seq.map_or(*tick, |f| f.min(*tick)));
                p.last_seq = Some(p.last_seq.map_or(*tick, |l| l.max(*tick)));
                match instance.window.observe(*tick) {
                    Seen::Gap(n) => seen.gaps = n,
                    Seen::Late | Seen::TooOld => seen.late = 1,
                    Seen::Duplicate => seen.duplicates = 1,
                    Seen::InOrder => {}
                }
            }
            RecordKind::Status { dropped } => {
                seen.agent_dropped = newly_dropped(&mut instance.dropped_counted, dropped);
            }
        }
        p.gaps += seen.gaps;
        p.late += seen.late;
        p.duplicates += seen.duplicates;
        p.agent_dropped += seen.agent_dropped;
        seen
    }

    /// `ids` are this member's again (or for the first time): the ticks
    /// their instances had here before are forgotten. Meanwhile another
    /// member made ticks of them durable, and this one knows neither which
    /// (a tick after them would count as a gap) nor whether it did them
    /// before (a range rebuilt after a crash would count as duplicates).
    /// The period's counts stay.
    pub(crate) fn partitions_assigned(&mut self, ids: &[PartitionId]) {
        for instance in self.instances.values_mut() {
            if instance.partition.as_ref().is_some_and(|p| ids.contains(p)) {
                instance.window = SeqWindow::default();
            }
        }
    }

    /// Ends the period at `now_ms`: one row per instance that had records,
    /// and forgets instances idle for long.
    pub fn summarize(&mut self, now_ms: u64) -> Vec<QualityRow> {
        let start = secs(self.period_start_ms);
        let end = secs(now_ms);
        self.period_start_ms = now_ms;
        let mut rows = Vec::new();
        self.instances.retain(|(host_id, instance_id), i| {
            let p = std::mem::take(&mut i.period);
            if p.records == 0 {
                i.idle_periods += 1;
                return i.idle_periods < IDLE_PERIODS;
            }
            let mut f = p.freshness_ms;
            f.sort_unstable();
            rows.push(QualityRow {
                period_start: start,
                period_end: end,
                ingester: self.ingester.clone(),
                host_id: host_id.clone(),
                instance_id: instance_id.clone(),
                records: p.records,
                first_seq: p.first_seq.unwrap_or(0),
                last_seq: p.last_seq.unwrap_or(0),
                gaps: p.gaps,
                late: p.late,
                duplicates: p.duplicates,
                agent_dropped: p.agent_dropped,
                freshness_p50_ms: percentile(&f, 50),
                freshness_p99_ms: percentile(&f, 99),
                freshness_max_ms: f.last().copied().unwrap_or(0),
            });
            true
        });
        rows.sort_by(|a, b| (&a.host_id, &a.instance_id).cmp(&(&b.host_id, &b.instance_id)));
        rows
    }
}

/// Counts the ticks of `ranges` above the highest already counted.
fn newly_dropped(counted: &mut Option<u64>, ranges: &[SeqRange]) -> u64 {
    let mut n = 0;
    let mut highest = *counted;
    for r in ranges {
        let first = match *counted {
            Some(c) if r.last <= c => continue,
            Some(c) => r.first.max(c + 1),
            None => r.first,
        };
        n += r.last - first + 1;
        highest = Some(highest.map_or(r.last, |h| h.max(r.last)));
    }
    *counted = highest;
    n
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// Counters sampled at the end of each accounting period.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    records: u64,
    rows_inserted: u64,
    dead_letters: u64,
    insert_retries: u64,
}

impl Counters {
    pub(crate) fn read(stats: &Stats) -> Counters {
        Counters {
            records: stats.records_in.get(),
            rows_inserted: stats.rows_inserted_total.get(),
            dead_letters: stats.dead_letters_total.get(),
            insert_retries: stats.insert_retries.get(),
        }
    }
}

/// This ingester's row of the accounting period that ends at `now_ms`:
/// what its counters did since `last` (which it moves on), and its state.
pub(crate) fn status_row(
    ingester: &str,
    now_ms: u64,
    stats: &Stats,
    last: &mut Counters,
    in_flight_bytes: usize,
    paused: bool,
) -> IngesterStatusRow {
    let counters = Counters::read(stats);
    let delta = |f: fn(&Counters) -> u64| f(&counters).saturating_sub(f(last));
    let row = IngesterStatusRow {
        time: u32::try_from(now_ms / 1000).unwrap_or(u32::MAX),
        ingester: ingester.to_owned(),
        records: delta(|c| c.records),
        rows_inserted: delta(|c| c.rows_inserted),
        dead_letters: delta(|c| c.dead_letters),
        insert_retries: delta(|c| c.insert_retries),
        consumer_lag: stats.total_lag.load(Ordering::Relaxed),
        assigned_partitions: stats.assigned_partitions.get(),
        in_flight_bytes: in_flight_bytes as i64,
        paused: u8::from(paused),
    };
    *last = counters;
    row
}

/// Summary rows in one batch per shard, each row on its host's shard.
pub(crate) fn per_shard(rows: Vec<QualityRow>, shards: usize) -> Vec<Batch> {
    let mut per_shard: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
    for row in rows {
        per_shard[shard_for(&row.host_id, shards)].push(row);
    }
    per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(shard, rows)| Batch::of(shard, Rows::Quality(rows)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn meta(host: &str, seq: u64, time_ms: u64) -> Meta {
        Meta {
            host_id: host.into(),
            instance_id: "i".into(),
            time_ms,
            kind: RecordKind::Metrics { tick: seq, part: 0 },
        }
    }

    #[test]
    fn in_order_ticks_are_clean() {
        let mut w = SeqWindow::default();
        for s in 5..3000 {
            assert_eq!(w.observe(s), Seen::InOrder);
        }
    }

    #[test]
    fn gaps_late_duplicates_and_too_old() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(10), Seen::InOrder);
        assert_eq!(w.observe(14), Seen::Gap(3));
        assert_eq!(w.observe(12), Seen::Late);
        assert_eq!(w.observe(12), Seen::Duplicate);
        assert_eq!(w.observe(14), Seen::Duplicate);
        // Older than the first tick seen: another member's.
        assert_eq!(w.observe(3), Seen::InOrder);
        assert_eq!(w.observe(14 + WINDOW), Seen::Gap(WINDOW - 1));
        assert_eq!(w.observe(13), Seen::TooOld);
    }

    #[test]
    fn summaries_report_per_instance_and_reset() {
        let mut q = Quality::new("ing".into(), 1_000_000);
        for (seq, lag) in [(0, 100), (1, 200), (3, 300), (3, 400), (2, 5000)] {
            q.observe(&meta("a", seq, 1_000_000), "t", 0, 1_000_000 + lag);
        }
        let status = Meta {
            host_id: "a".into(),
            instance_id: "i".into(),
            time_ms: 1_000_000,
            kind: RecordKind::Status {
                dropped: vec![SeqRange { first: 7, last: 9 }],
            },
        };
        assert_eq!(q.observe(&status, "t", 0, 1_000_050).agent_dropped, 3);
        // The agent repeats its report until delivered: counted once.
        assert_eq!(q.observe(&status, "t", 0, 1_000_060).agent_dropped, 0);
        q.observe(&meta("b", 0, 1_000_000), "t", 1, 1_000_010);
        let rows = q.summarize(1_060_000);
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!((a.host_id.as_str(), a.records), ("a", 7));
        assert_eq!((a.first_seq, a.last_seq), (0, 3));
        assert_eq!(
            (a.gaps, a.late, a.duplicates, a.agent_dropped),
            (1, 1, 1, 3)
        );
        assert_eq!(a.freshness_max_ms, 5000);
        assert_eq!(a.freshness_p50_ms, 200);
        assert_eq!((a.period_start, a.period_end), (1000, 1060));
        // Nothing new: no rows, but the window is kept.
        assert!(q.summarize(1_120_000).is_empty());
        q.observe(&meta("a", 3, 1_000_000), "t", 0, 1_120_001);
        assert_eq!(q.summarize(1_180_000)[0].duplicates, 1);
    }

    #[test]
    fn a_partition_assigned_again_forgets_its_instances_ticks() {
        let mut q = Quality::new("ing".into(), 1_000_000);
        for seq in 0..5 {
            q.observe(&meta("a", seq, 1_000_000), "t", 0, 1_000_001);
            q.observe(&meta("b", seq, 1_000_000), "t", 1, 1_000_001);
        }
        // Partition 0 went to another member, which rebuilt ticks 3..=4
        // (this member had not committed them) and made 5..=9 durable; back
        // here, the partition resumes at tick 10.
        q.partitions_assigned(&[PartitionId::new("t", 0)]);
        for seq in 10..12 {
            q.observe(&meta("a", seq, 1_000_000), "t", 0, 1_000_002);
        }
        // Partition 1 stayed: its instance is still checked.
        q.observe(&meta("b", 4, 1_000_000), "t", 1, 1_000_002);
        let rows = q.summarize(1_060_000);
        let (a, b) = (&rows[0], &rows[1]);
        assert_eq!((a.gaps, a.duplicates, a.records), (0, 0, 7));
        assert_eq!((b.gaps, b.duplicates), (0, 1));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    proptest! {
        /// Against a naive model that remembers every tick: within the
        /// window, gaps - late is exactly the number still missing, and
        /// duplicates are exact.
        #[test]
        fn window_matches_a_model(seqs in prop::collection::vec(0u64..600, 1..400)) {
            let mut w = SeqWindow::default();
            let mut seen = BTreeSet::new();
            let (mut gaps, mut late, mut dups) = (0u64, 0u64, 0u64);
            for &s in &seqs {
                match w.observe(s) {
                    Seen::Gap(n) => gaps += n,
                    Seen::Late => late += 1,
                    Seen::Duplicate => dups += 1,
                    Seen::InOrder | Seen::TooOld => {}
                }
                seen.insert(s);
            }
            let first = seqs[0];
            let newest = *seen.last().unwrap();
            let missing = (first..=newest).filter(|s| !seen.contains(s)).count() as u64;
            prop_assert_eq!(gaps - late, missing);
            prop_assert_eq!(dups, seqs.len() as u64 - seen.len() as u64);
        }
    }
}
