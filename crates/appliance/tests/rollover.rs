//! Two workers sharing the directory of their sessions: a frame of one
//! worker's connection that reaches the other (af_packet's fanout rolls a
//! frame over to another socket when one is full) is dropped and counted
//! there, neither bridged nor opened as a new connection; frames of
//! connections no worker holds still pass as through a cable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use appliance::directory::SessionDirectory;
use appliance::engine::{Engine, EngineStats};
use netstack::Instant;
use port::{MemPort, MemPortControl};
use wire::{SegmentControl, TcpSegment};

struct Worker {
    engine: Engine<MemPort>,
    client: MemPortControl,
    server: MemPortControl,
    stats: EngineStats,
}

fn worker(directory: &Arc<SessionDirectory>) -> Worker {
    let (client_port, client) = MemPort::new([2, 0, 0, 0, 0, 0xc]);
    let (server_port, server) = MemPort::new([2, 0, 0, 0, 0, 0x5]);
    let stats = EngineStats::default();
    let engine = Engine::new(
        client_port,
        server_port,
        stats.clone(),
        32,
        &harness::policy(&[443]),
        harness::start(),
    )
    .with_directory(Arc::clone(directory));
    Worker {
        engine,
        client,
        server,
        stats,
    }
}

fn segment(src: &str, dst: &str, seq: u32, ack: Option<u32>, control: SegmentControl, payload: &[u8]) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let (src_mac, dst_mac) = if dst.port() == 443 {
        (harness::CLIENT_MAC, harness::SERVER_MAC)
    } else {
        (harness::SERVER_MAC, harness::CLIENT_MAC)
    };
    let mut frame = Vec::new();
    TcpSegment {
        src_mac,
        dst_mac,
        src,
        dst,
        seq,
        ack,
        control,
        window: 64_000,
        payload,
    }
    .write(&mut frame)
    .unwrap();
    frame
}

const CLIENT: &str = "198.18.0.1:40000";
const SERVER: &str = "198.18.0.2:443";

/// TCP flags (SYN, ACK, RST) of each frame.
fn flags(frames: &[Vec<u8>]) -> Vec<(bool, bool, bool)> {
    frames
        .iter()
        .map(|frame| {
            let class = wire::classify(frame).unwrap();
            let (_, info) = class.tcp().unwrap();
            (info.flags.syn, info.flags.ack, info.flags.rst)
        })
        .collect()
}

#[test]
fn frames_of_another_workers_connection_are_dropped_not_bridged() {
    let directory = Arc::new(SessionDirectory::default());
    let (mut a, mut b) = (worker(&directory), worker(&directory));
    let now = Instant::ZERO;

    // Worker A takes the client's SYN: a session, and the server leg's SYN.
    let syn = segment(CLIENT, SERVER, 1000, None, SegmentControl::Syn, &[]);
    a.client.inject(syn.clone());
    a.engine.poll(now);
    assert_eq!(a.engine.splicer().counters().sessions_opened, 1);
    let to_server = a.server.take_transmitted();
    assert_eq!(flags(&to_server), [(true, false, false)]);
    let server_leg_isn = wire::classify(&to_server[0]).unwrap().tcp().unwrap().1.seq_number;

    // The same connection's frames reaching worker B: the client's data,
    // a retransmitted SYN, the server's SYN-ACK. All dropped and counted.
    let data = segment(
        CLIENT,
        SERVER,
        1001,
        Some(5000),
        SegmentControl::Psh,
        b"GET / HTTP/1.1\r\n",
    );
    let synack = segment(
        SERVER,
        CLIENT,
        7000,
        Some(server_leg_isn.wrapping_add(1)),
        SegmentControl::Syn,
        &[],
    );
    b.client.inject(data.clone());
    b.client.inject(syn);
    b.server.inject(synack.clone());
    b.engine.poll(now);
    assert!(b.server.take_transmitted().is_empty(), "nothing bridged to the server");
    assert!(b.client.take_transmitted().is_empty(), "nothing bridged to the client");
    assert_eq!(b.engine.splicer().counters().sessions_opened, 0, "no second session");
    let (client_port, server_port) = (b.stats.ports[0].totals(), b.stats.ports[1].totals());
    assert_eq!(
        (
            client_port.rx,
            client_port.misdirected,
            client_port.dropped,
            client_port.bridged
        ),
        (2, 2, 2, 0)
    );
    assert_eq!(
        (
            server_port.rx,
            server_port.misdirected,
            server_port.dropped,
            server_port.bridged
        ),
        (1, 1, 1, 0)
    );

    // A still serves its own connection: the SYN-ACK reaching A releases
    // the client's SYN-ACK.
    a.server.inject(synack);
    a.engine.poll(now);
    assert_eq!(flags(&a.client.take_transmitted()), [(true, true, false)]);
    assert_eq!(a.stats.ports[1].totals().misdirected, 0);

    // A connection no worker holds (bypassed at its SYN, older than the
    // appliance) passes B as through a cable.
    let other = segment("198.18.0.1:40001", SERVER, 1, Some(1), SegmentControl::Psh, b"bypassed");
    b.client.inject(other.clone());
    b.engine.poll(now);
    assert_eq!(b.server.take_transmitted(), [other]);

    // Once A's session is gone, its tuple is nobody's: B bridges it again.
    assert_eq!(a.engine.shutdown(now, std::time::Duration::from_secs(1)), 2);
    assert_eq!(a.engine.splicer().counters().sessions_live, 0);
    b.client.inject(data.clone());
    b.engine.poll(now);
    assert_eq!(b.server.take_transmitted(), [data]);
    assert_eq!(b.stats.ports[0].totals().misdirected, 2);
}
