//! The `wire` target: [`wire::classify`] and every view over its result on
//! arbitrary bytes, the ICMP quote parser and rewriter, the ARP/neighbour
//! discovery reader, and the segment builder (whose frames must classify
//! back to what was built).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use wire::icmp::{quoted_tcp, rewrite_quoted_seq};
use wire::{classify, EthernetHeader, SegmentControl, TcpSegment};

/// Classifies `data` as a received frame, checks that every range the class
/// reports lies within the frame, and builds a segment from the same bytes.
pub fn wire(data: &[u8]) {
    classify_frame(data);
    if let Some(segment) = segment_from(data) {
        rebuild(&segment);
    }
}

fn classify_frame(frame: &[u8]) {
    let header = EthernetHeader::parse(frame);
    let Ok(class) = classify(frame) else {
        assert!(header.is_err(), "classify refused a frame whose Ethernet header parses");
        return;
    };
    let header = header.unwrap_or_else(|err| panic!("classify accepted a frame whose Ethernet header fails: {err}"));
    assert!(header.header_len() <= frame.len());
    assert_eq!(header.vlan_tags().len() * 4 + 14, header.header_len());
    let _ = (header.dst_addr(), header.src_addr(), header.ethertype());
    for tag in header.vlan_tags() {
        let _ = (tag.vlan_id(), tag.priority(), tag.drop_eligible());
    }
    let _ = class.ip_destination(frame);
    if let Some(wire::neighbour::NeighbourMessage::Request {
        target,
        asker,
        asker_mac,
    }) = wire::neighbour::message(frame, &class)
    {
        // An answer to what was read is built, and reads back as one.
        if let Some(reply) = wire::neighbour::reply([2, 0, 0, 0, 0, 1], target, asker, asker_mac, &[]) {
            let read = classify(&reply)
                .ok()
                .and_then(|class| wire::neighbour::message(&reply, &class));
            assert!(
                matches!(read, Some(wire::neighbour::NeighbourMessage::Reply { .. })),
                "the answer to {target} from {asker} reads back: {read:?}"
            );
        }
    }
    let ip = class.ip_range();
    if let Some(ip) = &ip {
        assert!(
            ip.start <= ip.end && ip.end <= frame.len(),
            "IP range {ip:?} of {}",
            frame.len()
        );
    }
    if let Some(l4) = class.l4_range() {
        let ip = ip.unwrap_or_else(|| panic!("an L4 range {l4:?} without an IP range"));
        assert!(
            ip.start <= l4.start && l4.start <= l4.end && l4.end <= ip.end,
            "L4 {l4:?} outside IP {ip:?}"
        );
    }
    if let Some((flow, info)) = class.tcp() {
        assert!(class.is_tcp_candidate());
        assert_eq!(flow.reversed().reversed(), *flow);
        assert!(
            (20..=60).contains(&info.header_len),
            "TCP header of {} bytes",
            info.header_len
        );
        let l4 = class
            .l4_range()
            .unwrap_or_else(|| panic!("a TCP candidate without an L4 range"));
        assert_eq!(
            info.header_len + info.payload_len,
            l4.len(),
            "TCP lengths against {l4:?}"
        );
    }
    let _ = class.l4();
    let _ = class.tcp_checksum_ok(frame);
    if let Some(quote) = quoted_tcp(frame, &class) {
        let mut copy = frame.to_vec();
        if rewrite_quoted_seq(&mut copy, &class, &quote, quote.seq_number.wrapping_add(1)) {
            let again =
                classify(&copy).unwrap_or_else(|err| panic!("a rewritten ICMP error no longer classifies: {err}"));
            let requote = quoted_tcp(&copy, &again).unwrap_or_else(|| panic!("a rewritten ICMP error lost its quote"));
            assert_eq!(requote.tuple, quote.tuple);
            assert_eq!(requote.seq_number, quote.seq_number.wrapping_add(1));
        }
    }
}

/// A segment whose fields come from the first bytes of `data` and whose
/// payload is the rest.
fn segment_from(data: &[u8]) -> Option<TcpSegment<'_>> {
    let (fields, payload) = data.split_at_checked(56)?;
    let word = |at: usize| u32::from_be_bytes([fields[at], fields[at + 1], fields[at + 2], fields[at + 3]]);
    let port = |at: usize| u16::from_be_bytes([fields[at], fields[at + 1]]);
    let v6 = |at: usize| -> IpAddr {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&fields[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    let v4 = |at: usize| IpAddr::V4(Ipv4Addr::from(word(at)));
    let (src, dst) = match fields[0] % 3 {
        0 => (v4(14), v4(18)),
        1 => (v6(14), v6(30)),
        _ => (v4(14), v6(30)),
    };
    let control = match fields[1] % 5 {
        0 => SegmentControl::None,
        1 => SegmentControl::Psh,
        2 => SegmentControl::Syn,
        3 => SegmentControl::Fin,
        _ => SegmentControl::Rst,
    };
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&fields[2..8]);
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&fields[8..14]);
    Some(TcpSegment {
        src_mac,
        dst_mac,
        src: SocketAddr::new(src, port(46)),
        dst: SocketAddr::new(dst, port(48)),
        seq: word(50),
        ack: (fields[54] & 1 == 1).then(|| word(50).rotate_left(7)),
        control,
        window: port(54),
        payload,
    })
}

/// Writes `segment` and checks the frame classifies back to it.
fn rebuild(segment: &TcpSegment<'_>) {
    let mut frame = vec![0xee; 3];
    if segment.write(&mut frame).is_err() {
        assert_eq!(frame, [0xee; 3], "a failed write changed the output");
        assert!(
            segment.src.is_ipv4() != segment.dst.is_ipv4() || segment.payload.len() > 65_000,
            "{segment:?} was refused"
        );
        return;
    }
    let frame = &frame[3..];
    let class = classify(frame).unwrap_or_else(|err| panic!("a built segment does not classify: {err}"));
    // An EtherType in the source MAC is no concern: the header has no tags
    // (TcpSegment never writes one), so only the addresses can differ.
    let (flow, info) = class
        .tcp()
        .unwrap_or_else(|| panic!("a built segment is no TCP candidate: {class:?}"));
    assert_eq!(flow.src_ip, segment.src.ip());
    assert_eq!(flow.dst_ip, segment.dst.ip());
    assert_eq!(flow.src_port, segment.src.port());
    assert_eq!(flow.dst_port, segment.dst.port());
    assert_eq!(info.seq_number, segment.seq);
    assert_eq!(info.payload_len, segment.payload.len());
    assert_eq!(info.flags.ack, segment.ack.is_some());
    assert!(class.tcp_checksum_ok(frame), "a built segment fails its checksum");
}
