//! Telling poison from a schema problem. ClickHouse rejecting a record for
//! its data is poison, and the record goes to the dead-letter topic. A
//! partition whose records are rejected one after another (a column's type
//! changed under the ingester, a migration not applied) is not: dead-lettering
//! would empty the partition into the DLQ. After
//! `pipeline.rejects_before_pause` records of one partition rejected in a
//! row, with none accepted between, the insert worker **stalls**: the
//! partition is paused, `/ready` answers 503, the rejected rows are retried
//! with backoff instead of dead-lettered, and the partition resumes once the
//! server accepts them.
//!
//! [`Stalls`] holds the per-partition runs of rejections and the set of
//! stalled partitions; the poll thread pauses what is in the set.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::pipeline::message::PartitionId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use spillway_shared::lock;

/// Per-partition runs of rejected records, and the stalled partitions.
#[derive(Debug)]
pub(crate) struct Stalls {
    /// Records rejected in a row before a partition stalls; 0: never.
    limit: usize,
    state: Mutex<State>,
    /// Bumped whenever the set of stalled partitions changes.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Records rejected in a row, per partition.
    runs: HashMap<PartitionId, usize>,
    /// Stalled partitions, with how many workers hold each stalled.
    stalled: BTreeMap<PartitionId, usize>,
}

impl Stalls {
    /// Stalls a partition after `limit` rejections in a row (0: never).
    pub(crate) fn new(limit: usize) -> Stalls {
        Stalls {
            limit,
            state: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether a schema problem pauses partitions (a limit of 0: never).
    pub(crate) fn pauses(&self) -> bool {
        self.limit > 0
    }

    /// A record of `key` was accepted: its run of rejections ends.
    pub(crate) fn accepted(&self, key: &PartitionId) {
        lock(&self.state).runs.remove(key);
    }

    /// A record of `key` was rejected for its data. True when the run has
    /// reached the limit: a schema problem, not poison.
    pub(crate) fn rejected(&self, key: &PartitionId) -> bool {
        let mut state = lock(&self.state);
        let run = state.runs.entry(key.clone()).or_default();
        *run += 1;
        self.limit > 0 && *run >= self.limit
    }

    /// A worker stalls on `key`: the partition is paused until every worker
    /// stalled on it has [`resume`](Self::resume)d.
    pub(crate) fn stall(&self, key: &PartitionId) {
        *lock(&self.state).stalled.entry(key.clone()).or_default() += 1;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A worker stalled on `key` goes on (rows accepted, or shutting down).
    pub(crate) fn resume(&self, key: &PartitionId) {
        let mut state = lock(&self.state);
        if let Some(n) = state.stalled.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                state.stalled.remove(key);
            }
        }
        state.runs.remove(key);
        drop(state);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether `key` is stalled now.
    pub(crate) fn is_stalled(&self, key: &PartitionId) -> bool {
        lock(&self.state).stalled.contains_key(key)
    }

    /// How many partitions are stalled now.
    pub(crate) fn count(&self) -> usize {
        lock(&self.state).stalled.len()
    }

    /// Changes whenever the set of stalled partitions does.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionId {
        PartitionId::new("metrics", p)
    }

    #[test]
    fn a_run_of_rejections_reaches_the_limit_and_an_acceptance_ends_it() {
        let s = Stalls::new(3);
        assert!(!s.rejected(&key(0)));
        assert!(!s.rejected(&key(0)));
        // Another partition's rejections are its own run.
        assert!(!s.rejected(&key(1)));
        s.accepted(&key(0));
        assert!(!s.rejected(&key(0)));
        assert!(!s.rejected(&key(0)));
        assert!(s.rejected(&key(0)));
    }

    #[test]
    fn a_limit_of_zero_never_stalls() {
        let s = Stalls::new(0);
        assert!((0..1000).all(|_| !s.rejected(&key(0))));
    }

    #[test]
    fn a_partition_stays_stalled_until_every_stalled_worker_resumes() {
        let s = Stalls::new(1);
        let g = s.generation();
        s.stall(&key(0));
        s.stall(&key(0));
        assert!(s.generation() > g);
        assert!(s.is_stalled(&key(0)) && !s.is_stalled(&key(1)));
        assert_eq!(s.count(), 1);
        s.resume(&key(0));
        assert!(s.is_stalled(&key(0)));
        s.resume(&key(0));
        assert!(!s.is_stalled(&key(0)));
        assert_eq!(s.count(), 0);
        // The run starts again after a resume.
        assert!(s.rejected(&key(0)));
    }
}
