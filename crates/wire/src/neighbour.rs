//! Address resolution on the wire: ARP (IPv4) and IPv6 neighbour discovery
//! (neighbour solicitations and advertisements), read through checked
//! views ([`message`]) and built for the appliance's own addresses
//! ([`request`], [`reply`]). Only Ethernet with IPv4 ARP is understood; a
//! neighbour discovery message must carry hop limit 255 (RFC 4861 §7.1),
//! so it cannot come from beyond the link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr,
    NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

use crate::classify::{FrameClass, L3Kind, L4Kind};
use crate::ethernet::VlanTag;

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// The hop limit of every neighbour discovery message.
const NDISC_HOP_LIMIT: u8 = 255;
/// ICMPv6 types of a neighbour solicitation and advertisement.
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// An address resolution message, as far as the appliance needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourMessage {
    /// Who has `target`? Answer `asker` (its address and MAC).
    Request {
        target: IpAddr,
        asker: IpAddr,
        asker_mac: [u8; 6],
    },
    /// `address` is at `mac`, told to `to` (an ARP reply's target
    /// address, a neighbour advertisement's IPv6 destination).
    Reply { address: IpAddr, mac: [u8; 6], to: IpAddr },
}

/// The ARP packet, neighbour solicitation or neighbour advertisement in
/// `frame` (classified as `class`); `None` for anything else, and for
/// messages that fail a check (lengths, checksum, hop limit, an
/// unspecified or multicast asker, a solicitation without the asker's MAC).
pub fn message(frame: &[u8], class: &FrameClass) -> Option<NeighbourMessage> {
    if class.malformed.is_some() {
        return None;
    }
    match &class.l3 {
        L3Kind::Arp => arp_message(frame.get(class.l2.header_len()..)?),
        L3Kind::Ipv6 {
            fragment: false,
            l4: L4Kind::Icmp { message_type, .. },
            ..
        } if matches!(*message_type, NEIGHBOUR_SOLICITATION | NEIGHBOUR_ADVERTISEMENT) => {
            ndisc_message(frame.get(class.ip_range()?)?)
        }
        _ => None,
    }
}

fn arp_message(payload: &[u8]) -> Option<NeighbourMessage> {
    let packet = ArpPacket::new_checked(payload).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    if !source_hardware_addr.is_unicast() {
        return None;
    }
    let asker = IpAddr::V4(source_protocol_addr);
    let mac = source_hardware_addr.0;
    match operation {
        ArpOperation::Request => Some(NeighbourMessage::Request {
            target: IpAddr::V4(target_protocol_addr),
            asker,
            asker_mac: mac,
        }),
        ArpOperation::Reply => Some(NeighbourMessage::Reply {
            address: asker,
            mac,
            to: IpAddr::V4(target_protocol_addr),
        }),
        _ => None,
    }
}

fn ndisc_message(ip: &[u8]) -> Option<NeighbourMessage> {
    let packet = Ipv6Packet::new_checked(ip).ok()?;
    let header = Ipv6Repr::parse(&packet).ok()?;
    if header.next_header != IpProtocol::Icmpv6 || header.hop_limit != NDISC_HOP_LIMIT {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(packet.payload()).ok()?;
    let repr = Icmpv6Repr::parse(
        &header.src_addr,
        &header.dst_addr,
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .ok()?;
    let Icmpv6Repr::Ndisc(ndisc) = repr else {
        return None;
    };
    let mac = |lladdr: Option<RawHardwareAddress>| -> Option<[u8; 6]> {
        let bytes: [u8; 6] = lladdr?.as_bytes().try_into().ok()?;
        EthernetAddress(bytes).is_unicast().then_some(bytes)
    };
    match ndisc {
        NdiscRepr::NeighborSolicit { target_addr, lladdr } => {
            // Duplicate address detection (an unspecified source) asks
            // nobody to answer it with a MAC.
            if header.src_addr.is_unspecified() || header.src_addr.is_multicast() {
                return None;
            }
            Some(NeighbourMessage::Request {
                target: IpAddr::V6(target_addr),
                asker: IpAddr::V6(header.src_addr),
                asker_mac: mac(lladdr)?,
            })
        }
        NdiscRepr::NeighborAdvert {
            target_addr, lladdr, ..
        } => Some(NeighbourMessage::Reply {
            address: IpAddr::V6(target_addr),
            mac: mac(lladdr)?,
            to: IpAddr::V6(header.dst_addr),
        }),
        _ => None,
    }
}

/// The frame asking who has `target`, from `own` at `own_mac`: an ARP
/// request (broadcast) or a neighbour solicitation (to `target`'s
/// solicited-node multicast group); `None` when the families differ.
pub fn request(own_mac: [u8; 6], own: IpAddr, target: IpAddr, tags: &[VlanTag]) -> Option<Vec<u8>> {
    match (own, target) {
        (IpAddr::V4(own), IpAddr::V4(target)) => Some(arp(
            ArpOperation::Request,
            own_mac,
            own,
            [0; 6],
            target,
            [0xff; 6],
            tags,
        )),
        (IpAddr::V6(own), IpAddr::V6(target)) => {
            let group = solicited_node(target);
            let o = group.octets();
            let group_mac = [0x33, 0x33, o[12], o[13], o[14], o[15]];
            let ndisc = NdiscRepr::NeighborSolicit {
                target_addr: target,
                lladdr: Some(RawHardwareAddress::from_bytes(&own_mac)),
            };
            Some(ndisc_frame(own_mac, group_mac, own, group, ndisc, tags))
        }
        _ => None,
    }
}

/// The answer of `own` at `own_mac` to `asker` at `asker_mac`: an ARP reply
/// or a solicited neighbour advertisement; `None` when the families differ.
pub fn reply(own_mac: [u8; 6], own: IpAddr, asker: IpAddr, asker_mac: [u8; 6], tags: &[VlanTag]) -> Option<Vec<u8>> {
    match (own, asker) {
        (IpAddr::V4(own), IpAddr::V4(asker)) => Some(arp(
            ArpOperation::Reply,
            own_mac,
            own,
            asker_mac,
            asker,
            asker_mac,
            tags,
        )),
        (IpAddr::V6(own), IpAddr::V6(asker)) => {
            let ndisc = NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
                target_addr: own,
                lladdr: Some(RawHardwareAddress::from_bytes(&own_mac)),
            };
            Some(ndisc_frame(own_mac, asker_mac, own, asker, ndisc, tags))
        }
        _ => None,
    }
}

/// `address`'s solicited-node multicast group (ff02::1:ffXX:XXXX).
fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An Ethernet header (with `tags`) for `ethertype`.
fn ethernet(dst: [u8; 6], src: [u8; 6], tags: &[VlanTag], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 4 * tags.len() + 86);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    for tag in tags {
        frame.extend_from_slice(&tag.tpid.to_be_bytes());
        frame.extend_from_slice(&tag.tci.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn arp(
    operation: ArpOperation,
    own_mac: [u8; 6],
    own: Ipv4Addr,
    target_mac: [u8; 6],
    target: Ipv4Addr,
    to_mac: [u8; 6],
    tags: &[VlanTag],
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: EthernetAddress(own_mac),
        source_protocol_addr: own,
        target_hardware_addr: EthernetAddress(target_mac),
        target_protocol_addr: target,
    };
    let mut frame = ethernet(to_mac, own_mac, tags, ETHERTYPE_ARP);
    let start = frame.len();
    frame.resize(start + repr.buffer_len(), 0);
    repr.emit(&mut ArpPacket::new_unchecked(&mut frame[start..]));
    frame
}

fn ndisc_frame(
    own_mac: [u8; 6],
    to_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ndisc: NdiscRepr<'_>,
    tags: &[VlanTag],
) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(ndisc);
    let header = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: NDISC_HOP_LIMIT,
    };
    let mut frame = ethernet(to_mac, own_mac, tags, ETHERTYPE_IPV6);
    let start = frame.len();
    frame.resize(start + header.buffer_len() + icmp.buffer_len(), 0);
    let mut ip = Ipv6Packet::new_unchecked(&mut frame[start..]);
    header.emit(&mut ip);
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(ip.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    const OWN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x5];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x2];

    fn read(frame: &[u8]) -> Option<NeighbourMessage> {
        message(frame, &classify(frame).ok()?)
    }

    /// The request `own` sends for `peer` and `peer`'s reply, each checked
    /// to read back as what it is.
    fn asked_and_answered(own: &str, peer: &str, tags: &[VlanTag]) -> (Vec<u8>, Vec<u8>) {
        let own: IpAddr = own.parse().unwrap();
        let peer: IpAddr = peer.parse().unwrap();
        let asked = request(OWN_MAC, own, peer, tags).unwrap();
        assert_eq!(
            read(&asked),
            Some(NeighbourMessage::Request {
                target: peer,
                asker: own,
                asker_mac: OWN_MAC
            })
        );
        let answered = reply(PEER_MAC, peer, own, OWN_MAC, tags).unwrap();
        assert_eq!(
            read(&answered),
            Some(NeighbourMessage::Reply {
                address: peer,
                mac: PEER_MAC,
                to: own
            })
        );
        (asked, answered)
    }

    #[test]
    fn arp_request_and_reply_read_back() {
        let (asked, answered) = asked_and_answered("198.18.7.1", "198.18.7.2", &[]);
        assert_eq!(&asked[..6], &[0xff; 6]);
        assert_eq!(&answered[..6], &OWN_MAC);
    }

    #[test]
    fn neighbour_solicitation_and_advertisement_read_back_with_tags() {
        let tags = [VlanTag { tpid: 0x8100, tci: 7 }];
        let (asked, _) = asked_and_answered("2001:2:7::1", "2001:2:7::2", &tags);
        assert_eq!(&asked[..6], &[0x33, 0x33, 0xff, 0, 0, 2]);
    }

    #[test]
    fn forged_hop_limit_and_checksum_are_not_read() {
        let own: IpAddr = "2001:2:7::1".parse().unwrap();
        let peer: IpAddr = "2001:2:7::2".parse().unwrap();
        let asked = request(OWN_MAC, own, peer, &[]).unwrap();
        let mut routed = asked.clone();
        routed[14 + 7] = 64; // hop limit: from beyond the link
        assert_eq!(read(&routed), None);
        let mut corrupt = asked;
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(read(&corrupt), None);
    }

    #[test]
    fn mixed_families_build_nothing() {
        let v4: IpAddr = "198.18.7.1".parse().unwrap();
        let v6: IpAddr = "2001:2:7::1".parse().unwrap();
        assert!(request(OWN_MAC, v4, v6, &[]).is_none());
        assert!(reply(OWN_MAC, v6, v4, PEER_MAC, &[]).is_none());
    }

    #[test]
    fn truncated_and_random_frames_never_panic() {
        let own: IpAddr = "198.18.7.1".parse().unwrap();
        let peer: IpAddr = "2001:2:7::2".parse().unwrap();
        let own6: IpAddr = "2001:2:7::1".parse().unwrap();
        for frame in [
            request(OWN_MAC, own, "198.18.7.2".parse().unwrap(), &[]).unwrap(),
            request(OWN_MAC, own6, peer, &[]).unwrap(),
        ] {
            for len in 0..frame.len() {
                let _ = read(&frame[..len]);
            }
            for (at, flip) in (0..frame.len()).zip([0xffu8, 0x01, 0x80].into_iter().cycle()) {
                let mut bent = frame.clone();
                bent[at] ^= flip;
                let _ = read(&bent);
            }
        }
    }
}
