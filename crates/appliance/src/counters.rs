//! Counters the data plane keeps per port and per worker. Workers bump
//! relaxed atomics they alone write (once per burst, not per frame); the
//! control plane reads them into serialisable snapshots at any time.
//!
//! Every snapshot struct of the report is declared once, with [`declare!`]:
//! each field with its kind (counter, gauge, histogram, or a nested struct)
//! and its help text. The declaration makes the struct (its JSON keys are
//! the field names), the sum over workers (`AddAssign`) and the listing of
//! its fields ([`Fields`]) by which the metrics endpoint names, types and
//! describes its samples. The text report ([`Report`]'s `Display`) words
//! the fields in sentences; a test checks that it shows every one.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::histogram::Histogram;
use crate::topnames::NameCount;

/// A field's reading, typed as the metrics exposition types it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Only goes up (until a restart).
    Counter(u64),
    /// Goes up and down: what is live now, a size.
    Gauge(u64),
    /// Observed durations.
    Histogram(&'a Histogram),
}

/// One field of a struct declared with [`declare!`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field<'a> {
    /// The field's name, as in the JSON report.
    pub name: &'static str,
    /// The field's doc comment, on one line.
    pub help: &'static str,
    pub value: Value<'a>,
}

/// The fields of a counter struct, in declaration (and JSON) order; a
/// nested struct's fields come in its place (it is flattened in the JSON).
pub trait Fields {
    fn visit(&self, visit: &mut dyn FnMut(Field<'_>));
}

/// Declares a counter struct once. Each field has a doc comment (its help
/// text in the metrics exposition) and a kind:
/// - `counter name`: a `u64` that only goes up; summed over workers;
/// - `gauge name`: a `u64` that goes up and down; summed over workers (the
///   flows live on each add up), or with `gauge(max) name` the largest
///   worker's (a size every worker has alike);
/// - `histogram name`: a [`Histogram`], summed bucket by bucket;
/// - `nested name: Type`, with `#[serde(flatten)]`: another declared struct
///   whose fields show at this level of the JSON.
///
/// It makes the struct (`Debug, Default, Clone, Copy, PartialEq, Eq,
/// Serialize`, its fields public), `AddAssign` and [`Fields`].
macro_rules! declare {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $help:literal])+
                $(#[serde($serde:meta)])*
                $kind:ident $(($merge:ident))? $field:ident $(: $nested:ty)?,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        $vis struct $name {
            $(
                $(#[doc = $help])+
                $(#[serde($serde)])*
                pub $field: $crate::counters::declare!(@type $kind $($nested)?),
            )*
        }

        impl std::ops::AddAssign for $name {
            fn add_assign(&mut self, other: $name) {
                $($crate::counters::declare!(@add $kind $($merge)?, self.$field, other.$field);)*
            }
        }

        impl $crate::counters::Fields for $name {
            fn visit(&self, visit: &mut dyn FnMut($crate::counters::Field<'_>)) {
                $(
                    $crate::counters::declare!(
                        @visit $kind, visit, stringify!($field), concat!($($help),+).trim(), &self.$field
                    );
                )*
            }
        }
    };
    (@type counter) => { u64 };
    (@type gauge) => { u64 };
    (@type histogram) => { $crate::histogram::Histogram };
    (@type nested $nested:ty) => { $nested };
    (@add gauge max, $mine:expr, $theirs:expr) => { $mine = $mine.max($theirs) };
    (@add $kind:ident, $mine:expr, $theirs:expr) => { $mine += $theirs };
    (@visit counter, $visit:ident, $name:expr, $help:expr, $value:expr) => {
        $visit($crate::counters::Field { name: $name, help: $help, value: $crate::counters::Value::Counter(*$value) })
    };
    (@visit gauge, $visit:ident, $name:expr, $help:expr, $value:expr) => {
        $visit($crate::counters::Field { name: $name, help: $help, value: $crate::counters::Value::Gauge(*$value) })
    };
    (@visit histogram, $visit:ident, $name:expr, $help:expr, $value:expr) => {
        $visit($crate::counters::Field { name: $name, help: $help, value: $crate::counters::Value::Histogram($value) })
    };
    (@visit nested, $visit:ident, $name:expr, $help:expr, $value:expr) => {
        $crate::counters::Fields::visit($value, $visit)
    };
}
pub(crate) use declare;

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
    handed_off: AtomicU64,
    handoff_dropped: AtomicU64,
}

declare! {
    /// A reading of [`PortStats`]. For every port, summed over the
    /// workers, `rx = bridged + intercepted + dropped` (a frame handed to
    /// another worker is counted as received here, and as intercepted or
    /// dropped there).
    pub struct PortTotals {
        /// Frames received on the port.
        counter rx,
        /// Frames sent out of the port (`generated` ones included).
        counter tx,
        /// Frames received here and accepted by the other port's driver.
        counter bridged,
        /// Frames received here and not delivered (runts, or the other
        /// port's transmit ring stayed full).
        counter dropped,
        /// Frames that failed validation, whether dropped (runts) or bridged
        /// (bad L3 headers).
        counter malformed,
        /// Frames received here that went to the TCP stack.
        counter intercepted,
        /// Frames the TCP stack sent out of this port (part of `tx`).
        counter generated,
        /// Frames the TCP stack could not send out of this port (no buffer,
        /// full ring), left to TCP retransmission.
        counter generated_dropped,
        /// Frames (part of `dropped`) of a connection another worker holds
        /// (af_packet's fanout rolls frames over to another socket when one
        /// is full).
        counter misdirected,
        /// UDP datagrams (part of `dropped`) to or from an intercepted port
        /// that `intercept.udp` (or a rule's `udp`) blocks, so that clients
        /// fall back to TCP (QUIC).
        counter udp_blocked,
        /// TCP segments (part of `dropped`, and of `malformed` but for
        /// fragments) to or from an intercepted port, to a `[[service]]`
        /// backend from the client port, or of an intercepted connection,
        /// whose checksum or header is bad, and first fragments of TCP to
        /// or from one (and such UDP a block applies to): never bridged,
        /// never fed to the stack.
        counter invalid_dropped,
        /// Frames of a connection leg another worker holds (a `[[service]]`
        /// backend leg, whose endpoints hash otherwise than its client's),
        /// copied to that worker, which counts each as intercepted or
        /// dropped.
        counter handed_off,
        /// Frames of such a leg (part of `dropped`) lost because the
        /// holding worker's hand-off queue was full (left to TCP
        /// retransmission).
        counter handoff_dropped,
    }
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
    pub fn add_handed_off(&self, frames: u64) {
        self.handed_off.fetch_add(frames, Ordering::Relaxed);
    }
    pub fn add_handoff_dropped(&self, frames: u64) {
        self.handoff_dropped.fetch_add(frames, Ordering::Relaxed);
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
            handed_off: self.handed_off.load(Ordering::Relaxed),
            handoff_dropped: self.handoff_dropped.load(Ordering::Relaxed),
        }
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

declare! {
    /// A reading of [`WorkerStats`].
    pub struct WorkerTotals {
        /// Time spent in polls that moved frames.
        counter busy_ns,
        /// Time spent in polls that found nothing, and asleep.
        counter idle_ns,
        /// Polls of the worker's ports.
        counter polls,
        /// Sleeps of the worker when it found nothing to do.
        counter idle_sleeps,
        /// Intercepted connections this worker opened (filled in by the
        /// report: they show how connections spread over the workers).
        counter sessions_opened,
        /// Intercepted connections this worker holds now.
        gauge sessions_live,
    }
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

declare! {
    /// A reading of [`TcpStats`] (summed over workers in a [`Report`]).
    /// `flows_live` and `sessions_live` return to 0 once every connection has
    /// closed (TIME-WAIT included): anything else is a leak.
    pub struct TcpTotals {
        /// Flows (TCP legs) the stack holds now.
        gauge flows_live,
        /// Flows the stack opened.
        counter flows_created,
        /// Flows the stack freed.
        counter flows_freed,
        /// Flows the stack refused to open (table full).
        counter flows_refused,
        /// Server legs' SYN retransmissions not sent because their client had
        /// not retransmitted its own SYN.
        counter syn_retransmits_withheld,
        /// Open legs given up because their peer answered none of
        /// `tcp.max_retransmissions` retransmission rounds.
        counter dead_peers,
        /// SYN-ACKs sent again at once because the peer retransmitted its SYN
        /// (a lost SYN-ACK on a lossy link).
        counter synacks_repeated,
        /// Lost segments a leg sent again at once on the stack's prompting (the
        /// next hole after a partial ACK, or a hole behind a SACKed tail) where
        /// smoltcp alone would have waited for its retransmission timer.
        counter fast_retransmits_prompted,
        /// Legs given up because their SYN or SYN-ACK stayed unanswered for
        /// `tcp.timeout_ms` (or a loop leg's for `inspect.syn_timeout_ms`).
        counter connect_timeouts,
        /// Sessions, bytes, TLS and policy outcomes (flattened in the JSON).
        #[serde(flatten)]
        nested splice: SpliceCounters,
        /// Forged certificates found in the cache.
        counter forged_cache_hits,
        /// Certificates forged for want of a cached one.
        counter forged_cache_misses,
        /// Bytes the cached forged certificates take (approximately).
        gauge forged_cache_bytes,
        /// Bytes one flow costs (buffers, socket, table entries); an
        /// intercepted connection has two flows (four with an inspection box).
        gauge(max) memory_per_flow,
        /// Socket buffers the live flows hold.
        gauge socket_buffer_bytes,
    }
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

declare! {
    /// Counters of the splice layer.
    pub struct SpliceCounters {
        /// Sessions (intercepted connections) opened.
        counter sessions_opened,
        /// Sessions held now.
        gauge sessions_live,
        /// Sessions holding TLS state now (both rustls connections).
        gauge tls_sessions_live,
        /// Sessions whose server refused the connection (RST); for an
        /// active-mode FTP data connection, its client (the end the
        /// appliance connects to).
        counter server_refused,
        /// Sessions whose server stayed silent (the same way round).
        counter server_timed_out,
        /// Sessions whose server was unreachable (ICMP).
        counter server_unreachable,
        /// Sessions reset.
        counter resets,
        /// Payload bytes relayed from clients to servers.
        counter bytes_client_to_server,
        /// Payload bytes relayed from servers to clients.
        counter bytes_server_to_client,
        /// TLS sessions whose handshakes both completed.
        counter tls_intercepted,
        /// TLS sessions that failed (client or server handshake, bad records).
        counter tls_failed,
        /// Connections the policy bypassed.
        counter bypassed,
        /// Connections the policy blocked.
        counter blocked,
        /// Connections to origins that speak only TLS the appliance does not
        /// (below 1.2, or no ECDHE/AEAD suite); then blocked or bypassed.
        counter legacy_upstream,
        /// ClientHellos carrying Encrypted Client Hello (outer).
        counter ech_offered,
        /// Sessions whose plaintext went through the inspection box.
        counter inspected,
        /// Sessions the box reset (or refused).
        counter inspect_blocked,
        /// Sessions relayed without inspection because the box did not pass
        /// their SYN in time or an inspection port's link was down (or,
        /// failing open, because the box died under them).
        counter inspect_failed_open,
        /// Sessions reset because the box did not pass their SYN in time or
        /// an inspection port's link was down (failing closed).
        counter inspect_failed_closed,
        /// Of `inspect_failed_open`: sessions already going through the box
        /// when it died (its loop timed out, or a link went down), carried on
        /// directly.
        counter inspect_failed_open_live,
        /// Bytes the box had taken and not passed back when it died, which
        /// went on directly.
        counter inspect_unreturned_bytes,
        /// Legs (client, server, inspection) reset because the engine shut
        /// down while their connection was still open: one RST each.
        counter reset_at_shutdown,
        /// New connections refused with a RST because the table was full.
        counter refused_at_capacity,
        /// New connections bridged uninspected because the table was full
        /// (only with `tcp.at_capacity = "bridge"`).
        counter bridged_at_capacity,
        /// Sessions whose client has not completed its handshake yet.
        gauge embryonic_live,
        /// Embryonic sessions dropped silently to admit newer SYNs.
        counter embryonic_evicted,
        /// Sessions closed both ways whose legs still waited out TIME-WAIT,
        /// freed to admit new connections to a full table.
        counter time_wait_reclaimed,
        /// SYNs dropped because their client held too many embryonic sessions.
        counter embryonic_client_limit_dropped,
        /// Connections to a `[[service]]` whose TLS handshake with the
        /// appliance (the service's certificate) completed.
        counter terminated,
        /// Connections to a `[[service]]` refused with a RST: no service for
        /// the name, not TLS, the handshake failed.
        counter terminate_failed,
        /// Terminated connections whose backend refused, was unreachable
        /// (ICMP) or did not answer (the client got a RST).
        counter backend_refused,
        /// SYNs from the client port straight to a `[[service]]` backend,
        /// refused with a RST: only the appliance connects there (a client
        /// could send its own PROXY header, which the backend trusts).
        counter backend_direct_refused,
        /// Terminated handshakes that resumed a session (a ticket).
        counter tickets_resumed,
        /// Connections a `[[policy]]` rule upgraded (a plain client) whose
        /// TLS handshake with the server completed, its certificate verified.
        counter upgraded,
        /// Connections a `[[policy]]` rule downgraded (a plain server) whose
        /// client's TLS handshake (a forged certificate) completed.
        counter downgraded,
        /// Upgraded or downgraded connections reset: the server's certificate
        /// did not verify, a handshake failed, the client did not speak TLS.
        counter conversion_failed,
        /// `[[starttls]]` connections opened (their preamble watched).
        counter starttls_sessions,
        /// STARTTLS connections upgraded: their TLS then went to the
        /// interception (counted in `tls_intercepted` once both handshakes
        /// are done).
        counter starttls_upgraded,
        /// Upgrades the server refused (the session went on in plaintext).
        counter starttls_refused,
        /// STARTTLS connections blocked by `require_tls` (content in
        /// plaintext, or the server refused the upgrade).
        counter starttls_plaintext_blocked,
        /// STARTTLS connections reset for a preamble that cannot be relayed
        /// safely: malformed, oversized, or a server that spoke after
        /// accepting the upgrade.
        counter starttls_failed,
        /// STARTTLS connections reset for no answer from the server within
        /// `tcp.starttls_timeout_ms`.
        counter starttls_timeouts,
        /// Client bytes discarded after an upgrade request, before TLS (the
        /// STARTTLS command injection class).
        counter starttls_injected_bytes_discarded,
        /// FTP data connections an intercepted control channel announced
        /// (PASV/EPSV, PORT/EPRT), expected for their SYN.
        counter ftp_data_expected,
        /// Announced FTP data connections (passive or active) admitted and
        /// intercepted as TLS (PROT P).
        counter ftp_data_tls,
        /// Announced FTP data connections (passive or active) admitted in
        /// plaintext (PROT C), through the box and the taps.
        counter ftp_data_clear,
        /// Of those admitted, active-mode ones (PORT/EPRT: the server's
        /// SYN, answered as the client while the appliance connects to the
        /// client as the server).
        counter ftp_data_active,
        /// FTP control connections reset: their control channel could not
        /// be followed, or announced more data connections than can be
        /// expected.
        counter ftp_data_failed,
        /// SYNs of announced FTP data connections that reached a worker
        /// other than the control connection's and were handed to it.
        counter ftp_data_handed_over,
        /// ARP requests and IPv6 neighbour solicitations for the
        /// appliance's own addresses (`ports.server.addresses`) answered.
        counter neighbour_requests_answered,
        /// ARP requests and neighbour solicitations the appliance sent for
        /// the next hops of backends it connects to from its own address.
        counter neighbour_requests_sent,
        /// Backend connections from an owned address whose next hop did not
        /// answer (or whose resolution found the table full): the client
        /// got a RST.
        counter neighbour_unresolved,
        /// Frames to an owned address that no leg of the appliance took
        /// (dropped, never bridged).
        counter owned_address_dropped,
        /// Sessions reset for no complete ClientHello in time.
        counter client_hello_timeouts,
        /// Sessions reset for TLS handshakes not finished in time.
        counter handshake_timeouts,
        /// Sessions reset after the idle timeout without a payload byte.
        counter idle_timeouts,
        /// TLS sessions: from the complete ClientHello to both handshakes
        /// done when intercepted (the origin's handshake, forging, the
        /// client's), to the client's handshake done when terminated; the
        /// time `tcp.handshake_timeout_ms` bounds.
        histogram handshake_seconds,
        /// Sessions from the client's SYN to their end (both directions
        /// closed, or reset, refused, timed out).
        histogram connection_seconds,
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
    pub totals: MirrorTotals,
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
    /// Records the writer thread of the logs and the capture dropped
    /// because its queue was full.
    pub writer: WriterTotals,
    /// The most frequent server names of the ClientHellos, most first
    /// (approximate counts, at most [`crate::topnames::CAPACITY`] names).
    pub top_sni: Vec<NameCount>,
    /// Configuration reloads (SIGHUP, `tlsgate reload`).
    pub reloads: ReloadTotals,
    /// PCAP-over-IP, when configured (`capture.pcap_over_ip`).
    pub pcap_over_ip: Option<StreamTotals>,
    /// The decrypt-mirror port, when configured (`[ports.mirror]`).
    pub mirror: Option<MirrorReport>,
    /// The process's resident memory (VmRSS), when the system says. In the
    /// final report of `run`: the sample the control thread takes when stop
    /// is requested, before the workers are told to stop (they reset and
    /// free their connections only then), so it includes every connection
    /// still held. In periodic reports and in `replay`: at the report.
    pub rss_bytes: Option<u64>,
}

/// The labels that tell the entries of a report's list apart (a port's
/// `device` and `role`, a worker's index).
pub type Labels = [(&'static str, String)];

impl Report {
    /// Every field of the report, with the path of the object it sits in
    /// (`tcp`, `port_driver`; empty for the report's own fields) and the
    /// labels of its list entry: what the metrics endpoint exposes.
    pub fn visit(&self, visit: &mut dyn FnMut(&str, &Labels, Field<'_>)) {
        fn section(
            object: &str,
            labels: &Labels,
            fields: &dyn Fields,
            visit: &mut dyn FnMut(&str, &Labels, Field<'_>),
        ) {
            fields.visit(&mut |field| visit(object, labels, field));
        }
        for port in &self.ports {
            let labels = [("device", port.device.clone()), ("role", port.role.to_owned())];
            section("port", &labels, &port.totals, visit);
            section("port_driver", &labels, &port.driver, visit);
        }
        for (index, worker) in self.workers.iter().enumerate() {
            section("worker", &[("worker", index.to_string())], worker, visit);
        }
        section("tcp", &[], &self.tcp, visit);
        section("learned", &[], &self.learned, visit);
        if let Some(capture) = &self.capture {
            section("capture", &[], capture, visit);
        }
        for entry in &self.top_sni {
            let field = Field {
                name: "count",
                help: "ClientHellos naming this server (approximate: the most frequent names only)",
                value: Value::Counter(entry.count),
            };
            visit("top_sni", &[("sni", entry.sni.clone())], field);
        }
        section("reloads", &[], &self.reloads, visit);
        section("writer", &[], &self.writer, visit);
        if let Some(stream) = &self.pcap_over_ip {
            section("pcap_over_ip", &[], stream, visit);
        }
        if let Some(mirror) = &self.mirror {
            section("mirror", &[], &mirror.totals, visit);
            section("mirror_driver", &[], &mirror.driver, visit);
        }
        if let Some(rss) = self.rss_bytes {
            let field = Field {
                name: "rss_bytes",
                help: "The process's resident memory (VmRSS)",
                value: Value::Gauge(rss),
            };
            visit("", &[], field);
        }
    }
}

/// The driver's counters (`rte_eth_stats`), all of them counters; the
/// destructuring names every field, so a field added to the driver's
/// struct does not build until it is described here.
impl Fields for port::PortCounters {
    fn visit(&self, visit: &mut dyn FnMut(Field<'_>)) {
        let port::PortCounters {
            rx_packets,
            tx_packets,
            rx_bytes,
            tx_bytes,
            rx_missed,
            rx_errors,
            tx_errors,
            rx_no_mbuf,
        } = *self;
        for (name, help, value) in [
            ("rx_packets", "Frames the port's driver received", rx_packets),
            ("tx_packets", "Frames the port's driver sent", tx_packets),
            ("rx_bytes", "Bytes the port's driver received", rx_bytes),
            ("tx_bytes", "Bytes the port's driver sent", tx_bytes),
            (
                "rx_missed",
                "Frames the hardware dropped because the receive ring was full",
                rx_missed,
            ),
            ("rx_errors", "Receive errors of the port's driver", rx_errors),
            ("tx_errors", "Transmit errors of the port's driver", tx_errors),
            ("rx_no_mbuf", "Receive failures for lack of an mbuf", rx_no_mbuf),
        ] {
            visit(Field {
                name,
                help,
                value: Value::Counter(value),
            });
        }
    }
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

declare! {
    /// What the decrypted capture wrote, and what it dropped (whole frames: on
    /// a full disk or another write error, while waiting to try again after
    /// one, or frames that could not be built).
    pub struct CaptureTotals {
        /// Frames written (without pcap record headers).
        counter frames,
        /// Bytes of the frames written.
        counter bytes,
        /// Frames dropped.
        counter frames_dropped,
        /// Bytes of the frames dropped.
        counter bytes_dropped,
    }
}

declare! {
    /// What the learned tables did (in the report).
    pub struct LearnedTotals {
        /// Destinations bypassed now.
        gauge live,
        /// Destinations bypassed because distinct clients kept rejecting the
        /// forged certificate.
        counter added_fail_open,
        /// Destinations bypassed for asking for a client certificate.
        counter added_client_auth,
        /// Bypasses gone at their time to live.
        counter expired,
        /// Bypasses pushed out by newer entries of a full table.
        counter evicted,
        /// Bypasses removed by the operator (`tlsgate learned clear`).
        counter cleared,
        /// Destinations whose rejections count towards fail-open now.
        gauge pending_live,
        /// Destinations counting rejections pushed out of a full table.
        counter pending_evicted,
    }
}

declare! {
    /// A reading of the decrypt-mirror queues' counters (`mirror::MirrorStats`).
    pub struct MirrorTotals {
        /// Frames the mirror port's driver accepted.
        counter frames,
        /// Bytes of the frames the driver accepted.
        counter bytes,
        /// Frames dropped because the worker's queue was full.
        counter frames_dropped,
        /// Bytes of the frames dropped.
        counter bytes_dropped,
    }
}

declare! {
    /// What the stream did: frames count once per client they were queued for.
    pub struct StreamTotals {
        /// Clients connected now.
        gauge clients,
        /// Clients served since the start.
        counter clients_accepted,
        /// Clients closed at once because `MAX_CLIENTS` were connected.
        counter clients_refused,
        /// Clients disconnected for staying too far behind.
        counter clients_too_slow,
        /// Frames queued for clients (summed over clients).
        counter frames,
        /// Bytes of the frames queued for clients (summed over clients).
        counter bytes,
        /// Frames dropped before the writer thread (over `QUEUE_BYTES`),
        /// for every client.
        counter frames_dropped,
        /// Frames dropped for one client whose queue was full (summed over
        /// clients).
        counter client_frames_dropped,
    }
}

declare! {
    /// What the writer dropped because its queue was full (or it had stopped).
    pub struct WriterTotals {
        /// Connection-log records dropped on a full queue.
        counter log_records_dropped,
        /// Key-log lines dropped on a full queue.
        counter keylog_records_dropped,
        /// Decrypted-capture frames dropped on a full queue.
        counter capture_frames_dropped,
    }
}

declare! {
    /// Reloads since the start, for the report.
    pub struct ReloadTotals {
        /// Reloads put in force.
        counter ok,
        /// Reloads refused (the running configuration stayed).
        counter refused,
    }
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
        let handed: Vec<_> = self
            .ports
            .iter()
            .filter(|port| port.totals.handed_off + port.totals.handoff_dropped > 0)
            .map(|port| {
                format!(
                    "{} on {} ({} dropped, its queue full)",
                    port.totals.handed_off, port.role, port.totals.handoff_dropped
                )
            })
            .collect();
        if !handed.is_empty() {
            writeln!(
                f,
                "handoff: frames of connection legs another worker holds, passed to it: {}",
                handed.join(", ")
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
        if splice.terminated + splice.terminate_failed + splice.backend_refused + splice.backend_direct_refused > 0 {
            writeln!(
                f,
                "termination: {} handshakes done ({} resumed), {} refused (no service, not TLS, handshake failed), \
                 {} backends refused; {} connections straight to a backend refused",
                splice.terminated,
                splice.tickets_resumed,
                splice.terminate_failed,
                splice.backend_refused,
                splice.backend_direct_refused
            )?;
        }
        if splice.upgraded + splice.downgraded + splice.conversion_failed > 0 {
            writeln!(
                f,
                "upgrade/downgrade: {} upgraded (TLS to the server), {} downgraded (TLS from the client), {} reset \
                 (certificate not verified, handshake failed, not TLS)",
                splice.upgraded, splice.downgraded, splice.conversion_failed
            )?;
        }
        if splice.starttls_sessions > 0 {
            writeln!(
                f,
                "starttls: {} connections, {} upgraded and intercepted, {} upgrades refused by the server, \
                 {} blocked by require_tls, {} failed (malformed, oversized, a server speaking after its accept), \
                 {} timed out; {} injected client bytes discarded",
                splice.starttls_sessions,
                splice.starttls_upgraded,
                splice.starttls_refused,
                splice.starttls_plaintext_blocked,
                splice.starttls_failed,
                splice.starttls_timeouts,
                splice.starttls_injected_bytes_discarded
            )?;
        }
        if splice.ftp_data_expected + splice.ftp_data_failed > 0 {
            writeln!(
                f,
                "ftp data: {} announced and expected, {} intercepted as TLS and {} relayed in plaintext \
                 ({} of these active-mode); {} control connections reset (unreadable, too many announced); \
                 {} SYNs handed to the control connection's worker",
                splice.ftp_data_expected,
                splice.ftp_data_tls,
                splice.ftp_data_clear,
                splice.ftp_data_active,
                splice.ftp_data_failed,
                splice.ftp_data_handed_over
            )?;
        }
        if splice.neighbour_requests_answered
            + splice.neighbour_requests_sent
            + splice.neighbour_unresolved
            + splice.owned_address_dropped
            > 0
        {
            writeln!(
                f,
                "owned addresses: {} ARP/ND requests answered, {} sent, {} backends unresolved (client reset), \
                 {} frames to them dropped",
                splice.neighbour_requests_answered,
                splice.neighbour_requests_sent,
                splice.neighbour_unresolved,
                splice.owned_address_dropped
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
        let writer = &self.writer;
        writeln!(
            f,
            "output writer: dropped on a full queue: {} connection-log records, {} key-log records, {} capture frames",
            writer.log_records_dropped, writer.keylog_records_dropped, writer.capture_frames_dropped
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report with a distinct value in every field, so that a field
    /// printed in another's place, or missing, changes the output.
    fn every_field_distinct() -> Report {
        let port = |role, device: &str, base: u64| PortReport {
            role,
            device: device.into(),
            totals: PortTotals {
                rx: base + 1,
                tx: base + 2,
                bridged: base + 3,
                dropped: base + 4,
                malformed: base + 5,
                intercepted: base + 6,
                generated: base + 7,
                generated_dropped: base + 8,
                misdirected: base + 9,
                udp_blocked: base + 10,
                invalid_dropped: base + 11,
                handed_off: base + 12,
                handoff_dropped: base + 13,
            },
            driver: port::PortCounters {
                rx_packets: base + 21,
                tx_packets: base + 22,
                rx_bytes: base + 23,
                tx_bytes: base + 24,
                rx_missed: base + 25,
                rx_errors: base + 26,
                tx_errors: base + 27,
                rx_no_mbuf: base + 28,
            },
        };
        let mut tcp = TcpTotals {
            flows_live: 301,
            flows_created: 302,
            flows_freed: 303,
            flows_refused: 304,
            syn_retransmits_withheld: 305,
            dead_peers: 306,
            synacks_repeated: 307,
            fast_retransmits_prompted: 308,
            connect_timeouts: 309,
            splice: SpliceCounters::default(),
            forged_cache_hits: 310,
            forged_cache_misses: 311,
            forged_cache_bytes: 312_345,
            memory_per_flow: 313,
            socket_buffer_bytes: 31_400_000,
        };
        let splice = &mut tcp.splice;
        splice.sessions_opened = 401;
        splice.sessions_live = 402;
        splice.tls_sessions_live = 403;
        splice.server_refused = 404;
        splice.server_timed_out = 405;
        splice.server_unreachable = 406;
        splice.resets = 407;
        splice.bytes_client_to_server = 408;
        splice.bytes_server_to_client = 409;
        splice.tls_intercepted = 410;
        splice.tls_failed = 411;
        splice.bypassed = 412;
        splice.blocked = 413;
        splice.legacy_upstream = 414;
        splice.ech_offered = 415;
        splice.inspected = 416;
        splice.inspect_blocked = 417;
        splice.inspect_failed_open = 418;
        splice.inspect_failed_closed = 419;
        splice.inspect_failed_open_live = 420;
        splice.inspect_unreturned_bytes = 421;
        splice.reset_at_shutdown = 422;
        splice.refused_at_capacity = 423;
        splice.bridged_at_capacity = 424;
        splice.embryonic_live = 425;
        splice.embryonic_evicted = 426;
        splice.time_wait_reclaimed = 427;
        splice.embryonic_client_limit_dropped = 428;
        splice.client_hello_timeouts = 429;
        splice.handshake_timeouts = 430;
        splice.idle_timeouts = 431;
        splice.terminated = 432;
        splice.terminate_failed = 433;
        splice.backend_refused = 434;
        splice.tickets_resumed = 435;
        splice.backend_direct_refused = 436;
        splice.upgraded = 461;
        splice.downgraded = 462;
        splice.conversion_failed = 463;
        splice.starttls_sessions = 437;
        splice.starttls_upgraded = 438;
        splice.starttls_refused = 439;
        splice.starttls_plaintext_blocked = 440;
        splice.starttls_failed = 441;
        splice.starttls_timeouts = 442;
        splice.starttls_injected_bytes_discarded = 443;
        splice.ftp_data_expected = 491;
        splice.ftp_data_tls = 492;
        splice.ftp_data_clear = 493;
        splice.ftp_data_active = 494;
        splice.ftp_data_failed = 495;
        splice.ftp_data_handed_over = 496;
        splice.neighbour_requests_answered = 471;
        splice.neighbour_requests_sent = 472;
        splice.neighbour_unresolved = 473;
        splice.owned_address_dropped = 474;
        splice.handshake_seconds.observe(3_000);
        splice.handshake_seconds.observe(40_000);
        splice.connection_seconds.observe(7_200_000_000);
        Report {
            ports: vec![
                port("client", "net_af_packet0", 100),
                port("server", "net_af_packet1", 200),
            ],
            workers: vec![
                WorkerTotals {
                    busy_ns: 1_500_000_001,
                    idle_ns: 502_000_000,
                    polls: 503,
                    idle_sleeps: 504,
                    sessions_opened: 505,
                    sessions_live: 506,
                },
                WorkerTotals {
                    busy_ns: 601,
                    idle_ns: 602,
                    polls: 603,
                    idle_sleeps: 604,
                    sessions_opened: 605,
                    sessions_live: 606,
                },
            ],
            tcp,
            learned: LearnedTotals {
                live: 701,
                added_fail_open: 702,
                added_client_auth: 703,
                expired: 704,
                evicted: 705,
                cleared: 706,
                pending_live: 707,
                pending_evicted: 708,
            },
            capture: Some(CaptureTotals {
                frames: 801,
                bytes: 802,
                frames_dropped: 803,
                bytes_dropped: 804,
            }),
            top_sni: vec![
                NameCount {
                    sni: "origin.test".into(),
                    count: 901,
                },
                NameCount {
                    sni: "other.test".into(),
                    count: 902,
                },
            ],
            reloads: ReloadTotals {
                ok: 1001,
                refused: 1002,
            },
            writer: WriterTotals {
                log_records_dropped: 1301,
                keylog_records_dropped: 1302,
                capture_frames_dropped: 1303,
            },
            pcap_over_ip: Some(StreamTotals {
                clients: 1101,
                clients_accepted: 1102,
                clients_refused: 1103,
                clients_too_slow: 1104,
                frames: 1105,
                bytes: 1106,
                frames_dropped: 1107,
                client_frames_dropped: 1108,
            }),
            mirror: Some(MirrorReport {
                device: "net_af_packet2".into(),
                totals: MirrorTotals {
                    frames: 1201,
                    bytes: 1202,
                    frames_dropped: 1203,
                    bytes_dropped: 1204,
                },
                driver: port::PortCounters {
                    tx_packets: 1205,
                    tx_errors: 1206,
                    ..Default::default()
                },
            }),
            rss_bytes: Some(130_000_000),
        }
    }

    /// The text and JSON reports of [`every_field_distinct`] as they were
    /// before the counters were declared once: scripts and tests read both,
    /// so a changed line or key is a changed interface. A new counter: give
    /// it a value of its own in [`every_field_distinct`] and add it to both
    /// files.
    const TEXT: &str = include_str!("../testdata/report-every-field.txt");
    const JSON: &str = include_str!("../testdata/report-every-field.json");

    #[test]
    fn counters_text_report_is_unchanged() {
        let text = every_field_distinct().to_string();
        assert_eq!(text, TEXT);
    }

    #[test]
    fn counters_json_report_is_unchanged() {
        let json = serde_json::to_string_pretty(&every_field_distinct()).expect("serialises") + "\n";
        assert_eq!(json, JSON);
    }

    /// A field's kind and number (a histogram's count).
    fn reading(value: Value<'_>) -> (&'static str, u64) {
        match value {
            Value::Counter(value) => ("counter", value),
            Value::Gauge(value) => ("gauge", value),
            Value::Histogram(histogram) => ("histogram", histogram.count()),
        }
    }

    /// Every number of a report as `visit` lists it.
    fn visited_numbers(report: &Report) -> Vec<u64> {
        let mut numbers = Vec::new();
        report.visit(&mut |_, _, field| numbers.push(reading(field.value).1));
        numbers
    }

    #[test]
    fn counters_visit_lists_every_number_of_the_json_report() {
        fn numbers(value: &serde_json::Value, out: &mut Vec<u64>) {
            match value {
                serde_json::Value::Number(number) => out.push(number.as_u64().expect("integer")),
                serde_json::Value::Object(fields) if fields.contains_key("buckets") => {
                    out.push(fields["count"].as_u64().expect("count"))
                }
                serde_json::Value::Object(fields) => fields.values().for_each(|field| numbers(field, out)),
                serde_json::Value::Array(entries) => entries.iter().for_each(|entry| numbers(entry, out)),
                _ => {}
            }
        }
        let report = every_field_distinct();
        let mut in_json = Vec::new();
        numbers(&serde_json::to_value(&report).expect("serialises"), &mut in_json);
        let mut visited = visited_numbers(&report);
        in_json.sort_unstable();
        visited.sort_unstable();
        assert_eq!(visited, in_json);
        // Every field has a value of its own (but the six driver counters a
        // mirror port does not use), so that the reports tell any two apart.
        let zeros = visited.iter().take_while(|&&number| number == 0).count();
        visited.dedup();
        assert_eq!((zeros, visited.len()), (6, in_json.len() - 5));
    }

    #[test]
    fn counters_visit_gives_every_field_its_kind_and_help() {
        let mut fields = Vec::new();
        every_field_distinct().visit(&mut |object, labels, field| {
            if labels
                .first()
                .is_none_or(|(_, value)| value == "net_af_packet0" || value == "0")
            {
                fields.push((format!("{object}.{}", field.name), reading(field.value), field.help));
            }
        });
        let find = |path: &str| {
            fields
                .iter()
                .find(|(name, _, _)| name == path)
                .unwrap_or_else(|| panic!("no {path}"))
        };
        assert_eq!(find("tcp.sessions_opened").1, ("counter", 401));
        assert_eq!(find("tcp.sessions_live").1, ("gauge", 402));
        assert_eq!(find("tcp.inspect_failed_open_live").1, ("counter", 420));
        assert_eq!(find("tcp.memory_per_flow").1, ("gauge", 313));
        assert_eq!(find("pcap_over_ip.clients").1, ("gauge", 1101));
        assert_eq!(find("worker.sessions_live").1, ("gauge", 506));
        assert_eq!(find("port_driver.rx_missed").1, ("counter", 125));
        assert_eq!(find(".rss_bytes").1, ("gauge", 130_000_000));
        assert_eq!(find("tcp.handshake_seconds").1, ("histogram", 2));
        assert_eq!(
            find("tcp.tls_sessions_live").2,
            "Sessions holding TLS state now (both rustls connections)."
        );
        assert_eq!(
            find("tcp.fast_retransmits_prompted").2,
            "Lost segments a leg sent again at once on the stack's prompting (the next hole after a partial ACK, \
             or a hole behind a SACKed tail) where smoltcp alone would have waited for its retransmission timer."
        );
        for (name, _, help) in &fields {
            assert!(!help.is_empty() && !help.starts_with(' '), "{name}: {help:?}");
        }
    }

    #[test]
    fn counters_sum_over_workers_and_gauges_of_size_take_the_largest() {
        let one = every_field_distinct().tcp;
        let mut two = one;
        two += one;
        let mut sums = Vec::new();
        two.visit(&mut |field| sums.push((field.name, reading(field.value))));
        let mut expected = Vec::new();
        one.visit(&mut |field| {
            let (kind, number) = reading(field.value);
            let sum = if field.name == "memory_per_flow" {
                number
            } else {
                2 * number
            };
            expected.push((field.name, (kind, sum)));
        });
        assert_eq!(sums, expected);
        assert_eq!(
            two.splice.handshake_seconds.sum_seconds(),
            2.0 * one.splice.handshake_seconds.sum_seconds()
        );
    }

    /// The fields the text report leaves out, or shows in other units.
    const NOT_IN_TEXT_AS_IS: &[&str] = &[
        // Frames the stack took and sent: in the JSON and metrics only.
        "port.intercepted",
        "port.generated",
        "port.generated_dropped",
        // Shown in seconds, MiB.
        "worker.busy_ns",
        "worker.idle_ns",
        "tcp.socket_buffer_bytes",
        ".rss_bytes",
    ];

    #[test]
    fn counters_text_report_shows_every_field() {
        let report = every_field_distinct();
        let text = report.to_string();
        let words: Vec<&str> = text.split(|c: char| !c.is_ascii_digit()).collect();
        report.visit(&mut |object, labels, field| {
            let path = format!("{object}.{}", field.name);
            let number = reading(field.value).1;
            // The driver's counters: only what the text report chose.
            let chosen = !object.ends_with("driver")
                || [
                    "port_driver.rx_missed",
                    "mirror_driver.tx_packets",
                    "mirror_driver.tx_errors",
                ]
                .contains(&path.as_str());
            if chosen && number != 0 && !NOT_IN_TEXT_AS_IS.contains(&path.as_str()) {
                assert!(
                    words.contains(&number.to_string().as_str()),
                    "{path} {labels:?} ({number}) is not in the text report:\n{text}"
                );
            }
        });
    }
}
