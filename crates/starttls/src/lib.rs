//! The plaintext preamble of protocols that upgrade to TLS in band
//! (STARTTLS and its kin), watched without being changed.
//!
//! A [`Negotiation`] is shown every byte each peer sends, in order and in
//! whatever pieces the network delivered them, and tells the caller how many
//! of them pass on and what they meant: the client asked to upgrade, the
//! server accepted or refused, the client sent the session's content in
//! plaintext. It never writes a byte of its own, so the appliance relays the
//! preamble byte for byte; what it buffers is bounded, and malformed or
//! oversized input is an error, never a panic. No clock, no I/O.
//!
//! [`negotiation`] makes the watcher of a protocol. Each one reads the
//! protocol's framing on both sides (lines, multi-line replies, literals,
//! message bodies, binary message lengths) and pairs every request with its
//! answer, so content that merely looks like an upgrade command is never
//! taken for one and an answer the watcher cannot pair fails the connection
//! instead of being guessed at. Lines of text (SMTP, IMAP, POP3, FTP) are
//! at most [`LINE_LIMIT`] bytes and hold no control byte but TAB (a CR only
//! before the LF), an XMPP tag at most [`xmpp::TAG_LIMIT`]. In these text
//! protocols a C0 control byte is an error as soon as it arrives, so TLS
//! started where the protocol does not upgrade (its records start with
//! one) fails the connection at its first byte instead of passing
//! uninspected; PostgreSQL's direct TLS is
//! [`NegotiationError::Unsupported`].
#![forbid(unsafe_code)]

use std::fmt;

pub mod ftp;
mod imap;
mod line;
mod pop3;
mod postgres;
mod smtp;
pub mod xmpp;

pub use ftp::{ControlChannel, DataChannelEvent, DataEndpoint, DataProtection};
pub use line::LINE_LIMIT;

/// The watcher of `protocol`'s preamble.
///
/// What every watcher does beyond the trait's contract:
/// - After the upgrade request, [`Negotiation::from_client`] passes nothing
///   (`pass` 0, no event) until the server answered: the caller discards
///   those bytes. After a refusal the watcher reads the client's next bytes
///   as the start of a command (of a first message, for PostgreSQL).
/// - Once the upgrade was accepted, more bytes from either peer are an
///   error ([`NegotiationError::Malformed`]).
/// - One piece of bytes reports at most one event. On the client side, if
///   the first plaintext content and the upgrade request both arrive in one
///   piece, the event is [`ClientEvent::PlaintextContent`] (so `require_tls`
///   still blocks), `pass` still ends at the request and
///   [`Negotiation::awaiting_server`] tells the request is pending (the
///   server's answer is the next event). On the server side an accepted or
///   refused upgrade outranks [`ServerEvent::UpgradeOffered`] in the same
///   piece, and the offer it outranks is not reported later.
pub fn negotiation(protocol: Protocol) -> Box<dyn Negotiation> {
    match protocol {
        Protocol::Smtp => Box::new(smtp::Smtp::new()),
        Protocol::Imap => Box::new(imap::Imap::new()),
        Protocol::Pop3 => Box::new(pop3::Pop3::new()),
        Protocol::Postgres => Box::new(postgres::Postgres::new()),
        Protocol::Xmpp => Box::new(xmpp::XmppNegotiation::new()),
        Protocol::Ftp => Box::new(ftp::FtpNegotiation::new()),
    }
}

/// A protocol that upgrades a plaintext connection to TLS in band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// SMTP and submission: EHLO, STARTTLS (RFC 3207).
    Smtp,
    /// IMAP: CAPABILITY, STARTTLS (RFC 3501).
    Imap,
    /// POP3: CAPA, STLS (RFC 2595).
    Pop3,
    /// XMPP client-to-server: `<starttls/>`, `<proceed/>` (RFC 6120).
    Xmpp,
    /// FTP control: AUTH TLS (RFC 4217).
    Ftp,
    /// PostgreSQL: SSLRequest.
    Postgres,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Smtp,
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Xmpp,
        Protocol::Ftp,
        Protocol::Postgres,
    ];

    /// The name used in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Xmpp => "xmpp",
            Protocol::Ftp => "ftp",
            Protocol::Postgres => "postgres",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|protocol| protocol.name() == name)
    }

    /// The server ports the protocol upgrades on by default.
    pub fn default_ports(self) -> &'static [u16] {
        match self {
            Protocol::Smtp => &[25, 587],
            Protocol::Imap => &[143],
            Protocol::Pop3 => &[110],
            Protocol::Xmpp => &[5222],
            Protocol::Ftp => &[21],
            Protocol::Postgres => &[5432],
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a piece of the client's bytes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStep {
    /// How many of the bytes given pass on to the server: all of them,
    /// except after the upgrade command, whose line (message) is the last
    /// byte passed. What the client sends after it is the command injection
    /// class (CVE-2011-0411) and is discarded by the caller, as is anything
    /// more the client sends until the server answered.
    pub pass: usize,
    pub event: Option<ClientEvent>,
}

/// What the client's bytes meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// The client asked to upgrade; its request ends at `pass`. Not
    /// reported when the first plaintext content came in the same piece
    /// (see [`negotiation`]): [`Negotiation::awaiting_server`] tells then.
    UpgradeRequested,
    /// The client sent the session's content in plaintext (a mail
    /// transaction, a login, a query, an XMPP stanza, a file transfer):
    /// `require_tls` blocks the session here. Only the first such command is
    /// reported.
    PlaintextContent,
}

/// What a piece of the server's bytes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStep {
    /// How many of the bytes given pass on to the client: all of them,
    /// except after an accepted upgrade, whose answer is the last byte
    /// passed. A server that sends more before the TLS handshake is hostile
    /// or broken; the caller fails the connection.
    pub pass: usize,
    pub event: Option<ServerEvent>,
}

/// What the server's bytes meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// The server said it can upgrade (its capabilities list it); for the
    /// log only. Reported once.
    UpgradeOffered,
    /// The server accepted the client's upgrade request: TLS starts on both
    /// sides right after the byte at `pass`.
    UpgradeAccepted,
    /// The server refused it; its refusal passes on and the session goes on
    /// in plaintext (the client sees the refusal).
    UpgradeRefused,
}

/// Which peer sent what a [`NegotiationError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Client => "client",
            Peer::Server => "server",
        })
    }
}

/// Why a preamble cannot be relayed safely; the caller resets the
/// connection and logs this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("the {peer} sent a line (message) longer than {limit} bytes")]
    LineTooLong { peer: Peer, limit: usize },
    #[error("the {peer} sent bytes the protocol does not allow here: {what}")]
    Malformed { peer: Peer, what: &'static str },
    /// A legitimate turn of the protocol that the appliance cannot
    /// intercept (PostgreSQL's GSSAPI encryption, its direct TLS without
    /// SSLRequest): failing the connection is the only way not to let it
    /// pass uninspected.
    #[error("the {peer} chose {what}, which cannot be intercepted")]
    Unsupported { peer: Peer, what: &'static str },
}

impl NegotiationError {
    /// `peer` sent bytes after the server accepted the upgrade, before TLS.
    fn after_upgrade(peer: Peer) -> NegotiationError {
        NegotiationError::Malformed {
            peer,
            what: "bytes after the accepted upgrade, before TLS",
        }
    }
}

/// Keeps the first event of a piece of client bytes: a first plaintext
/// content is always before the upgrade request, nothing being read after
/// the request.
fn note_client(slot: &mut Option<ClientEvent>, event: ClientEvent) {
    slot.get_or_insert(event);
}

/// Keeps the weightiest event of a piece of server bytes: an answer to the
/// upgrade request outranks the offer.
fn note_server(slot: &mut Option<ServerEvent>, event: ServerEvent) {
    if event != ServerEvent::UpgradeOffered || slot.is_none() {
        *slot = Some(event);
    }
}

/// Takes the bytes of a counted run (an IMAP literal, an SMTP `BDAT`
/// chunk) that `rest` holds, at most the `left` still to come, and counts
/// them off `left`: how many it took.
fn take_counted(left: &mut u64, rest: &[u8]) -> usize {
    let taken = usize::try_from(*left).map_or(rest.len(), |left| left.min(rest.len()));
    *left -= taken as u64;
    taken
}

/// The client side of the line watchers (SMTP, IMAP, POP3): `read` takes
/// from the start of the bytes it is given, noting what they meant, and
/// says how many it took, or `None` once the upgrade was requested (what
/// follows waits for the server's answer and does not pass).
fn client_bytes(
    bytes: &[u8],
    mut read: impl FnMut(&[u8], &mut Option<ClientEvent>) -> Result<Option<usize>, NegotiationError>,
) -> Result<ClientStep, NegotiationError> {
    let mut event = None;
    let mut at = 0;
    while at < bytes.len() {
        let Some(taken) = read(&bytes[at..], &mut event)? else {
            break;
        };
        at += taken;
    }
    Ok(ClientStep { pass: at, event })
}

/// The server side of the line watchers (SMTP, IMAP, POP3): `read` takes
/// from the start of the bytes it is given, noting what they meant, and
/// says how many it took, or `None` once the upgrade was accepted. Bytes
/// after an accepting answer in the same piece do not pass; in a later
/// piece they are an error.
fn server_bytes(
    bytes: &[u8],
    mut read: impl FnMut(&[u8], &mut Option<ServerEvent>) -> Result<Option<usize>, NegotiationError>,
) -> Result<ServerStep, NegotiationError> {
    let mut event = None;
    let mut at = 0;
    while at < bytes.len() {
        match read(&bytes[at..], &mut event)? {
            Some(taken) => at += taken,
            None if event == Some(ServerEvent::UpgradeAccepted) => break,
            None => return Err(NegotiationError::after_upgrade(Peer::Server)),
        }
    }
    Ok(ServerStep { pass: at, event })
}

/// Watches one connection's preamble (see the crate documentation). Made by
/// [`negotiation`]; the caller shows it each peer's bytes until the upgrade
/// was accepted, and not after.
// `from_client`/`from_server` name the peer the bytes come from, not a
// conversion.
#[allow(clippy::wrong_self_convention)]
pub trait Negotiation: Send {
    fn protocol(&self) -> Protocol;
    /// The client sent `bytes` (the next ones, in order).
    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError>;
    /// The server sent `bytes` (the next ones, in order).
    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError>;
    /// A request (the client's greeting, a command, the upgrade request)
    /// waits for the server's answer (the caller's preamble timeout runs
    /// while the session had no plaintext content, see
    /// [`Negotiation::upgrade_requested`]).
    fn awaiting_server(&self) -> bool;
    /// The upgrade request waits for the server's answer (also when it
    /// came in one piece with plaintext content): the caller's preamble
    /// timeout runs whatever went before.
    fn upgrade_requested(&self) -> bool;
    /// Once the upgrade was accepted, the observer of the session inside
    /// TLS, for the protocols whose decrypted stream announces further
    /// connections: FTP's control channel ([`ftp::ControlChannel`], its
    /// data connections). `None` for the others.
    fn control_channel(&self) -> Option<ftp::ControlChannel> {
        None
    }
}
