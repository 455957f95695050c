//! The plaintext preamble of a STARTTLS connection: relayed byte for byte
//! (through the inspection loop and the tap when there are) while a
//! [`starttls::Negotiation`] watches it, until the server accepted the
//! upgrade and its answer went to the client; the connection then becomes
//! a TLS interception. Client bytes after the upgrade request are discarded
//! (the STARTTLS command injection class, CVE-2011-0411), and a server that
//! speaks after accepting fails the connection.

use std::collections::VecDeque;
use std::net::IpAddr;

use starttls::{ClientEvent, Negotiation, NegotiationError, ServerEvent};

use crate::connection::{feed_loop, peer_done, send_queued, InspectionLoop, Through};
use crate::{End, Ends, Leg, LegIo, Tap, TLS_BACKLOG};

/// The most a leg's read takes at once (read where it lies in the leg's
/// receive buffer): the backlogs overshoot by one piece at most.
const PIECE_MAX: usize = 16 * 1024;

/// What a STARTTLS preamble did, for the caller's counters, log and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreambleEvent {
    /// The server's capabilities list the upgrade.
    Offered,
    /// The client asked to upgrade.
    Requested,
    /// The server accepted; its answer goes to the client next.
    Accepted,
    /// The server refused: its refusal passes on, the preamble goes on.
    Refused,
    /// The client sent the session's content in plaintext.
    PlaintextContent,
    /// The accepted answer went to the client: the connection now
    /// intercepts TLS (its ClientHello comes next, see
    /// [`crate::Connection::pending`]).
    Upgraded,
}

/// Why a STARTTLS preamble cannot be relayed safely: the caller resets the
/// connection and logs this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    #[error("the server sent {0} bytes after accepting the upgrade, before TLS")]
    ServerSpokeAfterAccept(usize),
    /// `require_tls`: the client sent content in plaintext (not passed on).
    #[error("require_tls: {0} content before STARTTLS")]
    PlaintextContent(starttls::Protocol),
    /// `require_tls`: the server refused the upgrade (its refusal not
    /// passed on).
    #[error("require_tls: the server refused the {0} upgrade")]
    UpgradeRefused(starttls::Protocol),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Plaintext, the watcher sees every byte.
    Plain,
    /// The client asked to upgrade: its further bytes are discarded until
    /// the answer went to it.
    Requested,
    /// The server accepted: its answer goes to the client (the client leg
    /// drained first), then TLS.
    Accepted,
}

/// What the preamble reported, kept by the connection across the upgrade.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    pub(crate) events: VecDeque<PreambleEvent>,
    /// Client bytes discarded after an upgrade request.
    pub(crate) discarded: u64,
}

/// The state of a connection's preamble (see the module documentation).
pub(crate) struct Preamble {
    watcher: Box<dyn Negotiation>,
    phase: Phase,
    /// Plaintext content and a refused upgrade fail the connection, their
    /// bytes not passed on.
    require_tls: bool,
    /// The client sent the session's content in plaintext: the session is
    /// an ordinary plaintext one (see [`Preamble::awaiting_server`]).
    content_passed: bool,
    /// The server's address, for the TLS interception that follows.
    pub(crate) server_ip: IpAddr,
    /// Passed client bytes waiting for the loop, then for the server leg.
    into_loop_up: Vec<u8>,
    pub(crate) to_server: Vec<u8>,
    /// Passed server bytes waiting for the loop, then for the client leg.
    into_loop_down: Vec<u8>,
    pub(crate) to_client: Vec<u8>,
}

impl Preamble {
    pub(crate) fn new(watcher: Box<dyn Negotiation>, server_ip: IpAddr, require_tls: bool) -> Preamble {
        Preamble {
            watcher,
            phase: Phase::Plain,
            require_tls,
            content_passed: false,
            server_ip,
            into_loop_up: Vec::new(),
            to_server: Vec::new(),
            into_loop_down: Vec::new(),
            to_client: Vec::new(),
        }
    }

    /// The observer of the session inside TLS, once upgraded (see
    /// [`Negotiation::control_channel`]).
    pub(crate) fn control_channel(&self) -> Option<starttls::ControlChannel> {
        self.watcher.control_channel()
    }

    pub(crate) fn protocol(&self) -> starttls::Protocol {
        self.watcher.protocol()
    }

    /// Whether the preamble timeout runs: the server owes an answer to
    /// its greeting, to a command before the session's first plaintext
    /// content, or to an upgrade request. Once the client sent content in
    /// plaintext (a login, a mail, a query) the server may take its time
    /// (a mail's DATA, a long FETCH or query): the session is an ordinary
    /// plaintext one, under the caller's idle timeout, except while a later
    /// upgrade request waits for its answer.
    pub(crate) fn awaiting_server(&self) -> bool {
        self.phase != Phase::Accepted
            && self.watcher.awaiting_server()
            && (!self.content_passed || self.watcher.upgrade_requested())
    }

    pub(crate) fn buffer_capacity(&self) -> usize {
        self.into_loop_up.capacity()
            + self.to_server.capacity()
            + self.into_loop_down.capacity()
            + self.to_client.capacity()
    }

    /// Relays until nothing moves; true once the accepted answer went to
    /// the client (the caller switches to TLS interception). Nothing moves
    /// while the inspection loop is being opened.
    pub(crate) fn relay(
        &mut self,
        io: &mut dyn LegIo,
        inspection: Option<&mut InspectionLoop>,
        ends: &mut Ends,
        bytes: &mut (u64, u64),
        reports: &mut Reports,
        mut tap: Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        let mut through = match inspection {
            Some(InspectionLoop::Opening) => return Ok(false),
            Some(InspectionLoop::Through(through)) => Some(&mut **through),
            None => None,
        };
        for _ in 0..64 {
            let mut progress = self.read_server(io, through.is_some(), ends, bytes, reports, &mut tap)?;
            if let Some(through) = through.as_deref_mut() {
                progress |= through_loop(
                    io,
                    (Leg::InspectIn, Leg::InspectOut),
                    &mut self.into_loop_down,
                    &mut through.down,
                    &mut self.to_client,
                    (&mut tap, false),
                );
            }
            if !self.to_client.is_empty() {
                if self.phase == Phase::Accepted {
                    // The client cannot have seen the answer yet: what it
                    // sent meanwhile is injected, never delivered after TLS.
                    progress |= discard_client(io, bytes, reports);
                }
                progress |= send_queued(io, Leg::Client, &mut self.to_client);
            }
            if self.phase == Phase::Accepted && self.answer_delivered(through.as_deref()) {
                reports.events.push_back(PreambleEvent::Upgraded);
                return Ok(true);
            }
            progress |= self.read_client(io, through.is_some(), ends, bytes, reports, &mut tap)?;
            if let Some(through) = through.as_deref_mut() {
                progress |= through_loop(
                    io,
                    (Leg::InspectOut, Leg::InspectIn),
                    &mut self.into_loop_up,
                    &mut through.up,
                    &mut self.to_server,
                    (&mut tap, true),
                );
            }
            progress |= send_queued(io, Leg::Server, &mut self.to_server);
            if !progress {
                break;
            }
        }
        self.finish_directions(io, through, ends, tap);
        Ok(false)
    }

    /// Reads the server leg into the watcher (where the bytes lie in the
    /// leg's receive buffer); what it passes goes on.
    fn read_server(
        &mut self,
        io: &mut dyn LegIo,
        looped: bool,
        ends: &Ends,
        bytes: &mut (u64, u64),
        reports: &mut Reports,
        tap: &mut Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        if ends.to_client != End::Open || self.into_loop_down.len() + self.to_client.len() >= TLS_BACKLOG {
            return Ok(false);
        }
        self.read_in_place(io, Leg::Server, looped, bytes, reports, tap)
    }

    /// Reads one piece of `leg` (the client's or the server's) where it
    /// lies in the leg's receive buffer, counts it and hands it to the
    /// watcher.
    fn read_in_place(
        &mut self,
        io: &mut dyn LegIo,
        leg: Leg,
        looped: bool,
        bytes: &mut (u64, u64),
        reports: &mut Reports,
        tap: &mut Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        let mut outcome = Ok(false);
        io.recv_in_place(leg, PIECE_MAX, 0, &mut |got, _| {
            if got.is_empty() {
                return 0;
            }
            outcome = if leg == Leg::Server {
                bytes.1 += got.len() as u64;
                self.server_sent(got, looped, reports, tap)
            } else {
                bytes.0 += got.len() as u64;
                self.client_sent(got, looped, reports, tap)
            };
            got.len()
        });
        outcome
    }

    /// What the server sent, `got` (not empty), into the watcher.
    fn server_sent(
        &mut self,
        got: &[u8],
        looped: bool,
        reports: &mut Reports,
        tap: &mut Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        let read = got.len();
        if self.phase == Phase::Accepted {
            return Err(PreambleError::ServerSpokeAfterAccept(read));
        }
        let step = self.watcher.from_server(got)?;
        if self.require_tls && step.event == Some(ServerEvent::UpgradeRefused) {
            return Err(PreambleError::UpgradeRefused(self.protocol()));
        }
        let passed = got.get(..step.pass).unwrap_or(got);
        if looped {
            self.into_loop_down.extend_from_slice(passed);
        } else {
            show(tap, false, passed);
            self.to_client.extend_from_slice(passed);
        }
        match step.event {
            Some(ServerEvent::UpgradeOffered) => reports.events.push_back(PreambleEvent::Offered),
            Some(ServerEvent::UpgradeAccepted) => {
                self.phase = Phase::Accepted;
                reports.events.push_back(PreambleEvent::Accepted);
            }
            Some(ServerEvent::UpgradeRefused) => {
                self.phase = Phase::Plain;
                reports.events.push_back(PreambleEvent::Refused);
            }
            None => {}
        }
        if passed.len() < read {
            // Only an accepted answer ends a piece early: the rest came
            // before the TLS handshake.
            return Err(PreambleError::ServerSpokeAfterAccept(read - passed.len()));
        }
        Ok(true)
    }

    /// Reads the client leg into the watcher (or discards it after an
    /// upgrade request), where the bytes lie in the leg's receive buffer;
    /// what it passes goes on.
    fn read_client(
        &mut self,
        io: &mut dyn LegIo,
        looped: bool,
        ends: &Ends,
        bytes: &mut (u64, u64),
        reports: &mut Reports,
        tap: &mut Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        if ends.to_server != End::Open || self.into_loop_up.len() + self.to_server.len() >= TLS_BACKLOG {
            return Ok(false);
        }
        if self.phase != Phase::Plain {
            return Ok(discard_client(io, bytes, reports));
        }
        self.read_in_place(io, Leg::Client, looped, bytes, reports, tap)
    }

    /// What the client sent, `got` (not empty), into the watcher.
    fn client_sent(
        &mut self,
        got: &[u8],
        looped: bool,
        reports: &mut Reports,
        tap: &mut Option<&mut dyn Tap>,
    ) -> Result<bool, PreambleError> {
        let read = got.len();
        let step = self.watcher.from_client(got)?;
        if self.require_tls && step.event == Some(ClientEvent::PlaintextContent) {
            return Err(PreambleError::PlaintextContent(self.protocol()));
        }
        let passed = got.get(..step.pass).unwrap_or(got);
        reports.discarded += (read - passed.len()) as u64;
        if looped {
            self.into_loop_up.extend_from_slice(passed);
        } else {
            show(tap, true, passed);
            self.to_server.extend_from_slice(passed);
        }
        match step.event {
            Some(ClientEvent::UpgradeRequested) => {
                self.phase = Phase::Requested;
                reports.events.push_back(PreambleEvent::Requested);
            }
            Some(ClientEvent::PlaintextContent) => {
                self.content_passed = true;
                reports.events.push_back(PreambleEvent::PlaintextContent);
            }
            None => {}
        }
        Ok(true)
    }

    /// Everything up to the accepted answer went out: the request to the
    /// server, the answer to the client (and back out of the loop).
    fn answer_delivered(&self, through: Option<&Through>) -> bool {
        self.to_client.is_empty()
            && self.into_loop_down.is_empty()
            && self.to_server.is_empty()
            && self.into_loop_up.is_empty()
            && through.is_none_or(|through| through.down.bytes.is_empty() && through.down.lost == 0)
    }

    /// Passes each direction's FIN on once everything before it went
    /// (into the loop and out of it, when there is one).
    fn finish_directions(
        &mut self,
        io: &mut dyn LegIo,
        through: Option<&mut Through>,
        ends: &mut Ends,
        mut tap: Option<&mut dyn Tap>,
    ) {
        let client_done = peer_done(io, Leg::Client) && self.into_loop_up.is_empty();
        let server_done = peer_done(io, Leg::Server) && self.into_loop_down.is_empty();
        let (up_through, down_through) = match through {
            Some(through) => {
                if !through.fin_to_out && client_done {
                    through.fin_to_out = true;
                    io.close(Leg::InspectOut);
                }
                if !through.fin_to_back && server_done {
                    through.fin_to_back = true;
                    io.close(Leg::InspectIn);
                }
                (
                    through.fin_to_out && peer_done(io, Leg::InspectIn),
                    through.fin_to_back && peer_done(io, Leg::InspectOut),
                )
            }
            None => (client_done, server_done),
        };
        if ends.to_server == End::Open && up_through && self.to_server.is_empty() {
            ends.to_server = End::FinSent;
            io.close(Leg::Server);
            if let Some(tap) = tap.as_deref_mut() {
                tap.fin(true);
            }
        }
        if ends.to_client == End::Open && down_through && self.to_client.is_empty() {
            ends.to_client = End::FinSent;
            io.close(Leg::Client);
            if let Some(tap) = tap {
                tap.fin(false);
            }
        }
    }
}

/// Reads and drops what the client leg received; true if there was any.
fn discard_client(io: &mut dyn LegIo, bytes: &mut (u64, u64), reports: &mut Reports) -> bool {
    let mut any = false;
    loop {
        let read = io.recv_in_place(Leg::Client, usize::MAX, 0, &mut |got, _| got.len());
        if read == 0 {
            return any;
        }
        any = true;
        bytes.0 += read as u64;
        reports.discarded += read as u64;
    }
}

/// One direction through the inspection loop: `into` goes into the loop's
/// entry leg, what comes out of its exit leg is shown to the tap and
/// queued in `out`; true if anything moved.
fn through_loop(
    io: &mut dyn LegIo,
    (entry, exit): (Leg, Leg),
    into: &mut Vec<u8>,
    in_flight: &mut crate::inflight::InFlight,
    out: &mut Vec<u8>,
    (tap, from_client): (&mut Option<&mut dyn Tap>, bool),
) -> bool {
    let mut progress = feed_loop(io, entry, into, in_flight);
    if out.len() < TLS_BACKLOG {
        let read = io.recv_in_place(exit, PIECE_MAX, 0, &mut |came, _| {
            show(tap, from_client, came);
            out.extend_from_slice(came);
            came.len()
        });
        if read > 0 {
            in_flight.came_out(read);
            progress = true;
        }
    }
    progress
}

fn show(tap: &mut Option<&mut dyn Tap>, from_client: bool, bytes: &[u8]) {
    if let (Some(tap), false) = (tap.as_deref_mut(), bytes.is_empty()) {
        tap.data(from_client, bytes);
    }
}
