//! The intercepted port in the namespace lab, as an attacker would try to
//! get past it with real packets: UDP to the origin's 443 (QUIC) must not
//! reach the origin by default, and neither may a TCP segment with a bad
//! checksum (the lab's veths have their offloads off, so the checksums on
//! the wire are real). tcpdump in tg-srv proves each capture works with a
//! packet that must arrive. Needs root; run through the lab's flock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::lab::{Appliance, Capture, Lab, CLI, SRV, SRV_V4, SRV_V6};
use common::{read_pcap, repo, Scratch};

/// lab.toml plus interception of 443 in splice mode (no CA needed: what
/// is tested happens before any TLS).
fn config(scratch: &Scratch) -> PathBuf {
    let mut config = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("lab.toml");
    config.push_str("\n[intercept]\ntcp_ports = [443]\nmode = \"splice\"\n");
    let path = scratch.path("hardening.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// Waits until the capture in `file` holds a frame `wanted` accepts.
fn await_frame(file: &Path, wanted: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // tcpdump -U writes whole records; the header alone is 24 bytes.
        if std::fs::metadata(file).is_ok_and(|meta| meta.len() > 24) && read_pcap(file).iter().any(|f| wanted(f)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The TCP or UDP (source, destination) ports of an untagged IPv4 or IPv6 frame.
fn ports(frame: &[u8]) -> Option<(u16, u16)> {
    let l4 = match frame.get(12..14)? {
        [0x08, 0x00] => 14 + usize::from(frame.get(14)? & 0x0f) * 4,
        [0x86, 0xdd] => 14 + 40,
        _ => return None,
    };
    let bytes = frame.get(l4..l4 + 4)?;
    Some((
        u16::from_be_bytes([bytes[0], bytes[1]]),
        u16::from_be_bytes([bytes[2], bytes[3]]),
    ))
}

/// Sends one UDP datagram from the client namespace (bash's /dev/udp).
fn send_udp(lab: &Lab, address: &str, port: u16) {
    lab.ok(
        CLI,
        "bash",
        &["-c", &format!("echo quic-initial > /dev/udp/{address}/{port}")],
    );
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn udp_to_the_origins_443_never_reaches_it_while_other_udp_does() {
    let lab = Lab::up();
    let scratch = Scratch::new("udp-block");
    let appliance = Appliance::start(&lab, &scratch, &config(&scratch));
    let (blocked, other) = (scratch.path("udp-443.pcap"), scratch.path("udp-4443.pcap"));
    let blocked_capture = Capture::start(&lab, SRV, "srv0", &blocked, "udp port 443");
    let other_capture = Capture::start(&lab, SRV, "srv0", &other, "udp port 4443");
    send_udp(&lab, SRV_V4, 443);
    send_udp(&lab, SRV_V6, 443);
    // Sent after the others through the same worker: once it arrived, they
    // would have too.
    send_udp(&lab, SRV_V4, 4443);
    let arrived = await_frame(&other, |frame| ports(frame).is_some_and(|(_, dst)| dst == 4443));
    blocked_capture.stop();
    other_capture.stop();
    assert!(arrived, "the datagram to port 4443 reached the origin");
    let leaked = read_pcap(&blocked);
    assert!(
        leaked.is_empty(),
        "{} datagrams to 443 reached the origin",
        leaked.len()
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    let client = &report["ports"][0];
    assert_eq!(client["udp_blocked"], 2, "{report}");
    assert_eq!(client["dropped"], 2, "{report}");
}

/// Sends one TCP SYN from the client namespace with scapy, from `sport`
/// to the origin's 443, with its checksum as computed or made wrong.
fn send_syn(lab: &Lab, sport: u16, bad_checksum: bool) {
    let checksum = if bad_checksum { "0xdead" } else { "None" };
    let script = format!(
        "from scapy.all import IP, TCP, send\n\
         send(IP(dst='{SRV_V4}')/TCP(sport={sport}, dport=443, flags='S', seq=1000, chksum={checksum}), verbose=0)\n"
    );
    lab.ok(CLI, "/usr/bin/python3", &["-c", &script]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn a_segment_with_a_bad_checksum_never_reaches_the_origin() {
    let lab = Lab::up();
    let scratch = Scratch::new("bad-checksum");
    let appliance = Appliance::start(&lab, &scratch, &config(&scratch));
    let file = scratch.path("tcp-443.pcap");
    let capture = Capture::start(&lab, SRV, "srv0", &file, "tcp port 443");
    let (bad, good) = (40_001, 40_002);
    send_syn(&lab, bad, true);
    // The good SYN is intercepted: the appliance's own SYN with the
    // client's ports reaches the origin, proving the capture works.
    send_syn(&lab, good, false);
    let arrived = await_frame(&file, |frame| ports(frame) == Some((good, 443)));
    capture.stop();
    assert!(arrived, "the good SYN's connection reached the origin");
    let leaked = read_pcap(&file)
        .iter()
        .filter(|frame| ports(frame) == Some((bad, 443)))
        .count();
    assert_eq!(leaked, 0, "frames with the bad checksum's ports reached the origin");
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["ports"][0]["invalid_dropped"], 1, "{report}");
}
