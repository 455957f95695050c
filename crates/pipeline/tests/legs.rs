//! The pipeline against real rustls peers over in-memory legs: a rustls
//! client ⇄ the pipeline (TLS termination) ⇄ a plain backend, with and
//! without an inspection box in between, and plain relays. No clock: each
//! test steps the pipeline and the peers until nothing moves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::ops::DerefMut;
use std::sync::Arc;

use mitm::Pending;
use pipeline::{Connection, Leg, LegIo, TlsClient, TLS_BACKLOG};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig, ServerConnection, SideData,
};

/// One leg between the pipeline and its peer.
#[derive(Default)]
struct Wire {
    exists: bool,
    /// Sent by the peer, not read by the pipeline yet.
    to_pipeline: VecDeque<u8>,
    /// Sent by the pipeline, not read (acknowledged) by the peer yet.
    from_pipeline: Vec<u8>,
    /// How much `from_pipeline` may hold (the peer's window).
    window: usize,
    peer_fin: bool,
    fin_from_pipeline: bool,
    reset: bool,
}

impl Wire {
    fn open() -> Wire {
        Wire {
            exists: true,
            window: 256 * 1024,
            ..Wire::default()
        }
    }

    fn room(&self) -> usize {
        if self.fin_from_pipeline || self.reset {
            0
        } else {
            self.window.saturating_sub(self.from_pipeline.len())
        }
    }
}

struct Legs([Wire; 4]);

impl Legs {
    fn new() -> Legs {
        Legs([Wire::open(), Wire::open(), Wire::default(), Wire::default()])
    }

    fn wire(&mut self, leg: Leg) -> &mut Wire {
        let [client, server, out, back] = &mut self.0;
        match leg {
            Leg::Client => client,
            Leg::Server => server,
            Leg::InspectOut => out,
            Leg::InspectIn => back,
        }
    }

    fn get(&self, leg: Leg) -> &Wire {
        let [client, server, out, back] = &self.0;
        match leg {
            Leg::Client => client,
            Leg::Server => server,
            Leg::InspectOut => out,
            Leg::InspectIn => back,
        }
    }
}

impl LegIo for Legs {
    fn exists(&self, leg: Leg) -> bool {
        self.get(leg).exists
    }

    fn recv_in_place(
        &mut self,
        leg: Leg,
        max: usize,
        _grow: usize,
        read: &mut dyn FnMut(&mut [u8], bool) -> usize,
    ) -> usize {
        let wire = self.wire(leg);
        let received = wire.to_pipeline.make_contiguous();
        let piece = received.len().min(max);
        if piece == 0 {
            return 0;
        }
        // The wire has no limit: only its end stops the rest from growing.
        let stuck = piece == received.len() && wire.peer_fin;
        let taken = read(&mut received[..piece], stuck).min(piece);
        wire.to_pipeline.drain(..taken);
        taken
    }

    fn send(&mut self, leg: Leg, bytes: &[u8]) -> usize {
        let wire = self.wire(leg);
        if !wire.exists {
            return 0;
        }
        let count = bytes.len().min(wire.room());
        wire.from_pipeline.extend_from_slice(&bytes[..count]);
        count
    }

    fn send_in_place(&mut self, leg: Leg, write: &mut dyn FnMut(&mut [u8]) -> usize) -> usize {
        let wire = self.wire(leg);
        if !wire.exists {
            return 0;
        }
        let start = wire.from_pipeline.len();
        wire.from_pipeline.resize(start + wire.room(), 0xee);
        let written = write(&mut wire.from_pipeline[start..]).min(wire.from_pipeline.len() - start);
        wire.from_pipeline.truncate(start + written);
        written
    }

    fn unacknowledged(&self, leg: Leg) -> usize {
        self.get(leg).from_pipeline.len()
    }

    fn relay(&mut self, from: Leg, to: Leg, max: usize, tap: &mut dyn FnMut(&[u8])) -> usize {
        let count = max.min(self.get(from).to_pipeline.len()).min(self.get(to).room());
        let bytes: Vec<u8> = self.wire(from).to_pipeline.drain(..count).collect();
        tap(&bytes);
        self.wire(to).from_pipeline.extend_from_slice(&bytes);
        count
    }

    fn peer_finished(&self, leg: Leg) -> Option<bool> {
        let wire = self.get(leg);
        wire.exists.then_some(wire.peer_fin && wire.to_pipeline.is_empty())
    }

    fn close(&mut self, leg: Leg) {
        self.wire(leg).fin_from_pipeline = true;
    }

    fn abort(&mut self, leg: Leg) {
        self.wire(leg).reset = true;
    }
}

/// A CA and a service certificate for `www.lab.test` signed by it.
struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    leaf: CertificateDer<'static>,
    server: Arc<ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "Service Root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["www.lab.test".to_string()]).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        server: Arc::new(server),
    }
}

fn client(pki: &Pki) -> ClientConnection {
    client_trusting(&pki.ca)
}

/// A rustls client for `www.lab.test` that trusts only `ca`.
fn client_trusting(ca: &CertificateDer<'static>) -> ClientConnection {
    let mut config = trusting(ca);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(config), ServerName::try_from("www.lab.test").unwrap()).unwrap()
}

/// A client configuration trusting only `ca`.
fn trusting(ca: &CertificateDer<'static>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A rustls peer's side of its leg (the client's or the server's): its
/// records go out, the pipeline's come in; returns the plaintext received
/// and whether close_notify came.
fn peer_io<C, S>(tls: &mut C, wire: &mut Wire, received: &mut Vec<u8>) -> bool
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out).unwrap();
    }
    wire.to_pipeline.extend(out);
    let incoming = std::mem::take(&mut wire.from_pipeline);
    let mut rest = &incoming[..];
    let mut closed = false;
    loop {
        if !rest.is_empty() {
            tls.read_tls(&mut rest).unwrap();
            tls.process_new_packets().unwrap();
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(read) => received.extend_from_slice(&buf[..read]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => panic!("peer read: {err}"),
            }
        }
        if rest.is_empty() {
            return closed;
        }
    }
}

/// One pass of the pipeline: relay, then pass the directions' ends on.
fn step(conn: &mut Connection, legs: &mut Legs) {
    conn.pump_tls(legs, None, None).unwrap();
    conn.finish_tls_directions(legs, None);
}

/// A terminated connection whose handshake is done with the backend leg
/// connected; `preamble` goes first.
fn terminated(pki: &Pki, tls: &mut ClientConnection, legs: &mut Legs, preamble: &[u8]) -> Connection {
    let mut conn = Connection::terminated();
    legs.wire(Leg::Server).exists = false;
    let mut ignored = Vec::new();
    peer_io(tls, legs.wire(Leg::Client), &mut ignored);
    conn.pump_tls(legs, None, None).unwrap();
    let Some(Pending::Hello { sni, alpn, .. }) = conn.pending() else {
        panic!("no ClientHello: {:?}", conn.pending());
    };
    assert_eq!(
        (sni.as_deref(), alpn),
        (Some("www.lab.test"), vec!["http/1.1".to_string()])
    );
    let server = conn.tls_server_mut().unwrap();
    server.accept(Arc::clone(&pki.server)).unwrap();
    server.set_preamble(preamble);
    // The backend leg is opened after the ClientHello and connects.
    *legs.wire(Leg::Server) = Wire::open();
    assert!(conn.server_connected());
    for _ in 0..10 {
        step(&mut conn, legs);
        peer_io(tls, legs.wire(Leg::Client), &mut ignored);
    }
    assert!(!tls.is_handshaking() && conn.handshakes_done());
    conn
}

#[test]
fn a_terminated_client_gets_the_service_certificate_and_the_backend_the_preamble_then_the_plaintext() {
    let pki = pki();
    let mut tls = client(&pki);
    let mut legs = Legs::new();
    let mut conn = terminated(
        &pki,
        &mut tls,
        &mut legs,
        b"PROXY TCP4 198.18.0.1 198.18.1.2 40000 443\r\n",
    );
    assert_eq!(
        tls.peer_certificates().unwrap()[0],
        pki.leaf,
        "the service's own certificate"
    );
    assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));

    let request = b"GET / HTTP/1.1\r\nHost: www.lab.test\r\n\r\n";
    tls.writer().write_all(request).unwrap();
    let mut received = Vec::new();
    peer_io(&mut tls, legs.wire(Leg::Client), &mut received);
    step(&mut conn, &mut legs);
    let backend = std::mem::take(&mut legs.wire(Leg::Server).from_pipeline);
    let mut expected = b"PROXY TCP4 198.18.0.1 198.18.1.2 40000 443\r\n".to_vec();
    expected.extend_from_slice(request);
    assert_eq!(backend, expected, "the header first, then the plaintext byte-exact");

    // The backend answers and closes: close_notify, then FIN, to the client.
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    legs.wire(Leg::Server).to_pipeline.extend(response);
    legs.wire(Leg::Server).peer_fin = true;
    step(&mut conn, &mut legs);
    assert!(legs.get(Leg::Client).fin_from_pipeline, "FIN to the client");
    let close_notify = peer_io(&mut tls, legs.wire(Leg::Client), &mut received);
    assert_eq!(received, response);
    assert!(close_notify, "close_notify came before the FIN");
    let info = &conn.tls_server().unwrap().info;
    assert_eq!(info.sni.as_deref(), Some("www.lab.test"));
    assert_eq!(info.client_version.as_deref(), Some("TLSv1_3"));
    assert_eq!(info.plaintext_client_to_server, request.len() as u64);
}

#[test]
fn a_client_that_does_not_speak_tls_is_reported_for_the_caller_to_refuse() {
    let mut legs = Legs::new();
    legs.wire(Leg::Server).exists = false;
    let mut conn = Connection::terminated();
    legs.wire(Leg::Client).to_pipeline.extend(b"GET / HTTP/1.1\r\n\r\n");
    conn.pump_tls(&mut legs, None, None).unwrap();
    assert!(
        matches!(conn.pending(), Some(Pending::Rejected(mitm::Rejection::NotTls(_)))),
        "{:?}",
        conn.pending()
    );
}

#[test]
fn a_backend_that_does_not_read_stops_the_client_leg_being_read_past_the_backlog() {
    let pki = pki();
    let mut tls = client(&pki);
    let mut legs = Legs::new();
    let mut conn = terminated(&pki, &mut tls, &mut legs, b"");
    legs.wire(Leg::Server).window = 0;
    let (read_before, _) = conn.bytes();
    let upload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    tls.set_buffer_limit(None);
    tls.writer().write_all(&upload).unwrap();
    peer_io(&mut tls, legs.wire(Leg::Client), &mut Vec::new());
    for _ in 0..10 {
        step(&mut conn, &mut legs);
    }
    let read = conn.bytes().0 - read_before;
    assert!(
        read <= (TLS_BACKLOG + 32 * 1024) as u64,
        "read {read} bytes from the client while the backend took none"
    );
    assert!(
        legs.get(Leg::Client).to_pipeline.len() > 512 * 1024,
        "the rest waits in the client leg"
    );

    // The backend reads again: everything arrives, byte-exact.
    legs.wire(Leg::Server).window = 256 * 1024;
    let mut backend = Vec::new();
    for _ in 0..100 {
        step(&mut conn, &mut legs);
        backend.append(&mut legs.wire(Leg::Server).from_pipeline);
        if backend.len() >= upload.len() {
            break;
        }
    }
    assert_eq!(backend, upload);
}

#[test]
fn close_notify_goes_to_the_client_only_once_the_box_passed_the_backends_fin() {
    let pki = pki();
    let mut tls = client(&pki);
    let mut legs = Legs::new();
    let mut conn = terminated(&pki, &mut tls, &mut legs, b"");
    conn.open_loop();
    *legs.wire(Leg::InspectOut) = Wire::open();
    *legs.wire(Leg::InspectIn) = Wire::open();
    assert!(conn.loop_passed_syn());

    legs.wire(Leg::Server).to_pipeline.extend(b"bye");
    legs.wire(Leg::Server).peer_fin = true;
    step(&mut conn, &mut legs);
    // Server → client plaintext goes into the loop at inspect_in, its FIN after it.
    assert_eq!(legs.get(Leg::InspectIn).from_pipeline, b"bye");
    assert!(legs.get(Leg::InspectIn).fin_from_pipeline);
    // The box passes the bytes back out of inspect_out, not the FIN yet.
    let passed = std::mem::take(&mut legs.wire(Leg::InspectIn).from_pipeline);
    legs.wire(Leg::InspectOut).to_pipeline.extend(passed);
    step(&mut conn, &mut legs);
    let mut received = Vec::new();
    let close_notify = peer_io(&mut tls, legs.wire(Leg::Client), &mut received);
    assert_eq!(received, b"bye");
    assert!(
        !close_notify && !legs.get(Leg::Client).fin_from_pipeline,
        "the box holds the end"
    );

    legs.wire(Leg::InspectOut).peer_fin = true;
    step(&mut conn, &mut legs);
    assert!(
        peer_io(&mut tls, legs.wire(Leg::Client), &mut received),
        "close_notify once the box passed the FIN"
    );
    assert!(legs.get(Leg::Client).fin_from_pipeline);
}

#[test]
fn a_plain_relay_passes_each_half_close_on_its_own() {
    let mut legs = Legs::new();
    let mut conn = Connection::new(None, false);
    legs.wire(Leg::Client).to_pipeline.extend(b"request");
    legs.wire(Leg::Client).peer_fin = true;
    conn.pump_plain(&mut legs);
    assert_eq!(legs.get(Leg::Server).from_pipeline, b"request");
    assert!(legs.get(Leg::Server).fin_from_pipeline);
    assert!(!legs.get(Leg::Client).fin_from_pipeline && !conn.closed());
    // The server still answers after the client's FIN.
    legs.wire(Leg::Server).to_pipeline.extend(b"response");
    conn.pump_plain(&mut legs);
    assert_eq!(legs.get(Leg::Client).from_pipeline, b"response");
    legs.wire(Leg::Server).peer_fin = true;
    conn.pump_plain(&mut legs);
    assert!(legs.get(Leg::Client).fin_from_pipeline && conn.closed());
    assert_eq!(conn.bytes(), (7, 8));
}

#[test]
fn a_connecting_connection_relays_nothing_until_its_server_leg_connected() {
    let mut legs = Legs::new();
    let mut conn = Connection::new(None, true);
    legs.wire(Leg::Client).to_pipeline.extend(b"early");
    conn.pump_plain(&mut legs);
    assert!(legs.get(Leg::Server).from_pipeline.is_empty());
    assert!(conn.server_connected() && conn.established());
    conn.pump_plain(&mut legs);
    assert_eq!(legs.get(Leg::Server).from_pipeline, b"early");
    conn.fail();
    assert!(conn.failed() && !conn.server_connected());
}

// Upgrade: a plain client, the appliance as the TLS client of the server.

/// An upgraded connection to `www.lab.test` whose server leg is connected,
/// the server's certificate judged against `trusted`.
fn upgraded(trusted: &CertificateDer<'static>) -> Connection {
    let name = ServerName::try_from("www.lab.test").unwrap();
    let client = TlsClient::new(Arc::new(trusting(trusted)), name).unwrap();
    Connection::upgraded(client, false)
}

#[test]
fn an_upgraded_client_speaks_plain_and_the_server_gets_its_bytes_over_tls_only_after_the_handshake() {
    let pki = pki();
    let mut server = ServerConnection::new(Arc::clone(&pki.server)).unwrap();
    let mut legs = Legs::new();
    let mut conn = upgraded(&pki.ca);
    // The client sends its request and its FIN at once, before the
    // server's handshake is even under way.
    let request = b"GET / HTTP/1.1\r\nHost: www.lab.test\r\n\r\n";
    legs.wire(Leg::Client).to_pipeline.extend(request);
    legs.wire(Leg::Client).peer_fin = true;
    step(&mut conn, &mut legs);
    assert!(
        !legs.get(Leg::Server).fin_from_pipeline,
        "no FIN to the server before the request went over TLS"
    );
    let mut at_server = Vec::new();
    let mut server_closed = false;
    for _ in 0..10 {
        server_closed |= peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
        step(&mut conn, &mut legs);
    }
    assert!(conn.handshakes_done() && !server.is_handshaking());
    assert_eq!(at_server, request, "the plaintext arrives byte-exact, encrypted");
    assert!(server_closed, "close_notify after the request");
    assert!(legs.get(Leg::Server).fin_from_pipeline, "then the FIN");
    assert_eq!(
        server.server_name(),
        Some("www.lab.test"),
        "the SNI is the name verified"
    );

    // The server answers and closes: the plaintext and a FIN to the client.
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    server.writer().write_all(response).unwrap();
    server.send_close_notify();
    peer_io(&mut server, legs.wire(Leg::Server), &mut Vec::new());
    legs.wire(Leg::Server).peer_fin = true;
    step(&mut conn, &mut legs);
    assert_eq!(legs.get(Leg::Client).from_pipeline, response);
    assert!(legs.get(Leg::Client).fin_from_pipeline && conn.closed());
    let info = &conn.tls_client().unwrap().info;
    assert_eq!(info.upstream_verified, Some(Ok(())));
    assert_eq!(info.server_version.as_deref(), Some("TLSv1_3"));
    assert_eq!(
        (info.plaintext_client_to_server, info.plaintext_server_to_client),
        (request.len() as u64, response.len() as u64)
    );
}

#[test]
fn an_upgraded_connection_to_a_server_whose_certificate_does_not_verify_fails_without_sending_it_the_plaintext() {
    let (pki, other) = (pki(), pki());
    let mut server = ServerConnection::new(Arc::clone(&pki.server)).unwrap();
    let mut legs = Legs::new();
    let mut conn = upgraded(&other.ca);
    legs.wire(Leg::Client).to_pipeline.extend(b"secret");
    let mut at_server = Vec::new();
    let mut failure = None;
    for _ in 0..10 {
        if let Err(err) = conn.pump_tls(&mut legs, None, None) {
            failure = Some(err);
            break;
        }
        peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
    }
    let failure = failure.expect("the handshake fails");
    assert!(
        matches!(failure, mitm::MitmError::Server(rustls::Error::InvalidCertificate(_))),
        "{failure:?}"
    );
    // The server never got the plaintext, nor the end of the handshake.
    peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
    assert!(at_server.is_empty() && server.is_handshaking());
    let info = conn.drop_tls().unwrap();
    assert!(
        matches!(&info.upstream_verified, Some(Err(_))),
        "{:?}",
        info.upstream_verified
    );
}

#[test]
fn an_upgraded_client_is_not_read_past_the_backlog_while_the_handshake_runs() {
    let pki = pki();
    let mut legs = Legs::new();
    let mut conn = upgraded(&pki.ca);
    let upload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    legs.wire(Leg::Client).to_pipeline.extend(&upload);
    for _ in 0..10 {
        step(&mut conn, &mut legs);
    }
    let read = conn.bytes().0;
    assert!(
        read <= (TLS_BACKLOG + 16 * 1024) as u64,
        "read {read} bytes from the client while the server had not answered"
    );
    // The handshake completes: everything arrives, byte-exact.
    let mut server = ServerConnection::new(Arc::clone(&pki.server)).unwrap();
    let mut at_server = Vec::new();
    for _ in 0..200 {
        peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
        step(&mut conn, &mut legs);
        if at_server.len() >= upload.len() {
            break;
        }
    }
    assert_eq!(at_server, upload);
}

/// An SMTP-like watcher for the STARTTLS tests (the real ones live in the
/// starttls crate): lines; `STARTTLS` asks, `220` accepts it, `454`
/// refuses, `250 STARTTLS` offers; `MAIL` is plaintext content.
struct TestWatcher {
    client_line: Vec<u8>,
    server_line: Vec<u8>,
    awaiting: bool,
    requested: bool,
}

impl TestWatcher {
    fn boxed() -> Box<dyn starttls::Negotiation> {
        Box::new(TestWatcher {
            client_line: Vec::new(),
            server_line: Vec::new(),
            awaiting: true,
            requested: false,
        })
    }
}

impl starttls::Negotiation for TestWatcher {
    fn protocol(&self) -> starttls::Protocol {
        starttls::Protocol::Smtp
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<starttls::ClientStep, starttls::NegotiationError> {
        for (at, &byte) in bytes.iter().enumerate() {
            self.client_line.push(byte);
            if byte != b'\n' {
                continue;
            }
            let line = std::mem::take(&mut self.client_line);
            self.awaiting = true;
            let event = if line.starts_with(b"STARTTLS") {
                self.requested = true;
                starttls::ClientEvent::UpgradeRequested
            } else if line.starts_with(b"MAIL") {
                starttls::ClientEvent::PlaintextContent
            } else {
                continue;
            };
            return Ok(starttls::ClientStep {
                pass: at + 1,
                event: Some(event),
            });
        }
        Ok(starttls::ClientStep {
            pass: bytes.len(),
            event: None,
        })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<starttls::ServerStep, starttls::NegotiationError> {
        let mut event = None;
        for (at, &byte) in bytes.iter().enumerate() {
            self.server_line.push(byte);
            if byte != b'\n' {
                continue;
            }
            let line = std::mem::take(&mut self.server_line);
            if line.get(3) == Some(&b' ') {
                self.awaiting = false;
            }
            if line.ends_with(b"STARTTLS\r\n") {
                event = Some(starttls::ServerEvent::UpgradeOffered);
            } else if self.requested && line.starts_with(b"220 ") {
                return Ok(starttls::ServerStep {
                    pass: at + 1,
                    event: Some(starttls::ServerEvent::UpgradeAccepted),
                });
            } else if self.requested && line.starts_with(b"454 ") {
                self.requested = false;
                return Ok(starttls::ServerStep {
                    pass: at + 1,
                    event: Some(starttls::ServerEvent::UpgradeRefused),
                });
            }
        }
        Ok(starttls::ServerStep {
            pass: bytes.len(),
            event,
        })
    }

    fn awaiting_server(&self) -> bool {
        self.awaiting
    }

    fn upgrade_requested(&self) -> bool {
        self.requested
    }
}

/// The appliance's TLS context for STARTTLS interception: its own CA
/// (returned) forges, the origin's CA of `pki` is trusted upstream.
fn appliance_context(pki: &Pki) -> (mitm::TlsContext, CertificateDer<'static>) {
    use time::OffsetDateTime;
    let bundle = std::env::temp_dir().join(format!(
        "pipeline-legs-{}-{:?}.pem",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&bundle, &pki.ca_pem).unwrap();
    let trust = mitm::UpstreamTrust::from_bundle(&bundle).unwrap();
    std::fs::remove_file(&bundle).unwrap();
    let ca = mitm::CertificateAuthority::generate("tlsgate test CA", 1, OffsetDateTime::now_utc()).unwrap();
    let ca_der = ca.cert_der().clone();
    let forger = mitm::forge::Forger::new(ca, None, 16).unwrap();
    let context = mitm::TlsContext::new(
        forger,
        trust,
        mitm::InvalidUpstream::Refuse,
        None,
        mitm::WallClock::new(OffsetDateTime::now_utc()),
    )
    .unwrap();
    (context, ca_der)
}

/// What a tap was shown, each direction.
#[derive(Default)]
struct Recorded {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

impl pipeline::Tap for Recorded {
    fn data(&mut self, from_client: bool, bytes: &[u8]) {
        if from_client {
            self.to_server.extend_from_slice(bytes);
        } else {
            self.to_client.extend_from_slice(bytes);
        }
    }

    fn fin(&mut self, _from_client: bool) {}
}

const SERVER_IP: &str = "198.18.1.2";

/// A STARTTLS connection over fresh legs, its server leg connected.
fn starttls_connection() -> (Connection, Legs) {
    let conn = Connection::starttls(TestWatcher::boxed(), SERVER_IP.parse().unwrap(), false, false);
    (conn, Legs::new())
}

/// The inspection box passes everything on, both ways.
fn box_passes(legs: &mut Legs) {
    let up = std::mem::take(&mut legs.wire(Leg::InspectOut).from_pipeline);
    legs.wire(Leg::InspectIn).to_pipeline.extend(up);
    let down = std::mem::take(&mut legs.wire(Leg::InspectIn).from_pipeline);
    legs.wire(Leg::InspectOut).to_pipeline.extend(down);
}

/// `from` sends `bytes`; the preamble is relayed (through the box when
/// there is one); returns what the other peer received.
fn say(conn: &mut Connection, legs: &mut Legs, from: Leg, bytes: &[u8]) -> Vec<u8> {
    legs.wire(from).to_pipeline.extend(bytes);
    conn.pump_preamble(legs, None).unwrap();
    if conn.has_loop() {
        box_passes(legs);
        conn.pump_preamble(legs, None).unwrap();
    }
    let to = if from == Leg::Client { Leg::Server } else { Leg::Client };
    std::mem::take(&mut legs.wire(to).from_pipeline)
}

fn events(conn: &mut Connection) -> Vec<pipeline::PreambleEvent> {
    std::iter::from_fn(|| conn.next_preamble_event()).collect()
}

/// Greeting, EHLO and its STARTTLS capability, relayed byte for byte.
fn greet(conn: &mut Connection, legs: &mut Legs) {
    for (from, bytes) in [
        (Leg::Server, &b"220 mx.lab.test ESMTP\r\n"[..]),
        (Leg::Client, b"EHLO client\r\n"),
        (Leg::Server, b"250-mx.lab.test\r\n250 STARTTLS\r\n"),
    ] {
        assert_eq!(say(conn, legs, from, bytes), bytes, "relayed byte for byte");
    }
}

/// One pass of an intercepted connection (with its context).
fn step_intercepted(conn: &mut Connection, legs: &mut Legs, context: &mut mitm::TlsContext) {
    conn.pump_tls(legs, Some(context), None).unwrap();
    conn.finish_tls_directions(legs, None);
}

/// After the upgrade: the client's ClientHello is intercepted (`expose`:
/// the plaintext goes through the loop) and both handshakes run; returns
/// the rustls client (trusting the appliance's CA) and the real server.
fn handshake_upgraded(
    conn: &mut Connection,
    legs: &mut Legs,
    pki: &Pki,
    (context, appliance_ca): (&mut mitm::TlsContext, &CertificateDer<'static>),
    expose: bool,
) -> (ClientConnection, rustls::ServerConnection) {
    let mut client = client_trusting(appliance_ca);
    let mut server = rustls::ServerConnection::new(Arc::clone(&pki.server)).unwrap();
    peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
    step_intercepted(conn, legs, context);
    let Some(Pending::Hello { sni, .. }) = conn.pending() else {
        panic!("no ClientHello after the upgrade: {:?}", conn.pending());
    };
    assert_eq!(sni.as_deref(), Some("www.lab.test"));
    conn.intercept(context, expose).unwrap();
    for _ in 0..20 {
        step_intercepted(conn, legs, context);
        peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
        peer_io(&mut server, legs.wire(Leg::Server), &mut Vec::new());
    }
    assert!(conn.handshakes_done() && !client.is_handshaking() && !server.is_handshaking());
    (client, server)
}

#[test]
fn a_starttls_preamble_passes_byte_for_byte_then_its_tls_is_intercepted_both_ways() {
    let pki = pki();
    let (mut context, appliance_ca) = appliance_context(&pki);
    let (mut conn, mut legs) = starttls_connection();
    assert_eq!(conn.in_preamble(), Some(starttls::Protocol::Smtp));
    greet(&mut conn, &mut legs);
    assert_eq!(say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n"), b"STARTTLS\r\n");
    assert!(conn.preamble_awaiting_server());
    assert_eq!(
        say(&mut conn, &mut legs, Leg::Server, b"220 2.0.0 Ready\r\n"),
        b"220 2.0.0 Ready\r\n"
    );
    use pipeline::PreambleEvent::*;
    assert_eq!(events(&mut conn), [Offered, Requested, Accepted, Upgraded]);
    assert!(conn.in_preamble().is_none() && conn.tls().is_some());

    let (mut client, mut server) = handshake_upgraded(&mut conn, &mut legs, &pki, (&mut context, &appliance_ca), false);
    assert_ne!(
        client.peer_certificates().unwrap()[0],
        pki.leaf,
        "the client sees the forged certificate"
    );
    client.writer().write_all(b"EHLO client\r\n").unwrap();
    server.writer().write_all(b"250 mx.lab.test\r\n").unwrap();
    let (mut at_client, mut at_server) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        peer_io(&mut client, legs.wire(Leg::Client), &mut at_client);
        peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
        step_intercepted(&mut conn, &mut legs, &mut context);
    }
    assert_eq!(at_server, b"EHLO client\r\n");
    assert_eq!(at_client, b"250 mx.lab.test\r\n");
    assert_eq!(conn.injected_bytes_discarded(), 0);
}

#[test]
fn client_bytes_after_starttls_are_discarded_and_never_reach_the_server_before_or_after_tls() {
    let pki = pki();
    let (mut context, appliance_ca) = appliance_context(&pki);
    let (mut conn, mut legs) = starttls_connection();
    greet(&mut conn, &mut legs);
    // Pipelined with the request (CVE-2011-0411), then more before the answer.
    let at_server = say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n");
    assert_eq!(at_server, b"STARTTLS\r\n");
    assert!(say(&mut conn, &mut legs, Leg::Client, b"RCPT TO:<evil@x>\r\n").is_empty());
    // Injected into the client leg as the server's answer comes.
    legs.wire(Leg::Client).to_pipeline.extend(b"DATA\r\n");
    assert_eq!(
        say(&mut conn, &mut legs, Leg::Server, b"220 Ready\r\n"),
        b"220 Ready\r\n"
    );
    assert_eq!(
        conn.injected_bytes_discarded(),
        (b"MAIL FROM:<evil@x>\r\n".len() + b"RCPT TO:<evil@x>\r\n".len() + b"DATA\r\n".len()) as u64
    );

    let (mut client, mut server) = handshake_upgraded(&mut conn, &mut legs, &pki, (&mut context, &appliance_ca), false);
    client.writer().write_all(b"EHLO client\r\n").unwrap();
    let mut at_server = Vec::new();
    for _ in 0..5 {
        peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
        step_intercepted(&mut conn, &mut legs, &mut context);
        peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
    }
    assert_eq!(at_server, b"EHLO client\r\n", "only what the client sent inside TLS");
}

#[test]
fn a_refused_upgrade_passes_to_the_client_and_the_preamble_goes_on_in_plaintext() {
    let (mut conn, mut legs) = starttls_connection();
    greet(&mut conn, &mut legs);
    say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n");
    let refusal = b"454 4.7.0 TLS not available\r\n";
    assert_eq!(say(&mut conn, &mut legs, Leg::Server, refusal), refusal);
    let mail = b"MAIL FROM:<a@lab.test>\r\n";
    assert_eq!(say(&mut conn, &mut legs, Leg::Client, mail), mail);
    use pipeline::PreambleEvent::*;
    assert_eq!(events(&mut conn), [Offered, Requested, Refused, PlaintextContent]);
    assert!(conn.in_preamble().is_some() && conn.tls().is_none());
}

#[test]
fn a_server_that_speaks_after_accepting_fails_the_connection() {
    let (mut conn, mut legs) = starttls_connection();
    greet(&mut conn, &mut legs);
    say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n");
    legs.wire(Leg::Server)
        .to_pipeline
        .extend(b"220 Ready\r\n250 injected\r\n");
    assert_eq!(
        conn.pump_preamble(&mut legs, None),
        Err(pipeline::PreambleError::ServerSpokeAfterAccept(14))
    );

    // The same once the answer was relayed (and waits for the client's window).
    let (mut conn, mut legs) = starttls_connection();
    greet(&mut conn, &mut legs);
    say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n");
    legs.wire(Leg::Client).window = 0;
    legs.wire(Leg::Server).to_pipeline.extend(b"220 Ready\r\n");
    conn.pump_preamble(&mut legs, None).unwrap();
    assert!(conn.in_preamble().is_some(), "the answer has not reached the client");
    legs.wire(Leg::Server).to_pipeline.extend(b"250 x\r\n");
    assert_eq!(
        conn.pump_preamble(&mut legs, None),
        Err(pipeline::PreambleError::ServerSpokeAfterAccept(7))
    );
}

#[test]
fn with_an_inspection_loop_the_preamble_and_the_upgraded_plaintext_go_through_the_box() {
    let pki = pki();
    let (mut context, appliance_ca) = appliance_context(&pki);
    let (mut conn, mut legs) = starttls_connection();
    conn.open_loop();
    *legs.wire(Leg::InspectOut) = Wire::open();
    *legs.wire(Leg::InspectIn) = Wire::open();
    assert!(conn.loop_passed_syn());

    legs.wire(Leg::Server).to_pipeline.extend(b"220 mx ESMTP\r\n");
    let mut tap = Recorded::default();
    conn.pump_preamble(&mut legs, Some(&mut tap)).unwrap();
    assert!(
        legs.get(Leg::Client).from_pipeline.is_empty(),
        "not before the box passed it"
    );
    assert_eq!(legs.get(Leg::InspectIn).from_pipeline, b"220 mx ESMTP\r\n");
    box_passes(&mut legs);
    conn.pump_preamble(&mut legs, Some(&mut tap)).unwrap();
    assert_eq!(tap.to_client, b"220 mx ESMTP\r\n", "the tap sees what the box passed");
    assert_eq!(
        std::mem::take(&mut legs.wire(Leg::Client).from_pipeline),
        b"220 mx ESMTP\r\n"
    );

    legs.wire(Leg::Client).to_pipeline.extend(b"EHLO client\r\n");
    conn.pump_preamble(&mut legs, None).unwrap();
    assert_eq!(legs.get(Leg::InspectOut).from_pipeline, b"EHLO client\r\n");
    assert!(legs.get(Leg::Server).from_pipeline.is_empty());
    box_passes(&mut legs);
    conn.pump_preamble(&mut legs, None).unwrap();
    assert_eq!(
        std::mem::take(&mut legs.wire(Leg::Server).from_pipeline),
        b"EHLO client\r\n"
    );

    say(&mut conn, &mut legs, Leg::Server, b"250 STARTTLS\r\n");
    say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n");
    // The answer is in the box; the client injects meanwhile.
    legs.wire(Leg::Server).to_pipeline.extend(b"220 Ready\r\n");
    conn.pump_preamble(&mut legs, None).unwrap();
    legs.wire(Leg::Client).to_pipeline.extend(b"QUIT\r\n");
    assert!(
        conn.in_preamble().is_some(),
        "upgraded only once the box passed the answer"
    );
    box_passes(&mut legs);
    conn.pump_preamble(&mut legs, None).unwrap();
    assert_eq!(
        std::mem::take(&mut legs.wire(Leg::Client).from_pipeline),
        b"220 Ready\r\n"
    );
    assert!(conn.tls().is_some());
    assert_eq!(conn.injected_bytes_discarded(), 6);

    // The loop stays: the upgraded plaintext goes round it too.
    let mut client = client_trusting(&appliance_ca);
    let mut server = rustls::ServerConnection::new(Arc::clone(&pki.server)).unwrap();
    peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
    step_intercepted(&mut conn, &mut legs, &mut context);
    conn.intercept(&context, true).unwrap();
    for _ in 0..20 {
        step_intercepted(&mut conn, &mut legs, &mut context);
        peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
        peer_io(&mut server, legs.wire(Leg::Server), &mut Vec::new());
    }
    client.writer().write_all(b"EHLO again\r\n").unwrap();
    peer_io(&mut client, legs.wire(Leg::Client), &mut Vec::new());
    step_intercepted(&mut conn, &mut legs, &mut context);
    assert_eq!(legs.get(Leg::InspectOut).from_pipeline, b"EHLO again\r\n");
    box_passes(&mut legs);
    step_intercepted(&mut conn, &mut legs, &mut context);
    let mut at_server = Vec::new();
    peer_io(&mut server, legs.wire(Leg::Server), &mut at_server);
    assert_eq!(at_server, b"EHLO again\r\n");
}

#[test]
fn require_tls_fails_plaintext_content_and_a_refusal_without_passing_them_on() {
    let mut conn = Connection::starttls(TestWatcher::boxed(), SERVER_IP.parse().unwrap(), true, false);
    let mut legs = Legs::new();
    greet(&mut conn, &mut legs);
    legs.wire(Leg::Client).to_pipeline.extend(b"MAIL FROM:<a@lab.test>\r\n");
    assert_eq!(
        conn.pump_preamble(&mut legs, None),
        Err(pipeline::PreambleError::PlaintextContent(starttls::Protocol::Smtp))
    );
    assert!(
        legs.get(Leg::Server).from_pipeline.is_empty(),
        "the content never reached the server"
    );

    let mut conn = Connection::starttls(TestWatcher::boxed(), SERVER_IP.parse().unwrap(), true, false);
    let mut legs = Legs::new();
    greet(&mut conn, &mut legs);
    say(&mut conn, &mut legs, Leg::Client, b"STARTTLS\r\n");
    legs.wire(Leg::Server)
        .to_pipeline
        .extend(b"454 4.7.0 TLS not available\r\n");
    assert_eq!(
        conn.pump_preamble(&mut legs, None),
        Err(pipeline::PreambleError::UpgradeRefused(starttls::Protocol::Smtp))
    );
    assert!(legs.get(Leg::Client).from_pipeline.is_empty());
}

/// Talks inside an upgraded connection: `client_says` then `server_says`;
/// returns what each peer received.
fn converse(
    conn: &mut Connection,
    legs: &mut Legs,
    context: &mut mitm::TlsContext,
    (client, server): (&mut ClientConnection, &mut rustls::ServerConnection),
    (client_says, server_says): (&[u8], &[u8]),
) -> (Vec<u8>, Vec<u8>) {
    let (mut at_client, mut at_server) = (Vec::new(), Vec::new());
    client.writer().write_all(client_says).unwrap();
    for _ in 0..5 {
        peer_io(client, legs.wire(Leg::Client), &mut at_client);
        peer_io(server, legs.wire(Leg::Server), &mut at_server);
        step_intercepted(conn, legs, context);
    }
    server.writer().write_all(server_says).unwrap();
    for _ in 0..5 {
        peer_io(server, legs.wire(Leg::Server), &mut at_server);
        step_intercepted(conn, legs, context);
        peer_io(client, legs.wire(Leg::Client), &mut at_client);
    }
    (at_client, at_server)
}

fn announcements(conn: &mut Connection) -> Vec<Result<pipeline::Announcement, starttls::NegotiationError>> {
    std::iter::from_fn(|| conn.next_announcement()).collect()
}

#[test]
fn an_upgraded_ftp_control_channel_announces_its_data_connections_even_with_the_plaintext_not_exposed() {
    use starttls::{DataChannelEvent, DataEndpoint, DataProtection};
    let pki = pki();
    let (mut context, appliance_ca) = appliance_context(&pki);
    let mut conn = Connection::starttls(
        starttls::negotiation(starttls::Protocol::Ftp),
        SERVER_IP.parse().unwrap(),
        false,
        false,
    );
    let mut legs = Legs::new();
    for (from, bytes) in [
        (Leg::Server, &b"220 (vsFTPd 3.0.5)\r\n"[..]),
        (Leg::Client, b"AUTH TLS\r\n"),
        (Leg::Server, b"234 Proceed with negotiation.\r\n"),
    ] {
        assert_eq!(say(&mut conn, &mut legs, from, bytes), bytes, "relayed byte for byte");
    }
    assert!(conn.tls().is_some(), "upgraded");
    assert!(announcements(&mut conn).is_empty());
    let (mut client, mut server) = handshake_upgraded(&mut conn, &mut legs, &pki, (&mut context, &appliance_ca), false);
    let peers = (&mut client, &mut server);
    let mut talk = |conn: &mut Connection, legs: &mut Legs, said: (&[u8], &[u8])| {
        let heard = converse(conn, legs, &mut context, (&mut *peers.0, &mut *peers.1), said);
        assert_eq!(heard, (said.1.to_vec(), said.0.to_vec()), "relayed unchanged");
    };
    for said in [
        (
            &b"EPSV\r\n"[..],
            &b"229 Entering Extended Passive Mode (|||40001|)\r\n"[..],
        ),
        (b"PBSZ 0\r\nPROT P\r\n", b"200 PBSZ=0\r\n200 PROT now Private.\r\n"),
        (b"EPSV\r\n", b"229 Entering Extended Passive Mode (|||40003|)\r\n"),
        (b"PASV\r\n", b"227 Entering Passive Mode (198,18,1,2,156,69).\r\n"),
    ] {
        talk(&mut conn, &mut legs, said);
    }
    let listens = |address, port, protection| {
        Ok(pipeline::Announcement {
            event: DataChannelEvent::ServerListens(DataEndpoint { address, port }),
            protection,
        })
    };
    assert_eq!(
        announcements(&mut conn),
        [
            listens(None, 40001, DataProtection::Clear),
            Ok(pipeline::Announcement {
                event: DataChannelEvent::Protection(DataProtection::Private),
                protection: DataProtection::Private,
            }),
            listens(None, 40003, DataProtection::Private),
            listens(Some(SERVER_IP.parse().unwrap()), 40005, DataProtection::Private),
        ]
    );
    // An announcement it cannot read is reported once, then nothing more.
    talk(
        &mut conn,
        &mut legs,
        (
            b"LPSV\r\n",
            b"228 Entering Long Passive Mode (4,4,198,18,1,2,2,156,71)\r\n",
        ),
    );
    talk(
        &mut conn,
        &mut legs,
        (b"EPSV\r\n", b"229 Entering Extended Passive Mode (|||40008|)\r\n"),
    );
    let after = announcements(&mut conn);
    assert!(matches!(after.as_slice(), [Err(_)]), "{after:?}");
}
