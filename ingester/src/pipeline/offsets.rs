//! The commit watermark: per partition, the offset up to which every record
//! is durable (its rows inserted, or it was dead-lettered).
//!
//! Batches finish out of order (different shards, retries), so a finished
//! offset is not committable until every offset below it finished too.
//! Committing past an unfinished record would lose it on a crash — the trap
//! rust-rdkafka's own at-least-once example warns about.
//!
//! The pipeline finishes records a whole range at a time (`ranges.rs`), so
//! the watermark is always the first offset of a range: where the next owner
//! starts rebuilding the ranges the journal lists.
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
        Some(Commit {
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }

    /// Commits for the partitions whose watermark moved since the last call.
    pub fn to_commit(&mut self) -> Vec<Commit> {
        let mut out = Vec::new();
        for (topic, parts) in &mut self.topics {
            for (partition, p) in parts {
                let w = Self::watermark(p);
                if w.is_some() && p.committed != w {
                    p.committed = w;
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

/// An offset to commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read: every record below it is durable.
    pub offset: i64,
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
}
