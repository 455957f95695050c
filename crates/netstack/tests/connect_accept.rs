//! Two stacks back to back: one opens a connection with a transparent
//! connect (as 198.18.0.1:50000), the other takes it with a transparent
//! accept (as 198.18.0.2:80). Shows the sans-IO API end to end: frames and
//! `now` in, frames and events out, flows freed exactly when smoltcp is done.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::any::Any;

use netstack::{
    Duration, Event, EventKind, FlowId, Instant, L2Header, OutFrame, OutFrames, Stack, StackConfig, StackError,
    TxFrames,
};
use wire::FlowTuple;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn tuple() -> FlowTuple {
    FlowTuple {
        src_ip: "198.18.0.1".parse().unwrap(),
        dst_ip: "198.18.0.2".parse().unwrap(),
        src_port: 50_000,
        dst_port: 80,
    }
}

fn config() -> StackConfig {
    StackConfig {
        rx_buffer: 8192,
        tx_buffer: 8192,
        timeout: Duration::from_secs(5),
        max_flows: 4,
        ..StackConfig::default()
    }
}

struct Pair {
    now: Instant,
    connector: Stack,
    acceptor: Stack,
    accepted: Option<FlowId>,
    events: Vec<(char, Event)>,
    frames_to_acceptor: Vec<Vec<u8>>,
    frames_to_connector: Vec<Vec<u8>>,
    /// When set, the acceptor's host vanished: frames to it are lost.
    acceptor_gone: bool,
    /// This many of the next frames with data to the acceptor are lost.
    lose_data_to_acceptor: usize,
    /// After a round in which data to it was lost, the acceptor vanishes.
    vanish_after_loss: bool,
}

impl Pair {
    fn new() -> Pair {
        Pair::with_config(config())
    }

    fn with_config(config: StackConfig) -> Pair {
        Pair {
            now: Instant::ZERO,
            connector: Stack::new(1, config, Instant::ZERO, 1),
            acceptor: Stack::new(1, config, Instant::ZERO, 2),
            accepted: None,
            events: Vec::new(),
            frames_to_acceptor: Vec::new(),
            frames_to_connector: Vec::new(),
            acceptor_gone: false,
            lose_data_to_acceptor: 0,
            vanish_after_loss: false,
        }
    }

    /// Moves frames both ways until quiet, then advances the clock by 1 ms.
    fn step(&mut self) {
        for _ in 0..64 {
            let mut out: Vec<OutFrame> = Vec::new();
            self.connector.poll_timers(self.now);
            self.connector.flush(self.now);
            drain(&mut self.connector, &mut out);
            let to_acceptor = out.len();
            let mut lost = false;
            for frame in out.drain(..) {
                self.frames_to_acceptor.push(frame.frame.clone());
                if self.acceptor_gone {
                    continue;
                }
                let class = wire::classify(&frame.frame).unwrap();
                let (tuple, info) = class.tcp().unwrap();
                if info.payload_len > 0 && self.lose_data_to_acceptor > 0 {
                    self.lose_data_to_acceptor -= 1;
                    lost = true;
                    continue;
                }
                match self.acceptor.lookup(0, tuple) {
                    Some(flow) => self.acceptor.ingress(flow, &frame.frame, &class, self.now).unwrap(),
                    None => {
                        self.accepted = Some(
                            self.acceptor
                                .accept(0, &frame.frame, &class, false, 7, self.now)
                                .unwrap(),
                        )
                    }
                }
            }
            self.acceptor_gone |= lost && self.vanish_after_loss;
            self.acceptor.poll_timers(self.now);
            self.acceptor.flush(self.now);
            drain(&mut self.acceptor, &mut out);
            let to_connector = out.len();
            for frame in out.drain(..) {
                self.frames_to_connector.push(frame.frame.clone());
                // The acceptor answers as the server: the MACs of the SYN, swapped.
                assert_eq!(&frame.frame[..12], &[CLIENT_MAC, SERVER_MAC].concat()[..]);
                let class = wire::classify(&frame.frame).unwrap();
                let (tuple, _) = class.tcp().unwrap();
                if let Some(flow) = self.connector.lookup(0, tuple) {
                    self.connector.ingress(flow, &frame.frame, &class, self.now).unwrap();
                }
            }
            while let Some(event) = self.connector.next_event() {
                self.events.push(('c', event));
            }
            while let Some(event) = self.acceptor.next_event() {
                self.events.push(('a', event));
            }
            if to_acceptor == 0 && to_connector == 0 {
                break;
            }
        }
        self.now += Duration::from_millis(1);
    }

    fn saw(&self, side: char, kind: EventKind) -> bool {
        self.events.iter().any(|(s, event)| *s == side && event.kind == kind)
    }
}

#[test]
fn connect_meets_accept_data_flows_both_ways_and_flows_are_freed() {
    let mut pair = Pair::new();
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let client = pair.connector.connect(0, &tuple(), l2, 3, pair.now).unwrap();
    for _ in 0..10 {
        pair.step();
    }
    let server = pair.accepted.expect("accepted");
    assert!(pair.saw('c', EventKind::Connected) && pair.saw('a', EventKind::Connected));
    assert!(pair
        .events
        .iter()
        .all(|(side, event)| event.owner == if *side == 'c' { 3 } else { 7 }));

    // The connector's SYN carries the client's identity.
    let syn = wire::classify(&pair.frames_to_acceptor[0]).unwrap();
    assert_eq!(syn.tcp().unwrap().0, &tuple());
    assert_eq!(
        &pair.frames_to_acceptor[0][..12],
        &[SERVER_MAC, CLIENT_MAC].concat()[..]
    );

    assert_eq!(pair.connector.send(client, b"GET / HTTP/1.0\r\n\r\n").unwrap(), 18);
    pair.step();
    assert!(pair.saw('a', EventKind::Readable));
    let mut buf = [0u8; 64];
    assert_eq!(pair.acceptor.recv_queue(server).unwrap(), 18);
    let read = pair.acceptor.recv(server, &mut buf).unwrap();
    assert_eq!(&buf[..read], b"GET / HTTP/1.0\r\n\r\n");
    pair.acceptor.send(server, b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
    pair.acceptor.close(server).unwrap();
    pair.step();
    pair.step();
    assert!(pair.saw('c', EventKind::PeerClosed));
    let read = pair.connector.recv(client, &mut buf).unwrap();
    assert_eq!(&buf[..read], b"HTTP/1.0 200 OK\r\n\r\nhello");
    assert!(pair.connector.peer_finished(client).unwrap());
    pair.connector.close(client).unwrap();

    // One side waits out TIME-WAIT (smoltcp: 10 s), then both are gone.
    for _ in 0..12_000 {
        pair.step();
        if pair.connector.live_flows() == 0 && pair.acceptor.live_flows() == 0 {
            break;
        }
    }
    assert_eq!((pair.connector.live_flows(), pair.acceptor.live_flows()), (0, 0));
    assert!(pair.saw('c', EventKind::Closed) && pair.saw('a', EventKind::Closed));
    assert!(!pair.saw('c', EventKind::Reset) && !pair.saw('c', EventKind::TimedOut));
    let counters = pair.connector.counters();
    assert_eq!(
        (counters.flows_created, counters.flows_freed, counters.flows_live),
        (1, 1, 0)
    );
    // A dead id never reaches anything again.
    assert_eq!(pair.connector.send(client, b"late"), Err(StackError::NoSuchFlow));
}

#[test]
fn refusals_are_typed_errors() {
    let mut pair = Pair::new();
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    pair.connector.connect(0, &tuple(), l2, 0, pair.now).unwrap();
    assert_eq!(
        pair.connector.connect(0, &tuple(), l2, 0, pair.now),
        Err(StackError::FlowExists)
    );
    assert_eq!(
        pair.connector.connect(3, &tuple(), l2, 0, pair.now),
        Err(StackError::NoSuchPort(3))
    );
    for port in 1..=3u16 {
        let other = FlowTuple {
            src_port: 50_000 + port,
            ..tuple()
        };
        pair.connector.connect(0, &other, l2, 0, pair.now).unwrap();
    }
    let fifth = FlowTuple {
        src_port: 60_000,
        ..tuple()
    };
    assert_eq!(
        pair.connector.connect(0, &fifth, l2, 0, pair.now),
        Err(StackError::TooManyFlows(4))
    );
    assert_eq!(pair.connector.counters().flows_refused, 1);

    // Only a bare SYN opens a flow on accept.
    pair.step();
    let mut out = Vec::new();
    pair.connector.drain_output(&mut out);
    let ack_frame = pair.frames_to_acceptor.iter().find(|frame| {
        let class = wire::classify(frame).unwrap();
        let (_, info) = class.tcp().unwrap();
        info.flags.ack
    });
    if let Some(frame) = ack_frame {
        let class = wire::classify(frame).unwrap();
        let mut fresh = Stack::new(1, config(), Instant::ZERO, 1);
        assert_eq!(
            fresh.accept(0, frame, &class, false, 0, Instant::ZERO),
            Err(StackError::NotASyn)
        );
    }
    // Nothing was sent yet: the flows' buffers commit no memory.
    assert_eq!(pair.connector.buffer_bytes(), 0);
    assert!(pair.connector.memory_per_flow() < 4 * 1024);
}

#[test]
fn idle_connections_live_on_and_peers_silent_through_every_retransmission_are_dead() {
    let mut pair = Pair::new();
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let client = pair.connector.connect(0, &tuple(), l2, 0, pair.now).unwrap();
    for _ in 0..10 {
        pair.step();
    }
    assert!(pair.saw('c', EventKind::Connected));

    // A minute with nothing to say, twelve times the timeout: still there.
    for _ in 0..60_000 {
        pair.step();
    }
    assert_eq!((pair.connector.live_flows(), pair.acceptor.live_flows()), (1, 1));
    assert!(!pair.saw('c', EventKind::TimedOut) && !pair.saw('a', EventKind::TimedOut));

    // The peer vanishes while data is outstanding: smoltcp retransmits at
    // 1, 3, 7, 15, 31 and 63 s (its timer doubling); the peer is dead when
    // the seventh round is due (123 s: the timer stops at 60 s), long past
    // the 5 s timeout, with one RST.
    pair.acceptor_gone = true;
    let sent_before = pair.frames_to_acceptor.len();
    let vanished = pair.now;
    pair.connector.send(client, b"anyone there?").unwrap();
    while pair.connector.live_flows() == 1 && pair.now < vanished + Duration::from_secs(200) {
        pair.step();
    }
    let given_up_after = pair.now - vanished;
    assert!(
        given_up_after >= Duration::from_secs(123) && given_up_after < Duration::from_secs(124),
        "given up after {given_up_after}"
    );
    assert!(pair.saw('c', EventKind::TimedOut) && pair.saw('c', EventKind::Closed));
    let data_segments = pair.frames_to_acceptor[sent_before..]
        .iter()
        .filter(|frame| {
            wire::classify(frame)
                .unwrap()
                .l4_range()
                .is_some_and(|l4| frame[l4].ends_with(b"anyone there?"))
        })
        .count();
    assert_eq!(data_segments, 7, "the data once, then six retransmission rounds");
    let last = wire::classify(pair.frames_to_acceptor.last().unwrap()).unwrap();
    assert!(last.tcp().unwrap().1.flags.rst, "the last frame sent is a RST");
    let counters = pair.connector.counters();
    assert_eq!((counters.dead_peers, counters.connect_timeouts), (1, 0));
}

#[test]
fn per_frame_work_does_not_depend_on_the_number_of_flows() {
    // Thousands of flows waiting in SYN-SENT, then one frame for one of
    // them: exactly one socket set is polled (the design rule that keeps
    // per-packet cost flat; scanning every socket would poll them all).
    let mut config = config();
    config.max_flows = 10_000;
    let mut stack = Stack::new(1, config, Instant::ZERO, 1);
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    for port in 0..5_000u16 {
        let tuple = FlowTuple {
            src_port: 10_000 + port,
            ..tuple()
        };
        stack.connect(0, &tuple, l2, 0, Instant::ZERO).unwrap();
    }
    let mut syns = Vec::new();
    stack.flush(Instant::ZERO);
    stack.drain_output(&mut syns);
    assert_eq!(syns.len(), 5_000);

    // The SYN-ACK a server would send to the flow from port 10_042.
    let mut peer = Stack::new(1, config, Instant::ZERO, 2);
    let syn = syns
        .iter()
        .find(|out| wire::classify(&out.frame).unwrap().tcp().unwrap().0.src_port == 10_042)
        .unwrap();
    let class = wire::classify(&syn.frame).unwrap();
    peer.accept(0, &syn.frame, &class, false, 0, Instant::ZERO).unwrap();
    let mut answer = Vec::new();
    peer.drain_output(&mut answer);
    let synack = &answer[0].frame;
    let class = wire::classify(synack).unwrap();

    let before = stack.counters().flow_polls;
    let flow = stack.lookup(0, class.tcp().unwrap().0).expect("the flow");
    stack.ingress(flow, synack, &class, Instant::from_millis(1)).unwrap();
    assert_eq!(
        stack.counters().flow_polls - before,
        1,
        "one frame, one socket set polled"
    );
    assert_eq!(stack.state(flow), Ok(netstack::TcpState::Established));

    // A timer tick with nothing due polls nothing either.
    let before = stack.counters().flow_polls;
    stack.poll_timers(Instant::from_millis(2));
    assert_eq!(stack.counters().flow_polls - before, 0);
}

#[test]
fn a_flow_can_have_its_own_shorter_timeout() {
    let mut pair = Pair::new();
    pair.acceptor_gone = true;
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let quick = pair.connector.connect(0, &tuple(), l2, 1, pair.now).unwrap();
    let mut other = tuple();
    other.src_port += 1;
    pair.connector.connect(0, &other, l2, 2, pair.now).unwrap();
    pair.connector.set_timeout(quick, Duration::from_millis(300)).unwrap();
    for _ in 0..250 {
        pair.step();
    }
    assert!(!pair.saw('c', EventKind::TimedOut), "not before its timeout");
    for _ in 0..100 {
        pair.step();
    }
    let timed_out: Vec<u64> = pair
        .events
        .iter()
        .filter(|(_, event)| event.kind == EventKind::TimedOut)
        .map(|(_, event)| event.owner)
        .collect();
    assert_eq!(timed_out, vec![1], "only the flow with the short timeout gave up");
    assert_eq!(pair.connector.live_flows(), 1);
    assert_eq!(
        pair.connector.set_timeout(quick, Duration::from_millis(1)),
        Err(StackError::NoSuchFlow)
    );
}

/// A transmit sink whose buffers hold stale bytes (as a reused mbuf does):
/// every byte of a frame must be written by the stack.
#[derive(Default)]
struct StaleBuffers(OutFrames);

impl TxFrames for StaleBuffers {
    fn push(&mut self, port: usize, len: usize) -> &mut [u8] {
        self.0 .0.push(OutFrame {
            port,
            frame: vec![0xa5; len],
        });
        &mut self.0 .0.last_mut().unwrap().frame
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn frame(&self, index: usize) -> Option<&[u8]> {
        self.0.frame(index)
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Takes a stack's frames, whichever of the two sinks it writes into.
fn drain(stack: &mut Stack, out: &mut Vec<OutFrame>) {
    match stack.take_tx_frames::<StaleBuffers>() {
        Some(stale) => out.append(&mut stale.0 .0),
        None => stack.drain_output(out),
    }
}

/// Buffers of 1 MiB: large windows, committed only while data flows.
fn large_buffers() -> StackConfig {
    StackConfig {
        rx_buffer: 1 << 20,
        tx_buffer: 1 << 20,
        ..config()
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sends `data` from the connector's `client` flow to the accepted flow,
/// reading it there; returns what arrived. `during` runs after each step.
fn transfer(pair: &mut Pair, client: FlowId, data: &[u8], mut during: impl FnMut(&mut Pair, usize)) -> Vec<u8> {
    let (mut sent, mut received) = (0, Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..20_000 {
        sent += pair.connector.send(client, &data[sent..]).unwrap();
        pair.step();
        let server = pair.accepted.unwrap();
        loop {
            let read = pair.acceptor.recv(server, &mut buf).unwrap();
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buf[..read]);
        }
        during(pair, received.len());
        if received.len() == data.len() {
            break;
        }
    }
    received
}

#[test]
fn a_flow_that_moved_megabytes_and_went_quiet_holds_no_buffer_pages() {
    let mut pair = Pair::with_config(large_buffers());
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let client = pair.connector.connect(0, &tuple(), l2, 0, pair.now).unwrap();
    for _ in 0..10 {
        pair.step();
    }
    let server = pair.accepted.expect("accepted");
    let data = pattern(3 << 20);
    let mut peak = (0, 0);
    let received = transfer(&mut pair, client, &data, |pair, _| {
        let resident = pair.connector.resident_buffer_bytes(client).unwrap()
            + pair.acceptor.resident_buffer_bytes(pair.accepted.unwrap()).unwrap();
        let counted = pair.connector.buffer_bytes() + pair.acceptor.buffer_bytes();
        assert!(
            counted >= resident,
            "the count covers what is resident: {counted} < {resident}"
        );
        peak = peak.max((resident, counted));
    });
    assert!(received == data, "the bytes arrive intact");
    assert!(peak.0 >= 64 * 1024, "pages were committed while data flowed: {peak:?}");

    // The transfer is over (everything read and acknowledged); after a
    // quiet spell both flows give every page back, and count none.
    for _ in 0..1_500 {
        pair.step();
    }
    assert_eq!(pair.connector.resident_buffer_bytes(client), Ok(0));
    assert_eq!(pair.acceptor.resident_buffer_bytes(server), Ok(0));
    assert_eq!((pair.connector.buffer_bytes(), pair.acceptor.buffer_bytes()), (0, 0));

    // The rings work on from where they were, on fresh zero pages.
    let more = pattern(300_000);
    let received = transfer(&mut pair, client, &more, |_, _| {});
    assert!(received == more, "the bytes after a release arrive intact");
}

#[test]
fn bytes_past_a_hole_survive_a_quiet_spell() {
    // The first data segment is lost, the ones after it wait in the
    // receive ring behind the hole, then the sender is silent for longer
    // than the buffers linger: those bytes must not be given back.
    let mut pair = Pair::with_config(large_buffers());
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let client = pair.connector.connect(0, &tuple(), l2, 0, pair.now).unwrap();
    for _ in 0..10 {
        pair.step();
    }
    let first = pattern(10_000);
    assert!(transfer(&mut pair, client, &first, |_, _| {}) == first);
    pair.lose_data_to_acceptor = 1;
    pair.vanish_after_loss = true;
    let data = pattern(20_000);
    let mut quiet = false;
    let received = transfer(&mut pair, client, &data, |pair, received| {
        if !quiet {
            quiet = true;
            assert!(pair.acceptor_gone);
            assert_eq!(received, 0, "the hole holds everything back");
            let server = pair.accepted.unwrap();
            assert!(
                pair.acceptor.resident_buffer_bytes(server).unwrap() > 0,
                "bytes wait past the hole"
            );
            for _ in 0..1_500 {
                pair.step();
            }
            pair.acceptor_gone = false;
        }
    });
    assert!(received == data, "the bytes past the hole arrive intact");
}

#[test]
fn frames_written_into_buffers_of_stale_bytes_are_the_same_frames() {
    // The same connection (handshake, 300 kB one way, a reply, both FINs)
    // written into zeroed buffers and into buffers full of stale bytes.
    let run = |stale: bool| {
        let mut pair = Pair::with_config(large_buffers());
        if stale {
            pair.connector.set_tx_frames(Box::new(StaleBuffers::default()));
            pair.acceptor.set_tx_frames(Box::new(StaleBuffers::default()));
        }
        let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
        let client = pair.connector.connect(0, &tuple(), l2, 3, pair.now).unwrap();
        let data = pattern(300_000);
        assert_eq!(transfer(&mut pair, client, &data, |_, _| {}), data);
        let server = pair.accepted.unwrap();
        pair.acceptor.send(server, b"done").unwrap();
        pair.acceptor.close(server).unwrap();
        pair.connector.close(client).unwrap();
        for _ in 0..20 {
            pair.step();
        }
        let frames_out = pair.connector.counters().frames_out;
        (pair.frames_to_acceptor, pair.frames_to_connector, frames_out)
    };
    let (clean, stale) = (run(false), run(true));
    assert!(clean.0.len() > 200 && clean.1.len() > 100);
    assert_eq!(clean.2, clean.0.len() as u64);
    assert!(clean == stale, "a frame carries bytes the stack did not write");
}

// --- reading received bytes where they lie (recv_in_place) ------------------

#[test]
fn bytes_read_in_place_and_left_stay_received_and_the_flag_says_when_they_cannot_grow() {
    let mut pair = Pair::new();
    let l2 = L2Header::new(SERVER_MAC, CLIENT_MAC, &[]);
    let client = pair.connector.connect(0, &tuple(), l2, 3, pair.now).unwrap();
    for _ in 0..10 {
        pair.step();
    }
    let server = pair.accepted.expect("accepted");
    let data = pattern(9000);
    assert_eq!(pair.connector.send(client, &data[..3000]).unwrap(), 3000);
    pair.step();

    // A reader that takes part: the rest stays, in order.
    let mut seen = Vec::new();
    let taken = pair
        .acceptor
        .recv_in_place(server, usize::MAX, 100, |bytes, stuck| {
            seen = bytes.to_vec();
            assert!(!stuck, "5 KiB of room behind 3000 bytes: more can come");
            1000
        })
        .unwrap();
    assert_eq!((taken, seen.as_slice()), (1000, &data[..3000]));
    assert_eq!(pair.acceptor.recv_queue(server).unwrap(), 2000);

    // Less room than the reader needs to grow: stuck. A piece cut by `max`: not.
    pair.acceptor
        .recv_in_place(server, usize::MAX, 8192, |bytes, stuck| {
            assert_eq!(bytes, &data[1000..3000]);
            assert!(stuck);
            0
        })
        .unwrap();
    pair.acceptor
        .recv_in_place(server, 500, 8192, |bytes, stuck| {
            assert_eq!(bytes, &data[1000..1500]);
            assert!(!stuck);
            0
        })
        .unwrap();

    // The ring (8 KiB, read from 1000) wraps: the first piece ends there, stuck.
    let mut sent = 3000;
    for _ in 0..50 {
        sent += pair.connector.send(client, &data[sent..]).unwrap();
        pair.step();
        if pair.acceptor.recv_queue(server).unwrap() == 8000 {
            break;
        }
    }
    assert_eq!(pair.acceptor.recv_queue(server).unwrap(), 8000);
    let mut pieces = Vec::new();
    for _ in 0..2 {
        pair.acceptor
            .recv_in_place(server, usize::MAX, 0, |bytes, stuck| {
                pieces.push((bytes.to_vec(), stuck));
                bytes.len()
            })
            .unwrap();
    }
    assert_eq!(pieces[0].0, &data[1000..8192]);
    assert!(pieces[0].1, "the ring wraps after the first piece");
    assert_eq!(pieces[1].0, &data[8192..9000]);
    assert!(!pieces[1].1);

    // After the peer's FIN nothing more can come.
    pair.connector.send(client, b"end").unwrap();
    pair.connector.close(client).unwrap();
    pair.step();
    pair.step();
    pair.acceptor
        .recv_in_place(server, usize::MAX, 0, |bytes, stuck| {
            assert_eq!(bytes, b"end");
            assert!(stuck, "the peer finished");
            0
        })
        .unwrap();
    assert_eq!(pair.acceptor.recv_queue(server).unwrap(), 3);
}
