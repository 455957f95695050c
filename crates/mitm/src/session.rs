//! One intercepted TLS connection, sans-IO: ciphertext from the client and
//! from the server goes in, ciphertext for each comes out, and in between
//! the plaintext crosses from one rustls connection to the other.
//!
//! The order is the one that lets the client see what the server chose:
//! read the ClientHello (rustls `Acceptor`), open the upstream handshake with
//! the same SNI and ALPN offer, judge the server's certificate, forge one
//! with the same names, then finish the client's handshake offering exactly
//! the ALPN protocol the server picked.
//!
//! Neither leg is made to look better than the other: the upstream offer
//! has only the versions, suites and groups the client offered too (never
//! weaker than the client's), and the client's leg speaks exactly the
//! version the server chose, preferring a suite with the server's cipher
//! (never stronger-looking than the server).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, ResolvesClientCert, Resumption, UnbufferedClientConnection};
use rustls::crypto::CryptoProvider;
use rustls::server::{
    Acceptor, ProducesTickets, ResolvesServerCert, ServerConnectionData, StoresServerSessions,
    UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon, UnbufferedStatus,
    WriteTraffic,
};
use rustls::{
    AlertDescription, ClientConfig, NamedGroup, ProtocolVersion, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use rustls_pki_types::ServerName;

use crate::clock::WallClock;
use crate::error::MitmError;
use crate::forge::{Forged, Forger, Trust};
use crate::grade::{bulk_cipher, suite_name, LegGrade};
use crate::hello::{client_offer, server_answer, ServerAnswer};
use crate::queues::{release_if_empty, Queues};
use crate::resume::GroupSessions;
use crate::trust::{UpstreamTrust, VerifiedChains};

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

/// Bytes a client may send before its handshake can go on: while the
/// appliance reads its ClientHello, and while it decides or talks to the
/// server (a client waits for the ServerHello, so only a ClientHello and a
/// few records are legitimate). Interception and termination share it.
pub const EARLY_CLIENT_LIMIT: usize = 64 * 1024;

/// The server's first bytes kept to tell why its handshake failed (an
/// alert, or a ServerHello's version and suite, are in the first record).
const SERVER_ANSWER_LIMIT: usize = 4096;

/// The TLS versions the appliance speaks, newest first.
const VERSIONS: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

/// What the client offered that shapes the upstream offer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientOffer {
    alpn: Vec<Vec<u8>>,
    versions: Vec<ProtocolVersion>,
    suites: Vec<rustls::CipherSuite>,
    /// `None`: the client sent no supported_groups extension.
    groups: Option<Vec<NamedGroup>>,
}

/// The upstream offer, as numbers, keying the upstream configurations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UpstreamOffer {
    alpn: Vec<Vec<u8>>,
    versions: Vec<u16>,
    suites: Vec<u16>,
    groups: Vec<u16>,
}

/// What every session of one worker shares: the forger, the upstream trust,
/// the rustls configurations and the session caches for resumption, and
/// the date they work at.
pub struct TlsContext {
    forger: Forger,
    /// The date of forging, of verifying the real server's chain, and of
    /// every rustls configuration made here.
    clock: WallClock,
    trust: UpstreamTrust,
    /// The chains of resumed upstream handshakes that verified.
    verified_chains: VerifiedChains,
    provider: Arc<CryptoProvider>,
    /// The upstream sessions kept for resumption, shared by every upstream
    /// configuration.
    upstream_resumption: Resumption,
    /// Upstream configurations by the offer they carry (ALPN, versions,
    /// suites, groups).
    upstream_configs: RefCell<BoundedCache<UpstreamOffer, ClientConfig>>,
    /// Client-facing configurations by forged certificate, ALPN and the
    /// server's version and suite: every connection to the same site
    /// shares one (a session holds it while it lives, so sharing saves
    /// memory per idle connection).
    client_facing: RefCell<BoundedCache<ClientFacingKey, ServerConfig>>,
    server_sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    invalid_upstream: InvalidUpstream,
    key_log: Option<Arc<dyn rustls::KeyLog>>,
}

/// A forged certificate's fingerprint, the ALPN protocol chosen, and the
/// version and suite the server gave (as numbers).
type ClientFacingKey = (String, Option<Vec<u8>>, u16, u16);

/// How many configurations each cache keeps before it starts again.
const CONFIG_CACHE_ENTRIES: usize = 1024;

impl TlsContext {
    /// With `key_log`, the secrets of both legs of every connection are
    /// written to it; `clock` is the date it works at (see
    /// [`TlsContext::set_clock`]).
    pub fn new(
        forger: Forger,
        trust: UpstreamTrust,
        invalid_upstream: InvalidUpstream,
        key_log: Option<Arc<dyn rustls::KeyLog>>,
        clock: WallClock,
    ) -> Result<Self, MitmError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|err| MitmError::Config(err.to_string()))?;
        Ok(TlsContext {
            forger,
            clock,
            trust,
            verified_chains: VerifiedChains::new(CONFIG_CACHE_ENTRIES),
            provider,
            upstream_resumption: Resumption::default(),
            upstream_configs: RefCell::new(BoundedCache::new(CONFIG_CACHE_ENTRIES)),
            client_facing: RefCell::new(BoundedCache::new(CONFIG_CACHE_ENTRIES)),
            server_sessions: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer,
            invalid_upstream,
            key_log,
        })
    }

    pub fn forger(&self) -> &Forger {
        &self.forger
    }

    /// The date this context works at.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// From now on this context works at the date `clock` shows (its
    /// driver's: an engine puts every context it is given on its own
    /// clock). The rustls configurations made so far read the old clock:
    /// they are made again.
    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
        self.upstream_configs.get_mut().clear();
        self.client_facing.get_mut().clear();
        self.verified_chains.clear();
    }

    /// Writes the secrets of the connections opened from now on to
    /// `key_log` (for a key log opened after the context was made: `tlsgate
    /// run` loads the CA before its privilege drop and opens the key log
    /// after it).
    pub fn set_key_log(&mut self, key_log: Arc<dyn rustls::KeyLog>) {
        self.key_log = Some(key_log);
    }

    /// The upstream configuration for a client's offer: only the versions,
    /// suites and key-exchange groups of the appliance that the client
    /// offered too, so the server is never offered anything weaker than
    /// the client offered (all of the appliance's where the client offered
    /// none of them: what rustls has is never weak). Also returns the
    /// versions offered.
    fn upstream_config(&self, client: &ClientOffer) -> Result<(Arc<ClientConfig>, Vec<ProtocolVersion>), MitmError> {
        let mut versions: Vec<&'static SupportedProtocolVersion> = VERSIONS
            .into_iter()
            .filter(|ours| client.versions.contains(&ours.version))
            .collect();
        if versions.is_empty() {
            versions = VERSIONS.to_vec();
        }
        let of_versions = |suite: &&SupportedCipherSuite| versions.iter().any(|v| v.version == suite.version().version);
        let mut suites: Vec<SupportedCipherSuite> = self
            .provider
            .cipher_suites
            .iter()
            .filter(of_versions)
            .filter(|suite| client.suites.contains(&suite.suite()))
            .copied()
            .collect();
        if suites.is_empty() {
            suites = self
                .provider
                .cipher_suites
                .iter()
                .filter(of_versions)
                .copied()
                .collect();
        }
        let mut groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup> = self
            .provider
            .kx_groups
            .iter()
            .filter(|group| {
                client
                    .groups
                    .as_ref()
                    .is_none_or(|offered| offered.contains(&group.name()))
            })
            .copied()
            .collect();
        if groups.is_empty() {
            groups = self.provider.kx_groups.clone();
        }
        let key = UpstreamOffer {
            alpn: client.alpn.clone(),
            versions: versions.iter().map(|v| u16::from(v.version)).collect(),
            suites: suites.iter().map(|s| u16::from(s.suite())).collect(),
            groups: groups.iter().map(|g| u16::from(g.name())).collect(),
        };
        let offered = versions.iter().map(|version| version.version).collect();
        let config = self.upstream_configs.borrow_mut().get_or_insert(key, || {
            let provider = CryptoProvider {
                cipher_suites: suites,
                kx_groups: groups,
                ..(*self.provider).clone()
            };
            let mut config = ClientConfig::builder_with_details(Arc::new(provider), Arc::new(self.clock.clone()))
                .with_protocol_versions(&versions)
                .map_err(|err| MitmError::Config(err.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(self.trust.deferred())
                .with_client_cert_resolver(Arc::new(NoteClientCertRequest));
            config.alpn_protocols = client.alpn.clone();
            config.resumption = self.upstream_resumption.clone();
            if let Some(key_log) = &self.key_log {
                config.key_log = Arc::clone(key_log);
            }
            Ok::<_, MitmError>(config)
        })?;
        Ok((config, offered))
    }

    /// The client-facing configuration: the forged certificate, the ALPN
    /// protocol the server chose, and exactly the server's TLS version,
    /// with the suites of that version that use the server's cipher first
    /// (the appliance's order wins), so the client sees the server's
    /// version and, whenever it supports it, the server's cipher.
    fn client_config(
        &self,
        forged: &Forged,
        alpn: Option<&[u8]>,
        server: &LegGrade,
    ) -> Result<Arc<ServerConfig>, MitmError> {
        let key = (
            forged.fingerprint.clone(),
            alpn.map(<[u8]>::to_vec),
            u16::from(server.version),
            u16::from(server.suite),
        );
        self.client_facing.borrow_mut().get_or_insert(key, || {
            let version = VERSIONS
                .into_iter()
                .find(|ours| ours.version == server.version)
                .ok_or_else(|| MitmError::Config(format!("the server chose {:?}", server.version)))?;
            let server_cipher = bulk_cipher(server.suite);
            let mut suites: Vec<SupportedCipherSuite> = self
                .provider
                .cipher_suites
                .iter()
                .filter(|suite| suite.version().version == server.version)
                .copied()
                .collect();
            suites.sort_by_key(|suite| bulk_cipher(suite.suite()) != server_cipher);
            let provider = CryptoProvider {
                cipher_suites: suites,
                ..(*self.provider).clone()
            };
            let mut config = ServerConfig::builder_with_details(Arc::new(provider), Arc::new(self.clock.clone()))
                .with_protocol_versions(&[version])
                .map_err(|err| MitmError::Config(err.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(FixedCert(Arc::clone(&forged.certified))));
            config.ignore_client_order = true;
            config.alpn_protocols = alpn.map(|protocol| vec![protocol.to_vec()]).unwrap_or_default();
            config.session_storage = Arc::clone(&self.server_sessions);
            config.ticketer = Arc::clone(&self.ticketer);
            if let Some(key_log) = &self.key_log {
                config.key_log = Arc::clone(key_log);
            }
            Ok(config)
        })
    }
}

impl TlsContext {
    /// The client configuration of an upgraded connection's TLS leg (its
    /// client speaks plain TCP): every version, suite and group the
    /// appliance speaks, no ALPN (the client's protocol is whatever it
    /// speaks without), resumption shared with interception's upstream
    /// legs, and the server's chain verified against `tls.upstream_trust`
    /// during the handshake: one that does not verify fails it (there is
    /// no client to show it to, so `tls.invalid_upstream` does not apply).
    pub fn upgrade_config(&self) -> Result<Arc<ClientConfig>, MitmError> {
        let mut config = ClientConfig::builder_with_details(Arc::clone(&self.provider), Arc::new(self.clock.clone()))
            .with_protocol_versions(&VERSIONS)
            .map_err(|err| MitmError::Config(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.trust.enforcing())
            .with_no_client_auth();
        config.resumption = self.upstream_resumption.clone();
        if let Some(key_log) = &self.key_log {
            config.key_log = Arc::clone(key_log);
        }
        Ok(Arc::new(config))
    }

    /// The server configuration of a downgraded connection's TLS leg (its
    /// server speaks plain TCP): a certificate forged for the client's
    /// `sni` (else the destination address `ip`) and signed by the
    /// appliance CA, TLS 1.2 and 1.3, no ALPN (the plain server speaks
    /// what the client speaks without), the session cache and tickets of
    /// interception. Also returns the certificate.
    pub fn downgrade_config(
        &mut self,
        sni: Option<&str>,
        ip: IpAddr,
    ) -> Result<(Arc<ServerConfig>, Forged), MitmError> {
        let forged = self.forger.forge_for_name(sni, ip, self.clock.now())?;
        // Keyed apart from interception's (which pin one version and suite).
        let key = (forged.fingerprint.clone(), None, 0, 0);
        let config = self.client_facing.borrow_mut().get_or_insert(key, || {
            let mut config =
                ServerConfig::builder_with_details(Arc::clone(&self.provider), Arc::new(self.clock.clone()))
                    .with_protocol_versions(&VERSIONS)
                    .map_err(|err| MitmError::Config(err.to_string()))?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(FixedCert(Arc::clone(&forged.certified))));
            config.session_storage = Arc::clone(&self.server_sessions);
            config.ticketer = Arc::clone(&self.ticketer);
            if let Some(key_log) = &self.key_log {
                config.key_log = Arc::clone(key_log);
            }
            Ok::<_, MitmError>(config)
        })?;
        Ok((config, forged))
    }
}

/// A map that forgets everything when it is full: enough for configurations
/// that are cheap to rebuild and that live sessions keep alive anyway.
struct BoundedCache<K, V> {
    entries: HashMap<K, Arc<V>>,
    capacity: usize,
}

impl<K: Eq + Hash, V> BoundedCache<K, V> {
    fn new(capacity: usize) -> Self {
        BoundedCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn get_or_insert<E>(&mut self, key: K, make: impl FnOnce() -> Result<V, E>) -> Result<Arc<V>, E> {
        if let Some(value) = self.entries.get(&key) {
            return Ok(Arc::clone(value));
        }
        let value = Arc::new(make()?);
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key, Arc::clone(&value));
        Ok(value)
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
    /// The ClientHello is the outer hello of Encrypted Client Hello (the
    /// SNI is its public name).
    pub ech_offered: bool,
    /// Each leg's version and suite, graded (see [`crate::grade`]).
    pub client_grade: Option<LegGrade>,
    pub server_grade: Option<LegGrade>,
    /// The server's handshake failed because it speaks only TLS the
    /// appliance does not (below 1.2, or no ECDHE/AEAD suite): why.
    pub legacy_upstream: Option<String>,
    pub plaintext_client_to_server: u64,
    pub plaintext_server_to_client: u64,
}

enum Phase {
    /// Waiting for the whole ClientHello.
    Hello(Box<Acceptor>),
    /// The ClientHello is read; the caller decides (see [`TlsSession::pending`]).
    /// Its offer is kept, for the upstream ClientHello.
    Decide {
        offer: ClientOffer,
    },
    /// The client's first bytes are not a usable ClientHello; the caller
    /// decides between bypass and block.
    Rejected(Rejection),
    /// The client waits while the appliance talks to the real server.
    Upstream {
        upstream: Box<Leg<UnbufferedClientConnection>>,
        /// The versions offered to the server.
        offered: Vec<ProtocolVersion>,
    },
    /// Both handshakes running or done; plaintext is relayed.
    Established {
        client: Box<Leg<UnbufferedServerConnection>>,
        upstream: Box<Leg<UnbufferedClientConnection>>,
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

impl Rejection {
    /// Why rustls refused a client's first bytes as a ClientHello.
    pub fn of(err: rustls::Error) -> Rejection {
        let reason = err.to_string();
        match err {
            rustls::Error::InvalidMessage(_) => Rejection::NotTls(reason),
            rustls::Error::PeerIncompatible(_) => Rejection::UnsupportedVersion(reason),
            _ => Rejection::Other(reason),
        }
    }
}

/// What the caller has to decide on before the session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A ClientHello was read: intercept, bypass or block it. `ech`: it is
    /// the outer hello of Encrypted Client Hello (`sni` is the public name).
    Hello {
        sni: Option<String>,
        alpn: Vec<String>,
        ech: bool,
    },
    /// The client's bytes cannot be intercepted: bypass or block.
    Rejected(Rejection),
}

/// One intercepted TLS connection.
///
/// Both legs use rustls's unbuffered API: the session owns every buffer and
/// frees each one as soon as it is empty, so an idle connection holds only
/// the two connections' keys and state, not rustls's 4 KiB read buffers.
pub struct TlsSession {
    phase: Phase,
    /// Every byte the client sent before its leg exists: the ClientHello
    /// and whatever followed it. Given back whole on a bypass; on
    /// interception, the forged-certificate handshake reads it again.
    client_bytes: Vec<u8>,
    /// The server's first bytes, while its handshake runs (see
    /// [`SERVER_ANSWER_LIMIT`]).
    server_first: Vec<u8>,
    server_ip: IpAddr,
    /// The ciphertext for each leg; the plaintext of each side when it is
    /// exposed (that of the server also what it sent while the client's
    /// leg did not exist yet).
    queues: Queues,
    client_eof: bool,
    server_eof: bool,
    /// Decrypted plaintext is handed to the caller (see
    /// [`TlsSession::expose_plaintext`]) instead of crossing directly.
    exposed: bool,
    /// Application data waits, as plaintext, until the caller has it
    /// encrypted (see [`TlsSession::encrypt_on_demand`]).
    on_demand: bool,
    /// The sessions its upstream handshake resumes from and adds to, when
    /// it resumes only within a group (see [`TlsSession::resume_within`]);
    /// else the context's, shared by every upstream leg.
    group: Option<GroupSessions>,
    pub info: SessionInfo,
}

/// An ALPN protocol as the logs show it.
pub fn protocol_name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl TlsSession {
    /// A session for a connection to `server_ip` (used as the upstream name
    /// when the client sends no SNI).
    pub fn new(server_ip: IpAddr) -> Self {
        TlsSession {
            phase: Phase::Hello(Box::default()),
            client_bytes: Vec::new(),
            server_first: Vec::new(),
            server_ip,
            queues: Queues::default(),
            client_eof: false,
            server_eof: false,
            exposed: false,
            on_demand: false,
            group: None,
            info: SessionInfo::default(),
        }
    }

    /// Its upstream handshake resumes only a session of `group`, and the
    /// sessions the server gives it go to `group` only (an FTP control
    /// connection and its data connections: see [`crate::resume`]). Before
    /// the ClientHello.
    pub fn resume_within(&mut self, group: GroupSessions) {
        self.group = Some(group);
    }

    /// The group its upstream sessions are kept in, if any.
    pub fn resumption_group(&self) -> Option<&GroupSessions> {
        self.group.as_ref()
    }

    /// From now on the plaintext of each side is not written to the other
    /// side's connection but collected in the [`Queues`]'
    /// `plaintext_from_client` and `plaintext_from_server`, for the caller
    /// to inspect (or send through an inspection box) and pass on with
    /// [`send_to_server`] and [`send_to_client`]; a close_notify is
    /// likewise only recorded ([`client_finished`]) and passed on with
    /// [`close_to_server`].
    ///
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

    /// From now on the application data for each leg (and a close_notify
    /// behind it) waits in the session, as plaintext, until the caller
    /// has it encrypted: straight into the space it lends
    /// ([`TlsSession::encrypt_to_server`], [`TlsSession::encrypt_to_client`]:
    /// the free room of the leg's send buffer), the rest into the
    /// [`Queues`] ([`TlsSession::encrypt_waiting`]). Handshake messages
    /// still go into the queues at once.
    pub fn encrypt_on_demand(&mut self) {
        self.on_demand = true;
    }

    /// Encrypts the application data waiting for the server straight into
    /// `room`, whole records (and a wanted close_notify after the last) as
    /// long as they fit, and only while nothing waits in the server's queue
    /// ahead of them (encrypted earlier, so sent first). Returns how many
    /// bytes of `room` it wrote; what did not fit keeps waiting.
    pub fn encrypt_to_server(&mut self, room: &mut [u8]) -> Result<usize, MitmError> {
        let Phase::Established { upstream, .. } = &mut self.phase else {
            return Ok(0);
        };
        let written = upstream
            .encrypt_into(&mut self.queues.to_server, room)
            .map_err(MitmError::Server);
        if written.is_err() {
            self.phase = Phase::Failed;
        }
        written
    }

    /// [`TlsSession::encrypt_to_server`] for the client.
    pub fn encrypt_to_client(&mut self, room: &mut [u8]) -> Result<usize, MitmError> {
        let Phase::Established { client, .. } = &mut self.phase else {
            return Ok(0);
        };
        let written = client
            .encrypt_into(&mut self.queues.to_client, room)
            .map_err(MitmError::Client);
        if written.is_err() {
            self.phase = Phase::Failed;
        }
        written
    }

    /// Encrypts every application data waiting (see
    /// [`TlsSession::encrypt_on_demand`]) into the queues.
    pub fn encrypt_waiting(&mut self) -> Result<(), MitmError> {
        let Phase::Established { client, upstream } = &self.phase else {
            return Ok(());
        };
        if !(client.has_output_waiting(true) || upstream.has_output_waiting(true)) {
            return Ok(());
        }
        self.pump_encrypting()
    }

    /// The ciphertext waiting for each leg (take what its socket accepts)
    /// and, in exposed sessions, the plaintext not yet passed on.
    pub fn queues(&mut self) -> &mut Queues {
        &mut self.queues
    }

    /// Encrypts `plaintext` to the server (exposed sessions, once both
    /// handshakes are under way).
    pub fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Phase::Established { upstream, .. } = &mut self.phase else {
            return Err(MitmError::Config(
                "no plaintext can be sent before the handshakes".into(),
            ));
        };
        if upstream.close_wanted {
            return Err(MitmError::Server(rustls::Error::General(
                "the server side is closed".into(),
            )));
        }
        upstream.outgoing.extend_from_slice(plaintext);
        self.info.plaintext_client_to_server += plaintext.len() as u64;
        self.pump()
    }

    /// Encrypts `plaintext` to the client (exposed sessions).
    pub fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        let Phase::Established { client, .. } = &mut self.phase else {
            return Err(MitmError::Config(
                "no plaintext can be sent before the handshakes".into(),
            ));
        };
        if client.close_wanted {
            return Err(MitmError::Client(rustls::Error::General(
                "the client side is closed".into(),
            )));
        }
        client.outgoing.extend_from_slice(plaintext);
        self.info.plaintext_server_to_client += plaintext.len() as u64;
        self.pump()
    }

    /// Sends close_notify to the server (exposed sessions).
    pub fn close_to_server(&mut self) {
        if let Phase::Established { upstream, .. } = &mut self.phase {
            upstream.close_wanted = true;
        }
        // What waits goes ahead of the close_notify. A failure ends the
        // session; the caller sees it as failed.
        let _ = self.pump_encrypting();
    }

    /// Sends close_notify to the client (exposed sessions).
    pub fn close_to_client(&mut self) {
        if let Phase::Established { client, .. } = &mut self.phase {
            client.close_wanted = true;
        }
        let _ = self.pump_encrypting();
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

    /// Frees the output and plaintext buffers the caller has emptied (they
    /// keep their capacity otherwise): call it when the connection goes
    /// quiet, so that an idle session holds no buffer at all.
    pub fn release_empty_buffers(&mut self) {
        self.queues.release_empty();
        if let Phase::Established { client, upstream } = &mut self.phase {
            release_if_empty(&mut client.outgoing);
            release_if_empty(&mut upstream.outgoing);
        }
    }

    /// Bytes of buffer capacity the session holds (its own queues and both
    /// legs'; rustls's keys and state come on top): zero for an idle session
    /// after [`TlsSession::release_empty_buffers`].
    pub fn buffer_capacity(&self) -> usize {
        let legs = match &self.phase {
            Phase::Upstream { upstream, .. } => upstream.buffer_capacity() + self.server_first.capacity(),
            Phase::Established { client, upstream } => client.buffer_capacity() + upstream.buffer_capacity(),
            Phase::Hello(_) | Phase::Decide { .. } | Phase::Rejected(_) | Phase::Failed => 0,
        };
        legs + self.client_bytes.capacity() + self.queues.capacity()
    }

    /// Feeds ciphertext from the client.
    pub fn from_client(&mut self, data: &[u8]) -> Result<(), MitmError> {
        // Until the client's leg exists, its bytes are held (for a bypass,
        // or for the forged-certificate handshake).
        if !matches!(self.phase, Phase::Established { .. } | Phase::Failed) {
            self.hold_client_bytes(data)?;
        }
        match &mut self.phase {
            Phase::Hello(acceptor) => {
                let mut data = data;
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
                        let alpn: Vec<Vec<u8>> = hello
                            .alpn()
                            .map(|offer| offer.map(<[u8]>::to_vec).collect())
                            .unwrap_or_default();
                        self.info.alpn_offered = alpn.iter().map(|p| protocol_name(p)).collect();
                        // rustls parsed the hello; what it does not expose
                        // (versions, ECH) is read from the same bytes.
                        let raw = client_offer(&self.client_bytes);
                        self.info.ech_offered = raw.as_ref().is_some_and(|raw| raw.ech_outer);
                        let offer = ClientOffer {
                            alpn,
                            versions: raw.map(|raw| raw.versions).unwrap_or_default(),
                            suites: hello.cipher_suites().to_vec(),
                            groups: hello.named_groups().map(<[NamedGroup]>::to_vec),
                        };
                        self.phase = Phase::Decide { offer };
                        Ok(())
                    }
                    Err((err, _alert)) => {
                        self.phase = Phase::Rejected(Rejection::of(err));
                        Ok(())
                    }
                }
            }
            // Held (above) until the caller decides, and while the
            // appliance talks to the server.
            Phase::Decide { .. } | Phase::Rejected(_) | Phase::Upstream { .. } => Ok(()),
            Phase::Established { client, .. } => {
                client.incoming.extend_from_slice(data);
                self.pump()
            }
            Phase::Failed => Ok(()),
        }
    }

    /// Feeds ciphertext from the client where it lies (the receive buffer
    /// of its TCP leg): once both legs are established, whole records are
    /// decrypted in place and only a trailing partial record is left,
    /// unconsumed, for a later call with more bytes behind it. With
    /// `take_all` (nothing can grow behind the bytes: the buffer wraps
    /// or is full, or the stream ended) that partial record is copied in
    /// instead. Returns how many bytes of `data` were consumed.
    pub fn from_client_in_place(&mut self, data: &mut [u8], take_all: bool) -> Result<usize, MitmError> {
        if !matches!(self.phase, Phase::Established { .. }) {
            self.from_client(data)?;
            return Ok(data.len());
        }
        self.pump_lent(Lent {
            from_client: true,
            bytes: data,
            take_all,
        })
    }

    /// [`TlsSession::from_client_in_place`] for the server's ciphertext.
    pub fn from_server_in_place(
        &mut self,
        cx: &mut TlsContext,
        data: &mut [u8],
        take_all: bool,
    ) -> Result<usize, MitmError> {
        if !matches!(self.phase, Phase::Established { .. }) {
            self.from_server(cx, data)?;
            return Ok(data.len());
        }
        self.pump_lent(Lent {
            from_client: false,
            bytes: data,
            take_all,
        })
    }

    /// Keeps client bytes that arrive before the client's leg exists,
    /// refusing more than a ClientHello and a few records can take.
    fn hold_client_bytes(&mut self, data: &[u8]) -> Result<(), MitmError> {
        if self.client_bytes.len() + data.len() > EARLY_CLIENT_LIMIT {
            let reason = match self.phase {
                Phase::Hello(_) => "no ClientHello in the first 64 KiB",
                _ => "the client sent more than 64 KiB before the handshake",
            };
            self.phase = Phase::Failed;
            return Err(MitmError::Client(rustls::Error::General(reason.into())));
        }
        self.client_bytes.extend_from_slice(data);
        Ok(())
    }

    /// Feeds ciphertext from the server.
    pub fn from_server(&mut self, cx: &mut TlsContext, data: &[u8]) -> Result<(), MitmError> {
        match &mut self.phase {
            Phase::Upstream { upstream, offered } => {
                upstream.incoming.extend_from_slice(data);
                let room = SERVER_ANSWER_LIMIT.saturating_sub(self.server_first.len());
                self.server_first
                    .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
                CLIENT_CERT_REQUESTED.with(|requested| requested.set(false));
                crate::trust::take_chain_verdict();
                let driven = upstream.drive(
                    None,
                    &mut self.queues.to_server,
                    &mut self.queues.plaintext_from_server,
                    true,
                );
                if CLIENT_CERT_REQUESTED.with(Cell::get) {
                    self.info.client_cert_requested = true;
                }
                // Known even when the handshake fails after the server's
                // certificate (a client certificate it wanted).
                if let Some(verdict) = crate::trust::take_chain_verdict() {
                    self.info.upstream_verified = Some(verdict);
                }
                if let Err(err) = driven {
                    upstream.flush_alert(&mut self.queues.to_server);
                    let answer = server_answer(&self.server_first);
                    if let Some(ServerAnswer::Hello { version, suite }) = answer {
                        self.info.server_version = Some(format!("{version:?}"));
                        self.info.server_cipher = Some(suite_name(suite));
                        self.info.server_grade = Some(LegGrade::of(version, suite));
                    }
                    self.info.legacy_upstream = legacy_cause(&err, answer, offered);
                    self.server_first = Vec::new();
                    self.phase = Phase::Failed;
                    return Err(MitmError::Server(err));
                }
                if !upstream.conn.is_handshaking() {
                    return self.finish_upstream(cx);
                }
                Ok(())
            }
            Phase::Established { upstream, .. } => {
                upstream.incoming.extend_from_slice(data);
                self.pump()
            }
            Phase::Hello(_) | Phase::Decide { .. } | Phase::Rejected(_) | Phase::Failed => Ok(()),
        }
    }

    /// What the caller must decide on, if anything.
    pub fn pending(&self) -> Option<Pending> {
        match &self.phase {
            Phase::Decide { .. } => Some(Pending::Hello {
                sni: self.info.sni.clone(),
                alpn: self.info.alpn_offered.clone(),
                ech: self.info.ech_offered,
            }),
            Phase::Rejected(rejection) => Some(Pending::Rejected(rejection.clone())),
            _ => None,
        }
    }

    /// Goes on with the interception of a pending ClientHello.
    pub fn intercept(&mut self, cx: &TlsContext) -> Result<(), MitmError> {
        match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Decide { offer } => self.start_upstream(cx, &offer),
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
        std::mem::take(&mut self.client_bytes)
    }

    fn start_upstream(&mut self, cx: &TlsContext, offer: &ClientOffer) -> Result<(), MitmError> {
        let name = match self.info.sni.clone().and_then(|sni| ServerName::try_from(sni).ok()) {
            Some(name) => name,
            None => ServerName::IpAddress(self.server_ip.into()),
        };
        let (mut config, offered) = cx.upstream_config(offer)?;
        if let Some(group) = &self.group {
            // The same verifier and client certificate resolver as the
            // shared configuration (rustls resumes only with those), the
            // group's sessions.
            let mut own = (*config).clone();
            own.resumption = Resumption::store(group.store());
            config = Arc::new(own);
        }
        let upstream = UnbufferedClientConnection::new(config, name).map_err(MitmError::Server)?;
        let mut upstream = Box::new(Leg::new(upstream, Vec::new()));
        upstream
            .drive(
                None,
                &mut self.queues.to_server,
                &mut self.queues.plaintext_from_server,
                true,
            )
            .map_err(MitmError::Server)?;
        self.phase = Phase::Upstream { upstream, offered };
        Ok(())
    }

    fn finish_upstream(&mut self, cx: &mut TlsContext) -> Result<(), MitmError> {
        let Phase::Upstream { upstream, .. } = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(());
        };
        self.server_first = Vec::new();
        let server = &upstream.conn;
        self.info.server_version = server.protocol_version().map(|v| format!("{v:?}"));
        self.info.resumed_server = matches!(server.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        self.info.server_cipher = server.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        let (Some(version), Some(suite)) = (server.protocol_version(), server.negotiated_cipher_suite()) else {
            return Err(MitmError::Config(
                "the server's handshake ended without a version".into(),
            ));
        };
        let server_grade = LegGrade::of(version, suite.suite());
        self.info.server_grade = Some(server_grade);
        let chain = server.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let Some(leaf) = chain.first() else {
            return Err(MitmError::Forge("the server sent no certificate".into()));
        };
        self.info.upstream_fingerprint = Some(crate::ca::fingerprint(leaf));
        let name = match self.info.sni.clone().and_then(|sni| ServerName::try_from(sni).ok()) {
            Some(name) => name,
            None => ServerName::IpAddress(self.server_ip.into()),
        };
        // Judged while the handshake ran; a resumed handshake shows no
        // certificate, its stored chain is judged now (or the verdict of
        // an earlier resumption reused, while it holds).
        let verified = match self.info.upstream_verified.clone() {
            Some(verdict) => verdict,
            None => cx
                .verified_chains
                .verify(&cx.trust, &chain, &name, cx.clock.unix_time()),
        };
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
        let forged = cx.forger.forge(leaf, self.info.sni.as_deref(), trust, cx.clock.now())?;
        self.info.forged_fingerprint = Some(forged.fingerprint.clone());
        self.info.forged_cache_hit = forged.cache_hit;
        let alpn = server.alpn_protocol().map(<[u8]>::to_vec);
        self.info.alpn = alpn.as_deref().map(protocol_name);
        let config = cx.client_config(&forged, alpn.as_deref(), &server_grade)?;
        let client = UnbufferedServerConnection::new(config).map_err(MitmError::Client)?;
        // The client's leg starts from the ClientHello the acceptor read.
        let mut client = Box::new(Leg::new(client, std::mem::take(&mut self.client_bytes)));
        if !self.exposed {
            // What the server sent with its last handshake flight.
            client.outgoing = std::mem::take(&mut self.queues.plaintext_from_server);
            self.info.plaintext_server_to_client += client.outgoing.len() as u64;
        }
        self.phase = Phase::Established { client, upstream };
        self.pump()
    }

    /// Runs both legs until neither has anything more to do: ciphertext
    /// in, plaintext across (or to the caller), ciphertext out. A failure
    /// ends the session, after the alert rustls has for the failed side.
    fn pump(&mut self) -> Result<(), MitmError> {
        let result = self.pump_legs(None, !self.on_demand);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result.map(|_| ())
    }

    /// [`TlsSession::pump`], encrypting the application data waiting too.
    fn pump_encrypting(&mut self) -> Result<(), MitmError> {
        let result = self.pump_legs(None, true);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result.map(|_| ())
    }

    /// [`TlsSession::pump`] with one leg's ciphertext read where it lies;
    /// returns how many of those bytes were consumed.
    fn pump_lent(&mut self, lent: Lent<'_>) -> Result<usize, MitmError> {
        let result = self.pump_legs(Some(lent), !self.on_demand);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    /// Runs both legs (see [`TlsSession::pump`]), `lent` ciphertext in
    /// place; `encrypt`: the application data waiting is encrypted into
    /// the queues too, else it keeps waiting.
    fn pump_legs(&mut self, lent: Option<Lent<'_>>, encrypt: bool) -> Result<usize, MitmError> {
        let Phase::Established { client, upstream } = &mut self.phase else {
            return Ok(0);
        };
        let from_client = lent.as_ref().is_some_and(|lent| lent.from_client);
        let mut lent = lent.map(|lent| (lent.bytes, lent.take_all));
        let mut consumed = 0;
        // Client, server, client again: what the server's leg decrypts is
        // encrypted to the client in the same call. Each round is cheap
        // when there is nothing to do.
        let exposed = self.exposed;
        for _ in 0..2 {
            consumed += hop(
                client,
                upstream,
                if from_client { lent.take() } else { None },
                &mut self.queues.to_client,
                exposed.then_some(&mut self.queues.plaintext_from_client),
                &mut self.info.plaintext_client_to_server,
                &mut self.client_eof,
                encrypt,
            )
            .map_err(MitmError::Client)?;
            consumed += hop(
                upstream,
                client,
                if from_client { None } else { lent.take() },
                &mut self.queues.to_server,
                exposed.then_some(&mut self.queues.plaintext_from_server),
                &mut self.info.plaintext_server_to_client,
                &mut self.server_eof,
                encrypt,
            )
            .map_err(MitmError::Server)?;
            if !client.has_output_waiting(encrypt) {
                break;
            }
        }
        if !client.conn.is_handshaking() && self.info.client_version.is_none() {
            self.info.client_version = client.conn.protocol_version().map(|v| format!("{v:?}"));
            self.info.client_cipher = client
                .conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()));
            self.info.resumed_client = matches!(client.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            self.info.client_grade = client
                .conn
                .protocol_version()
                .zip(client.conn.negotiated_cipher_suite())
                .map(|(version, suite)| LegGrade::of(version, suite.suite()));
        }
        Ok(consumed)
    }
}

/// One leg's ciphertext lent where it lies (see
/// [`TlsSession::from_client_in_place`]).
struct Lent<'a> {
    from_client: bool,
    bytes: &'a mut [u8],
    take_all: bool,
}

/// Why a server's handshake failed, if the reason is that it speaks only
/// TLS the appliance does not: a ServerHello below TLS 1.2, or a refusal
/// (handshake_failure, protocol_version, insufficient_security) of an
/// offer of `offered` with ECDHE and AEAD suites as its first answer.
fn legacy_cause(err: &rustls::Error, answer: Option<ServerAnswer>, offered: &[ProtocolVersion]) -> Option<String> {
    let refusal = matches!(
        err,
        rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity
        )
    );
    match answer? {
        ServerAnswer::Hello { version, suite } if u16::from(version) < u16::from(ProtocolVersion::TLSv1_2) => Some(
            format!(
                "origin speaks only legacy TLS: its ServerHello chose {version:?} with {}",
                suite_name(suite)
            ),
        ),
        ServerAnswer::Alert(alert) if refusal => Some(format!(
            "origin speaks only legacy TLS: it refused an offer of {offered:?} with ECDHE and AEAD suites ({alert:?} alert)"
        )),
        _ => None,
    }
}

/// One direction of the relay: drives `from` (its ciphertext in, from its
/// own buffer or `lent` where it lies, its output appended to `out`) with
/// the plaintext it decrypts going to `to`, or to the caller's `exposed`
/// buffer; counts what crossed into `moved` and passes a close_notify on
/// (`eof`); `encrypt` as for [`Leg::drive`]. Returns how many lent bytes
/// were consumed. A failure leaves `from`'s alert in `out`.
#[allow(clippy::too_many_arguments)]
fn hop<A: Endpoint, B: Endpoint>(
    from: &mut Leg<A>,
    to: &mut Leg<B>,
    lent: Option<(&mut [u8], bool)>,
    out: &mut Vec<u8>,
    exposed: Option<&mut Vec<u8>>,
    moved: &mut u64,
    eof: &mut bool,
    encrypt: bool,
) -> Result<usize, rustls::Error> {
    let relayed = exposed.is_none();
    let before = to.outgoing.len();
    let sink = match exposed {
        Some(buffer) => buffer,
        None => &mut to.outgoing,
    };
    let consumed = match from.drive(lent, out, sink, encrypt) {
        Ok(consumed) => consumed,
        Err(err) => {
            from.flush_alert(out);
            return Err(err);
        }
    };
    // Exposed plaintext is counted when the caller passes it on.
    *moved += to.outgoing.len().saturating_sub(before) as u64;
    if from.peer_closed && !*eof {
        *eof = true;
        if relayed {
            to.close_wanted = true;
        }
    }
    Ok(consumed)
}

/// An unbuffered rustls connection of either side.
trait Endpoint: Deref<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Endpoint for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Endpoint for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// One leg's rustls connection and the buffers it needs, each freed as
/// soon as it is empty.
struct Leg<C> {
    conn: C,
    /// Ciphertext received and not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Plaintext to encrypt as soon as the handshake allows.
    outgoing: Vec<u8>,
    /// A close_notify is to follow `outgoing`.
    close_wanted: bool,
    close_sent: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
}

impl<C: Endpoint> Leg<C> {
    fn new(conn: C, incoming: Vec<u8>) -> Self {
        Leg {
            conn,
            incoming,
            outgoing: Vec::new(),
            close_wanted: false,
            close_sent: false,
            peer_closed: false,
        }
    }

    fn buffer_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }

    /// Plaintext or a close_notify waits to be sent; without `encrypt`,
    /// only a close_notify with no plaintext ahead of it counts.
    fn has_output_waiting(&self, encrypt: bool) -> bool {
        let close = self.close_wanted && !self.close_sent;
        if encrypt {
            !self.outgoing.is_empty() || close
        } else {
            self.outgoing.is_empty() && close
        }
    }

    /// Encrypts the plaintext waiting (then a wanted close_notify) straight
    /// into `room`, whole records while they fit; nothing while `queue`
    /// (the leg's ciphertext queue) holds bytes, which go first. A
    /// handshake message rustls has to send first goes into `room` too if
    /// it fits, else into `queue`, and everything after it then waits for
    /// [`Leg::drive`]. Returns how many bytes of `room` it wrote.
    fn encrypt_into(&mut self, queue: &mut Vec<u8>, room: &mut [u8]) -> Result<usize, rustls::Error> {
        if !queue.is_empty() || !self.has_output_waiting(true) {
            return Ok(0);
        }
        let Leg {
            conn,
            incoming,
            outgoing,
            close_wanted,
            close_sent,
            peer_closed,
        } = self;
        let mut written = 0;
        // `incoming` holds at most one incomplete record (`drive` ran
        // rustls over the rest), so rustls has nothing to read: each
        // round writes, or ends.
        for _ in 0..8 {
            let UnbufferedStatus { discard, state } = conn.process(incoming);
            let mut more = false;
            match state? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let space = room.get_mut(written..).unwrap_or_default();
                    written += encrypt_records(&mut traffic, outgoing, *close_wanted, close_sent, space)?;
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let space = room.get_mut(written..).unwrap_or_default();
                    match encode.encode(space) {
                        Ok(length) => written += length,
                        Err(_) => append(queue, 1024, |buf| match encode.encode(buf) {
                            Ok(length) => Encoded::Written(length),
                            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                                Encoded::Needs(required_size)
                            }
                            Err(err) => Encoded::Failed(err.to_string()),
                        })?,
                    }
                    more = queue.is_empty();
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    more = true;
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    more = true;
                }
                // Plaintext to read (left where it is for `drive`), or
                // nothing to write.
                _ => {}
            }
            incoming.drain(..discard.min(incoming.len()));
            if !more {
                break;
            }
        }
        Ok(written)
    }

    /// Processes what has arrived and sends what can be sent: handshake
    /// messages and encrypted records are appended to `out`, decrypted
    /// plaintext to `plaintext`; stops when rustls needs more input.
    /// Ciphertext `lent` where it lies (with its `take_all`, see
    /// [`TlsSession::from_client_in_place`]) is processed in place when
    /// nothing is buffered before it, else appended; returns how many of
    /// its bytes were consumed. Without `encrypt`, the plaintext waiting
    /// (and a close_notify behind it) is left for [`Leg::encrypt_into`].
    fn drive(
        &mut self,
        lent: Option<(&mut [u8], bool)>,
        out: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
        encrypt: bool,
    ) -> Result<usize, rustls::Error> {
        let in_place = lent.is_some() && self.incoming.is_empty();
        let consumed = match lent {
            Some((bytes, take_all)) if self.incoming.is_empty() => {
                let mut processed = 0;
                self.process(bytes, &mut processed, out, plaintext, encrypt)?;
                if self.peer_closed {
                    // Nothing after a close_notify is read.
                    bytes.len()
                } else if take_all || !one_incomplete_record(bytes.get(processed..).unwrap_or_default()) {
                    // Also bytes rustls keeps (a handshake message joined
                    // across records): they must stay at the start of
                    // what it is given next.
                    self.incoming
                        .extend_from_slice(bytes.get(processed..).unwrap_or_default());
                    bytes.len()
                } else {
                    processed
                }
            }
            Some((bytes, _)) => {
                self.incoming.extend_from_slice(bytes);
                bytes.len()
            }
            None => 0,
        };
        let mut result = Ok(());
        if !self.incoming.is_empty() {
            let mut incoming = std::mem::take(&mut self.incoming);
            let mut processed = 0;
            result = self.process(&mut incoming, &mut processed, out, plaintext, encrypt);
            incoming.drain(..processed.min(incoming.len()));
            self.incoming = incoming;
        } else if !in_place {
            // Nothing arrived: what waits to be sent goes now.
            result = self.process(&mut [], &mut 0, out, plaintext, encrypt);
        }
        if self.peer_closed {
            // Nothing after a close_notify is read.
            self.incoming.clear();
        }
        // `outgoing` keeps its capacity while data flows (the session's
        // `release_empty_buffers` frees it once quiet).
        release_if_empty(&mut self.incoming);
        result.map(|()| consumed)
    }

    /// Runs the connection over `incoming` (the start of its unprocessed
    /// ciphertext) until rustls needs more input, counting in `done` the
    /// bytes it is done with (processed and not kept by rustls), also
    /// those before a failure. `encrypt` as for [`Leg::drive`].
    fn process(
        &mut self,
        incoming: &mut [u8],
        done: &mut usize,
        out: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
        encrypt: bool,
    ) -> Result<(), rustls::Error> {
        let Leg {
            conn,
            outgoing,
            close_wanted,
            close_sent,
            peer_closed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process(incoming.get_mut(*done..).unwrap_or_default());
            let mut waiting = false;
            match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::PeerClosed => *peer_closed = true,
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(out, 1024, |buf| match encode.encode(buf) {
                        Ok(written) => Encoded::Written(written),
                        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                            Encoded::Needs(required_size)
                        }
                        Err(err) => Encoded::Failed(err.to_string()),
                    })?;
                }
                ConnectionState::TransmitTlsData(mut transmit) => {
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        if encrypt || outgoing.is_empty() {
                            write_traffic(&mut traffic, outgoing, *close_wanted, close_sent, out)?;
                        }
                    }
                    transmit.done();
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    if encrypt || outgoing.is_empty() {
                        write_traffic(&mut traffic, outgoing, *close_wanted, close_sent, out)?;
                    }
                    waiting = true;
                }
                // Early data is never accepted (the server configuration
                // leaves it off), so `ReadEarlyData` does not occur.
                _ => waiting = true,
            }
            *done = (*done + discard).min(incoming.len());
            if waiting {
                return Ok(());
            }
        }
    }

    /// After a failure, appends the alert rustls queued for the peer.
    fn flush_alert(&mut self, out: &mut Vec<u8>) {
        let UnbufferedStatus { state, .. } = self.conn.process(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = append(out, 64, |buf| match encode.encode(buf) {
                Ok(written) => Encoded::Written(written),
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    Encoded::Needs(required_size)
                }
                Err(err) => Encoded::Failed(err.to_string()),
            });
        }
    }
}

/// Whether `bytes` hold the start of one TLS record and nothing more
/// (fewer bytes than its header, or than the header announces): rustls has
/// not touched such bytes, so they may wait where they lie.
fn one_incomplete_record(bytes: &[u8]) -> bool {
    bytes
        .get(3..5)
        .and_then(|length| <[u8; 2]>::try_from(length).ok())
        .is_none_or(|length| bytes.len() < 5 + usize::from(u16::from_be_bytes(length)))
}

/// Encrypts the plaintext waiting in `outgoing` into `out`, then the
/// close_notify if one is wanted.
fn write_traffic<D>(
    traffic: &mut WriteTraffic<'_, D>,
    outgoing: &mut Vec<u8>,
    close_wanted: bool,
    close_sent: &mut bool,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    if !outgoing.is_empty() && !*close_sent {
        // Room for the records' headers and tags, so one pass suffices.
        let estimate = outgoing.len() + (outgoing.len() / RECORD_PAYLOAD + 1) * RECORD_OVERHEAD;
        append(out, estimate, |buf| encrypted(traffic.encrypt(outgoing, buf)))?;
    }
    outgoing.clear();
    if close_wanted && !*close_sent {
        append(out, RECORD_OVERHEAD, |buf| encrypted(traffic.queue_close_notify(buf)))?;
        *close_sent = true;
    }
    Ok(())
}

/// Encrypts `outgoing` into `room` one record's plaintext at a time while
/// the records fit, then the close_notify if one is wanted and everything
/// went; returns how many bytes of `room` were written.
fn encrypt_records<D>(
    traffic: &mut WriteTraffic<'_, D>,
    outgoing: &mut Vec<u8>,
    close_wanted: bool,
    close_sent: &mut bool,
    room: &mut [u8],
) -> Result<usize, rustls::Error> {
    if *close_sent {
        // Nothing is sent after a close_notify.
        outgoing.clear();
        return Ok(0);
    }
    let (mut taken, mut written) = (0, 0);
    for plaintext in outgoing.chunks(RECORD_PAYLOAD) {
        match traffic.encrypt(plaintext, room.get_mut(written..).unwrap_or_default()) {
            Ok(length) => {
                written += length;
                taken += plaintext.len();
            }
            // Left for the queue (a fuller record, the ring's wrap).
            Err(EncryptError::InsufficientSize(_)) => break,
            Err(err) => return Err(rustls::Error::General(err.to_string())),
        }
    }
    outgoing.drain(..taken);
    if outgoing.is_empty() && close_wanted {
        match traffic.queue_close_notify(room.get_mut(written..).unwrap_or_default()) {
            Ok(length) => {
                written += length;
                *close_sent = true;
            }
            Err(EncryptError::InsufficientSize(_)) => {}
            Err(err) => return Err(rustls::Error::General(err.to_string())),
        }
    }
    Ok(written)
}

/// The largest plaintext in one TLS record.
const RECORD_PAYLOAD: usize = 16 * 1024;
/// A record's header, content type, padding allowance and AEAD tag.
const RECORD_OVERHEAD: usize = 64;

/// What one attempt to write into a buffer gave.
enum Encoded {
    Written(usize),
    /// The buffer must be at least this large.
    Needs(usize),
    Failed(String),
}

fn encrypted(result: Result<usize, EncryptError>) -> Encoded {
    match result {
        Ok(written) => Encoded::Written(written),
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => Encoded::Needs(required_size),
        Err(err) => Encoded::Failed(err.to_string()),
    }
}

/// Appends to `out` what `write` puts into the space it is given: first
/// `estimate` bytes, then as many as it asks for.
fn append(
    out: &mut Vec<u8>,
    estimate: usize,
    mut write: impl FnMut(&mut [u8]) -> Encoded,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut size = estimate;
    for _ in 0..2 {
        out.resize(start + size, 0);
        match write(out.get_mut(start..).unwrap_or_default()) {
            Encoded::Written(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Encoded::Needs(required) => size = required,
            Encoded::Failed(reason) => {
                out.truncate(start);
                return Err(rustls::Error::General(reason));
            }
        }
    }
    out.truncate(start);
    Err(rustls::Error::General(
        "rustls needed more room than it asked for".into(),
    ))
}
