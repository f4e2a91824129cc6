//! The commit watermark: per partition, the offset up to which every record
//! is durable (its rows inserted, or it was dead-lettered).
//!
//! Batches finish out of order (different shards, retries), so a finished
//! offset is not committable until every offset below it finished too.
//! Committing past an unfinished record would lose it on a crash — the trap
//! rust-rdkafka's own at-least-once example warns about.
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

/// Watermarks of every assigned partition, keyed by (topic, partition).
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<(String, i32), PartitionState>,
}

impl Watermarks {
    /// A record was consumed and is now in flight.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self.parts.entry((topic.to_owned(), partition)).or_default();
        p.pending.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record is durable (or dead-lettered). Unknown partitions (revoked
    /// meanwhile) are ignored.
    pub fn finished(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&(topic.to_owned(), partition)) {
            p.pending.remove(&offset);
        }
    }

    /// The partition was revoked: forget it, so that nothing is committed
    /// for it by this member.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_owned(), partition));
    }

    /// The offset to commit for one partition: the lowest pending offset, or
    /// one past the highest consumed if nothing is pending.
    fn watermark(p: &PartitionState) -> Option<i64> {
        p.pending.first().copied().or(p.next)
    }

    /// Watermarks that moved since the last call, to commit now.
    pub fn to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.parts {
            if let Some(w) = Self::watermark(p)
                && p.committed != Some(w)
            {
                p.committed = Some(w);
                out.push((topic.clone(), *partition, w));
            }
        }
        out.sort();
        out
    }

    /// One past the highest offset consumed, per partition: where fetching
    /// must continue.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        let mut out: Vec<(String, i32, i64)> = self
            .parts
            .iter()
            .filter_map(|((t, p), s)| s.next.map(|n| (t.clone(), *p, n)))
            .collect();
        out.sort();
        out
    }

    /// Records in flight in all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.consumed("t", 0, o);
        }
        w.finished("t", 0, 12);
        w.finished("t", 0, 13);
        assert_eq!(w.to_commit(), vec![("t".into(), 0, 10)]);
        w.finished("t", 0, 10);
        w.finished("t", 0, 11);
        assert_eq!(w.to_commit(), vec![("t".into(), 0, 14)]);
        assert!(
            w.to_commit().is_empty(),
            "unchanged watermarks are not repeated"
        );
        w.finished("t", 0, 14);
        assert_eq!(w.to_commit(), vec![("t".into(), 0, 15)]);
    }

    #[test]
    fn revoked_partitions_are_never_committed() {
        let mut w = Watermarks::default();
        w.consumed("t", 1, 5);
        w.revoke("t", 1);
        w.finished("t", 1, 5);
        assert!(w.to_commit().is_empty());
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
                for (_, _, c) in w.to_commit() {
                    let lowest = unfinished.iter().min().copied().unwrap_or(base + n as i64);
                    prop_assert_eq!(c, lowest);
                }
            }
            for o in unfinished.drain(..) {
                w.finished("t", 0, o);
            }
            let last = w.to_commit();
            prop_assert!(last.is_empty() || last == vec![("t".to_owned(), 0, base + n as i64)]);
        }
    }
}
