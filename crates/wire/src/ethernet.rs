//! The Ethernet II header with up to two stacked VLAN tags (802.1Q, 802.1ad),
//! which smoltcp's `EthernetFrame` does not look into.
//!
//! ```text
//! | dst MAC (6) | src MAC (6) | [TPID (2) TCI (2)] x 0..=2 | ethertype (2) | payload
//! ```
//!
//! A tag is recognised by one of the TPIDs [`TPID_8021Q`], [`TPID_8021AD`] or
//! [`TPID_QINQ_LEGACY`]. A third stacked tag is not unwrapped: its TPID is then
//! reported as the inner ethertype.

use smoltcp::wire::{EthernetAddress, EthernetFrame, ETHERNET_HEADER_LEN};

use crate::WireError;

/// TPID of an IEEE 802.1Q customer VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an IEEE 802.1ad service VLAN tag (the outer tag of Q-in-Q).
pub const TPID_8021AD: u16 = 0x88a8;
/// Pre-standard Q-in-Q TPID still used by some switches.
pub const TPID_QINQ_LEGACY: u16 = 0x9100;
/// How many stacked VLAN tags [`EthernetHeader::parse`] unwraps.
pub const MAX_VLAN_TAGS: usize = 2;
/// Length of one VLAN tag (TPID and TCI).
pub const VLAN_TAG_LEN: usize = 4;

/// One VLAN tag as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Tag protocol identifier: the ethertype value that announced this tag.
    pub tpid: u16,
    /// Tag control information: priority, drop-eligible bit and VLAN id.
    pub tci: u16,
}

impl VlanTag {
    /// The 12-bit VLAN identifier.
    pub fn vlan_id(&self) -> u16 {
        self.tci & 0x0fff
    }

    /// The 3-bit priority code point.
    pub fn priority(&self) -> u8 {
        // The shift leaves 3 bits, so the conversion cannot fail.
        u8::try_from(self.tci >> 13).unwrap_or(0)
    }

    /// The drop-eligible indicator.
    pub fn drop_eligible(&self) -> bool {
        self.tci & 0x1000 != 0
    }
}

/// Whether `ethertype` announces a VLAN tag.
pub fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY)
}

/// The parsed Ethernet II header of a frame, VLAN tags included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetHeader {
    dst_addr: EthernetAddress,
    src_addr: EthernetAddress,
    /// Outermost tag first; slots at and beyond `tag_count` stay default.
    tags: [VlanTag; MAX_VLAN_TAGS],
    tag_count: u8,
    ethertype: u16,
}

impl EthernetHeader {
    /// Parses the header at the start of `frame`.
    ///
    /// Returns [`WireError::Runt`] when `frame` ends before the header does,
    /// including inside a VLAN tag or right before the inner ethertype.
    pub fn parse(frame: &[u8]) -> Result<EthernetHeader, WireError> {
        let untagged = EthernetFrame::new_checked(frame).map_err(|_| WireError::Runt)?;
        let mut tags = [VlanTag::default(); MAX_VLAN_TAGS];
        let mut tag_count = 0u8;
        let mut ethertype = u16::from(untagged.ethertype());
        // Where the bytes after the ethertype just read start.
        let mut offset = ETHERNET_HEADER_LEN;
        for slot in &mut tags {
            if !is_vlan_tpid(ethertype) {
                break;
            }
            // The ethertype just read was a TPID: the TCI and the next
            // ethertype follow it.
            let Some(&[tci_hi, tci_lo, type_hi, type_lo]) = frame.get(offset..offset + VLAN_TAG_LEN) else {
                return Err(WireError::Runt);
            };
            *slot = VlanTag {
                tpid: ethertype,
                tci: u16::from_be_bytes([tci_hi, tci_lo]),
            };
            tag_count += 1;
            ethertype = u16::from_be_bytes([type_hi, type_lo]);
            offset += VLAN_TAG_LEN;
        }
        Ok(EthernetHeader {
            dst_addr: untagged.dst_addr(),
            src_addr: untagged.src_addr(),
            tags,
            tag_count,
            ethertype,
        })
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> EthernetAddress {
        self.dst_addr
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> EthernetAddress {
        self.src_addr
    }

    /// The VLAN tags, outermost first; empty for an untagged frame.
    pub fn vlan_tags(&self) -> &[VlanTag] {
        self.tags.get(..usize::from(self.tag_count)).unwrap_or_default()
    }

    /// The ethertype after the last unwrapped VLAN tag: what the payload is.
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// Length of the header in bytes: 14 plus 4 per VLAN tag. The L3 packet
    /// starts at this offset.
    pub fn header_len(&self) -> usize {
        ETHERNET_HEADER_LEN + VLAN_TAG_LEN * usize::from(self.tag_count)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::test_frames::{ethernet_frame, CLIENT_MAC, SERVER_MAC};

    const IPV4: u16 = 0x0800;

    #[test]
    fn untagged_header() {
        let frame = ethernet_frame(&[], IPV4, &[1, 2, 3]);
        let header = EthernetHeader::parse(&frame).unwrap();
        assert_eq!(header.dst_addr(), SERVER_MAC);
        assert_eq!(header.src_addr(), CLIENT_MAC);
        assert!(header.vlan_tags().is_empty());
        assert_eq!(header.ethertype(), IPV4);
        assert_eq!(header.header_len(), 14);
    }

    #[test]
    fn single_and_double_tags() {
        let single = ethernet_frame(&[(TPID_8021Q, 0xa00c)], IPV4, &[]);
        let header = EthernetHeader::parse(&single).unwrap();
        assert_eq!(
            header.vlan_tags(),
            &[VlanTag {
                tpid: TPID_8021Q,
                tci: 0xa00c
            }]
        );
        assert_eq!(header.vlan_tags()[0].vlan_id(), 12);
        assert_eq!(header.vlan_tags()[0].priority(), 5);
        assert!(!header.vlan_tags()[0].drop_eligible());
        assert_eq!(header.ethertype(), IPV4);
        assert_eq!(header.header_len(), 18);

        for outer_tpid in [TPID_8021AD, TPID_QINQ_LEGACY, TPID_8021Q] {
            let double = ethernet_frame(&[(outer_tpid, 0x1064), (TPID_8021Q, 0x0007)], IPV4, &[]);
            let header = EthernetHeader::parse(&double).unwrap();
            let tags = header.vlan_tags();
            assert_eq!(tags.len(), 2);
            assert_eq!(tags[0].tpid, outer_tpid);
            assert_eq!(tags[0].vlan_id(), 100);
            assert!(tags[0].drop_eligible());
            assert_eq!(tags[1].tpid, TPID_8021Q);
            assert_eq!(tags[1].vlan_id(), 7);
            assert_eq!(header.ethertype(), IPV4);
            assert_eq!(header.header_len(), 22);
        }
    }

    #[test]
    fn third_tag_is_not_unwrapped() {
        let triple = ethernet_frame(&[(TPID_8021AD, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)], IPV4, &[]);
        let header = EthernetHeader::parse(&triple).unwrap();
        assert_eq!(header.vlan_tags().len(), 2);
        assert_eq!(header.ethertype(), TPID_8021Q);
        assert_eq!(header.header_len(), 22);
    }

    #[test]
    fn short_frames_are_runts() {
        for len in 0..14 {
            assert_eq!(EthernetHeader::parse(&vec![0xff; len]), Err(WireError::Runt), "{len}");
        }
        let double = ethernet_frame(&[(TPID_8021AD, 1), (TPID_8021Q, 2)], IPV4, &[]);
        assert_eq!(double.len(), 22);
        for len in 14..22 {
            assert_eq!(EthernetHeader::parse(&double[..len]), Err(WireError::Runt), "{len}");
        }
        assert!(EthernetHeader::parse(&double).is_ok());
    }
}
