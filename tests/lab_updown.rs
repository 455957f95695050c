//! The namespace lab (root, `#[ignore]`) for the `[[policy]]` actions
//! `upgrade` and `downgrade` with real peers: curl speaking plain HTTP to
//! 198.18.0.2:80 reaches the origin's nginx over TLS on 443 (its certificate
//! verified against `tls.upstream_trust`; an origin it does not verify gets
//! nothing and the client a reset), and curl speaking HTTPS to :443 is
//! answered with a certificate forged by the appliance CA for its SNI while
//! nginx gets plain HTTP on port 80 from the client's own address (its
//! access log). IPv4 and IPv6. With two workers, 100 parallel upgraded
//! requests, whose moved server legs the kernel's fanout gives to either
//! worker, complete byte-exact. Run only through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_updown -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::lab::{
    assert_both_workers_opened_sessions, await_records, curl, tls_config, with_two_workers, Appliance, Lab, Origin, CLI,
};
use common::{check_config, output, text, Scratch};

/// `tls_config` (the appliance CA, `upstream_trust` trusted) intercepting
/// ports 80 and 443 with `rules` appended, checked with `tlsgate check`;
/// returns the config and the appliance CA.
fn config(scratch: &Scratch, upstream_trust: &Path, rules: &str) -> (PathBuf, PathBuf) {
    config_edited(scratch, upstream_trust, rules, |config| config)
}

/// [`config`], the text changed by `edit` before the check.
fn config_edited(
    scratch: &Scratch,
    upstream_trust: &Path,
    rules: &str,
    edit: impl FnOnce(String) -> String,
) -> (PathBuf, PathBuf) {
    let (path, ca) = tls_config(scratch, upstream_trust);
    let text_before = std::fs::read_to_string(&path).expect("config");
    assert!(text_before.contains("tcp_ports = [443]"));
    let config = edit(text_before.replace("tcp_ports = [443]", "tcp_ports = [80, 443]") + rules);
    std::fs::write(&path, config).expect("write config");
    check_config(&path);
    (path, ca)
}

const UPGRADE: &str =
    "\n[[policy]]\naction = \"upgrade\"\nport = [80]\nserver_port = 443\nserver_name = \"origin.test\"\n";
const DOWNGRADE: &str = "\n[[policy]]\naction = \"downgrade\"\nport = [443]\nserver_port = 80\n";

/// The records' `decision`, `dest_port` and `ended`, for messages and checks.
fn decisions(records: &[serde_json::Value]) -> Vec<(String, u64, String)> {
    records
        .iter()
        .map(|record| {
            (
                record["decision"].as_str().unwrap_or_default().to_owned(),
                record["dest_port"].as_u64().unwrap_or_default(),
                record["ended"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn upgrades_plain_http_on_80_to_the_origins_verified_tls_on_443() {
    let lab = Lab::up();
    let scratch = Scratch::new("updown-up");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = config(&scratch, &origin.cert(), UPGRADE);
    let appliance = Appliance::start(&lab, &scratch, &config);
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    for url in ["http://198.18.0.2/file.bin", "http://[2001:2::2]/file.bin"] {
        let body = scratch.path("body.bin");
        let result = curl(&lab, &ca, &[url, "-o", body.to_str().unwrap()]);
        assert!(result.status.success(), "curl {url}: {}", text(&result.stderr));
        assert!(std::fs::read(&body).expect("body") == file, "{url}: content differs");
    }
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["upgraded"], 2, "{report}");
    let records = await_records(&scratch, 2);
    assert_eq!(
        decisions(&records),
        [
            ("upgrade".into(), 80, "closed".into()),
            ("upgrade".into(), 80, "closed".into())
        ],
        "{records:?}"
    );
    for record in &records {
        assert_eq!(record["sni"], "origin.test", "{record}");
        assert_eq!(record["upstream_verified"], true, "{record}");
        assert!(record["server_tls_version"].is_string(), "{record}");
    }
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn an_upgrade_to_an_origin_whose_certificate_does_not_verify_is_reset_before_any_request() {
    let lab = Lab::up();
    let scratch = Scratch::new("updown-untrusted");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    // The appliance trusts some other CA, not the origin's certificate.
    let other = scratch.path("other.pem");
    let made = output(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=Some Other CA",
        "-keyout",
        scratch.path("other.key").to_str().unwrap(),
        "-out",
        other.to_str().unwrap(),
    ]));
    assert!(made.status.success(), "openssl: {}", text(&made.stderr));
    let (config, ca) = config(&scratch, &other, UPGRADE);
    let appliance = Appliance::start(&lab, &scratch, &config);
    let result = curl(&lab, &ca, &["http://198.18.0.2/index.html"]);
    assert!(!result.status.success(), "curl got {:?}", text(&result.stdout));
    let records = await_records(&scratch, 1);
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["conversion_failed"], 1, "{report}");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["decision"], "upgrade", "{}", records[0]);
    assert_eq!(records[0]["upstream_verified"], false, "{}", records[0]);
    let access = std::fs::read_to_string(origin.0.join("access.log")).unwrap_or_default();
    assert!(!access.contains("GET"), "the origin got a request: {access}");
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn downgrades_https_on_443_with_a_forged_certificate_to_plain_http_on_80_from_the_clients_address() {
    let lab = Lab::up();
    let scratch = Scratch::new("updown-down");
    let origin = Origin::start_with_plain_http(scratch.path("origin"));
    let (config, ca) = config(&scratch, &origin.cert(), DOWNGRADE);
    let appliance = Appliance::start(&lab, &scratch, &config);
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    for (resolve, client) in [
        ("origin.test:443:198.18.0.2", "198.18.0.1 "),
        ("origin.test:443:[2001:2::2]", "2001:2::1 "),
    ] {
        let body = scratch.path("body.bin");
        let result = curl(
            &lab,
            &ca,
            &[
                "--resolve",
                resolve,
                "https://origin.test/file.bin",
                "-o",
                body.to_str().unwrap(),
            ],
        );
        assert!(result.status.success(), "curl via {resolve}: {}", text(&result.stderr));
        assert!(
            std::fs::read(&body).expect("body") == file,
            "{resolve}: content differs"
        );
        // nginx logged the plain request on port 80 from the client itself.
        let access = std::fs::read_to_string(origin.0.join("access.log")).unwrap_or_default();
        assert!(
            access
                .lines()
                .any(|line| line.starts_with(client) && line.contains("GET /file.bin HTTP/1.1\" 200")),
            "{client}in {access}"
        );
    }
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["downgraded"], 2, "{report}");
    let records = await_records(&scratch, 2);
    for record in &records {
        assert_eq!(record["decision"], "downgrade", "{record}");
        assert_eq!(record["sni"], "origin.test", "{record}");
        assert!(record["forged_cert_sha256"].is_string(), "{record}");
    }
}

/// Two workers on af_packet (`qpairs=2`): an upgraded connection's server
/// leg goes from the client's address and port to port 443, so the kernel's
/// fanout may give its frames to the other worker, which hands them to the
/// one holding the connection. 100 requests at once (every fifth the 1 MiB
/// file.bin, the others index.html) all complete byte-exact over the
/// origin's TLS, both workers took connections, and the hand-off ran.
#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn two_workers_upgrade_100_parallel_requests_whose_moved_legs_are_handed_between_them() {
    let lab = Lab::up();
    let scratch = Scratch::new("updown-workers");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, _) = config_edited(&scratch, &origin.cert(), UPGRADE, |config| with_two_workers(&config));
    let appliance = Appliance::start(&lab, &scratch, &config);
    let downloads = scratch.path("parallel");
    std::fs::create_dir_all(&downloads).expect("downloads directory");
    let path = |index: usize| {
        if index.is_multiple_of(5) {
            "file.bin"
        } else {
            "index.html"
        }
    };
    let mut args: Vec<String> = ["-sS", "--max-time", "120", "--parallel", "--parallel-immediate"]
        .map(str::to_owned)
        .to_vec();
    args.extend(["--parallel-max".to_owned(), "100".to_owned()]);
    for index in 0..100 {
        args.extend([
            "-o".to_owned(),
            downloads.join(index.to_string()).display().to_string(),
            format!("http://198.18.0.2/{}?n={index}", path(index)),
        ]);
    }
    let result = output(lab.cmd(CLI, "curl").args(&args));
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    for index in 0..100 {
        let got = std::fs::read(downloads.join(index.to_string())).expect("download");
        let expected = std::fs::read(origin.0.join("www").join(path(index))).expect("origin file");
        assert!(got == expected, "download {index} ({}) is byte-exact", path(index));
    }
    let records = await_records(&scratch, 100);
    assert!(
        decisions(&records) == vec![("upgrade".to_owned(), 80, "closed".to_owned()); 100],
        "{:?}",
        decisions(&records)
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["upgraded"], 100, "{report}");
    assert_eq!(report["tcp"]["conversion_failed"], 0, "{report}");
    assert_both_workers_opened_sessions(&report, "both workers");
    let server_port = &report["ports"][1];
    assert!(
        server_port["handed_off"].as_u64().expect("handed_off") > 0,
        "the origin's frames reached the other worker and were handed over: {server_port}"
    );
}
