//! The namespace lab (root, `#[ignore]`) for the two TLS legs, with real
//! clients: `openssl s_client` to an origin that speaks only TLS 1.2 is
//! shown TLS 1.2 through tlsgate and the connection log grades both legs;
//! an origin that speaks only CBC suites is blocked with its cause named,
//! and reached untouched once a `legacy_upstream` rule bypasses it.
//! Run only through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_tls_legs -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;

use common::lab::{tls_config, Appliance, Lab, Origin, CLI};
use common::{output, text, Scratch};

/// `openssl s_client` from the client namespace to origin.test with
/// `options`, trusting `ca`; what it printed (stdout and stderr).
fn s_client(lab: &Lab, ca: &Path, options: &str) -> String {
    let result = output(lab.cmd(CLI, "bash").arg("-c").arg(format!(
        "echo | timeout 10 openssl s_client -connect 198.18.0.2:443 -servername origin.test {options} -CAfile {}",
        ca.display()
    )));
    format!("{}{}", text(&result.stdout), text(&result.stderr))
}

/// Stops the appliance; its connection log's records and the final report.
fn stop_and_read_log(appliance: Appliance, scratch: &Scratch) -> (Vec<serde_json::Value>, serde_json::Value) {
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(scratch.path("connections.jsonl")).expect("connection log");
    let records = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    (records, report)
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn openssl_to_a_tls12_only_origin_negotiates_tls12_and_both_legs_are_graded() {
    let lab = Lab::up();
    let scratch = Scratch::new("legs-tls12");
    let origin = Origin::start_speaking(scratch.path("origin"), "TLSv1.2", None);
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let appliance = Appliance::start(&lab, &scratch, &config);

    // The client offers TLS 1.3 and 1.2 (openssl's default).
    let shown = s_client(&lab, &ca, "");
    assert!(shown.contains("issuer=CN = tlsgate interception CA"), "{shown}");
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    assert!(
        shown.contains("Protocol  : TLSv1.2") || shown.contains("New, TLSv1.2"),
        "the client is shown the origin's TLS 1.2: {shown}"
    );
    assert!(!shown.contains("TLSv1.3"), "{shown}");

    let (records, report) = stop_and_read_log(appliance, &scratch);
    let record = records
        .iter()
        .find(|record| record["sni"] == "origin.test")
        .unwrap_or_else(|| panic!("no record for origin.test: {records:?}"));
    for leg in ["client", "server"] {
        assert_eq!(record[format!("{leg}_tls_version")], "TLSv1_2", "{record}");
        assert_eq!(record[format!("{leg}_forward_secrecy")], true, "{record}");
        assert_eq!(record[format!("{leg}_grade")], "A", "{record}");
        assert!(record[format!("{leg}_cipher")].is_string(), "{record}");
    }
    let splice = &report["tcp"];
    assert_eq!(splice["legacy_upstream"], 0, "{report}");
    assert_eq!(splice["tls_intercepted"], 1, "{report}");
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn a_cbc_only_origin_is_blocked_with_its_cause_and_a_rule_bypasses_it() {
    let lab = Lab::up();
    let scratch = Scratch::new("legs-legacy");
    // TLS 1.2 with one CBC suite only (its key is ECDSA P-256).
    let origin = Origin::start_speaking(scratch.path("origin"), "TLSv1.2", Some("ECDHE-ECDSA-AES128-SHA"));
    let (config, ca) = tls_config(&scratch, &origin.cert());

    // Default: blocked, the cause named in the log and counted.
    let appliance = Appliance::start(&lab, &scratch, &config);
    let shown = s_client(&lab, &ca, "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA");
    assert!(
        shown.contains("no peer certificate available"),
        "reset before any certificate: {shown}"
    );
    let (records, report) = stop_and_read_log(appliance, &scratch);
    let blocked = records
        .iter()
        .find(|record| record["decision"] == "block")
        .unwrap_or_else(|| panic!("no block: {records:?}"));
    let reason = blocked["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("default: block origin speaks only legacy TLS: it refused an offer"),
        "{blocked}"
    );
    assert_eq!(blocked["ended"], "blocked by policy", "{blocked}");
    assert_eq!(report["tcp"]["legacy_upstream"], 1, "{report}");

    // A rule for this origin: the client reaches it untouched (its real
    // certificate, the CBC suite it chose).
    let mut text_config = std::fs::read_to_string(&config).expect("config");
    text_config.push_str(
        "\n[[policy]]\naction = \"bypass\"\nwhen = \"legacy_upstream\"\nsni = [\"origin.test\"]\nport = [443]\n",
    );
    std::fs::write(&config, text_config).expect("config");
    std::fs::remove_file(scratch.path("connections.jsonl")).expect("old log");
    let appliance = Appliance::start(&lab, &scratch, &config);
    let shown = s_client(&lab, &origin.cert(), "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA");
    assert!(
        shown.contains("Verify return code: 0 (ok)"),
        "the real certificate: {shown}"
    );
    assert!(shown.contains("ECDHE-ECDSA-AES128-SHA"), "{shown}");
    assert!(!shown.contains("tlsgate interception CA"), "{shown}");
    let (records, report) = stop_and_read_log(appliance, &scratch);
    let bypassed = records
        .iter()
        .find(|record| record["decision"] == "bypass")
        .unwrap_or_else(|| panic!("no bypass: {records:?}"));
    assert!(
        bypassed["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("policy rule 1 (bypass) matched origin speaks only legacy TLS"),
        "{bypassed}"
    );
    let splice = &report["tcp"];
    assert_eq!(
        (splice["legacy_upstream"].clone(), splice["bypassed"].clone()),
        (1.into(), 1.into()),
        "{report}"
    );
}
