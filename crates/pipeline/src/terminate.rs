//! TLS termination, sans-IO: the appliance is the TLS server towards the
//! client with a service's own certificates, and the backend gets the
//! plaintext, after an optional preamble (a PROXY protocol header, stud's
//! write-ip) that goes first.
//!
//! The ClientHello is read first ([`rustls::server::Acceptor`]); the caller
//! picks the service by its SNI ([`TlsServer::pending`]) and goes on with
//! the service's configuration ([`TlsServer::accept`]).

use std::io::Write;
use std::sync::Arc;

use mitm::queues::release_if_empty;
use mitm::session::{protocol_name, EARLY_CLIENT_LIMIT};
use mitm::{LegGrade, MitmError, Pending, Queues, Rejection, SessionInfo};
use rustls::server::{Accepted, Acceptor};
use rustls::{ServerConfig, ServerConnection};

use crate::buffered::{read_plaintext, read_records, write_records};
use crate::transform::TlsTransform;

enum Phase {
    /// Waiting for the whole ClientHello.
    Hello(Box<Acceptor>),
    /// The ClientHello is read: the caller picks the service.
    Decide(Box<Accepted>),
    /// The client's first bytes are not a usable ClientHello.
    Rejected(Rejection),
    /// The handshake runs or is done; plaintext is relayed.
    Established(Box<ServerConnection>),
    Failed,
}

/// One terminated TLS connection (see the module documentation).
pub struct TlsServer {
    phase: Phase,
    /// Client bytes that arrived after the ClientHello, before the caller
    /// decided.
    held: Vec<u8>,
    /// Bytes read from the client so far while no connection exists.
    early: usize,
    queues: Queues,
    client_eof: bool,
    pub info: SessionInfo,
}

impl Default for TlsServer {
    fn default() -> Self {
        TlsServer::new()
    }
}

impl TlsServer {
    pub fn new() -> TlsServer {
        TlsServer {
            phase: Phase::Hello(Box::default()),
            held: Vec::new(),
            early: 0,
            queues: Queues::default(),
            client_eof: false,
            info: SessionInfo::default(),
        }
    }

    /// What the caller must decide on, if anything: the ClientHello's SNI
    /// and ALPN offer (pick a service, or refuse), or a client that does
    /// not speak TLS.
    pub fn pending(&self) -> Option<Pending> {
        match &self.phase {
            Phase::Decide(_) => Some(Pending::Hello {
                sni: self.info.sni.clone(),
                alpn: self.info.alpn_offered.clone(),
                ech: false,
            }),
            Phase::Rejected(rejection) => Some(Pending::Rejected(rejection.clone())),
            _ => None,
        }
    }

    /// Answers the pending ClientHello with `config` (the service's
    /// certificates, versions, ALPN and tickets); `preamble` goes to the
    /// backend before any plaintext. The version, suite and ALPN chosen
    /// are in [`TlsServer::info`] on return (for a preamble that carries
    /// them, see [`TlsServer::set_preamble`]).
    pub fn accept(&mut self, config: Arc<ServerConfig>) -> Result<(), MitmError> {
        let Phase::Decide(accepted) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Err(MitmError::Config("no ClientHello to answer".into()));
        };
        let mut conn = match accepted.into_connection(config) {
            Ok(conn) => conn,
            Err((err, mut alert)) => {
                let _ = alert.write_all(&mut self.queues.to_client);
                return Err(MitmError::Client(err));
            }
        };
        conn.set_buffer_limit(None);
        self.info.alpn = conn.alpn_protocol().map(protocol_name);
        self.info.client_version = conn.protocol_version().map(|v| format!("{v:?}"));
        self.info.client_cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        self.info.client_grade = conn
            .protocol_version()
            .zip(conn.negotiated_cipher_suite())
            .map(|(version, suite)| LegGrade::of(version, suite.suite()));
        self.phase = Phase::Established(Box::new(conn));
        let held = std::mem::take(&mut self.held);
        self.drive(&held)
    }

    /// Puts `preamble` ahead of everything the backend gets.
    pub fn set_preamble(&mut self, preamble: &[u8]) {
        let rest = std::mem::take(&mut self.queues.to_server);
        self.queues.to_server = preamble.to_vec();
        self.queues.to_server.extend_from_slice(&rest);
    }

    /// Whether the handshake with the client is done.
    pub fn is_established(&self) -> bool {
        matches!(&self.phase, Phase::Established(conn) if !conn.is_handshaking())
    }

    /// Bytes of buffer capacity the transform holds (rustls's own on top).
    pub fn buffer_capacity(&self) -> usize {
        self.held.capacity() + self.queues.capacity()
    }

    /// Feeds ciphertext to the connection and collects what it gives: the
    /// client's plaintext, the records for the client.
    fn drive(&mut self, data: &[u8]) -> Result<(), MitmError> {
        let Phase::Established(conn) = &mut self.phase else {
            return Ok(());
        };
        let was_handshaking = conn.is_handshaking();
        let result = read_records(conn, data);
        if result.is_ok() && read_plaintext(conn, &mut self.queues.plaintext_from_client) {
            self.client_eof = true;
        }
        // Records for the client, an alert after an error included.
        write_records(conn, &mut self.queues.to_client);
        if was_handshaking && !conn.is_handshaking() {
            self.info.resumed_client = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        }
        if let Err(err) = result {
            self.phase = Phase::Failed;
            return Err(MitmError::Client(err));
        }
        Ok(())
    }

    fn flush_to_client(&mut self) {
        if let Phase::Established(conn) = &mut self.phase {
            write_records(conn, &mut self.queues.to_client);
        }
    }
}

impl TlsTransform for TlsServer {
    type Context = ();

    fn feed_from_client(&mut self, data: &[u8]) -> Result<(), MitmError> {
        match &mut self.phase {
            Phase::Hello(acceptor) => {
                self.early += data.len();
                if self.early > EARLY_CLIENT_LIMIT {
                    self.phase = Phase::Failed;
                    return Err(MitmError::Client(rustls::Error::General(
                        "no ClientHello in the first 64 KiB".into(),
                    )));
                }
                let mut rest = data;
                while !rest.is_empty() {
                    match acceptor.read_tls(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                match acceptor.accept() {
                    Ok(None) => {}
                    Ok(Some(accepted)) => {
                        let hello = accepted.client_hello();
                        self.info.sni = hello.server_name().map(str::to_owned);
                        self.info.alpn_offered = hello
                            .alpn()
                            .map(|offer| offer.map(protocol_name).collect())
                            .unwrap_or_default();
                        self.held.extend_from_slice(rest);
                        self.phase = Phase::Decide(Box::new(accepted));
                    }
                    Err((err, _alert)) => {
                        self.phase = Phase::Rejected(Rejection::of(err));
                    }
                }
                Ok(())
            }
            Phase::Decide(_) => {
                if self.held.len() + data.len() > EARLY_CLIENT_LIMIT {
                    self.phase = Phase::Failed;
                    return Err(MitmError::Client(rustls::Error::General(
                        "the client sent more than 64 KiB before the handshake".into(),
                    )));
                }
                self.held.extend_from_slice(data);
                Ok(())
            }
            Phase::Established(_) => self.drive(data),
            Phase::Rejected(_) | Phase::Failed => Ok(()),
        }
    }

    /// The backend speaks plaintext: what it sends is the plaintext.
    fn feed_from_server(&mut self, _context: &mut (), data: &[u8]) -> Result<(), MitmError> {
        self.queues.plaintext_from_server.extend_from_slice(data);
        Ok(())
    }

    fn queues(&mut self) -> &mut Queues {
        &mut self.queues
    }

    fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        self.queues.to_server.extend_from_slice(plaintext);
        self.info.plaintext_client_to_server += plaintext.len() as u64;
        Ok(())
    }

    fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Phase::Established(conn) = &mut self.phase else {
            return Err(MitmError::Client(rustls::Error::General(
                "the client side is not established".into(),
            )));
        };
        conn.writer()
            .write_all(plaintext)
            .map_err(|err| MitmError::Client(rustls::Error::General(err.to_string())))?;
        self.info.plaintext_server_to_client += plaintext.len() as u64;
        self.flush_to_client();
        Ok(())
    }

    /// The backend is plain TCP: its FIN is the end.
    fn close_to_server(&mut self) {}

    fn close_to_client(&mut self) {
        if let Phase::Established(conn) = &mut self.phase {
            conn.send_close_notify();
        }
        self.flush_to_client();
    }

    fn client_finished(&self) -> bool {
        self.client_eof
    }

    fn server_finished(&self) -> bool {
        false
    }

    fn plaintext_exposed(&self) -> bool {
        true
    }

    fn server_speaks_tls(&self) -> bool {
        false
    }

    fn handshakes_done(&self) -> bool {
        self.is_established()
    }

    fn release_empty_buffers(&mut self) {
        release_if_empty(&mut self.held);
        self.queues.release_empty();
    }
}
