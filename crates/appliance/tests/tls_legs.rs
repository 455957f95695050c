//! The two TLS legs of an intercepted connection, in memory: the client is
//! shown the version the origin gave and both legs are graded in the
//! connection log; an origin that speaks only legacy TLS is blocked by
//! default with its cause logged, or passed through raw over a fresh server
//! connection when a rule bypasses it; a ClientHello with Encrypted Client
//! Hello follows `tls.ech` (intercepted on its public name by default, so
//! the client falls back and its retry without ECH is intercepted); the
//! handshake and connection latency histograms are fed on the engine clock,
//! and the server name counted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::sync::Arc;

use appliance::policy::{Action, Condition, Policy, PolicyRules, RuleConfig};
use harness::connlog::LogFile;
use harness::tls::{client_tls, drive, interception, origin_for, provider, tls_exchange, Intercepting, Scratch};
use harness::{assert_no_leaks, close_both, exchange, policy, v4, Lab, SERVER_V4};
use rustls::client::{EchConfig, EchMode};
use rustls::pki_types::{CertificateDer, EchConfigListBytes, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

type Setup = Intercepting<Lab>;

/// The appliance intercepting port 443 with `rules` and `tls.ech = ech`,
/// logging connections, in front of an origin for origin.test and
/// public.test speaking `versions`.
fn setup(
    name: &str,
    rules: &[RuleConfig],
    ech: Action,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin_for(&["origin.test", "public.test"], versions);
    let (context, ca) = interception(&scratch, &origin_ca);
    let log = LogFile::open(scratch.0.join("connections.log"));
    let connection_log = Arc::clone(&log.log);
    let mut intercept = policy(&[443]);
    intercept.rules = Policy::new(&PolicyRules::from(rules.to_vec()), std::sync::Arc::default(), false)
        .unwrap()
        .with_ech(ech);
    let lab = Lab::with_engine(&intercept, |engine| {
        engine.with_tls(context).with_connection_log(connection_log)
    });
    Setup::new(lab, ca, origin, log, scratch)
}

fn rule(action: Action, when: Condition) -> RuleConfig {
    RuleConfig {
        action,
        dst: vec![],
        src: vec![],
        port: vec![],
        sni: vec![],
        no_sni: None,
        when: Some(when),
        udp: None,
        server_port: None,
        server_name: None,
    }
}

/// The connection log's records once it has `count` of them, each checked
/// against the documented schema.
fn records(lab: &mut Lab, log: &LogFile, count: usize) -> Vec<serde_json::Value> {
    let written = lab.run_until(30_000, |_| log.records().len() >= count);
    assert!(written, "connection log: {:?}", log.records());
    log.records()
}

/// A rustls client on a host socket and a rustls origin on another
/// exchange a request and a response through the appliance, then close;
/// returns the client connection.
fn https_exchange(
    lab: &mut Lab,
    origin: &Arc<ServerConfig>,
    mut client: ClientConnection,
    local_port: u16,
) -> ClientConnection {
    let listener = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    let mut server = ServerConnection::new(Arc::clone(origin)).unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    let response = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    tls_exchange(
        lab,
        (socket, listener),
        (&mut client, &mut server),
        (&request, &response),
        10_000,
    );
    close_both(lab, socket, listener);
    client
}

#[test]
fn a_tls12_origin_is_shown_as_tls12_and_both_legs_are_graded() {
    let Setup {
        mut lab,
        ca,
        origin,
        log,
        _scratch,
    } = setup("legs-tls12", &[], Action::Intercept, &[&rustls::version::TLS12]);
    // The client offers TLS 1.3 and 1.2; the origin speaks only 1.2.
    let client = https_exchange(&mut lab, &origin, client_tls(&ca), 45_100);
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2),
        "the client is shown the origin's version, not TLS 1.3"
    );
    let record = records(&mut lab, &log, 1).remove(0);
    for leg in ["client", "server"] {
        assert_eq!(record[format!("{leg}_tls_version")], "TLSv1_2", "{record}");
        assert_eq!(record[format!("{leg}_forward_secrecy")], true, "{record}");
        assert_eq!(record[format!("{leg}_grade")], "A", "{record}");
    }
    assert_eq!(
        record["client_cipher"], record["server_cipher"],
        "the origin's suite on both legs (same certificate type)"
    );
    assert_eq!(record["ech"], false);
    assert_no_leaks(&mut lab);
}

/// What a TLS 1.2 server with only CBC suites answers to an offer of
/// ECDHE and AEAD suites: a fatal handshake_failure alert.
const HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

/// Whether `bytes` start with a whole TLS record.
fn whole_record(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && bytes.len() >= 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]))
}

/// A client sends a real ClientHello to a fake legacy origin that answers
/// the appliance's ClientHello with handshake_failure on its first
/// connection; returns the hello, the client socket and a second listener
/// for a fresh connection.
fn meet_a_legacy_origin(setup: &mut Setup, local_port: u16) -> (Vec<u8>, SocketHandle, SocketHandle) {
    let lab = &mut setup.lab;
    let first = lab.server.listen(443, 64 * 1024);
    let second = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
    let mut hello = Vec::new();
    client_tls(&setup.ca).write_tls(&mut hello).unwrap();
    let (mut to_server, mut upstream_hello, mut ignored) = (hello.as_slice(), Vec::new(), Vec::new());
    let asked = lab.run_until(5_000, |lab| {
        exchange(&mut lab.client, socket, &mut to_server, &mut ignored);
        exchange(&mut lab.server, first, &mut &[][..], &mut upstream_hello);
        whole_record(&upstream_hello)
    });
    assert!(asked, "the appliance's ClientHello reached the origin");
    assert_ne!(upstream_hello, hello, "the appliance sent its own ClientHello");
    let mut alert = &HANDSHAKE_FAILURE[..];
    exchange(&mut lab.server, first, &mut alert, &mut ignored);
    assert!(alert.is_empty());
    (hello, socket, second)
}

#[test]
fn an_origin_speaking_only_legacy_tls_is_blocked_by_default_with_its_cause() {
    let mut setup = setup("legs-legacy-block", &[], Action::Intercept, rustls::DEFAULT_VERSIONS);
    let (_, socket, second) = meet_a_legacy_origin(&mut setup, 45_200);
    let Setup { lab, log, .. } = &mut setup;
    let mut at_client = Vec::new();
    let reset = lab.run_until(5_000, |lab| {
        exchange(&mut lab.client, socket, &mut &[][..], &mut at_client);
        lab.client.tcp(socket).state() == State::Closed
    });
    assert!(reset, "client: {:?}", lab.client.tcp(socket).state());
    assert!(at_client.is_empty(), "nothing of the origin reached the client");
    assert_eq!(lab.server.tcp(second).state(), State::Listen, "no second connection");
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.legacy_upstream, counters.blocked, counters.tls_failed),
        (1, 1, 0)
    );
    let record = records(lab, log, 1).remove(0);
    assert_eq!(record["decision"], "block", "{record}");
    assert_eq!(
        record["reason"],
        "default: block origin speaks only legacy TLS: it refused an offer of [TLSv1_3, TLSv1_2] \
         with ECDHE and AEAD suites (HandshakeFailure alert)"
    );
    assert_eq!(record["ended"], "blocked by policy");
    assert_no_leaks(lab);
}

#[test]
fn a_rule_bypasses_a_legacy_origin_over_a_fresh_server_connection() {
    let bypass = RuleConfig {
        sni: vec!["origin.test".into()],
        port: vec![443],
        ..rule(Action::Bypass, Condition::LegacyUpstream)
    };
    let mut setup = setup(
        "legs-legacy-bypass",
        &[bypass],
        Action::Intercept,
        rustls::DEFAULT_VERSIONS,
    );
    let (hello, socket, second) = meet_a_legacy_origin(&mut setup, 45_300);
    let Setup { lab, log, .. } = &mut setup;
    // The origin's second connection gets the client's own ClientHello,
    // and what it answers reaches the client untouched.
    let answer = b"\x16\x03\x01\x00\x04legacy server bytes".to_vec();
    let (mut at_origin, mut at_client) = (Vec::new(), Vec::new());
    let mut to_client = answer.as_slice();
    let passed = lab.run_until(10_000, |lab| {
        exchange(&mut lab.client, socket, &mut &[][..], &mut at_client);
        if lab.server.tcp(second).state() == State::Established {
            exchange(&mut lab.server, second, &mut &[][..], &mut at_origin);
        }
        if at_origin == hello {
            exchange(&mut lab.server, second, &mut to_client, &mut Vec::new());
        }
        at_client == answer
    });
    assert!(
        passed,
        "origin got {} of {} hello bytes, client got {:?}",
        at_origin.len(),
        hello.len(),
        at_client
    );
    close_both(lab, socket, second);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.legacy_upstream, counters.bypassed, counters.blocked),
        (1, 1, 0)
    );
    let record = records(lab, log, 1).remove(0);
    assert_eq!(record["decision"], "bypass", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .starts_with("policy rule 1 (bypass) matched origin speaks only legacy TLS: it refused an offer"),
        "{record}"
    );
    assert_eq!(record["ended"], "closed");
    assert_no_leaks(lab);
}

/// An ECHConfigList (RFC 9849, version 0xfe0d) for `public_name` with a
/// fresh X25519 HPKE key: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
/// AES-128-GCM. The appliance never has the private key, as with any
/// real site.
fn ech_config_list(public_name: &str) -> Vec<u8> {
    use rustls::crypto::hpke::Hpke;
    let suite = rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_AES_128;
    let (public_key, _private_key) = suite.generate_key_pair().unwrap();
    let with_len16 = |body: &[u8]| [&(body.len() as u16).to_be_bytes()[..], body].concat();
    let mut contents = vec![7]; // config_id
    contents.extend_from_slice(&0x0020u16.to_be_bytes()); // kem_id
    contents.extend(with_len16(&public_key.0));
    contents.extend(with_len16(&[0x00, 0x01, 0x00, 0x01])); // HKDF-SHA256, AES-128-GCM
    contents.push(0); // maximum_name_length
    contents.push(public_name.len() as u8);
    contents.extend_from_slice(public_name.as_bytes());
    contents.extend(with_len16(&[])); // extensions
    let mut config = 0xfe0du16.to_be_bytes().to_vec();
    config.extend(with_len16(&contents));
    with_len16(&config)
}

/// A client that trusts the appliance CA and offers ECH for inner.test
/// with public.test as the public name.
fn ech_client(ca: &CertificateDer<'static>) -> ClientConnection {
    let list = ech_config_list("public.test");
    let ech = EchConfig::new(
        EchConfigListBytes::from(list),
        rustls::crypto::aws_lc_rs::hpke::ALL_SUPPORTED_SUITES,
    )
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_ech(EchMode::from(ech))
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("inner.test").unwrap()).unwrap()
}

#[test]
fn ech_is_intercepted_on_the_public_name_and_the_client_retries_without_it() {
    let Setup {
        mut lab,
        ca,
        origin,
        log,
        _scratch,
    } = setup("legs-ech", &[], Action::Intercept, rustls::DEFAULT_VERSIONS);
    let listener = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_400, 64 * 1024);
    let mut client = ech_client(&ca);
    let mut server = ServerConnection::new(Arc::clone(&origin)).unwrap();
    // rustls fails the connection once it sees ECH rejected (after
    // verifying the server for the public name), so drive it by hand.
    let mut error = None;
    let mut at_server = Vec::new();
    let rejected = lab.run_until(10_000, |lab| {
        if lab.server.tcp(listener).state() == State::Established {
            drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        let socket = lab.client.tcp(socket);
        let mut records = Vec::new();
        while socket.may_send() && client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        if !records.is_empty() {
            socket.send_slice(&records).unwrap();
        }
        while socket.can_recv() && error.is_none() {
            let mut buf = vec![0u8; 16 * 1024];
            let read = socket.recv_slice(&mut buf).unwrap_or(0);
            let mut input = &buf[..read];
            while !input.is_empty() && error.is_none() {
                client.read_tls(&mut input).unwrap();
                error = client.process_new_packets().err();
            }
        }
        error.is_some()
    });
    assert!(
        rejected,
        "the ECH client finished without an error: handshaking {}, {:?}, log {:?}",
        client.is_handshaking(),
        lab.engine.splicer().counters(),
        log.text()
    );
    assert!(
        matches!(
            error,
            Some(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerRejectedEncryptedClientHello(_)
            ))
        ),
        "the client observed ECH rejected: {error:?}"
    );
    assert_eq!(
        client.ech_status(),
        rustls::client::EchStatus::Rejected,
        "rejected after verifying the forged certificate for the public name"
    );
    let mut ech_alert = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut ech_alert).unwrap();
    }
    lab.client.tcp(socket).send_slice(&ech_alert).unwrap();
    lab.client.tcp(socket).close();
    lab.server.tcp(listener).close();
    let record = records(&mut lab, &log, 1).remove(0);
    assert_eq!(record["ech"], true, "{record}");
    assert_eq!(record["sni"], "public.test");
    assert_eq!(record["decision"], "intercept");
    assert_eq!(
        record["reason"],
        "tls.ech = intercept_outer: an Encrypted Client Hello (public name public.test)"
    );
    assert_eq!(
        record["ended"],
        "TLS failed: TLS with the client: received fatal alert: EncryptedClientHelloRequired \
         (the client saw ECH rejected and retries without it)"
    );
    assert_eq!(lab.engine.splicer().counters().ech_offered, 1);

    // The client's retry without ECH (as the ECH specification has it) is
    // intercepted like any other connection.
    https_exchange(&mut lab, &origin, client_tls(&ca), 45_401);
    let retried = records(&mut lab, &log, 2).remove(1);
    assert_eq!(retried["ech"], false, "{retried}");
    assert_eq!(retried["decision"], "intercept");
    assert_eq!(retried["upstream_verified"], true);
    assert_eq!(lab.engine.splicer().counters().tls_intercepted, 1);
    assert_no_leaks(&mut lab);
}

#[test]
fn ech_can_be_blocked_or_bypassed_by_policy_or_rule() {
    // tls.ech = "block": the client is reset.
    let mut blocking = setup("legs-ech-block", &[], Action::Block, rustls::DEFAULT_VERSIONS);
    let lab = &mut blocking.lab;
    let listener = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_500, 64 * 1024);
    let mut hello = Vec::new();
    ech_client(&blocking.ca).write_tls(&mut hello).unwrap();
    let mut to_server = hello.as_slice();
    let reset = lab.run_until(5_000, |lab| {
        exchange(&mut lab.client, socket, &mut to_server, &mut Vec::new());
        lab.client.tcp(socket).state() == State::Closed
    });
    assert!(reset, "client: {:?}", lab.client.tcp(socket).state());
    let record = records(lab, &blocking.log, 1).remove(0);
    assert_eq!(record["decision"], "block", "{record}");
    assert_eq!(
        record["reason"],
        "tls.ech = block: an Encrypted Client Hello (public name public.test)"
    );
    lab.server.tcp(listener).abort();
    assert_no_leaks(lab);

    // A `when = "ech"` rule bypasses it even so: the origin receives the
    // client's hello untouched.
    let bypass = RuleConfig {
        sni: vec!["public.test".into()],
        ..rule(Action::Bypass, Condition::Ech)
    };
    let mut bypassing = setup("legs-ech-bypass", &[bypass], Action::Block, rustls::DEFAULT_VERSIONS);
    let lab = &mut bypassing.lab;
    let listener = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_501, 64 * 1024);
    let mut hello = Vec::new();
    ech_client(&bypassing.ca).write_tls(&mut hello).unwrap();
    let (mut to_server, mut at_origin) = (hello.as_slice(), Vec::new());
    let passed = lab.run_until(5_000, |lab| {
        exchange(&mut lab.client, socket, &mut to_server, &mut Vec::new());
        exchange(&mut lab.server, listener, &mut &[][..], &mut at_origin);
        at_origin.len() >= hello.len()
    });
    assert!(
        passed && at_origin == hello,
        "the origin got the client's hello as sent"
    );
    close_both(lab, socket, listener);
    let record = records(lab, &bypassing.log, 1).remove(0);
    assert_eq!(record["decision"], "bypass", "{record}");
    assert!(record["reason"].as_str().unwrap().starts_with("policy rule 1 (bypass)"));
    assert_no_leaks(lab);
}

#[test]
fn handshake_and_connection_times_and_the_server_name_are_counted() {
    let Setup {
        mut lab,
        ca,
        origin,
        log,
        _scratch,
    } = setup("legs-latency", &[], Action::Intercept, rustls::DEFAULT_VERSIONS);
    let started = lab.now;
    https_exchange(&mut lab, &origin, client_tls(&ca), 45_700);
    records(&mut lab, &log, 1);
    let elapsed = (lab.now - started).total_micros() as f64 / 1e6;
    let counters = lab.engine.splicer().counters();
    let (handshakes, connections) = (counters.handshake_seconds, counters.connection_seconds);
    assert_eq!((handshakes.count(), connections.count()), (1, 1), "{counters:?}");
    // Round trips take virtual milliseconds: the handshakes some, the
    // whole connection more, and no more than the test's own time.
    assert!(handshakes.sum_seconds() >= 0.002, "{handshakes:?}");
    assert!(
        handshakes.sum_seconds() < connections.sum_seconds(),
        "{handshakes:?} {connections:?}"
    );
    assert!(
        connections.sum_seconds() <= elapsed,
        "{connections:?} within {elapsed} s"
    );
    let names = lab.engine.splicer().top_sni().entries().to_vec();
    assert_eq!(
        names,
        [appliance::topnames::NameCount {
            sni: "origin.test".into(),
            count: 1
        }]
    );
    assert_no_leaks(&mut lab);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        counters.connection_seconds.count(),
        1,
        "observed once, not again when the legs are freed"
    );
}
