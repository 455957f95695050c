//! Suricata in the namespace lab (scripts/lab-suricata.sh runs it from a
//! Debian 13 chroot, tests/lab/suricata.yaml): as the inline IPS of the
//! inspection loop, dropping an intercepted HTTPS request by its plaintext
//! URI; and passively, on the decrypted capture and on the decrypt-mirror
//! port, alerting on a request's plaintext with the Community ID of
//! tlsgate's connection log record of that connection. Needs root; run by
//! scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{await_records, curl, inspect_config, tls_config, Appliance, Lab, LabDriver, Origin};
use common::{output, repo, text, Scratch};

const RESOLVE: &str = "origin.test:443:198.18.0.2";
const IPS_MARKER: &str = "tlsgate-ips-marker";
const ALERT_MARKER: &str = "tlsgate-ids-marker";
const DROP_SID: u64 = 1_000_001;
const ALERT_SID: u64 = 1_000_002;

/// Drops (in IPS mode) an HTTP request whose URI holds IPS_MARKER; alerts
/// on one whose URI holds ALERT_MARKER.
fn lab_rules() -> String {
    format!(
        "drop http any any -> any any (msg:\"tlsgate lab: IPS marker in the URI\"; flow:established,to_server; \
         http.uri; content:\"{IPS_MARKER}\"; sid:{DROP_SID}; rev:1;)\n\
         alert http any any -> any any (msg:\"tlsgate lab: IDS marker in the URI\"; flow:established,to_server; \
         http.uri; content:\"{ALERT_MARKER}\"; sid:{ALERT_SID}; rev:1;)\n"
    )
}

fn lab_suricata(args: &[&str]) {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/lab-suricata.sh"))
            .args(args),
    );
    assert!(
        result.status.success(),
        "lab-suricata.sh {args:?}: {}{}",
        text(&result.stdout),
        text(&result.stderr)
    );
}

/// A running Suricata (IPS in the box or passive on the mirror port),
/// stopped on drop; its files in `dir`.
struct Suricata {
    dir: PathBuf,
}

impl Suricata {
    fn start(scratch: &Scratch, mode: &str) -> Suricata {
        let dir = scratch.path("suricata");
        let rules = scratch.path("lab.rules");
        std::fs::write(&rules, lab_rules()).unwrap();
        lab_suricata(&[mode, dir.to_str().unwrap(), rules.to_str().unwrap()]);
        Suricata { dir }
    }

    /// Stops Suricata: eve.json is then complete.
    fn stop(&self) {
        lab_suricata(&["stop", self.dir.to_str().unwrap()]);
    }
}

impl Drop for Suricata {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/lab-suricata.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// eve.json's events of type `event_type` for rule `sid`.
fn eve_events(dir: &Path, event_type: &str, sid: u64) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log/eve.json"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event_type"] == event_type && event["alert"]["signature_id"] == sid)
        .collect()
}

/// Waits up to 20 s for an eve.json event of `event_type` for rule `sid`.
fn await_eve(dir: &Path, event_type: &str, sid: u64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = eve_events(dir, event_type, sid);
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The alert is about the connection the log records: same client, same
/// Community ID.
fn assert_same_flow(alert: &serde_json::Value, record: &serde_json::Value) {
    assert_eq!(alert["src_ip"], record["src_ip"], "{alert}\n{record}");
    assert_eq!(alert["src_port"], record["src_port"], "{alert}\n{record}");
    assert_eq!(alert["dest_ip"], record["dest_ip"], "{alert}\n{record}");
    assert!(
        record["community_id"].as_str().is_some_and(|id| id.starts_with("1:")),
        "{record}"
    );
    assert_eq!(
        alert["community_id"], record["community_id"],
        "Suricata's Community ID is the connection log's:\n{alert}\n{record}"
    );
}

/// The one connection-log record whose flow matches the alert's client port.
fn record_of<'a>(records: &'a [serde_json::Value], alert: &serde_json::Value) -> &'a serde_json::Value {
    let matching: Vec<_> = records
        .iter()
        .filter(|record| record["src_port"] == alert["src_port"])
        .collect();
    assert_eq!(matching.len(), 1, "{alert}\n{records:?}");
    matching[0]
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn suricata_as_inline_ips_in_the_box_drops_the_marked_https_request_and_passes_the_rest_byte_exact() {
    let lab = Lab::up();
    let scratch = Scratch::new("suricata-ips");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = inspect_config(&scratch, &origin, "fail_closed");
    // The fresh lab's tg-box forwards nothing: Suricata is the only box.
    let suricata = Suricata::start(&scratch, "start-ips");
    let appliance = Appliance::start(&lab, &scratch, &config);

    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let body = scratch.path("body.bin");
    let clean = curl(
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
    assert!(clean.status.success(), "curl: {}", text(&clean.stderr));
    assert!(
        std::fs::read(&body).unwrap() == file,
        "the clean download is byte-exact through Suricata"
    );

    // HTTP/1.1: with h2 the URI is HPACK-coded (Suricata decodes h2 only
    // when told to; not the point here).
    let blocked = curl(
        &lab,
        &ca,
        &[
            "--http1.1",
            "--max-time",
            "4",
            "--resolve",
            RESOLVE,
            &format!("https://origin.test/index.html?q={IPS_MARKER}"),
        ],
    );
    assert!(
        !blocked.status.success() && !text(&blocked.stdout).contains("hello from origin.test"),
        "the marked request gets no answer: {}{}",
        text(&blocked.stdout),
        text(&blocked.stderr)
    );
    let drops = await_eve(&suricata.dir, "drop", DROP_SID);
    let alerts = await_eve(&suricata.dir, "alert", DROP_SID);
    assert_eq!(alerts.len(), 1, "one alert for the marked request: {alerts:?}");
    assert!(!drops.is_empty(), "Suricata logged the drop");
    assert_eq!(alerts[0]["alert"]["action"], "blocked", "{}", alerts[0]);
    assert!(
        alerts[0]["http"]["url"].as_str().unwrap_or("").contains(IPS_MARKER),
        "{}",
        alerts[0]
    );

    // A clean request after the drop still passes.
    let after = curl(
        &lab,
        &ca,
        &["--http1.1", "--resolve", RESOLVE, "https://origin.test/index.html"],
    );
    assert!(after.status.success(), "curl: {}", text(&after.stderr));
    assert!(text(&after.stdout).contains("hello from origin.test"));

    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["inspected"], 3, "{report}");
    // The dropped connection stays open until the appliance stops (curl
    // gave up; Suricata drops the rest of its flow, the FIN included).
    let records = await_records(&scratch, 3);
    assert_eq!(records.len(), 3, "{records:?}");
    // Its record is the alert's flow (same Community ID: the loop carries
    // the connection's own addresses and ports), and no plaintext of it
    // reached the server leg.
    let record = record_of(&records, &alerts[0]);
    assert_same_flow(&alerts[0], record);
    assert_eq!(record["plaintext_client_to_server"], 0, "{record}");
    assert_eq!(record["plaintext_server_to_client"], 0, "{record}");
    assert_ne!(record["ended"], "closed", "{record}");
    for other in records.iter().filter(|other| other["src_port"] != record["src_port"]) {
        assert_eq!(other["ended"], "closed", "{other}");
        assert!(other["plaintext_server_to_client"].as_u64() > Some(0), "{other}");
    }
    let access = std::fs::read_to_string(origin.0.join("access.log")).unwrap_or_default();
    assert!(!access.contains(IPS_MARKER), "the origin never saw it: {access}");
    assert!(access.contains("GET /file.bin"), "{access}");
    suricata.stop();
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn suricata_reading_the_decrypted_capture_alerts_with_the_connection_logs_community_id() {
    let lab = Lab::up();
    let scratch = Scratch::new("suricata-pcap");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    // No capture.port_map: the frames keep the connection's own ports (443),
    // so Suricata hashes the tuple the connection log hashes. With
    // port_map = { 443 = 80 } the frames show port 80 and the Community ID
    // is that of the rewritten tuple instead.
    let capture = scratch.path("decrypted.pcap");
    let mut text_config = std::fs::read_to_string(&config).unwrap();
    text_config.push_str(&format!("\n[capture]\npath = \"{}\"\n", capture.display()));
    std::fs::write(&config, text_config).unwrap();
    let appliance = Appliance::start(&lab, &scratch, &config);
    for query in ["q=clean", &format!("q={ALERT_MARKER}")] {
        let fetched = curl(
            &lab,
            &ca,
            &[
                "--http1.1",
                "--resolve",
                RESOLVE,
                &format!("https://origin.test/index.html?{query}"),
            ],
        );
        assert!(fetched.status.success(), "curl: {}", text(&fetched.stderr));
    }
    let (status, _, _) = appliance.stop();
    assert!(status.success());
    let records = await_records(&scratch, 2);
    assert_eq!(records.len(), 2, "{records:?}");

    let dir = scratch.path("suricata");
    let rules = scratch.path("lab.rules");
    std::fs::write(&rules, lab_rules()).unwrap();
    lab_suricata(&[
        "pcap",
        dir.to_str().unwrap(),
        rules.to_str().unwrap(),
        capture.to_str().unwrap(),
    ]);
    let alerts = eve_events(&dir, "alert", ALERT_SID);
    assert_eq!(alerts.len(), 1, "one alert, for the marked request only: {alerts:?}");
    assert!(
        alerts[0]["http"]["url"].as_str().unwrap_or("").contains(ALERT_MARKER),
        "{}",
        alerts[0]
    );
    assert_eq!(alerts[0]["dest_port"], 443, "{}", alerts[0]);
    assert_same_flow(&alerts[0], record_of(&records, &alerts[0]));
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn suricata_listening_on_the_decrypt_mirror_port_alerts_on_the_intercepted_plaintext() {
    let lab = Lab::up();
    let scratch = Scratch::new("suricata-mirror");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let mut text_config = std::fs::read_to_string(&config).unwrap();
    text_config.push_str(&format!(
        "\n[ports.mirror]\ndevice = \"{}\"\n",
        LabDriver::selected().device(4, "gwm0", 1)
    ));
    std::fs::write(&config, text_config).unwrap();
    let suricata = Suricata::start(&scratch, "start-passive");
    let appliance = Appliance::start(&lab, &scratch, &config);
    let fetched = curl(
        &lab,
        &ca,
        &[
            "--http1.1",
            "--resolve",
            RESOLVE,
            &format!("https://origin.test/index.html?q={ALERT_MARKER}"),
        ],
    );
    assert!(fetched.status.success(), "curl: {}", text(&fetched.stderr));
    assert!(text(&fetched.stdout).contains("hello from origin.test"));
    let alerts = await_eve(&suricata.dir, "alert", ALERT_SID);
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(alerts.len(), 1, "Suricata on the mirror port alerted once: {alerts:?}");
    assert_eq!(alerts[0]["in_iface"], "sens0", "{}", alerts[0]);
    assert!(
        alerts[0]["http"]["url"].as_str().unwrap_or("").contains(ALERT_MARKER),
        "{}",
        alerts[0]
    );
    // The mirror carries the connection's own addresses and ports.
    let records = await_records(&scratch, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_same_flow(&alerts[0], record_of(&records, &alerts[0]));
    assert_eq!(report["mirror"]["frames_dropped"], 0, "{report}");
    suricata.stop();
}
