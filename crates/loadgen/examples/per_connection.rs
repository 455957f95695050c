//! tlsgate's own CPU per intercepted connection, in memory: one `Engine`
//! (one worker) fed by a load generator on in-memory ports, as in
//! `worker_scaling`, but only the engine's polls are timed, so the
//! generator's clients and origins (the other ends of both handshakes) are
//! left out. Each connection: a TLS 1.3 handshake on both legs, a 200 B
//! request, a 2000 B response, closed by the client.
//!
//!     cargo run --release -p loadgen --example per_connection \
//!         [-- CONNECTIONS [ROUNDS [RATE]]]
//!
//! Each round is a fresh engine (so its forging, configuration and ticket
//! caches start empty, as after a start) running CONNECTIONS connections
//! (default 1000) opened at RATE per second of the virtual clock (default
//! 500, as `scripts/bench-memif.sh`: most legs after the first resume a
//! session, both the generator's clients and the appliance's upstream
//! legs; a high rate opens them nearly all at once, before any ticket
//! arrives); ROUNDS (default 5) rounds follow one untimed warm-up. Reported per connection, the median over the rounds
//! (each round's value in parentheses): the engine's CPU time (this
//! thread's CPU clock, `CLOCK_THREAD_CPUTIME_ID`, read around every engine
//! poll: time the thread spent preempted is not counted), and the heap
//! allocations made inside the engine's polls. The last line is the same
//! as JSON. Compare the CPU time with `mitm`'s `tls_floor` example (the
//! two handshakes in plain rustls) run on the same machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{Exchange, Hold, Plan};
use nix::time::{clock_gettime, ClockId};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn plan(connections: u64, rate: u32) -> Result<Plan, Box<dyn Error>> {
    let server: SocketAddr = "198.18.0.2:443".parse()?;
    let mut plan = Plan::new(&["198.18.10.0/24"], &[server], connections, rate)?;
    plan.exchange = Some(Exchange {
        request_bytes: 200,
        response_bytes: 2_000,
    });
    plan.hold = Hold::Close;
    Ok(plan)
}

fn thread_cpu() -> Result<Duration, Box<dyn Error>> {
    Ok(Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?))
}

/// What one round's engine spent.
struct Round {
    cpu_us_per_connection: f64,
    allocations_per_connection: f64,
}

fn round(name: &str, connections: u64, rate: u32) -> Result<Round, Box<dyn Error>> {
    let mut bench = common::bench(name, plan(connections, rate)?);
    let (mut cpu, mut allocations, mut clock_error) = (Duration::ZERO, 0_usize, None);
    let done = bench.run_until_around_engine(3_600_000, |poll| {
        let region = Region::new(GLOBAL);
        let start = thread_cpu();
        poll();
        match (start, thread_cpu()) {
            (Ok(start), Ok(end)) => cpu += end.saturating_sub(start),
            (Err(err), _) | (_, Err(err)) => clock_error = Some(err),
        }
        allocations += region.change().allocations;
    });
    if let Some(err) = clock_error {
        return Err(err);
    }
    let stats = bench.generator.stats();
    if !done || stats.errors() != 0 || stats.exchanges != connections {
        return Err(format!("the round did not finish cleanly: {stats:?}").into());
    }
    let count = connections as f64;
    Ok(Round {
        cpu_us_per_connection: cpu.as_secs_f64() * 1e6 / count,
        allocations_per_connection: allocations as f64 / count,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let connections: u64 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(1_000);
    let rounds: usize = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(5);
    let rate: u32 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(500);
    if rounds == 0 || connections == 0 || rate == 0 {
        return Err("CONNECTIONS, ROUNDS and RATE must be at least 1".into());
    }
    round("per-connection-warm-up", connections.min(200), rate)?;
    let measured = (0..rounds)
        .map(|index| round(&format!("per-connection-{index}"), connections, rate))
        .collect::<Result<Vec<_>, _>>()?;
    let cpu: Vec<f64> = measured.iter().map(|round| round.cpu_us_per_connection).collect();
    let allocations: Vec<f64> = measured.iter().map(|round| round.allocations_per_connection).collect();
    let each = |values: &[f64]| values.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ");
    println!("{connections} connections per round at {rate}/s, median of {rounds} rounds (each round):");
    println!("  engine CPU per connection: {:.1} µs ({})", median(&cpu), each(&cpu));
    println!(
        "  heap allocations per connection in the engine: {:.1} ({})",
        median(&allocations),
        each(&allocations)
    );
    println!(
        "{{\"connections\": {connections}, \"rounds\": {rounds}, \"rate\": {rate}, \"engine_cpu_us_per_connection\": {:.2}, \"allocations_per_connection\": {:.2}, \"cpu_us\": [{}], \"allocations\": [{}]}}",
        median(&cpu),
        median(&allocations),
        each(&cpu),
        each(&allocations)
    );
    Ok(())
}
