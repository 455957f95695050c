//! How the appliance scales with workers, in memory: each worker is one
//! thread owning an `Engine` (its own stack, sessions and TLS context,
//! nothing shared) driven by its own load generator, as a worker with its
//! own queue pairs would be. Every thread intercepts the same number of TLS
//! connections (handshake plus a request and a response, then closed); the
//! connection rate with 1 and with 2 workers is measured in one run.
//!
//!     cargo run --release -p loadgen --example worker_scaling \
//!         [-- CONNECTIONS_PER_WORKER [ROUNDS [RESPONSE_BYTES]]]
//!
//! On a machine with 2 vCPUs, 2 workers can at best double the rate. The
//! generator's own work (both TLS roles of the client and the origin) runs
//! on the same thread as the worker it feeds, so the ratio measures
//! share-nothing scaling, not the appliance's rate alone.
//!
//! Besides the wall-clock rates, each thread's CPU time is read
//! (`/proc/thread-self/schedstat`, the scheduler's runtime in ns): the
//! "CPU" ratio is (connections per CPU second of the busier of the 2
//! threads) over (connections per CPU second of the 1 thread), what 2
//! workers would reach against 1 with a CPU each. On a machine shared
//! with other work (whose wall rates then say little) that is the figure
//! to compare. The last line of the output is the same as JSON.
//! RESPONSE_BYTES (default 2000) makes each response larger: with a few
//! connections of many MB, the ratio is that of bytes relayed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::error::Error;
use std::net::SocketAddr;
use std::time::Instant;

use loadgen::{Exchange, Hold, Plan};

fn plan(connections: u64, worker: usize, response_bytes: usize) -> Result<Plan, Box<dyn Error>> {
    let prefix = format!("198.18.{}.0/24", 10 + worker);
    let server: SocketAddr = "198.18.0.2:443".parse()?;
    let mut plan = Plan::new(&[prefix.as_str()], &[server], connections, 100_000)?;
    plan.exchange = Some(Exchange {
        request_bytes: 200,
        response_bytes,
    });
    plan.hold = Hold::Close;
    Ok(plan)
}

/// The calling thread's CPU time so far, in seconds (the scheduler's
/// runtime; NaN where /proc/thread-self/schedstat is not available).
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// One measurement of `workers` threads.
struct Round {
    /// Connections per second, wall clock.
    wall_rate: f64,
    /// Connections per CPU second of the busiest thread.
    cpu_rate: f64,
}

/// Runs `workers` threads of `connections` each.
fn rate(workers: usize, connections: u64, response_bytes: usize) -> Result<Round, Box<dyn Error>> {
    let benches = (0..workers)
        .map(|worker| {
            Ok(common::bench(
                &format!("scaling-{workers}-{worker}"),
                plan(connections, worker, response_bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    let start = Instant::now();
    let busiest = std::thread::scope(|scope| {
        let threads: Vec<_> = benches
            .into_iter()
            .map(|mut bench| {
                scope.spawn(move || {
                    let cpu = thread_cpu_seconds();
                    let done = bench.run_until(3_600_000, |bench| bench.generator.finished());
                    let stats = bench.generator.stats();
                    assert!(done && stats.errors() == 0, "worker did not finish cleanly: {stats:?}");
                    assert_eq!(stats.exchanges, connections);
                    thread_cpu_seconds() - cpu
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .fold(0.0, f64::max)
    });
    let total = (workers as u64 * connections) as f64;
    Ok(Round {
        wall_rate: total / start.elapsed().as_secs_f64(),
        cpu_rate: connections as f64 / busiest,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let connections: u64 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(2_000);
    let rounds: usize = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(5);
    let response_bytes: usize = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(2_000);
    if rounds == 0 {
        return Err("ROUNDS must be at least 1".into());
    }
    rate(1, 200, 2_000)?; // warm-up
                          // 1 and 2 workers alternate, so a slow spell of the machine touches both.
    let (mut ones, mut twos, mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let one = rate(1, connections, response_bytes)?;
        let two = rate(2, connections, response_bytes)?;
        ones.push(one.wall_rate);
        twos.push(two.wall_rate);
        ratios.push(two.wall_rate / one.wall_rate);
        // Each of the 2 threads did `connections` as the 1 thread did: with
        // a CPU each they finish when the busier one does.
        cpu_ratios.push(2.0 * two.cpu_rate / one.cpu_rate);
    }
    let each = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
    println!(
        "| workers | intercepted connections / s (in memory, generator included, {response_bytes} B responses), median of {rounds} |"
    );
    println!("|---:|---:|");
    println!("| 1 | {:.0} |", median(&mut ones));
    println!("| 2 | {:.0} |", median(&mut twos));
    let wall_ratio = median(&mut ratios.clone());
    let cpu_ratio = median(&mut cpu_ratios.clone());
    println!("| ratio 2/1, wall clock (median of the rounds' ratios) | {wall_ratio:.2} |");
    println!("| ratio 2/1, CPU time of the busier thread (median) | {cpu_ratio:.2} |");
    println!();
    println!(
        "Ratios per round: wall clock {}; CPU time {}",
        each(&ratios),
        each(&cpu_ratios)
    );
    println!(
        "{{\"connections_per_worker\": {connections}, \"rounds\": {rounds}, \"response_bytes\": {response_bytes}, \"wall_ratio\": {wall_ratio:.4}, \"cpu_ratio\": {cpu_ratio:.4}, \"wall_ratios\": [{}], \"cpu_ratios\": [{}]}}",
        each(&ratios),
        each(&cpu_ratios)
    );
    Ok(())
}
