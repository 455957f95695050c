//! Client payloads of TCP flows taken from a capture, for the generator to
//! replay, and the origin's check that a replayed payload arrived intact.
//!
//! [`read_capture`] reads a classic pcap or a pcapng file (pcap-file's
//! parsers over the bytes in memory) of Ethernet frames, classifies every
//! frame with the project's checked views ([`wire::classify`]: Ethernet with
//! up to two VLAN tags, IPv4, IPv6, TCP) and groups the TCP segments into
//! flows. Nothing here panics on any input: a frame that cannot be parsed is
//! skipped and counted ([`CaptureStats`]), and a capture that ends in an
//! unreadable record keeps what came before it (`read_error` says why).
//!
//! # Rules
//!
//! * **Direction.** The client is the side that sent the SYN (without ACK).
//!   Segments of a connection whose SYN is not in the capture (or comes
//!   after them) are **skipped** and counted as `orphan_segments`: without a
//!   SYN there is no initial sequence number to start the payload from, and
//!   a payload that starts in the middle of a conversation is not a request
//!   worth replaying.
//! * **Flows.** A flow is keyed by (client address and port, server address
//!   and port). A SYN with another initial sequence number on a known key
//!   starts a new flow (port reuse); a SYN with the same one is a
//!   retransmission. Flows are listed in the order of their SYNs.
//! * **Reassembly** of the client→server payload, in sequence order from the
//!   SYN's sequence number + 1: retransmissions and overlaps are
//!   deduplicated (among segments starting at the same sequence number the
//!   first in capture order wins, otherwise the segment starting earlier),
//!   out-of-order segments are put in place, and a **gap** (bytes never
//!   captured) ends the payload there (`cut_at_gap`). A SYN's own data
//!   counts; the data of RST segments does not. Flows of up to 2 GiB per
//!   direction (sequence offsets are compared as signed 32-bit numbers).
//! * **Server→client bytes** are counted the same way (contiguous bytes from
//!   the SYN-ACK's sequence number + 1), for reporting and for answering with
//!   the original size; 0 when the SYN-ACK was not captured.
//! * **What is trusted.** IP and TCP headers must pass `wire`'s checks; the
//!   IP packet is trimmed to its stated length (Ethernet padding is never
//!   payload) and a frame cut short by the capture's snap length fails that
//!   check, so its bytes become a gap rather than wrong payload. TCP
//!   checksums are **not** verified: captures taken on the sending host
//!   carry unfilled checksums (offload). IP fragments are not reassembled
//!   (counted as not TCP).
//! * Only flows with at least one client payload byte are returned; a
//!   capture without any is an error ([`CaptureError::NoPayload`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::DataLink;
use thiserror::Error;

/// Why a capture gives nothing to replay.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a pcap or pcapng capture: {0}")]
    NotACapture(String),
    #[error("link type {0}: only Ethernet captures can be replayed")]
    UnsupportedLinkType(String),
    #[error("no TCP connection with client payload whose SYN was captured ({0})")]
    NoPayload(CaptureStats),
}

/// One TCP flow of the capture: who talked to whom, and what the client sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Flow {
    /// The side that sent the SYN.
    pub client: SocketAddr,
    /// The original server endpoint (for reporting; the generator connects
    /// to the plan's servers).
    pub server: SocketAddr,
    /// The client→server payload, reassembled.
    pub payload: Vec<u8>,
    /// Contiguous server→client payload bytes of the original flow.
    pub server_bytes: u64,
    /// The client payload ends at a gap (bytes that were never captured).
    pub cut_at_gap: bool,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field("client", &self.client)
            .field("server", &self.server)
            .field("payload_len", &self.payload.len())
            .field("server_bytes", &self.server_bytes)
            .field("cut_at_gap", &self.cut_at_gap)
            .finish()
    }
}

/// What reading a capture met, frame by frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames (packet records) read.
    pub frames: u64,
    /// Frames of pcapng interfaces that are not Ethernet, skipped.
    pub other_link: u64,
    /// Runts and frames whose IP or TCP header failed validation (including
    /// frames cut short by the snap length), skipped.
    pub malformed: u64,
    /// Well-formed frames that are not TCP (ARP, UDP, ICMP, IP fragments,
    /// other ethertypes), skipped.
    pub not_tcp: u64,
    /// TCP segments read.
    pub tcp_segments: u64,
    /// TCP segments of connections whose SYN (for the server's data: whose
    /// SYN-ACK) had not been seen, skipped.
    pub orphan_segments: u64,
    /// Flows (with a SYN) in the capture.
    pub flows: u64,
    /// Flows without any client payload, not returned.
    pub flows_without_payload: u64,
    /// Flows whose client payload ends at a gap.
    pub flows_cut_at_gap: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub read_error: Option<String>,
}

impl fmt::Display for CaptureStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames: {} TCP segments, {} not TCP, {} malformed, {} on other link types, {} without a SYN; \
             {} flows, {} without client payload, {} cut at a gap",
            self.frames,
            self.tcp_segments,
            self.not_tcp,
            self.malformed,
            self.other_link,
            self.orphan_segments,
            self.flows,
            self.flows_without_payload,
            self.flows_cut_at_gap
        )?;
        if let Some(error) = &self.read_error {
            write!(f, "; reading stopped early: {error}")?;
        }
        Ok(())
    }
}

/// The flows of a capture with client payload, and what reading it met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// In the order of their SYNs; never empty.
    pub flows: Vec<Flow>,
    pub stats: CaptureStats,
}

impl Capture {
    /// Client payload bytes of all flows.
    pub fn payload_bytes(&self) -> u64 {
        self.flows.iter().map(|flow| flow.payload.len() as u64).sum()
    }
}

/// Reads the capture at `path` (pcap or pcapng, Ethernet).
pub fn read_capture(path: &Path) -> Result<Capture, CaptureError> {
    let bytes = std::fs::read(path).map_err(|source| CaptureError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_capture(&bytes)
}

/// The first four bytes of a pcapng file (a Section Header Block).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads a capture (pcap or pcapng, Ethernet) held in memory.
pub fn parse_capture(bytes: &[u8]) -> Result<Capture, CaptureError> {
    let mut flows = FlowTable::default();
    if bytes.get(..4) == Some(&PCAPNG_MAGIC[..]) {
        read_pcapng(bytes, &mut flows)?;
    } else {
        read_pcap(bytes, &mut flows)?;
    }
    flows.finish()
}

fn link_name(link: DataLink) -> String {
    format!("{link:?} ({})", u32::from(link))
}

fn read_pcap(bytes: &[u8], flows: &mut FlowTable) -> Result<(), CaptureError> {
    let (mut rest, parser) = PcapParser::new(bytes).map_err(|error| CaptureError::NotACapture(error.to_string()))?;
    let link = parser.header().datalink;
    if link != DataLink::ETHERNET {
        return Err(CaptureError::UnsupportedLinkType(link_name(link)));
    }
    while !rest.is_empty() {
        // The raw record: its lengths are not checked against the snap
        // length, which some writers get wrong; the frame's own headers are.
        match parser.next_raw_packet(rest) {
            Ok((next, packet)) if next.len() < rest.len() => {
                flows.frame(&packet.data);
                rest = next;
            }
            Ok(_) => {
                flows.read_error("a packet record that consumes no bytes");
                break;
            }
            Err(error) => {
                flows.read_error(&format!("packet record {}: {error}", flows.stats.frames + 1));
                break;
            }
        }
    }
    Ok(())
}

fn read_pcapng(bytes: &[u8], flows: &mut FlowTable) -> Result<(), CaptureError> {
    let (mut rest, mut parser) =
        PcapNgParser::new(bytes).map_err(|error| CaptureError::NotACapture(error.to_string()))?;
    let mut ethernet_frames = 0u64;
    let mut other_link = None;
    while !rest.is_empty() {
        let (next, block) = match parser.next_block(rest) {
            Ok((next, block)) if next.len() < rest.len() => (next, block),
            Ok(_) => {
                flows.read_error("a block that consumes no bytes");
                break;
            }
            Err(error) => {
                flows.read_error(&format!("block after frame {}: {error}", flows.stats.frames));
                break;
            }
        };
        rest = next;
        let (interface, data) = match &block {
            Block::EnhancedPacket(packet) => (packet.interface_id, &packet.data),
            Block::Packet(packet) => (u32::from(packet.interface_id), &packet.data),
            Block::SimplePacket(packet) => (0, &packet.data),
            _ => continue,
        };
        let link = usize::try_from(interface)
            .ok()
            .and_then(|index| parser.interfaces().get(index))
            .map(|description| description.linktype);
        if link == Some(DataLink::ETHERNET) {
            ethernet_frames += 1;
            flows.frame(data);
        } else {
            flows.stats.frames += 1;
            flows.stats.other_link += 1;
            other_link = other_link.or(link);
        }
    }
    match other_link {
        Some(link) if ethernet_frames == 0 => Err(CaptureError::UnsupportedLinkType(link_name(link))),
        _ => Ok(()),
    }
}

/// One captured segment of a direction: where it starts (offset from the
/// direction's first data byte), how long it is, and its bytes if kept.
struct Segment {
    offset: u32,
    len: usize,
    data: Vec<u8>,
}

/// One direction of a flow.
struct Stream {
    /// The sequence number of the first data byte (ISN + 1), once known.
    start: Option<u32>,
    segments: Vec<Segment>,
    /// Keep the bytes (client) or only the lengths (server).
    keep_bytes: bool,
}

/// What [`Stream::assemble`] found.
struct Assembled {
    /// The contiguous bytes from the start (empty unless kept).
    bytes: Vec<u8>,
    /// Their number.
    len: u64,
    cut_at_gap: bool,
}

impl Stream {
    fn new(start: Option<u32>, keep_bytes: bool) -> Stream {
        Stream {
            start,
            segments: Vec::new(),
            keep_bytes,
        }
    }

    /// Adds `payload`, whose first byte has sequence number `seq`; bytes
    /// before the stream's start are cut off.
    fn add(&mut self, seq: u32, payload: &[u8]) {
        let Some(start) = self.start else {
            return;
        };
        let offset = seq.wrapping_sub(start).cast_signed();
        let (offset, skip) = match u32::try_from(offset) {
            Ok(offset) => (offset, 0),
            Err(_) => (0, usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX)),
        };
        let Some(rest) = payload.get(skip..).filter(|rest| !rest.is_empty()) else {
            return;
        };
        self.segments.push(Segment {
            offset,
            len: rest.len(),
            data: if self.keep_bytes { rest.to_vec() } else { Vec::new() },
        });
    }

    /// The contiguous bytes from the start, in sequence order: overlaps
    /// taken once (the earlier-starting segment, then the first captured),
    /// ending at the first gap.
    fn assemble(mut self) -> Assembled {
        // Stable: among segments at the same offset the first captured stays first.
        self.segments.sort_by_key(|segment| segment.offset);
        let mut bytes = Vec::new();
        let mut next = 0u64;
        let mut cut_at_gap = false;
        for segment in &self.segments {
            let offset = u64::from(segment.offset);
            if offset > next {
                cut_at_gap = true;
                break;
            }
            let end = offset + segment.len as u64;
            if end > next {
                if self.keep_bytes {
                    let skip = usize::try_from(next - offset).unwrap_or(usize::MAX);
                    bytes.extend_from_slice(segment.data.get(skip..).unwrap_or_default());
                }
                next = end;
            }
        }
        Assembled {
            bytes,
            len: next,
            cut_at_gap,
        }
    }
}

/// A flow while the capture is read.
struct FlowState {
    client: SocketAddr,
    server: SocketAddr,
    client_isn: u32,
    to_server: Stream,
    to_client: Stream,
}

/// The flows of a capture while it is read.
#[derive(Default)]
struct FlowTable {
    flows: Vec<FlowState>,
    /// (client, server) → the latest flow of that pair in `flows`.
    active: HashMap<(SocketAddr, SocketAddr), usize>,
    stats: CaptureStats,
}

impl FlowTable {
    fn read_error(&mut self, why: &str) {
        self.stats.read_error = Some(why.to_owned());
    }

    /// One Ethernet frame of the capture.
    fn frame(&mut self, frame: &[u8]) {
        self.stats.frames += 1;
        let Ok(class) = wire::classify(frame) else {
            self.stats.malformed += 1;
            return;
        };
        if class.malformed.is_some() {
            self.stats.malformed += 1;
            return;
        }
        let Some((tuple, info)) = class.tcp() else {
            self.stats.not_tcp += 1;
            return;
        };
        let payload = class.l4_range().and_then(|range| {
            let start = range.start.checked_add(info.header_len)?;
            frame.get(start..start.checked_add(info.payload_len)?)
        });
        let Some(payload) = payload else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.tcp_segments += 1;
        let src = SocketAddr::new(tuple.src_ip, tuple.src_port);
        let dst = SocketAddr::new(tuple.dst_ip, tuple.dst_port);
        let flags = info.flags;
        // A SYN occupies one sequence number; its data (if any) follows it.
        let data_seq = info.seq_number.wrapping_add(u32::from(flags.syn));
        let payload = if flags.rst { &[][..] } else { payload };

        if flags.syn && !flags.ack && !flags.rst {
            let retransmitted = self
                .active
                .get(&(src, dst))
                .and_then(|&index| self.flows.get(index))
                .is_some_and(|flow| flow.client_isn == info.seq_number);
            if !retransmitted {
                self.active.insert((src, dst), self.flows.len());
                self.flows.push(FlowState {
                    client: src,
                    server: dst,
                    client_isn: info.seq_number,
                    to_server: Stream::new(Some(data_seq), true),
                    to_client: Stream::new(None, false),
                });
                self.stats.flows += 1;
            }
        }
        if let Some(flow) = self
            .active
            .get(&(src, dst))
            .and_then(|&index| self.flows.get_mut(index))
        {
            flow.to_server.add(data_seq, payload);
        } else if let Some(flow) = self
            .active
            .get(&(dst, src))
            .and_then(|&index| self.flows.get_mut(index))
        {
            if flags.syn && flags.ack && !flags.rst && flow.to_client.start.is_none() {
                flow.to_client.start = Some(data_seq);
            }
            if flow.to_client.start.is_some() {
                flow.to_client.add(data_seq, payload);
            } else {
                self.stats.orphan_segments += 1;
            }
        } else {
            self.stats.orphan_segments += 1;
        }
    }

    fn finish(self) -> Result<Capture, CaptureError> {
        let mut stats = self.stats;
        let mut flows = Vec::new();
        for state in self.flows {
            let client = state.to_server.assemble();
            let server = state.to_client.assemble();
            if client.cut_at_gap {
                stats.flows_cut_at_gap += 1;
            }
            if client.bytes.is_empty() {
                stats.flows_without_payload += 1;
                continue;
            }
            flows.push(Flow {
                client: state.client,
                server: state.server,
                payload: client.bytes,
                server_bytes: server.len,
                cut_at_gap: client.cut_at_gap,
            });
        }
        if flows.is_empty() {
            return Err(CaptureError::NoPayload(stats));
        }
        Ok(Capture { flows, stats })
    }
}

/// The origin's check of one replayed request: the bytes it receives are
/// compared, as they come, with the payload it expects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PayloadCheck {
    received: usize,
    differs: bool,
}

impl PayloadCheck {
    pub fn new() -> PayloadCheck {
        PayloadCheck::default()
    }

    /// `bytes`, the next bytes received, against `expected`, the whole
    /// payload; bytes beyond its end differ too.
    pub fn feed(&mut self, expected: &[u8], bytes: &[u8]) {
        let want = expected.get(self.received..).and_then(|rest| rest.get(..bytes.len()));
        if want != Some(bytes) {
            self.differs = true;
        }
        self.received = self.received.saturating_add(bytes.len());
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// `None` while fewer bytes than `expected` came (and none differed);
    /// then whether what came is exactly `expected`.
    pub fn verdict(&self, expected: &[u8]) -> Option<bool> {
        if self.differs {
            Some(false)
        } else if self.received >= expected.len() {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use wire::{SegmentControl, TcpSegment};

    use super::*;

    const CLIENT: &str = "198.18.0.1:40000";
    const SERVER: &str = "198.18.0.2:80";
    const C_ISN: u32 = 1_000;
    const S_ISN: u32 = 9_000;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// One Ethernet frame of a TCP segment from `src` to `dst`.
    fn segment(src: &str, dst: &str, seq: u32, ack: Option<u32>, control: SegmentControl, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        TcpSegment {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: addr(src),
            dst: addr(dst),
            seq,
            ack,
            control,
            window: 65_535,
            payload,
        }
        .write(&mut frame)
        .unwrap();
        frame
    }

    /// Client data at `offset` from the first payload byte.
    fn c_data(offset: u32, payload: &[u8]) -> Vec<u8> {
        segment(
            CLIENT,
            SERVER,
            C_ISN + 1 + offset,
            Some(S_ISN + 1),
            SegmentControl::Psh,
            payload,
        )
    }

    fn s_data(offset: u32, payload: &[u8]) -> Vec<u8> {
        segment(
            SERVER,
            CLIENT,
            S_ISN + 1 + offset,
            Some(C_ISN + 1),
            SegmentControl::Psh,
            payload,
        )
    }

    fn handshake() -> Vec<Vec<u8>> {
        vec![
            segment(CLIENT, SERVER, C_ISN, None, SegmentControl::Syn, b""),
            segment(SERVER, CLIENT, S_ISN, Some(C_ISN + 1), SegmentControl::Syn, b""),
            segment(CLIENT, SERVER, C_ISN + 1, Some(S_ISN + 1), SegmentControl::None, b""),
        ]
    }

    fn refresh_ipv4_checksum(header: &mut [u8]) {
        header[10..12].fill(0);
        let mut sum: u32 = header
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let checksum = !u16::try_from(sum).unwrap();
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
    }

    /// A classic pcap (little-endian, µs, Ethernet) of `frames`.
    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        pcap_with_link(frames, 1)
    }

    fn pcap_with_link(frames: &[Vec<u8>], link: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65_535u32.to_le_bytes());
        out.extend_from_slice(&link.to_le_bytes());
        for (i, frame) in frames.iter().enumerate() {
            let len = u32::try_from(frame.len()).unwrap();
            out.extend_from_slice(&1_700_000_000u32.to_le_bytes());
            out.extend_from_slice(&u32::try_from(i).unwrap().to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(frame);
        }
        out
    }

    /// A pcapng with one interface per entry of `links`; frame i is on
    /// interface `on[i]`.
    fn pcapng(links: &[DataLink], frames: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        for &linktype in links {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype,
                    snaplen: 65_535,
                    options: vec![],
                })
                .unwrap();
        }
        for (interface_id, frame) in frames {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: *interface_id,
                    timestamp: std::time::Duration::from_secs(1_700_000_000),
                    original_len: u32::try_from(frame.len()).unwrap(),
                    data: Cow::Borrowed(frame),
                    options: vec![],
                })
                .unwrap();
        }
        writer.into_inner()
    }

    fn only_flow(frames: &[Vec<u8>]) -> (Flow, CaptureStats) {
        let capture = parse_capture(&pcap(frames)).unwrap();
        assert_eq!(capture.flows.len(), 1, "{capture:?}");
        (capture.flows[0].clone(), capture.stats)
    }

    #[test]
    fn segments_in_order_give_the_payload_and_the_server_byte_count() {
        let mut frames = handshake();
        frames.push(c_data(0, b"GET / HTTP/1.1\r\n"));
        frames.push(c_data(16, b"Host: origin.test\r\n\r\n"));
        frames.push(s_data(0, &[b'r'; 1000]));
        frames.push(s_data(1000, &[b'r'; 234]));
        let (flow, stats) = only_flow(&frames);
        assert_eq!(flow.payload, b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n");
        assert_eq!((flow.client, flow.server), (addr(CLIENT), addr(SERVER)));
        assert_eq!(flow.server_bytes, 1234);
        assert!(!flow.cut_at_gap);
        assert_eq!(
            (stats.frames, stats.tcp_segments, stats.flows, stats.orphan_segments),
            (7, 7, 1, 0)
        );
    }

    #[test]
    fn out_of_order_retransmitted_and_overlapping_segments_are_put_in_place_once() {
        let text = b"POST /upload HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let part = |from: usize, to: usize| c_data(u32::try_from(from).unwrap(), &text[from..to]);
        let mut frames = handshake();
        frames.push(part(30, text.len())); // the tail first
        frames.push(part(0, 12));
        frames.push(part(0, 12)); // retransmission
        frames.push(part(8, 20)); // overlaps both neighbours
        frames.push(part(12, 30));
        frames.push(part(40, 45)); // inside what is there already
                                   // A keep-alive probe: one garbage byte at the sequence number
                                   // before the next one; the real byte wins.
        frames.push(c_data(u32::try_from(text.len()).unwrap() - 1, b"!"));
        let (flow, _) = only_flow(&frames);
        assert_eq!(flow.payload, text);
        assert!(!flow.cut_at_gap);

        // Among copies starting at the same place, the first captured wins.
        let mut frames = handshake();
        frames.push(c_data(0, b"first"));
        frames.push(c_data(0, b"other"));
        assert_eq!(only_flow(&frames).0.payload, b"first");
    }

    #[test]
    fn a_gap_ends_the_payload() {
        let mut frames = handshake();
        frames.push(c_data(0, b"abcd"));
        frames.push(c_data(8, b"ijkl")); // 4..8 never captured
        frames.push(c_data(4, b"ef")); // fills only part of it
        let (flow, stats) = only_flow(&frames);
        assert_eq!(flow.payload, b"abcdef");
        assert!(flow.cut_at_gap);
        assert_eq!(stats.flows_cut_at_gap, 1);
    }

    #[test]
    fn sequence_numbers_wrap_and_syn_data_counts_but_rst_data_does_not() {
        let isn = u32::MAX - 2;
        let frames = vec![
            segment(CLIENT, SERVER, isn, None, SegmentControl::Syn, b"ab"),
            segment(
                SERVER,
                CLIENT,
                S_ISN,
                Some(isn.wrapping_add(3)),
                SegmentControl::Syn,
                b"",
            ),
            segment(
                CLIENT,
                SERVER,
                isn.wrapping_add(3),
                Some(S_ISN + 1),
                SegmentControl::Psh,
                b"cd",
            ),
            segment(
                CLIENT,
                SERVER,
                isn.wrapping_add(5),
                Some(S_ISN + 1),
                SegmentControl::Rst,
                b"xx",
            ),
            segment(
                CLIENT,
                SERVER,
                isn.wrapping_add(5),
                Some(S_ISN + 1),
                SegmentControl::Psh,
                b"ef",
            ),
            // Before the first data byte: only its new part counts.
            segment(CLIENT, SERVER, isn, Some(S_ISN + 1), SegmentControl::Psh, b"?abcdefg"),
        ];
        let (flow, _) = only_flow(&frames);
        assert_eq!(flow.payload, b"abcdefg");
    }

    #[test]
    fn flows_need_their_syn_and_port_reuse_starts_a_new_flow() {
        let mut frames = vec![
            // Mid-stream: no SYN, so neither direction is used.
            segment("198.18.0.9:5555", SERVER, 77, Some(88), SegmentControl::Psh, b"no syn"),
            segment(SERVER, "198.18.0.9:5555", 88, Some(83), SegmentControl::Psh, b"reply"),
            // Data before its SYN in capture order is not used either.
            c_data(0, b"early"),
        ];
        frames.extend(handshake());
        frames.push(segment(CLIENT, SERVER, C_ISN, None, SegmentControl::Syn, b"")); // retransmitted SYN
        frames.push(c_data(0, b"one"));
        // The same 4-tuple again with a new ISN: a second flow.
        frames.push(segment(CLIENT, SERVER, 50_000, None, SegmentControl::Syn, b""));
        frames.push(segment(
            CLIENT,
            SERVER,
            50_001,
            Some(S_ISN + 1),
            SegmentControl::Psh,
            b"two",
        ));
        // A flow with a SYN and no payload.
        frames.push(segment("198.18.0.1:40001", SERVER, 5, None, SegmentControl::Syn, b""));
        let capture = parse_capture(&pcap(&frames)).unwrap();
        let payloads: Vec<&[u8]> = capture.flows.iter().map(|flow| &flow.payload[..]).collect();
        assert_eq!(payloads, [&b"one"[..], &b"two"[..]]);
        assert_eq!(capture.stats.orphan_segments, 3);
        assert_eq!((capture.stats.flows, capture.stats.flows_without_payload), (3, 1));
        assert_eq!(capture.payload_bytes(), 6);
    }

    #[test]
    fn vlan_ipv6_non_tcp_and_malformed_frames() {
        let v6_client = "[2001:2::1]:40000";
        let v6_server = "[2001:2::2]:443";
        let mut frames = vec![
            segment(v6_client, v6_server, 7, None, SegmentControl::Syn, b""),
            segment(v6_client, v6_server, 8, Some(1), SegmentControl::Psh, b"over ipv6"),
        ];
        // An 802.1Q tag in front of an IPv4 flow.
        let tagged = |frame: Vec<u8>| {
            let mut out = frame[..12].to_vec();
            out.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
            out.extend_from_slice(&frame[12..]);
            out
        };
        frames.push(tagged(segment(CLIENT, SERVER, C_ISN, None, SegmentControl::Syn, b"")));
        frames.push(tagged(c_data(0, b"tagged ")));
        // A copy of the next segment cut short by the snap length: skipped,
        // it must not be taken as a shorter payload.
        let full = c_data(7, b"and whole");
        frames.push(full[..full.len() - 4].to_vec());
        frames.push(tagged(full));
        // A bad IPv4 header checksum.
        let mut bad = c_data(16, b"bad checksum");
        bad[14 + 10] ^= 0xff;
        frames.push(bad);
        // Not TCP: another ethertype, and an IPv4 fragment.
        let mut other = vec![0u8; 60];
        other[12..14].copy_from_slice(&[0x88, 0xb5]);
        frames.push(other);
        let mut fragment = c_data(16, b"fragment");
        fragment[14 + 6] = 0x20; // MF
        refresh_ipv4_checksum(&mut fragment[14..34]);
        frames.push(fragment);
        // Runts.
        frames.push(Vec::new());
        frames.push(vec![0xff; 13]);
        let capture = parse_capture(&pcap(&frames)).unwrap();
        let payloads: Vec<&[u8]> = capture.flows.iter().map(|flow| &flow.payload[..]).collect();
        assert_eq!(payloads, [&b"over ipv6"[..], &b"tagged and whole"[..]]);
        assert_eq!(capture.flows[0].server, addr(v6_server));
        let stats = &capture.stats;
        assert_eq!((stats.frames, stats.tcp_segments), (11, 5));
        assert_eq!((stats.malformed, stats.not_tcp), (4, 2), "{stats}");
        assert_eq!(stats.read_error, None);
    }

    #[test]
    fn pcapng_link_types_and_typed_errors() {
        let mut frames: Vec<(u32, Vec<u8>)> = handshake().into_iter().map(|frame| (0, frame)).collect();
        frames.push((0, c_data(0, b"hello")));
        frames.push((1, c_data(5, b"not ethernet")));
        let capture = parse_capture(&pcapng(&[DataLink::ETHERNET, DataLink::RAW], &frames)).unwrap();
        assert_eq!(capture.flows[0].payload, b"hello");
        assert_eq!((capture.stats.frames, capture.stats.other_link), (5, 1));

        let raw_only = pcapng(&[DataLink::RAW], &[(0, c_data(0, b"x"))]);
        assert!(matches!(
            parse_capture(&raw_only),
            Err(CaptureError::UnsupportedLinkType(name)) if name.contains("RAW")
        ));
        assert!(matches!(
            parse_capture(&pcap_with_link(&[c_data(0, b"x")], 113)),
            Err(CaptureError::UnsupportedLinkType(name)) if name.contains("113")
        ));
        assert!(matches!(
            parse_capture(b"this is not a capture"),
            Err(CaptureError::NotACapture(_))
        ));
        assert!(matches!(parse_capture(b""), Err(CaptureError::NotACapture(_))));
        match parse_capture(&pcap(&handshake())) {
            Err(error @ CaptureError::NoPayload(_)) => {
                assert!(error.to_string().contains("3 TCP segments"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let missing = read_capture(Path::new("/nonexistent/capture.pcap")).unwrap_err();
        assert!(
            matches!(&missing, CaptureError::Io { path, .. } if path == Path::new("/nonexistent/capture.pcap")),
            "{missing}"
        );
    }

    #[test]
    fn a_capture_cut_short_keeps_what_came_before() {
        let mut frames = handshake();
        frames.push(c_data(0, b"kept"));
        frames.push(c_data(4, b" and lost"));
        let bytes = pcap(&frames);
        let capture = parse_capture(&bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(capture.flows[0].payload, b"kept");
        assert!(capture.stats.read_error.is_some(), "{:?}", capture.stats);
    }

    /// xorshift64*: deterministic bytes for the garbage tests.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn garbage_truncated_and_corrupted_captures_never_panic() {
        let mut frames = handshake();
        frames.push(c_data(0, b"GET / HTTP/1.1\r\n\r\n"));
        frames.push(s_data(0, b"HTTP/1.1 200 OK\r\n\r\n"));
        let classic = pcap(&frames);
        let ng = pcapng(
            &[DataLink::ETHERNET],
            &frames.iter().map(|frame| (0, frame.clone())).collect::<Vec<_>>(),
        );
        for valid in [&classic, &ng] {
            for cut in 0..valid.len() {
                let _ = parse_capture(&valid[..cut]);
            }
            for at in 0..valid.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut corrupt = valid.clone();
                    corrupt[at] ^= flip;
                    let _ = parse_capture(&corrupt);
                }
            }
            // Random bytes after a valid file header.
            for seed in 0..64 {
                let header = if valid == &classic { 24 } else { 28 };
                let mut mixed = valid[..header].to_vec();
                mixed.extend(noise(seed, 600));
                let _ = parse_capture(&mixed);
            }
        }
        for seed in 0..256 {
            let _ = parse_capture(&noise(seed, usize::try_from(seed).unwrap() * 7));
        }
        // Random frames in a valid file.
        let random_frames: Vec<Vec<u8>> = (0..200).map(|seed| noise(seed, 80)).collect();
        let _ = parse_capture(&pcap(&random_frames));
        // Every truncation of every frame, in a valid file.
        let cut_frames: Vec<Vec<u8>> = frames
            .iter()
            .flat_map(|frame| (0..frame.len()).map(move |cut| frame[..cut].to_vec()))
            .collect();
        assert!(matches!(
            parse_capture(&pcap(&cut_frames)),
            Err(CaptureError::NoPayload(stats)) if stats.malformed > 0
        ));
    }

    #[test]
    fn the_origin_check_tells_exact_from_corrupted_short_and_long() {
        let expected = b"GET /index.html HTTP/1.1\r\n\r\n";
        let mut exact = PayloadCheck::new();
        exact.feed(expected, &expected[..10]);
        assert_eq!(exact.verdict(expected), None, "still waiting");
        exact.feed(expected, &expected[10..]);
        assert_eq!(
            (exact.verdict(expected), exact.received()),
            (Some(true), expected.len())
        );

        let mut corrupted = expected.to_vec();
        corrupted[5] ^= 0x20;
        let mut check = PayloadCheck::new();
        check.feed(expected, &corrupted[..10]);
        assert_eq!(check.verdict(expected), Some(false), "known before the end");
        check.feed(expected, &corrupted[10..]);
        assert_eq!(check.verdict(expected), Some(false));

        let mut long = PayloadCheck::new();
        long.feed(expected, expected);
        long.feed(expected, b"x");
        assert_eq!(long.verdict(expected), Some(false));
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pcap-fixtures")
            .join(name)
    }

    #[test]
    fn the_classic_pcap_session_fixture_gives_its_get_request() {
        let capture = read_capture(&fixture("tcp-session.pcap")).unwrap();
        assert_eq!(capture.flows.len(), 1);
        let flow = &capture.flows[0];
        assert!(flow.payload.starts_with(b"GET /index.html HTTP/1.1\r\n"));
        assert!(flow.payload.ends_with(b"Connection: close\r\n\r\n"));
        assert_eq!(
            (flow.client, flow.server),
            (addr("198.18.0.1:40000"), addr("198.18.0.2:80"))
        );
        assert!(flow.server_bytes > 4000, "{flow:?}");
        assert_eq!(capture.stats.tcp_segments, 12);
    }

    /// The requests scripts/gen-fixtures.py writes into http-flows.pcapng.
    fn fixture_requests() -> [Vec<u8>; 3] {
        let get_small =
            b"GET /small HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: tlsgate-replay\r\nAccept: */*\r\n\r\n".to_vec();
        let body: String = (0..150).map(|line| format!("tlsgate-replay-{line:05}\n")).collect();
        let post = format!(
            "POST /upload HTTP/1.1\r\nHost: origin.test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        let get_big = format!(
            "GET /big HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: tlsgate-replay\r\nCookie: session={}\r\nAccept: */*\r\n\r\n",
            "0123456789abcdef".repeat(36)
        )
        .into_bytes();
        [get_small, post, get_big]
    }

    #[test]
    fn the_pcapng_fixture_gives_its_three_http_requests_byte_exact() {
        let capture = read_capture(&fixture("http-flows.pcapng")).unwrap();
        let [get_small, post, get_big] = fixture_requests();
        let flows = &capture.flows;
        assert_eq!(flows.len(), 3, "{capture:?}");
        assert_eq!(flows[0].payload, get_small);
        assert_eq!(
            flows[1].payload, post,
            "reassembled from out-of-order and retransmitted segments"
        );
        assert_eq!(flows[2].payload, get_big);
        assert_eq!((post.len(), get_big.len(), get_small.len()), (3242, 675, 83));
        let servers: Vec<u64> = flows.iter().map(|flow| flow.server_bytes).collect();
        assert_eq!(servers, [1112, 287, 8102]);
        assert_eq!(flows[1].client, addr("198.18.0.1:40101"));
        assert_eq!(flows[2].server, addr("[2001:2::2]:80"));
        assert!(flows.iter().all(|flow| !flow.cut_at_gap));
        let stats = &capture.stats;
        assert_eq!(
            (stats.frames, stats.tcp_segments, stats.not_tcp, stats.malformed),
            (44, 39, 5, 0)
        );
        assert_eq!(
            (stats.flows, stats.orphan_segments, stats.read_error.as_deref()),
            (3, 2, None)
        );
        assert_eq!(capture.payload_bytes(), 83 + 3242 + 675);
    }
}
