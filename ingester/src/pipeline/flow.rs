//! Flow control in the event loop: the memory budget's pause and resume,
//! and decoded chunks put back in poll order.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

/// The budget's hysteresis: consumption pauses when the bytes in flight
/// reach the budget and resumes under half of it, never while journaled
/// ranges are being rebuilt (they close only when their last record arrives,
/// and a previous owner held them within its budget).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    paused: bool,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            limit,
            paused: false,
        }
    }

    /// Whether consumption is to be paused now.
    pub(crate) fn update(&mut self, in_flight: usize, rebuilding: bool) -> bool {
        if !self.paused && in_flight >= self.limit && !rebuilding {
            self.paused = true;
        } else if self.paused && (in_flight < self.limit / 2 || rebuilding) {
            self.paused = false;
        }
        self.paused
    }
}

/// Decoded chunks back in poll order: decoders finish them in any order, but
/// offsets must enter the watermark in poll order, or a commit could pass
/// records still being decoded.
#[derive(Debug)]
pub(crate) struct InOrder<T> {
    /// The number of the next chunk to hand on (= chunks handed on so far).
    next: u64,
    /// Chunks that arrived before their turn (a few per decoder at most).
    early: BTreeMap<u64, T>,
}

impl<T> InOrder<T> {
    pub(crate) fn new() -> InOrder<T> {
        InOrder {
            next: 0,
            early: BTreeMap::new(),
        }
    }

    /// Takes chunk `number`; returns the chunks now in turn, in order.
    pub(crate) fn push(&mut self, number: u64, chunk: T) -> Vec<T> {
        self.early.insert(number, chunk);
        let mut ready = Vec::new();
        while let Some(c) = self.early.remove(&self.next) {
            self.next += 1;
            ready.push(c);
        }
        ready
    }

    /// How many chunks have been handed on.
    pub(crate) fn handed_on(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_budget_pauses_at_the_limit_and_resumes_under_half() {
        let mut b = Budget::new(100);
        assert!(!b.update(99, false));
        assert!(b.update(100, false));
        assert!(b.update(50, false), "paused down to half the budget");
        assert!(!b.update(49, false));
        assert!(!b.update(150, true), "never paused while rebuilding");
        assert!(b.update(150, false));
        assert!(!b.update(150, true), "rebuilding resumes at once");
    }

    #[test]
    fn chunks_are_handed_on_in_poll_order() {
        let mut o = InOrder::new();
        assert!(o.push(1, "b").is_empty());
        assert!(o.push(2, "c").is_empty());
        assert_eq!(o.handed_on(), 0);
        assert_eq!(o.push(0, "a"), ["a", "b", "c"]);
        assert_eq!(o.handed_on(), 3);
        assert_eq!(o.push(3, "d"), ["d"]);
    }

    proptest! {
        #[test]
        fn any_arrival_order_comes_out_in_poll_order(order in Just((0..40u64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut o = InOrder::new();
            let mut out = Vec::new();
            for n in order {
                out.extend(o.push(n, n));
            }
            prop_assert_eq!(out, (0..40).collect::<Vec<_>>());
            prop_assert!(o.early.is_empty());
        }
    }
}
