//! What the worker's idle policy costs per gap in the traffic: an engine
//! with nothing to receive (in-memory ports) polled by the worker's
//! `TimedPoller` (256 empty polls, then sleeps of 1 µs doubling up to
//! `dataplane.idle_sleep_max_us`) until a gap of G µs of wall time has
//! passed, as a worker waits between two bursts of a bursty load. For each
//! G: the CPU time the gap cost (this thread's CPU clock), the polls and
//! sleeps in it, and how late after G the worker polled again (the wake-up
//! delay a frame arriving at the end of the gap would wait at most).
//!
//!     cargo run --release -p loadgen --example idle_gaps -- [MAX_SLEEP_US [GAPS]]
//!
//! MAX_SLEEP_US defaults to 200 (the default of `dataplane.idle_sleep_max_us`),
//! GAPS (gaps per length) to 200. An empty poll of in-memory ports is
//! cheaper than one of DPDK ports, so the spinning share is a lower bound.

#[path = "../tests/common/mod.rs"]
mod common;

use std::error::Error;
use std::time::{Duration, Instant};

use appliance::counters::WorkerStats;
use appliance::worker::TimedPoller;
use nix::time::{clock_gettime, ClockId};

fn thread_cpu() -> Result<Duration, Box<dyn Error>> {
    Ok(Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?))
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let max_sleep_us: u64 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(200);
    let gaps: u32 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(200);
    if gaps == 0 {
        return Err("GAPS must be at least 1".into());
    }
    let mut bench = common::bench("idle-gaps", common::plan(1, loadgen::Hold::Close));
    println!("idle_sleep_max_us = {max_sleep_us}, {gaps} gaps per length, means per gap:");
    println!("| gap (µs) | CPU (µs) | CPU / gap | polls | sleeps | polled again after the gap (µs) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for gap_us in [20_u64, 50, 100, 300, 1_000, 3_000] {
        let gap = Duration::from_micros(gap_us);
        let stats = WorkerStats::default();
        let (mut cpu, mut late) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..gaps {
            // A fresh poller: the gap starts right after a busy poll.
            let mut poller = TimedPoller::new(&stats, Duration::from_micros(max_sleep_us));
            let (start, start_cpu) = (Instant::now(), thread_cpu()?);
            while start.elapsed() < gap {
                poller.poll(&mut bench.engine);
            }
            late += start.elapsed() - gap;
            cpu += thread_cpu()? - start_cpu;
        }
        let totals = stats.totals();
        let per_gap = |total: Duration| total.as_secs_f64() * 1e6 / f64::from(gaps);
        println!(
            "| {gap_us} | {:.1} | {:.0} % | {:.0} | {:.1} | {:.1} |",
            per_gap(cpu),
            100.0 * per_gap(cpu) / gap_us as f64,
            totals.polls as f64 / f64::from(gaps),
            totals.idle_sleeps as f64 / f64::from(gaps),
            per_gap(late),
        );
    }
    Ok(())
}
