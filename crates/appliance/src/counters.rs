//! Counters the data plane keeps per port and per worker. Workers bump
//! relaxed atomics they alone write (once per burst, not per frame); the
//! control plane reads them into serialisable snapshots at any time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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
}

/// A reading of [`PortStats`]. For every port,
/// `rx = bridged + intercepted + dropped`: `bridged` frames were received
/// here and accepted by the other port's driver, `intercepted` went to the
/// TCP stack, `dropped` were received here and not delivered (runts, or the
/// other port's transmit ring stayed full); `malformed` counts frames that
/// failed validation, whether dropped (runts) or bridged (bad L3 headers).
/// `generated` frames were sent by the TCP stack out of this port (they are
/// part of `tx`); `generated_dropped` could not be sent (no buffer, full
/// ring) and are left to TCP retransmission.
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
/// every poll (the engine owns the stack; the control plane only reads).
#[derive(Debug, Default)]
pub struct TcpStats {
    flows_live: AtomicU64,
    flows_created: AtomicU64,
    flows_freed: AtomicU64,
    flows_refused: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_live: AtomicU64,
    server_refused: AtomicU64,
    server_timed_out: AtomicU64,
    server_unreachable: AtomicU64,
    resets: AtomicU64,
    bytes_client_to_server: AtomicU64,
    bytes_server_to_client: AtomicU64,
    tls_intercepted: AtomicU64,
    tls_failed: AtomicU64,
    forged_cache_hits: AtomicU64,
    forged_cache_misses: AtomicU64,
    forged_cache_bytes: AtomicU64,
    bypassed: AtomicU64,
    blocked: AtomicU64,
    failed_open: AtomicU64,
    client_auth_bypassed: AtomicU64,
    memory_per_flow: AtomicU64,
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
    pub sessions_opened: u64,
    pub sessions_live: u64,
    pub server_refused: u64,
    pub server_timed_out: u64,
    pub server_unreachable: u64,
    pub resets: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// Bytes one flow costs (buffers, socket, table entries); an
    /// intercepted connection has two flows.
    pub tls_intercepted: u64,
    pub tls_failed: u64,
    pub forged_cache_hits: u64,
    pub forged_cache_misses: u64,
    pub forged_cache_bytes: u64,
    pub bypassed: u64,
    pub blocked: u64,
    pub failed_open: u64,
    /// Servers bypassed because they ask for client certificates.
    pub client_auth_bypassed: u64,
    pub memory_per_flow: u64,
}

impl TcpStats {
    pub fn publish(&self, totals: &TcpTotals) {
        let store = |cell: &AtomicU64, value: u64| cell.store(value, Ordering::Relaxed);
        store(&self.flows_live, totals.flows_live);
        store(&self.flows_created, totals.flows_created);
        store(&self.flows_freed, totals.flows_freed);
        store(&self.flows_refused, totals.flows_refused);
        store(&self.sessions_opened, totals.sessions_opened);
        store(&self.sessions_live, totals.sessions_live);
        store(&self.server_refused, totals.server_refused);
        store(&self.server_timed_out, totals.server_timed_out);
        store(&self.server_unreachable, totals.server_unreachable);
        store(&self.resets, totals.resets);
        store(&self.bytes_client_to_server, totals.bytes_client_to_server);
        store(&self.bytes_server_to_client, totals.bytes_server_to_client);
        store(&self.tls_intercepted, totals.tls_intercepted);
        store(&self.tls_failed, totals.tls_failed);
        store(&self.forged_cache_hits, totals.forged_cache_hits);
        store(&self.forged_cache_misses, totals.forged_cache_misses);
        store(&self.forged_cache_bytes, totals.forged_cache_bytes);
        store(&self.bypassed, totals.bypassed);
        store(&self.blocked, totals.blocked);
        store(&self.failed_open, totals.failed_open);
        store(&self.client_auth_bypassed, totals.client_auth_bypassed);
        store(&self.memory_per_flow, totals.memory_per_flow);
    }

    pub fn totals(&self) -> TcpTotals {
        let load = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        TcpTotals {
            flows_live: load(&self.flows_live),
            flows_created: load(&self.flows_created),
            flows_freed: load(&self.flows_freed),
            flows_refused: load(&self.flows_refused),
            sessions_opened: load(&self.sessions_opened),
            sessions_live: load(&self.sessions_live),
            server_refused: load(&self.server_refused),
            server_timed_out: load(&self.server_timed_out),
            server_unreachable: load(&self.server_unreachable),
            resets: load(&self.resets),
            bytes_client_to_server: load(&self.bytes_client_to_server),
            bytes_server_to_client: load(&self.bytes_server_to_client),
            tls_intercepted: load(&self.tls_intercepted),
            tls_failed: load(&self.tls_failed),
            forged_cache_hits: load(&self.forged_cache_hits),
            forged_cache_misses: load(&self.forged_cache_misses),
            forged_cache_bytes: load(&self.forged_cache_bytes),
            bypassed: load(&self.bypassed),
            blocked: load(&self.blocked),
            failed_open: load(&self.failed_open),
            client_auth_bypassed: load(&self.client_auth_bypassed),
            memory_per_flow: load(&self.memory_per_flow),
        }
    }
}

impl std::ops::AddAssign for TcpTotals {
    fn add_assign(&mut self, other: TcpTotals) {
        self.flows_live += other.flows_live;
        self.flows_created += other.flows_created;
        self.flows_freed += other.flows_freed;
        self.flows_refused += other.flows_refused;
        self.sessions_opened += other.sessions_opened;
        self.sessions_live += other.sessions_live;
        self.server_refused += other.server_refused;
        self.server_timed_out += other.server_timed_out;
        self.server_unreachable += other.server_unreachable;
        self.resets += other.resets;
        self.bytes_client_to_server += other.bytes_client_to_server;
        self.bytes_server_to_client += other.bytes_server_to_client;
        self.tls_intercepted += other.tls_intercepted;
        self.tls_failed += other.tls_failed;
        self.forged_cache_hits += other.forged_cache_hits;
        self.forged_cache_misses += other.forged_cache_misses;
        self.forged_cache_bytes += other.forged_cache_bytes;
        self.bypassed += other.bypassed;
        self.blocked += other.blocked;
        self.failed_open += other.failed_open;
        self.client_auth_bypassed += other.client_auth_bypassed;
        self.memory_per_flow = self.memory_per_flow.max(other.memory_per_flow);
    }
}

/// A port's counters in a report: the engine's view and the driver's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortReport {
    pub role: &'static str,
    pub device: String,
    #[serde(flatten)]
    pub totals: PortTotals,
    pub driver: dpdk::PortCounters,
}

/// Everything the data plane counted, as printed by `run` and `replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub ports: Vec<PortReport>,
    pub workers: Vec<WorkerTotals>,
    pub tcp: TcpTotals,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:<28} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
            "port", "device", "rx", "tx", "bridged", "dropped", "malformed", "nic-miss"
        )?;
        for port in &self.ports {
            let t = port.totals;
            writeln!(
                f,
                "{:<8} {:<28} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
                port.role, port.device, t.rx, t.tx, t.bridged, t.dropped, t.malformed, port.driver.rx_missed
            )?;
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
            tcp.sessions_live,
            tcp.sessions_opened,
            tcp.server_refused,
            tcp.server_timed_out,
            tcp.server_unreachable,
            tcp.resets,
            tcp.bytes_client_to_server,
            tcp.bytes_server_to_client
        )?;
        if tcp.tls_intercepted + tcp.tls_failed + tcp.bypassed + tcp.blocked > 0 {
            writeln!(
                f,
                "tls: {} intercepted, {} failed, {} bypassed, {} blocked, {} names failed open; \
                 forged certificates: {} cache hits, {} misses, {} B cached",
                tcp.tls_intercepted,
                tcp.tls_failed,
                tcp.bypassed,
                tcp.blocked,
                tcp.failed_open,
                tcp.forged_cache_hits,
                tcp.forged_cache_misses,
                tcp.forged_cache_bytes
            )?;
        }
        for (index, worker) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "worker {index}: busy {:.3} s, idle {:.3} s ({:.1}% busy), {} polls, {} idle sleeps",
                worker.busy_ns as f64 / 1e9,
                worker.idle_ns as f64 / 1e9,
                worker.busy_percent(),
                worker.polls,
                worker.idle_sleeps
            )?;
        }
        Ok(())
    }
}
