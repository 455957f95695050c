//! ICMP "destination unreachable" errors about TCP segments: which TCP
//! connection an error quotes (RFC 792 / RFC 4443: the offending IP header
//! plus at least 8 bytes of it), and rewriting the quoted sequence number so
//! the error can be passed to the other end of a spliced connection.

use core::net::IpAddr;

use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet};

use crate::classify::{FlowTuple, FrameClass, L3Kind, L4Kind};

/// ICMPv4 type "destination unreachable".
const ICMPV4_UNREACHABLE: u8 = 3;
/// ICMPv6 type "destination unreachable".
const ICMPV6_UNREACHABLE: u8 = 1;
/// Bytes of the ICMP header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;
const IPV6_HEADER_LEN: usize = 40;

/// The TCP segment a destination-unreachable error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedTcp {
    /// The quoted segment's tuple, as it was sent (source = its sender).
    pub tuple: FlowTuple,
    pub seq_number: u32,
    /// Offset in the frame of the quoted sequence number.
    seq_at: usize,
}

/// The quoted TCP segment if `frame` is an ICMP or ICMPv6 destination
/// unreachable error about one; `None` for anything else.
pub fn quoted_tcp(frame: &[u8], class: &FrameClass) -> Option<QuotedTcp> {
    let is_unreachable = match class.l3 {
        L3Kind::Ipv4 {
            l4: L4Kind::Icmp { message_type, .. },
            ..
        } => message_type == ICMPV4_UNREACHABLE,
        L3Kind::Ipv6 {
            l4: L4Kind::Icmp { message_type, .. },
            ..
        } => message_type == ICMPV6_UNREACHABLE,
        _ => false,
    };
    if !is_unreachable || class.malformed.is_some() {
        return None;
    }
    let icmp = class.l4_range()?;
    let quoted_at = icmp.start.checked_add(ICMP_HEADER_LEN)?;
    let quoted = frame.get(quoted_at..icmp.end)?;
    let (src_ip, dst_ip, header_len) = match quoted.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_unchecked(quoted);
            let header_len = usize::from(*quoted.first()? & 0x0f) * 4;
            if quoted.len() < 20 || header_len < 20 || ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), header_len)
        }
        6 => {
            let fixed = quoted.get(..IPV6_HEADER_LEN)?;
            if fixed.get(6) != Some(&u8::from(IpProtocol::Tcp)) {
                return None;
            }
            let address = |at: usize| -> Option<IpAddr> {
                let bytes: [u8; 16] = fixed.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::V6(bytes.into()))
            };
            (address(8)?, address(24)?, IPV6_HEADER_LEN)
        }
        _ => return None,
    };
    // At least the ports and the sequence number must be quoted.
    let tcp = quoted.get(header_len..header_len.checked_add(8)?)?;
    let field = |at: usize| tcp.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let seq = tcp.get(4..8)?;
    Some(QuotedTcp {
        tuple: FlowTuple {
            src_ip,
            dst_ip,
            src_port: field(0)?,
            dst_port: field(2)?,
        },
        seq_number: u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]),
        seq_at: quoted_at + header_len + 4,
    })
}

/// Replaces the quoted sequence number with `seq_number` and refreshes the
/// ICMP checksum. Returns false (frame unchanged) if it cannot.
pub fn rewrite_quoted_seq(frame: &mut [u8], class: &FrameClass, quote: &QuotedTcp, seq_number: u32) -> bool {
    let (Some(icmp), Some(ip)) = (class.l4_range(), class.ip_range()) else {
        return false;
    };
    let Some(field) = frame.get_mut(quote.seq_at..quote.seq_at + 4) else {
        return false;
    };
    field.copy_from_slice(&seq_number.to_be_bytes());
    let (src, dst) = match frame.get(ip.clone()).map(|packet| packet.first().map(|b| b >> 4)) {
        Some(Some(4)) => (None, None),
        Some(Some(6)) => {
            let Some(header) = frame.get(ip.start..ip.start + IPV6_HEADER_LEN) else {
                return false;
            };
            let address = |at: usize| -> Option<IpAddress> {
                let bytes: [u8; 16] = header.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddress::Ipv6(bytes.into()))
            };
            (address(8), address(24))
        }
        _ => return false,
    };
    let Some(message) = frame.get_mut(icmp) else {
        return false;
    };
    match (src, dst) {
        (Some(IpAddress::Ipv6(src)), Some(IpAddress::Ipv6(dst))) => {
            Icmpv6Packet::new_unchecked(message).fill_checksum(&src, &dst);
        }
        _ => Icmpv4Packet::new_unchecked(message).fill_checksum(),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify;
    use smoltcp::wire::Ipv6Address;

    /// An Ethernet frame carrying an ICMPv4 host unreachable that quotes a
    /// TCP SYN 198.18.0.1:40000 -> 198.18.0.3:443 with `seq`.
    fn icmpv4_unreachable(seq: u32) -> Vec<u8> {
        let mut quoted = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 3];
        quoted.extend_from_slice(&40000u16.to_be_bytes());
        quoted.extend_from_slice(&443u16.to_be_bytes());
        quoted.extend_from_slice(&seq.to_be_bytes());
        let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
        let total = 20 + icmp.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            1,
            0,
            0,
            198,
            18,
            0,
            2,
            198,
            18,
            0,
            1,
        ];
        Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&icmp);
        frame
    }

    fn icmpv6_unreachable(seq: u32) -> Vec<u8> {
        let src: Ipv6Address = "2001:2::2".parse().unwrap();
        let dst: Ipv6Address = "2001:2::1".parse().unwrap();
        let mut quoted = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        quoted.extend_from_slice(&"2001:2::1".parse::<Ipv6Address>().unwrap().octets());
        quoted.extend_from_slice(&"2001:2::3".parse::<Ipv6Address>().unwrap().octets());
        quoted.extend_from_slice(&40001u16.to_be_bytes());
        quoted.extend_from_slice(&443u16.to_be_bytes());
        quoted.extend_from_slice(&seq.to_be_bytes());
        let mut icmp = vec![1, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(&src, &dst);
        let mut frame = vec![
            2,
            0,
            0,
            0,
            0,
            1,
            2,
            0,
            0,
            0,
            0,
            2,
            0x86,
            0xdd,
            0x60,
            0,
            0,
            0,
            0,
            icmp.len() as u8,
            58,
            64,
        ];
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&icmp);
        frame
    }

    #[test]
    fn finds_and_rewrites_the_quoted_segment_ipv4() {
        let mut frame = icmpv4_unreachable(1234);
        let class = classify(&frame).unwrap();
        let quote = quoted_tcp(&frame, &class).expect("a quoted TCP segment");
        assert_eq!(quote.seq_number, 1234);
        assert_eq!(quote.tuple.src_port, 40000);
        assert_eq!(quote.tuple.dst_ip, "198.18.0.3".parse::<IpAddr>().unwrap());
        assert!(rewrite_quoted_seq(&mut frame, &class, &quote, 0xdead_beef));
        let class = classify(&frame).unwrap();
        assert!(class.malformed.is_none());
        assert_eq!(quoted_tcp(&frame, &class).unwrap().seq_number, 0xdead_beef);
        let icmp = &frame[class.l4_range().unwrap()];
        assert!(Icmpv4Packet::new_checked(icmp).unwrap().verify_checksum());
    }

    #[test]
    fn finds_and_rewrites_the_quoted_segment_ipv6() {
        let mut frame = icmpv6_unreachable(99);
        let class = classify(&frame).unwrap();
        let quote = quoted_tcp(&frame, &class).expect("a quoted TCP segment");
        assert_eq!(quote.seq_number, 99);
        assert_eq!(quote.tuple.src_port, 40001);
        assert!(rewrite_quoted_seq(&mut frame, &class, &quote, 7));
        let class = classify(&frame).unwrap();
        assert_eq!(quoted_tcp(&frame, &class).unwrap().seq_number, 7);
        let icmp = &frame[class.l4_range().unwrap()];
        let src: Ipv6Address = "2001:2::2".parse().unwrap();
        let dst: Ipv6Address = "2001:2::1".parse().unwrap();
        assert!(Icmpv6Packet::new_checked(icmp).unwrap().verify_checksum(&src, &dst));
    }

    #[test]
    fn other_messages_and_short_quotes_are_ignored() {
        let mut echo = icmpv4_unreachable(1);
        echo[34] = 8; // echo request, not unreachable
        let class = classify(&echo).unwrap();
        assert!(quoted_tcp(&echo, &class).is_none());
        let mut short = icmpv4_unreachable(1);
        short.truncate(short.len() - 6);
        let total = (short.len() - 14) as u16;
        short[16..18].copy_from_slice(&total.to_be_bytes());
        short[24..26].copy_from_slice(&[0, 0]);
        let checksum = {
            let mut ip = short[14..34].to_vec();
            Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
            [ip[10], ip[11]]
        };
        short[24..26].copy_from_slice(&checksum);
        if let Ok(class) = classify(&short) {
            assert!(quoted_tcp(&short, &class).is_none(), "fewer than 8 quoted TCP bytes");
        }
    }
}
