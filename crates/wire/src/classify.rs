//! Classification of every received frame: what the engine needs to decide
//! whether to drop it, bridge it unchanged, or hand it to the TCP stack.
//!
//! # Malformed-frame rule
//!
//! * A **runt** — a frame shorter than its own Ethernet header including its
//!   VLAN tags — makes [`classify`] return `Err(WireError::Runt)`. The engine
//!   **drops** runts: there is no header to bridge by.
//! * Any other frame is `Ok`. When an L3 or L4 header fails validation, the
//!   class carries `malformed: Some(error)` and `l3` keeps what could still
//!   be told ([`L3Kind::Unparsed`] when the ARP/IP header itself is bad,
//!   `Ipv4`/`Ipv6` with [`L4Kind::Opaque`] when only a later header is bad).
//!   The engine **bridges** such frames unchanged and **counts** them as
//!   malformed; they are never TCP candidates.
//!
//! # Trimming rule
//!
//! The IP packet ends where its header says it does (IPv4 total length, IPv6
//! 40 + payload length), not where the frame ends: minimum-size Ethernet
//! frames are padded to 60 bytes, and those padding bytes are not part of the
//! packet. [`FrameClass::ip_range`], [`FrameClass::l4_range`] and
//! [`TcpInfo::payload_len`] all exclude them. A frame shorter than the stated
//! IP length is truncated, hence malformed.
//!
//! # What is parsed
//!
//! * IPv4: version, IHL ≥ 5, IHL ≤ total length ≤ available bytes, header
//!   checksum. A fragment (MF set or offset ≠ 0) is reported with
//!   `fragment: true` and its L4 header is not parsed.
//! * IPv6: version, 40 + payload length ≤ available bytes; Hop-by-Hop,
//!   Routing and Destination Options headers are walked (at most
//!   [`MAX_IPV6_EXTENSION_HEADERS`]). Any Fragment header, atomic ones
//!   included, ends the walk with `fragment: true`.
//! * TCP, UDP, ICMPv4, ICMPv6 headers on the trimmed IP payload. Checksums of
//!   these are not verified here; see [`FrameClass::tcp_checksum_ok`].
//!
//! `classify` allocates nothing and reads only headers.

use core::net::IpAddr;
use core::ops::Range;

use smoltcp::wire::{
    ArpPacket, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6ExtHeader,
    Ipv6Packet, TcpPacket, UdpPacket, IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN,
};

use crate::{EthernetHeader, Layer, MalformedReason, WireError};

/// How many IPv6 extension headers [`classify`] walks before giving up and
/// reporting [`MalformedReason::TooManyExtensionHeaders`].
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

/// The IPv6 Fragment header has a fixed length; its second byte is reserved,
/// not a length field.
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// The fixed part of an ICMPv6 header: type, code, checksum.
const ICMPV6_HEADER_LEN: usize = 4;

/// The addresses and ports identifying one direction of a TCP or UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Source IP address.
    pub src_ip: IpAddr,
    /// Destination IP address.
    pub dst_ip: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowTuple {
    /// The tuple of the opposite direction of the same flow.
    pub fn reversed(&self) -> FlowTuple {
        FlowTuple {
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// The TCP control flags the engine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags {
    /// SYN: synchronise sequence numbers.
    pub syn: bool,
    /// ACK: the acknowledgement number is valid.
    pub ack: bool,
    /// FIN: no more data from the sender.
    pub fin: bool,
    /// RST: reset the connection.
    pub rst: bool,
    /// PSH: push buffered data to the application.
    pub psh: bool,
}

/// The TCP header fields of a segment, and its payload length after trimming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpInfo {
    /// Control flags.
    pub flags: TcpFlags,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgement number (meaningful only with `flags.ack`).
    pub ack_number: u32,
    /// Advertised window, unscaled.
    pub window: u16,
    /// TCP header length in bytes, options included (20..=60).
    pub header_len: usize,
    /// Payload bytes after the TCP header, within the trimmed IP packet:
    /// never includes Ethernet padding.
    pub payload_len: usize,
}

/// The upper-layer (L4) protocol inside an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Kind {
    /// A well-formed TCP header.
    Tcp {
        /// Addresses and ports.
        flow: FlowTuple,
        /// Header fields and payload length.
        info: TcpInfo,
    },
    /// A well-formed UDP header.
    Udp {
        /// Addresses and ports.
        flow: FlowTuple,
    },
    /// An ICMPv4 or ICMPv6 message (which one follows from the IP version).
    Icmp {
        /// ICMP type.
        message_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// Not parsed: a fragment, a protocol this crate does not decode, or a
    /// malformed L4 header (then [`FrameClass::malformed`] says why).
    Opaque,
}

/// What the Ethernet payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3Kind {
    /// A well-formed ARP packet.
    Arp,
    /// An IPv4 packet whose header validated.
    Ipv4 {
        /// The protocol field.
        proto: IpProtocol,
        /// MF set or fragment offset ≠ 0; the L4 header is then not parsed.
        fragment: bool,
        /// The upper layer.
        l4: L4Kind,
    },
    /// An IPv6 packet whose fixed header validated.
    Ipv6 {
        /// The upper-layer protocol after the walked extension headers, or
        /// the extension header where the walk stopped on an error.
        next_header: IpProtocol,
        /// A Fragment header was found; the L4 header is then not parsed.
        fragment: bool,
        /// The upper layer.
        l4: L4Kind,
    },
    /// The ethertype announces ARP, IPv4 or IPv6 but its header failed
    /// validation; [`FrameClass::malformed`] says why.
    Unparsed {
        /// The (inner) ethertype.
        ethertype: u16,
    },
    /// Any other ethertype, bridged without looking further.
    Other {
        /// The (inner) ethertype.
        ethertype: u16,
    },
}

impl L3Kind {
    /// The upper layer of an IP packet; `None` for ARP and non-IP frames.
    pub fn l4(&self) -> Option<&L4Kind> {
        match self {
            L3Kind::Ipv4 { l4, .. } | L3Kind::Ipv6 { l4, .. } => Some(l4),
            L3Kind::Arp | L3Kind::Unparsed { .. } | L3Kind::Other { .. } => None,
        }
    }
}

/// A byte range within the frame, kept `Copy` unlike [`Range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn shifted_by(self, offset: usize) -> Option<Span> {
        Some(Span {
            start: self.start.checked_add(offset)?,
            end: self.end.checked_add(offset)?,
        })
    }
}

/// The result of [`classify`] for a frame with a complete Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameClass {
    /// The Ethernet header with its VLAN tags.
    pub l2: EthernetHeader,
    /// What the Ethernet payload is, as far as it validated.
    pub l3: L3Kind,
    /// Why an L3 or L4 header failed validation; `Some` means: bridge the
    /// frame unchanged and count it as malformed.
    pub malformed: Option<WireError>,
    /// The trimmed IP packet, when its header validated.
    ip_span: Option<Span>,
    /// The upper-layer bytes of a non-fragment IP packet, when located.
    l4_span: Option<Span>,
    /// Where the upper-layer header of a first fragment (offset 0) starts,
    /// within the frame.
    first_fragment_l4: Option<usize>,
}

impl FrameClass {
    /// A well-formed TCP segment over IPv4 or IPv6 that is not a fragment:
    /// the frames the engine hands to its TCP stack.
    pub fn is_tcp_candidate(&self) -> bool {
        self.tcp().is_some()
    }

    /// The flow and header fields of a TCP candidate.
    pub fn tcp(&self) -> Option<(&FlowTuple, &TcpInfo)> {
        if self.malformed.is_some() {
            return None;
        }
        match self.l3.l4()? {
            L4Kind::Tcp { flow, info } => Some((flow, info)),
            L4Kind::Udp { .. } | L4Kind::Icmp { .. } | L4Kind::Opaque => None,
        }
    }

    /// The upper layer of an IP packet; `None` for ARP and non-IP frames.
    pub fn l4(&self) -> Option<&L4Kind> {
        self.l3.l4()
    }

    /// The bytes of the IP packet within the frame, trimmed to the length its
    /// header states (so Ethernet padding is excluded). `None` unless the IP
    /// header validated.
    pub fn ip_range(&self) -> Option<Range<usize>> {
        self.ip_span.map(|span| span.start..span.end)
    }

    /// The bytes of the upper-layer protocol (e.g. TCP header and payload)
    /// within the frame: the trimmed IP packet without its IPv4 options or
    /// IPv6 extension headers. `None` for fragments and when the IP header or
    /// an extension header failed validation.
    pub fn l4_range(&self) -> Option<Range<usize>> {
        self.l4_span.map(|span| span.start..span.end)
    }

    /// Whether the TCP checksum of this candidate verifies. `frame` must be
    /// the frame this class was computed from; `false` for non-candidates.
    pub fn tcp_checksum_ok(&self, frame: &[u8]) -> bool {
        let (Some((flow, _)), Some(range)) = (self.tcp(), self.l4_range()) else {
            return false;
        };
        let Some(segment) = frame.get(range) else {
            return false;
        };
        TcpPacket::new_checked(segment)
            .is_ok_and(|segment| segment.verify_checksum(&IpAddress::from(flow.src_ip), &IpAddress::from(flow.dst_ip)))
    }

    /// The destination address of an IPv4 or IPv6 packet whose header
    /// validated (fragments included). `frame` must be the frame this class
    /// was computed from.
    pub fn ip_destination(&self, frame: &[u8]) -> Option<IpAddr> {
        let ip = frame.get(self.ip_range()?)?;
        match self.l3 {
            L3Kind::Ipv4 { .. } => Some(IpAddr::V4(Ipv4Packet::new_checked(ip).ok()?.dst_addr())),
            L3Kind::Ipv6 { .. } => Some(IpAddr::V6(Ipv6Packet::new_checked(ip).ok()?.dst_addr())),
            _ => None,
        }
    }

    /// The protocol, addresses and ports of a TCP or UDP packet, the ports
    /// read from the first four bytes of its header even when that header
    /// failed validation or the packet is the first fragment (offset 0) of
    /// a fragmented one, so that the engine can tell which traffic a
    /// malformed or fragmented segment was aimed at. `None` for later
    /// fragments, other protocols, an IP layer that failed validation, or
    /// fewer than four bytes. `frame` must be the frame this class was
    /// computed from.
    pub fn stated_flow(&self, frame: &[u8]) -> Option<(IpProtocol, FlowTuple)> {
        let ip = frame.get(self.ip_range()?)?;
        let (protocol, src_ip, dst_ip) = match self.l3 {
            L3Kind::Ipv4 { proto, .. } => {
                let packet = Ipv4Packet::new_checked(ip).ok()?;
                (proto, IpAddr::V4(packet.src_addr()), IpAddr::V4(packet.dst_addr()))
            }
            L3Kind::Ipv6 { next_header, .. } => {
                let packet = Ipv6Packet::new_checked(ip).ok()?;
                (
                    next_header,
                    IpAddr::V6(packet.src_addr()),
                    IpAddr::V6(packet.dst_addr()),
                )
            }
            _ => return None,
        };
        if !matches!(protocol, IpProtocol::Tcp | IpProtocol::Udp) {
            return None;
        }
        let start = self.l4_range().map(|range| range.start).or(self.first_fragment_l4)?;
        let ports = frame.get(start..start.checked_add(4)?)?;
        let flow = FlowTuple {
            src_ip,
            dst_ip,
            src_port: u16::from_be_bytes([ports[0], ports[1]]),
            dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        };
        Some((protocol, flow))
    }

    /// Records the outcome of the IP layer parsed at `l3_start`.
    fn record_ip(&mut self, l3_start: usize, outcome: Result<IpOutcome, WireError>) {
        match outcome {
            Ok(ip) => {
                self.l3 = ip.l3;
                self.malformed = ip.malformed;
                self.ip_span = Span {
                    start: 0,
                    end: ip.packet_len,
                }
                .shifted_by(l3_start);
                self.l4_span = ip.upper_layer.and_then(|span| span.shifted_by(l3_start));
                self.first_fragment_l4 = ip.first_fragment_l4.and_then(|start| start.checked_add(l3_start));
            }
            Err(error) => self.record_unparsed(error),
        }
    }

    fn record_unparsed(&mut self, error: WireError) {
        self.l3 = L3Kind::Unparsed {
            ethertype: self.l2.ethertype(),
        };
        self.malformed = Some(error);
    }
}

/// Classifies a received Ethernet frame (without FCS).
///
/// Returns `Err(WireError::Runt)` only when the Ethernet header with its VLAN
/// tags is incomplete; everything else is `Ok`, with
/// [`FrameClass::malformed`] set when a later header is bad. See the
/// [module docs](self) for the rule the engine applies.
pub fn classify(frame: &[u8]) -> Result<FrameClass, WireError> {
    let l2 = EthernetHeader::parse(frame)?;
    let l3_start = l2.header_len();
    let l3_bytes = frame.get(l3_start..).unwrap_or_default();
    let ethertype = l2.ethertype();
    let mut class = FrameClass {
        l2,
        l3: L3Kind::Other { ethertype },
        malformed: None,
        ip_span: None,
        l4_span: None,
        first_fragment_l4: None,
    };
    match EthernetProtocol::from(ethertype) {
        EthernetProtocol::Arp => match ArpPacket::new_checked(l3_bytes) {
            Ok(_) => class.l3 = L3Kind::Arp,
            Err(_) => class.record_unparsed(truncated(Layer::Arp)),
        },
        EthernetProtocol::Ipv4 => class.record_ip(l3_start, classify_ipv4(l3_bytes)),
        EthernetProtocol::Ipv6 => class.record_ip(l3_start, classify_ipv6(l3_bytes)),
        EthernetProtocol::Unknown(_) => {}
    }
    Ok(class)
}

fn truncated(layer: Layer) -> WireError {
    WireError::Truncated { layer }
}

fn malformed(layer: Layer, reason: MalformedReason) -> WireError {
    WireError::Malformed { layer, reason }
}

/// An IP packet whose header validated; spans relative to its first byte.
struct IpOutcome {
    l3: L3Kind,
    packet_len: usize,
    upper_layer: Option<Span>,
    /// For the first fragment of a fragmented packet: where its
    /// upper-layer header starts.
    first_fragment_l4: Option<usize>,
    malformed: Option<WireError>,
}

/// Validates the IPv4 header and returns the packet trimmed to its total length.
fn checked_ipv4(bytes: &[u8]) -> Result<Ipv4Packet<&[u8]>, WireError> {
    if bytes.len() < IPV4_HEADER_LEN {
        return Err(truncated(Layer::Ipv4));
    }
    // The fixed 20 bytes are present, so their accessors cannot panic.
    let fixed = Ipv4Packet::new_unchecked(bytes);
    if fixed.version() != 4 {
        return Err(malformed(Layer::Ipv4, MalformedReason::BadVersion));
    }
    let header_len = usize::from(fixed.header_len());
    let total_len = usize::from(fixed.total_len());
    if header_len < IPV4_HEADER_LEN {
        return Err(malformed(Layer::Ipv4, MalformedReason::BadHeaderLength));
    }
    if total_len < header_len {
        return Err(malformed(Layer::Ipv4, MalformedReason::BadTotalLength));
    }
    let trimmed = bytes.get(..total_len).ok_or(truncated(Layer::Ipv4))?;
    let packet = Ipv4Packet::new_checked(trimmed).map_err(|_| truncated(Layer::Ipv4))?;
    if !packet.verify_checksum() {
        return Err(malformed(Layer::Ipv4, MalformedReason::BadChecksum));
    }
    Ok(packet)
}

fn classify_ipv4(bytes: &[u8]) -> Result<IpOutcome, WireError> {
    let packet = checked_ipv4(bytes)?;
    let proto = packet.next_header();
    let fragment = packet.more_frags() || packet.frag_offset() != 0;
    let packet_len = usize::from(packet.total_len());
    if fragment {
        return Ok(IpOutcome {
            l3: L3Kind::Ipv4 {
                proto,
                fragment,
                l4: L4Kind::Opaque,
            },
            packet_len,
            upper_layer: None,
            first_fragment_l4: (packet.frag_offset() == 0).then(|| usize::from(packet.header_len())),
            malformed: None,
        });
    }
    let addrs = (IpAddr::V4(packet.src_addr()), IpAddr::V4(packet.dst_addr()));
    let (l4, malformed) = classify_upper_layer(proto, addrs, packet.payload());
    Ok(IpOutcome {
        l3: L3Kind::Ipv4 { proto, fragment, l4 },
        packet_len,
        upper_layer: Some(Span {
            start: usize::from(packet.header_len()),
            end: packet_len,
        }),
        first_fragment_l4: None,
        malformed,
    })
}

/// Validates the IPv6 fixed header and returns the packet trimmed to
/// 40 + payload length.
fn checked_ipv6(bytes: &[u8]) -> Result<Ipv6Packet<&[u8]>, WireError> {
    if bytes.len() < IPV6_HEADER_LEN {
        return Err(truncated(Layer::Ipv6));
    }
    // The fixed 40 bytes are present, so their accessors cannot panic.
    let fixed = Ipv6Packet::new_unchecked(bytes);
    if fixed.version() != 6 {
        return Err(malformed(Layer::Ipv6, MalformedReason::BadVersion));
    }
    let trimmed = bytes.get(..fixed.total_len()).ok_or(truncated(Layer::Ipv6))?;
    Ipv6Packet::new_checked(trimmed).map_err(|_| truncated(Layer::Ipv6))
}

fn classify_ipv6(bytes: &[u8]) -> Result<IpOutcome, WireError> {
    let packet = checked_ipv6(bytes)?;
    let packet_len = packet.total_len();
    let payload = packet.payload();
    let walk = walk_extension_headers(packet.next_header(), payload);
    let ipv6 = |l4| L3Kind::Ipv6 {
        next_header: walk.next_header,
        fragment: walk.fragment,
        l4,
    };
    if walk.fragment || walk.error.is_some() {
        let first_fragment = walk.fragment && walk.fragment_offset == 0 && walk.error.is_none();
        return Ok(IpOutcome {
            l3: ipv6(L4Kind::Opaque),
            packet_len,
            upper_layer: None,
            first_fragment_l4: first_fragment
                .then(|| IPV6_HEADER_LEN.checked_add(walk.upper_layer_offset))
                .flatten(),
            malformed: walk.error,
        });
    }
    let addrs = (IpAddr::V6(packet.src_addr()), IpAddr::V6(packet.dst_addr()));
    let upper_layer_bytes = payload.get(walk.upper_layer_offset..).unwrap_or_default();
    let (l4, malformed) = classify_upper_layer(walk.next_header, addrs, upper_layer_bytes);
    Ok(IpOutcome {
        l3: ipv6(l4),
        packet_len,
        upper_layer: IPV6_HEADER_LEN
            .checked_add(walk.upper_layer_offset)
            .map(|start| Span { start, end: packet_len }),
        first_fragment_l4: None,
        malformed,
    })
}

/// Where the walk over IPv6 extension headers ended.
struct ExtensionWalk {
    /// The protocol of the header at `upper_layer_offset`.
    next_header: IpProtocol,
    /// Offset of that header from the start of the IPv6 payload.
    upper_layer_offset: usize,
    fragment: bool,
    /// The Fragment header's offset, in 8-octet units.
    fragment_offset: u16,
    error: Option<WireError>,
}

fn is_walked_extension_header(protocol: IpProtocol) -> bool {
    matches!(
        protocol,
        IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Frag
    )
}

/// Follows the next-header chain through Hop-by-Hop, Routing and Destination
/// Options headers, stopping after a Fragment header (what follows it is a
/// fragment, not an upper-layer header).
fn walk_extension_headers(first: IpProtocol, payload: &[u8]) -> ExtensionWalk {
    let mut walk = ExtensionWalk {
        next_header: first,
        upper_layer_offset: 0,
        fragment: false,
        fragment_offset: 0,
        error: None,
    };
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        let rest = payload.get(walk.upper_layer_offset..).unwrap_or_default();
        let header_len = match walk.next_header {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                let Ok(header) = Ipv6ExtHeader::new_checked(rest) else {
                    walk.error = Some(truncated(Layer::Ipv6Extension));
                    return walk;
                };
                walk.next_header = header.next_header();
                // The length field counts 8-octet units beyond the first 8;
                // `new_checked` has ensured they are all present.
                (usize::from(header.header_len()) + 1) * 8
            }
            IpProtocol::Ipv6Frag => {
                walk.fragment = true;
                let Some(fragment_header) = rest.get(..IPV6_FRAGMENT_HEADER_LEN) else {
                    walk.error = Some(truncated(Layer::Ipv6Extension));
                    return walk;
                };
                // Only the next-header byte is read, which the common
                // extension-header view covers for any 8 bytes.
                walk.next_header = Ipv6ExtHeader::new_unchecked(fragment_header).next_header();
                walk.fragment_offset = u16::from_be_bytes([fragment_header[2], fragment_header[3]]) >> 3;
                IPV6_FRAGMENT_HEADER_LEN
            }
            _ => return walk,
        };
        walk.upper_layer_offset = walk.upper_layer_offset.saturating_add(header_len);
        if walk.fragment {
            return walk;
        }
    }
    if is_walked_extension_header(walk.next_header) {
        walk.error = Some(malformed(
            Layer::Ipv6Extension,
            MalformedReason::TooManyExtensionHeaders,
        ));
    }
    walk
}

/// Parses the upper-layer header; a failure yields [`L4Kind::Opaque`] and the
/// error to record as malformed.
fn classify_upper_layer(protocol: IpProtocol, addrs: (IpAddr, IpAddr), bytes: &[u8]) -> (L4Kind, Option<WireError>) {
    let parsed = match protocol {
        IpProtocol::Tcp => parse_tcp(addrs, bytes),
        IpProtocol::Udp => parse_udp(addrs, bytes),
        IpProtocol::Icmp => parse_icmpv4(bytes),
        IpProtocol::Icmpv6 => parse_icmpv6(bytes),
        _ => Ok(L4Kind::Opaque),
    };
    match parsed {
        Ok(l4) => (l4, None),
        Err(error) => (L4Kind::Opaque, Some(error)),
    }
}

fn parse_tcp((src_ip, dst_ip): (IpAddr, IpAddr), bytes: &[u8]) -> Result<L4Kind, WireError> {
    if bytes.len() < TCP_HEADER_LEN {
        return Err(truncated(Layer::Tcp));
    }
    // The fixed 20 bytes are present, so their accessors cannot panic.
    if usize::from(TcpPacket::new_unchecked(bytes).header_len()) < TCP_HEADER_LEN {
        return Err(malformed(Layer::Tcp, MalformedReason::BadHeaderLength));
    }
    let segment = TcpPacket::new_checked(bytes).map_err(|_| truncated(Layer::Tcp))?;
    Ok(L4Kind::Tcp {
        flow: FlowTuple {
            src_ip,
            dst_ip,
            src_port: segment.src_port(),
            dst_port: segment.dst_port(),
        },
        info: TcpInfo {
            flags: TcpFlags {
                syn: segment.syn(),
                ack: segment.ack(),
                fin: segment.fin(),
                rst: segment.rst(),
                psh: segment.psh(),
            },
            seq_number: segment.seq_number().0.cast_unsigned(),
            ack_number: segment.ack_number().0.cast_unsigned(),
            window: segment.window_len(),
            header_len: usize::from(segment.header_len()),
            payload_len: segment.payload().len(),
        },
    })
}

fn parse_udp((src_ip, dst_ip): (IpAddr, IpAddr), bytes: &[u8]) -> Result<L4Kind, WireError> {
    if bytes.len() < UDP_HEADER_LEN {
        return Err(truncated(Layer::Udp));
    }
    // The fixed 8 bytes are present, so their accessors cannot panic.
    if usize::from(UdpPacket::new_unchecked(bytes).len()) < UDP_HEADER_LEN {
        return Err(malformed(Layer::Udp, MalformedReason::BadTotalLength));
    }
    let datagram = UdpPacket::new_checked(bytes).map_err(|_| truncated(Layer::Udp))?;
    Ok(L4Kind::Udp {
        flow: FlowTuple {
            src_ip,
            dst_ip,
            src_port: datagram.src_port(),
            dst_port: datagram.dst_port(),
        },
    })
}

fn parse_icmpv4(bytes: &[u8]) -> Result<L4Kind, WireError> {
    let message = Icmpv4Packet::new_checked(bytes).map_err(|_| truncated(Layer::Icmpv4))?;
    Ok(L4Kind::Icmp {
        message_type: message.msg_type().into(),
        code: message.msg_code(),
    })
}

fn parse_icmpv6(bytes: &[u8]) -> Result<L4Kind, WireError> {
    // smoltcp's `Icmpv6Packet::check_len` also rejects message types it does
    // not know; a bridge must pass those on, so only the fixed part is checked.
    if bytes.len() < ICMPV6_HEADER_LEN {
        return Err(truncated(Layer::Icmpv6));
    }
    let message = Icmpv6Packet::new_unchecked(bytes);
    Ok(L4Kind::Icmp {
        message_type: message.msg_type().into(),
        code: message.msg_code(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ethernet::{TPID_8021AD, TPID_8021Q};
    use crate::test_frames::*;
    use proptest::prelude::*;
    use smoltcp::wire::TcpControl;

    const L2: usize = 14;

    fn ok(frame: &[u8]) -> FrameClass {
        classify(frame).unwrap()
    }

    fn expected_flow(src: IpAddr, dst: IpAddr) -> FlowTuple {
        FlowTuple {
            src_ip: src,
            dst_ip: dst,
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
        }
    }

    fn v4_flow() -> FlowTuple {
        expected_flow(CLIENT_V4.into(), SERVER_V4.into())
    }

    fn v6_flow() -> FlowTuple {
        expected_flow(CLIENT_V6.into(), SERVER_V6.into())
    }

    /// Rewrites a field of the IPv4 header at `l2_len` and refreshes its checksum.
    fn edit_ipv4(frame: &mut [u8], l2_len: usize, edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) {
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[l2_len..]);
        edit(&mut packet);
        packet.fill_checksum();
    }

    #[test]
    fn arp_request() {
        let frame = arp_request_frame();
        let class = ok(&frame);
        assert_eq!(class.l3, L3Kind::Arp);
        assert_eq!(class.malformed, None);
        assert!(!class.is_tcp_candidate());
        assert_eq!(class.ip_range(), None);
        assert_eq!(class.l4(), None);
    }

    #[test]
    fn truncated_arp_is_unparsed() {
        let frame = arp_request_frame();
        let class = ok(&frame[..L2 + 10]);
        assert_eq!(class.l3, L3Kind::Unparsed { ethertype: 0x0806 });
        assert_eq!(class.malformed, Some(WireError::Truncated { layer: Layer::Arp }));
    }

    #[test]
    fn ipv4_icmp_echo() {
        let frame = ipv4_icmp_echo_frame();
        let class = ok(&frame);
        assert_eq!(
            class.l3,
            L3Kind::Ipv4 {
                proto: IpProtocol::Icmp,
                fragment: false,
                l4: L4Kind::Icmp {
                    message_type: 8,
                    code: 0
                },
            }
        );
        assert_eq!(class.malformed, None);
        assert!(!class.is_tcp_candidate());
        assert_eq!(class.ip_range(), Some(L2..frame.len()));
        assert_eq!(class.l4_range(), Some(L2 + 20..frame.len()));
    }

    #[test]
    fn ipv6_neighbor_solicitation() {
        let frame = ipv6_neighbor_solicitation_frame();
        let class = ok(&frame);
        assert_eq!(
            class.l3,
            L3Kind::Ipv6 {
                next_header: IpProtocol::Icmpv6,
                fragment: false,
                l4: L4Kind::Icmp {
                    message_type: 135,
                    code: 0
                },
            }
        );
        assert_eq!(class.malformed, None);
        assert_eq!(class.ip_range(), Some(L2..frame.len()));
        assert_eq!(class.l4_range(), Some(L2 + 40..frame.len()));
    }

    #[test]
    fn unknown_icmpv6_type_is_not_malformed() {
        let frame = ethernet_frame(&[], ETHERTYPE_IPV6, &ipv6_packet(IpProtocol::Icmpv6, &[200, 7, 0, 0]));
        let class = ok(&frame);
        assert_eq!(class.malformed, None);
        assert_eq!(
            class.l4(),
            Some(&L4Kind::Icmp {
                message_type: 200,
                code: 7
            })
        );
    }

    #[test]
    fn ipv4_tcp_syn() {
        let frame = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
        let class = ok(&frame);
        assert!(class.is_tcp_candidate());
        assert_eq!(class.malformed, None);
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(*flow, v4_flow());
        assert_eq!(
            info.flags,
            TcpFlags {
                syn: true,
                ..TcpFlags::default()
            }
        );
        assert_eq!(info.seq_number, 1000);
        assert_eq!(info.window, 64_240);
        assert_eq!(info.header_len, 24, "MSS option included");
        assert_eq!(info.payload_len, 0);
        assert_eq!(class.ip_range(), Some(L2..L2 + 44));
        assert_eq!(class.l4_range(), Some(L2 + 20..L2 + 44));
        assert!(class.tcp_checksum_ok(&frame));
    }

    #[test]
    fn ipv4_tcp_data() {
        let payload = b"GET / HTTP/1.1\r\n";
        let frame = ipv4_tcp_frame(&[], TcpControl::Psh, payload);
        let class = ok(&frame);
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(*flow, v4_flow());
        assert_eq!(flow.reversed().src_port, SERVER_PORT);
        assert_eq!(flow.reversed().dst_ip, IpAddr::from(CLIENT_V4));
        assert!(info.flags.ack && info.flags.psh && !info.flags.syn);
        assert_eq!(info.ack_number, 7);
        assert_eq!(info.payload_len, payload.len());
        let l4 = class.l4_range().unwrap();
        assert_eq!(&frame[l4.start + info.header_len..l4.end], payload);
        assert!(class.tcp_checksum_ok(&frame));
    }

    #[test]
    fn corrupted_tcp_checksum_is_still_a_candidate() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"data");
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        let class = ok(&frame);
        assert!(class.is_tcp_candidate());
        assert!(!class.tcp_checksum_ok(&frame));
    }

    #[test]
    fn ipv6_tcp_syn_and_data() {
        let syn = ipv6_tcp_frame(TcpControl::Syn, &[]);
        let class = ok(&syn);
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(*flow, v6_flow());
        assert!(info.flags.syn && !info.flags.ack);
        assert_eq!(info.payload_len, 0);
        assert_eq!(class.ip_range(), Some(L2..syn.len()));
        assert!(class.tcp_checksum_ok(&syn));

        let payload = b"\x16\x03\x01\x02\x00";
        let data = ipv6_tcp_frame(TcpControl::Psh, payload);
        let class = ok(&data);
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(*flow, v6_flow());
        assert_eq!(info.payload_len, payload.len());
        assert_eq!(class.l4_range(), Some(L2 + 40..data.len()));
        assert!(class.tcp_checksum_ok(&data));
    }

    #[test]
    fn udp_over_ipv4_and_ipv6() {
        for (frame, src, dst) in [
            (
                ethernet_frame(
                    &[],
                    ETHERTYPE_IPV4,
                    &ipv4_packet(IpProtocol::Udp, &udp_datagram(v4_addrs(), b"query")),
                ),
                IpAddr::from(CLIENT_V4),
                IpAddr::from(SERVER_V4),
            ),
            (
                ethernet_frame(
                    &[],
                    ETHERTYPE_IPV6,
                    &ipv6_packet(IpProtocol::Udp, &udp_datagram(v6_addrs(), b"query")),
                ),
                IpAddr::from(CLIENT_V6),
                IpAddr::from(SERVER_V6),
            ),
        ] {
            let class = ok(&frame);
            assert_eq!(class.malformed, None);
            assert!(!class.is_tcp_candidate());
            assert_eq!(
                class.l4(),
                Some(&L4Kind::Udp {
                    flow: FlowTuple {
                        src_ip: src,
                        dst_ip: dst,
                        src_port: 5353,
                        dst_port: 53
                    }
                })
            );
            assert!(!class.tcp_checksum_ok(&frame));
        }
    }

    #[test]
    fn vlan_tagged_tcp() {
        let payload = b"hello";
        for tags in [vec![(TPID_8021Q, 100)], vec![(TPID_8021AD, 200), (TPID_8021Q, 100)]] {
            let frame = ipv4_tcp_frame(&tags, TcpControl::Psh, payload);
            let class = ok(&frame);
            let l2_len = 14 + 4 * tags.len();
            assert_eq!(class.l2.header_len(), l2_len);
            assert_eq!(class.l2.vlan_tags().len(), tags.len());
            assert_eq!(class.l2.vlan_tags().last().unwrap().vlan_id(), 100);
            let (flow, info) = class.tcp().unwrap();
            assert_eq!(*flow, v4_flow());
            assert_eq!(info.payload_len, payload.len());
            assert_eq!(class.ip_range(), Some(l2_len..frame.len()));
            assert_eq!(class.l4_range(), Some(l2_len + 20..frame.len()));
            assert!(class.tcp_checksum_ok(&frame));
        }
    }

    #[test]
    fn padded_minimum_frames_exclude_padding() {
        let payload = b"hello";
        for payload_len in 1..=5 {
            let payload = &payload[..payload_len];
            let unpadded = ipv4_tcp_frame(&[], TcpControl::Psh, payload);
            assert_eq!(unpadded.len(), 54 + payload_len);
            let frame = padded(unpadded, 60);
            assert_eq!(frame.len(), 60);

            let class = ok(&frame);
            assert_eq!(class.malformed, None);
            let (_, info) = class.tcp().unwrap();
            assert_eq!(info.header_len, 20);
            assert_eq!(info.payload_len, payload_len);
            let ip = class.ip_range().unwrap();
            assert_eq!(ip, L2..L2 + 40 + payload_len);
            assert!(ip.end < frame.len(), "padding excluded");
            let l4 = class.l4_range().unwrap();
            assert_eq!(l4.end, ip.end);
            assert_eq!(&frame[l4.start + info.header_len..l4.end], payload);
            assert!(class.tcp_checksum_ok(&frame));
        }
    }

    #[test]
    fn padded_tagged_frame_excludes_padding() {
        let frame = padded(ipv4_tcp_frame(&[(TPID_8021Q, 5)], TcpControl::Psh, b"a"), 60);
        let class = ok(&frame);
        assert_eq!(class.tcp().unwrap().1.payload_len, 1);
        assert_eq!(class.ip_range(), Some(18..59));
    }

    #[test]
    fn ipv4_bad_checksum_is_bridged_as_malformed() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
        frame[L2 + 10] ^= 0x01;
        let class = ok(&frame);
        assert_eq!(class.l3, L3Kind::Unparsed { ethertype: 0x0800 });
        assert_eq!(
            class.malformed,
            Some(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: MalformedReason::BadChecksum
            })
        );
        assert!(!class.is_tcp_candidate());
        assert_eq!(class.ip_range(), None);
    }

    #[test]
    fn ipv4_short_ihl_is_malformed() {
        for ihl in 0..5u8 {
            let mut frame = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
            frame[L2] = 0x40 | ihl;
            let class = ok(&frame);
            assert_eq!(class.l3, L3Kind::Unparsed { ethertype: 0x0800 });
            assert_eq!(
                class.malformed,
                Some(WireError::Malformed {
                    layer: Layer::Ipv4,
                    reason: MalformedReason::BadHeaderLength
                })
            );
        }
    }

    #[test]
    fn ipv4_length_errors_are_malformed() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"abc");
        let total = u16::try_from(frame.len() - L2).unwrap();
        edit_ipv4(&mut frame, L2, |ip| ip.set_total_len(total + 1));
        let class = ok(&frame);
        assert_eq!(class.l3, L3Kind::Unparsed { ethertype: 0x0800 });
        assert_eq!(class.malformed, Some(WireError::Truncated { layer: Layer::Ipv4 }));
        assert_eq!(class.ip_range(), None);

        edit_ipv4(&mut frame, L2, |ip| ip.set_total_len(19));
        assert_eq!(
            ok(&frame).malformed,
            Some(WireError::Malformed {
                layer: Layer::Ipv4,
                reason: MalformedReason::BadTotalLength
            })
        );

        let frame = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
        assert_eq!(
            ok(&frame[..L2 + 19]).malformed,
            Some(WireError::Truncated { layer: Layer::Ipv4 })
        );
    }

    #[test]
    fn ip_version_must_match_ethertype() {
        let mut v4 = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
        edit_ipv4(&mut v4, L2, |ip| ip.set_version(6));
        let mut v6 = ipv6_tcp_frame(TcpControl::Syn, &[]);
        v6[L2] = 0x40;
        for (frame, layer, ethertype) in [(v4, Layer::Ipv4, 0x0800), (v6, Layer::Ipv6, 0x86dd)] {
            let class = ok(&frame);
            assert_eq!(class.l3, L3Kind::Unparsed { ethertype });
            assert_eq!(
                class.malformed,
                Some(WireError::Malformed {
                    layer,
                    reason: MalformedReason::BadVersion
                })
            );
        }
    }

    #[test]
    fn ipv6_payload_length_beyond_frame_is_truncated() {
        let frame = ipv6_tcp_frame(TcpControl::Syn, &[]);
        let class = ok(&frame[..frame.len() - 1]);
        assert_eq!(class.l3, L3Kind::Unparsed { ethertype: 0x86dd });
        assert_eq!(class.malformed, Some(WireError::Truncated { layer: Layer::Ipv6 }));
        assert_eq!(class.ip_range(), None);
    }

    #[test]
    fn bad_tcp_header_keeps_ip_layer() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"abcd");
        frame[L2 + 20 + 12] = 0x40; // data offset 4
        let class = ok(&frame);
        assert_eq!(
            class.l3,
            L3Kind::Ipv4 {
                proto: IpProtocol::Tcp,
                fragment: false,
                l4: L4Kind::Opaque
            }
        );
        assert_eq!(
            class.malformed,
            Some(WireError::Malformed {
                layer: Layer::Tcp,
                reason: MalformedReason::BadHeaderLength
            })
        );
        assert!(!class.is_tcp_candidate());
        assert_eq!(class.ip_range(), Some(L2..frame.len()));

        frame[L2 + 20 + 12] = 0xf0; // 60-byte header in a 24-byte segment
        assert_eq!(ok(&frame).malformed, Some(WireError::Truncated { layer: Layer::Tcp }));
    }

    #[test]
    fn stated_flow_survives_a_bad_l4_header() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"abcd");
        let (client, server) = (IpAddr::from(CLIENT_V4), IpAddr::from(SERVER_V4));
        let expected = Some((
            IpProtocol::Tcp,
            FlowTuple {
                src_ip: client,
                dst_ip: server,
                src_port: CLIENT_PORT,
                dst_port: SERVER_PORT,
            },
        ));
        assert_eq!(ok(&frame).stated_flow(&frame), expected);
        frame[L2 + 20 + 12] = 0x40; // data offset 4: not a candidate, ports still stated
        assert_eq!(ok(&frame).stated_flow(&frame), expected);
        let udp = ethernet_frame(&[], ETHERTYPE_IPV4, &ipv4_packet(IpProtocol::Udp, &[0, 53, 1, 187]));
        assert!(ok(&udp).malformed.is_some());
        let (protocol, flow) = ok(&udp).stated_flow(&udp).unwrap();
        assert_eq!((protocol, flow.src_port, flow.dst_port), (IpProtocol::Udp, 53, 443));
        // Three bytes of a header, an ICMP message: no ports.
        let short = ethernet_frame(&[], ETHERTYPE_IPV4, &ipv4_packet(IpProtocol::Tcp, &[0, 53, 1]));
        assert_eq!(ok(&short).stated_flow(&short), None);
        let icmp = ipv4_icmp_echo_frame();
        assert_eq!(ok(&icmp).stated_flow(&icmp), None);
        // A first fragment (atomic ones included) states its ports, a later one does not.
        for (offset, more, stated) in [(0, true, true), (0, false, true), (185, false, false)] {
            let fragment = ipv6_tcp_frame_with_extensions(
                IpProtocol::Ipv6Frag,
                &fragment_header(IpProtocol::Tcp, offset, more),
                &tcp_segment(v6_addrs(), TcpControl::Syn, 1, &[]),
            );
            let flow = ok(&fragment).stated_flow(&fragment);
            assert_eq!(flow.is_some(), stated, "offset {offset}");
            assert!(flow.is_none_or(|(protocol, flow)| protocol == IpProtocol::Tcp && flow.dst_port == SERVER_PORT));
        }
    }

    #[test]
    fn runts_are_errors() {
        let frame = ipv4_tcp_frame(&[], TcpControl::Syn, &[]);
        for len in 0..14 {
            assert_eq!(classify(&frame[..len]), Err(WireError::Runt), "{len}");
        }
        let class = ok(&frame[..14]);
        assert_eq!(class.malformed, Some(WireError::Truncated { layer: Layer::Ipv4 }));
    }

    #[test]
    fn vlan_frame_truncated_inside_tag_is_runt() {
        let frame = ipv4_tcp_frame(&[(TPID_8021AD, 1), (TPID_8021Q, 2)], TcpControl::Syn, &[]);
        for len in 14..22 {
            assert_eq!(classify(&frame[..len]), Err(WireError::Runt), "{len}");
        }
        assert!(classify(&frame[..22]).is_ok());
    }

    #[test]
    fn other_ethertype_is_bridged_untouched() {
        let frame = ethernet_frame(&[], 0x88cc, &[0; 46]);
        let class = ok(&frame);
        assert_eq!(class.l3, L3Kind::Other { ethertype: 0x88cc });
        assert_eq!(class.malformed, None);
        assert_eq!(class.ip_range(), None);
    }

    #[test]
    fn ipv6_hop_by_hop_then_tcp_is_candidate() {
        let frame = ipv6_tcp_frame_with_extensions(IpProtocol::HopByHop, &hop_by_hop_header(IpProtocol::Tcp), b"hi");
        let class = ok(&frame);
        assert_eq!(class.malformed, None);
        assert!(class.is_tcp_candidate());
        let L3Kind::Ipv6 {
            next_header, fragment, ..
        } = class.l3
        else {
            panic!("not IPv6: {:?}", class.l3);
        };
        assert_eq!(next_header, IpProtocol::Tcp);
        assert!(!fragment);
        let (flow, info) = class.tcp().unwrap();
        assert_eq!(*flow, v6_flow());
        assert_eq!(info.payload_len, 2);
        assert_eq!(class.l4_range(), Some(L2 + 48..frame.len()));
        assert!(class.tcp_checksum_ok(&frame));
    }

    #[test]
    fn ipv6_chain_of_extension_headers() {
        let mut chain = Vec::new();
        chain.extend(hop_by_hop_header(IpProtocol::Ipv6Opts));
        // Destination Options with one extra 8-octet unit.
        chain.extend([IpProtocol::Ipv6Route.into(), 1, 1, 12]);
        chain.extend([0; 12]);
        // Routing header, type 0 with no addresses left.
        chain.extend([IpProtocol::Tcp.into(), 0, 0, 0, 0, 0, 0, 0]);
        let frame = ipv6_tcp_frame_with_extensions(IpProtocol::HopByHop, &chain, b"x");
        let class = ok(&frame);
        assert!(class.is_tcp_candidate());
        assert_eq!(class.l4_range(), Some(L2 + 40 + 32..frame.len()));
    }

    #[test]
    fn too_many_ipv6_extension_headers_is_malformed() {
        let chain: Vec<u8> = (0..=MAX_IPV6_EXTENSION_HEADERS)
            .flat_map(|_| hop_by_hop_header(IpProtocol::HopByHop))
            .collect();
        let frame = ipv6_tcp_frame_with_extensions(IpProtocol::HopByHop, &chain, b"");
        let class = ok(&frame);
        assert_eq!(
            class.malformed,
            Some(WireError::Malformed {
                layer: Layer::Ipv6Extension,
                reason: MalformedReason::TooManyExtensionHeaders
            })
        );
        assert!(!class.is_tcp_candidate());
        assert_eq!(class.ip_range(), Some(L2..frame.len()));
        assert_eq!(class.l4_range(), None);
    }

    #[test]
    fn truncated_ipv6_extension_header_is_malformed() {
        // The Hop-by-Hop header claims 16 bytes; only 8 are in the packet.
        let frame = ethernet_frame(
            &[],
            ETHERTYPE_IPV6,
            &ipv6_packet(IpProtocol::HopByHop, &[6, 1, 1, 4, 0, 0, 0, 0]),
        );
        let class = ok(&frame);
        assert_eq!(
            class.l3,
            L3Kind::Ipv6 {
                next_header: IpProtocol::HopByHop,
                fragment: false,
                l4: L4Kind::Opaque
            }
        );
        assert_eq!(
            class.malformed,
            Some(WireError::Truncated {
                layer: Layer::Ipv6Extension
            })
        );
    }

    #[test]
    fn ipv6_fragments_are_not_candidates() {
        for (offset_units, more) in [(0, true), (185, true), (185, false), (0, false)] {
            let frame = ipv6_tcp_frame_with_extensions(
                IpProtocol::Ipv6Frag,
                &fragment_header(IpProtocol::Tcp, offset_units, more),
                b"hi",
            );
            let class = ok(&frame);
            assert_eq!(
                class.l3,
                L3Kind::Ipv6 {
                    next_header: IpProtocol::Tcp,
                    fragment: true,
                    l4: L4Kind::Opaque
                }
            );
            assert_eq!(class.malformed, None);
            assert!(!class.is_tcp_candidate());
            assert_eq!(class.ip_range(), Some(L2..frame.len()));
            assert_eq!(class.l4_range(), None);
        }
    }

    #[test]
    fn ipv4_fragments_are_not_candidates() {
        for (more, offset) in [(true, 0), (false, 1480), (true, 1480)] {
            let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"fragment");
            edit_ipv4(&mut frame, L2, |ip| {
                ip.set_dont_frag(false);
                ip.set_more_frags(more);
                ip.set_frag_offset(offset);
            });
            let class = ok(&frame);
            assert_eq!(
                class.l3,
                L3Kind::Ipv4 {
                    proto: IpProtocol::Tcp,
                    fragment: true,
                    l4: L4Kind::Opaque
                }
            );
            assert_eq!(class.malformed, None);
            assert!(!class.is_tcp_candidate());
            assert_eq!(class.ip_range(), Some(L2..frame.len()));
            assert_eq!(class.l4_range(), None);
            // Only the first fragment begins with the TCP header.
            let ports = class
                .stated_flow(&frame)
                .map(|(_, flow)| (flow.src_port, flow.dst_port));
            assert_eq!(
                ports,
                (offset == 0).then_some((CLIENT_PORT, SERVER_PORT)),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut frame = ipv4_tcp_frame(&[], TcpControl::Psh, b"opt");
        // Insert 4 bytes of options (NOPs) after the 20-byte header.
        frame.splice(L2 + 20..L2 + 20, [1, 1, 1, 1]);
        let total = u16::try_from(frame.len() - L2).unwrap();
        edit_ipv4(&mut frame, L2, |ip| {
            ip.set_header_len(24);
            ip.set_total_len(total);
        });
        let class = ok(&frame);
        assert_eq!(class.tcp().unwrap().1.payload_len, 3);
        assert_eq!(class.l4_range(), Some(L2 + 24..frame.len()));
        assert!(class.tcp_checksum_ok(&frame));
    }

    /// Properties every classification must have, whatever the input.
    fn check_invariants(frame: &[u8]) -> Result<(), TestCaseError> {
        let class = match classify(frame) {
            Err(error) => {
                prop_assert_eq!(error, WireError::Runt);
                prop_assert!(EthernetHeader::parse(frame).is_err());
                return Ok(());
            }
            Ok(class) => class,
        };
        prop_assert!(class.l2.header_len() <= frame.len());
        if let Some(ip) = class.ip_range() {
            prop_assert_eq!(ip.start, class.l2.header_len());
            prop_assert!(ip.start <= ip.end && ip.end <= frame.len());
            if let Some(l4) = class.l4_range() {
                prop_assert!(ip.start <= l4.start && l4.start <= l4.end && l4.end == ip.end);
            }
        } else {
            prop_assert_eq!(class.l4_range(), None);
        }
        if let Some((_, info)) = class.tcp() {
            prop_assert_eq!(class.malformed, None);
            let l4 = class.l4_range();
            prop_assert_eq!(l4.map(|l4| l4.len()), Some(info.header_len + info.payload_len));
            // Must not panic; the value is arbitrary for random input.
            let _ = class.tcp_checksum_ok(frame);
            let _ = class.stated_flow(frame);
        }
        Ok(())
    }

    /// Bytes after `l2_len` that look like an IPv4 header get a valid
    /// checksum, so that mutations reach the layers behind it.
    fn refresh_ipv4_checksum(frame: &mut [u8]) {
        let Ok(header) = EthernetHeader::parse(frame) else {
            return;
        };
        let l2_len = header.header_len();
        if header.ethertype() != ETHERTYPE_IPV4 || frame.len() < l2_len + 20 {
            return;
        }
        let header_len = usize::from(frame[l2_len] & 0x0f) * 4;
        if header_len >= 20 && l2_len + header_len <= frame.len() {
            edit_ipv4(frame, l2_len, |_| {});
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(frame in prop::collection::vec(any::<u8>(), 0..200)) {
            check_invariants(&frame)?;
        }

        #[test]
        fn never_panics_on_arbitrary_ip_payloads(
            tags in prop::collection::vec((prop::sample::select(vec![0x8100u16, 0x88a8, 0x9100]), any::<u16>()), 0..3),
            ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806]),
            payload in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut frame = ethernet_frame(&tags, ethertype, &payload);
            check_invariants(&frame)?;
            refresh_ipv4_checksum(&mut frame);
            check_invariants(&frame)?;
        }

        #[test]
        fn never_panics_on_mutated_frames(
            seed in 0..sample_frames().len(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            keep in any::<prop::sample::Index>(),
            fix_checksum in any::<bool>(),
        ) {
            let mut frame = sample_frames().swap_remove(seed);
            check_invariants(&frame)?;
            for (position, byte) in mutations {
                let index = position.index(frame.len());
                frame[index] = byte;
            }
            if fix_checksum {
                refresh_ipv4_checksum(&mut frame);
            }
            check_invariants(&frame)?;
            let keep = keep.index(frame.len() + 1);
            check_invariants(&frame[..keep])?;
        }
    }

    #[test]
    fn sample_frames_are_well_formed() {
        for frame in sample_frames() {
            let class = ok(&frame);
            assert_eq!(class.malformed, None, "{class:?}");
        }
    }
}
