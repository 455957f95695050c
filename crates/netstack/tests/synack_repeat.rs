//! A peer that retransmits its SYN because our SYN-ACK was lost gets the
//! SYN-ACK again at once (smoltcp alone ignores a SYN in SYN-RECEIVED and
//! waits for its own retransmission timer, 1 s and more). And the SYN-ACK's
//! initial sequence number follows the stack's seed alone: no clock.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;

use netstack::{Duration, Instant, OutFrame, Stack, StackConfig};
use wire::{SegmentControl, TcpSegment};

fn syn() -> Vec<u8> {
    let mut frame = Vec::new();
    TcpSegment {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: "198.18.0.1:40000".parse::<SocketAddr>().unwrap(),
        dst: "198.18.0.2:443".parse::<SocketAddr>().unwrap(),
        seq: 1_000,
        ack: None,
        control: SegmentControl::Syn,
        window: 64_240,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    frame
}

fn sent(stack: &mut Stack) -> Vec<OutFrame> {
    let mut out = Vec::new();
    stack.drain_output(&mut out);
    out
}

#[test]
fn a_retransmitted_syn_gets_the_synack_again_at_once() {
    let mut stack = Stack::new(1, StackConfig::default(), Instant::ZERO, 1);
    let frame = syn();
    let class = wire::classify(&frame).unwrap();
    let flow = stack.accept(0, &frame, &class, false, 0, Instant::ZERO).unwrap();
    let first = sent(&mut stack);
    assert_eq!(first.len(), 1);
    let reply = wire::classify(&first[0].frame).unwrap();
    let (_, info) = reply.tcp().unwrap();
    assert!(info.flags.syn && info.flags.ack);
    // The SYN-ACK is lost; 200 ms later the peer's SYN comes again.
    let later = Instant::ZERO + Duration::from_millis(200);
    stack.poll_timers(later);
    assert!(sent(&mut stack).is_empty(), "smoltcp's own timer is not due");
    stack.ingress(flow, &frame, &class, later).unwrap();
    let again = sent(&mut stack);
    assert_eq!(again.len(), 1, "one SYN-ACK at once");
    assert_eq!(again[0].frame, first[0].frame);
    assert_eq!(stack.counters().synacks_repeated, 1);
}

/// The ISN of the SYN-ACK a stack made with `seed` answers `syn()` with.
fn isn_with_seed(seed: u64) -> u32 {
    let mut stack = Stack::new(1, StackConfig::default(), Instant::ZERO, seed);
    let frame = syn();
    let class = wire::classify(&frame).unwrap();
    stack.accept(0, &frame, &class, false, 0, Instant::ZERO).unwrap();
    let out = sent(&mut stack);
    let reply = wire::classify(&out[0].frame).unwrap();
    let (_, info) = reply.tcp().unwrap();
    assert!(info.flags.syn && info.flags.ack);
    info.seq_number
}

#[test]
fn the_initial_sequence_number_follows_the_seed_alone() {
    let first = isn_with_seed(7);
    // Another stack: the same seed gives the same ISN (nothing read from a
    // clock or the OS), another seed another one.
    assert_eq!(isn_with_seed(7), first);
    assert_ne!(isn_with_seed(8), first);
}
