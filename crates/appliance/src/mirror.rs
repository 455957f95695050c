//! Where each worker sends the synthetic TCP frames of intercepted
//! connections' plaintext ([`crate::capture::CaptureStream`] builds them
//! once): the decrypted capture file (queued for the writer thread, see
//! [`crate::writer`]), PCAP-over-IP ([`crate::pcap_stream`], its own
//! thread) and the decrypt-mirror port (`[ports.mirror]`, transmitted by
//! the worker itself).
//!
//! **The decrypt-mirror port** transmits a copy of every frame, for
//! sensors that only listen (an IDS in passive mode, a recorder). Each
//! worker has its own transmit queue on it. The frames wait in the
//! worker's [`MirrorQueue`] (at most [`MIRROR_QUEUE_FRAMES`]); after every
//! poll the engine copies them into buffers and transmits as many as the
//! port takes at once, never retrying or waiting, and leaves the rest
//! queued for the next poll. A frame that finds the queue full (the port
//! is slower than the plaintext, its link is down, or the buffer pool is
//! empty) is dropped and counted: the mirror never holds back the data
//! path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::capture::{FrameSink, Frames};
pub use crate::counters::MirrorTotals;
use crate::pcap_stream::StreamFeed;
use crate::writer::CaptureQueue;

/// Frames one worker keeps waiting for the mirror port.
pub const MIRROR_QUEUE_FRAMES: usize = 4096;

/// What one worker's mirror port did.
#[derive(Debug, Default)]
pub struct MirrorStats {
    frames: AtomicU64,
    bytes: AtomicU64,
    frames_dropped: AtomicU64,
    bytes_dropped: AtomicU64,
}

impl MirrorStats {
    pub fn add_sent(&self, frames: u64, bytes: u64) {
        self.frames.fetch_add(frames, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn add_dropped(&self, frames: u64, bytes: u64) {
        self.frames_dropped.fetch_add(frames, Ordering::Relaxed);
        self.bytes_dropped.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn totals(&self) -> MirrorTotals {
        MirrorTotals {
            frames: self.frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            bytes_dropped: self.bytes_dropped.load(Ordering::Relaxed),
        }
    }
}

/// One worker's frames waiting for the mirror port, oldest first.
#[derive(Debug)]
pub struct MirrorQueue {
    frames: VecDeque<Vec<u8>>,
    stats: Arc<MirrorStats>,
}

impl MirrorQueue {
    pub fn new(stats: Arc<MirrorStats>) -> MirrorQueue {
        MirrorQueue {
            frames: VecDeque::new(),
            stats,
        }
    }

    /// Queues the frames that fit; drops and counts the others.
    fn push(&mut self, frames: &Frames) {
        for frame in frames.iter() {
            if self.frames.len() < MIRROR_QUEUE_FRAMES {
                self.frames.push_back(frame.to_vec());
            } else {
                self.stats.add_dropped(1, frame.len() as u64);
            }
        }
    }

    /// The oldest frame waiting.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(Vec::as_slice)
    }

    /// Removes the oldest frame (it was copied for the port).
    pub fn pop(&mut self) {
        self.frames.pop_front();
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }
}

/// One worker's outputs of the plaintext: the frames of each call go to
/// every one configured.
#[derive(Debug, Default)]
pub struct Taps {
    /// Server ports shown as others (`capture.port_map`).
    port_map: BTreeMap<u16, u16>,
    capture: Option<CaptureQueue>,
    stream: Option<StreamFeed>,
    mirror: Option<MirrorQueue>,
}

impl Taps {
    /// No output yet; frames show server ports through `port_map`.
    pub fn new(port_map: BTreeMap<u16, u16>) -> Taps {
        Taps {
            port_map,
            ..Taps::default()
        }
    }

    /// Queues the frames for the decrypted capture file.
    pub fn with_capture(mut self, capture: CaptureQueue) -> Taps {
        self.capture = Some(capture);
        self
    }

    /// Streams the frames to the PCAP-over-IP clients.
    pub fn with_stream(mut self, feed: StreamFeed) -> Taps {
        self.stream = Some(feed);
        self
    }

    /// Queues the frames for the mirror port.
    pub fn set_mirror(&mut self, queue: MirrorQueue) {
        self.mirror = Some(queue);
    }

    /// Whether any output is configured.
    pub fn any(&self) -> bool {
        self.capture.is_some() || self.stream.is_some() || self.mirror.is_some()
    }

    /// The frames waiting for the mirror port, if there is one.
    pub fn mirror_mut(&mut self) -> Option<&mut MirrorQueue> {
        self.mirror.as_mut()
    }
}

impl FrameSink for &mut Taps {
    fn wire_port(&self, server_port: u16) -> u16 {
        self.port_map.get(&server_port).copied().unwrap_or(server_port)
    }

    /// The mirror port's queue and PCAP-over-IP copy the frames; the
    /// capture file's queue takes them last, as they are.
    fn write(&mut self, frames: Frames, now: SystemTime) {
        if let Some(stream) = &self.stream {
            stream.send(&frames, now);
        }
        if let Some(mirror) = &mut self.mirror {
            mirror.push(&frames);
        }
        if let Some(mut capture) = self.capture.as_ref() {
            capture.write(frames, now);
        }
    }
}
