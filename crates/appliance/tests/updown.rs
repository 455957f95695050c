//! Upgrade and downgrade (`[[policy]]` actions decided at the SYN) end to
//! end in memory, on the virtual clock: a plain client on port 80 reaches a
//! rustls origin on 443 through the appliance's TLS, the origin's
//! certificate verified against the upstream trust (one that does not
//! verify costs the client a RST and never sees the plaintext); a rustls
//! client on 443 gets a certificate forged for its SNI and the plain server
//! on 8080 the plaintext, from the client's own address. The plaintext goes
//! round the inspection box. Both are counted and logged with their
//! decision.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::io::Write;
use std::sync::Arc;

use appliance::config::InspectFailure;
use appliance::policy::{Action, Policy, PolicyRules, RuleConfig};
use appliance::splice::InspectionSettings;
use harness::connlog::LogFile;
use harness::tls::{drive, interception, origin, provider, Scratch};
use harness::{close_both, exchange, policy, v4, BoxMode, Lab, CLIENT_V4, SERVER_V4};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// Upgrades port 80 to the origin's TLS on 443 (verified as origin.test),
/// downgrades 443 to plain 8080.
fn rules() -> Vec<RuleConfig> {
    let rule = |action, port, server_port, server_name: Option<&str>| RuleConfig {
        action,
        dst: vec!["198.18.0.2".into()],
        src: vec![],
        port: vec![port],
        sni: vec![],
        no_sni: None,
        when: None,
        udp: None,
        server_port: Some(server_port),
        server_name: server_name.map(str::to_owned),
    };
    vec![
        rule(Action::Upgrade, 80, 443, Some("origin.test")),
        rule(Action::Downgrade, 443, 8080, None),
    ]
}

struct Setup {
    lab: Lab,
    /// The appliance's CA (a downgraded client trusts it).
    ca: CertificateDer<'static>,
    origin: Arc<rustls::ServerConfig>,
    log: LogFile,
    _scratch: Scratch,
}

/// The appliance with [`rules`] in front of an origin for origin.test; its
/// upstream trust is the origin's CA, or another one (`trusted: false`).
fn setup(name: &str, trusted: bool) -> Setup {
    setup_inspected(name, trusted, None)
}

/// [`setup`] with the plaintext through an in-memory inspection box in
/// `inspection` mode.
fn setup_inspected(name: &str, trusted: bool, inspection: Option<BoxMode>) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin();
    let trust = if trusted { origin_ca } else { harness::tls::origin().1 };
    let (context, ca) = interception(&scratch, &trust);
    let log = LogFile::open(scratch.0.join("connections.log"));
    let connection_log = Arc::clone(&log.log);
    let mut converting = policy(&[80, 443]);
    converting.rules = Policy::new(&PolicyRules::from(rules()), Arc::default(), false).unwrap();
    let finish = |engine: appliance::engine::Engine<_>| engine.with_tls(context).with_connection_log(connection_log);
    let lab = match inspection {
        Some(mode) => {
            let settings = InspectionSettings {
                failure: InspectFailure::FailClosed,
                syn_timeout: netstack::Duration::from_millis(1_000),
                timeout: netstack::Duration::from_millis(3_000),
            };
            Lab::with_inspection_and(&converting, settings, mode, finish)
        }
        None => Lab::with_engine(&converting, finish),
    };
    Setup {
        lab,
        ca,
        origin,
        log,
        _scratch: scratch,
    }
}

/// The connection log's only record, checked against the schema.
fn only_record(lab: &mut Lab, log: &LogFile) -> serde_json::Value {
    assert!(lab.run_until(10_000, |_| !log.records().is_empty()));
    let mut records = log.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = records.remove(0);
    harness::connlog::assert_matches_schema(&harness::connlog::validator(), &record);
    record
}

/// A plain client on `local_port` sends [`REQUEST`] to port 80; the
/// rustls origin on 443 answers [`RESPONSE`] once the request arrived.
/// Returns the client's and the origin's sockets, the origin's TLS, and
/// what the client received.
fn upgraded_exchange(
    lab: &mut Lab,
    origin: Arc<rustls::ServerConfig>,
    local_port: u16,
) -> (SocketHandle, SocketHandle, ServerConnection, Vec<u8>) {
    let listener = lab.server.listen(443, 64 * 1024);
    let client = lab.client.connect(v4(SERVER_V4, 80), local_port, 64 * 1024);
    let mut server = ServerConnection::new(origin).unwrap();
    let (mut to_server, mut at_client, mut at_server) = (REQUEST, Vec::new(), Vec::new());
    let mut answered = false;
    let done = lab.run_until(10_000, |lab| {
        let mut nothing: &[u8] = &[];
        let up = if lab.client.tcp(client).state() == State::Established {
            &mut to_server
        } else {
            &mut nothing
        };
        exchange(&mut lab.client, client, up, &mut at_client);
        if lab.server.tcp(listener).state() == State::Established {
            drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        if at_server == REQUEST && !answered {
            answered = true;
            server.writer().write_all(RESPONSE).unwrap();
        }
        at_client.len() >= RESPONSE.len()
    });
    assert!(done, "exchange: {} request bytes at the origin", at_server.len());
    assert_eq!(at_server, REQUEST);
    (client, listener, server, at_client)
}

#[test]
fn a_plain_client_is_upgraded_to_the_origins_verified_tls_on_another_port() {
    let Setup {
        mut lab,
        origin,
        log,
        _scratch,
        ..
    } = setup("updown-upgrade", true);
    let (client, listener, mut server, at_client) = upgraded_exchange(&mut lab, origin, 46_000);
    assert_eq!(at_client, RESPONSE);
    assert_eq!(server.server_name(), Some("origin.test"), "server_name is the SNI");
    assert!(server.protocol_version().is_some(), "the origin spoke TLS");
    // The origin sees the client's own address and port.
    let remote = lab.server.tcp(listener).remote_endpoint().unwrap();
    assert_eq!(
        (remote.addr, remote.port),
        (IpAddress::from(std::net::Ipv4Addr::from(CLIENT_V4)), 46_000)
    );
    server.send_close_notify();
    drive(&mut lab.server, listener, &mut server, &mut Vec::new());
    close_both(&mut lab, client, listener);

    let record = only_record(&mut lab, &log);
    assert_eq!(record["decision"], "upgrade", "{record}");
    assert_eq!(record["dest_port"], 80, "{record}");
    assert_eq!(record["sni"], "origin.test", "{record}");
    assert_eq!(record["upstream_verified"], true, "{record}");
    assert_eq!(record["server_tls_version"], "TLSv1_3", "{record}");
    assert_eq!(record["plaintext_client_to_server"], REQUEST.len(), "{record}");
    assert_eq!(record["plaintext_server_to_client"], RESPONSE.len(), "{record}");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.upgraded, counters.conversion_failed), (1, 0));
}

#[test]
fn an_upgraded_connections_plaintext_goes_through_the_inspection_box_both_ways() {
    let Setup {
        mut lab,
        origin,
        _scratch,
        ..
    } = setup_inspected("updown-inspected", true, Some(BoxMode::Rewrite(b"hello", b"HELLO")));
    let (client, listener, _server, at_client) = upgraded_exchange(&mut lab, origin, 46_003);
    assert!(at_client.ends_with(b"HELLO"), "the box's version reached the client");
    let inspection = lab.inspection.as_ref().unwrap();
    assert_eq!(inspection.seen_up, REQUEST, "the box saw the plain request");
    assert!(inspection.seen_down.ends_with(b"HELLO"));
    close_both(&mut lab, client, listener);
}

#[test]
fn an_upgraded_client_is_reset_and_its_plaintext_kept_from_an_origin_whose_certificate_does_not_verify() {
    let Setup {
        mut lab,
        origin,
        log,
        _scratch,
        ..
    } = setup("updown-untrusted", false);
    let listener = lab.server.listen(443, 64 * 1024);
    let client = lab.client.connect(v4(SERVER_V4, 80), 46_001, 64 * 1024);
    let mut server = ServerConnection::new(origin).unwrap();
    let (mut to_server, mut at_client, mut at_server) = (REQUEST, Vec::new(), Vec::new());
    let reset = lab.run_until(10_000, |lab| {
        if lab.client.tcp(client).state() == State::Established {
            exchange(&mut lab.client, client, &mut to_server, &mut at_client);
        }
        if lab.server.tcp(listener).state() == State::Established {
            // The client's alert fails the origin's handshake: expected.
            let _ = harness::tls::try_drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        lab.client.tcp(client).state() == State::Closed && to_server.is_empty()
    });
    assert!(reset, "client: {:?}", lab.client.tcp(client).state());
    assert!(at_server.is_empty() && at_client.is_empty(), "no plaintext crossed");
    let record = only_record(&mut lab, &log);
    assert_eq!(record["decision"], "upgrade", "{record}");
    assert_eq!(record["upstream_verified"], false, "{record}");
    assert!(record["ended"].as_str().unwrap().starts_with("TLS failed"), "{record}");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.upgraded, counters.conversion_failed), (0, 1));
}

/// A rustls client trusting the appliance CA `ca` connects to port 443 as
/// `name` from `local_port`, sends [`REQUEST`]; the plain server on 8080
/// answers [`RESPONSE`] once the request arrived. Returns the client's and
/// the server's sockets and the client's TLS.
fn downgraded_exchange(
    lab: &mut Lab,
    ca: &CertificateDer<'static>,
    name: ServerName<'static>,
    local_port: u16,
) -> (SocketHandle, SocketHandle, ClientConnection) {
    let listener = lab.server.listen(8080, 64 * 1024);
    let client = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tls = ClientConnection::new(Arc::new(config), name).unwrap();
    tls.writer().write_all(REQUEST).unwrap();
    let (mut to_client, mut at_client, mut at_server) = (RESPONSE, Vec::new(), Vec::new());
    let done = lab.run_until(10_000, |lab| {
        if lab.client.tcp(client).state() == State::Established {
            drive(&mut lab.client, client, &mut tls, &mut at_client);
        }
        let mut nothing: &[u8] = &[];
        let down = if at_server == REQUEST {
            &mut to_client
        } else {
            &mut nothing
        };
        exchange(&mut lab.server, listener, down, &mut at_server);
        at_client == RESPONSE
    });
    assert!(done, "exchange: {} request bytes at the server", at_server.len());
    assert_eq!(at_server, REQUEST, "plaintext, byte-exact, on the server's port 8080");
    (client, listener, tls)
}

#[test]
fn a_tls_client_is_downgraded_with_a_certificate_forged_for_its_sni_to_the_plain_server() {
    let Setup {
        mut lab,
        ca,
        log,
        _scratch,
        ..
    } = setup("updown-downgrade", true);
    let name = ServerName::try_from("plain.test").unwrap();
    let (client, listener, mut tls) = downgraded_exchange(&mut lab, &ca, name, 46_002);
    assert_eq!(
        tls.alpn_protocol(),
        None,
        "no ALPN: the plain server speaks what the client does without"
    );
    let remote = lab.server.tcp(listener).remote_endpoint().unwrap();
    assert_eq!(
        (remote.addr, remote.port),
        (IpAddress::from(std::net::Ipv4Addr::from(CLIENT_V4)), 46_002)
    );
    tls.send_close_notify();
    drive(&mut lab.client, client, &mut tls, &mut Vec::new());
    close_both(&mut lab, client, listener);

    let record = only_record(&mut lab, &log);
    assert_eq!(record["decision"], "downgrade", "{record}");
    assert_eq!(record["sni"], "plain.test", "{record}");
    assert!(record["forged_cert_sha256"].is_string(), "{record}");
    assert_eq!(record["client_tls_version"], "TLSv1_3", "{record}");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.downgraded, counters.conversion_failed), (1, 0));
}

#[test]
fn a_downgraded_client_without_sni_gets_a_certificate_for_the_destination_address() {
    let Setup {
        mut lab,
        ca,
        log,
        _scratch,
        ..
    } = setup("updown-downgrade-ip", true);
    let name = ServerName::IpAddress(std::net::IpAddr::from(SERVER_V4).into());
    let (client, listener, _tls) = downgraded_exchange(&mut lab, &ca, name, 46_006);
    close_both(&mut lab, client, listener);
    let record = only_record(&mut lab, &log);
    assert_eq!(record["sni"], serde_json::Value::Null, "{record}");
    assert_eq!(record["decision"], "downgrade", "{record}");
}

#[test]
fn an_upgraded_client_whose_moved_server_leg_is_unreachable_is_reset_not_left_waiting() {
    let Setup {
        mut lab,
        origin,
        log,
        _scratch,
        ..
    } = setup("updown-unreachable", true);
    // A first connection: the hosts learn each other's MAC.
    let (client, listener, _, _) = upgraded_exchange(&mut lab, origin, 46_005);
    close_both(&mut lab, client, listener);
    assert!(lab.run_until(10_000, |_| !log.records().is_empty()));
    lab.server_online = false;
    lab.server_unreachable = true;
    let client = lab.client.connect(v4(SERVER_V4, 80), 46_004, 4096);
    // The ICMP error quotes port 443, which the client never used: it gets
    // a RST instead, at once rather than after its SYN retransmissions.
    assert!(lab.run_until(500, |lab| lab.client.tcp(client).state() == State::Closed));
    assert_eq!(lab.engine.splicer().counters().server_unreachable, 1);
    assert!(lab.run_until(10_000, |_| log.records().len() == 2));
    let record = &log.records()[1];
    assert_eq!(record["ended"], "server unreachable (ICMP) on port 443", "{record}");
}
