//! Replays every capture in pcap-fixtures/ through `tlsgate replay` (DPDK's
//! pcap driver, the real engine) and checks the bridged output frame for
//! frame and the counters against pcap-fixtures/EXPECTED.toml.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{output, read_pcap, repo, text, tlsgate, Scratch};
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

fn replay(fixture: &str, scratch: &Scratch) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, serde_json::Value) {
    let input = repo().join("pcap-fixtures").join(fixture);
    let out = scratch.path(&format!("{fixture}.server.pcap"));
    let client_out = scratch.path(&format!("{fixture}.client.pcap"));
    let report = scratch.path(&format!("{fixture}.json"));
    let result = output(
        tlsgate()
            .arg("replay")
            .arg("--config")
            .arg(repo().join("configs/lab.toml"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .arg("--client-output")
            .arg(&client_out)
            .arg("--report-json")
            .arg(&report),
    );
    assert!(
        result.status.success(),
        "replay of {fixture} failed:\n{}",
        text(&result.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    (read_pcap(&out), read_pcap(&client_out), report)
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
