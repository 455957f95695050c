//! Offline replay: the same bridge engine driven over DPDK's pcap driver.
//! The input capture enters on the client port; what leaves the server port
//! is written to the output capture (and, optionally, what leaves the client
//! port to a second one). Replay ends when every readable input frame has
//! been read.
//!
//! **Files.** An output that is the input (the same file, by device and
//! inode, whatever the path says: `./a.pcap`, a symlink, a hard link) is
//! refused before anything is opened for writing. A capture whose last
//! record is cut short (a capture that was still being written, a full
//! disk) is replayed up to it, as tcpreplay and tshark do.
//!
//! **Timestamps.** The pcap driver stamps what it transmits with the time of
//! transmission, so each output is written by the driver to a temporary file
//! next to it and then rewritten with the input's timestamps: a frame sent
//! while the engine handled input frame *n* carries frame *n*'s timestamp
//! (replay reads one frame per poll so that this mapping is exact). The
//! spacing is the input's; [`Timestamps`] chooses whether the first frame
//! starts now or at its original time.
//!
//! **Long frames.** A frame longer than one mbuf
//! ([`MBUF_FRAME_BYTES`]) crosses as a chain of mbufs, of which the
//! engine sees the first segment only; the pcap driver writes at most
//! [`PCAP_TX_MAX_BYTES`] of a chain (the rest of the frame is lost, its
//! original length is kept in the record). Both are counted and reported.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};
use thiserror::Error;

pub use dpdk::MBUF_FRAME_BYTES;

use appliance::config::{Config, Device};
use appliance::counters::Report;
use appliance::engine::Side;
use appliance::worker::TimedPoller;
use appliance::SetupError;

use crate::dataplane::{Dataplane, DataplaneError};

/// How long replay waits for the pcap driver to deliver the next frame
/// before it gives up on frames the driver could not read.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The most the pcap driver writes of a frame held in a chain of mbufs
/// (DPDK's `RTE_ETHER_MAX_JUMBO_FRAME_LEN`, the size of its copy buffer).
pub const PCAP_TX_MAX_BYTES: usize = 0x3F00;

/// Why a replay failed.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("input capture {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("{output} is the input capture {input} (the same file): replaying would destroy it; write elsewhere")]
    SameFile { input: PathBuf, output: PathBuf },
    #[error("{first} and {second} are the same file: give the two outputs different files")]
    SameOutput { first: PathBuf, second: PathBuf },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the pcap driver delivered {received} of the {expected} frames of the input capture")]
    Incomplete { received: u64, expected: u64 },
}

/// Which times the output captures carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timestamps {
    /// The input's spacing, the first frame at the start of the replay.
    #[default]
    Relative,
    /// The input's own timestamps.
    Original,
}

/// What a replay read and produced.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    /// Readable frames in the input capture, all replayed.
    pub frames_in: u64,
    /// Frames written to the output (server port) and client output.
    pub frames_out: u64,
    pub client_frames_out: u64,
    /// Input frames longer than one mbuf (they crossed as mbuf chains).
    pub oversize: u64,
    /// Of those, frames longer than the pcap driver writes: their output
    /// copies are cut to [`PCAP_TX_MAX_BYTES`].
    pub cut_in_output: u64,
    /// Why the input was read only up to its last readable frame, if it was.
    pub unreadable_tail: Option<String>,
    pub report: Report,
}

/// The files of one replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayFiles<'a> {
    pub input: &'a Path,
    /// Receives what leaves the server port.
    pub output: &'a Path,
    /// Receives what leaves the client port, if wanted.
    pub client_output: Option<&'a Path>,
}

/// Replays `files.input` through the bridge with `config`'s data plane
/// settings (its `[ports]` are replaced by pcap devices; one worker, one
/// frame per poll). `progress` is called now and then with the frames read
/// so far and the total.
pub fn replay(
    config: &Config,
    files: ReplayFiles<'_>,
    timestamps: Timestamps,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ReplayOutcome, ReplayError> {
    guard_outputs(files)?;
    let scan = scan_input(files.input)?;
    let expected = scan.frames;
    let input = devarg_path(files.input)?;
    let server_raw = RawOutput::prepare(files.output)?;
    let client_raw = files.client_output.map(RawOutput::prepare).transpose()?;
    let devices = [
        Device::Virtual {
            name: "net_pcap0".into(),
            spec: format!(
                "net_pcap0,rx_pcap={input},tx_pcap={}",
                client_raw.as_ref().map_or("/dev/null", |raw| raw.devarg.as_str())
            ),
        },
        Device::Virtual {
            name: "net_pcap1".into(),
            spec: format!("net_pcap1,tx_pcap={}", server_raw.devarg),
        },
    ];
    let mut config = config.clone();
    config.dataplane.workers = 1;
    // One frame per poll: what is sent in a poll answers that one frame.
    config.dataplane.burst_size = 1;
    let started = SystemTime::now();
    let mut dataplane = Dataplane::open(&config, Some(devices.to_vec()), None)?;
    let Some((mut engine, worker_stats, max_sleep)) = dataplane.take_first_worker() else {
        return Err(ReplayError::Dataplane(DataplaneError::Setup(SetupError::Device(
            "no queue for replay".into(),
        ))));
    };
    let mut poller = TimedPoller::new(&worker_stats, max_sleep);

    let mut sent = SentLog::default();
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let ports = first_worker_ports(&dataplane);
        sent.record(&ports);
        let received = ports[Side::Client.index()].0;
        if received >= expected {
            break;
        }
        if last_report.elapsed() >= Duration::from_millis(100) {
            progress(received, expected);
            last_report = Instant::now();
        }
        if poller.poll(&mut engine) > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            break;
        }
    }
    // Nothing more arrives on the server port, but poll it once so a
    // driver's late frames are not left behind.
    poller.poll(&mut engine);
    sent.record(&first_worker_ports(&dataplane));
    drop(engine);
    dataplane.flush_outputs();
    let report = dataplane.report();
    // Closing the devices flushes and closes the driver's captures.
    drop(dataplane);
    progress(report.ports[Side::Client.index()].totals.rx, expected);

    let received = report.ports[Side::Client.index()].totals.rx;
    if received != expected {
        return Err(ReplayError::Incomplete { received, expected });
    }
    let start = match timestamps {
        Timestamps::Relative => Some(started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()),
        Timestamps::Original => None,
    };
    let frames_out = server_raw.finish(files.input, &sent.server, start)?;
    let client_frames_out = match client_raw {
        Some(raw) => raw.finish(files.input, &sent.client, start)?,
        None => 0,
    };
    Ok(ReplayOutcome {
        frames_in: expected,
        frames_out,
        client_frames_out,
        oversize: scan.oversize,
        cut_in_output: scan.cut_in_output,
        unreadable_tail: scan.unreadable_tail,
        report,
    })
}

/// (rx, tx) of worker 0 per port, in [`Side`] order.
fn first_worker_ports(dataplane: &Dataplane) -> Vec<(u64, u64)> {
    dataplane
        .worker_ports()
        .first()
        .map(|ports| ports.iter().map(|port| (port.rx, port.tx)).collect())
        .unwrap_or_default()
}

/// For each output port, the input frames read when its frames were sent:
/// `(frames sent so far, input frames read so far)`, whenever the first grew.
#[derive(Debug, Default)]
struct SentLog {
    server: Vec<(u64, u64)>,
    client: Vec<(u64, u64)>,
}

impl SentLog {
    fn record(&mut self, ports: &[(u64, u64)]) {
        let received = ports.get(Side::Client.index()).map_or(0, |port| port.0);
        for (log, side) in [(&mut self.server, Side::Server), (&mut self.client, Side::Client)] {
            let sent = ports.get(side.index()).map_or(0, |port| port.1);
            if log.last().map_or(0, |last| last.0) < sent {
                log.push((sent, received));
            }
        }
    }
}

/// Refuses outputs that are the input, or each other.
fn guard_outputs(files: ReplayFiles<'_>) -> Result<(), ReplayError> {
    let input = identity(files.input).ok_or_else(|| ReplayError::Input {
        path: files.input.to_owned(),
        reason: std::fs::metadata(files.input)
            .err()
            .map_or_else(|| "cannot be read".to_owned(), |err| err.to_string()),
    })?;
    for output in std::iter::once(files.output).chain(files.client_output) {
        if identity(output) == Some(input) {
            return Err(ReplayError::SameFile {
                input: files.input.to_owned(),
                output: output.to_owned(),
            });
        }
    }
    if let Some(client) = files.client_output {
        let same = match (identity(files.output), identity(client)) {
            (Some(first), Some(second)) => first == second,
            _ => future_path(files.output) == future_path(client),
        };
        if same {
            return Err(ReplayError::SameOutput {
                first: files.output.to_owned(),
                second: client.to_owned(),
            });
        }
    }
    Ok(())
}

/// The device and inode of the file at `path` (symlinks followed).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// Where a file not created yet will be: its folder resolved.
fn future_path(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(path.file_name()?))
}

/// What the input holds: readable frames, long ones, and an unreadable tail.
#[derive(Debug, Default)]
struct InputScan {
    frames: u64,
    oversize: u64,
    cut_in_output: u64,
    unreadable_tail: Option<String>,
}

fn scan_input(path: &Path) -> Result<InputScan, ReplayError> {
    let mut reader = InputReader::open(path)?;
    let mut scan = InputScan::default();
    while let Some(frame) = reader.next_frame() {
        match frame {
            Ok(frame) => {
                scan.frames += 1;
                scan.oversize += u64::from(frame.len > MBUF_FRAME_BYTES);
                scan.cut_in_output += u64::from(frame.len > PCAP_TX_MAX_BYTES);
            }
            Err(ReadError::CutShort) => {
                scan.unreadable_tail = Some(format!(
                    "the capture ends inside the record after frame {} (cut short)",
                    scan.frames
                ));
                break;
            }
            Err(ReadError::Bad(reason)) => return Err(reader.error(format!("after frame {}: {reason}", scan.frames))),
        }
    }
    Ok(scan)
}

/// One input frame as replay needs it.
struct InputFrame {
    timestamp: Duration,
    len: usize,
}

/// Why the next input frame could not be read.
enum ReadError {
    /// The file ends inside a record.
    CutShort,
    Bad(String),
}

impl From<PcapError> for ReadError {
    fn from(err: PcapError) -> Self {
        match err {
            PcapError::IoError(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => ReadError::CutShort,
            err => ReadError::Bad(err.to_string()),
        }
    }
}

/// The frames of a pcap or pcapng capture of Ethernet frames.
struct InputReader {
    path: PathBuf,
    format: InputFormat,
    /// The last timestamp seen (pcapng simple packets carry none).
    last_timestamp: Duration,
    /// The `if_tsresol` of each pcapng interface of the current section.
    resolutions: Vec<u8>,
}

/// The default `if_tsresol`: microseconds.
const PCAPNG_MICROSECONDS: u8 = 6;

/// A pcapng timestamp of `units` at resolution `tsresol` (10^-n seconds, or
/// 2^-n with the high bit set). pcap-file hands the raw units over as
/// nanoseconds.
fn pcapng_time(units: u64, tsresol: u8) -> Duration {
    let units = u128::from(units);
    let nanos = if tsresol & 0x80 != 0 {
        (units * 1_000_000_000) >> u32::from(tsresol & 0x7f).min(127)
    } else if tsresol <= 9 {
        units * 10u128.pow(9 - u32::from(tsresol))
    } else {
        units / 10u128.pow(u32::from(tsresol - 9).min(38))
    };
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

enum InputFormat {
    Pcap(PcapReader<BufReader<File>>),
    PcapNg(PcapNgReader<BufReader<File>>),
}

impl InputReader {
    fn open(path: &Path) -> Result<InputReader, ReplayError> {
        let error = |reason: String| ReplayError::Input {
            path: path.to_owned(),
            reason,
        };
        let file = || {
            File::open(path)
                .map(BufReader::new)
                .map_err(|err| error(err.to_string()))
        };
        let format = match PcapReader::new(file()?) {
            Ok(reader) => {
                let link = reader.header().datalink;
                if link != DataLink::ETHERNET {
                    return Err(error(format!(
                        "link type {link:?}: only Ethernet captures can be replayed"
                    )));
                }
                InputFormat::Pcap(reader)
            }
            Err(_) => InputFormat::PcapNg(
                PcapNgReader::new(file()?).map_err(|err| error(format!("neither pcap nor pcapng: {err}")))?,
            ),
        };
        Ok(InputReader {
            path: path.to_owned(),
            format,
            last_timestamp: Duration::ZERO,
            resolutions: Vec::new(),
        })
    }

    fn error(&self, reason: String) -> ReplayError {
        ReplayError::Input {
            path: self.path.clone(),
            reason,
        }
    }

    fn next_frame(&mut self) -> Option<Result<InputFrame, ReadError>> {
        let frame = match &mut self.format {
            InputFormat::Pcap(reader) => match reader.next_packet()? {
                Ok(packet) => InputFrame {
                    timestamp: packet.timestamp,
                    len: packet.data.len(),
                },
                Err(err) => return Some(Err(err.into())),
            },
            InputFormat::PcapNg(reader) => loop {
                let block = match reader.next_block()? {
                    Ok(block) => block,
                    Err(err) => return Some(Err(err.into())),
                };
                let resolution = |interface: u32| {
                    usize::try_from(interface)
                        .ok()
                        .and_then(|index| self.resolutions.get(index).copied())
                        .unwrap_or(PCAPNG_MICROSECONDS)
                };
                match block {
                    Block::SectionHeader(_) => self.resolutions.clear(),
                    Block::InterfaceDescription(interface) if interface.linktype != DataLink::ETHERNET => {
                        return Some(Err(ReadError::Bad(format!(
                            "link type {:?}: only Ethernet captures can be replayed",
                            interface.linktype
                        ))));
                    }
                    Block::InterfaceDescription(interface) => {
                        let tsresol = interface.options.iter().find_map(|option| match option {
                            InterfaceDescriptionOption::IfTsResol(tsresol) => Some(*tsresol),
                            _ => None,
                        });
                        self.resolutions.push(tsresol.unwrap_or(PCAPNG_MICROSECONDS));
                    }
                    Block::EnhancedPacket(packet) => {
                        let units = u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX);
                        break InputFrame {
                            timestamp: pcapng_time(units, resolution(packet.interface_id)),
                            len: packet.data.len(),
                        };
                    }
                    Block::SimplePacket(packet) => {
                        break InputFrame {
                            timestamp: self.last_timestamp,
                            len: packet.data.len(),
                        }
                    }
                    Block::Packet(packet) => {
                        break InputFrame {
                            timestamp: pcapng_time(packet.timestamp, resolution(u32::from(packet.interface_id))),
                            len: packet.data.len(),
                        };
                    }
                    _ => {}
                }
            },
        };
        self.last_timestamp = frame.timestamp;
        Some(Ok(frame))
    }
}

/// An output capture: the pcap driver writes a temporary file next to it,
/// which [`RawOutput::finish`] rewrites into it with the input's
/// timestamps. The temporary file is removed in any case.
struct RawOutput {
    path: PathBuf,
    raw: PathBuf,
    devarg: String,
}

impl RawOutput {
    /// Creates `path` (so an unwritable output fails before EAL starts, and
    /// by name) and chooses the temporary file.
    fn prepare(path: &Path) -> Result<RawOutput, ReplayError> {
        devarg_path(path)?;
        File::create(path).map_err(|err| ReplayError::Output {
            path: path.to_owned(),
            reason: format!("cannot write the output capture: {err}"),
        })?;
        let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
        let raw = path.with_file_name(format!(".{name}.tlsgate-replay-{}", std::process::id()));
        let devarg = devarg_path(&raw)?;
        Ok(RawOutput {
            path: path.to_owned(),
            raw,
            devarg,
        })
    }

    /// Writes the driver's frames to the output with the timestamps of the
    /// input frames they answer (`sent`, see [`SentLog`]), shifted to
    /// `start` if given; returns how many.
    fn finish(&self, input: &Path, sent: &[(u64, u64)], start: Option<Duration>) -> Result<u64, ReplayError> {
        let raw_error = |reason: String| ReplayError::Output {
            path: self.raw.clone(),
            reason,
        };
        let out_error = |err: PcapError| ReplayError::Output {
            path: self.path.clone(),
            reason: format!("cannot write the output capture: {err}"),
        };
        let raw = File::open(&self.raw).map_err(|err| raw_error(err.to_string()))?;
        let mut raw = PcapReader::new(BufReader::new(raw)).map_err(|err| raw_error(err.to_string()))?;
        let header = PcapHeader {
            ts_resolution: TsResolution::NanoSecond,
            ..raw.header()
        };
        let file = File::create(&self.path).map_err(|err| out_error(PcapError::IoError(err)))?;
        let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), header).map_err(out_error)?;
        let mut input = InputTimes::open(input)?;
        let mut answered = sent.iter().peekable();
        let mut written = 0u64;
        while let Some(packet) = raw.next_packet() {
            let packet = packet.map_err(|err| raw_error(err.to_string()))?;
            written += 1;
            while answered.next_if(|(sent, _)| *sent < written).is_some() {}
            let read = answered.peek().map(|(_, read)| *read);
            let original = input.time_of(read)?;
            let timestamp = match start {
                Some(start) => start + original.saturating_sub(input.first),
                None => original,
            };
            writer
                .write_packet(&PcapPacket::new(timestamp, packet.orig_len, &packet.data))
                .map_err(out_error)?;
        }
        writer
            .into_writer()
            .into_inner()
            .map_err(|err| out_error(PcapError::IoError(err.into_error())))?;
        Ok(written)
    }
}

impl Drop for RawOutput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.raw);
    }
}

/// The input's timestamps, read forward as output frames ask for them.
struct InputTimes {
    reader: InputReader,
    read: u64,
    current: Duration,
    first: Duration,
}

impl InputTimes {
    fn open(path: &Path) -> Result<InputTimes, ReplayError> {
        let mut times = InputTimes {
            reader: InputReader::open(path)?,
            read: 0,
            current: Duration::ZERO,
            first: Duration::ZERO,
        };
        times.time_of(Some(1))?;
        times.first = times.current;
        Ok(times)
    }

    /// The timestamp of input frame `frame` (counted from 1; `None`: the
    /// last one read so far). Frames are asked for in order.
    fn time_of(&mut self, frame: Option<u64>) -> Result<Duration, ReplayError> {
        let wanted = frame.unwrap_or(self.read).max(1);
        while self.read < wanted {
            match self.reader.next_frame() {
                Some(Ok(frame)) => {
                    self.read += 1;
                    self.current = frame.timestamp;
                }
                // Past the readable frames: keep the last time.
                Some(Err(_)) | None => break,
            }
        }
        Ok(self.current)
    }
}

/// A path as a DPDK device argument: commas would split the argument list.
fn devarg_path(path: &Path) -> Result<String, ReplayError> {
    let text = path.to_str().ok_or_else(|| ReplayError::Output {
        path: path.to_owned(),
        reason: "is not valid UTF-8".into(),
    })?;
    if text.contains(',') || text.is_empty() {
        return Err(ReplayError::Output {
            path: path.to_owned(),
            reason: "a capture path for the pcap driver must not be empty or contain ','".into(),
        });
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        assert_eq!(pcapng_time(1_500_000, PCAPNG_MICROSECONDS), Duration::from_millis(1500));
        assert_eq!(pcapng_time(1_500_000_000, 9), Duration::from_millis(1500));
        assert_eq!(pcapng_time(3, 0), Duration::from_secs(3));
        assert_eq!(pcapng_time(1 << 20, 0x80 | 20), Duration::from_secs(1));
    }
}
