//! Test-only builders of well-formed frames, emitted with smoltcp's `Repr`s
//! so that the classifier is checked against an independent encoder.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet,
    Icmpv6Repr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr, NdiscRepr,
    RawHardwareAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

pub const CLIENT_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
pub const SERVER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
pub const CLIENT_V4: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
pub const SERVER_V4: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
pub const CLIENT_V6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const CLIENT_PORT: u16 = 40_000;
pub const SERVER_PORT: u16 = 443;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Ethernet II frame from the client to the server MAC; `tags` are
/// `(tpid, tci)`, outermost first.
pub fn ethernet_frame(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(SERVER_MAC.as_bytes());
    frame.extend_from_slice(CLIENT_MAC.as_bytes());
    for (tpid, tci) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&tci.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Pads `frame` with `0xee` (not zero, so a leak would show) to `len` bytes.
pub fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    if frame.len() < len {
        frame.resize(len, 0xee);
    }
    frame
}

pub fn ipv4_packet(next_header: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: CLIENT_V4,
        dst_addr: SERVER_V4,
        next_header,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut packet = vec![0; repr.buffer_len() + payload.len()];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut packet),
        &ChecksumCapabilities::default(),
    );
    packet[repr.buffer_len()..].copy_from_slice(payload);
    packet
}

pub fn ipv6_packet(next_header: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: CLIENT_V6,
        dst_addr: SERVER_V6,
        next_header,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut packet = vec![0; repr.buffer_len() + payload.len()];
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut packet));
    packet[repr.buffer_len()..].copy_from_slice(payload);
    packet
}

/// A client-to-server TCP segment: a SYN with an MSS option, or (with
/// `TcpControl::None`/`Psh`) an ACKing data segment without options.
pub fn tcp_segment((src, dst): (IpAddress, IpAddress), control: TcpControl, seq: u32, payload: &[u8]) -> Vec<u8> {
    let is_syn = control == TcpControl::Syn;
    let repr = TcpRepr {
        src_port: CLIENT_PORT,
        dst_port: SERVER_PORT,
        control,
        seq_number: TcpSeqNumber(seq.cast_signed()),
        ack_number: (!is_syn).then_some(TcpSeqNumber(7)),
        window_len: 64_240,
        window_scale: None,
        max_seg_size: is_syn.then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut segment = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut segment),
        &src,
        &dst,
        &ChecksumCapabilities::default(),
    );
    segment
}

pub fn udp_datagram((src, dst): (IpAddress, IpAddress), payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: 5353,
        dst_port: 53,
    };
    let mut datagram = vec![0; repr.header_len() + payload.len()];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut datagram),
        &src,
        &dst,
        payload.len(),
        |buffer| buffer.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    datagram
}

pub fn v4_addrs() -> (IpAddress, IpAddress) {
    (CLIENT_V4.into(), SERVER_V4.into())
}

pub fn v6_addrs() -> (IpAddress, IpAddress) {
    (CLIENT_V6.into(), SERVER_V6.into())
}

/// Untagged or tagged IPv4 TCP frame.
pub fn ipv4_tcp_frame(tags: &[(u16, u16)], control: TcpControl, payload: &[u8]) -> Vec<u8> {
    let segment = tcp_segment(v4_addrs(), control, 1000, payload);
    ethernet_frame(tags, ETHERTYPE_IPV4, &ipv4_packet(IpProtocol::Tcp, &segment))
}

pub fn ipv6_tcp_frame(control: TcpControl, payload: &[u8]) -> Vec<u8> {
    let segment = tcp_segment(v6_addrs(), control, 1000, payload);
    ethernet_frame(&[], ETHERTYPE_IPV6, &ipv6_packet(IpProtocol::Tcp, &segment))
}

/// IPv6 Hop-by-Hop header (PadN only) announcing `next_header`.
pub fn hop_by_hop_header(next_header: IpProtocol) -> [u8; 8] {
    [next_header.into(), 0, 1, 4, 0, 0, 0, 0]
}

/// IPv6 Fragment header announcing `next_header`.
pub fn fragment_header(next_header: IpProtocol, offset_units: u16, more: bool) -> [u8; 8] {
    let [offset_hi, offset_lo] = ((offset_units << 3) | u16::from(more)).to_be_bytes();
    [next_header.into(), 0, offset_hi, offset_lo, 0xde, 0xad, 0xbe, 0xef]
}

/// IPv6 TCP frame with `extension_headers` (announcing TCP at the end)
/// between the fixed header and the segment.
pub fn ipv6_tcp_frame_with_extensions(first_header: IpProtocol, extension_headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut ip_payload = extension_headers.to_vec();
    ip_payload.extend(tcp_segment(v6_addrs(), TcpControl::Psh, 1000, payload));
    ethernet_frame(&[], ETHERTYPE_IPV6, &ipv6_packet(first_header, &ip_payload))
}

pub fn arp_request_frame() -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: CLIENT_MAC,
        source_protocol_addr: CLIENT_V4,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: SERVER_V4,
    };
    let mut packet = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut packet));
    ethernet_frame(&[], EthernetProtocol::Arp.into(), &packet)
}

pub fn ipv4_icmp_echo_frame() -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"ping",
    };
    let mut message = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut message),
        &ChecksumCapabilities::default(),
    );
    ethernet_frame(&[], ETHERTYPE_IPV4, &ipv4_packet(IpProtocol::Icmp, &message))
}

pub fn ipv6_neighbor_solicitation_frame() -> Vec<u8> {
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: SERVER_V6,
        lladdr: Some(RawHardwareAddress::from(CLIENT_MAC)),
    });
    let mut message = vec![0; repr.buffer_len()];
    repr.emit(
        &CLIENT_V6,
        &SERVER_V6,
        &mut Icmpv6Packet::new_unchecked(&mut message),
        &ChecksumCapabilities::default(),
    );
    ethernet_frame(&[], ETHERTYPE_IPV6, &ipv6_packet(IpProtocol::Icmpv6, &message))
}

/// One of each kind of frame the tests build, as seeds for mutation.
pub fn sample_frames() -> Vec<Vec<u8>> {
    vec![
        arp_request_frame(),
        ipv4_icmp_echo_frame(),
        ipv6_neighbor_solicitation_frame(),
        ipv4_tcp_frame(&[], TcpControl::Syn, &[]),
        ipv4_tcp_frame(&[], TcpControl::Psh, b"GET / HTTP/1.1\r\n"),
        ipv4_tcp_frame(&[(0x88a8, 10), (0x8100, 20)], TcpControl::None, b"x"),
        padded(ipv4_tcp_frame(&[], TcpControl::Psh, b"abc"), 60),
        ipv6_tcp_frame(TcpControl::Syn, &[]),
        ipv6_tcp_frame(TcpControl::Psh, b"\x16\x03\x01"),
        ipv6_tcp_frame_with_extensions(IpProtocol::HopByHop, &hop_by_hop_header(IpProtocol::Tcp), b"hi"),
        ipv6_tcp_frame_with_extensions(IpProtocol::Ipv6Frag, &fragment_header(IpProtocol::Tcp, 0, true), b"hi"),
        ethernet_frame(
            &[],
            ETHERTYPE_IPV4,
            &ipv4_packet(IpProtocol::Udp, &udp_datagram(v4_addrs(), b"dns")),
        ),
        ethernet_frame(
            &[],
            ETHERTYPE_IPV6,
            &ipv6_packet(IpProtocol::Udp, &udp_datagram(v6_addrs(), b"dns")),
        ),
    ]
}
