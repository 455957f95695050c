//! Building frames rather than reading them: one well-formed Ethernet II +
//! IPv4/IPv6 + TCP frame per [`TcpSegment`], emitted with smoltcp's `wire`
//! representations, all checksums filled.
//!
//! Used to write synthetic TCP framing around decrypted payload (the
//! decrypted capture), so every frame carries no VLAN tag, no IP options and
//! no IPv6 extension headers; IPv4 packets have DF set and an identification
//! of zero. Frames are not padded to the Ethernet minimum of 60 bytes. A SYN
//! carries an MSS option of [`ethernet_mss`] for its address family and no
//! other option; other segments carry no options.

use core::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};

/// The Ethernet MTU the synthetic segments are sized for.
const ETHERNET_MTU: u16 = 1500;

/// IPv4 header without options, IPv6 fixed header, TCP header without
/// options (smoltcp's constants are `usize`).
const IPV4_HEADER: u16 = 20;
const IPV6_HEADER: u16 = 40;
const TCP_HEADER: u16 = 20;

/// The hop limit (IPv4 TTL) of every emitted packet.
const HOP_LIMIT: u8 = 64;

/// The TCP maximum segment size on a 1500-byte Ethernet MTU: 1460 for IPv4,
/// 1440 for IPv6 (no IP or TCP options).
pub fn ethernet_mss(addr: IpAddr) -> u16 {
    let ip_header = match addr {
        IpAddr::V4(_) => IPV4_HEADER,
        IpAddr::V6(_) => IPV6_HEADER,
    };
    ETHERNET_MTU - ip_header - TCP_HEADER
}

/// The control flag of a segment besides ACK (whose presence follows from
/// [`TcpSegment::ack`]). smoltcp emits at most one of them per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentControl {
    /// No flag: a pure ACK or a data segment without PSH.
    None,
    /// PSH: a data segment to be pushed to the application.
    Psh,
    /// SYN (with an MSS option).
    Syn,
    /// FIN.
    Fin,
    /// RST.
    Rst,
}

impl From<SegmentControl> for TcpControl {
    fn from(control: SegmentControl) -> TcpControl {
        match control {
            SegmentControl::None => TcpControl::None,
            SegmentControl::Psh => TcpControl::Psh,
            SegmentControl::Syn => TcpControl::Syn,
            SegmentControl::Fin => TcpControl::Fin,
            SegmentControl::Rst => TcpControl::Rst,
        }
    }
}

/// Why a [`TcpSegment`] cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SegmentError {
    /// The source and destination are not both IPv4 or both IPv6.
    #[error("source {src} and destination {dst} are not of the same IP version")]
    AddressFamilyMismatch {
        /// The source address.
        src: IpAddr,
        /// The destination address.
        dst: IpAddr,
    },
    /// The TCP segment does not fit the IP length field.
    #[error("a TCP payload of {len} bytes does not fit one IP packet (at most {max})")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The largest payload this segment's headers allow.
        max: usize,
    },
}

/// One TCP segment in an Ethernet frame, as [`write`](TcpSegment::write)
/// emits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Ethernet source address.
    pub src_mac: [u8; 6],
    /// Ethernet destination address.
    pub dst_mac: [u8; 6],
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port; of the same IP version as `src`.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number; `Some` sets the ACK flag.
    pub ack: Option<u32>,
    /// The control flag besides ACK.
    pub control: SegmentControl,
    /// Advertised window, unscaled.
    pub window: u16,
    /// TCP payload.
    pub payload: &'a [u8],
}

impl TcpSegment<'_> {
    /// Appends the frame to `out`. On error `out` is left unchanged.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), SegmentError> {
        let is_syn = self.control == SegmentControl::Syn;
        let tcp = TcpRepr {
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            control: self.control.into(),
            seq_number: TcpSeqNumber(self.seq.cast_signed()),
            ack_number: self.ack.map(|ack| TcpSeqNumber(ack.cast_signed())),
            window_len: self.window,
            window_scale: None,
            max_seg_size: is_syn.then(|| ethernet_mss(self.src.ip())),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: self.payload,
        };
        let tcp_len = tcp.buffer_len();
        let too_large = |ip_header_len: usize| SegmentError::PayloadTooLarge {
            len: self.payload.len(),
            max: usize::from(u16::MAX) - ip_header_len - tcp.header_len(),
        };
        let (src, dst) = (self.src.ip(), self.dst.ip());
        let (src_ip, dst_ip) = (IpAddress::from(src), IpAddress::from(dst));
        let ethernet = |ethertype| EthernetRepr {
            src_addr: EthernetAddress(self.src_mac),
            dst_addr: EthernetAddress(self.dst_mac),
            ethertype,
        };
        let checksums = ChecksumCapabilities::default();
        let start = out.len();
        match (src, dst) {
            (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
                if IPV4_HEADER_LEN + tcp_len > usize::from(u16::MAX) {
                    return Err(too_large(IPV4_HEADER_LEN));
                }
                let ip = Ipv4Repr {
                    src_addr,
                    dst_addr,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp_len,
                    hop_limit: HOP_LIMIT,
                };
                out.resize(start + ETHERNET_HEADER_LEN + ip.buffer_len() + tcp_len, 0);
                let (l2, rest) = out[start..].split_at_mut(ETHERNET_HEADER_LEN);
                ethernet(EthernetProtocol::Ipv4).emit(&mut EthernetFrame::new_unchecked(l2));
                let (l3, l4) = rest.split_at_mut(ip.buffer_len());
                ip.emit(&mut Ipv4Packet::new_unchecked(l3), &checksums);
                tcp.emit(&mut TcpPacket::new_unchecked(l4), &src_ip, &dst_ip, &checksums);
            }
            (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
                if tcp_len > usize::from(u16::MAX) {
                    return Err(too_large(0));
                }
                let ip = Ipv6Repr {
                    src_addr,
                    dst_addr,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp_len,
                    hop_limit: HOP_LIMIT,
                };
                out.resize(start + ETHERNET_HEADER_LEN + ip.buffer_len() + tcp_len, 0);
                let (l2, rest) = out[start..].split_at_mut(ETHERNET_HEADER_LEN);
                ethernet(EthernetProtocol::Ipv6).emit(&mut EthernetFrame::new_unchecked(l2));
                let (l3, l4) = rest.split_at_mut(ip.buffer_len());
                ip.emit(&mut Ipv6Packet::new_unchecked(l3));
                tcp.emit(&mut TcpPacket::new_unchecked(l4), &src_ip, &dst_ip, &checksums);
            }
            _ => return Err(SegmentError::AddressFamilyMismatch { src, dst }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{classify, FlowTuple, L3Kind, TcpFlags};

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    fn segment<'a>(src: &str, dst: &str, control: SegmentControl, payload: &'a [u8]) -> TcpSegment<'a> {
        TcpSegment {
            src_mac: CLIENT_MAC,
            dst_mac: SERVER_MAC,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq: 0xffff_fff0,
            ack: (control != SegmentControl::Syn).then_some(77),
            control,
            window: 65_535,
            payload,
        }
    }

    /// Writes `segment` after some unrelated bytes and checks it parses back.
    fn round_trip(segment: &TcpSegment<'_>, flags: TcpFlags) -> Vec<u8> {
        let mut out = vec![0xaa; 3];
        segment.write(&mut out).unwrap();
        assert_eq!(&out[..3], &[0xaa; 3]);
        let frame = &out[3..];
        let class = classify(frame).unwrap();
        assert_eq!(class.malformed, None, "{class:?}");
        assert_eq!(class.l2.dst_addr(), EthernetAddress(segment.dst_mac));
        assert_eq!(class.l2.src_addr(), EthernetAddress(segment.src_mac));
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(
            *flow,
            FlowTuple {
                src_ip: segment.src.ip(),
                dst_ip: segment.dst.ip(),
                src_port: segment.src.port(),
                dst_port: segment.dst.port(),
            }
        );
        assert_eq!(info.flags, flags);
        assert_eq!(info.seq_number, segment.seq);
        assert_eq!(info.ack_number, segment.ack.unwrap_or(0));
        assert_eq!(info.window, segment.window);
        assert_eq!(info.payload_len, segment.payload.len());
        assert_eq!(class.ip_range().unwrap().end, frame.len());
        let payload_start = class.l4_range().unwrap().start + info.header_len;
        assert_eq!(&frame[payload_start..], segment.payload);
        assert!(class.tcp_checksum_ok(frame));
        frame.to_vec()
    }

    fn flags(syn: bool, ack: bool, fin: bool, rst: bool, psh: bool) -> TcpFlags {
        TcpFlags {
            syn,
            ack,
            fin,
            rst,
            psh,
        }
    }

    #[test]
    fn ipv4_segments_parse_back() {
        let (src, dst) = ("10.0.0.1:40000", "192.0.2.7:80");
        let syn = round_trip(
            &segment(src, dst, SegmentControl::Syn, b""),
            flags(true, false, false, false, false),
        );
        assert!(matches!(
            classify(&syn).unwrap().l3,
            L3Kind::Ipv4 { fragment: false, .. }
        ));
        // 14 + 20 + 20 + MSS option.
        assert_eq!(syn.len(), 58);
        assert_eq!(&syn[54..58], &[2, 4, 0x05, 0xb4]);
        round_trip(
            &segment(src, dst, SegmentControl::Psh, b"GET / HTTP/1.1\r\n\r\n"),
            flags(false, true, false, false, true),
        );
        round_trip(
            &segment(src, dst, SegmentControl::None, &[7; 1460]),
            flags(false, true, false, false, false),
        );
        round_trip(
            &segment(src, dst, SegmentControl::Fin, b""),
            flags(false, true, true, false, false),
        );
        round_trip(
            &segment(src, dst, SegmentControl::Rst, b""),
            flags(false, true, false, true, false),
        );
    }

    #[test]
    fn ipv6_segments_parse_back() {
        let (src, dst) = ("[fd00::1]:40000", "[2001:db8::7]:443");
        let syn = round_trip(
            &segment(src, dst, SegmentControl::Syn, b""),
            flags(true, false, false, false, false),
        );
        assert!(matches!(
            classify(&syn).unwrap().l3,
            L3Kind::Ipv6 { fragment: false, .. }
        ));
        assert_eq!(syn.len(), 14 + 40 + 24);
        assert_eq!(&syn[74..78], &[2, 4, 0x05, 0xa0]);
        round_trip(
            &segment(src, dst, SegmentControl::Psh, &[0x5a; 1440]),
            flags(false, true, false, false, true),
        );
        let mut fin = segment(src, dst, SegmentControl::Fin, b"");
        fin.ack = None;
        round_trip(&fin, flags(false, false, true, false, false));
    }

    #[test]
    fn mixed_families_are_rejected() {
        let mut out = vec![1, 2];
        let error = segment("10.0.0.1:1", "[fd00::1]:2", SegmentControl::Psh, b"x")
            .write(&mut out)
            .unwrap_err();
        assert_eq!(
            error,
            SegmentError::AddressFamilyMismatch {
                src: "10.0.0.1".parse().unwrap(),
                dst: "fd00::1".parse().unwrap(),
            }
        );
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn oversized_payloads_are_rejected() {
        let payload = vec![0; 65_536];
        let mut out = Vec::new();
        let mut v4 = segment("10.0.0.1:1", "10.0.0.2:2", SegmentControl::Psh, &payload[..65_496]);
        assert_eq!(
            v4.write(&mut out),
            Err(SegmentError::PayloadTooLarge {
                len: 65_496,
                max: 65_495
            })
        );
        let v6 = segment("[fd00::1]:1", "[fd00::2]:2", SegmentControl::Psh, &payload[..65_516]);
        assert_eq!(
            v6.write(&mut out),
            Err(SegmentError::PayloadTooLarge {
                len: 65_516,
                max: 65_515
            })
        );
        assert!(out.is_empty());
        // The largest that fits.
        v4.payload = &payload[..65_495];
        v4.write(&mut out).unwrap();
        assert_eq!(out.len(), 14 + 65_535);
    }

    #[test]
    fn mss_follows_the_address_family() {
        assert_eq!(ethernet_mss("10.0.0.1".parse().unwrap()), 1460);
        assert_eq!(ethernet_mss("fd00::1".parse().unwrap()), 1440);
    }
}
