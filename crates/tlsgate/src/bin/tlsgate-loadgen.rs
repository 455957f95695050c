//! `tlsgate-loadgen`: the load generator on two DPDK ports (virtual devices
//! such as `net_af_packet0,iface=eth0` or `net_memif0,...`), one polling
//! thread. The client side faces the appliance's client port, the server
//! side its server port. With --rx-queues N each port's N receive queues are
//! all polled (memif ports of tlsgate with N workers, each transmitting on
//! its own queue); the generator transmits on queue 0.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use loadgen::{Exchange, Generator, Hold, Plan, PortPump, Replay, ReplayResponse};
use netstack::StackConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Opens TLS connections through tlsgate at a target rate from many client
/// addresses, answers them as the origin, and holds them idle or closes them.
/// With --replay each connection sends the client payload of a TCP flow of a
/// capture (round robin), which the origin side checks byte for byte.
#[derive(Debug, Parser)]
#[command(name = "tlsgate-loadgen", version, about, long_about = None)]
struct Cli {
    /// DPDK virtual device facing the appliance's client port.
    #[arg(long)]
    client_device: String,
    /// DPDK virtual device facing the appliance's server port.
    #[arg(long)]
    server_device: String,
    /// Extra EAL arguments, e.g. "--no-huge -m 1024 --no-shconf --no-pci -l 0 --file-prefix lg".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    eal_args: String,
    /// Client address prefixes (repeat), e.g. 198.18.64.0/18.
    #[arg(long = "clients", required = true)]
    clients: Vec<String>,
    /// Server endpoints (repeat), e.g. 198.18.0.2:443.
    #[arg(long = "server", required = true)]
    servers: Vec<SocketAddr>,
    /// Connections to open in all.
    #[arg(long)]
    connections: u64,
    /// New connections per second.
    #[arg(long)]
    rate: u32,
    /// Request size of one exchange after the handshake (no exchange when
    /// both sizes are 0).
    #[arg(long, default_value_t = 0, conflicts_with = "replay")]
    request_bytes: usize,
    /// Response size of the exchange [default: 0]; with --replay the size of
    /// every response (0: none) instead of the size the server sent in the
    /// captured flow.
    #[arg(long)]
    response_bytes: Option<usize>,
    /// Replay the client payloads of the TCP flows of this capture (pcap or
    /// pcapng, Ethernet; flows whose SYN was captured), one flow per
    /// connection in turn, as the request after the handshake.
    #[arg(long, value_name = "PCAP")]
    replay: Option<PathBuf>,
    /// What becomes of a connection afterwards: "idle" (held open) or "close".
    #[arg(long, default_value = "idle")]
    hold: String,
    /// The SNI the clients send.
    #[arg(long, default_value = "origin.test")]
    sni: String,
    /// The CA (PEM) the clients trust: the appliance's.
    #[arg(long)]
    trust: PathBuf,
    /// The origin's certificate chain and key (PEM).
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Socket buffers (receive and send, each) of every connection's client
    /// and origin flows, in bytes: small buffers let one machine hold many
    /// idle connections (TLS then needs more round trips).
    #[arg(long, default_value_t = 4096)]
    buffer: usize,
    /// Stop after this many seconds (also stops on SIGINT/SIGTERM).
    #[arg(long)]
    duration: f64,
    /// Stop as soon as every connection is done (held idle, closed or
    /// failed), within --duration.
    #[arg(long)]
    until_done: bool,
    /// Print progress every this many seconds.
    #[arg(long, default_value_t = 1.0)]
    report_interval: f64,
    /// Write the final summary as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Mbufs in the pool.
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
    /// Receive queues of each port, all polled (transmit: queue 0 only): as
    /// many as tlsgate has workers when the ports are memif clients of
    /// tlsgate's (memif has no RSS: tlsgate's worker 0 reads queue 0 and
    /// hands frames on, and each worker transmits on its own queue).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    rx_queues: u16,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tlsgate-loadgen: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_configs(cli: &Cli) -> Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cli.trust).with_context(|| format!("{}", cli.trust.display()))? {
        roots
            .add(cert.with_context(|| format!("{}", cli.trust.display()))?)
            .with_context(|| format!("{}: not a usable CA certificate", cli.trust.display()))?;
    }
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let chain = CertificateDer::pem_file_iter(&cli.cert)
        .with_context(|| format!("{}", cli.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", cli.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&cli.key).with_context(|| format!("{}", cli.key.display()))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the origin certificate and key do not match")?;
    Ok((Arc::new(client), Arc::new(server)))
}

/// Opens the ports and runs the generator until it is done, stopped or out
/// of time.
fn run(cli: Cli) -> Result<()> {
    let hold = match cli.hold.as_str() {
        "idle" => Hold::Idle,
        "close" => Hold::Close,
        other => bail!("--hold {other:?}: give \"idle\" or \"close\""),
    };
    let prefixes: Vec<&str> = cli.clients.iter().map(String::as_str).collect();
    let mut plan = Plan::new(&prefixes, &cli.servers, cli.connections, cli.rate)?;
    plan.hold = hold;
    plan.server_name = cli.sni.clone();
    let mut what = String::new();
    if let Some(path) = &cli.replay {
        let capture = loadgen::replay::read_capture(path).with_context(|| format!("--replay {}", path.display()))?;
        println!("tlsgate-loadgen: {}: {}", path.display(), capture.stats);
        let response = match cli.response_bytes {
            Some(bytes) => ReplayResponse::Fixed(bytes),
            None => ReplayResponse::Original,
        };
        let replay = Replay::new(capture.flows, response)?;
        what = format!(
            ", replaying {} flows ({} client payload bytes) of {}, responses {}",
            replay.flows().len(),
            replay.payload_bytes(),
            path.display(),
            match response {
                ReplayResponse::Original => "of the captured size".to_owned(),
                ReplayResponse::Fixed(bytes) => format!("of {bytes} bytes"),
            }
        );
        plan.replay = Some(replay);
    } else {
        let response_bytes = cli.response_bytes.unwrap_or(0);
        if cli.request_bytes + response_bytes > 0 {
            plan.exchange = Some(Exchange {
                request_bytes: cli.request_bytes,
                response_bytes,
            });
        }
    }
    let (client_config, server_config) = tls_configs(&cli)?;
    if !(256..=1 << 24).contains(&cli.buffer) {
        bail!("--buffer {} is out of range 256..=16777216", cli.buffer);
    }

    let [(client_queue, client_rx), (server_queue, server_rx)] = dpdk::open_vdev_pair_receiving(
        &cli.eal_args,
        [&cli.client_device, &cli.server_device],
        "loadgen_frames",
        cli.mbufs,
        cli.rx_queues,
    )
    .context("DPDK")?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let stack = StackConfig {
        rx_buffer: cli.buffer,
        tx_buffer: cli.buffer,
        timeout: netstack::Duration::from_secs(10),
        max_flows: usize::try_from(cli.connections.saturating_mul(2).saturating_add(1024)).unwrap_or(usize::MAX),
        ..StackConfig::default()
    };
    let epoch = Instant::now();
    let clock = || netstack::Instant::from_micros(i64::try_from(epoch.elapsed().as_micros()).unwrap_or(i64::MAX));
    let mut seed = [0u8; 8];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut seed)
        .map_err(|_| anyhow::anyhow!("the OS gave no entropy for the TCP initial sequence numbers"))?;
    let mut generator = Generator::new(
        plan,
        stack,
        client_config,
        server_config,
        clock(),
        u64::from_le_bytes(seed),
    )?;
    // The generator's stack writes each frame straight into a buffer of the
    // queue it leaves from.
    let mut pump = PortPump::new(
        std::iter::once(client_queue).chain(client_rx).collect(),
        std::iter::once(server_queue).chain(server_rx).collect(),
        &mut generator,
    )?;
    println!(
        "tlsgate-loadgen: running: {} connections at {}/s from {:?} to {:?}, hold {}{what}",
        cli.connections, cli.rate, cli.clients, cli.servers, cli.hold
    );
    let deadline = Duration::from_secs_f64(cli.duration.max(0.0));
    let interval = Duration::from_secs_f64(cli.report_interval.max(0.1));
    let mut next_report = interval;
    while !stop.load(Ordering::Relaxed) && epoch.elapsed() < deadline && !(cli.until_done && generator.finished()) {
        let now = clock();
        pump.receive(&mut generator, now);
        generator.poll(now);
        pump.transmit(&mut generator);
        if epoch.elapsed() >= next_report {
            next_report += interval;
            println!(
                "tlsgate-loadgen: {:.1} s: {}",
                epoch.elapsed().as_secs_f64(),
                generator.stats().summary()
            );
        }
    }
    let stats = generator.stats();
    let summary = stats.summary();
    let tx_dropped = pump.tx_dropped();
    println!(
        "tlsgate-loadgen: stopped after {:.1} s: {summary}; {} accepted by the origin side, {} resets, {} timeouts, {} TLS errors, {} replay mismatches, {} frames dropped on transmit",
        epoch.elapsed().as_secs_f64(),
        stats.accepted,
        stats.resets,
        stats.timeouts,
        stats.tls_errors,
        stats.replay_mismatches,
        tx_dropped
    );
    if let Some(error) = &stats.last_tls_error {
        println!("tlsgate-loadgen: the latest TLS error: {error}");
    }
    if let Some(path) = &cli.report_json {
        write_json(path, stats, &summary, tx_dropped)?;
    }
    Ok(())
}

fn write_json(path: &Path, stats: &loadgen::Stats, summary: &loadgen::Summary, tx_dropped: u64) -> Result<()> {
    let json = serde_json::json!({
        "opened": stats.opened,
        "connected": stats.connected,
        "handshakes": stats.handshakes,
        "exchanges": stats.exchanges,
        "live": stats.live,
        "accepted": stats.accepted,
        "resets": stats.resets,
        "timeouts": stats.timeouts,
        "tls_errors": stats.tls_errors,
        "replayed": stats.replayed,
        "replayed_bytes": stats.replayed_bytes,
        "replay_mismatches": stats.replay_mismatches,
        "last_tls_error": stats.last_tls_error,
        "handshake_p50_us": summary.p50_us,
        "handshake_p99_us": summary.p99_us,
        "handshake_max_us": summary.max_us,
        "tx_dropped": tx_dropped,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&json)?).with_context(|| format!("{}", path.display()))
}
