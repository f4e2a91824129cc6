//! The commit watermark: per partition, the offset up to which every record
//! is durable (its rows inserted, or it was dead-lettered).
//!
//! Batches finish out of order (different shards, retries), so a finished
//! offset is not committable until every offset below it finished too.
//! Committing past an unfinished record would lose it on a crash — the trap
//! rust-rdkafka's own at-least-once example warns about.
//!
//! What finished *above* the watermark is not lost either: each commit
//! carries it in the offset's metadata ([`DurableSet`]), so a member that
//! takes the partition over after a crash skips those records instead of
//! inserting them a second time.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};

/// Offsets of one partition.
#[derive(Debug, Default, Clone)]
struct PartitionState {
    /// Consumed and not yet finished.
    pending: BTreeSet<i64>,
    /// One past the highest offset consumed.
    next: Option<i64>,
    /// The last watermark handed out for commit.
    committed: Option<i64>,
    /// A record finished since the last commit was handed out (the set
    /// above the watermark grew, even if the watermark did not move).
    finished_since: bool,
}

/// Watermarks of every assigned partition, by topic then partition (looked
/// up by `&str`, so the per-record calls do not allocate).
#[derive(Debug, Default)]
pub struct Watermarks {
    topics: HashMap<String, HashMap<i32, PartitionState>>,
}

impl Watermarks {
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.topics.get_mut(topic)?.get_mut(&partition)
    }

    /// A record was consumed and is now in flight.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        let parts = match self.topics.get_mut(topic) {
            Some(parts) => parts,
            None => self.topics.entry(topic.to_owned()).or_default(),
        };
        let p = parts.entry(partition).or_default();
        p.pending.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record is durable (or dead-lettered). Unknown partitions (revoked
    /// meanwhile) are ignored.
    pub fn finished(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.pending.remove(&offset);
            p.finished_since = true;
        }
    }

    /// The partition was revoked: forget it, so that nothing more is
    /// committed for it by this member. Returns what this member may commit
    /// for it last.
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<Commit> {
        let parts = self.topics.get_mut(topic)?;
        let p = parts.remove(&partition)?;
        if parts.is_empty() {
            self.topics.remove(topic);
        }
        Self::commit_of(topic, partition, &p)
    }

    /// The offset to commit for one partition: the lowest pending offset, or
    /// one past the highest consumed if nothing is pending.
    fn watermark(p: &PartitionState) -> Option<i64> {
        p.pending.first().copied().or(p.next)
    }

    fn commit_of(topic: &str, partition: i32, p: &PartitionState) -> Option<Commit> {
        let offset = Self::watermark(p)?;
        let durable = match p.next {
            Some(next) if next > offset => DurableSet::above(offset, next, &p.pending),
            _ => DurableSet::default(),
        };
        Some(Commit {
            topic: topic.to_owned(),
            partition,
            offset,
            metadata: durable.encode(),
        })
    }

    /// Commits for the partitions whose watermark moved or that finished
    /// records since the last call.
    pub fn to_commit(&mut self) -> Vec<Commit> {
        let mut out = Vec::new();
        for (topic, parts) in &mut self.topics {
            for (partition, p) in parts {
                let w = Self::watermark(p);
                if w.is_some() && (p.committed != w || p.finished_since) {
                    p.committed = w;
                    p.finished_since = false;
                    out.extend(Self::commit_of(topic, *partition, p));
                }
            }
        }
        out.sort();
        out
    }

    /// The last [`to_commit`](Self::to_commit) was not sent: hand every
    /// watermark out again next time.
    pub fn forget_committed(&mut self) {
        for p in self.topics.values_mut().flat_map(HashMap::values_mut) {
            p.committed = None;
            p.finished_since = true;
        }
    }

    /// Records in flight in all partitions.
    pub fn in_flight(&self) -> usize {
        self.topics
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.pending.len())
            .sum()
    }

    /// Records in flight in one partition.
    pub fn in_flight_of(&self, topic: &str, partition: i32) -> usize {
        self.topics
            .get(topic)
            .and_then(|parts| parts.get(&partition))
            .map_or(0, |p| p.pending.len())
    }
}

/// An offset to commit, with the records above it that are durable already.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read: every record below it is durable.
    pub offset: i64,
    /// [`DurableSet::encode`] of the durable records above `offset`.
    pub metadata: String,
}

/// Records above a committed offset that are durable already, carried in the
/// commit's metadata: a bitmap, bit `i` for offset `base + i` (least
/// significant bit first), hex-encoded after a version tag. At most
/// [`DurableSet::MAX_OFFSETS`] offsets are covered, so the metadata stays
/// under Kafka's default `offset.metadata.max.bytes` (4096); records past
/// that are read again, as without the set. An empty or foreign metadata
/// string is an empty set: skipping is only ever an optimisation, and a
/// record is skipped only if a commit said it is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableSet {
    base: i64,
    bits: Vec<u8>,
}

impl DurableSet {
    const TAG: &'static str = "spillway-durable-v1:";
    /// Offsets covered at most: 2,000 bytes of bitmap, 4,000 hex digits.
    pub const MAX_OFFSETS: i64 = 16_000;

    /// The offsets in `[from, to)` not in `pending` (capped at
    /// [`Self::MAX_OFFSETS`]).
    fn above(from: i64, to: i64, pending: &BTreeSet<i64>) -> Self {
        let end = to.min(from.saturating_add(Self::MAX_OFFSETS));
        let n = usize::try_from(end - from).unwrap_or(0);
        let mut bits = vec![0xffu8; n.div_ceil(8)];
        if n % 8 != 0
            && let Some(last) = bits.last_mut()
        {
            *last = (1u8 << (n % 8)) - 1;
        }
        for &o in pending.range(from..end) {
            let i = usize::try_from(o - from).unwrap_or(0);
            bits[i / 8] &= !(1u8 << (i % 8));
        }
        while bits.last() == Some(&0) {
            bits.pop();
        }
        DurableSet { base: from, bits }
    }

    /// The commit metadata; empty when nothing above the offset is durable.
    pub fn encode(&self) -> String {
        if self.bits.is_empty() {
            return String::new();
        }
        format!("{}{}", Self::TAG, hex::encode(&self.bits))
    }

    /// The set a commit at `base` carried; empty if `metadata` is not ours.
    pub fn decode(base: i64, metadata: &str) -> Self {
        let bits = metadata
            .strip_prefix(Self::TAG)
            .filter(|h| h.len() <= 2 * (Self::MAX_OFFSETS as usize).div_ceil(8))
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        DurableSet { base, bits }
    }

    /// Whether `offset` is known durable.
    pub fn contains(&self, offset: i64) -> bool {
        let Some(i) = offset
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// One past the highest offset the set can name.
    pub fn end(&self) -> i64 {
        self.base + 8 * self.bits.len() as i64
    }

    /// How many offsets it names.
    pub fn len(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (partition, offset) of each commit, for the watermark tests.
    fn offsets(commits: Vec<Commit>) -> Vec<(String, i32, i64)> {
        commits
            .into_iter()
            .map(|c| (c.topic, c.partition, c.offset))
            .collect()
    }

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.consumed("t", 0, o);
        }
        w.finished("t", 0, 12);
        w.finished("t", 0, 13);
        assert_eq!(offsets(w.to_commit()), vec![("t".into(), 0, 10)]);
        w.finished("t", 0, 10);
        w.finished("t", 0, 11);
        assert_eq!(offsets(w.to_commit()), vec![("t".into(), 0, 14)]);
        assert!(
            w.to_commit().is_empty(),
            "unchanged watermarks are not repeated"
        );
        w.finished("t", 0, 14);
        assert_eq!(offsets(w.to_commit()), vec![("t".into(), 0, 15)]);
    }

    #[test]
    fn revoked_partitions_are_never_committed() {
        let mut w = Watermarks::default();
        w.consumed("t", 1, 5);
        w.consumed("t", 1, 6);
        w.finished("t", 1, 6);
        assert_eq!(w.in_flight_of("t", 1), 1);
        let last = w.revoke("t", 1).map(|c| c.offset);
        assert_eq!(last, Some(5), "never past the unfinished 5");
        w.finished("t", 1, 5);
        assert!(w.to_commit().is_empty());
        assert_eq!(w.in_flight(), 0);
    }

    proptest! {
        /// Against a naive model: the committed offset never passes an
        /// unfinished record, and reaches the end once all are finished.
        #[test]
        fn never_commits_past_an_unfinished_record(
            n in 1usize..60,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut w = Watermarks::default();
            let base = 100i64;
            for i in 0..n {
                w.consumed("t", 0, base + i as i64);
            }
            let mut unfinished: Vec<i64> = (0..n as i64).map(|i| base + i).collect();
            for idx in order {
                if unfinished.is_empty() {
                    break;
                }
                let o = unfinished.remove(idx.index(unfinished.len()));
                w.finished("t", 0, o);
                for (_, _, c) in offsets(w.to_commit()) {
                    let lowest = unfinished.iter().min().copied().unwrap_or(base + n as i64);
                    prop_assert_eq!(c, lowest);
                }
            }
            for o in unfinished.drain(..) {
                w.finished("t", 0, o);
            }
            let last = offsets(w.to_commit());
            prop_assert!(last.is_empty() || last == vec![("t".to_owned(), 0, base + n as i64)]);
        }
    }

    #[test]
    fn commits_carry_what_finished_above_the_watermark() {
        let mut w = Watermarks::default();
        for o in 10..20 {
            w.consumed("t", 0, o);
        }
        for o in [12, 13, 15, 19] {
            w.finished("t", 0, o);
        }
        let c = w.to_commit().remove(0);
        assert_eq!(c.offset, 10);
        let set = DurableSet::decode(c.offset, &c.metadata);
        let durable: Vec<i64> = (0..40).filter(|o| set.contains(*o)).collect();
        assert_eq!(durable, [12, 13, 15, 19]);
        // The watermark did not move, but more finished: commit again.
        w.finished("t", 0, 17);
        let again = w.to_commit();
        assert_eq!(again.len(), 1);
        assert!(DurableSet::decode(10, &again[0].metadata).contains(17));
        assert!(w.to_commit().is_empty(), "nothing new, nothing to commit");
        // All finished: no metadata at all.
        for o in [10, 11, 14, 16, 18] {
            w.finished("t", 0, o);
        }
        let done = w.to_commit().remove(0);
        assert_eq!((done.offset, done.metadata.as_str()), (20, ""));
    }

    #[test]
    fn foreign_or_broken_metadata_is_an_empty_set() {
        for m in [
            "",
            "hello",
            "spillway-durable-v1:zz",
            "spillway-durable-v1:0",
        ] {
            let set = DurableSet::decode(5, m);
            assert!(set.is_empty() && !set.contains(5), "{m:?}");
        }
        let huge = format!("spillway-durable-v1:{}", "ff".repeat(3000));
        assert!(
            DurableSet::decode(0, &huge).is_empty(),
            "over the cap: ignored"
        );
    }

    #[test]
    fn the_set_is_capped_to_fit_kafka_metadata() {
        let mut w = Watermarks::default();
        for o in 0..100_000 {
            w.consumed("t", 0, o);
        }
        for o in 1..100_000 {
            w.finished("t", 0, o);
        }
        let c = w.to_commit().remove(0);
        assert_eq!(c.offset, 0);
        assert!(c.metadata.len() < 4096, "{} bytes", c.metadata.len());
        let set = DurableSet::decode(0, &c.metadata);
        assert_eq!(set.len(), (DurableSet::MAX_OFFSETS - 1) as u64);
        assert!(!set.contains(DurableSet::MAX_OFFSETS));
    }

    proptest! {
        /// Against a naive model: after any order of finishing, the offset
        /// plus its durable set name exactly the finished records (up to the
        /// cap), and never an unfinished one.
        #[test]
        fn the_durable_set_names_exactly_the_finished_records(
            n in 1i64..300,
            done in proptest::collection::vec(any::<bool>(), 300),
        ) {
            let mut w = Watermarks::default();
            for o in 0..n {
                w.consumed("t", 3, 1000 + o);
            }
            for o in 0..n {
                if done[o as usize] {
                    w.finished("t", 3, 1000 + o);
                }
            }
            let c = w.revoke("t", 3).expect("assigned");
            let set = DurableSet::decode(c.offset, &c.metadata);
            for o in 0..n {
                let off = 1000 + o;
                let known = off < c.offset || set.contains(off);
                prop_assert_eq!(known, done[o as usize], "offset {}", off);
            }
        }
    }
}
