//! Helpers shared by the system tests: paths into the repository, the
//! `tlsgate` binary, and reading captures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod lab;
pub mod lossy;
pub mod starttls;
pub mod terminate;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's top-level folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn tlsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlsgate"))
}

/// Runs `tlsgate check --config path`, asserting that it accepts the
/// configuration, and returns what it printed.
pub fn check_config(path: &Path) -> String {
    let checked = output(tlsgate().args(["check", "--config"]).arg(path));
    assert!(
        checked.status.success(),
        "check: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    text(&checked.stdout)
}

/// Runs `command`, returning its output; panics only if it cannot start.
pub fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits up to `within` for a line of the log file `log` containing
/// `needle` and returns it; panics with the log's text when none came.
pub fn await_log_line(log: &Path, needle: &str, within: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = logged.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {needle:?} in {}:\n{logged}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every frame of a classic pcap file, in order.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    read_pcap_records(path).into_iter().map(|record| record.data).collect()
}

/// One record of a classic pcap file.
pub struct PcapRecord {
    pub timestamp: std::time::Duration,
    /// The frame's length on the wire (may exceed `data`).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Every record of a classic pcap file, in order.
pub fn read_pcap_records(path: &Path) -> Vec<PcapRecord> {
    let file = File::open(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut records = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("pcap record");
        records.push(PcapRecord {
            timestamp: packet.timestamp,
            orig_len: packet.orig_len,
            data: packet.data.into_owned(),
        });
    }
    records
}

/// Writes to `path` a configuration whose ports are DPDK null devices
/// (`net_null0`, `net_null1`): `tlsgate run` starts on it without a lab,
/// with `workers` workers on lcores 0-1.
pub fn write_null_ports_config(path: &Path, workers: u8) {
    let config = format!(
        r#"
[dataplane]
eal_args = ["--no-huge", "-m", "256", "--no-shconf", "--no-pci", "-l", "0-1", "--log-level=lib.eal:error"]
workers = {workers}
[ports.client]
device = "net_null0"
[ports.server]
device = "net_null1"
"#
    );
    std::fs::write(path, config).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tlsgate-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
