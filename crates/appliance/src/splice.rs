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
//! is authoritative: a reset on either loop leg resets the session. A box
//! that dies under a session (a loop leg times out, a link goes down) fails
//! it closed, or open: the session goes on directly from what the box had
//! not passed back.
//!
//! Admission and time limits (`Limits`): sessions are capped per worker;
//! embryonic sessions (the client has not completed its handshake with the
//! appliance) may take half of them and are evicted oldest first to admit
//! new SYNs, and each client address may hold only so many; a full table
//! refuses new connections (or bridges them, if configured so). Confirmed
//! sessions must deliver a ClientHello, then finish both TLS handshakes,
//! each within its timeout, and are reset after a long time without a
//! payload byte either way.
//!
//! The relay itself (back-pressure, half-closes, close_notify ordering, the
//! inspection loop's record of unreturned bytes) is the sans-IO
//! `pipeline::Connection`; this module is its driver: it admits sessions,
//! keeps their timers, policy generations, logs and counters, answers the
//! decisions a connection asks for, and gives it its legs on the stack
//! ([`StackLegs`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use mitm::forge::ForgeCounters;
use mitm::{MitmError, Pending, SessionInfo, TlsContext, TlsSession};
use netstack::neighbour::Outcome;
use netstack::{Duration, Event, EventKind, FlowId, Instant, L2Header, Stack, StackError};
use pipeline::{Connection, Leg, LegIo, PreambleError, PreambleEvent, TLS_BACKLOG};
use slab::Slab;
use starttls::DataChannelEvent;
use time::OffsetDateTime;
use wire::FlowTuple;
use wire::FrameClass;

use crate::capture::CaptureStream;
use crate::clock::WallAnchor;
use crate::config::{AtCapacity, InspectFailure, StarttlsPort};
use crate::connlog::{self, ConnectionLog, ConnectionRecord, EventType};
use crate::counters::SpliceCounters;
use crate::directory::{SessionDirectory, WorkerDirectory};
use crate::ftpdata::{Expectations, Expected, Opener};
use crate::handoff::LegRegistry;
use crate::mirror::Taps;
use crate::owned::{OwnedLeg, OwnedSources};
use crate::policy::{Action, Conversion, Policy, Verdict};
use crate::service::{Backend, Service, Services};
use crate::topnames::TopNames;

use crate::side::Side;

/// The service a terminated connection was given to.
#[derive(Debug, Clone)]
struct Terminated {
    name: String,
    /// Its plaintext goes through the inspection loop and the taps.
    inspect: bool,
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

/// What the splicer admits, and how long a confirmed session may take
/// for each stage (from `[tcp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions at most (`tcp.max_connections`); embryonic ones may take
    /// half of them.
    pub max_sessions: usize,
    /// Embryonic sessions one client address may hold; its further SYNs
    /// are dropped (it retransmits them).
    pub max_embryonic_per_client: usize,
    /// What a SYN gets when the table is full and no embryonic session can
    /// make way.
    pub at_capacity: AtCapacity,
    /// From the client's completed handshake to its complete ClientHello.
    pub client_hello_timeout: Duration,
    /// From the ClientHello to both TLS handshakes done.
    pub handshake_timeout: Duration,
    /// Without a payload byte either way this long, an established
    /// session is reset (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// A STARTTLS preamble waiting this long for a byte of the server's
    /// answer is reset.
    pub starttls_timeout: Duration,
}

impl Limits {
    /// The limits `[tcp]` sets.
    pub fn from_config(tcp: &crate::config::Tcp) -> Limits {
        Limits {
            max_sessions: tcp.max_connections,
            max_embryonic_per_client: tcp.max_embryonic_per_client,
            at_capacity: tcp.at_capacity,
            client_hello_timeout: Duration::from_millis(tcp.client_hello_timeout_ms),
            handshake_timeout: Duration::from_millis(tcp.handshake_timeout_ms),
            idle_timeout: (tcp.idle_timeout_ms > 0).then(|| Duration::from_millis(tcp.idle_timeout_ms)),
            starttls_timeout: Duration::from_millis(tcp.starttls_timeout_ms),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&crate::config::Tcp::default())
    }
}

/// What an ICMP destination unreachable about a server leg's SYN did
/// ([`Splicer::server_unreachable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No session's server leg is connecting there: the error is bridged
    /// as it is.
    NotConnecting,
    /// An intercepted session ended: the error goes on to its client,
    /// quoting `client_isn` (the client's own SYN).
    PassOn { client_isn: u32 },
    /// A server leg the client does not know of (a terminated session's
    /// backend leg, a converted session's leg on another port): its client
    /// was reset; the error is the appliance's own, not passed on.
    BackendLeg,
}

/// What became of a SYN at [`Splicer::open`] (a client's; a server's at
/// [`Splicer::open_active_ftp_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A session was opened for it.
    Opened,
    /// The table is full: refused with a RST, counted and logged.
    Refused,
    /// Its client holds too many embryonic sessions: dropped without an
    /// answer (its TCP retransmits the SYN; an active FTP data connection's
    /// expectation stays for it), counted.
    Dropped,
    /// The table is full and `tcp.at_capacity = "bridge"`: the caller
    /// bridges it uninspected (counted and logged). Never for a service's
    /// SYN ([`Splicer::open_service`]), which is refused.
    Bridge,
}

/// How a SYN opens a session ([`Splicer::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// A client's SYN, intercepted (or spliced) towards its server; also a
    /// passive-mode FTP data connection an intercepted control channel
    /// announced.
    Intercept,
    /// A client's SYN to a service's destination: terminated.
    Terminate,
    /// A server's SYN opening an active-mode FTP data connection
    /// (`PORT`/`EPRT`) an intercepted control channel announced.
    ActiveFtpData,
}

impl Opening {
    fn opener(self) -> Opener {
        match self {
            Opening::Intercept | Opening::Terminate => Opener::Client,
            Opening::ActiveFtpData => Opener::Server,
        }
    }
}

/// Which leg of a session the appliance accepts (it answers the opener's
/// SYN transparently as the other end) and which it connects (as the
/// opener, towards the other end): the one place where who opened the TCP
/// connection is mapped onto the legs. Whoever opened it, a session's
/// [`Leg::Client`] is the client's leg on the client port (for TLS, the
/// TLS client's: an FTP client is the TLS client of the data connections
/// it accepts, RFC 4217), its [`Leg::Server`] the server's on the server
/// port, and its tuple runs client → server; so the pipeline, the loop
/// and the taps do not know who sent the SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LegRoles {
    accepted: Leg,
    connected: Leg,
}

impl LegRoles {
    fn of(opener: Opener) -> LegRoles {
        match opener {
            Opener::Client => LegRoles {
                accepted: Leg::Client,
                connected: Leg::Server,
            },
            Opener::Server => LegRoles {
                accepted: Leg::Server,
                connected: Leg::Client,
            },
        }
    }

    /// The port a session's leg is on.
    fn side(leg: Leg) -> Side {
        match leg {
            Leg::Client => Side::Client,
            Leg::Server => Side::Server,
            Leg::InspectOut => Side::InspectOut,
            Leg::InspectIn => Side::InspectIn,
        }
    }

    /// The session's tuple (client → server) of the opener's SYN.
    fn session_tuple(opener: Opener, syn: &FlowTuple) -> FlowTuple {
        match opener {
            Opener::Client => *syn,
            Opener::Server => syn.reversed(),
        }
    }
}

/// Why a confirmed session was timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    ClientHello,
    Handshake,
    Idle,
    Starttls,
}

/// The embryonic sessions: how many, per client address, and in the order
/// they were opened (entries of sessions that were confirmed or ended are
/// skipped when met, and dropped when they outnumber the live ones).
#[derive(Debug, Default)]
struct Embryonic {
    live: usize,
    per_client: HashMap<IpAddr, usize>,
    /// (session index, serial), oldest first.
    order: VecDeque<(usize, u64)>,
}

/// Whether a leg's connection is over (it only waits out TIME-WAIT).
fn leg_over(stack: &Stack, leg: Option<FlowId>) -> bool {
    leg.is_none_or(|leg| {
        stack.state(leg).map_or(true, |state| {
            matches!(state, netstack::TcpState::TimeWait | netstack::TcpState::Closed)
        })
    })
}

impl Embryonic {
    fn of_client(&self, client: IpAddr) -> usize {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    fn opened(&mut self, client: IpAddr, index: usize, serial: u64) {
        self.live += 1;
        *self.per_client.entry(client).or_insert(0) += 1;
        self.order.push_back((index, serial));
    }

    /// The session of `client` stopped being embryonic (confirmed or gone).
    fn left(&mut self, client: IpAddr) {
        self.live = self.live.saturating_sub(1);
        if let Some(count) = self.per_client.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

impl Session {
    fn new(tuple: FlowTuple, l2: L2Header, started: OffsetDateTime, client_isn: u32) -> Session {
        Session {
            serial: 0,
            confirmed: false,
            stage_since: Instant::ZERO,
            opened: Instant::ZERO,
            last_activity: Instant::ZERO,
            timer: None,
            l2,
            conn: Connection::new(None, false),
            loop_out: None,
            loop_back: None,
            inspection_note: None,
            capture: None,
            client: None,
            server: None,
            client_isn,
            started,
            tuple,
            ended: None,
            tls_info: None,
            decision: None,
            generation: None,
            replaced_server: None,
            registered_leg: None,
            registered_data_flow: None,
            terminate: false,
            conversion: None,
            service: None,
            pending_backend: None,
            learned: None,
            starttls: None,
            ftp_data: None,
            opener: Opener::Client,
            logged: false,
            flow_id: connlog::flow_id(
                SocketAddr::new(tuple.src_ip, tuple.src_port),
                SocketAddr::new(tuple.dst_ip, tuple.dst_port),
                connlog::IPPROTO_TCP,
                started,
            ),
        }
    }
}

struct Session {
    /// Admission number, telling this session from a later one in the
    /// same slot (in the embryonic order and the timer heap).
    serial: u64,
    /// The client completed its handshake with the appliance; until then
    /// the session is embryonic.
    confirmed: bool,
    /// When the current stage began: the client's handshake (waiting for
    /// the ClientHello), then the ClientHello (the TLS handshakes).
    stage_since: Instant,
    /// The client's SYN, on the engine clock (for `connection_seconds`).
    opened: Instant,
    /// When a payload byte last arrived from either side.
    last_activity: Instant,
    /// The deadline queued for this session in the timer heap, if any.
    timer: Option<Instant>,
    client: Option<FlowId>,
    server: Option<FlowId>,
    /// The framing of the client's frames towards the server (MACs, VLAN
    /// tags), which the inspection loop's connection repeats.
    l2: L2Header,
    /// The connection's pipeline: its state, its transform (TLS or plain),
    /// its inspection loop, the relay.
    conn: Connection,
    /// The legs through the inspection box, while the plaintext uses it.
    loop_out: Option<FlowId>,
    loop_back: Option<FlowId>,
    /// What became of inspection, for the connection log.
    inspection_note: Option<String>,
    /// The session's stream in the decrypted capture, from its first
    /// plaintext on.
    capture: Option<CaptureStream>,
    /// The initial sequence number of the client's SYN.
    client_isn: u32,
    /// For the connection log.
    started: OffsetDateTime,
    tuple: FlowTuple,
    /// How it ended, when not by an orderly close.
    ended: Option<String>,
    /// What TLS told about it, kept when the TLS session is dropped.
    tls_info: Option<SessionInfo>,
    /// The policy's decision, once made.
    decision: Option<Verdict>,
    /// The generation of policy and TLS context this session decides and
    /// handshakes with, until its handshakes are done (see [`Generation`]).
    generation: Option<u64>,
    /// A server leg being reset to make way for a fresh one (same
    /// 5-tuple), opened once this one is gone: the bypass of an origin
    /// that refused the appliance's TLS.
    replaced_server: Option<FlowId>,
    /// The server leg's tuple, registered with this worker as its owner
    /// because it differs from the client's (see
    /// [`Shared::connect_server_leg`]).
    registered_leg: Option<FlowTuple>,
    /// An FTP data connection registered with the workers' directory (its
    /// SYN's tuple): its frames reach this worker whichever worker the
    /// flow hash gives them to.
    registered_data_flow: Option<FlowTuple>,
    /// A connection to a `[[service]]` destination: the appliance is its
    /// TLS server (termination), the backend leg opens after the hello.
    terminate: bool,
    /// What an `upgrade` or `downgrade` rule made of it at its SYN: its
    /// server leg goes to `server_port`, plain towards TLS or the reverse.
    conversion: Option<Conversion>,
    /// The service that answered its ClientHello.
    service: Option<Terminated>,
    /// The backend leg from an owned address, while its next hop's MAC is
    /// being resolved (its port is reserved meanwhile).
    pending_backend: Option<FlowTuple>,
    /// What the policy learned from this connection, for the log.
    learned: Option<String>,
    /// A `[[starttls]]` connection's preamble, for its timer and the log.
    starttls: Option<StarttlsState>,
    /// An FTP data connection an intercepted control channel announced
    /// (see [`crate::ftpdata`]): TLS (intercepted) or plain.
    ftp_data: Option<starttls::DataProtection>,
    /// Who sent the SYN that opened it (see [`LegRoles`]): the client,
    /// or the server of an active-mode FTP data connection.
    opener: Opener,
    /// The connection-log record was written (when both directions had
    /// closed, not when the appliance's legs leave TIME-WAIT).
    logged: bool,
    /// The connection log's `flow_id` of every record of this connection.
    flow_id: u64,
}

/// What a `[[starttls]]` session's preamble did.
#[derive(Debug)]
struct StarttlsState {
    protocol: starttls::Protocol,
    /// For the log: `plaintext` until the upgrade is `upgraded`, `refused`
    /// (the last attempt), `blocked` (require_tls) or `failed`.
    outcome: &'static str,
    /// Since when the preamble waits for the server's answer (its timeout
    /// runs), while it does.
    waiting_since: Option<Instant>,
    /// Discarded client bytes already counted.
    discarded_counted: u64,
}

/// Unanswered retransmission rounds after which the inspection box counts
/// as dead on a loop leg (instead of `tcp.max_retransmissions`): the box is
/// next to the appliance, so it gets about 31 s (rounds at 1, 3, 7 and
/// 15 s, given up when the fifth is due) before `inspect.failure` applies,
/// enough for a box link losing 5% of the frames either way.
const LOOP_MAX_RETRANSMISSIONS: u32 = 4;

/// What a reload replaces in a worker's splicer (see `crate::reload`).
pub struct Rules {
    /// The `[[policy]]` rules (with the learned bypasses every generation
    /// shares).
    pub policy: Policy,
    /// The TLS context (CA, chain, leaf key, upstream trust), when TLS is
    /// intercepted.
    pub tls: Option<TlsContext>,
    /// Where sessions are logged when they end.
    pub log: Option<Arc<ConnectionLog>>,
    /// The `[[service]]` entries new connections are terminated for.
    pub services: Arc<Services>,
}

/// One generation of the reloadable settings of a splicer: the policy and
/// TLS context in force from one reload to the next. A session keeps the
/// generation in force at its SYN for its policy decisions and TLS
/// handshakes (so its ClientHello is judged, and its certificate forged,
/// by the rules it started under); it lets go once its TLS handshakes are
/// done, or it ends, and an earlier generation no session uses is dropped.
struct Generation {
    number: u64,
    policy: Policy,
    tls: Option<TlsContext>,
    /// Sessions holding this generation.
    sessions: usize,
}

impl Generation {
    fn forge_counters(&self) -> ForgeCounters {
        self.tls.as_ref().map(|tls| tls.forger().counters()).unwrap_or_default()
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
    /// The date of the engine clock's zero, for the log's and the
    /// capture's timestamps (the splicer reads no clock).
    wall: WallAnchor,
    limits: Limits,
    embryonic: Embryonic,
    /// Session deadlines, earliest first: (deadline, index, serial); an
    /// entry whose session moved on is skipped when it comes up.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Sessions closed both ways, in the order they closed (index,
    /// serial): their legs linger in TIME-WAIT and make way first when the
    /// table is full.
    closed_order: VecDeque<(usize, u64)>,
    /// The serial of the next session.
    next_serial: u64,
    counters: SpliceCounters,
    /// The most frequent server names of the ClientHellos.
    top_sni: TopNames,
    /// The policy and TLS context new sessions start with.
    current: Generation,
    /// Earlier generations still used by a session that started with
    /// them (see [`Generation`]).
    older: Vec<Generation>,
    /// What the forgers of generations already gone had counted.
    forged_before: ForgeCounters,
    log: Option<Arc<ConnectionLog>>,
    /// The inspection loop, when the inspection ports are configured.
    inspection: Option<InspectionSettings>,
    /// Both inspection ports' links are up.
    inspection_links_up: bool,
    /// Where the plaintext of intercepted TLS sessions is recorded (the
    /// decrypted capture, PCAP-over-IP, the mirror port).
    taps: Taps,
    /// The sessions of every worker, when there are several.
    directory: Option<WorkerDirectory>,
    /// Where server legs to other endpoints than their client's are
    /// registered, when there are several workers.
    legs: Option<LegRegistry>,
    /// The `[[service]]` entries: their destinations are terminated.
    services: Option<Arc<Services>>,
    /// The `[[starttls]]` entries, by destination port.
    starttls: HashMap<u16, StarttlsPort>,
    /// The FTP data connections intercepted control channels announced.
    ftp_data: Expectations,
    /// The owned addresses of the server port, when configured.
    owned: Option<OwnedSources>,
}

/// Where a session's stream in the decrypted capture runs: client and
/// server, their MACs, and the client's ISN.
#[derive(Debug, Clone, Copy)]
struct StreamEnds {
    client: SocketAddr,
    server: SocketAddr,
    macs: ([u8; 6], [u8; 6]),
    client_isn: u32,
}

impl StreamEnds {
    fn of(session: &Session) -> StreamEnds {
        let tuple = session.tuple;
        StreamEnds {
            client: SocketAddr::new(tuple.src_ip, tuple.src_port),
            server: SocketAddr::new(tuple.dst_ip, tuple.dst_port),
            macs: (session.l2.src_mac, session.l2.dst_mac),
            client_isn: session.client_isn,
        }
    }
}

/// Records one session's plaintext in the taps as it is passed on (the
/// stream starts with the first bytes), stamped `at`.
struct CaptureTap<'a> {
    taps: &'a mut Taps,
    stream: &'a mut Option<CaptureStream>,
    ends: StreamEnds,
    at: SystemTime,
}

impl pipeline::Tap for CaptureTap<'_> {
    fn data(&mut self, from_client: bool, bytes: &[u8]) {
        let StreamEnds {
            client,
            server,
            macs: (client_mac, server_mac),
            client_isn: isn,
        } = self.ends;
        self.stream
            .get_or_insert_with(|| CaptureStream::new(client, server, client_mac, server_mac, isn))
            .data(&mut *self.taps, from_client, bytes, self.at);
    }

    fn fin(&mut self, from_client: bool) {
        if let Some(stream) = self.stream.as_mut() {
            stream.fin(&mut *self.taps, from_client, self.at);
        }
    }
}

impl CaptureTap<'_> {
    fn reset(&mut self, from_client: bool) {
        if let Some(stream) = self.stream.as_mut() {
            stream.reset(&mut *self.taps, from_client, self.at);
        }
    }
}

/// A session's legs on the stack, as its pipeline reaches them (a leg the
/// session does not have takes and gives nothing, and counts as finished).
struct StackLegs<'a> {
    stack: &'a mut Stack,
    flows: SessionFlows,
}

/// The flows of a session's legs: client, server, inspect_out, inspect_in.
#[derive(Debug, Clone, Copy)]
struct SessionFlows([Option<FlowId>; 4]);

impl SessionFlows {
    fn of(session: &Session) -> SessionFlows {
        SessionFlows([session.client, session.server, session.loop_out, session.loop_back])
    }

    fn get(&self, leg: Leg) -> Option<FlowId> {
        let [client, server, out, back] = self.0;
        match leg {
            Leg::Client => client,
            Leg::Server => server,
            Leg::InspectOut => out,
            Leg::InspectIn => back,
        }
    }
}

impl LegIo for StackLegs<'_> {
    fn exists(&self, leg: Leg) -> bool {
        self.flows.get(leg).is_some()
    }

    fn recv_in_place(
        &mut self,
        leg: Leg,
        max: usize,
        grow: usize,
        read: &mut dyn FnMut(&mut [u8], bool) -> usize,
    ) -> usize {
        self.flows.get(leg).map_or(0, |flow| {
            self.stack
                .recv_in_place(flow, max, grow, |data, stuck| read(data, stuck))
                .unwrap_or(0)
        })
    }

    fn send(&mut self, leg: Leg, bytes: &[u8]) -> usize {
        self.flows
            .get(leg)
            .map_or(0, |flow| self.stack.send(flow, bytes).unwrap_or(0))
    }

    fn send_in_place(&mut self, leg: Leg, write: &mut dyn FnMut(&mut [u8]) -> usize) -> usize {
        self.flows.get(leg).map_or(0, |flow| {
            self.stack.send_in_place(flow, |room| write(room)).unwrap_or(0)
        })
    }

    fn unacknowledged(&self, leg: Leg) -> usize {
        self.flows
            .get(leg)
            .map_or(0, |flow| self.stack.send_queue(flow).unwrap_or(0))
    }

    fn relay(&mut self, from: Leg, to: Leg, max: usize, tap: &mut dyn FnMut(&[u8])) -> usize {
        match (self.flows.get(from), self.flows.get(to)) {
            (Some(from), Some(to)) => self.stack.relay_tapped(from, to, max, tap).unwrap_or(0),
            _ => 0,
        }
    }

    fn peer_finished(&self, leg: Leg) -> Option<bool> {
        self.flows.get(leg).and_then(|flow| self.stack.peer_finished(flow).ok())
    }

    fn close(&mut self, leg: Leg) {
        if let Some(flow) = self.flows.get(leg) {
            let _ = self.stack.close(flow);
        }
    }

    fn abort(&mut self, leg: Leg) {
        if let Some(flow) = self.flows.get(leg) {
            let _ = self.stack.abort(flow);
        }
    }
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

/// Whether a client aborted because its Encrypted Client Hello was not
/// accepted (it sends ech_required, then retries without ECH).
fn fell_back_from_ech(err: &MitmError) -> bool {
    matches!(
        err,
        MitmError::Client(rustls::Error::AlertReceived(
            rustls::AlertDescription::EncryptedClientHelloRequired
        ))
    )
}

/// Expects the data connections an FTP control channel announced (in
/// this pump, before the replies that announced them reach the
/// client); fails the session when its control channel cannot be
/// followed or announces more than can be expected, so that no data
/// connection goes unrecognised.
fn take_announcements(
    expectations: &mut Expectations,
    counters: &mut SpliceCounters,
    session: &mut Session,
    now: Instant,
) {
    let control_server = session.tuple.dst_ip;
    let client = session.tuple.src_ip;
    while let Some(announced) = session.conn.next_announcement() {
        let expected = match announced {
            Err(err) => Err(format!("FTP control channel: {err}")),
            Ok(pipeline::Announcement {
                event: DataChannelEvent::ServerListens(endpoint),
                protection,
            }) => {
                // EPSV names no address; a 227 often names the server's
                // private one behind NAT: the control connection's
                // server is expected, and the named one too.
                let named = endpoint.address.filter(|address| *address != control_server);
                if let Some(named) = named {
                    tracing::info!(
                        "FTP 227 names {named}, the control connection's server is {control_server}: \
                         both expected"
                    );
                }
                [Some(control_server), named]
                    .into_iter()
                    .flatten()
                    .try_for_each(|server| {
                        expect_ftp_data(
                            (&mut *expectations, &mut *counters),
                            session,
                            Opener::Client,
                            (client, server, endpoint.port),
                            protection,
                            now,
                        )
                    })
            }
            Ok(pipeline::Announcement {
                event: DataChannelEvent::ClientListens(endpoint),
                protection,
            }) => {
                let listener = endpoint.address.unwrap_or(client);
                expect_ftp_data(
                    (&mut *expectations, &mut *counters),
                    session,
                    Opener::Server,
                    (control_server, listener, endpoint.port),
                    protection,
                    now,
                )
            }
            Ok(_) => Ok(()),
        };
        if let Err(reason) = expected {
            tracing::info!("{reason}: resetting {:?}", session.tuple);
            counters.ftp_data_failed += 1;
            session.ended = Some(reason);
            session.conn.fail();
            return;
        }
    }
}

fn expect_ftp_data(
    (expectations, counters): (&mut Expectations, &mut SpliceCounters),
    session: &Session,
    opener: Opener,
    endpoints: (IpAddr, IpAddr, u16),
    protection: starttls::DataProtection,
    now: Instant,
) -> Result<(), String> {
    let sessions = session.conn.tls().and_then(|tls| tls.resumption_group().cloned());
    expectations
        .expect(session.serial, opener, endpoints, protection, sessions, now)
        .map_err(|err| format!("FTP control channel: {err}"))?;
    counters.ftp_data_expected += 1;
    Ok(())
}

/// The connection log's `starttls` of an FTP data connection.
const FTP_DATA: &str = "ftp-data";

fn protection_name(protection: starttls::DataProtection) -> &'static str {
    match protection {
        starttls::DataProtection::Private => "TLS, PROT P",
        starttls::DataProtection::Clear => "plain, PROT C",
    }
}

/// The connection-log record of a session that ended (`event_type` by the
/// mode: TLS interception or splice).
fn record(session: &Session, tls_mode: bool, end: OffsetDateTime) -> ConnectionRecord {
    let tuple = session.tuple;
    let (client, server) = (
        SocketAddr::new(tuple.src_ip, tuple.src_port),
        SocketAddr::new(tuple.dst_ip, tuple.dst_port),
    );
    let info = session
        .conn
        .tls()
        .map(|tls| tls.info.clone())
        .or_else(|| session.conn.tls_server().map(|server| server.info.clone()))
        .or_else(|| session.conn.tls_client().map(|client| client.info.clone()))
        .or_else(|| session.tls_info.clone())
        .unwrap_or_default();
    let verified = info.upstream_verified.clone();
    let (client_grade, server_grade) = (info.client_grade, info.server_grade);
    ConnectionRecord {
        timestamp: connlog::timestamp(end),
        flow_id: session.flow_id,
        event_type: if session.terminate {
            EventType::TlsTerminate
        } else if tls_mode {
            EventType::TlsIntercept
        } else {
            EventType::Connection
        },
        src_ip: client.ip(),
        src_port: client.port(),
        dest_ip: server.ip(),
        dest_port: server.port(),
        proto: "TCP",
        community_id: connlog::community_id(0, client, server, connlog::IPPROTO_TCP),
        in_port: "client",
        start: connlog::timestamp(session.started),
        end: connlog::timestamp(end),
        duration_ms: u64::try_from((end - session.started).whole_milliseconds()).unwrap_or(0),
        decision: match &session.decision {
            _ if session.terminate => "terminate",
            Some(verdict) => verdict.action.name(),
            None if tls_mode => "intercept",
            None => "splice",
        },
        reason: match (&session.service, &session.decision) {
            (Some(service), _) => format!("service {}", service.name),
            (None, _) if session.terminate => "a [[service]] destination".into(),
            (None, Some(verdict)) => verdict.reason.clone(),
            (None, None) => match (&session.starttls, session.ftp_data) {
                (Some(starttls), _) => format!("[[starttls]] {} on port {}", starttls.protocol, session.tuple.dst_port),
                (None, Some(protection)) => format!(
                    "an FTP data connection ({}, {}) announced on an intercepted control connection",
                    match session.opener {
                        Opener::Client => "passive",
                        Opener::Server => "active: the server connected",
                    },
                    protection_name(protection)
                ),
                (None, None) => format!("destination port {} is intercepted", session.tuple.dst_port),
            },
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
        client_forward_secrecy: client_grade.map(|grade| grade.forward_secrecy),
        client_grade: client_grade.map(|grade| grade.grade.letter()),
        server_forward_secrecy: server_grade.map(|grade| grade.forward_secrecy),
        server_grade: server_grade.map(|grade| grade.grade.letter()),
        ech: info.ech_offered,
        upstream_cert_sha256: info.upstream_fingerprint,
        upstream_verified: verified.as_ref().map(Result::is_ok),
        upstream_verify_error: verified.and_then(Result::err),
        forged_cert_sha256: info.forged_fingerprint,
        forged_cache_hit: info.forged_cache_hit,
        bytes_client_to_server: session.conn.bytes().0,
        bytes_server_to_client: session.conn.bytes().1,
        plaintext_client_to_server: info.plaintext_client_to_server,
        plaintext_server_to_client: info.plaintext_server_to_client,
        inspection: session.inspection_note.clone(),
        learned: session.learned.clone(),
        starttls: match (&session.starttls, session.ftp_data) {
            (Some(starttls), _) => Some(starttls.protocol.name()),
            (None, Some(_)) => Some(FTP_DATA),
            (None, None) => None,
        },
        starttls_outcome: session.starttls.as_ref().map(|starttls| starttls.outcome),
        starttls_discarded_bytes: session
            .starttls
            .as_ref()
            .map(|_| session.conn.injected_bytes_discarded()),
        ended: session.ended.clone().unwrap_or_else(|| "closed".into()),
    }
}

/// The backend leg of a terminated connection: from the client's address
/// and port to the service's backend. Err if the backend's address is of
/// another family than the client's (a transparent leg cannot change it).
fn backend_tuple(tuple: &FlowTuple, service: &Service) -> Result<FlowTuple, String> {
    let (dst_ip, dst_port) = match service.backend {
        Backend::SamePeer { port } => (tuple.dst_ip, port),
        Backend::Transparent { address, port } | Backend::FromAppliance { address, port } => (address, port),
    };
    if dst_ip.is_ipv4() != tuple.src_ip.is_ipv4() {
        return Err(format!(
            "the backend {dst_ip} of service {} is not of the client's address family",
            service.name
        ));
    }
    Ok(FlowTuple {
        dst_ip,
        dst_port,
        ..*tuple
    })
}

/// The token a session waits for its backend's next hop under: its slot
/// and (the low half of) its serial, so that a later session in the slot
/// is not taken for it.
fn waiter(index: usize, serial: u64) -> u64 {
    (index as u64) << 32 | (serial & u64::from(u32::MAX))
}

/// The slot and serial half of a [`waiter`] token.
fn waiter_of(token: u64) -> (usize, u32) {
    ((token >> 32) as usize, token as u32)
}

/// Microseconds from `start` to `end` on the engine clock (0 if the clock
/// went back).
fn micros_between(start: Instant, end: Instant) -> u64 {
    if end > start {
        (end - start).total_micros()
    } else {
        0
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
    for leg in SessionFlows::of(session).0.into_iter().flatten() {
        let _ = stack.abort(leg);
    }
}

/// Drops the loop legs of a session silently.
fn discard_loop(stack: &mut Stack, session: &mut Session) {
    if session.conn.has_loop() {
        session.conn.drop_loop();
        for leg in [session.loop_out.take(), session.loop_back.take()]
            .into_iter()
            .flatten()
        {
            stack.discard(leg);
        }
    }
}

/// Bypasses an origin that refused the appliance's TLS: its server leg
/// already carried the appliance's ClientHello and the refusal, so the
/// client's own ClientHello (kept in the session's bypass backlog) goes
/// raw over a fresh connection with the same addresses and ports. The old
/// leg is reset; the fresh one is opened when it is gone (see
/// [`open_replacement_server_leg`]), at once if it already is.
fn replace_server_leg(stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
    discard_loop(stack, session);
    match session.server.take() {
        Some(old) if stack.abort(old).is_ok() => session.replaced_server = Some(old),
        _ => open_replacement_server_leg(stack, index, session, now),
    }
}

/// Opens the fresh server leg of [`replace_server_leg`].
fn open_replacement_server_leg(stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
    session.replaced_server = None;
    match stack.connect(
        Side::Server.index(),
        &session.tuple,
        session.l2,
        owner(index, Leg::Server),
        now,
    ) {
        Ok(server) => {
            if let Some(client) = session.client {
                let _ = stack.mirror_timestamps(client, server);
            }
            session.server = Some(server);
        }
        Err(err) => {
            session.ended = Some(format!("no second connection to the server: {err}"));
            session.conn.fail();
            abort_all(stack, session);
        }
    }
}

/// The inspection port a loop leg is on, for messages.
fn loop_side(leg: Leg) -> &'static str {
    if leg == Leg::InspectOut {
        "inspect_out"
    } else {
        "inspect_in"
    }
}

fn leg_finished(stack: &Stack, flow: FlowId) -> bool {
    stack.peer_finished(flow).unwrap_or(true)
}

impl Splicer {
    pub fn new(hold_synack: bool, policy: Policy, limits: Limits, wall: WallAnchor) -> Self {
        Splicer {
            sessions: Slab::new(),
            shared: Shared {
                wall,
                limits,
                embryonic: Embryonic::default(),
                timers: BinaryHeap::new(),
                closed_order: VecDeque::new(),
                next_serial: 0,
                hold_synack,
                counters: SpliceCounters::default(),
                top_sni: TopNames::default(),
                current: Generation {
                    number: 0,
                    policy,
                    tls: None,
                    sessions: 0,
                },
                older: Vec::new(),
                forged_before: ForgeCounters::default(),
                log: None,
                inspection: None,
                inspection_links_up: true,
                taps: Taps::default(),
                directory: None,
                legs: None,
                services: None,
                starttls: HashMap::new(),
                ftp_data: Expectations::default(),
                owned: None,
            },
            shutdown_pending: None,
        }
    }

    /// The policy new connections follow.
    pub fn policy(&self) -> &Policy {
        &self.shared.current.policy
    }

    /// Sends the plaintext of every intercepted session through the
    /// inspection ports.
    pub fn set_inspection(&mut self, settings: InspectionSettings) {
        self.shared.inspection = Some(settings);
    }

    /// Records the plaintext of every intercepted TLS session in `taps`
    /// (replacing any set before).
    pub fn set_taps(&mut self, taps: Taps) {
        self.shared.taps = taps;
    }

    /// The outputs of the plaintext, to add the mirror port's queue or to
    /// take the frames waiting for it.
    pub fn taps_mut(&mut self) -> &mut Taps {
        &mut self.shared.taps
    }

    /// Whether both inspection ports' links are up (new loops are only
    /// tried while they are). When they go down with `fail_open`, every
    /// session through the box goes on without it at once.
    pub fn set_inspection_links_up(&mut self, stack: &mut Stack, up: bool, now: Instant) {
        let went_down = self.shared.inspection_links_up && !up;
        self.shared.inspection_links_up = up;
        let fail_open = self
            .shared
            .inspection
            .is_some_and(|settings| settings.failure == InspectFailure::FailOpen);
        if !(went_down && fail_open) {
            return;
        }
        for (index, session) in self.sessions.iter_mut() {
            if session.conn.has_loop() && !session.conn.failed() {
                self.shared
                    .inspection_failed(stack, session, "an inspection port's link went down", now);
                self.shared.pump(stack, index, session, now);
            }
        }
    }

    /// Logs a decision taken at the client's SYN, a bypass or a block (no
    /// session was opened).
    pub fn log_decision(&mut self, tuple: &FlowTuple, verdict: &Verdict, now: Instant) {
        if verdict.action == Action::Bypass {
            self.shared.counters.bypassed += 1;
        }
        let ended = format!("{} at the SYN", verdict.action.name());
        let event = if verdict.action == Action::Block {
            EventType::SynBlock
        } else {
            EventType::SynBypass
        };
        self.shared
            .log_at_syn(tuple, event, verdict.action.name(), verdict.reason.clone(), ended, now);
    }

    /// Refuses a client's SYN with a RST, as the policy says (no flow is
    /// needed, so this works with a full table too).
    pub fn block(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, verdict: &Verdict, now: Instant) {
        self.shared.counters.blocked += 1;
        let _ = stack.refuse(Side::Client.index(), frame, class, now);
        if let Some((tuple, _)) = class.tcp() {
            let verdict = Verdict {
                action: Action::Block,
                reason: verdict.reason.clone(),
            };
            let blocked = self.shared.counters.blocked;
            self.log_decision(tuple, &verdict, now);
            self.shared.counters.blocked = blocked;
        }
    }

    /// Watches the preamble of connections to the ports of `entries`
    /// (`[[starttls]]`) and intercepts their upgrade (those that
    /// intercept; the engine bypasses or blocks the others at their SYN).
    pub fn set_starttls(&mut self, entries: &[StarttlsPort]) {
        self.shared.starttls = entries.iter().map(|entry| (entry.port, *entry)).collect();
    }

    /// The FTP data connection `syn` opens, if an intercepted control
    /// channel of any worker announced it (see [`crate::ftpdata`]; another
    /// worker's is handed to it): a client's SYN to a passive one is
    /// admitted by [`Splicer::open`], a server's SYN to an active one by
    /// [`Splicer::open_active_ftp_data`].
    pub fn expected_ftp_data(&self, syn: &FlowTuple, now: Instant) -> Option<Expected> {
        self.shared.ftp_data.awaits(syn, now)
    }

    /// Admits a server's SYN (arrived on the server port) that opens an
    /// active-mode FTP data connection (`PORT`/`EPRT`) an intercepted
    /// control channel announced, as [`Splicer::open`] admits a client's:
    /// the appliance answers it as the client and connects to the client as
    /// the server (see [`LegRoles`]); under `PROT P` it is the TLS server
    /// towards the client (the TLS client, RFC 4217) and the TLS client
    /// towards the server, resuming the control connection's session.
    /// A SYN no live expectation awaits is left to the caller (an error).
    pub fn open_active_ftp_data(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
    ) -> Result<Admission, StackError> {
        self.admit(stack, frame, class, now, Opening::ActiveFtpData)
    }

    /// The `[[starttls]]` entry of destination `port`, if any.
    pub fn starttls(&self, port: u16) -> Option<StarttlsPort> {
        self.shared.starttls.get(&port).copied()
    }

    /// The verdict of a `[[starttls]]` entry that bypasses or blocks.
    fn starttls_verdict(&self, tuple: &FlowTuple, action: Action) -> Verdict {
        let protocol = self.starttls(tuple.dst_port).map_or("?", |entry| entry.protocol.name());
        Verdict {
            action,
            reason: format!("[[starttls]] {protocol} on port {} ({})", tuple.dst_port, action.name()),
        }
    }

    /// Logs a `[[starttls]]` bypass at the client's SYN (it is bridged).
    pub fn log_starttls_bypass(&mut self, tuple: &FlowTuple, now: Instant) {
        let verdict = self.starttls_verdict(tuple, Action::Bypass);
        self.log_decision(tuple, &verdict, now);
    }

    /// Refuses a client's SYN to a `[[starttls]]` port that blocks.
    pub fn block_starttls(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, now: Instant) {
        let Some((tuple, _)) = class.tcp() else {
            return;
        };
        let verdict = self.starttls_verdict(tuple, Action::Block);
        self.block(stack, frame, class, &verdict, now);
    }

    /// Registers every session in `directory`, shared with the other
    /// workers, so that each can tell a frame of another's connection.
    pub fn set_directory(&mut self, directory: Arc<SessionDirectory>) {
        self.shared.directory = Some(WorkerDirectory::new(directory));
    }

    /// Registers every server leg this worker opens to other endpoints
    /// than its client's in `registry`, so that the other workers hand
    /// their frames to this one (see [`crate::handoff`]).
    pub fn set_leg_registry(&mut self, registry: LegRegistry) {
        self.shared.legs = Some(registry);
    }

    /// Keeps the FTP data connections this worker's control connections
    /// announce in `expectations`, shared with the other workers (see
    /// [`crate::ftpdata`]), instead of a table of its own.
    pub fn set_ftp_expectations(&mut self, expectations: Expectations) {
        self.shared.ftp_data = expectations;
    }

    /// Counts the SYN of an FTP data connection handed to the worker whose
    /// control connection announced it.
    pub fn count_ftp_data_handed_over(&mut self) {
        self.shared.counters.ftp_data_handed_over += 1;
    }

    /// Whether another worker holds a session for the client→server
    /// `tuple` (always false without a shared directory).
    pub fn held_by_another_worker(&self, tuple: &FlowTuple) -> bool {
        self.shared
            .directory
            .as_ref()
            .is_some_and(|directory| directory.held_elsewhere(tuple))
    }

    /// Terminates TLS for the destinations of `services` (see
    /// [`Splicer::open_service`]).
    pub fn set_services(&mut self, services: Arc<Services>) {
        self.shared.services = (!services.is_empty()).then_some(services);
    }

    /// Whether a service answers `tuple`'s destination and port: its SYN
    /// is answered by the appliance ([`Splicer::open_service`]).
    pub fn serves(&self, tuple: &FlowTuple) -> bool {
        self.shared
            .services
            .as_ref()
            .is_some_and(|services| services.owns(tuple))
    }

    /// Whether client→server `tuple`, from the client port, goes to a
    /// service's backend ([`Services::backend_of`]): nothing from the
    /// client port may reach one (see [`Splicer::refuse_backend_direct`]).
    pub fn reaches_backend(&self, tuple: &FlowTuple) -> bool {
        self.shared
            .services
            .as_ref()
            .is_some_and(|services| services.backend_of(tuple).is_some())
    }

    /// Opens the backend legs of services with `source = "appliance"` from
    /// the owned addresses of `owned`.
    pub fn set_owned(&mut self, owned: OwnedSources) {
        self.shared.owned = Some(owned);
    }

    /// The owned addresses of the server port, if any.
    pub fn owned_mut(&mut self) -> Option<&mut OwnedSources> {
        self.shared.owned.as_mut()
    }

    /// Refuses a client's SYN straight to a service's backend with a RST, as
    /// a closed port would (no flow is needed, so this works with a full
    /// table too): only the appliance connects there, from the server port,
    /// its header first; a client that did could write its own PROXY header,
    /// which the backend trusts. Counted (`backend_direct_refused`) and
    /// logged.
    pub fn refuse_backend_direct(&mut self, stack: &mut Stack, frame: &[u8], class: &FrameClass, now: Instant) {
        let Some((tuple, _)) = class.tcp() else {
            return;
        };
        let Some(name) = self
            .shared
            .services
            .as_ref()
            .and_then(|services| services.backend_of(tuple))
            .map(|service| service.name.clone())
        else {
            return;
        };
        self.shared.counters.backend_direct_refused += 1;
        let _ = stack.refuse(Side::Client.index(), frame, class, now);
        self.shared.log_at_syn(
            tuple,
            EventType::SynBlock,
            "block",
            format!("the backend of service {name}: only the appliance connects there"),
            "refused: straight to a service's backend (RST)".into(),
            now,
        );
    }

    /// Writes a record of every session that ends to `log`.
    pub fn set_log(&mut self, log: Arc<ConnectionLog>) {
        self.shared.log = Some(log);
    }

    /// Intercepts TLS on every new session with `context`.
    pub fn set_tls(&mut self, context: TlsContext) {
        self.shared.current.tls = Some(context);
    }

    /// Puts `rules` in force for the connections that start from now on
    /// (a reload, see `crate::reload`); sessions already open keep the
    /// policy and TLS context they started with until their TLS handshakes
    /// are done. The connection log is replaced at once.
    pub fn reload(&mut self, rules: Rules) {
        let shared = &mut self.shared;
        let next = Generation {
            number: shared.current.number + 1,
            policy: rules.policy,
            tls: rules.tls,
            sessions: 0,
        };
        let previous = std::mem::replace(&mut shared.current, next);
        if previous.sessions > 0 {
            shared.older.push(previous);
        } else {
            shared.retire_generation(&previous);
        }
        shared.log = rules.log;
        shared.services = (!rules.services.is_empty()).then_some(rules.services);
    }

    /// The forging counters of every TLS context this splicer had: hits
    /// and misses since it started, the cache of the contexts in use.
    pub fn forge_counters(&self) -> ForgeCounters {
        let shared = &self.shared;
        shared.older.iter().fold(
            shared.forged_before + shared.current.forge_counters(),
            |sum, generation| sum + generation.forge_counters(),
        )
    }

    pub fn counters(&self) -> SpliceCounters {
        let mut counters = self.shared.counters;
        if let Some(owned) = &self.shared.owned {
            let (neighbours, dropped) = owned.counters();
            counters.neighbour_requests_answered = neighbours.answered;
            counters.neighbour_requests_sent = neighbours.requests_sent;
            counters.neighbour_unresolved = neighbours.failed + neighbours.refused;
            counters.owned_address_dropped = dropped;
        }
        counters
    }

    /// The most frequent server names so far (bounded, see [`TopNames`]).
    pub fn top_sni(&self) -> &TopNames {
        &self.shared.top_sni
    }

    /// Buffer capacity the live TLS sessions hold (see
    /// [`TlsSession::buffer_capacity`]); walks every session.
    pub fn tls_buffer_bytes(&self) -> usize {
        self.sessions
            .iter()
            .map(|(_, session)| session.conn.tls_buffer_capacity())
            .sum()
    }

    /// Shutdown: resets every live leg (client, server and inspection
    /// legs) of up to `max` sessions, one RST each; legs in TIME-WAIT (their
    /// connection is over) are left alone. The first call takes the
    /// sessions open at that moment. The RSTs go out at the stack's next
    /// flush. Returns how many sessions were visited: 0 once all were.
    pub fn reset_for_shutdown(&mut self, stack: &mut Stack, max: usize, now: Instant) -> usize {
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
            let mut reset = 0;
            for leg in SessionFlows::of(session).0.into_iter().flatten() {
                let live = stack
                    .state(leg)
                    .is_ok_and(|state| !matches!(state, netstack::TcpState::TimeWait | netstack::TcpState::Closed));
                if live && stack.abort(leg).is_ok() {
                    reset += 1;
                }
            }
            if reset > 0 {
                self.shared.counters.reset_at_shutdown += reset;
                session.conn.fail();
                session
                    .ended
                    .get_or_insert_with(|| "reset: the appliance stopped".into());
                // The appliance resets both ends; the capture records one RST.
                self.shared.record_reset(session, false, now);
            }
        }
        visited
    }

    /// Admits a client SYN that arrived on the client port (see
    /// [`Admission`]): within the limits it opens a session, evicting the
    /// oldest embryonic one when embryonic sessions fill their half of the
    /// table or the table is full. An error (a SYN the stack did not take)
    /// leaves the SYN to the caller.
    pub fn open(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
    ) -> Result<Admission, StackError> {
        self.admit(stack, frame, class, now, Opening::Intercept)
    }

    /// Admits a client SYN to a service's destination as [`Splicer::open`]
    /// does, for termination: the appliance answers the SYN itself (it is
    /// the server there), reads the ClientHello, picks the service by its
    /// SNI and only then opens the backend leg.
    pub fn open_service(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
    ) -> Result<Admission, StackError> {
        self.admit(stack, frame, class, now, Opening::Terminate)
    }

    fn admit(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
        opening: Opening,
    ) -> Result<Admission, StackError> {
        let (syn, _) = class.tcp().ok_or(StackError::NotASyn)?;
        let tuple = &LegRoles::session_tuple(opening.opener(), syn);
        let terminate = opening == Opening::Terminate;
        let limits = self.shared.limits;
        let embryonic_share = (limits.max_sessions / 2).max(1);
        let pressed = |splicer: &Splicer| {
            let embryonic = &splicer.shared.embryonic;
            splicer.sessions.len() >= limits.max_sessions
                || embryonic.live >= embryonic_share
                || embryonic.of_client(tuple.src_ip) >= limits.max_embryonic_per_client
        };
        if pressed(self) {
            // Events of this burst not handled yet may have confirmed
            // sessions (a client's ACK just before its next SYN).
            self.handle_events(stack, now);
        }
        if self.shared.embryonic.of_client(tuple.src_ip) >= limits.max_embryonic_per_client {
            self.shared.counters.embryonic_client_limit_dropped += 1;
            return Ok(Admission::Dropped);
        }
        let full = self.sessions.len() >= limits.max_sessions;
        let made_way = (full && self.reclaim_closed(stack, now))
            || (full || self.shared.embryonic.live >= embryonic_share) && self.evict_oldest_embryonic(stack, now);
        // A converted connection is never bridged: its server expects the
        // other protocol.
        let refuse_only =
            terminate || opening == Opening::Intercept && self.shared.current.policy.conversion_at_syn(tuple).is_some();
        let opener = opening.opener();
        if full && !made_way {
            return Ok(self.shared.at_capacity(stack, frame, class, now, (opener, refuse_only)));
        }
        let mut started = self.start(stack, frame, class, now, opening);
        // The flow table ran full before the session count (loop legs, a
        // table smaller than the sessions need): an embryonic session makes
        // way there too.
        if matches!(started, Err(StackError::TooManyFlows(_)))
            && (self.reclaim_closed(stack, now) || self.evict_oldest_embryonic(stack, now))
        {
            started = self.start(stack, frame, class, now, opening);
        }
        match started {
            Ok(()) => Ok(Admission::Opened),
            Err(StackError::TooManyFlows(_)) => {
                Ok(self.shared.at_capacity(stack, frame, class, now, (opener, refuse_only)))
            }
            Err(err) => Err(err),
        }
    }

    /// Frees the session that closed first, if its legs only wait out
    /// TIME-WAIT (their connection is over: nothing is sent); false if
    /// there is none.
    fn reclaim_closed(&mut self, stack: &mut Stack, now: Instant) -> bool {
        while let Some(&(index, serial)) = self.shared.closed_order.front() {
            let Some(session) = self.sessions.get_mut(index).filter(|session| session.serial == serial) else {
                self.shared.closed_order.pop_front();
                continue;
            };
            let legs = SessionFlows::of(session).0;
            if !legs.iter().all(|&leg| leg_over(stack, leg)) {
                // Its last ACKs are still under way: it will be soon.
                return false;
            }
            self.shared.closed_order.pop_front();
            for leg in legs.into_iter().flatten() {
                stack.discard(leg);
            }
            self.shared.counters.time_wait_reclaimed += 1;
            let session = self.sessions.remove(index);
            self.shared.retire(session, now);
            return true;
        }
        false
    }

    /// Drops the oldest embryonic session without a word to its client (a
    /// server leg the server already answered is reset); false if there is
    /// none.
    fn evict_oldest_embryonic(&mut self, stack: &mut Stack, now: Instant) -> bool {
        while let Some((index, serial)) = self.shared.embryonic.order.pop_front() {
            let Some(session) = self.sessions.get_mut(index) else {
                continue;
            };
            if session.serial != serial || session.confirmed {
                continue;
            }
            self.shared.counters.embryonic_evicted += 1;
            session.conn.fail();
            session.ended = Some("evicted: embryonic connections filled their share of the table".into());
            session.conn.drop_loop();
            for leg in [
                session.client.take(),
                session.server.take(),
                session.loop_out.take(),
                session.loop_back.take(),
            ]
            .into_iter()
            .flatten()
            {
                // A peer that never answered hears nothing; one that did is reset.
                match stack.state(leg) {
                    Ok(netstack::TcpState::SynSent | netstack::TcpState::SynReceived) => stack.discard(leg),
                    _ => {
                        let _ = stack.abort(leg);
                    }
                }
            }
            // The reset legs go now, so the table has room at once.
            stack.flush(now);
            let session = self.sessions.remove(index);
            self.shared.retire(session, now);
            return true;
        }
        false
    }

    /// Opens a session: accepts the SYN transparently and connects to the
    /// other end as its sender (see [`LegRoles`]).
    fn start(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
        opening: Opening,
    ) -> Result<(), StackError> {
        let (syn, info) = class.tcp().ok_or(StackError::NotASyn)?;
        let opener = opening.opener();
        let roles = LegRoles::of(opener);
        let tuple = &LegRoles::session_tuple(opener, syn);
        let terminate = opening == Opening::Terminate;
        // An `upgrade` or `downgrade` rule may move the server leg to
        // another port (as a service's backend leg, from the client's
        // address and port).
        let conversion = match opening {
            Opening::Intercept => self.shared.current.policy.conversion_at_syn(tuple),
            Opening::Terminate | Opening::ActiveFtpData => None,
        };
        // An FTP data connection a control channel announced (taken once
        // the session opened). A server's SYN opens only one (the control
        // connection may have ended since the caller looked).
        let ftp_data = match conversion {
            None if !terminate => self.shared.ftp_data.awaits(syn, now),
            _ => None,
        };
        if opener == Opener::Server && ftp_data.is_none() {
            return Err(StackError::NotASyn);
        }
        let server_tuple = FlowTuple {
            dst_port: conversion
                .as_ref()
                .map_or(tuple.dst_port, |conversion| conversion.server_port(tuple.dst_port)),
            ..*tuple
        };
        // Legs of an earlier connection with the same 5-tuple that linger
        // in TIME-WAIT make way for the new one.
        for leg in [
            stack.lookup(Side::Client.index(), tuple),
            stack.lookup(Side::Server.index(), &server_tuple.reversed()),
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
        // A terminated client's SYN-ACK is not held: the appliance is its server.
        let accepted = stack.accept(
            LegRoles::side(roles.accepted).index(),
            frame,
            class,
            shared.hold_synack && !terminate,
            owner(index, roles.accepted),
            now,
        )?;
        // The connected leg goes from the SYN's source to its destination
        // (the server's port moved by a conversion).
        let l2 = L2Header::same_direction(&class.l2);
        let connect_tuple = LegRoles::session_tuple(opener, &server_tuple);
        let connected = if terminate {
            None
        } else {
            let side = LegRoles::side(roles.connected).index();
            match stack.connect(side, &connect_tuple, l2, owner(index, roles.connected), now) {
                Ok(connected) => {
                    let _ = stack.mirror_timestamps(accepted, connected);
                    let _ = stack.mirror_syn(accepted, connected);
                    Some(connected)
                }
                Err(err) => {
                    stack.discard(accepted);
                    return Err(err);
                }
            }
        };
        let (client, server) = match opener {
            Opener::Client => (Some(accepted), connected),
            Opener::Server => (connected, Some(accepted)),
        };
        // The session's frames (loop, capture) run client → server.
        let session_l2 = match opener {
            Opener::Client => l2,
            Opener::Server => L2Header::reply_to(&class.l2),
        };
        let started = OffsetDateTime::from(shared.wall.at(now));
        let mut session = Session::new(*tuple, session_l2, started, info.seq_number);
        session.opener = opener;
        session.serial = shared.next_serial;
        shared.next_serial += 1;
        session.stage_since = now;
        session.opened = now;
        session.last_activity = now;
        shared.embryonic.opened(tuple.src_ip, index, session.serial);
        session.client = client;
        session.server = server;
        session.terminate = terminate;
        if server.is_some() {
            // An upgrade or downgrade may move the server's port.
            shared.register_server_leg(&mut session, &server_tuple);
        }
        // An FTP data connection a control channel announced: TLS from its
        // first byte (PROT P, its upstream resuming a session of the
        // control connection's own store, never another's), or plain
        // (through the box and the taps).
        if ftp_data.is_some() {
            shared.ftp_data.take(syn, now);
        }
        session.ftp_data = ftp_data.as_ref().map(|expected| expected.protection);
        shared.counters.ftp_data_active += u64::from(opener == Opener::Server);
        let tls = shared
            .current
            .tls
            .as_ref()
            .filter(|_| session.ftp_data != Some(starttls::DataProtection::Clear))
            .map(|_| {
                let mut tls = Box::new(TlsSession::new(tuple.dst_ip));
                if let Some(sessions) = ftp_data.as_ref().and_then(|expected| expected.sessions.clone()) {
                    tls.resume_within(sessions);
                }
                tls
            });
        match session.ftp_data {
            Some(starttls::DataProtection::Private) => shared.counters.ftp_data_tls += 1,
            Some(starttls::DataProtection::Clear) => shared.counters.ftp_data_clear += 1,
            None => {}
        }
        // Its SYN may have reached another worker, which handed it here:
        // the other workers hand its frames here too, until it ends.
        if let Some(legs) = shared.legs.as_ref().filter(|_| session.ftp_data.is_some()) {
            legs.register_data_flow(tuple);
            session.registered_data_flow = Some(*tuple);
        }
        // A `[[starttls]]` port: the preamble is watched, its upgrade intercepted.
        let starttls = shared
            .starttls
            .get(&tuple.dst_port)
            .filter(|entry| !terminate && ftp_data.is_none() && entry.action == Action::Intercept && tls.is_some())
            .map(|entry| (entry, starttls::negotiation(entry.protocol)));
        let mut unconverted = None;
        session.conn = match (&conversion, starttls) {
            _ if terminate => Connection::terminated(),
            (Some(conversion), _) => {
                session.decision = shared.current.policy.at_syn(tuple);
                shared.converted_connection(conversion, tuple).unwrap_or_else(|reason| {
                    unconverted = Some(reason);
                    Connection::new(None, shared.hold_synack)
                })
            }
            (None, Some((entry, watcher))) => {
                shared.counters.starttls_sessions += 1;
                session.starttls = Some(StarttlsState {
                    protocol: entry.protocol,
                    outcome: "plaintext",
                    waiting_since: None,
                    discarded_counted: 0,
                });
                Connection::starttls(watcher, tuple.dst_ip, entry.require_tls, shared.hold_synack)
            }
            (None, None) => Connection::new(tls, shared.hold_synack),
        };
        let downgrade = conversion.as_ref().is_some_and(|c| c.action == Action::Downgrade);
        if session.conn.tls().is_some() || downgrade || session.starttls.is_some() {
            // Its ClientHello and handshakes follow the rules in force now
            // (a downgrade's certificate is forged at its ClientHello).
            session.generation = Some(shared.current.number);
            shared.current.sessions += 1;
        }
        let converted = conversion.is_some();
        session.conversion = conversion;
        shared.counters.tls_sessions_live += u64::from(session.conn.has_tls());
        shared.counters.sessions_opened += 1;
        shared.counters.sessions_live += 1;
        if let Some(reason) = unconverted {
            tracing::warn!("{reason}: resetting {tuple:?}");
            shared.counters.conversion_failed += 1;
            session.ended = Some(reason);
            session.conn.fail();
            abort_all(stack, &session);
        } else if !session.conn.has_tls() || converted {
            // Plain TCP, a STARTTLS preamble (its loop stays after the
            // upgrade) or a conversion (whose plaintext is exposed from its
            // start): the bytes go through the box from the start.
            shared.start_inspection(stack, index, &mut session, now);
        }
        if let Some(directory) = shared.directory.as_mut() {
            directory.opened(tuple);
        }
        entry.insert(session);
        self.shared.compact_orders(&self.sessions);
        Ok(())
    }

    /// Resets the sessions whose ClientHello, TLS handshakes or idle time
    /// ran past their limit (counted, and logged when they end).
    pub fn expire_timeouts(&mut self, stack: &mut Stack, now: Instant) {
        let shared = &mut self.shared;
        while let Some(&Reverse((at, index, serial))) = shared.timers.peek() {
            if at > now {
                break;
            }
            shared.timers.pop();
            let Some(session) = self.sessions.get_mut(index) else {
                continue;
            };
            if session.serial != serial || session.timer != Some(at) {
                continue;
            }
            session.timer = None;
            match shared.deadline(session) {
                Some((due, expiry)) if due <= now => shared.time_out(stack, session, expiry, now),
                Some(_) => shared.schedule(index, session),
                None => {}
            }
        }
        // Entries of sessions that moved on or ended: rebuilt from the live
        // deadlines once they outnumber them.
        if shared.timers.len() > 2 * self.sessions.len() + 1024 {
            shared.timers = self
                .sessions
                .iter()
                .filter_map(|(index, session)| session.timer.map(|at| Reverse((at, index, session.serial))))
                .collect();
        }
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
        let Some(session) = self.sessions.get_mut(index).filter(|s| s.conn.has_loop()) else {
            return false;
        };
        if session.loop_out != Some(out) || session.loop_back.is_some() {
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
                let _ = stack.set_max_retransmissions(back, LOOP_MAX_RETRANSMISSIONS);
                session.loop_back = Some(back);
                true
            }
            Err(_) => false,
        }
    }

    /// An ICMP destination-unreachable error arrived about the SYN of the
    /// server leg `server`. If that leg is still connecting, the session
    /// ends: an intercepted one silently on both legs, and the error goes
    /// on to the client quoting its own ISN, so the client learns of it
    /// exactly as it would without the appliance; a terminated one (whose
    /// client the appliance answered as the server) with a RST to the
    /// client, and the error, about the appliance's own backend leg, stops
    /// here.
    pub fn server_unreachable(&mut self, stack: &mut Stack, server: FlowId) -> Unreachable {
        let Some((index, leg)) = stack.owner(server).ok().map(session_of) else {
            return Unreachable::NotConnecting;
        };
        let Some(session) = self.sessions.get_mut(index) else {
            return Unreachable::NotConnecting;
        };
        let connecting = leg == Leg::Server && LegRoles::of(session.opener).connected == leg;
        if !connecting || session.server != Some(server) || session.conn.established() || session.conn.failed() {
            return Unreachable::NotConnecting;
        }
        session.conn.fail();
        stack.discard(server);
        discard_loop(stack, session);
        if session.terminate {
            self.shared.counters.backend_refused += 1;
            session.ended = Some("backend unreachable (ICMP)".into());
            tracing::info!("backend unreachable (ICMP): {:?}", session.tuple);
            self.shared.end_tls(session);
            if let Some(client) = session.client {
                let _ = stack.abort(client);
            }
            return Unreachable::BackendLeg;
        }
        let tuple = session.tuple;
        if let Some(conversion) = session
            .conversion
            .as_ref()
            .filter(|c| c.server_port(tuple.dst_port) != tuple.dst_port)
        {
            // The error quotes the port the server leg moved to, which the
            // client never used: it gets a RST instead (a refused connection).
            self.shared.counters.server_unreachable += 1;
            session.ended = Some(format!(
                "server unreachable (ICMP) on port {}",
                conversion.server_port(tuple.dst_port)
            ));
            self.shared.end_tls(session);
            if let Some(client) = session.client {
                let _ = stack.abort(client);
            }
            return Unreachable::BackendLeg;
        }
        session.ended = Some("server unreachable (ICMP)".into());
        self.shared.counters.server_unreachable += 1;
        if let Some(client) = session.client {
            stack.discard(client);
        }
        Unreachable::PassOn {
            client_isn: session.client_isn,
        }
    }

    /// Reacts to every pending event of the stack.
    pub fn handle_events(&mut self, stack: &mut Stack, now: Instant) {
        self.handle_neighbour_outcomes(stack, now);
        while let Some(event) = stack.next_event() {
            self.handle(stack, event, now);
        }
    }

    /// Connects the backend legs whose next hop was resolved; resets the
    /// clients of those whose next hop did not answer.
    fn handle_neighbour_outcomes(&mut self, stack: &mut Stack, now: Instant) {
        while let Some(outcome) = self.shared.owned.as_mut().and_then(OwnedSources::next_outcome) {
            let (waiter, resolved) = match outcome {
                Outcome::Resolved { waiter, l2 } => (waiter, Ok(l2)),
                Outcome::Failed { waiter, next_hop } => (waiter, Err(next_hop)),
            };
            let (index, serial) = waiter_of(waiter);
            let Some(session) = self
                .sessions
                .get_mut(index)
                .filter(|session| session.serial as u32 == serial)
            else {
                continue;
            };
            let Some(tuple) = session.pending_backend.take() else {
                continue;
            };
            if let Some(owned) = self.shared.owned.as_mut() {
                owned.release(&tuple);
            }
            let failure = match resolved {
                Ok(l2) => self
                    .shared
                    .connect_server_leg(stack, index, session, &tuple, l2, now)
                    .map_err(|err| format!("no connection to the backend: {err}"))
                    .err(),
                Err(next_hop) => Some(format!(
                    "backend unreachable: {next_hop} did not answer ARP/neighbour discovery"
                )),
            };
            if let Some(reason) = failure {
                tracing::info!("termination refused: {reason}");
                self.shared.counters.backend_refused += 1;
                session.ended = Some(reason);
                session.conn.fail();
                self.shared.end_tls(session);
                abort_all(stack, session);
            }
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
        if !session.logged && session.conn.closed() {
            session.logged = true;
            shared
                .counters
                .connection_seconds
                .observe(micros_between(session.opened, now));
            if let Some(log) = &shared.log {
                log.write(&record(
                    session,
                    shared.intercepts_tls(session),
                    OffsetDateTime::from(shared.wall.at(now)),
                ));
            }
            // Everything has been sent both ways (each FIN went after its
            // direction's last bytes): the TLS state is not needed while the
            // legs linger in TIME-WAIT.
            shared.end_tls(session);
            shared.closed_order.push_back((index, session.serial));
        }
        let loop_gone = session.loop_out.is_none() && session.loop_back.is_none();
        if session.client.is_none() && session.server.is_none() && loop_gone {
            let session = self.sessions.remove(index);
            shared.retire(session, now);
        } else {
            shared.schedule(index, session);
        }
    }
}

/// The generation numbered `number` among `current` and `older` (the
/// current one if it is gone, which a session holding it prevents).
fn generation_mut<'a>(
    current: &'a mut Generation,
    older: &'a mut [Generation],
    number: Option<u64>,
) -> &'a mut Generation {
    match older.iter_mut().find(|generation| Some(generation.number) == number) {
        Some(generation) => generation,
        None => current,
    }
}

impl Shared {
    /// The generation `session` holds, or the current one.
    fn generation_of(&self, session: &Session) -> &Generation {
        self.older
            .iter()
            .find(|generation| Some(generation.number) == session.generation)
            .unwrap_or(&self.current)
    }

    /// Whether TLS is intercepted on `session`'s connection (mode "tls").
    fn intercepts_tls(&self, session: &Session) -> bool {
        self.generation_of(session).tls.is_some()
    }

    /// `session` no longer needs its generation; an earlier generation no
    /// session holds any more is dropped.
    fn release_generation(&mut self, session: &mut Session) {
        let Some(number) = session.generation.take() else {
            return;
        };
        let generation = generation_mut(&mut self.current, &mut self.older, Some(number));
        generation.sessions = generation.sessions.saturating_sub(1);
        if let Some(at) = self
            .older
            .iter()
            .position(|generation| generation.number == number && generation.sessions == 0)
        {
            let gone = self.older.remove(at);
            self.retire_generation(&gone);
        }
    }

    /// Keeps the forging totals of a generation that goes.
    fn retire_generation(&mut self, gone: &Generation) {
        let counted = gone.forge_counters();
        self.forged_before = self.forged_before
            + ForgeCounters {
                hits: counted.hits,
                misses: counted.misses,
                ..ForgeCounters::default()
            };
    }

    /// Accounts for a session taken out of the table, and logs it (and
    /// its duration) if it was not yet.
    fn retire(&mut self, mut session: Session, now: Instant) {
        if let (Some(tuple), Some(owned)) = (session.pending_backend.take(), self.owned.as_mut()) {
            owned.release(&tuple);
        }
        let tls = self.intercepts_tls(&session);
        self.release_generation(&mut session);
        if session.starttls.is_some() {
            self.ftp_data.forget(session.serial);
        }
        if let Some(directory) = self.directory.as_mut() {
            directory.ended(&session.tuple);
        }
        if let (Some(legs), Some(leg)) = (&self.legs, session.registered_leg.take()) {
            legs.unregister(&leg);
        }
        if let (Some(legs), Some(syn)) = (&self.legs, session.registered_data_flow.take()) {
            legs.unregister_data_flow(&syn);
        }
        if !session.confirmed {
            self.embryonic.left(session.tuple.src_ip);
        }
        self.counters.sessions_live = self.counters.sessions_live.saturating_sub(1);
        self.counters.tls_sessions_live = self
            .counters
            .tls_sessions_live
            .saturating_sub(u64::from(session.conn.has_tls()));
        self.counters.embryonic_live = self.embryonic.live as u64;
        if !session.logged {
            self.counters
                .connection_seconds
                .observe(micros_between(session.opened, now));
            if let Some(log) = &self.log {
                log.write(&record(&session, tls, OffsetDateTime::from(self.wall.at(now))));
            }
        }
    }

    /// The client completed its handshake: the session is no longer
    /// embryonic, and the wait for its ClientHello begins.
    fn confirm(&mut self, session: &mut Session, now: Instant) {
        if session.confirmed {
            return;
        }
        session.confirmed = true;
        session.stage_since = now;
        self.embryonic.left(session.tuple.src_ip);
        self.counters.embryonic_live = self.embryonic.live as u64;
    }

    /// Drops the entries of the embryonic and the closed order whose
    /// sessions moved on or ended, once they outnumber the live ones.
    fn compact_orders(&mut self, sessions: &Slab<Session>) {
        self.counters.embryonic_live = self.embryonic.live as u64;
        if self.embryonic.order.len() > 2 * self.embryonic.live + 1024 {
            self.embryonic.order.retain(|&(index, serial)| {
                sessions
                    .get(index)
                    .is_some_and(|session| session.serial == serial && !session.confirmed)
            });
        }
        if self.closed_order.len() > 2 * sessions.len() + 1024 {
            self.closed_order
                .retain(|&(index, serial)| sessions.get(index).is_some_and(|session| session.serial == serial));
        }
    }

    /// A SYN the table has no room for: refused with a RST, or bridged
    /// uninspected if `tcp.at_capacity = "bridge"`; counted and logged. A
    /// SYN to a service, or one a rule upgrades or downgrades
    /// (`refuse_only`), is always refused: nothing but the appliance serves
    /// a service's destination, and a converted connection's server speaks
    /// the other protocol. The RST goes to the SYN's sender (`opener`).
    fn at_capacity(
        &mut self,
        stack: &mut Stack,
        frame: &[u8],
        class: &FrameClass,
        now: Instant,
        (opener, refuse_only): (Opener, bool),
    ) -> Admission {
        let Some((syn, _)) = class.tcp() else {
            return Admission::Dropped;
        };
        let tuple = &LegRoles::session_tuple(opener, syn);
        let reason = format!(
            "the table is full ({} connections, tcp.max_connections)",
            self.limits.max_sessions
        );
        let at_capacity = if refuse_only {
            AtCapacity::Refuse
        } else {
            self.limits.at_capacity
        };
        match at_capacity {
            AtCapacity::Refuse => {
                self.counters.refused_at_capacity += 1;
                let opening_side = LegRoles::side(LegRoles::of(opener).accepted);
                let _ = stack.refuse(opening_side.index(), frame, class, now);
                self.log_at_syn(
                    tuple,
                    EventType::SynBlock,
                    "refuse",
                    reason,
                    "refused at capacity (RST)".into(),
                    now,
                );
                Admission::Refused
            }
            AtCapacity::Bridge => {
                self.counters.bridged_at_capacity += 1;
                let ended = "bridged uninspected at capacity (tcp.at_capacity = \"bridge\")".into();
                self.log_at_syn(tuple, EventType::SynBypass, "bypass", reason, ended, now);
                Admission::Bridge
            }
        }
    }

    /// Writes the connection-log record of a connection decided at its SYN
    /// (no session).
    fn log_at_syn(
        &self,
        tuple: &FlowTuple,
        event: EventType,
        decision: &'static str,
        reason: String,
        ended: String,
        now: Instant,
    ) {
        if let Some(log) = &self.log {
            let at = OffsetDateTime::from(self.wall.at(now));
            let session = Session::new(*tuple, L2Header::new([0; 6], [0; 6], &[]), at, 0);
            let mut record = record(&session, self.current.tls.is_some(), at);
            record.event_type = event;
            record.decision = decision;
            record.reason = reason;
            record.ended = ended;
            log.write(&record);
        }
    }

    /// When a confirmed session's current stage runs out, and which stage
    /// that is; `None` for embryonic sessions (the stack's timeouts bound
    /// them), sessions that failed or closed both ways, and idle sessions
    /// without an idle timeout.
    fn deadline(&self, session: &Session) -> Option<(Instant, Expiry)> {
        if !session.confirmed || session.conn.failed() || session.conn.closed() {
            return None;
        }
        if session.conversion.is_some() && session.conn.has_tls() && !session.conn.handshakes_done() {
            return Some((session.stage_since + self.limits.handshake_timeout, Expiry::Handshake));
        }
        if let Some(since) = session.starttls.as_ref().and_then(|starttls| starttls.waiting_since) {
            return Some((since + self.limits.starttls_timeout, Expiry::Starttls));
        }
        if let (Some(server), true) = (session.conn.tls_server(), session.terminate) {
            if session.service.is_none() {
                return Some((
                    session.stage_since + self.limits.client_hello_timeout,
                    Expiry::ClientHello,
                ));
            }
            if !server.is_established() {
                return Some((session.stage_since + self.limits.handshake_timeout, Expiry::Handshake));
            }
        }
        if let (Some(tls), true) = (session.conn.tls(), self.intercepts_tls(session)) {
            if session.decision.is_none() {
                return Some((
                    session.stage_since + self.limits.client_hello_timeout,
                    Expiry::ClientHello,
                ));
            }
            if tls.info.client_version.is_none() {
                return Some((session.stage_since + self.limits.handshake_timeout, Expiry::Handshake));
            }
        }
        let idle = self.limits.idle_timeout?;
        Some((session.last_activity.max(session.stage_since) + idle, Expiry::Idle))
    }

    /// Queues the session's deadline if it is earlier than the one queued
    /// (a later one is found when the queued one comes up).
    fn schedule(&mut self, index: usize, session: &mut Session) {
        let Some((due, _)) = self.deadline(session) else {
            return;
        };
        if session.timer.is_none_or(|queued| due < queued) {
            session.timer = Some(due);
            self.timers.push(Reverse((due, index, session.serial)));
        }
    }

    /// Resets every leg of a session whose stage ran out.
    fn time_out(&mut self, stack: &mut Stack, session: &mut Session, expiry: Expiry, now: Instant) {
        let limits = self.limits;
        let (counter, ended) = match expiry {
            Expiry::ClientHello => (
                &mut self.counters.client_hello_timeouts,
                format!(
                    "timed out: no complete ClientHello within {} ms",
                    limits.client_hello_timeout.total_millis()
                ),
            ),
            Expiry::Handshake => (
                &mut self.counters.handshake_timeouts,
                format!(
                    "timed out: TLS handshakes not finished within {} ms",
                    limits.handshake_timeout.total_millis()
                ),
            ),
            Expiry::Idle => (
                &mut self.counters.idle_timeouts,
                format!(
                    "timed out: idle for {} ms",
                    limits.idle_timeout.map_or(0, |idle| idle.total_millis())
                ),
            ),
            Expiry::Starttls => (
                &mut self.counters.starttls_timeouts,
                format!(
                    "timed out: no answer from the server in the STARTTLS preamble within {} ms",
                    limits.starttls_timeout.total_millis()
                ),
            ),
        };
        if let Some(starttls) = session.starttls.as_mut().filter(|_| expiry == Expiry::Starttls) {
            starttls.outcome = "failed";
            starttls.waiting_since = None;
        }
        *counter += 1;
        tracing::debug!("{ended}: resetting {:?}", session.tuple);
        session.ended = Some(ended);
        session.conn.fail();
        self.end_tls(session);
        self.record_reset(session, false, now);
        abort_all(stack, session);
    }

    /// Opens the loop of a session through the inspection box, if there is
    /// one; when the box is unavailable, applies the failure policy.
    fn start_inspection(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        let Some(settings) = self.inspection else {
            return;
        };
        if !self.inspection_links_up {
            self.inspection_failed(stack, session, "an inspection port's link is down", now);
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
                session.conn.open_loop();
                session.loop_out = Some(out);
            }
            Err(err) => self.inspection_failed(stack, session, &format!("no loop connection: {err}"), now),
        }
    }

    /// The box cannot take a session, or died under it: relay it
    /// uninspected (fail-open; a live one goes on from what the box had
    /// passed back, byte-exact) or reset it (fail-closed, or a live session
    /// whose unreturned bytes were not all kept).
    fn inspection_failed(&mut self, stack: &mut Stack, session: &mut Session, reason: &str, now: Instant) {
        let failure = self.inspection.map(|settings| settings.failure).unwrap_or_default();
        let live = session.conn.loop_through();
        let failed_open = match failure {
            InspectFailure::FailOpen if live => {
                let flows = SessionFlows::of(session);
                session.conn.take_unreturned(&mut StackLegs { stack, flows })
            }
            InspectFailure::FailOpen => Some(0),
            InspectFailure::FailClosed => None,
        };
        discard_loop(stack, session);
        match failed_open {
            Some(unreturned) if live => {
                self.counters.inspect_failed_open += 1;
                self.counters.inspect_failed_open_live += 1;
                self.counters.inspect_unreturned_bytes += unreturned as u64;
                tracing::warn!(
                    "inspection failed under a live connection ({reason}); relaying it on uninspected, \
                     {unreturned} bytes the box had not passed back sent directly"
                );
                session.inspection_note = Some(format!("inspected, then fail-open: {reason}"));
            }
            Some(_) => {
                self.counters.inspect_failed_open += 1;
                tracing::warn!("inspection unavailable ({reason}); relaying a connection uninspected");
                session.inspection_note = Some(format!("fail-open, not inspected: {reason}"));
            }
            None => {
                self.counters.inspect_failed_closed += 1;
                let reason = if live {
                    format!("{reason}; the box held more than the {TLS_BACKLOG} bytes kept to fail open")
                } else {
                    reason.to_owned()
                };
                tracing::warn!("inspection unavailable ({reason}); resetting a connection");
                session.inspection_note = Some(format!("fail-closed: {reason}"));
                session.ended = Some("reset: inspection unavailable".into());
                session.conn.fail();
                if live {
                    self.end_tls(session);
                    self.record_reset(session, false, now);
                }
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
        if leg == Leg::Server && session.replaced_server == Some(event.flow) {
            if event.kind == EventKind::Closed {
                open_replacement_server_leg(stack, index, session, now);
            }
            return;
        }
        let (this, other) = match leg {
            Leg::Client => (session.client, session.server),
            _ => (session.server, session.client),
        };
        if this != Some(event.flow) {
            return;
        }
        let roles = LegRoles::of(session.opener);
        match event.kind {
            EventKind::Connected | EventKind::Readable | EventKind::Writable | EventKind::PeerClosed => {
                if (event.kind, leg) == (EventKind::Connected, roles.accepted) {
                    self.confirm(session, now);
                }
                // The other end accepted: now the opener may have its SYN-ACK.
                if (event.kind, leg) == (EventKind::Connected, roles.connected) {
                    if let Some(accepted) = other {
                        if session.conn.server_connected() && !session.terminate {
                            let _ = stack.release_synack(accepted);
                        }
                    }
                }
                self.pump(stack, index, session, now);
            }
            EventKind::Reset | EventKind::TimedOut => {
                let Some(other) = other else {
                    if let Some(from) = session.conn.reset_by() {
                        // The other side reset and is gone, and this leg,
                        // still being delivered to, reset or gave up on its
                        // peer: the session ends, its loop legs too.
                        if !session.conn.failed() {
                            self.end_with_reset(stack, session, from == Leg::Client, now);
                        }
                        return;
                    }
                    if session.terminate && !session.conn.failed() {
                        // The client went before the backend leg existed.
                        self.counters.resets += 1;
                        session.ended.get_or_insert_with(|| "reset by the client".into());
                        session.conn.fail();
                        self.end_tls(session);
                    }
                    return;
                };
                if leg == Leg::Server && !session.conn.established() && session.terminate {
                    // The backend refused or never answered: the client,
                    // whose handshake the appliance answered, gets a RST.
                    session.conn.fail();
                    self.counters.backend_refused += 1;
                    session.ended = Some(if event.kind == EventKind::Reset {
                        "backend refused".into()
                    } else {
                        "backend did not answer".into()
                    });
                    tracing::info!("{}: {:?}", session.ended.as_deref().unwrap_or_default(), session.tuple);
                    self.end_tls(session);
                    let _ = stack.abort(other);
                    discard_loop(stack, session);
                } else if leg == roles.connected && !session.conn.established() {
                    session.conn.fail();
                    // The server (the client of an active FTP data
                    // connection) refused (RST) or never answered: tell the
                    // opener exactly that, a RST or nothing at all.
                    let peer = if leg == Leg::Client { "client" } else { "server" };
                    if event.kind == EventKind::Reset {
                        self.counters.server_refused += 1;
                        session.ended = Some(format!("{peer} refused"));
                        let _ = stack.abort(other);
                    } else {
                        self.counters.server_timed_out += 1;
                        session.ended = Some(format!("{peer} silent"));
                        stack.discard(other);
                    }
                    discard_loop(stack, session);
                } else if session.conn.closed() {
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
                    let relaying = matches!(session.conn.state(), pipeline::State::Open(_));
                    if event.kind == EventKind::Reset && relaying && session.conn.peer_reset(leg) {
                        // What the peer sent before its RST goes on first
                        // (a client that closes with unread bytes resets
                        // right after its last data and close_notify).
                        self.pump(stack, index, session, now);
                    } else {
                        self.record_reset(session, leg == Leg::Client, now);
                        abort_all(stack, session);
                    }
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
                    if session.conn.failed() {
                        // Already answered (RST queued, or silence).
                    } else if leg == roles.connected && !session.conn.established() {
                        stack.discard(other);
                        discard_loop(stack, session);
                    } else if session.conn.reset_by() == Some(leg) {
                        // The reset leg was read to the end: its RST may
                        // follow its bytes now.
                        self.pump(stack, index, session, now);
                    } else if !(leg_finished(stack, other) || session.conn.closed()) {
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
        if !session.conn.has_loop() {
            return;
        }
        let this = if leg == Leg::InspectOut {
            session.loop_out
        } else {
            session.loop_back
        };
        if this != Some(event.flow) {
            return;
        }
        match event.kind {
            EventKind::Connected | EventKind::Readable | EventKind::Writable | EventKind::PeerClosed => {
                if event.kind == EventKind::Connected && leg == Leg::InspectOut && session.conn.loop_passed_syn() {
                    self.counters.inspected += 1;
                    session.inspection_note = Some("inspected".into());
                    if let Some(settings) = self.inspection {
                        let _ = stack.set_timeout(event.flow, settings.timeout);
                        let _ = stack.set_max_retransmissions(event.flow, LOOP_MAX_RETRANSMISSIONS);
                    }
                }
                self.pump(stack, index, session, now);
            }
            EventKind::TimedOut if leg == Leg::InspectOut && !session.conn.loop_through() => {
                let waited = self
                    .inspection
                    .map_or(0, |settings| settings.syn_timeout.total_millis());
                self.inspection_failed(
                    stack,
                    session,
                    &format!("the box did not pass the SYN within {waited} ms"),
                    now,
                );
                self.pump(stack, index, session, now);
            }
            EventKind::TimedOut
                if self
                    .inspection
                    .is_some_and(|settings| settings.failure == InspectFailure::FailOpen) =>
            {
                // The box answered none of the retransmissions: it died.
                let side = loop_side(leg);
                self.inspection_failed(
                    stack,
                    session,
                    &format!("the box stopped answering on {side} (every retransmission unanswered)"),
                    now,
                );
                self.pump(stack, index, session, now);
            }
            EventKind::Reset | EventKind::TimedOut => {
                // The box reset the connection (or let it die): it ends.
                let side = loop_side(leg);
                if event.kind == EventKind::Reset {
                    self.counters.inspect_blocked += 1;
                    session.inspection_note = Some(format!("blocked by the inspector (reset on {side})"));
                    session.ended = Some("reset by the inspector".into());
                } else {
                    self.counters.resets += 1;
                    session.ended = Some(format!("inspection loop timed out on {side}"));
                }
                session.conn.fail();
                self.end_tls(session);
                // As the endpoints see it: the box's reset towards the
                // client poses as the server, and the other way round.
                self.record_reset(session, leg == Leg::InspectIn, now);
                abort_all(stack, session);
            }
            EventKind::Closed => {
                if leg == Leg::InspectOut {
                    session.loop_out = None;
                } else {
                    session.loop_back = None;
                }
            }
        }
    }

    /// Relays both ways as far as buffers allow (through the TLS session in
    /// mode "tls", through the inspection box when there is one) and passes
    /// on FINs once a direction has delivered everything.
    fn pump(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        // A terminated client's handshake runs while its backend connects.
        if !(session.conn.established() || session.terminate) || session.conn.failed() {
            return;
        }
        let bytes_before = session.conn.bytes();
        self.pump_session(stack, index, session, now);
        let bytes = session.conn.bytes();
        if bytes != bytes_before {
            session.last_activity = now;
            self.counters.bytes_client_to_server += bytes.0 - bytes_before.0;
            self.counters.bytes_server_to_client += bytes.1 - bytes_before.1;
        }
        self.pass_on_reset(stack, session, now);
    }

    /// A peer's RST follows what it sent before it (see
    /// [`Connection::peer_reset`]): once that was delivered, every other leg
    /// is reset.
    fn pass_on_reset(&mut self, stack: &mut Stack, session: &mut Session, now: Instant) {
        if session.conn.failed() {
            return;
        }
        let flows = SessionFlows::of(session);
        let Some(to) = session.conn.reset_to_pass_on(&StackLegs { stack, flows }) else {
            return;
        };
        self.end_with_reset(stack, session, to == Leg::Server, now);
    }

    /// Ends a session a peer reset (the client if `from_client`): every
    /// leg left, the other side's and the inspection loop's, is reset.
    fn end_with_reset(&mut self, stack: &mut Stack, session: &mut Session, from_client: bool, now: Instant) {
        session.conn.fail();
        self.record_reset(session, from_client, now);
        abort_all(stack, session);
    }

    /// [`Shared::pump`] of an established session.
    fn pump_session(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        if session.terminate {
            if session.conn.tls_server().is_some() {
                self.pump_terminated(stack, index, session, now);
            }
            return;
        }
        if session.conversion.is_some() && session.conn.has_tls() {
            self.pump_converted(stack, session, now);
            return;
        }
        if session.conn.in_preamble().is_some() {
            self.pump_preamble(stack, session, now);
            if session.conn.in_preamble().is_some() || session.conn.failed() {
                return;
            }
        }
        if session.conn.tls().is_some() && self.intercepts_tls(session) {
            if self.pump_tls_session(stack, index, session, now) {
                return;
            }
            // Bypassed: from now on the bytes pass untouched.
            self.end_tls(session);
        }
        let flows = SessionFlows::of(session);
        session.conn.pump_plain(&mut StackLegs { stack, flows });
    }

    /// The TLS part of [`Shared::pump`]: false once the session was
    /// bypassed (its bytes then pass untouched).
    fn pump_tls_session(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) -> bool {
        let ends = StreamEnds::of(session);
        let at = self.wall.at(now);
        let flows = SessionFlows::of(session);
        let Generation { policy, tls, .. } = generation_mut(&mut self.current, &mut self.older, session.generation);
        let Some(context) = tls.as_mut() else {
            return false;
        };
        let stream = &mut session.capture;
        let taps = &mut self.taps;
        let mut tap = taps.any().then_some(CaptureTap { taps, stream, ends, at });
        let mut open_loop = false;
        let was_established = session.conn.handshakes_done();
        let outcome = loop {
            let before = session.conn.handshakes_done();
            let pumped = session.conn.pump_tls(
                &mut StackLegs { stack, flows },
                Some(&mut *context),
                tap.as_mut().map(|tap| tap as &mut dyn pipeline::Tap),
            );
            if let Err(err) = pumped {
                break Err(err);
            }
            if !before && session.conn.handshakes_done() {
                self.counters.tls_intercepted += 1;
            }
            let Some(pending) = session.conn.pending() else {
                break Ok(true);
            };
            let verdict = match &pending {
                Pending::Hello { sni, ech, .. } => {
                    let verdict = policy.at_hello(&session.tuple, sni.as_deref(), now);
                    self.counters.ech_offered += u64::from(*ech);
                    if let Some(sni) = sni {
                        self.top_sni.note(sni);
                    }
                    if *ech && verdict.action == Action::Intercept {
                        policy.on_ech(&session.tuple, sni.as_deref())
                    } else {
                        verdict
                    }
                }
                Pending::Rejected(rejection) => policy.on_rejection(&session.tuple, rejection),
            };
            if session.decision.is_none() {
                // The ClientHello is complete: the handshakes' time starts.
                session.stage_since = now;
            }
            session.decision = Some(verdict.clone());
            match verdict.action {
                Action::Intercept => {
                    let expose = self.inspection.is_some() || tap.is_some();
                    if let Err(err) = session.conn.intercept(context, expose) {
                        break Err(err);
                    }
                    // A STARTTLS session's loop (if any) opened at its start.
                    open_loop = self.inspection.is_some() && session.starttls.is_none();
                }
                Action::Bypass => {
                    self.counters.bypassed += 1;
                    session.conn.bypass();
                    break Ok(false);
                }
                // Conversions are decided at the SYN, never at a hello.
                Action::Block | Action::Upgrade | Action::Downgrade => {
                    self.counters.blocked += 1;
                    session.ended = Some("blocked by policy".into());
                    session.conn.fail();
                    break Ok(true);
                }
            }
        };
        take_announcements(&mut self.ftp_data, &mut self.counters, session, now);
        if !was_established && session.conn.handshakes_done() {
            // Both handshakes are done (counted as `tls_intercepted`).
            self.counters
                .handshake_seconds
                .observe(micros_between(session.stage_since, now));
        }
        let info = session.conn.tls().map(|tls| &tls.info);
        let legacy = match &outcome {
            Err(MitmError::Server(_)) => info.and_then(|info| info.legacy_upstream.clone()),
            _ => None,
        };
        match (outcome, legacy) {
            (Err(_), Some(cause)) => {
                self.counters.legacy_upstream += 1;
                let sni = info.and_then(|info| info.sni.as_deref());
                let mut verdict = policy.on_legacy_upstream(&session.tuple, sni, &cause);
                if verdict.action == Action::Bypass && session.opener == Opener::Server {
                    // The bypass reconnects to the server, which opened an
                    // active FTP data connection and listens nowhere.
                    verdict = Verdict {
                        action: Action::Block,
                        reason: format!("{} (an active FTP data connection cannot be reopened)", verdict.reason),
                    };
                }
                tracing::info!("{}: {}", verdict.action.name(), verdict.reason);
                if verdict.action == Action::Bypass {
                    self.counters.bypassed += 1;
                    session.conn.bypass();
                } else {
                    self.counters.blocked += 1;
                    session.ended = Some("blocked by policy".into());
                    session.conn.fail();
                }
                let bypass = verdict.action == Action::Bypass;
                session.decision = Some(verdict);
                if bypass {
                    replace_server_leg(stack, index, session, now);
                    return false;
                }
            }
            (Err(err), None) => {
                tracing::info!("TLS interception failed: {err}");
                self.counters.tls_failed += 1;
                session.learned = session
                    .conn
                    .tls()
                    .and_then(|tls| Self::learn_from_failure(policy, tls, &err, &session.tuple, now));
                session.ended = Some(if fell_back_from_ech(&err) {
                    format!("TLS failed: {err} (the client saw ECH rejected and retries without it)")
                } else {
                    format!("TLS failed: {err}")
                });
                session.conn.fail();
            }
            (Ok(false), _) => return false,
            (Ok(true), _) => {}
        }
        if session.conn.failed() {
            self.end_tls(session);
            abort_all(stack, session);
            return true;
        }
        if open_loop {
            self.start_inspection(stack, index, session, now);
            if session.conn.failed() {
                self.end_tls(session);
                return true;
            }
        }
        if session.conn.tls().is_some_and(TlsSession::is_established) {
            // Both handshakes are done: the session needs its generation no more.
            self.release_generation(session);
        }
        self.finish_tls_directions(stack, session, now);
        true
    }

    /// The STARTTLS preamble part of [`Shared::pump`]: relays it (through
    /// the loop and the taps), counts and logs what it did, runs its
    /// timer, and resets the session when it cannot be relayed safely or
    /// `require_tls` blocks it. Once upgraded the session is an intercepted
    /// TLS one, its ClientHello next.
    fn pump_preamble(&mut self, stack: &mut Stack, session: &mut Session, now: Instant) {
        let ends = StreamEnds::of(session);
        let at = self.wall.at(now);
        let flows = SessionFlows::of(session);
        let server_bytes = session.conn.bytes().1;
        let stream = &mut session.capture;
        let taps = &mut self.taps;
        let mut tap = taps.any().then_some(CaptureTap { taps, stream, ends, at });
        let pumped = session.conn.pump_preamble(
            &mut StackLegs { stack, flows },
            tap.as_mut().map(|tap| tap as &mut dyn pipeline::Tap),
        );
        let Some(starttls) = session.starttls.as_mut() else {
            return;
        };
        while let Some(event) = session.conn.next_preamble_event() {
            match event {
                PreambleEvent::Refused => {
                    self.counters.starttls_refused += 1;
                    starttls.outcome = "refused";
                }
                PreambleEvent::Upgraded => {
                    self.counters.starttls_upgraded += 1;
                    // The connection holds TLS state from now on.
                    self.counters.tls_sessions_live += 1;
                    starttls.outcome = "upgraded";
                    // The wait for its ClientHello begins.
                    session.stage_since = now;
                }
                PreambleEvent::Offered
                | PreambleEvent::Requested
                | PreambleEvent::Accepted
                | PreambleEvent::PlaintextContent => {}
            }
        }
        let discarded = session.conn.injected_bytes_discarded();
        self.counters.starttls_injected_bytes_discarded += discarded - starttls.discarded_counted;
        starttls.discarded_counted = discarded;
        starttls.waiting_since = match starttls.waiting_since {
            _ if !session.conn.preamble_awaiting_server() => None,
            // A byte of the answer came: the server is alive.
            Some(_) if session.conn.bytes().1 != server_bytes => Some(now),
            waiting => Some(waiting.unwrap_or(now)),
        };
        let Err(err) = pumped else {
            return;
        };
        starttls.waiting_since = None;
        match err {
            PreambleError::PlaintextContent(_) | PreambleError::UpgradeRefused(_) => {
                self.counters.starttls_plaintext_blocked += 1;
                starttls.outcome = "blocked";
                session.decision = Some(Verdict {
                    action: Action::Block,
                    reason: err.to_string(),
                });
                session.ended = Some(format!("blocked: {err}"));
            }
            PreambleError::Negotiation(_) | PreambleError::ServerSpokeAfterAccept(_) => {
                self.counters.starttls_failed += 1;
                starttls.outcome = "failed";
                session.ended = Some(format!("STARTTLS failed: {err}"));
            }
        }
        tracing::info!("{}: {:?}", session.ended.as_deref().unwrap_or_default(), session.tuple);
        session.conn.fail();
        self.end_tls(session);
        self.record_reset(session, false, now);
        abort_all(stack, session);
    }

    /// [`Shared::pump`] of a terminated session: the client's TLS with the
    /// service's certificate, the service picked at its ClientHello, the
    /// backend leg opened then; the plaintext is relayed (through the
    /// inspection loop and the taps when the service says so). A client
    /// that is not TLS, a name no service answers, a failed handshake: RST
    /// and a log record.
    fn pump_terminated(&mut self, stack: &mut Stack, index: usize, session: &mut Session, now: Instant) {
        let ends = StreamEnds::of(session);
        let at = self.wall.at(now);
        let failure = loop {
            let flows = SessionFlows::of(session);
            let stream = &mut session.capture;
            let taps = &mut self.taps;
            let tapped = taps.any() && session.service.as_ref().is_some_and(|service| service.inspect);
            let mut tap = tapped.then_some(CaptureTap { taps, stream, ends, at });
            let was_established = session.conn.handshakes_done();
            let pumped = session.conn.pump_tls(
                &mut StackLegs { stack, flows },
                None,
                tap.as_mut().map(|tap| tap as &mut dyn pipeline::Tap),
            );
            if let Err(err) = pumped {
                break Some(format!("TLS failed: {err}"));
            }
            if !was_established && session.conn.handshakes_done() {
                self.counters.terminated += 1;
                self.counters
                    .handshake_seconds
                    .observe(micros_between(session.stage_since, now));
                let resumed = session
                    .conn
                    .tls_server()
                    .is_some_and(|server| server.info.resumed_client);
                self.counters.tickets_resumed += u64::from(resumed);
            }
            match session.conn.pending() {
                None => break None,
                Some(Pending::Rejected(rejection)) => break Some(format!("not TLS: {rejection:?}")),
                Some(Pending::Hello { sni, .. }) => {
                    // The ClientHello is complete: the handshake's time starts.
                    session.stage_since = now;
                    if let Some(sni) = &sni {
                        self.top_sni.note(sni);
                    }
                    if let Err(reason) = self.accept_service(stack, index, session, sni.as_deref(), now) {
                        break Some(reason);
                    }
                    if session.conn.failed() {
                        // The inspection loop could not be opened, failing closed.
                        return;
                    }
                }
            }
        };
        if let Some(reason) = failure {
            tracing::info!("termination refused: {reason}");
            self.counters.terminate_failed += 1;
            session.ended = Some(reason);
            session.conn.fail();
            self.end_tls(session);
            abort_all(stack, session);
            return;
        }
        self.finish_tls_directions(stack, session, now);
    }

    /// The connection an `upgrade` or `downgrade` rule makes at the SYN:
    /// an upgrade's TLS client (towards `server_name`, else the server's
    /// address, verified against `tls.upstream_trust`), or a downgrade's
    /// TLS server (its certificate forged at the ClientHello). Err: why not
    /// (no TLS context: `[intercept] mode = "splice"`).
    fn converted_connection(&self, conversion: &Conversion, tuple: &FlowTuple) -> Result<Connection, String> {
        let context = self
            .current
            .tls
            .as_ref()
            .ok_or_else(|| format!("{} needs the TLS context of mode \"tls\"", conversion.action.name()))?;
        if conversion.action == Action::Downgrade {
            return Ok(Connection::downgraded(self.hold_synack));
        }
        let name = match &conversion.server_name {
            Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|err| format!("upgrade: server_name {name:?}: {err}"))?,
            None => rustls::pki_types::ServerName::IpAddress(tuple.dst_ip.into()),
        };
        let config = context.upgrade_config().map_err(|err| format!("upgrade: {err}"))?;
        let client = pipeline::TlsClient::new(config, name).map_err(|err| format!("upgrade: {err}"))?;
        Ok(Connection::upgraded(client, self.hold_synack))
    }

    /// [`Shared::pump`] of an upgraded or downgraded session: the TLS leg's
    /// handshake (a downgraded client's certificate forged for its SNI at
    /// its ClientHello), then the plaintext relayed, through the inspection
    /// loop and the taps. A server whose certificate does not verify, a
    /// failed handshake, a downgraded client that does not speak TLS: RST
    /// both ways and a log record.
    fn pump_converted(&mut self, stack: &mut Stack, session: &mut Session, now: Instant) {
        let ends = StreamEnds::of(session);
        let at = self.wall.at(now);
        let failure = loop {
            let flows = SessionFlows::of(session);
            let stream = &mut session.capture;
            let taps = &mut self.taps;
            let mut tap = taps.any().then_some(CaptureTap { taps, stream, ends, at });
            let was_established = session.conn.handshakes_done();
            let pumped = session.conn.pump_tls(
                &mut StackLegs { stack, flows },
                None,
                tap.as_mut().map(|tap| tap as &mut dyn pipeline::Tap),
            );
            if let Err(err) = pumped {
                break Some(format!("TLS failed: {err}"));
            }
            if !was_established && session.conn.handshakes_done() {
                if session.conn.tls_client().is_some() {
                    self.counters.upgraded += 1;
                } else {
                    self.counters.downgraded += 1;
                }
                self.counters
                    .handshake_seconds
                    .observe(micros_between(session.stage_since, now));
            }
            match session.conn.pending() {
                None => break None,
                Some(Pending::Rejected(rejection)) => break Some(format!("not TLS: {rejection:?}")),
                Some(Pending::Hello { sni, .. }) => {
                    // The ClientHello is complete: the handshake's time starts.
                    session.stage_since = now;
                    if let Some(sni) = &sni {
                        self.top_sni.note(sni);
                    }
                    if let Err(reason) = self.answer_downgraded_hello(session, sni.as_deref()) {
                        break Some(reason);
                    }
                }
            }
        };
        if let Some(reason) = failure {
            tracing::info!(
                "{} failed: {reason}",
                session.decision.as_ref().map_or("conversion", |d| d.action.name())
            );
            self.counters.conversion_failed += 1;
            session.ended = Some(reason);
            session.conn.fail();
            self.end_tls(session);
            self.record_reset(session, false, now);
            abort_all(stack, session);
            return;
        }
        self.finish_tls_directions(stack, session, now);
    }

    /// Answers a downgraded client's ClientHello with a certificate forged
    /// for `sni` (else the destination address) by the session's TLS
    /// context, which it then lets go. Err: why the client is refused.
    fn answer_downgraded_hello(&mut self, session: &mut Session, sni: Option<&str>) -> Result<(), String> {
        let generation = generation_mut(&mut self.current, &mut self.older, session.generation);
        let context = generation.tls.as_mut().ok_or("no TLS context")?;
        let (config, forged) = context
            .downgrade_config(sni, session.tuple.dst_ip)
            .map_err(|err| format!("no certificate forged: {err}"))?;
        let server = session.conn.tls_server_mut().ok_or("no TLS state")?;
        server.info.forged_fingerprint = Some(forged.fingerprint);
        server.info.forged_cache_hit = forged.cache_hit;
        server.accept(config).map_err(|err| format!("TLS failed: {err}"))?;
        self.release_generation(session);
        Ok(())
    }

    /// Gives a terminated session's ClientHello to the service answering
    /// `sni` at its destination: the handshake goes on with the service's
    /// certificates, the backend leg is opened from the client's address
    /// (with the client's framing: the next hop is the destination's MAC)
    /// or, with `source = "appliance"`, from an owned address once its
    /// next hop's MAC is known, its header queued first, and the inspection
    /// loop opened when the service inspects. Err: why the client is
    /// refused.
    fn accept_service(
        &mut self,
        stack: &mut Stack,
        index: usize,
        session: &mut Session,
        sni: Option<&str>,
        now: Instant,
    ) -> Result<(), String> {
        let services = self.services.clone().ok_or("no services")?;
        let service = services
            .for_hello(&session.tuple, sni)
            .ok_or_else(|| format!("no service for {}", sni.unwrap_or("a ClientHello without SNI")))?;
        session.service = Some(Terminated {
            name: service.name.clone(),
            inspect: service.inspect,
        });
        let tls = session.conn.tls_server_mut().ok_or("no TLS state")?;
        tls.accept(service.tls.server_config())
            .map_err(|err| format!("TLS failed: {err}"))?;
        if let Some(kind) = service.header {
            let info = &tls.info;
            let version = info.client_version.as_deref().unwrap_or_default().replace('_', ".");
            let facts = wire::proxy::TlsFacts {
                version: &version,
                cipher: info.client_cipher.as_deref().unwrap_or_default(),
                sni: info.sni.as_deref(),
                alpn: info.alpn.as_deref().map(str::as_bytes),
            };
            let tuple = session.tuple;
            let header = wire::proxy::encode(
                kind,
                SocketAddr::new(tuple.src_ip, tuple.src_port),
                SocketAddr::new(tuple.dst_ip, tuple.dst_port),
                Some(&facts),
            );
            tls.set_preamble(&header);
        }
        match service.backend {
            Backend::FromAppliance { address, port } => {
                let owned = self.owned.as_mut().ok_or("backend unreachable: no owned address")?;
                match owned.open(stack, address, port, waiter(index, session.serial), now)? {
                    OwnedLeg::Ready(backend, l2) => {
                        self.connect_server_leg(stack, index, session, &backend, l2, now)
                            .map_err(|err| format!("no connection to the backend: {err}"))?;
                    }
                    // Connected when its next hop answers (the handshake
                    // with the client goes on meanwhile).
                    OwnedLeg::Waiting(backend) => session.pending_backend = Some(backend),
                }
            }
            Backend::SamePeer { .. } | Backend::Transparent { .. } => {
                let backend = backend_tuple(&session.tuple, service)?;
                let l2 = session.l2;
                self.connect_server_leg(stack, index, session, &backend, l2, now)
                    .map_err(|err| format!("no connection to the backend: {err}"))?;
            }
        }
        if service.inspect {
            self.start_inspection(stack, index, session, now);
        }
        Ok(())
    }

    /// Opens `session`'s server leg from the server port to `leg` (from
    /// the client's address and port with the client's framing, or from an
    /// owned address with its next hop's). The one place
    /// a server leg to other endpoints than the client's is opened (a
    /// service's backend): such a leg is registered with this worker as its
    /// owner until the session ends, since the flow hash may give its
    /// frames to another worker, which then hands them here (see
    /// [`crate::handoff`]). A leg with the client's own endpoints needs no
    /// registration: its frames hash as the client's.
    fn connect_server_leg(
        &mut self,
        stack: &mut Stack,
        index: usize,
        session: &mut Session,
        leg: &FlowTuple,
        l2: L2Header,
        now: Instant,
    ) -> Result<FlowId, StackError> {
        // A leg of an earlier connection with these endpoints that lingers
        // in TIME-WAIT makes way.
        if let Some(old) = stack.lookup(Side::Server.index(), &leg.reversed()) {
            if stack.state(old) == Ok(netstack::TcpState::TimeWait) {
                stack.discard(old);
            }
        }
        let server = stack.connect(Side::Server.index(), leg, l2, owner(index, Leg::Server), now)?;
        session.server = Some(server);
        self.register_server_leg(session, leg);
        Ok(server)
    }

    /// Registers `leg`, the session's server leg, with the workers'
    /// directory when its endpoints differ from the client leg's (its
    /// frames may be hashed to another worker, which hands them here),
    /// replacing an earlier registration.
    fn register_server_leg(&self, session: &mut Session, leg: &FlowTuple) {
        let foreign = (*leg != session.tuple).then_some(*leg);
        if let Some(legs) = self.legs.as_ref().filter(|_| foreign != session.registered_leg) {
            if let Some(earlier) = session.registered_leg.take() {
                legs.unregister(&earlier);
            }
            if let Some(leg) = foreign {
                legs.register(&leg);
                session.registered_leg = Some(leg);
            }
        }
    }

    /// Drops a session's TLS state, keeping what it told for the log.
    fn end_tls(&mut self, session: &mut Session) {
        self.release_generation(session);
        if let Some(info) = session.conn.drop_tls() {
            self.counters.tls_sessions_live = self.counters.tls_sessions_live.saturating_sub(1);
            session.tls_info = Some(info);
        }
    }

    /// Ends a session's stream in the decrypted capture with a RST.
    fn record_reset(&mut self, session: &mut Session, from_client: bool, now: Instant) {
        let ends = StreamEnds::of(session);
        if self.taps.any() {
            let stream = &mut session.capture;
            let taps = &mut self.taps;
            let at = self.wall.at(now);
            CaptureTap { taps, stream, ends, at }.reset(from_client);
        }
    }

    /// What a failed interception teaches the policy about its destination
    /// (a server that asks for client certificates, a client that rejected
    /// the forged certificate): only when the server's chain verified for
    /// the name, so a server that did not prove its name, and a client
    /// shown the mirror certificate (which it is meant to reject), teach
    /// nothing. Returns what was learned, logged.
    fn learn_from_failure(
        policy: &Policy,
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
            policy.record_client_cert_request(tuple, name, now)
        } else if rejected_our_certificate(err) {
            policy.record_rejection(tuple, name, now)
        } else {
            None
        }?;
        let ttl = policy.learned().settings().ttl.secs();
        tracing::warn!("bypassing {} for {ttl} s: {}", entry.destination, entry.reason);
        Some(format!("bypass for {ttl} s: {}", entry.reason))
    }

    /// Passes the end of each direction on (see
    /// [`Connection::finish_tls_directions`]), recording the FINs in the taps.
    fn finish_tls_directions(&mut self, stack: &mut Stack, session: &mut Session, now: Instant) {
        let ends = StreamEnds::of(session);
        let at = self.wall.at(now);
        let flows = SessionFlows::of(session);
        let stream = &mut session.capture;
        let taps = &mut self.taps;
        let mut tap = taps.any().then_some(CaptureTap { taps, stream, ends, at });
        session.conn.finish_tls_directions(
            &mut StackLegs { stack, flows },
            tap.as_mut().map(|tap| tap as &mut dyn pipeline::Tap),
        );
    }
}
