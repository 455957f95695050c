//! `tlsgate`: the command-line front end of the appliance.
#![forbid(unsafe_code)]

mod control;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance::config::Device;
use appliance::{Config, Dataplane, Report};
use clap::{Parser, Subcommand};

/// A transparent, inline TLS interception appliance on DPDK.
#[derive(Debug, Parser)]
#[command(name = "tlsgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance inline between its ports until SIGINT/SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Stop by itself after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Print the counters every this many seconds while running.
        #[arg(long, value_name = "SECONDS")]
        stats_interval: Option<f64>,
        /// Also write the final counters as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report_json: Option<PathBuf>,
    },
    /// Manage the appliance CA that signs forged certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate a configuration file and explain what is wrong with it.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The bypasses a running instance learned from traffic (servers that
    /// ask for client certificates, fail-open for pinning clients), through
    /// its control socket (`[control] socket`).
    Learned {
        #[command(subcommand)]
        command: LearnedCommand,
    },
    /// Replay a capture through the engine offline (DPDK pcap driver): the
    /// input enters on the client port, the output holds what leaves the
    /// server port.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// The capture to replay (pcap or pcapng, Ethernet).
        #[arg(long, short)]
        input: PathBuf,
        /// Where to write what leaves the server port (pcap).
        #[arg(long, short)]
        output: PathBuf,
        /// Where to write what leaves the client port (pcap).
        #[arg(long, value_name = "FILE")]
        client_output: Option<PathBuf>,
        /// Also write the final counters as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report_json: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum LearnedCommand {
    /// List the learned bypasses: destination, why, time left.
    List {
        /// The configuration of the running instance (for its control socket).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Forget learned bypasses (all, or those of one server name): those
    /// destinations are intercepted again.
    Clear {
        #[arg(long, short)]
        config: PathBuf,
        /// Only the bypasses of this server name (SNI).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new ECDSA P-256 CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "tlsgate interception CA")]
        name: String,
        /// Validity in years.
        #[arg(long, default_value_t = 5)]
        years: i64,
    },
    /// Show the CA in DIR: fingerprint, validity, how to install it.
    Show {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TLSGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            config,
            duration,
            stats_interval,
            report_json,
        } => run(&config, duration, stats_interval, report_json.as_deref()),
        Command::Check { config } => check(&config),
        Command::Ca { command } => ca(command),
        Command::Learned { command } => learned(command),
        Command::Replay {
            config,
            input,
            output,
            client_output,
            report_json,
        } => replay(
            &config,
            &input,
            &output,
            client_output.as_deref(),
            report_json.as_deref(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tlsgate: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn seconds(value: Option<f64>, option: &str) -> Result<Option<Duration>> {
    value
        .map(|secs| {
            Duration::try_from_secs_f64(secs).with_context(|| format!("{option} {secs}: not a valid number of seconds"))
        })
        .transpose()
}

fn run(
    config_path: &Path,
    duration: Option<f64>,
    stats_interval: Option<f64>,
    report_json: Option<&Path>,
) -> Result<()> {
    let duration = seconds(duration, "--duration")?;
    let interval = seconds(stats_interval, "--stats-interval")?.unwrap_or(Duration::ZERO);
    let config = Config::load(config_path)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install the signal handler")?;
    }
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        .context("cannot install the signal handler")?;
    let mut dataplane = Dataplane::open(&config, None).context("cannot start the data plane")?;
    let _control = match &config.control.socket {
        Some(path) => Some(control::serve(path, dataplane.learned(), dataplane.clock())?),
        None => None,
    };
    let started = Instant::now();
    println!(
        "tlsgate: running with {} worker(s), client port {}, server port {}{} (SIGINT/SIGTERM to stop, SIGHUP to reopen logs)",
        config.dataplane.workers,
        config.ports.client.device,
        config.ports.server.device,
        match (&config.ports.inspect_out, &config.ports.inspect_in) {
            (Some(out), Some(back)) => format!(", inspection out {} / in {}", out.device, back.device),
            _ => String::new(),
        }
    );
    if let Some(limit) = duration {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            stop.store(true, Ordering::Relaxed);
        });
    }
    dataplane.run(&stop, &hangup, interval, |report| {
        println!(
            "tlsgate: counters after {:.1} s\n{report}",
            started.elapsed().as_secs_f64()
        );
    })?;
    let report = dataplane.report();
    drop(dataplane);
    println!(
        "tlsgate: stopped after {:.1} s; final counters:\n{report}",
        started.elapsed().as_secs_f64()
    );
    write_report(report_json, &report)
}

fn check(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let dataplane = &config.dataplane;
    println!("{}: configuration is valid", config_path.display());
    for (role, device) in ["client", "server", "inspect_out", "inspect_in"]
        .into_iter()
        .zip(config.devices().map_err(anyhow::Error::msg)?)
    {
        let kind = match &device {
            Device::Virtual { .. } => "virtual device",
            Device::Pci { .. } => "PCI device",
        };
        println!(
            "  {role} port: {} ({kind}, EAL: {})",
            device.ethdev_name(),
            device.eal_args().join(" ")
        );
    }
    println!(
        "  {} worker(s), bursts of {}, {} mbufs, rings {}/{}, idle sleep up to {} us",
        dataplane.workers,
        dataplane.burst_size,
        dataplane.mbufs,
        dataplane.rx_descriptors,
        dataplane.tx_descriptors,
        dataplane.idle_sleep_max_us
    );
    println!("  EAL arguments: {}", dataplane.eal_args.join(" "));
    let intercept = &config.intercept;
    if intercept.tcp_ports.is_empty() {
        println!("  intercept: nothing (every frame is bridged)");
    } else {
        let tcp = &config.tcp;
        println!(
            "  intercept: new TCP connections to ports {:?}, mode {:?}; socket buffers {}/{} B, connect timeout {} ms, \
             a peer dead after {} unanswered retransmissions, congestion control {:?}, \
             SYN-ACK {} the server accepts, at most {} connections per worker",
            intercept.tcp_ports,
            intercept.mode,
            tcp.rx_buffer,
            tcp.tx_buffer,
            tcp.timeout_ms,
            tcp.max_retransmissions,
            tcp.congestion_control,
            if tcp.hold_synack { "held until" } else { "sent before" },
            tcp.max_connections
        );
        println!(
            "  capacity: a full table {}; embryonic connections take at most half of it (oldest evicted first), \
             {} per client address; timeouts: ClientHello {} ms, TLS handshakes {} ms, idle {}",
            match tcp.at_capacity {
                appliance::config::AtCapacity::Refuse => "refuses new connections (RST)",
                appliance::config::AtCapacity::Bridge =>
                    "bridges new connections UNINSPECTED (at_capacity = \"bridge\")",
            },
            tcp.max_embryonic_per_client,
            tcp.client_hello_timeout_ms,
            tcp.handshake_timeout_ms,
            if tcp.idle_timeout_ms == 0 {
                "never".to_owned()
            } else {
                format!("{} ms", tcp.idle_timeout_ms)
            }
        );
        println!(
            "  worst case: {:.1} GiB of TCP buffers with every worker full (workers x max_connections x {} sockets x (rx + tx))",
            config.worst_case_buffer_bytes() as f64 / (1u64 << 30) as f64,
            config.sockets_per_connection()
        );
        println!(
            "  UDP to and from those ports (QUIC): {}",
            match intercept.udp {
                appliance::policy::UdpPolicy::Block => "blocked, so clients fall back to TCP (intercept.udp)",
                appliance::policy::UdpPolicy::Bypass => "bridged uninspected (intercept.udp = \"bypass\")",
            }
        );
    }
    if !intercept.tcp_ports.is_empty() && intercept.mode == appliance::config::InterceptMode::Tls {
        let tls = &config.tls;
        println!(
            "  learned bypasses (per server name, address and port; only from servers whose certificate verified): \
             fail-open {}; servers asking for a client certificate {}; each for {} s, at most {} kept",
            match tls.fail_open_after {
                0 => "off".to_owned(),
                clients => format!(
                    "after {clients} distinct clients reject the forged certificate within {} s",
                    tls.fail_open_window_secs
                ),
            },
            match tls.client_auth {
                appliance::config::ClientAuthPolicy::Bypass => "bypassed",
                appliance::config::ClientAuthPolicy::Block => "not learned (their connections fail)",
            },
            tls.learned_ttl_secs,
            tls.learned_max_entries
        );
    }
    match &config.control.socket {
        Some(path) => println!("  control socket: {} (tlsgate learned list/clear)", path.display()),
        None => println!("  control socket: none"),
    }
    if config.ports.inspect_out.is_some() {
        println!(
            "  inspection: the plaintext of every intercepted connection goes out of inspect_out and must come back \
             on inspect_in; a box that does not pass a SYN within {} ms (or a port whose link is down) means {}",
            config.inspect.syn_timeout_ms,
            match config.inspect.failure {
                appliance::config::InspectFailure::FailClosed => "the connection is reset (fail_closed)",
                appliance::config::InspectFailure::FailOpen => "the connection is relayed uninspected (fail_open)",
            }
        );
    }
    if let Some(capture) = &config.capture {
        println!(
            "  decrypted capture: {} (port map {:?}, rotate at {} MiB / {} s)",
            capture.path.display(),
            capture.port_map,
            capture.rotate_mb.map_or("-".into(), |mb| mb.to_string()),
            capture.rotate_secs.map_or("-".into(), |secs| secs.to_string())
        );
    }
    Ok(())
}

fn replay(
    config_path: &Path,
    input: &Path,
    output: &Path,
    client_output: Option<&Path>,
    report_json: Option<&Path>,
) -> Result<()> {
    let config = Config::load(config_path)?;
    if input == output || Some(input) == client_output {
        bail!("the output capture must not overwrite the input {}", input.display());
    }
    let files = appliance::ReplayFiles {
        input,
        output,
        client_output,
    };
    let outcome = appliance::replay(&config, files)?;
    println!(
        "tlsgate: replayed {} frames from {} into {}\n{}",
        outcome.frames_in,
        input.display(),
        output.display(),
        outcome.report
    );
    write_report(report_json, &outcome.report)
}

fn learned(command: LearnedCommand) -> Result<()> {
    let (config_path, request) = match &command {
        LearnedCommand::List { config } => (config, "learned list".to_owned()),
        LearnedCommand::Clear { config, name: None } => (config, "learned clear".to_owned()),
        LearnedCommand::Clear {
            config,
            name: Some(name),
        } => {
            if name.is_empty() || name.contains(char::is_whitespace) {
                bail!("--name {name:?}: give one server name");
            }
            (config, format!("learned clear {name}"))
        }
    };
    let config = Config::load(config_path)?;
    let Some(socket) = &config.control.socket else {
        bail!(
            "{}: no [control] socket is configured, so the running instance cannot be asked",
            config_path.display()
        );
    };
    let answer = control::request(socket, &request)?;
    match command {
        LearnedCommand::List { .. } => print!("{}", control::format_list(&answer)),
        LearnedCommand::Clear { .. } => println!(
            "tlsgate: cleared {} learned bypass(es); those destinations are intercepted again",
            answer["cleared"]
        ),
    }
    Ok(())
}

fn ca(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init { dir, name, years } => {
            if !(1..=30).contains(&years) {
                bail!("--years {years}: give 1 to 30");
            }
            let ca = mitm::CertificateAuthority::generate(&name, years, time::OffsetDateTime::now_utc())?;
            let (cert, key) = ca.write(&dir)?;
            println!("tlsgate: created {} and {} (mode 0600)", cert.display(), key.display());
            show_ca(&ca, &cert);
        }
        CaCommand::Show { dir } => {
            let cert = dir.join(mitm::ca::CA_CERT_FILE);
            let ca = mitm::CertificateAuthority::load(&cert, &dir.join(mitm::ca::CA_KEY_FILE))?;
            show_ca(&ca, &cert);
        }
    }
    Ok(())
}

fn show_ca(ca: &mitm::CertificateAuthority, cert: &Path) {
    let summary = ca.summary();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    let date = |at: time::OffsetDateTime| at.format(&format).unwrap_or_else(|_| at.to_string());
    println!("subject:     {}", summary.subject);
    println!("SHA-256:     {}", summary.sha256_fingerprint);
    println!(
        "valid:       {} to {}",
        date(summary.not_before),
        date(summary.not_after)
    );
    println!("certificate: {}", cert.display());
    println!(
        "Clients must trust this certificate to accept intercepted connections, e.g.:\n  \
         Debian/Ubuntu: cp {0} /usr/local/share/ca-certificates/tlsgate.crt && update-ca-certificates\n  \
         curl:          curl --cacert {0} https://...\n  \
         Firefox:       Settings > Privacy & Security > Certificates > Import\n  \
         Windows:       certutil -addstore -f Root tlsgate.crt",
        cert.display()
    );
}

fn write_report(path: Option<&Path>, report: &Report) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}
