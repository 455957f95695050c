//! `tlsgate-impair`: the impairment element as a two-port bridge on DPDK
//! (af_packet on the lab's veths, or any other device), with its own
//! impairment each way. The kernel of the lab has no netem; this stands in
//! for it on any link of the lab (scripts/lab-impair.sh).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use dpdk::{EthQueue, Mbuf};
use impair::{Impairment, ImpairmentStats, Spec};
use port::{PacketBuf, Port};

/// Bridges two ports, delaying, losing, reordering, duplicating, corrupting
/// and rate-limiting frames each way as netem would. Stops on SIGINT/SIGTERM
/// or after --duration.
#[derive(Debug, Parser)]
#[command(name = "tlsgate-impair", version, about, long_about = None)]
struct Cli {
    /// DPDK virtual device of side A, e.g. net_af_packet0,iface=impa0.
    #[arg(long)]
    a: String,
    /// DPDK virtual device of side B.
    #[arg(long)]
    b: String,
    /// The impairment of frames from A to B, in netem's words, e.g.
    /// "delay 25ms 2ms loss 1% reorder 10% duplicate 1% corrupt 0.5% rate 1gbit limit 30000"
    /// ("loss gemodel P R [1-H [1-K]]" for bursts). Empty: none.
    #[arg(long, default_value = "")]
    a_to_b: String,
    /// The impairment of frames from B to A.
    #[arg(long, default_value = "")]
    b_to_a: String,
    /// Seed of the random choices (the same seed and traffic repeat a run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Extra EAL arguments, e.g. "--no-huge -m 512 --no-shconf --no-pci -l 0".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    eal_args: String,
    /// Mbufs in the pool: must cover every frame held by the delay (both ways).
    #[arg(long, default_value_t = 65535)]
    mbufs: u32,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Write both directions' counters as JSON to this file when stopping.
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

/// Frames out of the element still waiting for room in a transmit ring;
/// beyond this many the rest are dropped (counted) rather than held.
const MAX_PENDING: usize = 4096;
const BURST: usize = 64;
const MAX_IDLE_SLEEP: Duration = Duration::from_micros(200);

struct Direction {
    name: &'static str,
    element: Impairment<Mbuf>,
    pending: Vec<Mbuf>,
    tx_dropped: u64,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tlsgate-impair: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn copy_of(port: &mut EthQueue, frame: &Mbuf) -> Option<Mbuf> {
    let mut copy = port.alloc()?;
    copy.grow_back(frame.data().len())?.copy_from_slice(frame.data());
    Some(copy)
}

fn run(cli: Cli) -> Result<()> {
    let a_to_b = Spec::parse(&cli.a_to_b).context("--a-to-b")?;
    let b_to_a = Spec::parse(&cli.b_to_a).context("--b-to-a")?;
    let mut ports =
        dpdk::open_vdev_pair(&cli.eal_args, [&cli.a, &cli.b], "impair_frames", cli.mbufs).context("DPDK")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    println!(
        "tlsgate-impair: running: A->B [{}], B->A [{}], seed {}",
        cli.a_to_b, cli.b_to_a, cli.seed
    );
    let mut directions = [
        Direction {
            name: "a_to_b",
            element: Impairment::new(a_to_b, cli.seed),
            pending: Vec::new(),
            tx_dropped: 0,
        },
        Direction {
            name: "b_to_a",
            element: Impairment::new(b_to_a, cli.seed.wrapping_add(1)),
            pending: Vec::new(),
            tx_dropped: 0,
        },
    ];
    let epoch = Instant::now();
    let deadline = cli.duration.map(|secs| Duration::from_secs_f64(secs.max(0.0)));
    let mut frames: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut idle_sleep = Duration::from_micros(1);
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| epoch.elapsed() < d) {
        let mut moved = 0;
        for (from, direction) in directions.iter_mut().enumerate() {
            let [port_a, port_b] = &mut ports;
            let (input, output) = if from == 0 { (port_a, port_b) } else { (port_b, port_a) };
            let now = epoch.elapsed();
            moved += input.rx_burst(&mut frames, BURST);
            for frame in frames.drain(..) {
                direction.element.admit(frame, now, |frame| copy_of(output, frame));
            }
            while let Some(frame) = direction.element.release(now) {
                direction.pending.push(frame);
            }
            if !direction.pending.is_empty() {
                moved += output.tx_burst(&mut direction.pending);
                if direction.pending.len() > MAX_PENDING {
                    direction.tx_dropped += (direction.pending.len() - MAX_PENDING) as u64;
                    direction.pending.truncate(MAX_PENDING);
                }
            }
        }
        if moved > 0 {
            idle_sleep = Duration::from_micros(1);
            continue;
        }
        // Idle: sleep, but never past the next release.
        let now = epoch.elapsed();
        let until_release = directions
            .iter()
            .filter(|d| d.pending.is_empty())
            .filter_map(|d| d.element.next_release())
            .map(|at| at.saturating_sub(now))
            .min()
            .unwrap_or(MAX_IDLE_SLEEP);
        let pending = directions.iter().any(|d| !d.pending.is_empty());
        if !pending && !until_release.is_zero() {
            std::thread::sleep(idle_sleep.min(until_release));
            idle_sleep = (idle_sleep * 2).min(MAX_IDLE_SLEEP);
        }
    }
    let mut report = serde_json::Map::new();
    for direction in &directions {
        let stats: ImpairmentStats = direction.element.stats();
        println!(
            "tlsgate-impair: {}: received {} released {} lost {} corrupted {} duplicated {} reordered {} overflowed {} tx_dropped {} held {}",
            direction.name,
            stats.received,
            stats.released,
            stats.lost,
            stats.corrupted,
            stats.duplicated,
            stats.reordered,
            stats.overflowed,
            direction.tx_dropped,
            direction.element.held()
        );
        let mut value = serde_json::to_value(stats)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("tx_dropped".into(), direction.tx_dropped.into());
        }
        report.insert(direction.name.into(), value);
    }
    if let Some(path) = &cli.stats_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
