//! The in-memory lab with several workers: one client host and one server
//! host, and an [`Engine`] per worker on ports of its own, sharing a
//! [`WorkerHandoff`] as the data plane's workers do. Each frame a host sends
//! reaches the worker `distribution::worker_for` picks (tlsgate's software
//! distribution; NIC RSS and af_packet's fanout are symmetric hashes too: a
//! connection's frames stay on one worker, a leg to other endpoints may hash
//! to another).

use std::net::SocketAddr;

use appliance::counters::PortTotals;
use appliance::distribution::worker_for;
use appliance::engine::{Engine, EngineStats, InterceptPolicy, Side};
use appliance::handoff::WorkerHandoff;
use netstack::Instant;
use port::{MemPort, MemPortControl};

use super::{icmp_host_unreachable, start, Host, CLIENT_MAC, CLIENT_V4, CLIENT_V6, SERVER_MAC, SERVER_V4, SERVER_V6};

/// The worker (of two) the steering gives the frames between `a` and `b`.
pub fn worker_between(a: SocketAddr, b: SocketAddr) -> usize {
    let mut frame = Vec::new();
    wire::TcpSegment {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        src: a,
        dst: b,
        seq: 1,
        ack: None,
        control: wire::SegmentControl::Syn,
        window: 64_240,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    worker_for(&frame, 2)
}

/// A client port from `first` on whose connection to `to` lands on
/// `worker` (of two), and whose leg to `moved_to` (a server leg the
/// appliance opens from the client's address and port to other endpoints),
/// when given, hashes to the other worker.
pub fn client_port_on(worker: usize, to: SocketAddr, moved_to: Option<SocketAddr>, first: u16) -> u16 {
    (first..)
        .find(|&port| {
            let client = SocketAddr::from((CLIENT_V4, port));
            worker_between(client, to) == worker
                && moved_to.is_none_or(|moved_to| worker_between(client, moved_to) != worker)
        })
        .unwrap()
}

/// One worker: its engine, the wire ends of its client and server ports,
/// and its counters.
pub struct Worker {
    pub engine: Engine<MemPort>,
    pub client_port: MemPortControl,
    pub server_port: MemPortControl,
    pub stats: EngineStats,
}

/// client host ⇄ [worker 0 | worker 1 | ...] ⇄ server host.
pub struct Workers {
    pub now: Instant,
    pub client: Host,
    pub server: Host,
    pub workers: Vec<Worker>,
    /// When set, the server side answers every IPv4 TCP SYN the appliance
    /// sends with an ICMP host unreachable (nothing reaches the server).
    pub server_unreachable: bool,
}

impl Workers {
    /// `count` workers under `policy`, each engine finished by `finish`
    /// (given the worker's index) and then given its end of the hand-off.
    pub fn new(
        count: usize,
        policy: &InterceptPolicy,
        mut finish: impl FnMut(usize, Engine<MemPort>) -> Engine<MemPort>,
    ) -> Workers {
        let workers = WorkerHandoff::for_workers(count, 256)
            .into_iter()
            .enumerate()
            .map(|(index, handoff)| {
                let (client_port, client) = MemPort::new([2, 0, 0, 0, 0, 0xc]);
                let (server_port, server) = MemPort::new([2, 0, 0, 0, 0, 0x5]);
                let stats = EngineStats::default();
                let engine = Engine::new(client_port, server_port, stats.clone(), 32, policy, start());
                Worker {
                    engine: finish(index, engine).with_handoff(handoff),
                    client_port: client,
                    server_port: server,
                    stats,
                }
            })
            .collect();
        Workers {
            now: Instant::ZERO,
            client: Host::new(CLIENT_MAC, CLIENT_V4, CLIENT_V6, 0x1111),
            server: Host::new(SERVER_MAC, SERVER_V4, SERVER_V6, 0x2222),
            workers,
            server_unreachable: false,
        }
    }

    /// One millisecond of virtual time.
    pub fn step(&mut self) {
        let count = self.workers.len();
        self.client.poll(self.now);
        for frame in std::mem::take(&mut self.client.device.tx) {
            self.workers[worker_for(&frame, count)].client_port.inject(frame);
        }
        self.server.poll(self.now);
        for frame in std::mem::take(&mut self.server.device.tx) {
            self.workers[worker_for(&frame, count)].server_port.inject(frame);
        }
        for worker in &mut self.workers {
            worker.engine.poll(self.now);
        }
        for index in 0..count {
            let to_server = self.workers[index].server_port.take_transmitted();
            if self.server_unreachable {
                for error in to_server.iter().filter_map(|frame| icmp_host_unreachable(frame)) {
                    self.workers[worker_for(&error, count)].server_port.inject(error);
                }
            } else {
                self.server.device.rx.extend(to_server);
            }
            let to_client = self.workers[index].client_port.take_transmitted();
            self.client.device.rx.extend(to_client);
        }
        self.now += netstack::Duration::from_millis(1);
    }

    /// Steps until `done` holds, at most `limit_ms`; returns whether it held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&mut Workers) -> bool) -> bool {
        for _ in 0..limit_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// A port's counters on one worker.
    pub fn totals(&self, worker: usize, side: Side) -> PortTotals {
        self.workers[worker].stats.ports[side.index()].totals()
    }

    /// A port's counters summed over the workers.
    pub fn summed(&self, side: Side) -> PortTotals {
        let mut sum = PortTotals::default();
        for worker in 0..self.workers.len() {
            sum += self.totals(worker, side);
        }
        sum
    }
}
