//! The inspection port pair in the namespace lab (scripts/lab-up.sh with the
//! tg-box namespace): `tlsgate run` with four af_packet ports sends the
//! plaintext of every intercepted HTTPS connection through a black box
//! (scripts/inspect-box.sh) and back. Real clients (curl) and a real origin
//! (nginx); the boxes are a Linux bridge with tcpflow recording, and
//! tests/lab/blockbox.py resetting connections by content. Needs root; run
//! by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{
    await_records, box_dir, curl, every_download_reached, inspect_box, inspect_config, inspect_config_with,
    parallel_downloads, Appliance, Lab, Origin,
};
use common::{output, repo, text, Scratch};

const RESOLVE: &str = "origin.test:443:198.18.0.2";

/// Files of the recorder whose content satisfies `matches`, waiting up to 5 s.
fn recorded(flows: &Path, matches: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<Vec<u8>> = std::fs::read_dir(flows)
            .map(|dir| {
                dir.flatten()
                    .filter_map(|entry| std::fs::read(entry.path()).ok())
                    .filter(|bytes| matches(bytes))
                    .collect()
            })
            .unwrap_or_default();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_recorder_on_the_port_pair_sees_the_https_plaintext_and_the_capture_dissects_as_http() {
    let lab = Lab::up();
    let scratch = Scratch::new("inspect-record");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = inspect_config(&scratch, &origin, "fail_closed");
    let dir = box_dir(&scratch);
    inspect_box(&["bridge", &dir]);
    let appliance = Appliance::start(&lab, &scratch, &config);

    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let body = scratch.path("body.bin");
    let result = curl(
        &lab,
        &ca,
        &[
            "--http1.1",
            "--resolve",
            RESOLVE,
            "-o",
            body.to_str().unwrap(),
            "https://origin.test/file.bin",
        ],
    );
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    assert!(std::fs::read(&body).unwrap() == file, "the download is byte-exact");

    // The recorder (tcpflow, a stock tool) has the exact plaintext both ways.
    let flows = scratch.path("box/flows");
    let requests = recorded(&flows, |bytes| bytes.starts_with(b"GET /file.bin HTTP/1.1\r\n"));
    assert_eq!(requests.len(), 1, "one request recorded in {}", flows.display());
    assert!(contains(&requests[0], b"\r\nHost: origin.test\r\n"));
    let responses = recorded(&flows, |bytes| {
        bytes.starts_with(b"HTTP/1.1 200 OK\r\n") && bytes.ends_with(&file)
    });
    assert_eq!(responses.len(), 1, "one response recorded, ending with the whole body");

    // A second request so the log and capture hold two sessions (HTTP/1.1:
    // an HTTP/2 plaintext on port 80 would need tshark to be told it is h2).
    let result = curl(
        &lab,
        &ca,
        &["--http1.1", "--resolve", RESOLVE, "https://origin.test/index.html"],
    );
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    let records = await_records(&scratch, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["inspection"], "inspected", "{record}");
        assert_eq!(record["decision"], "intercept", "{record}");
    }
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["inspected"], 2, "{report}");
    assert!(report["capture"]["frames"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["capture"]["frames_dropped"], 0);
    // Memory accounting at shutdown: TLS state is dropped as soon as both
    // directions closed, the process is measured.
    assert_eq!(report["tcp"]["tls_sessions_live"], 0, "{report}");
    // Legs in TIME-WAIT hold at most their committed pages (buffers are
    // committed lazily, 4 MiB per ring at most, and counted as committed).
    let flows = report["tcp"]["flows_live"].as_u64().unwrap();
    let committed = report["tcp"]["socket_buffer_bytes"].as_u64().unwrap();
    assert!(
        committed <= flows * 2 * (4 << 20),
        "committed socket buffers are counted within capacity: {report}"
    );
    assert!(report["rss_bytes"].as_u64().unwrap() > 1 << 20, "{report}");
    inspect_box(&["stop", &dir]);

    // The decrypted capture opens in tshark as HTTP on port 80, and the
    // object tshark extracts is the file, byte for byte.
    let capture = scratch.path("decrypted.pcap");
    let fields = output(Command::new("tshark").args(["-n", "-r"]).arg(&capture).args([
        "-Y",
        "http",
        "-T",
        "fields",
        "-e",
        "tcp.dstport",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
    ]));
    let fields = text(&fields.stdout);
    assert!(fields.contains("80\t/file.bin"), "{fields}");
    assert!(fields.contains("80\t/index.html"), "{fields}");
    assert_eq!(fields.matches("\t200").count(), 2, "{fields}");
    let objects = scratch.path("objects");
    let exported = output(
        Command::new("tshark")
            .args(["-n", "-r"])
            .arg(&capture)
            .args(["--export-objects"])
            .arg(format!("http,{}", objects.display())),
    );
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    assert!(
        std::fs::read(objects.join("file.bin")).expect("tshark exported file.bin") == file,
        "the file tshark extracts from the decrypted capture is byte-exact"
    );
    let warnings = output(Command::new("tshark").args(["-n", "-r"]).arg(&capture).args([
        "-Y",
        "_ws.expert.severity >= warning && !tcp.flags.reset",
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]));
    assert!(
        text(&warnings.stdout).trim().is_empty(),
        "tshark warnings: {}",
        text(&warnings.stdout)
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_box_that_resets_by_content_blocks_the_request_promptly_and_the_log_says_so() {
    let lab = Lab::up();
    let scratch = Scratch::new("inspect-block");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = inspect_config(&scratch, &origin, "fail_closed");
    let dir = box_dir(&scratch);
    inspect_box(&["block", &dir, "EVIL-MARKER", "reset"]);
    let appliance = Appliance::start(&lab, &scratch, &config);

    let ok = curl(&lab, &ca, &["--resolve", RESOLVE, "https://origin.test/index.html"]);
    assert!(ok.status.success(), "a clean request passes: {}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("hello from origin.test"));

    let started = Instant::now();
    // HTTP/1.1: with HTTP/2 the path is HPACK-coded, and a box matching
    // bytes would have to decode it first.
    let blocked = curl(
        &lab,
        &ca,
        &[
            "--http1.1",
            "--resolve",
            RESOLVE,
            "https://origin.test/index.html?q=EVIL-MARKER",
        ],
    );
    let took = started.elapsed();
    assert!(
        !blocked.status.success(),
        "the marked request fails: {}\nbox log: {}",
        text(&blocked.stdout),
        std::fs::read_to_string(scratch.path("box/blockbox.log")).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(3), "promptly, not by a timeout: {took:?}");
    let message = text(&blocked.stderr);
    assert!(
        message.contains("reset") || message.contains("Recv failure") || message.contains("SSL_read"),
        "curl: {message}"
    );
    let log = std::fs::read_to_string(scratch.path("box/blockbox.log")).expect("blockbox log");
    assert!(log.lines().any(|line| line.contains(" reset tcp4 ")), "{log}");

    let records = await_records(&scratch, 2);
    let blocked: Vec<_> = records
        .iter()
        .filter(|record| record["ended"] == "reset by the inspector")
        .collect();
    assert_eq!(blocked.len(), 1, "{records:?}");
    assert!(
        blocked[0]["inspection"]
            .as_str()
            .unwrap()
            .starts_with("blocked by the inspector"),
        "{}",
        blocked[0]
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["inspect_blocked"], 1, "{report}");
    // The origin never saw the marked request.
    let access = std::fs::read_to_string(origin.0.join("access.log")).unwrap_or_default();
    assert!(!access.contains("EVIL-MARKER"), "{access}");
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_stopped_box_or_a_dead_link_fails_closed_or_open_as_configured() {
    let lab = Lab::up();
    let scratch = Scratch::new("inspect-failure");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let dir = box_dir(&scratch);
    for failure in ["fail_closed", "fail_open"] {
        let run = Scratch::new(&format!("inspect-{failure}"));
        let (config, ca) = inspect_config(&run, &origin, failure);
        inspect_box(&["bridge", &dir]);
        inspect_box(&["stop", &dir]);
        let appliance = Appliance::start(&lab, &run, &config);
        // A stopped box: SYNs vanish in it, the SYN timeout (500 ms) decides.
        let started = Instant::now();
        let result = curl(&lab, &ca, &["--resolve", RESOLVE, "https://origin.test/index.html"]);
        let took = started.elapsed();
        // The box's link goes down: decided at once.
        inspect_box(&["linkdown"]);
        std::thread::sleep(Duration::from_millis(300));
        let down_started = Instant::now();
        let down = curl(&lab, &ca, &["--resolve", RESOLVE, "https://origin.test/index.html"]);
        let down_took = down_started.elapsed();
        inspect_box(&["linkup"]);
        match failure {
            "fail_closed" => {
                assert!(!result.status.success(), "fail_closed: the connection fails");
                assert!(!down.status.success(), "fail_closed, link down: fails");
            }
            _ => {
                assert!(result.status.success(), "fail_open: {}", text(&result.stderr));
                assert!(text(&result.stdout).contains("hello from origin.test"));
                assert!(down.status.success(), "fail_open, link down: {}", text(&down.stderr));
            }
        }
        assert!(
            took < Duration::from_secs(4),
            "{failure}: decided after the SYN timeout, {took:?}"
        );
        assert!(
            down_took < Duration::from_secs(2),
            "{failure}: link down decides at once, {down_took:?}"
        );
        let records = await_records(&run, 2);
        assert_eq!(records.len(), 2, "{records:?}");
        let prefix = if failure == "fail_closed" {
            "fail-closed: "
        } else {
            "fail-open, not inspected: "
        };
        let notes: Vec<&str> = records.iter().map(|r| r["inspection"].as_str().unwrap_or("")).collect();
        assert!(
            notes[0].starts_with(prefix) && notes[0].contains("did not pass the SYN"),
            "{notes:?}"
        );
        assert!(
            notes[1].starts_with(prefix) && notes[1].contains("link is down"),
            "{notes:?}"
        );
        let (status, report, _) = appliance.stop();
        assert!(status.success());
        let counter = if failure == "fail_closed" {
            "inspect_failed_closed"
        } else {
            "inspect_failed_open"
        };
        assert_eq!(report["tcp"][counter], 2, "{report}");
    }
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn with_fail_open_twenty_https_downloads_outlive_a_box_that_dies_mid_transfer() {
    const DOWNLOADS: usize = 20;
    let lab = Lab::up();
    let scratch = Scratch::new("inspect-dies");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let dir = box_dir(&scratch);
    // The box stops (its bridge is gone: the loop legs' retransmissions go
    // unanswered, four rounds, about 31 s), or its links go down (the next
    // link check).
    for (death, args, note) in [
        (
            "stop",
            ["stop", dir.as_str()].as_slice(),
            "the box stopped answering on inspect_",
        ),
        (
            "linkdown",
            ["linkdown"].as_slice(),
            "an inspection port's link went down",
        ),
    ] {
        let run = Scratch::new(&format!("inspect-dies-{death}"));
        let (config, ca) = inspect_config(&run, &origin, "fail_open");
        inspect_box(&["bridge", &dir]);
        let appliance = Appliance::start(&lab, &run, &config);
        let downloads = run.path("downloads");
        // 1 MiB each at 100 KB/s: the box dies once each got 128 KiB through
        // it, about 9 s before the end.
        let killed_mid_transfer = std::thread::scope(|scope| {
            let killer = scope.spawn(|| {
                let started = every_download_reached(&downloads, DOWNLOADS, 128 * 1024);
                let unfinished = (0..DOWNLOADS).all(|index| {
                    std::fs::metadata(downloads.join(format!("{index}.bin"))).is_ok_and(|f| f.len() < file.len() as u64)
                });
                if started {
                    inspect_box(args);
                }
                started && unfinished
            });
            parallel_downloads(
                &lab,
                &ca,
                &downloads,
                DOWNLOADS,
                &["--limit-rate", "100K", "--http1.1"],
                |_| Vec::new(),
                &file,
            );
            killer.join().expect("killer thread")
        });
        if death == "linkdown" {
            inspect_box(&["linkup"]);
        }
        assert!(
            killed_mid_transfer,
            "{death}: the box died while every download was running"
        );
        let records = await_records(&run, DOWNLOADS);
        assert_eq!(records.len(), DOWNLOADS, "{death}: {records:?}");
        for record in &records {
            let inspection = record["inspection"].as_str().unwrap_or("");
            assert!(
                inspection.starts_with("inspected, then fail-open: ") && inspection.contains(note),
                "{death}: {record}"
            );
            assert_eq!(record["ended"], "closed", "{death}: {record}");
        }
        let (status, report, _) = appliance.stop();
        assert!(status.success());
        let tcp = &report["tcp"];
        assert_eq!(tcp["inspected"], DOWNLOADS, "{death}: {report}");
        assert_eq!(tcp["inspect_failed_open_live"], DOWNLOADS, "{death}: {report}");
        assert_eq!(tcp["inspect_failed_open"], DOWNLOADS, "{death}: {report}");
        assert_eq!(tcp["inspect_failed_closed"], 0, "{death}: {report}");
        if death == "stop" {
            assert!(tcp["inspect_unreturned_bytes"].as_u64() > Some(0), "{report}");
        }
    }
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_hundred_concurrent_https_downloads_through_the_loop_are_byte_exact() {
    let lab = Lab::up();
    let scratch = Scratch::new("inspect-many");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    // The default `inspect.syn_timeout_ms` (8 s), not the 500 ms of the tests
    // that stop the box: the box is up here, and a loaded machine can keep a
    // debug build's worker from seeing one of 100 loop SYNs come back within
    // 500 ms, which would fail that connection closed.
    let (config, ca) = inspect_config_with(&scratch, &origin, "fail_closed", None);
    let dir = box_dir(&scratch);
    inspect_box(&["bridge", &dir]);
    let appliance = Appliance::start(&lab, &scratch, &config);
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    // The first 256 KiB of the file each: 100 TLS sessions round the loop at
    // once without making a debug build's single worker relay 100 MB.
    let file = file
        .get(..256 * 1024)
        .expect("origin file of at least 256 KiB")
        .to_vec();
    parallel_downloads(
        &lab,
        &ca,
        &scratch.path("downloads"),
        100,
        &["--range", "0-262143", "--http1.1"],
        |_| Vec::new(),
        &file,
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["inspected"], 100, "{report}");
    assert_eq!(report["tcp"]["tls_intercepted"], 100, "{report}");
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn the_lab_boxes_pass_their_own_self_test() {
    // The boxes themselves, between two kernel hosts (own namespaces).
    let result = output(Command::new("bash").arg(repo().join("tests/lab/inspect-box-selftest.sh")));
    assert!(
        result.status.success(),
        "{}{}",
        text(&result.stdout),
        text(&result.stderr)
    );
}
