//! FTP interception on two workers, in memory on the virtual clock: the
//! control connection is held by worker 0, and its passive data
//! connection's SYN is hashed to worker 1, which hands it (and every later
//! frame of the data connection, both ways) to worker 0. The data crosses
//! byte-exact, intercepted as TLS under PROT P and in plaintext under
//! PROT C; a SYN that finds the owner's inbox full is dropped (counted,
//! never bridged) and its retransmission gets through; an expectation
//! that lapsed or whose control connection ended is no longer handed over.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use appliance::config::StarttlsPort;
use appliance::distribution::worker_for;
use appliance::engine::Side;
use appliance::policy::Action;
use harness::connlog::LogFile;
use harness::peer::Peer;
use harness::tls::{client_tls, drive, interceptions, origin, Intercepting, Scratch};
use harness::workers::{client_port_on, Workers};
use harness::{exchange, policy, v4, SERVER_V4};
use rustls::{ClientConnection, ServerConfig, ServerConnection};
use smoltcp::socket::tcp::State;

/// The control connection's worker.
const OWNER: usize = 0;
/// The worker the data connections' SYNs are hashed to.
const OTHER: usize = 1;
const SERVER_FTP: u16 = 21;

type Setup = Intercepting<Workers>;

/// Two workers intercepting FTP on port 21, one CA between them.
fn setup(name: &str) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin();
    let (contexts, ca) = interceptions(&scratch, &origin_ca, 2);
    let log = LogFile::open(scratch.0.join("connections.log"));
    let mut intercept = policy(&[]);
    intercept.starttls = vec![StarttlsPort {
        port: SERVER_FTP,
        protocol: starttls::Protocol::Ftp,
        action: Action::Intercept,
        require_tls: false,
    }];
    let mut contexts = contexts.into_iter();
    let lab = Workers::new(2, &intercept, |_, engine| {
        engine
            .with_tls(contexts.next().unwrap())
            .with_connection_log(Arc::clone(&log.log))
    });
    Setup::new(lab, ca, origin, log, scratch)
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::from((SERVER_V4, port))
}

type Client = Peer<ClientConnection>;
type Server = Peer<ServerConnection>;

/// Runs until `done`, pumping both ends of the control connection.
fn run(
    lab: &mut Workers,
    client: &mut Client,
    server: &mut Server,
    mut done: impl FnMut(&mut Client, &mut Server) -> bool,
) -> bool {
    lab.run_until(10_000, |lab| {
        client.pump(&mut lab.client);
        server.pump(&mut lab.server);
        done(client, server)
    })
}

/// The client sends `command`, the server answers `reply` once it has it,
/// and the client gets the reply byte-exact.
fn command(lab: &mut Workers, client: &mut Client, server: &mut Server, command: &[u8], reply: &[u8]) {
    client.send(&mut lab.client, command);
    assert!(
        run(lab, client, server, |_, server| server.received == command),
        "the server got {:?}",
        String::from_utf8_lossy(&server.received)
    );
    server.received.clear();
    server.send(&mut lab.server, reply);
    assert!(
        run(lab, client, server, |client, _| client.received == reply),
        "the client got {:?}",
        String::from_utf8_lossy(&client.received)
    );
    client.received.clear();
}

/// A control connection from a client port that lands on [`OWNER`],
/// upgraded with AUTH TLS (the client trusting the appliance's CA), with
/// data protection `prot` (b"P" or b"C").
fn logged_in(setup: &mut Setup, prot: &[u8]) -> (Client, Server) {
    let origin = Arc::clone(&setup.origin);
    logged_in_to(setup, &origin, prot, 47_000)
}

/// [`logged_in`] from the first client port from `first_port` that lands
/// on [`OWNER`], to a server speaking TLS with `origin`.
fn logged_in_to(setup: &mut Setup, origin: &Arc<ServerConfig>, prot: &[u8], first_port: u16) -> (Client, Server) {
    let lab = &mut setup.lab;
    let local_port = client_port_on(OWNER, server(SERVER_FTP), None, first_port);
    let listener = lab.server.listen(SERVER_FTP, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, SERVER_FTP), local_port, 64 * 1024);
    let (mut client, mut server) = (Peer::new(socket), Peer::new(listener));
    assert!(lab.run_until(2_000, |lab| lab.server.tcp(listener).state() == State::Established));
    let greeting = b"220 ftp.lab.test\r\n";
    server.send(&mut lab.server, greeting);
    assert!(run(lab, &mut client, &mut server, |client, _| client.received == greeting));
    client.received.clear();
    command(
        lab,
        &mut client,
        &mut server,
        b"AUTH TLS\r\n",
        b"234 Proceed with negotiation.\r\n",
    );
    client.tls = Some(client_tls(&setup.ca));
    server.tls = Some(ServerConnection::new(Arc::clone(origin)).unwrap());
    command(
        lab,
        &mut client,
        &mut server,
        b"USER ftp\r\n",
        b"331 Please specify the password.\r\n",
    );
    command(
        lab,
        &mut client,
        &mut server,
        b"PASS ftp\r\n",
        b"230 Login successful.\r\n",
    );
    command(lab, &mut client, &mut server, b"PBSZ 0\r\n", b"200 PBSZ set to 0.\r\n");
    let prot_command = [b"PROT ", prot, b"\r\n"].concat();
    command(lab, &mut client, &mut server, &prot_command, b"200 PROT now set.\r\n");
    (client, server)
}

/// The client asks for a passive data connection, the server listens on
/// `data_port` and announces it.
fn announce(lab: &mut Workers, client: &mut Client, server: &mut Server, data_port: u16) {
    let reply = format!("229 Entering Extended Passive Mode (|||{data_port}|)\r\n");
    command(lab, client, server, b"EPSV\r\n", reply.as_bytes());
}

/// A client port whose connection to `data_port` is hashed to [`OTHER`].
fn data_client_port(data_port: u16, first: u16) -> u16 {
    client_port_on(OTHER, server(data_port), None, first)
}

/// The file the server sends on a data connection.
fn file() -> Vec<u8> {
    (0..48 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The client connects from `local_port` to `data_port` and the server
/// sends [`file`] (in TLS when `tls`); both close; returns what the client
/// received.
fn download(setup: &mut Setup, data_port: u16, local_port: u16, tls: bool) -> Vec<u8> {
    let origin = Arc::clone(&setup.origin);
    download_from(setup, &origin, data_port, local_port, tls)
}

/// [`download`] from a server speaking TLS with `origin`.
fn download_from(setup: &mut Setup, origin: &Arc<ServerConfig>, data_port: u16, local_port: u16, tls: bool) -> Vec<u8> {
    let lab = &mut setup.lab;
    let listener = lab.server.listen(data_port, 128 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, data_port), local_port, 128 * 1024);
    assert!(
        lab.run_until(5_000, |lab| lab.server.tcp(listener).state() == State::Established),
        "the data connection reached the server"
    );
    let file = file();
    let mut received = Vec::new();
    if tls {
        let mut server_tls = ServerConnection::new(Arc::clone(origin)).unwrap();
        let mut client_tls = client_tls(&setup.ca);
        std::io::Write::write_all(&mut server_tls.writer(), &file).unwrap();
        server_tls.send_close_notify();
        let done = lab.run_until(10_000, |lab| {
            drive(&mut lab.server, listener, &mut server_tls, &mut Vec::new());
            drive(&mut lab.client, socket, &mut client_tls, &mut received);
            received.len() == file.len()
        });
        assert!(done, "{} bytes", received.len());
    } else {
        let mut outgoing = &file[..];
        let done = lab.run_until(10_000, |lab| {
            exchange(&mut lab.server, listener, &mut outgoing, &mut Vec::new());
            exchange(&mut lab.client, socket, &mut &[][..], &mut received);
            received.len() == file.len()
        });
        assert!(done, "{} bytes", received.len());
    }
    lab.server.tcp(listener).close();
    lab.client.tcp(socket).close();
    received
}

/// Closes the control connection and runs until every worker's flows,
/// sessions, registrations and expectations are gone.
fn end_and_assert_all_gone(lab: &mut Workers, client: Client, server: Server) {
    lab.client.tcp(client.socket).close();
    lab.server.tcp(server.socket).close();
    let gone = lab.run_until(30_000, |lab| {
        lab.workers.iter().all(|worker| {
            worker.engine.stack().live_flows() == 0 && worker.engine.splicer().counters().sessions_live == 0
        })
    });
    assert!(gone, "flows or sessions left");
    for worker in &lab.workers {
        let handoff = worker.engine.handoff().unwrap();
        assert_eq!(
            handoff.registered_legs(),
            0,
            "every data connection's registration ended"
        );
        assert_eq!(handoff.expected_ftp_data(), 0, "no expectation left");
    }
}

fn passive_data_connection_steered_to_the_other_worker(prot: &[u8], tls: bool) {
    let mut setup = setup(&format!("ftp-workers-prot-{}", String::from_utf8_lossy(prot)));
    let (mut client, mut server) = logged_in(&mut setup, prot);
    let data_port = 40_021;
    announce(&mut setup.lab, &mut client, &mut server, data_port);
    let local_port = data_client_port(data_port, 48_000);
    let received = download(&mut setup, data_port, local_port, tls);
    assert!(
        received == file(),
        "byte-exact: {} of {} bytes",
        received.len(),
        file().len()
    );
    let lab = &mut setup.lab;
    // Worker 1 opened nothing: it handed the SYN and every later frame,
    // from both ports, to worker 0, which intercepted the data connection.
    let other = lab.workers[OTHER].engine.splicer().counters();
    assert_eq!((other.sessions_opened, other.ftp_data_handed_over), (0, 1));
    let owner = lab.workers[OWNER].engine.splicer().counters();
    assert_eq!(owner.sessions_opened, 2, "the control and the data connection");
    assert_eq!(
        (owner.ftp_data_expected, owner.ftp_data_tls, owner.ftp_data_clear),
        (1, u64::from(tls), u64::from(!tls))
    );
    assert!(lab.totals(OTHER, Side::Client).handed_off > 1, "the client's frames");
    assert!(lab.totals(OTHER, Side::Server).handed_off > 1, "the server's frames");
    assert_eq!(lab.totals(OTHER, Side::Client).bridged, 0, "nothing bridged");
    assert_eq!(lab.totals(OTHER, Side::Server).bridged, 0, "nothing bridged");
    end_and_assert_all_gone(lab, client, server);
    let records = setup.log.records();
    let data = records
        .iter()
        .find(|record| record["dest_port"] == data_port)
        .expect("the data connection's record");
    assert_eq!(data["starttls"], "ftp-data", "{data}");
    if tls {
        assert_eq!(data["server_resumed"], true, "the control's session resumed: {data}");
    }
}

#[test]
fn a_prot_p_data_connection_hashed_to_the_other_worker_is_intercepted_as_tls_by_the_control_connections() {
    passive_data_connection_steered_to_the_other_worker(b"P", true);
}

#[test]
fn a_prot_c_data_connection_hashed_to_the_other_worker_is_relayed_by_the_control_connections() {
    passive_data_connection_steered_to_the_other_worker(b"C", false);
}

#[test]
fn a_data_syn_that_finds_the_owners_inbox_full_is_dropped_not_bridged_and_its_retransmission_gets_through() {
    let mut setup = setup("ftp-workers-inbox-full");
    let (mut client, mut server) = logged_in(&mut setup, b"P");
    let data_port = 40_022;
    announce(&mut setup.lab, &mut client, &mut server, data_port);
    let lab = &mut setup.lab;
    // Worker 0's inbox fills up (256 frames) before the SYN comes.
    let other = lab.workers[OTHER].engine.handoff().unwrap();
    while other.hand(OWNER, Side::Client, b"filler").is_ok() {}
    let local_port = data_client_port(data_port, 48_100);
    let socket = lab.client.connect(v4(SERVER_V4, data_port), local_port, 64 * 1024);
    lab.client.poll(lab.now);
    let syns = std::mem::take(&mut lab.client.device.tx);
    assert_eq!(syns.len(), 1, "the SYN");
    assert_eq!(worker_for(&syns[0], 2), OTHER);
    lab.workers[OTHER].client_port.inject(syns[0].clone());
    lab.workers[OTHER].engine.poll(lab.now);
    assert!(
        lab.workers[OTHER].server_port.take_transmitted().is_empty(),
        "not bridged"
    );
    assert_eq!(lab.totals(OTHER, Side::Client).handoff_dropped, 1);
    assert_eq!(lab.totals(OTHER, Side::Client).bridged, 0);
    assert_eq!(lab.workers[OTHER].engine.splicer().counters().ftp_data_handed_over, 0);
    // Worker 0 drains its inbox (the filler is dropped); the client's
    // retransmitted SYN is handed over and the data connection opens.
    let listener = lab.server.listen(data_port, 64 * 1024);
    assert!(
        lab.run_until(5_000, |lab| lab.server.tcp(listener).state() == State::Established),
        "the retransmission got through"
    );
    assert_eq!(lab.workers[OTHER].engine.splicer().counters().ftp_data_handed_over, 1);
    assert_eq!(lab.workers[OWNER].engine.splicer().counters().ftp_data_tls, 1);
    lab.client.tcp(socket).abort();
    lab.server.tcp(listener).abort();
    end_and_assert_all_gone(lab, client, server);
}

#[test]
fn an_expectation_that_lapsed_or_whose_control_connection_ended_is_not_handed_over() {
    let mut setup = setup("ftp-workers-lapsed");
    let (mut client, mut server) = logged_in(&mut setup, b"P");
    announce(&mut setup.lab, &mut client, &mut server, 40_023);
    let lab = &mut setup.lab;
    let other = lab.workers[OTHER].engine.handoff().unwrap();
    assert_eq!(other.expected_ftp_data(), 1, "worker 1 sees worker 0's");
    // 30 s later the announcement lapsed: the SYN is not handed over (it
    // is an ordinary connection to a port nothing intercepts).
    lab.now += netstack::Duration::from_secs(30);
    let listener = lab.server.listen(40_023, 64 * 1024);
    let socket = lab
        .client
        .connect(v4(SERVER_V4, 40_023), data_client_port(40_023, 48_200), 64 * 1024);
    assert!(lab.run_until(5_000, |lab| lab.server.tcp(listener).state() == State::Established));
    assert_eq!(lab.workers[OTHER].engine.splicer().counters().ftp_data_handed_over, 0);
    assert!(lab.totals(OTHER, Side::Client).bridged > 0, "bridged by worker 1");
    lab.client.tcp(socket).abort();
    lab.server.tcp(listener).abort();
    // A new announcement; the control connection ends before its data
    // connection comes: worker 0 forgot it for both workers.
    announce(lab, &mut client, &mut server, 40_024);
    assert_eq!(
        lab.workers[OTHER].engine.handoff().unwrap().expected_ftp_data(),
        1,
        "the lapsed one went"
    );
    end_and_assert_all_gone(lab, client, server);
    let listener = lab.server.listen(40_024, 64 * 1024);
    let socket = lab
        .client
        .connect(v4(SERVER_V4, 40_024), data_client_port(40_024, 48_300), 64 * 1024);
    assert!(lab.run_until(5_000, |lab| lab.server.tcp(listener).state() == State::Established));
    let counters = lab.workers[OTHER].engine.splicer().counters();
    assert_eq!((counters.ftp_data_handed_over, counters.sessions_opened), (0, 0));
    lab.client.tcp(socket).abort();
    lab.server.tcp(listener).abort();
}

/// An FTP server process of its own for one control connection, as
/// vsftpd forks one: its TLS sessions are its own (stateful, single-use
/// TLS 1.3 tickets, two per full handshake), so a data connection resumes
/// only a session its own control connection (or an earlier data
/// connection of it) received.
fn own_process(origin: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = (**origin).clone();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    Arc::new(config)
}

#[test]
fn each_control_connections_data_connections_resume_its_own_upstream_session_with_several_control_connections_at_once()
{
    let mut setup = setup("ftp-workers-own-sessions");
    let controls = 3;
    let origins: Vec<_> = (0..controls).map(|_| own_process(&setup.origin)).collect();
    // All logged in at once on one worker: each upstream handshake's
    // tickets arrive before any data connection.
    let mut logged: Vec<_> = origins
        .iter()
        .enumerate()
        .map(|(index, origin)| logged_in_to(&mut setup, origin, b"P", 47_000 + 500 * index as u16))
        .collect();
    let mut data_ports = Vec::new();
    for round in 0..2u16 {
        // Each announces a data connection before any opens.
        let ports: Vec<u16> = (0..controls as u16).map(|index| 40_100 + 10 * round + index).collect();
        for ((client, server), &port) in logged.iter_mut().zip(&ports) {
            announce(&mut setup.lab, client, server, port);
        }
        for (index, &port) in ports.iter().enumerate() {
            let local_port = data_client_port(port, 48_400 + 200 * index as u16 + 50 * round);
            let received = download_from(&mut setup, &origins[index], port, local_port, true);
            assert!(received == file(), "control {index} round {round}: byte-exact");
        }
        data_ports.extend(ports);
    }
    let (last_client, last_server) = logged.pop().unwrap();
    for (client, server) in logged {
        setup.lab.client.tcp(client.socket).close();
        setup.lab.server.tcp(server.socket).close();
    }
    end_and_assert_all_gone(&mut setup.lab, last_client, last_server);
    let records = setup.log.records();
    for port in data_ports {
        let data = records
            .iter()
            .find(|record| record["dest_port"] == port)
            .expect("the data connection's record");
        assert_eq!(data["starttls"], "ftp-data", "{data}");
        assert_eq!(
            data["server_resumed"], true,
            "resumed a session of its own control connection's server: {data}"
        );
    }
}
