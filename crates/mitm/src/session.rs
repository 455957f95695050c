//! One intercepted TLS connection, sans-IO: ciphertext from the client and
//! from the server goes in, ciphertext for each comes out, and in between
//! the plaintext crosses from one rustls connection to the other.
//!
//! The order is the one that lets the client see what the server chose:
//! read the ClientHello (rustls `Acceptor`), open the upstream handshake with
//! the same SNI and ALPN offer, judge the server's certificate, forge one
//! with the same names, then finish the client's handshake offering exactly
//! the ALPN protocol the server picked.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

use std::cell::Cell;

use rustls::client::ResolvesClientCert;
use rustls::server::{Accepted, Acceptor, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData};
use rustls_pki_types::{ServerName, UnixTime};
use time::OffsetDateTime;

use crate::error::MitmError;
use crate::forge::{Forger, Trust};
use crate::keylog::KeyLogFile;
use crate::trust::UpstreamTrust;

/// What to do when the real server's certificate does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidUpstream {
    /// Give the client a certificate with the same names from an issuer
    /// nobody trusts: the client rejects it as it would reject the real one.
    #[default]
    Mirror,
    /// Reset the connection.
    Refuse,
}

/// Plaintext read at once from one side before it is written to the other.
const CHUNK: usize = 16 * 1024;
/// Bytes a client may send while the appliance talks to the server (a
/// client waits for the ServerHello, so only a few records are legitimate).
const EARLY_CLIENT_LIMIT: usize = 64 * 1024;

/// What every session of one worker shares: the forger, the upstream trust,
/// the rustls configurations and the session caches for resumption.
pub struct TlsContext {
    forger: Forger,
    trust: UpstreamTrust,
    upstream: Arc<ClientConfig>,
    server_sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    invalid_upstream: InvalidUpstream,
    key_log: Option<Arc<KeyLogFile>>,
}

impl TlsContext {
    /// With `key_log`, the secrets of both legs of every connection are
    /// written to it.
    pub fn new(
        forger: Forger,
        trust: UpstreamTrust,
        invalid_upstream: InvalidUpstream,
        key_log: Option<Arc<KeyLogFile>>,
    ) -> Result<Self, MitmError> {
        let mut upstream = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| MitmError::Config(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(trust.deferred())
            .with_client_cert_resolver(Arc::new(NoteClientCertRequest));
        if let Some(key_log) = &key_log {
            upstream.key_log = Arc::clone(key_log) as Arc<dyn rustls::KeyLog>;
        }
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|err| MitmError::Config(err.to_string()))?;
        Ok(TlsContext {
            forger,
            trust,
            upstream: Arc::new(upstream),
            server_sessions: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer,
            invalid_upstream,
            key_log,
        })
    }

    pub fn forger(&self) -> &Forger {
        &self.forger
    }

    fn upstream_config(&self, alpn: &[Vec<u8>]) -> Arc<ClientConfig> {
        if alpn.is_empty() {
            return Arc::clone(&self.upstream);
        }
        let mut config = (*self.upstream).clone();
        config.alpn_protocols = alpn.to_vec();
        Arc::new(config)
    }

    fn client_config(&self, certified: Arc<CertifiedKey>, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>, MitmError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| MitmError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
        config.alpn_protocols = alpn.map(|protocol| vec![protocol.to_vec()]).unwrap_or_default();
        config.session_storage = Arc::clone(&self.server_sessions);
        config.ticketer = Arc::clone(&self.ticketer);
        if let Some(key_log) = &self.key_log {
            config.key_log = Arc::clone(key_log) as Arc<dyn rustls::KeyLog>;
        }
        Ok(Arc::new(config))
    }
}

thread_local! {
    /// Set when a server asks the upstream handshake being processed on
    /// this thread for a client certificate (see `NoteClientCertRequest`).
    static CLIENT_CERT_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// The appliance has no client certificate to give a server that asks for
/// one; it notes the request so the session can report it (and the policy
/// bypass that server from then on).
#[derive(Debug)]
struct NoteClientCertRequest;

impl ResolvesClientCert for NoteClientCertRequest {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        CLIENT_CERT_REQUESTED.with(|requested| requested.set(true));
        None
    }

    fn has_certs(&self) -> bool {
        // True, so that rustls asks `resolve` when a server requests one.
        true
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// What is known about an intercepted connection, for the connection log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
    pub alpn: Option<String>,
    pub client_version: Option<String>,
    pub client_cipher: Option<String>,
    pub server_version: Option<String>,
    pub server_cipher: Option<String>,
    pub upstream_fingerprint: Option<String>,
    /// `Ok` if the real certificate verified, else why not.
    pub upstream_verified: Option<Result<(), String>>,
    pub forged_fingerprint: Option<String>,
    pub forged_cache_hit: bool,
    /// Whether each leg's handshake resumed an earlier session.
    pub resumed_client: bool,
    pub resumed_server: bool,
    /// The real server asked for a client certificate (which the appliance
    /// cannot give; the handshake then usually fails).
    pub client_cert_requested: bool,
    pub plaintext_client_to_server: u64,
    pub plaintext_server_to_client: u64,
}

enum Phase {
    /// Waiting for the whole ClientHello.
    Hello(Box<Acceptor>),
    /// The ClientHello is read; the caller decides (see [`TlsSession::pending`]).
    Decide(Box<Accepted>),
    /// The client's first bytes are not a usable ClientHello; the caller
    /// decides between bypass and block.
    Rejected(Rejection),
    /// The client waits while the appliance talks to the real server.
    Upstream {
        accepted: Box<Accepted>,
        upstream: Box<ClientConnection>,
    },
    /// Both handshakes running or done; plaintext is relayed.
    Established {
        client: Box<ServerConnection>,
        upstream: Box<ClientConnection>,
    },
    Failed,
}

/// Why the client's first bytes could not be intercepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not TLS at all (plain HTTP on port 443, say).
    NotTls(String),
    /// TLS, but only versions the appliance does not speak (below 1.2).
    UnsupportedVersion(String),
    /// A ClientHello rustls refused for another reason.
    Other(String),
}

/// What the caller has to decide on before the session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A ClientHello was read: intercept, bypass or block it.
    Hello { sni: Option<String>, alpn: Vec<String> },
    /// The client's bytes cannot be intercepted: bypass or block.
    Rejected(Rejection),
}

/// One intercepted TLS connection.
pub struct TlsSession {
    phase: Phase,
    /// Every byte the client sent until a decision, for a bypass.
    client_bytes: Vec<u8>,
    server_ip: IpAddr,
    /// Client bytes that arrived while the upstream handshake ran.
    early_client: Vec<u8>,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    client_eof: bool,
    server_eof: bool,
    /// Decrypted plaintext is handed to the caller (see
    /// [`TlsSession::expose_plaintext`]) instead of crossing directly.
    exposed: bool,
    plaintext_from_client: Vec<u8>,
    plaintext_from_server: Vec<u8>,
    pub info: SessionInfo,
}

fn protocol_name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl TlsSession {
    /// A session for a connection to `server_ip` (used as the upstream name
    /// when the client sends no SNI).
    pub fn new(server_ip: IpAddr) -> Self {
        TlsSession {
            phase: Phase::Hello(Box::default()),
            client_bytes: Vec::new(),
            server_ip,
            early_client: Vec::new(),
            to_client: Vec::new(),
            to_server: Vec::new(),
            client_eof: false,
            server_eof: false,
            exposed: false,
            plaintext_from_client: Vec::new(),
            plaintext_from_server: Vec::new(),
            info: SessionInfo::default(),
        }
    }

    /// From now on the plaintext of each side is not written to the other
    /// side's connection but collected in [`plaintext_from_client`] and
    /// [`plaintext_from_server`], for the caller to inspect (or send through
    /// an inspection box) and pass on with [`send_to_server`] and
    /// [`send_to_client`]; a close_notify is likewise only recorded
    /// ([`client_finished`]) and passed on with [`close_to_server`].
    ///
    /// [`plaintext_from_client`]: TlsSession::plaintext_from_client
    /// [`plaintext_from_server`]: TlsSession::plaintext_from_server
    /// [`send_to_server`]: TlsSession::send_to_server
    /// [`send_to_client`]: TlsSession::send_to_client
    /// [`client_finished`]: TlsSession::client_finished
    /// [`close_to_server`]: TlsSession::close_to_server
    pub fn expose_plaintext(&mut self) {
        self.exposed = true;
    }

    /// Whether the plaintext is handed to the caller.
    pub fn plaintext_exposed(&self) -> bool {
        self.exposed
    }

    /// Plaintext the client sent, not yet passed on (exposed sessions).
    pub fn plaintext_from_client(&mut self) -> &mut Vec<u8> {
        &mut self.plaintext_from_client
    }

    /// Plaintext the server sent, not yet passed on (exposed sessions).
    pub fn plaintext_from_server(&mut self) -> &mut Vec<u8> {
        &mut self.plaintext_from_server
    }

    /// Encrypts `plaintext` to the server (exposed sessions, once both
    /// handshakes are under way).
    pub fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Phase::Established { upstream, .. } = &mut self.phase else {
            return Err(MitmError::Config(
                "no plaintext can be sent before the handshakes".into(),
            ));
        };
        upstream
            .writer()
            .write_all(plaintext)
            .map_err(|_| MitmError::Server(rustls::Error::General("the server side is closed".into())))?;
        self.info.plaintext_client_to_server += plaintext.len() as u64;
        self.flush();
        Ok(())
    }

    /// Encrypts `plaintext` to the client (exposed sessions).
    pub fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Phase::Established { client, .. } = &mut self.phase else {
            return Err(MitmError::Config(
                "no plaintext can be sent before the handshakes".into(),
            ));
        };
        client
            .writer()
            .write_all(plaintext)
            .map_err(|_| MitmError::Client(rustls::Error::General("the client side is closed".into())))?;
        self.info.plaintext_server_to_client += plaintext.len() as u64;
        self.flush();
        Ok(())
    }

    /// Sends close_notify to the server (exposed sessions).
    pub fn close_to_server(&mut self) {
        if let Phase::Established { upstream, .. } = &mut self.phase {
            upstream.send_close_notify();
        }
        self.flush();
    }

    /// Sends close_notify to the client (exposed sessions).
    pub fn close_to_client(&mut self) {
        if let Phase::Established { client, .. } = &mut self.phase {
            client.send_close_notify();
        }
        self.flush();
    }

    /// Ciphertext waiting for the client (take what the socket accepts).
    pub fn to_client(&mut self) -> &mut Vec<u8> {
        &mut self.to_client
    }

    /// Ciphertext waiting for the server.
    pub fn to_server(&mut self) -> &mut Vec<u8> {
        &mut self.to_server
    }

    /// The client sent close_notify (or its TLS stream ended).
    pub fn client_finished(&self) -> bool {
        self.client_eof
    }

    /// The server sent close_notify.
    pub fn server_finished(&self) -> bool {
        self.server_eof
    }

    /// Whether plaintext is being relayed (both handshakes under way or done).
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    /// Feeds ciphertext from the client.
    pub fn from_client(&mut self, mut data: &[u8]) -> Result<(), MitmError> {
        match &mut self.phase {
            Phase::Hello(acceptor) => {
                if self.client_bytes.len() + data.len() > EARLY_CLIENT_LIMIT {
                    self.phase = Phase::Failed;
                    return Err(MitmError::Client(rustls::Error::General(
                        "no ClientHello in the first 64 KiB".into(),
                    )));
                }
                self.client_bytes.extend_from_slice(data);
                while !data.is_empty() {
                    match acceptor.read_tls(&mut data) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                match acceptor.accept() {
                    Ok(None) => Ok(()),
                    Ok(Some(accepted)) => {
                        let hello = accepted.client_hello();
                        self.info.sni = hello.server_name().map(str::to_owned);
                        self.info.alpn_offered = hello
                            .alpn()
                            .map(|offer| offer.map(protocol_name).collect())
                            .unwrap_or_default();
                        self.phase = Phase::Decide(Box::new(accepted));
                        Ok(())
                    }
                    Err((err, _alert)) => {
                        let reason = err.to_string();
                        self.phase = Phase::Rejected(match err {
                            rustls::Error::InvalidMessage(_) => Rejection::NotTls(reason),
                            rustls::Error::PeerIncompatible(_) => Rejection::UnsupportedVersion(reason),
                            _ => Rejection::Other(reason),
                        });
                        Ok(())
                    }
                }
            }
            Phase::Decide(_) | Phase::Rejected(_) => {
                // Held until the caller decides (bounded like the hello).
                if self.client_bytes.len() + data.len() > EARLY_CLIENT_LIMIT {
                    self.phase = Phase::Failed;
                    return Err(MitmError::Client(rustls::Error::General(
                        "the client sent more than 64 KiB before the handshake".into(),
                    )));
                }
                self.client_bytes.extend_from_slice(data);
                self.early_client.extend_from_slice(data);
                Ok(())
            }
            Phase::Upstream { .. } => {
                if self.early_client.len() + data.len() > EARLY_CLIENT_LIMIT {
                    self.phase = Phase::Failed;
                    return Err(MitmError::Client(rustls::Error::General(
                        "the client sent more than 64 KiB before the handshake".into(),
                    )));
                }
                self.early_client.extend_from_slice(data);
                Ok(())
            }
            Phase::Established { client, upstream } => {
                let sink = match self.exposed {
                    true => Sink::Buffer(&mut self.plaintext_from_client),
                    false => Sink::Connection(upstream),
                };
                let result = relay(client, sink, data, &mut self.client_eof)
                    .map(|moved| self.info.plaintext_client_to_server += moved);
                self.flush();
                result.map_err(|err| {
                    self.phase = Phase::Failed;
                    MitmError::Client(err)
                })
            }
            Phase::Failed => Ok(()),
        }
    }

    /// Feeds ciphertext from the server.
    pub fn from_server(&mut self, cx: &mut TlsContext, data: &[u8]) -> Result<(), MitmError> {
        match &mut self.phase {
            Phase::Upstream { upstream, .. } => {
                CLIENT_CERT_REQUESTED.with(|requested| requested.set(false));
                let fed = feed(upstream, data);
                if CLIENT_CERT_REQUESTED.with(Cell::get) {
                    self.info.client_cert_requested = true;
                }
                if let Err(err) = fed {
                    let _ = upstream.write_tls(&mut self.to_server);
                    self.phase = Phase::Failed;
                    return Err(MitmError::Server(err));
                }
                let _ = upstream.write_tls(&mut self.to_server);
                if !upstream.is_handshaking() {
                    return self.finish_upstream(cx);
                }
                Ok(())
            }
            Phase::Established { client, upstream } => {
                let sink = match self.exposed {
                    true => Sink::Buffer(&mut self.plaintext_from_server),
                    false => Sink::Connection(client),
                };
                let result = relay(upstream, sink, data, &mut self.server_eof)
                    .map(|moved| self.info.plaintext_server_to_client += moved);
                self.flush();
                result.map_err(|err| {
                    self.phase = Phase::Failed;
                    MitmError::Server(err)
                })
            }
            Phase::Hello(_) | Phase::Decide(_) | Phase::Rejected(_) | Phase::Failed => Ok(()),
        }
    }

    /// What the caller must decide on, if anything.
    pub fn pending(&self) -> Option<Pending> {
        match &self.phase {
            Phase::Decide(_) => Some(Pending::Hello {
                sni: self.info.sni.clone(),
                alpn: self.info.alpn_offered.clone(),
            }),
            Phase::Rejected(rejection) => Some(Pending::Rejected(rejection.clone())),
            _ => None,
        }
    }

    /// Goes on with the interception of a pending ClientHello.
    pub fn intercept(&mut self, cx: &TlsContext) -> Result<(), MitmError> {
        match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Decide(accepted) => {
                self.client_bytes = Vec::new();
                self.start_upstream(cx, *accepted)
            }
            other => {
                self.phase = other;
                Err(MitmError::Config("nothing to intercept".into()))
            }
        }
    }

    /// Gives up the interception: returns every byte the client sent so
    /// far, to be passed on to the server untouched.
    pub fn bypass(&mut self) -> Vec<u8> {
        self.phase = Phase::Failed;
        self.early_client = Vec::new();
        std::mem::take(&mut self.client_bytes)
    }

    fn start_upstream(&mut self, cx: &TlsContext, accepted: Accepted) -> Result<(), MitmError> {
        let hello = accepted.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        let alpn: Vec<Vec<u8>> = hello
            .alpn()
            .map(|offer| offer.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        self.info.sni = sni.clone();
        self.info.alpn_offered = alpn.iter().map(|p| protocol_name(p)).collect();
        let name = match sni.and_then(|sni| ServerName::try_from(sni).ok()) {
            Some(name) => name,
            None => ServerName::IpAddress(self.server_ip.into()),
        };
        let mut upstream = ClientConnection::new(cx.upstream_config(&alpn), name).map_err(MitmError::Server)?;
        let _ = upstream.write_tls(&mut self.to_server);
        self.phase = Phase::Upstream {
            accepted: Box::new(accepted),
            upstream: Box::new(upstream),
        };
        Ok(())
    }

    fn finish_upstream(&mut self, cx: &mut TlsContext) -> Result<(), MitmError> {
        let Phase::Upstream { accepted, upstream } = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(());
        };
        self.info.server_version = upstream.protocol_version().map(|v| format!("{v:?}"));
        self.info.resumed_server = matches!(upstream.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        self.info.server_cipher = upstream.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        let chain = upstream.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let Some(leaf) = chain.first() else {
            return Err(MitmError::Forge("the server sent no certificate".into()));
        };
        self.info.upstream_fingerprint = Some(crate::ca::fingerprint(leaf));
        let name = match self.info.sni.clone().and_then(|sni| ServerName::try_from(sni).ok()) {
            Some(name) => name,
            None => ServerName::IpAddress(self.server_ip.into()),
        };
        let verified = cx.trust.verify(&chain, &name, UnixTime::now());
        self.info.upstream_verified = Some(verified.clone());
        let trust = match (&verified, cx.invalid_upstream) {
            (Ok(()), _) => Trust::Trusted,
            (Err(_), InvalidUpstream::Mirror) => Trust::Untrusted,
            (Err(reason), InvalidUpstream::Refuse) => {
                return Err(MitmError::Forge(format!(
                    "the server's certificate is not trusted: {reason}"
                )));
            }
        };
        let forged = cx
            .forger
            .forge(leaf, self.info.sni.as_deref(), trust, OffsetDateTime::now_utc())?;
        self.info.forged_fingerprint = Some(forged.fingerprint.clone());
        self.info.forged_cache_hit = forged.cache_hit;
        let alpn = upstream.alpn_protocol().map(<[u8]>::to_vec);
        self.info.alpn = alpn.as_deref().map(protocol_name);
        let config = cx.client_config(forged.certified, alpn.as_deref())?;
        let mut client = match accepted.into_connection(config) {
            Ok(client) => client,
            Err((err, mut alert)) => {
                let _ = alert.write(&mut self.to_client);
                return Err(MitmError::Client(err));
            }
        };
        client.set_buffer_limit(None);
        let mut upstream = upstream;
        upstream.set_buffer_limit(None);
        let early = std::mem::take(&mut self.early_client);
        let sink = match self.exposed {
            true => Sink::Buffer(&mut self.plaintext_from_client),
            false => Sink::Connection(&mut upstream),
        };
        let result = relay(&mut client, sink, &early, &mut self.client_eof)
            .map(|moved| self.info.plaintext_client_to_server += moved);
        self.phase = Phase::Established {
            client: Box::new(client),
            upstream,
        };
        self.flush();
        result.map_err(MitmError::Client)
    }

    /// Moves everything rustls wants to send into the output buffers.
    fn flush(&mut self) {
        if let Phase::Established { client, upstream } = &mut self.phase {
            while client.wants_write() {
                if client.write_tls(&mut self.to_client).is_err() {
                    break;
                }
            }
            while upstream.wants_write() {
                if upstream.write_tls(&mut self.to_server).is_err() {
                    break;
                }
            }
            if !client.is_handshaking() && self.info.client_version.is_none() {
                self.info.client_version = client.protocol_version().map(|v| format!("{v:?}"));
                self.info.client_cipher = client.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
                self.info.resumed_client = matches!(client.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            }
        }
    }
}

/// Feeds all of `data` into `conn` (rustls takes a bounded amount per
/// `read_tls`, so records are processed in between).
fn feed<D: SideData>(conn: &mut ConnectionCommon<D>, mut data: &[u8]) -> Result<(), rustls::Error> {
    loop {
        while !data.is_empty() {
            match conn.read_tls(&mut data) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        conn.process_new_packets()?;
        if data.is_empty() {
            return Ok(());
        }
    }
}

/// Where [`relay`] puts the plaintext it decrypts.
enum Sink<'a, B: SideData> {
    /// Straight into the other side's connection.
    Connection(&'a mut ConnectionCommon<B>),
    /// Into a buffer the caller passes on (the size it counts there).
    Buffer(&'a mut Vec<u8>),
}

/// Feeds `data` into `from`, and puts the plaintext it yields into `sink`.
/// Sets `eof` when `from`'s peer sent close_notify (and closes a connection
/// sink the same way). Returns the plaintext bytes written to a connection
/// sink (what reaches a buffer is counted when the caller passes it on).
fn relay<A: SideData, B: SideData>(
    from: &mut ConnectionCommon<A>,
    mut sink: Sink<'_, B>,
    mut data: &[u8],
    eof: &mut bool,
) -> Result<u64, rustls::Error> {
    let mut moved = 0u64;
    loop {
        while !data.is_empty() {
            match from.read_tls(&mut data) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        from.process_new_packets()?;
        let mut buf = [0u8; CHUNK];
        loop {
            match from.reader().read(&mut buf) {
                Ok(0) => {
                    if !*eof {
                        *eof = true;
                        if let Sink::Connection(to) = &mut sink {
                            to.send_close_notify();
                        }
                    }
                    break;
                }
                Ok(read) => {
                    let plaintext = buf.get(..read).unwrap_or_default();
                    match &mut sink {
                        // Unlimited buffers (set above) accept everything; a
                        // failure here means the other side is closed.
                        Sink::Connection(to) => {
                            to.writer()
                                .write_all(plaintext)
                                .map_err(|_| rustls::Error::General("the other side is closed".into()))?;
                            moved += read as u64;
                        }
                        Sink::Buffer(buffer) => buffer.extend_from_slice(plaintext),
                    }
                }
                Err(_) => break, // WouldBlock: nothing more for now
            }
        }
        if data.is_empty() {
            return Ok(moved);
        }
    }
}
