//! TLS upgrade, sans-IO: the client speaks plain TCP, and the appliance is
//! the TLS client towards the server (policy action `upgrade`). The
//! handshake starts as soon as the server leg is connected; the client's
//! plaintext is held until it is done (a server whose certificate does not
//! verify never sees a byte of it), up to [`TLS_BACKLOG`] bytes, which the
//! relay's back-pressure keeps to.
//!
//! [`TLS_BACKLOG`]: crate::TLS_BACKLOG

use std::io::Write;
use std::sync::Arc;

use mitm::queues::release_if_empty;
use mitm::{LegGrade, MitmError, Queues, SessionInfo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::buffered::{read_plaintext, read_records, write_records};
use crate::transform::TlsTransform;

/// One upgraded connection (see the module documentation).
pub struct TlsClient {
    /// None once it failed.
    conn: Option<Box<ClientConnection>>,
    /// The client's plaintext, held while the handshake runs.
    held: Vec<u8>,
    /// The client's stream ended; the close_notify follows what is held.
    close_wanted: bool,
    queues: Queues,
    server_eof: bool,
    pub info: SessionInfo,
}

impl TlsClient {
    /// A connection to `name` (the SNI, and the name the server's
    /// certificate must carry; an IP address sends no SNI) with `config`;
    /// its ClientHello waits in the `to_server` of its
    /// [`TlsTransform::queues`].
    pub fn new(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<TlsClient, MitmError> {
        let sni = match &name {
            ServerName::DnsName(dns) => Some(dns.as_ref().to_owned()),
            _ => None,
        };
        let mut conn = ClientConnection::new(config, name).map_err(MitmError::Server)?;
        conn.set_buffer_limit(None);
        let mut client = TlsClient {
            conn: Some(Box::new(conn)),
            held: Vec::new(),
            close_wanted: false,
            queues: Queues::default(),
            server_eof: false,
            info: SessionInfo {
                sni,
                ..SessionInfo::default()
            },
        };
        client.flush_to_server();
        Ok(client)
    }

    /// Whether the handshake with the server is done.
    pub fn is_established(&self) -> bool {
        self.conn.as_ref().is_some_and(|conn| !conn.is_handshaking())
    }

    /// Bytes of buffer capacity the transform holds (rustls's own on top).
    pub fn buffer_capacity(&self) -> usize {
        self.held.capacity() + self.queues.capacity()
    }

    fn flush_to_server(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            write_records(conn, &mut self.queues.to_server);
        }
    }

    /// Once the handshake is done: what it chose, then what was held.
    fn handshake_done(&mut self) -> Result<(), MitmError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let info = &mut self.info;
        info.server_version = conn.protocol_version().map(|v| format!("{v:?}"));
        info.server_cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        info.server_grade = conn
            .protocol_version()
            .zip(conn.negotiated_cipher_suite())
            .map(|(version, suite)| LegGrade::of(version, suite.suite()));
        info.resumed_server = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        info.upstream_fingerprint = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| mitm::ca::fingerprint(leaf));
        // The verifier failed the handshake otherwise.
        info.upstream_verified = Some(Ok(()));
        let held = std::mem::take(&mut self.held);
        self.write(&held)?;
        if self.close_wanted {
            self.close_to_server();
        }
        Ok(())
    }

    fn write(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(MitmError::Server(rustls::Error::General(
                "the server side failed".into(),
            )));
        };
        conn.writer()
            .write_all(plaintext)
            .map_err(|err| MitmError::Server(rustls::Error::General(err.to_string())))?;
        self.info.plaintext_client_to_server += plaintext.len() as u64;
        self.flush_to_server();
        Ok(())
    }

    /// The handshake failed: the alert goes to the server, the reason to
    /// the log.
    fn failed(&mut self, err: rustls::Error) -> MitmError {
        self.flush_to_server();
        if let rustls::Error::InvalidCertificate(reason) = &err {
            self.info.upstream_verified = Some(Err(format!("{reason:?}")));
        }
        self.conn = None;
        self.held = Vec::new();
        MitmError::Server(err)
    }
}

impl TlsTransform for TlsClient {
    type Context = ();

    /// The client speaks plaintext: what it sends is the plaintext.
    fn feed_from_client(&mut self, data: &[u8]) -> Result<(), MitmError> {
        self.queues.plaintext_from_client.extend_from_slice(data);
        Ok(())
    }

    fn feed_from_server(&mut self, _context: &mut (), data: &[u8]) -> Result<(), MitmError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let was_handshaking = conn.is_handshaking();
        if let Err(err) = read_records(conn, data) {
            return Err(self.failed(err));
        }
        if read_plaintext(conn, &mut self.queues.plaintext_from_server) {
            self.server_eof = true;
        }
        self.flush_to_server();
        if was_handshaking && self.is_established() {
            self.handshake_done()?;
        }
        Ok(())
    }

    fn queues(&mut self) -> &mut Queues {
        &mut self.queues
    }

    fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        if self.is_established() {
            return self.write(plaintext);
        }
        self.held.extend_from_slice(plaintext);
        Ok(())
    }

    fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        self.queues.to_client.extend_from_slice(plaintext);
        self.info.plaintext_server_to_client += plaintext.len() as u64;
        Ok(())
    }

    fn close_to_server(&mut self) {
        if !self.is_established() {
            // After what is held, once the handshake is done.
            self.close_wanted = true;
            return;
        }
        self.close_wanted = false;
        if let Some(conn) = self.conn.as_mut() {
            conn.send_close_notify();
        }
        self.flush_to_server();
    }

    /// The client is plain TCP: its FIN is the end.
    fn close_to_client(&mut self) {}

    fn client_finished(&self) -> bool {
        false
    }

    fn server_finished(&self) -> bool {
        self.server_eof
    }

    fn plaintext_exposed(&self) -> bool {
        true
    }

    fn server_speaks_tls(&self) -> bool {
        true
    }

    fn client_speaks_tls(&self) -> bool {
        false
    }

    fn held_for_server(&self) -> usize {
        self.held.len() + usize::from(self.close_wanted)
    }

    fn handshakes_done(&self) -> bool {
        self.is_established()
    }

    fn release_empty_buffers(&mut self) {
        release_if_empty(&mut self.held);
        self.queues.release_empty();
    }
}
