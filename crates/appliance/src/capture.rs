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
//! One [`DecryptedCapture`], held by the writer thread (the workers queue
//! their frames for it through a `writer::CaptureQueue`), writes a classic
//! pcap (Ethernet link type, microsecond timestamps taken from the `now`
//! each call passes in) to [`CaptureSettings::path`], created with mode
//! 0600 (the plaintext is as secret as the traffic). The pcap header is
//! written when the file is created; the frames go through a buffer that
//! only ever holds whole records, written out when it reaches
//! [`BUFFER_BYTES`], at rotation, when flushed (the writer thread does at
//! its stop) and when the capture is dropped.
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
//! and `<seq>` is 0, or one more than the highest already used with that
//! time (so the names order the files oldest first). A
//! fresh file with its own pcap header is then started at `path`, so every
//! file is a complete pcap on its own, and a stream may continue in the next
//! file. A file found at `path` when a file is started (left by an earlier
//! run) is moved aside under the same naming, unless it holds no frame (24
//! bytes or less), which is replaced.
//!
//! **Retention.** With `max_files` (tcpdump's `-W`), at most that many files
//! are kept, the one being written included: whenever a file is moved aside,
//! the oldest rotated files (by the time and number in their names) are
//! deleted until `max_files - 1` remain.
//!
//! **Errors, a full disk.** Opening returns a [`CaptureError`] naming the
//! path. Later errors never reach the connection. A file holds only its
//! header and whole records: when writing the buffer fails (ENOSPC), the
//! records that reached the file whole are kept, the file is cut back
//! (`set_len`) to the end of the last of them, and the rest are dropped and
//! counted ([`CaptureTotals::frames_dropped`] and `bytes_dropped`). Frames
//! are then dropped and counted for [`RETRY_AFTER_ERROR`], after which
//! writing is tried again at the same place. A fresh file whose header
//! cannot be written is removed (no empty or header-less file is left), and
//! another is tried after the same delay. The first error of a run of errors
//! is logged, and what it dropped once writing works again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::PcapHeader;
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use time::OffsetDateTime;
use wire::{ethernet_mss, SegmentControl, SegmentError, TcpSegment};

use crate::counters::CaptureTotals;

/// The length of the pcap global header: a file this long holds no frame.
const PCAP_HEADER_LEN: u64 = 24;

/// The length of a pcap record header.
const PCAP_RECORD_HEADER_LEN: u64 = 16;

/// The largest frame a record may hold (tcpdump's default snapshot length).
const SNAPLEN: u32 = 262_144;

/// Whole records buffered before they are written to the file.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// How long the capture drops frames after a write error before it tries
/// again.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

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
    /// Keep at most this many files (at least 1), the current one included;
    /// the oldest rotated files are deleted.
    pub max_files: Option<usize>,
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
    /// Writing the capture file failed.
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

/// The decrypted capture file, shared by all workers.
#[derive(Debug)]
pub struct DecryptedCapture {
    settings: CaptureSettings,
    output: Mutex<Output>,
}

impl DecryptedCapture {
    /// Creates the file (and its directory) and writes the pcap header; a
    /// file already at the path is moved aside (see the [module docs](self)).
    pub fn open(settings: CaptureSettings) -> Result<DecryptedCapture, CaptureError> {
        let file = CaptureFile::create(&settings)?;
        Ok(DecryptedCapture {
            settings,
            output: Mutex::new(Output {
                state: OutputState::Open(file),
                totals: CaptureTotals::default(),
                failing: None,
            }),
        })
    }

    /// Where and how it writes.
    pub fn settings(&self) -> &CaptureSettings {
        &self.settings
    }

    /// What was written and dropped so far. Frames count as written once
    /// they are in the buffer; a failed write moves them to the dropped.
    pub fn totals(&self) -> CaptureTotals {
        self.output.lock().unwrap_or_else(PoisonError::into_inner).totals
    }

    /// Writes out the frames buffered so far.
    pub fn flush(&self) {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        output.flush(&self.settings.path, SystemTime::now());
    }
}

/// Where the frames of a [`CaptureStream`] go: the decrypted capture file,
/// or every output of the plaintext a worker feeds
/// ([`crate::mirror::Taps`]: the file, the decrypt-mirror port and
/// PCAP-over-IP).
pub trait FrameSink {
    /// The port the frames show for a server port (see
    /// [`CaptureSettings::port_map`]).
    fn wire_port(&self, server_port: u16) -> u16;

    /// Takes the frames of one call of a stream, all at `now`.
    fn write(&mut self, frames: Frames, now: SystemTime);
}

impl FrameSink for &DecryptedCapture {
    fn wire_port(&self, server_port: u16) -> u16 {
        self.settings.port_map.get(&server_port).copied().unwrap_or(server_port)
    }

    /// Writes the batch under one lock.
    fn write(&mut self, frames: Frames, now: SystemTime) {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(error) = frames.error {
            output.failed(CaptureError::from(error));
        }
        output.drop_frames(frames.failed, 0);
        for frame in frames.iter() {
            output.write_frame(&self.settings, frame, now);
        }
    }
}

impl Drop for DecryptedCapture {
    fn drop(&mut self) {
        let output = self.output.get_mut().unwrap_or_else(PoisonError::into_inner);
        output.close_file(&self.settings.path);
    }
}

/// The state behind the lock.
#[derive(Debug)]
struct Output {
    state: OutputState,
    totals: CaptureTotals,
    /// During a run of errors: the frames and bytes dropped since it began.
    failing: Option<(u64, u64)>,
}

#[derive(Debug)]
enum OutputState {
    Open(CaptureFile),
    /// No file (a fresh one could not be started, or the capture is being
    /// dropped): none is tried before `retry_at`.
    Closed {
        retry_at: SystemTime,
    },
}

impl Output {
    /// Buffers one frame, rotating first when due (or starting a file, once
    /// the delay after an error is over), and writes the buffer out once it
    /// is full; drops the frame while writing is paused.
    fn write_frame(&mut self, settings: &CaptureSettings, frame: &[u8], now: SystemTime) {
        let record_len = PCAP_RECORD_HEADER_LEN + frame.len() as u64;
        let start_file = match &self.state {
            OutputState::Open(file) if file.paused(now) => None,
            OutputState::Open(file) => Some(file.rotation_due(settings, record_len, now)),
            OutputState::Closed { retry_at } => (now >= *retry_at).then_some(true),
        };
        if start_file == Some(true) {
            self.start_file(settings, now);
        }
        let buffered = match &mut self.state {
            OutputState::Open(file) if start_file.is_some() => file.push(frame, now),
            OutputState::Open(_) | OutputState::Closed { .. } => false,
        };
        if !buffered {
            self.drop_frames(1, frame.len() as u64);
            return;
        }
        self.totals.frames += 1;
        self.totals.bytes += frame.len() as u64;
        if matches!(&self.state, OutputState::Open(file) if file.buffered() >= BUFFER_BYTES) {
            self.flush(&settings.path, now);
        }
    }

    /// Writes the buffer out; on an error, keeps what reached the file
    /// whole, drops the rest and pauses writing.
    fn flush(&mut self, path: &Path, now: SystemTime) {
        let OutputState::Open(file) = &mut self.state else {
            return;
        };
        if file.buffered() == 0 && !file.tail_to_cut {
            return;
        }
        match file.flush() {
            Ok(()) => {
                if let Some((frames, bytes)) = self.failing.take() {
                    tracing::info!(
                        "decrypted capture {}: writing again after dropping {frames} frames ({bytes} B)",
                        path.display()
                    );
                }
            }
            Err(lost) => {
                file.paused_until = Some(now.checked_add(RETRY_AFTER_ERROR).unwrap_or(now));
                self.totals.frames = self.totals.frames.saturating_sub(lost.frames);
                self.totals.bytes = self.totals.bytes.saturating_sub(lost.bytes);
                self.failed(CaptureError::Write {
                    path: path.to_owned(),
                    source: lost.error,
                });
                self.drop_frames(lost.frames, lost.bytes);
            }
        }
    }

    /// Closes the current file, if any, and starts a fresh one at `path`;
    /// if that fails, none is tried before [`RETRY_AFTER_ERROR`].
    fn start_file(&mut self, settings: &CaptureSettings, now: SystemTime) {
        self.flush(&settings.path, now);
        self.state = match CaptureFile::create(settings) {
            Ok(file) => OutputState::Open(file),
            Err(error) => {
                self.failed(error);
                OutputState::Closed {
                    retry_at: now.checked_add(RETRY_AFTER_ERROR).unwrap_or(now),
                }
            }
        };
    }

    /// Writes out what is buffered and closes the file (when dropped).
    fn close_file(&mut self, path: &Path) {
        let now = SystemTime::now();
        self.flush(path, now);
        self.state = OutputState::Closed { retry_at: now };
    }

    fn drop_frames(&mut self, frames: u64, bytes: u64) {
        if frames == 0 {
            return;
        }
        self.totals.frames_dropped += frames;
        self.totals.bytes_dropped += bytes;
        let failing = self.failing.get_or_insert((0, 0));
        failing.0 += frames;
        failing.1 += bytes;
    }

    /// Logs the first error of a run of errors (call before counting what
    /// it dropped).
    fn failed(&mut self, error: CaptureError) {
        if self.failing.is_none() {
            tracing::warn!(
                "{error}; dropping whole frames (counted) and trying again every {} s",
                RETRY_AFTER_ERROR.as_secs()
            );
        }
        self.failing.get_or_insert((0, 0));
    }
}

/// Records lost by a failed write of the buffer.
#[derive(Debug)]
struct Lost {
    error: io::Error,
    frames: u64,
    bytes: u64,
}

/// One pcap file being written: on disk, its header and whole records only.
#[derive(Debug)]
struct CaptureFile {
    file: File,
    /// Bytes on disk: the end of the last whole record.
    written: u64,
    /// Whole records not written yet.
    buffer: Vec<u8>,
    /// For each record in `buffer`: where it ends there and its frame's length.
    records: Vec<(usize, u64)>,
    /// The file may hold part of a record past `written` (cutting it back
    /// failed): it is cut before anything else is written.
    tail_to_cut: bool,
    /// The timestamp of its first frame.
    first_frame: Option<SystemTime>,
    /// After a write error: frames are dropped until then.
    paused_until: Option<SystemTime>,
}

impl CaptureFile {
    /// Moves a previous file at the path aside (then keeps at most
    /// `max_files`), creates a fresh one with mode 0600 and writes the pcap
    /// header; a file whose header cannot be written is removed.
    fn create(settings: &CaptureSettings) -> Result<CaptureFile, CaptureError> {
        let path = &settings.path;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| CaptureError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        move_aside(path)?;
        if let Some(max_files) = settings.max_files {
            prune(path, max_files.saturating_sub(1));
        }
        let created = |source| CaptureError::Create {
            path: path.to_owned(),
            source,
        };
        // A header-only file left here is replaced, so the new one gets mode
        // 0600 (the mode applies only to a file being created).
        if fs::metadata(path).is_ok_and(|metadata| metadata.is_file()) {
            fs::remove_file(path).map_err(created)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(created)?;
        let written = pcap_header().and_then(|bytes| file.write_all_at(&bytes, 0));
        if let Err(source) = written {
            if fs::metadata(path).is_ok_and(|metadata| metadata.is_file()) {
                let _ = fs::remove_file(path);
            }
            return Err(CaptureError::Write {
                path: path.to_owned(),
                source,
            });
        }
        Ok(CaptureFile {
            file,
            written: PCAP_HEADER_LEN,
            buffer: Vec::with_capacity(BUFFER_BYTES),
            records: Vec::new(),
            tail_to_cut: false,
            first_frame: None,
            paused_until: None,
        })
    }

    fn paused(&self, now: SystemTime) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    fn buffered(&self) -> usize {
        self.buffer.len()
    }

    fn rotation_due(&self, settings: &CaptureSettings, record_len: u64, now: SystemTime) -> bool {
        let Some(first_frame) = self.first_frame else {
            return false;
        };
        let size = self.written + self.buffer.len() as u64;
        let too_large = settings
            .rotate_bytes
            .is_some_and(|limit| size.saturating_add(record_len) > limit);
        let too_old = settings.rotate_secs.is_some_and(|secs| {
            now.duration_since(first_frame)
                .is_ok_and(|age| age >= Duration::from_secs(secs))
        });
        too_large || too_old
    }

    /// Appends one whole record (in the header's native byte order) to the
    /// buffer; false for a frame longer than the snapshot length.
    fn push(&mut self, frame: &[u8], now: SystemTime) -> bool {
        if !push_record(&mut self.buffer, frame, now) {
            return false;
        }
        self.records.push((self.buffer.len(), frame.len() as u64));
        self.first_frame.get_or_insert(now);
        true
    }

    /// Writes the buffer at the end of the last whole record. On an error,
    /// the records that reached the file whole stay, the file is cut back
    /// to the end of the last of them, and the others are lost.
    fn flush(&mut self) -> Result<(), Lost> {
        let mut done = 0;
        let mut result = self.cut_tail();
        while result.is_ok() && done < self.buffer.len() {
            let rest = self.buffer.get(done..).unwrap_or_default();
            match self.file.write_at(rest, self.written + done as u64) {
                Ok(0) => result = Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(count) => done += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => result = Err(error),
            }
        }
        let whole = self.records.iter().take_while(|(end, _)| *end <= done).count();
        let kept = self
            .records
            .get(..whole)
            .and_then(|kept| kept.last())
            .map_or(0, |(end, _)| *end);
        let lost = self.records.get(whole..).unwrap_or_default();
        let lost_frames = lost.len() as u64;
        let lost_bytes = lost.iter().map(|(_, len)| len).sum();
        self.written += kept as u64;
        self.buffer.clear();
        self.records.clear();
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                self.tail_to_cut |= kept < done;
                let _ = self.cut_tail();
                Err(Lost {
                    error,
                    frames: lost_frames,
                    bytes: lost_bytes,
                })
            }
        }
    }

    /// Cuts the file back to its last whole record, if a failed write left
    /// part of one after it.
    fn cut_tail(&mut self) -> io::Result<()> {
        if self.tail_to_cut {
            self.file.set_len(self.written)?;
            self.tail_to_cut = false;
        }
        Ok(())
    }
}

/// The pcap global header every file and stream starts with: Ethernet,
/// microsecond timestamps, this machine's byte order.
pub(crate) fn pcap_header() -> io::Result<Vec<u8>> {
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let mut bytes = Vec::with_capacity(PCAP_HEADER_LEN as usize);
    match header.write_to(&mut bytes) {
        Ok(_) => Ok(bytes),
        Err(PcapError::IoError(error)) => Err(error),
        Err(other) => Err(io::Error::new(io::ErrorKind::InvalidData, other)),
    }
}

/// Appends one whole pcap record of `frame` at `now` (in the header's
/// native byte order) to `buffer`; false (nothing appended) for a frame
/// longer than the snapshot length.
pub(crate) fn push_record(buffer: &mut Vec<u8>, frame: &[u8], now: SystemTime) -> bool {
    let Ok(len) = u32::try_from(frame.len()) else {
        return false;
    };
    if len > SNAPLEN {
        return false;
    }
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(timestamp.as_secs()).unwrap_or(u32::MAX);
    for field in [secs, timestamp.subsec_micros(), len, len] {
        buffer.extend_from_slice(&field.to_ne_bytes());
    }
    buffer.extend_from_slice(frame);
    true
}

/// Renames a file at `path` that holds frames to its rotated name.
fn move_aside(path: &Path) -> Result<(), CaptureError> {
    let Ok(metadata) = fs::metadata(path) else {
        return Ok(());
    };
    if !metadata.is_file() || metadata.len() <= PCAP_HEADER_LEN {
        return Ok(());
    }
    let stamp = rotation_stamp(metadata.modified().unwrap_or_else(|_| SystemTime::now()));
    let mut seq = rotated_files(path)
        .into_iter()
        .filter(|((other, _), _)| *other == stamp)
        .map(|((_, seq), _)| seq + 1)
        .max()
        .unwrap_or(0);
    let mut name = path.file_stem().map(OsString::from).unwrap_or_default();
    name.push(format!("-{stamp}-"));
    let to = loop {
        let mut candidate = name.clone();
        candidate.push(format!("{seq}.pcap"));
        let candidate = path.with_file_name(candidate);
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

/// Deletes the oldest rotated files of the capture at `path` until `keep`
/// remain (a file that cannot be deleted is logged and skipped).
fn prune(path: &Path, keep: usize) {
    let rotated = rotated_files(path);
    let excess = rotated.len().saturating_sub(keep);
    for (_, oldest) in rotated.into_iter().take(excess) {
        if let Err(error) = fs::remove_file(&oldest) {
            tracing::warn!(
                "decrypted capture: cannot delete {} (max_files): {error}",
                oldest.display()
            );
        }
    }
}

/// The rotated files of the capture at `path`, named
/// `<stem>-<yyyymmddThhmmss>-<seq>.pcap` next to it, oldest first (by the
/// time, then the number in their names), each with that time and number.
fn rotated_files(path: &Path) -> Vec<((String, u64), PathBuf)> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|stem| stem.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut rotated: Vec<((String, u64), PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(stem)?.strip_prefix('-')?.strip_suffix(".pcap")?;
            let (stamp, seq) = rest.split_once('-')?;
            let (date, clock) = stamp.split_once('T')?;
            let digits = |part: &str, len: usize| part.len() == len && part.bytes().all(|byte| byte.is_ascii_digit());
            if !(digits(date, 8) && digits(clock, 6)) {
                return None;
            }
            Some(((stamp.to_owned(), seq.parse().ok()?), entry.path()))
        })
        .collect();
    rotated.sort();
    rotated
}

/// `yyyymmddThhmmss` of `at` in UTC.
fn rotation_stamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let at = i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The synthetic frames of one call of a [`CaptureStream`], built once for
/// every output.
#[derive(Debug)]
pub struct Frames {
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

    /// Each frame, in order (those that could not be built left out).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
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
/// session; every call hands its frames to a [`FrameSink`] at once (the
/// capture file writes them under one lock).
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
    pub fn data(&mut self, mut sink: impl FrameSink, from_client: bool, bytes: &[u8], now: SystemTime) {
        if self.state == StreamState::Closed || self.sender(from_client).fin {
            return;
        }
        let mut frames = self.frames(&sink);
        let mss = usize::from(ethernet_mss(self.client.addr.ip()));
        for chunk in bytes.chunks(mss) {
            self.push(&mut frames, from_client, SegmentControl::Psh, chunk);
        }
        if !bytes.is_empty() {
            self.push(&mut frames, !from_client, SegmentControl::None, &[]);
        }
        sink.write(frames, now);
    }

    /// One side closes: FIN|ACK from it and the other side's ACK; the
    /// second FIN closes the stream. Repeated calls for a side are ignored.
    pub fn fin(&mut self, mut sink: impl FrameSink, from_client: bool, now: SystemTime) {
        if self.state == StreamState::Closed || self.sender(from_client).fin {
            return;
        }
        let mut frames = self.frames(&sink);
        self.push(&mut frames, from_client, SegmentControl::Fin, &[]);
        self.push(&mut frames, !from_client, SegmentControl::None, &[]);
        self.sender(from_client).fin = true;
        if self.client.fin && self.server.fin {
            self.state = StreamState::Closed;
        }
        sink.write(frames, now);
    }

    /// One side resets: RST|ACK from it; nothing is written for the stream
    /// afterwards.
    pub fn reset(&mut self, mut sink: impl FrameSink, from_client: bool, now: SystemTime) {
        if self.state == StreamState::Closed {
            return;
        }
        let mut frames = self.frames(&sink);
        self.push(&mut frames, from_client, SegmentControl::Rst, &[]);
        self.state = StreamState::Closed;
        sink.write(frames, now);
    }

    fn sender(&mut self, from_client: bool) -> &mut Endpoint {
        if from_client {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// A batch for one call, starting with the handshake if not yet written.
    fn frames(&mut self, sink: &impl FrameSink) -> Frames {
        let mut frames = Frames::new(sink.wire_port(self.server.addr.port()));
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
