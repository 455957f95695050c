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
use appliance::engine::{InterceptPolicy, Side};
use appliance::policy::{Action, Policy, PolicyRules, RuleConfig};
use appliance::splice::InspectionSettings;
use harness::connlog::LogFile;
use harness::tls::{drive, interception, interceptions, origin, provider, Intercepting, Scratch};
use harness::workers::{client_port_on, Workers};
use harness::{close_both, exchange, policy, v4, BoxMode, Host, Lab, CLIENT_V4, SERVER_V4};
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

/// Ports 80 and 443 intercepted under [`rules`].
fn converting() -> InterceptPolicy {
    let mut converting = policy(&[80, 443]);
    converting.rules = Policy::new(&PolicyRules::from(rules()), Arc::default(), false).unwrap();
    converting
}

/// The client and the server host of the one-worker and the several-worker
/// lab, so that the exchanges below run on either.
trait Hosts {
    fn client(&mut self) -> &mut Host;
    fn server(&mut self) -> &mut Host;
    fn run_until(&mut self, limit_ms: u64, done: impl FnMut(&mut Self) -> bool) -> bool;
}

impl Hosts for Lab {
    fn client(&mut self) -> &mut Host {
        &mut self.client
    }
    fn server(&mut self) -> &mut Host {
        &mut self.server
    }
    fn run_until(&mut self, limit_ms: u64, done: impl FnMut(&mut Self) -> bool) -> bool {
        Lab::run_until(self, limit_ms, done)
    }
}

impl Hosts for Workers {
    fn client(&mut self) -> &mut Host {
        &mut self.client
    }
    fn server(&mut self) -> &mut Host {
        &mut self.server
    }
    fn run_until(&mut self, limit_ms: u64, done: impl FnMut(&mut Self) -> bool) -> bool {
        Workers::run_until(self, limit_ms, done)
    }
}

type Setup = Intercepting<Lab>;

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
    let converting = converting();
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
    Setup::new(lab, ca, origin, log, scratch)
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
    lab: &mut impl Hosts,
    origin: Arc<rustls::ServerConfig>,
    local_port: u16,
) -> (SocketHandle, SocketHandle, ServerConnection, Vec<u8>) {
    let listener = lab.server().listen(443, 64 * 1024);
    let client = lab.client().connect(v4(SERVER_V4, 80), local_port, 64 * 1024);
    let mut server = ServerConnection::new(origin).unwrap();
    let (mut to_server, mut at_client, mut at_server) = (REQUEST, Vec::new(), Vec::new());
    let mut answered = false;
    let done = lab.run_until(10_000, |lab| {
        let mut nothing: &[u8] = &[];
        let up = if lab.client().tcp(client).state() == State::Established {
            &mut to_server
        } else {
            &mut nothing
        };
        exchange(lab.client(), client, up, &mut at_client);
        if lab.server().tcp(listener).state() == State::Established {
            drive(lab.server(), listener, &mut server, &mut at_server);
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
    lab: &mut impl Hosts,
    ca: &CertificateDer<'static>,
    name: ServerName<'static>,
    local_port: u16,
) -> (SocketHandle, SocketHandle, ClientConnection) {
    let listener = lab.server().listen(8080, 64 * 1024);
    let client = lab.client().connect(v4(SERVER_V4, 443), local_port, 64 * 1024);
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
        if lab.client().tcp(client).state() == State::Established {
            drive(lab.client(), client, &mut tls, &mut at_client);
        }
        let mut nothing: &[u8] = &[];
        let down = if at_server == REQUEST {
            &mut to_client
        } else {
            &mut nothing
        };
        exchange(lab.server(), listener, down, &mut at_server);
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

// Two workers. The moved server leg goes from the client's address and port
// to another port of the server: the flow hash may give its frames to the
// other worker, which hands them to the one holding the connection.

/// Two workers converting under [`rules`], one CA between them, and the
/// origin; the log and scratch as [`Setup`]'s.
fn two_workers(
    name: &str,
) -> (
    Workers,
    CertificateDer<'static>,
    Arc<rustls::ServerConfig>,
    LogFile,
    Scratch,
) {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin();
    let (contexts, ca) = interceptions(&scratch, &origin_ca, 2);
    let log = LogFile::open(scratch.0.join("connections.log"));
    let mut contexts = contexts.into_iter();
    let lab = Workers::new(2, &converting(), |_, engine| {
        engine
            .with_tls(contexts.next().unwrap())
            .with_connection_log(Arc::clone(&log.log))
    });
    (lab, ca, origin, log, scratch)
}

/// Runs until every worker's flows and registered legs are gone.
fn assert_all_gone(lab: &mut Workers) {
    let gone = lab.run_until(30_000, |lab| {
        lab.workers.iter().all(|worker| {
            worker.engine.stack().live_flows() == 0 && worker.engine.splicer().counters().sessions_live == 0
        })
    });
    assert!(gone, "flows or sessions left");
    for worker in &lab.workers {
        assert_eq!(
            worker.engine.handoff().unwrap().registered_legs(),
            0,
            "every moved leg's registration ended with its session"
        );
    }
}

#[test]
fn with_two_workers_a_moved_server_legs_frames_hashed_to_the_other_worker_are_handed_to_its_own() {
    let (mut lab, ca, origin, log, _scratch) = two_workers("updown-two-workers");
    let server = |port| std::net::SocketAddr::from((SERVER_V4, port));
    for worker in [0, 1] {
        // Upgraded: the client on port 80, its server leg moved to 443.
        let before = lab.totals(1 - worker, Side::Server).handed_off;
        let local_port = client_port_on(worker, server(80), Some(server(443)), 46_100);
        let (client, listener, mut tls, at_client) = upgraded_exchange(&mut lab, Arc::clone(&origin), local_port);
        assert_eq!(at_client, RESPONSE, "the response byte-exact");
        assert_eq!(
            lab.server.tcp(listener).remote_endpoint().unwrap().port,
            local_port,
            "from the client's port"
        );
        assert!(
            lab.totals(1 - worker, Side::Server).handed_off > before,
            "the origin's frames reached worker {} and were handed over",
            1 - worker
        );
        tls.send_close_notify();
        drive(&mut lab.server, listener, &mut tls, &mut Vec::new());
        lab.client.tcp(client).close();
        lab.server.tcp(listener).close();

        // Downgraded: the TLS client on 443, its server leg moved to 8080.
        let before = lab.totals(1 - worker, Side::Server).handed_off;
        let local_port = client_port_on(worker, server(443), Some(server(8080)), 46_300);
        let name = ServerName::try_from("plain.test").unwrap();
        let (client, listener, mut tls) = downgraded_exchange(&mut lab, &ca, name, local_port);
        assert!(
            lab.totals(1 - worker, Side::Server).handed_off > before,
            "the plain server's frames reached worker {} and were handed over",
            1 - worker
        );
        tls.send_close_notify();
        drive(&mut lab.client, client, &mut tls, &mut Vec::new());
        lab.client.tcp(client).close();
        lab.server.tcp(listener).close();
        assert_all_gone(&mut lab);

        // The worker that got the client's SYNs held both connections.
        let holder = lab.workers[worker].engine.splicer().counters();
        assert_eq!(
            (holder.upgraded, holder.downgraded, holder.conversion_failed),
            (1, 1, 0)
        );
    }
    let records = log.records();
    let ends: Vec<_> = records
        .iter()
        .map(|record| (record["decision"].as_str().unwrap(), record["ended"].as_str().unwrap()))
        .collect();
    assert_eq!(ends, [("upgrade", "closed"), ("downgrade", "closed")].repeat(2));
    // Every frame received on the server port, summed over the workers, was
    // bridged, taken by a stack or dropped; none was dropped.
    let totals = lab.summed(Side::Server);
    assert_eq!(
        totals.rx,
        totals.bridged + totals.intercepted + totals.dropped,
        "{totals:?}"
    );
    assert_eq!((totals.dropped, totals.handoff_dropped), (0, 0), "{totals:?}");
}

/// The ICMP error about a moved leg's SYN hashes by the leg it quotes, so
/// it may reach the other worker: handed over, it resets the client (which
/// never used the quoted port) on the worker holding the connection, and
/// goes no further.
#[test]
fn with_two_workers_an_unreachable_error_about_a_moved_leg_on_the_other_worker_resets_the_client() {
    let (mut lab, _ca, origin, log, _scratch) = two_workers("updown-two-workers-unreachable");
    let server = |port| std::net::SocketAddr::from((SERVER_V4, port));
    // A first connection: the hosts learn each other's MAC.
    let (client, listener, _, _) = upgraded_exchange(&mut lab, origin, 46_500);
    lab.client.tcp(client).close();
    lab.server.tcp(listener).close();
    assert_all_gone(&mut lab);
    lab.server_unreachable = true;
    for (round, worker) in [0, 1].into_iter().enumerate() {
        let local_port = client_port_on(worker, server(80), Some(server(443)), 46_600);
        let handed_before = lab.totals(1 - worker, Side::Server).handed_off;
        let to_client_before = lab.totals(1 - worker, Side::Client).tx;
        let client = lab.client.connect(v4(SERVER_V4, 80), local_port, 4096);
        assert!(
            lab.run_until(500, |lab| lab.client.tcp(client).state() == State::Closed),
            "the client was reset at once: {:?}",
            lab.client.tcp(client).state()
        );
        assert_eq!(lab.workers[worker].engine.splicer().counters().server_unreachable, 1);
        assert_eq!(
            lab.totals(1 - worker, Side::Server).handed_off,
            handed_before + 1,
            "the ICMP error"
        );
        assert_eq!(
            lab.totals(1 - worker, Side::Client).tx,
            to_client_before,
            "nothing went on to the client"
        );
        assert!(lab.run_until(10_000, |_| log.records().len() == round + 2));
        let record = &log.records()[round + 1];
        assert_eq!(record["ended"], "server unreachable (ICMP) on port 443", "{record}");
        assert_all_gone(&mut lab);
    }
}
