//! Transparent TCP splice: each intercepted connection is two flows of the
//! stack, the client leg (accepted on the client port as the server) and the
//! server leg (connected from the server port as the client). Bytes are
//! relayed between them with back-pressure (a leg is only read while the
//! other has room), half-closes and resets are propagated, and a failed
//! server connect is answered to the client as the server would have.

use std::sync::Arc;

use mitm::{MitmError, Pending, SessionInfo, TlsContext, TlsSession};
use netstack::{Event, EventKind, FlowId, Instant, L2Header, Stack, StackError};
use slab::Slab;
use time::OffsetDateTime;
use wire::FlowTuple;
use wire::FrameClass;

use crate::connlog::{ConnectionLog, ConnectionRecord};
use crate::policy::{Action, Policy, Verdict};

use crate::engine::Side;

/// Which leg of a session a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Client,
    Server,
}

impl Session {
    fn new(tuple: FlowTuple, started: OffsetDateTime, client_isn: u32) -> Session {
        Session {
            client: None,
            server: None,
            client_isn,
            established: false,
            failed: false,
            fin_to_client: false,
            fin_to_server: false,
            tls: None,
            started,
            tuple,
            bytes: (0, 0),
            ended: None,
            tls_info: None,
            decision: None,
            bypass_backlog: Vec::new(),
            logged: false,
        }
    }
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
    /// The policy's decision, once made.
    decision: Option<Verdict>,
    /// Client bytes read by the TLS layer before a bypass, still to be sent
    /// to the server (before anything else the client sends).
    bypass_backlog: Vec<u8>,
    /// The connection-log record was written (when both directions had
    /// closed, not when the appliance's legs leave TIME-WAIT).
    logged: bool,
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
    /// Connections the policy bypassed or blocked.
    pub bypassed: u64,
    pub blocked: u64,
    /// Names fail-open started to bypass.
    pub failed_open: u64,
    /// Servers bypassed from then on because they ask for client certificates.
    pub client_auth_bypassed: u64,
}

impl std::ops::AddAssign for SpliceCounters {
    fn add_assign(&mut self, other: SpliceCounters) {
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
        self.bypassed += other.bypassed;
        self.blocked += other.blocked;
        self.failed_open += other.failed_open;
        self.client_auth_bypassed += other.client_auth_bypassed;
    }
}

/// All spliced sessions of one worker.
pub struct Splicer {
    sessions: Slab<Session>,
    hold_synack: bool,
    counters: SpliceCounters,
    tls: Option<TlsContext>,
    log: Option<Arc<ConnectionLog>>,
    policy: Policy,
    /// The clock of fail-open windows.
    epoch: std::time::Instant,
}

/// Sends as much of `queue` as `leg` takes now; true if anything went.
fn send_queued(stack: &mut Stack, leg: FlowId, queue: &mut Vec<u8>) -> bool {
    let sent = stack.send(leg, queue).unwrap_or(0);
    queue.drain(..sent);
    sent > 0
}

/// Whether a client's alert says it rejected the forged certificate (as a
/// client that pins certificates does).
fn rejected_our_certificate(err: &MitmError) -> bool {
    use rustls::AlertDescription as Alert;
    matches!(
        err,
        MitmError::Client(rustls::Error::AlertReceived(
            Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
        ))
    )
}

/// The connection-log record of a session that ended.
fn record(session: &Session, tls_mode: bool) -> ConnectionRecord {
    let end = OffsetDateTime::now_utc();
    let rfc3339 = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let endpoint = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port).to_string();
    let info = session
        .tls
        .as_ref()
        .map(|tls| tls.info.clone())
        .or_else(|| session.tls_info.clone())
        .unwrap_or_default();
    let verified = info.upstream_verified.clone();
    ConnectionRecord {
        start: rfc3339(session.started),
        end: rfc3339(end),
        duration_ms: u64::try_from((end - session.started).whole_milliseconds()).unwrap_or(0),
        port: "client",
        protocol: "tcp",
        client: endpoint(session.tuple.src_ip, session.tuple.src_port),
        server: endpoint(session.tuple.dst_ip, session.tuple.dst_port),
        decision: match &session.decision {
            Some(verdict) => verdict.action.name(),
            None if tls_mode => "intercept",
            None => "splice",
        },
        reason: match &session.decision {
            Some(verdict) => verdict.reason.clone(),
            None => format!("destination port {} is intercepted", session.tuple.dst_port),
        },
        sni: info.sni,
        alpn_offered: info.alpn_offered,
        alpn: info.alpn,
        client_tls_version: info.client_version,
        client_cipher: info.client_cipher,
        client_resumed: info.resumed_client,
        server_resumed: info.resumed_server,
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
        ended: session.ended.clone().unwrap_or_else(|| "closed".into()),
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
    pub fn new(hold_synack: bool, policy: Policy) -> Self {
        Splicer {
            policy,
            epoch: std::time::Instant::now(),
            sessions: Slab::new(),
            hold_synack,
            counters: SpliceCounters::default(),
            tls: None,
            log: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Logs a decision taken at the client's SYN (no session was opened).
    pub fn log_decision(&mut self, tuple: &FlowTuple, verdict: &Verdict) {
        if verdict.action == Action::Bypass {
            self.counters.bypassed += 1;
        }
        if let Some(log) = &self.log {
            let now = OffsetDateTime::now_utc();
            let session = Session::new(*tuple, now, 0);
            let mut record = record(&session, self.tls.is_some());
            record.decision = verdict.action.name();
            record.reason = verdict.reason.clone();
            record.ended = format!("{} at the SYN", verdict.action.name());
            log.write(&record);
        }
    }

    /// Refuses a client's SYN with a RST, as the policy says.
    pub fn block(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, verdict: &Verdict, now: Instant) {
        self.counters.blocked += 1;
        if let Ok(flow) = stack.accept(Side::Client.index(), frame, class, true, u64::MAX, now) {
            let _ = stack.abort(flow);
        }
        if let Some((tuple, _)) = class.tcp() {
            let verdict = Verdict {
                action: Action::Block,
                reason: verdict.reason.clone(),
            };
            let blocked = self.counters.blocked;
            self.log_decision(tuple, &verdict);
            self.counters.blocked = blocked;
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
        let _ = stack.mirror_timestamps(client, server);
        let mut session = Session::new(*tuple, OffsetDateTime::now_utc(), info.seq_number);
        session.client = Some(client);
        session.server = Some(server);
        session.established = !self.hold_synack;
        session.tls = self.tls.as_ref().map(|_| Box::new(TlsSession::new(tuple.dst_ip)));
        entry.insert(session);
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
        let (index, _) = session_of(event.owner);
        self.react(stack, event);
        // Logged once both directions have closed: the appliance's own legs
        // may linger in TIME-WAIT for a while, the connection is over.
        if let Some(session) = self.sessions.get_mut(index) {
            if !session.logged && session.fin_to_client && session.fin_to_server {
                session.logged = true;
                if let Some(log) = &self.log {
                    log.write(&record(session, self.tls.is_some()));
                }
            }
        }
    }

    fn react(&mut self, stack: &mut Stack, event: Event) {
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
            EventKind::Connected | EventKind::Readable | EventKind::Writable | EventKind::PeerClosed => {
                // The server accepted: now the client may have its SYN-ACK.
                if let (EventKind::Connected, Leg::Server, Some(client), false) =
                    (event.kind, leg, session.client, session.established)
                {
                    session.established = true;
                    let _ = stack.release_synack(client);
                }
                Self::pump(
                    &mut self.counters,
                    self.tls.as_mut(),
                    &mut self.policy,
                    self.epoch,
                    stack,
                    session,
                );
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
                    if let (Some(log), false) = (&self.log, session.logged) {
                        log.write(&record(&session, self.tls.is_some()));
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
            // Both queues, always (no short-circuit).
            let mut progress =
                send_queued(stack, client, tls.to_client()) | send_queued(stack, server, tls.to_server());
            if tls.to_server().len() < TLS_BACKLOG {
                let read = stack.recv(client, &mut buf).unwrap_or(0);
                if read > 0 {
                    counters.bytes_client_to_server += read as u64;
                    bytes.0 += read as u64;
                    tls.from_client(buf.get(..read).unwrap_or_default())?;
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
    fn pump(
        counters: &mut SpliceCounters,
        tls: Option<&mut TlsContext>,
        policy: &mut Policy,
        epoch: std::time::Instant,
        stack: &mut Stack,
        session: &mut Session,
    ) {
        let (Some(client), Some(server)) = (session.client, session.server) else {
            return;
        };
        if !session.established {
            return;
        }
        if let (Some(tls_session), Some(context)) = (session.tls.as_deref_mut(), tls) {
            let mut bypass = false;
            let outcome = loop {
                if let Err(err) = Self::pump_tls(
                    counters,
                    context,
                    tls_session,
                    stack,
                    (client, server),
                    &mut session.bytes,
                ) {
                    break Err(err);
                }
                let Some(pending) = tls_session.pending() else {
                    break Ok(());
                };
                let verdict = match &pending {
                    Pending::Hello { sni, .. } => policy.at_hello(&session.tuple, sni.as_deref()),
                    Pending::Rejected(rejection) => policy.on_rejection(&session.tuple, rejection),
                };
                session.decision = Some(verdict.clone());
                match verdict.action {
                    Action::Intercept => {
                        if let Err(err) = tls_session.intercept(context) {
                            break Err(err);
                        }
                    }
                    Action::Bypass => {
                        counters.bypassed += 1;
                        session.bypass_backlog = tls_session.bypass();
                        bypass = true;
                        break Ok(());
                    }
                    Action::Block => {
                        counters.blocked += 1;
                        session.ended = Some("blocked by policy".into());
                        session.failed = true;
                        let _ = stack.abort(client);
                        let _ = stack.abort(server);
                        break Ok(());
                    }
                }
            };
            if let Err(err) = outcome {
                tracing::info!("TLS interception failed: {err}");
                counters.tls_failed += 1;
                if let (Some(name), true) = (tls_session.info.sni.clone(), tls_session.info.client_cert_requested) {
                    if policy.record_client_cert_request(&name) {
                        counters.client_auth_bypassed += 1;
                        tracing::warn!("{name} asks for client certificates; bypassing it from now on");
                    }
                }
                if let (Some(name), true) = (tls_session.info.sni.clone(), rejected_our_certificate(&err)) {
                    if policy.record_rejection(&name, epoch.elapsed().as_secs()) {
                        counters.failed_open += 1;
                        tracing::warn!(
                            "fail-open: clients keep rejecting the forged certificate for {name}; bypassing it"
                        );
                    }
                }
                session.ended = Some(format!("TLS failed: {err}"));
                session.tls_info = session.tls.take().map(|tls| tls.info);
                session.failed = true;
                let _ = stack.abort(client);
                let _ = stack.abort(server);
                return;
            }
            if session.failed {
                session.tls_info = session.tls.take().map(|tls| tls.info);
                return;
            }
            if !bypass {
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
            // Bypassed: from now on the bytes pass untouched.
            session.tls_info = session.tls.take().map(|tls| tls.info);
        }
        if !session.bypass_backlog.is_empty() {
            let sent = stack.send(server, &session.bypass_backlog).unwrap_or(0);
            session.bypass_backlog.drain(..sent);
        }
        // The client's later bytes wait until the backlog went out.
        let up = if session.bypass_backlog.is_empty() {
            stack.relay(client, server).unwrap_or(0) as u64
        } else {
            0
        };
        let down = stack.relay(server, client).unwrap_or(0) as u64;
        counters.bytes_client_to_server += up;
        counters.bytes_server_to_client += down;
        session.bytes.0 += up;
        session.bytes.1 += down;
        if !session.fin_to_server && session.bypass_backlog.is_empty() && stack.peer_finished(client).unwrap_or(false) {
            session.fin_to_server = true;
            let _ = stack.close(server);
        }
        if !session.fin_to_client && stack.peer_finished(server).unwrap_or(false) {
            session.fin_to_client = true;
            let _ = stack.close(client);
        }
    }
}
