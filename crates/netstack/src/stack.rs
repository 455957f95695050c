//! The transparent TCP stack: one smoltcp interface per port (IP medium,
//! AnyIP), a flow table keyed by the 6-tuple, one tiny socket set per flow,
//! a timer wheel fed by each flow's `poll_at`, and an event queue.
//!
//! Sans-IO: frames and `now` go in; frames to send ([`OutFrame`]) and
//! [`Event`]s come out. Work per packet is one hash lookup plus a poll of
//! that flow's own socket set, whatever the number of flows.

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use lazybuf::{Arena, ArenaError, BackedSocket, PAGE};
use slab::Slab;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
pub use smoltcp::socket::tcp::CongestionControl;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Packet, Ipv6Packet, TcpOption, TcpPacket,
};
use thiserror::Error;
use wire::{FlowTuple, FrameClass};

use crate::device::{FlowDevice, OutFrame};
use crate::l2::L2Header;
use crate::timer::TimerWheel;
use crate::tx::{OutFrames, TxFrames};

/// A flow whose peer has been silent this long, with empty rings, gives
/// the pages of its buffers back.
const BUFFER_LINGER: Duration = Duration::from_secs(1);

/// Sizes, timeouts and congestion control of the stack's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackConfig {
    /// Receive buffer of each socket, in bytes: the largest window it
    /// advertises. Memory is committed only for the bytes in flight and
    /// given back once the flow goes quiet (see `lazybuf`).
    pub rx_buffer: usize,
    /// Transmit buffer of each socket, in bytes (committed likewise).
    pub tx_buffer: usize,
    /// A flow that is still opening (its SYN or SYN-ACK unanswered) gives
    /// up when its peer stays silent this long: the connect timeout. An
    /// open flow with data or a FIN outstanding needs this much silence
    /// and also `max_retransmissions` unanswered retransmission rounds
    /// (counted in [`StackCounters::dead_peers`]). An idle connection with nothing
    /// outstanding lives on.
    pub timeout: Duration,
    /// Retransmission rounds (smoltcp's timer firing and resending, its
    /// interval doubling each time up to 60 s) an open flow sends without
    /// hearing a single packet from its peer before the peer counts as
    /// dead, like Linux's `tcp_retries2`.
    pub max_retransmissions: u32,
    /// The congestion control of every socket.
    pub congestion_control: CongestionControl,
    /// Flows beyond this many are refused.
    pub max_flows: usize,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            rx_buffer: 4 << 20,
            tx_buffer: 4 << 20,
            timeout: Duration::from_secs(10),
            max_retransmissions: 6,
            congestion_control: CongestionControl::Cubic,
            max_flows: 1 << 20,
        }
    }
}

/// A flow's identity: a slab index plus a generation, so an id of a freed
/// flow never reaches a newer flow in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

/// The 6-tuple: the port a flow's frames arrive on and the TCP 5-tuple of
/// those arriving frames (source = the remote peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub port: usize,
    pub tuple: FlowTuple,
}

/// What happened to a flow; `owner` is the tag its owner set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub flow: FlowId,
    pub owner: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The three-way handshake completed.
    Connected,
    /// New bytes can be read.
    Readable,
    /// Transmit buffer space was freed.
    Writable,
    /// The peer's FIN arrived: after the bytes already queued, nothing
    /// more will come (see [`Stack::peer_finished`]).
    PeerClosed,
    /// The peer reset the connection.
    Reset,
    /// The peer stayed silent past the timeout (or never answered a SYN).
    TimedOut,
    /// The flow is gone; its id is dead from now on.
    Closed,
}

/// Live-flow accounting, so leaks are visible.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StackCounters {
    pub flows_live: u64,
    pub flows_created: u64,
    pub flows_freed: u64,
    pub flows_refused: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Socket-set polls: one per delivered frame, due timer or touched
    /// flow, never one per live flow.
    pub flow_polls: u64,
    /// SYN retransmissions of connecting flows that were not sent because
    /// their client had not retransmitted its own SYN (see
    /// [`Stack::mirror_syn`]).
    pub syn_retransmits_withheld: u64,
    /// Open flows given up because their peer answered none of
    /// `max_retransmissions` retransmission rounds (each also emitted
    /// [`EventKind::TimedOut`]).
    pub dead_peers: u64,
    /// SYN-ACKs sent again at once because the peer retransmitted its SYN.
    pub synacks_repeated: u64,
    /// Lost segments retransmitted at once on the stack's prompting, where
    /// smoltcp alone would have waited for its retransmission timer (at
    /// least 1 s): the next hole after a partial ACK, or a hole the peer's
    /// SACK shows behind everything sent (see [`Recovery`]).
    pub fast_retransmits_prompted: u64,
    /// Flows still opening given up because their peer stayed silent for
    /// the connect timeout (each also emitted [`EventKind::TimedOut`]).
    pub connect_timeouts: u64,
}

/// Why a stack operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StackError {
    #[error("no such flow (already closed?)")]
    NoSuchFlow,
    #[error("a flow with this 6-tuple exists already")]
    FlowExists,
    #[error("the flow table is full ({0} flows)")]
    TooManyFlows(usize),
    #[error("the frame is not a TCP SYN that can open a flow")]
    NotASyn,
    #[error("no port {0}")]
    NoSuchPort(usize),
    #[error("the socket refused: {0}")]
    Socket(&'static str),
    #[error("no socket buffers: {0}")]
    Buffers(#[from] ArenaError),
}

/// Socket-level states the events are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observed {
    state: tcp::State,
    recv_queue: usize,
    send_queue: usize,
    peer_closed: bool,
}

struct Flow {
    key: FlowKey,
    generation: u32,
    owner: u64,
    l2: L2Header,
    socket: BackedSocket,
    buffers: BufferUse,
    observed: Observed,
    /// The deadline this flow is scheduled at in the wheel, if any.
    timer: Option<Instant>,
    /// Whether the owner asked for an abort (its Closed is not an error).
    aborted: bool,
    /// When a packet last arrived for this flow (or it was created).
    last_heard: Instant,
    /// An accepted flow whose SYN-ACK waits for `release_synack`.
    held: bool,
    /// Since when the flow waits for its peer (see `waiting_on_peer`).
    waiting_since: Option<Instant>,
    /// How long the peer may stay silent while the flow waits for it.
    timeout: Duration,
    /// Retransmission rounds sent since the peer was last heard, and how
    /// many make an open flow's peer dead (see
    /// `StackConfig::max_retransmissions`).
    unanswered_rounds: u32,
    max_rounds: u32,
    /// The client's timestamp clock (its SYN's TSval, and when it came):
    /// both legs send timestamps that continue it, so the server sees the
    /// client's own monotonic clock (and accepts a SYN for a 4-tuple it
    /// holds in TIME-WAIT exactly as it would from the client).
    timestamp_origin: Option<(u32, Instant)>,
    /// Once the peer's FIN came: how many of the queued bytes came before
    /// it (the rest of the stream). smoltcp also queues bytes a peer sends
    /// after its FIN; those are dropped, never read.
    before_fin: Option<usize>,
    /// A connecting flow whose SYN follows its client's (see
    /// [`Stack::mirror_syn`]).
    syn_mirror: Option<SynMirror>,
    /// An accepted flow whose client's SYN retransmissions make this
    /// connecting flow send its SYN again.
    syn_follower: Option<FlowId>,
    /// The SYN-ACK an accepted flow sent, while it waits for the ACK: sent
    /// again when the peer retransmits its SYN (smoltcp ignores a SYN in
    /// SYN-RECEIVED; Linux answers it), so a lost SYN-ACK costs the peer's
    /// retransmission interval, not that plus smoltcp's own.
    synack: Option<Vec<u8>>,
    /// What the stack follows of the flow's sending side to prompt
    /// retransmissions smoltcp would leave to its timer.
    recovery: Recovery,
}

/// The sending side of a flow as the stack sees it on the wire, to make up
/// for what smoltcp's loss recovery lacks (no SACK, no NewReno partial-ACK
/// recovery, a retransmission timeout of at least 1 s that doubles): when
/// a segment is lost that smoltcp would only resend on its timer, the
/// stack delivers the peer's latest acknowledgement (as a pure ACK) to the
/// socket again, up to three times, so smoltcp counts duplicate ACKs and
/// fast-retransmits the first unacknowledged segment (one segment,
/// congestion window reduced as for any loss). The cases:
/// - **partial ACK** (RFC 6582): during a recovery (a segment was sent
///   again), an ACK that advances but stays below what had been sent when
///   it began means the segment at the new ACK is lost too;
/// - **SACKed tail** (like RFC 5827's early retransmit): a duplicate ACK
///   whose SACK block reaches the end of everything sent: the peer has all
///   but the hole, and no further segment will make a third duplicate ACK;
/// - **probe** (like Linux's tail loss probe): nothing acknowledged for
///   twice the smoothed round trip plus [`PROBE_ACK_ALLOWANCE`] since the
///   last segment sent or acknowledged, while data is outstanding (a lost
///   tail, or a lost retransmission): once, until the peer acknowledges
///   something new.
///
/// Sequence numbers compare modulo 2^32.
#[derive(Debug, Default, Clone)]
struct Recovery {
    /// One past the highest sequence number sent, once something was.
    sent_end: Option<u32>,
    /// The peer's highest acknowledgement.
    acked: Option<u32>,
    /// During a recovery: `sent_end` when it began; over once acknowledged.
    recover: Option<u32>,
    /// One past the highest segment sent again during the recovery.
    resent_end: u32,
    /// The round-trip sample under way: when a new segment went out, and
    /// its end (dropped if anything is sent again, as Karn says).
    timing: Option<(Instant, u32)>,
    /// Smoothed round trip (RFC 6298's SRTT), once sampled.
    srtt: Option<Duration>,
    /// The last progress: a segment sent (new or again) or new data
    /// acknowledged.
    progress_at: Option<Instant>,
    /// A probe went out since the last new acknowledgement: no other until
    /// the peer acknowledges more.
    probed: bool,
    /// The peer's latest acknowledgement as a pure ACK (payload and FIN
    /// taken off), to deliver again; dropped once the peer is quiet for
    /// `BUFFER_LINGER`.
    latest_ack: Option<Vec<u8>>,
}

/// What a probe waits for beyond two round trips: a peer may hold its
/// ACK of a lone segment back (delayed ACK; Linux for up to 40 ms).
const PROBE_ACK_ALLOWANCE: Duration = Duration::from_millis(50);

/// Whether sequence number `a` comes after `b` (modulo 2^32).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What the stack reads of a segment from the peer for [`Recovery`].
#[derive(Debug, Clone, Copy)]
struct PeerAck {
    ack: u32,
    /// No payload and no SYN, FIN or RST: a pure acknowledgement.
    pure: bool,
    /// The right edge of the SACK blocks, if any lie beyond `ack`.
    sacked_to: Option<u32>,
}

impl PeerAck {
    fn of(packet: &[u8]) -> Option<PeerAck> {
        let tcp = tcp_segment(packet)?;
        if !tcp.ack() || tcp.rst() || tcp.syn() {
            return None;
        }
        let ack = tcp.ack_number().0 as u32;
        let mut sacked_to = None;
        let mut options = tcp.options();
        while !options.is_empty() {
            let Ok((rest, option)) = TcpOption::parse(options) else {
                break;
            };
            match option {
                TcpOption::SackRange(blocks) => {
                    for (_, right) in blocks.iter().flatten() {
                        if seq_after(*right, sacked_to.unwrap_or(ack)) {
                            sacked_to = Some(*right);
                        }
                    }
                }
                TcpOption::EndOfList => break,
                _ => {}
            }
            options = rest;
        }
        Some(PeerAck {
            ack,
            pure: tcp.payload().is_empty() && !tcp.fin(),
            sacked_to,
        })
    }
}

/// The IP packet `packet` (IPv4, or IPv6 without extension headers,
/// carrying a TCP segment) as the pure ACK its sender would send next:
/// payload and FIN taken off, the sequence number after them, PSH clear,
/// lengths and checksums refreshed; written into `reuse` (the previous
/// one, so that a steady stream of ACKs allocates nothing).
fn as_pure_ack(packet: &[u8], reuse: Option<Vec<u8>>) -> Option<Vec<u8>> {
    let tcp = tcp_segment(packet)?;
    let header_len = usize::from(tcp.header_len());
    let advance = tcp.payload().len() as u32 + u32::from(tcp.fin());
    let offset = match packet.first()? >> 4 {
        4 => usize::from(packet.first()? & 0x0f) * 4,
        _ => 40,
    };
    if offset < 20 {
        return None;
    }
    let mut pure = reuse.unwrap_or_default();
    pure.clear();
    pure.extend_from_slice(packet.get(..offset + header_len)?);
    let (src, dst) = match pure.first()? >> 4 {
        4 => {
            // Unchecked: the lengths still say the payload is there.
            let mut ip = Ipv4Packet::new_unchecked(&mut pure[..]);
            ip.set_total_len(u16::try_from(offset + header_len).ok()?);
            ip.fill_checksum();
            (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()))
        }
        _ => {
            let mut ip = Ipv6Packet::new_unchecked(&mut pure[..]);
            ip.set_payload_len(u16::try_from(header_len).ok()?);
            (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()))
        }
    };
    let mut segment = TcpPacket::new_checked(pure.get_mut(offset..)?).ok()?;
    segment.set_seq_number(segment.seq_number() + advance as usize);
    segment.set_fin(false);
    segment.set_psh(false);
    segment.fill_checksum(&src, &dst);
    Some(pure)
}

impl Recovery {
    /// Notes the segments the flow just sent (the frames queued in `frames`
    /// from `from` on); returns whether one of them carried the bytes at
    /// `seq`, sent again.
    fn sent(&mut self, frames: &dyn TxFrames, from: usize, l2: usize, seq: Option<u32>, now: Instant) -> bool {
        let mut resent_at_seq = false;
        for tcp in (from..frames.len())
            .filter_map(|index| frames.frame(index))
            .filter_map(|frame| frame.get(l2..).and_then(tcp_segment))
        {
            let len = tcp.payload().len() as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin());
            if len == 0 || tcp.rst() {
                continue;
            }
            let start = tcp.seq_number().0 as u32;
            let end = start.wrapping_add(len);
            match self.sent_end {
                Some(sent_end) if seq_after(sent_end, start) => {
                    // Sent again: a recovery begins (or goes on).
                    if self.recover.is_none() {
                        self.recover = Some(sent_end);
                        self.resent_end = end;
                    } else if seq_after(end, self.resent_end) {
                        self.resent_end = end;
                    }
                    resent_at_seq |= seq == Some(start);
                    self.timing = None;
                    self.progress_at = Some(now);
                    if seq_after(end, sent_end) {
                        self.sent_end = Some(end);
                    }
                }
                _ => {
                    self.sent_end = Some(end);
                    self.progress_at = Some(now);
                    // Not a SYN: the ACK that completes a handshake is not
                    // taken in, and the next may come much later.
                    if self.timing.is_none() && !tcp.syn() {
                        self.timing = Some((now, end));
                    }
                }
            }
        }
        resent_at_seq
    }

    /// Whether sent data waits for the peer's acknowledgement.
    fn outstanding(&self) -> bool {
        match (self.sent_end, self.acked) {
            (Some(end), Some(acked)) => seq_after(end, acked),
            (end, None) => end.is_some(),
            (None, Some(_)) => false,
        }
    }

    /// Takes the peer's acknowledgement in (the IP packet `packet`, read as
    /// `peer`); returns whether the segment at it is lost and smoltcp
    /// should be prompted to send it again now.
    fn acked(&mut self, peer: PeerAck, packet: &[u8], now: Instant) -> bool {
        let advanced = self.acked.is_none_or(|acked| seq_after(peer.ack, acked));
        let duplicate = self.acked == Some(peer.ack);
        if advanced {
            self.acked = Some(peer.ack);
            self.progress_at = Some(now);
            self.probed = false;
            if let Some((at, _)) = self.timing.filter(|(_, end)| !seq_after(*end, peer.ack)) {
                let sample = now - at;
                self.srtt = Some(self.srtt.map_or(sample, |srtt| (srtt * 7 + sample) / 8));
                self.timing = None;
            }
        }
        self.latest_ack = as_pure_ack(packet, self.latest_ack.take());
        let Some(sent_end) = self.sent_end.filter(|_| self.outstanding()) else {
            // Everything sent is acknowledged.
            self.recover = None;
            return false;
        };
        if let Some(recover) = self.recover {
            if !seq_after(recover, peer.ack) {
                self.recover = None;
            }
        }
        if !peer.pure {
            return false;
        }
        match self.recover {
            Some(_) => advanced && !seq_after(self.resent_end, peer.ack),
            None => duplicate && peer.sacked_to == Some(sent_end),
        }
    }

    /// When a probe is due, if one may be sent.
    fn probe_at(&self) -> Option<Instant> {
        if self.probed || self.latest_ack.is_none() || !self.outstanding() {
            return None;
        }
        Some(self.progress_at? + self.srtt? * 2 + PROBE_ACK_ALLOWANCE)
    }
}

/// The SYN of a connecting flow that is sent once, and again only as often
/// as the client it connects for retransmits its own SYN.
#[derive(Debug)]
struct SynMirror {
    /// The accepted flow of that client.
    client: FlowId,
    /// The first SYN this flow sent (the frame), repeated on request
    /// while the flow connects.
    first_syn: Option<Vec<u8>>,
}

/// Spare buffers for the handshake frames a flow keeps to repeat (its
/// SYN-ACK, its mirrored SYN): taken when a flow keeps one, given back
/// when it no longer needs it, so a steady stream of connections copies
/// those frames without allocating.
#[derive(Debug, Default)]
struct SpareFrames(Vec<Vec<u8>>);

impl SpareFrames {
    /// Spares kept at most (as many handshakes as may be under way at
    /// once without an allocation).
    const KEPT: usize = 1024;
    /// Room for a SYN or SYN-ACK: L2 header with two VLAN tags, IPv6, TCP
    /// with the largest option space.
    const FRAME_ROOM: usize = 22 + 40 + 60;

    /// A copy of `frame` in a spare buffer.
    fn copy_of(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut buf = self.0.pop().unwrap_or_else(|| Vec::with_capacity(Self::FRAME_ROOM));
        buf.clear();
        buf.extend_from_slice(frame);
        buf
    }

    /// Keeps `frame`'s buffer for the next copy.
    fn give_back(&mut self, frame: Option<Vec<u8>>) {
        if let Some(frame) = frame {
            if self.0.len() < Self::KEPT {
                self.0.push(frame);
            }
        }
    }
}

impl Flow {
    /// Starts or ends the wait for the peer; returns since when the peer
    /// has been silent while the flow waits for it.
    fn silent_since(&mut self, now: Instant) -> Option<Instant> {
        if !waiting_on_peer(self) {
            self.waiting_since = None;
            return None;
        }
        let since = *self.waiting_since.get_or_insert(now);
        Some(since.max(self.last_heard))
    }
}

impl Flow {
    /// Bytes the owner may read: those of the stream, up to the peer's FIN.
    fn readable(&self) -> usize {
        let queued = self.socket().recv_queue();
        self.before_fin.map_or(queued, |before| before.min(queued))
    }

    /// Records that `read` bytes were taken, and drops what the peer sent
    /// after its FIN once everything before it was read.
    fn consumed(&mut self, read: usize) {
        self.buffers.rx_dequeued += read as u64;
        if let Some(before) = self.before_fin.as_mut() {
            *before = before.saturating_sub(read);
        }
        if self.before_fin == Some(0) {
            let socket = self.socket.socket_mut();
            let mut junk = 0;
            loop {
                let dropped = socket.recv(|junk| (junk.len(), junk.len())).unwrap_or(0);
                if dropped == 0 {
                    break;
                }
                junk += dropped;
            }
            self.buffers.rx_dequeued += junk as u64;
        }
    }

    fn socket(&self) -> &tcp::Socket<'_> {
        self.socket.socket()
    }

    fn socket_mut(&mut self) -> &mut tcp::Socket<'_> {
        self.socket.socket_mut()
    }

    /// Bytes that entered the receive ring in order, ever.
    fn rx_in_order(&self) -> u64 {
        self.buffers.rx_dequeued + self.socket().recv_queue() as u64
    }

    /// Notes an arriving segment's extent: out-of-order bytes in the
    /// receive ring are invisible through smoltcp's API, so the stack
    /// remembers how far the peer's segments reached.
    fn saw_segment(&mut self, packet: &[u8]) {
        let Some((seq, syn, payload)) = segment_extent(packet) else {
            return;
        };
        if syn {
            self.buffers.peer_isn = Some(seq);
            return;
        }
        let Some(isn) = self.buffers.peer_isn else {
            return;
        };
        if payload == 0 {
            return;
        }
        // Stream offsets modulo 2^32, like sequence numbers.
        let end = seq.wrapping_sub(isn).wrapping_sub(1).wrapping_add(payload as u32);
        let in_order = self.rx_in_order() as u32;
        let ahead = end.wrapping_sub(in_order) as i32;
        let window = self.socket().recv_capacity();
        if ahead > 0 && ahead as usize <= window && end.wrapping_sub(self.buffers.rx_seen_end) as i32 > 0 {
            self.buffers.rx_seen_end = end;
        }
    }

    /// How far past the in-order bytes the peer's segments reached: bytes
    /// past a hole may wait in the receive ring up to there.
    fn out_of_order_reach(&self) -> u64 {
        let ahead = self.buffers.rx_seen_end.wrapping_sub(self.rx_in_order() as u32) as i32;
        u64::try_from(ahead).unwrap_or(0)
    }

    fn out_of_order_pending(&self) -> bool {
        self.out_of_order_reach() > 0
    }

    /// Bytes written to the receive ring since it was last discarded.
    fn rx_touched(&self) -> u64 {
        self.rx_in_order() - self.buffers.rx_mark + self.out_of_order_reach()
    }

    /// Bytes of buffer memory the flow may hold committed: the pages the
    /// bytes that passed through each ring since it was last discarded can
    /// have touched (each ring writes on from where it was, so they are
    /// contiguous), at most the whole ring.
    fn committed_estimate(&self) -> usize {
        let socket = self.socket();
        let touched = |bytes: u64, capacity: usize| {
            if bytes == 0 {
                return 0;
            }
            let pages = usize::try_from(bytes.div_ceil(PAGE as u64)).unwrap_or(usize::MAX);
            pages
                .saturating_add(1)
                .saturating_mul(PAGE)
                .min(capacity.div_ceil(PAGE) * PAGE)
        };
        touched(self.rx_touched(), socket.recv_capacity())
            + touched(self.buffers.tx_queued - self.buffers.tx_mark, socket.send_capacity())
    }

    /// Gives back the pages of each ring that is empty, if the peer has
    /// been quiet for `BUFFER_LINGER`; returns when to try again.
    fn release_buffers(&mut self, now: Instant) -> Option<Instant> {
        let quiet_at = self.last_heard + BUFFER_LINGER;
        if now >= quiet_at {
            self.recovery.latest_ack = None;
        }
        let ack_held = self.recovery.latest_ack.is_some();
        if self.buffers.committed == 0 {
            return ack_held.then_some(quiet_at.max(now));
        }
        if now >= quiet_at {
            if !self.out_of_order_pending() && self.socket.discard_rx() {
                self.buffers.rx_mark = self.rx_in_order();
            }
            if self.socket.discard_tx() {
                self.buffers.tx_mark = self.buffers.tx_queued;
            }
        }
        let rx_empty = self.socket().recv_queue() == 0 && !self.out_of_order_pending();
        let tx_empty = self.socket().send_queue() == 0;
        let rx_held = self.rx_touched() > 0;
        let tx_held = self.buffers.tx_queued > self.buffers.tx_mark;
        ((rx_held && rx_empty) || (tx_held && tx_empty) || ack_held).then_some(quiet_at.max(now))
    }
}

/// What a flow's rings have seen, for giving their pages back safely and
/// for counting them.
#[derive(Debug, Default, Clone, Copy)]
struct BufferUse {
    /// Bytes ever taken from the receive ring (read, relayed or dropped).
    rx_dequeued: u64,
    /// In-order receive bytes when the receive ring was last discarded.
    rx_mark: u64,
    /// Bytes ever queued into the transmit ring.
    tx_queued: u64,
    /// `tx_queued` when the transmit ring was last discarded.
    tx_mark: u64,
    /// The peer's initial sequence number, once its SYN came.
    peer_isn: Option<u32>,
    /// How far (stream offset, mod 2^32) the peer's segments reached.
    rx_seen_end: u32,
    /// The flow's share of `Stack::committed`.
    committed: usize,
}

/// The transparent TCP stack of one worker.
pub struct Stack {
    config: StackConfig,
    /// Where every socket's rings live.
    arena: Arena,
    /// Sum of the flows' `committed_estimate`s.
    committed: usize,
    interfaces: Vec<Interface>,
    flows: Slab<Flow>,
    index: HashMap<FlowKey, FlowId>,
    timers: TimerWheel<FlowId>,
    events: VecDeque<Event>,
    /// Where the frames to send are written.
    output: Box<dyn TxFrames>,
    /// Buffers for the SYN-ACKs and mirrored SYNs flows keep.
    spare_frames: SpareFrames,
    /// Flows an operation touched; polled by [`Stack::flush`].
    dirty: Vec<FlowId>,
    next_generation: u32,
    counters: StackCounters,
    due: Vec<FlowId>,
}

/// Flow `id` of `flows`, if it is still that flow (not freed, its slot
/// not reused).
fn live_flow(flows: &Slab<Flow>, id: FlowId) -> Option<&Flow> {
    flows
        .get(id.index as usize)
        .filter(|flow| flow.generation == id.generation)
}

fn ip_address(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => IpAddress::Ipv4(v4),
        IpAddr::V6(v6) => IpAddress::Ipv6(v6),
    }
}

thread_local! {
    /// The TCP timestamp of the flow being polled on this thread: smoltcp's
    /// timestamp generator is a plain `fn`, so the stack sets this value
    /// (derived from the `now` it was given) before each poll.
    static FLOW_TIMESTAMP: Cell<u32> = const { Cell::new(1) };
}

fn tcp_timestamp() -> u32 {
    FLOW_TIMESTAMP.with(Cell::get)
}

/// The TSval of a TCP SYN's timestamp option, if it has one.
fn syn_tsval(tcp: &[u8]) -> Option<u32> {
    let packet = TcpPacket::new_checked(tcp).ok()?;
    let mut options = packet.options();
    while !options.is_empty() {
        let (rest, option) = TcpOption::parse(options).ok()?;
        match option {
            TcpOption::TimeStamp { tsval, .. } => return Some(tsval),
            TcpOption::EndOfList => return None,
            _ => options = rest,
        }
    }
    None
}

/// The client SYN `frame` (classified as `class`): its 5-tuple and its IP
/// packet; `NotASyn` for anything else.
fn syn_packet<'f>(frame: &'f [u8], class: &'f FrameClass) -> Result<(&'f FlowTuple, &'f [u8]), StackError> {
    let (tuple, info) = class.tcp().ok_or(StackError::NotASyn)?;
    if !info.flags.syn || info.flags.ack || info.flags.rst {
        return Err(StackError::NotASyn);
    }
    let packet = class
        .ip_range()
        .and_then(|range| frame.get(range))
        .ok_or(StackError::NotASyn)?;
    Ok((tuple, packet))
}

/// The seed of port `port`'s generator of initial sequence numbers, from
/// the stack's `seed` (SplitMix64's finalizer, so that the ports' seeds
/// and the stacks' seeds of nearby values share no bits).
fn port_seed(seed: u64, port: usize) -> u64 {
    let mut z = seed.wrapping_add((port as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Stack {
    /// A stack for `ports` data ports. `seed` seeds smoltcp's generator of
    /// initial sequence numbers (one per port): the stack reads no clock
    /// and no entropy of its own, so the same seed and the same frames at
    /// the same `now`s give the same segments. Its driver passes real
    /// randomness (ISNs must not be guessable off the wire); tests a fixed
    /// seed.
    pub fn new(ports: usize, config: StackConfig, now: Instant, seed: u64) -> Stack {
        let interfaces = (0..ports)
            .map(|port| {
                let mut iface_config = Config::new(HardwareAddress::Ip);
                iface_config.random_seed = port_seed(seed, port);
                let mut output = OutFrames::default();
                let l2 = L2Header::new([0; 6], [0; 6], &[]);
                let mut device = FlowDevice {
                    rx: None,
                    l2: &l2,
                    port: 0,
                    tx: &mut output,
                };
                let mut iface = Interface::new(iface_config, &mut device, now);
                // Every destination is ours: the appliance answers as whoever
                // the intercepted flow was addressed to.
                iface.set_any_ip(true);
                iface
            })
            .collect();
        Stack {
            arena: Arena::new(
                config.rx_buffer.max(config.tx_buffer),
                config.max_flows.saturating_mul(2),
            ),
            committed: 0,
            config,
            interfaces,
            flows: Slab::new(),
            index: HashMap::new(),
            timers: TimerWheel::new(now),
            events: VecDeque::new(),
            output: Box::new(OutFrames::default()),
            spare_frames: SpareFrames::default(),
            dirty: Vec::new(),
            next_generation: 0,
            counters: StackCounters::default(),
            due: Vec::new(),
        }
    }

    pub fn counters(&self) -> StackCounters {
        self.counters
    }

    /// Approximate memory one flow costs: its socket (held in its
    /// one-entry socket set), bookkeeping and its share of the committed
    /// buffer pages (none for an idle flow).
    pub fn memory_per_flow(&self) -> usize {
        std::mem::size_of::<Flow>()
            + std::mem::size_of::<SocketStorage<'static>>()
            + 2 * std::mem::size_of::<(FlowKey, FlowId)>()
            + self.committed.checked_div(self.flows.len()).unwrap_or(0)
    }

    /// Bytes of socket buffers the live flows may hold committed: the
    /// pages the bytes since each ring's last release can have touched
    /// (zero for flows that went quiet). Capacity reserved but never
    /// written costs nothing and is not counted.
    pub fn buffer_bytes(&self) -> usize {
        self.committed
    }

    /// Bytes of the flow's rings actually backed by memory now (mincore(2):
    /// a system call, for tests and diagnostics).
    pub fn resident_buffer_bytes(&self, id: FlowId) -> Result<usize, StackError> {
        Ok(self.flow(id)?.socket.resident_bytes())
    }

    /// The flow that frames arriving on `port` with `tuple` belong to.
    pub fn lookup(&self, port: usize, tuple: &FlowTuple) -> Option<FlowId> {
        self.index.get(&FlowKey { port, tuple: *tuple }).copied()
    }

    fn flow(&self, id: FlowId) -> Result<&Flow, StackError> {
        live_flow(&self.flows, id).ok_or(StackError::NoSuchFlow)
    }

    fn flow_mut(&mut self, id: FlowId) -> Result<&mut Flow, StackError> {
        match self.flows.get_mut(id.index as usize) {
            Some(flow) if flow.generation == id.generation => Ok(flow),
            _ => Err(StackError::NoSuchFlow),
        }
    }

    /// A socket with its rings in the arena, if the table has room for one
    /// more flow; running out of either refuses the flow.
    fn new_socket(&mut self) -> Result<BackedSocket, StackError> {
        if self.flows.len() >= self.config.max_flows {
            self.counters.flows_refused += 1;
            return Err(StackError::TooManyFlows(self.config.max_flows));
        }
        let congestion_control = self.config.congestion_control;
        let backed = BackedSocket::new(&self.arena, self.config.rx_buffer, self.config.tx_buffer, |rx, tx| {
            let mut socket = tcp::Socket::new(rx, tx);
            // A relay forwards what it has at once, like TCP_NODELAY in a proxy.
            socket.set_nagle_enabled(false);
            // Timestamps (RFC 7323) let a server accept our SYN for a 4-tuple it
            // still holds in TIME-WAIT, as it does for a reconnecting client.
            socket.set_tsval_generator(Some(tcp_timestamp));
            socket.set_congestion_control(congestion_control);
            // smoltcp's own timeout also fires on idle connections: the stack
            // applies `StackConfig::timeout` itself (see `waiting_on_peer`).
            socket
        });
        backed.map_err(|error| {
            self.counters.flows_refused += 1;
            StackError::Buffers(error)
        })
    }

    fn insert(
        &mut self,
        key: FlowKey,
        l2: L2Header,
        socket: BackedSocket,
        owner: u64,
        now: Instant,
    ) -> Result<FlowId, StackError> {
        if key.port >= self.interfaces.len() {
            return Err(StackError::NoSuchPort(key.port));
        }
        let vacant = match self.index.entry(key) {
            Entry::Occupied(_) => return Err(StackError::FlowExists),
            Entry::Vacant(vacant) => vacant,
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let observed = Observed {
            state: socket.socket().state(),
            recv_queue: 0,
            send_queue: 0,
            peer_closed: false,
        };
        let slot = self.flows.vacant_entry();
        let id = FlowId {
            index: u32::try_from(slot.key()).map_err(|_| StackError::TooManyFlows(self.config.max_flows))?,
            generation,
        };
        slot.insert(Flow {
            key,
            generation,
            owner,
            l2,
            socket,
            buffers: BufferUse::default(),
            observed,
            timer: None,
            aborted: false,
            last_heard: now,
            held: false,
            waiting_since: None,
            timeout: self.config.timeout,
            unanswered_rounds: 0,
            max_rounds: self.config.max_retransmissions,
            timestamp_origin: None,
            before_fin: None,
            syn_mirror: None,
            syn_follower: None,
            synack: None,
            recovery: Recovery::default(),
        });
        vacant.insert(id);
        self.counters.flows_created += 1;
        self.counters.flows_live += 1;
        Ok(id)
    }

    /// Transparent accept: opens a flow for the TCP SYN `frame` (classified
    /// as `class`) that arrived on `port`, with a socket listening on exactly
    /// the SYN's destination address and port, and delivers the SYN to it.
    /// The appliance will answer with the destination's MAC address. With
    /// `hold_synack` the SYN-ACK waits for [`Stack::release_synack`].
    pub fn accept(
        &mut self,
        port: usize,
        frame: &[u8],
        class: &FrameClass,
        hold_synack: bool,
        owner: u64,
        now: Instant,
    ) -> Result<FlowId, StackError> {
        let (tuple, packet) = syn_packet(frame, class)?;
        let mut socket = self.new_socket()?;
        socket
            .socket_mut()
            .listen(IpListenEndpoint {
                addr: Some(ip_address(tuple.dst_ip)),
                port: tuple.dst_port,
            })
            .map_err(|_| StackError::Socket("listen"))?;
        socket.socket_mut().pause_synack(hold_synack);
        let key = FlowKey { port, tuple: *tuple };
        let id = self.insert(key, L2Header::reply_to(&class.l2), socket, owner, now)?;
        // While held, the server leg's outcome decides this leg's fate: it
        // must not time out (and reset the client) on its own.
        let tsval = class.l4_range().and_then(|range| frame.get(range)).and_then(syn_tsval);
        if let Ok(flow) = self.flow_mut(id) {
            flow.held = hold_synack;
            flow.timestamp_origin = tsval.map(|tsval| (tsval, now));
        }
        self.poll_flow(id, Poll::Packet(packet), now);
        // A SYN the socket did not take (bad checksum, say) opens nothing.
        if self.flow(id).map(|flow| flow.socket().state()) == Ok(tcp::State::Listen) {
            self.discard(id);
            return Err(StackError::NotASyn);
        }
        Ok(id)
    }

    /// Refuses the TCP SYN `frame` (classified as `class`) that arrived on
    /// `port` without opening a flow: a RST (with the ACK of the SYN) goes
    /// back as the addressed host's closed port would send it, so it works
    /// whatever the flow table holds.
    pub fn refuse(&mut self, port: usize, frame: &[u8], class: &FrameClass, now: Instant) -> Result<(), StackError> {
        let (_, packet) = syn_packet(frame, class)?;
        let iface = self.interfaces.get_mut(port).ok_or(StackError::NoSuchPort(port))?;
        let l2 = L2Header::reply_to(&class.l2);
        // No socket: smoltcp answers the SYN as a closed port does.
        let mut no_sockets = SocketSet::new(Vec::new());
        let before = self.output.len();
        let mut device = FlowDevice {
            rx: Some(packet),
            l2: &l2,
            port,
            tx: &mut *self.output,
        };
        iface.poll(now, &mut device, &mut no_sockets);
        // Nothing goes back for a SYN smoltcp discards (a bad checksum).
        if self.output.len() == before {
            return Err(StackError::NotASyn);
        }
        Ok(())
    }

    /// Makes the connecting flow `server` send its SYN once, and again only
    /// when the client of the accepted flow `client` retransmits its own
    /// SYN (a copy of the first, at once), until that client has completed
    /// its handshake; smoltcp's own SYN retransmissions are withheld
    /// meanwhile. So a client that sends one SYN (a spoofed source) costs
    /// the server one SYN, and a real client's retries reach the server as
    /// they would without the appliance.
    pub fn mirror_syn(&mut self, client: FlowId, server: FlowId) -> Result<(), StackError> {
        self.flow(client)?;
        self.flow_mut(server)?.syn_mirror = Some(SynMirror {
            client,
            first_syn: None,
        });
        self.flow_mut(client)?.syn_follower = Some(server);
        Ok(())
    }

    /// Sends the first SYN of `server` again, if it still waits for the
    /// server's answer (a client retransmitted its SYN).
    fn repeat_syn(&mut self, server: FlowId) {
        let Stack { flows, output, .. } = self;
        let Some(flow) = live_flow(flows, server) else {
            return;
        };
        if flow.socket().state() != tcp::State::SynSent {
            return;
        }
        if let Some(frame) = flow.syn_mirror.as_ref().and_then(|mirror| mirror.first_syn.as_deref()) {
            output.push_copy(flow.key.port, frame);
        }
    }

    /// Sends the SYN-ACK of the accepted flow `id` again, if it still waits
    /// for the ACK (its peer retransmitted the SYN).
    fn repeat_synack(&mut self, id: FlowId) {
        let Stack {
            flows,
            output,
            counters,
            ..
        } = self;
        let Some(flow) = live_flow(flows, id) else {
            return;
        };
        if flow.socket().state() != tcp::State::SynReceived {
            return;
        }
        if let Some(frame) = flow.synack.as_deref() {
            counters.synacks_repeated += 1;
            output.push_copy(flow.key.port, frame);
        }
    }

    /// Transparent connect: opens a flow on `port` towards `tuple.dst` from
    /// `tuple.src` (the client's own address and port), framed with `l2`.
    pub fn connect(
        &mut self,
        port: usize,
        tuple: &FlowTuple,
        l2: L2Header,
        owner: u64,
        now: Instant,
    ) -> Result<FlowId, StackError> {
        if port >= self.interfaces.len() {
            return Err(StackError::NoSuchPort(port));
        }
        let mut socket = self.new_socket()?;
        let iface = self.interfaces.get_mut(port).ok_or(StackError::NoSuchPort(port))?;
        socket
            .socket_mut()
            .connect(
                iface.context(),
                IpEndpoint::new(ip_address(tuple.dst_ip), tuple.dst_port),
                IpEndpoint::new(ip_address(tuple.src_ip), tuple.src_port),
            )
            .map_err(|_| StackError::Socket("connect"))?;
        // Frames of this flow arrive from the server: the reversed tuple.
        let key = FlowKey {
            port,
            tuple: tuple.reversed(),
        };
        let id = self.insert(key, l2, socket, owner, now)?;
        // The SYN goes out at the next `flush`, after the caller could
        // still adjust the flow (`mirror_timestamps`).
        self.dirty.push(id);
        Ok(id)
    }

    /// Delivers a frame that [`Stack::lookup`] matched to `flow`.
    pub fn ingress(&mut self, flow: FlowId, frame: &[u8], class: &FrameClass, now: Instant) -> Result<(), StackError> {
        self.flow(flow)?;
        let packet = class
            .ip_range()
            .and_then(|range| frame.get(range))
            .ok_or(StackError::NotASyn)?;
        self.counters.frames_in += 1;
        self.poll_flow(flow, Poll::Packet(packet), now);
        // A client retransmitting its SYN: the server leg retries too.
        let retried_syn = class
            .tcp()
            .is_some_and(|(_, info)| info.flags.syn && !info.flags.ack && !info.flags.rst);
        if retried_syn {
            let follower = self.flow(flow).ok().and_then(|flow| flow.syn_follower);
            if let Some(server) = follower {
                self.repeat_syn(server);
            }
            self.repeat_synack(flow);
        }
        Ok(())
    }

    /// Polls the flows whose timers are due.
    pub fn poll_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(now, &mut due);
        for id in due.drain(..) {
            let is_due = self.flow(id).is_ok_and(|flow| flow.timer.is_some_and(|at| at <= now));
            if is_due {
                if let Ok(flow) = self.flow_mut(id) {
                    flow.timer = None;
                }
                self.poll_flow(id, Poll::Timer, now);
            }
        }
        self.due = due;
    }

    /// Polls every flow an operation (send, recv, close, ...) touched.
    pub fn flush(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            self.poll_flow(id, Poll::Owner, now);
        }
        self.dirty = dirty;
    }

    /// Takes the next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves the frames to send into `out` (appending), with the default
    /// sink ([`OutFrames`]); with another one, see [`Stack::take_tx_frames`].
    pub fn drain_output(&mut self, out: &mut Vec<OutFrame>) {
        if let Some(frames) = self.take_tx_frames::<OutFrames>() {
            out.append(&mut frames.0);
        }
    }

    /// Makes `frames` the sink the frames to send are written into, from
    /// now on (in place of [`OutFrames`]); frames still queued in the
    /// previous one are dropped.
    pub fn set_tx_frames(&mut self, frames: Box<dyn TxFrames>) {
        self.output = frames;
    }

    /// The sink, as the type `T` it was set with, for its owner to take
    /// (and send) every frame queued: they count as sent. `None` if the
    /// sink is not a `T`.
    pub fn take_tx_frames<T: TxFrames>(&mut self) -> Option<&mut T> {
        let queued = self.output.len() as u64;
        let frames = self.output.as_any_mut().downcast_mut::<T>()?;
        self.counters.frames_out += queued;
        Some(frames)
    }

    /// Polls one flow with at most one incoming packet, then derives its
    /// events and reschedules its timer; frees it once smoltcp is done.
    fn poll_flow(&mut self, id: FlowId, poll: Poll<'_>, now: Instant) {
        let packet = match poll {
            Poll::Packet(packet) => Some(packet),
            Poll::Timer | Poll::Owner => None,
        };
        // A mirrored SYN may be retransmitted once its client has confirmed.
        let syn_client_confirmed = self
            .flow(id)
            .ok()
            .and_then(|flow| flow.syn_mirror.as_ref())
            .map(|mirror| {
                self.flow(mirror.client)
                    .is_ok_and(|client| was_synchronized(client.socket().state()))
            });
        let Stack {
            interfaces,
            flows,
            output,
            spare_frames,
            events,
            timers,
            counters,
            committed,
            ..
        } = self;
        let Some(flow) = flows
            .get_mut(id.index as usize)
            .filter(|flow| flow.generation == id.generation)
        else {
            return;
        };
        let Some(iface) = interfaces.get_mut(flow.key.port) else {
            return;
        };
        counters.flow_polls += 1;
        // Timestamps wrap modulo 2^32 (RFC 7323); truncation is the intent.
        let timestamp = match flow.timestamp_origin {
            Some((tsval, at)) => tsval.wrapping_add((now - at).total_millis() as u32),
            None => now.total_millis() as u32,
        };
        FLOW_TIMESTAMP.with(|current| current.set(timestamp.max(1)));
        let reset_in = packet.is_some_and(is_rst);
        if let Some(packet) = packet {
            flow.last_heard = now;
            flow.saw_segment(packet);
            flow.unanswered_rounds = 0;
        }
        let max_rounds = flow.max_rounds;
        // Silent too long with something outstanding, and once open, every
        // retransmission round unanswered when the next one is due: give up
        // (one RST).
        let opening = is_opening(flow.socket().state());
        let timed_out = flow.silent_since(now).is_some_and(|since| now >= since + flow.timeout)
            && (opening || matches!(poll, Poll::Timer) && flow.unanswered_rounds >= max_rounds);
        if timed_out {
            if opening {
                counters.connect_timeouts += 1;
            } else {
                counters.dead_peers += 1;
            }
            flow.socket_mut().abort();
        }
        let (output_before, state_before) = (output.len(), flow.socket().state());
        // An acknowledgement that shows a segment lost which smoltcp would
        // leave to its timer (see `Recovery`).
        let lost_at = packet
            .filter(|_| was_synchronized(state_before))
            .and_then(|packet| Some((PeerAck::of(packet)?, packet)))
            .filter(|(peer, packet)| flow.recovery.acked(*peer, packet, now))
            .map(|(peer, _)| peer.ack);
        let mut device = FlowDevice {
            rx: packet,
            l2: &flow.l2,
            port: flow.key.port,
            tx: &mut **output,
        };
        flow.socket.poll(iface, now, &mut device);
        let resent = flow
            .recovery
            .sent(&**output, output_before, flow.l2.len(), lost_at, now);
        if let (Some(seq), false) = (lost_at, resent) {
            if prompt_retransmit(flow, iface, &mut **output, seq, now) {
                counters.fast_retransmits_prompted += 1;
            }
        }
        let still_connecting = flow.socket().state() == tcp::State::SynSent;
        // A due timer that made an open flow send data, a SYN or a FIN
        // again: its retransmission timer (or window probe) fired.
        let retransmitted = matches!(poll, Poll::Timer)
            && !opening
            && (output_before..output.len())
                .filter_map(|index| output.frame(index))
                .any(|frame| frame.get(flow.l2.len()..).is_some_and(occupies_sequence));
        if retransmitted && !timed_out {
            flow.unanswered_rounds = flow.unanswered_rounds.saturating_add(1);
        }
        // A probe (see `Recovery`): not a retransmission round of its own.
        let probe_due = flow.recovery.probe_at().is_some_and(|at| at <= now);
        if let (Poll::Timer, true, Some(seq)) = (poll, probe_due, flow.recovery.acked) {
            if prompt_retransmit(flow, iface, &mut **output, seq, now) {
                counters.fast_retransmits_prompted += 1;
            }
            flow.recovery.probed = true;
        }
        if flow.socket().state() != tcp::State::SynReceived {
            spare_frames.give_back(flow.synack.take());
        } else if flow.synack.is_none() {
            let l2 = flow.l2.len();
            flow.synack = (output_before..output.len())
                .filter_map(|index| output.frame(index))
                .find(|frame| {
                    frame
                        .get(l2..)
                        .and_then(tcp_segment)
                        .is_some_and(|tcp| tcp.syn() && tcp.ack())
                })
                .map(|frame| spare_frames.copy_of(frame));
        }
        if let (Some(mirror), Some(confirmed)) = (flow.syn_mirror.as_mut(), syn_client_confirmed) {
            // Still connecting and something went out: it was a SYN.
            let sent_syn = state_before == tcp::State::SynSent && still_connecting && output.len() > output_before;
            if !still_connecting {
                // Only a connecting flow repeats its SYN.
                spare_frames.give_back(mirror.first_syn.take());
            } else if sent_syn && mirror.first_syn.is_none() {
                mirror.first_syn = output.frame(output_before).map(|frame| spare_frames.copy_of(frame));
            } else if sent_syn && !confirmed {
                counters.syn_retransmits_withheld += (output.len() - output_before) as u64;
                output.truncate(output_before);
            }
        }
        // A transparent accept serves one connection: smoltcp puts a
        // half-open socket the peer reset back in LISTEN, but nobody else
        // will come to it, so it ends here (as reset).
        if flow.socket().state() == tcp::State::Listen && flow.observed.state != tcp::State::Listen {
            flow.socket_mut().abort();
        }
        let peer_closed = flow.observed.peer_closed || fin_received(flow.socket().state());
        if peer_closed && flow.before_fin.is_none() {
            // Whatever is queued when the FIN is seen came before it.
            flow.before_fin = Some(flow.socket().recv_queue());
        }
        flow.consumed(0);

        let socket = flow.socket();
        let now_observed = Observed {
            state: socket.state(),
            recv_queue: flow.readable(),
            send_queue: socket.send_queue(),
            // Sticky: a socket that went on to CLOSED still had a FIN.
            peer_closed,
        };
        let before = flow.observed;
        flow.observed = now_observed;
        let mut emit = |kind| {
            events.push_back(Event {
                flow: id,
                owner: flow.owner,
                kind,
            })
        };
        let established = |state| matches!(state, tcp::State::Established | tcp::State::CloseWait);
        if established(now_observed.state) && !established(before.state) && !was_synchronized(before.state) {
            emit(EventKind::Connected);
        }
        if now_observed.recv_queue > before.recv_queue {
            emit(EventKind::Readable);
        }
        if now_observed.send_queue < before.send_queue {
            emit(EventKind::Writable);
        }
        if now_observed.peer_closed && !before.peer_closed {
            emit(EventKind::PeerClosed);
        }
        let closed = now_observed.state == tcp::State::Closed;
        if closed
            && before.state != tcp::State::Closed
            && !flow.aborted
            && (timed_out || ended_abnormally(before.state))
        {
            emit(if reset_in {
                EventKind::Reset
            } else {
                EventKind::TimedOut
            });
        }

        // A connection that closed with bytes still unread stays until its
        // owner has read them (or aborts it).
        if closed && (flow.aborted || now_observed.recv_queue == 0) {
            self.free(id);
            return;
        }
        account(flow, committed);
        let release_at = flow.release_buffers(now);
        account(flow, committed);
        let mut deadline = flow.socket.poll_at(iface, now);
        for at in [release_at, flow.recovery.probe_at()].into_iter().flatten() {
            deadline = Some(deadline.map_or(at, |due| due.min(at)));
        }
        // An opening flow gives up after the silence; an open one when its
        // next retransmission is due with every round spent (and not
        // before the silence).
        if let Some(since) = flow.silent_since(now) {
            let give_up = since + flow.timeout;
            if is_opening(flow.socket().state()) {
                deadline = Some(deadline.map_or(give_up, |at| at.min(give_up)));
            } else if flow.unanswered_rounds >= max_rounds {
                deadline = Some(deadline.map_or(give_up, |at| at.max(give_up)));
            }
        }
        if deadline != flow.timer {
            flow.timer = deadline;
            if let Some(at) = deadline {
                timers.schedule(id, at);
            }
        }
    }

    fn free(&mut self, id: FlowId) {
        if self.flow(id).is_err() {
            return;
        }
        let mut flow = self.flows.remove(id.index as usize);
        self.spare_frames.give_back(flow.synack.take());
        self.spare_frames
            .give_back(flow.syn_mirror.as_mut().and_then(|mirror| mirror.first_syn.take()));
        self.committed -= flow.buffers.committed;
        self.index.remove(&flow.key);
        self.counters.flows_live -= 1;
        self.counters.flows_freed += 1;
        self.events.push_back(Event {
            flow: id,
            owner: flow.owner,
            kind: EventKind::Closed,
        });
    }

    /// Removes a flow at once without sending anything (no RST, no FIN):
    /// the peer sees silence. Emits `Closed`.
    pub fn discard(&mut self, id: FlowId) {
        self.free(id);
    }

    /// Makes `to` send timestamps that continue the client clock seen by
    /// `from` (the accepted client leg), as the client itself would.
    pub fn mirror_timestamps(&mut self, from: FlowId, to: FlowId) -> Result<(), StackError> {
        let origin = self.flow(from)?.timestamp_origin;
        self.flow_mut(to)?.timestamp_origin = origin;
        Ok(())
    }

    /// Changes how long the flow's peer may stay silent while the flow
    /// waits for it (a SYN, data or a FIN outstanding); from the next poll.
    pub fn set_timeout(&mut self, id: FlowId, timeout: Duration) -> Result<(), StackError> {
        self.flow_mut(id)?.timeout = timeout;
        self.dirty.push(id);
        Ok(())
    }

    /// Changes how many unanswered retransmission rounds make the open
    /// flow's peer dead (see `StackConfig::max_retransmissions`).
    pub fn set_max_retransmissions(&mut self, id: FlowId, rounds: u32) -> Result<(), StackError> {
        self.flow_mut(id)?.max_rounds = rounds;
        self.dirty.push(id);
        Ok(())
    }

    /// The tag set by the flow's owner.
    pub fn owner(&self, id: FlowId) -> Result<u64, StackError> {
        Ok(self.flow(id)?.owner)
    }

    pub fn state(&self, id: FlowId) -> Result<tcp::State, StackError> {
        Ok(self.flow(id)?.socket().state())
    }

    /// Lets a flow opened with `hold_synack` answer its SYN.
    pub fn release_synack(&mut self, id: FlowId) -> Result<(), StackError> {
        let flow = self.flow_mut(id)?;
        flow.held = false;
        flow.socket_mut().pause_synack(false);
        self.dirty.push(id);
        Ok(())
    }

    /// Reads up to `buf.len()` bytes.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, StackError> {
        let flow = self.flow_mut(id)?;
        let limit = flow.readable().min(buf.len());
        let read = flow
            .socket_mut()
            .recv_slice(buf.get_mut(..limit).unwrap_or_default())
            .unwrap_or(0);
        flow.consumed(read);
        if read > 0 {
            self.observe_queues(id);
            self.dirty.push(id);
        }
        Ok(read)
    }

    /// Lends `read` the received bytes where they lie, without copying
    /// them out: one contiguous piece of the receive ring (the ring may
    /// wrap), at most `max` bytes. `read` may change them in place and
    /// returns how many it consumed (at most the piece); the rest stays
    /// received. Its flag says the rest may not grow by `grow` bytes: the
    /// piece is not cut by `max` and either the ring wraps after it, or
    /// fewer than `grow` bytes fit in the ring, or the peer finished;
    /// bytes left then might wait forever. Returns how many bytes were
    /// consumed.
    pub fn recv_in_place(
        &mut self,
        id: FlowId,
        max: usize,
        grow: usize,
        read: impl FnOnce(&mut [u8], bool) -> usize,
    ) -> Result<usize, StackError> {
        let flow = self.flow_mut(id)?;
        let readable = flow.readable();
        if readable == 0 || max == 0 {
            return Ok(0);
        }
        let finished = flow.observed.peer_closed || fin_received(flow.socket().state());
        let socket = flow.socket_mut();
        let full = socket.recv_capacity().saturating_sub(socket.recv_queue()) < grow;
        let taken = socket
            .recv(|data| {
                let contiguous = data.len().min(readable);
                let piece = contiguous.min(max);
                let cut = piece < contiguous;
                let stuck = !cut && (contiguous < readable || full || finished);
                let data = data.get_mut(..piece).unwrap_or_default();
                let taken = read(data, stuck).min(piece);
                (taken, taken)
            })
            .unwrap_or(0);
        flow.consumed(taken);
        if taken > 0 {
            self.observe_queues(id);
            self.dirty.push(id);
        }
        Ok(taken)
    }

    /// Queues up to `data.len()` bytes for sending; returns how many fit.
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> Result<usize, StackError> {
        let flow = self.flow_mut(id)?;
        let sent = flow.socket_mut().send_slice(data).unwrap_or(0);
        flow.buffers.tx_queued += sent as u64;
        if sent > 0 {
            self.observe_queues(id);
            self.dirty.push(id);
        }
        Ok(sent)
    }

    /// Lends `write` the free room of the send ring where it lies, without
    /// a copy in between: one contiguous piece (the ring may wrap; an empty
    /// ring starts again at its beginning), right behind what is queued.
    /// `write` fills a prefix of it and returns how long; only those bytes
    /// are queued, in order after what was queued before (the rest of the
    /// piece holds stale bytes and is never sent). Returns how many bytes
    /// were queued; nothing while the flow may not send.
    pub fn send_in_place(&mut self, id: FlowId, write: impl FnOnce(&mut [u8]) -> usize) -> Result<usize, StackError> {
        let flow = self.flow_mut(id)?;
        let sent = flow
            .socket_mut()
            .send(|room| {
                let written = write(room).min(room.len());
                (written, written)
            })
            .unwrap_or(0);
        flow.buffers.tx_queued += sent as u64;
        if sent > 0 {
            self.observe_queues(id);
            self.dirty.push(id);
        }
        Ok(sent)
    }

    /// Bytes waiting to be read.
    pub fn recv_queue(&self, id: FlowId) -> Result<usize, StackError> {
        Ok(self.flow(id)?.readable())
    }

    /// Whether the peer has sent FIN and every byte before it was read
    /// (also once the connection went on to close completely).
    pub fn peer_finished(&self, id: FlowId) -> Result<bool, StackError> {
        let flow = self.flow(id)?;
        let socket = flow.socket();
        let fin = flow.observed.peer_closed || fin_received(socket.state());
        Ok(fin && flow.readable() == 0)
    }

    /// Bytes queued for sending and not yet acknowledged by the peer.
    pub fn send_queue(&self, id: FlowId) -> Result<usize, StackError> {
        Ok(self.flow(id)?.socket().send_queue())
    }

    /// Moves as many bytes as fit from `from`'s receive buffer into `to`'s
    /// transmit buffer, without an intermediate copy; returns how many.
    pub fn relay(&mut self, from: FlowId, to: FlowId) -> Result<usize, StackError> {
        self.relay_tapped(from, to, usize::MAX, |_| {})
    }

    /// Like [`Stack::relay`], moving at most `max` bytes and showing each
    /// piece moved to `tap` (in order).
    pub fn relay_tapped(
        &mut self,
        from: FlowId,
        to: FlowId,
        max: usize,
        mut tap: impl FnMut(&[u8]),
    ) -> Result<usize, StackError> {
        self.flow(from)?;
        self.flow(to)?;
        let (source, sink) = self
            .flows
            .get2_mut(from.index as usize, to.index as usize)
            .ok_or(StackError::NoSuchFlow)?;
        let readable = source.readable();
        let (source_flow, sink_flow) = (source, sink);
        let (source, sink) = (source_flow.socket_mut(), sink_flow.socket_mut());
        let mut moved = 0;
        // The receive ring may wrap: at most two contiguous pieces.
        for _ in 0..2 {
            if !sink.may_send() {
                break;
            }
            let left = max.min(readable).saturating_sub(moved);
            let step = source
                .recv(|data| {
                    let data = data.get(..left).unwrap_or(data);
                    let taken = sink.send_slice(data).unwrap_or(0);
                    tap(data.get(..taken).unwrap_or_default());
                    (taken, taken)
                })
                .unwrap_or(0);
            moved += step;
            if step == 0 {
                break;
            }
        }
        source_flow.consumed(moved);
        sink_flow.buffers.tx_queued += moved as u64;
        if moved > 0 {
            self.observe_queues(from);
            self.observe_queues(to);
            self.dirty.push(from);
            self.dirty.push(to);
        }
        Ok(moved)
    }

    /// Sends FIN after the queued bytes (half-close).
    pub fn close(&mut self, id: FlowId) -> Result<(), StackError> {
        self.flow_mut(id)?.socket_mut().close();
        self.dirty.push(id);
        Ok(())
    }

    /// Resets the connection: one RST goes to the peer, then the flow is freed.
    pub fn abort(&mut self, id: FlowId) -> Result<(), StackError> {
        let flow = self.flow_mut(id)?;
        flow.aborted = true;
        flow.socket_mut().abort();
        self.dirty.push(id);
        Ok(())
    }

    /// Records queue levels after the owner read or wrote, so the next poll
    /// reports only what the peer changed.
    fn observe_queues(&mut self, id: FlowId) {
        let Stack { flows, committed, .. } = self;
        if let Some(flow) = flows
            .get_mut(id.index as usize)
            .filter(|flow| flow.generation == id.generation)
        {
            let (recv_queue, send_queue) = (flow.readable(), flow.socket().send_queue());
            flow.observed.recv_queue = recv_queue;
            flow.observed.send_queue = send_queue;
            account(flow, committed);
        }
    }

    /// Flows alive now.
    pub fn live_flows(&self) -> usize {
        self.flows.len()
    }

    /// Every live flow's key and TCP state, for diagnostics (walks them all).
    pub fn flow_states(&self) -> impl Iterator<Item = (FlowKey, tcp::State)> + '_ {
        self.flows.iter().map(|(_, flow)| (flow.key, flow.socket().state()))
    }

    /// Timer-wheel entries (stale ones included), for diagnostics.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}

/// Delivers the peer's latest acknowledgement (see `Recovery`) to the
/// flow's socket again, up to three times, until smoltcp fast-retransmits
/// the segment at `seq`; returns whether it did.
fn prompt_retransmit(
    flow: &mut Flow,
    iface: &mut Interface,
    output: &mut dyn TxFrames,
    seq: u32,
    now: Instant,
) -> bool {
    // Only with data unacknowledged: smoltcp's fast retransmit sends data
    // only, and cancels its retransmission timer whatever it sent, so a
    // FIN alone outstanding would never be sent again.
    if flow.socket().send_queue() == 0 {
        return false;
    }
    let Some(ack) = flow.recovery.latest_ack.take() else {
        return false;
    };
    let mut resent = false;
    for _ in 0..3 {
        let before = output.len();
        let mut device = FlowDevice {
            rx: Some(&ack),
            l2: &flow.l2,
            port: flow.key.port,
            tx: &mut *output,
        };
        flow.socket.poll(iface, now, &mut device);
        if flow.recovery.sent(output, before, flow.l2.len(), Some(seq), now) {
            resent = true;
            break;
        }
    }
    flow.recovery.latest_ack = Some(ack);
    resent
}

/// Brings the flow's share of the stack's committed buffer bytes up to date.
fn account(flow: &mut Flow, committed: &mut usize) {
    let now_committed = flow.committed_estimate();
    *committed = *committed - flow.buffers.committed + now_committed;
    flow.buffers.committed = now_committed;
}

/// A TCP segment's sequence number, SYN flag and payload length, from its
/// IP packet (trimmed to its stated length).
fn segment_extent(packet: &[u8]) -> Option<(u32, bool, usize)> {
    let offset = match packet.first().map(|byte| byte >> 4) {
        Some(4) => usize::from(packet.first()? & 0x0f) * 4,
        Some(6) => 40,
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(packet.get(offset..)?).ok()?;
    Some((tcp.seq_number().0 as u32, tcp.syn(), tcp.payload().len()))
}

/// Whether the flow waits for its peer to acknowledge something: a SYN, a
/// SYN-ACK (once released), data or a FIN. Only then does silence count.
fn waiting_on_peer(flow: &Flow) -> bool {
    let socket = flow.socket();
    match socket.state() {
        tcp::State::SynSent | tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck => true,
        tcp::State::SynReceived => !flow.held,
        tcp::State::Established | tcp::State::CloseWait => socket.send_queue() > 0,
        tcp::State::Closed | tcp::State::Listen | tcp::State::FinWait2 | tcp::State::TimeWait => false,
    }
}

/// What a flow is polled for.
#[derive(Debug, Clone, Copy)]
enum Poll<'a> {
    /// A packet from its peer arrived.
    Packet(&'a [u8]),
    /// Its timer is due (a retransmission, a delayed ACK, a deadline).
    Timer,
    /// Its owner read, wrote, closed or changed it.
    Owner,
}

/// Whether a flow is still opening: its SYN or SYN-ACK is unanswered.
fn is_opening(state: tcp::State) -> bool {
    matches!(state, tcp::State::SynSent | tcp::State::SynReceived)
}

/// Whether the IP packet carries a TCP segment that takes sequence space
/// (data, a SYN or a FIN), unlike a bare ACK.
fn occupies_sequence(packet: &[u8]) -> bool {
    tcp_segment(packet).is_some_and(|tcp| tcp.syn() || tcp.fin() || !tcp.payload().is_empty())
}

/// Whether a state is past the handshake (a FIN may have been exchanged).
fn was_synchronized(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

/// Whether the peer's FIN has arrived (it moved the socket to one of these).
fn fin_received(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

/// Whether going to CLOSED from `state` means a reset or a timeout rather
/// than the end of an orderly close.
fn ended_abnormally(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::LastAck | tcp::State::TimeWait | tcp::State::Closing | tcp::State::Listen
    )
}

fn is_rst(packet: &[u8]) -> bool {
    tcp_segment(packet).is_some_and(|tcp| tcp.rst())
}

/// The TCP segment of an IP packet (IPv4 up to its total length; IPv6
/// without extension headers, as the stack sends them).
fn tcp_segment(packet: &[u8]) -> Option<TcpPacket<&[u8]>> {
    let first = packet.first()?;
    let (offset, end) = match first >> 4 {
        4 => {
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            (usize::from(first & 0x0f) * 4, total.min(packet.len()))
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
            (40, (40 + payload).min(packet.len()))
        }
        _ => return None,
    };
    TcpPacket::new_checked(packet.get(offset..end)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr};

    /// An IPv4 TCP segment from 198.18.0.1:40000 to 198.18.0.2:443.
    fn segment(control: TcpControl, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(198, 18, 0, 1), Ipv4Address::new(198, 18, 0, 2));
        let tcp = TcpRepr {
            src_port: 40_000,
            dst_port: 443,
            control,
            seq_number: TcpSeqNumber(1_000),
            ack_number: Some(TcpSeqNumber(5_000)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [Some((6_000, 7_000)), None, None],
            timestamp: Some(TcpTimestampRepr::new(77, 88)),
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut packet = vec![0; ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut packet[..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut packet[ip.buffer_len()..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        packet
    }

    #[test]
    fn a_data_segment_becomes_the_pure_ack_its_sender_sends_next() {
        let pure = as_pure_ack(&segment(TcpControl::Fin, b"hello"), None).unwrap();
        let ip = Ipv4Packet::new_checked(&pure[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.total_len()), pure.len());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr())));
        // After the five bytes and the FIN; the ACK, window and options kept.
        assert_eq!(tcp.seq_number(), TcpSeqNumber(1_006));
        assert!(tcp.payload().is_empty() && !tcp.fin() && !tcp.psh() && tcp.ack());
        assert_eq!((tcp.ack_number(), tcp.window_len()), (TcpSeqNumber(5_000), 512));
        let peer = PeerAck::of(&pure).unwrap();
        assert!(peer.pure);
        assert_eq!((peer.ack, peer.sacked_to), (5_000, Some(7_000)));
    }

    #[test]
    fn a_pure_ack_stays_as_it_was() {
        let ack = segment(TcpControl::None, b"");
        assert_eq!(as_pure_ack(&ack, None).unwrap(), ack);
    }

    #[test]
    fn the_previous_ack_buffer_is_reused_whatever_it_held() {
        let previous = vec![0xee; 200];
        let address = previous.as_ptr();
        let pure = as_pure_ack(&segment(TcpControl::None, b""), Some(previous)).unwrap();
        assert_eq!(pure, segment(TcpControl::None, b""));
        assert_eq!(pure.as_ptr(), address, "no new allocation");
    }
}
