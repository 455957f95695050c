//! An in-memory lab on a virtual clock: a client host and a server host
//! (smoltcp with Ethernet, so they resolve each other with ARP and NDP
//! through the appliance) wired to an [`Engine`] on two [`MemPort`]s by
//! links that can lose and reorder frames. No DPDK, no root, deterministic.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod connlog;
pub mod peer;
pub mod tls;
pub mod workers;

use std::collections::VecDeque;

use appliance::clock::{EngineStart, WallAnchor};
use appliance::counters::PortTotals;
use appliance::engine::{Engine, EngineStats, InterceptPolicy};
use appliance::splice::InspectionSettings;
use netstack::{Instant, StackConfig};
use port::{MemPort, MemPortControl};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const CLIENT_V4: [u8; 4] = [198, 18, 0, 1];
pub const SERVER_V4: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT_V6: &str = "2001:2::1";
pub const SERVER_V6: &str = "2001:2::2";

/// A host's NIC: frames in, frames out.
#[derive(Default)]
pub struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

pub struct Rx(Vec<u8>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub struct Tx<'a>(&'a mut Vec<Vec<u8>>);
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

/// A smoltcp host with an IPv4 and an IPv6 address on one Ethernet NIC.
pub struct Host {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: QueueDevice,
}

impl Host {
    pub fn new(mac: [u8; 6], v4: [u8; 4], v6: &str, seed: u64) -> Host {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut device = QueueDevice::default();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        let v6: std::net::Ipv6Addr = v6.parse().unwrap();
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(IpAddress::Ipv4(v4.into()), 24)).unwrap();
            addrs.push(IpCidr::new(IpAddress::Ipv6(v6), 64)).unwrap();
        });
        Host {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
        }
    }

    pub fn socket(&mut self, buffer: usize) -> SocketHandle {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        self.sockets.add(socket)
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub fn listen(&mut self, port: u16, buffer: usize) -> SocketHandle {
        let handle = self.socket(buffer);
        self.tcp(handle).listen(port).unwrap();
        handle
    }

    pub fn connect(&mut self, remote: IpEndpoint, local_port: u16, buffer: usize) -> SocketHandle {
        let handle = self.socket(buffer);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, remote, local_port)
            .unwrap();
        handle
    }

    /// A second IPv4 address (in 198.18.0.0/24) in place of the IPv6 one
    /// (smoltcp holds two), so that the host can act as a second client.
    pub fn second_v4_for_v6(&mut self, v4: [u8; 4]) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|cidr| matches!(cidr, IpCidr::Ipv4(_)));
            addrs.push(IpCidr::new(IpAddress::Ipv4(v4.into()), 24)).unwrap();
        });
    }

    /// Connects from one of the host's addresses.
    pub fn connect_from(&mut self, remote: IpEndpoint, local: IpEndpoint, buffer: usize) -> SocketHandle {
        let handle = self.socket(buffer);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, remote, local)
            .unwrap();
        handle
    }

    pub fn poll(&mut self, now: Instant) {
        let now = smoltcp::time::Instant::from_micros(now.total_micros());
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }
}

/// A one-way link that may lose and reorder frames (deterministically).
pub struct Link {
    pub loss_percent: u32,
    pub reorder_percent: u32,
    rng: u64,
    pub lost: u64,
    /// Frames that crossed, for inspection by tests.
    pub log: Option<Vec<Vec<u8>>>,
}

impl Link {
    pub fn new(seed: u64) -> Link {
        Link {
            loss_percent: 0,
            reorder_percent: 0,
            rng: seed | 1,
            lost: 0,
            log: None,
        }
    }

    fn roll(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 100) as u32
    }

    fn carry(&mut self, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(frames.len());
        for frame in frames {
            if self.loss_percent > 0 && self.roll() < self.loss_percent {
                self.lost += 1;
                continue;
            }
            if let Some(log) = self.log.as_mut() {
                log.push(frame.clone());
            }
            if self.reorder_percent > 0 && !out.is_empty() && self.roll() < self.reorder_percent {
                let at = out.len() - 1;
                out.insert(at, frame);
            } else {
                out.push(frame);
            }
        }
        out
    }
}

/// client host ⇄ [client port | engine | server port] ⇄ server host.
pub struct Lab {
    pub now: Instant,
    pub client: Host,
    pub server: Host,
    pub engine: Engine<MemPort>,
    pub client_port: MemPortControl,
    pub server_port: MemPortControl,
    pub stats: EngineStats,
    /// client → appliance, appliance → server, server → appliance, appliance → client.
    pub links: [Link; 4],
    /// When false, frames the appliance sends to the server vanish (a
    /// server that is gone).
    pub server_online: bool,
    /// When set (and the server is offline), a router on the server side
    /// answers each IPv4 TCP SYN with an ICMP host unreachable.
    pub server_unreachable: bool,
    /// The box between the inspection ports, when the engine has them.
    pub inspection: Option<InspectionBox>,
    /// Set once the engine was shut down: it is not polled any more.
    pub engine_stopped: bool,
}

/// What the in-memory inspection box does with the frames it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxMode {
    /// Passes everything (a bridge).
    Pass,
    /// Passes nothing (a box that stopped forwarding).
    Stopped,
    /// Replaces `old` by `new` (same length) in TCP payloads.
    Rewrite(&'static [u8], &'static [u8]),
    /// Resets both ends of a connection whose payload contains the marker
    /// (the segment with it is dropped).
    ResetOn(&'static [u8]),
}

/// A box on the inspection pair: carries frames from `inspect_out` to
/// `inspect_in` and back, and records the TCP payload it saw each way.
pub struct InspectionBox {
    pub out_port: MemPortControl,
    pub in_port: MemPortControl,
    pub mode: BoxMode,
    /// TCP payload bytes seen from the client side, from the server side.
    pub seen_up: Vec<u8>,
    pub seen_down: Vec<u8>,
    /// The box's links, each way: appliance → box and box → appliance on
    /// `inspect_out`, then the same on `inspect_in`.
    pub links: [Link; 4],
}

impl InspectionBox {
    /// Carries what each port transmitted to the other, as the mode says.
    fn carry(&mut self) {
        let from_out = self.links[0].carry(self.out_port.take_transmitted());
        let from_in = self.links[2].carry(self.in_port.take_transmitted());
        let mut to_out = Vec::new();
        let mut to_in = Vec::new();
        for (frames, up) in [(from_out, true), (from_in, false)] {
            for frame in frames {
                let (ahead, behind) = if up {
                    (&mut to_in, &mut to_out)
                } else {
                    (&mut to_out, &mut to_in)
                };
                self.handle(frame, up, ahead, behind);
            }
        }
        for frame in self.links[1].carry(to_out) {
            self.out_port.inject(frame);
        }
        for frame in self.links[3].carry(to_in) {
            self.in_port.inject(frame);
        }
    }

    /// What the box does with one frame: what it forwards goes `ahead`,
    /// what it sends back (a reset) `behind`.
    fn handle(&mut self, mut frame: Vec<u8>, up: bool, ahead: &mut Vec<Vec<u8>>, behind: &mut Vec<Vec<u8>>) {
        match self.mode {
            BoxMode::Stopped => return,
            BoxMode::Pass => {}
            BoxMode::Rewrite(old, new) => {
                if let Some(payload) = tcp_payload_mut(&mut frame) {
                    let mut at = 0;
                    while let Some(found) = payload[at..].windows(old.len()).position(|w| w == old) {
                        payload[at + found..at + found + old.len()].copy_from_slice(new);
                        at += found + old.len();
                    }
                    refill_tcp_checksum(&mut frame);
                }
            }
            BoxMode::ResetOn(marker) => {
                let payload = tcp_payload(&frame).unwrap_or_default();
                if payload.windows(marker.len()).any(|w| w == marker) {
                    let (toward_receiver, toward_sender) = resets_for(&frame);
                    ahead.push(toward_receiver);
                    behind.push(toward_sender);
                    return;
                }
            }
        }
        let payload = tcp_payload(&frame).unwrap_or_default().to_vec();
        if up {
            self.seen_up.extend_from_slice(&payload);
        } else {
            self.seen_down.extend_from_slice(&payload);
        }
        ahead.push(frame);
    }
}

/// The IPv4 packet in an Ethernet frame, if it carries one.
pub fn ipv4(frame: &[u8]) -> Option<smoltcp::wire::Ipv4Packet<&[u8]>> {
    use smoltcp::wire::{EthernetFrame, Ipv4Packet};
    Ipv4Packet::new_checked(EthernetFrame::new_checked(frame).ok()?.payload()).ok()
}

/// The TCP segment in an Ethernet frame, if it carries IPv4/TCP.
pub fn tcp(frame: &[u8]) -> Option<smoltcp::wire::TcpPacket<&[u8]>> {
    smoltcp::wire::TcpPacket::new_checked(ipv4(frame)?.payload()).ok()
}

/// The TCP payload of an untagged IPv4 frame.
pub fn tcp_payload(frame: &[u8]) -> Option<&[u8]> {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let ip = Ipv4Packet::new_checked(frame.get(14..)?).ok()?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
        return None;
    }
    let header = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(frame.get(14 + header..14 + usize::from(ip.total_len()))?).ok()?;
    let start = 14 + header + usize::from(tcp.header_len());
    frame.get(start..14 + usize::from(ip.total_len()))
}

fn tcp_payload_mut(frame: &mut [u8]) -> Option<&mut [u8]> {
    let len = tcp_payload(frame)?.len();
    let end = 14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    frame.get_mut(end - len..end)
}

fn refill_tcp_checksum(frame: &mut [u8]) {
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
    let (src, dst, header, total) = {
        let ip = Ipv4Packet::new_unchecked(&frame[14..]);
        (
            ip.src_addr(),
            ip.dst_addr(),
            usize::from(ip.header_len()),
            usize::from(ip.total_len()),
        )
    };
    let mut tcp = TcpPacket::new_unchecked(&mut frame[14 + header..14 + total]);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
}

/// A RST to the receiver of the IPv4 segment `frame` (its own sequence
/// number) and one to its sender (the sequence number it acknowledged).
fn resets_for(frame: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr};
    let ip = Ipv4Packet::new_unchecked(&frame[14..]);
    let header = usize::from(ip.header_len());
    let tcp = TcpPacket::new_unchecked(&frame[14 + header..14 + usize::from(ip.total_len())]);
    let build = |from_mac: &[u8], to_mac: &[u8], src, dst, src_port, dst_port, seq| {
        let tcp_repr = TcpRepr {
            src_port,
            dst_port,
            control: TcpControl::Rst,
            seq_number: seq,
            ack_number: None,
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip_repr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_repr.header_len(),
            hop_limit: 64,
        };
        let mut out = vec![0u8; 14 + ip_repr.buffer_len() + tcp_repr.header_len()];
        out[..6].copy_from_slice(to_mac);
        out[6..12].copy_from_slice(from_mac);
        out[12..14].copy_from_slice(&[0x08, 0x00]);
        let caps = ChecksumCapabilities::default();
        ip_repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[14..34]), &caps);
        tcp_repr.emit(
            &mut TcpPacket::new_unchecked(&mut out[34..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        out
    };
    let (src_mac, dst_mac) = (&frame[6..12], &frame[..6]);
    let toward_receiver = build(
        src_mac,
        dst_mac,
        ip.src_addr(),
        ip.dst_addr(),
        tcp.src_port(),
        tcp.dst_port(),
        tcp.seq_number(),
    );
    let toward_sender = build(
        dst_mac,
        src_mac,
        ip.dst_addr(),
        ip.src_addr(),
        tcp.dst_port(),
        tcp.src_port(),
        tcp.ack_number(),
    );
    (toward_receiver, toward_sender)
}

/// What the lab's engines start from: a fixed seed, and the machine's date
/// at the virtual clock's zero (the TLS clients check the forged
/// certificates against the machine's clock).
pub fn start() -> EngineStart {
    EngineStart {
        now: Instant::ZERO,
        wall: WallAnchor::new(std::time::SystemTime::now()),
        seed: 1,
    }
}

pub fn policy(tcp_ports: &[u16]) -> InterceptPolicy {
    InterceptPolicy {
        tcp_ports: tcp_ports.to_vec(),
        stack: StackConfig {
            rx_buffer: 32 * 1024,
            tx_buffer: 32 * 1024,
            timeout: netstack::Duration::from_secs(3),
            max_flows: 100_000,
            ..StackConfig::default()
        },
        hold_synack: true,
        ..InterceptPolicy::default()
    }
}

impl Lab {
    pub fn new(policy: &InterceptPolicy) -> Lab {
        Lab::with_engine(policy, |engine| engine)
    }

    /// Like [`Lab::new`], with the engine finished by `finish` (TLS
    /// interception, say).
    pub fn with_engine(policy: &InterceptPolicy, finish: impl FnOnce(Engine<MemPort>) -> Engine<MemPort>) -> Lab {
        let (client_port, client_ctl) = MemPort::new([2, 0, 0, 0, 0, 0xc]);
        let (server_port, server_ctl) = MemPort::new([2, 0, 0, 0, 0, 0x5]);
        let stats = EngineStats::default();
        let engine = finish(Engine::new(
            client_port,
            server_port,
            stats.clone(),
            32,
            policy,
            start(),
        ));
        Lab {
            now: Instant::ZERO,
            client: Host::new(CLIENT_MAC, CLIENT_V4, CLIENT_V6, 0x1111),
            server: Host::new(SERVER_MAC, SERVER_V4, SERVER_V6, 0x2222),
            engine,
            client_port: client_ctl,
            server_port: server_ctl,
            stats,
            links: [Link::new(1), Link::new(2), Link::new(3), Link::new(4)],
            server_online: true,
            server_unreachable: false,
            inspection: None,
            engine_stopped: false,
        }
    }

    /// A lab whose appliance sends the plaintext through an in-memory
    /// inspection box in `mode`.
    pub fn with_inspection(policy: &InterceptPolicy, settings: InspectionSettings, mode: BoxMode) -> Lab {
        Lab::with_inspection_and(policy, settings, mode, |engine| engine)
    }

    /// Like [`Lab::with_inspection`], with the engine finished by `finish`
    /// (TLS interception, a decrypted capture).
    pub fn with_inspection_and(
        policy: &InterceptPolicy,
        settings: InspectionSettings,
        mode: BoxMode,
        finish: impl FnOnce(Engine<MemPort>) -> Engine<MemPort>,
    ) -> Lab {
        let (out_port, out_ctl) = MemPort::new([2, 0, 0, 0, 0, 0x10]);
        let (in_port, in_ctl) = MemPort::new([2, 0, 0, 0, 0, 0x11]);
        let mut lab = Lab::with_engine(policy, |engine| {
            finish(engine.with_inspection(out_port, in_port, settings))
        });
        lab.inspection = Some(InspectionBox {
            out_port: out_ctl,
            in_port: in_ctl,
            mode,
            seen_up: Vec::new(),
            seen_down: Vec::new(),
            links: [Link::new(5), Link::new(6), Link::new(7), Link::new(8)],
        });
        lab
    }

    /// One millisecond of virtual time.
    pub fn step(&mut self) {
        self.step_around_engine(|poll| poll());
    }

    /// One millisecond of virtual time, the engine's poll run through
    /// `around` (which may measure it: it must call it once).
    pub fn step_around_engine(&mut self, around: impl FnOnce(&mut dyn FnMut())) {
        self.client.poll(self.now);
        for frame in self.links[0].carry(std::mem::take(&mut self.client.device.tx)) {
            self.client_port.inject(frame);
        }
        self.server.poll(self.now);
        for frame in self.links[2].carry(std::mem::take(&mut self.server.device.tx)) {
            self.server_port.inject(frame);
        }
        if !self.engine_stopped {
            let (engine, now) = (&mut self.engine, self.now);
            around(&mut || {
                engine.poll(now);
            });
        }
        if let Some(inspection) = self.inspection.as_mut() {
            inspection.carry();
        }
        let to_server = self.links[1].carry(self.server_port.take_transmitted());
        if self.server_online {
            self.server.device.rx.extend(to_server);
        } else if self.server_unreachable {
            for error in to_server.iter().filter_map(|frame| icmp_host_unreachable(frame)) {
                self.server_port.inject(error);
            }
        }
        let to_client = self.links[3].carry(self.client_port.take_transmitted());
        self.client.device.rx.extend(to_client);
        self.now += netstack::Duration::from_millis(1);
    }

    /// Steps until `done` holds, at most `limit_ms`; returns whether it held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&mut Lab) -> bool) -> bool {
        for _ in 0..limit_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    pub fn totals(&self, port: usize) -> PortTotals {
        self.stats.ports[port].totals()
    }
}

pub fn v4(addr: [u8; 4], port: u16) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(addr.into()), port)
}

pub fn v6(addr: &str, port: u16) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv6(addr.parse().unwrap()), port)
}

/// Deterministic test data: `len` bytes depending on `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i >> 8) as u8)
        })
        .collect()
}

/// Moves bytes between a host socket and in-memory buffers: sends what is
/// left of `outgoing`, receives into `incoming`.
pub fn exchange(host: &mut Host, handle: SocketHandle, outgoing: &mut &[u8], incoming: &mut Vec<u8>) {
    let socket = host.tcp(handle);
    if socket.can_send() && !outgoing.is_empty() {
        let sent = socket.send_slice(outgoing).unwrap_or(0);
        *outgoing = &outgoing[sent..];
    }
    while socket.can_recv() {
        let mut buf = [0u8; 4096];
        let read = socket.recv_slice(&mut buf).unwrap_or(0);
        if read == 0 {
            break;
        }
        incoming.extend_from_slice(&buf[..read]);
    }
}

/// What a router answers to an IPv4 TCP SYN it cannot deliver: an ICMP host
/// unreachable quoting the IP header and the first 8 bytes of the segment.
pub fn icmp_host_unreachable(frame: &[u8]) -> Option<Vec<u8>> {
    use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 || frame[47] & 0x12 != 0x02 {
        return None;
    }
    let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&frame[14..14 + 20 + 8]);
    Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&SERVER_V4);
    ip.extend_from_slice(&frame[26..30]);
    Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
    // From the router (the server's MAC here) back to the SYN's sender.
    let mut reply = frame[6..12].to_vec();
    reply.extend_from_slice(&frame[0..6]);
    reply.extend_from_slice(&[0x08, 0x00]);
    reply.extend_from_slice(&ip);
    reply.extend_from_slice(&icmp);
    Some(reply)
}

/// Opens a connection from the client and accepts it at the server.
pub fn connect(lab: &mut Lab, server: IpEndpoint, local_port: u16) -> (SocketHandle, SocketHandle) {
    let listener = lab.server.listen(server.port, 64 * 1024);
    let client = lab.client.connect(server, local_port, 64 * 1024);
    let up = lab.run_until(2_000, |lab| {
        lab.client.tcp(client).state() == State::Established && lab.server.tcp(listener).state() == State::Established
    });
    assert!(
        up,
        "handshake: client {:?}, server {:?}",
        lab.client.tcp(client).state(),
        lab.server.tcp(listener).state()
    );
    (client, listener)
}

/// Sends `up` client→server and `down` server→client at once, then closes
/// both ends; checks both arrive byte-exact.
pub fn transfer(lab: &mut Lab, client: SocketHandle, server: SocketHandle, up: &[u8], down: &[u8], limit_ms: u64) {
    transfer_with(lab, client, server, up, down, limit_ms, |_, _| {});
}

/// Like [`transfer`], calling `during` at every millisecond with the lab
/// and how many bytes arrived at the server and at the client so far.
pub fn transfer_with(
    lab: &mut Lab,
    client: SocketHandle,
    server: SocketHandle,
    up: &[u8],
    down: &[u8],
    limit_ms: u64,
    mut during: impl FnMut(&mut Lab, (usize, usize)),
) {
    let (mut to_server, mut to_client) = (up, down);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let done = lab.run_until(limit_ms, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut at_client);
        exchange(&mut lab.server, server, &mut to_client, &mut at_server);
        during(lab, (at_server.len(), at_client.len()));
        at_server.len() == up.len() && at_client.len() == down.len()
    });
    assert!(
        done,
        "transfer stalled: {} of {} up, {} of {} down",
        at_server.len(),
        up.len(),
        at_client.len(),
        down.len()
    );
    assert!(at_server == up, "client → server bytes differ");
    assert!(at_client == down, "server → client bytes differ");
}

pub fn close_both(lab: &mut Lab, client: SocketHandle, server: SocketHandle) {
    lab.client.tcp(client).close();
    lab.server.tcp(server).close();
    let closed = lab.run_until(5_000, |lab| {
        matches!(lab.client.tcp(client).state(), State::TimeWait | State::Closed)
            && matches!(lab.server.tcp(server).state(), State::TimeWait | State::Closed)
    });
    assert!(
        closed,
        "close: client {:?}, server {:?}",
        lab.client.tcp(client).state(),
        lab.server.tcp(server).state()
    );
}

/// After every connection closed, TIME-WAIT included, nothing is left.
pub fn assert_no_leaks(lab: &mut Lab) {
    let clean = lab.run_until(30_000, |lab| lab.engine.stack().live_flows() == 0);
    assert!(clean, "flows left: {}", lab.engine.stack().live_flows());
    let counters = lab.engine.stack().counters();
    assert_eq!(counters.flows_created, counters.flows_freed, "{counters:?}");
    assert_eq!(lab.engine.splicer().counters().sessions_live, 0);
    assert_eq!(lab.engine.splicer().counters().tls_sessions_live, 0);
    assert_eq!(lab.engine.stack().buffer_bytes(), 0);
}
