//! Offline replay: the same bridge engine driven over DPDK's pcap driver.
//! The input capture enters on the client port; what leaves the server port
//! is written to the output capture (and, optionally, what leaves the client
//! port to a second one). Replay ends when every input frame has been read.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use thiserror::Error;

use crate::config::{Config, Device};
use crate::counters::Report;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::engine::Side;
use crate::worker::TimedPoller;

/// How long replay waits for the pcap driver to deliver the next frame
/// before it gives up on frames the driver could not read.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a replay failed.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("input capture {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the pcap driver delivered {received} of the {expected} frames of the input capture")]
    Incomplete { received: u64, expected: u64 },
}

/// What a replay produced.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    /// Frames in the input capture.
    pub frames_in: u64,
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
/// settings (its `[ports]` are replaced by pcap devices; one worker).
pub fn replay(config: &Config, files: ReplayFiles<'_>) -> Result<ReplayOutcome, ReplayError> {
    let expected = count_frames(files.input)?;
    let input = devarg_path(files.input)?;
    let output = prepare_output(files.output)?;
    let client_output = match files.client_output {
        Some(path) => prepare_output(path)?,
        None => "/dev/null".to_owned(),
    };
    let devices = [
        Device::Virtual {
            name: "net_pcap0".into(),
            spec: format!("net_pcap0,rx_pcap={input},tx_pcap={client_output}"),
        },
        Device::Virtual {
            name: "net_pcap1".into(),
            spec: format!("net_pcap1,tx_pcap={output}"),
        },
    ];
    let mut config = config.clone();
    config.dataplane.workers = 1;
    let mut dataplane = Dataplane::open(&config, Some(devices.to_vec()))?;
    let Some((mut engine, worker_stats, max_sleep)) = dataplane.take_first_worker() else {
        return Err(ReplayError::Dataplane(DataplaneError::Device(
            "no queue for replay".into(),
        )));
    };
    let mut poller = TimedPoller::new(&worker_stats, max_sleep);

    let mut last_progress = Instant::now();
    loop {
        let received = dataplane.report().ports[Side::Client.index()].totals.rx;
        if received >= expected {
            break;
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
    drop(engine);
    let report = dataplane.report();
    // Closing the devices flushes and closes the output captures.
    drop(dataplane);

    let received = report.ports[Side::Client.index()].totals.rx;
    if received != expected {
        return Err(ReplayError::Incomplete { received, expected });
    }
    Ok(ReplayOutcome {
        frames_in: expected,
        report,
    })
}

/// Number of frames in a pcap or pcapng capture of Ethernet frames.
pub fn count_frames(path: &Path) -> Result<u64, ReplayError> {
    let input_error = |reason: String| ReplayError::Input {
        path: path.to_owned(),
        reason,
    };
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|err| input_error(err.to_string()))
    };
    if let Ok(mut reader) = PcapReader::new(open()?) {
        let link = reader.header().datalink;
        if link != DataLink::ETHERNET {
            return Err(input_error(format!(
                "link type {link:?}: only Ethernet captures can be replayed"
            )));
        }
        let mut frames = 0;
        while let Some(packet) = reader.next_packet() {
            packet.map_err(|err| input_error(format!("frame {}: {err}", frames + 1)))?;
            frames += 1;
        }
        return Ok(frames);
    }
    let mut reader =
        PcapNgReader::new(open()?).map_err(|err| input_error(format!("neither pcap nor pcapng: {err}")))?;
    let mut frames = 0;
    while let Some(block) = reader.next_block() {
        match block.map_err(|err| input_error(format!("block after frame {frames}: {err}")))? {
            Block::InterfaceDescription(interface) if interface.linktype != DataLink::ETHERNET => {
                return Err(input_error(format!(
                    "link type {:?}: only Ethernet captures can be replayed",
                    interface.linktype
                )));
            }
            Block::EnhancedPacket(_) | Block::SimplePacket(_) | Block::Packet(_) => frames += 1,
            _ => {}
        }
    }
    Ok(frames)
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

/// Checks that `path` can be written (the pcap driver's own error would not
/// say which file) and returns it as a device argument.
fn prepare_output(path: &Path) -> Result<String, ReplayError> {
    let text = devarg_path(path)?;
    File::create(path).map_err(|err| ReplayError::Output {
        path: path.to_owned(),
        reason: format!("cannot write the output capture: {err}"),
    })?;
    Ok(text)
}
