//! Why a frame, or one layer of it, could not be read.

use core::fmt;

/// A protocol layer of a frame, named in a [`WireError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Address Resolution Protocol packet.
    Arp,
    /// IPv4 header.
    Ipv4,
    /// IPv6 fixed header.
    Ipv6,
    /// An IPv6 extension header (Hop-by-Hop, Routing, Destination Options, Fragment).
    Ipv6Extension,
    /// TCP header.
    Tcp,
    /// UDP header.
    Udp,
    /// ICMPv4 header.
    Icmpv4,
    /// ICMPv6 header.
    Icmpv6,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Ipv6Extension => "IPv6 extension",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Icmpv4 => "ICMPv4",
            Layer::Icmpv6 => "ICMPv6",
        })
    }
}

/// What is wrong with a header that is long enough to read but inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MalformedReason {
    /// The IP version field does not match the ethertype.
    BadVersion,
    /// The header length field is below the protocol's minimum
    /// (IPv4 IHL < 5, TCP data offset < 5).
    BadHeaderLength,
    /// A length field is smaller than the header it covers
    /// (IPv4 total length < IHL, UDP length < 8).
    BadTotalLength,
    /// The IPv4 header checksum does not verify.
    BadChecksum,
    /// More IPv6 extension headers than the classifier walks.
    TooManyExtensionHeaders,
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MalformedReason::BadVersion => "wrong version",
            MalformedReason::BadHeaderLength => "header length below minimum",
            MalformedReason::BadTotalLength => "length field smaller than header",
            MalformedReason::BadChecksum => "bad header checksum",
            MalformedReason::TooManyExtensionHeaders => "too many extension headers",
        })
    }
}

/// Why a frame, or one of its layers, could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The frame is shorter than its own Ethernet header including its VLAN tags.
    #[error("runt frame: shorter than its Ethernet header and VLAN tags")]
    Runt,
    /// The bytes end before the header of `layer` does, or before the length
    /// a header field states.
    #[error("{layer} truncated")]
    Truncated {
        /// The layer whose bytes run out.
        layer: Layer,
    },
    /// The header of `layer` is present but inconsistent.
    #[error("malformed {layer}: {reason}")]
    Malformed {
        /// The layer whose header is inconsistent.
        layer: Layer,
        /// What is inconsistent.
        reason: MalformedReason,
    },
}
