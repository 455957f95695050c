//! Transparent TCP splice: each intercepted connection is two flows of the
//! stack, the client leg (accepted on the client port as the server) and the
//! server leg (connected from the server port as the client). Bytes are
//! relayed between them with back-pressure (a leg is only read while the
//! other has room), half-closes and resets are propagated, and a failed
//! server connect is answered to the client as the server would have.

use std::sync::Arc;

use mitm::{SessionInfo, TlsContext, TlsSession};
use netstack::{Event, EventKind, FlowId, Instant, L2Header, Stack, StackError};
use slab::Slab;
use time::OffsetDateTime;
use wire::FlowTuple;
use wire::FrameClass;

use crate::connlog::{ConnectionLog, ConnectionRecord};

use crate::engine::Side;

/// Which leg of a session a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Client,
    Server,
}

struct Session {
    client: Option<FlowId>,
    server: Option<FlowId>,
    /// The initial sequence number of the client's SYN.
    client_isn: u32,
    /// The server accepted and the client's SYN-ACK was released.
    established: bool,
    /// The server leg failed before it was established; the client leg
    /// has been answered accordingly.
    failed: bool,
    /// FIN already passed on to the client / the server.
    fin_to_client: bool,
    fin_to_server: bool,
    /// TLS interception (mode "tls"); `None` splices the bytes untouched.
    tls: Option<Box<TlsSession>>,
    /// For the connection log.
    started: OffsetDateTime,
    tuple: FlowTuple,
    /// TCP payload bytes received from the client and from the server.
    bytes: (u64, u64),
    /// How it ended, when not by an orderly close.
    ended: Option<String>,
    /// What TLS told about it, kept when the TLS session is dropped.
    tls_info: Option<SessionInfo>,
}

/// Ciphertext waiting for one leg beyond which the other leg is not read
/// (back-pressure across the TLS layer).
const TLS_BACKLOG: usize = 64 * 1024;

/// Counters of the splice layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpliceCounters {
    pub sessions_opened: u64,
    pub sessions_live: u64,
    pub server_refused: u64,
    pub server_timed_out: u64,
    pub server_unreachable: u64,
    pub resets: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// TLS sessions whose handshakes both completed.
    pub tls_intercepted: u64,
    /// TLS sessions that failed (client or server handshake, bad records).
    pub tls_failed: u64,
}

/// All spliced sessions of one worker.
#[derive(Default)]
pub struct Splicer {
    sessions: Slab<Session>,
    hold_synack: bool,
    counters: SpliceCounters,
    tls: Option<TlsContext>,
    log: Option<Arc<ConnectionLog>>,
}

/// The connection-log record of a session that ended.
fn record(session: Session, tls_mode: bool) -> ConnectionRecord {
    let end = OffsetDateTime::now_utc();
    let rfc3339 = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let endpoint = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port).to_string();
    let info = session.tls.map(|tls| tls.info).or(session.tls_info).unwrap_or_default();
    let verified = info.upstream_verified.clone();
    ConnectionRecord {
        start: rfc3339(session.started),
        end: rfc3339(end),
        duration_ms: u64::try_from((end - session.started).whole_milliseconds()).unwrap_or(0),
        port: "client",
        protocol: "tcp",
        client: endpoint(session.tuple.src_ip, session.tuple.src_port),
        server: endpoint(session.tuple.dst_ip, session.tuple.dst_port),
        decision: if tls_mode { "intercept" } else { "splice" },
        reason: format!("destination port {} is intercepted", session.tuple.dst_port),
        sni: info.sni,
        alpn_offered: info.alpn_offered,
        alpn: info.alpn,
        client_tls_version: info.client_version,
        client_cipher: info.client_cipher,
        client_resumed: info.resumed_client,
        server_tls_version: info.server_version,
        server_cipher: info.server_cipher,
        upstream_cert_sha256: info.upstream_fingerprint,
        upstream_verified: verified.as_ref().map(Result::is_ok),
        upstream_verify_error: verified.and_then(Result::err),
        forged_cert_sha256: info.forged_fingerprint,
        forged_cache_hit: info.forged_cache_hit,
        bytes_client_to_server: session.bytes.0,
        bytes_server_to_client: session.bytes.1,
        plaintext_client_to_server: info.plaintext_client_to_server,
        plaintext_server_to_client: info.plaintext_server_to_client,
        ended: session.ended.unwrap_or_else(|| "closed".into()),
    }
}

fn owner(session: usize, leg: Leg) -> u64 {
    (session as u64) << 1 | u64::from(leg == Leg::Server)
}

fn session_of(owner: u64) -> (usize, Leg) {
    let leg = if owner & 1 == 1 { Leg::Server } else { Leg::Client };
    ((owner >> 1) as usize, leg)
}

impl Splicer {
    pub fn new(hold_synack: bool) -> Self {
        Splicer {
            sessions: Slab::new(),
            hold_synack,
            counters: SpliceCounters::default(),
            tls: None,
            log: None,
        }
    }

    /// Writes a record of every session that ends to `log`.
    pub fn set_log(&mut self, log: Arc<ConnectionLog>) {
        self.log = Some(log);
    }

    /// Intercepts TLS on every new session with `context`.
    pub fn set_tls(&mut self, context: TlsContext) {
        self.tls = Some(context);
    }

    /// The TLS context, for its forging counters.
    pub fn tls(&self) -> Option<&TlsContext> {
        self.tls.as_ref()
    }

    pub fn counters(&self) -> SpliceCounters {
        self.counters
    }

    /// Opens a session for a client SYN that arrived on the client port:
    /// accepts it transparently and connects to the server as the client.
    pub fn open(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
    ) -> Result<(), StackError> {
        let (tuple, info) = class.tcp().ok_or(StackError::NotASyn)?;
        // Legs of an earlier connection with the same 5-tuple that linger
        // in TIME-WAIT make way for the new one.
        for leg in [
            stack.lookup(Side::Client.index(), tuple),
            stack.lookup(Side::Server.index(), &tuple.reversed()),
        ]
        .into_iter()
        .flatten()
        {
            if stack.state(leg) == Ok(netstack::TcpState::TimeWait) {
                stack.discard(leg);
            }
        }
        let entry = self.sessions.vacant_entry();
        let index = entry.key();
        let client = stack.accept(
            Side::Client.index(),
            frame,
            class,
            self.hold_synack,
            owner(index, Leg::Client),
            now,
        )?;
        let server = match stack.connect(
            Side::Server.index(),
            tuple,
            L2Header::same_direction(&class.l2),
            owner(index, Leg::Server),
            now,
        ) {
            Ok(server) => server,
            Err(err) => {
                stack.discard(client);
                return Err(err);
            }
        };
        entry.insert(Session {
            client: Some(client),
            server: Some(server),
            client_isn: info.seq_number,
            established: !self.hold_synack,
            failed: false,
            fin_to_client: false,
            fin_to_server: false,
            tls: self.tls.as_ref().map(|_| Box::new(TlsSession::new(tuple.dst_ip))),
            started: OffsetDateTime::now_utc(),
            tuple: *tuple,
            bytes: (0, 0),
            ended: None,
            tls_info: None,
        });
        self.counters.sessions_opened += 1;
        self.counters.sessions_live += 1;
        Ok(())
    }

    /// An ICMP destination-unreachable error arrived about the SYN of the
    /// server leg `server`. If that leg is still connecting, the session
    /// ends silently on both legs and the client's ISN is returned: the
    /// caller passes the error on to the client quoting that number, so the
    /// client learns of it exactly as it would without the appliance.
    pub fn server_unreachable(&mut self, stack: &mut Stack, server: FlowId) -> Option<u32> {
        let (index, leg) = session_of(stack.owner(server).ok()?);
        let session = self.sessions.get_mut(index)?;
        if leg != Leg::Server || session.server != Some(server) || session.established || session.failed {
            return None;
        }
        session.failed = true;
        session.ended = Some("server unreachable (ICMP)".into());
        self.counters.server_unreachable += 1;
        stack.discard(server);
        if let Some(client) = session.client {
            stack.discard(client);
        }
        Some(session.client_isn)
    }

    /// Reacts to every pending event of the stack.
    pub fn handle_events(&mut self, stack: &mut Stack) {
        while let Some(event) = stack.next_event() {
            self.handle(stack, event);
        }
    }

    fn handle(&mut self, stack: &mut Stack, event: Event) {
        let (index, leg) = session_of(event.owner);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let (this, other) = match leg {
            Leg::Client => (session.client, session.server),
            Leg::Server => (session.server, session.client),
        };
        if this != Some(event.flow) {
            return;
        }
        match event.kind {
            EventKind::Connected if leg == Leg::Server => {
                if let (Some(client), false) = (session.client, session.established) {
                    session.established = true;
                    let _ = stack.release_synack(client);
                }
                Self::pump(&mut self.counters, self.tls.as_mut(), stack, session);
            }
            EventKind::Connected | EventKind::Readable | EventKind::Writable | EventKind::PeerClosed => {
                Self::pump(&mut self.counters, self.tls.as_mut(), stack, session);
            }
            EventKind::Reset | EventKind::TimedOut => {
                let Some(other) = other else { return };
                if leg == Leg::Server && !session.established {
                    session.failed = true;
                    // The server refused (RST) or never answered: tell the
                    // client exactly that, a RST or nothing at all.
                    if event.kind == EventKind::Reset {
                        self.counters.server_refused += 1;
                        session.ended = Some("server refused".into());
                        let _ = stack.abort(other);
                    } else {
                        self.counters.server_timed_out += 1;
                        session.ended = Some("server silent".into());
                        stack.discard(other);
                    }
                } else {
                    self.counters.resets += 1;
                    let how = if event.kind == EventKind::Reset {
                        "reset"
                    } else {
                        "timed out"
                    };
                    let side = if leg == Leg::Client { "client" } else { "server" };
                    session.ended.get_or_insert_with(|| format!("{how} by the {side}"));
                    let _ = stack.abort(other);
                }
            }
            EventKind::Closed => {
                match leg {
                    Leg::Client => session.client = None,
                    Leg::Server => session.server = None,
                }
                if let Some(other) = other {
                    // The other leg still runs: a leg that vanished while the
                    // other could still talk means the connection is broken.
                    if session.failed {
                        // Already answered (RST queued, or silence).
                    } else if leg == Leg::Server && !session.established {
                        stack.discard(other);
                    } else if !(Self::leg_finished(stack, other) || session.fin_to_client && session.fin_to_server) {
                        let _ = stack.abort(other);
                    }
                }
                if session.client.is_none() && session.server.is_none() {
                    let session = self.sessions.remove(index);
                    self.counters.sessions_live -= 1;
                    if let Some(log) = &self.log {
                        log.write(&record(session, self.tls.is_some()));
                    }
                }
            }
        }
    }

    /// Moves ciphertext between the legs and the TLS session until nothing
    /// moves: pending output first, then input from a leg only while the
    /// output towards the other leg is below [`TLS_BACKLOG`].
    fn pump_tls(
        counters: &mut SpliceCounters,
        context: &mut TlsContext,
        tls: &mut TlsSession,
        stack: &mut Stack,
        (client, server): (FlowId, FlowId),
        bytes: &mut (u64, u64),
    ) -> Result<(), mitm::MitmError> {
        let mut buf = [0u8; 16 * 1024];
        let was_established = tls.info.client_version.is_some();
        for _ in 0..64 {
            let mut progress = false;
            let sent = stack.send(client, tls.to_client()).unwrap_or(0);
            tls.to_client().drain(..sent);
            progress |= sent > 0;
            let sent = stack.send(server, tls.to_server()).unwrap_or(0);
            tls.to_server().drain(..sent);
            progress |= sent > 0;
            if tls.to_server().len() < TLS_BACKLOG {
                let read = stack.recv(client, &mut buf).unwrap_or(0);
                if read > 0 {
                    counters.bytes_client_to_server += read as u64;
                    bytes.0 += read as u64;
                    tls.from_client(context, buf.get(..read).unwrap_or_default())?;
                    progress = true;
                }
            }
            if tls.to_client().len() < TLS_BACKLOG {
                let read = stack.recv(server, &mut buf).unwrap_or(0);
                if read > 0 {
                    counters.bytes_server_to_client += read as u64;
                    bytes.1 += read as u64;
                    tls.from_server(context, buf.get(..read).unwrap_or_default())?;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        if !was_established && tls.info.client_version.is_some() {
            counters.tls_intercepted += 1;
        }
        Ok(())
    }

    fn leg_finished(stack: &Stack, flow: FlowId) -> bool {
        stack.peer_finished(flow).unwrap_or(true)
    }

    /// Relays both ways as far as buffers allow (through the TLS session in
    /// mode "tls") and passes on FINs once a direction has delivered
    /// everything.
    fn pump(counters: &mut SpliceCounters, tls: Option<&mut TlsContext>, stack: &mut Stack, session: &mut Session) {
        let (Some(client), Some(server)) = (session.client, session.server) else {
            return;
        };
        if !session.established {
            return;
        }
        if let (Some(tls_session), Some(context)) = (session.tls.as_deref_mut(), tls) {
            if let Err(err) = Self::pump_tls(
                counters,
                context,
                tls_session,
                stack,
                (client, server),
                &mut session.bytes,
            ) {
                tracing::info!("TLS interception failed: {err}");
                counters.tls_failed += 1;
                session.ended = Some(format!("TLS failed: {err}"));
                session.tls_info = session.tls.take().map(|tls| tls.info);
                session.failed = true;
                let _ = stack.abort(client);
                let _ = stack.abort(server);
                return;
            }
            // A leg's FIN is passed on once everything before it went out.
            let (to_client_empty, to_server_empty) =
                (tls_session.to_client().is_empty(), tls_session.to_server().is_empty());
            if !session.fin_to_server && to_server_empty && stack.peer_finished(client).unwrap_or(false) {
                session.fin_to_server = true;
                let _ = stack.close(server);
            }
            if !session.fin_to_client && to_client_empty && stack.peer_finished(server).unwrap_or(false) {
                session.fin_to_client = true;
                let _ = stack.close(client);
            }
            return;
        }
        let up = stack.relay(client, server).unwrap_or(0) as u64;
        let down = stack.relay(server, client).unwrap_or(0) as u64;
        counters.bytes_client_to_server += up;
        counters.bytes_server_to_client += down;
        session.bytes.0 += up;
        session.bytes.1 += down;
        if !session.fin_to_server && stack.peer_finished(client).unwrap_or(false) {
            session.fin_to_server = true;
            let _ = stack.close(server);
        }
        if !session.fin_to_client && stack.peer_finished(server).unwrap_or(false) {
            session.fin_to_client = true;
            let _ = stack.close(client);
        }
    }
}
