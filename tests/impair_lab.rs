//! The impairment element (`tlsgate-impair`, scripts/lab-impair.sh) in the
//! namespace lab: it stands in for netem, which this kernel lacks, so these
//! tests show it doing what later tests rely on — delay on a link, and
//! loss, reordering, duplication and corruption that kernel TCP recovers
//! from byte-exact. tlsgate runs as a plain bridge here (configs/lab.toml).
//! Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::lab::{curl, impair, lab_config_file, stop_impairment, Appliance, Lab, Origin, CLI, SRV_V4};
use common::{text, Scratch};

#[test]
#[ignore = "needs root: namespace lab"]
fn delay_on_the_client_link_shows_in_the_round_trip() {
    let lab = Lab::up();
    let scratch = Scratch::new("impair-delay");
    impair("client", "delay 20ms", "delay 20ms 1ms");
    let appliance = Appliance::start(&lab, &scratch, &lab_config_file(&scratch, "configs/lab.toml"));
    let ping = lab.ok(CLI, "ping", &["-c", "5", "-i", "0.2", "-W", "2", SRV_V4]);
    let (status, _, _) = appliance.stop();
    assert!(status.success());
    // rtt min/avg/max/mdev = 40.4/40.9/41.3/0.3 ms
    let summary = ping.lines().find(|l| l.contains("min/avg/max")).expect("ping summary");
    let numbers: Vec<f64> = summary
        .split('=')
        .nth(1)
        .expect("values")
        .trim()
        .trim_end_matches(" ms")
        .split('/')
        .map(|v| v.parse().expect("number"))
        .collect();
    assert!(
        numbers[0] >= 39.0,
        "min RTT {} ms is below the 40 ms added:\n{ping}",
        numbers[0]
    );
    assert!(numbers[2] < 200.0, "max RTT {} ms:\n{ping}", numbers[2]);
    let counters = stop_impairment("client");
    for direction in ["a_to_b", "b_to_a"] {
        assert!(counters[direction]["released"].as_u64() >= Some(5), "{counters}");
        assert_eq!(counters[direction]["lost"], 0, "{counters}");
    }
}

#[test]
#[ignore = "needs root: namespace lab"]
fn kernel_tcp_is_byte_exact_through_loss_reordering_duplicates_and_corruption() {
    let lab = Lab::up();
    let scratch = Scratch::new("impair-loss");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let expected = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let spec = "delay 2ms loss 3% reorder 10% 2ms duplicate 1% corrupt 0.5%";
    impair("server", spec, spec);
    let appliance = Appliance::start(&lab, &scratch, &lab_config_file(&scratch, "configs/lab.toml"));
    let downloads = scratch.path("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads");
    for index in 0..8 {
        let path = downloads.join(format!("{index}.bin"));
        let path = path.to_str().expect("utf-8 path");
        let result = curl(
            &lab,
            &origin.cert(),
            &[
                "--max-time",
                "60",
                "--resolve",
                "origin.test:443:198.18.0.2",
                "-o",
                path,
                "https://origin.test/file.bin",
            ],
        );
        assert!(result.status.success(), "curl {index}: {}", text(&result.stderr));
        assert!(
            std::fs::read(path).expect("download") == expected,
            "download {index} is byte-exact"
        );
    }
    let (status, _, _) = appliance.stop();
    assert!(status.success());
    let counters = stop_impairment("server");
    for direction in ["a_to_b", "b_to_a"] {
        for what in ["lost", "reordered", "duplicated", "corrupted"] {
            assert!(
                counters[direction][what].as_u64() > Some(0),
                "{direction} {what} should have happened: {counters}"
            );
        }
    }
}
