//! STARTTLS interception in the namespace lab (root, `#[ignore]`): tlsgate
//! with `[[starttls]] protocol = "smtp"` (ports 25 and 587) between the real
//! clients in the client namespace, which trust only the appliance CA, and
//! Postfix of tests/lab/starttls-peers.sh in the server namespace, whose lab
//! CA the appliance trusts upstream. The clients are those of the direct
//! baselines (tests/common/starttls.rs, tests/lab_starttls.rs); with the
//! inspection pair, the recording box of scripts/inspect-box.sh sees the
//! whole SMTP conversation in plaintext. Run only
//! through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_starttls_intercept -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::PathBuf;

use common::lab::{appliance_ca, await_records, box_dir, inspect_box, Appliance, Lab, CLI, SRV_V4, SRV_V6};
use common::starttls::{
    curl_ftp_download, curl_ftp_upload, queue_id, s_client, s_client_dialogue, swaks, StarttlsPeers, FTP_PASSIVE_PORTS,
    SERVER_NAME,
};
use common::{repo, Scratch};

const CLI_V4: &str = "198.18.0.1";
const CLI_V6: &str = "2001:2::1";

/// The lab, the peers, and tlsgate intercepting SMTP's STARTTLS.
struct Intercepting {
    appliance: Appliance,
    peers: StarttlsPeers,
    scratch: Scratch,
    /// The appliance CA, the only one the clients trust.
    ca: PathBuf,
    lab: Lab,
}

impl Intercepting {
    fn up(name: &str) -> Intercepting {
        Intercepting::on("configs/lab.toml", name, "smtp")
    }

    /// On the four-port lab (the inspection pair, a 500 ms SYN timeout):
    /// start the box first.
    fn inspected(name: &str) -> Intercepting {
        Intercepting::on("configs/lab-inspect.toml", name, "smtp")
    }

    /// tlsgate on the lab configuration `base` with `[tls]`, the connection
    /// log and `[[starttls]]` for `protocol`.
    fn on(base: &str, name: &str, protocol: &str) -> Intercepting {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = StarttlsPeers::start(scratch.path("peers"));
        let ca_dir = appliance_ca(&scratch);
        let mut config = std::fs::read_to_string(repo().join(base))
            .expect("lab configuration")
            .replace("syn_timeout_ms = 8000", "syn_timeout_ms = 500");
        config.push_str(&format!(
            "\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{trust}\"\n\n\
             [log]\nconnections = \"{logs}/connections.jsonl\"\n\n[[starttls]]\nprotocol = \"{protocol}\"\n",
            ca = ca_dir.display(),
            trust = peers.ca().display(),
            logs = scratch.0.display()
        ));
        let path = scratch.path("starttls.toml");
        std::fs::write(&path, config).expect("write config");
        let appliance = Appliance::start(&lab, &scratch, &path);
        Intercepting {
            appliance,
            peers,
            scratch,
            ca: ca_dir.join("ca.pem"),
            lab,
        }
    }

    /// The connection log once it holds `count` records, each an upgraded
    /// and intercepted SMTP connection to a verified Postfix.
    fn upgraded_records(&self, count: usize) -> Vec<serde_json::Value> {
        let records = await_records(&self.scratch, count);
        assert_eq!(records.len(), count, "{records:?}");
        for record in &records {
            assert_eq!(record["event_type"], "tls_intercept", "{record}");
            assert_eq!(record["starttls"], "smtp", "{record}");
            assert_eq!(record["starttls_outcome"], "upgraded", "{record}");
            assert_eq!(record["starttls_discarded_bytes"], 0, "{record}");
            assert_eq!(record["decision"], "intercept", "{record}");
            assert_eq!(record["sni"], SERVER_NAME, "{record}");
            assert_eq!(record["upstream_verified"], true, "{record}");
        }
        records
    }

    /// Stops tlsgate; its report's STARTTLS counters.
    fn stop(self) -> serde_json::Value {
        let (status, report, printed) = self.appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        report
    }
}

/// A mail with a unique Message-ID and enough body to take many segments.
fn mail(id: &str) -> String {
    let mut text = format!(
        "From: Lab Sender <sender@lab.test>\nTo: Tester <tester@lab.test>\nSubject: intercepted {id}\n\
         Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <{id}@lab.test>\n\n"
    );
    for line in 0..400 {
        text.push_str(&format!(
            "line {line:04} of {id}: the quick brown fox jumps over the lazy dog\n"
        ));
    }
    text
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn swaks_mail_is_intercepted_and_delivered_intact_over_smtp_starttls_on_25_and_587_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-swaks");
    let cases = [
        (SRV_V4, CLI_V4, 25),
        (SRV_V6, CLI_V6, 25),
        (SRV_V4, CLI_V4, 587),
        (SRV_V6, CLI_V6, 587),
    ];
    for (index, (server, client, port)) in cases.into_iter().enumerate() {
        let id = format!("intercepted-{index}-{port}");
        let text = mail(&id);
        let file = up.scratch.path(&format!("{id}.eml"));
        std::fs::write(&file, &text).expect("mail file");
        // swaks trusts only the appliance CA: the forged certificate.
        let transcript = swaks(&up.lab, CLI, server, port, &up.ca, &file).expect_ok("swaks through tlsgate");
        assert!(transcript.contains("=== TLS started with cipher"), "{transcript}");
        let queued = queue_id(&transcript);
        let delivered = up.peers.await_delivered(&format!("<{id}@lab.test>"));
        assert!(delivered.contains(&text), "delivered intact:\n{delivered}");
        assert!(delivered.contains("with ESMTPS id"), "received over TLS:\n{delivered}");
        // Transparent: Postfix saw the client's own address.
        up.peers
            .await_logged("maillog", &format!("{queued}: client=unknown[{client}]"));
    }
    let records = up.upgraded_records(cases.len());
    for (record, (server, client, port)) in records.iter().zip(cases) {
        assert_eq!(
            (
                record["src_ip"].as_str(),
                record["dest_ip"].as_str(),
                record["dest_port"].as_u64()
            ),
            (Some(client), Some(server), Some(u64::from(port))),
            "{record}"
        );
    }
    let report = up.stop();
    let tcp = &report["tcp"];
    assert_eq!(
        (
            &tcp["starttls_sessions"],
            &tcp["starttls_upgraded"],
            &tcp["tls_intercepted"]
        ),
        (&serde_json::json!(4), &serde_json::json!(4), &serde_json::json!(4)),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn openssl_s_client_starttls_smtp_is_intercepted_with_the_forged_certificate_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-s-client");
    let (input, answer) = s_client_dialogue("smtp");
    for server in [SRV_V4, SRV_V6] {
        let what = format!("s_client -starttls smtp to {server}:25 through tlsgate");
        let transcript = s_client(&up.lab, CLI, "smtp", server, 25, &up.ca, input).expect_ok(&what);
        assert!(
            transcript.contains("Verify return code: 0 (ok)"),
            "{what}:\n{transcript}"
        );
        assert!(
            transcript.contains("tlsgate interception CA"),
            "{what}: issued by the appliance CA:\n{transcript}"
        );
        assert!(transcript.contains(answer), "{what}:\n{transcript}");
    }
    for record in up.upgraded_records(2) {
        assert_eq!(record["ended"], "closed", "{record}");
    }
    let report = up.stop();
    assert_eq!(report["tcp"]["starttls_upgraded"], 2, "{report}");
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_the_smtp_preamble_and_the_mail_in_plaintext() {
    let up = Intercepting::inspected("starttls-intercept-box");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    let text = mail("inspected");
    let file = up.scratch.path("inspected.eml");
    std::fs::write(&file, &text).expect("mail file");
    swaks(&up.lab, CLI, SRV_V4, 25, &up.ca, &file).expect_ok("swaks through tlsgate and the box");
    let delivered = up.peers.await_delivered("<inspected@lab.test>");
    assert!(delivered.contains(&text), "delivered intact:\n{delivered}");
    // The recorder (tcpflow) holds the client's side of the conversation:
    // the preamble, then what went inside TLS, in plaintext.
    let flows = up.scratch.path("box/flows");
    let recorded: Vec<String> = std::fs::read_dir(&flows)
        .expect("the box's flows")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect();
    let up_flow = recorded
        .iter()
        .find(|flow| flow.starts_with("EHLO client.lab.test\r\nSTARTTLS\r\n"))
        .unwrap_or_else(|| panic!("no client flow in {}: {recorded:?}", flows.display()));
    assert!(up_flow.contains("MAIL FROM:<sender@lab.test>"), "{up_flow}");
    assert!(up_flow.contains("Subject: intercepted inspected"), "{up_flow}");
    assert!(
        recorded
            .iter()
            .any(|flow| flow.contains("250-STARTTLS") && flow.contains("queued as")),
        "the server's side, before and after the upgrade: {recorded:?}"
    );
    for record in up.upgraded_records(1) {
        assert_eq!(record["inspection"], "inspected", "{record}");
    }
    let report = up.stop();
    assert_eq!(report["tcp"]["inspected"], 1, "{report}");
    inspect_box(&["stop", &dir]);
}

// --- FTP over AUTH TLS: the control connection and its TLS data connections ---

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_downloads_and_uploads_byte_exact_over_intercepted_ftp_with_intercepted_tls_data_connections_epsv_and_pasv() {
    let up = Intercepting::on("configs/lab.toml", "starttls-intercept-ftp", "ftp");
    let upload: Vec<u8> = (0..200_000u32).map(|at| (at % 251) as u8).collect();
    let modes = [("epsv", &[][..]), ("pasv", &["--disable-epsv"][..])];
    for (name, options) in modes {
        // curl trusts only the appliance CA: the control connection's and
        // the data connections' forged certificates; vsftpd requires the
        // data connection's TLS to resume the control connection's.
        let saved = up.scratch.path(&format!("{name}.bin"));
        curl_ftp_download(&up.lab, CLI, SRV_V4, &up.ca, options, &saved)
            .expect_ok(&format!("{name} download through tlsgate"));
        assert!(
            std::fs::read(&saved).expect("download") == up.peers.ftp_file(),
            "{name}: downloaded byte-exact"
        );
        let file = up.scratch.path(&format!("{name}-upload.bin"));
        std::fs::write(&file, &upload).expect("upload file");
        curl_ftp_upload(&up.lab, CLI, SRV_V4, &up.ca, options, &file, name)
            .expect_ok(&format!("{name} upload through tlsgate"));
        assert!(up.peers.ftp_uploaded(name) == upload, "{name}: uploaded byte-exact");
    }
    // Four control connections, four data connections.
    let records = await_records(&up.scratch, 8);
    let data: Vec<_> = records
        .iter()
        .filter(|record| record["starttls"] == "ftp-data")
        .collect();
    assert_eq!(data.len(), 4, "{records:?}");
    for record in data {
        assert_eq!(record["event_type"], "tls_intercept", "{record}");
        assert_eq!(record["sni"], SERVER_NAME, "{record}");
        assert_eq!(record["upstream_verified"], true, "{record}");
        assert_eq!(
            record["server_resumed"], true,
            "resumed the control session upstream: {record}"
        );
        assert!(
            FTP_PASSIVE_PORTS.contains(&(record["dest_port"].as_u64().unwrap() as u16)),
            "{record}"
        );
    }
    let report = up.stop();
    let tcp = &report["tcp"];
    assert_eq!(
        (&tcp["starttls_upgraded"], &tcp["ftp_data_tls"], &tcp["ftp_data_failed"]),
        (&serde_json::json!(4), &serde_json::json!(4), &serde_json::json!(0)),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_the_ftp_commands_and_the_downloaded_file_in_plaintext() {
    let up = Intercepting::on("configs/lab-inspect.toml", "starttls-intercept-ftp-box", "ftp");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    let saved = up.scratch.path("inspected.bin");
    curl_ftp_download(&up.lab, CLI, SRV_V4, &up.ca, &[], &saved).expect_ok("download through tlsgate and the box");
    assert!(std::fs::read(&saved).expect("download") == up.peers.ftp_file());
    let flows = up.scratch.path("box/flows");
    let recorded: Vec<Vec<u8>> = std::fs::read_dir(&flows)
        .expect("the box's flows")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .collect();
    // The control channel inside TLS, then the data connection's content.
    let texts: Vec<String> = recorded
        .iter()
        .map(|flow| String::from_utf8_lossy(flow).into_owned())
        .collect();
    assert!(
        texts
            .iter()
            .any(|flow| flow.contains("PROT P\r\n") && flow.contains("RETR file.bin\r\n")),
        "{texts:?}"
    );
    assert!(
        recorded.contains(&up.peers.ftp_file()),
        "the downloaded file, in plaintext"
    );
    let report = up.stop();
    assert_eq!(report["tcp"]["ftp_data_tls"], 1, "{report}");
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_moves_files_byte_exact_over_intercepted_ftp_over_ipv6_with_epsv() {
    let up = Intercepting::on("configs/lab.toml", "starttls-intercept-ftp-v6", "ftp");
    let saved = up.scratch.path("v6.bin");
    curl_ftp_download(&up.lab, CLI, SRV_V6, &up.ca, &[], &saved).expect_ok("IPv6 download through tlsgate");
    assert!(std::fs::read(&saved).expect("download") == up.peers.ftp_file());
    let file = up.scratch.path("v6-upload.bin");
    let upload: Vec<u8> = (0..100_000u32).map(|at| (at % 241) as u8).collect();
    std::fs::write(&file, &upload).expect("upload file");
    curl_ftp_upload(&up.lab, CLI, SRV_V6, &up.ca, &[], &file, "v6").expect_ok("IPv6 upload through tlsgate");
    assert!(up.peers.ftp_uploaded("v6") == upload, "uploaded byte-exact");
    let records = await_records(&up.scratch, 4);
    let data: Vec<_> = records
        .iter()
        .filter(|record| record["starttls"] == "ftp-data")
        .collect();
    assert_eq!(data.len(), 2, "{records:?}");
    for record in data {
        assert_eq!(record["dest_ip"], SRV_V6, "{record}");
        assert_eq!(record["server_resumed"], true, "{record}");
    }
    let report = up.stop();
    assert_eq!(report["tcp"]["ftp_data_tls"], 2, "{report}");
}
