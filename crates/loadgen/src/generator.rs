//! The generator: both populations on one transparent TCP stack with two
//! ports, rustls on each connection, opened at the plan's rate.

use std::io::{Read, Write};
use std::sync::Arc;

use netstack::{EventKind, FlowId, Instant, L2Header, OutFrame, Stack, StackConfig};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use slab::Slab;
use wire::FlowTuple;

use crate::plan::{Hold, Plan};
use crate::stats::Stats;

/// The port facing the appliance's client port (the clients live here).
pub const CLIENT_SIDE: usize = 0;
/// The port facing the appliance's server port (the origins live here).
pub const SERVER_SIDE: usize = 1;

/// Owner tags of server-side flows carry this bit.
const SERVER_TAG: u64 = 1 << 63;
/// At most this many new connections are opened per poll.
const OPEN_BURST: u64 = 64;

/// A client connection's TLS, while it is needed.
struct ClientConn {
    flow: FlowId,
    tls: Option<Box<ClientConnection>>,
    /// TLS bytes not yet taken by the socket.
    pending: Vec<u8>,
    started: Instant,
    handshake_done: bool,
    /// Response bytes received so far.
    received: usize,
    /// Held idle, closed, or failed: nothing more to do.
    done: bool,
}

struct ServerConn {
    flow: FlowId,
    tls: Option<Box<ServerConnection>>,
    pending: Vec<u8>,
    /// Request bytes received so far.
    received: usize,
    answered: bool,
}

/// Client and server populations generating TLS connections.
pub struct Generator {
    plan: Plan,
    stack: Stack,
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
    server_name: ServerName<'static>,
    clients: Slab<ClientConn>,
    servers: Slab<ServerConn>,
    started: Instant,
    stats: Stats,
    frames_ignored: u64,
}

/// Moves what rustls wants to send into `pending`, and as much of `pending`
/// as the socket takes into the flow; false if the flow is gone.
fn flush_tls<D: rustls::SideData>(
    stack: &mut Stack,
    flow: FlowId,
    tls: &mut rustls::ConnectionCommon<D>,
    pending: &mut Vec<u8>,
) -> bool {
    while tls.wants_write() {
        if tls.write_tls(pending).is_err() {
            break;
        }
    }
    match stack.send(flow, pending) {
        Ok(sent) => {
            pending.drain(..sent);
            true
        }
        Err(_) => false,
    }
}

/// Feeds what the flow received into rustls; `Err` on a TLS error.
fn feed_tls<D: rustls::SideData>(
    stack: &mut Stack,
    flow: FlowId,
    tls: &mut rustls::ConnectionCommon<D>,
) -> Result<(), rustls::Error> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = stack.recv(flow, &mut buf).unwrap_or(0);
        if read == 0 {
            return Ok(());
        }
        let mut input = buf.get(..read).unwrap_or_default();
        while !input.is_empty() {
            match tls.read_tls(&mut input) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            tls.process_new_packets()?;
        }
    }
}

/// Reads and discards the plaintext rustls holds; returns how much.
fn drain_plaintext<D: rustls::SideData>(tls: &mut rustls::ConnectionCommon<D>) -> usize {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    while let Ok(read) = tls.reader().read(&mut buf) {
        if read == 0 {
            break;
        }
        total += read;
    }
    total
}

impl Generator {
    /// A generator for `plan`: clients trust what `client_config` trusts,
    /// the origins present `server_config`'s certificate.
    pub fn new(
        plan: Plan,
        stack: StackConfig,
        client_config: Arc<ClientConfig>,
        server_config: Arc<ServerConfig>,
        now: Instant,
    ) -> Result<Generator, rustls::pki_types::InvalidDnsNameError> {
        let server_name = ServerName::try_from(plan.server_name.clone())?;
        Ok(Generator {
            plan,
            stack: Stack::new(2, stack, now),
            client_config,
            server_config,
            server_name,
            clients: Slab::new(),
            servers: Slab::new(),
            started: now,
            stats: Stats::default(),
            frames_ignored: 0,
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Frames that belonged to no connection of the generator.
    pub fn frames_ignored(&self) -> u64 {
        self.frames_ignored
    }

    /// Whether every planned connection has been opened and is done (held
    /// idle, closed or failed).
    pub fn finished(&self) -> bool {
        self.stats.opened == self.plan.connections && self.clients.iter().all(|(_, conn)| conn.done)
    }

    /// A frame received on `port` (CLIENT_SIDE or SERVER_SIDE).
    pub fn receive(&mut self, port: usize, frame: &[u8], now: Instant) {
        let Ok(class) = wire::classify(frame) else {
            self.frames_ignored += 1;
            return;
        };
        let Some((tuple, info)) = class.tcp() else {
            self.frames_ignored += 1;
            return;
        };
        if let Some(flow) = self.stack.lookup(port, tuple) {
            let _ = self.stack.ingress(flow, frame, &class, now);
        } else if port == SERVER_SIDE && info.flags.syn && !info.flags.ack {
            self.accept(frame, &class, now);
        } else {
            self.frames_ignored += 1;
        }
    }

    /// Opens the connections that are due, runs the timers and reacts to
    /// everything that happened.
    pub fn poll(&mut self, now: Instant) {
        self.open_due(now);
        self.stack.poll_timers(now);
        self.handle_events(now);
        self.stack.flush(now);
        self.handle_events(now);
    }

    /// Frames to send, with the port each leaves on.
    pub fn drain_output(&mut self, out: &mut Vec<OutFrame>) {
        self.stack.drain_output(out);
    }

    fn open_due(&mut self, now: Instant) {
        let elapsed = (now - self.started).total_micros();
        let due = u64::try_from(u128::from(elapsed) * u128::from(self.plan.rate) / 1_000_000).unwrap_or(u64::MAX);
        let target = due.min(self.plan.connections);
        let mut opened_now = 0;
        while self.stats.opened < target && opened_now < OPEN_BURST {
            opened_now += 1;
            let index = self.stats.opened;
            self.stats.opened += 1;
            let Some((client, server)) = self.plan.endpoints(index) else {
                continue;
            };
            let tuple = FlowTuple {
                src_ip: client.ip(),
                dst_ip: server.ip(),
                src_port: client.port(),
                dst_port: server.port(),
            };
            let entry = self.clients.vacant_entry();
            let l2 = L2Header::new(self.plan.server_mac, self.plan.client_mac, &[]);
            match self.stack.connect(CLIENT_SIDE, &tuple, l2, entry.key() as u64, now) {
                Ok(flow) => {
                    entry.insert(ClientConn {
                        flow,
                        tls: None,
                        pending: Vec::new(),
                        started: now,
                        handshake_done: false,
                        received: 0,
                        done: false,
                    });
                    self.stats.live += 1;
                }
                Err(_) => self.stats.resets += 1,
            }
        }
    }

    fn accept(&mut self, frame: &[u8], class: &wire::FrameClass, now: Instant) {
        let entry = self.servers.vacant_entry();
        let owner = SERVER_TAG | entry.key() as u64;
        let Ok(flow) = self.stack.accept(SERVER_SIDE, frame, class, false, owner, now) else {
            return;
        };
        let Ok(tls) = ServerConnection::new(Arc::clone(&self.server_config)) else {
            self.stack.discard(flow);
            return;
        };
        entry.insert(ServerConn {
            flow,
            tls: Some(Box::new(tls)),
            pending: Vec::new(),
            received: 0,
            answered: false,
        });
        self.stats.accepted += 1;
    }

    fn handle_events(&mut self, now: Instant) {
        while let Some(event) = self.stack.next_event() {
            if event.owner & SERVER_TAG != 0 {
                self.server_event((event.owner & !SERVER_TAG) as usize, event.flow, event.kind);
            } else {
                self.client_event(event.owner as usize, event.flow, event.kind, now);
            }
        }
    }

    fn client_event(&mut self, index: usize, flow: FlowId, kind: EventKind, now: Instant) {
        let Some(conn) = self.clients.get_mut(index).filter(|conn| conn.flow == flow) else {
            return;
        };
        match kind {
            EventKind::Connected => {
                self.stats.connected += 1;
                match ClientConnection::new(Arc::clone(&self.client_config), self.server_name.clone()) {
                    Ok(tls) => conn.tls = Some(Box::new(tls)),
                    Err(_) => {
                        self.stats.tls_errors += 1;
                        conn.done = true;
                        let _ = self.stack.abort(flow);
                        return;
                    }
                }
                self.pump_client(index, now);
            }
            EventKind::Readable | EventKind::Writable => self.pump_client(index, now),
            EventKind::PeerClosed => {
                let _ = self.stack.close(flow);
            }
            EventKind::Reset | EventKind::TimedOut => {
                if kind == EventKind::Reset {
                    self.stats.resets += 1;
                } else {
                    self.stats.timeouts += 1;
                }
                conn.tls = None;
                conn.done = true;
            }
            EventKind::Closed => {
                self.clients.remove(index);
                self.stats.live = self.stats.live.saturating_sub(1);
            }
        }
    }

    fn pump_client(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.clients.get_mut(index) else {
            return;
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return;
        };
        if let Err(error) = feed_tls(&mut self.stack, conn.flow, tls) {
            self.stats.record_tls_error("client", &error);
            conn.tls = None;
            conn.done = true;
            let _ = self.stack.abort(conn.flow);
            return;
        }
        if !conn.handshake_done && !tls.is_handshaking() {
            conn.handshake_done = true;
            self.stats.record_handshake((now - conn.started).total_micros());
            if let Some(exchange) = self.plan.exchange {
                let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.plan.server_name).into_bytes();
                request.resize(exchange.request_bytes.max(request.len()), b' ');
                let _ = tls.writer().write_all(&request);
            }
        }
        conn.received += drain_plaintext(tls);
        let done = conn.handshake_done
            && self
                .plan
                .exchange
                .is_none_or(|exchange| conn.received >= exchange.response_bytes);
        let flushed = flush_tls(&mut self.stack, conn.flow, tls, &mut conn.pending);
        if done && flushed && conn.pending.is_empty() {
            if self.plan.exchange.is_some() {
                self.stats.exchanges += 1;
            }
            // Idle from now on: the TLS state is no longer needed.
            conn.tls = None;
            conn.done = true;
            if self.plan.hold == Hold::Close {
                let _ = self.stack.close(conn.flow);
            }
        }
    }

    fn server_event(&mut self, index: usize, flow: FlowId, kind: EventKind) {
        let Some(conn) = self.servers.get_mut(index).filter(|conn| conn.flow == flow) else {
            return;
        };
        match kind {
            EventKind::Connected | EventKind::Readable | EventKind::Writable => self.pump_server(index),
            EventKind::PeerClosed => {
                conn.tls = None;
                let _ = self.stack.close(flow);
            }
            EventKind::Reset | EventKind::TimedOut => conn.tls = None,
            EventKind::Closed => {
                self.servers.remove(index);
            }
        }
    }

    fn pump_server(&mut self, index: usize) {
        let Some(conn) = self.servers.get_mut(index) else {
            return;
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return;
        };
        if let Err(error) = feed_tls(&mut self.stack, conn.flow, tls) {
            self.stats.record_tls_error("origin", &error);
            conn.tls = None;
            let _ = self.stack.abort(conn.flow);
            return;
        }
        conn.received += drain_plaintext(tls);
        let handshaken = !tls.is_handshaking();
        match self.plan.exchange {
            Some(exchange) if handshaken && !conn.answered && conn.received >= exchange.request_bytes => {
                conn.answered = true;
                let mut response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", exchange.response_bytes).into_bytes();
                response.resize(exchange.response_bytes.max(response.len()), b'x');
                let _ = tls.writer().write_all(&response);
            }
            None if handshaken => conn.answered = true,
            _ => {}
        }
        let flushed = flush_tls(&mut self.stack, conn.flow, tls, &mut conn.pending);
        if conn.answered && flushed && conn.pending.is_empty() && !tls.wants_write() {
            // Idle from now on: the TLS state is no longer needed.
            conn.tls = None;
        }
    }
}
