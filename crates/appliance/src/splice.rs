//! Transparent TCP splice: each intercepted connection is two flows of the
//! stack, the client leg (accepted on the client port as the server) and the
//! server leg (connected from the server port as the client). Bytes are
//! relayed between them with back-pressure (a leg is only read while the
//! other has room), half-closes and resets are propagated, and a failed
//! server connect is answered to the client as the server would have.
//!
//! With an inspection box, a session has two more legs: the plaintext
//! leaves through a connection the appliance opens from the inspection
//! port `inspect_out` (as the client, with the original 5-tuple and MACs)
//! and comes back through the box on a connection it accepts on
//! `inspect_in` (as the server); what arrives there is what goes on. The box
//! is authoritative: a reset on either loop leg resets the session.

use std::sync::Arc;

use mitm::{MitmError, Pending, SessionInfo, TlsContext, TlsSession};
use netstack::{Duration, Event, EventKind, FlowId, Instant, L2Header, Stack, StackError};
use slab::Slab;
use time::OffsetDateTime;
use wire::FlowTuple;
use wire::FrameClass;

use crate::capture::{CaptureStream, DecryptedCapture};
use crate::config::InspectFailure;
use crate::connlog::{ConnectionLog, ConnectionRecord};
use crate::directory::{SessionDirectory, WorkerDirectory};
use crate::policy::{Action, Policy, Verdict};

use crate::engine::Side;

/// Which leg of a session a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Client,
    Server,
    /// The loop connection out of `inspect_out` (the appliance as client).
    InspectOut,
    /// The loop connection accepted on `inspect_in` (the appliance as server).
    InspectIn,
}

/// The two legs through the inspection box.
#[derive(Debug, Default)]
struct InspectionLoop {
    out: Option<FlowId>,
    back: Option<FlowId>,
    /// The box passed the SYN and the loop connection is established
    /// (from then on plaintext goes round; each leg may end on its own).
    connected: bool,
    /// FIN already passed into the loop, client side / server side.
    fin_to_out: bool,
    fin_to_back: bool,
}

/// How the inspection loop is run (from `[inspect]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectionSettings {
    pub failure: InspectFailure,
    /// How long the box has to pass the loop's SYN.
    pub syn_timeout: Duration,
    /// The loop legs' timeout once connected (the stack's usual one).
    pub timeout: Duration,
}

impl Session {
    fn new(tuple: FlowTuple, l2: L2Header, started: OffsetDateTime, client_isn: u32) -> Session {
        Session {
            l2,
            inspection: None,
            inspection_note: None,
            close_notify_sent: (false, false),
            capture: None,
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
            learned: None,
            bypass_backlog: Vec::new(),
            logged: false,
        }
    }
}

struct Session {
    client: Option<FlowId>,
    server: Option<FlowId>,
    /// The framing of the client's frames towards the server (MACs, VLAN
    /// tags), which the inspection loop's connection repeats.
    l2: L2Header,
    /// The loop through the inspection box, while the plaintext uses it.
    inspection: Option<InspectionLoop>,
    /// What became of inspection, for the connection log.
    inspection_note: Option<String>,
    /// close_notify passed on to the server / the client (exposed TLS).
    close_notify_sent: (bool, bool),
    /// The session's stream in the decrypted capture, from its first
    /// plaintext on.
    capture: Option<CaptureStream>,
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
    /// What the policy learned from this connection, for the log.
    learned: Option<String>,
    /// Client bytes read by the TLS layer before a bypass, still to be sent
    /// to the server (before anything else the client sends).
    bypass_backlog: Vec<u8>,
    /// The connection-log record was written (when both directions had
    /// closed, not when the appliance's legs leave TIME-WAIT).
    logged: bool,
}

/// Ciphertext (or plaintext waiting for the loop) beyond which the leg that
/// feeds it is not read (back-pressure across the TLS layer).
const TLS_BACKLOG: usize = 64 * 1024;

/// Counters of the splice layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpliceCounters {
    pub sessions_opened: u64,
    pub sessions_live: u64,
    /// Sessions holding TLS state now (both rustls connections).
    pub tls_sessions_live: u64,
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
    /// Sessions whose plaintext went through the inspection box.
    pub inspected: u64,
    /// Sessions the box reset (or refused).
    pub inspect_blocked: u64,
    /// Sessions relayed without inspection / reset because the box did not
    /// pass their SYN in time or an inspection port's link was down.
    pub inspect_failed_open: u64,
    pub inspect_failed_closed: u64,
    /// Legs (client, server, inspection) reset because the engine shut
    /// down while their connection was still open: one RST each.
    pub reset_at_shutdown: u64,
}

impl std::ops::AddAssign for SpliceCounters {
    fn add_assign(&mut self, other: SpliceCounters) {
        self.sessions_opened += other.sessions_opened;
        self.sessions_live += other.sessions_live;
        self.tls_sessions_live += other.tls_sessions_live;
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
        self.inspected += other.inspected;
        self.inspect_blocked += other.inspect_blocked;
        self.inspect_failed_open += other.inspect_failed_open;
        self.inspect_failed_closed += other.inspect_failed_closed;
        self.reset_at_shutdown += other.reset_at_shutdown;
    }
}

/// All spliced sessions of one worker.
pub struct Splicer {
    sessions: Slab<Session>,
    shared: Shared,
    /// The sessions still to reset, once the engine is shutting down.
    shutdown_pending: Option<Vec<usize>>,
}

/// Everything of a splicer but its sessions (so a session can be worked on
/// while these are borrowed).
struct Shared {
    hold_synack: bool,
    counters: SpliceCounters,
    tls: Option<TlsContext>,
    log: Option<Arc<ConnectionLog>>,
    policy: Policy,
    /// The inspection loop, when the inspection ports are configured.
    inspection: Option<InspectionSettings>,
    /// Both inspection ports' links are up.
    inspection_links_up: bool,
    /// Where the plaintext of intercepted TLS sessions is recorded.
    capture: Option<Arc<DecryptedCapture>>,
    /// The sessions of every worker, when there are several.
    directory: Option<WorkerDirectory>,
}

/// The legs of a session the TLS pump moves bytes between.
#[derive(Clone, Copy)]
struct Legs<'a> {
    client: Option<FlowId>,
    server: Option<FlowId>,
    inspection: Option<&'a InspectionLoop>,
}

/// Where a session's stream in the decrypted capture runs: client and
/// server, their MACs, and the client's ISN.
#[derive(Debug, Clone, Copy)]
struct StreamEnds {
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    macs: ([u8; 6], [u8; 6]),
    client_isn: u32,
}

impl StreamEnds {
    fn of(session: &Session) -> StreamEnds {
        let tuple = session.tuple;
        StreamEnds {
            client: std::net::SocketAddr::new(tuple.src_ip, tuple.src_port),
            server: std::net::SocketAddr::new(tuple.dst_ip, tuple.dst_port),
            macs: (session.l2.src_mac, session.l2.dst_mac),
            client_isn: session.client_isn,
        }
    }
}

/// Records one session's plaintext in the decrypted capture as it is
/// passed on (the stream starts with the first bytes).
struct Tap<'a> {
    capture: &'a DecryptedCapture,
    stream: &'a mut Option<CaptureStream>,
    ends: StreamEnds,
}

impl Tap<'_> {
    fn data(&mut self, from_client: bool, bytes: &[u8]) {
        let StreamEnds {
            client,
            server,
            macs: (client_mac, server_mac),
            client_isn: isn,
        } = self.ends;
        self.stream
            .get_or_insert_with(|| CaptureStream::new(client, server, client_mac, server_mac, isn))
            .data(self.capture, from_client, bytes, std::time::SystemTime::now());
    }

    fn fin(&mut self, from_client: bool) {
        if let Some(stream) = self.stream.as_mut() {
            stream.fin(self.capture, from_client, std::time::SystemTime::now());
        }
    }

    fn reset(&mut self, from_client: bool) {
        if let Some(stream) = self.stream.as_mut() {
            stream.reset(self.capture, from_client, std::time::SystemTime::now());
        }
    }
}

/// Encrypts `plaintext` to the server and records it.
fn deliver_to_server(tls: &mut TlsSession, tap: &mut Option<Tap<'_>>, plaintext: &[u8]) -> Result<(), MitmError> {
    if let Some(tap) = tap.as_mut() {
        tap.data(true, plaintext);
    }
    tls.send_to_server(plaintext)
}

/// Encrypts `plaintext` to the client and records it.
fn deliver_to_client(tls: &mut TlsSession, tap: &mut Option<Tap<'_>>, plaintext: &[u8]) -> Result<(), MitmError> {
    if let Some(tap) = tap.as_mut() {
        tap.data(false, plaintext);
    }
    tls.send_to_client(plaintext)
}

/// Sends as much of `queue` as `leg` takes now; true if anything went.
fn send_queued(stack: &mut Stack, leg: Option<FlowId>, queue: &mut Vec<u8>) -> bool {
    let Some(leg) = leg else {
        return false;
    };
    let sent = stack.send(leg, queue).unwrap_or(0);
    queue.drain(..sent);
    sent > 0
}

/// Reads what `leg` received into `buf` (nothing from a leg that is gone).
fn receive(stack: &mut Stack, leg: Option<FlowId>, buf: &mut [u8]) -> usize {
    leg.map_or(0, |leg| stack.recv(leg, buf).unwrap_or(0))
}

/// Whether `leg`'s peer finished sending (a leg that is gone has).
fn peer_done(stack: &Stack, leg: Option<FlowId>) -> bool {
    leg.is_none_or(|leg| stack.peer_finished(leg).unwrap_or(true))
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
        inspection: session.inspection_note.clone(),
        learned: session.learned.clone(),
        ended: session.ended.clone().unwrap_or_else(|| "closed".into()),
    }
}

fn owner(session: usize, leg: Leg) -> u64 {
    let code = match leg {
        Leg::Client => 0,
        Leg::Server => 1,
        Leg::InspectOut => 2,
        Leg::InspectIn => 3,
    };
    (session as u64) << 2 | code
}

fn session_of(owner: u64) -> (usize, Leg) {
    let leg = match owner & 3 {
        0 => Leg::Client,
        1 => Leg::Server,
        2 => Leg::InspectOut,
        _ => Leg::InspectIn,
    };
    ((owner >> 2) as usize, leg)
}

/// Resets every leg of a session that is still there.
fn abort_all(stack: &mut Stack, session: &Session) {
    let loop_legs = session.inspection.as_ref().map_or([None, None], |l| [l.out, l.back]);
    for leg in [session.client, session.server].into_iter().chain(loop_legs).flatten() {
        let _ = stack.abort(leg);
    }
}

/// Drops the loop legs of a session silently.
fn discard_loop(stack: &mut Stack, session: &mut Session) {
    if let Some(inspection) = session.inspection.take() {
        for leg in [inspection.out, inspection.back].into_iter().flatten() {
            stack.discard(leg);
        }
    }
}

fn leg_finished(stack: &Stack, flow: FlowId) -> bool {
    stack.peer_finished(flow).unwrap_or(true)
}

impl Splicer {
    pub fn new(hold_synack: bool, policy: Policy) -> Self {
        Splicer {
            sessions: Slab::new(),
            shared: Shared {
                policy,
                hold_synack,
                counters: SpliceCounters::default(),
                tls: None,
                log: None,
                inspection: None,
                inspection_links_up: true,
                capture: None,
                directory: None,
            },
            shutdown_pending: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Sends the plaintext of every intercepted session through the
    /// inspection ports.
    pub fn set_inspection(&mut self, settings: InspectionSettings) {
        self.shared.inspection = Some(settings);
    }

    /// Records the plaintext of every intercepted TLS session in `capture`.
    pub fn set_capture(&mut self, capture: Arc<DecryptedCapture>) {
        self.shared.capture = Some(capture);
    }

    /// Whether both inspection ports' links are up (new loops are only
    /// tried while they are).
    pub fn set_inspection_links_up(&mut self, up: bool) {
        self.shared.inspection_links_up = up;
    }

    /// Logs a decision taken at the client's SYN (no session was opened).
    pub fn log_decision(&mut self, tuple: &FlowTuple, verdict: &Verdict) {
        if verdict.action == Action::Bypass {
            self.shared.counters.bypassed += 1;
        }
        if let Some(log) = &self.shared.log {
            let now = OffsetDateTime::now_utc();
            let session = Session::new(*tuple, L2Header::new([0; 6], [0; 6], &[]), now, 0);
            let mut record = record(&session, self.shared.tls.is_some());
            record.decision = verdict.action.name();
            record.reason = verdict.reason.clone();
            record.ended = format!("{} at the SYN", verdict.action.name());
            log.write(&record);
        }
    }

    /// Refuses a client's SYN with a RST, as the policy says.
    pub fn block(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, verdict: &Verdict, now: Instant) {
        self.shared.counters.blocked += 1;
        if let Ok(flow) = stack.accept(Side::Client.index(), frame, class, true, u64::MAX, now) {
            let _ = stack.abort(flow);
        }
        if let Some((tuple, _)) = class.tcp() {
            let verdict = Verdict {
                action: Action::Block,
                reason: verdict.reason.clone(),
            };
            let blocked = self.shared.counters.blocked;
            self.log_decision(tuple, &verdict);
            self.shared.counters.blocked = blocked;
        }
    }

    /// Registers every session in `directory`, shared with the other
    /// workers, so that each can tell a frame of another's connection.
    pub fn set_directory(&mut self, directory: Arc<SessionDirectory>) {
        self.shared.directory = Some(WorkerDirectory::new(directory));
    }

    /// Whether another worker holds a session for the client→server
    /// `tuple` (always false without a shared directory).
    pub fn held_by_another_worker(&self, tuple: &FlowTuple) -> bool {
        self.shared
            .directory
            .as_ref()
            .is_some_and(|directory| directory.held_elsewhere(tuple))
    }

    /// Writes a record of every session that ends to `log`.
    pub fn set_log(&mut self, log: Arc<ConnectionLog>) {
        self.shared.log = Some(log);
    }

    /// Intercepts TLS on every new session with `context`.
    pub fn set_tls(&mut self, context: TlsContext) {
        self.shared.tls = Some(context);
    }

    /// The TLS context, for its forging counters.
    pub fn tls(&self) -> Option<&TlsContext> {
        self.shared.tls.as_ref()
    }

    pub fn counters(&self) -> SpliceCounters {
        self.shared.counters
    }

    /// Buffer capacity the live TLS sessions hold (see
    /// [`TlsSession::buffer_capacity`]); walks every session.
    pub fn tls_buffer_bytes(&self) -> usize {
        self.sessions
            .iter()
            .filter_map(|(_, session)| session.tls.as_ref())
            .map(|tls| tls.buffer_capacity())
            .sum()
    }

    /// Shutdown: resets every live leg (client, server and inspection
    /// legs) of up to `max` sessions, one RST each; legs in TIME-WAIT (their
    /// connection is over) are left alone. The first call takes the
    /// sessions open at that moment. The RSTs go out at the stack's next
    /// flush. Returns how many sessions were visited: 0 once all were.
    pub fn reset_for_shutdown(&mut self, stack: &mut Stack, max: usize) -> usize {
        let sessions = &mut self.sessions;
        let pending = self
            .shutdown_pending
            .get_or_insert_with(|| sessions.iter().map(|(index, _)| index).collect());
        let mut visited = 0;
        while visited < max {
            let Some(index) = pending.pop() else { break };
            visited += 1;
            let Some(session) = sessions.get_mut(index) else {
                continue;
            };
            let loop_legs = session.inspection.as_ref().map_or([None, None], |l| [l.out, l.back]);
            let mut reset = 0;
            for leg in [session.client, session.server].into_iter().chain(loop_legs).flatten() {
                let live = stack
                    .state(leg)
                    .is_ok_and(|state| !matches!(state, netstack::TcpState::TimeWait | netstack::TcpState::Closed));
                if live && stack.abort(leg).is_ok() {
                    reset += 1;
                }
            }
            if reset > 0 {
                self.shared.counters.reset_at_shutdown += reset;
                session.failed = true;
                session
                    .ended
                    .get_or_insert_with(|| "reset: the appliance stopped".into());
                // The appliance resets both ends; the capture records one RST.
                self.shared.record_reset(session, false);
            }
        }
        visited
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
            stack.lookup(Side::InspectOut.index(), &tuple.reversed()),
            stack.lookup(Side::InspectIn.index(), tuple),
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
        let shared = &mut self.shared;
        let client = stack.accept(
            Side::Client.index(),
            frame,
            class,
            shared.hold_synack,
            owner(index, Leg::Client),
            now,
        )?;
        let l2 = L2Header::same_direction(&class.l2);
        let server = match stack.connect(Side::Server.index(), tuple, l2, owner(index, Leg::Server), now) {
            Ok(server) => server,
            Err(err) => {
                stack.discard(client);
                return Err(err);
            }
        };
        let _ = stack.mirror_timestamps(client, server);
        let mut session = Session::new(*tuple, l2, OffsetDateTime::now_utc(), info.seq_number);
        session.client = Some(client);
        session.server = Some(server);
        session.established = !shared.hold_synack;
        session.tls = shared.tls.as_ref().map(|_| Box::new(TlsSession::new(tuple.dst_ip)));
        shared.counters.tls_sessions_live += u64::from(session.tls.is_some());
        shared.counters.sessions_opened += 1;
        shared.counters.sessions_live += 1;
        if session.tls.is_none() {
            // Plain TCP: the bytes go through the box from the start.
            shared.start_inspection(stack, index, &mut session, now);
        }
        if let Some(directory) = shared.directory.as_mut() {
            directory.opened(tuple);
        }
        entry.insert(session);
        Ok(())
    }

    /// A SYN arrived on `inspect_in`: if it is the loop connection of a
    /// session (the box passed it), it is accepted there as the server.
    /// False if it belongs to no session (the caller drops it).
    pub fn accept_loop(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, now: Instant) -> bool {
        let Some((tuple, _)) = class.tcp() else {
            return false;
        };
        let Some(out) = stack.lookup(Side::InspectOut.index(), &tuple.reversed()) else {
            return false;
        };
        let Ok((index, Leg::InspectOut)) = stack.owner(out).map(session_of) else {
            return false;
        };
        let Some(inspection) = self.sessions.get_mut(index).and_then(|s| s.inspection.as_mut()) else {
            return false;
        };
        if inspection.out != Some(out) || inspection.back.is_some() {
            return false;
        }
        match stack.accept(
            Side::InspectIn.index(),
            frame,
            class,
            false,
            owner(index, Leg::InspectIn),
            now,
        ) {
            Ok(back) => {
                inspection.back = Some(back);
                true
            }
            Err(_) => false,
        }
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
        self.shared.counters.server_unreachable += 1;
        stack.discard(server);
        if let Some(client) = session.client {
            stack.discard(client);
        }
        discard_loop(stack, session);
        Some(session.client_isn)
    }

    /// Reacts to every pending event of the stack.
    pub fn handle_events(&mut self, stack: &mut Stack, now: Instant) {
        while let Some(event) = stack.next_event() {
            self.handle(stack, event, now);
        }
    }

    fn handle(&mut self, stack: &mut Stack, event: Event, now: Instant) {
        let (index, _) = session_of(event.owner);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let shared = &mut self.shared;
        shared.react(stack, index, session, event, now);
        // Logged once both directions have closed: the appliance's own legs
        // may linger in TIME-WAIT for a while, the connection is over.
        if !session.logged && session.fin_to_client && session.fin_to_server {
            session.logged = true;
            if let Some(log) = &shared.log {
                log.write(&record(session, shared.tls.is_some()));
            }
            // Everything has been sent both ways (each FIN went after its
            // direction's last bytes): the TLS state is not needed while the
            // legs linger in TIME-WAIT.
            shared.end_tls(session);
        }
        let loop_gone = session
            .inspection
            .as_ref()
            .is_none_or(|l| l.out.is_none() && l.back.is_none());
        if session.client.is_none() && session.server.is_none() && loop_gone {
            let session = self.sessions.remove(index);
            if let Some(directory) = shared.directory.as_mut() {
                directory.ended(&session.tuple);
            }
            shared.counters.sessions_live = shared.counters.sessions_live.saturating_sub(1);
            shared.counters.tls_sessions_live = shared
                .counters
                .tls_sessions_live
                .saturating_sub(u64::from(session.tls.is_some()));
            if let (Some(log), false) = (&shared.log, session.logged) {
                log.write(&record(&session, shared.tls.is_some()));
            }
        }
    }
}

impl Shared {
    /// Opens the loop of a session through the inspection box, if there is
    /// one; when the box is unavailable, applies the failure policy.
    fn start_inspection(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        let Some(settings) = self.inspection else {
            return;
        };
        if !self.inspection_links_up {
            self.inspection_failed(stack, session, "an inspection port's link is down");
            return;
        }
        let out = stack.connect(
            Side::InspectOut.index(),
            &session.tuple,
            session.l2,
            owner(index, Leg::InspectOut),
            now,
        );
        match out {
            Ok(out) => {
                let _ = stack.set_timeout(out, settings.syn_timeout);
                session.inspection = Some(InspectionLoop {
                    out: Some(out),
                    ..InspectionLoop::default()
                });
            }
            Err(err) => self.inspection_failed(stack, session, &format!("no loop connection: {err}")),
        }
    }

    /// The box cannot take a session: relay it uninspected (fail-open) or
    /// reset it (fail-closed).
    fn inspection_failed(&mut self, stack: &mut Stack, session: &mut Session, reason: &str) {
        discard_loop(stack, session);
        let failure = self.inspection.map(|settings| settings.failure).unwrap_or_default();
        match failure {
            InspectFailure::FailOpen => {
                self.counters.inspect_failed_open += 1;
                tracing::warn!("inspection unavailable ({reason}); relaying a connection uninspected");
                session.inspection_note = Some(format!("fail-open, not inspected: {reason}"));
            }
            InspectFailure::FailClosed => {
                self.counters.inspect_failed_closed += 1;
                tracing::warn!("inspection unavailable ({reason}); resetting a connection");
                session.inspection_note = Some(format!("fail-closed: {reason}"));
                session.ended = Some("reset: inspection unavailable".into());
                session.failed = true;
                abort_all(stack, session);
            }
        }
    }

    fn react(&mut self, stack: &mut Stack, index: usize, session: &mut Session, event: Event, now: Instant) {
        let (_, leg) = session_of(event.owner);
        if matches!(leg, Leg::InspectOut | Leg::InspectIn) {
            self.react_loop(stack, index, session, (leg, event), now);
            return;
        }
        let (this, other) = match leg {
            Leg::Client => (session.client, session.server),
            _ => (session.server, session.client),
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
                self.pump(stack, index, session, now);
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
                    discard_loop(stack, session);
                } else if session.fin_to_client && session.fin_to_server {
                    // Both directions had closed: a late RST (a client that
                    // tears down with one) ends nothing; the other legs
                    // finish their own close.
                } else {
                    self.counters.resets += 1;
                    let how = if event.kind == EventKind::Reset {
                        "reset"
                    } else {
                        "timed out"
                    };
                    let side = if leg == Leg::Client { "client" } else { "server" };
                    session.ended.get_or_insert_with(|| format!("{how} by the {side}"));
                    self.record_reset(session, leg == Leg::Client);
                    abort_all(stack, session);
                }
            }
            EventKind::Closed => {
                match leg {
                    Leg::Client => session.client = None,
                    _ => session.server = None,
                }
                if let Some(other) = other {
                    // The other leg still runs: a leg that vanished while the
                    // other could still talk means the connection is broken.
                    if session.failed {
                        // Already answered (RST queued, or silence).
                    } else if leg == Leg::Server && !session.established {
                        stack.discard(other);
                        discard_loop(stack, session);
                    } else if !(leg_finished(stack, other) || session.fin_to_client && session.fin_to_server) {
                        abort_all(stack, session);
                    }
                }
            }
        }
    }

    /// An event of a loop leg.
    fn react_loop(
        &mut self,
        stack: &mut Stack,
        index: usize,
        session: &mut Session,
        (leg, event): (Leg, Event),
        now: Instant,
    ) {
        let Some(inspection) = session.inspection.as_mut() else {
            return;
        };
        let this = if leg == Leg::InspectOut {
            inspection.out
        } else {
            inspection.back
        };
        if this != Some(event.flow) {
            return;
        }
        match event.kind {
            EventKind::Connected | EventKind::Readable | EventKind::Writable | EventKind::PeerClosed => {
                if event.kind == EventKind::Connected && leg == Leg::InspectOut && !inspection.connected {
                    inspection.connected = true;
                    self.counters.inspected += 1;
                    session.inspection_note = Some("inspected".into());
                    if let Some(settings) = self.inspection {
                        let _ = stack.set_timeout(event.flow, settings.timeout);
                    }
                }
                self.pump(stack, index, session, now);
            }
            EventKind::TimedOut if leg == Leg::InspectOut && !inspection.connected => {
                let waited = self
                    .inspection
                    .map_or(0, |settings| settings.syn_timeout.total_millis());
                self.inspection_failed(
                    stack,
                    session,
                    &format!("the box did not pass the SYN within {waited} ms"),
                );
                self.pump(stack, index, session, now);
            }
            EventKind::Reset | EventKind::TimedOut => {
                // The box reset the connection (or let it die): it ends.
                let side = if leg == Leg::InspectOut {
                    "inspect_out"
                } else {
                    "inspect_in"
                };
                if event.kind == EventKind::Reset {
                    self.counters.inspect_blocked += 1;
                    session.inspection_note = Some(format!("blocked by the inspector (reset on {side})"));
                    session.ended = Some("reset by the inspector".into());
                } else {
                    session.ended = Some(format!("inspection loop timed out on {side}"));
                }
                session.failed = true;
                self.end_tls(session);
                // As the endpoints see it: the box's reset towards the
                // client poses as the server, and the other way round.
                self.record_reset(session, leg == Leg::InspectIn);
                abort_all(stack, session);
            }
            EventKind::Closed => {
                if leg == Leg::InspectOut {
                    inspection.out = None;
                } else {
                    inspection.back = None;
                }
            }
        }
    }

    /// Moves ciphertext between the legs and the TLS session, and the
    /// plaintext between the TLS session and the inspection loop (or
    /// straight across), until nothing moves. A leg is read only while
    /// what it feeds is below [`TLS_BACKLOG`].
    fn pump_tls(
        counters: &mut SpliceCounters,
        context: &mut TlsContext,
        tls: &mut TlsSession,
        stack: &mut Stack,
        legs: Legs<'_>,
        bytes: &mut (u64, u64),
        tap: &mut Option<Tap<'_>>,
    ) -> Result<(), mitm::MitmError> {
        let Legs {
            client,
            server,
            inspection,
        } = legs;
        let mut buf = [0u8; 16 * 1024];
        let was_established = tls.info.client_version.is_some();
        let through_box = inspection.filter(|l| l.connected).map(|l| (l.out, l.back));
        for _ in 0..64 {
            // Both queues, always (no short-circuit).
            let mut progress =
                send_queued(stack, client, tls.to_client()) | send_queued(stack, server, tls.to_server());
            if tls.to_server().len() < TLS_BACKLOG && tls.plaintext_from_client().len() < TLS_BACKLOG {
                let read = receive(stack, client, &mut buf);
                if read > 0 {
                    counters.bytes_client_to_server += read as u64;
                    bytes.0 += read as u64;
                    tls.from_client(buf.get(..read).unwrap_or_default())?;
                    progress = true;
                }
            }
            if tls.to_client().len() < TLS_BACKLOG && tls.plaintext_from_server().len() < TLS_BACKLOG {
                let read = receive(stack, server, &mut buf);
                if read > 0 {
                    counters.bytes_server_to_client += read as u64;
                    bytes.1 += read as u64;
                    tls.from_server(context, buf.get(..read).unwrap_or_default())?;
                    progress = true;
                }
            }
            match (through_box, inspection) {
                (Some((out, back)), _) => {
                    progress |= send_queued(stack, out, tls.plaintext_from_client())
                        | send_queued(stack, back, tls.plaintext_from_server());
                    if tls.to_server().len() < TLS_BACKLOG {
                        let read = receive(stack, back, &mut buf);
                        if read > 0 {
                            deliver_to_server(tls, tap, buf.get(..read).unwrap_or_default())?;
                            progress = true;
                        }
                    }
                    if tls.to_client().len() < TLS_BACKLOG {
                        let read = receive(stack, out, &mut buf);
                        if read > 0 {
                            deliver_to_client(tls, tap, buf.get(..read).unwrap_or_default())?;
                            progress = true;
                        }
                    }
                }
                // The loop is still being opened: the plaintext waits.
                (None, Some(_)) => {}
                (None, None) => {
                    if !tls.plaintext_from_client().is_empty() {
                        let plaintext = std::mem::take(tls.plaintext_from_client());
                        deliver_to_server(tls, tap, &plaintext)?;
                        progress = true;
                    }
                    if !tls.plaintext_from_server().is_empty() {
                        let plaintext = std::mem::take(tls.plaintext_from_server());
                        deliver_to_client(tls, tap, &plaintext)?;
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        // Quiet now: queues the sockets emptied give their memory back, so
        // an idle connection holds no TLS buffer.
        tls.release_empty_buffers();
        if !was_established && tls.info.client_version.is_some() {
            counters.tls_intercepted += 1;
        }
        Ok(())
    }

    /// Relays both ways as far as buffers allow (through the TLS session in
    /// mode "tls", through the inspection box when there is one) and passes
    /// on FINs once a direction has delivered everything.
    fn pump(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        if !session.established || session.failed {
            return;
        }
        if session.tls.is_some() && self.tls.is_some() {
            if self.pump_tls_session(stack, index, session, now) {
                return;
            }
            // Bypassed: from now on the bytes pass untouched.
            self.end_tls(session);
        }
        self.pump_plain(stack, session);
    }

    /// The TLS part of [`Shared::pump`]: false once the session was
    /// bypassed (its bytes then pass untouched).
    fn pump_tls_session(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) -> bool {
        let ends = StreamEnds::of(session);
        let (Some(tls_session), Some(context)) = (session.tls.as_deref_mut(), self.tls.as_mut()) else {
            return false;
        };
        let (client, server) = (session.client, session.server);
        let stream = &mut session.capture;
        let mut tap = self.capture.as_deref().map(|capture| Tap { capture, stream, ends });
        let mut open_loop = false;
        let outcome = loop {
            if let Err(err) = Self::pump_tls(
                &mut self.counters,
                context,
                tls_session,
                stack,
                Legs {
                    client,
                    server,
                    inspection: session.inspection.as_ref(),
                },
                &mut session.bytes,
                &mut tap,
            ) {
                break Err(err);
            }
            let Some(pending) = tls_session.pending() else {
                break Ok(true);
            };
            let verdict = match &pending {
                Pending::Hello { sni, .. } => self.policy.at_hello(&session.tuple, sni.as_deref(), now),
                Pending::Rejected(rejection) => self.policy.on_rejection(&session.tuple, rejection),
            };
            session.decision = Some(verdict.clone());
            match verdict.action {
                Action::Intercept => {
                    if let Err(err) = tls_session.intercept(context) {
                        break Err(err);
                    }
                    if self.inspection.is_some() || self.capture.is_some() {
                        tls_session.expose_plaintext();
                    }
                    open_loop = self.inspection.is_some();
                }
                Action::Bypass => {
                    self.counters.bypassed += 1;
                    session.bypass_backlog = tls_session.bypass();
                    break Ok(false);
                }
                Action::Block => {
                    self.counters.blocked += 1;
                    session.ended = Some("blocked by policy".into());
                    session.failed = true;
                    break Ok(true);
                }
            }
        };
        match outcome {
            Err(err) => {
                tracing::info!("TLS interception failed: {err}");
                self.counters.tls_failed += 1;
                session.learned = self.learn_from_failure(tls_session, &err, &session.tuple, now);
                session.ended = Some(format!("TLS failed: {err}"));
                session.failed = true;
            }
            Ok(false) => return false,
            Ok(true) => {}
        }
        if session.failed {
            self.end_tls(session);
            abort_all(stack, session);
            return true;
        }
        if open_loop {
            self.start_inspection(stack, index, session, now);
            if session.failed {
                self.end_tls(session);
                return true;
            }
        }
        self.finish_tls_directions(stack, session);
        true
    }

    /// Drops a session's TLS state, keeping what it told for the log.
    fn end_tls(&mut self, session: &mut Session) {
        if let Some(tls) = session.tls.take() {
            self.counters.tls_sessions_live = self.counters.tls_sessions_live.saturating_sub(1);
            session.tls_info = Some(tls.info);
        }
    }

    /// Ends a session's stream in the decrypted capture with a RST.
    fn record_reset(&self, session: &mut Session, from_client: bool) {
        let ends = StreamEnds::of(session);
        if let Some(capture) = self.capture.as_deref() {
            let stream = &mut session.capture;
            Tap { capture, stream, ends }.reset(from_client);
        }
    }

    /// What a failed interception teaches the policy about its destination
    /// (a server that asks for client certificates, a client that rejected
    /// the forged certificate): only when the server's chain verified for
    /// the name, so a server that did not prove its name, and a client
    /// shown the mirror certificate (which it is meant to reject), teach
    /// nothing. Returns what was learned, logged.
    fn learn_from_failure(
        &self,
        tls_session: &TlsSession,
        err: &MitmError,
        tuple: &FlowTuple,
        now: Instant,
    ) -> Option<String> {
        let info = &tls_session.info;
        let name = info.sni.as_deref()?;
        if info.upstream_verified != Some(Ok(())) {
            return None;
        }
        let entry = if info.client_cert_requested {
            self.policy.record_client_cert_request(tuple, name, now)
        } else if rejected_our_certificate(err) {
            self.policy.record_rejection(tuple, name, now)
        } else {
            None
        }?;
        let ttl = self.policy.learned().settings().ttl.secs();
        tracing::warn!("bypassing {} for {ttl} s: {}", entry.destination, entry.reason);
        Some(format!("bypass for {ttl} s: {}", entry.reason))
    }

    /// Passes the end of each direction on, in order: into the inspection
    /// loop once the plaintext went in, close_notify once the box passed
    /// the FIN (or at once without a box), and FIN once the ciphertext went.
    fn finish_tls_directions(&mut self, stack: &mut Stack, session: &mut Session) {
        let ends = StreamEnds::of(session);
        let Some(tls) = session.tls.as_deref_mut() else {
            return;
        };
        let stream = &mut session.capture;
        let mut tap = self.capture.as_deref().map(|capture| Tap { capture, stream, ends });
        let (client, server) = (session.client, session.server);
        let client_done = tls.client_finished() || peer_done(stack, client);
        let server_done = tls.server_finished() || peer_done(stack, server);
        // Whether each direction came back out of the loop (true without one).
        let (mut up_through, mut down_through) = (true, true);
        if let Some(inspection) = session.inspection.as_mut() {
            if !inspection.connected {
                return;
            }
            let (out, back) = (inspection.out, inspection.back);
            if !inspection.fin_to_out && client_done && tls.plaintext_from_client().is_empty() {
                inspection.fin_to_out = true;
                if let Some(out) = out {
                    let _ = stack.close(out);
                }
            }
            if !inspection.fin_to_back && server_done && tls.plaintext_from_server().is_empty() {
                inspection.fin_to_back = true;
                if let Some(back) = back {
                    let _ = stack.close(back);
                }
            }
            up_through = peer_done(stack, back);
            down_through = peer_done(stack, out);
        }
        up_through &= tls.plaintext_from_client().is_empty();
        down_through &= tls.plaintext_from_server().is_empty();
        if tls.plaintext_exposed() {
            if !session.close_notify_sent.0 && tls.client_finished() && up_through {
                session.close_notify_sent.0 = true;
                tls.close_to_server();
                send_queued(stack, server, tls.to_server());
            }
            if !session.close_notify_sent.1 && tls.server_finished() && down_through {
                session.close_notify_sent.1 = true;
                tls.close_to_client();
                send_queued(stack, client, tls.to_client());
            }
        }
        if !session.fin_to_server && up_through && tls.to_server().is_empty() && peer_done(stack, client) {
            session.fin_to_server = true;
            if let Some(server) = server {
                let _ = stack.close(server);
            }
            if let Some(tap) = tap.as_mut() {
                tap.fin(true);
            }
        }
        if !session.fin_to_client && down_through && tls.to_client().is_empty() && peer_done(stack, server) {
            session.fin_to_client = true;
            if let Some(client) = client {
                let _ = stack.close(client);
            }
            if let Some(tap) = tap.as_mut() {
                tap.fin(false);
            }
        }
    }

    /// Relays the bytes untouched (mode "splice", or TLS bypassed), through
    /// the inspection loop when there is one. Each hop works on its own: a
    /// leg may be gone once its part of the connection is over.
    fn pump_plain(&mut self, stack: &mut Stack, session: &mut Session) {
        let (client, server) = (session.client, session.server);
        if let Some(inspection) = session.inspection.as_mut() {
            if !inspection.connected {
                return;
            }
            let (out, back) = (inspection.out, inspection.back);
            let up = hop(stack, client, out, &mut inspection.fin_to_out);
            let down = hop(stack, server, back, &mut inspection.fin_to_back);
            hop(stack, back, server, &mut session.fin_to_server);
            hop(stack, out, client, &mut session.fin_to_client);
            self.count(session, up, down);
            return;
        }
        if let (Some(server), false) = (server, session.bypass_backlog.is_empty()) {
            let sent = stack.send(server, &session.bypass_backlog).unwrap_or(0);
            session.bypass_backlog.drain(..sent);
        }
        // The client's later bytes wait until the backlog went out.
        let up = if session.bypass_backlog.is_empty() {
            hop(stack, client, server, &mut session.fin_to_server)
        } else {
            0
        };
        let down = hop(stack, server, client, &mut session.fin_to_client);
        self.count(session, up, down);
    }

    fn count(&mut self, session: &mut Session, up: u64, down: u64) {
        self.counters.bytes_client_to_server += up;
        self.counters.bytes_server_to_client += down;
        session.bytes.0 += up;
        session.bytes.1 += down;
    }
}

/// Relays what `from` received into `to`, and passes FIN on once `from`'s
/// peer finished and everything went (`fin_sent` records it); returns the
/// bytes moved. Nothing happens while either leg is missing.
fn hop(stack: &mut Stack, from: Option<FlowId>, to: Option<FlowId>, fin_sent: &mut bool) -> u64 {
    let (Some(from), Some(to)) = (from, to) else {
        return 0;
    };
    let moved = stack.relay(from, to).unwrap_or(0) as u64;
    if !*fin_sent && stack.peer_finished(from).unwrap_or(false) {
        *fin_sent = true;
        let _ = stack.close(to);
    }
    moved
}
