//! Where one partition's records are cut into ranges.
//!
//! A range is a run of consecutive offsets of one partition; everything built
//! from it (one INSERT per shard and table its rows go to, and its dead
//! letters) is one unit: journaled before it is inserted, finished when all
//! of it is durable, committed past only then. A member cuts new ranges
//! where it likes (at `batch.max_rows`, `batch.max_bytes` or `batch.max_age`);
//! a range a previous owner journaled is *rebuilt*: cut at exactly its
//! journaled boundaries, never early, so that its INSERTs are the same ones.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::pipeline::batch::Batch;
use crate::pipeline::dlq::Letter;
use crate::pipeline::message::{Body, Decoded, PartitionId, RangeId, Raw, Rejected, Source};
use crate::sink::rows::Table;
use crate::telemetry::Stats;

/// An inclusive range of offsets, (first, last).
pub(crate) type Span = (i64, i64);

/// What to do with a record, given the open range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Close the open range before adding the record.
    pub(crate) close_before: bool,
    /// The record belongs to this journaled range (first, last): the range
    /// it opens or joins is rebuilt, not cut freely.
    pub(crate) rebuild: Option<Span>,
    /// Close the range right after adding the record (its journaled end).
    pub(crate) close_after: bool,
}

/// Decides where the record at `offset` goes. `open` is the journaled range
/// the open range rebuilds (`Some(None)`: an open range cut freely; `None`:
/// no open range). `rebuild` holds the journaled ranges still to come, in
/// order; those that end before `offset` are dropped (their records were
/// not there: compacted, or the journal outlived them).
pub(crate) fn cut(rebuild: &mut VecDeque<Span>, open: Option<Option<Span>>, offset: i64) -> Cut {
    let mut close_before = false;
    while let Some(&(first, last)) = rebuild.front() {
        if last >= offset {
            break;
        }
        rebuild.pop_front();
        if open == Some(Some((first, last))) {
            close_before = true;
        }
    }
    let open_rebuilds = matches!(open, Some(Some(_))) && !close_before;
    match rebuild.front().copied() {
        Some((first, last)) if offset >= first => {
            // Inside a journaled range: a free range before it ends here.
            if open.is_some() && open != Some(Some((first, last))) {
                close_before = true;
            }
            let close_after = offset == last;
            if close_after {
                rebuild.pop_front();
            }
            Cut {
                close_before,
                rebuild: Some((first, last)),
                close_after,
            }
        }
        _ => Cut {
            // Past the end of a journaled range that is still open (its last
            // record missing): it ends before this record.
            close_before: close_before || open_rebuilds,
            rebuild: None,
            close_after: false,
        },
    }
}

/// One partition's ranges.
#[derive(Default)]
pub(crate) struct Partition {
    /// Which assignment this state belongs to (journal replies for an
    /// earlier one are ignored).
    pub(crate) epoch: u64,
    /// Records waiting for the journal to be read (`None` once it was).
    pub(crate) held: Option<Vec<Decoded>>,
    /// Journaled ranges still to rebuild, in order.
    pub(crate) rebuild: VecDeque<Span>,
    pub(crate) open: Option<Open>,
    /// Closed ranges not yet durable, by their first record's offset.
    pub(crate) in_flight: BTreeMap<i64, InFlight>,
    /// Rows and records per (shard, table) of the last range closed: the
    /// next range's batches start with that much room. Growing a batch of
    /// hundreds of thousands of rows by doubling cost a third of the
    /// ingester's CPU in page faults and copies.
    pub(crate) last_sizes: Vec<BatchSize>,
}

/// How big one batch of a closed range grew: the next range's batch for
/// the same shard and table starts with that much room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSize {
    pub(crate) shard: usize,
    pub(crate) table: Table,
    pub(crate) rows: usize,
    pub(crate) sources: usize,
}

/// The range being filled.
pub(crate) struct Open {
    /// Its first record's offset (the key of its sources' range).
    pub(crate) first: i64,
    pub(crate) last: i64,
    /// The journaled range it rebuilds; `None` for a range cut here.
    pub(crate) rebuild: Option<Span>,
    pub(crate) created: Instant,
    /// One per (shard, table) its rows go to.
    pub(crate) batches: Vec<Batch>,
    pub(crate) letters: Vec<Letter>,
    pub(crate) offsets: Vec<i64>,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
}

impl Open {
    /// A range that starts at `first`, rebuilding `rebuild` if it is a
    /// journaled one.
    pub(crate) fn new(first: i64, rebuild: Option<Span>) -> Open {
        Open {
            first,
            last: first,
            rebuild,
            created: Instant::now(),
            batches: Vec::new(),
            letters: Vec::new(),
            offsets: Vec::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Adds the record `raw` of assignment `epoch`: its rows to the batch
    /// of their shard and table (sized from `last_sizes` when new), or, if
    /// it decoded to nothing, a letter. Returns the bytes it costs.
    pub(crate) fn add(
        &mut self,
        raw: Raw,
        outcome: Result<Body, Rejected>,
        epoch: u64,
        last_sizes: &[BatchSize],
        stats: &Stats,
    ) -> usize {
        self.offsets.push(raw.offset);
        self.last = raw.offset;
        let range = RangeId {
            epoch,
            first: self.first,
        };
        let body = match outcome {
            Ok(body) => body,
            Err(rejected) => {
                stats.decode_errors.inc();
                let cost = raw.payload.len();
                self.letters.push(Letter {
                    source: Source::new(raw, cost, None, range),
                    kind: rejected.kind,
                    message: rejected.message,
                });
                return cost;
            }
        };
        let cost = raw.payload.len() + body.mem_bytes;
        stats.rows_in.inc_by(body.rows.len() as u64);
        let i = self.batch_for(body.shard, body.rows.table(), last_sizes);
        self.rows += body.rows.len();
        self.bytes += body.row_bytes;
        let source = Source::new(raw, cost, Some(body.meta), range);
        self.batches[i].push(body.rows, body.row_bytes, source);
        cost
    }

    /// The index of the batch for `shard` and `table`, made if missing.
    fn batch_for(&mut self, shard: usize, table: Table, last_sizes: &[BatchSize]) -> usize {
        if let Some(i) = self
            .batches
            .iter()
            .position(|b| b.shard == shard && b.rows.table() == table)
        {
            return i;
        }
        let (rows, sources) = last_sizes
            .iter()
            .find(|s| s.shard == shard && s.table == table)
            .map_or((0, 0), |s| (s.rows, s.sources));
        self.batches
            .push(Batch::with_capacity(shard, table, rows, sources));
        self.batches.len() - 1
    }

    /// Bytes its records count against the budget.
    pub(crate) fn cost(&self) -> usize {
        sources_cost(&self.batches, &self.letters)
    }
}

pub(crate) fn sources_cost(batches: &[Batch], letters: &[Letter]) -> usize {
    let rows: usize = batches
        .iter()
        .flat_map(|b| &b.sources)
        .map(|s| s.cost)
        .sum();
    rows + letters.iter().map(|l| l.source.cost).sum::<usize>()
}

/// A closed range whose records are not all durable yet.
pub(crate) struct InFlight {
    pub(crate) offsets: Vec<i64>,
    pub(crate) remaining: usize,
}

/// A range closed and on its way: to the journal, then to the workers.
pub(crate) struct Closed {
    pub(crate) id: PartitionId,
    pub(crate) epoch: u64,
    /// The range as journaled.
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) records: u32,
    /// A journaled range built again (not journaled a second time).
    pub(crate) rebuilt: bool,
    pub(crate) batches: Vec<Batch>,
    pub(crate) letters: Vec<Letter>,
}

impl Closed {
    /// Bytes its records count against the budget.
    pub(crate) fn cost(&self) -> usize {
        sources_cost(&self.batches, &self.letters)
    }
}

/// Closes a partition's open range: it is in flight until all of it is
/// durable.
pub(crate) fn close(p: &mut Partition, topic: &str, partition: i32) -> Option<Closed> {
    let open = p.open.take()?;
    p.last_sizes = open
        .batches
        .iter()
        .map(|b| BatchSize {
            shard: b.shard,
            table: b.rows.table(),
            rows: b.rows.len(),
            sources: b.sources.len(),
        })
        .collect();
    let (first, last) = open.rebuild.unwrap_or((open.first, open.last));
    let records = open.offsets.len();
    p.in_flight.insert(
        open.first,
        InFlight {
            offsets: open.offsets,
            remaining: records,
        },
    );
    Some(Closed {
        id: PartitionId::new(topic, partition),
        epoch: p.epoch,
        first,
        last,
        records: u32::try_from(records).unwrap_or(u32::MAX),
        rebuilt: open.rebuild.is_some(),
        batches: open.batches,
        letters: open.letters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `offsets` through [`cut`] and returns the ranges formed, as
    /// (first record, last record, journaled range or None), with free
    /// ranges cut every `free_max` records.
    /// A range formed: first record, last record, the journaled range.
    type Formed = (i64, i64, Option<Span>);
    /// The open range: its records, the journaled range.
    type Filling = Option<(Vec<i64>, Option<Span>)>;

    fn ranges(journal: &[Span], offsets: &[i64], free_max: usize) -> Vec<Formed> {
        let mut rebuild: VecDeque<_> = journal.iter().copied().collect();
        let mut out = Vec::new();
        let mut open: Filling = None;
        let close = |open: &mut Filling, out: &mut Vec<Formed>| {
            if let Some((records, r)) = open.take() {
                out.push((records[0], *records.last().unwrap(), r));
            }
        };
        for &o in offsets {
            let c = cut(&mut rebuild, open.as_ref().map(|(_, r)| *r), o);
            if c.close_before {
                close(&mut open, &mut out);
            }
            let range = open.get_or_insert_with(|| (Vec::new(), c.rebuild));
            range.0.push(o);
            if c.close_after || (range.1.is_none() && range.0.len() >= free_max) {
                close(&mut open, &mut out);
            }
        }
        close(&mut open, &mut out);
        out
    }

    #[test]
    fn journaled_ranges_are_cut_exactly_then_free_cutting_resumes() {
        let got = ranges(&[(10, 14), (15, 22)], &(10..30).collect::<Vec<_>>(), 4);
        assert_eq!(
            got,
            vec![
                (10, 14, Some((10, 14))),
                (15, 22, Some((15, 22))),
                (23, 26, None),
                (27, 29, None),
            ]
        );
    }

    #[test]
    fn a_free_range_ends_where_a_journaled_one_begins() {
        let got = ranges(&[(13, 20)], &(10..22).collect::<Vec<_>>(), 100);
        assert_eq!(
            got,
            vec![(10, 12, None), (13, 20, Some((13, 20))), (21, 21, None)]
        );
    }

    #[test]
    fn missing_records_do_not_hold_a_journaled_range_open() {
        // 14 (the journaled end) and all of 15..=16 are gone.
        let got = ranges(&[(10, 14), (15, 16)], &[10, 11, 13, 17, 18], 100);
        assert_eq!(got, vec![(10, 13, Some((10, 14))), (17, 18, None)]);
    }

    #[test]
    fn journaled_ranges_below_the_first_record_are_dropped() {
        let got = ranges(&[(0, 9), (10, 11)], &[10, 11, 12], 100);
        assert_eq!(got, vec![(10, 11, Some((10, 11))), (12, 12, None)]);
    }
}
