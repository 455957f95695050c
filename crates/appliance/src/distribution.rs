//! Software flow distribution, for ports whose driver can spread received
//! frames over the workers' queues neither by RSS nor by af_packet's kernel
//! fanout (pcap, ring, memif, null, virtio without RSS, ...).
//!
//! Such a port has one receive queue. Worker 0 reads it (its
//! [`Distributor`]), computes [`worker_for`] each frame, keeps its own and
//! hands every other frame to its worker through a single-producer
//! single-consumer hand-off per (port, worker) — on DPDK an `rte_ring` of
//! mbuf pointers, so nothing is copied and no lock is taken. The other
//! workers read that hand-off as if it were their receive queue
//! ([`Receive::Handoff`]). Every worker transmits on its own queue of the
//! port. A frame whose hand-off is full is dropped and counted (as received
//! and dropped on the port, and as `ring_full` here): a bridge must not
//! buffer without bound.
//!
//! The hash is symmetric: both directions of a TCP or UDP flow, and the
//! legs of an intercepted connection on every port (client→appliance on the
//! client port, appliance→server and back on the server port, the
//! inspection legs), carry the same sorted pair of (address, port)
//! endpoints, so every port under software distribution sends them to the
//! same worker. It is not the hash of NIC RSS or of the kernel's fanout, so
//! ports distributed in software cannot be mixed with those (the data plane
//! refuses the mix).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use port::{HandoffReceiver, HandoffSender, LinkState, PacketBuf, Port, PortCounters};
use serde::Serialize;
use wire::{FrameClass, L4Kind};

use crate::counters::PortStats;

/// The worker that reads a software-distributed port's receive queue, and
/// that gets every frame without a flow (non-IP, unparseable).
pub const DISTRIBUTING_WORKER: usize = 0;

/// One end of a flow: address and port (0 when the frame has none).
type Endpoint = (IpAddr, u16);

/// The symmetric flow hash of an Ethernet frame, `None` when the frame has
/// no flow to keep together (not IP, or a header that does not validate).
///
/// * TCP and UDP (not fragmented): the sorted pair of (address, port)
///   endpoints, so both directions hash alike.
/// * ICMP/ICMPv6 destination unreachable quoting a TCP segment: the quoted
///   segment's endpoints, so the error reaches the worker holding the
///   connection it is about (which passes it on, see the engine).
/// * Other IP (fragments, ICMP, other protocols): the sorted addresses.
///
/// VLAN tags are skipped; the same endpoints on different VLANs hash alike.
pub fn flow_hash(frame: &[u8]) -> Option<u64> {
    let class = wire::classify(frame).ok()?;
    if class.malformed.is_some() {
        return None;
    }
    let (a, b) = endpoints(frame, &class)?;
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    Some(mix(low, high))
}

/// The worker (of `workers`) that owns `frame`: by [`flow_hash`], or
/// [`DISTRIBUTING_WORKER`] when the frame has no flow.
pub fn worker_for(frame: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return DISTRIBUTING_WORKER;
    }
    let Ok(workers) = u64::try_from(workers) else {
        return DISTRIBUTING_WORKER;
    };
    flow_hash(frame)
        .and_then(|hash| usize::try_from(hash % workers).ok())
        .unwrap_or(DISTRIBUTING_WORKER)
}

fn endpoints(frame: &[u8], class: &FrameClass) -> Option<(Endpoint, Endpoint)> {
    let tuple = match class.l4()? {
        L4Kind::Tcp { flow, .. } | L4Kind::Udp { flow } => *flow,
        L4Kind::Icmp { .. } => match wire::icmp::quoted_tcp(frame, class) {
            Some(quote) => quote.tuple,
            None => return addresses(frame, class),
        },
        L4Kind::Opaque => return addresses(frame, class),
    };
    Some(((tuple.src_ip, tuple.src_port), (tuple.dst_ip, tuple.dst_port)))
}

/// The source and destination address of a validated IP packet.
fn addresses(frame: &[u8], class: &FrameClass) -> Option<(Endpoint, Endpoint)> {
    let ip = frame.get(class.ip_range()?)?;
    let (src, dst) = match ip.first()? >> 4 {
        4 => (
            IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?),
        ),
        6 => (
            IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?),
        ),
        _ => return None,
    };
    Some(((src, 0), (dst, 0)))
}

/// FNV-1a over the two endpoints, then MurmurHash3's 64-bit finaliser so
/// that the low bits (what the modulo keeps) depend on every input bit.
fn mix(low: Endpoint, high: Endpoint) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
    };
    for (address, port) in [low, high] {
        match address {
            IpAddr::V4(v4) => feed(&v4.octets()),
            IpAddr::V6(v6) => feed(&v6.octets()),
        }
        feed(&port.to_be_bytes());
    }
    let mut k = hash;
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// What the distributing worker did with one port's frames (it alone
/// writes these, once per burst).
#[derive(Debug, Default)]
pub struct DistributionStats {
    kept: AtomicU64,
    handed_off: AtomicU64,
    ring_full: AtomicU64,
}

/// A reading of [`DistributionStats`]: of the frames the port's receive
/// queue delivered, `kept` were the distributing worker's own,
/// `handed_off` went to other workers, and `ring_full` were dropped because
/// the hand-off to their worker was full (they are also counted as
/// received and dropped on the port).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DistributionTotals {
    pub kept: u64,
    pub handed_off: u64,
    pub ring_full: u64,
}

impl DistributionStats {
    pub fn totals(&self) -> DistributionTotals {
        DistributionTotals {
            kept: self.kept.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            ring_full: self.ring_full.load(Ordering::Relaxed),
        }
    }

    /// Frames the distributing worker moved for others (handed off or
    /// dropped for a full hand-off): work besides its own frames.
    pub fn moved(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed) + self.ring_full.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, kept: u64, handed_off: u64, ring_full: u64) {
        self.kept.fetch_add(kept, Ordering::Relaxed);
        self.handed_off.fetch_add(handed_off, Ordering::Relaxed);
        self.ring_full.fetch_add(ring_full, Ordering::Relaxed);
    }
}

/// The distributing worker's side of a port: splits each burst from the
/// port's receive queue by [`worker_for`].
#[derive(Debug)]
pub struct Distributor<B, S> {
    /// The hand-off to each worker, by worker index (`None` for the
    /// distributing worker itself).
    outputs: Vec<Option<S>>,
    /// Frames of the current burst per worker (kept to reuse the memory).
    batches: Vec<Vec<B>>,
    received: Vec<B>,
    stats: Arc<DistributionStats>,
    /// The distributing worker's counters for this port: frames dropped on
    /// a full hand-off are counted there as received and dropped.
    port_stats: Arc<PortStats>,
}

impl<B: PacketBuf, S: HandoffSender<B>> Distributor<B, S> {
    /// A distributor over `outputs`, one per worker (`None` at
    /// [`DISTRIBUTING_WORKER`]), counting into `stats` and `port_stats`.
    pub fn new(outputs: Vec<Option<S>>, stats: Arc<DistributionStats>, port_stats: Arc<PortStats>) -> Self {
        Distributor {
            batches: outputs.iter().map(|_| Vec::new()).collect(),
            outputs,
            received: Vec::new(),
            stats,
            port_stats,
        }
    }

    /// Receives one burst of up to `max` frames on `queue`: this worker's
    /// frames are appended to `out`, the others handed to their workers.
    /// Returns how many were appended to `out`.
    fn receive<P: Port<Buf = B>>(&mut self, queue: &mut P, out: &mut Vec<B>, max: usize) -> usize {
        if queue.rx_burst(&mut self.received, max) == 0 {
            return 0;
        }
        let workers = self.outputs.len();
        let start = out.len();
        for frame in self.received.drain(..) {
            let worker = worker_for(frame.data(), workers);
            let has_output = self.outputs.get(worker).is_some_and(Option::is_some);
            match self.batches.get_mut(worker) {
                Some(batch) if has_output => batch.push(frame),
                _ => out.push(frame),
            }
        }
        let (mut handed_off, mut ring_full) = (0u64, 0u64);
        for (output, batch) in self.outputs.iter_mut().zip(&mut self.batches) {
            if batch.is_empty() {
                continue;
            }
            if let Some(output) = output {
                handed_off += output.send(batch) as u64;
            }
            // What did not fit is dropped here (freed back to its pool).
            ring_full += batch.len() as u64;
            batch.clear();
        }
        let kept = out.len() - start;
        self.stats.add(kept as u64, handed_off, ring_full);
        if ring_full > 0 {
            self.port_stats.add_rx(ring_full);
            self.port_stats.add_dropped(ring_full);
        }
        kept
    }
}

/// Where a worker's frames of one port come from.
#[derive(Debug)]
pub enum Receive<B, S, R> {
    /// The worker's own receive queue (one worker, RSS, or kernel fanout).
    Queue,
    /// The port's only receive queue, split among the workers.
    Distribute(Distributor<B, S>),
    /// The distributing worker's hand-off.
    Handoff(R),
}

/// A worker's queue on one port: it transmits on its own queue and
/// receives as [`Receive`] says.
#[derive(Debug)]
pub struct SteeredPort<P: Port, S, R> {
    queue: P,
    receive: Receive<P::Buf, S, R>,
}

impl<P: Port, S, R> SteeredPort<P, S, R> {
    pub fn new(queue: P, receive: Receive<P::Buf, S, R>) -> Self {
        SteeredPort { queue, receive }
    }

    /// The underlying queue.
    pub fn queue(&self) -> &P {
        &self.queue
    }
}

impl<P, S, R> Port for SteeredPort<P, S, R>
where
    P: Port,
    S: HandoffSender<P::Buf>,
    R: HandoffReceiver<P::Buf>,
{
    type Buf = P::Buf;
    type Pool = P::Pool;

    fn mac(&self) -> [u8; 6] {
        self.queue.mac()
    }

    fn link(&self) -> LinkState {
        self.queue.link()
    }

    fn counters(&self) -> PortCounters {
        self.queue.counters()
    }

    fn rx_burst(&mut self, out: &mut Vec<P::Buf>, max: usize) -> usize {
        match &mut self.receive {
            Receive::Queue => self.queue.rx_burst(out, max),
            Receive::Distribute(distributor) => distributor.receive(&mut self.queue, out, max),
            Receive::Handoff(from) => from.receive(out, max),
        }
    }

    fn tx_burst(&mut self, frames: &mut Vec<P::Buf>) -> usize {
        self.queue.tx_burst(frames)
    }

    fn alloc(&mut self) -> Option<P::Buf> {
        self.queue.alloc()
    }

    fn pool(&self) -> P::Pool {
        self.queue.pool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use port::{MemPort, MemPortControl};
    use std::collections::VecDeque;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    /// A deterministic pseudo-random sequence (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum = bytes
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
            .sum::<u32>();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An Ethernet frame with `vlans` 802.1Q tags around an IP packet.
    fn ethernet(src_mac: [u8; 6], dst_mac: [u8; 6], vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = dst_mac.to_vec();
        frame.extend(src_mac);
        for vid in vlans {
            frame.extend(0x8100u16.to_be_bytes());
            frame.extend(vid.to_be_bytes());
        }
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    /// An IPv4 or IPv6 packet of protocol `proto` (IPv4: `fragment` sets
    /// MF; `offset` in 8-byte units).
    fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, fragment: (bool, u16), payload: &[u8]) -> (u16, Vec<u8>) {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let total = (20 + payload.len()) as u16;
                let flags_offset = (u16::from(fragment.0) << 13) | fragment.1;
                let mut header = vec![0x45, 0];
                header.extend(total.to_be_bytes());
                header.extend([0, 1]);
                header.extend(flags_offset.to_be_bytes());
                header.extend([64, proto, 0, 0]);
                header.extend(src.octets());
                header.extend(dst.octets());
                let sum = checksum(&header);
                header[10..12].copy_from_slice(&sum.to_be_bytes());
                header.extend(payload);
                (0x0800, header)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut header = vec![0x60, 0, 0, 0];
                header.extend((payload.len() as u16).to_be_bytes());
                header.extend([proto, 64]);
                header.extend(src.octets());
                header.extend(dst.octets());
                header.extend(payload);
                (0x86dd, header)
            }
            _ => panic!("mixed address families"),
        }
    }

    /// A TCP (20-byte header, ACK) or UDP segment with `payload`.
    fn l4(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut segment = sport.to_be_bytes().to_vec();
        segment.extend(dport.to_be_bytes());
        if proto == TCP {
            segment.extend(1000u32.to_be_bytes());
            segment.extend(2000u32.to_be_bytes());
            segment.extend([0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            segment.extend(((8 + payload.len()) as u16).to_be_bytes());
            segment.extend([0, 0]);
        }
        segment.extend(payload);
        segment
    }

    fn frame(src: (IpAddr, u16), dst: (IpAddr, u16), proto: u8, vlans: &[u16]) -> Vec<u8> {
        let (ethertype, packet) = ip_packet(src.0, dst.0, proto, (false, 0), &l4(proto, src.1, dst.1, b"data"));
        ethernet(CLIENT_MAC, SERVER_MAC, vlans, ethertype, &packet)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 7, last))
    }

    fn random_endpoints(rng: &mut Rng) -> ((IpAddr, u16), (IpAddr, u16)) {
        let bits = rng.next();
        let (src, dst) = if bits & 1 == 0 {
            let octets = bits.to_be_bytes();
            (
                v4(10, octets[1], octets[2], octets[3]),
                v4(192, 0, octets[4], octets[5]),
            )
        } else {
            (v6((bits >> 8) as u16), v6((bits >> 24) as u16))
        };
        let ports = rng.next();
        ((src, (ports >> 16) as u16), (dst, (ports >> 32) as u16))
    }

    #[test]
    fn both_directions_of_a_flow_go_to_the_same_worker() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..2000 {
            let (a, b) = random_endpoints(&mut rng);
            for proto in [TCP, UDP] {
                let tags: [&[u16]; 3] = [&[], &[10], &[100, 10]];
                for vlans in tags {
                    let forward = frame(a, b, proto, vlans);
                    let backward = frame(b, a, proto, vlans);
                    let hash = flow_hash(&forward).expect("IP flow");
                    assert_eq!(Some(hash), flow_hash(&backward), "{a:?} {b:?}");
                    // The VLAN does not change the worker.
                    assert_eq!(Some(hash), flow_hash(&frame(a, b, proto, &[])));
                    for workers in [2, 3, 4, 7, 8, 64] {
                        assert_eq!(worker_for(&forward, workers), worker_for(&backward, workers));
                        assert!(worker_for(&forward, workers) < workers);
                    }
                }
            }
        }
    }

    #[test]
    fn flows_spread_evenly_over_the_workers() {
        let mut rng = Rng(0x0bad_cafe_dead_beef);
        let flows: Vec<Vec<u8>> = (0..40_000)
            .map(|_| {
                let (a, b) = random_endpoints(&mut rng);
                frame(a, b, TCP, &[])
            })
            .collect();
        for workers in [2usize, 3, 4, 6, 8] {
            let mut counts = vec![0usize; workers];
            for flow in &flows {
                counts[worker_for(flow, workers)] += 1;
            }
            let even = flows.len() / workers;
            for (worker, count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(even) * 100 < even * 5,
                    "{workers} workers: worker {worker} got {count} of {} flows ({counts:?})",
                    flows.len()
                );
            }
        }
        // Many connections between the same two hosts (only the client port
        // differs) spread too.
        let mut counts = [0usize; 4];
        for port in 1024..9216u16 {
            counts[worker_for(&frame((v4(198, 18, 0, 1), port), (v4(198, 18, 0, 2), 443), TCP, &[]), 4)] += 1;
        }
        assert!(
            counts.iter().all(|count| count.abs_diff(2048) < 2048 / 10),
            "{counts:?}"
        );
    }

    #[test]
    fn frames_without_a_flow_go_to_worker_zero() {
        let arp = ethernet(
            CLIENT_MAC,
            [0xff; 6],
            &[],
            0x0806,
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        let lldp = ethernet(CLIENT_MAC, [1, 0x80, 0xc2, 0, 0, 0xe], &[], 0x88cc, &[0; 46]);
        let runt = vec![0xff; 10];
        let mut bad_checksum = frame((v4(10, 0, 0, 1), 1), (v4(10, 0, 0, 2), 2), TCP, &[]);
        bad_checksum[14 + 10] ^= 0xff;
        for frame in [&arp, &lldp, &runt, &bad_checksum, &Vec::new()] {
            assert_eq!(flow_hash(frame), None, "{frame:02x?}");
            for workers in [1, 2, 5] {
                assert_eq!(worker_for(frame, workers), 0);
            }
        }
        // With one worker everything is worker 0's.
        assert_eq!(worker_for(&frame((v6(1), 1), (v6(2), 2), UDP, &[]), 1), 0);
    }

    #[test]
    fn fragments_icmp_and_other_protocols_go_by_addresses() {
        let (a, b) = (v4(10, 1, 1, 1), v4(10, 2, 2, 2));
        let fragment = |src: IpAddr, dst: IpAddr, more: bool, offset: u16| {
            let (ethertype, packet) = ip_packet(src, dst, UDP, (more, offset), &[0x55; 64]);
            ethernet(CLIENT_MAC, SERVER_MAC, &[], ethertype, &packet)
        };
        let first = flow_hash(&fragment(a, b, true, 0)).expect("fragment");
        assert_eq!(flow_hash(&fragment(a, b, false, 8)), Some(first));
        assert_eq!(flow_hash(&fragment(b, a, true, 16)), Some(first));
        let gre = |src, dst| {
            let (ethertype, packet) = ip_packet(src, dst, 47, (false, 0), &[0; 24]);
            ethernet(CLIENT_MAC, SERVER_MAC, &[], ethertype, &packet)
        };
        assert_eq!(flow_hash(&gre(a, b)), Some(first));
        assert_eq!(flow_hash(&gre(b, a)), Some(first));
        let (x, y) = (v6(1), v6(2));
        assert_eq!(flow_hash(&gre(x, y)), flow_hash(&gre(y, x)));
        assert!(flow_hash(&gre(x, y)).is_some());
    }

    #[test]
    fn an_unreachable_error_goes_to_the_worker_of_the_connection_it_quotes() {
        for (client, server, router) in [
            (v4(198, 18, 0, 1), v4(203, 0, 113, 9), v4(192, 0, 2, 254)),
            (v6(1), v6(2), v6(0xfe)),
        ] {
            for client_port in [40_000u16, 40_001, 50_123, 61_000] {
                let syn = frame((client, client_port), (server, 443), TCP, &[]);
                // The quoted packet: the SYN's IP header and TCP header.
                let (_, quoted) = ip_packet(client, server, TCP, (false, 0), &l4(TCP, client_port, 443, b""));
                let (proto, icmp_type) = if client.is_ipv4() { (1, 3) } else { (58, 1) };
                let mut icmp = vec![icmp_type, 1, 0, 0, 0, 0, 0, 0];
                icmp.extend(&quoted);
                let (ethertype, packet) = ip_packet(router, client, proto, (false, 0), &icmp);
                let error = ethernet(SERVER_MAC, CLIENT_MAC, &[], ethertype, &packet);
                assert_eq!(flow_hash(&error), flow_hash(&syn), "{client} {client_port}");
                let reply = frame((server, 443), (client, client_port), TCP, &[]);
                assert_eq!(flow_hash(&error), flow_hash(&reply));
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(42);
        let valid = [
            frame((v4(10, 0, 0, 1), 1234), (v4(10, 0, 0, 2), 80), TCP, &[10]),
            frame((v6(1), 5353), (v6(2), 53), UDP, &[100, 10]),
        ];
        for round in 0..200_000u32 {
            let frame = match round % 3 {
                0 => {
                    let len = (rng.next() % 200) as usize;
                    (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
                }
                _ => {
                    // A valid frame with a few bytes changed and maybe cut.
                    let mut frame = valid[(round % 2) as usize].clone();
                    for _ in 0..(rng.next() % 4 + 1) {
                        let at = (rng.next() as usize) % frame.len();
                        frame[at] = rng.next() as u8;
                    }
                    frame.truncate((rng.next() as usize) % (frame.len() + 1));
                    frame
                }
            };
            let workers = (rng.next() % 9) as usize;
            assert!(worker_for(&frame, workers) < workers.max(1));
        }
    }

    /// An in-memory hand-off with a capacity (the tests' stand-in for an
    /// `rte_ring`).
    #[derive(Clone)]
    struct MemHandoff {
        queue: Arc<Mutex<VecDeque<Vec<u8>>>>,
        capacity: usize,
    }

    impl MemHandoff {
        fn new(capacity: usize) -> Self {
            MemHandoff {
                queue: Arc::default(),
                capacity,
            }
        }
    }

    impl HandoffSender<Vec<u8>> for MemHandoff {
        fn send(&mut self, frames: &mut Vec<Vec<u8>>) -> usize {
            let mut queue = self.queue.lock().expect("lock");
            let fits = frames.len().min(self.capacity - queue.len());
            queue.extend(frames.drain(..fits));
            fits
        }
    }

    impl HandoffReceiver<Vec<u8>> for MemHandoff {
        fn receive(&mut self, out: &mut Vec<Vec<u8>>, max: usize) -> usize {
            let mut queue = self.queue.lock().expect("lock");
            let take = max.min(queue.len());
            out.extend(queue.drain(..take));
            take
        }
    }

    type MemSteered = SteeredPort<MemPort, MemHandoff, MemHandoff>;

    /// A port under software distribution for `workers` workers in memory:
    /// the wire side, the distributor's counters, and each worker's port
    /// (worker 0's reads the wire, the others their hand-off).
    fn distributed(
        workers: usize,
        capacity: usize,
    ) -> (MemPortControl, Arc<DistributionStats>, Arc<PortStats>, Vec<MemSteered>) {
        let (wire, control) = MemPort::new(SERVER_MAC);
        let handoffs: Vec<MemHandoff> = (1..workers).map(|_| MemHandoff::new(capacity)).collect();
        let stats = Arc::new(DistributionStats::default());
        let port_stats = Arc::new(PortStats::default());
        let outputs = std::iter::once(None)
            .chain(handoffs.iter().cloned().map(Some))
            .collect();
        let distributor = Distributor::new(outputs, Arc::clone(&stats), Arc::clone(&port_stats));
        let mut ports = vec![SteeredPort::new(wire, Receive::Distribute(distributor))];
        for handoff in handoffs {
            // The other workers transmit on queues of their own.
            let (own_queue, _) = MemPort::new(SERVER_MAC);
            ports.push(SteeredPort::new(own_queue, Receive::Handoff(handoff)));
        }
        (control, stats, port_stats, ports)
    }

    #[test]
    fn each_worker_receives_exactly_its_flows_in_order() {
        let workers = 3;
        let (control, stats, port_stats, mut ports) = distributed(workers, 1024);
        let mut rng = Rng(7);
        let mut sent = Vec::new();
        for index in 0..600u16 {
            let (a, b) = random_endpoints(&mut rng);
            let mut frame = frame(a, b, if index % 2 == 0 { TCP } else { UDP }, &[]);
            frame.extend(index.to_be_bytes()); // distinct, after the packet
            sent.push(frame.clone());
            control.inject(frame);
        }
        control.inject(vec![1, 2, 3]); // a runt: worker 0's
        sent.push(vec![1, 2, 3]);
        let mut received: Vec<Vec<Vec<u8>>> = vec![Vec::new(); workers];
        // Worker 0 distributes burst by burst; the others read afterwards.
        while control.pending_rx() > 0 {
            ports[0].rx_burst(&mut received[0], 32);
        }
        for (worker, port) in ports.iter_mut().enumerate().skip(1) {
            while port.rx_burst(&mut received[worker], 32) > 0 {}
        }
        for (worker, frames) in received.iter().enumerate() {
            let expected: Vec<_> = sent
                .iter()
                .filter(|f| worker_for(f, workers) == worker)
                .cloned()
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(frames, &expected, "worker {worker}");
        }
        let totals = stats.totals();
        assert_eq!(totals.kept, received[0].len() as u64);
        assert_eq!(totals.handed_off, (received[1].len() + received[2].len()) as u64);
        assert_eq!(totals.ring_full, 0);
        assert_eq!(port_stats.totals().rx, 0, "the engines count what they receive");
    }

    #[test]
    fn a_full_handoff_drops_and_counts() {
        let (control, stats, port_stats, mut ports) = distributed(2, 4);
        let mut rng = Rng(99);
        let mut for_worker_1 = 0;
        while for_worker_1 < 10 {
            let (a, b) = random_endpoints(&mut rng);
            let frame = frame(a, b, UDP, &[]);
            for_worker_1 += usize::from(worker_for(&frame, 2) == 1);
            control.inject(frame);
        }
        let injected = control.pending_rx() as u64;
        let mut mine = Vec::new();
        while control.pending_rx() > 0 {
            ports[0].rx_burst(&mut mine, 64);
        }
        let totals = stats.totals();
        assert_eq!(totals.handed_off, 4, "the hand-off holds 4");
        assert_eq!(totals.ring_full, for_worker_1 as u64 - 4);
        assert_eq!(totals.kept + totals.handed_off + totals.ring_full, injected);
        assert_eq!(mine.len() as u64, totals.kept);
        let counted = port_stats.totals();
        assert_eq!((counted.rx, counted.dropped), (totals.ring_full, totals.ring_full));
        let mut theirs = Vec::new();
        assert_eq!(ports[1].rx_burst(&mut theirs, 64), 4);
        assert!(theirs.iter().all(|frame| worker_for(frame, 2) == 1));
        assert!(stats.moved() >= 10);
    }
}
