//! `tlsgate`: the command-line front end of the appliance.
#![forbid(unsafe_code)]

mod cli;
mod control;
mod metrics;
mod output;
mod top;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance::config::Device;
use appliance::privileges::RunAs;
use appliance::{Config, Report};
use clap::Parser;
use cli::{CaCommand, Cli, Command, LearnedCommand, LogFormat, ReplayTimes};
use dataplane::Dataplane;
use output::say;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
        Command::Top {
            config,
            endpoint,
            interval,
            once,
        } => top(config.as_deref(), endpoint, interval, once),
        Command::Reload { config } => reload(&config),
        Command::Replay {
            config,
            input,
            output,
            client_output,
            timestamps,
            report_json,
        } => replay(
            &config,
            dataplane::ReplayFiles {
                input: &input,
                output: &output,
                client_output: client_output.as_deref(),
            },
            timestamps,
            report_json.as_deref(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output went away (`| head`): nothing is wrong.
        Err(err) if err.is::<output::StdoutClosed>() => ExitCode::SUCCESS,
        Err(err) => {
            output::error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Application logs on standard error (or the systemd journal), filtered by
/// `TLSGATE_LOG`; an invalid filter is reported, not silently replaced.
fn init_logging(format: LogFormat) {
    const DEFAULT: &str = "info";
    let (filter, invalid) = match std::env::var("TLSGATE_LOG") {
        Err(std::env::VarError::NotPresent) => (EnvFilter::new(DEFAULT), None),
        Err(std::env::VarError::NotUnicode(value)) => (
            EnvFilter::new(DEFAULT),
            Some((value.to_string_lossy().into_owned(), "not valid UTF-8".to_owned())),
        ),
        Ok(value) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new(DEFAULT), Some((value, err.to_string()))),
        },
    };
    let stderr = || tracing_subscriber::fmt().with_writer(std::io::stderr);
    let journal_error = match format {
        LogFormat::Json => {
            stderr().with_env_filter(filter).json().init();
            None
        }
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("tlsgate".to_owned()))
                    .init();
                None
            }
            Err(err) => {
                stderr()
                    .with_env_filter(filter)
                    .with_ansi(std::io::stderr().is_terminal())
                    .init();
                Some(err)
            }
        },
        LogFormat::Text => {
            stderr()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            None
        }
    };
    if let Some(err) = journal_error {
        tracing::warn!(
            "--log-format journald: cannot open the journal's socket ({err}); logging as text on standard error"
        );
    }
    if let Some((value, reason)) = invalid {
        tracing::warn!("TLSGATE_LOG={value:?} is not a valid log filter ({reason}); logging at {DEFAULT}");
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
    let run_as = RunAs::from_config(&config.process).with_context(|| config_path.display().to_string())?;
    if run_as.is_none() && appliance::privileges::running_as_root() {
        tracing::warn!(
            "running as root for the whole run: set [process] user to drop privileges once the ports are up"
        );
    }
    // After a privilege drop the user (or the chroot) might not reach the
    // report's path: it is created now, where the operator said.
    let early_report = match (&run_as, report_json) {
        (Some(_), Some(path)) => {
            Some(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
        }
        _ => None,
    };
    let mut dataplane = Dataplane::open(&config, None, run_as.as_ref())
        .context("cannot start the data plane")?
        .reload_from(config_path);
    let _control = match &config.control.socket {
        Some(path) => Some(control::serve(
            path,
            control::Instance {
                learned: dataplane.learned(),
                clock: dataplane.clock(),
                reloader: dataplane.reloader(),
            },
        )?),
        None => None,
    };
    let metrics = match config.metrics.listen {
        Some(address) => Some(metrics::serve(address, dataplane.report_source())?),
        None => None,
    };
    let started = Instant::now();
    let mut status = StatusLines::default();
    status.print(say!(
        "tlsgate: running with {} worker(s), client port {}, server port {}{} (SIGINT/SIGTERM to stop, SIGHUP or `tlsgate reload` to reload)",
        config.dataplane.workers,
        config.ports.client.device,
        config.ports.server.device,
        match (&config.ports.inspect_out, &config.ports.inspect_in) {
            (Some(out), Some(back)) => format!(", inspection out {} / in {}", out.device, back.device),
            _ => String::new(),
        }
    ));
    tell_systemd_ready(&config);
    if let Some(limit) = duration {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            stop.store(true, Ordering::Relaxed);
        });
    }
    dataplane.run(&stop, &hangup, interval, |report| {
        status.print(say!(
            "tlsgate: counters after {:.1} s\n{report}",
            started.elapsed().as_secs_f64()
        ));
    })?;
    let report = dataplane.report();
    // The endpoint's thread reads the ports: it goes first.
    drop(metrics);
    drop(dataplane);
    status.print(say!(
        "tlsgate: stopped after {:.1} s; final counters:\n{report}",
        started.elapsed().as_secs_f64()
    ));
    match (early_report, report_json) {
        (Some(mut file), Some(path)) => {
            std::io::Write::write_all(&mut file, json_text(&serde_json::to_value(&report)?)?.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))
        }
        _ => write_report(report_json, &report),
    }
}

/// Tells systemd (a `Type=notify` unit) that the appliance is up: its
/// ports are started and its control socket listens. Outside systemd
/// (`NOTIFY_SOCKET` unset) this does nothing; a failure is only logged,
/// as the appliance itself runs.
fn tell_systemd_ready(config: &Config) {
    let status = format!(
        "forwarding between {} and {} with {} worker(s)",
        config.ports.client.device, config.ports.server.device, config.dataplane.workers
    );
    let states = [sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)];
    if let Err(err) = sd_notify::notify(&states) {
        tracing::warn!("cannot tell systemd that tlsgate is ready (NOTIFY_SOCKET): {err}");
    }
}

/// The status lines of `run` on standard output: a reader that went away
/// must not stop the appliance, so a failed line is reported once and the
/// appliance carries on.
#[derive(Default)]
struct StatusLines {
    failed: bool,
}

impl StatusLines {
    fn print(&mut self, printed: Result<()>) {
        if let Err(err) = printed {
            if !self.failed {
                tracing::warn!("status lines are not printed any more: {}", output::describe(&err));
            }
            self.failed = true;
        }
    }
}

fn check(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    // What `run` loads before it opens the devices, loaded the same way.
    appliance::preflight(&config).with_context(|| config_path.display().to_string())?;
    let dataplane = &config.dataplane;
    say!("{}: configuration is valid", config_path.display())?;
    say!(
        "  loaded as `run` loads them: the policy rules{}{}",
        if config.tls.ca_cert.is_some() && intercepts_tls(&config) {
            "; the CA with its key (matching) and chain, the leaf key, the upstream trust bundle"
        } else {
            ""
        },
        if config.log.connections.is_some() || config.log.keylog.is_some() || config.capture.is_some() {
            "; the log and capture directories take new files"
        } else {
            ""
        }
    )?;
    for service in &config.service {
        say!(
            "  service {:?}: {} certificate chain(s) with matching keys{}",
            service.name,
            service.certificates.len(),
            if service.ticket_key.is_some() {
                ", the ticket key file"
            } else {
                ""
            }
        )?;
    }
    for (role, device) in ["client", "server", "inspect_out", "inspect_in"]
        .into_iter()
        .zip(config.devices().map_err(anyhow::Error::msg)?)
    {
        let kind = match &device {
            Device::Virtual { .. } => "virtual device",
            Device::Pci { .. } => "PCI device",
        };
        say!(
            "  {role} port: {} ({kind}, EAL: {})",
            device.ethdev_name(),
            device.eal_args().join(" ")
        )?;
    }
    say!(
        "  {} worker(s), bursts of {}, {} mbufs, rings {}/{}, idle sleep up to {} us",
        dataplane.workers,
        dataplane.burst_size,
        dataplane.mbufs,
        dataplane.rx_descriptors,
        dataplane.tx_descriptors,
        dataplane.idle_sleep_max_us
    )?;
    say!("  EAL arguments: {}", dataplane.eal_args.join(" "))?;
    let intercept = &config.intercept;
    if intercept.tcp_ports.is_empty() {
        say!("  intercept: nothing (every frame is bridged)")?;
    } else {
        let tcp = &config.tcp;
        say!(
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
        )?;
        say!(
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
        )?;
        say!(
            "  worst case: {:.1} GiB of TCP buffers with every worker full (workers x max_connections x {} sockets x (rx + tx))",
            config.worst_case_buffer_bytes() as f64 / (1u64 << 30) as f64,
            config.sockets_per_connection()
        )?;
        say!(
            "  UDP to and from those ports (QUIC): {}",
            match intercept.udp {
                appliance::policy::UdpPolicy::Block => "blocked, so clients fall back to TCP (intercept.udp)",
                appliance::policy::UdpPolicy::Bypass => "bridged uninspected (intercept.udp = \"bypass\")",
            }
        )?;
    }
    for entry in config.starttls_ports() {
        say!(
            "  starttls: port {} speaks {}: {}{}; a preamble waiting {} ms for the server is reset",
            entry.port,
            entry.protocol,
            entry.action.name(),
            if entry.require_tls {
                ", plaintext content blocked (require_tls)"
            } else {
                ""
            },
            config.tcp.starttls_timeout_ms
        )?;
    }
    if intercepts_tls(&config) {
        let tls = &config.tls;
        say!(
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
        )?;
    }
    match &config.control.socket {
        Some(path) => say!(
            "  control socket: {} (tlsgate learned list/clear, tlsgate reload)",
            path.display()
        )?,
        None => say!("  control socket: none")?,
    }
    match config.metrics.listen {
        Some(address) => say!("  metrics endpoint: http://{address}/metrics (Prometheus, tlsgate top)")?,
        None => say!("  metrics endpoint: none")?,
    }
    match RunAs::from_config(&config.process)? {
        Some(run_as) => say!(
            "  process: once the ports are up, runs as {}{} with no capabilities and no_new_privs; the logs, \
             the capture and the control socket are opened after that, as that user",
            run_as.who(),
            run_as
                .chroot
                .as_ref()
                .map_or(String::new(), |root| format!(", chrooted to {}", root.display()))
        )?,
        None => {
            say!("  process: keeps the user it starts as (root for DPDK) for the whole run ([process] user unset)")?
        }
    }
    if config.ports.inspect_out.is_some() {
        say!(
            "  inspection: the plaintext of every intercepted connection goes out of inspect_out and must come back \
             on inspect_in; a box that does not pass a SYN within {} ms (or a port whose link is down) means {}",
            config.inspect.syn_timeout_ms,
            match config.inspect.failure {
                appliance::config::InspectFailure::FailClosed => "the connection is reset (fail_closed)",
                appliance::config::InspectFailure::FailOpen => "the connection is relayed uninspected (fail_open)",
            }
        )?;
    }
    if let Some(capture) = &config.capture {
        if let Some(path) = &capture.path {
            say!(
                "  decrypted capture: {} (port map {:?}, rotate at {} MiB / {} s)",
                path.display(),
                capture.port_map,
                capture.rotate_mb.map_or("-".into(), |mb| mb.to_string()),
                capture.rotate_secs.map_or("-".into(), |secs| secs.to_string())
            )?;
        }
        if let Some(listen) = capture.pcap_over_ip {
            say!("  PCAP-over-IP: the decrypted frames streamed live on {listen} (unauthenticated: keep it on a management address)")?;
        }
    }
    if let Some(mirror) = config.mirror_device().map_err(anyhow::Error::msg)? {
        say!(
            "  mirror port: {} (a copy of the decrypted frames, transmit only)",
            mirror.ethdev_name()
        )?;
    }
    Ok(())
}

fn intercepts_tls(config: &Config) -> bool {
    config.intercepts_tls()
}

fn replay(
    config_path: &Path,
    files: dataplane::ReplayFiles<'_>,
    timestamps: ReplayTimes,
    report_json: Option<&Path>,
) -> Result<()> {
    let config = Config::load(config_path)?;
    let timestamps = match timestamps {
        ReplayTimes::Relative => dataplane::Timestamps::Relative,
        ReplayTimes::Original => dataplane::Timestamps::Original,
    };
    let started = Instant::now();
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} frames ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |read: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(read);
        // Only a replay that takes a while gets a bar (on a terminal).
        if bar.is_hidden() && started.elapsed() > PROGRESS_AFTER && read < total {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    };
    let outcome = dataplane::replay(&config, files, timestamps, &mut progress);
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(tail) = &outcome.unreadable_tail {
        tracing::warn!(
            "input capture {}: {tail}; replayed the {} readable frames before it",
            files.input.display(),
            outcome.frames_in
        );
    }
    if outcome.oversize > 0 {
        tracing::warn!(
            "input capture {}: {} frame(s) longer than one mbuf ({} bytes) crossed as mbuf chains, of which the \
             engine inspects the first segment only; {} of them longer than {} bytes are cut to that length in the \
             output (their original length is kept in the record)",
            files.input.display(),
            outcome.oversize,
            dataplane::replay::MBUF_FRAME_BYTES,
            outcome.cut_in_output,
            dataplane::replay::PCAP_TX_MAX_BYTES
        );
    }
    say!("{}", outcome.report)?;
    say!(
        "tlsgate: replayed {} frames from {} in {:.1} s: {} written to {}{}{}{}",
        outcome.frames_in,
        files.input.display(),
        started.elapsed().as_secs_f64(),
        outcome.frames_out,
        files.output.display(),
        match files.client_output {
            Some(path) => format!(", {} to {}", outcome.client_frames_out, path.display()),
            None => String::new(),
        },
        match outcome.oversize {
            0 => String::new(),
            oversize => format!(
                "; {oversize} longer than one mbuf, {} cut in the output",
                outcome.cut_in_output
            ),
        },
        match outcome.unreadable_tail {
            Some(_) => "; the cut-short last record was left out",
            None => "",
        }
    )?;
    let mut json = serde_json::to_value(&outcome.report)?;
    json["replay"] = serde_json::json!({
        "frames_in": outcome.frames_in,
        "frames_out": outcome.frames_out,
        "client_frames_out": outcome.client_frames_out,
        "oversize": outcome.oversize,
        "cut_in_output": outcome.cut_in_output,
        "unreadable_tail": outcome.unreadable_tail,
    });
    write_json(report_json, &json)
}

/// How long a replay runs before it shows a progress bar.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);

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
    let Some(socket) = Config::control_socket(config_path)? else {
        bail!(
            "{}: no [control] socket is configured, so the running instance cannot be asked",
            config_path.display()
        );
    };
    let answer = control::request(&socket, &request)?;
    match command {
        LearnedCommand::List { .. } => output::write(format_args!("{}", control::format_list(&answer)))?,
        LearnedCommand::Clear { .. } => say!(
            "tlsgate: cleared {} learned bypass(es); those destinations are intercepted again",
            answer["cleared"]
        )?,
    }
    Ok(())
}

fn top(config_path: Option<&Path>, endpoint: Option<std::net::SocketAddr>, interval: f64, once: bool) -> Result<()> {
    let interval = seconds(Some(interval), "--interval")?.unwrap_or(Duration::from_secs(1));
    let address = match (endpoint, config_path) {
        (Some(address), _) => address,
        (None, Some(path)) => match Config::load(path)?.metrics.listen {
            Some(address) => address,
            None => bail!(
                "{}: no [metrics] listen is configured, so the running instance cannot be read",
                path.display()
            ),
        },
        (None, None) => bail!("give --config or --endpoint"),
    };
    top::run(address, interval, once)
}

fn reload(config_path: &Path) -> Result<()> {
    let Some(socket) = Config::control_socket(config_path)? else {
        bail!(
            "{}: no [control] socket is configured, so the running instance cannot be asked (send it SIGHUP)",
            config_path.display()
        );
    };
    let answer = control::request(&socket, "reload")?;
    let keys = |name: &str| {
        answer[name]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|key| key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let applied = keys("applied");
    say!(
        "tlsgate: reloaded {} (generation {}): {}; {} of {} worker(s) took it",
        answer["reloaded"].as_str().unwrap_or("?"),
        answer["generation"],
        if applied.is_empty() {
            "no live key changed (the log files were reopened)".to_owned()
        } else {
            format!("new connections follow {applied}")
        },
        answer["workers"],
        answer["of"]
    )?;
    let restart = keys("needs_restart");
    if !restart.is_empty() {
        say!("tlsgate: changed but not applied, needs a restart: {restart} (the running values stay)")?;
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
            say!("tlsgate: created {} and {} (mode 0600)", cert.display(), key.display())?;
            show_ca(&ca, &cert)?;
        }
        CaCommand::Show { dir } => {
            let cert = dir.join(mitm::ca::CA_CERT_FILE);
            let ca = mitm::CertificateAuthority::load(&cert, &dir.join(mitm::ca::CA_KEY_FILE))?;
            show_ca(&ca, &cert)?;
        }
    }
    Ok(())
}

fn show_ca(ca: &mitm::CertificateAuthority, cert: &Path) -> Result<()> {
    let summary = ca.summary();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    let date = |at: time::OffsetDateTime| at.format(&format).unwrap_or_else(|_| at.to_string());
    say!("subject:     {}", summary.subject)?;
    say!("SHA-256:     {}", summary.sha256_fingerprint)?;
    say!(
        "valid:       {} to {}",
        date(summary.not_before),
        date(summary.not_after)
    )?;
    say!("certificate: {}", cert.display())?;
    say!(
        "Clients must trust this certificate to accept intercepted connections, e.g.:\n  \
         Debian/Ubuntu: cp {0} /usr/local/share/ca-certificates/tlsgate.crt && update-ca-certificates\n  \
         curl:          curl --cacert {0} https://...\n  \
         Firefox:       Settings > Privacy & Security > Certificates > Import\n  \
         Windows:       certutil -addstore -f Root tlsgate.crt",
        cert.display()
    )
}

fn write_report(path: Option<&Path>, report: &Report) -> Result<()> {
    write_json(path, &serde_json::to_value(report)?)
}

fn write_json(path: Option<&Path>, value: &serde_json::Value) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, json_text(value)?).with_context(|| format!("cannot write {}", path.display()))
}

fn json_text(value: &serde_json::Value) -> Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}
