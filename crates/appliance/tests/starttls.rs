//! STARTTLS interception in memory, on the virtual clock: a scripted SMTP
//! server behind the appliance and a client that upgrades with a real
//! rustls client. The preamble passes byte for byte, the upgrade is
//! intercepted (the client trusts the appliance's CA, sends no SNI as most
//! SMTP clients do, and the origin's certificate is verified for its
//! address); commands injected after STARTTLS never reach the server;
//! `require_tls` blocks plaintext mail; a server silent in the preamble is
//! reset after `tcp.starttls_timeout_ms`, one slow to answer a mail sent in
//! plaintext is not (the idle timeout applies then); an inspection box sees the
//! commands before and after the upgrade in plaintext. Each is counted and
//! logged. Then FTP active mode: a scripted FTP control connection
//! (AUTH TLS, PROT P or C, PORT/EPRT) and the data connection its server
//! opens, intercepted with the TCP roles reversed (TLS under PROT P, the
//! forged certificate of the control connection, the upstream resuming;
//! through the box under PROT C); unannounced or lapsed ones are not
//! admitted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::sync::Arc;

use appliance::config::InspectFailure;
use appliance::config::StarttlsPort;
use appliance::policy::Action;
use appliance::splice::InspectionSettings;
use harness::connlog::LogFile;
use harness::peer::Peer;
use harness::tls::{interception, origin_for, provider, Intercepting, Scratch};
use harness::{assert_no_leaks, policy, v4, BoxMode, Lab, SERVER_V4};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use smoltcp::socket::tcp::State;

type Setup = Intercepting<Lab>;

/// The appliance watching SMTP on port 25 (`require_tls` as given,
/// `tcp.starttls_timeout_ms` 2 s), logging connections, in front of an
/// origin whose certificate names mx.lab.test and the server's address.
fn setup(name: &str, require_tls: bool) -> Setup {
    setup_with(name, require_tls, false)
}

/// [`setup`], with an inspection box that passes everything when `inspect`.
fn setup_with(name: &str, require_tls: bool, inspect: bool) -> Setup {
    let smtp = StarttlsPort {
        port: 25,
        protocol: starttls::Protocol::Smtp,
        action: Action::Intercept,
        require_tls,
    };
    setup_for(name, smtp, inspect)
}

/// The appliance watching `entry`'s port, otherwise as [`setup_with`].
fn setup_for(name: &str, entry: StarttlsPort, inspect: bool) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin_for(&["mx.lab.test"], rustls::DEFAULT_VERSIONS);
    let (context, ca) = interception(&scratch, &origin_ca);
    let log = LogFile::open(scratch.0.join("connections.log"));
    let connection_log = Arc::clone(&log.log);
    let mut intercept = policy(&[]);
    intercept.starttls = vec![entry];
    intercept.limits.starttls_timeout = netstack::Duration::from_millis(2_000);
    let finish =
        |engine: appliance::engine::Engine<port::MemPort>| engine.with_tls(context).with_connection_log(connection_log);
    let lab = if inspect {
        let settings = InspectionSettings {
            failure: InspectFailure::FailClosed,
            syn_timeout: netstack::Duration::from_secs(1),
            timeout: netstack::Duration::from_secs(3),
        };
        Lab::with_inspection_and(&intercept, settings, BoxMode::Pass, finish)
    } else {
        Lab::with_engine(&intercept, finish)
    };
    Setup::new(lab, ca, origin, log, scratch)
}

/// A rustls client trusting `ca`, for the server's address (no SNI).
fn client_without_sni(ca: &CertificateDer<'static>) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let address = ServerName::IpAddress(std::net::IpAddr::from(SERVER_V4).into());
    ClientConnection::new(Arc::new(config), address).unwrap()
}

const GREETING: &[u8] = b"220 mx.lab.test ESMTP\r\n";
const EHLO_REPLY: &[u8] = b"250-mx.lab.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";

/// Runs the lab until `done`, pumping both peers; false if it never held.
fn run(
    lab: &mut Lab,
    client: &mut Peer<ClientConnection>,
    server: &mut Peer<ServerConnection>,
    mut done: impl FnMut(&mut Lab, &mut Peer<ClientConnection>, &mut Peer<ServerConnection>) -> bool,
) -> bool {
    lab.run_until(10_000, |lab| {
        client.pump(&mut lab.client);
        server.pump(&mut lab.server);
        done(lab, client, server)
    })
}

/// Connects a client to port 25 and the server greets; the client says
/// EHLO and is offered STARTTLS, byte for byte.
fn greeted(lab: &mut Lab, local_port: u16) -> (Peer<ClientConnection>, Peer<ServerConnection>) {
    let listener = lab.server.listen(25, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 25), local_port, 64 * 1024);
    let (mut client, mut server) = (Peer::new(socket), Peer::new(listener));
    let up = lab.run_until(2_000, |lab| lab.server.tcp(listener).state() == State::Established);
    assert!(up, "the server accepted");
    server.send(&mut lab.server, GREETING);
    assert!(run(lab, &mut client, &mut server, |_, client, _| client.received
        == GREETING));
    client.received.clear();
    converse(lab, &mut client, &mut server, b"EHLO client.lab.test\r\n", EHLO_REPLY);
    (client, server)
}

/// [`greeted`], then a plaintext `MAIL FROM` the server accepts.
fn mail_begun(lab: &mut Lab, local_port: u16) -> (Peer<ClientConnection>, Peer<ServerConnection>) {
    let (mut client, mut server) = greeted(lab, local_port);
    converse(
        lab,
        &mut client,
        &mut server,
        b"MAIL FROM:<a@lab.test>\r\n",
        b"250 2.1.0 Ok\r\n",
    );
    (client, server)
}

/// The client's `request` reaches the server, then the server's `reply`
/// the client, each byte for byte (both taken).
fn converse(
    lab: &mut Lab,
    client: &mut Peer<ClientConnection>,
    server: &mut Peer<ServerConnection>,
    request: &[u8],
    reply: &[u8],
) {
    client.send(&mut lab.client, request);
    assert!(run(lab, client, server, |_, _, server| server.received == request));
    server.received.clear();
    server.send(&mut lab.server, reply);
    assert!(run(lab, client, server, |_, client, _| client.received == reply));
    client.received.clear();
}

/// The client's `request` (ending in STARTTLS) reaches the server as
/// `expected`; the server answers 220 and both sides start TLS (the
/// server with the origin's certificate, the client trusting the
/// appliance's CA); a mail transaction then crosses inside TLS.
fn upgrade_and_send_mail(setup: &mut Setup, local_port: u16, request: &[u8], expected: &[u8]) {
    let lab = &mut setup.lab;
    let (mut client, mut server) = greeted(lab, local_port);
    client.send(&mut lab.client, request);
    assert!(run(lab, &mut client, &mut server, |_, _, server| server
        .received
        .ends_with(b"STARTTLS\r\n")));
    lab.run_for(50);
    server.pump(&mut lab.server);
    assert_eq!(
        server.take_if_ends(b"\r\n").unwrap(),
        expected,
        "the server got the request alone"
    );
    server.send(&mut lab.server, READY);
    server.tls = Some(ServerConnection::new(Arc::clone(&setup.origin)).unwrap());
    assert!(run(lab, &mut client, &mut server, |_, client, _| client.received == READY));
    client.received.clear();
    client.tls = Some(client_without_sni(&setup.ca));
    let mail = b"EHLO client.lab.test\r\nMAIL FROM:<a@lab.test>\r\n";
    client.send(&mut lab.client, mail);
    assert!(
        run(lab, &mut client, &mut server, |_, _, server| server.received.len()
            >= mail.len()),
        "the mail crossed inside TLS: server got {:?}",
        String::from_utf8_lossy(&server.received)
    );
    assert_eq!(server.received, mail, "only what the client sent inside TLS");
    let reply = b"250-mx.lab.test\r\n250 AUTH PLAIN\r\n250 2.1.0 Ok\r\n";
    server.send(&mut lab.server, reply);
    assert!(run(lab, &mut client, &mut server, |_, client, _| client.received == reply));
    lab.client.tcp(client.socket).close();
    lab.server.tcp(server.socket).close();
    assert!(run(lab, &mut client, &mut server, |lab, client, server| {
        matches!(lab.client.tcp(client.socket).state(), State::TimeWait | State::Closed)
            && matches!(lab.server.tcp(server.socket).state(), State::TimeWait | State::Closed)
    }));
}

/// The connection log's only record, once written.
fn record(lab: &mut Lab, log: &LogFile) -> serde_json::Value {
    assert!(lab.run_until(30_000, |_| !log.records().is_empty()), "no record");
    let mut records = log.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let validator = harness::connlog::validator();
    harness::connlog::assert_matches_schema(&validator, &records[0]);
    records.remove(0)
}

#[test]
fn smtp_starttls_is_intercepted_end_to_end_without_sni_and_logged() {
    let mut setup = setup("starttls-smtp", false);
    upgrade_and_send_mail(&mut setup, 46_000, b"STARTTLS\r\n", b"STARTTLS\r\n");
    let Setup { lab, log, .. } = &mut setup;
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (
            counters.starttls_sessions,
            counters.starttls_upgraded,
            counters.tls_intercepted,
            counters.starttls_injected_bytes_discarded
        ),
        (1, 1, 1, 0)
    );
    let record = record(lab, log);
    assert_eq!(record["starttls"], "smtp", "{record}");
    assert_eq!(record["starttls_outcome"], "upgraded");
    assert_eq!(record["starttls_discarded_bytes"], 0);
    assert_eq!(record["decision"], "intercept");
    assert_eq!(record["sni"], serde_json::Value::Null, "no SNI");
    assert_eq!(record["upstream_verified"], true, "verified for the server's address");
    assert_eq!(record["ended"], "closed");
    assert_no_leaks(lab);
}

#[test]
fn commands_injected_after_starttls_never_reach_the_server() {
    let mut setup = setup("starttls-injection", false);
    let injected = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@lab.test>\r\n";
    let mut request = b"STARTTLS\r\n".to_vec();
    request.extend_from_slice(injected);
    upgrade_and_send_mail(&mut setup, 46_100, &request, b"STARTTLS\r\n");
    let Setup { lab, log, .. } = &mut setup;
    assert_eq!(
        lab.engine.splicer().counters().starttls_injected_bytes_discarded,
        injected.len() as u64
    );
    let record = record(lab, log);
    assert_eq!(record["starttls_discarded_bytes"], injected.len(), "{record}");
    assert_eq!(record["starttls_outcome"], "upgraded");
    assert_no_leaks(lab);
}

#[test]
fn require_tls_blocks_mail_sent_in_plaintext_before_it_reaches_the_server() {
    let mut setup = setup("starttls-require", true);
    let Setup { lab, log, .. } = &mut setup;
    let (mut client, mut server) = greeted(lab, 46_200);
    client.send(&mut lab.client, b"MAIL FROM:<a@lab.test>\r\n");
    assert!(
        run(lab, &mut client, &mut server, |lab, client, _| lab
            .client
            .tcp(client.socket)
            .state()
            == State::Closed),
        "the client was reset"
    );
    assert!(server.received.is_empty(), "the mail never reached the server");
    let counters = lab.engine.splicer().counters();
    assert_eq!(counters.starttls_plaintext_blocked, 1);
    let record = record(lab, log);
    assert_eq!(record["starttls_outcome"], "blocked", "{record}");
    assert_eq!(record["decision"], "block");
    assert_eq!(record["reason"], "require_tls: smtp content before STARTTLS");
    assert_no_leaks(lab);
}

#[test]
fn a_server_silent_in_the_preamble_is_reset_after_the_starttls_timeout() {
    let mut setup = setup("starttls-timeout", false);
    let Setup { lab, log, .. } = &mut setup;
    let listener = lab.server.listen(25, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 25), 46_300, 64 * 1024);
    let up = lab.run_until(2_000, |lab| lab.client.tcp(socket).state() == State::Established);
    assert!(up);
    let started = lab.now;
    // No greeting: the client waits, the appliance's timer runs.
    let reset = lab.run_until(10_000, |lab| {
        lab.client.tcp(socket).state() == State::Closed && lab.server.tcp(listener).state() != State::Established
    });
    assert!(reset, "client {:?}", lab.client.tcp(socket).state());
    let waited = (lab.now - started).total_millis();
    assert!((2_000..3_000).contains(&waited), "reset after {waited} ms");
    assert_eq!(lab.engine.splicer().counters().starttls_timeouts, 1);
    let record = record(lab, log);
    assert_eq!(record["starttls_outcome"], "failed", "{record}");
    assert_eq!(
        record["ended"],
        "timed out: no answer from the server in the STARTTLS preamble within 2000 ms"
    );
    assert_no_leaks(lab);
}

#[test]
fn a_server_slow_to_answer_a_plaintext_mail_is_not_reset_by_the_starttls_timeout() {
    let mut setup = setup("starttls-slow-data", false);
    let Setup { lab, log, .. } = &mut setup;
    // The mail goes in plaintext: the session's content.
    let (mut client, mut server) = mail_begun(lab, 46_500);
    converse(
        lab,
        &mut client,
        &mut server,
        b"RCPT TO:<t@lab.test>\r\n",
        b"250 2.1.5 Ok\r\n",
    );
    converse(lab, &mut client, &mut server, b"DATA\r\n", b"354 End data\r\n");
    let body = b"Subject: slow\r\n\r\nbody\r\n.\r\n";
    client.send(&mut lab.client, body);
    assert!(run(lab, &mut client, &mut server, |_, _, server| server.received == body));
    // The server works on the mail for three times the STARTTLS timeout
    // (a content filter): the ordinary idle timeout applies.
    lab.run_for(6_000);
    assert_eq!(lab.client.tcp(client.socket).state(), State::Established);
    server.received.clear();
    server.send(&mut lab.server, b"250 2.0.0 Ok: queued\r\n");
    assert!(run(lab, &mut client, &mut server, |_, client, _| client.received
        == b"250 2.0.0 Ok: queued\r\n"));
    lab.client.tcp(client.socket).close();
    lab.server.tcp(server.socket).close();
    assert!(run(lab, &mut client, &mut server, |lab, client, server| {
        matches!(lab.client.tcp(client.socket).state(), State::TimeWait | State::Closed)
            && matches!(lab.server.tcp(server.socket).state(), State::TimeWait | State::Closed)
    }));
    assert_eq!(lab.engine.splicer().counters().starttls_timeouts, 0);
    let record = record(lab, log);
    assert_eq!(record["starttls_outcome"], "plaintext", "{record}");
    assert_eq!(record["ended"], "closed");
    assert_no_leaks(lab);
}

#[test]
fn an_upgrade_request_after_plaintext_content_is_still_reset_if_never_answered() {
    let mut setup = setup("starttls-late-request", false);
    let Setup { lab, log, .. } = &mut setup;
    let (mut client, mut server) = mail_begun(lab, 46_600);
    converse(lab, &mut client, &mut server, b"RSET\r\n", b"250 2.0.0 Ok\r\n");
    client.send(&mut lab.client, b"STARTTLS\r\n");
    assert!(run(lab, &mut client, &mut server, |_, _, server| server.received
        == b"STARTTLS\r\n"));
    let started = lab.now;
    let reset = lab.run_until(10_000, |lab| lab.client.tcp(client.socket).state() == State::Closed);
    assert!(reset, "client {:?}", lab.client.tcp(client.socket).state());
    let waited = (lab.now - started).total_millis();
    assert!((1_900..3_000).contains(&waited), "reset after {waited} ms");
    assert_eq!(lab.engine.splicer().counters().starttls_timeouts, 1);
    let record = record(lab, log);
    assert_eq!(
        record["ended"],
        "timed out: no answer from the server in the STARTTLS preamble within 2000 ms"
    );
    assert_no_leaks(lab);
}

#[test]
fn the_inspection_box_sees_the_preamble_and_the_upgraded_plaintext() {
    let mut setup = setup_with("starttls-inspect", false, true);
    upgrade_and_send_mail(&mut setup, 46_400, b"STARTTLS\r\n", b"STARTTLS\r\n");
    let Setup { lab, log, .. } = &mut setup;
    let seen = &lab.inspection.as_ref().unwrap();
    let up = String::from_utf8_lossy(&seen.seen_up);
    let down = String::from_utf8_lossy(&seen.seen_down);
    assert!(
        up.starts_with("EHLO client.lab.test\r\nSTARTTLS\r\nEHLO client.lab.test\r\nMAIL FROM:<a@lab.test>\r\n"),
        "the box saw the commands before and after the upgrade, in plaintext: {up:?}"
    );
    assert!(
        down.starts_with("220 mx.lab.test ESMTP\r\n250-mx.lab.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n220 2.0.0"),
        "{down:?}"
    );
    assert!(down.contains("250 AUTH PLAIN"), "{down:?}");
    assert_eq!(lab.engine.splicer().counters().inspected, 1);
    let record = record(lab, log);
    assert_eq!(record["inspection"], "inspected", "{record}");
    assert_eq!(record["starttls_outcome"], "upgraded");
    assert_no_leaks(lab);
}

// FTP active mode (PORT/EPRT): the server opens the data connection to the
// address and port the client announced on the intercepted control channel;
// the appliance answers the server as the client and connects to the client
// as the server, and under PROT P the FTP client (which accepted the TCP
// connection) is still the TLS client.

/// The appliance intercepting FTP control connections on port 21.
fn ftp_setup(name: &str, inspect: bool) -> Setup {
    let ftp = StarttlsPort {
        port: 21,
        protocol: starttls::Protocol::Ftp,
        action: Action::Intercept,
        require_tls: false,
    };
    setup_for(name, ftp, inspect)
}

/// `command` from the client reaches the server, `reply` reaches the client.
fn ftp_exchange(
    lab: &mut Lab,
    (client, server): (&mut Peer<ClientConnection>, &mut Peer<ServerConnection>),
    command: &[u8],
    reply: &[u8],
) {
    client.send(&mut lab.client, command);
    assert!(
        run(lab, client, server, |_, _, server| server.received == command),
        "the server got {:?}",
        String::from_utf8_lossy(&server.received)
    );
    server.received.clear();
    server.send(&mut lab.server, reply);
    assert!(
        run(lab, client, server, |_, client, _| client.received == reply),
        "the client got {:?}",
        String::from_utf8_lossy(&client.received)
    );
    client.received.clear();
}

/// An FTP control connection from `local_port` upgraded with AUTH TLS
/// (intercepted: the client trusts the appliance's CA), data protection
/// set by `prot` (`b"PROT P\r\n"` or `b"PROT C\r\n"`), logged in, and
/// an active data connection announced: `announce` is the command
/// (`PORT`/`EPRT`) and the server's accepting reply.
fn ftp_control(
    setup: &mut Setup,
    local_port: u16,
    prot: &[u8],
    (command, accepted): (&[u8], &[u8]),
) -> (Peer<ClientConnection>, Peer<ServerConnection>) {
    let lab = &mut setup.lab;
    let listener = lab.server.listen(21, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 21), local_port, 64 * 1024);
    let (mut client, mut server) = (Peer::new(socket), Peer::new(listener));
    let up = lab.run_until(2_000, |lab| lab.server.tcp(listener).state() == State::Established);
    assert!(up, "the server accepted");
    let greeting = b"220 (vsFTPd 3.0.3)\r\n";
    server.send(&mut lab.server, greeting);
    assert!(run(lab, &mut client, &mut server, |_, client, _| client.received
        == greeting));
    client.received.clear();
    ftp_exchange(
        lab,
        (&mut client, &mut server),
        b"AUTH TLS\r\n",
        b"234 Proceed with negotiation.\r\n",
    );
    server.tls = Some(ServerConnection::new(Arc::clone(&setup.origin)).unwrap());
    client.tls = Some(client_without_sni(&setup.ca));
    ftp_exchange(
        lab,
        (&mut client, &mut server),
        b"PBSZ 0\r\n",
        b"200 PBSZ set to 0.\r\n",
    );
    ftp_exchange(lab, (&mut client, &mut server), prot, b"200 Protection level set.\r\n");
    ftp_exchange(
        lab,
        (&mut client, &mut server),
        b"USER ftp\r\n",
        b"230 Login successful.\r\n",
    );
    ftp_exchange(lab, (&mut client, &mut server), command, accepted);
    (client, server)
}

/// The data port the client announces (PORT 198,18,0,1,195,84).
const DATA_PORT: u16 = 50_004;
const PORT_COMMAND: (&[u8], &[u8]) = (b"PORT 198,18,0,1,195,84\r\n", b"200 PORT command successful.\r\n");

/// The server opens the announced data connection (from port 20) to the
/// client listening on `to`; both ends once established.
fn server_connects(
    lab: &mut Lab,
    from: smoltcp::wire::IpEndpoint,
    to: u16,
) -> (Peer<ClientConnection>, Peer<ServerConnection>) {
    let listener = lab.client.listen(to, 64 * 1024);
    let socket = lab.server.connect_from(v4(harness::CLIENT_V4, to), from, 64 * 1024);
    let up = lab.run_until(2_000, |lab| {
        lab.client.tcp(listener).state() == State::Established && lab.server.tcp(socket).state() == State::Established
    });
    assert!(
        up,
        "data connection: client {:?}, server {:?}",
        lab.client.tcp(listener).state(),
        lab.server.tcp(socket).state()
    );
    (Peer::new(listener), Peer::new(socket))
}

/// `up` from the FTP client and `down` from the server cross the data
/// connection byte-exact (fed in pieces the sockets take), then both ends
/// close (after close_notify, under TLS).
fn cross_and_close(
    lab: &mut Lab,
    (client, server): (&mut Peer<ClientConnection>, &mut Peer<ServerConnection>),
    up: &[u8],
    down: &[u8],
) {
    let (mut pending_up, mut pending_down) = (up, down);
    assert!(
        run(lab, client, server, |lab, client, server| {
            client.feed(&mut lab.client, &mut pending_up);
            server.feed(&mut lab.server, &mut pending_down);
            server.received.len() >= up.len() && client.received.len() >= down.len()
        }),
        "crossed: {} of {} up, {} of {} down",
        server.received.len(),
        up.len(),
        client.received.len(),
        down.len()
    );
    assert!(server.received == up, "client → server bytes differ");
    assert!(client.received == down, "server → client bytes differ");
    if let Some(tls) = client.tls.as_mut() {
        tls.send_close_notify();
    }
    if let Some(tls) = server.tls.as_mut() {
        tls.send_close_notify();
    }
    client.pump(&mut lab.client);
    server.pump(&mut lab.server);
    lab.client.tcp(client.socket).close();
    lab.server.tcp(server.socket).close();
    assert!(run(lab, client, server, |lab, client, server| {
        matches!(lab.client.tcp(client.socket).state(), State::TimeWait | State::Closed)
            && matches!(lab.server.tcp(server.socket).state(), State::TimeWait | State::Closed)
    }));
}

/// Ends the control connection (QUIT) and waits for the log's `expected`
/// records (the control connection's and the admitted data connections').
fn quit(
    lab: &mut Lab,
    (mut client, mut server): (Peer<ClientConnection>, Peer<ServerConnection>),
    log: &LogFile,
    expected: usize,
) -> Vec<serde_json::Value> {
    ftp_exchange(lab, (&mut client, &mut server), b"QUIT\r\n", b"221 Goodbye.\r\n");
    cross_and_close(lab, (&mut client, &mut server), b"", b"");
    assert!(
        lab.run_until(5_000, |_| log.records().len() == expected),
        "records: {:?}",
        log.records()
    );
    let records = log.records();
    let validator = harness::connlog::validator();
    for record in &records {
        harness::connlog::assert_matches_schema(&validator, record);
    }
    records
}

#[test]
fn an_active_ftp_data_connection_under_prot_p_is_intercepted_with_the_tls_roles_reversed() {
    let mut setup = ftp_setup("ftp-active-tls", false);
    let (control_client, control_server) = ftp_control(&mut setup, 46_500, b"PROT P\r\n", PORT_COMMAND);
    let Setup {
        lab, log, ca, origin, ..
    } = &mut setup;
    assert_eq!(lab.engine.splicer().counters().ftp_data_expected, 1);
    // The server connects from port 20; the FTP client, which accepted the
    // connection, is the TLS client (RFC 4217) and trusts the appliance's CA.
    let (mut client, mut server) = server_connects(lab, v4(SERVER_V4, 20), DATA_PORT);
    client.tls = Some(client_without_sni(ca));
    server.tls = Some(ServerConnection::new(Arc::clone(origin)).unwrap());
    let (up, down) = (harness::pattern(20_000, 3), harness::pattern(150_000, 7));
    cross_and_close(lab, (&mut client, &mut server), &up, &down);
    // The client saw the certificate the appliance forged for the control
    // connection.
    let forged = |peer: &Peer<ClientConnection>| peer.tls.as_ref().unwrap().peer_certificates().unwrap()[0].clone();
    assert_eq!(
        forged(&client),
        forged(&control_client),
        "the control connection's forged certificate"
    );
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (
            counters.ftp_data_active,
            counters.ftp_data_tls,
            counters.ftp_data_clear,
            counters.tls_intercepted
        ),
        (1, 1, 0, 2)
    );
    let records = quit(lab, (control_client, control_server), log, 2);
    let data = records.iter().find(|record| record["starttls"] == "ftp-data").unwrap();
    let control = records.iter().find(|record| record["starttls"] == "ftp").unwrap();
    assert_eq!(data["decision"], "intercept", "{data}");
    assert_eq!(
        (&data["src_ip"], &data["src_port"], &data["dest_ip"], &data["dest_port"]),
        (
            &control["src_ip"],
            &serde_json::json!(DATA_PORT),
            &control["dest_ip"],
            &serde_json::json!(20)
        ),
        "logged client → server: {data}"
    );
    assert_eq!(
        data["server_resumed"], true,
        "the upstream resumed the control session: {data}"
    );
    assert_eq!(data["forged_cert_sha256"], control["forged_cert_sha256"], "{data}");
    assert!(
        data["bytes_server_to_client"].as_u64().unwrap() > down.len() as u64,
        "{data}"
    );
    assert_eq!(data["ended"], "closed");
    assert_no_leaks(lab);
}

#[test]
fn an_active_ftp_data_connection_under_prot_c_goes_through_the_inspection_box() {
    let mut setup = ftp_setup("ftp-active-clear", true);
    let (control_client, control_server) = ftp_control(
        &mut setup,
        46_600,
        b"PROT C\r\n",
        (b"EPRT |1|198.18.0.1|50004|\r\n", b"200 EPRT command successful.\r\n"),
    );
    let Setup { lab, log, .. } = &mut setup;
    let (mut client, mut server) = server_connects(lab, v4(SERVER_V4, 20), DATA_PORT);
    let (up, down) = (b"STORED FILE".to_vec(), harness::pattern(40_000, 9));
    cross_and_close(lab, (&mut client, &mut server), &up, &down);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.ftp_data_active, counters.ftp_data_clear, counters.ftp_data_tls),
        (1, 1, 0)
    );
    let seen = lab.inspection.as_ref().unwrap();
    assert!(
        seen.seen_down.windows(down.len()).any(|window| window == down),
        "the box saw the file the server sent"
    );
    assert!(
        seen.seen_up.windows(up.len()).any(|window| window == up),
        "and what the client sent"
    );
    let records = quit(lab, (control_client, control_server), log, 2);
    let data = records.iter().find(|record| record["starttls"] == "ftp-data").unwrap();
    assert_eq!(data["inspection"], "inspected", "{data}");
    assert_eq!(
        (&data["src_port"], &data["dest_port"]),
        (&serde_json::json!(DATA_PORT), &serde_json::json!(20))
    );
    assert_eq!(
        data["reason"],
        "an FTP data connection (active: the server connected, plain, PROT C) announced on an intercepted \
         control connection"
    );
    assert_no_leaks(lab);
}

#[test]
fn a_server_syn_to_an_unannounced_port_or_from_another_address_is_not_admitted() {
    let mut setup = ftp_setup("ftp-active-unexpected", false);
    let (control_client, control_server) = ftp_control(&mut setup, 46_700, b"PROT C\r\n", PORT_COMMAND);
    let Setup { lab, log, .. } = &mut setup;
    let opened = lab.engine.splicer().counters().sessions_opened;
    // Another port than announced, and another server address: bridged as
    // any connection the appliance does not intercept, no session.
    let (mut client, mut server) = server_connects(lab, v4(SERVER_V4, 20), DATA_PORT + 1);
    cross_and_close(lab, (&mut client, &mut server), b"", b"not announced");
    lab.server.second_v4_for_v6([198, 18, 0, 3]);
    let (mut client, mut server) = server_connects(lab, v4([198, 18, 0, 3], 20), DATA_PORT);
    cross_and_close(lab, (&mut client, &mut server), b"", b"another server");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.sessions_opened, counters.ftp_data_active), (opened, 0));
    // The announced one is still expected, and admitted once.
    let (mut client, mut server) = server_connects(lab, v4(SERVER_V4, 20), DATA_PORT);
    cross_and_close(lab, (&mut client, &mut server), b"", b"announced");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.sessions_opened, counters.ftp_data_active), (opened + 1, 1));
    quit(lab, (control_client, control_server), log, 2);
    assert_no_leaks(lab);
}

#[test]
fn an_announced_active_data_connection_lapses_after_30_seconds() {
    let mut setup = ftp_setup("ftp-active-lapse", false);
    let (control_client, control_server) = ftp_control(&mut setup, 46_800, b"PROT C\r\n", PORT_COMMAND);
    let Setup { lab, log, .. } = &mut setup;
    // Nothing is under way: the clock jumps.
    lab.now += netstack::Duration::from_millis(30_000);
    let opened = lab.engine.splicer().counters().sessions_opened;
    let (mut client, mut server) = server_connects(lab, v4(SERVER_V4, 20), DATA_PORT);
    cross_and_close(lab, (&mut client, &mut server), b"", b"too late");
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.sessions_opened, counters.ftp_data_active),
        (opened, 0),
        "not admitted"
    );
    quit(lab, (control_client, control_server), log, 1);
    assert_no_leaks(lab);
}
