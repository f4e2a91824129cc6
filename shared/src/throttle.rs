//! Collapsing a repeating log message, for the librdkafka log and error
//! callbacks of both binaries: while a broker is down, librdkafka reports the
//! same failure several times a second, which would bury everything else.
//!
//! The first occurrence of a key is let through at once; after it, at most
//! one per period, carrying how many were held back in between.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; past it the memory is cleared (keys are error
/// kinds and log facilities, a handful in practice).
const MAX_KEYS: usize = 256;

/// Lets through one message per key and period.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    held: u64,
}

impl Throttle {
    /// A throttle that lets through one message per key every `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a message with `key` should be logged now: `Some(held)` with
    /// the number held back since the last one logged, or `None` to drop it.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        // A panic while holding the lock cannot leave a counter inconsistent.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = keys.get_mut(key) {
            if now.duration_since(w.opened) < self.period {
                w.held += 1;
                return None;
            }
            let held = w.held;
            *w = Window {
                opened: now,
                held: 0,
            };
            return Some(held);
        }
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(
            key.to_owned(),
            Window {
                opened: now,
                held: 0,
            },
        );
        Some(0)
    }
}

/// A message with the count held back before it, for display:
/// `message (5 more like it in the last 30s)`.
#[derive(Debug)]
pub struct Held<'a> {
    /// The message.
    pub message: &'a str,
    /// How many were held back.
    pub held: u64,
    /// The throttle's period.
    pub period: Duration,
}

impl fmt::Display for Held<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)?;
        if self.held > 0 {
            write!(
                f,
                " ({} more like it in the last {}s)",
                self.held,
                self.period.as_secs()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_key_and_period_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(t.admit_at("FAIL", at(0)), Some(0));
        assert_eq!(t.admit_at("FAIL", at(1)), None);
        assert_eq!(t.admit_at("FAIL", at(29)), None);
        // Another key is not held back by the first.
        assert_eq!(t.admit_at("AllBrokersDown", at(29)), Some(0));
        assert_eq!(t.admit_at("FAIL", at(30)), Some(2));
        assert_eq!(t.admit_at("FAIL", at(31)), None);
        assert_eq!(t.admit_at("FAIL", at(90)), Some(1));
        assert_eq!(t.admit_at("FAIL", at(200)), Some(0));
    }

    #[test]
    fn the_memory_of_keys_is_bounded() {
        let t = Throttle::new(Duration::from_secs(30));
        let now = Instant::now();
        for i in 0..10 * MAX_KEYS {
            assert_eq!(t.admit_at(&i.to_string(), now), Some(0));
        }
        assert!(t.keys.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn the_count_is_shown_only_when_something_was_held() {
        let p = Duration::from_secs(30);
        let shown = |held| {
            Held {
                message: "down",
                held,
                period: p,
            }
            .to_string()
        };
        assert_eq!(shown(0), "down");
        assert_eq!(shown(4), "down (4 more like it in the last 30s)");
    }
}
