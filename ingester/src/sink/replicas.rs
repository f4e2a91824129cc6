//! A shard's replicas: which one takes the next request, and failover.
//!
//! Requests go to one replica, the *active* one, until it fails with a
//! retryable error (a connection refused or reset, a timeout, a server
//! error such as a read-only table): it is marked down and the next replica
//! in the configured order that is not marked down becomes active, so the
//! caller's retry goes there. A replica is marked up again by a request or
//! a probe that succeeds; the active replica does not move back by itself
//! (each move costs a connection pool's warm-up, and any replica will do).
//!
//! Failover is safe for exactly-once because a retried INSERT carries the
//! same deduplication token (or, on servers before 22.2, the same bytes)
//! and Replicated tables keep their deduplication log in Keeper/ZooKeeper
//! for the whole shard: an INSERT stored by the replica that then died is
//! dropped by the one that takes the retry.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use tracing::warn;

use crate::config::ShardConfig;

/// One server of a shard.
pub struct Replica {
    /// Its URL, as configured (the `replica` label of its metrics).
    pub url: String,
    pub(crate) client: clickhouse::Client,
    up: AtomicBool,
}

impl Replica {
    /// Whether its last request or probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }
}

/// The replicas of one shard.
pub struct Replicas {
    shard: usize,
    members: Vec<Replica>,
    active: AtomicUsize,
}

impl Replicas {
    /// Clients for the shard's servers (no connection yet).
    pub fn new(shard: usize, config: &ShardConfig) -> Result<Replicas, crate::tls::TlsError> {
        let members = config
            .servers()
            .iter()
            .map(|server| {
                Ok(Replica {
                    url: server.url.clone(),
                    client: crate::sink::https::client(server)?,
                    // Believed up until something fails: a start-up against a
                    // down replica would otherwise look like a down shard.
                    up: AtomicBool::new(true),
                })
            })
            .collect::<Result<_, crate::tls::TlsError>>()?;
        Ok(Replicas {
            shard,
            members,
            active: AtomicUsize::new(0),
        })
    }

    /// The replica that takes the next request.
    pub fn active(&self) -> (usize, &Replica) {
        let i = self.active.load(Relaxed) % self.members.len().max(1);
        (i, &self.members[i])
    }

    /// Every replica, in the configured order.
    pub fn members(&self) -> &[Replica] {
        &self.members
    }

    /// Whether any replica is believed up.
    pub fn any_up(&self) -> bool {
        self.members.iter().any(Replica::is_up)
    }

    /// Records how a request to replica `i` ended. A failure marks it down
    /// and, if it is the active one, moves the next request to the next
    /// replica not marked down (or simply the next one, when all are).
    pub fn record(&self, i: usize, ok: bool) {
        let Some(replica) = self.members.get(i) else {
            return;
        };
        replica.up.store(ok, Relaxed);
        if ok || self.members.len() < 2 {
            return;
        }
        let n = self.members.len();
        let next = (1..n)
            .map(|step| (i + step) % n)
            .find(|&j| self.members[j].is_up())
            .unwrap_or((i + 1) % n);
        if self
            .active
            .compare_exchange(i, next, Relaxed, Relaxed)
            .is_ok()
        {
            warn!(
                shard = self.shard,
                failed = %replica.url,
                now = %self.members[next].url,
                "replica failed; the shard's requests go to another replica"
            );
        }
    }

    /// Records a probe of replica `i`; if the active replica is down and
    /// this one answers, it becomes active.
    pub fn probed(&self, i: usize, up: bool) {
        let Some(replica) = self.members.get(i) else {
            return;
        };
        replica.up.store(up, Relaxed);
        let (active, current) = self.active();
        if up && active != i && !current.is_up() {
            let _moved = self.active.compare_exchange(active, i, Relaxed, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Replicas {
        let config = ShardConfig {
            replicas: (0..n).map(|i| format!("http://r{i}:8123")).collect(),
            ..ShardConfig::default()
        };
        Replicas::new(0, &config).unwrap()
    }

    #[test]
    fn a_failure_moves_requests_to_the_next_replica_that_is_up() {
        let r = replicas(3);
        assert_eq!(r.active().0, 0);
        r.record(0, false);
        assert_eq!(r.active().0, 1);
        // r1 fails too: r2 is the only one believed up.
        r.record(1, false);
        assert_eq!(r.active().0, 2);
        assert!(r.any_up());
        // All down: round robin, so every replica keeps being tried.
        r.record(2, false);
        assert_eq!(r.active().0, 0);
        assert!(!r.any_up());
        // A success marks up; the active replica stays where it is.
        r.record(1, true);
        assert_eq!(r.active().0, 0);
        assert!(r.any_up());
    }

    #[test]
    fn a_late_failure_of_a_replica_no_longer_active_moves_nothing() {
        let r = replicas(2);
        r.record(0, false);
        assert_eq!(r.active().0, 1);
        // A second INSERT that was in flight on r0 fails after the move.
        r.record(0, false);
        assert_eq!(r.active().0, 1);
    }

    #[test]
    fn a_probe_that_finds_the_active_replica_down_moves_to_one_that_answers() {
        let r = replicas(2);
        r.probed(0, false);
        assert_eq!(r.active().0, 0, "a probe of a replica alone moves nothing");
        r.probed(1, true);
        assert_eq!(r.active().0, 1);
        // One server: nothing to move to.
        let one = replicas(1);
        one.record(0, false);
        assert_eq!(one.active().0, 0);
        assert!(!one.any_up());
    }
}
