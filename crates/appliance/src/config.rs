//! The appliance configuration (TOML): parsed strictly (unknown keys are
//! errors) and validated, every error naming the key and the reason.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a configuration was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("{path}: `{key}`: {reason}")]
    InvalidRule { path: PathBuf, key: String, reason: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
    pub ports: Ports,
    #[serde(default)]
    pub intercept: Intercept,
    #[serde(default)]
    pub tcp: Tcp,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub log: Log,
    /// The inspection loop through `[ports.inspect_out]`/`[ports.inspect_in]`.
    #[serde(default)]
    pub inspect: Inspect,
    /// The decrypted capture (pcap of the plaintext), when configured.
    pub capture: Option<Capture>,
    /// Interception rules, in order (`[[policy]]` tables), compiled as
    /// they are read.
    #[serde(default)]
    pub policy: crate::policy::PolicyRules,
    /// The control channel of a running instance (`tlsgate learned ...`).
    #[serde(default)]
    pub control: Control,
    /// The Prometheus/OpenMetrics endpoint (`tlsgate top`, scrapers).
    #[serde(default)]
    pub metrics: Metrics,
    /// Whom `tlsgate run` becomes once its ports are up (`[process]`).
    #[serde(default)]
    pub process: Process,
    /// TLS termination with the services' own certificates (`[[service]]`).
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// Protocols that upgrade to TLS in band, per port (`[[starttls]]`).
    #[serde(default)]
    pub starttls: Vec<StarttlsConfig>,
}

/// `[[starttls]]`: connections to these ports speak `protocol`, whose
/// plaintext preamble is relayed until the upgrade to TLS, which is then
/// intercepted (or the connection is bypassed or blocked at its SYN).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StarttlsConfig {
    /// `smtp`, `imap`, `pop3`, `xmpp`, `ftp` or `postgres`.
    pub protocol: String,
    /// Destination ports (default: the protocol's own).
    pub ports: Option<Vec<u16>>,
    #[serde(default = "default_starttls_action")]
    pub action: crate::policy::Action,
    /// Block a session whose content goes in plaintext (before an upgrade,
    /// or after the server refused it).
    #[serde(default)]
    pub require_tls: bool,
}

fn default_starttls_action() -> crate::policy::Action {
    crate::policy::Action::Intercept
}

/// A `[[starttls]]` entry as the splicer applies it, to one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StarttlsPort {
    pub port: u16,
    pub protocol: starttls::Protocol,
    pub action: crate::policy::Action,
    pub require_tls: bool,
}

impl StarttlsConfig {
    /// The protocol, if its name is known.
    pub fn protocol(&self) -> Option<starttls::Protocol> {
        starttls::Protocol::from_name(&self.protocol)
    }

    /// The ports it applies to.
    pub fn ports(&self) -> Vec<u16> {
        match (&self.ports, self.protocol()) {
            (Some(ports), _) => ports.clone(),
            (None, Some(protocol)) => protocol.default_ports().to_vec(),
            (None, None) => Vec::new(),
        }
    }
}

/// The `[[starttls]]` checks: an error is the key (`starttls[0].ports`)
/// and the reason.
fn validate_starttls(config: &Config) -> Result<(), (String, String)> {
    let mut seen: Vec<(u16, usize)> = Vec::new();
    for (index, entry) in config.starttls.iter().enumerate() {
        let key = |name: &str| format!("starttls[{index}].{name}");
        if entry.protocol().is_none() {
            let names: Vec<&str> = starttls::Protocol::ALL.iter().map(|p| p.name()).collect();
            return Err((
                key("protocol"),
                format!("{:?} is not one of {}", entry.protocol, names.join(", ")),
            ));
        }
        let ports = entry.ports();
        if ports.is_empty() {
            return Err((key("ports"), "must not be empty".into()));
        }
        for port in ports {
            if port == 0 {
                return Err((key("ports"), "0 is not a TCP port".into()));
            }
            if config.intercept.tcp_ports.contains(&port) {
                return Err((
                    key("ports"),
                    format!("{port} is also in intercept.tcp_ports: a port is TLS from the first byte or STARTTLS, not both"),
                ));
            }
            if let Some((_, earlier)) = seen.iter().find(|(seen_port, _)| *seen_port == port) {
                return Err((key("ports"), format!("{port} is also in starttls[{earlier}]")));
            }
            seen.push((port, index));
        }
        if entry.require_tls && entry.action != crate::policy::Action::Intercept {
            return Err((
                key("require_tls"),
                format!(
                    "needs action = \"intercept\" (this entry's is {:?})",
                    entry.action.name()
                ),
            ));
        }
        if entry.action == crate::policy::Action::Intercept && config.intercept.mode != InterceptMode::Tls {
            return Err((key("action"), "\"intercept\" needs [intercept] mode = \"tls\"".into()));
        }
    }
    Ok(())
}

/// `[metrics]`: where a running instance serves its counters over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A kernel TCP address on the host (a management interface, never a
    /// data port) for `GET /metrics`; none: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[process]`: the unprivileged user `tlsgate run` switches to once EAL
/// and the ports are up and the TLS material is loaded (see
/// [`crate::privileges`]); without `user` it keeps running as it started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// The user name to run as (never root).
    pub user: Option<String>,
    /// The group to run as; the user's primary group when absent.
    pub group: Option<String>,
    /// A directory to chroot into before switching user; the logs, the
    /// capture and the control socket are then opened inside it.
    pub chroot: Option<PathBuf>,
}

impl Process {
    /// Where a path the process opens after the drop is on the host: under
    /// the chroot directory when there is one.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        host_path(self.chroot.as_deref(), path)
    }
}

/// `path` as the process sees it after a chroot to `root`, on the host.
pub fn host_path(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

/// `[control]`: where a running instance takes commands.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// A Unix domain socket (mode 0600, so only the appliance's user may
    /// use it); none: no control channel.
    pub socket: Option<PathBuf>,
}

/// Log files; each is reopened on SIGHUP (for rotation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// JSON lines, one object per intercepted connection.
    pub connections: Option<PathBuf>,
    /// NSS key log (SSLKEYLOGFILE format) of both legs, mode 0600.
    pub keylog: Option<PathBuf>,
}

/// How the inspection loop behaves when the box does not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inspect {
    /// What happens to a connection whose loop cannot be opened (the box
    /// did not pass its SYN within `syn_timeout_ms`, or an inspection
    /// port's link is down).
    #[serde(default)]
    pub failure: InspectFailure,
    /// How long the box has to pass a loop connection's SYN, in
    /// milliseconds (the default 8 s covers SYN retransmissions at 1, 3 and
    /// 7 s on a lossy box link).
    #[serde(default = "default_inspect_syn_timeout_ms")]
    pub syn_timeout_ms: u64,
}

impl Default for Inspect {
    fn default() -> Self {
        Inspect {
            failure: InspectFailure::default(),
            syn_timeout_ms: default_inspect_syn_timeout_ms(),
        }
    }
}

fn default_inspect_syn_timeout_ms() -> u64 {
    8_000
}

/// `inspect.failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InspectFailure {
    /// Reset the connection: nothing passes uninspected.
    #[default]
    FailClosed,
    /// Relay the connection without inspection (counted and logged).
    FailOpen,
}

/// The decrypted capture: the plaintext of intercepted connections as a
/// pcap with synthetic TCP framing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// The file written now; rotated files are renamed next to it. None:
    /// no file (the plaintext only streams to `pcap_over_ip`).
    pub path: Option<PathBuf>,
    /// PCAP-over-IP: a TCP listener on the management host (a kernel
    /// socket, never a data port) that streams a pcap of the same frames,
    /// live, to each client that connects. None: no listener.
    pub pcap_over_ip: Option<std::net::SocketAddr>,
    /// Server ports written as other ports, e.g. `{ 443 = 80 }` so that
    /// analysers dissect the plaintext as HTTP.
    #[serde(default)]
    pub port_map: PortMap,
    /// Start a new file when this one reaches this many MiB.
    pub rotate_mb: Option<u64>,
    /// Start a new file when this one is this many seconds old.
    pub rotate_secs: Option<u64>,
    /// Keep at most this many files, the one being written included, the
    /// oldest rotated ones deleted (tcpdump's `-W`); unset: keep them all.
    pub max_files: Option<usize>,
}

impl Capture {
    /// The port map as numbers; `Err` names the entry that is not a port.
    pub fn ports(&self) -> Result<Vec<(u16, u16)>, String> {
        self.port_map.ports.clone()
    }
}

/// `capture.port_map` as written (TOML keys are strings), parsed into port
/// numbers once, as it is read.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    from = "std::collections::BTreeMap<String, u16>",
    into = "std::collections::BTreeMap<String, u16>"
)]
pub struct PortMap {
    written: std::collections::BTreeMap<String, u16>,
    /// The entries as numbers, or the entry that is not a port.
    ports: Result<Vec<(u16, u16)>, String>,
}

impl Default for PortMap {
    fn default() -> Self {
        PortMap::from(std::collections::BTreeMap::new())
    }
}

impl std::fmt::Debug for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.written.fmt(f)
    }
}

impl From<std::collections::BTreeMap<String, u16>> for PortMap {
    fn from(written: std::collections::BTreeMap<String, u16>) -> Self {
        let ports = written
            .iter()
            .map(|(from, to)| match (from.parse::<u16>(), *to) {
                (Ok(from), to) if from != 0 && to != 0 => Ok((from, to)),
                _ => Err(format!("{from} = {to} does not map a TCP port to a TCP port")),
            })
            .collect();
        PortMap { written, ports }
    }
}

impl From<PortMap> for std::collections::BTreeMap<String, u16> {
    fn from(map: PortMap) -> Self {
        map.written
    }
}

/// TLS interception settings (used with `[intercept] mode = "tls"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The appliance CA certificate (PEM), made by `tlsgate ca init`.
    pub ca_cert: Option<PathBuf>,
    /// Its private key (PEM); must not be readable by group or others.
    pub ca_key: Option<PathBuf>,
    /// When the CA is an intermediate: the certificates above it (PEM,
    /// nearest issuer first), sent after it.
    pub ca_chain: Option<PathBuf>,
    /// The key forged leaves are issued for (PEM); one is generated at start
    /// when absent (ECDSA P-256).
    pub leaf_key: Option<PathBuf>,
    /// "system" (Debian's CA bundle) or the path of a PEM bundle.
    #[serde(default)]
    pub upstream_trust: UpstreamTrustSource,
    /// What the client gets when the real server's certificate does not
    /// verify: "mirror" (a certificate it will reject too) or "refuse".
    #[serde(default)]
    pub invalid_upstream: InvalidUpstreamPolicy,
    /// Forged certificates kept per worker.
    #[serde(default = "default_cert_cache")]
    pub cert_cache: usize,
    /// Fail-open for pinned clients: once this many *distinct* client
    /// addresses rejected the forged certificate for one destination (name,
    /// address and port, with a verified server) within
    /// `fail_open_window_secs`, that destination is bypassed for
    /// `learned_ttl_secs` (0 disables; 1 is refused: one client would
    /// switch inspection off for every other).
    #[serde(default = "default_fail_open_after")]
    pub fail_open_after: usize,
    #[serde(default = "default_fail_open_window")]
    pub fail_open_window_secs: u64,
    /// How long a learned bypass (fail-open, a server asking for a client
    /// certificate) lasts, from when it was learned.
    #[serde(default = "default_learned_ttl")]
    pub learned_ttl_secs: u64,
    /// Learned bypasses kept at most (and destinations whose rejections
    /// are being counted, likewise); the least recently used go first.
    #[serde(default = "default_learned_max_entries")]
    pub learned_max_entries: usize,
    /// A server that asks for a client certificate (which the appliance
    /// cannot present): "bypass" it from then on, or "block" it.
    #[serde(default)]
    pub client_auth: ClientAuthPolicy,
    /// A ClientHello with Encrypted Client Hello: intercept on its outer
    /// (public) name, "block" or "bypass" it.
    #[serde(default)]
    pub ech: EchPolicy,
}

/// `tls.upstream_trust`: the CAs the real servers are verified against,
/// as written: "system", or the path of a PEM bundle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(from = "String", into = "String")]
pub enum UpstreamTrustSource {
    /// Debian's bundle of the system's trusted CAs.
    #[default]
    System,
    Bundle(PathBuf),
}

impl UpstreamTrustSource {
    /// The PEM bundle to load.
    pub fn bundle(&self) -> &Path {
        match self {
            UpstreamTrustSource::System => Path::new(mitm::trust::SYSTEM_BUNDLE),
            UpstreamTrustSource::Bundle(path) => path,
        }
    }
}

impl From<String> for UpstreamTrustSource {
    fn from(text: String) -> Self {
        match text.as_str() {
            "system" => UpstreamTrustSource::System,
            _ => UpstreamTrustSource::Bundle(PathBuf::from(text)),
        }
    }
}

impl From<UpstreamTrustSource> for String {
    fn from(source: UpstreamTrustSource) -> String {
        match source {
            UpstreamTrustSource::System => "system".into(),
            UpstreamTrustSource::Bundle(path) => path.to_string_lossy().into_owned(),
        }
    }
}

/// `tls.ech`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EchPolicy {
    #[default]
    InterceptOuter,
    Block,
    Bypass,
}

/// `tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthPolicy {
    #[default]
    Bypass,
    Block,
}

fn default_fail_open_after() -> usize {
    3
}
fn default_fail_open_window() -> u64 {
    60
}
fn default_learned_ttl() -> u64 {
    3_600
}
fn default_learned_max_entries() -> usize {
    10_000
}

/// `tls.invalid_upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUpstreamPolicy {
    #[default]
    Mirror,
    Refuse,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            ca_cert: None,
            ca_key: None,
            ca_chain: None,
            leaf_key: None,
            upstream_trust: UpstreamTrustSource::System,
            invalid_upstream: InvalidUpstreamPolicy::default(),
            cert_cache: default_cert_cache(),
            fail_open_after: default_fail_open_after(),
            fail_open_window_secs: default_fail_open_window(),
            learned_ttl_secs: default_learned_ttl(),
            learned_max_entries: default_learned_max_entries(),
            client_auth: ClientAuthPolicy::default(),
            ech: EchPolicy::default(),
        }
    }
}

fn default_cert_cache() -> usize {
    10_000
}

/// Which connections the appliance terminates instead of bridging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    /// Destination TCP ports whose new connections are intercepted.
    #[serde(default)]
    pub tcp_ports: Vec<u16>,
    /// What is done with an intercepted connection.
    #[serde(default)]
    pub mode: InterceptMode,
    /// UDP to and from the intercepted ports (QUIC): blocked by default so
    /// that clients fall back to TCP; `[[policy]]` rules may override it.
    #[serde(default)]
    pub udp: crate::policy::UdpPolicy,
}

/// How an intercepted connection is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// Terminate TLS with a forged certificate and re-encrypt to the server.
    #[default]
    Tls,
    /// Terminate the TCP connection and relay its bytes to a new connection
    /// to the server (transparent TCP splice), TLS untouched.
    Splice,
}

/// The transparent TCP stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    /// Receive buffer per socket (each intercepted connection has two):
    /// the largest window it advertises. Its pages are committed only for
    /// the bytes that pass through and given back when the flow goes quiet.
    #[serde(default = "default_tcp_buffer")]
    pub rx_buffer: usize,
    /// Transmit buffer per socket (committed likewise).
    #[serde(default = "default_tcp_buffer")]
    pub tx_buffer: usize,
    /// How long a peer may stay silent while a SYN is outstanding before
    /// the connection is given up (the connect timeout), in milliseconds.
    /// Once open, data or a FIN outstanding needs this much silence and
    /// `max_retransmissions` unanswered retransmissions.
    #[serde(default = "default_tcp_timeout_ms")]
    pub timeout_ms: u64,
    /// Retransmission rounds an open connection's leg sends without
    /// hearing from its peer before the peer counts as dead (like Linux's
    /// `tcp_retries2`; the interval doubles each round, 1 s to 60 s).
    #[serde(default = "default_max_retransmissions")]
    pub max_retransmissions: u32,
    /// The congestion control of both legs.
    #[serde(default)]
    pub congestion_control: CongestionControl,
    /// Answer the client's SYN only once the server has accepted (so a
    /// refused or silent server looks to the client exactly as it would
    /// without the appliance).
    #[serde(default = "default_true")]
    pub hold_synack: bool,
    /// Intercepted connections per worker; embryonic ones (the client has
    /// not completed its handshake) may take half. Each may commit up to
    /// 2 × (rx_buffer + tx_buffer) bytes of buffers while data flows, none
    /// while idle.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// What a new connection gets when the table is full.
    #[serde(default)]
    pub at_capacity: AtCapacity,
    /// Embryonic connections one client address may hold per worker.
    #[serde(default = "default_max_embryonic_per_client")]
    pub max_embryonic_per_client: usize,
    /// From the client's completed handshake to its complete ClientHello
    /// (mode "tls"), in milliseconds.
    #[serde(default = "default_client_hello_timeout_ms")]
    pub client_hello_timeout_ms: u64,
    /// From the ClientHello to both TLS handshakes done, in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// An established connection without a payload byte either way this
    /// long is reset, in milliseconds (0: never).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A STARTTLS preamble's request (the greeting included) without a
    /// byte of the server's answer this long is reset, in milliseconds.
    #[serde(default = "default_starttls_timeout_ms")]
    pub starttls_timeout_ms: u64,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            rx_buffer: default_tcp_buffer(),
            tx_buffer: default_tcp_buffer(),
            timeout_ms: default_tcp_timeout_ms(),
            max_retransmissions: default_max_retransmissions(),
            congestion_control: CongestionControl::default(),
            hold_synack: true,
            max_connections: default_max_connections(),
            at_capacity: AtCapacity::default(),
            max_embryonic_per_client: default_max_embryonic_per_client(),
            client_hello_timeout_ms: default_client_hello_timeout_ms(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            starttls_timeout_ms: default_starttls_timeout_ms(),
        }
    }
}

/// `tcp.congestion_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), as Linux uses by default.
    #[default]
    Cubic,
    /// NewReno-style AIMD.
    Reno,
    /// None: each leg sends its peer's whole window at once.
    None,
}

impl From<CongestionControl> for netstack::CongestionControl {
    fn from(control: CongestionControl) -> Self {
        match control {
            CongestionControl::Cubic => netstack::CongestionControl::Cubic,
            CongestionControl::Reno => netstack::CongestionControl::Reno,
            CongestionControl::None => netstack::CongestionControl::None,
        }
    }
}

/// `tcp.at_capacity`: a new connection to an intercepted port when the
/// table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AtCapacity {
    /// Refuse it with a RST (counted and logged): nothing passes uninspected.
    #[default]
    Refuse,
    /// Bridge it uninspected (counted and logged).
    Bridge,
}

fn default_max_embryonic_per_client() -> usize {
    256
}
fn default_client_hello_timeout_ms() -> u64 {
    10_000
}
fn default_handshake_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    3_600_000
}
fn default_starttls_timeout_ms() -> u64 {
    30_000
}

/// Like Linux's tcp_rmem maximum: enough for kernel-like throughput on
/// long paths (4 MiB per round trip).
/// Socket-buffer address space the workers may need (the arenas reserve up
/// to twice what is in use, as they grow by doubling; x86-64 gives a
/// process 128 TiB).
const MAX_BUFFER_ADDRESS_SPACE: u128 = 32 << 40;

fn default_tcp_buffer() -> usize {
    4 << 20
}
fn default_tcp_timeout_ms() -> u64 {
    10_000
}
fn default_max_retransmissions() -> u32 {
    6
}
fn default_true() -> bool {
    true
}
/// With the default 64 KiB buffers (two sockets of rx + tx per connection),
/// 10,000 connections may commit about 2.6 GB of buffers per worker.
fn default_max_connections() -> usize {
    10_000
}

/// Poll-mode data plane settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// Extra EAL arguments (memory, cores, logging); devices come from `[ports]`.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Poll-mode workers, one queue pair per port each.
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// Frames per receive/transmit burst.
    #[serde(default = "default_burst_size")]
    pub burst_size: u16,
    /// Mbufs in the packet pool.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Receive/transmit ring sizes per queue.
    #[serde(default = "default_descriptors")]
    pub rx_descriptors: u16,
    #[serde(default = "default_descriptors")]
    pub tx_descriptors: u16,
    /// The longest an idle worker sleeps between polls, in microseconds
    /// (0: never sleep, spin at 100% like classic DPDK).
    #[serde(default = "default_idle_sleep_max_us")]
    pub idle_sleep_max_us: u32,
}

/// The data ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub client: PortConfig,
    pub server: PortConfig,
    /// The inspection pair (both or neither): the plaintext of every
    /// intercepted connection leaves through `inspect_out` and comes back
    /// through the box on `inspect_in`.
    pub inspect_out: Option<PortConfig>,
    pub inspect_in: Option<PortConfig>,
    /// The decrypt-mirror port: a copy of every intercepted connection's
    /// plaintext leaves it as synthetic TCP frames (the flows of the
    /// decrypted capture), for sensors that only listen. Nothing received
    /// on it is read.
    pub mirror: Option<PortConfig>,
}

impl Ports {
    /// Every configured data port, in the engine's order (client, server,
    /// then the inspection pair); the mirror port is not one of them.
    pub fn all(&self) -> Vec<&PortConfig> {
        self.keyed().into_iter().map(|(_, port)| port).collect()
    }

    /// The data ports and the mirror port, with the key of each device
    /// setting.
    fn keyed_with_mirror(&self) -> Vec<(&'static str, &PortConfig)> {
        let mut ports = self.keyed();
        ports.extend(self.mirror.as_ref().map(|mirror| ("ports.mirror.device", mirror)));
        ports
    }

    /// Every configured port with the key of its device setting.
    fn keyed(&self) -> Vec<(&'static str, &PortConfig)> {
        [
            ("ports.client.device", Some(&self.client)),
            ("ports.server.device", Some(&self.server)),
            ("ports.inspect_out.device", self.inspect_out.as_ref()),
            ("ports.inspect_in.device", self.inspect_in.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, port)| Some((key, port?)))
        .collect()
    }
}

/// One data port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// A DPDK virtual-device spec (`net_af_packet0,iface=eth1`) or a PCI
    /// address (`0000:03:00.0`).
    pub device: String,
    /// The appliance's own addresses on this port, with their prefixes
    /// (`198.18.7.1/24`), answering ARP and neighbour discovery: the
    /// sources of `[[service]]` backends with `source = "appliance"`. Only
    /// on the server port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<OwnedPrefix>,
    /// The routers (at most one per family, on an owned prefix) through
    /// which the owned addresses reach what is on none of their prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<std::net::IpAddr>,
}

/// One of the appliance's own addresses with its prefix length
/// (`198.18.7.1/24`, `2001:2:7::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnedPrefix(pub ipnet::IpNet);

impl TryFrom<String> for OwnedPrefix {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse::<ipnet::IpNet>()
            .map(OwnedPrefix)
            .map_err(|_| format!("{text:?} is not an address with its prefix length (198.18.7.1/24)"))
    }
}

impl From<OwnedPrefix> for String {
    fn from(prefix: OwnedPrefix) -> String {
        prefix.0.to_string()
    }
}

fn default_workers() -> u16 {
    1
}
fn default_burst_size() -> u16 {
    32
}
fn default_mbufs() -> u32 {
    16383
}
fn default_descriptors() -> u16 {
    1024
}
fn default_idle_sleep_max_us() -> u32 {
    200
}

/// Largest burst; DPDK drivers handle at most a few hundred per call.
pub const MAX_BURST_SIZE: u16 = 512;

/// A port's device, as EAL must be told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// `--vdev SPEC`; the ethdev is named `name` (the spec up to the first comma).
    Virtual { name: String, spec: String },
    /// `-a ADDRESS`; the ethdev is named by its PCI address.
    Pci { address: String },
}

impl Device {
    /// Parses a device string; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<Device, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty; give a virtual device spec such as \"net_af_packet0,iface=eth1\" or a PCI address such as \"0000:03:00.0\"".into());
        }
        if is_pci_address(text) {
            let address = if text.matches(':').count() == 1 {
                format!("0000:{text}")
            } else {
                text.to_owned()
            };
            return Ok(Device::Pci { address });
        }
        let name = text.split(',').next().unwrap_or_default();
        if !name.starts_with("net_") && !name.starts_with("eth_") {
            return Err(format!(
                "{text:?} is neither a PCI address (DDDD:BB:DD.F) nor a DPDK network virtual device (net_af_packet0,..., net_pcap0,..., net_ring0, net_memif0,..., net_tap0,...)"
            ));
        }
        if name.len() == "net_".len() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "device name {name:?} must be a driver name followed by an instance id, e.g. net_af_packet0"
            ));
        }
        Ok(Device::Virtual {
            name: name.to_owned(),
            spec: text.to_owned(),
        })
    }

    /// The ethdev name DPDK registers the port under.
    pub fn ethdev_name(&self) -> &str {
        match self {
            Device::Virtual { name, .. } => name,
            Device::Pci { address } => address,
        }
    }

    /// The EAL arguments that make the device appear.
    pub fn eal_args(&self) -> [String; 2] {
        match self {
            Device::Virtual { spec, .. } => ["--vdev".into(), spec.clone()],
            Device::Pci { address } => ["-a".into(), address.clone()],
        }
    }
}

fn is_pci_address(text: &str) -> bool {
    // [DDDD:]BB:DD.F with hexadecimal fields.
    let parts: Vec<&str> = text.split([':', '.']).collect();
    let widths: &[usize] = match parts.len() {
        4 => &[4, 2, 2, 1],
        3 => &[2, 2, 1],
        _ => return false,
    };
    text.contains('.')
        && parts
            .iter()
            .zip(widths)
            .all(|(part, &width)| part.len() == width && part.chars().all(|c| c.is_ascii_hexdigit()))
}

/// EAL options that must not appear in `eal_args` because tlsgate derives
/// them from `[ports]`.
const DEVICE_EAL_OPTIONS: &[&str] = &["--vdev", "-a", "--allow", "-b", "--block", "-w", "--pci-whitelist"];

/// The number of distinct lcores the EAL arguments give with `-l LIST`,
/// `--lcores MAP` or `-c MASK` (the last one counts, as in EAL), with the
/// option as written; `None` if they give none (EAL then takes every CPU).
fn eal_lcores(args: &[String]) -> Option<Result<(String, usize), String>> {
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (option, value) = match arg.as_str() {
            "-l" | "--lcores" | "-c" => (arg.as_str(), args.next().map(String::as_str).unwrap_or_default()),
            _ => match (
                arg.strip_prefix("--lcores="),
                arg.strip_prefix("-l"),
                arg.strip_prefix("-c"),
            ) {
                (Some(value), _, _) => ("--lcores", value),
                (None, Some(value), _) => ("-l", value),
                (None, None, Some(value)) => ("-c", value),
                _ => continue,
            },
        };
        let written = format!("{option} {value}");
        let lcores = match option {
            "-c" => core_mask(value),
            "--lcores" => lcore_map(value),
            _ => lcore_list(value),
        };
        found = Some(
            lcores
                .map(|lcores| (written.clone(), lcores.len()))
                .map_err(|reason| format!("`{written}`: {reason}")),
        );
    }
    found
}

/// `0-3,5`: lcore ids and ranges.
fn lcore_list(list: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    let mut lcores = std::collections::BTreeSet::new();
    for item in list.split(',').map(str::trim) {
        let number = |text: &str| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| format!("{item:?} is not an lcore number or range"))
        };
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => (number(item)?, number(item)?),
        };
        if first > last || last - first > 1024 {
            return Err(format!("{item:?} is not an lcore range"));
        }
        lcores.extend(first..=last);
    }
    Ok(lcores)
}

/// `0-3,(4-5)@(1,2),6@7`: lcores (before any `@`), groups in parentheses.
fn lcore_map(map: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    let mut lcores = std::collections::BTreeSet::new();
    let mut depth = 0u32;
    let mut element = String::new();
    for c in map.chars().chain(std::iter::once(',')) {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?,
            _ => {}
        }
        if c == ',' && depth == 0 {
            let set = element.split('@').next().unwrap_or_default();
            lcores.extend(lcore_list(set.trim_start_matches('(').trim_end_matches(')'))?);
            element.clear();
        } else {
            element.push(c);
        }
    }
    Ok(lcores)
}

/// `0xf`: a hexadecimal mask of lcores.
fn core_mask(mask: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    let digits = mask.trim_start_matches("0x").trim_start_matches("0X");
    let bits = u128::from_str_radix(digits, 16).map_err(|_| format!("{mask:?} is not a hexadecimal core mask"))?;
    Ok((0..128).filter(|bit| bits & (1 << bit) != 0).collect())
}

// ---- `[[service]]`: TLS termination (compiled by `crate::service`) ----

/// One `[[service]]`: clients connecting to `destinations` on `port` are
/// answered by the appliance with the service's own certificates, and the
/// plaintext goes to `backend`. Files are loaded by
/// [`Services::from_config`](crate::service::Services::from_config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique; in the connection log and the counters.
    pub name: String,
    /// The addresses or prefixes the clients connect to.
    pub destinations: Vec<ServiceDestination>,
    pub port: u16,
    /// The SNIs this service answers; empty: any name (and none).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Chains with their keys, chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    pub backend: BackendConfig,
    #[serde(default)]
    pub header: ServiceHeader,
    #[serde(default = "default_service_tls_versions")]
    pub tls_versions: Vec<ServiceTlsVersion>,
    #[serde(default = "default_service_alpn")]
    pub alpn: Vec<String>,
    /// 48 or 80 random bytes shared by the boxes that resume each other's
    /// sessions; absent: a random key per process.
    pub ticket_key: Option<PathBuf>,
    /// The plaintext goes through the inspection pair and the capture.
    #[serde(default = "default_true")]
    pub inspect: bool,
}

/// An address or prefix (`198.18.1.2`, `198.18.1.0/24`, `2001:2::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceDestination(pub ipnet::IpNet);

impl TryFrom<String> for ServiceDestination {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(|net| ServiceDestination(net.trunc()))
            .map_err(|_| format!("{text:?} is not an address or prefix"))
    }
}

impl From<ServiceDestination> for String {
    fn from(destination: ServiceDestination) -> String {
        destination.0.to_string()
    }
}

/// One chain (leaf first) and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Where the plaintext goes: `{ port }` the same server on another port,
/// `{ address, port }` another address; from the client's address and
/// port, or with `source = "appliance"` from an owned address of the
/// server port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: Option<std::net::IpAddr>,
    pub port: u16,
    #[serde(default)]
    pub source: BackendSource,
}

/// The source address of a backend connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendSource {
    /// The client's own address and port, transparently.
    #[default]
    Client,
    /// An owned address of the server port (`ports.server.addresses`) and
    /// an ephemeral port: a routed connection.
    Appliance,
}

/// What the backend reads before the plaintext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceHeader {
    #[default]
    None,
    ProxyV1,
    ProxyV2,
    WriteIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ServiceTlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_service_tls_versions() -> Vec<ServiceTlsVersion> {
    vec![ServiceTlsVersion::Tls12, ServiceTlsVersion::Tls13]
}

fn default_service_alpn() -> Vec<String> {
    vec!["http/1.1".into()]
}

/// The `[[service]]` checks that need no file: an error is the key
/// (`service[0].port`) and the reason.
fn validate_services(services: &[ServiceConfig]) -> Result<(), (String, String)> {
    for (index, service) in services.iter().enumerate() {
        let key = |name: &str| format!("service[{index}].{name}");
        let empty = |name: &str| Err((key(name), "must not be empty".to_owned()));
        if service.name.trim().is_empty() {
            return empty("name");
        }
        if let Some(earlier) = services[..index]
            .iter()
            .position(|earlier| earlier.name == service.name)
        {
            return Err((
                key("name"),
                format!("{:?} is also service[{earlier}]'s name", service.name),
            ));
        }
        if service.destinations.is_empty() {
            return empty("destinations");
        }
        if service.port == 0 {
            return Err((key("port"), "0 is not a port".into()));
        }
        if service.certificates.is_empty() {
            return empty("certificates");
        }
        if service.tls_versions.is_empty() {
            return empty("tls_versions");
        }
        if let Some(name) = service
            .server_names
            .iter()
            .find(|name| name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace))
        {
            return Err((key("server_names"), format!("{name:?} is not a host name")));
        }
        if let Some(protocol) = service
            .alpn
            .iter()
            .find(|protocol| protocol.is_empty() || protocol.len() > 255)
        {
            return Err((key("alpn"), format!("{protocol:?}: a protocol name is 1 to 255 bytes")));
        }
        let backend = service.backend;
        if backend.port == 0 {
            return Err((key("backend.port"), "0 is not a port".into()));
        }
        match backend.address {
            None if backend.port == service.port => {
                return Err((
                    key("backend.port"),
                    format!(
                        "{} is the service's own port: the plaintext would come back to it",
                        backend.port
                    ),
                ));
            }
            Some(address) => {
                if let Some(other) = service.destinations.iter().find(|destination| {
                    backend.source == BackendSource::Client && destination.0.addr().is_ipv4() != address.is_ipv4()
                }) {
                    return Err((
                        key("backend.address"),
                        format!(
                            "{address} and the destination {} differ in family: the client's address, kept as the \
                             source, cannot reach it; give one service per family",
                            other.0
                        ),
                    ));
                }
                if backend.port == service.port && service.destinations.iter().any(|d| d.0.contains(&address)) {
                    return Err((
                        key("backend.address"),
                        format!("{address} port {} is this service itself", backend.port),
                    ));
                }
            }
            None => {}
        }
        if backend.source == BackendSource::Appliance && backend.address.is_none() {
            return Err((
                key("backend.address"),
                "required with source = \"appliance\" (the backend's own address)".into(),
            ));
        }
        for (earlier_index, earlier) in services[..index].iter().enumerate() {
            if let Some(shared) = overlap(earlier, service) {
                return Err((
                    key("destinations"),
                    format!(
                        "{shared} port {} is also service[{earlier_index}] ({:?}) for the same server names; \
                         give them distinct server_names",
                        service.port, earlier.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A destination two services both answer on the same port for a common
/// name (no `server_names` is every name).
fn overlap(a: &ServiceConfig, b: &ServiceConfig) -> Option<String> {
    if a.port != b.port {
        return None;
    }
    let names_meet = a.server_names.is_empty()
        || b.server_names.is_empty()
        || a.server_names
            .iter()
            .any(|name| b.server_names.iter().any(|other| other.eq_ignore_ascii_case(name)));
    if !names_meet {
        return None;
    }
    a.destinations.iter().find_map(|x| {
        b.destinations
            .iter()
            .find(|y| x.0.contains(&y.0) || y.0.contains(&x.0))
            .map(|y| if x.0.prefix_len() >= y.0.prefix_len() { x.0 } else { y.0 }.to_string())
    })
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Where the `[control] socket` of the configuration at `path` is on
    /// the host (under `process.chroot` when there is one), also when the
    /// rest of the file does not load (so that `tlsgate reload` can still
    /// reach the running instance, which then refuses the file and says
    /// why); the file's own error when even that cannot be read.
    pub fn control_socket(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
        let error = match Config::load(path) {
            Ok(config) => return Ok(config.control.socket.map(|socket| config.process.host_path(&socket))),
            Err(err) => err,
        };
        let table = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok());
        let entry = |section: &str, key: &str| {
            Some(table.as_ref()?.get(section)?.get(key)?.as_str()?.to_owned()).filter(|value| !value.is_empty())
        };
        match entry("control", "socket") {
            Some(socket) => Ok(Some(host_path(
                entry("process", "chroot").as_deref().map(Path::new),
                Path::new(&socket),
            ))),
            None => Err(error),
        }
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The files `run` opens after the privilege drop, by key: they are
    /// written (and reopened, rotated) as `process.user`, inside
    /// `process.chroot`.
    pub fn outputs_after_drop(&self) -> Vec<(&'static str, &Path)> {
        [
            ("log.connections", self.log.connections.as_deref()),
            ("log.keylog", self.log.keylog.as_deref()),
            (
                "capture.path",
                self.capture.as_ref().and_then(|capture| capture.path.as_deref()),
            ),
            ("control.socket", self.control.socket.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, path)| Some((key, path?)))
        .collect()
    }

    /// `[process]`: the names are not resolved here (that reads the user
    /// database: `appliance::preflight` does it), only their shape.
    /// The owned addresses and gateways of the ports, and the services
    /// whose backends leave from them: an error is the key and the reason.
    /// Also checked by a reload over the running ports (they need a
    /// restart, the services do not).
    pub(crate) fn validate_owned_addresses(&self) -> Result<(), (String, String)> {
        let ports = &self.ports;
        for (name, port) in [
            ("client", Some(&ports.client)),
            ("inspect_out", ports.inspect_out.as_ref()),
            ("inspect_in", ports.inspect_in.as_ref()),
            ("mirror", ports.mirror.as_ref()),
        ] {
            let Some(port) = port else { continue };
            for (key, set) in [
                ("addresses", !port.addresses.is_empty()),
                ("gateways", !port.gateways.is_empty()),
            ] {
                if set {
                    return Err((
                        format!("ports.{name}.{key}"),
                        "only the server port has owned addresses (the sources of backend connections)".into(),
                    ));
                }
            }
        }
        let server = &ports.server;
        for (index, prefix) in server.addresses.iter().enumerate() {
            let address = prefix.0.addr();
            let usable = match address {
                std::net::IpAddr::V4(v4) => {
                    !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback())
                        && (prefix.0.prefix_len() >= 31
                            || (address != prefix.0.network() && address != prefix.0.broadcast()))
                }
                std::net::IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
            };
            if !usable {
                return Err((
                    "ports.server.addresses".into(),
                    format!(
                        "{prefix:?}: {address} is not a host address of its prefix",
                        prefix = prefix.0.to_string()
                    ),
                ));
            }
            if server.addresses[..index]
                .iter()
                .any(|earlier| earlier.0.addr() == address)
            {
                return Err(("ports.server.addresses".into(), format!("{address} is listed twice")));
            }
            if let Some(service) = self
                .service
                .iter()
                .position(|service| service.destinations.iter().any(|net| net.0.contains(&address)))
            {
                return Err((
                    "ports.server.addresses".into(),
                    format!("{address} is a destination of service[{service}]: an owned address only sources backend connections"),
                ));
            }
        }
        let on_link = |ip: &std::net::IpAddr| server.addresses.iter().any(|prefix| prefix.0.contains(ip));
        for (index, gateway) in server.gateways.iter().enumerate() {
            if server.gateways[..index]
                .iter()
                .any(|earlier| earlier.is_ipv4() == gateway.is_ipv4())
            {
                return Err((
                    "ports.server.gateways".into(),
                    format!("{gateway}: one gateway per family"),
                ));
            }
            if !on_link(gateway) || server.addresses.iter().any(|prefix| prefix.0.addr() == *gateway) {
                return Err((
                    "ports.server.gateways".into(),
                    format!("{gateway} is not another host on a prefix of ports.server.addresses"),
                ));
            }
        }
        for (index, service) in self.service.iter().enumerate() {
            let backend = service.backend;
            let (BackendSource::Appliance, Some(address)) = (backend.source, backend.address) else {
                continue;
            };
            if server.addresses.iter().any(|prefix| prefix.0.addr() == address) {
                return Err((
                    format!("service[{index}].backend.address"),
                    format!("{address} is an owned address of the server port, not a backend"),
                ));
            }
            let family = server
                .addresses
                .iter()
                .any(|prefix| prefix.0.addr().is_ipv4() == address.is_ipv4());
            let gateway = server
                .gateways
                .iter()
                .any(|gateway| gateway.is_ipv4() == address.is_ipv4());
            if !family || !(on_link(&address) || gateway) {
                return Err((
                    format!("service[{index}].backend.source"),
                    format!(
                        "\"appliance\" needs ports.server.addresses to hold an address of {address}'s family, on its \
                         prefix or with a gateway of that family in ports.server.gateways"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_process(&self) -> Result<(), (&'static str, String)> {
        let process = &self.process;
        for (key, name) in [("process.user", &process.user), ("process.group", &process.group)] {
            if let Some(name) = name {
                if name.is_empty()
                    || name.contains(|c: char| c == ':' || c == '/' || c.is_whitespace() || c.is_control())
                {
                    return Err((key, format!("{name:?} is not a user or group name")));
                }
            }
        }
        if process.user.is_none() {
            for (key, set) in [
                ("process.group", process.group.is_some()),
                ("process.chroot", process.chroot.is_some()),
            ] {
                if set {
                    return Err((
                        key,
                        "needs process.user: the process switches to that user and group".into(),
                    ));
                }
            }
        }
        if let Some(root) = &process.chroot {
            if !root.is_absolute() || root == Path::new("/") {
                return Err((
                    "process.chroot",
                    format!("{}: give an absolute directory other than /", root.display()),
                ));
            }
            if let Some((key, path)) = self
                .outputs_after_drop()
                .into_iter()
                .find(|(_, path)| !path.is_absolute())
            {
                return Err((
                    key,
                    format!(
                        "{}: with process.chroot give an absolute path as seen inside {} (it is opened after the chroot)",
                        path.display(),
                        root.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let dataplane = &self.dataplane;
        if !(1..=64).contains(&dataplane.workers) {
            return Err(invalid(
                "dataplane.workers",
                format!("{} is out of range 1..=64", dataplane.workers),
            ));
        }
        if !(1..=MAX_BURST_SIZE).contains(&dataplane.burst_size) {
            return Err(invalid(
                "dataplane.burst_size",
                format!("{} is out of range 1..={MAX_BURST_SIZE}", dataplane.burst_size),
            ));
        }
        let ports = self.ports.keyed_with_mirror().len() as u32;
        let needed = u32::from(dataplane.workers)
            * ports
            * (u32::from(dataplane.rx_descriptors)
                + u32::from(dataplane.tx_descriptors)
                + u32::from(dataplane.burst_size) * 2);
        if dataplane.mbufs < needed {
            return Err(invalid(
                "dataplane.mbufs",
                format!(
                    "{} mbufs cannot fill the rings: {} workers x {ports} ports x ({} rx + {} tx descriptors + 2 bursts) need at least {needed}",
                    dataplane.mbufs, dataplane.workers, dataplane.rx_descriptors, dataplane.tx_descriptors
                ),
            ));
        }
        for (key, value) in [
            ("dataplane.rx_descriptors", dataplane.rx_descriptors),
            ("dataplane.tx_descriptors", dataplane.tx_descriptors),
        ] {
            if !(32..=16384).contains(&value) {
                return Err(invalid(key, format!("{value} is out of range 32..=16384")));
            }
        }
        if let Some(option) = dataplane
            .eal_args
            .iter()
            .find(|arg| DEVICE_EAL_OPTIONS.iter().any(|opt| arg.split('=').next() == Some(opt)))
        {
            return Err(invalid(
                "dataplane.eal_args",
                format!("{option:?} is not allowed here: devices are given as [ports.*] device = \"...\""),
            ));
        }
        if let Some(lcores) = eal_lcores(&dataplane.eal_args) {
            let (option, lcores) = lcores.map_err(|reason| invalid("dataplane.eal_args", reason))?;
            let worker_lcores = lcores.saturating_sub(1);
            if usize::from(dataplane.workers) > worker_lcores {
                return Err(invalid(
                    "dataplane.workers",
                    format!(
                        "{} workers need {} lcores besides the main one, but `{option}` in dataplane.eal_args gives \
                         {worker_lcores}; give one lcore per worker, e.g. -l 0-{}",
                        dataplane.workers, dataplane.workers, dataplane.workers
                    ),
                ));
            }
        }
        for (key, value) in [
            ("tcp.rx_buffer", self.tcp.rx_buffer),
            ("tcp.tx_buffer", self.tcp.tx_buffer),
        ] {
            if !(1024..=16 * 1024 * 1024).contains(&value) {
                return Err(invalid(key, format!("{value} bytes is out of range 1024..=16777216")));
            }
        }
        if !(100..=3_600_000).contains(&self.tcp.timeout_ms) {
            return Err(invalid(
                "tcp.timeout_ms",
                format!("{} is out of range 100..=3600000", self.tcp.timeout_ms),
            ));
        }
        if !(1..=30).contains(&self.tcp.max_retransmissions) {
            return Err(invalid(
                "tcp.max_retransmissions",
                format!("{} is out of range 1..=30", self.tcp.max_retransmissions),
            ));
        }
        if self.tcp.max_connections == 0 {
            return Err(invalid("tcp.max_connections", "must be at least 1".into()));
        }
        if self.tcp.max_embryonic_per_client == 0 {
            return Err(invalid("tcp.max_embryonic_per_client", "must be at least 1".into()));
        }
        for (key, value) in [
            ("tcp.client_hello_timeout_ms", self.tcp.client_hello_timeout_ms),
            ("tcp.handshake_timeout_ms", self.tcp.handshake_timeout_ms),
            ("tcp.starttls_timeout_ms", self.tcp.starttls_timeout_ms),
        ] {
            if !(100..=600_000).contains(&value) {
                return Err(invalid(key, format!("{value} is out of range 100..=600000")));
            }
        }
        if self.tcp.idle_timeout_ms != 0 && !(1_000..=604_800_000).contains(&self.tcp.idle_timeout_ms) {
            return Err(invalid(
                "tcp.idle_timeout_ms",
                format!(
                    "{} is out of range 1000..=604800000 (0 turns the idle timeout off)",
                    self.tcp.idle_timeout_ms
                ),
            ));
        }
        if self.buffer_address_space() > MAX_BUFFER_ADDRESS_SPACE {
            return Err(invalid(
                "tcp.max_connections",
                format!(
                    "{} connections per worker with {} B buffers need {} TiB of address space for socket buffers \
                     (reserved, not committed); at most {} TiB fit: lower tcp.max_connections or tcp.rx_buffer/tx_buffer",
                    self.tcp.max_connections,
                    self.tcp.rx_buffer.max(self.tcp.tx_buffer),
                    self.buffer_address_space() >> 40,
                    MAX_BUFFER_ADDRESS_SPACE >> 40
                ),
            ));
        }
        if let Some(port) = self.intercept.tcp_ports.iter().find(|port| **port == 0) {
            return Err(invalid("intercept.tcp_ports", format!("{port} is not a TCP port")));
        }
        if self.intercepts_tls() {
            for (key, value) in [("tls.ca_cert", &self.tls.ca_cert), ("tls.ca_key", &self.tls.ca_key)] {
                if value.is_none() {
                    return Err(invalid(
                        key,
                        "is required with [intercept] mode = \"tls\" and intercept.tcp_ports or a [[starttls]] \
                         entry that intercepts (make a CA with `tlsgate ca init --dir DIR`)"
                            .into(),
                    ));
                }
            }
        }
        if self.ports.inspect_out.is_some() != self.ports.inspect_in.is_some() {
            let missing = if self.ports.inspect_out.is_none() {
                "ports.inspect_out"
            } else {
                "ports.inspect_in"
            };
            return Err(invalid(
                missing,
                "the inspection ports come as a pair: configure both [ports.inspect_out] and [ports.inspect_in], or neither".into(),
            ));
        }
        if !(10..=60_000).contains(&self.inspect.syn_timeout_ms) {
            return Err(invalid(
                "inspect.syn_timeout_ms",
                format!("{} is out of range 10..=60000", self.inspect.syn_timeout_ms),
            ));
        }
        if let Some(capture) = &self.capture {
            if capture.path.is_none() {
                if capture.pcap_over_ip.is_none() {
                    return Err(invalid(
                        "capture.path",
                        "[capture] needs a file (path) or a PCAP-over-IP listener (pcap_over_ip), or both".into(),
                    ));
                }
                if let Some(key) = [
                    ("capture.rotate_mb", capture.rotate_mb.is_some()),
                    ("capture.rotate_secs", capture.rotate_secs.is_some()),
                    ("capture.max_files", capture.max_files.is_some()),
                ]
                .into_iter()
                .find_map(|(key, set)| set.then_some(key))
                {
                    return Err(invalid(key, "applies to the capture file: set capture.path too".into()));
                }
            }
            if capture.pcap_over_ip.is_some_and(|listen| listen.port() == 0) {
                return Err(invalid(
                    "capture.pcap_over_ip",
                    "give the port to listen on, e.g. \"127.0.0.1:57012\"".into(),
                ));
            }
            capture.ports().map_err(|reason| invalid("capture.port_map", reason))?;
            if capture.rotate_mb == Some(0) || capture.rotate_secs == Some(0) {
                return Err(invalid(
                    "capture.rotate_mb",
                    "rotate_mb and rotate_secs must be at least 1 (leave them out not to rotate)".into(),
                ));
            }
            if capture.max_files == Some(0) {
                return Err(invalid(
                    "capture.max_files",
                    "must be at least 1 (leave it out to keep every file)".into(),
                ));
            }
        }
        if self.tls.cert_cache == 0 {
            return Err(invalid("tls.cert_cache", "must be at least 1".into()));
        }
        if self.tls.upstream_trust.bundle().as_os_str().is_empty() {
            return Err(invalid(
                "tls.upstream_trust",
                "give \"system\" or the path of a PEM bundle".into(),
            ));
        }
        let tls = &self.tls;
        if tls.fail_open_after == 1 {
            return Err(invalid(
                "tls.fail_open_after",
                "1 would let a single client switch inspection off for every other; give 0 (never) or at least 2 \
                 distinct clients"
                    .into(),
            ));
        }
        if !(1..=86_400).contains(&tls.fail_open_window_secs) {
            return Err(invalid(
                "tls.fail_open_window_secs",
                format!("{} is out of range 1..=86400", tls.fail_open_window_secs),
            ));
        }
        if !(1..=604_800).contains(&tls.learned_ttl_secs) {
            return Err(invalid(
                "tls.learned_ttl_secs",
                format!("{} is out of range 1..=604800 (a week)", tls.learned_ttl_secs),
            ));
        }
        if !(1..=1_000_000).contains(&tls.learned_max_entries) {
            return Err(invalid(
                "tls.learned_max_entries",
                format!("{} is out of range 1..=1000000", tls.learned_max_entries),
            ));
        }
        if self
            .control
            .socket
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid(
                "control.socket",
                "give the path of a Unix domain socket".into(),
            ));
        }
        if self.metrics.listen.is_some_and(|addr| addr.port() == 0) {
            return Err(invalid(
                "metrics.listen",
                "give a fixed port (scrapers and `tlsgate top` must find it), e.g. 127.0.0.1:9464".into(),
            ));
        }
        self.validate_process().map_err(|(key, reason)| invalid(key, reason))?;
        validate_services(&self.service).map_err(|(key, reason)| ConfigError::InvalidRule {
            path: path.to_owned(),
            key,
            reason,
        })?;
        validate_starttls(self).map_err(|(key, reason)| ConfigError::InvalidRule {
            path: path.to_owned(),
            key,
            reason,
        })?;
        self.validate_owned_addresses()
            .map_err(|(key, reason)| ConfigError::InvalidRule {
                path: path.to_owned(),
                key,
                reason,
            })?;
        self.policy.check().map_err(|(key, reason)| ConfigError::InvalidRule {
            path: path.to_owned(),
            key,
            reason,
        })?;
        self.validate_conversions()
            .map_err(|(key, reason)| ConfigError::InvalidRule {
                path: path.to_owned(),
                key,
                reason,
            })?;
        let mut seen: Vec<Device> = Vec::new();
        for (key, port) in self.ports.keyed_with_mirror() {
            let device = Device::parse(&port.device).map_err(|reason| invalid(key, reason))?;
            if let Some(earlier) = seen
                .iter()
                .find(|earlier| earlier.ethdev_name() == device.ethdev_name())
            {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is also another port; every port must be a different device",
                        earlier.ethdev_name()
                    ),
                ));
            }
            if matches!(device, Device::Pci { .. }) && dataplane.eal_args.iter().any(|arg| arg == "--no-pci") {
                return Err(invalid(
                    key,
                    "is a PCI device, but dataplane.eal_args contains --no-pci".into(),
                ));
            }
            seen.push(device);
        }
        Ok(())
    }

    /// `upgrade` and `downgrade` rules need the TLS context of `[intercept]
    /// mode = "tls"` and apply only to intercepted ports.
    fn validate_conversions(&self) -> Result<(), (String, String)> {
        for (rule, ports, conversion) in self.policy.conversions() {
            let tls = self.intercept.mode == InterceptMode::Tls && !self.intercept.tcp_ports.is_empty();
            if !tls {
                return Err((
                    format!("{rule}.action"),
                    format!(
                        "`{}` needs [intercept] mode = \"tls\" with tcp_ports (tls.upstream_trust verifies an upgraded \
                         server, the CA signs a downgraded client's certificate)",
                        conversion.action.name()
                    ),
                ));
            }
            if let Some(port) = ports.iter().find(|port| !self.intercept.tcp_ports.contains(port)) {
                return Err((
                    format!("{rule}.port"),
                    format!("{port} is not in intercept.tcp_ports: the rule would never see its connections"),
                ));
            }
        }
        Ok(())
    }

    /// The compiled `[[policy]]` rules with a fresh store of learned
    /// bypasses as `[tls]` sets it up; an error names the rule and field.
    pub fn policy(&self) -> Result<crate::policy::Policy, (String, String)> {
        let tls = &self.tls;
        let learned = crate::learned::LearnedStore::new(crate::learned::LearnedSettings {
            fail_open_clients: tls.fail_open_after,
            fail_open_window: netstack::Duration::from_secs(tls.fail_open_window_secs),
            ttl: netstack::Duration::from_secs(tls.learned_ttl_secs),
            max_entries: tls.learned_max_entries,
        });
        let ech = match tls.ech {
            EchPolicy::InterceptOuter => crate::policy::Action::Intercept,
            EchPolicy::Block => crate::policy::Action::Block,
            EchPolicy::Bypass => crate::policy::Action::Bypass,
        };
        crate::policy::Policy::new(
            &self.policy,
            std::sync::Arc::new(learned),
            tls.client_auth == ClientAuthPolicy::Bypass,
        )
        .map(|policy| policy.with_ech(ech))
    }

    /// The most memory the TCP buffers of intercepted connections can take:
    /// every worker full, every socket's buffers full (idle ones take none).
    pub fn worst_case_buffer_bytes(&self) -> u128 {
        u128::from(self.dataplane.workers)
            * self.tcp.max_connections as u128
            * self.sockets_per_connection() as u128
            * (self.tcp.rx_buffer as u128 + self.tcp.tx_buffer as u128)
    }

    /// Address space the workers' socket-buffer arenas may reserve when
    /// full: a slot of the larger buffer per ring, two rings per socket.
    fn buffer_address_space(&self) -> u128 {
        u128::from(self.dataplane.workers)
            * self.tcp.max_connections as u128
            * self.sockets_per_connection() as u128
            * 2
            * self.tcp.rx_buffer.max(self.tcp.tx_buffer) as u128
    }

    /// TCP sockets one intercepted connection takes: the client and server
    /// legs, and the two loop legs with an inspection box.
    /// Whether TLS is intercepted: mode "tls" with intercepted ports, or a
    /// `[[starttls]]` entry that intercepts.
    pub fn intercepts_tls(&self) -> bool {
        self.intercept.mode == InterceptMode::Tls
            && (!self.intercept.tcp_ports.is_empty()
                || self
                    .starttls
                    .iter()
                    .any(|entry| entry.action == crate::policy::Action::Intercept))
    }

    /// The `[[starttls]]` entries, one per port (of a validated
    /// configuration).
    pub fn starttls_ports(&self) -> Vec<StarttlsPort> {
        self.starttls
            .iter()
            .filter_map(|entry| Some((entry, entry.protocol()?)))
            .flat_map(|(entry, protocol)| {
                entry.ports().into_iter().map(move |port| StarttlsPort {
                    port,
                    protocol,
                    action: entry.action,
                    require_tls: entry.require_tls,
                })
            })
            .collect()
    }

    pub fn sockets_per_connection(&self) -> usize {
        if self.ports.inspect_out.is_some() {
            4
        } else {
            2
        }
    }

    /// The device of the decrypt-mirror port, if configured (validated by
    /// `parse`).
    pub fn mirror_device(&self) -> Result<Option<Device>, String> {
        self.ports
            .mirror
            .as_ref()
            .map(|port| Device::parse(&port.device))
            .transpose()
    }

    /// The devices of every data port, in the engine's order (validated by
    /// `parse`).
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        self.ports
            .all()
            .into_iter()
            .map(|port| Device::parse(&port.device))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lcores_are_counted_as_eal_reads_them() {
        let count = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            super::eal_lcores(&args).map(|found| found.map(|(_, count)| count))
        };
        assert_eq!(count(&["--no-pci"]), None);
        assert_eq!(count(&["-l", "0-1"]), Some(Ok(2)));
        assert_eq!(count(&["-l2-3,5", "-n", "4"]), Some(Ok(3)));
        assert_eq!(count(&["--lcores", "0-3,(4-5)@(1,2),6@7"]), Some(Ok(7)));
        assert_eq!(count(&["--lcores=0@0,1@0,2@1"]), Some(Ok(3)));
        assert_eq!(count(&["-c", "0xf"]), Some(Ok(4)));
        assert_eq!(count(&["-l", "0-3", "-l", "0"]), Some(Ok(1)), "the last option counts");
        assert!(matches!(count(&["-l", "zero"]), Some(Err(_))));
    }

    use super::*;

    const MINIMAL: &str = r#"
[dataplane]
eal_args = ["--no-huge"]
[ports.client]
device = "net_af_packet0,iface=gwc0"
[ports.server]
device = "net_af_packet1,iface=gws0"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn rejection(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn starttls_entries_default_their_ports_and_are_validated() {
        let tls = "[tls]\nca_cert = \"/ca.pem\"\nca_key = \"/ca.key\"\n";
        let config = parse(&format!(
            "{MINIMAL}{tls}[[starttls]]\nprotocol = \"smtp\"\nrequire_tls = true\n\
             [[starttls]]\nprotocol = \"smtp\"\nports = [2525]\naction = \"bypass\"\n"
        ))
        .expect("valid");
        assert!(
            config.intercepts_tls(),
            "a [[starttls]] that intercepts needs the CA alone"
        );
        assert_eq!(
            config
                .starttls_ports()
                .iter()
                .map(|entry| (entry.port, entry.action, entry.require_tls))
                .collect::<Vec<_>>(),
            [
                (25, crate::policy::Action::Intercept, true),
                (587, crate::policy::Action::Intercept, true),
                (2525, crate::policy::Action::Bypass, false)
            ]
        );
        assert_eq!(config.tcp.starttls_timeout_ms, 30_000);
        for (entry, key, says) in [
            ("protocol = \"smtps\"", "starttls[0].protocol", "is not one of smtp"),
            (
                "protocol = \"smtp\"\nports = []",
                "starttls[0].ports",
                "must not be empty",
            ),
            (
                "protocol = \"smtp\"\nports = [443]",
                "starttls[0].ports",
                "intercept.tcp_ports",
            ),
            (
                "protocol = \"smtp\"\naction = \"bypass\"\nrequire_tls = true",
                "starttls[0].require_tls",
                "intercept",
            ),
        ] {
            let message = rejection(&format!(
                "{MINIMAL}{tls}[intercept]\ntcp_ports = [443]\n[[starttls]]\n{entry}\n"
            ));
            assert!(message.contains(key) && message.contains(says), "{entry}: {message}");
        }
        let message = rejection(&format!(
            "{MINIMAL}{tls}[[starttls]]\nprotocol = \"smtp\"\n[[starttls]]\nprotocol = \"smtp\"\nports = [587]\n"
        ));
        assert!(
            message.contains("starttls[1].ports") && message.contains("starttls[0]"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}[[starttls]]\nprotocol = \"smtp\"\n"));
        assert!(message.contains("tls.ca_cert"), "{message}");
        let message = rejection(&format!(
            "{MINIMAL}[intercept]\nmode = \"splice\"\n[[starttls]]\nprotocol = \"smtp\"\n"
        ));
        assert!(message.contains("starttls[0].action"), "{message}");
        let message = rejection(&format!("{MINIMAL}{tls}[tcp]\nstarttls_timeout_ms = 50\n"));
        assert!(message.contains("tcp.starttls_timeout_ms"), "{message}");
        // FTP is intercepted on several workers too (its data connections
        // are steered to the control connection's worker).
        let two_workers = MINIMAL.replace("eal_args", "workers = 2\neal_args");
        let two_workers_ftp = parse(&format!("{two_workers}{tls}[[starttls]]\nprotocol = \"ftp\"\n"));
        assert_eq!(two_workers_ftp.map(|config| config.dataplane.workers).ok(), Some(2));
        assert!(parse(&format!("{two_workers}{tls}[[starttls]]\nprotocol = \"smtp\"\n")).is_ok());
        assert!(parse(&format!(
            "{two_workers}{tls}[[starttls]]\nprotocol = \"ftp\"\naction = \"bypass\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.dataplane.workers, 1);
        assert_eq!(config.dataplane.burst_size, 32);
        assert_eq!(config.dataplane.idle_sleep_max_us, 200);
        let devices = config.devices().expect("devices");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].ethdev_name(), "net_af_packet0");
        assert_eq!(
            devices[1].eal_args(),
            ["--vdev".to_owned(), "net_af_packet1,iface=gws0".to_owned()]
        );
    }

    #[test]
    fn upgrade_and_downgrade_rules_need_tls_intercepted_ports_and_run_on_several_workers() {
        let tls = "[intercept]\ntcp_ports = [80, 443]\n[tls]\nca_cert = \"/ca.pem\"\nca_key = \"/ca.key\"\n";
        let upgrade =
            "[[policy]]\naction = \"upgrade\"\nport = [80]\nserver_port = 443\nserver_name = \"www.lab.test\"\n";
        let config = parse(&format!("{MINIMAL}{tls}{upgrade}")).expect("valid");
        let conversions = config.policy.conversions();
        assert_eq!(conversions[0].2.server_port(80), 443);
        let message = rejection(&format!("{MINIMAL}{upgrade}"));
        assert!(message.contains("policy[1].action"), "{message}");
        assert!(message.contains("mode = \"tls\""), "{message}");
        let message = rejection(&format!("{MINIMAL}{tls}{}", upgrade.replace("[80]", "[8080]")));
        assert!(message.contains("policy[1].port"), "{message}");
        let two_workers = MINIMAL.replace("eal_args", "workers = 2\neal_args");
        // A moved server leg is handed to its worker (appliance::handoff).
        assert!(parse(&format!("{two_workers}{tls}{upgrade}")).is_ok());
        let same_port = "[[policy]]\naction = \"downgrade\"\nport = [443]\n";
        assert!(parse(&format!("{two_workers}{tls}{same_port}")).is_ok());
    }

    #[test]
    fn shipped_configs_are_valid() {
        for name in ["lab.toml", "lab-inspect.toml", "inline-bridge.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name);
            if let Err(err) = Config::load(&path) {
                panic!("{name}: {err}");
            }
        }
    }

    #[test]
    fn intercept_and_tcp_sections() {
        let config = parse(&format!(
            "{MINIMAL}\n[intercept]\ntcp_ports = [80, 443]\nmode = \"splice\"\n[tcp]\nrx_buffer = 8192\nhold_synack = false\n"
        ))
        .expect("valid");
        assert_eq!(config.intercept.tcp_ports, vec![80, 443]);
        assert_eq!(config.intercept.mode, InterceptMode::Splice);
        let message = rejection(&format!("{MINIMAL}\n[intercept]\ntcp_ports = [443]\n"));
        assert!(
            message.contains("tls.ca_cert") && message.contains("ca init"),
            "{message}"
        );
        let tls = parse(&format!(
            "{MINIMAL}\n[intercept]\ntcp_ports = [443]\n[tls]\nca_cert = \"/ca.pem\"\nca_key = \"/ca.key\"\ninvalid_upstream = \"refuse\"\n"
        ))
        .expect("valid");
        assert_eq!(tls.intercept.mode, InterceptMode::Tls);
        assert_eq!(tls.tls.invalid_upstream, InvalidUpstreamPolicy::Refuse);
        assert_eq!(tls.tls.upstream_trust, UpstreamTrustSource::System);
        let defaults = parse(MINIMAL).expect("valid").tls;
        assert_eq!(
            (&defaults.upstream_trust, defaults.cert_cache),
            (&UpstreamTrustSource::System, 10_000)
        );
        let bundle = parse(&format!(
            "{MINIMAL}\n[tls]\nupstream_trust = \"/etc/tlsgate/origins.pem\"\n"
        ))
        .expect("valid");
        assert_eq!(
            bundle.tls.upstream_trust.bundle(),
            Path::new("/etc/tlsgate/origins.pem")
        );
        let message = rejection(&format!("{MINIMAL}\n[tls]\nupstream_trust = \"\"\n"));
        assert!(
            message.contains("tls.upstream_trust") && message.contains("system"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}\n[tls]\ncert_cache = 0\n"));
        assert!(message.contains("tls.cert_cache"), "{message}");
        assert_eq!(defaults.ech, EchPolicy::InterceptOuter);
        let ech = parse(&format!("{MINIMAL}\n[tls]\nech = \"bypass\"\n")).expect("valid");
        assert_eq!(ech.tls.ech, EchPolicy::Bypass);
        let message = rejection(&format!("{MINIMAL}\n[tls]\nech = \"outer\"\n"));
        assert!(message.contains("ech") && message.contains("outer"), "{message}");
        let rules = parse(&format!(
            "{MINIMAL}\n[[policy]]\naction = \"bypass\"\nwhen = \"legacy_upstream\"\ndst = [\"198.18.7.10\"]\nsni = [\"old.example\"]\n\
             [[policy]]\naction = \"intercept\"\nwhen = \"ech\"\nsni = [\"public.example\"]\n"
        ))
        .expect("valid");
        assert!(rules.policy().is_ok());
        let message = rejection(&format!(
            "{MINIMAL}\n[[policy]]\naction = \"intercept\"\nwhen = \"legacy_upstream\"\n"
        ));
        assert!(message.contains("policy[1].action"), "{message}");
        assert_eq!(config.tcp.rx_buffer, 8192);
        assert_eq!(config.tcp.tx_buffer, 4 << 20);
        assert!(!config.tcp.hold_synack);
        assert!(parse(MINIMAL).expect("valid").intercept.tcp_ports.is_empty());
        let message = rejection(&format!("{MINIMAL}\n[intercept]\nmode = \"magic\"\n"));
        assert!(message.contains("magic"), "{message}");
        assert_eq!(
            config.intercept.udp,
            crate::policy::UdpPolicy::Block,
            "UDP is blocked by default"
        );
        let bypass = parse(&format!("{MINIMAL}\n[intercept]\nudp = \"bypass\"\n")).expect("valid");
        assert_eq!(bypass.intercept.udp, crate::policy::UdpPolicy::Bypass);
        let message = rejection(&format!("{MINIMAL}\n[intercept]\nudp = \"allow\"\n"));
        assert!(message.contains("udp") && message.contains("bypass"), "{message}");
        let message = rejection(&format!(
            "{MINIMAL}\n[[policy]]\naction = \"bypass\"\nsni = [\"a.test\"]\nudp = \"bypass\"\n"
        ));
        assert!(message.contains("policy[1].udp"), "{message}");
        let message = rejection(&format!("{MINIMAL}\n[intercept]\ntcp_ports = [0]\n"));
        assert!(message.contains("intercept.tcp_ports"), "{message}");
        let message = rejection(&format!("{MINIMAL}\n[intercept]\ntcp_ports = [70000]\n"));
        assert!(message.contains("tcp_ports"), "{message}");
        let message = rejection(&format!("{MINIMAL}\n[tcp]\nrx_buffer = 10\n"));
        assert!(message.contains("tcp.rx_buffer"), "{message}");
        let message = rejection(&format!("{MINIMAL}\n[tcp]\ntimeout_ms = 1\n"));
        assert!(message.contains("tcp.timeout_ms"), "{message}");
    }

    #[test]
    fn learned_bypasses_and_the_control_socket() {
        let defaults = parse(MINIMAL).expect("valid");
        let tls = &defaults.tls;
        assert_eq!(
            (
                tls.fail_open_after,
                tls.fail_open_window_secs,
                tls.learned_ttl_secs,
                tls.learned_max_entries
            ),
            (3, 60, 3_600, 10_000)
        );
        assert_eq!(defaults.control.socket, None);
        let set = parse(&format!(
            "{MINIMAL}[tls]\nfail_open_after = 0\nlearned_ttl_secs = 60\nlearned_max_entries = 5\n[control]\nsocket = \"/run/tg.sock\"\n"
        ))
        .expect("valid");
        assert_eq!(set.control.socket.as_deref(), Some(Path::new("/run/tg.sock")));
        assert_eq!(defaults.metrics.listen, None, "no endpoint unless asked for");
        let metrics = parse(&format!("{MINIMAL}[metrics]\nlisten = \"[::1]:9464\"\n")).expect("valid");
        assert_eq!(metrics.metrics.listen, Some("[::1]:9464".parse().expect("address")));
        let message = rejection(&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"));
        assert!(
            message.contains("listen = \"localhost\"") && message.contains("invalid socket address"),
            "{message}"
        );
        assert_eq!(set.policy().expect("policy").learned().settings().max_entries, 5);
        for (text, key) in [
            ("[tls]\nfail_open_after = 1\n", "tls.fail_open_after"),
            ("[tls]\nfail_open_window_secs = 0\n", "tls.fail_open_window_secs"),
            ("[tls]\nlearned_ttl_secs = 0\n", "tls.learned_ttl_secs"),
            ("[tls]\nlearned_max_entries = 0\n", "tls.learned_max_entries"),
            ("[control]\nsocket = \"\"\n", "control.socket"),
            ("[metrics]\nlisten = \"127.0.0.1:0\"\n", "metrics.listen"),
        ] {
            let message = rejection(&format!("{MINIMAL}{text}"));
            assert!(message.contains(key), "{message}");
        }
    }

    #[test]
    fn the_process_section_is_validated_naming_the_key() {
        let defaults = parse(MINIMAL).expect("valid");
        assert_eq!(defaults.process, Process::default(), "no privilege drop unless asked");
        let set = parse(&format!(
            "{MINIMAL}[process]\nuser = \"tlsgate\"\ngroup = \"tlsgate\"\nchroot = \"/var/lib/tlsgate\"\n\
             [log]\nconnections = \"/log/connections.jsonl\"\n"
        ))
        .expect("valid");
        assert_eq!(set.process.user.as_deref(), Some("tlsgate"));
        assert_eq!(
            set.process.host_path(Path::new("/log/connections.jsonl")),
            Path::new("/var/lib/tlsgate/log/connections.jsonl")
        );
        for (text, key, reason) in [
            ("[process]\nuser = \"\"\n", "process.user", "not a user or group name"),
            (
                "[process]\nuser = \"a b\"\n",
                "process.user",
                "not a user or group name",
            ),
            (
                "[process]\nuser = \"x\"\ngroup = \"a:b\"\n",
                "process.group",
                "not a user or group name",
            ),
            (
                "[process]\ngroup = \"tlsgate\"\n",
                "process.group",
                "needs process.user",
            ),
            (
                "[process]\nchroot = \"/var/lib/tlsgate\"\n",
                "process.chroot",
                "needs process.user",
            ),
            (
                "[process]\nuser = \"x\"\nchroot = \"jail\"\n",
                "process.chroot",
                "absolute",
            ),
            (
                "[process]\nuser = \"x\"\nchroot = \"/\"\n",
                "process.chroot",
                "absolute",
            ),
            (
                "[process]\nuser = \"x\"\nchroot = \"/jail\"\n[log]\nkeylog = \"keys.log\"\n",
                "log.keylog",
                "as seen inside /jail",
            ),
            ("[process]\nusr = \"x\"\n", "usr", "unknown field"),
        ] {
            let message = rejection(&format!("{MINIMAL}{text}"));
            assert!(message.contains(key) && message.contains(reason), "{text}: {message}");
        }
    }

    #[test]
    fn inspection_pair_failure_policy_and_capture() {
        let pair = "[ports.inspect_out]\ndevice = \"net_af_packet2,iface=gwio0\"\n[ports.inspect_in]\ndevice = \"net_af_packet3,iface=gwii0\"\n";
        let config = parse(&format!("{MINIMAL}{pair}")).expect("valid");
        assert_eq!(config.devices().expect("devices").len(), 4);
        assert_eq!(
            config.inspect.failure,
            InspectFailure::FailClosed,
            "fail closed by default"
        );
        assert_eq!(config.inspect.syn_timeout_ms, 8000);
        let open = parse(&format!(
            "{MINIMAL}{pair}[inspect]\nfailure = \"fail_open\"\nsyn_timeout_ms = 300\n"
        ))
        .expect("valid");
        assert_eq!(open.inspect.failure, InspectFailure::FailOpen);
        let half = format!("{MINIMAL}[ports.inspect_out]\ndevice = \"net_af_packet2,iface=gwio0\"\n");
        let message = rejection(&half);
        assert!(
            message.contains("ports.inspect_in") && message.contains("pair"),
            "{message}"
        );
        let message = rejection(&format!(
            "{MINIMAL}{}",
            pair.replace("net_af_packet3", "net_af_packet0")
        ));
        assert!(
            message.contains("ports.inspect_in.device") && message.contains("different"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}{pair}[inspect]\nfailure = \"maybe\"\n"));
        assert!(message.contains("maybe"), "{message}");

        let capture = parse(&format!(
            "{MINIMAL}[capture]\npath = \"/tmp/x.pcap\"\nport_map = {{ 443 = 80 }}\nrotate_mb = 100\nmax_files = 10\n"
        ))
        .expect("valid");
        let settings = capture.capture.expect("capture");
        assert_eq!(settings.ports(), Ok(vec![(443, 80)]));
        assert_eq!(settings.rotate_mb, Some(100));
        assert_eq!(settings.max_files, Some(10));
        let message = rejection(&format!("{MINIMAL}[capture]\npath = \"/x\"\nmax_files = 0\n"));
        assert!(message.contains("capture.max_files"), "{message}");
        let message = rejection(&format!(
            "{MINIMAL}[capture]\npath = \"/x\"\nport_map = {{ https = 80 }}\n"
        ));
        assert!(
            message.contains("capture.port_map") && message.contains("https"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}[capture]\npath = \"/x\"\nrotate_secs = 0\n"));
        assert!(message.contains("rotate"), "{message}");
    }

    #[test]
    fn mirror_port_and_pcap_over_ip() {
        let defaults = parse(MINIMAL).expect("valid");
        assert_eq!(defaults.ports.mirror, None, "no mirror port by default");
        assert_eq!(defaults.mirror_device(), Ok(None));
        let mirror = "[ports.mirror]\ndevice = \"net_af_packet4,iface=gwm0\"\n";
        let config = parse(&format!("{MINIMAL}{mirror}")).expect("valid");
        assert_eq!(config.devices().expect("devices").len(), 2, "not a data port");
        assert_eq!(
            config
                .mirror_device()
                .expect("mirror")
                .map(|device| device.ethdev_name().to_owned()),
            Some("net_af_packet4".to_owned())
        );
        let message = rejection(&format!(
            "{MINIMAL}{}",
            mirror.replace("net_af_packet4", "net_af_packet1")
        ));
        assert!(
            message.contains("ports.mirror.device") && message.contains("different"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}[ports.mirror]\ndevice = \"eth4\"\n"));
        assert!(message.contains("ports.mirror.device"), "{message}");
        let message = rejection(&format!("{MINIMAL}{mirror}").replace("eal_args", "mbufs = 5000\neal_args"));
        assert!(
            message.contains("dataplane.mbufs") && message.contains("3 ports"),
            "the mirror port's rings count: {message}"
        );

        let stream = parse(&format!("{MINIMAL}[capture]\npcap_over_ip = \"127.0.0.1:57012\"\n")).expect("valid");
        let capture = stream.capture.expect("capture");
        assert_eq!(capture.path, None, "a stream needs no file");
        assert_eq!(capture.pcap_over_ip, Some("127.0.0.1:57012".parse().expect("address")));
        let message = rejection(&format!("{MINIMAL}[capture]\nport_map = {{ 443 = 80 }}\n"));
        assert!(
            message.contains("capture.path") && message.contains("pcap_over_ip"),
            "{message}"
        );
        let message = rejection(&format!("{MINIMAL}[capture]\npcap_over_ip = \"localhost\"\n"));
        assert!(message.contains("pcap_over_ip"), "{message}");
        let message = rejection(&format!("{MINIMAL}[capture]\npcap_over_ip = \"127.0.0.1:0\"\n"));
        assert!(message.contains("capture.pcap_over_ip"), "{message}");
        let message = rejection(&format!(
            "{MINIMAL}[capture]\npcap_over_ip = \"127.0.0.1:57012\"\nmax_files = 3\n"
        ));
        assert!(
            message.contains("capture.max_files") && message.contains("capture.path"),
            "{message}"
        );
    }

    #[test]
    fn capacity_keys_default_safe_and_are_validated() {
        let tcp = parse(MINIMAL).expect("valid").tcp;
        assert_eq!(tcp.at_capacity, AtCapacity::Refuse, "never bridge by default");
        assert_eq!(
            (
                tcp.max_embryonic_per_client,
                tcp.client_hello_timeout_ms,
                tcp.handshake_timeout_ms,
                tcp.idle_timeout_ms
            ),
            (256, 10_000, 30_000, 3_600_000)
        );
        let set = parse(&format!(
            "{MINIMAL}\n[tcp]\nat_capacity = \"bridge\"\nmax_embryonic_per_client = 8\nclient_hello_timeout_ms = 2000\n\
             handshake_timeout_ms = 5000\nidle_timeout_ms = 0\n"
        ))
        .expect("valid")
        .tcp;
        assert_eq!(set.at_capacity, AtCapacity::Bridge);
        let limits = crate::splice::Limits::from_config(&set);
        assert_eq!(limits.idle_timeout, None, "0 turns the idle timeout off");
        assert_eq!(limits.client_hello_timeout.total_millis(), 2000);
        assert_eq!(limits.max_embryonic_per_client, 8);
        for (line, key) in [
            ("at_capacity = \"open\"", "open"),
            ("max_embryonic_per_client = 0", "tcp.max_embryonic_per_client"),
            ("client_hello_timeout_ms = 10", "tcp.client_hello_timeout_ms"),
            ("handshake_timeout_ms = 700000", "tcp.handshake_timeout_ms"),
            ("idle_timeout_ms = 500", "tcp.idle_timeout_ms"),
        ] {
            let message = rejection(&format!("{MINIMAL}\n[tcp]\n{line}\n"));
            assert!(message.contains(key), "{line}: {message}");
        }
    }

    #[test]
    fn loss_recovery_keys_default_safe_and_are_validated() {
        let tcp = parse(MINIMAL).expect("valid").tcp;
        assert_eq!(
            (tcp.congestion_control, tcp.max_retransmissions, tcp.timeout_ms),
            (CongestionControl::Cubic, 6, 10_000)
        );
        let policy = crate::engine::InterceptPolicy::from_config(&parse(MINIMAL).expect("valid")).expect("policy");
        assert_eq!(policy.stack.congestion_control, netstack::CongestionControl::Cubic);
        assert_eq!(policy.stack.max_retransmissions, 6);
        for (word, control) in [
            ("reno", CongestionControl::Reno),
            ("none", CongestionControl::None),
            ("cubic", CongestionControl::Cubic),
        ] {
            let set = parse(&format!(
                "{MINIMAL}\n[tcp]\ncongestion_control = \"{word}\"\nmax_retransmissions = 15\n"
            ))
            .expect("valid")
            .tcp;
            assert_eq!((set.congestion_control, set.max_retransmissions), (control, 15));
        }
        for (line, key) in [
            ("congestion_control = \"bbr\"", "bbr"),
            ("max_retransmissions = 0", "tcp.max_retransmissions"),
            ("max_retransmissions = 31", "tcp.max_retransmissions"),
        ] {
            let message = rejection(&format!("{MINIMAL}\n[tcp]\n{line}\n"));
            assert!(message.contains(key), "{line}: {message}");
        }
    }

    #[test]
    fn worst_case_buffer_memory() {
        let config = parse(MINIMAL).expect("valid");
        // 1 worker x 10,000 connections x 2 sockets x (4 + 4) MiB.
        assert_eq!(config.worst_case_buffer_bytes(), 10_000 * 2 * (8 << 20));
        let two = parse(&format!(
            "{MINIMAL}\n[tcp]\nrx_buffer = 4096\ntx_buffer = 4096\nmax_connections = 1000\n"
        ))
        .expect("valid");
        assert_eq!(two.worst_case_buffer_bytes(), 1000 * 2 * 8192);
        // A million connections with the default 4 MiB buffers reserve 16 TiB
        // of address space (none of it committed while idle): fine; with
        // 16 MiB buffers they would not fit in a process.
        parse(&format!("{MINIMAL}\n[tcp]\nmax_connections = 1000000\n")).expect("valid");
        let message = rejection(&format!(
            "{MINIMAL}\n[tcp]\nmax_connections = 1000000\nrx_buffer = 16777216\n"
        ));
        assert!(
            message.contains("tcp.max_connections") && message.contains("address space"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let message = rejection(&MINIMAL.replace("[dataplane]", "[dataplane]\nworkerz = 2"));
        assert!(message.contains("workerz"), "{message}");
        let message = rejection(&format!("{MINIMAL}\n[bogus]\nx = 1\n"));
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn wrong_type_is_named() {
        let message = rejection(&MINIMAL.replace("[dataplane]", "[dataplane]\nworkers = \"two\""));
        assert!(message.contains("workers"), "{message}");
    }

    #[test]
    fn bad_values_are_named_with_reason() {
        let cases = [
            ("workers = 0", "dataplane.workers"),
            ("burst_size = 9999", "dataplane.burst_size"),
            ("mbufs = 100", "dataplane.mbufs"),
            ("rx_descriptors = 4", "dataplane.rx_descriptors"),
        ];
        for (line, key) in cases {
            let message = rejection(&MINIMAL.replace("[dataplane]", &format!("[dataplane]\n{line}")));
            assert!(message.contains(key), "{line}: {message}");
        }
        let message = rejection(&MINIMAL.replace("\"--no-huge\"", "\"--vdev\", \"net_null0\""));
        assert!(
            message.contains("dataplane.eal_args") && message.contains("--vdev"),
            "{message}"
        );
        let message = rejection(&MINIMAL.replace("net_af_packet1,iface=gws0", "eth1"));
        assert!(message.contains("ports.server.device"), "{message}");
        let message = rejection(&MINIMAL.replace("net_af_packet1,iface=gws0", "net_af_packet0,iface=x"));
        assert!(message.contains("different device"), "{message}");
        let message = rejection(
            &MINIMAL
                .replace("net_af_packet1,iface=gws0", "0000:03:00.0")
                .replace("\"--no-huge\"", "\"--no-pci\""),
        );
        assert!(message.contains("--no-pci"), "{message}");
        let message = rejection(&MINIMAL.replace("[ports.server]\ndevice = \"net_af_packet1,iface=gws0\"", ""));
        assert!(message.contains("server"), "{message}");
    }

    #[test]
    fn device_forms() {
        assert_eq!(
            Device::parse("03:00.1"),
            Ok(Device::Pci {
                address: "0000:03:00.1".into()
            })
        );
        assert_eq!(
            Device::parse("0000:af:00.0").map(|d| d.eal_args()[0].clone()),
            Ok("-a".into())
        );
        assert_eq!(
            Device::parse("net_ring0").map(|d| d.ethdev_name().to_owned()),
            Ok("net_ring0".into())
        );
        assert!(Device::parse("").is_err());
        assert!(Device::parse("net_").is_err());
        assert!(Device::parse("net_x y,a=b").is_err());
        assert!(Device::parse("0000:zz:00.0").is_err());
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
eal_args = ["--no-huge"]
[ports.client]
device = "net_af_packet0,iface=gwc0"
[ports.server]
device = "net_af_packet1,iface=gws0"
"#;

    const WWW: &str = r#"
[[service]]
name = "www"
destinations = ["198.18.1.2", "2001:2::/64"]
port = 443
certificates = [ { chain = "/etc/tlsgate/www.pem", key = "/etc/tlsgate/www.key" } ]
backend = { port = 8080 }
"#;

    fn parse(services: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{services}"), Path::new("test.toml"))
    }

    /// The key and reason of a refused `[[service]]`.
    fn refused(services: &str) -> (String, String) {
        match parse(services) {
            Err(ConfigError::InvalidRule { key, reason, .. }) => (key, reason),
            other => panic!("expected a refused service, got {other:?}"),
        }
    }

    fn www_with(replace: &str, with: &str) -> String {
        assert!(WWW.contains(replace), "{replace}");
        WWW.replace(replace, with)
    }

    #[test]
    fn a_service_takes_its_defaults() {
        let config = parse(WWW).unwrap();
        let service = &config.service[0];
        assert_eq!(service.header, ServiceHeader::None);
        assert_eq!(
            service.tls_versions,
            [ServiceTlsVersion::Tls12, ServiceTlsVersion::Tls13]
        );
        assert_eq!(service.alpn, ["http/1.1"]);
        assert!(service.inspect && service.ticket_key.is_none() && service.server_names.is_empty());
        assert_eq!(
            service.backend,
            BackendConfig {
                address: None,
                port: 8080,
                source: BackendSource::Client
            }
        );
        assert_eq!(
            service.destinations[1].0,
            "2001:2::/64".parse::<ipnet::IpNet>().unwrap()
        );
        assert!(parse("").unwrap().service.is_empty(), "no service by default");
    }

    #[test]
    fn every_form_of_every_key_parses() {
        let config = parse(
            &www_with(
                "backend = { port = 8080 }",
                "backend = { address = \"198.18.1.3\", port = 443 }\nheader = \"proxy-v2\"\ntls_versions = [\"1.3\"]\n\
                 alpn = [\"h2\", \"http/1.1\"]\nticket_key = \"/etc/tlsgate/tickets.key\"\ninspect = false\n\
                 server_names = [\"www.lab.test\"]",
            )
            .replace(", \"2001:2::/64\"", ""),
        )
        .unwrap();
        let service = &config.service[0];
        assert_eq!(service.header, ServiceHeader::ProxyV2);
        assert_eq!(service.tls_versions, [ServiceTlsVersion::Tls13]);
        assert!(!service.inspect);
        for (text, header) in [
            ("none", ServiceHeader::None),
            ("proxy-v1", ServiceHeader::ProxyV1),
            ("write-ip", ServiceHeader::WriteIp),
        ] {
            let config = parse(&format!("{WWW}header = \"{text}\"\n")).unwrap();
            assert_eq!(config.service[0].header, header);
        }
    }

    #[test]
    fn malformed_services_are_refused_at_parse() {
        for (bad, why) in [
            (www_with("port = 443", "port = 443\nprot = 1"), "unknown key"),
            (www_with("\"198.18.1.2\"", "\"198.18.1.300\""), "bad address"),
            (format!("{WWW}header = \"proxy\"\n"), "bad header"),
            (
                www_with("port = 443", "port = 443\ntls_versions = [\"1.1\"]"),
                "TLS 1.1",
            ),
            (
                www_with("backend = { port = 8080 }", "backend = \"8080\""),
                "backend not a table",
            ),
            (
                www_with("backend = { port = 8080 }", "backend = { host = \"x\", port = 8080 }"),
                "backend key",
            ),
            (www_with("port = 443\n", ""), "no port"),
        ] {
            assert!(
                matches!(parse(&bad), Err(ConfigError::Syntax { .. })),
                "{why}: {:?}",
                parse(&bad)
            );
        }
    }

    #[test]
    fn services_run_on_several_workers() {
        // A backend leg's frames that reach another worker are handed to
        // the one holding it (crate::handoff).
        let config = BASE.replace("eal_args", "workers = 2\neal_args");
        let parsed =
            Config::parse(&format!("{config}{WWW}"), Path::new("test.toml")).expect("2 workers with a service");
        assert_eq!((parsed.dataplane.workers, parsed.service.len()), (2, 1));
    }

    #[test]
    fn invalid_services_are_refused_naming_the_key() {
        for (bad, key) in [
            (www_with("name = \"www\"", "name = \" \""), "service[0].name"),
            (
                www_with("destinations = [\"198.18.1.2\", \"2001:2::/64\"]", "destinations = []"),
                "service[0].destinations",
            ),
            (www_with("port = 443", "port = 0"), "service[0].port"),
            (
                www_with(
                    "certificates = [ { chain = \"/etc/tlsgate/www.pem\", key = \"/etc/tlsgate/www.key\" } ]",
                    "certificates = []",
                ),
                "service[0].certificates",
            ),
            (
                www_with("port = 443", "port = 443\ntls_versions = []"),
                "service[0].tls_versions",
            ),
            (www_with("port = 443", "port = 443\nalpn = [\"\"]"), "service[0].alpn"),
            (
                www_with("port = 443", "port = 443\nserver_names = [\"a b\"]"),
                "service[0].server_names",
            ),
            (
                www_with("backend = { port = 8080 }", "backend = { port = 0 }"),
                "service[0].backend.port",
            ),
            (
                www_with("backend = { port = 8080 }", "backend = { port = 443 }"),
                "service[0].backend.port",
            ),
            (
                www_with(
                    "backend = { port = 8080 }",
                    "backend = { address = \"2001:2::3\", port = 8080 }",
                ),
                "service[0].backend.address",
            ),
            (
                www_with(
                    "backend = { port = 8080 }",
                    "backend = { address = \"2001:2::3\", port = 443 }",
                )
                .replace("\"198.18.1.2\", ", ""),
                "service[0].backend.address",
            ),
            (
                format!("{WWW}{}", WWW.replace("port = 443", "port = 8443")),
                "service[1].name",
            ),
        ] {
            let (found, reason) = refused(&bad);
            assert_eq!(found, key, "{reason}");
        }
    }

    /// [`BASE`] with owned addresses and gateways on the server port, and
    /// [`WWW`] with `backend`, parsed.
    fn owned(server_keys: &str, backend: &str) -> Result<Config, ConfigError> {
        let base = BASE.replace(
            "device = \"net_af_packet1,iface=gws0\"",
            &format!("device = \"net_af_packet1,iface=gws0\"\n{server_keys}"),
        );
        let text = format!("{base}{}", www_with("backend = { port = 8080 }", backend));
        Config::parse(&text, Path::new("test.toml"))
    }

    /// The key and reason of a refused [`owned`] configuration.
    fn owned_refused(config: Result<Config, ConfigError>) -> (String, String) {
        match config {
            Err(ConfigError::InvalidRule { key, reason, .. }) => (key, reason),
            other => panic!("expected a refused configuration, got {other:?}"),
        }
    }

    #[test]
    fn owned_addresses_and_appliance_sourced_backends_parse() {
        let config = owned(
            "addresses = [\"198.18.7.1/24\", \"2001:2:7::1/64\"]\ngateways = [\"198.18.7.254\"]",
            "backend = { address = \"198.18.9.2\", port = 8080, source = \"appliance\" }",
        )
        .unwrap();
        assert_eq!(
            config.ports.server.addresses[1].0,
            "2001:2:7::1/64".parse::<ipnet::IpNet>().unwrap()
        );
        assert_eq!(config.service[0].backend.source, BackendSource::Appliance);
        // The appliance's own address is the source: any family of backend.
        owned(
            "addresses = [\"2001:2:7::1/64\"]",
            "backend = { address = \"2001:2:7::9\", port = 8080, source = \"appliance\" }",
        )
        .unwrap();
        assert!(parse("").unwrap().ports.server.addresses.is_empty(), "none by default");
    }

    #[test]
    fn bad_owned_addresses_are_refused_naming_the_key() {
        let appliance = "backend = { address = \"198.18.7.9\", port = 8080, source = \"appliance\" }";
        let v4 = "addresses = [\"198.18.7.1/24\"]";
        for (server, backend, key) in [
            (
                "addresses = [\"198.18.7.0/24\"]",
                "backend = { port = 8080 }",
                "ports.server.addresses",
            ),
            (
                "addresses = [\"224.0.0.1/24\"]",
                "backend = { port = 8080 }",
                "ports.server.addresses",
            ),
            (
                "addresses = [\"198.18.7.1/24\", \"198.18.7.1/25\"]",
                "backend = { port = 8080 }",
                "ports.server.addresses",
            ),
            (
                "addresses = [\"198.18.1.2/24\"]",
                "backend = { port = 8080 }",
                "ports.server.addresses",
            ),
            (
                "addresses = [\"198.18.7.1/24\"]\ngateways = [\"198.18.8.1\"]",
                "backend = { port = 8080 }",
                "ports.server.gateways",
            ),
            (
                "addresses = [\"198.18.7.1/24\"]\ngateways = [\"198.18.7.2\", \"198.18.7.3\"]",
                "backend = { port = 8080 }",
                "ports.server.gateways",
            ),
            ("", appliance, "service[0].backend.source"),
            (
                v4,
                "backend = { address = \"198.18.9.2\", port = 8080, source = \"appliance\" }",
                "service[0].backend.source",
            ),
            (
                v4,
                "backend = { address = \"2001:2:7::9\", port = 8080, source = \"appliance\" }",
                "service[0].backend.source",
            ),
            (
                v4,
                "backend = { port = 8080, source = \"appliance\" }",
                "service[0].backend.address",
            ),
            (
                v4,
                "backend = { address = \"198.18.7.1\", port = 8080, source = \"appliance\" }",
                "service[0].backend.address",
            ),
        ] {
            let (found, reason) = owned_refused(owned(server, backend));
            assert_eq!(found, key, "{server} / {backend}: {reason}");
        }
        let client_owned = BASE.replace(
            "device = \"net_af_packet0,iface=gwc0\"",
            "device = \"net_af_packet0,iface=gwc0\"\naddresses = [\"198.18.6.1/24\"]",
        );
        assert_eq!(
            owned_refused(Config::parse(&client_owned, Path::new("test.toml"))).0,
            "ports.client.addresses"
        );
        assert!(
            matches!(
                owned("addresses = [\"198.18.7.1\"]", appliance),
                Err(ConfigError::Syntax { .. })
            ),
            "an owned address needs its prefix length"
        );
        assert!(matches!(
            owned(
                v4,
                "backend = { address = \"198.18.7.9\", port = 8080, source = \"own\" }"
            ),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn overlapping_services_are_refused_and_distinct_names_are_not() {
        let other = |extra: &str| {
            WWW.replace("\"www\"", "\"api\"")
                .replace("[\"198.18.1.2\", \"2001:2::/64\"]", "[\"198.18.1.0/24\"]")
                + extra
        };
        let (key, reason) = refused(&format!("{WWW}{}", other("")));
        assert_eq!(key, "service[1].destinations");
        assert!(
            reason.contains("198.18.1.2/32") && reason.contains("service[0]"),
            "{reason}"
        );

        let named = |name: &str| format!("server_names = [\"{name}\"]\n");
        let www_named = format!("{WWW}{}", named("www.lab.test"));
        assert_eq!(
            refused(&format!("{www_named}{}", other(&named("WWW.lab.test")))).0,
            "service[1].destinations",
            "the same name (any case) at the same destination"
        );
        assert_eq!(
            refused(&format!("{www_named}{}", other(""))).0,
            "service[1].destinations",
            "a service without names answers every name"
        );
        parse(&format!("{www_named}{}", other(&named("api.lab.test")))).unwrap();
        parse(&format!("{WWW}{}", other("").replace("port = 443", "port = 8443"))).unwrap();
        parse(&format!("{WWW}{}", other("").replace("198.18.1.0/24", "198.18.2.0/24"))).unwrap();
    }
}
