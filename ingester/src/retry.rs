//! Small pieces shared by the pipeline's loops: the backoff of every retry
//! of a ClickHouse call, and locking a mutex that a panic cannot poison.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter, 100 ms to 10 s, that ends on shutdown.
pub(crate) struct Backoff {
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Backoff {
        Backoff { delay: Self::FIRST }
    }

    /// The delay the next [`wait`](Self::wait) sleeps, before jitter.
    pub(crate) fn next_delay(&self) -> Duration {
        self.delay
    }

    /// Sleeps for the current delay plus up to half of it, then doubles it;
    /// false if `shutdown` fired first.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let jitter =
            Duration::from_millis(rand::random_range(0..=self.delay.as_millis() as u64 / 2));
        let go_on = tokio::select! {
            _ = tokio::time::sleep(self.delay + jitter) => true,
            _ = shutdown.cancelled() => false,
        };
        self.delay = (self.delay * 2).min(Self::MAX);
        go_on
    }
}

/// Locks `m`, taking the data over from a holder that panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
