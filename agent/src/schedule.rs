//! When the agent ticks: at every multiple of the interval on the wall clock,
//! shifted by a per-process offset (the configured jitter, drawn once so a
//! fleet spreads its load while each agent keeps an even cadence).
//!
//! The schedule counts in slots: slot `k` starts at `k * interval + offset`
//! milliseconds since the epoch. Each tick takes the first slot that starts
//! after the previous tick's work is done; a slot that passed while a tick was
//! still running is *missed*, and reported as such rather than made up for
//! with a burst of back-to-back ticks.

use std::time::Duration;

/// The tick schedule of one agent process.
#[derive(Debug, Clone)]
pub struct Schedule {
    step: u64,
    offset: u64,
    /// Before the first tick, a slot closer than this is skipped, so that the
    /// counters primed at start-up cover a meaningful span.
    first_gap: u64,
    last: Option<u64>,
}

/// The next tick: how long to wait for it, and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextTick {
    /// Time from now until the slot starts.
    pub wait: Duration,
    /// The slot, to hand to [`Schedule::mark`] once it is reached.
    pub slot: u64,
}

impl Schedule {
    /// A schedule with the given interval, phase offset (shorter than the
    /// interval) and first-tick gap.
    pub fn new(interval: Duration, offset: Duration, first_gap: Duration) -> Self {
        let step = (interval.as_millis() as u64).max(1);
        Self {
            step,
            offset: (offset.as_millis() as u64) % step,
            first_gap: first_gap.as_millis() as u64,
            last: None,
        }
    }

    fn start(&self, slot: u64) -> u64 {
        slot * self.step + self.offset
    }

    /// The first slot after `now_ms` (milliseconds since the epoch) that has
    /// not been ticked yet.
    pub fn next(&self, now_ms: u64) -> NextTick {
        let current = now_ms.saturating_sub(self.offset) / self.step;
        let mut slot = current + 1;
        match self.last {
            None if self.start(slot) - now_ms < self.first_gap => slot += 1,
            // A timer that fires a little early on the wall clock must not
            // tick the same slot twice.
            Some(last) if slot <= last => slot = last + 1,
            _ => {}
        }
        NextTick {
            wait: Duration::from_millis(self.start(slot).saturating_sub(now_ms)),
            slot,
        }
    }

    /// Records that `slot` was ticked; returns how many slots since the
    /// previous tick went by without one.
    pub fn mark(&mut self, slot: u64) -> u64 {
        let missed = self
            .last
            .map_or(0, |last| slot.saturating_sub(last).saturating_sub(1));
        self.last = Some(slot);
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(10);

    #[test]
    fn ticks_align_to_the_wall_clock() {
        let s = Schedule::new(S, Duration::ZERO, Duration::ZERO);
        let next = s.next(1_000_003_000);
        assert_eq!(next.wait, Duration::from_secs(7));
        assert_eq!(next.slot, 100_001);
        // The offset shifts every slot by the same amount.
        let s = Schedule::new(S, Duration::from_millis(250), Duration::ZERO);
        assert_eq!(s.next(1_000_000_000).wait, Duration::from_millis(250));
        assert_eq!(s.next(1_000_000_300).wait, Duration::from_millis(9_950));
    }

    #[test]
    fn only_the_first_tick_skips_a_close_slot() {
        let mut s = Schedule::new(S, Duration::ZERO, Duration::from_millis(500));
        let first = s.next(1_000_009_900);
        assert_eq!(first.wait, Duration::from_millis(10_100));
        assert_eq!(s.mark(first.slot), 0);
        // A tick that took 9.7 s still gets the very next slot.
        let second = s.next(1_000_029_700);
        assert_eq!(second.wait, Duration::from_millis(300));
        assert_eq!(second.slot, first.slot + 1);
        assert_eq!(s.mark(second.slot), 0);
    }

    #[test]
    fn an_early_wake_up_does_not_tick_a_slot_twice() {
        let mut s = Schedule::new(S, Duration::ZERO, Duration::ZERO);
        let slot = s.next(1_000_003_000).slot;
        s.mark(slot);
        // Woke 1 ms before the slot started, and the tick took no time.
        let next = s.next(1_000_009_999);
        assert_eq!(next.slot, slot + 1);
        assert_eq!(next.wait, Duration::from_millis(10_001));
    }

    #[test]
    fn slots_passed_during_a_long_tick_are_counted_as_missed() {
        let mut s = Schedule::new(S, Duration::ZERO, Duration::ZERO);
        let slot = s.next(1_000_000_500).slot;
        assert_eq!(s.mark(slot), 0);
        // That tick ran 25 s: the slots at +10 s and +20 s went by.
        let next = s.next(1_000_035_500);
        assert_eq!(next.slot, slot + 3);
        assert_eq!(s.mark(next.slot), 2);
    }
}
