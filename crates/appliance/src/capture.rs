//! The decrypted capture: the plaintext of intercepted connections written
//! as a pcap with synthetic TCP framing, for Wireshark and tshark.
//!
//! Every intercepted connection becomes one TCP stream between the real
//! client and server addresses: the three-way handshake, the plaintext of
//! each direction as data segments of at most [`wire::ethernet_mss`] bytes
//! (1460 for IPv4, 1440 for IPv6) with consistent sequence and
//! acknowledgement numbers, an ACK from the receiver after each batch of
//! data, and the close (FIN and ACK per side, or a RST). The server port is
//! rewritten through [`CaptureSettings::port_map`] (e.g. 443 → 80 so that the
//! plaintext dissects as HTTP). See [`CaptureStream`] for the exact segments.
//!
//! # Files
//!
//! One [`DecryptedCapture`] is shared by all workers; it writes a classic
//! pcap (Ethernet link type, microsecond timestamps taken from the `now`
//! each call passes in) to [`CaptureSettings::path`] through a buffer, so the
//! newest frames reach the file when the buffer fills, at rotation and when
//! the capture is dropped.
//!
//! **Rotation.** Before a frame is written, the current file is rotated
//! when it already holds a frame and either the frame would take it past
//! `rotate_bytes` (so files stay within the limit unless one frame alone
//! exceeds it) or its first frame is `rotate_secs` or more older than `now`.
//! The current file is then flushed, closed and renamed, next to it, to
//!
//! ```text
//! <stem>-<yyyymmddThhmmss>-<seq>.pcap
//! ```
//!
//! where the time is the file's modification time (its last write) in UTC
//! and `<seq>` is the smallest number from 0 that makes the name unused. A
//! fresh file with its own pcap header is then started at `path`, so every
//! file is a complete pcap on its own, and a stream may continue in the next
//! file. A file found at `path` when a file is started (left by an earlier
//! run) is moved aside under the same naming, unless it holds no frame (24
//! bytes or less), which is overwritten.
//!
//! **Errors.** Opening returns a [`CaptureError`] naming the path. Later
//! write errors never reach the connection: the frames are lost and counted
//! ([`DecryptedCapture::write_errors`]), the first error is logged once, the
//! file is abandoned and a fresh one is started (the broken one moved aside)
//! at the first call one second later.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use time::OffsetDateTime;
use wire::{ethernet_mss, SegmentControl, SegmentError, TcpSegment};

/// The length of the pcap global header: a file this long holds no frame.
const PCAP_HEADER_LEN: u64 = 24;

/// The length of a pcap record header.
const PCAP_RECORD_HEADER_LEN: u64 = 16;

/// The largest frame a record may hold (tcpdump's default snapshot length).
const SNAPLEN: u32 = 262_144;

/// How long the capture waits after a write error before starting a fresh file.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The window every synthetic segment advertises.
const WINDOW: u16 = u16::MAX;

/// Where and how the decrypted capture is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureSettings {
    /// The file being written; rotated files are renamed next to it. Missing
    /// parent directories are created.
    pub path: PathBuf,
    /// Server ports rewritten in the capture, e.g. `443 → 80`; the client
    /// port is never rewritten.
    pub port_map: BTreeMap<u16, u16>,
    /// Rotate before the file would grow past this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Rotate once the first frame of the file is this many seconds old.
    pub rotate_secs: Option<u64>,
}

/// Why the decrypted capture cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The directory of the capture file cannot be created.
    #[error("decrypted capture {path}: cannot create its directory: {source}")]
    CreateDir {
        /// The capture file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A previous file at the path cannot be renamed out of the way.
    #[error("decrypted capture {path}: cannot move it to {to}: {source}")]
    MoveAside {
        /// The capture file.
        path: PathBuf,
        /// The rotated name.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The capture file cannot be created.
    #[error("decrypted capture {path}: cannot create: {source}")]
    Create {
        /// The capture file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing or flushing the capture file failed.
    #[error("decrypted capture {path}: cannot write: {source}")]
    Write {
        /// The capture file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A frame could not be built (the stream's addresses are of different
    /// IP versions).
    #[error("decrypted capture: {0}")]
    Segment(#[from] SegmentError),
}

impl CaptureError {
    fn write(path: &Path, error: PcapError) -> CaptureError {
        let source = match error {
            PcapError::IoError(source) => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        };
        CaptureError::Write {
            path: path.to_owned(),
            source,
        }
    }
}

/// The decrypted capture file, shared by all workers.
#[derive(Debug)]
pub struct DecryptedCapture {
    settings: CaptureSettings,
    output: Mutex<Output>,
    frames_written: AtomicU64,
    bytes_written: AtomicU64,
    write_errors: AtomicU64,
}

impl DecryptedCapture {
    /// Creates the file (and its directory) and writes the pcap header; a
    /// file already at the path is moved aside (see the [module docs](self)).
    pub fn open(settings: CaptureSettings) -> Result<DecryptedCapture, CaptureError> {
        let file = CaptureFile::create(&settings.path)?;
        Ok(DecryptedCapture {
            settings,
            output: Mutex::new(Output {
                state: OutputState::Open(file),
                warned: false,
            }),
            frames_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// Frames written (into the file's buffer).
    pub fn frames_written(&self) -> u64 {
        self.frames_written.load(Ordering::Relaxed)
    }

    /// Bytes of the frames written, without pcap record headers.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Frames lost to errors: write errors, frames dropped while waiting to
    /// start a fresh file after one, and frames that could not be built.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// The port the capture shows for a server port.
    fn wire_port(&self, server_port: u16) -> u16 {
        self.settings.port_map.get(&server_port).copied().unwrap_or(server_port)
    }

    /// Writes a batch of frames under one lock.
    fn write(&self, frames: &Frames, now: SystemTime) {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut written, mut bytes, mut lost) = (0, 0, frames.failed);
        let mut first_error = frames.error.map(CaptureError::from);
        for frame in frames.iter() {
            match output.write_frame(&self.settings, frame, now) {
                Ok(true) => {
                    written += 1;
                    bytes += frame.len() as u64;
                }
                Ok(false) => lost += 1,
                Err(error) => {
                    lost += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            if !output.warned {
                output.warned = true;
                tracing::warn!("{error}; further decrypted-capture errors are only counted");
            }
        }
        drop(output);
        self.frames_written.fetch_add(written, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.write_errors.fetch_add(lost, Ordering::Relaxed);
    }
}

impl Drop for DecryptedCapture {
    fn drop(&mut self) {
        let output = self.output.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let OutputState::Open(file) = output.fail(SystemTime::now()) {
            if let Err(error) = file.close(&self.settings.path) {
                tracing::warn!("{error}");
            }
        }
    }
}

/// The state behind the lock.
#[derive(Debug)]
struct Output {
    state: OutputState,
    /// The first error has been logged.
    warned: bool,
}

#[derive(Debug)]
enum OutputState {
    Open(CaptureFile),
    /// After an error (or when dropped): no file until `retry_at`.
    Failed {
        retry_at: SystemTime,
    },
}

impl Output {
    /// Writes one frame, rotating first when due. `Ok(false)`: dropped
    /// while waiting to retry after an error.
    fn write_frame(&mut self, settings: &CaptureSettings, frame: &[u8], now: SystemTime) -> Result<bool, CaptureError> {
        let path = &settings.path;
        let record_len = PCAP_RECORD_HEADER_LEN + frame.len() as u64;
        match &self.state {
            OutputState::Open(file) if !file.rotation_due(settings, record_len, now) => {}
            OutputState::Failed { retry_at } if now < *retry_at => return Ok(false),
            OutputState::Open(_) | OutputState::Failed { .. } => self.start_file(path, now)?,
        }
        let OutputState::Open(file) = &mut self.state else {
            return Ok(false);
        };
        if let Err(error) = file.write(frame, now) {
            self.fail(now);
            return Err(CaptureError::write(path, error));
        }
        Ok(true)
    }

    /// Closes the current file, if any, and starts a fresh one at `path`.
    fn start_file(&mut self, path: &Path, now: SystemTime) -> Result<(), CaptureError> {
        if let OutputState::Open(file) = self.fail(now) {
            file.close(path)?;
        }
        self.state = OutputState::Open(CaptureFile::create(path)?);
        Ok(())
    }

    /// Enters the failed state, returning the previous one.
    fn fail(&mut self, now: SystemTime) -> OutputState {
        let retry_at = now.checked_add(RETRY_AFTER_ERROR).unwrap_or(now);
        std::mem::replace(&mut self.state, OutputState::Failed { retry_at })
    }
}

/// One pcap file being written.
#[derive(Debug)]
struct CaptureFile {
    writer: PcapWriter<BufWriter<File>>,
    /// Bytes in the file, headers included, once the buffer is flushed.
    size: u64,
    /// The timestamp of its first frame.
    first_frame: Option<SystemTime>,
}

impl CaptureFile {
    /// Moves a previous file at `path` aside and creates a fresh one.
    fn create(path: &Path) -> Result<CaptureFile, CaptureError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| CaptureError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        move_aside(path)?;
        let file = File::create(path).map_err(|source| CaptureError::Create {
            path: path.to_owned(),
            source,
        })?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer =
            PcapWriter::with_header(BufWriter::new(file), header).map_err(|error| CaptureError::write(path, error))?;
        Ok(CaptureFile {
            writer,
            size: PCAP_HEADER_LEN,
            first_frame: None,
        })
    }

    fn rotation_due(&self, settings: &CaptureSettings, record_len: u64, now: SystemTime) -> bool {
        let Some(first_frame) = self.first_frame else {
            return false;
        };
        let too_large = settings
            .rotate_bytes
            .is_some_and(|limit| self.size.saturating_add(record_len) > limit);
        let too_old = settings.rotate_secs.is_some_and(|secs| {
            now.duration_since(first_frame)
                .is_ok_and(|age| age >= Duration::from_secs(secs))
        });
        too_large || too_old
    }

    fn write(&mut self, frame: &[u8], now: SystemTime) -> Result<(), PcapError> {
        let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let len = u32::try_from(frame.len()).map_err(|_| PcapError::InvalidField("frame longer than 4 GiB"))?;
        let written = self.writer.write_packet(&PcapPacket::new(timestamp, len, frame))?;
        self.size += written as u64;
        self.first_frame.get_or_insert(now);
        Ok(())
    }

    /// Flushes and closes the file.
    fn close(self, path: &Path) -> Result<(), CaptureError> {
        self.writer.into_writer().flush().map_err(|source| CaptureError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Renames a file at `path` that holds frames to its rotated name.
fn move_aside(path: &Path) -> Result<(), CaptureError> {
    let Ok(metadata) = fs::metadata(path) else {
        return Ok(());
    };
    if !metadata.is_file() || metadata.len() <= PCAP_HEADER_LEN {
        return Ok(());
    }
    let closed = metadata.modified().unwrap_or_else(|_| SystemTime::now());
    let mut seq = 0u64;
    let to = loop {
        let candidate = rotated_path(path, closed, seq);
        if !candidate.exists() {
            break candidate;
        }
        seq += 1;
    };
    fs::rename(path, &to).map_err(|source| CaptureError::MoveAside {
        path: path.to_owned(),
        to,
        source,
    })
}

/// `<stem>-<yyyymmddThhmmss>-<seq>.pcap` next to `path`, the time in UTC.
fn rotated_path(path: &Path, closed: SystemTime, seq: u64) -> PathBuf {
    let secs = closed.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let at = i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut name = path.file_stem().map(OsString::from).unwrap_or_default();
    name.push(format!(
        "-{:04}{:02}{:02}T{:02}{:02}{:02}-{seq}.pcap",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    ));
    path.with_file_name(name)
}

/// The frames of one call, built before the lock is taken.
#[derive(Debug)]
struct Frames {
    /// The capture's port for the server.
    server_port: u16,
    bytes: Vec<u8>,
    /// The end of each frame in `bytes`.
    ends: Vec<usize>,
    /// Frames that could not be built, and why the first one failed.
    failed: u64,
    error: Option<SegmentError>,
}

impl Frames {
    fn new(server_port: u16) -> Frames {
        Frames {
            server_port,
            bytes: Vec::new(),
            ends: Vec::new(),
            failed: 0,
            error: None,
        }
    }

    fn push(&mut self, segment: &TcpSegment<'_>) {
        match segment.write(&mut self.bytes) {
            Ok(()) => self.ends.push(self.bytes.len()),
            Err(error) => {
                self.failed += 1;
                self.error.get_or_insert(error);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| self.bytes.get(start..end).unwrap_or_default())
    }
}

/// One side of a [`CaptureStream`].
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    addr: SocketAddr,
    mac: [u8; 6],
    /// The sequence number of its next segment.
    next_seq: u32,
    fin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// Nothing written yet.
    New,
    /// The handshake is written.
    Open,
    /// Both FINs or a RST are written: nothing more is.
    Closed,
}

/// The synthetic TCP stream of one intercepted connection, owned by its
/// session; every call writes its frames under one lock of the capture.
///
/// The client starts at the given ISN (so its sequence numbers match the
/// client leg on the wire), the server at its bitwise complement. The first
/// call of any kind writes the handshake: SYN (with an MSS option), SYN-ACK,
/// ACK. After that, every segment acknowledges everything the other side has
/// sent so far.
#[derive(Debug, Clone)]
pub struct CaptureStream {
    client: Endpoint,
    server: Endpoint,
    state: StreamState,
}

impl CaptureStream {
    /// A stream between `client` and `server` (of the same IP version),
    /// nothing written yet.
    pub fn new(
        client: SocketAddr,
        server: SocketAddr,
        client_mac: [u8; 6],
        server_mac: [u8; 6],
        client_isn: u32,
    ) -> CaptureStream {
        let endpoint = |addr, mac, isn| Endpoint {
            addr,
            mac,
            next_seq: isn,
            fin: false,
        };
        CaptureStream {
            client: endpoint(client, client_mac, client_isn),
            server: endpoint(server, server_mac, !client_isn),
            state: StreamState::New,
        }
    }

    /// Plaintext from one side: PSH|ACK segments of at most the MSS each,
    /// then an ACK from the other side. Ignored once that side has sent its
    /// FIN or the stream is closed.
    pub fn data(&mut self, capture: &DecryptedCapture, from_client: bool, bytes: &[u8], now: SystemTime) {
        if self.state == StreamState::Closed || self.sender(from_client).fin {
            return;
        }
        let mut frames = self.frames(capture);
        let mss = usize::from(ethernet_mss(self.client.addr.ip()));
        for chunk in bytes.chunks(mss) {
            self.push(&mut frames, from_client, SegmentControl::Psh, chunk);
        }
        if !bytes.is_empty() {
            self.push(&mut frames, !from_client, SegmentControl::None, &[]);
        }
        capture.write(&frames, now);
    }

    /// One side closes: FIN|ACK from it and the other side's ACK; the
    /// second FIN closes the stream. Repeated calls for a side are ignored.
    pub fn fin(&mut self, capture: &DecryptedCapture, from_client: bool, now: SystemTime) {
        if self.state == StreamState::Closed || self.sender(from_client).fin {
            return;
        }
        let mut frames = self.frames(capture);
        self.push(&mut frames, from_client, SegmentControl::Fin, &[]);
        self.push(&mut frames, !from_client, SegmentControl::None, &[]);
        self.sender(from_client).fin = true;
        if self.client.fin && self.server.fin {
            self.state = StreamState::Closed;
        }
        capture.write(&frames, now);
    }

    /// One side resets: RST|ACK from it; nothing is written for the stream
    /// afterwards.
    pub fn reset(&mut self, capture: &DecryptedCapture, from_client: bool, now: SystemTime) {
        if self.state == StreamState::Closed {
            return;
        }
        let mut frames = self.frames(capture);
        self.push(&mut frames, from_client, SegmentControl::Rst, &[]);
        self.state = StreamState::Closed;
        capture.write(&frames, now);
    }

    fn sender(&mut self, from_client: bool) -> &mut Endpoint {
        if from_client {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// A batch for one call, starting with the handshake if not yet written.
    fn frames(&mut self, capture: &DecryptedCapture) -> Frames {
        let mut frames = Frames::new(capture.wire_port(self.server.addr.port()));
        if self.state == StreamState::New {
            self.push(&mut frames, true, SegmentControl::Syn, &[]);
            self.push(&mut frames, false, SegmentControl::Syn, &[]);
            self.push(&mut frames, true, SegmentControl::None, &[]);
            self.state = StreamState::Open;
        }
        frames
    }

    /// Adds one segment from a side and advances its sequence number. Every
    /// segment but the client's SYN acknowledges the other side.
    fn push(&mut self, frames: &mut Frames, from_client: bool, control: SegmentControl, payload: &[u8]) {
        let (client, server) = (
            self.client.addr,
            SocketAddr::new(self.server.addr.ip(), frames.server_port),
        );
        let (sender, receiver, src, dst) = if from_client {
            (&mut self.client, &self.server, client, server)
        } else {
            (&mut self.server, &self.client, server, client)
        };
        let is_client_syn = from_client && control == SegmentControl::Syn;
        frames.push(&TcpSegment {
            src_mac: sender.mac,
            dst_mac: receiver.mac,
            src,
            dst,
            seq: sender.next_seq,
            ack: (!is_client_syn).then_some(receiver.next_seq),
            control,
            window: WINDOW,
            payload,
        });
        let flag_len = u32::from(matches!(control, SegmentControl::Syn | SegmentControl::Fin));
        // Sequence numbers count modulo 2^32, so truncating the length is right.
        sender.next_seq = sender
            .next_seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(flag_len);
    }
}
