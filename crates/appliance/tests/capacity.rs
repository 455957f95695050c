//! Capacity without bypass, in memory: a full table refuses new
//! connections (never bridges them), connections that send no ClientHello,
//! finish no handshake or carry nothing are timed out, one spoofed SYN
//! costs the server one SYN, one address holds only so many embryonic
//! connections, and a spoofed SYN flood five times the table leaves a real
//! client intercepted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use harness::connlog::LogFile;
use harness::tls::Scratch;
use harness::{
    assert_no_leaks, close_both, connect, exchange, pattern, policy, tcp, transfer, v4, Lab, SERVER_MAC, SERVER_V4,
};
use mitm::{CertificateAuthority, Forger, InvalidUpstream, TlsContext, UpstreamTrust};
use netstack::Duration;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::TcpSeqNumber;
use wire::{SegmentControl, TcpSegment};

const PORT: u16 = 443;

/// Where the spoofed SYNs go: an intercepted port on an address the server
/// host does not own, so the server stays silent to them (as a real one
/// does when its SYN-ACKs go nowhere) and its listeners stay free.
const SPOOF_TARGET: [u8; 4] = [198, 18, 0, 3];

/// A TLS context with a fresh CA (trusted upstream: only itself, which no
/// test server presents; these tests never finish a handshake).
fn tls_context(scratch: &Scratch) -> TlsContext {
    let ca = CertificateAuthority::generate("tlsgate capacity test CA", 1, time::OffsetDateTime::now_utc()).unwrap();
    let bundle = scratch.0.join("trust.pem");
    std::fs::write(&bundle, ca.cert_pem()).unwrap();
    let trust = UpstreamTrust::from_bundle(&bundle).unwrap();
    TlsContext::new(
        Forger::new(ca, None, 16).unwrap(),
        trust,
        InvalidUpstream::Refuse,
        None,
        mitm::WallClock::new(time::OffsetDateTime::now_utc()),
    )
    .unwrap()
}

/// A TCP SYN from `src` (a forged source address) to `dst`, as a flooding
/// host on the client side sends it.
fn spoofed_syn(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    TcpSegment {
        src_mac: [2, 0, 0, 0, 0, 0x66],
        dst_mac: SERVER_MAC,
        src,
        dst,
        seq,
        ack: None,
        control: SegmentControl::Syn,
        window: 64_240,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    frame
}

fn spoof_target() -> SocketAddr {
    SocketAddr::from((SPOOF_TARGET, PORT))
}

/// The initial sequence numbers of the SYNs (not SYN-ACKs) from
/// `src_port` among `frames`, in order.
fn syns_from(frames: &[Vec<u8>], src_port: u16) -> Vec<TcpSeqNumber> {
    frames
        .iter()
        .filter_map(|frame| tcp(frame))
        .filter(|segment| segment.syn() && !segment.ack() && segment.src_port() == src_port)
        .map(|segment| segment.seq_number())
        .collect()
}

/// The connection from `client_port` was terminated by the appliance: the
/// server got a SYN from the client's address and port with the
/// appliance's own sequence number, not the client's.
fn assert_intercepted(lab: &Lab, client_port: u16) {
    let from_client = syns_from(lab.links[0].log.as_ref().unwrap(), client_port);
    let to_server = syns_from(lab.links[1].log.as_ref().unwrap(), client_port);
    assert!(!from_client.is_empty(), "no SYN from the client's port {client_port}");
    assert!(!to_server.is_empty(), "the server saw no SYN from port {client_port}");
    assert!(
        to_server.iter().all(|seq| !from_client.contains(seq)),
        "the client's own SYN reached the server (bridged): {from_client:?} / {to_server:?}"
    );
}

fn log_frames(lab: &mut Lab) {
    lab.links[0].log = Some(Vec::new());
    lab.links[1].log = Some(Vec::new());
}

/// Finding 4: with the table full of connections that never send a
/// ClientHello, the next client is refused at once (a RST; its SYN never
/// reaches the server), and once the ClientHello timeout (10 s by default)
/// has reset the idle connections, clients are intercepted again.
#[test]
fn a_full_table_refuses_new_connections_until_the_client_hello_timeout_frees_it() {
    const TABLE: usize = 4;
    let scratch = Scratch::new("capacity-full");
    let context = tls_context(&scratch);
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let connection_log = Arc::clone(&log.log);
    let mut policy = policy(&[PORT]);
    policy.stack.max_flows = 2 * TABLE;
    let mut lab = Lab::with_engine(&policy, |engine| {
        engine.with_tls(context).with_connection_log(connection_log)
    });
    log_frames(&mut lab);
    let idle: Vec<_> = (0..TABLE as u16)
        .map(|i| connect(&mut lab, v4(SERVER_V4, PORT), 41_000 + i))
        .collect();

    // A server that would accept it, were the SYN passed on.
    let spare = lab.server.listen(PORT, 4096);
    let refused = lab.client.connect(v4(SERVER_V4, PORT), 41_100, 4096);
    let mut was_established = false;
    let closed = lab.run_until(200, |lab| {
        was_established |= lab.client.tcp(refused).state() == State::Established;
        lab.client.tcp(refused).state() == State::Closed
    });
    assert!(closed && !was_established, "not refused at once");
    assert!(
        syns_from(lab.links[1].log.as_ref().unwrap(), 41_100).is_empty(),
        "the refused client's SYN reached the server"
    );
    lab.server.tcp(spare).abort();

    let all_reset = |lab: &mut Lab| {
        idle.iter().all(|&(client, server)| {
            lab.client.tcp(client).state() == State::Closed && lab.server.tcp(server).state() == State::Closed
        })
    };
    lab.run_for(9_000);
    assert!(!all_reset(&mut lab), "reset before the ClientHello timeout");
    assert!(
        lab.run_until(2_000, all_reset),
        "idle connections without a ClientHello still open"
    );
    assert!(lab.run_until(100, |lab| lab.engine.stack().live_flows() == 0));

    connect(&mut lab, v4(SERVER_V4, PORT), 41_200);
    assert_intercepted(&lab, 41_200);

    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (
            counters.refused_at_capacity,
            counters.bridged_at_capacity,
            counters.client_hello_timeouts
        ),
        (1, 0, TABLE as u64)
    );
    let records = log.text();
    let refusal = records
        .lines()
        .find(|line| line.contains("\"src_ip\":\"198.18.0.1\"") && line.contains("\"src_port\":41100,"))
        .expect("a record of the refused connection");
    assert!(refusal.contains("\"decision\":\"refuse\""), "{refusal}");
    // The refusal is a record the documented schema knows.
    let record: serde_json::Value = serde_json::from_str(refusal).expect("a JSON record");
    harness::connlog::assert_matches_schema(&harness::connlog::validator(), &record);
    assert!(refusal.contains("tcp.max_connections"), "{refusal}");
    assert_eq!(
        records.matches("no complete ClientHello within 10000 ms").count(),
        TABLE
    );
}

/// With `tcp.at_capacity = "bridge"` (the explicit opt-in) a connection
/// the full table has no room for passes uninspected: the server gets the
/// client's own SYN. Counted.
#[test]
fn bridging_at_capacity_is_an_explicit_choice() {
    let mut policy = policy(&[PORT]);
    policy.stack.max_flows = 2;
    policy.limits.max_sessions = 1;
    policy.limits.at_capacity = appliance::config::AtCapacity::Bridge;
    let mut lab = Lab::new(&policy);
    log_frames(&mut lab);
    connect(&mut lab, v4(SERVER_V4, PORT), 41_450);
    assert_intercepted(&lab, 41_450);
    connect(&mut lab, v4(SERVER_V4, PORT), 41_451);
    let from_client = syns_from(lab.links[0].log.as_ref().unwrap(), 41_451);
    assert_eq!(syns_from(lab.links[1].log.as_ref().unwrap(), 41_451), from_client);
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.bridged_at_capacity, counters.refused_at_capacity), (1, 0));
}

/// Connections that closed both ways, whose legs still wait out
/// TIME-WAIT, make way for new ones on a full table (nothing is refused).
#[test]
fn closed_connections_in_time_wait_make_way_on_a_full_table() {
    const TABLE: usize = 2;
    let mut policy = policy(&[PORT]);
    policy.stack.max_flows = 2 * TABLE;
    policy.limits.max_sessions = TABLE;
    let mut lab = Lab::new(&policy);
    log_frames(&mut lab);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 41_400);
    transfer(&mut lab, client, server, b"request", b"response", 1_000);
    close_both(&mut lab, client, server);
    assert!(lab.engine.stack().live_flows() > 0, "no leg waits out TIME-WAIT");
    assert_eq!(lab.engine.splicer().counters().sessions_live, 1);
    let open: Vec<_> = (1..=TABLE as u16)
        .map(|i| connect(&mut lab, v4(SERVER_V4, PORT), 41_400 + i))
        .collect();
    for i in 1..=TABLE as u16 {
        assert_intercepted(&lab, 41_400 + i);
    }
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.time_wait_reclaimed, counters.refused_at_capacity), (1, 0));
    for (client, server) in open {
        close_both(&mut lab, client, server);
    }
    assert_no_leaks(&mut lab);
}

/// Finding 5: a SYN whose client never retransmits it (a spoofed source)
/// makes the server leg send one SYN, not one per retransmission timer, and
/// its flows are gone when the server stays silent for `tcp.timeout_ms`.
#[test]
fn one_spoofed_syn_costs_the_server_one_syn_and_its_flows_end_with_the_timeout() {
    let mut lab = Lab::new(&policy(&[PORT]));
    log_frames(&mut lab);
    let source = SocketAddr::from(([198, 19, 7, 7], 5555));
    lab.client_port.inject(spoofed_syn(source, spoof_target(), 1));
    lab.run_for(10);
    assert_eq!(lab.engine.stack().live_flows(), 2, "the SYN was not intercepted");
    // The harness's tcp.timeout_ms is 3 s.
    assert!(lab.run_until(3_100, |lab| lab.engine.stack().live_flows() == 0));
    lab.run_for(5_000);
    assert_eq!(syns_from(lab.links[1].log.as_ref().unwrap(), 5555).len(), 1);
    assert!(lab.engine.stack().counters().syn_retransmits_withheld > 0);
    assert_no_leaks(&mut lab);
}

/// A real client's own SYN retransmissions still reach the server: each
/// makes the server leg send its SYN again, so lost SYNs on the server side
/// are repaired at the client's pace.
#[test]
fn a_client_retransmitting_its_syn_makes_the_server_leg_retransmit_with_it() {
    let mut lab = Lab::new(&policy(&[PORT]));
    // A first connection, so that the hosts know each other's MAC address.
    let (client, listener) = connect(&mut lab, v4(SERVER_V4, PORT), 41_299);
    close_both(&mut lab, client, listener);
    log_frames(&mut lab);
    let listener = lab.server.listen(PORT, 4096);
    let client = lab.client.connect(v4(SERVER_V4, PORT), 41_300, 4096);
    // The first SYN towards the server is lost (the client retransmits
    // after 1 s; the server leg times out after tcp.timeout_ms, 3 s).
    lab.server_online = false;
    lab.run_for(500);
    lab.server_online = true;
    assert!(lab.run_until(2_000, |lab| {
        lab.client.tcp(client).state() == State::Established && lab.server.tcp(listener).state() == State::Established
    }));
    let from_client = syns_from(lab.links[0].log.as_ref().unwrap(), 41_300);
    let to_server = syns_from(lab.links[1].log.as_ref().unwrap(), 41_300);
    assert!(from_client.len() >= 2, "the client did not retransmit: {from_client:?}");
    assert_eq!(to_server.len(), from_client.len());
    assert_intercepted(&lab, 41_300);
    close_both(&mut lab, client, listener);
    assert_no_leaks(&mut lab);
}

/// One address opening connections it never completes holds at most
/// `tcp.max_embryonic_per_client` of them; its further SYNs are dropped
/// (counted), other addresses are still admitted.
#[test]
fn one_client_address_holds_only_so_many_embryonic_connections() {
    let mut policy = policy(&[PORT]);
    policy.limits.max_embryonic_per_client = 4;
    let mut lab = Lab::new(&policy);
    log_frames(&mut lab);
    for port in 6_000..6_010 {
        lab.client_port.inject(spoofed_syn(
            SocketAddr::from(([198, 19, 9, 9], port)),
            spoof_target(),
            u32::from(port),
        ));
    }
    lab.run_for(10);
    let to_server = lab.links[1].log.as_ref().unwrap();
    let admitted = (6_000..6_010)
        .filter(|&port| !syns_from(to_server, port).is_empty())
        .count();
    assert_eq!(admitted, 4);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.embryonic_live, counters.embryonic_client_limit_dropped),
        (4, 6)
    );
    lab.client_port.inject(spoofed_syn(
        SocketAddr::from(([198, 19, 9, 10], 7_000)),
        spoof_target(),
        7,
    ));
    lab.run_for(10);
    assert_eq!(lab.engine.splicer().counters().embryonic_live, 5);
    assert_no_leaks(&mut lab);
}

/// A spoofed SYN flood from random addresses at five times the table per
/// `tcp.timeout_ms` (the time a silent server leg holds its flows) while a
/// real client opens connections one after the other: every one of them is
/// intercepted (the appliance's own SYN reaches the server) and carries its
/// data, because embryonic connections may take only half of the table and
/// the oldest of them make way for new SYNs.
#[test]
fn a_spoofed_syn_flood_five_times_the_table_leaves_a_real_client_intercepted() {
    const TABLE: usize = 100;
    const TIMEOUT_MS: u64 = 3_000;
    let mut policy = policy(&[PORT]);
    policy.stack.max_flows = 2 * TABLE;
    policy.stack.timeout = Duration::from_millis(TIMEOUT_MS);
    policy.limits.max_sessions = TABLE;
    let mut lab = Lab::new(&policy);
    log_frames(&mut lab);
    let every_ms = TIMEOUT_MS / (5 * TABLE as u64);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // One SYN in `every_ms` milliseconds on average, at random moments (a
    // flood at a fixed period would free and take table slots in step).
    let mut flood = move |lab: &mut Lab| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if !rng.is_multiple_of(every_ms) {
            return;
        }
        let [_, a, b, c, d, ..] = rng.to_le_bytes();
        // Random sources in 198.19.0.0/16: within the lab's range, never a lab host.
        let source = SocketAddr::from((Ipv4Addr::new(198, 19, a, b), u16::from_le_bytes([c, d]) | 1024));
        lab.client_port.inject(spoofed_syn(source, spoof_target(), rng as u32));
    };
    for _ in 0..TIMEOUT_MS {
        flood(&mut lab);
        lab.step();
    }
    assert!(
        lab.engine.splicer().counters().embryonic_evicted > 0,
        "the flood did not fill the table"
    );

    for i in 0..5u16 {
        let local_port = 42_000 + i;
        let listener = lab.server.listen(PORT, 64 * 1024);
        let client = lab.client.connect(v4(SERVER_V4, PORT), local_port, 64 * 1024);
        let up = lab.run_until(2_000, |lab| {
            flood(lab);
            lab.client.tcp(client).state() == State::Established
                && lab.server.tcp(listener).state() == State::Established
        });
        assert!(up, "connection {i} not established during the flood");
        let (request, response) = (pattern(20_000, i as u8), pattern(50_000, 100 + i as u8));
        let (mut to_server, mut to_client) = (&request[..], &response[..]);
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        let done = lab.run_until(10_000, |lab| {
            flood(lab);
            exchange(&mut lab.client, client, &mut to_server, &mut at_client);
            exchange(&mut lab.server, listener, &mut to_client, &mut at_server);
            at_server.len() == request.len() && at_client.len() == response.len()
        });
        assert!(
            done && at_server == request && at_client == response,
            "transfer {i} failed during the flood"
        );
        assert_intercepted(&lab, local_port);
        close_both(&mut lab, client, listener);
    }
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.refused_at_capacity, counters.bridged_at_capacity), (0, 0));
    assert!(counters.embryonic_live <= TABLE as u64 / 2, "{counters:?}");
    assert_no_leaks(&mut lab);
}

/// The idle timeout resets a connection that carries nothing for that long
/// (both ends, counted), and never one that keeps carrying bytes, however
/// slowly.
#[test]
fn the_idle_timeout_resets_only_connections_that_carry_nothing() {
    let mut policy = policy(&[PORT]);
    policy.limits.idle_timeout = Some(Duration::from_secs(5));
    let mut lab = Lab::new(&policy);
    let quiet = connect(&mut lab, v4(SERVER_V4, PORT), 41_500);
    let busy = connect(&mut lab, v4(SERVER_V4, PORT), 41_501);
    let mut received = Vec::new();
    let state = |lab: &mut Lab, (client, server): (SocketHandle, SocketHandle)| {
        (lab.client.tcp(client).state(), lab.server.tcp(server).state())
    };
    for second in 0..12 {
        lab.client.tcp(busy.0).send_slice(&[second]).unwrap();
        for _ in 0..1_000 {
            exchange(&mut lab.server, busy.1, &mut &[][..], &mut received);
            lab.step();
        }
        if second == 3 {
            assert_eq!(state(&mut lab, quiet), (State::Established, State::Established));
        }
    }
    assert_eq!(state(&mut lab, quiet), (State::Closed, State::Closed));
    assert_eq!(state(&mut lab, busy), (State::Established, State::Established));
    assert_eq!(received, (0..12).collect::<Vec<u8>>());
    assert_eq!(lab.engine.splicer().counters().idle_timeouts, 1);
    transfer(&mut lab, busy.0, busy.1, b"still", b"here", 1_000);
    close_both(&mut lab, busy.0, busy.1);
    assert_no_leaks(&mut lab);
}

/// A ClientHello whose handshakes never finish (the server accepts TCP but
/// never answers TLS) is reset after the handshake timeout, not before.
#[test]
fn tls_handshakes_that_do_not_finish_are_timed_out() {
    let scratch = Scratch::new("capacity-handshake");
    let context = tls_context(&scratch);
    let mut policy = policy(&[PORT]);
    policy.limits.handshake_timeout = Duration::from_secs(2);
    let mut lab = Lab::with_engine(&policy, |engine| engine.with_tls(context));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 41_600);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("origin.test").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut hello).unwrap();
    }
    lab.client.tcp(client).send_slice(&hello).unwrap();
    let mut upstream_hello = Vec::new();
    lab.run_for(1_500);
    exchange(&mut lab.server, server, &mut &[][..], &mut upstream_hello);
    assert!(!upstream_hello.is_empty(), "the appliance sent no ClientHello upstream");
    assert_eq!(lab.client.tcp(client).state(), State::Established);
    assert!(
        lab.run_until(1_000, |lab| lab.client.tcp(client).state() == State::Closed
            && lab.server.tcp(server).state() == State::Closed)
    );
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.handshake_timeouts, counters.client_hello_timeouts), (1, 0));
    assert_no_leaks(&mut lab);
}
