//! TLS termination (`[[service]]`, stud on the wire) end to end in memory:
//! a rustls client connects to a service's destination and gets the
//! service's own certificate; the backend (the server host on another port,
//! reached from the client's address) receives the PROXY v2 header with the
//! client's address, then the plaintext byte-exact. A backend that refuses
//! or is unreachable and a name no service answers cost the client a RST,
//! counted and logged. Nothing from the client port reaches a backend, and
//! a service's SYN is never bridged, not even by a full table that bridges.
//! With two workers, a backend leg whose frames hash to the other worker
//! works (they are handed to the worker holding it), and a ticket one
//! worker issued resumes on the other.
//! A backend with `source = "appliance"` is reached from the appliance's own
//! address, resolved with ARP/ND (directly or through a gateway), and still
//! told the real client; frames to the owned address are never bridged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::config::{AtCapacity, InspectFailure, ServiceConfig};
use appliance::engine::{InterceptPolicy, Side};
use appliance::service::Services;
use appliance::splice::InspectionSettings;
use harness::connlog::LogFile;
use harness::tls::{drive, provider, try_drive, Scratch};
use harness::workers::Workers;
use harness::{
    assert_no_leaks, ipv4, policy, tcp, v4, v6, BoxMode, Host, Lab, CLIENT_MAC, CLIENT_V4, CLIENT_V6, SERVER_MAC,
    SERVER_V4, SERVER_V6,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

const BACKEND_PORT: u16 = 8080;

/// The service's CA and leaf, and the files the `[[service]]` names.
struct ServicePki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    chain: PathBuf,
    key: PathBuf,
}

fn service_pki(dir: &Path) -> ServicePki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "Service Root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["www.lab.test".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "www.lab.test");
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let chain = dir.join("www.pem");
    let key_path = dir.join("www.key");
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    ServicePki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        chain,
        key: key_path,
    }
}

/// A service for `www.lab.test` on the server's address, port 443, with
/// its backend on the same server at [`BACKEND_PORT`], PROXY v2 first.
fn services(pki: &ServicePki) -> Arc<Services> {
    services_with_backend(pki, &format!("{{ port = {BACKEND_PORT} }}"))
}

/// [`services`] with the backend `backend` (a TOML inline table).
fn services_with_backend(pki: &ServicePki, backend: &str) -> Arc<Services> {
    let toml = format!(
        "name = \"www\"\n\
         destinations = [\"198.18.0.2\", \"2001:2::2\"]\n\
         port = 443\n\
         server_names = [\"www.lab.test\"]\n\
         certificates = [ {{ chain = \"{}\", key = \"{}\" }} ]\n\
         backend = {backend}\n\
         header = \"proxy-v2\"\n",
        pki.chain.display(),
        pki.key.display()
    );
    let config: ServiceConfig = toml::from_str(&toml).unwrap();
    Arc::new(Services::from_config(&[config]).unwrap())
}

/// A client configuration trusting the service's CA (it keeps the
/// tickets it is given, for resumption).
fn client_config(pki: &ServicePki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn client_tls(pki: &ServicePki, name: &str) -> ClientConnection {
    ClientConnection::new(client_config(pki), ServerName::try_from(name.to_string()).unwrap()).unwrap()
}

/// A lab whose appliance intercepts no port and terminates the service,
/// logging to `log`.
fn lab(pki: &ServicePki, log: &LogFile) -> Lab {
    lab_with(&policy(&[]), services(pki), log)
}

/// A lab whose appliance terminates `services` under `policy`, logging to
/// `log`.
fn lab_with(policy: &InterceptPolicy, services: Arc<Services>, log: &LogFile) -> Lab {
    let log = Arc::clone(&log.log);
    Lab::with_engine(policy, |engine| engine.with_services(services).with_connection_log(log))
}

/// The client's connection to the service, with its TLS.
fn connect_tls(lab: &mut Lab, pki: &ServicePki, name: &str, local_port: u16) -> (SocketHandle, ClientConnection) {
    let client = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    // The appliance answers the SYN itself (no backend yet).
    assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
    (client, client_tls(pki, name))
}

/// Runs the client's TLS handshake with the appliance.
fn handshake(lab: &mut Lab, client: SocketHandle, tls: &mut ClientConnection) {
    let mut ignored = Vec::new();
    assert!(
        lab.run_until(5_000, |lab| {
            drive(&mut lab.client, client, tls, &mut ignored);
            !tls.is_handshaking()
        }),
        "handshake"
    );
}

/// Appends what the backend on `server` received to `into`.
fn read_backend(server: &mut Host, backend: SocketHandle, into: &mut Vec<u8>) {
    let socket = server.tcp(backend);
    while socket.can_recv() {
        socket.recv(|data| (data.len(), into.extend_from_slice(data))).unwrap();
    }
}

#[test]
fn a_terminated_client_gets_the_services_certificate_and_the_backend_the_proxy_header_then_the_plaintext() {
    let scratch = Scratch::new("terminate-service");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_000);
    let mut received = Vec::new();
    handshake(&mut lab, client, &mut tls);
    assert_eq!(
        tls.peer_certificates().unwrap()[0],
        pki.leaf,
        "the service's own certificate"
    );

    let request = harness::pattern(100_000, 3);
    let mut outgoing = &request[..];
    let mut at_backend = Vec::new();
    let header_len = 16 + 12;
    assert!(lab.run_until(10_000, |lab| {
        // A record at a time, once the socket took the last one.
        if !outgoing.is_empty() && lab.client.tcp(client).send_queue() == 0 {
            let chunk = &outgoing[..outgoing.len().min(16 * 1024)];
            let sent = std::io::Write::write(&mut tls.writer(), chunk).unwrap();
            outgoing = &outgoing[sent..];
        }
        drive(&mut lab.client, client, &mut tls, &mut received);
        read_backend(&mut lab.server, backend, &mut at_backend);
        at_backend.len() > header_len && at_backend.ends_with(&request[request.len() - 100..])
    }));
    // PROXY v2: the signature, PROXY over TCP/IPv4, then the client's
    // address and port and the address it connected to.
    assert_eq!(&at_backend[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(at_backend[12..14], [0x21, 0x11]);
    let length = usize::from(u16::from_be_bytes([at_backend[14], at_backend[15]]));
    assert_eq!(at_backend[16..20], CLIENT_V4, "the client's address");
    assert_eq!(at_backend[20..24], SERVER_V4, "the address it connected to");
    assert_eq!(u16::from_be_bytes([at_backend[24], at_backend[25]]), 41_000);
    assert_eq!(u16::from_be_bytes([at_backend[26], at_backend[27]]), 443);
    let tlvs = &at_backend[28..16 + length];
    assert!(
        tlvs.windows(12).any(|w| w == b"www.lab.test"),
        "the SNI in PP2_TYPE_AUTHORITY"
    );
    assert_eq!(&at_backend[16 + length..], &request[..], "the plaintext, byte-exact");
    // The backend's side: its client is the client's own address.
    let remote = lab.server.tcp(backend).remote_endpoint().unwrap();
    assert_eq!((remote.addr, remote.port), (v4(CLIENT_V4, 41_000).addr, 41_000));

    // The backend answers and closes: close_notify reaches the client.
    let response = harness::pattern(50_000, 4);
    let mut down = &response[..];
    let mut closed = false;
    assert!(lab.run_until(10_000, |lab| {
        let socket = lab.server.tcp(backend);
        if !down.is_empty() && socket.can_send() {
            let sent = socket.send_slice(down).unwrap();
            down = &down[sent..];
            if down.is_empty() {
                socket.close();
            }
        }
        closed |= drive(&mut lab.client, client, &mut tls, &mut received);
        closed
    }));
    assert_eq!(received, response);
    lab.client.tcp(client).close();
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.terminated, counters.terminate_failed), (1, 0));
    assert_eq!(
        counters.handshake_seconds.count(),
        1,
        "the terminated handshake's time is observed"
    );
    let record = &log.records()[0];
    assert_eq!(record["event_type"], "tls_terminate");
    assert_eq!(record["decision"], "terminate");
    assert_eq!(record["reason"], "service www");
    assert_eq!(record["sni"], "www.lab.test");
    assert_eq!(record["client_tls_version"], "TLSv1_3");
    assert_eq!(record["plaintext_client_to_server"], request.len() as u64);
}

/// Drives the client's TLS until its connection is reset; the error rustls
/// saw, if any.
fn until_reset(lab: &mut Lab, client: SocketHandle, tls: &mut ClientConnection) {
    let mut ignored = Vec::new();
    let reset = lab.run_until(10_000, |lab| {
        let _ = try_drive(&mut lab.client, client, tls, &mut ignored);
        lab.client.tcp(client).state() == State::Closed
    });
    assert!(reset, "the client was reset: {:?}", lab.client.tcp(client).state());
    assert!(ignored.is_empty(), "no plaintext reached the client");
}

#[test]
fn a_backend_that_refuses_costs_the_client_a_reset_and_a_record() {
    let scratch = Scratch::new("terminate-refused");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    // Nothing listens on the backend port: the server host answers RST.
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_001);
    until_reset(&mut lab, client, &mut tls);
    assert_eq!(lab.engine.splicer().counters().backend_refused, 1);
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let record = &log.records()[0];
    assert_eq!(record["decision"], "terminate");
    assert_eq!(record["ended"], "backend refused");
}

#[test]
fn a_name_no_service_answers_costs_the_client_a_reset_and_a_record() {
    let scratch = Scratch::new("terminate-unknown");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    let _backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "other.lab.test", 41_002);
    until_reset(&mut lab, client, &mut tls);
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.terminate_failed, counters.terminated), (1, 0));
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let record = &log.records()[0];
    assert_eq!(record["decision"], "terminate");
    assert_eq!(record["ended"], "no service for other.lab.test");
    assert_eq!(record["sni"], "other.lab.test");
}

#[test]
fn a_terminated_connections_plaintext_goes_round_the_inspection_box() {
    let scratch = Scratch::new("terminate-inspect");
    let pki = service_pki(&scratch.0);
    let services = services(&pki);
    let settings = InspectionSettings {
        failure: InspectFailure::FailClosed,
        syn_timeout: netstack::Duration::from_millis(300),
        timeout: netstack::Duration::from_secs(3),
    };
    // The box rewrites what it sees: the backend gets the box's version.
    let mut lab = Lab::with_inspection_and(
        &policy(&[]),
        settings,
        BoxMode::Rewrite(b"secret", b"XXXXXX"),
        |engine| engine.with_services(services),
    );
    let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_003);
    handshake(&mut lab, client, &mut tls);
    std::io::Write::write_all(&mut tls.writer(), b"GET /secret HTTP/1.1\r\n\r\n").unwrap();
    let mut at_backend = Vec::new();
    let mut ignored = Vec::new();
    assert!(lab.run_until(5_000, |lab| {
        drive(&mut lab.client, client, &mut tls, &mut ignored);
        read_backend(&mut lab.server, backend, &mut at_backend);
        at_backend.ends_with(b"GET /XXXXXX HTTP/1.1\r\n\r\n")
    }));
    let seen = &lab.inspection.as_ref().unwrap().seen_up;
    assert!(
        seen.windows(11).any(|w| w == b"GET /XXXXXX"),
        "the box saw the plaintext (recorded as it passed it on)"
    );
    assert_eq!(lab.engine.splicer().counters().inspected, 1);
}

#[test]
fn an_ipv6_client_reaches_the_backend_from_its_own_address() {
    let scratch = Scratch::new("terminate-ipv6");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let client = lab.client.connect(v6(SERVER_V6, 443), 41_004, 64 * 1024);
    assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
    let mut tls = client_tls(&pki, "www.lab.test");
    handshake(&mut lab, client, &mut tls);
    std::io::Write::write_all(&mut tls.writer(), b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (mut at_backend, mut ignored) = (Vec::new(), Vec::new());
    assert!(lab.run_until(5_000, |lab| {
        drive(&mut lab.client, client, &mut tls, &mut ignored);
        read_backend(&mut lab.server, backend, &mut at_backend);
        at_backend.ends_with(b"GET / HTTP/1.1\r\n\r\n")
    }));
    // PROXY v2 over TCP/IPv6: the client's own address, then the service's.
    assert_eq!(at_backend[12..14], [0x21, 0x21]);
    let client_v6: std::net::Ipv6Addr = CLIENT_V6.parse().unwrap();
    let server_v6: std::net::Ipv6Addr = SERVER_V6.parse().unwrap();
    assert_eq!(at_backend[16..32], client_v6.octets());
    assert_eq!(at_backend[32..48], server_v6.octets());
    assert_eq!(u16::from_be_bytes([at_backend[48], at_backend[49]]), 41_004);
}

#[test]
fn a_client_resumes_with_the_ticket_of_its_earlier_connection() {
    let scratch = Scratch::new("terminate-resume");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    let config = client_config(&pki);
    for (local_port, resumed) in [(41_005, false), (41_006, true)] {
        let _backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
        let client = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
        assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
        let name = ServerName::try_from("www.lab.test").unwrap();
        let mut tls = ClientConnection::new(Arc::clone(&config), name).unwrap();
        handshake(&mut lab, client, &mut tls);
        assert_eq!(tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed), resumed);
        // The tickets come after the handshake: read them.
        let mut ignored = Vec::new();
        lab.run_until(50, |lab| {
            drive(&mut lab.client, client, &mut tls, &mut ignored);
            false
        });
        lab.client.tcp(client).close();
    }
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.terminated, counters.tickets_resumed), (2, 1));
}

/// Sends `request` over the client's TLS and waits for the backend to have
/// received it after its PROXY v2 header; what the backend received.
fn request_reaches_backend(
    lab: &mut Lab,
    client: SocketHandle,
    tls: &mut ClientConnection,
    backend: SocketHandle,
    request: &[u8],
) -> Vec<u8> {
    std::io::Write::write_all(&mut tls.writer(), request).unwrap();
    let (mut at_backend, mut ignored) = (Vec::new(), Vec::new());
    assert!(
        lab.run_until(5_000, |lab| {
            drive(&mut lab.client, client, tls, &mut ignored);
            read_backend(&mut lab.server, backend, &mut at_backend);
            at_backend.ends_with(request)
        }),
        "the request reached the backend"
    );
    at_backend
}

/// A client's segment with `payload` straight to the backend port, as a
/// client that skips the SYN would send it.
fn segment_to_backend(local_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::TcpSegment {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        src: std::net::SocketAddr::from((CLIENT_V4, local_port)),
        dst: std::net::SocketAddr::from((SERVER_V4, BACKEND_PORT)),
        seq: 1,
        ack: Some(1),
        control: wire::SegmentControl::Psh,
        window: 64_240,
        payload,
    }
    .write(&mut frame)
    .unwrap();
    frame
}

/// Frames the appliance sent to the server side from the client's
/// `local_port`.
fn sent_to_server_from(lab: &Lab, local_port: u16) -> usize {
    let log = lab.links[1].log.as_ref().unwrap();
    log.iter()
        .filter(|frame| tcp(frame).is_some_and(|segment| segment.src_port() == local_port))
        .count()
}

/// Finding: a client could connect straight to a service's backend through
/// the bridge and write its own PROXY header, which the backend trusts (a
/// spoofed client address in nginx's log). Its SYN is refused with a RST
/// (whether the backend is `{ port }` on the service's destination or a
/// transparent `{ address, port }`), its other segments go nowhere, and
/// the appliance's own backend leg still connects.
#[test]
fn a_client_cannot_reach_a_backend_straight_but_the_appliance_still_can() {
    let backends = [
        format!("{{ port = {BACKEND_PORT} }}"),
        format!("{{ address = \"198.18.0.2\", port = {BACKEND_PORT} }}"),
    ];
    for (round, backend_toml) in backends.iter().enumerate() {
        let scratch = Scratch::new("terminate-backend-direct");
        let pki = service_pki(&scratch.0);
        let log = LogFile::open(scratch.0.join("connections.jsonl"));
        let mut lab = lab_with(&policy(&[]), services_with_backend(&pki, backend_toml), &log);
        lab.links[1].log = Some(Vec::new());
        let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
        let base = 41_010 + 10 * round as u16;

        let straight = lab.client.connect(v4(SERVER_V4, BACKEND_PORT), base, 4096);
        assert!(
            lab.run_until(2_000, |lab| lab.client.tcp(straight).state() == State::Closed),
            "{backend_toml}: the client was reset: {:?}",
            lab.client.tcp(straight).state()
        );
        lab.client_port
            .inject(segment_to_backend(base + 1, b"PROXY TCP4 6.6.6.6 198.18.0.2 1 443\r\n"));
        lab.run_for(10);
        assert_eq!(lab.server.tcp(backend).state(), State::Listen, "{backend_toml}");
        assert_eq!(
            sent_to_server_from(&lab, base) + sent_to_server_from(&lab, base + 1),
            0,
            "{backend_toml}: nothing of theirs reached the server side"
        );
        assert_eq!(lab.engine.splicer().counters().backend_direct_refused, 1);

        let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", base + 2);
        handshake(&mut lab, client, &mut tls);
        let at_backend = request_reaches_backend(&mut lab, client, &mut tls, backend, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&at_backend[..12], b"\r\n\r\n\0\r\nQUIT\n", "the appliance's own header");
        assert_eq!(
            u16::from_be_bytes([at_backend[24], at_backend[25]]),
            base + 2,
            "{backend_toml}"
        );

        let records = log.records();
        let refusal = records
            .iter()
            .find(|record| record["dest_port"] == BACKEND_PORT)
            .expect("a record of the refusal");
        assert_eq!(refusal["src_port"], base);
        assert_eq!(refusal["event_type"], "syn_block");
        assert_eq!(refusal["decision"], "block");
        assert_eq!(refusal["ended"], "refused: straight to a service's backend (RST)");
        assert!(refusal["reason"].as_str().unwrap().contains("service www"), "{refusal}");
    }
}

/// A service's SYN that a full table has no room for is refused, even with
/// `tcp.at_capacity = "bridge"`: bridged, it would reach a destination
/// where nothing but the appliance serves the service.
#[test]
fn a_services_syn_at_a_full_table_is_refused_even_when_the_table_bridges() {
    let scratch = Scratch::new("terminate-capacity");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut policy = policy(&[]);
    policy.limits.max_sessions = 1;
    policy.limits.at_capacity = AtCapacity::Bridge;
    let mut lab = lab_with(&policy, services(&pki), &log);
    // A server that would answer a bridged SYN.
    let listener = lab.server.listen(443, 4096);
    let (first, _tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_030);
    // The appliance has its ACK: the session is confirmed (not evictable).
    lab.run_for(5);
    let second = lab.client.connect(v4(SERVER_V4, 443), 41_031, 4096);
    assert!(
        lab.run_until(2_000, |lab| lab.client.tcp(second).state() == State::Closed),
        "the second client was reset: {:?}",
        lab.client.tcp(second).state()
    );
    assert_eq!(lab.server.tcp(listener).state(), State::Listen, "nothing was bridged");
    assert_eq!(lab.client.tcp(first).state(), State::Established);
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.refused_at_capacity, counters.bridged_at_capacity), (1, 0));
}

/// An ICMP unreachable for the backend leg while it connects: the client,
/// whose handshake the appliance answered, gets a RST (not silence), the
/// error goes no further, counted as `backend_refused` and logged.
#[test]
fn an_unreachable_backend_costs_the_client_a_reset_and_a_record() {
    let scratch = Scratch::new("terminate-unreachable");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab(&pki, &log);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_040);
    lab.server_online = false;
    lab.server_unreachable = true;
    lab.links[3].log = Some(Vec::new());
    until_reset(&mut lab, client, &mut tls);
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.backend_refused, counters.server_unreachable), (1, 0));
    let to_client = lab.links[3].log.as_ref().unwrap();
    assert!(
        !to_client
            .iter()
            .any(|frame| ipv4(frame).is_some_and(|ip| ip.next_header() == smoltcp::wire::IpProtocol::Icmp)),
        "the backend leg's ICMP error is not passed on"
    );
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let record = &log.records()[0];
    assert_eq!(record["decision"], "terminate");
    assert_eq!(record["ended"], "backend unreachable (ICMP)");
}

// Two workers. The backend leg goes from the client's address and port to
// the backend's: the flow hash may give its frames to the other worker,
// which hands them to the one holding the connection.

/// A client port from `first` on whose connection to the service lands on
/// `worker`, and (with `split`) whose backend leg to `backend` hashes to
/// the other worker.
fn client_port_on(worker: usize, backend: SocketAddr, split: bool, first: u16) -> u16 {
    let service = SocketAddr::from((SERVER_V4, 443));
    harness::workers::client_port_on(worker, service, split.then_some(backend), first)
}

/// Two workers terminating `services`.
fn two_workers(services: &Arc<Services>) -> Workers {
    Workers::new(2, &policy(&[]), |_, engine| engine.with_services(Arc::clone(services)))
}

/// The client's TLS connection to the service from `local_port`,
/// handshaken with `config`.
fn terminated_client(
    lab: &mut Workers,
    config: &Arc<ClientConfig>,
    local_port: u16,
) -> (SocketHandle, ClientConnection) {
    let client = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
    let name = ServerName::try_from("www.lab.test").unwrap();
    let mut tls = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut ignored = Vec::new();
    assert!(
        lab.run_until(5_000, |lab| {
            drive(&mut lab.client, client, &mut tls, &mut ignored);
            !tls.is_handshaking()
        }),
        "handshake"
    );
    (client, tls)
}

#[test]
fn with_two_workers_a_backend_legs_frames_hashed_to_the_other_worker_are_handed_to_its_own() {
    let other_address = [198, 18, 0, 3];
    let backends = [
        (format!("{{ port = {BACKEND_PORT} }}"), SERVER_V4),
        (
            format!("{{ address = \"198.18.0.3\", port = {BACKEND_PORT} }}"),
            other_address,
        ),
    ];
    for (round, (backend_toml, backend_v4)) in backends.iter().enumerate() {
        let scratch = Scratch::new("terminate-two-workers");
        let pki = service_pki(&scratch.0);
        let services = services_with_backend(&pki, backend_toml);
        let mut lab = two_workers(&services);
        if *backend_v4 == other_address {
            lab.server.second_v4_for_v6(other_address);
        }
        let backend_address = SocketAddr::from((*backend_v4, BACKEND_PORT));
        let config = client_config(&pki);
        for worker in [0, 1] {
            let before = lab.totals(1 - worker, Side::Server).handed_off;
            let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
            let local_port = client_port_on(worker, backend_address, true, 41_100 + 100 * round as u16);
            let (client, mut tls) = terminated_client(&mut lab, &config, local_port);

            let request = harness::pattern(40_000, 5);
            std::io::Write::write_all(&mut tls.writer(), &request).unwrap();
            let response = harness::pattern(60_000, 6);
            let (mut at_backend, mut received, mut down) = (Vec::new(), Vec::new(), &response[..]);
            let mut closed = false;
            assert!(
                lab.run_until(10_000, |lab| {
                    closed |= drive(&mut lab.client, client, &mut tls, &mut received);
                    read_backend(&mut lab.server, backend, &mut at_backend);
                    let socket = lab.server.tcp(backend);
                    if at_backend.ends_with(&request) && !down.is_empty() && socket.can_send() {
                        let sent = socket.send_slice(down).unwrap();
                        down = &down[sent..];
                        if down.is_empty() {
                            socket.close();
                        }
                    }
                    closed
                }),
                "{backend_toml}, client on worker {worker}: {} of {} bytes at the backend, {} of {} at the client",
                at_backend.len(),
                request.len(),
                received.len(),
                response.len()
            );
            // The PROXY v2 header naming the client's port, then the
            // request; the response and close_notify back: byte-exact.
            assert_eq!(&at_backend[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(u16::from_be_bytes([at_backend[24], at_backend[25]]), local_port);
            assert!(at_backend[28..].ends_with(&request) && at_backend.len() > request.len());
            assert!(received == response, "{backend_toml}: the response byte-exact");
            let remote = lab.server.tcp(backend).remote_endpoint().unwrap();
            assert_eq!(remote.port, local_port, "the backend leg comes from the client's port");
            lab.client.tcp(client).close();

            // The worker that got the client's SYN holds the connection; the
            // other one handed the backend's frames over.
            let holder = lab.workers[worker].engine.splicer().counters();
            assert_eq!((holder.terminated, holder.terminate_failed), (1, 0));
            let other = lab.workers[1 - worker].engine.splicer().counters();
            assert_eq!(other.sessions_opened, worker as u64, "only its own client's session");
            let handed = lab.totals(1 - worker, Side::Server);
            assert!(handed.handed_off > before, "{backend_toml}: {handed:?}");
            assert_eq!(handed.handoff_dropped, 0);
        }
        // Every frame received on the server port, summed over the workers,
        // was bridged, taken by a stack or dropped.
        assert!(lab.run_until(30_000, |lab| lab.workers.iter().all(|worker| worker
            .engine
            .stack()
            .live_flows()
            == 0)));
        let server = lab.summed(Side::Server);
        assert_eq!(
            server.rx,
            server.bridged + server.intercepted + server.dropped,
            "{server:?}"
        );
        assert_eq!(server.dropped, 0, "{server:?}");
    }
}

/// The data plane gives every worker the same `Services` (the reloader's):
/// one ticket key, so a ticket one worker issued resumes on the other.
#[test]
fn a_ticket_one_worker_issued_resumes_the_session_on_the_other() {
    let scratch = Scratch::new("terminate-two-workers-resume");
    let pki = service_pki(&scratch.0);
    let services = services(&pki);
    let mut lab = two_workers(&services);
    let backend = SocketAddr::from((SERVER_V4, BACKEND_PORT));
    let config = client_config(&pki);
    for (worker, resumed) in [(0, false), (1, true)] {
        let _backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
        let local_port = client_port_on(worker, backend, false, 41_300);
        let (client, mut tls) = terminated_client(&mut lab, &config, local_port);
        assert_eq!(tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed), resumed);
        // The tickets come after the handshake: read them.
        let mut ignored = Vec::new();
        lab.run_until(50, |lab| {
            drive(&mut lab.client, client, &mut tls, &mut ignored);
            false
        });
        lab.client.tcp(client).close();
    }
    let counters: Vec<_> = lab
        .workers
        .iter()
        .map(|worker| {
            let counters = worker.engine.splicer().counters();
            (counters.terminated, counters.tickets_resumed)
        })
        .collect();
    assert_eq!(counters, [(1, 0), (1, 1)], "(terminated, resumed) per worker");
}

/// The ICMP error about a backend leg's SYN hashes by the leg it quotes, so
/// it may reach the other worker too: handed over, it ends the connection
/// there with a RST to the client, and goes no further.
#[test]
fn an_unreachable_error_about_a_backend_leg_on_the_other_worker_resets_its_client() {
    let scratch = Scratch::new("terminate-two-workers-unreachable");
    let pki = service_pki(&scratch.0);
    let services = services(&pki);
    let mut lab = two_workers(&services);
    let backend = SocketAddr::from((SERVER_V4, BACKEND_PORT));
    let local_port = client_port_on(0, backend, true, 41_400);
    let client = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
    lab.server_unreachable = true;
    let mut tls = client_tls(&pki, "www.lab.test");
    let mut ignored = Vec::new();
    assert!(
        lab.run_until(5_000, |lab| {
            let _ = try_drive(&mut lab.client, client, &mut tls, &mut ignored);
            lab.client.tcp(client).state() == State::Closed
        }),
        "the client was reset: {:?}",
        lab.client.tcp(client).state()
    );
    let counters = lab.workers[0].engine.splicer().counters();
    assert_eq!((counters.backend_refused, counters.server_unreachable), (1, 0));
    assert_eq!(lab.totals(1, Side::Server).handed_off, 1, "the ICMP error");
    assert_eq!(lab.totals(1, Side::Client).tx, 0, "nothing went on to the client");
}

// ---------------------------------------------------------------------------
// Backends reached from the appliance's own address (`source = "appliance"`,
// `ports.server.addresses`): the appliance answers ARP/ND for its address,
// resolves the backend's (or the gateway's) MAC, connects from an ephemeral
// port of its address, and the PROXY header still names the real client.

const OWNED_V4: [u8; 4] = [198, 18, 0, 100];
const OWNED_V6: &str = "2001:2::100";

/// [`policy`] with the owned addresses 198.18.0.100/24 and 2001:2::100/64
/// on the server port, and `gateways`.
fn owned_policy(gateways: &[&str]) -> InterceptPolicy {
    use netstack::neighbour::OwnedAddress;
    InterceptPolicy {
        owned_addresses: vec![
            OwnedAddress {
                address: std::net::IpAddr::from(OWNED_V4),
                prefix_len: 24,
            },
            OwnedAddress {
                address: OWNED_V6.parse().unwrap(),
                prefix_len: 64,
            },
        ],
        gateways: gateways.iter().map(|gateway| gateway.parse().unwrap()).collect(),
        ..policy(&[])
    }
}

/// The backend `address` at [`BACKEND_PORT`], from the appliance's address.
fn from_appliance(address: &str) -> String {
    format!("{{ address = \"{address}\", port = {BACKEND_PORT}, source = \"appliance\" }}")
}

/// The client's TLS request reaches the backend from the appliance's own
/// address (an ephemeral port); PROXY v2 still names the client's own
/// address and port, and the plaintext follows byte-exact. IPv4 and IPv6.
/// The server host resolves the owned address with ARP/ND (answered by the
/// appliance) and is resolved by it.
#[test]
fn a_backend_from_the_appliances_own_address_gets_the_real_client_in_its_proxy_header() {
    for (round, ipv6) in [false, true].into_iter().enumerate() {
        let scratch = Scratch::new("terminate-owned");
        let pki = service_pki(&scratch.0);
        let log = LogFile::open(scratch.0.join("connections.jsonl"));
        let (backend_address, service_address) = if ipv6 {
            (SERVER_V6.to_string(), v6(SERVER_V6, 443))
        } else {
            ("198.18.0.2".to_string(), v4(SERVER_V4, 443))
        };
        let services = services_with_backend(&pki, &from_appliance(&backend_address));
        let mut lab = lab_with(&owned_policy(&[]), services, &log);
        let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
        let local_port = 41_100 + round as u16;
        let client = lab.client.connect(service_address, local_port, 64 * 1024);
        assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Established));
        let mut tls = client_tls(&pki, "www.lab.test");
        handshake(&mut lab, client, &mut tls);
        let request = harness::pattern(40_000, 7);
        let at_backend = request_reaches_backend(&mut lab, client, &mut tls, backend, &request);

        assert_eq!(&at_backend[..12], b"\r\n\r\n\0\r\nQUIT\n");
        let length = usize::from(u16::from_be_bytes([at_backend[14], at_backend[15]]));
        let (client_address, client_port): (Vec<u8>, u16) = if ipv6 {
            assert_eq!(at_backend[12..14], [0x21, 0x21]);
            let client_v6: std::net::Ipv6Addr = CLIENT_V6.parse().unwrap();
            assert_eq!(at_backend[16..32], client_v6.octets());
            (
                at_backend[16..32].to_vec(),
                u16::from_be_bytes([at_backend[48], at_backend[49]]),
            )
        } else {
            assert_eq!(at_backend[12..14], [0x21, 0x11]);
            (
                at_backend[16..20].to_vec(),
                u16::from_be_bytes([at_backend[24], at_backend[25]]),
            )
        };
        let expected: Vec<u8> = if ipv6 {
            CLIENT_V6.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()
        } else {
            CLIENT_V4.to_vec()
        };
        assert_eq!((client_address, client_port), (expected, local_port), "the real client");
        assert_eq!(&at_backend[16 + length..], &request[..], "the plaintext, byte-exact");

        // The backend's peer is the appliance's own address.
        let remote = lab.server.tcp(backend).remote_endpoint().unwrap();
        let owned: smoltcp::wire::IpAddress = if ipv6 {
            smoltcp::wire::IpAddress::Ipv6(OWNED_V6.parse().unwrap())
        } else {
            smoltcp::wire::IpAddress::Ipv4(OWNED_V4.into())
        };
        assert_eq!(remote.addr, owned);
        assert!(remote.port >= 49_152, "an ephemeral port: {}", remote.port);

        // The response comes back through the owned address's leg.
        response_reaches_client(&mut lab, backend, client, &mut tls);
        let counters = lab.engine.splicer().counters();
        assert_eq!(counters.neighbour_requests_sent, 1, "the backend resolved once");
        assert_eq!((counters.terminated, counters.backend_refused), (1, 0));
    }
}

/// A backend off the owned prefixes goes through the gateway: the
/// appliance resolves the gateway (not the backend), and the backend's SYN
/// leaves with the gateway's MAC, from the owned address.
#[test]
fn a_routed_backend_is_reached_through_the_gateway() {
    let scratch = Scratch::new("terminate-owned-routed");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let services = services_with_backend(&pki, &from_appliance("198.18.9.2"));
    let mut lab = lab_with(&owned_policy(&["198.18.0.2"]), services, &log);
    // The server host is the router and, on another subnet, the backend.
    lab.server.second_v4_for_v6([198, 18, 9, 2]);
    lab.links[1].log = Some(Vec::new());
    let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_110);
    handshake(&mut lab, client, &mut tls);
    let at_backend = request_reaches_backend(&mut lab, client, &mut tls, backend, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(at_backend[16..20], CLIENT_V4, "the real client in PROXY v2");

    let sent = lab.links[1].log.as_ref().unwrap();
    let asked: Vec<[u8; 4]> = sent
        .iter()
        .filter(|frame| frame.get(6..14) == Some(&[2, 0, 0, 0, 0, 0x5, 0x08, 0x06][..]))
        .map(|frame| frame[38..42].try_into().unwrap())
        .collect();
    assert_eq!(
        asked,
        [[198, 18, 0, 2]],
        "one ARP request of the appliance, for the gateway"
    );
    let syn = sent
        .iter()
        .find(|frame| tcp(frame).is_some_and(|segment| segment.syn() && segment.dst_port() == BACKEND_PORT))
        .expect("the backend leg's SYN");
    assert_eq!(syn[..6], SERVER_MAC, "to the gateway's MAC");
    let ip = ipv4(syn).unwrap();
    assert_eq!(
        (ip.src_addr().octets(), ip.dst_addr().octets()),
        (OWNED_V4, [198, 18, 9, 2])
    );
}

/// A next hop that never answers: three requests a second apart, then the
/// client (whose handshake went on meanwhile) gets a RST, counted and
/// logged.
#[test]
fn a_backend_whose_next_hop_never_answers_costs_the_client_a_reset_and_a_record() {
    let scratch = Scratch::new("terminate-owned-unresolved");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let services = services_with_backend(&pki, &from_appliance("198.18.0.77"));
    let mut lab = lab_with(&owned_policy(&[]), services, &log);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_120);
    until_reset(&mut lab, client, &mut tls);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (
            counters.neighbour_requests_sent,
            counters.neighbour_unresolved,
            counters.backend_refused
        ),
        (3, 1, 1)
    );
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let record = &log.records()[0];
    assert_eq!(record["decision"], "terminate");
    assert_eq!(
        record["ended"],
        "backend unreachable: 198.18.0.77 did not answer ARP/neighbour discovery"
    );
    assert_no_leaks(&mut lab);
}

/// A segment of the backend leg to the owned address that a lossy link
/// corrupted (one bit flipped: its TCP checksum fails) is dropped as
/// invalid, as on any intercepted flow, not counted as a frame no leg took;
/// the connection goes on byte-exact.
#[test]
fn a_corrupted_segment_to_an_owned_address_is_dropped_as_invalid_and_the_leg_goes_on() {
    let scratch = Scratch::new("terminate-owned-corrupted");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let services = services_with_backend(&pki, &from_appliance("198.18.0.2"));
    let mut lab = lab_with(&owned_policy(&[]), services, &log);
    let backend = lab.server.listen(BACKEND_PORT, 64 * 1024);
    let (client, mut tls) = connect_tls(&mut lab, &pki, "www.lab.test", 41_130);
    handshake(&mut lab, client, &mut tls);
    request_reaches_backend(&mut lab, client, &mut tls, backend, b"GET / HTTP/1.1\r\n\r\n");
    let leg = lab.server.tcp(backend).remote_endpoint().unwrap();
    let mut corrupted = Vec::new();
    wire::TcpSegment {
        src_mac: SERVER_MAC,
        dst_mac: [2, 0, 0, 0, 0, 0x5],
        src: SocketAddr::from((SERVER_V4, BACKEND_PORT)),
        dst: SocketAddr::from((OWNED_V4, leg.port)),
        seq: 1,
        ack: Some(1),
        control: wire::SegmentControl::Psh,
        window: 64_240,
        payload: b"HTTP/1.1 200 OK\r\n",
    }
    .write(&mut corrupted)
    .unwrap();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0x10;
    let before = lab.totals(1);
    lab.server_port.inject(corrupted);
    lab.run_for(5);
    let after = lab.totals(1);
    assert_eq!(
        (
            after.invalid_dropped - before.invalid_dropped,
            after.dropped - before.dropped
        ),
        (1, 1),
        "{after:?}"
    );
    assert_eq!(lab.engine.splicer().counters().owned_address_dropped, 0);

    response_reaches_client(&mut lab, backend, client, &mut tls);
}

/// The backend sends a short response; the client reads it byte-exact.
fn response_reaches_client(lab: &mut Lab, backend: SocketHandle, client: SocketHandle, tls: &mut ClientConnection) {
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    lab.server.tcp(backend).send_slice(response).unwrap();
    let mut received = Vec::new();
    assert!(lab.run_until(5_000, |lab| {
        drive(&mut lab.client, client, tls, &mut received);
        received.ends_with(b"ok")
    }));
    assert_eq!(received, response);
}

/// A TCP SYN from `src` to `dst` port 22.
fn syn_to(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::TcpSegment {
        src_mac,
        dst_mac: [2, 0, 0, 0, 0, 0x5],
        src: std::net::SocketAddr::from((src, 40_000)),
        dst: std::net::SocketAddr::from((dst, 22)),
        seq: 1,
        ack: None,
        control: wire::SegmentControl::Syn,
        window: 64_240,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    frame
}

/// Frames to an owned address are the appliance's: from either port,
/// what no leg takes is dropped, never bridged; malformed ARP and
/// neighbour solicitations are neither answered nor a panic.
#[test]
fn frames_to_an_owned_address_are_never_bridged_and_bad_requests_never_panic() {
    let scratch = Scratch::new("terminate-owned-guard");
    let pki = service_pki(&scratch.0);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = lab_with(&owned_policy(&[]), services(&pki), &log);
    lab.links[1].log = Some(Vec::new());
    lab.links[3].log = Some(Vec::new());
    lab.client_port.inject(syn_to(CLIENT_MAC, CLIENT_V4, OWNED_V4));
    lab.server_port.inject(syn_to(SERVER_MAC, SERVER_V4, OWNED_V4));
    lab.run_for(5);
    let to_owned = |frames: &Vec<Vec<u8>>| {
        frames
            .iter()
            .filter(|frame| ipv4(frame).is_some_and(|ip| ip.dst_addr().octets() == OWNED_V4))
            .count()
    };
    assert_eq!(
        to_owned(lab.links[1].log.as_ref().unwrap()),
        0,
        "not bridged to the server side"
    );
    assert_eq!(
        to_owned(lab.links[3].log.as_ref().unwrap()),
        0,
        "not bridged to the client side"
    );
    assert_eq!(lab.engine.splicer().counters().owned_address_dropped, 2);

    let owned = std::net::IpAddr::from(OWNED_V4);
    let owned_v6: std::net::IpAddr = OWNED_V6.parse().unwrap();
    let requests = [
        wire::neighbour::request(SERVER_MAC, SERVER_V4.into(), owned, &[]).unwrap(),
        wire::neighbour::request(SERVER_MAC, SERVER_V6.parse().unwrap(), owned_v6, &[]).unwrap(),
    ];
    for request in &requests {
        for len in 0..request.len() {
            lab.server_port.inject(request[..len].to_vec());
        }
        for at in 0..request.len() {
            let mut bent = request.clone();
            bent[at] ^= 0x5a;
            lab.server_port.inject(bent);
        }
    }
    while lab.engine.poll(lab.now) > 0 {}
    lab.server_port.take_transmitted();
    let answered_before = lab.engine.splicer().counters().neighbour_requests_answered;
    for request in &requests {
        lab.server_port.inject(request.clone());
    }
    lab.engine.poll(lab.now);
    assert_eq!(
        lab.engine.splicer().counters().neighbour_requests_answered,
        answered_before + 2,
        "the intact requests are answered"
    );
    let answers = lab.server_port.take_transmitted();
    assert!(
        answers
            .iter()
            .all(|frame| frame[..6] == SERVER_MAC && frame[6..12] == [2, 0, 0, 0, 0, 0x5]),
        "answered with the server port's MAC"
    );
}
