//! How the appliance scales with workers, in memory: each worker is one
//! thread owning an `Engine` (its own stack, sessions and TLS context,
//! nothing shared) driven by its own load generator, as a worker with its
//! own queue pairs would be. Every thread intercepts the same number of TLS
//! connections (handshake plus a request and a response, then closed); the
//! connection rate with 1 and with 2 workers is measured in one run.
//!
//!     cargo run --release -p loadgen --example worker_scaling [-- CONNECTIONS_PER_WORKER [ROUNDS]]
//!
//! On a machine with 2 vCPUs, 2 workers can at best double the rate. The
//! generator's own work (both TLS roles of the client and the origin) runs
//! on the same thread as the worker it feeds, so the ratio measures
//! share-nothing scaling, not the appliance's rate alone.

#[path = "../tests/common/mod.rs"]
mod common;

use std::error::Error;
use std::net::SocketAddr;
use std::time::Instant;

use loadgen::{Exchange, Hold, Plan};

fn plan(connections: u64, worker: usize) -> Result<Plan, Box<dyn Error>> {
    let prefix = format!("198.18.{}.0/24", 10 + worker);
    let server: SocketAddr = "198.18.0.2:443".parse()?;
    let mut plan = Plan::new(&[prefix.as_str()], &[server], connections, 100_000)?;
    plan.exchange = Some(Exchange {
        request_bytes: 200,
        response_bytes: 2_000,
    });
    plan.hold = Hold::Close;
    Ok(plan)
}

/// Runs `workers` threads of `connections` each; returns connections per second.
fn rate(workers: usize, connections: u64) -> Result<f64, Box<dyn Error>> {
    let benches = (0..workers)
        .map(|worker| {
            Ok(common::bench(
                &format!("scaling-{workers}-{worker}"),
                plan(connections, worker)?,
            ))
        })
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for mut bench in benches {
            scope.spawn(move || {
                let done = bench.run_until(600_000, |bench| bench.generator.finished());
                let stats = bench.generator.stats();
                assert!(done && stats.errors() == 0, "worker did not finish cleanly: {stats:?}");
                assert_eq!(stats.exchanges, connections);
            });
        }
    });
    Ok((workers as u64 * connections) as f64 / start.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let connections: u64 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(2_000);
    let rounds: usize = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(5);
    if rounds == 0 {
        return Err("ROUNDS must be at least 1".into());
    }
    rate(1, 200)?; // warm-up
                   // 1 and 2 workers alternate, so a slow spell of the machine touches both.
    let (mut ones, mut twos, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let one = rate(1, connections)?;
        let two = rate(2, connections)?;
        ones.push(one);
        twos.push(two);
        ratios.push(two / one);
    }
    let each = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
    println!("| workers | intercepted connections / s (in memory, generator included), median of {rounds} |");
    println!("|---:|---:|");
    println!("| 1 | {:.0} |", median(&mut ones));
    println!("| 2 | {:.0} |", median(&mut twos));
    println!(
        "| ratio 2/1 (median of the rounds' ratios) | {:.2} |",
        median(&mut ratios.clone())
    );
    println!();
    println!("Ratios per round: {}", each(&ratios));
    Ok(())
}
