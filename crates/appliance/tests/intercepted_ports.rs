//! What may pass the intercepted ports besides intercepted TCP: UDP (QUIC)
//! is blocked unless `intercept.udp` or a rule bypasses it, and a TCP
//! segment with a bad checksum or header, or the first fragment of one, is
//! dropped rather than bridged, while other traffic keeps the cable rule.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::net::{IpAddr, SocketAddr};

use appliance::policy::{Action, Policy, PolicyRules, RuleConfig, UdpPolicy};
use harness::{policy, Lab, CLIENT_MAC, CLIENT_V4, CLIENT_V6, SERVER_MAC, SERVER_V4, SERVER_V6};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};
use wire::{SegmentControl, TcpSegment};

const PORT: u16 = 443;

/// An Ethernet frame with one UDP datagram from `src` to `dst` (checksums filled).
fn udp(src: SocketAddr, dst: SocketAddr, src_mac: [u8; 6], dst_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let udp_len = udp.header_len() + payload.len();
    let caps = ChecksumCapabilities::default();
    let (ethertype, ip_len) = match src.ip() {
        IpAddr::V4(_) => (EthernetProtocol::Ipv4, 20),
        IpAddr::V6(_) => (EthernetProtocol::Ipv6, 40),
    };
    let mut frame = vec![0u8; 14 + ip_len + udp_len];
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let (src_ip, dst_ip) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => Ipv4Repr {
            src_addr,
            dst_addr,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps),
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => Ipv6Repr {
            src_addr,
            dst_addr,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut frame[14..])),
        _ => panic!("mixed address families"),
    }
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut frame[14 + ip_len..]),
        &src_ip,
        &dst_ip,
        payload.len(),
        |buffer| buffer.copy_from_slice(payload),
        &caps,
    );
    frame
}

fn client_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from(CLIENT_V4), port)
}

fn server_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from(SERVER_V4), port)
}

/// A QUIC-like datagram from the client to the server's `port`.
fn quic(port: u16) -> Vec<u8> {
    udp(
        client_v4(50_000),
        server_v4(port),
        CLIENT_MAC,
        SERVER_MAC,
        b"quic initial",
    )
}

/// Polls the engine until both ports are quiet; returns what left the
/// server port and the client port.
fn pass(lab: &mut Lab) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    while lab.engine.poll(lab.now) > 0 {}
    (lab.server_port.take_transmitted(), lab.client_port.take_transmitted())
}

#[test]
fn udp_to_and_from_intercepted_ports_is_blocked_by_default_and_other_udp_bridged() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let v6 = udp(
        SocketAddr::new(CLIENT_V6.parse().unwrap(), 50_001),
        SocketAddr::new(SERVER_V6.parse().unwrap(), PORT),
        CLIENT_MAC,
        SERVER_MAC,
        b"quic initial",
    );
    let dns = quic(53);
    lab.client_port.inject(quic(PORT));
    lab.client_port.inject(v6);
    lab.client_port.inject(dns.clone());
    // An answer from the origin's 443 (as if the client had got through).
    let answer = udp(
        server_v4(PORT),
        client_v4(50_000),
        SERVER_MAC,
        CLIENT_MAC,
        b"quic handshake",
    );
    lab.server_port.inject(answer);
    let (to_server, to_client) = pass(&mut lab);
    assert_eq!(to_server, vec![dns], "only the datagram to port 53 may pass");
    assert!(to_client.is_empty());
    let (client, server) = (lab.totals(0), lab.totals(1));
    assert_eq!(
        (client.udp_blocked, client.dropped, client.bridged),
        (2, 2, 1),
        "{client:?}"
    );
    assert_eq!((server.udp_blocked, server.dropped), (1, 1), "{server:?}");
}

#[test]
fn udp_passes_with_bypass_and_with_a_matching_rule() {
    let mut bypassing = policy(&[PORT]);
    bypassing.udp = UdpPolicy::Bypass;
    let mut lab = Lab::new(&bypassing);
    lab.client_port.inject(quic(PORT));
    assert_eq!(pass(&mut lab).0, vec![quic(PORT)]);
    assert_eq!(lab.totals(0).udp_blocked, 0);

    // Blocked by default, bypassed for one destination by a rule.
    let mut ruled = policy(&[PORT]);
    let rule = RuleConfig {
        action: Action::Intercept,
        dst: vec![IpAddr::from(SERVER_V4).to_string()],
        src: vec![],
        port: vec![PORT],
        sni: vec![],
        no_sni: None,
        when: None,
        udp: Some(UdpPolicy::Bypass),
        server_port: None,
        server_name: None,
    };
    ruled.rules = Policy::new(&PolicyRules::from(vec![rule]), std::sync::Arc::default(), false).unwrap();
    let mut lab = Lab::new(&ruled);
    let elsewhere = udp(
        client_v4(50_000),
        SocketAddr::new(IpAddr::from([198, 18, 0, 3]), PORT),
        CLIENT_MAC,
        SERVER_MAC,
        b"quic initial",
    );
    lab.client_port.inject(quic(PORT));
    lab.client_port.inject(elsewhere);
    assert_eq!(pass(&mut lab).0, vec![quic(PORT)]);
    assert_eq!(lab.totals(0).udp_blocked, 1);
}

/// A TCP segment from the client to the server's `port`.
fn client_segment(port: u16, control: SegmentControl, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    TcpSegment {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        src: client_v4(50_000),
        dst: server_v4(port),
        seq: 1000,
        ack: (control != SegmentControl::Syn).then_some(1),
        control,
        window: 65_535,
        payload,
    }
    .write(&mut frame)
    .unwrap();
    frame
}

/// The TCP checksum (IPv4, no options) made wrong.
fn bad_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 20 + 16] ^= 0x5a;
    frame
}

/// The TCP data offset made 4 words, below the minimum.
fn bad_header(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 20 + 12] = 0x40;
    frame
}

#[test]
fn bad_tcp_to_an_intercepted_port_is_dropped_and_elsewhere_bridged() {
    let mut lab = Lab::new(&policy(&[PORT]));
    for frame in [
        bad_checksum(client_segment(PORT, SegmentControl::Syn, &[])),
        bad_checksum(client_segment(PORT, SegmentControl::Psh, b"GET / HTTP/1.1\r\n\r\n")),
        bad_header(client_segment(PORT, SegmentControl::Psh, b"GET /")),
    ] {
        lab.client_port.inject(frame);
    }
    // From the origin's intercepted port: dropped as well.
    let mut answer = Vec::new();
    TcpSegment {
        src_mac: SERVER_MAC,
        dst_mac: CLIENT_MAC,
        src: server_v4(PORT),
        dst: client_v4(50_000),
        seq: 7,
        ack: Some(1001),
        control: SegmentControl::Psh,
        window: 65_535,
        payload: b"HTTP/1.1 200 OK\r\n",
    }
    .write(&mut answer)
    .unwrap();
    lab.server_port.inject(bad_checksum(answer));
    let elsewhere = [
        bad_checksum(client_segment(80, SegmentControl::Syn, &[])),
        bad_header(client_segment(80, SegmentControl::Psh, b"GET /")),
    ];
    for frame in &elsewhere {
        lab.client_port.inject(frame.clone());
    }
    let (to_server, to_client) = pass(&mut lab);
    assert_eq!(
        to_server,
        elsewhere.to_vec(),
        "only the port-80 frames keep the cable rule"
    );
    assert!(to_client.is_empty());
    let (client, server) = (lab.totals(0), lab.totals(1));
    assert_eq!(
        (client.invalid_dropped, client.dropped, client.malformed, client.bridged),
        (3, 3, 4, 2),
        "{client:?}"
    );
    assert_eq!((server.invalid_dropped, server.dropped), (1, 1), "{server:?}");
    assert_eq!(
        lab.engine.stack().counters().flows_created,
        0,
        "nothing reached the stack"
    );

    // The same SYN with its checksum intact opens a connection.
    lab.client_port.inject(client_segment(PORT, SegmentControl::Syn, &[]));
    pass(&mut lab);
    assert_eq!(lab.engine.splicer().counters().sessions_opened, 1);
}

/// `frame` (IPv4) as the first fragment of a larger packet, or as a later
/// one at `offset` bytes.
fn ipv4_fragment(mut frame: Vec<u8>, offset: u16) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_dont_frag(false);
    ip.set_more_frags(true);
    ip.set_frag_offset(offset);
    ip.fill_checksum();
    frame
}

/// A TCP SYN from the client to the server's `port` over IPv6 in an atomic
/// fragment (a Fragment header with offset 0 and no more fragments), which
/// hosts accept as a whole packet.
fn ipv6_atomic_fragment(port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    TcpSegment {
        src_mac: CLIENT_MAC,
        dst_mac: SERVER_MAC,
        src: SocketAddr::new(CLIENT_V6.parse().unwrap(), 50_000),
        dst: SocketAddr::new(SERVER_V6.parse().unwrap(), port),
        seq: 1000,
        ack: None,
        control: SegmentControl::Syn,
        window: 65_535,
        payload: &[],
    }
    .write(&mut frame)
    .unwrap();
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame[20] = 44; // next header: Fragment
    let fragment_header = [6, 0, 0, 0, 0, 0, 0x12, 0x34]; // TCP, offset 0, M = 0
    frame.splice(54..54, fragment_header);
    frame
}

#[test]
fn fragments_of_tcp_to_an_intercepted_port_are_dropped_and_elsewhere_bridged() {
    let mut lab = Lab::new(&policy(&[PORT]));
    lab.client_port
        .inject(ipv4_fragment(client_segment(PORT, SegmentControl::Syn, &[]), 0));
    lab.client_port.inject(ipv6_atomic_fragment(PORT));
    // Later fragments state no ports: they keep the cable rule (useless
    // to the receiver without the first).
    let later = ipv4_fragment(client_segment(PORT, SegmentControl::Psh, b"rest"), 1480);
    let elsewhere = [
        ipv4_fragment(client_segment(80, SegmentControl::Syn, &[]), 0),
        ipv6_atomic_fragment(80),
    ];
    lab.client_port.inject(later.clone());
    for frame in &elsewhere {
        lab.client_port.inject(frame.clone());
    }
    let (to_server, _) = pass(&mut lab);
    let expected: Vec<_> = std::iter::once(later).chain(elsewhere).collect();
    assert_eq!(to_server, expected);
    let client = lab.totals(0);
    assert_eq!(
        (client.invalid_dropped, client.dropped, client.malformed, client.bridged),
        (2, 2, 0, 3),
        "{client:?}"
    );
}
