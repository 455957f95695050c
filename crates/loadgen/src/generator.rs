//! The generator: both populations on one transparent TCP stack with two
//! ports, rustls on each connection, opened at the plan's rate.
//!
//! What a client sends after its handshake (a synthetic request or a
//! replayed capture flow) and what the origin answers are written into
//! rustls piecewise, as the socket takes them, so neither side buffers more
//! than [`PENDING_LIMIT`] of ciphertext whatever their size. For a replayed
//! flow the origin finds the flow by the client's address and port (both
//! ends live in this generator, so the client records them at connect) and
//! checks the request byte for byte before it answers.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use netstack::{EventKind, FlowId, Instant, L2Header, OutFrame, Stack, StackConfig, TxFrames};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use slab::Slab;
use wire::FlowTuple;

use crate::plan::{Hold, Plan};
use crate::replay::PayloadCheck;
use crate::stats::Stats;

/// The port facing the appliance's client port (the clients live here).
pub const CLIENT_SIDE: usize = 0;
/// The port facing the appliance's server port (the origins live here).
pub const SERVER_SIDE: usize = 1;

/// Owner tags of server-side flows carry this bit.
const SERVER_TAG: u64 = 1 << 63;
/// At most this many new connections are opened per poll.
const OPEN_BURST: u64 = 64;
/// Plaintext is written into rustls only while less ciphertext than this
/// waits for the socket.
const PENDING_LIMIT: usize = 16 * 1024;
/// Plaintext is written into rustls in pieces of at most this size.
const CHUNK: usize = 4 * 1024;
static SPACES: [u8; CHUNK] = [b' '; CHUNK];
static XS: [u8; CHUNK] = [b'x'; CHUNK];

/// Bytes to send: `head`, then `fill` bytes up to `total`.
#[derive(Clone, Copy)]
struct Source<'a> {
    head: &'a [u8],
    total: usize,
    fill: &'static [u8; CHUNK],
}

impl Source<'_> {
    /// The next piece from `at` on (empty at the end).
    fn chunk(&self, at: usize) -> &[u8] {
        let want = self.total.saturating_sub(at).min(CHUNK);
        match self.head.get(at..) {
            Some(rest) if !rest.is_empty() => rest.get(..want.min(rest.len())).unwrap_or_default(),
            _ => self.fill.get(..want).unwrap_or_default(),
        }
    }
}

/// A response being written: the HTTP-like head and its size.
struct Response {
    head: Vec<u8>,
    total: usize,
    sent: usize,
}

impl Response {
    /// `HTTP/1.1 200 OK` with `bytes` as Content-Length, padded with `x` to
    /// `bytes` in all (never shorter than the head).
    fn new(bytes: usize) -> Response {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\n\r\n").into_bytes();
        Response {
            total: bytes.max(head.len()),
            head,
            sent: 0,
        }
    }
}

/// A replayed request the origin is receiving.
struct OriginReplay {
    /// The flow's position in the plan's replay.
    flow: usize,
    check: PayloadCheck,
    /// What was counted for this connection: byte-exact or not.
    verdict: Option<bool>,
}

/// A client connection's TLS, while it is needed.
struct ClientConn {
    flow: FlowId,
    /// The connection's index in the plan.
    index: u64,
    tls: Option<Box<ClientConnection>>,
    /// TLS bytes not yet taken by the socket.
    pending: Vec<u8>,
    started: Instant,
    handshake_done: bool,
    /// Request bytes written into rustls so far.
    request_sent: usize,
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
    /// Set when the connection replays a flow.
    replay: Option<OriginReplay>,
    response: Option<Response>,
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
    /// The synthetic request's head (with the SNI as Host).
    request_head: Vec<u8>,
    /// Replay: the flow each client endpoint sends, from its connect until
    /// the origin accepts it.
    replay_flows: HashMap<SocketAddr, usize>,
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

/// Feeds what the flow received into rustls, from where it lies in the
/// flow's receive buffer, moving the plaintext it decrypts into
/// `plaintext` as it goes (rustls refuses more input while 16 KiB of
/// plaintext wait in it); `Err` on a TLS error.
fn feed_tls<D: rustls::SideData>(
    stack: &mut Stack,
    flow: FlowId,
    tls: &mut rustls::ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let mut outcome = Ok(());
    while outcome.is_ok() {
        let read = stack
            .recv_in_place(flow, usize::MAX, 0, |received, _| {
                outcome = feed_received(tls, received, plaintext);
                received.len()
            })
            .unwrap_or(0);
        if read == 0 {
            break;
        }
    }
    outcome
}

/// Feeds `input` into rustls (all of it, unless the stream ended or
/// rustls failed), moving the plaintext it decrypts into `plaintext`.
fn feed_received<D: rustls::SideData>(
    tls: &mut rustls::ConnectionCommon<D>,
    mut input: &[u8],
    plaintext: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    while !input.is_empty() {
        let taken = tls.read_tls(&mut input);
        tls.process_new_packets()?;
        let drained = read_plaintext(tls, |bytes| plaintext.extend_from_slice(bytes));
        if matches!(taken, Ok(0) | Err(_)) && drained == 0 {
            // Nothing taken and nothing to make room: the connection
            // is closed for reading; what is left cannot be read.
            return Err(rustls::Error::General(format!(
                "{} received bytes after the end of the TLS stream",
                input.len()
            )));
        }
    }
    Ok(())
}

/// Writes `source` from `*sent` on into rustls, and what rustls makes of
/// it into `pending`, while less than [`PENDING_LIMIT`] waits there.
fn write_source<D: rustls::SideData>(
    tls: &mut rustls::ConnectionCommon<D>,
    pending: &mut Vec<u8>,
    source: Source<'_>,
    sent: &mut usize,
) {
    while *sent < source.total && pending.len() < PENDING_LIMIT {
        match tls.writer().write(source.chunk(*sent)) {
            Ok(written) if written > 0 => *sent += written,
            _ => break,
        }
        while tls.wants_write() {
            if tls.write_tls(pending).is_err() {
                break;
            }
        }
    }
}

/// What connection `index` sends after its handshake, and the response
/// size it then waits for; `None` when it sends nothing.
fn client_work<'a>(plan: &'a Plan, request_head: &'a [u8], index: u64) -> Option<(Source<'a>, usize)> {
    if let Some(replay) = &plan.replay {
        let (_, flow) = replay.flow_for(index)?;
        let source = Source {
            head: &flow.payload,
            total: flow.payload.len(),
            fill: &SPACES,
        };
        return Some((source, replay.response_bytes(flow)));
    }
    let exchange = plan.exchange?;
    let source = Source {
        head: request_head,
        total: exchange.request_bytes.max(request_head.len()),
        fill: &SPACES,
    };
    Some((source, exchange.response_bytes))
}

/// Reads the plaintext rustls holds into `sink`, straight from rustls'
/// buffer; returns how much.
fn read_plaintext<D: rustls::SideData>(tls: &mut rustls::ConnectionCommon<D>, mut sink: impl FnMut(&[u8])) -> usize {
    let mut reader = tls.reader();
    let mut total = 0;
    while let Ok(chunk) = reader.fill_buf() {
        if chunk.is_empty() {
            break;
        }
        sink(chunk);
        let read = chunk.len();
        reader.consume(read);
        total += read;
    }
    total
}

/// Reads and discards the plaintext rustls holds; returns how much.
fn drain_plaintext<D: rustls::SideData>(tls: &mut rustls::ConnectionCommon<D>) -> usize {
    read_plaintext(tls, |_| {})
}

impl Generator {
    /// A generator for `plan`: clients trust what `client_config` trusts,
    /// the origins present `server_config`'s certificate; `seed` seeds its
    /// stack's initial sequence numbers (see [`Stack::new`]).
    pub fn new(
        plan: Plan,
        stack: StackConfig,
        client_config: Arc<ClientConfig>,
        server_config: Arc<ServerConfig>,
        now: Instant,
        seed: u64,
    ) -> Result<Generator, rustls::pki_types::InvalidDnsNameError> {
        let server_name = ServerName::try_from(plan.server_name.clone())?;
        let request_head = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", plan.server_name).into_bytes();
        Ok(Generator {
            plan,
            stack: Stack::new(2, stack, now, seed),
            client_config,
            server_config,
            server_name,
            clients: Slab::new(),
            servers: Slab::new(),
            started: now,
            stats: Stats::default(),
            frames_ignored: 0,
            request_head,
            replay_flows: HashMap::new(),
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
            let client = SocketAddr::new(tuple.src_ip, tuple.src_port);
            self.accept(frame, &class, client, now);
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

    /// Frames to send, with the port each leaves on (with the default
    /// sink; see [`Generator::set_tx_frames`]).
    pub fn drain_output(&mut self, out: &mut Vec<OutFrame>) {
        self.stack.drain_output(out);
    }

    /// Makes `frames` the sink the stack writes the frames to send into
    /// ([`Stack::set_tx_frames`]): the ports' own buffers, say.
    pub fn set_tx_frames(&mut self, frames: Box<dyn TxFrames>) {
        self.stack.set_tx_frames(frames);
    }

    /// The sink set with [`Generator::set_tx_frames`], as its type `T`,
    /// for the caller to send every frame queued in it.
    pub fn take_tx_frames<T: TxFrames>(&mut self) -> Option<&mut T> {
        self.stack.take_tx_frames()
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
                        index,
                        tls: None,
                        pending: Vec::new(),
                        started: now,
                        handshake_done: false,
                        request_sent: 0,
                        received: 0,
                        done: false,
                    });
                    self.stats.live += 1;
                    if let Some((position, _)) = self.plan.replay.as_ref().and_then(|replay| replay.flow_for(index)) {
                        self.replay_flows.insert(client, position);
                    }
                }
                Err(_) => self.stats.resets += 1,
            }
        }
    }

    fn accept(&mut self, frame: &[u8], class: &wire::FrameClass, client: SocketAddr, now: Instant) {
        let entry = self.servers.vacant_entry();
        let owner = SERVER_TAG | entry.key() as u64;
        let Ok(flow) = self.stack.accept(SERVER_SIDE, frame, class, false, owner, now) else {
            return;
        };
        let replay = match self.plan.replay {
            Some(_) => match self.replay_flows.remove(&client) {
                Some(flow) => Some(OriginReplay {
                    flow,
                    check: PayloadCheck::new(),
                    verdict: None,
                }),
                None => {
                    // No connection of ours: nothing to check it against.
                    self.stats.replay_mismatches += 1;
                    let _ = self.stack.abort(flow);
                    return;
                }
            },
            None => None,
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
            replay,
            response: None,
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
                let connection = conn.index;
                self.forget_replay(connection);
            }
            EventKind::Closed => {
                let connection = conn.index;
                self.clients.remove(index);
                self.stats.live = self.stats.live.saturating_sub(1);
                self.forget_replay(connection);
            }
        }
    }

    /// Drops the record of the flow connection `index` replays, if the
    /// origin never took it (the SYN never arrived there).
    fn forget_replay(&mut self, index: u64) {
        if self.plan.replay.is_some() && !self.replay_flows.is_empty() {
            if let Some((client, _)) = self.plan.endpoints(index) {
                self.replay_flows.remove(&client);
            }
        }
    }

    fn pump_client(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.clients.get_mut(index) else {
            return;
        };
        let work = client_work(&self.plan, &self.request_head, conn.index);
        let Some(tls) = conn.tls.as_deref_mut() else {
            return;
        };
        let mut plaintext = Vec::new();
        if let Err(error) = feed_tls(&mut self.stack, conn.flow, tls, &mut plaintext) {
            self.stats.record_tls_error("client", &error);
            conn.tls = None;
            conn.done = true;
            let _ = self.stack.abort(conn.flow);
            return;
        }
        if !conn.handshake_done && !tls.is_handshaking() {
            conn.handshake_done = true;
            self.stats.record_handshake((now - conn.started).total_micros());
        }
        if conn.handshake_done {
            if let Some((source, _)) = work {
                write_source(tls, &mut conn.pending, source, &mut conn.request_sent);
            }
        }
        conn.received += plaintext.len() + drain_plaintext(tls);
        let done = conn.handshake_done
            && work.is_none_or(|(source, response)| conn.request_sent >= source.total && conn.received >= response);
        let flushed = flush_tls(&mut self.stack, conn.flow, tls, &mut conn.pending);
        if done && flushed && conn.pending.is_empty() {
            if work.is_some() {
                self.stats.exchanges += 1;
            }
            // Idle from now on: the TLS state and the emptied queue are no
            // longer needed.
            conn.tls = None;
            conn.pending = Vec::new();
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
        let mut plaintext = Vec::new();
        if let Err(error) = feed_tls(&mut self.stack, conn.flow, tls, &mut plaintext) {
            self.stats.record_tls_error("origin", &error);
            conn.tls = None;
            let _ = self.stack.abort(conn.flow);
            return;
        }
        let handshaken = !tls.is_handshaking();
        let replayed = conn
            .replay
            .as_ref()
            .and_then(|origin| self.plan.replay.as_ref()?.flows().get(origin.flow));
        match (&mut conn.replay, replayed) {
            (Some(origin), Some(flow)) => {
                let expected = &flow.payload;
                origin.check.feed(expected, &plaintext);
                conn.received += plaintext.len() + read_plaintext(tls, |bytes| origin.check.feed(expected, bytes));
                let verdict = origin.check.verdict(expected);
                match (origin.verdict, verdict) {
                    (None, Some(exact)) => {
                        // The whole request is here (or it already differs): count it, answer it.
                        origin.verdict = Some(exact);
                        if exact {
                            self.stats.replayed += 1;
                            self.stats.replayed_bytes += expected.len() as u64;
                        } else {
                            self.stats.replay_mismatches += 1;
                        }
                    }
                    (Some(true), Some(false)) => {
                        // More bytes came after the whole request.
                        origin.verdict = Some(false);
                        self.stats.replayed = self.stats.replayed.saturating_sub(1);
                        self.stats.replayed_bytes = self.stats.replayed_bytes.saturating_sub(expected.len() as u64);
                        self.stats.replay_mismatches += 1;
                    }
                    _ => {}
                }
                if handshaken && !conn.answered && origin.check.received() >= expected.len() {
                    conn.answered = true;
                    let bytes = self
                        .plan
                        .replay
                        .as_ref()
                        .map_or(0, |replay| replay.response_bytes(flow));
                    if bytes > 0 {
                        conn.response = Some(Response::new(bytes));
                    }
                }
            }
            _ => {
                conn.received += plaintext.len() + drain_plaintext(tls);
                match self.plan.exchange {
                    Some(exchange) if handshaken && !conn.answered && conn.received >= exchange.request_bytes => {
                        conn.answered = true;
                        conn.response = Some(Response::new(exchange.response_bytes));
                    }
                    None if handshaken => conn.answered = true,
                    _ => {}
                }
            }
        }
        if let Some(response) = &mut conn.response {
            let source = Source {
                head: &response.head,
                total: response.total,
                fill: &XS,
            };
            write_source(tls, &mut conn.pending, source, &mut response.sent);
        }
        let responded = conn
            .response
            .as_ref()
            .is_none_or(|response| response.sent >= response.total);
        let flushed = flush_tls(&mut self.stack, conn.flow, tls, &mut conn.pending);
        if conn.answered && responded && flushed && conn.pending.is_empty() && !tls.wants_write() {
            // Idle from now on: the TLS state and the emptied queue are no
            // longer needed.
            conn.tls = None;
            conn.pending = Vec::new();
            conn.response = None;
        }
    }
}
