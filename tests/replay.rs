//! Replays every capture in pcap-fixtures/ through `tlsgate replay` (DPDK's
//! pcap driver, the real engine) and checks the bridged output frame for
//! frame and the counters against pcap-fixtures/EXPECTED.toml.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{output, read_pcap, read_pcap_records, repo, text, tlsgate, Scratch};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Expected {
    fixtures: BTreeMap<String, Expectation>,
}

#[derive(Debug, Deserialize)]
struct Expectation {
    frames_in: u64,
    frames_out: u64,
    malformed: u64,
    dropped: u64,
}

/// Written independently of the engine: a frame is a runt when it ends
/// before its Ethernet header, counting up to two VLAN tags.
fn is_runt(frame: &[u8]) -> bool {
    let is_tag = |at: usize| matches!(frame.get(at..at + 2), Some([0x81, 0x00] | [0x88, 0xa8] | [0x91, 0x00]));
    let mut header = 14;
    for tag_at in [12, 16] {
        if frame.len() >= tag_at + 2 && is_tag(tag_at) {
            header += 4;
        } else {
            break;
        }
    }
    frame.len() < header
}

/// `tlsgate replay` of `input` with the lab config into `output` and
/// `OUTPUT.client.pcap`, the JSON report in `OUTPUT.json`.
fn run_replay(input: &Path, output_path: &Path, extra: &[&str]) -> (Output, PathBuf, PathBuf) {
    let client_out = output_path.with_extension("client.pcap");
    let report = output_path.with_extension("json");
    let result = output(
        tlsgate()
            .arg("replay")
            .arg("--config")
            .arg(repo().join("configs/lab.toml"))
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output_path)
            .arg("--client-output")
            .arg(&client_out)
            .arg("--report-json")
            .arg(&report)
            .args(extra),
    );
    (result, client_out, report)
}

fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("report")).expect("json")
}

fn replay(fixture: &str, scratch: &Scratch) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, serde_json::Value) {
    let input = repo().join("pcap-fixtures").join(fixture);
    let out = scratch.path(&format!("{fixture}.server.pcap"));
    let (result, client_out, report) = run_replay(&input, &out, &[]);
    assert!(
        result.status.success(),
        "replay of {fixture} failed:\n{}",
        text(&result.stderr)
    );
    (read_pcap(&out), read_pcap(&client_out), read_report(&report))
}

#[test]
fn every_fixture_replays_as_expected() {
    let expected: Expected =
        toml::from_str(&std::fs::read_to_string(repo().join("pcap-fixtures/EXPECTED.toml")).expect("EXPECTED.toml"))
            .expect("parse");
    let on_disk: Vec<String> = std::fs::read_dir(repo().join("pcap-fixtures"))
        .expect("fixtures dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".pcap"))
        .collect();
    for name in &on_disk {
        assert!(
            expected.fixtures.contains_key(name),
            "{name} has no expectation in EXPECTED.toml"
        );
    }
    assert!(expected.fixtures.len() >= 8, "fixtures: {:?}", expected.fixtures.keys());

    let scratch = Scratch::new("replay");
    for (fixture, want) in &expected.fixtures {
        let input = read_pcap(&repo().join("pcap-fixtures").join(fixture));
        assert_eq!(input.len() as u64, want.frames_in, "{fixture}: frames in the file");
        let (server_out, client_out, report) = replay(fixture, &scratch);

        let bridged: Vec<Vec<u8>> = input.iter().filter(|f| !is_runt(f)).cloned().collect();
        assert_eq!(server_out.len() as u64, want.frames_out, "{fixture}: frames out");
        assert!(server_out == bridged, "{fixture}: bridged frames differ from the input");
        assert!(client_out.is_empty(), "{fixture}: nothing may leave the client port");

        let client = &report["ports"][0];
        let server = &report["ports"][1];
        assert_eq!(client["rx"], want.frames_in, "{fixture}: {report}");
        assert_eq!(client["bridged"], want.frames_out, "{fixture}: {report}");
        assert_eq!(client["dropped"], want.dropped, "{fixture}: {report}");
        assert_eq!(client["malformed"], want.malformed, "{fixture}: {report}");
        assert_eq!(server["tx"], want.frames_out, "{fixture}: {report}");
        assert_eq!(server["rx"], 0, "{fixture}: {report}");
    }
}

#[test]
fn padded_minimum_frames_cross_byte_for_byte() {
    // The padding of 60-byte frames carrying 1-5 byte TCP payloads must be
    // neither stripped nor grown by the bridge.
    let scratch = Scratch::new("padded");
    let input = read_pcap(&repo().join("pcap-fixtures/tcp-padded.pcap"));
    assert!(input.iter().filter(|f| f.len() == 60).count() >= 5);
    let (server_out, _, _) = replay("tcp-padded.pcap", &scratch);
    assert!(server_out == input);
}

#[test]
fn replay_is_deterministic() {
    let scratch = Scratch::new("determinism");
    let (first, _, first_report) = replay("malformed.pcap", &scratch);
    let (second, _, second_report) = replay("malformed.pcap", &scratch);
    assert!(first == second);
    assert_eq!(
        first_report["ports"][0]["malformed"],
        second_report["ports"][0]["malformed"]
    );
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let scratch = Scratch::new("bad-input");
    let garbage = scratch.path("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").expect("write");
    let result = output(
        tlsgate()
            .args(["replay", "--config"])
            .arg(repo().join("configs/lab.toml"))
            .arg("--input")
            .arg(&garbage)
            .arg("--output")
            .arg(scratch.path("out.pcap")),
    );
    assert!(!result.status.success());
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("input capture") && stderr.contains("garbage.pcap"),
        "{stderr}"
    );

    let result = output(
        tlsgate()
            .args(["replay", "--config"])
            .arg(repo().join("configs/lab.toml"))
            .arg("--input")
            .arg(repo().join("pcap-fixtures/arp.pcap"))
            .arg("--output")
            .arg("/nonexistent-dir/out.pcap"),
    );
    assert!(!result.status.success());
    let stderr = text(&result.stderr);
    assert!(stderr.contains("/nonexistent-dir/out.pcap"), "{stderr}");
}

/// A pcap of `frames` (Ethernet, microsecond timestamps) at `path`.
fn write_pcap(path: &Path, frames: &[(Duration, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create");
    let mut writer = pcap_file::pcap::PcapWriter::new(file).expect("pcap header");
    for (timestamp, data) in frames {
        writer
            .write_packet(&pcap_file::pcap::PcapPacket::new(*timestamp, data.len() as u32, data))
            .expect("write");
    }
}

/// An Ethernet frame of `len` bytes with an unassigned ethertype.
fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5];
    frame.resize(len, fill);
    frame
}

#[test]
fn an_output_that_is_the_input_is_refused_and_the_input_kept() {
    let scratch = Scratch::new("same-file");
    let input = scratch.path("a.pcap");
    std::fs::copy(repo().join("pcap-fixtures/tcp-session.pcap"), &input).expect("copy");
    let original = std::fs::read(&input).expect("read");
    std::os::unix::fs::symlink(&input, scratch.path("link.pcap")).expect("symlink");
    std::fs::hard_link(&input, scratch.path("hard.pcap")).expect("hard link");
    for (output_path, client) in [
        ("./a.pcap", false),
        ("link.pcap", false),
        ("hard.pcap", false),
        ("./link.pcap", true),
    ] {
        let mut command = tlsgate();
        command
            .current_dir(&scratch.0)
            .args(["replay", "--config"])
            .arg(repo().join("configs/lab.toml"))
            .args(["--input", "a.pcap"]);
        if client {
            command.args(["--output", "out.pcap", "--client-output", output_path]);
        } else {
            command.args(["--output", output_path]);
        }
        let result = output(&mut command);
        let stderr = text(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{output_path}: {stderr}");
        assert!(
            stderr.contains("is the input capture a.pcap"),
            "{output_path}: {stderr}"
        );
        assert!(
            std::fs::read(&input).expect("read") == original,
            "{output_path}: the input changed"
        );
    }
}

#[test]
fn outputs_keep_the_input_timestamps() {
    let scratch = Scratch::new("timestamps");
    let fixture = repo().join("pcap-fixtures/tcp-session.pcap");
    let input = read_pcap_records(&fixture);
    let spacing = |records: &[common::PcapRecord]| -> Vec<Duration> {
        records
            .windows(2)
            .map(|pair| pair[1].timestamp - pair[0].timestamp)
            .collect()
    };
    assert!(
        spacing(&input).iter().any(|gap| *gap > Duration::ZERO),
        "the fixture has spacing"
    );

    let original = scratch.path("original.pcap");
    let (result, _, _) = run_replay(&fixture, &original, &["--timestamps", "original"]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    let times: Vec<Duration> = read_pcap_records(&original).iter().map(|r| r.timestamp).collect();
    assert_eq!(times, input.iter().map(|r| r.timestamp).collect::<Vec<_>>());

    let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock");
    let relative = scratch.path("relative.pcap");
    let (result, _, _) = run_replay(&fixture, &relative, &[]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    let after = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock");
    let output_records = read_pcap_records(&relative);
    assert_eq!(spacing(&output_records), spacing(&input), "the input's spacing");
    let first = output_records[0].timestamp;
    assert!(
        before <= first && first <= after,
        "starts with the replay: {first:?} not in {before:?}..{after:?}"
    );
}

#[test]
fn frames_longer_than_an_mbuf_are_counted() {
    let scratch = Scratch::new("oversize");
    let input = scratch.path("jumbo.pcap");
    let second = Duration::from_secs(1_700_000_000);
    write_pcap(
        &input,
        &[
            (second, frame(60, 1)),
            (second + Duration::from_millis(1), frame(65_000, 2)),
            (second + Duration::from_millis(2), frame(9_000, 3)),
            (second + Duration::from_millis(3), frame(60, 4)),
        ],
    );
    let out = scratch.path("out.pcap");
    let (result, _, report) = run_replay(&input, &out, &[]);
    let stderr = text(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let replay = &read_report(&report)["replay"];
    assert_eq!(replay["oversize"], 2, "{replay}");
    assert_eq!(replay["cut_in_output"], 1, "{replay}");
    assert!(stderr.contains("2 frame(s) longer than one mbuf"), "{stderr}");
    let written = read_pcap_records(&out);
    assert_eq!(written.len(), 4);
    assert_eq!(written[1].orig_len, 65_000, "the record keeps the frame's length");
    assert!(
        written[2].data == frame(9_000, 3),
        "a chain the driver can write crosses whole"
    );
}

#[test]
fn a_capture_cut_inside_its_last_record_replays_the_rest() {
    let scratch = Scratch::new("cut-short");
    let fixture = repo().join("pcap-fixtures/icmp.pcap");
    let whole = std::fs::read(&fixture).expect("fixture");
    let frames = read_pcap(&fixture);
    let input = scratch.path("cut.pcap");
    std::fs::write(&input, &whole[..whole.len() - 10]).expect("write");
    let out = scratch.path("out.pcap");
    let (result, _, report) = run_replay(&input, &out, &[]);
    let stderr = text(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("cut short") && stderr.contains("WARN"), "{stderr}");
    assert!(
        read_pcap(&out) == frames[..frames.len() - 1],
        "the readable frames, unchanged"
    );
    let report = read_report(&report);
    assert_eq!(report["replay"]["frames_in"], frames.len() - 1, "{report}");
    assert_eq!(report["ports"][0]["rx"], frames.len() - 1, "{report}");
}
