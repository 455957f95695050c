//! How the appliance scales with workers, in memory: each worker is one
//! thread owning an `Engine` (its own stack, sessions and TLS context,
//! nothing shared) driven by its own load generator, as a worker with its
//! own queue pairs would be. Every thread intercepts the same number of TLS
//! connections (handshake plus a request and a response, then closed); the
//! connection rate with 1 and with 2 workers is measured in one run.
//!
//!     cargo run --release -p loadgen --example worker_scaling [-- CONNECTIONS_PER_WORKER]
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

fn main() -> Result<(), Box<dyn Error>> {
    let connections: u64 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(2_000);
    rate(1, 200)?; // warm-up
    let one = rate(1, connections)?;
    let two = rate(2, connections)?;
    println!("| workers | intercepted connections / s (in memory, generator included) |");
    println!("|---:|---:|");
    println!("| 1 | {one:.0} |");
    println!("| 2 | {two:.0} |");
    println!("| ratio 2/1 | {:.2} |", two / one);
    Ok(())
}
