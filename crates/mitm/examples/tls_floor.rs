//! The "rustls floor" of issue 6's CPU targets, measured in memory: what
//! the two TLS handshakes an intercepted connection needs cost in plain
//! rustls (no [`mitm::TlsSession`], no TCP, no sockets), and what bare
//! AEAD decryption and re-encryption of bulk data costs, in CPU time of the
//! one thread that does the work.
//!
//!     cargo run --release -p mitm --example tls_floor -- \
//!         [--json] [--rounds N] [--connections N] [--bytes N]
//!
//! Prints a table; with `--json`, one JSON object on stdout (the table goes
//! to stderr). Defaults: 7 rounds of 300 connections per handshake kind
//! and 500 MB (5 × 10^8 plaintext bytes, rounded up to whole records) per
//! AEAD and round, 7 to 10 s on this 2-vCPU machine. Every figure is the
//! median over the rounds.
//!
//! # What is measured
//!
//! - **Server role** (the appliance towards the client): a rustls
//!   `ServerConnection` configured as tlsgate's client-facing leg (ring
//!   provider, TLS 1.2 and 1.3, the certificate forged by
//!   [`mitm::Forger`] for a real ECDSA P-256 certificate, i.e. an ECDSA
//!   P-256 leaf plus the appliance CA, a ring `Ticketer` and a session
//!   cache, so two TLS 1.3 tickets are issued after each handshake as
//!   tlsgate does), against a client that offers what ab and curl (OpenSSL
//!   3.0) offer: TLS 1.3 suites in OpenSSL's order (AES-256-GCM,
//!   ChaCha20-Poly1305, AES-128-GCM), an X25519 key share, no session to
//!   resume. rustls' server follows the client's order, so
//!   TLS13_AES_256_GCM_SHA384 with X25519 is negotiated, as bench-compare
//!   logs for ab; the example checks it on every connection. Also reported
//!   without tickets (not part of the floor).
//! - **Client role** (the appliance towards the origin): a rustls
//!   `ClientConnection` configured as tlsgate's upstream leg (ring
//!   provider, default suites and groups, webpki verification against a
//!   trust store holding the origin's self-signed ECDSA P-256 certificate,
//!   as bench-compare's `upstream_trust`), against an origin configured as
//!   the lab's nginx behaves: TLS 1.3 tickets, two after a full handshake
//!   and one after a resumption (OpenSSL's defaults). Full: the client's
//!   ticket store keeps the tickets but never offers one. Resumed: it
//!   offers one (PSK with an X25519 exchange, no certificate sent or
//!   verified). Both include receiving and storing the tickets. tlsgate's
//!   upstream client keeps tickets (rustls' default store), so in the lab
//!   a share of its upstream legs resume (bench-compare's connection log
//!   counts them; tlsgate also re-verifies the stored chain after a
//!   resumed handshake, which plain rustls does not: that is tlsgate's own
//!   cost, above the floor).
//! - **`handshakes_cpu_s_per_connection`** = server role + full client
//!   role: the floor when no upstream leg resumes.
//!   `handshakes_upstream_resumed_cpu_s_per_connection` = server role +
//!   resumed client role: every upstream leg resuming. bench-compare's
//!   report weights the two by the share of upstream legs that resumed in
//!   the same run.
//! - **AEAD**: 16 KiB plaintext TLS 1.3 application-data records (plus the
//!   inner content type and the 16-byte tag), each opened in place and
//!   sealed in place again for the other leg with ring (`LessSafeKey`,
//!   nonce = IV xor sequence number, the record header as AAD), as the
//!   appliance decrypts what the origin sends and encrypts it to the
//!   client; AES-256-GCM (negotiated in the lab, `aead_cpu_s_per_gb`) and
//!   AES-128-GCM. 1 GB = 10^9 plaintext bytes decrypted once and encrypted
//!   once. For reference, the same through rustls' record layer
//!   (`MessageDecrypter`/`MessageEncrypter`, which allocates and copies
//!   each outgoing record), AES-256-GCM only.
//!
//! # How it is timed
//!
//! CPU time of this thread: the first field of `/proc/thread-self/schedstat`
//! (the scheduler's runtime of the thread, in ns) read right after a
//! `sched_yield`, which makes the kernel bring it up to date (without it the
//! value lags by up to a scheduler tick). Unlike a wall clock, time the
//! thread spends preempted by other processes is not counted, which
//! matters on a shared 2-vCPU machine; the table shows CPU / wall of the
//! timed parts (1.00 when nothing else ran). Each reading costs a few µs
//! (calibrated at start and subtracted). Without that file the wall clock is
//! used and the output says so.
//!
//! Only the appliance's roles are timed. The handshakes run in lockstep
//! batches: all connections of a round are advanced one flight at a time,
//! and each batch step of the appliance-role connections (creating them,
//! reading and processing what the peer sent, writing what they have to
//! send, dropping them) is timed as a whole, while the peers' steps are
//! not. The AEAD loop is all appliance work: records are decrypted with
//! one leg's key and encrypted with the other's, alternating the keys on
//! each pass over a 1 MiB working set, so no untimed copy is needed.
//!
//! # Limits
//!
//! A floor, not a model of tlsgate: no TCP, no buffers beyond rustls' own,
//! no forging (the forged certificate is made once), the buffered rustls
//! API (tlsgate uses the unbuffered one). Batching keeps the code and data
//! of one role hot across many connections: a warm floor. With
//! `--connections 1` (one handshake per batch, each kind right after the
//! previous one) the figures were within 5 % here, except for the kind run
//! first in a round, right after the AEAD loop had evicted the caches: about
//! 70 µs more per connection. An appliance that handles packets between
//! handshakes pays part of that. ring and rustls
//! only: the lab's client and origin are OpenSSL, so what they negotiate is
//! mirrored, not their cost. CPU time still grows when another process
//! shares the core's caches or lowers its clock; compare figures of one
//! run only.

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{median, provider, Res, ORIGIN};
use mitm::{CertificateAuthority, Forger, Trust};
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, Connection, ContentType, HandshakeKind, NamedGroup, ProtocolVersion,
    RootCertStore, ServerConfig, ServerConnection, SupportedCipherSuite,
};
use time::OffsetDateTime;

/// TLS' largest plaintext fragment, what nginx and rustls put in a record
/// during a bulk transfer.
const RECORD: usize = 16384;
const TAG: usize = 16;
const HEADER: usize = 5;
/// Records in the AEAD working set (1 MiB of plaintext).
const WORKING_SET: usize = 64;
const EXPECTED_SUITE: CipherSuite = CipherSuite::TLS13_AES_256_GCM_SHA384;
const EXPECTED_GROUP: NamedGroup = NamedGroup::X25519;

struct Args {
    json: bool,
    rounds: usize,
    connections: usize,
    bytes: u64,
}

fn usage() -> &'static str {
    "usage: tls_floor [--json] [--rounds N (7)] [--connections N (300)] [--bytes N (500000000)]"
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        json: false,
        rounds: 7,
        connections: 300,
        bytes: 500_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value; {}", usage()));
        match arg.as_str() {
            "--json" => args.json = true,
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--connections" => args.connections = value("--connections")?.parse()?,
            "--bytes" => args.bytes = value("--bytes")?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; {}", usage()).into()),
        }
    }
    if args.rounds == 0 || args.connections == 0 || args.bytes == 0 {
        return Err("--rounds, --connections and --bytes must be at least 1".into());
    }
    Ok(args)
}

// --- the clock ---------------------------------------------------------------

/// This thread's CPU time, or the wall clock where the kernel does not say.
struct Clock {
    schedstat: bool,
    start: Instant,
    /// What one empty measurement reads (the cost of reading), subtracted.
    overhead: Duration,
}

/// CPU and wall time of the timed parts, summed.
#[derive(Clone, Copy, Default)]
struct Spent {
    cpu: Duration,
    wall: Duration,
}

impl Clock {
    fn new() -> Res<Self> {
        let mut clock = Clock {
            schedstat: std::fs::read_to_string("/proc/thread-self/schedstat").is_ok(),
            start: Instant::now(),
            overhead: Duration::ZERO,
        };
        let mut empty = Vec::new();
        for _ in 0..101 {
            let mut spent = Spent::default();
            clock.time(&mut spent, || Ok(()))?;
            empty.push(spent.cpu.as_secs_f64());
        }
        clock.overhead = Duration::from_secs_f64(median(empty));
        Ok(clock)
    }

    fn describe(&self) -> &'static str {
        if self.schedstat {
            "thread CPU time (/proc/thread-self/schedstat after sched_yield)"
        } else {
            "wall clock (no /proc/thread-self/schedstat)"
        }
    }

    fn now(&self) -> Res<Duration> {
        if !self.schedstat {
            return Ok(self.start.elapsed());
        }
        // sched_yield makes the kernel account the running thread's time.
        std::thread::yield_now();
        let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
        let ns: u64 = text
            .split_whitespace()
            .next()
            .ok_or("empty /proc/thread-self/schedstat")?
            .parse()?;
        Ok(Duration::from_nanos(ns))
    }

    /// Runs `work`, adding its CPU time (less the clock's own cost) and its
    /// wall time to `spent`.
    fn time<T>(&self, spent: &mut Spent, work: impl FnOnce() -> Res<T>) -> Res<T> {
        let cpu0 = self.now()?;
        let wall0 = Instant::now();
        let out = work();
        let wall = wall0.elapsed();
        let cpu = self.now()?.saturating_sub(cpu0);
        spent.cpu += cpu.saturating_sub(self.overhead);
        spent.wall += wall;
        out
    }
}

// --- handshakes ------------------------------------------------------------

/// The forged certificate, whatever the client asks.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A client's TLS 1.3 ticket store: keeps every ticket the server sends
/// (as rustls' default store does, up to a bound) and, with `offer`, hands
/// them out for resumption. Unlike the default store (8 tickets per server)
/// it holds enough for a whole batch of concurrent resumptions.
#[derive(Debug)]
struct Tickets {
    offer: bool,
    kept: Mutex<VecDeque<Tls13ClientSessionValue>>,
    bound: usize,
    other: ClientSessionMemoryCache,
}

impl Tickets {
    fn new(offer: bool, bound: usize) -> Arc<Self> {
        Arc::new(Tickets {
            offer,
            kept: Mutex::new(VecDeque::new()),
            bound,
            other: ClientSessionMemoryCache::new(16),
        })
    }

    fn len(&self) -> usize {
        self.kept.lock().map(|kept| kept.len()).unwrap_or(0)
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.other.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.other.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, _server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= self.bound {
                kept.pop_front();
            }
            kept.push_back(value);
        }
    }

    fn take_tls13_ticket(&self, _server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        if !self.offer {
            return None;
        }
        self.kept.lock().ok()?.pop_front()
    }
}

/// One connection of a batch: the appliance's side, its peer, and the
/// bytes in flight each way.
struct Pair {
    app: Option<Connection>,
    peer: Connection,
    to_app: Vec<u8>,
    to_peer: Vec<u8>,
}

/// Feeds `input` to `conn` and collects what it has to send into `output`;
/// whether anything moved.
fn step(conn: &mut Connection, input: &mut Vec<u8>, output: &mut Vec<u8>) -> Res<bool> {
    let moved = !input.is_empty();
    let mut rest = input.as_slice();
    while !rest.is_empty() {
        conn.read_tls(&mut rest)?;
        conn.process_new_packets()?;
    }
    input.clear();
    let before = output.len();
    while conn.wants_write() {
        conn.write_tls(output)?;
    }
    Ok(moved || output.len() > before)
}

/// `n` handshakes in lockstep; only the appliance-role steps are timed.
/// `check` judges each finished pair (appliance side, peer side).
fn batch(
    clock: &Clock,
    n: usize,
    make_app: &dyn Fn() -> Res<Connection>,
    make_peer: &dyn Fn() -> Res<Connection>,
    check: &dyn Fn(&Connection, &Connection) -> Res<()>,
) -> Res<Spent> {
    let mut spent = Spent::default();
    let peers = (0..n).map(|_| make_peer()).collect::<Res<Vec<_>>>()?;
    let apps = clock.time(&mut spent, || (0..n).map(|_| make_app()).collect::<Res<Vec<_>>>())?;
    let mut pairs: Vec<Pair> = apps
        .into_iter()
        .zip(peers)
        .map(|(app, peer)| Pair {
            app: Some(app),
            peer,
            to_app: Vec::new(),
            to_peer: Vec::new(),
        })
        .collect();
    let mut quiet = false;
    for _ in 0..20 {
        let app_moved = clock.time(&mut spent, || {
            let mut moved = false;
            for pair in &mut pairs {
                if let Some(app) = &mut pair.app {
                    moved |= step(app, &mut pair.to_app, &mut pair.to_peer)?;
                }
            }
            Ok(moved)
        })?;
        let mut peer_moved = false;
        for pair in &mut pairs {
            peer_moved |= step(&mut pair.peer, &mut pair.to_peer, &mut pair.to_app)?;
        }
        if !app_moved && !peer_moved {
            quiet = true;
            break;
        }
    }
    if !quiet {
        return Err("handshakes: no quiescence after 20 flights".into());
    }
    for pair in &pairs {
        let app = pair.app.as_ref().ok_or("appliance connection missing")?;
        check(app, &pair.peer)?;
    }
    // Dropping the appliance's connections is its work too.
    clock.time(&mut spent, || {
        for pair in &mut pairs {
            drop(pair.app.take());
        }
        Ok(())
    })?;
    Ok(spent)
}

/// What the lab negotiates: TLS 1.3, AES-256-GCM, X25519, on both sides.
fn check_negotiated(conn: &Connection, kind: HandshakeKind) -> Res<()> {
    if conn.is_handshaking() {
        return Err("a handshake did not complete".into());
    }
    let version = conn.protocol_version();
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
    let group = conn.negotiated_key_exchange_group().map(|g| g.name());
    let got = conn.handshake_kind();
    if version != Some(ProtocolVersion::TLSv1_3)
        || suite != Some(EXPECTED_SUITE)
        || group != Some(EXPECTED_GROUP)
        || got != Some(kind)
    {
        return Err(format!(
            "negotiated {version:?} {suite:?} {group:?} {got:?}, expected TLS 1.3 {EXPECTED_SUITE:?} \
             {EXPECTED_GROUP:?} {kind:?}"
        )
        .into());
    }
    Ok(())
}

/// The lab origin's certificate: self-signed ECDSA P-256, not a CA, for
/// origin.test and its address (tests/lab/origin.sh).
fn origin_certificate() -> Res<(CertificateDer<'static>, KeyPair)> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![ORIGIN.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, ORIGIN);
    params.distinguished_name.push(DnType::OrganizationName, "Lab Origin");
    params.subject_alt_names.push(SanType::IpAddress("198.18.0.2".parse()?));
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
    let cert = params.self_signed(&key)?;
    Ok((cert.der().clone(), key))
}

struct Setup {
    /// tlsgate's client-facing configuration, with and without tickets.
    app_server: Arc<ServerConfig>,
    app_server_no_tickets: Arc<ServerConfig>,
    /// A client offering what OpenSSL 3.0 (ab, curl) offers.
    openssl_client: Arc<ClientConfig>,
    /// tlsgate's upstream configuration: never resuming, resuming.
    app_client_full: Arc<ClientConfig>,
    app_client_resuming: Arc<ClientConfig>,
    resuming_tickets: Arc<Tickets>,
    /// The origin: two tickets after a full handshake, one after a resumption.
    origin_full: Arc<ServerConfig>,
    origin_resumed: Arc<ServerConfig>,
}

fn setup(connections: usize) -> Res<Setup> {
    let now = OffsetDateTime::now_utc();
    let (origin_cert, origin_key) = origin_certificate()?;

    // The appliance's side towards the client.
    let ca = CertificateAuthority::generate("tlsgate bench CA", 1, now)?;
    let ca_der = ca.cert_der().clone();
    let mut forger = Forger::new(ca, None, 16)?;
    let forged = forger.forge(&origin_cert, Some(ORIGIN), Trust::Trusted, now)?;
    let server = |tickets: bool| -> Res<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::clone(&forged.certified))));
        if tickets {
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
            config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        } else {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(Arc::new(config))
    };

    // OpenSSL 3.0's TLS 1.3 suites, in its order; its key share is X25519.
    let mut openssl = rustls::crypto::ring::default_provider();
    let tls12: Vec<SupportedCipherSuite> = openssl
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.tls13().is_none())
        .collect();
    openssl.cipher_suites = [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    ]
    .into_iter()
    .chain(tls12)
    .collect();
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    let mut openssl_client = ClientConfig::builder_with_provider(Arc::new(openssl))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    openssl_client.resumption = Resumption::disabled();

    // The appliance's side towards the origin.
    let mut trust = RootCertStore::empty();
    trust.add(origin_cert.clone())?;
    let upstream = |tickets: &Arc<Tickets>| -> Res<Arc<ClientConfig>> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(trust.clone())
            .with_no_client_auth();
        config.resumption = Resumption::store(Arc::clone(tickets) as Arc<dyn ClientSessionStore>);
        Ok(Arc::new(config))
    };
    let resuming_tickets = Tickets::new(true, 4 * connections);

    // The origin, stateless tickets as nginx's.
    let ticketer = rustls::crypto::ring::Ticketer::new()?;
    let origin = |tickets: usize| -> Res<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![origin_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(origin_key.serialize_der())),
            )?;
        config.ticketer = Arc::clone(&ticketer);
        config.send_tls13_tickets = tickets;
        Ok(Arc::new(config))
    };

    Ok(Setup {
        app_server: server(true)?,
        app_server_no_tickets: server(false)?,
        openssl_client: Arc::new(openssl_client),
        app_client_full: upstream(&Tickets::new(false, 4 * connections))?,
        app_client_resuming: upstream(&resuming_tickets)?,
        resuming_tickets,
        origin_full: origin(2)?,
        origin_resumed: origin(1)?,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Server,
    ServerNoTickets,
    ClientFull,
    ClientResumed,
}

const KINDS: [Kind; 4] = [
    Kind::Server,
    Kind::ServerNoTickets,
    Kind::ClientFull,
    Kind::ClientResumed,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Server => "server role (towards the client), 2 tickets issued as tlsgate does",
            Kind::ServerNoTickets => "server role without tickets (reference, not in the floor)",
            Kind::ClientFull => "client role (towards the origin), full handshake",
            Kind::ClientResumed => "client role, resumed with the origin's ticket",
        }
    }
}

fn handshakes(clock: &Clock, setup: &Setup, kind: Kind, n: usize) -> Res<Spent> {
    let name = ServerName::try_from(ORIGIN)?;
    let client = |config: &Arc<ClientConfig>| -> Res<Connection> {
        Ok(Connection::Client(ClientConnection::new(
            Arc::clone(config),
            name.clone(),
        )?))
    };
    let server = |config: &Arc<ServerConfig>| -> Res<Connection> {
        Ok(Connection::Server(ServerConnection::new(Arc::clone(config))?))
    };
    let full = |app: &Connection, peer: &Connection| -> Res<()> {
        check_negotiated(app, HandshakeKind::Full)?;
        check_negotiated(peer, HandshakeKind::Full)
    };
    match kind {
        Kind::Server | Kind::ServerNoTickets => {
            let config = match kind {
                Kind::Server => &setup.app_server,
                _ => &setup.app_server_no_tickets,
            };
            batch(clock, n, &|| server(config), &|| client(&setup.openssl_client), &full)
        }
        Kind::ClientFull => batch(
            clock,
            n,
            &|| client(&setup.app_client_full),
            &|| server(&setup.origin_full),
            &full,
        ),
        Kind::ClientResumed => {
            // A ticket for every connection of the batch (the full handshakes
            // of the warm-up left two each; every resumption leaves one).
            if setup.resuming_tickets.len() < n {
                return Err(format!("only {} tickets for {n} resumptions", setup.resuming_tickets.len()).into());
            }
            batch(
                clock,
                n,
                &|| client(&setup.app_client_resuming),
                &|| server(&setup.origin_resumed),
                &|app, peer| {
                    check_negotiated(app, HandshakeKind::Resumed)?;
                    check_negotiated(peer, HandshakeKind::Resumed)
                },
            )
        }
    }
}

// --- AEAD --------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Aead {
    Aes256,
    Aes128,
    /// AES-256-GCM through rustls' MessageDecrypter / MessageEncrypter.
    RustlsAes256,
}

const AEADS: [Aead; 3] = [Aead::Aes256, Aead::Aes128, Aead::RustlsAes256];

impl Aead {
    fn label(self) -> &'static str {
        match self {
            Aead::Aes256 => "AES-256-GCM, ring in place (negotiated in the lab: the floor)",
            Aead::Aes128 => "AES-128-GCM, ring in place",
            Aead::RustlsAes256 => "AES-256-GCM through rustls' record layer (reference)",
        }
    }
}

fn nonce(iv: &[u8; aead::NONCE_LEN], seq: u64) -> Nonce {
    let mut bytes = *iv;
    for (b, s) in bytes[aead::NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(bytes)
}

/// A TLS 1.3 application-data record header for a full record.
fn header() -> [u8; HEADER] {
    let len = (RECORD + 1 + TAG) as u16;
    let [hi, lo] = len.to_be_bytes();
    [0x17, 0x03, 0x03, hi, lo]
}

/// One leg's record protection with ring: key and IV.
struct Leg {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
}

impl Leg {
    fn new(alg: &'static aead::Algorithm, rng: &SystemRandom) -> Res<Self> {
        let mut key = vec![0u8; alg.key_len()];
        let mut iv = [0u8; aead::NONCE_LEN];
        rng.fill(&mut key).map_err(|_| "no randomness")?;
        rng.fill(&mut iv).map_err(|_| "no randomness")?;
        let key = UnboundKey::new(alg, &key).map_err(|_| "bad AEAD key")?;
        Ok(Leg {
            key: LessSafeKey::new(key),
            iv,
        })
    }

    /// Seals the inner plaintext `record[HEADER..HEADER + RECORD + 1]` in place.
    fn seal(&self, record: &mut [u8], seq: u64) -> Res<()> {
        let (head, body) = record.split_at_mut(HEADER);
        let (inner, tag_out) = body.split_at_mut(RECORD + 1);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&self.iv, seq), Aad::from(&*head), inner)
            .map_err(|_| "seal failed")?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens `record` in place; checks the inner content type.
    fn open(&self, record: &mut [u8], seq: u64) -> Res<()> {
        let (head, body) = record.split_at_mut(HEADER);
        let plain = self
            .key
            .open_in_place(nonce(&self.iv, seq), Aad::from(&*head), body)
            .map_err(|_| "open failed")?;
        if plain.last() != Some(&0x17) {
            return Err("not application data".into());
        }
        Ok(())
    }
}

/// The working set: `WORKING_SET` records of random plaintext, sealed by
/// `first` with sequence numbers 0, 1, ...
fn working_set(first: &Leg, rng: &SystemRandom) -> Res<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut plain = vec![0u8; RECORD];
    rng.fill(&mut plain).map_err(|_| "no randomness")?;
    let mut records = Vec::with_capacity(WORKING_SET);
    for seq in 0..WORKING_SET as u64 {
        let mut record = Vec::with_capacity(HEADER + RECORD + 1 + TAG);
        record.extend_from_slice(&header());
        record.extend_from_slice(&plain);
        record.push(0x17);
        record.resize(HEADER + RECORD + 1 + TAG, 0);
        first.seal(&mut record, seq)?;
        records.push(record);
    }
    Ok((records, plain))
}

/// Decrypts and re-encrypts `passes` × the working set; returns the time
/// spent (the caller divides by the bytes).
fn aead_round(clock: &Clock, which: Aead, passes: usize, rng: &SystemRandom) -> Res<Spent> {
    match which {
        Aead::Aes256 | Aead::Aes128 => {
            let alg = match which {
                Aead::Aes256 => &aead::AES_256_GCM,
                _ => &aead::AES_128_GCM,
            };
            // The origin's leg and the client's: pass k opens with one and
            // seals with the other, pass k + 1 the other way round.
            let legs = [Leg::new(alg, rng)?, Leg::new(alg, rng)?];
            let (mut records, plain) = working_set(&legs[0], rng)?;
            let mut spent = Spent::default();
            clock.time(&mut spent, || {
                for pass in 0..passes {
                    let (from, to) = (&legs[pass % 2], &legs[(pass + 1) % 2]);
                    for (seq, record) in records.iter_mut().enumerate() {
                        from.open(record, seq as u64)?;
                        to.seal(record, seq as u64)?;
                    }
                }
                Ok(())
            })?;
            // Still the same plaintext under the last leg's key.
            let last = &legs[passes % 2];
            let mut record = records[WORKING_SET - 1].clone();
            last.open(&mut record, (WORKING_SET - 1) as u64)?;
            if record[HEADER..HEADER + RECORD] != plain[..] {
                return Err("AEAD round trip changed the data".into());
            }
            Ok(spent)
        }
        Aead::RustlsAes256 => {
            let suite = cipher_suite::TLS13_AES_256_GCM_SHA384
                .tls13()
                .ok_or("not a TLS 1.3 suite")?;
            let mut keys = [[0u8; 32]; 2];
            let mut ivs = [[0u8; aead::NONCE_LEN]; 2];
            for (key, iv) in keys.iter_mut().zip(ivs.iter_mut()) {
                rng.fill(key).map_err(|_| "no randomness")?;
                rng.fill(iv).map_err(|_| "no randomness")?;
            }
            let mut decrypters: Vec<Box<dyn MessageDecrypter>> = (0..2)
                .map(|i| suite.aead_alg.decrypter(AeadKey::from(keys[i]), Iv::new(ivs[i])))
                .collect();
            let mut encrypters: Vec<Box<dyn MessageEncrypter>> = (0..2)
                .map(|i| suite.aead_alg.encrypter(AeadKey::from(keys[i]), Iv::new(ivs[i])))
                .collect();
            let mut plain = vec![0u8; RECORD];
            rng.fill(&mut plain).map_err(|_| "no randomness")?;
            let mut records = Vec::with_capacity(WORKING_SET);
            for seq in 0..WORKING_SET as u64 {
                let message = OutboundPlainMessage {
                    typ: ContentType::ApplicationData,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(&plain),
                };
                records.push(encrypters[0].encrypt(message, seq)?.encode());
            }
            let mut spent = Spent::default();
            clock.time(&mut spent, || {
                for pass in 0..passes {
                    let (from, to) = (pass % 2, (pass + 1) % 2);
                    for (seq, record) in records.iter_mut().enumerate() {
                        let inbound = InboundOpaqueMessage::new(
                            ContentType::ApplicationData,
                            ProtocolVersion::TLSv1_2,
                            &mut record[HEADER..],
                        );
                        let opened = decrypters[from].decrypt(inbound, seq as u64)?;
                        let message = OutboundPlainMessage {
                            typ: opened.typ,
                            version: ProtocolVersion::TLSv1_2,
                            payload: OutboundChunks::Single(opened.payload),
                        };
                        *record = encrypters[to].encrypt(message, seq as u64)?.encode();
                    }
                }
                Ok(())
            })?;
            let last = passes % 2;
            let seq = WORKING_SET - 1;
            let inbound = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut records[seq][HEADER..],
            );
            let opened = decrypters[last].decrypt(inbound, seq as u64)?;
            if opened.payload != &plain[..] {
                return Err("rustls record round trip changed the data".into());
            }
            Ok(spent)
        }
    }
}

// --- main ----------------------------------------------------------------------

fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.9}")
    } else {
        "null".to_owned()
    }
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let clock = Clock::new()?;
    let setup = setup(args.connections)?;
    let rng = SystemRandom::new();
    let n = args.connections;
    let passes = usize::try_from(args.bytes.div_ceil((WORKING_SET * RECORD) as u64))?;
    let gb = (passes * WORKING_SET * RECORD) as f64 / 1e9;

    // Warm-up (not measured): code, allocator, ring's CPU detection, and
    // tickets for the first resumed batch.
    for kind in [Kind::Server, Kind::ServerNoTickets, Kind::ClientFull] {
        handshakes(&clock, &setup, kind, n.min(50))?;
    }
    batch(
        &clock,
        n,
        &|| {
            Ok(Connection::Client(ClientConnection::new(
                Arc::clone(&setup.app_client_resuming),
                ServerName::try_from(ORIGIN)?,
            )?))
        },
        &|| {
            Ok(Connection::Server(ServerConnection::new(Arc::clone(
                &setup.origin_full,
            ))?))
        },
        &|app, _| check_negotiated(app, HandshakeKind::Full),
    )?;
    handshakes(&clock, &setup, Kind::ClientResumed, n.min(50))?;
    for which in AEADS {
        aead_round(&clock, which, 2, &rng)?;
    }

    let mut per_conn: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut per_gb: Vec<Vec<f64>> = vec![Vec::new(); AEADS.len()];
    let mut total = Spent::default();
    let started = Instant::now();
    for _ in 0..args.rounds {
        for (i, kind) in KINDS.into_iter().enumerate() {
            let spent = handshakes(&clock, &setup, kind, n)?;
            per_conn[i].push(spent.cpu.as_secs_f64() / n as f64);
            total.cpu += spent.cpu;
            total.wall += spent.wall;
        }
        for (i, which) in AEADS.into_iter().enumerate() {
            let spent = aead_round(&clock, which, passes, &rng)?;
            per_gb[i].push(spent.cpu.as_secs_f64() / gb);
            total.cpu += spent.cpu;
            total.wall += spent.wall;
        }
    }
    let elapsed = started.elapsed();
    let conn: Vec<f64> = per_conn.into_iter().map(median).collect();
    let gbs: Vec<f64> = per_gb.into_iter().map(median).collect();
    let (server, server_no_tickets, client_full, client_resumed) = (conn[0], conn[1], conn[2], conn[3]);
    let floor_full = server + client_full;
    let floor_resumed = server + client_resumed;
    let cpu_over_wall = total.cpu.as_secs_f64() / total.wall.as_secs_f64();

    let mut table = String::new();
    writeln!(
        table,
        "rustls floor, in memory: medians of {} rounds ({n} connections per handshake kind, {:.2} GB \
         per AEAD per round); clock: {} (reading costs {:.1} µs, subtracted); CPU / wall of the timed \
         parts {cpu_over_wall:.2}; {:.1} s",
        args.rounds,
        gb,
        clock.describe(),
        clock.overhead.as_secs_f64() * 1e6,
        elapsed.as_secs_f64()
    )?;
    writeln!(
        table,
        "negotiated: TLS 1.3, {EXPECTED_SUITE:?}, {EXPECTED_GROUP:?}, ECDSA P-256 certificates"
    )?;
    writeln!(table)?;
    writeln!(table, "| handshake role of the appliance | CPU µs per connection |")?;
    writeln!(table, "|---|---:|")?;
    for (kind, value) in KINDS.into_iter().zip(&conn) {
        writeln!(table, "| {} | {:.1} |", kind.label(), value * 1e6)?;
    }
    writeln!(
        table,
        "| **floor: server + full client role** (`handshakes_cpu_s_per_connection`) | **{:.1}** |",
        floor_full * 1e6
    )?;
    writeln!(
        table,
        "| floor with the upstream leg resumed: server + resumed client role | {:.1} |",
        floor_resumed * 1e6
    )?;
    writeln!(table)?;
    writeln!(table, "| decrypt + re-encrypt 16 KiB records | CPU s per GB relayed |")?;
    writeln!(table, "|---|---:|")?;
    for (which, value) in AEADS.into_iter().zip(&gbs) {
        writeln!(table, "| {} | {:.3} |", which.label(), value)?;
    }

    let json = format!(
        concat!(
            "{{\"example\": \"tls_floor\", \"clock\": \"{}\", \"clock_overhead_s\": {}, ",
            "\"cpu_over_wall\": {}, \"rounds\": {}, \"connections\": {}, \"bytes\": {}, ",
            "\"record_plaintext_bytes\": {}, \"elapsed_s\": {}, ",
            "\"cipher_suite\": \"{:?}\", \"kx_group\": \"{:?}\", \"certificates\": \"ECDSA P-256\", ",
            "\"handshakes_cpu_s_per_connection\": {}, ",
            "\"handshakes_upstream_resumed_cpu_s_per_connection\": {}, ",
            "\"server_role_cpu_s\": {}, \"server_role_no_tickets_cpu_s\": {}, ",
            "\"client_role_full_cpu_s\": {}, \"client_role_resumed_cpu_s\": {}, ",
            "\"aead_cpu_s_per_gb\": {}, \"aead_cpu_s_per_gb_aes_256_gcm\": {}, ",
            "\"aead_cpu_s_per_gb_aes_128_gcm\": {}, \"aead_rustls_record_layer_cpu_s_per_gb_aes_256_gcm\": {}}}"
        ),
        clock.describe(),
        json_number(clock.overhead.as_secs_f64()),
        json_number(cpu_over_wall),
        args.rounds,
        n,
        (passes * WORKING_SET * RECORD),
        RECORD,
        json_number(elapsed.as_secs_f64()),
        EXPECTED_SUITE,
        EXPECTED_GROUP,
        json_number(floor_full),
        json_number(floor_resumed),
        json_number(server),
        json_number(server_no_tickets),
        json_number(client_full),
        json_number(client_resumed),
        json_number(gbs[0]),
        json_number(gbs[0]),
        json_number(gbs[1]),
        json_number(gbs[2]),
    );
    if args.json {
        eprint!("{table}");
        println!("{json}");
    } else {
        print!("{table}");
    }
    Ok(())
}
