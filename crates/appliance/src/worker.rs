//! The poll-mode worker loop: polls its bridge until told to stop, backs off
//! when there is no traffic instead of spinning a core at 100%, and accounts
//! its time as busy (polls that moved frames) or idle (empty polls, sleep).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use port::Port;

use crate::clock::WallAnchor;
use crate::counters::WorkerStats;
use crate::distribution::DistributionStats;
use crate::engine::Engine;
use crate::reload::WorkerInbox;

/// Empty polls in a row before the worker starts sleeping.
const SPINS_BEFORE_SLEEP: u32 = 256;
/// How long a worker may wait for full transmit rings while it sends the
/// RSTs of its connections at shutdown.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);
/// The first sleep; each further empty poll doubles it up to the maximum.
const FIRST_SLEEP: Duration = Duration::from_micros(1);

/// Decides how long an idle worker sleeps: not at all while traffic flows,
/// then exponentially longer up to `max_sleep` while it stays idle.
#[derive(Debug, Clone)]
pub struct IdleBackoff {
    max_sleep: Duration,
    empty_polls: u32,
    next_sleep: Duration,
}

impl IdleBackoff {
    pub fn new(max_sleep: Duration) -> Self {
        IdleBackoff {
            max_sleep,
            empty_polls: 0,
            next_sleep: FIRST_SLEEP,
        }
    }

    /// Records a poll; returns how long to sleep before the next one.
    pub fn after_poll(&mut self, frames: usize) -> Option<Duration> {
        if frames > 0 {
            self.empty_polls = 0;
            self.next_sleep = FIRST_SLEEP;
            return None;
        }
        self.empty_polls = self.empty_polls.saturating_add(1);
        if self.empty_polls < SPINS_BEFORE_SLEEP || self.max_sleep.is_zero() {
            return None;
        }
        let sleep = self.next_sleep.min(self.max_sleep);
        self.next_sleep = (self.next_sleep * 2).min(self.max_sleep);
        Some(sleep)
    }
}

/// The engines' clock: time since it started, as `netstack::Instant`, and
/// the date it started at. The driver reads the machine's clocks here, and
/// only here; the engines get the readings.
#[derive(Debug, Clone, Copy)]
pub struct EngineClock {
    started: Instant,
    wall: WallAnchor,
}

impl EngineClock {
    pub fn start() -> Self {
        EngineClock {
            started: Instant::now(),
            wall: WallAnchor::new(SystemTime::now()),
        }
    }

    pub fn now(&self) -> netstack::Instant {
        netstack::Instant::from_micros(i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    /// The date of this clock's zero.
    pub fn wall(&self) -> WallAnchor {
        self.wall
    }
}

/// Polls an engine and accounts each poll's time to a worker's counters,
/// sleeping as [`IdleBackoff`] says when there is nothing to do.
pub struct TimedPoller<'a> {
    stats: &'a WorkerStats,
    backoff: IdleBackoff,
    started: Instant,
    /// The engine's clock.
    clock: EngineClock,
    /// The ports this worker distributes to the others (software
    /// distribution): frames it hands over are work too.
    handoffs: Vec<Arc<DistributionStats>>,
    /// Frames handed over (or dropped for a full hand-off) so far.
    moved: u64,
}

impl<'a> TimedPoller<'a> {
    pub fn new(stats: &'a WorkerStats, max_sleep: Duration) -> Self {
        let clock = EngineClock::start();
        TimedPoller {
            stats,
            backoff: IdleBackoff::new(max_sleep),
            started: clock.started,
            clock,
            handoffs: Vec::new(),
            moved: 0,
        }
    }

    /// Reads `clock` instead of a clock started now, so that every worker
    /// (and the control thread) reads one clock.
    pub fn with_clock(mut self, clock: EngineClock) -> Self {
        self.clock = clock;
        self
    }

    /// Counts the frames this worker hands to other workers on the ports
    /// of `handoffs` (it distributes them) as work: a poll that only handed
    /// frames over is busy, and does not lead to sleep, or the other
    /// workers would wait for it.
    pub fn with_handoffs(mut self, handoffs: Vec<Arc<DistributionStats>>) -> Self {
        self.moved = handoffs.iter().map(|stats| stats.moved()).sum();
        self.handoffs = handoffs;
        self
    }

    /// Frames handed to other workers since the last call.
    fn handed_over(&mut self) -> usize {
        if self.handoffs.is_empty() {
            return 0;
        }
        let moved: u64 = self.handoffs.iter().map(|stats| stats.moved()).sum();
        let since = moved.saturating_sub(self.moved);
        self.moved = moved;
        usize::try_from(since).unwrap_or(usize::MAX)
    }

    /// The engine clock: time since this poller was made, or since the
    /// epoch it was given.
    pub fn now(&self) -> netstack::Instant {
        self.clock.now()
    }

    /// One poll of `engine` (and a sleep if idle); returns the frames
    /// received, plus those handed to other workers (see
    /// [`TimedPoller::with_handoffs`]).
    pub fn poll<P: Port>(&mut self, engine: &mut Engine<P>) -> usize {
        let received = engine.poll(self.now());
        let frames = received.saturating_add(self.handed_over());
        let polled = Instant::now();
        let spent = nanos(polled - self.started);
        if frames > 0 {
            self.stats.add_busy(spent);
        } else {
            self.stats.add_idle(spent);
        }
        self.started = polled;
        if let Some(sleep) = self.backoff.after_poll(frames) {
            std::thread::sleep(sleep);
            self.started = Instant::now();
            self.stats.add_sleep(nanos(self.started - polled));
        }
        frames
    }
}

/// Runs `engine` until `stop` is set (the data plane passes the `halt`
/// flag of [`supervise`]), putting the rules that arrive in `reloads` in
/// force between polls, then shuts it down (a RST on every
/// live leg, see [`Engine::shutdown`]); `poller` must be as old as
/// `engine`. Returns the legs reset at shutdown.
pub fn run_worker<P: Port>(
    engine: &mut Engine<P>,
    poller: &mut TimedPoller<'_>,
    stop: &AtomicBool,
    reloads: Option<&WorkerInbox>,
) -> u64 {
    while !stop.load(Ordering::Acquire) {
        // Between two polls: a safe point to take reloaded rules.
        if let Some(inbox) = reloads {
            inbox.apply_to(engine);
        }
        poller.poll(engine);
    }
    engine.shutdown(poller.now(), SHUTDOWN_BUDGET)
}

/// How often the control thread looks at the stop flag (and calls its
/// periodic work) while the workers run.
pub const CONTROL_TICK: Duration = Duration::from_millis(50);

/// The control thread's part while workers run: waits until `stop` is set
/// or `worker_ended()` says a worker ended on its own, calling `every_tick`
/// about every [`CONTROL_TICK`]; then takes `sample()` and only after that
/// sets `halt`, which is what the workers obey ([`run_worker`]): they
/// reset and free their connections on it. So what `sample` measures (the
/// process's resident memory) still includes everything they hold.
pub fn supervise<T>(
    stop: &AtomicBool,
    halt: &AtomicBool,
    worker_ended: impl Fn() -> bool,
    mut every_tick: impl FnMut(),
    sample: impl FnOnce() -> T,
) -> T {
    while !stop.load(Ordering::Relaxed) && !worker_ended() {
        std::thread::sleep(CONTROL_TICK);
        every_tick();
    }
    let sampled = sample();
    // Release: the sample is complete before any worker can see the flag.
    halt.store(true, Ordering::Release);
    sampled
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineStats, InterceptPolicy};
    use port::MemPort;

    #[test]
    fn backoff_spins_then_sleeps_longer_up_to_the_cap_and_resets_on_traffic() {
        let mut backoff = IdleBackoff::new(Duration::from_micros(100));
        for _ in 1..SPINS_BEFORE_SLEEP {
            assert_eq!(backoff.after_poll(0), None);
        }
        let sleeps: Vec<_> = (0..10).filter_map(|_| backoff.after_poll(0)).collect();
        assert_eq!(sleeps.len(), 10);
        assert_eq!(sleeps[0], Duration::from_micros(1));
        assert!(sleeps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(sleeps[9], Duration::from_micros(100));
        assert_eq!(backoff.after_poll(3), None);
        assert_eq!(backoff.after_poll(0), None, "spins again after traffic");
    }

    #[test]
    fn zero_max_sleep_never_sleeps() {
        let mut backoff = IdleBackoff::new(Duration::ZERO);
        assert!((0..10_000).all(|_| backoff.after_poll(0).is_none()));
    }

    /// An engine on two in-memory ports that never receive anything.
    fn idle_engine() -> Engine<MemPort> {
        let (client, _client_ctl) = MemPort::new([0; 6]);
        let (server, _server_ctl) = MemPort::new([0; 6]);
        Engine::new(
            client,
            server,
            EngineStats::default(),
            32,
            &InterceptPolicy::default(),
            crate::clock::EngineStart {
                now: netstack::Instant::ZERO,
                wall: WallAnchor::new(SystemTime::UNIX_EPOCH),
                seed: 1,
            },
        )
    }

    #[test]
    fn idle_worker_sleeps_and_reports_mostly_idle_time() {
        let mut engine = idle_engine();
        let stats = WorkerStats::default();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
            });
            let mut poller = TimedPoller::new(&stats, Duration::from_micros(500));
            run_worker(&mut engine, &mut poller, &stop, None);
        });
        let totals = stats.totals();
        assert_eq!(totals.busy_ns, 0);
        assert!(totals.idle_sleeps > 0, "an idle worker must sleep: {totals:?}");
        assert!(totals.idle_ns >= 150_000_000, "{totals:?}");
        // Spinning flat out would be millions of polls in 200 ms.
        assert!(totals.polls < 100_000, "{totals:?}");
    }

    #[test]
    fn frames_handed_to_other_workers_count_as_work() {
        let mut engine = idle_engine();
        let stats = WorkerStats::default();
        let handoffs = Arc::new(DistributionStats::default());
        handoffs.add(3, 7, 0); // before the poller: not counted
        let mut poller = TimedPoller::new(&stats, Duration::from_millis(50)).with_handoffs(vec![Arc::clone(&handoffs)]);
        assert_eq!(poller.poll(&mut engine), 0);
        assert_eq!(stats.totals().busy_ns, 0);
        handoffs.add(2, 5, 1);
        assert_eq!(poller.poll(&mut engine), 6, "handed off and dropped for a full ring");
        assert!(stats.totals().busy_ns > 0);
        assert_eq!(poller.poll(&mut engine), 0);
        // Handing frames over keeps the worker from sleeping.
        for _ in 0..SPINS_BEFORE_SLEEP * 2 {
            handoffs.add(0, 1, 0);
            poller.poll(&mut engine);
        }
        assert_eq!(stats.totals().idle_sleeps, 0);
    }

    #[test]
    fn memory_is_sampled_before_the_workers_are_told_to_let_go() {
        const HELD: u64 = 64 << 20;
        let (stop, halt) = (AtomicBool::new(false), AtomicBool::new(false));
        let before = crate::counters::resident_bytes().expect("VmRSS");
        let (sampled, halted_when_sampled) = std::thread::scope(|scope| {
            let (ready, held) = std::sync::mpsc::channel();
            // A worker holding memory (its sessions) until it is halted.
            let worker_halt = &halt;
            scope.spawn(move || {
                let sessions = vec![1u8; HELD as usize];
                ready.send(()).expect("send");
                while !worker_halt.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                drop(sessions);
            });
            held.recv().expect("the worker holds its memory");
            stop.store(true, Ordering::Relaxed);
            supervise(
                &stop,
                &halt,
                || false,
                || {},
                || (crate::counters::resident_bytes(), halt.load(Ordering::Acquire)),
            )
        });
        assert!(!halted_when_sampled, "sampled after the workers were told to free");
        assert!(halt.load(Ordering::Relaxed), "the workers are halted after the sample");
        let sampled = sampled.expect("VmRSS");
        assert!(
            sampled >= before + HELD * 3 / 4,
            "{sampled} B resident, {before} B before the worker held {HELD} B"
        );
    }

    #[test]
    fn a_worker_that_ended_ends_supervision() {
        let (stop, halt) = (AtomicBool::new(false), AtomicBool::new(false));
        let mut ticks = 0;
        let ended = std::cell::Cell::new(false);
        supervise(
            &stop,
            &halt,
            || ended.get(),
            || {
                ticks += 1;
                ended.set(ticks == 3);
            },
            || (),
        );
        assert_eq!(ticks, 3);
        assert!(halt.load(Ordering::Relaxed), "the other workers are halted");
    }
}
