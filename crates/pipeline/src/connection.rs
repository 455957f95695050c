//! One connection's pipeline: its state, its transform, its inspection
//! loop, and the relay between its legs.

use mitm::{MitmError, Pending, Queues, TlsContext, TlsSession};

use crate::control::{Announcement, Watched, WatchingTap};
use crate::inflight::InFlight;
use crate::preamble::{Preamble, PreambleError, PreambleEvent, Reports};
use crate::terminate::TlsServer;
use crate::transform::TlsTransform;
use crate::upgrade::TlsClient;
use crate::{End, Ends, Leg, LegIo, State, Tap, TLS_BACKLOG};

/// The transform between the client's and the server's leg.
enum Transform {
    /// The bytes pass untouched (mode "splice", TLS bypassed, or the TLS
    /// state already dropped).
    Plain,
    /// TLS interception: a forged certificate towards the client, the real
    /// server's TLS towards the server.
    Intercept(Box<TlsSession>),
    /// TLS termination: the service's certificate towards the client,
    /// plaintext (after a preamble) to the backend; or a downgrade, with a
    /// forged certificate, plaintext to the server.
    Terminate(Box<TlsServer>),
    /// TLS upgrade: a plain client, TLS towards the server.
    Upgrade(Box<TlsClient>),
    /// The plaintext preamble of a STARTTLS connection, watched; it
    /// becomes `Intercept` once the upgrade was accepted.
    Starttls(Box<Preamble>),
}

/// The loop through the inspection box, while the plaintext uses it.
pub(crate) enum InspectionLoop {
    /// The loop's SYN waits for the box to pass it: the plaintext waits.
    Opening,
    /// The box passed the SYN: plaintext goes round; each loop leg may end
    /// on its own.
    Through(Box<Through>),
}

#[derive(Default)]
pub(crate) struct Through {
    /// FIN already passed into the loop, client side / server side.
    pub(crate) fin_to_out: bool,
    pub(crate) fin_to_back: bool,
    /// What went into the loop and has not come back out: client → server
    /// (into `InspectOut`, out of `InspectIn`) and server → client (into
    /// `InspectIn`, out of `InspectOut`). Fail-open delivers it directly if
    /// the box dies.
    pub(crate) up: InFlight,
    pub(crate) down: InFlight,
}

/// One connection (see the crate documentation).
pub struct Connection {
    state: State,
    transform: Transform,
    inspection: Option<InspectionLoop>,
    /// Bytes to relay directly before anything else the client / the server
    /// sends: client bytes the TLS layer read before a bypass, or what an
    /// inspection box that failed open had not passed back.
    backlog_to_server: Vec<u8>,
    backlog_to_client: Vec<u8>,
    /// TCP payload bytes received from the client and from the server.
    bytes: (u64, u64),
    /// What a STARTTLS preamble reported (kept across the upgrade).
    preamble: Reports,
    /// After an FTP upgrade, its control channel inside TLS, watched for
    /// the data connections it announces.
    control: Option<Box<Watched>>,
    /// The leg (client or server) whose peer reset the open connection:
    /// what it sent before goes on, then the RST does (see
    /// [`Connection::peer_reset`]).
    reset_by: Option<Leg>,
}

impl Connection {
    /// A connection relayed untouched, or intercepted with `tls`;
    /// `connecting`: its server leg is still being connected.
    pub fn new(tls: Option<Box<TlsSession>>, connecting: bool) -> Connection {
        Connection::with(tls.map_or(Transform::Plain, intercepting), connecting)
    }

    /// A terminated connection: the backend leg comes after the ClientHello.
    pub fn terminated() -> Connection {
        Connection::with(Transform::Terminate(Box::default()), true)
    }

    /// A downgraded connection: the client's TLS is answered by the
    /// appliance (its certificate chosen at the ClientHello, see
    /// [`Connection::tls_server_mut`]), the server leg is plain;
    /// `connecting` as for [`Connection::new`].
    pub fn downgraded(connecting: bool) -> Connection {
        Connection::with(Transform::Terminate(Box::default()), connecting)
    }

    /// An upgraded connection: a plain client, `client` towards the server.
    pub fn upgraded(client: TlsClient, connecting: bool) -> Connection {
        Connection::with(Transform::Upgrade(Box::new(client)), connecting)
    }

    /// A STARTTLS connection to `server_ip`: its preamble is relayed under
    /// `watcher` ([`Connection::pump_preamble`]) until the upgrade, then its
    /// TLS is intercepted. `require_tls`: content in plaintext, or a refused
    /// upgrade, fails it instead of passing on.
    pub fn starttls(
        watcher: Box<dyn starttls::Negotiation>,
        server_ip: std::net::IpAddr,
        require_tls: bool,
        connecting: bool,
    ) -> Connection {
        Connection::with(
            Transform::Starttls(Box::new(Preamble::new(watcher, server_ip, require_tls))),
            connecting,
        )
    }

    fn with(transform: Transform, connecting: bool) -> Connection {
        Connection {
            state: if connecting {
                State::Connecting
            } else {
                State::Open(Ends::default())
            },
            transform,
            inspection: None,
            backlog_to_server: Vec::new(),
            backlog_to_client: Vec::new(),
            bytes: (0, 0),
            preamble: Reports::default(),
            control: None,
            reset_by: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The server leg was established (or the connection failed before).
    pub fn established(&self) -> bool {
        matches!(self.state, State::Open(_) | State::Failed(_))
    }

    pub fn failed(&self) -> bool {
        matches!(self.state, State::Refused | State::Failed(_))
    }

    /// FIN went both ways.
    pub fn closed(&self) -> bool {
        matches!(self.state, State::Open(ends) | State::Failed(ends) if ends.closed())
    }

    /// The leg the appliance connects (the server's, or the client's of a
    /// connection the server opened) connected: relaying starts. False if
    /// it was not connecting.
    pub fn server_connected(&mut self) -> bool {
        if self.state != State::Connecting {
            return false;
        }
        self.state = State::Open(Ends::default());
        true
    }

    /// The connection failed (the caller answers its legs).
    pub fn fail(&mut self) {
        self.state = match self.state {
            State::Connecting | State::Refused => State::Refused,
            State::Open(ends) | State::Failed(ends) => State::Failed(ends),
        };
    }

    /// The peer of `leg` (the client or the server) reset the open
    /// connection. As on a direct connection, where the other side reads
    /// what came before the RST, what that peer sent before it still goes
    /// on (read from its leg, through the TLS layer and the inspection
    /// box), and the RST follows once it was delivered
    /// ([`Connection::reset_to_pass_on`]); nothing goes towards that peer
    /// any more. The first such peer counts; false if one already reset.
    pub fn peer_reset(&mut self, leg: Leg) -> bool {
        if self.reset_by.is_some() || !matches!(leg, Leg::Client | Leg::Server) {
            return false;
        }
        self.reset_by = Some(leg);
        true
    }

    /// The leg whose peer reset the open connection, if one did.
    pub fn reset_by(&self) -> Option<Leg> {
        self.reset_by
    }

    /// After [`Connection::peer_reset`]: the leg to reset now, once
    /// everything the resetting peer sent before its RST reached the other
    /// side and was acknowledged there: the direction's end went on (a
    /// TLS relay passes close_notify, if it came, then FIN once the leg is
    /// read to the end and gone), or, relayed as bytes, the leg is gone
    /// and nothing waits in the transform or the loop. None until then.
    pub fn reset_to_pass_on(&self, io: &dyn LegIo) -> Option<Leg> {
        let from = self.reset_by?;
        let (to, towards_server) = match from {
            Leg::Client => (Leg::Server, true),
            _ => (Leg::Client, false),
        };
        let State::Open(ends) = self.state else {
            // Nothing is relayed before the connection opened or once it failed.
            return Some(to);
        };
        let end = if towards_server { ends.to_server } else { ends.to_client };
        if !io.exists(to) || end == End::FinSent {
            // Nothing more can go (bytes after a FIN are never read).
            return (io.unacknowledged(to) == 0).then_some(to);
        }
        if io.exists(from) || io.unacknowledged(to) > 0 {
            return None;
        }
        let in_loop = match &self.inspection {
            Some(InspectionLoop::Through(through)) => {
                let in_flight = if towards_server { &through.up } else { &through.down };
                !in_flight.bytes.is_empty() || in_flight.lost > 0
            }
            Some(InspectionLoop::Opening) | None => false,
        };
        let waiting = match &self.transform {
            Transform::Plain if towards_server => !self.backlog_to_server.is_empty(),
            Transform::Plain => !self.backlog_to_client.is_empty(),
            Transform::Starttls(preamble) if towards_server => !preamble.to_server.is_empty(),
            Transform::Starttls(preamble) => !preamble.to_client.is_empty(),
            // Its FIN, above.
            Transform::Intercept(_) | Transform::Terminate(_) | Transform::Upgrade(_) => true,
        };
        (!waiting && !in_loop).then_some(to)
    }

    /// TCP payload bytes received from the client and from the server.
    pub fn bytes(&self) -> (u64, u64) {
        self.bytes
    }

    /// The TLS interception state, while there is one.
    pub fn tls(&self) -> Option<&TlsSession> {
        match &self.transform {
            Transform::Intercept(tls) => Some(tls),
            _ => None,
        }
    }

    /// The TLS termination state, while there is one.
    pub fn tls_server(&self) -> Option<&TlsServer> {
        match &self.transform {
            Transform::Terminate(server) => Some(server),
            _ => None,
        }
    }

    pub fn tls_server_mut(&mut self) -> Option<&mut TlsServer> {
        match &mut self.transform {
            Transform::Terminate(server) => Some(server),
            _ => None,
        }
    }

    /// The TLS upgrade state, while there is one.
    pub fn tls_client(&self) -> Option<&TlsClient> {
        match &self.transform {
            Transform::Upgrade(client) => Some(client),
            _ => None,
        }
    }

    /// Whether the connection holds TLS state (either kind).
    pub fn has_tls(&self) -> bool {
        matches!(
            self.transform,
            Transform::Intercept(_) | Transform::Terminate(_) | Transform::Upgrade(_)
        )
    }

    /// The protocol of a STARTTLS connection still in its preamble.
    pub fn in_preamble(&self) -> Option<starttls::Protocol> {
        match &self.transform {
            Transform::Starttls(preamble) => Some(preamble.protocol()),
            _ => None,
        }
    }

    /// A STARTTLS preamble waits for the server's answer (the caller's
    /// preamble timeout runs).
    pub fn preamble_awaiting_server(&self) -> bool {
        match &self.transform {
            Transform::Starttls(preamble) => preamble.awaiting_server(),
            _ => false,
        }
    }

    /// The next thing the STARTTLS preamble did, oldest first.
    pub fn next_preamble_event(&mut self) -> Option<PreambleEvent> {
        self.preamble.events.pop_front()
    }

    /// Client bytes discarded after an upgrade request (injected before
    /// the TLS handshake), so far.
    pub fn injected_bytes_discarded(&self) -> u64 {
        self.preamble.discarded
    }

    /// What the upgraded session's control channel announced since the last
    /// call, oldest first (FTP: the data connections and their protection),
    /// then, once, why it cannot be followed any more (a reply or command
    /// it cannot read: the caller fails the session, since a data
    /// connection could go unannounced). The caller takes them after each
    /// [`Connection::pump_tls`], before the replies that announced them
    /// reach the client. `None` for every other connection.
    pub fn next_announcement(&mut self) -> Option<Result<Announcement, starttls::NegotiationError>> {
        self.control.as_deref_mut()?.next()
    }

    /// Drops the TLS state (or a STARTTLS preamble's), returning what TLS
    /// told (for the log); from now on the bytes pass untouched.
    pub fn drop_tls(&mut self) -> Option<mitm::SessionInfo> {
        match std::mem::replace(&mut self.transform, Transform::Plain) {
            Transform::Plain | Transform::Starttls(_) => None,
            Transform::Intercept(tls) => Some(tls.info),
            Transform::Terminate(server) => Some(server.info),
            Transform::Upgrade(client) => Some(client.info),
        }
    }

    /// Both TLS handshakes are done.
    pub fn handshakes_done(&self) -> bool {
        match &self.transform {
            Transform::Plain | Transform::Starttls(_) => false,
            Transform::Intercept(tls) => tls.handshakes_done(),
            Transform::Terminate(server) => server.handshakes_done(),
            Transform::Upgrade(client) => client.handshakes_done(),
        }
    }

    /// What the caller must decide before the connection goes on.
    pub fn pending(&self) -> Option<Pending> {
        match &self.transform {
            Transform::Plain | Transform::Upgrade(_) | Transform::Starttls(_) => None,
            Transform::Intercept(tls) => tls.pending(),
            Transform::Terminate(server) => server.pending(),
        }
    }

    /// Intercepts the pending ClientHello; `expose`: the plaintext goes
    /// through the caller (the inspection loop, the taps). A watched
    /// control channel always exposes it (the watcher reads it).
    pub fn intercept(&mut self, context: &TlsContext, expose: bool) -> Result<(), MitmError> {
        let Transform::Intercept(tls) = &mut self.transform else {
            return Err(MitmError::Config("nothing to intercept".into()));
        };
        tls.intercept(context)?;
        if expose || self.control.is_some() {
            tls.expose_plaintext();
        }
        Ok(())
    }

    /// Gives the interception up: every byte the client sent so far goes to
    /// the server untouched, first. The caller drops the TLS state.
    pub fn bypass(&mut self) {
        if let Transform::Intercept(tls) = &mut self.transform {
            self.backlog_to_server = tls.bypass();
        }
    }

    /// Sends the plaintext through the inspection loop, once the box passed
    /// its SYN.
    pub fn open_loop(&mut self) {
        self.inspection = Some(InspectionLoop::Opening);
    }

    /// Whether the plaintext uses the inspection loop.
    pub fn has_loop(&self) -> bool {
        self.inspection.is_some()
    }

    /// Whether the box passed the loop's SYN.
    pub fn loop_through(&self) -> bool {
        matches!(self.inspection, Some(InspectionLoop::Through(_)))
    }

    /// The box passed the loop's SYN; false if it had already.
    pub fn loop_passed_syn(&mut self) -> bool {
        if !matches!(self.inspection, Some(InspectionLoop::Opening)) {
            return false;
        }
        self.inspection = Some(InspectionLoop::Through(Box::default()));
        true
    }

    /// The plaintext no longer uses the loop (the caller drops its legs).
    pub fn drop_loop(&mut self) {
        self.inspection = None;
    }

    /// The box died under a live connection that fails open: what it had
    /// not passed back goes into the direct path, ahead of anything newer.
    /// Returns how many bytes the box had not passed back; None if the
    /// loop's records lost some of them (the connection cannot go on
    /// exactly).
    pub fn take_unreturned(&mut self, io: &mut dyn LegIo) -> Option<usize> {
        let Some(InspectionLoop::Through(through)) = self.inspection.as_mut() else {
            return Some(0);
        };
        let ends = match self.state {
            State::Open(ends) | State::Failed(ends) => ends,
            State::Connecting | State::Refused => Ends::default(),
        };
        let (up, up_held) = unreturned(io, Leg::InspectIn, &mut through.up, ends.to_server != End::Open)?;
        let (down, down_held) = unreturned(io, Leg::InspectOut, &mut through.down, ends.to_client != End::Open)?;
        match &mut self.transform {
            Transform::Intercept(tls) => prepend_plaintext(tls.queues(), up, down),
            Transform::Terminate(server) => prepend_plaintext(server.queues(), up, down),
            Transform::Upgrade(client) => prepend_plaintext(client.queues(), up, down),
            Transform::Starttls(preamble) => {
                prepend(&mut preamble.to_server, up);
                prepend(&mut preamble.to_client, down);
            }
            Transform::Plain => {
                self.backlog_to_server.extend_from_slice(&up);
                self.backlog_to_client.extend_from_slice(&down);
            }
        }
        Some(up_held + down_held)
    }

    /// Moves ciphertext between the legs and the TLS transform, and the
    /// plaintext between the transform and the inspection loop (or straight
    /// across), until nothing moves. A leg is read only while what it feeds
    /// is below [`TLS_BACKLOG`]. `context` serves interception (an
    /// intercepted connection waits without one). Nothing happens for a
    /// plain connection.
    pub fn pump_tls(
        &mut self,
        io: &mut dyn LegIo,
        context: Option<&mut TlsContext>,
        tap: Option<&mut dyn Tap>,
    ) -> Result<(), MitmError> {
        let mut watching;
        let tap: Option<&mut dyn Tap> = match self.control.as_deref_mut() {
            Some(watched) => {
                watching = WatchingTap {
                    watched,
                    inner: tap.map(|tap| tap as &mut dyn Tap),
                };
                Some(&mut watching)
            }
            None => tap.map(|tap| tap as &mut dyn Tap),
        };
        let inspection = self.inspection.as_mut();
        match (&mut self.transform, context) {
            (Transform::Plain | Transform::Starttls(_), _) | (Transform::Intercept(_), None) => Ok(()),
            (Transform::Intercept(tls), Some(context)) => {
                relay_tls(&mut **tls, context, io, inspection, &mut self.bytes, tap)
            }
            (Transform::Terminate(server), _) => {
                relay_tls(&mut **server, &mut (), io, inspection, &mut self.bytes, tap)
            }
            (Transform::Upgrade(client), _) => relay_tls(&mut **client, &mut (), io, inspection, &mut self.bytes, tap),
        }
    }

    /// Passes the end of each direction on, in order: into the inspection
    /// loop once the plaintext went in, close_notify once the box passed
    /// the FIN (or at once without a box), and FIN once the ciphertext went.
    pub fn finish_tls_directions(&mut self, io: &mut dyn LegIo, tap: Option<&mut dyn Tap>) {
        let State::Open(ends) = &mut self.state else {
            return;
        };
        let inspection = self.inspection.as_mut();
        match &mut self.transform {
            Transform::Plain | Transform::Starttls(_) => {}
            Transform::Intercept(tls) => finish_directions(&mut **tls, io, inspection, ends, tap),
            Transform::Terminate(server) => finish_directions(&mut **server, io, inspection, ends, tap),
            Transform::Upgrade(client) => finish_directions(&mut **client, io, inspection, ends, tap),
        }
    }

    /// Relays a STARTTLS preamble (through the inspection loop when there
    /// is one, shown to `tap`) until nothing moves; once the server's
    /// accepted answer went to the client, the connection intercepts TLS
    /// ([`PreambleEvent::Upgraded`]; its ClientHello comes next). Events
    /// wait in [`Connection::next_preamble_event`]. Nothing happens for
    /// other connections.
    pub fn pump_preamble(&mut self, io: &mut dyn LegIo, tap: Option<&mut dyn Tap>) -> Result<(), PreambleError> {
        let (State::Open(ends), Transform::Starttls(preamble)) = (&mut self.state, &mut self.transform) else {
            return Ok(());
        };
        let upgraded = preamble.relay(
            io,
            self.inspection.as_mut(),
            ends,
            &mut self.bytes,
            &mut self.preamble,
            tap,
        )?;
        if upgraded {
            let server_ip = preamble.server_ip;
            self.control = preamble
                .control_channel()
                .map(|channel| Box::new(Watched::new(channel)));
            let mut tls = Box::new(TlsSession::new(server_ip));
            if self.control.is_some() {
                // An FTP control connection: it and its data connections
                // resume only among themselves upstream (a server may
                // demand a data connection resume the control
                // connection's session).
                tls.resume_within(mitm::GroupSessions::new());
            }
            self.transform = intercepting(tls);
        }
        Ok(())
    }

    /// Relays the bytes untouched, through the inspection loop when there
    /// is one. Each hop works on its own: a leg may be gone once its part
    /// of the connection is over. Never for a STARTTLS preamble (see
    /// [`Connection::pump_preamble`]): nothing is relayed unwatched.
    pub fn pump_plain(&mut self, io: &mut dyn LegIo) {
        let State::Open(ends) = &mut self.state else {
            return;
        };
        if matches!(self.transform, Transform::Starttls(_)) {
            return;
        }
        let mut fin_to_server = ends.to_server == End::FinSent;
        let mut fin_to_client = ends.to_client == End::FinSent;
        let (up, down) = match self.inspection.as_mut() {
            Some(InspectionLoop::Opening) => return,
            Some(InspectionLoop::Through(through)) => {
                let up = hop(
                    io,
                    Leg::Client,
                    Leg::InspectOut,
                    Some(&mut through.up),
                    &mut through.fin_to_out,
                );
                let down = hop(
                    io,
                    Leg::Server,
                    Leg::InspectIn,
                    Some(&mut through.down),
                    &mut through.fin_to_back,
                );
                let passed_up = hop(io, Leg::InspectIn, Leg::Server, None, &mut fin_to_server);
                let passed_down = hop(io, Leg::InspectOut, Leg::Client, None, &mut fin_to_client);
                through.up.came_out(passed_up as usize);
                through.down.came_out(passed_down as usize);
                (up, down)
            }
            None => {
                send_queued(io, Leg::Server, &mut self.backlog_to_server);
                send_queued(io, Leg::Client, &mut self.backlog_to_client);
                // Each side's later bytes wait until its backlog went out.
                let up = if self.backlog_to_server.is_empty() {
                    hop(io, Leg::Client, Leg::Server, None, &mut fin_to_server)
                } else {
                    0
                };
                let down = if self.backlog_to_client.is_empty() {
                    hop(io, Leg::Server, Leg::Client, None, &mut fin_to_client)
                } else {
                    0
                };
                (up, down)
            }
        };
        if fin_to_server {
            ends.to_server = End::FinSent;
        }
        if fin_to_client {
            ends.to_client = End::FinSent;
        }
        self.bytes.0 += up;
        self.bytes.1 += down;
    }

    /// Buffer capacity the TLS state holds.
    pub fn tls_buffer_capacity(&self) -> usize {
        match &self.transform {
            Transform::Plain => 0,
            Transform::Starttls(preamble) => preamble.buffer_capacity(),
            Transform::Intercept(tls) => tls.buffer_capacity(),
            Transform::Terminate(server) => server.buffer_capacity(),
            Transform::Upgrade(client) => client.buffer_capacity(),
        }
    }
}

/// Interception, relayed by [`relay_tls`]: its records are encrypted
/// straight into the legs' send buffers where they fit.
fn intercepting(mut tls: Box<TlsSession>) -> Transform {
    tls.encrypt_on_demand();
    Transform::Intercept(tls)
}

/// The largest TLS record rustls accepts on the wire (header, 16 KiB of
/// plaintext and the 2 KiB of expansion TLS 1.2 allows; rustls fails a
/// longer header at once). Each read from a leg takes at most this
/// much (so the backlogs overshoot by one record at most), and a partial
/// record is left in a leg's receive buffer only while at least this much
/// can still arrive behind it.
const TLS_RECORD_MAX: usize = 5 + 16 * 1024 + 2048;

/// [`Connection::pump_tls`] for one kind of transform.
fn relay_tls<T: TlsTransform>(
    tls: &mut T,
    context: &mut T::Context,
    io: &mut dyn LegIo,
    mut inspection: Option<&mut InspectionLoop>,
    bytes: &mut (u64, u64),
    mut tap: Option<&mut dyn Tap>,
) -> Result<(), MitmError> {
    for _ in 0..64 {
        // Both queues, always (no short-circuit).
        let mut progress = send_queued(io, Leg::Client, &mut tls.queues().to_client)
            | send_queued(io, Leg::Server, &mut tls.queues().to_server);
        let server_backlog = |tls: &mut T| tls.queues().to_server.len() + tls.held_for_server();
        // Ciphertext is decrypted where it lies in the leg's receive
        // buffer; only a record split by the buffer's end is copied.
        let mut fed = None;
        if server_backlog(tls) < TLS_BACKLOG && tls.queues().plaintext_from_client.len() < TLS_BACKLOG {
            let read = io.recv_in_place(Leg::Client, TLS_RECORD_MAX, TLS_RECORD_MAX, &mut |data, take_all| {
                tls.feed_from_client_in_place(data, take_all).unwrap_or_else(|err| {
                    fed = Some(err);
                    data.len()
                })
            });
            bytes.0 += read as u64;
            fed.take().map_or(Ok(()), Err)?;
            progress |= read > 0;
        }
        if tls.queues().to_client.len() < TLS_BACKLOG && tls.queues().plaintext_from_server.len() < TLS_BACKLOG {
            let read = io.recv_in_place(Leg::Server, TLS_RECORD_MAX, TLS_RECORD_MAX, &mut |data, take_all| {
                tls.feed_from_server_in_place(context, data, take_all)
                    .unwrap_or_else(|err| {
                        fed = Some(err);
                        data.len()
                    })
            });
            bytes.1 += read as u64;
            fed.take().map_or(Ok(()), Err)?;
            progress |= read > 0;
        }
        match inspection.as_deref_mut() {
            Some(InspectionLoop::Through(through)) => {
                progress |= feed_loop(
                    io,
                    Leg::InspectOut,
                    &mut tls.queues().plaintext_from_client,
                    &mut through.up,
                ) | feed_loop(
                    io,
                    Leg::InspectIn,
                    &mut tls.queues().plaintext_from_server,
                    &mut through.down,
                );
                // What the box passed back is encrypted straight from the
                // loop leg's receive buffer.
                if server_backlog(tls) < TLS_BACKLOG {
                    let read = io.recv_in_place(Leg::InspectIn, TLS_RECORD_MAX, 0, &mut |data, _| {
                        if fed.is_none() {
                            fed = deliver(tls, &mut tap, true, data).err();
                        }
                        data.len()
                    });
                    fed.take().map_or(Ok(()), Err)?;
                    through.up.came_out(read);
                    progress |= read > 0;
                }
                if tls.queues().to_client.len() < TLS_BACKLOG {
                    let read = io.recv_in_place(Leg::InspectOut, TLS_RECORD_MAX, 0, &mut |data, _| {
                        if fed.is_none() {
                            fed = deliver(tls, &mut tap, false, data).err();
                        }
                        data.len()
                    });
                    fed.take().map_or(Ok(()), Err)?;
                    through.down.came_out(read);
                    progress |= read > 0;
                }
            }
            // The loop is still being opened: the plaintext waits.
            Some(InspectionLoop::Opening) => {}
            None => {
                if !tls.queues().plaintext_from_client.is_empty() {
                    let plaintext = std::mem::take(&mut tls.queues().plaintext_from_client);
                    deliver(tls, &mut tap, true, &plaintext)?;
                    progress = true;
                }
                if !tls.queues().plaintext_from_server.is_empty() {
                    let plaintext = std::mem::take(&mut tls.queues().plaintext_from_server);
                    deliver(tls, &mut tap, false, &plaintext)?;
                    progress = true;
                }
            }
        }
        // Records go straight into each leg's send buffer where they fit
        // behind what is queued; the rest into the queues, as before.
        progress |= send_encrypted(io, tls, Leg::Server)? | send_encrypted(io, tls, Leg::Client)?;
        tls.encrypt_waiting()?;
        if !progress {
            break;
        }
    }
    // Quiet now: queues the sockets emptied give their memory back, so an
    // idle connection holds no TLS buffer.
    tls.release_empty_buffers();
    Ok(())
}

/// [`Connection::finish_tls_directions`] for one kind of transform.
fn finish_directions<T: TlsTransform>(
    tls: &mut T,
    io: &mut dyn LegIo,
    inspection: Option<&mut InspectionLoop>,
    ends: &mut Ends,
    mut tap: Option<&mut dyn Tap>,
) {
    // A plain server leg's end is its FIN, once everything before it was read.
    let server_finished = if tls.server_speaks_tls() {
        tls.server_finished()
    } else {
        peer_done(io, Leg::Server)
    };
    // A plain client leg's end is its FIN, likewise.
    let client_finished = if tls.client_speaks_tls() {
        tls.client_finished()
    } else {
        peer_done(io, Leg::Client)
    };
    let client_done = client_finished || peer_done(io, Leg::Client);
    let server_done = server_finished || peer_done(io, Leg::Server);
    // Whether each direction came back out of the loop (true without one).
    let (mut up_through, mut down_through) = (true, true);
    if let Some(inspection) = inspection {
        let InspectionLoop::Through(through) = inspection else {
            return;
        };
        if !through.fin_to_out && client_done && tls.queues().plaintext_from_client.is_empty() {
            through.fin_to_out = true;
            io.close(Leg::InspectOut);
        }
        if !through.fin_to_back && server_done && tls.queues().plaintext_from_server.is_empty() {
            through.fin_to_back = true;
            io.close(Leg::InspectIn);
        }
        up_through = peer_done(io, Leg::InspectIn);
        down_through = peer_done(io, Leg::InspectOut);
    }
    up_through &= tls.queues().plaintext_from_client.is_empty();
    down_through &= tls.queues().plaintext_from_server.is_empty();
    if tls.plaintext_exposed() {
        if ends.to_server == End::Open && client_finished && up_through {
            ends.to_server = End::CloseNotifySent;
            tls.close_to_server();
            send_queued(io, Leg::Server, &mut tls.queues().to_server);
        }
        if ends.to_client == End::Open && server_finished && down_through {
            ends.to_client = End::CloseNotifySent;
            tls.close_to_client();
            send_queued(io, Leg::Client, &mut tls.queues().to_client);
        }
    }
    if ends.to_server != End::FinSent
        && up_through
        && tls.queues().to_server.is_empty()
        && tls.held_for_server() == 0
        && peer_done(io, Leg::Client)
    {
        ends.to_server = End::FinSent;
        io.close(Leg::Server);
        if let Some(tap) = tap.as_deref_mut() {
            tap.fin(true);
        }
    }
    if ends.to_client != End::FinSent && down_through && tls.queues().to_client.is_empty() && peer_done(io, Leg::Server)
    {
        ends.to_client = End::FinSent;
        io.close(Leg::Client);
        if let Some(tap) = tap {
            tap.fin(false);
        }
    }
}

/// Shows `plaintext` to the tap and passes it on, encrypted, to the
/// server (`to_server`) or the client.
fn deliver<T: TlsTransform>(
    tls: &mut T,
    tap: &mut Option<&mut dyn Tap>,
    to_server: bool,
    plaintext: &[u8],
) -> Result<(), MitmError> {
    if let Some(tap) = tap.as_deref_mut() {
        tap.data(to_server, plaintext);
    }
    if to_server {
        tls.send_to_server(plaintext)
    } else {
        tls.send_to_client(plaintext)
    }
}

/// Has `tls` encrypt what waits for `leg` (the client or the server)
/// straight into the leg's free send room; true if anything went.
fn send_encrypted<T: TlsTransform>(io: &mut dyn LegIo, tls: &mut T, leg: Leg) -> Result<bool, MitmError> {
    let mut failed = None;
    let sent = io.send_in_place(leg, &mut |room| {
        let written = if leg == Leg::Server {
            tls.encrypt_to_server(room)
        } else {
            tls.encrypt_to_client(room)
        };
        written.unwrap_or_else(|err| {
            failed = Some(err);
            0
        })
    });
    failed.map_or(Ok(sent > 0), Err)
}

/// Sends as much of `queue` as `leg` takes now; true if anything went.
pub(crate) fn send_queued(io: &mut dyn LegIo, leg: Leg, queue: &mut Vec<u8>) -> bool {
    if queue.is_empty() {
        return false;
    }
    let sent = io.send(leg, queue).min(queue.len());
    queue.drain(..sent);
    sent > 0
}

/// Sends as much of `queue` into the loop leg `leg` as it takes and
/// `in_flight` has room for, recording it there; true if anything went.
pub(crate) fn feed_loop(io: &mut dyn LegIo, leg: Leg, queue: &mut Vec<u8>, in_flight: &mut InFlight) -> bool {
    if !io.exists(leg) {
        return false;
    }
    let room = InFlight::room(io.unacknowledged(leg));
    let offered = queue.get(..room).unwrap_or(queue);
    let sent = io.send(leg, offered).min(offered.len());
    in_flight.entered(offered.get(..sent).unwrap_or_default());
    queue.drain(..sent);
    sent > 0
}

/// Relays what `from` received into `to` (recorded in `into_loop` when `to`
/// feeds the inspection loop, and only as far as the record has room), and
/// passes FIN on once `from`'s peer finished and everything went
/// (`fin_sent` records it); returns the bytes moved. Nothing happens while
/// either leg is missing.
fn hop(io: &mut dyn LegIo, from: Leg, to: Leg, into_loop: Option<&mut InFlight>, fin_sent: &mut bool) -> u64 {
    if !(io.exists(from) && io.exists(to)) {
        return 0;
    }
    let moved = match into_loop {
        Some(in_flight) => {
            let room = InFlight::room(io.unacknowledged(to));
            io.relay(from, to, room, &mut |bytes| in_flight.entered(bytes))
        }
        None => io.relay(from, to, usize::MAX, &mut |_| {}),
    };
    if !*fin_sent && io.peer_finished(from).unwrap_or(false) {
        *fin_sent = true;
        io.close(to);
    }
    moved as u64
}

/// One direction of a loop whose box died: what its `exit` leg still holds
/// from the box, then what went in and has not come out (nothing more once
/// the box passed the direction's end, `passed_end`). Returns those bytes
/// and how many of them the box had not passed back; None if the record
/// lost some of these (the box held more than it keeps).
fn unreturned(io: &mut dyn LegIo, exit: Leg, in_flight: &mut InFlight, passed_end: bool) -> Option<(Vec<u8>, usize)> {
    let mut bytes = Vec::new();
    loop {
        let read = io.recv_in_place(exit, usize::MAX, 0, &mut |came, _| {
            bytes.extend_from_slice(came);
            came.len()
        });
        if read == 0 {
            break;
        }
        in_flight.came_out(read);
    }
    if passed_end || io.peer_finished(exit) == Some(true) {
        return Some((bytes, 0));
    }
    if in_flight.lost > 0 {
        return None;
    }
    let held = in_flight.bytes.len();
    bytes.extend(std::mem::take(&mut in_flight.bytes));
    Some((bytes, held))
}

/// Puts `up` ahead of the client's plaintext in `queues`, `down` ahead of
/// the server's.
fn prepend_plaintext(queues: &mut Queues, up: Vec<u8>, down: Vec<u8>) {
    prepend(&mut queues.plaintext_from_client, up);
    prepend(&mut queues.plaintext_from_server, down);
}

/// Puts `front` ahead of what `queue` holds.
fn prepend(queue: &mut Vec<u8>, mut front: Vec<u8>) {
    front.append(queue);
    *queue = front;
}

/// Whether `leg`'s peer finished sending (a leg that is gone has).
pub(crate) fn peer_done(io: &dyn LegIo, leg: Leg) -> bool {
    io.peer_finished(leg).unwrap_or(true)
}
