//! The `engine` target: the whole engine on [`MemPort`]s, in the in-memory
//! lab of the appliance's tests (`crates/appliance/tests/harness`): a
//! client host and an origin host that open real connections through the
//! engine (TLS intercepted with a test CA, or plain TCP splicing), and a
//! fuzz input that, between steps of the virtual clock, injects frames on
//! all four ports (client, server, and the two inspection ports): raw
//! bytes, segments built for the live connections, and mutated copies of
//! frames that crossed the links; it also drops and reorders frames, stops
//! the origin or the inspection box, and jumps the clock.
//!
//! At the end every connection is aborted and the clock runs far ahead:
//! nothing may panic, and no flow, session or buffer may be left.
//!
//! Input: byte 0 sets up the lab (bit 0: TLS, bit 1: an inspection box,
//! bits 2-3: its mode, bit 4: hold the SYN-ACK, bit 5: the box fails open,
//! bit 6: refuse untrusted origins); then operations, one byte of kind and
//! their arguments each, until the input ends (see [`Op`]).

use std::io::{Read, Write};
use std::net::SocketAddr;

use appliance::config::InspectFailure;
use appliance::splice::InspectionSettings;
use mitm::InvalidUpstream;
use netstack::Duration;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};
use smoltcp::iface::SocketHandle;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use wire::{classify, EthernetHeader, SegmentControl, TcpSegment};

use crate::harness::{self, BoxMode, Host, Lab};
use crate::pki;

pub use crate::harness::SERVER_V4;

/// The intercepted port the client connects to.
const ORIGIN_PORT: u16 = 443;
/// The first local port of the client's connections.
const FIRST_LOCAL_PORT: u16 = 49_152;
/// At most this many connections per input.
const MAX_CONNECTIONS: usize = 4;
/// At most this many operations per input, and milliseconds stepped.
const MAX_OPS: usize = 256;
const MAX_STEPPED_MS: u64 = 4_000;
const SOCKET_BUFFER: usize = 32 * 1024;

/// One connection of the client host to the origin host.
struct Connection {
    client: SocketHandle,
    server: SocketHandle,
    /// Both ends' TLS, when the lab intercepts TLS.
    tls: Option<(ClientConnection, ServerConnection)>,
    /// Plaintext the client still has to send; the origin echoes it.
    to_send: Vec<u8>,
    echo: Vec<u8>,
    /// Plaintext the client received, and how many bytes of it in all.
    received: Vec<u8>,
    received_total: usize,
}

/// The bytes of the input, read front to back; zeros once it ends.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The operations, by kind byte (modulo their number).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `ms`: step the lab 1..=64 ms, the applications moving their data.
    Step,
    /// Open a connection (IPv6 if the argument is odd).
    Connect,
    /// `port, len: u16, bytes`: a raw frame received on a port.
    Raw,
    /// `link, index, port, count, (offset: u16, xor)*count, fix`: a frame
    /// that crossed a link, mutated, received on a port (checksums
    /// refreshed if `fix` is odd).
    Mutate,
    /// `link, index, port, control, seq delta: u16, ack delta: u16, len,
    /// bytes`: a well-formed segment of a connection that crossed a link.
    Segment,
    /// `link, loss, reorder`: frames lost and reordered on a link, in percent.
    Lossy,
    /// Stops or restarts the origin's network.
    Origin,
    /// `connection, what, len`: the client sends `len`×8 bytes, closes, or
    /// aborts (either end).
    App,
    /// `mode`: the inspection box's mode.
    BoxMode,
    /// `seconds`: the clock jumps ahead without steps in between.
    Jump,
}

const OPS: [Op; 10] = [
    Op::Step,
    Op::Connect,
    Op::Raw,
    Op::Mutate,
    Op::Segment,
    Op::Lossy,
    Op::Origin,
    Op::App,
    Op::BoxMode,
    Op::Jump,
];

/// Runs the lab as `data` says; panics on a panic in the engine or on a
/// flow, session or buffer left at the end.
pub fn engine(data: &[u8]) {
    let mut input = Input(data);
    let setup = input.byte();
    let mut driver = Driver::new(setup);
    let mut stepped = 0;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = OPS[usize::from(input.byte()) % OPS.len()];
        match op {
            Op::Step => {
                let ms = u64::from(input.byte() % 64) + 1;
                if stepped + ms > MAX_STEPPED_MS {
                    break;
                }
                stepped += ms;
                driver.run(ms);
            }
            Op::Connect => driver.connect(input.byte() % 2 == 1),
            Op::Raw => {
                let port = input.byte();
                let len = usize::from(input.u16() % 2048);
                let frame = input.bytes(len).to_vec();
                driver.inject(port, frame);
            }
            Op::Mutate => {
                let (link, index, port, count) = (input.byte(), input.u16(), input.byte(), input.byte() % 8);
                let edits: Vec<(u16, u8)> = (0..count).map(|_| (input.u16(), input.byte())).collect();
                let fix = input.byte() % 2 == 1;
                driver.mutate(link, index, port, &edits, fix);
            }
            Op::Segment => {
                let (link, index, port, control) = (input.byte(), input.u16(), input.byte(), input.byte());
                let (seq_delta, ack_delta) = (input.u16(), input.u16());
                let len = usize::from(input.byte());
                let payload = input.bytes(len).to_vec();
                driver.segment(link, index, port, control, (seq_delta, ack_delta), &payload);
            }
            Op::Lossy => {
                let link = &mut driver.lab.links[usize::from(input.byte()) % 4];
                link.loss_percent = u32::from(input.byte() % 101);
                link.reorder_percent = u32::from(input.byte() % 101);
            }
            Op::Origin => driver.lab.server_online = !driver.lab.server_online,
            Op::App => {
                let (connection, what, len) = (input.byte(), input.byte(), input.byte());
                driver.app(connection, what, len);
            }
            Op::BoxMode => {
                let mode = box_mode(input.byte());
                if let Some(inspection) = driver.lab.inspection.as_mut() {
                    inspection.mode = mode;
                }
            }
            Op::Jump => driver.lab.now += Duration::from_secs(u64::from(input.byte() % 16)),
        }
    }
    driver.finish();
}

fn box_mode(selector: u8) -> BoxMode {
    match selector % 4 {
        0 => BoxMode::Pass,
        1 => BoxMode::Stopped,
        2 => BoxMode::Rewrite(b"GET", b"PUT"),
        _ => BoxMode::ResetOn(b"RESET"),
    }
}

struct Driver {
    lab: Lab,
    connections: Vec<Connection>,
    /// The appliance CA's certificate, when TLS is intercepted.
    ca: Option<rustls::pki_types::CertificateDer<'static>>,
}

impl Driver {
    fn new(setup: u8) -> Driver {
        let tls = setup & 1 == 1;
        let mut policy = harness::policy(&[ORIGIN_PORT]);
        policy.hold_synack = setup & 0x10 != 0;
        let invalid = if setup & 0x40 != 0 {
            InvalidUpstream::Refuse
        } else {
            InvalidUpstream::Mirror
        };
        let (context, ca) = if tls {
            let (context, ca) = pki::appliance(invalid);
            (Some(context), Some(ca))
        } else {
            (None, None)
        };
        let finish = |engine: appliance::engine::Engine<port::MemPort>| match context {
            Some(context) => engine.with_tls(context),
            None => engine,
        };
        let mut lab = if setup & 2 != 0 {
            let settings = InspectionSettings {
                failure: if setup & 0x20 != 0 {
                    InspectFailure::FailOpen
                } else {
                    InspectFailure::FailClosed
                },
                syn_timeout: Duration::from_millis(500),
                timeout: Duration::from_secs(3),
            };
            Lab::with_inspection_and(&policy, settings, box_mode(setup >> 2), finish)
        } else {
            let mut lab = Lab::new(&policy);
            lab.engine = finish(lab.engine);
            lab
        };
        for link in &mut lab.links {
            link.log = Some(Vec::new());
        }
        Driver {
            lab,
            connections: Vec::new(),
            ca,
        }
    }

    fn connect(&mut self, v6: bool) {
        if self.connections.len() >= MAX_CONNECTIONS {
            return;
        }
        let local_port = FIRST_LOCAL_PORT + self.connections.len() as u16;
        let remote = if v6 {
            harness::v6(harness::SERVER_V6, ORIGIN_PORT)
        } else {
            harness::v4(SERVER_V4, ORIGIN_PORT)
        };
        let server = self.lab.server.listen(ORIGIN_PORT, SOCKET_BUFFER);
        let client = self.lab.client.connect(remote, local_port, SOCKET_BUFFER);
        let tls = self
            .ca
            .as_ref()
            .map(|ca| (pki::client_connection(ca, &[b"http/1.1"]), pki::origin_connection()));
        self.connections.push(Connection {
            client,
            server,
            tls,
            to_send: b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec(),
            echo: Vec::new(),
            received: Vec::new(),
            received_total: 0,
        });
    }

    /// Steps the lab `ms` milliseconds, moving the applications' data.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            for connection in &mut self.connections {
                connection.pump(&mut self.lab);
            }
            self.lab.step();
        }
    }

    /// The engine receives `frame` on a port (its client, server,
    /// inspect_out and inspect_in ports; the last two are the client and
    /// server ports without a box).
    fn inject(&mut self, port: u8, frame: Vec<u8>) {
        match (port % 4, self.lab.inspection.as_ref()) {
            (2, Some(inspection)) => inspection.out_port.inject(frame),
            (3, Some(inspection)) => inspection.in_port.inject(frame),
            (0 | 2, _) => self.lab.client_port.inject(frame),
            _ => self.lab.server_port.inject(frame),
        }
    }

    /// A frame that crossed `link`, if any did.
    fn logged(&self, link: u8, index: u16) -> Option<&Vec<u8>> {
        let log = self.lab.links[usize::from(link) % 4].log.as_ref()?;
        log.get(usize::from(index) % log.len().max(1))
    }

    fn mutate(&mut self, link: u8, index: u16, port: u8, edits: &[(u16, u8)], fix: bool) {
        let Some(mut frame) = self.logged(link, index).cloned() else {
            return;
        };
        for &(offset, xor) in edits {
            let len = frame.len();
            if let Some(byte) = frame.get_mut(usize::from(offset) % len.max(1)) {
                *byte ^= xor;
            }
        }
        if fix {
            refresh_checksums(&mut frame);
        }
        self.inject(port, frame);
    }

    fn segment(&mut self, link: u8, index: u16, port: u8, control: u8, (seq, ack): (u16, u16), payload: &[u8]) {
        let Some(template) = self.logged(link, index) else {
            return;
        };
        let Ok(class) = classify(template) else {
            return;
        };
        let Some((flow, info)) = class.tcp() else {
            return;
        };
        // Deltas around the template's numbers, both ways (i16 range).
        let shift = |number: u32, delta: u16| number.wrapping_add_signed(i32::from(delta.cast_signed()));
        let segment = TcpSegment {
            src_mac: class.l2.src_addr().0,
            dst_mac: class.l2.dst_addr().0,
            src: SocketAddr::new(flow.src_ip, flow.src_port),
            dst: SocketAddr::new(flow.dst_ip, flow.dst_port),
            seq: shift(info.seq_number, seq),
            ack: (control & 0x80 == 0).then(|| shift(info.ack_number, ack)),
            control: match control % 5 {
                0 => SegmentControl::None,
                1 => SegmentControl::Psh,
                2 => SegmentControl::Syn,
                3 => SegmentControl::Fin,
                _ => SegmentControl::Rst,
            },
            window: info.window,
            payload,
        };
        let mut frame = Vec::new();
        if segment.write(&mut frame).is_ok() {
            self.inject(port, frame);
        }
    }

    fn app(&mut self, connection: u8, what: u8, len: u8) {
        let count = self.connections.len();
        let Some(connection) = self.connections.get_mut(usize::from(connection) % count.max(1)) else {
            return;
        };
        match what % 4 {
            0 => connection.to_send.extend(harness::pattern(usize::from(len) * 8, what)),
            1 => {
                if let Some((client, _)) = connection.tls.as_mut() {
                    client.send_close_notify();
                }
                self.lab.client.tcp(connection.client).close();
            }
            2 => self.lab.client.tcp(connection.client).abort(),
            _ => self.lab.server.tcp(connection.server).abort(),
        }
    }

    /// Aborts every connection, heals the network, runs the clock far
    /// ahead and checks that the engine holds nothing any more.
    fn finish(mut self) {
        self.wind_down();
        self.assert_nothing_left();
    }

    fn wind_down(&mut self) {
        for connection in &self.connections {
            self.lab.client.tcp(connection.client).abort();
            self.lab.server.tcp(connection.server).abort();
        }
        for link in &mut self.lab.links {
            link.loss_percent = 0;
            link.reorder_percent = 0;
        }
        self.lab.server_online = true;
        for _ in 0..10 {
            self.lab.run_for(5);
            self.lab.now += Duration::from_secs(30);
        }
        self.lab.run_for(5);
    }

    fn assert_nothing_left(&self) {
        let engine = &self.lab.engine;
        let (stack, splice) = (engine.stack(), engine.splicer().counters());
        assert_eq!(stack.live_flows(), 0, "flows left: {:?}", stack.counters());
        assert_eq!(splice.sessions_live, 0, "sessions left: {splice:?}");
        assert_eq!(splice.tls_sessions_live, 0, "TLS sessions left: {splice:?}");
        assert_eq!(stack.buffer_bytes(), 0, "socket buffers left");
    }
}

impl Connection {
    /// Moves this connection's bytes between the hosts' sockets and the
    /// applications (through TLS when there is TLS).
    fn pump(&mut self, lab: &mut Lab) {
        match self.tls.as_mut() {
            Some((client, server)) => {
                if client.wants_write() || !self.to_send.is_empty() {
                    let sent = client.writer().write(&self.to_send).unwrap_or(0);
                    self.to_send.drain(..sent);
                }
                let client_ok = pump_tls(&mut lab.client, self.client, client, &mut self.received);
                if !self.echo.is_empty() {
                    let sent = server.writer().write(&self.echo).unwrap_or(0);
                    self.echo.drain(..sent);
                }
                let server_ok = pump_tls(&mut lab.server, self.server, server, &mut self.echo);
                if !client_ok {
                    lab.client.tcp(self.client).abort();
                }
                if !server_ok {
                    lab.server.tcp(self.server).abort();
                }
            }
            None => {
                let mut to_send: &[u8] = &self.to_send;
                harness::exchange(&mut lab.client, self.client, &mut to_send, &mut self.received);
                let sent = self.to_send.len() - to_send.len();
                self.to_send.drain(..sent);
                let mut echo: &[u8] = &self.echo;
                let mut incoming = Vec::new();
                harness::exchange(&mut lab.server, self.server, &mut echo, &mut incoming);
                let echoed = self.echo.len() - echo.len();
                self.echo.drain(..echoed);
                self.echo.extend_from_slice(&incoming);
            }
        }
        // Bounded: what nobody reads is only counted.
        self.received_total += self.received.len();
        self.received.clear();
        self.echo.truncate(SOCKET_BUFFER);
    }
}

/// Moves TLS records between `tls` and a host socket and appends the
/// plaintext it yields to `plaintext`; false once the TLS connection failed.
fn pump_tls<D: SideData>(
    host: &mut Host,
    handle: SocketHandle,
    tls: &mut ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> bool {
    let socket = host.tcp(handle);
    while tls.wants_write() && socket.can_send() {
        let mut records = Vec::new();
        if tls.write_tls(&mut records).is_err() {
            return false;
        }
        // What the socket cannot take now is lost: the connection then
        // fails, which is one more thing the appliance must survive.
        let _ = socket.send_slice(&records);
    }
    while socket.can_recv() {
        let mut buf = [0u8; 4096];
        let read = socket.recv_slice(&mut buf).unwrap_or(0);
        if read == 0 {
            break;
        }
        let mut input = &buf[..read];
        while !input.is_empty() {
            if tls.read_tls(&mut input).is_err() || tls.process_new_packets().is_err() {
                return false;
            }
        }
        let mut chunk = [0u8; 4096];
        while let Ok(read) = tls.reader().read(&mut chunk) {
            if read == 0 {
                break;
            }
            plaintext.extend_from_slice(&chunk[..read]);
        }
    }
    true
}

/// Recomputes the IPv4 header checksum and the TCP checksum of `frame`,
/// where they can be found.
fn refresh_checksums(frame: &mut [u8]) {
    let Ok(ethernet) = EthernetHeader::parse(frame) else {
        return;
    };
    if ethernet.ethertype() == 0x0800 {
        if let Some(Ok(mut ip)) = frame.get_mut(ethernet.header_len()..).map(Ipv4Packet::new_checked) {
            ip.fill_checksum();
        }
    }
    let Ok(class) = classify(frame) else {
        return;
    };
    let (Some((flow, _)), Some(range)) = (class.tcp(), class.l4_range()) else {
        return;
    };
    let (src, dst) = (IpAddress::from(flow.src_ip), IpAddress::from(flow.dst_ip));
    if let Some(segment) = frame.get_mut(range) {
        TcpPacket::new_unchecked(segment).fill_checksum(&src, &dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab the fuzzer starts from works: a request crosses the engine
    /// and comes back echoed, intercepted when TLS is on.
    #[test]
    fn connections_carry_data_with_and_without_tls() {
        for setup in [0x00, 0x01, 0x03, 0x12] {
            let mut driver = Driver::new(setup);
            driver.connect(setup & 0x10 != 0);
            let request = driver.connections[0].to_send.len();
            driver.run(500);
            assert_eq!(driver.connections[0].received_total, request, "setup {setup:#x}");
            let intercepted = driver.lab.engine.splicer().counters().tls_intercepted;
            assert_eq!(intercepted, u64::from(setup & 1), "setup {setup:#x}");
            driver.lab.client.tcp(driver.connections[0].client).close();
            driver.run(500);
            driver.wind_down();
            driver.assert_nothing_left();
        }
    }
}
