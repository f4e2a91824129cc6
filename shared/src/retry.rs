//! The one retry policy of both programs (feature `process`): exponential
//! backoff with jitter, 100 ms doubling to 10 s, that ends on shutdown, and
//! [`retry_until`], the loop every retried call goes through.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter: each delay is the current one plus up
/// to half of it; the current one then doubles, up to [`Backoff::MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// The first delay.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest delay, before jitter.
    pub const MAX: Duration = Duration::from_secs(10);

    /// A backoff at its first delay.
    pub fn new() -> Backoff {
        Backoff { delay: Self::FIRST }
    }

    /// The delay the next wait takes, before jitter (for logs).
    pub fn next_delay(&self) -> Duration {
        self.delay
    }

    /// The next delay, with its jitter; the one after it doubles.
    pub fn advance(&mut self) -> Duration {
        let jitter =
            Duration::from_millis(rand::random_range(0..=self.delay.as_millis() as u64 / 2));
        let delay = self.delay + jitter;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.delay = Self::FIRST;
    }

    /// Sleeps the next delay; false if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.advance();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Runs `attempt` until it succeeds. After each failure `retry` sees the
/// error and the delay to come (to log and count it) and says whether to
/// try again; between attempts the backoff waits. The error comes back when
/// `retry` declines it or when `shutdown` fires during a wait; an attempt
/// under way is never cut short (an INSERT is let finish).
pub async fn retry_until<T, E, F, Fut>(
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    mut attempt: F,
    mut retry: impl FnMut(&E, Duration) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if !retry(&e, backoff.next_delay()) || !backoff.wait(shutdown).await {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_at_most_half_again_of_jitter_up_to_the_cap() {
        let mut b = Backoff::new();
        let mut base = Backoff::FIRST;
        for _ in 0..12 {
            let d = b.advance();
            assert!(d >= base && d <= base + base / 2, "{d:?} from {base:?}");
            base = (base * 2).min(Backoff::MAX);
        }
        assert_eq!(b.next_delay(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_stops_where_told() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let got: Result<u32, &str> = retry_until(
            &shutdown,
            &mut Backoff::new(),
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
            |_, _| true,
        )
        .await;
        assert_eq!(got, Ok(3));

        let mut seen = Vec::new();
        let got: Result<(), &str> = retry_until(
            &shutdown,
            &mut Backoff::new(),
            || async { Err("refused") },
            |e, _| {
                seen.push(*e);
                false
            },
        )
        .await;
        assert_eq!((got, seen), (Err("refused"), vec!["refused"]));
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_with_the_last_error() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let got: Result<(), &str> = retry_until(
            &shutdown,
            &mut Backoff::new(),
            || async { Err("down") },
            |_, _| true,
        )
        .await;
        assert_eq!(got, Err("down"));
    }
}
