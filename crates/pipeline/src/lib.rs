//! The sans-IO per-connection core of tlsgate.
//!
//! A connection is a pipeline: client leg ⇄ client transform ⇄ plaintext
//! relay (± the inspection loop) ⇄ server transform ⇄ server leg. The
//! transforms are plain (bytes pass untouched), TLS interception
//! ([`mitm::TlsSession`] couples the client's and the server's TLS), TLS
//! termination ([`TlsServer`]: the service's own certificate towards the
//! client, plaintext to the backend after an optional preamble such as a
//! PROXY protocol header; also the downgrade, with a forged certificate),
//! TLS upgrade ([`TlsClient`]: a plain client, TLS towards the server), and
//! STARTTLS (a plaintext preamble relayed under a
//! [`starttls::Negotiation`] until the upgrade, then interception).
//!
//! [`Connection`] holds one connection's state (one [`State`]) and relays
//! with back-pressure ([`TLS_BACKLOG`]), half-closes and close_notify
//! ordering. It reaches its legs only through [`LegIo`] (the appliance
//! implements it over its TCP stack), shows the plaintext it passes on to a
//! [`Tap`], and tells what it needs decided ([`Connection::pending`]: the
//! ClientHello's SNI, ALPN and ECH) or how it failed ([`mitm::MitmError`])
//! instead of touching counters, logs or the policy: the caller answers,
//! counts ([`Connection::bytes`], [`Connection::handshakes_done`]) and logs.
//! No clock, no files, no threads.
#![forbid(unsafe_code)]

mod buffered;
mod connection;
mod control;
mod inflight;
mod preamble;
mod terminate;
mod transform;
mod upgrade;

pub use connection::Connection;
pub use control::Announcement;
pub use preamble::{PreambleError, PreambleEvent};
pub use terminate::TlsServer;
pub use transform::TlsTransform;
pub use upgrade::TlsClient;

/// Ciphertext (or plaintext waiting for the loop) beyond which the leg that
/// feeds it is not read (back-pressure across the TLS layer); also what the
/// record of the inspection loop's unreturned bytes keeps.
pub const TLS_BACKLOG: usize = 64 * 1024;

/// Which leg of a connection a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The client's: accepted from it (the appliance as the server), or
    /// connected to it when the server opened the connection (an
    /// active-mode FTP data connection). Its peer is the TLS client.
    Client,
    /// The server's or the backend's: connected to it (the appliance as the
    /// client), or accepted from a server that opened the connection.
    Server,
    /// The loop connection out of `inspect_out` (the appliance as client).
    InspectOut,
    /// The loop connection accepted on `inspect_in` (the appliance as server).
    InspectIn,
}

impl Leg {
    pub const ALL: [Leg; 4] = [Leg::Client, Leg::Server, Leg::InspectOut, Leg::InspectIn];
}

/// The narrow door to a connection's legs. A leg that does not exist (not
/// opened yet, or gone) takes and gives nothing, and counts as finished.
pub trait LegIo {
    /// Whether the leg exists.
    fn exists(&self, leg: Leg) -> bool;
    /// Lends `read` what the leg received where it lies (one contiguous
    /// piece, at most `max` bytes); `read` may change the bytes in place
    /// and returns how many it consumed, the rest stays received. Its flag
    /// says the rest may not grow by `grow` bytes (the piece ends where
    /// the buffer wraps, the buffer has less room, or the peer finished):
    /// then everything is to be consumed. How many bytes were consumed.
    fn recv_in_place(
        &mut self,
        leg: Leg,
        max: usize,
        grow: usize,
        read: &mut dyn FnMut(&mut [u8], bool) -> usize,
    ) -> usize;
    /// Queues as much of `bytes` as the leg takes now; how many.
    fn send(&mut self, leg: Leg, bytes: &[u8]) -> usize;
    /// Lends `write` the leg's free send room where it lies (one contiguous
    /// piece, possibly empty); `write` fills a prefix and returns how long,
    /// and those bytes are queued behind what was queued before. How many
    /// were queued (0 for a leg that does not exist or cannot send, whose
    /// `write` may not be called).
    fn send_in_place(&mut self, leg: Leg, write: &mut dyn FnMut(&mut [u8]) -> usize) -> usize;
    /// Bytes the leg sent (or queued) that its peer has not acknowledged.
    fn unacknowledged(&self, leg: Leg) -> usize;
    /// Moves at most `max` received bytes of `from` into `to`'s queue,
    /// showing each piece moved to `tap`; how many.
    fn relay(&mut self, from: Leg, to: Leg, max: usize, tap: &mut dyn FnMut(&[u8])) -> usize;
    /// Whether the leg's peer finished sending (FIN) and everything before
    /// it was read; None if the leg is gone (or unknown to the stack).
    fn peer_finished(&self, leg: Leg) -> Option<bool>;
    /// Sends FIN once the queue went.
    fn close(&mut self, leg: Leg);
    /// Resets the leg.
    fn abort(&mut self, leg: Leg);
}

/// Where the plaintext a connection passes on is shown (the decrypted
/// capture, the mirror port): in order, with each direction's end.
pub trait Tap {
    fn data(&mut self, from_client: bool, bytes: &[u8]);
    fn fin(&mut self, from_client: bool);
}

/// How far one direction's end has been passed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// Still open.
    #[default]
    Open,
    /// close_notify went (TLS with the plaintext exposed), FIN not yet.
    CloseNotifySent,
    /// FIN went: the direction is over.
    FinSent,
}

/// Each direction's end: client → server and server → client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ends {
    pub to_server: End,
    pub to_client: End,
}

impl Ends {
    /// FIN went both ways: the connection is over.
    pub fn closed(&self) -> bool {
        self.to_server == End::FinSent && self.to_client == End::FinSent
    }
}

/// The state of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The server leg is being connected: nothing is relayed to it yet (an
    /// intercepted client waits for its SYN-ACK until the server accepted;
    /// a terminated client does its TLS handshake meanwhile).
    Connecting,
    /// The server leg failed before it was established; the client leg was
    /// answered (a RST, or silence).
    Refused,
    /// Relaying, each direction until its end passed.
    Open(Ends),
    /// Reset, timed out or blocked once open; nothing more is relayed.
    Failed(Ends),
}
