//! Learned bypasses in the namespace lab with real clients (curl in the
//! client namespace, from several of its addresses): one client rejecting
//! the forged certificate again and again leaves every other client
//! intercepted; only distinct clients make fail-open bypass a destination;
//! the operator lists and clears what was learned through the control
//! socket of the running instance. Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::lab::{curl, tls_config, Appliance, Lab, Origin};
use common::{output, text, tlsgate, Scratch};

const RESOLVE: &str = "origin.test:443:198.18.0.2";
const URL: &str = "https://origin.test/index.html";

/// curl from the client address `from`, trusting only `ca`.
fn curl_from(lab: &Lab, from: &str, ca: &Path) -> std::process::Output {
    curl(lab, ca, &["-v", "--interface", from, "--resolve", RESOLVE, URL])
}

/// `tlsgate learned ...` against the running instance of `config`.
fn learned(config: &Path, args: &[&str]) -> String {
    let result = output(tlsgate().arg("learned").args(args).arg("--config").arg(config));
    assert!(
        result.status.success(),
        "tlsgate learned {args:?}: {}",
        text(&result.stderr)
    );
    text(&result.stdout)
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn one_client_rejecting_the_forged_certificate_leaves_the_others_intercepted() {
    let lab = Lab::up();
    for address in ["198.18.0.3", "198.18.0.4"] {
        lab.add_client_v4(address);
    }
    let scratch = Scratch::new("learned");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, appliance_ca) = tls_config(&scratch, &origin.cert());
    let socket = scratch.path("control.sock");
    let mut text_config = std::fs::read_to_string(&config).expect("config");
    // The defaults: fail-open after 3 distinct clients within 60 s.
    text_config.push_str(&format!("\n[control]\nsocket = \"{}\"\n", socket.display()));
    std::fs::write(&config, text_config).expect("config");
    let appliance = Appliance::start(&lab, &scratch, &config);
    // A pinning client trusts only the origin's real certificate.
    let pinned = origin.cert();

    // Four rejections of the forged certificate from one client...
    for attempt in 1..=4 {
        let result = curl_from(&lab, "198.18.0.1", &pinned);
        assert_eq!(
            result.status.code(),
            Some(60),
            "attempt {attempt}: {}",
            text(&result.stderr)
        );
    }
    // ... and a second client is intercepted: it sees the certificate the
    // appliance CA forged (and accepts it, trusting that CA).
    let second = curl_from(&lab, "198.18.0.3", &appliance_ca);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout).trim(), "hello from origin.test");
    let handshake = text(&second.stderr);
    assert!(handshake.contains("issuer: CN=tlsgate interception CA"), "{handshake}");
    // So is the rejecting client itself.
    assert_eq!(curl_from(&lab, "198.18.0.1", &pinned).status.code(), Some(60));
    assert_eq!(learned(&config, &["list"]), "no learned bypasses\n");

    // Two more distinct clients rejecting it: the destination fails open.
    for from in ["198.18.0.3", "198.18.0.4"] {
        assert_eq!(curl_from(&lab, from, &pinned).status.code(), Some(60), "{from}");
    }
    let listed = learned(&config, &["list"]);
    assert!(
        listed.contains("origin.test") && listed.contains("198.18.0.2:443") && listed.contains("fail_open"),
        "{listed}"
    );
    let bypassed = curl_from(&lab, "198.18.0.1", &pinned);
    assert!(bypassed.status.success(), "fail-open: {}", text(&bypassed.stderr));

    // The operator clears it: intercepted again.
    let cleared = learned(&config, &["clear", "--name", "origin.test"]);
    assert!(cleared.contains("cleared 1"), "{cleared}");
    assert_eq!(learned(&config, &["list"]), "no learned bypasses\n");
    assert_eq!(curl_from(&lab, "198.18.0.1", &pinned).status.code(), Some(60));

    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert!(!socket.exists(), "the control socket is removed at the end");
    let learned_totals = &report["learned"];
    assert_eq!(learned_totals["added_fail_open"], 1, "{report}");
    assert_eq!(learned_totals["cleared"], 1, "{report}");
    assert_eq!(learned_totals["live"], 0, "{report}");

    let log = std::fs::read_to_string(scratch.path("connections.jsonl")).expect("connection log");
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let learning: Vec<_> = records.iter().filter(|r| !r["learned"].is_null()).collect();
    assert_eq!(learning.len(), 1, "{records:?}");
    assert_eq!(learning[0]["src_ip"], "198.18.0.4", "{records:?}");
    assert!(
        learning[0]["learned"]
            .as_str()
            .unwrap()
            .contains("origin.test at 198.18.0.2:443"),
        "{}",
        learning[0]
    );
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "bypass" && r["reason"].as_str().unwrap().contains("learned fail-open")),
        "{records:?}"
    );
}
