//! The command line of `tlsgate`: its commands, options and help texts.
//! Only clap definitions live here: `build.rs` includes this file too, to
//! write the man pages and shell completions the Debian package ships.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What `--help` says after the commands and options.
pub const AFTER_HELP: &str = "\
Environment:
  TLSGATE_LOG         Which logs to show, as a tracing filter (default: info), e.g.
                      `debug` or `info,appliance=debug`. An invalid value is reported
                      as a warning and `info` is used.
  TLSGATE_LOG_FORMAT  `text` (default), `json` (one JSON object per line) or
                      `journald` (the systemd journal's native protocol), as
                      --log-format. Text logs carry colour codes only when standard
                      error is a terminal.
  NOTIFY_SOCKET       Set by systemd for a Type=notify unit: `run` sends READY=1
                      there once its ports are up. Unset: nothing is sent.

Signals (tlsgate run):
  SIGINT, SIGTERM     Stop: the workers finish their burst, the final counters are
                      printed (and written with --report-json).
  SIGHUP              Reload the configuration file, as `tlsgate reload` does (its
                      live keys: policy rules, TLS material, log paths); the log
                      files are reopened in any case (rotation).

Exit status:
  0  success; also when standard output is closed early (e.g. `| head`)
  1  the command failed: the message on standard error names the file or the
     configuration key and the reason
  2  the command line is invalid (unknown option, missing argument)";

/// A transparent, inline TLS interception appliance on DPDK.
#[derive(Debug, Parser)]
#[command(name = "tlsgate", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// The format of the application logs on standard error.
    #[arg(long, global = true, value_enum, env = "TLSGATE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How the application logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
    /// Straight to the systemd journal (its native protocol: priority,
    /// target and fields kept); text on standard error when the journal's
    /// socket cannot be opened.
    Journald,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Validate a configuration file and everything `run` would load from it
    /// (CA, chain, keys, trust bundle, log and capture directories, lcores),
    /// and explain what is wrong.
    Check {
        /// The configuration file (TOML).
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
    /// Watch a running instance through its metrics endpoint (`[metrics]
    /// listen`): connection, TLS and byte rates, live connections, frames per
    /// port, each worker's busy share, handshake and duration quantiles,
    /// the most frequent server names, memory. Redraws the terminal until
    /// interrupted.
    Top {
        /// The configuration of the running instance (for its endpoint).
        #[arg(long, short, required_unless_present = "endpoint", conflicts_with = "endpoint")]
        config: Option<PathBuf>,
        /// The endpoint's address (HOST:PORT) instead of --config.
        #[arg(long, value_name = "ADDRESS")]
        endpoint: Option<std::net::SocketAddr>,
        /// Seconds between two readings (the rates are over this time).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
        /// Print one view (two readings an interval apart) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Reload the configuration of a running instance through its control
    /// socket: the policy rules, the CA (and key, chain, leaf key), the
    /// upstream trust bundle and the log paths change for new connections;
    /// live connections keep theirs. Other changed keys are reported as
    /// needing a restart. A configuration that does not load is refused
    /// (exit status 1) and the running one stays. SIGHUP does the same.
    Reload {
        /// The configuration of the running instance (for its control
        /// socket); the instance rereads the file it was started from.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replay a capture through the engine offline (DPDK pcap driver): the
    /// input enters on the client port, the output holds what leaves the
    /// server port.
    Replay {
        /// The configuration whose engine settings are used (its ports are
        /// replaced by pcap devices; one worker).
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
        /// The times of the output frames: each carries the time of the input
        /// frame it answers, the first one moved to the start of the replay
        /// (relative) or not (original).
        #[arg(long, value_enum, default_value_t = ReplayTimes::Relative)]
        timestamps: ReplayTimes,
        /// Also write the final counters as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report_json: Option<PathBuf>,
    },
}

/// `tlsgate replay --timestamps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayTimes {
    /// The input's spacing, starting when the replay starts.
    Relative,
    /// The input's own timestamps.
    Original,
}

#[derive(Debug, Subcommand)]
pub enum LearnedCommand {
    /// List the learned bypasses: destination, why, time left.
    List {
        /// The configuration of the running instance (for its control socket).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Forget learned bypasses (all, or those of one server name): those
    /// destinations are intercepted again.
    Clear {
        /// The configuration of the running instance (for its control socket).
        #[arg(long, short)]
        config: PathBuf,
        /// Only the bypasses of this server name (SNI).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new ECDSA P-256 CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        /// The directory to create the CA in (created if missing).
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
        /// The directory holding ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
    },
}
