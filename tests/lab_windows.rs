//! Windows that follow the path, in the namespace lab: with 50 ms of round
//! trip added on the server link (the impairment element), one intercepted
//! HTTPS download is no longer capped at one 64 KiB window per round trip
//! (the socket buffers of old), loses little to the distance compared with
//! the same download over the element without delay, and is compared with
//! the same download through tlsgate as a plain bridge (kernel TCP end to
//! end). Ratios only: the debug build on a shared machine sets the pace.
//! Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::lab::{impair, lab_config_file, stop_impairment, tls_config, Appliance, Lab, Origin, CLI};
use common::{output, text, Scratch};

/// The round trip the element adds: 25 ms each way.
const RTT_SECS: f64 = 0.050;
/// The old fixed socket buffers, the largest window a leg could offer.
const OLD_WINDOW: f64 = 65_536.0;
const SIZE: usize = 20 << 20;

/// Incompressible bytes (TLS does not compress, but keep it honest).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// One HTTPS download of origin.test's big.bin trusting `ca`; asserts it is
/// byte-exact and returns its rate in bytes per second (curl's measure).
fn download(lab: &Lab, scratch: &Scratch, ca: &Path, expected: &[u8]) -> f64 {
    let body = scratch.path("big.bin");
    let _ = std::fs::remove_file(&body);
    let result = output(
        lab.cmd(CLI, "curl")
            .args(["-sS", "--max-time", "120", "--cacert"])
            .arg(ca)
            .args([
                "--resolve",
                "origin.test:443:198.18.0.2",
                "-w",
                "%{speed_download}",
                "-o",
            ])
            .arg(&body)
            .arg("https://origin.test/big.bin"),
    );
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    let got = std::fs::read(&body).expect("downloaded body");
    assert!(
        got == expected,
        "the download is byte-exact ({} of {} bytes)",
        got.len(),
        expected.len()
    );
    text(&result.stdout).trim().parse().expect("curl's speed_download")
}

/// The lab afresh with origin.test serving big.bin, and the impairment
/// element on the server link with `delay` each way.
fn lab_with_origin(scratch: &Scratch, name: &str, file: &[u8], delay: &str) -> (Lab, Origin) {
    let lab = Lab::up();
    let origin = Origin::start(scratch.path(name), "origin.test", "valid");
    std::fs::write(origin.0.join("www/big.bin"), file).expect("write big.bin");
    impair("server", delay, delay);
    (lab, origin)
}

/// One intercepted download through a fresh tlsgate; its rate.
fn intercepted_download(lab: &Lab, scratch: &Scratch, origin: &Origin, file: &[u8]) -> f64 {
    let (config, ca) = tls_config(scratch, &origin.cert());
    let appliance = Appliance::start(lab, scratch, &config);
    let rate = download(lab, scratch, &ca, file);
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["tls_intercepted"], 1, "{report}");
    rate
}

#[test]
#[ignore = "needs root: namespace lab"]
fn an_intercepted_download_over_a_50ms_path_is_not_window_bound() {
    let file = noise(SIZE);

    // The element without delay: what this build reaches on a LAN.
    let scratch = Scratch::new("windows-near");
    let (lab, origin) = lab_with_origin(&scratch, "origin", &file, "");
    let near = intercepted_download(&lab, &scratch, &origin, &file);
    stop_impairment("server");
    drop((origin, lab));

    let scratch = Scratch::new("windows-far");
    let (lab, origin) = lab_with_origin(&scratch, "origin", &file, "delay 25ms");
    let bridge = Appliance::start(&lab, &scratch, &lab_config_file(&scratch, "configs/lab.toml"));
    let bridged = download(&lab, &scratch, &origin.cert(), &file);
    let (status, _, _) = bridge.stop();
    assert!(status.success());
    let far = intercepted_download(&lab, &scratch, &origin, &file);
    let counters = stop_impairment("server");
    assert!(counters["a_to_b"]["released"].as_u64() > Some(1000), "{counters}");

    let window_bound = OLD_WINDOW / RTT_SECS;
    eprintln!(
        "{} MiB over 50 ms RTT: bridged {:.2} MB/s, intercepted {:.2} MB/s ({:.2}x the bridge, {:.1}x one 64 KiB window \
         per round trip); intercepted without delay {:.2} MB/s ({:.2}x kept at 50 ms)",
        SIZE >> 20,
        bridged / 1e6,
        far / 1e6,
        far / bridged,
        far / window_bound,
        near / 1e6,
        far / near
    );
    assert!(
        far > 1.5 * window_bound,
        "{far:.0} B/s is near one 64 KiB window per 50 ms round trip ({window_bound:.0} B/s)"
    );
    // With 64 KiB windows the distance cost most of it (1.2 of ~4 MB/s).
    assert!(far > 0.6 * near, "50 ms cost more than 40%: {far:.0} vs {near:.0} B/s");
}
