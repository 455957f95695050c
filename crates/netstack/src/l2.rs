//! The Ethernet framing a flow's frames are sent with: the MAC pair and the
//! VLAN tags recorded when the flow was created: copied from the peer's
//! frames for transparent flows, resolved by [`crate::neighbour`] for
//! connections from the appliance's own addresses.

use wire::{EthernetHeader, VlanTag};

/// Ethernet II header length without tags.
const ETHERNET_LEN: usize = 14;
/// Bytes one 802.1Q/802.1ad tag adds.
const TAG_LEN: usize = 4;

/// The L2 header prepended to every frame a flow sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    tags: [VlanTag; 2],
    tag_count: u8,
}

impl L2Header {
    /// A header with these addresses and up to two VLAN tags (outermost
    /// first); further tags are ignored.
    pub fn new(dst_mac: [u8; 6], src_mac: [u8; 6], tags: &[VlanTag]) -> L2Header {
        let mut header = L2Header {
            dst_mac,
            src_mac,
            tags: [VlanTag { tpid: 0, tci: 0 }; 2],
            tag_count: 0,
        };
        for (slot, tag) in header.tags.iter_mut().zip(tags) {
            *slot = *tag;
            header.tag_count += 1;
        }
        header
    }

    /// The header of a frame that goes the same way as `received`, on the
    /// other side of the appliance (same MACs, same tags).
    pub fn same_direction(received: &EthernetHeader) -> L2Header {
        L2Header::new(received.dst_addr().0, received.src_addr().0, received.vlan_tags())
    }

    /// The header of a reply to `received`: the MACs swapped, same tags, so
    /// the appliance answers with the peer's own MAC address.
    pub fn reply_to(received: &EthernetHeader) -> L2Header {
        L2Header::new(received.src_addr().0, received.dst_addr().0, received.vlan_tags())
    }

    pub fn tags(&self) -> &[VlanTag] {
        &self.tags[..usize::from(self.tag_count)]
    }

    /// Bytes this header takes in front of the IP packet.
    pub fn len(&self) -> usize {
        ETHERNET_LEN + TAG_LEN * usize::from(self.tag_count)
    }

    /// Always false: an Ethernet header is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header for an IP packet of `version` (4 or 6) into the
    /// start of `out`, which must be at least `self.len()` bytes long.
    pub fn write(&self, out: &mut [u8], ip_version: u8) {
        let ethertype: u16 = if ip_version == 6 { 0x86dd } else { 0x0800 };
        let Some(header) = out.get_mut(..self.len()) else {
            return;
        };
        header[..6].copy_from_slice(&self.dst_mac);
        header[6..12].copy_from_slice(&self.src_mac);
        let mut at = 12;
        for tag in self.tags() {
            header[at..at + 2].copy_from_slice(&tag.tpid.to_be_bytes());
            header[at + 2..at + 4].copy_from_slice(&tag.tci.to_be_bytes());
            at += TAG_LEN;
        }
        header[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_macs_tags_and_ethertype() {
        let tags = [VlanTag { tpid: 0x88a8, tci: 100 }, VlanTag { tpid: 0x8100, tci: 10 }];
        let header = L2Header::new([1; 6], [2; 6], &tags);
        assert_eq!(header.len(), 22);
        let mut out = [0u8; 22];
        header.write(&mut out, 6);
        assert_eq!(&out[..6], &[1; 6]);
        assert_eq!(&out[6..12], &[2; 6]);
        assert_eq!(&out[12..22], &[0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 10, 0x86, 0xdd]);
        let parsed = EthernetHeader::parse(&out).expect("parses");
        assert_eq!(L2Header::same_direction(&parsed), header);
        assert_eq!(L2Header::reply_to(&parsed).dst_mac, [2; 6]);
    }

    #[test]
    fn untagged_ipv4() {
        let header = L2Header::new([1; 6], [2; 6], &[]);
        let mut out = [0u8; 14];
        header.write(&mut out, 4);
        assert_eq!(&out[12..], &[0x08, 0x00]);
    }
}
