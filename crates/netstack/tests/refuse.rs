//! `Stack::refuse`: a SYN answered with a RST without a flow, over IPv4 and
//! IPv6, even with a full table; anything but a valid SYN refused as an error.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;

use netstack::{Duration, Instant, OutFrame, Stack, StackConfig, StackError};
use wire::{SegmentControl, TcpSegment};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn segment(src: &str, dst: &str, control: SegmentControl, ack: Option<u32>) -> Vec<u8> {
    let mut frame = Vec::new();
    TcpSegment {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        src: src.parse::<SocketAddr>().unwrap(),
        dst: dst.parse::<SocketAddr>().unwrap(),
        seq: 1_000,
        ack,
        control,
        window: 64_240,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    frame
}

/// A stack whose table (one flow) is already full.
fn full_stack() -> Stack {
    let config = StackConfig {
        rx_buffer: 4096,
        tx_buffer: 4096,
        timeout: Duration::from_secs(5),
        max_flows: 1,
        ..StackConfig::default()
    };
    let mut stack = Stack::new(1, config, Instant::ZERO, 1);
    let first = segment("198.18.0.1:40000", "198.18.0.2:443", SegmentControl::Syn, None);
    let class = wire::classify(&first).unwrap();
    stack.accept(0, &first, &class, true, 0, Instant::ZERO).unwrap();
    stack
}

#[test]
fn a_syn_gets_a_rst_acking_it_without_a_flow_over_ipv4_and_ipv6() {
    let mut stack = full_stack();
    for (client, server) in [
        ("198.18.0.1:40001", "198.18.0.2:443"),
        ("[2001:2::1]:40001", "[2001:2::2]:443"),
    ] {
        let syn = segment(client, server, SegmentControl::Syn, None);
        let class = wire::classify(&syn).unwrap();
        stack.refuse(0, &syn, &class, Instant::ZERO).unwrap();
        let mut out: Vec<OutFrame> = Vec::new();
        stack.drain_output(&mut out);
        assert_eq!(out.len(), 1, "{client}");
        let reply = wire::classify(&out[0].frame).unwrap();
        let (tuple, info) = reply.tcp().unwrap();
        assert!(info.flags.rst && info.flags.ack, "{client}: {info:?}");
        assert_eq!(info.ack_number, 1_001, "{client}");
        assert_eq!(
            (tuple.src_ip, tuple.src_port),
            (server.parse::<SocketAddr>().unwrap().ip(), 443)
        );
        assert_eq!(tuple.dst_ip, client.parse::<SocketAddr>().unwrap().ip());
        assert_eq!(
            (reply.l2.dst_addr().0, reply.l2.src_addr().0),
            (CLIENT_MAC, SERVER_MAC),
            "answered as the server"
        );
    }
    assert_eq!(stack.live_flows(), 1);
}

#[test]
fn only_a_valid_syn_is_refused() {
    let mut stack = full_stack();
    let ack = segment("198.18.0.1:40002", "198.18.0.2:443", SegmentControl::None, Some(5));
    let class = wire::classify(&ack).unwrap();
    assert_eq!(stack.refuse(0, &ack, &class, Instant::ZERO), Err(StackError::NotASyn));
    let mut corrupted = segment("198.18.0.1:40003", "198.18.0.2:443", SegmentControl::Syn, None);
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    let class = wire::classify(&corrupted).unwrap();
    assert_eq!(
        stack.refuse(0, &corrupted, &class, Instant::ZERO),
        Err(StackError::NotASyn),
        "a SYN with a bad checksum gets nothing"
    );
    let mut out: Vec<OutFrame> = Vec::new();
    stack.drain_output(&mut out);
    assert!(out.is_empty());
}
