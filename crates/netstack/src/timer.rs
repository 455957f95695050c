//! A hashed timer wheel with 1 ms ticks: O(1) to schedule, amortised O(1) to
//! expire, whatever the number of flows. Entries are never removed early: a
//! flow that reschedules leaves a stale entry that the stack skips.

use smoltcp::time::Instant;

/// Slots in the wheel; a deadline further away waits for later rounds.
const SLOTS: usize = 4096;

#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    slots: Vec<Vec<(T, i64)>>,
    /// The next tick (in ms) not yet expired.
    next_tick: i64,
    entries: usize,
}

impl<T: Copy> TimerWheel<T> {
    pub fn new(now: Instant) -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: now.total_millis(),
            entries: 0,
        }
    }

    fn slot_of(tick: i64) -> usize {
        tick.rem_euclid(SLOTS as i64) as usize
    }

    /// Schedules `item` at `deadline` (rounded up to the next ms tick; a
    /// deadline in the past fires at the next expiry).
    pub fn schedule(&mut self, item: T, deadline: Instant) {
        let micros = deadline.total_micros();
        let tick = (micros / 1000 + i64::from(micros % 1000 > 0)).max(self.next_tick);
        if let Some(slot) = self.slots.get_mut(Self::slot_of(tick)) {
            slot.push((item, tick));
            self.entries += 1;
        }
    }

    /// Moves every item due at or before `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<T>) {
        let now_tick = now.total_millis();
        if now_tick < self.next_tick {
            return;
        }
        if self.entries > 0 {
            // A jump of more than one round needs each slot only once.
            let span = (now_tick - self.next_tick + 1).min(SLOTS as i64);
            for offset in 0..span {
                let Some(slot) = self.slots.get_mut(Self::slot_of(self.next_tick + offset)) else {
                    continue;
                };
                let before = slot.len();
                slot.retain(|&(item, tick)| {
                    let fire = tick <= now_tick;
                    if fire {
                        due.push(item);
                    }
                    !fire
                });
                self.entries -= before - slot.len();
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// Scheduled entries, stale ones included.
    pub fn len(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn fires_in_order_of_ticks_and_not_early() {
        let mut wheel = TimerWheel::new(at(0));
        wheel.schedule(1u32, at(5));
        wheel.schedule(2, at(3));
        wheel.schedule(3, Instant::from_micros(3_500));
        let mut due = Vec::new();
        wheel.expire(at(2), &mut due);
        assert!(due.is_empty());
        wheel.expire(at(3), &mut due);
        assert_eq!(due, vec![2]);
        due.clear();
        wheel.expire(at(4), &mut due);
        assert_eq!(due, vec![3], "3.5 ms rounds up to tick 4");
        due.clear();
        wheel.expire(at(10), &mut due);
        assert_eq!(due, vec![1]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn deadlines_beyond_one_round_wait_for_their_round() {
        let mut wheel = TimerWheel::new(at(0));
        wheel.schedule(7u32, at(SLOTS as i64 * 2 + 10));
        let mut due = Vec::new();
        wheel.expire(at(SLOTS as i64 + 10), &mut due);
        assert!(due.is_empty());
        wheel.expire(at(SLOTS as i64 * 2 + 9), &mut due);
        assert!(due.is_empty());
        wheel.expire(at(SLOTS as i64 * 2 + 10), &mut due);
        assert_eq!(due, vec![7]);
    }

    #[test]
    fn past_deadlines_fire_at_the_next_expiry_and_big_jumps_catch_up() {
        let mut wheel = TimerWheel::new(at(100));
        wheel.schedule(1u32, at(50));
        let mut due = Vec::new();
        wheel.expire(at(100), &mut due);
        assert_eq!(due, vec![1]);
        due.clear();
        for i in 0..100u32 {
            wheel.schedule(i, at(200 + i64::from(i) * 97));
        }
        wheel.expire(at(1_000_000), &mut due);
        due.sort_unstable();
        assert_eq!(due, (0..100).collect::<Vec<_>>());
    }
}
