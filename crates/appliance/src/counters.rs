//! Counters the data plane keeps per port and per worker. Workers bump
//! relaxed atomics they alone write (once per burst, not per frame); the
//! control plane reads them into serialisable snapshots at any time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::learned::LearnedTotals;
use crate::splice::SpliceCounters;
use crate::topnames::NameCount;

/// One port's traffic as one worker saw it.
#[derive(Debug, Default)]
pub struct PortStats {
    rx: AtomicU64,
    tx: AtomicU64,
    bridged: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    intercepted: AtomicU64,
    generated: AtomicU64,
    generated_dropped: AtomicU64,
    misdirected: AtomicU64,
    udp_blocked: AtomicU64,
    invalid_dropped: AtomicU64,
}

/// A reading of [`PortStats`]. For every port,
/// `rx = bridged + intercepted + dropped`: `bridged` frames were received
/// here and accepted by the other port's driver, `intercepted` went to the
/// TCP stack, `dropped` were received here and not delivered (runts, or the
/// other port's transmit ring stayed full); `malformed` counts frames that
/// failed validation, whether dropped (runts) or bridged (bad L3 headers).
/// `generated` frames were sent by the TCP stack out of this port (they are
/// part of `tx`); `generated_dropped` could not be sent (no buffer, full
/// ring) and are left to TCP retransmission. `misdirected` frames (part of
/// `dropped`) belonged to a connection another worker holds (af_packet's
/// fanout rolls frames over to another socket when one is full).
/// `udp_blocked` (part of `dropped`) are UDP datagrams to or from an
/// intercepted port that `intercept.udp` (or a rule's `udp`) blocks, so
/// that clients fall back to TCP (QUIC). `invalid_dropped` (part of
/// `dropped`, and of `malformed` but for fragments) are TCP segments to or from an intercepted
/// port, or of an intercepted connection, whose checksum or header is bad,
/// and first fragments of TCP to or from one (and such UDP a block applies
/// to): never bridged, never fed to the stack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortTotals {
    pub rx: u64,
    pub tx: u64,
    pub bridged: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub intercepted: u64,
    pub generated: u64,
    pub generated_dropped: u64,
    pub misdirected: u64,
    pub udp_blocked: u64,
    pub invalid_dropped: u64,
}

impl PortStats {
    pub fn add_rx(&self, frames: u64) {
        self.rx.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_tx(&self, frames: u64) {
        self.tx.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_bridged(&self, frames: u64) {
        self.bridged.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_dropped(&self, frames: u64) {
        self.dropped.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_malformed(&self, frames: u64) {
        self.malformed.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_intercepted(&self, frames: u64) {
        self.intercepted.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_generated(&self, frames: u64) {
        self.generated.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_generated_dropped(&self, frames: u64) {
        self.generated_dropped.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_misdirected(&self, frames: u64) {
        self.misdirected.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_udp_blocked(&self, frames: u64) {
        self.udp_blocked.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_invalid_dropped(&self, frames: u64) {
        self.invalid_dropped.fetch_add(frames, Ordering::Relaxed);
    }

    pub fn totals(&self) -> PortTotals {
        PortTotals {
            rx: self.rx.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
            bridged: self.bridged.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            intercepted: self.intercepted.load(Ordering::Relaxed),
            generated: self.generated.load(Ordering::Relaxed),
            generated_dropped: self.generated_dropped.load(Ordering::Relaxed),
            misdirected: self.misdirected.load(Ordering::Relaxed),
            udp_blocked: self.udp_blocked.load(Ordering::Relaxed),
            invalid_dropped: self.invalid_dropped.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::AddAssign for PortTotals {
    fn add_assign(&mut self, other: PortTotals) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.bridged += other.bridged;
        self.dropped += other.dropped;
        self.malformed += other.malformed;
        self.intercepted += other.intercepted;
        self.generated += other.generated;
        self.generated_dropped += other.generated_dropped;
        self.misdirected += other.misdirected;
        self.udp_blocked += other.udp_blocked;
        self.invalid_dropped += other.invalid_dropped;
    }
}

/// How one worker spent its time.
#[derive(Debug, Default)]
pub struct WorkerStats {
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    polls: AtomicU64,
    idle_sleeps: AtomicU64,
}

/// A reading of [`WorkerStats`]: `busy` is time spent in polls that moved
/// frames, `idle` in polls that found nothing plus time asleep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkerTotals {
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub polls: u64,
    pub idle_sleeps: u64,
    /// Intercepted connections this worker opened and holds now (filled in
    /// by the report: they show how connections spread over the workers).
    pub sessions_opened: u64,
    pub sessions_live: u64,
}

impl WorkerStats {
    pub fn add_busy(&self, nanos: u64) {
        self.busy_ns.fetch_add(nanos, Ordering::Relaxed);
        self.polls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_idle(&self, nanos: u64) {
        self.idle_ns.fetch_add(nanos, Ordering::Relaxed);
        self.polls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_sleep(&self, nanos: u64) {
        self.idle_ns.fetch_add(nanos, Ordering::Relaxed);
        self.idle_sleeps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> WorkerTotals {
        WorkerTotals {
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            idle_ns: self.idle_ns.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            idle_sleeps: self.idle_sleeps.load(Ordering::Relaxed),
            sessions_opened: 0,
            sessions_live: 0,
        }
    }
}

impl WorkerTotals {
    /// Share of the worker's time spent busy, in percent.
    pub fn busy_percent(&self) -> f64 {
        let total = self.busy_ns + self.idle_ns;
        if total == 0 {
            0.0
        } else {
            self.busy_ns as f64 * 100.0 / total as f64
        }
    }
}

/// One worker's transparent-TCP counters, published by its engine after
/// every poll (the engine owns the stack; the control plane only reads),
/// and its most frequent server names (published when they changed, at
/// most every 100 ms).
#[derive(Debug, Default)]
pub struct TcpStats {
    totals: Mutex<TcpTotals>,
    top_sni: Mutex<Vec<NameCount>>,
}

/// A reading of [`TcpStats`] (summed over workers in a [`Report`]).
/// `flows_live` and `sessions_live` return to 0 once every connection has
/// closed (TIME-WAIT included): anything else is a leak.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpTotals {
    pub flows_live: u64,
    pub flows_created: u64,
    pub flows_freed: u64,
    pub flows_refused: u64,
    /// Server legs' SYN retransmissions not sent because their client had
    /// not retransmitted its own SYN.
    pub syn_retransmits_withheld: u64,
    /// Open legs given up because their peer answered none of
    /// `tcp.max_retransmissions` retransmission rounds.
    pub dead_peers: u64,
    /// SYN-ACKs sent again at once because the peer retransmitted its SYN
    /// (a lost SYN-ACK on a lossy link).
    pub synacks_repeated: u64,
    /// Lost segments a leg sent again at once on the stack's prompting (the
    /// next hole after a partial ACK, or a hole behind a SACKed tail) where
    /// smoltcp alone would have waited for its retransmission timer.
    pub fast_retransmits_prompted: u64,
    /// Legs given up because their SYN or SYN-ACK stayed unanswered for
    /// `tcp.timeout_ms` (or a loop leg's for `inspect.syn_timeout_ms`).
    pub connect_timeouts: u64,
    /// Sessions, bytes, TLS and policy outcomes (flattened in the JSON).
    #[serde(flatten)]
    pub splice: SpliceCounters,
    pub forged_cache_hits: u64,
    pub forged_cache_misses: u64,
    pub forged_cache_bytes: u64,
    /// Bytes one flow costs (buffers, socket, table entries); an
    /// intercepted connection has two flows (four with an inspection box).
    pub memory_per_flow: u64,
    /// Socket buffers the live flows hold.
    pub socket_buffer_bytes: u64,
}

impl TcpStats {
    pub fn publish(&self, totals: &TcpTotals) {
        *self.totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = *totals;
    }

    pub fn totals(&self) -> TcpTotals {
        *self.totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn publish_top_sni(&self, names: &[NameCount]) {
        names.clone_into(&mut self.top_sni.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    pub fn top_sni(&self) -> Vec<NameCount> {
        self.top_sni
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl std::ops::AddAssign for TcpTotals {
    fn add_assign(&mut self, other: TcpTotals) {
        self.flows_live += other.flows_live;
        self.flows_created += other.flows_created;
        self.flows_freed += other.flows_freed;
        self.flows_refused += other.flows_refused;
        self.syn_retransmits_withheld += other.syn_retransmits_withheld;
        self.dead_peers += other.dead_peers;
        self.synacks_repeated += other.synacks_repeated;
        self.fast_retransmits_prompted += other.fast_retransmits_prompted;
        self.connect_timeouts += other.connect_timeouts;
        self.splice += other.splice;
        self.forged_cache_hits += other.forged_cache_hits;
        self.forged_cache_misses += other.forged_cache_misses;
        self.forged_cache_bytes += other.forged_cache_bytes;
        self.memory_per_flow = self.memory_per_flow.max(other.memory_per_flow);
        self.socket_buffer_bytes += other.socket_buffer_bytes;
    }
}

/// A port's counters in a report: the engine's view and the driver's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortReport {
    pub role: &'static str,
    pub device: String,
    #[serde(flatten)]
    pub totals: PortTotals,
    pub driver: port::PortCounters,
}

/// The decrypt-mirror port in a report: what the workers sent on it and
/// dropped (summed over workers), and the driver's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorReport {
    pub device: String,
    #[serde(flatten)]
    pub totals: crate::mirror::MirrorTotals,
    pub driver: port::PortCounters,
}

/// Everything the data plane counted, as printed by `run` and `replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub ports: Vec<PortReport>,
    pub workers: Vec<WorkerTotals>,
    pub tcp: TcpTotals,
    /// The learned bypasses every worker shares.
    pub learned: LearnedTotals,
    /// The decrypted capture, when configured.
    pub capture: Option<CaptureTotals>,
    /// The most frequent server names of the ClientHellos, most first
    /// (approximate counts, at most [`crate::topnames::CAPACITY`] names).
    pub top_sni: Vec<NameCount>,
    /// Configuration reloads (SIGHUP, `tlsgate reload`).
    pub reloads: crate::reload::ReloadTotals,
    /// PCAP-over-IP, when configured (`capture.pcap_over_ip`).
    pub pcap_over_ip: Option<crate::pcap_stream::StreamTotals>,
    /// The decrypt-mirror port, when configured (`[ports.mirror]`).
    pub mirror: Option<MirrorReport>,
    /// The process's resident memory (VmRSS), when the system says. In the
    /// final report of `run`: the sample the control thread takes when stop
    /// is requested, before the workers are told to stop (they reset and
    /// free their connections only then), so it includes every connection
    /// still held. In periodic reports and in `replay`: at the report.
    pub rss_bytes: Option<u64>,
}

/// The process's resident memory from `/proc/self/status`, if readable.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// What the decrypted capture wrote, and what it dropped (whole frames: on
/// a full disk or another write error, while waiting to try again after
/// one, or frames that could not be built).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CaptureTotals {
    /// Frames written and their bytes (without pcap record headers).
    pub frames: u64,
    pub bytes: u64,
    pub frames_dropped: u64,
    pub bytes_dropped: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<11} {:<28} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
            "port", "device", "rx", "tx", "bridged", "dropped", "malformed", "nic-miss"
        )?;
        for port in &self.ports {
            let t = port.totals;
            writeln!(
                f,
                "{:<11} {:<28} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
                port.role, port.device, t.rx, t.tx, t.bridged, t.dropped, t.malformed, port.driver.rx_missed
            )?;
        }
        let misdirected: Vec<_> = self
            .ports
            .iter()
            .filter(|port| port.totals.misdirected > 0)
            .map(|port| format!("{} on {}", port.totals.misdirected, port.role))
            .collect();
        if !misdirected.is_empty() {
            writeln!(
                f,
                "misdirected: {} frames of connections another worker holds, dropped (left to retransmission)",
                misdirected.join(", ")
            )?;
        }
        let guarded: Vec<_> = self
            .ports
            .iter()
            .filter(|port| port.totals.udp_blocked + port.totals.invalid_dropped > 0)
            .map(|port| {
                format!(
                    "{} UDP blocked, {} invalid dropped on {}",
                    port.totals.udp_blocked, port.totals.invalid_dropped, port.role
                )
            })
            .collect();
        if !guarded.is_empty() {
            writeln!(f, "intercepted ports: {}", guarded.join("; "))?;
        }
        let tcp = &self.tcp;
        writeln!(
            f,
            "tcp: {} flows live ({} created, {} freed, {} refused; {} B each), {} sessions live of {} opened; \
             server refused {}, silent {}, unreachable {}, resets {}; {} B client->server, {} B server->client",
            tcp.flows_live,
            tcp.flows_created,
            tcp.flows_freed,
            tcp.flows_refused,
            tcp.memory_per_flow,
            tcp.splice.sessions_live,
            tcp.splice.sessions_opened,
            tcp.splice.server_refused,
            tcp.splice.server_timed_out,
            tcp.splice.server_unreachable,
            tcp.splice.resets,
            tcp.splice.bytes_client_to_server,
            tcp.splice.bytes_server_to_client
        )?;
        if tcp.dead_peers + tcp.connect_timeouts + tcp.synacks_repeated + tcp.fast_retransmits_prompted > 0 {
            writeln!(
                f,
                "timers: {} legs dropped with their peer dead (every retransmission unanswered), \
                 {} legs whose SYN or SYN-ACK went unanswered; {} SYN-ACKs repeated for retransmitted SYNs, \
                 {} lost segments resent without waiting for the retransmission timer",
                tcp.dead_peers, tcp.connect_timeouts, tcp.synacks_repeated, tcp.fast_retransmits_prompted
            )?;
        }
        let splice = &tcp.splice;
        let timeouts = splice.client_hello_timeouts + splice.handshake_timeouts + splice.idle_timeouts;
        if splice.refused_at_capacity
            + splice.bridged_at_capacity
            + splice.embryonic_live
            + splice.embryonic_evicted
            + splice.time_wait_reclaimed
            + splice.embryonic_client_limit_dropped
            + timeouts
            + tcp.syn_retransmits_withheld
            > 0
        {
            writeln!(
                f,
                "capacity: {} refused at capacity, {} bridged uninspected at capacity, {} closed connections in TIME-WAIT \
                 reclaimed; {} embryonic live, {} evicted, {} SYNs over the per-client limit dropped; \
                 {} server SYN retransmissions withheld; \
                 timed out: {} without ClientHello, {} in TLS handshakes, {} idle",
                splice.refused_at_capacity,
                splice.bridged_at_capacity,
                splice.time_wait_reclaimed,
                splice.embryonic_live,
                splice.embryonic_evicted,
                splice.embryonic_client_limit_dropped,
                tcp.syn_retransmits_withheld,
                splice.client_hello_timeouts,
                splice.handshake_timeouts,
                splice.idle_timeouts
            )?;
        }
        if tcp.splice.reset_at_shutdown > 0 {
            writeln!(
                f,
                "shutdown: {} connection legs still open were reset (one RST each)",
                tcp.splice.reset_at_shutdown
            )?;
        }
        if tcp.splice.tls_intercepted + tcp.splice.tls_failed + tcp.splice.bypassed + tcp.splice.blocked > 0 {
            writeln!(
                f,
                "tls: {} intercepted, {} failed, {} bypassed, {} blocked; \
                 forged certificates: {} cache hits, {} misses, {} B cached",
                tcp.splice.tls_intercepted,
                tcp.splice.tls_failed,
                tcp.splice.bypassed,
                tcp.splice.blocked,
                tcp.forged_cache_hits,
                tcp.forged_cache_misses,
                tcp.forged_cache_bytes
            )?;
        }
        let (handshakes, connections) = (&tcp.splice.handshake_seconds, &tcp.splice.connection_seconds);
        if handshakes.count() + connections.count() > 0 {
            writeln!(
                f,
                "latency: TLS handshakes (ClientHello to both done) {handshakes}; connections ended (SYN to end) \
                 {connections}"
            )?;
        }
        if !self.top_sni.is_empty() {
            let names: Vec<String> = self
                .top_sni
                .iter()
                .map(|entry| format!("{} {}", entry.sni, entry.count))
                .collect();
            writeln!(
                f,
                "server names (most frequent, approximate counts): {}",
                names.join(", ")
            )?;
        }
        let learned = &self.learned;
        if learned.added_fail_open + learned.added_client_auth + learned.pending_live + learned.pending_evicted > 0 {
            writeln!(
                f,
                "learned bypasses: {} live ({} fail-open, {} client certificate added; {} expired, {} evicted, {} \
                 cleared); {} destinations counting rejections ({} evicted)",
                learned.live,
                learned.added_fail_open,
                learned.added_client_auth,
                learned.expired,
                learned.evicted,
                learned.cleared,
                learned.pending_live,
                learned.pending_evicted
            )?;
        }
        if self.reloads.ok + self.reloads.refused > 0 {
            writeln!(
                f,
                "reloads: {} put in force, {} refused (the running configuration stayed)",
                self.reloads.ok, self.reloads.refused
            )?;
        }
        let splice = &tcp.splice;
        if splice.legacy_upstream + splice.ech_offered > 0 {
            writeln!(
                f,
                "tls legs: {} connections to origins that speak only legacy TLS (blocked or bypassed by policy), \
                 {} ClientHellos with Encrypted Client Hello",
                splice.legacy_upstream, splice.ech_offered
            )?;
        }
        if splice.inspected + splice.inspect_failed_open + splice.inspect_failed_closed > 0 {
            writeln!(
                f,
                "inspection: {} connections through the box, {} blocked by it; box unavailable: {} failed open \
                 ({} live ones carried on, {} B the box had not passed back sent directly), {} failed closed",
                splice.inspected,
                splice.inspect_blocked,
                splice.inspect_failed_open,
                splice.inspect_failed_open_live,
                splice.inspect_unreturned_bytes,
                splice.inspect_failed_closed
            )?;
        }
        writeln!(
            f,
            "memory: {} flows holding {:.1} MiB of socket buffers, {} TLS sessions, {:.1} KiB of forged certificates; \
             process resident {}",
            tcp.flows_live,
            tcp.socket_buffer_bytes as f64 / (1u64 << 20) as f64,
            tcp.splice.tls_sessions_live,
            tcp.forged_cache_bytes as f64 / 1024.0,
            self.rss_bytes.map_or_else(
                || "unknown".to_owned(),
                |rss| format!("{:.1} MiB", rss as f64 / (1u64 << 20) as f64)
            )
        )?;
        if let Some(capture) = &self.capture {
            writeln!(
                f,
                "decrypted capture: {} frames, {} B written; {} frames, {} B dropped (full disk, write errors)",
                capture.frames, capture.bytes, capture.frames_dropped, capture.bytes_dropped
            )?;
        }
        if let Some(stream) = &self.pcap_over_ip {
            writeln!(
                f,
                "pcap-over-ip: {} clients connected ({} accepted, {} refused, {} disconnected too slow); {} frames, {} B \
                 queued for clients; dropped: {} frames before the writer, {} frames for slow clients",
                stream.clients,
                stream.clients_accepted,
                stream.clients_refused,
                stream.clients_too_slow,
                stream.frames,
                stream.bytes,
                stream.frames_dropped,
                stream.client_frames_dropped
            )?;
        }
        if let Some(mirror) = &self.mirror {
            let t = mirror.totals;
            writeln!(
                f,
                "mirror port {}: {} frames, {} B sent; {} frames, {} B dropped (port full); driver tx {} packets, {} errors",
                mirror.device,
                t.frames,
                t.bytes,
                t.frames_dropped,
                t.bytes_dropped,
                mirror.driver.tx_packets,
                mirror.driver.tx_errors
            )?;
        }
        for (index, worker) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "worker {index}: busy {:.3} s, idle {:.3} s ({:.1}% busy), {} polls, {} idle sleeps; \
                 {} sessions opened, {} live",
                worker.busy_ns as f64 / 1e9,
                worker.idle_ns as f64 / 1e9,
                worker.busy_percent(),
                worker.polls,
                worker.idle_sleeps,
                worker.sessions_opened,
                worker.sessions_live
            )?;
        }
        Ok(())
    }
}
