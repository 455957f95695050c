//! The namespace lab (root, `#[ignore]`) with the real STARTTLS peers of
//! tests/lab/starttls-peers.sh in the server namespace — Postfix (25, 587),
//! Dovecot (IMAP 143, POP3 110), Prosody (XMPP 5222), vsftpd (FTP 21, AUTH
//! TLS) and PostgreSQL 15 (5432) — and their real clients in the client
//! namespace, with tlsgate bridging in between without intercepting
//! (configs/lab.toml): the direct baselines. Each client completes its
//! protocol over STARTTLS verifying the lab CA, over IPv4 and IPv6, and
//! refuses when it trusts another CA (the appliance's). The client
//! functions live in tests/common/starttls.rs so that the interception
//! tests run the same clients with the appliance CA. Run only through the
//! lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_starttls -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::io::Read;
use std::path::PathBuf;

use common::lab::{appliance_ca, Appliance, Lab, CLI, SRV_V4, SRV_V6};
use common::starttls::{
    curl_ftp_download, curl_ftp_upload, curl_mail, psql, queue_id, s_client, s_client_dialogue, swaks, xmpp_login,
    StarttlsPeers,
};
use common::{repo, Scratch};

const CLI_V4: &str = "198.18.0.1";
const CLI_V6: &str = "2001:2::1";
/// Each server address with the client address the server must see.
const FAMILIES: [(&str, &str); 2] = [(SRV_V4, CLI_V4), (SRV_V6, CLI_V6)];

/// The lab, the peers and tlsgate bridging (nothing intercepted).
struct Direct {
    appliance: Appliance,
    peers: StarttlsPeers,
    scratch: Scratch,
    lab: Lab,
}

impl Direct {
    fn up(name: &str) -> Direct {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = StarttlsPeers::start(scratch.path("peers"));
        let appliance = Appliance::start(&lab, &scratch, &repo().join("configs/lab.toml"));
        Direct {
            appliance,
            peers,
            scratch,
            lab,
        }
    }

    /// A CA the servers' certificates do not chain to: an appliance CA
    /// (made at the first call).
    fn other_ca(&self) -> PathBuf {
        let ca = self.scratch.path("ca/ca.pem");
        if !ca.exists() {
            appliance_ca(&self.scratch);
        }
        ca
    }

    /// Stops tlsgate and checks that it only bridged: no frame went to its
    /// TCP stack, no TLS session was intercepted.
    fn stop(self) {
        let (status, report, printed) = self.appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        for port in report["ports"].as_array().expect("ports") {
            assert_eq!(port["intercepted"], 0, "{report}");
            assert!(port["bridged"].as_u64().unwrap() > 0, "{report}");
        }
        assert_eq!(report["tcp"]["tls_intercepted"], 0, "{report}");
    }
}

/// `bytes` random bytes.
fn random(bytes: usize) -> Vec<u8> {
    let mut data = vec![0; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut data))
        .expect("random bytes");
    data
}

/// A mail from sender@lab.test to tester@lab.test with every header Postfix
/// would otherwise add (so the delivered copy must contain it verbatim),
/// a unique Message-ID and 200 lines of random hex: its text.
fn mail(id: &str) -> String {
    let mut text = format!(
        "From: Lab Sender <sender@lab.test>\nTo: Tester <tester@lab.test>\nSubject: over STARTTLS {id}\n\
         Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <{id}@lab.test>\n\n"
    );
    for line in random(200 * 32).chunks(32) {
        text.extend(line.iter().map(|byte| format!("{byte:02x}")));
        text.push('\n');
    }
    text
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn swaks_delivers_mail_intact_over_smtp_starttls_on_25_and_587_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-smtp");
    let cases = [
        (SRV_V4, CLI_V4, 25),
        (SRV_V6, CLI_V6, 25),
        (SRV_V4, CLI_V4, 587),
        (SRV_V6, CLI_V6, 587),
    ];
    for (index, (server, client, port)) in cases.into_iter().enumerate() {
        let id = format!("swaks-{index}-{port}");
        let text = mail(&id);
        let file = up.scratch.path(&format!("{id}.eml"));
        std::fs::write(&file, &text).expect("mail file");
        let transcript = swaks(&up.lab, CLI, server, port, &up.peers.ca(), &file).expect_ok("swaks");
        assert!(transcript.contains("=== TLS started with cipher"), "{transcript}");
        let queued = queue_id(&transcript);

        let delivered = up.peers.await_delivered(&format!("<{id}@lab.test>"));
        assert!(delivered.contains(&text), "delivered intact:\n{delivered}");
        assert!(delivered.contains("with ESMTPS id"), "received over TLS:\n{delivered}");
        // The server saw the client's own address (bridged, not proxied).
        up.peers
            .await_logged("maillog", &format!("{queued}: client=unknown[{client}]"));
    }
    // A client trusting another CA gives up at the upgrade: nothing is sent.
    let file = up.scratch.path("refused.eml");
    std::fs::write(&file, mail("refused")).expect("mail file");
    let refused = swaks(&up.lab, CLI, SRV_V4, 25, &up.other_ca(), &file);
    assert!(!refused.succeeded, "{}", refused.transcript);
    assert!(
        refused.transcript.contains("certificate verify failed"),
        "{}",
        refused.transcript
    );
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn openssl_s_client_upgrades_every_protocol_and_talks_over_tls_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-s-client");
    let other_ca = up.other_ca();
    let protocols = [
        ("smtp", 25),
        ("smtp", 587),
        ("imap", 143),
        ("pop3", 110),
        ("xmpp", 5222),
        ("ftp", 21),
        ("postgres", 5432),
    ];
    for (protocol, port) in protocols {
        let (input, answer) = s_client_dialogue(protocol);
        for (server, _) in FAMILIES {
            let what = format!("s_client -starttls {protocol} to {server}:{port}");
            // Its status says nothing (vsftpd closes without close_notify):
            // the transcript does.
            let transcript = s_client(&up.lab, CLI, protocol, server, port, &up.peers.ca(), input).transcript;
            assert!(
                transcript.contains("Verify return code: 0 (ok)"),
                "{what}:\n{transcript}"
            );
            assert!(transcript.contains("CN = mail.lab.test"), "{what}:\n{transcript}");
            // The server answered what only comes after the upgrade.
            assert!(transcript.contains(answer), "{what}:\n{transcript}");
        }
        let refused = s_client(&up.lab, CLI, protocol, SRV_V4, port, &other_ca, input);
        assert!(
            !refused.succeeded,
            "{protocol} with another CA:\n{}",
            refused.transcript
        );
        assert!(
            refused.transcript.contains("unable to get local issuer certificate"),
            "{protocol}:\n{}",
            refused.transcript
        );
    }
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_reads_the_waiting_message_over_imap_and_pop3_starttls_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-mail");
    let expected = up.peers.first_message();
    for (server, client) in FAMILIES {
        for (scheme, path) in [("imap", "INBOX;UID=1"), ("pop3", "1")] {
            let read = curl_mail(&up.lab, CLI, server, &up.peers.ca(), scheme, path);
            let transcript = read.expect_ok(&format!("curl {scheme} via {server}"));
            assert_eq!(
                transcript.as_bytes(),
                &expected[..],
                "{scheme} via {server}: the message as stored"
            );
            // Dovecot logs the login: from the client's address, over TLS.
            let login = up.peers.await_logged(
                "dovecot/dovecot.log",
                &format!("{scheme}-login: Info: Login: user=<tester>, method=PLAIN, rip={client}, lip={server}"),
            );
            assert!(login.contains(", TLS"), "{login}");
        }
    }
    for scheme in ["imap", "pop3"] {
        let refused = curl_mail(&up.lab, CLI, SRV_V4, &up.other_ca(), scheme, "");
        assert!(!refused.succeeded, "{scheme} with another CA:\n{}", refused.transcript);
    }
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_downloads_and_uploads_byte_exact_over_ftp_auth_tls_in_passive_mode_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-ftp");
    let upload = up.scratch.path("upload.bin");
    std::fs::write(&upload, random(300 * 1024)).expect("upload file");
    // EPSV over both families, and PASV (IPv4 only: it carries an IPv4 address).
    let cases = [
        (SRV_V4, CLI_V4, &[][..], "epsv4"),
        (SRV_V6, CLI_V6, &[][..], "epsv6"),
        (SRV_V4, CLI_V4, &["--disable-epsv"][..], "pasv4"),
    ];
    for (server, client, options, name) in cases {
        let saved = up.scratch.path(&format!("{name}.bin"));
        curl_ftp_download(&up.lab, CLI, server, &up.peers.ca(), options, &saved).expect_ok(&format!("download {name}"));
        assert!(
            std::fs::read(&saved).expect("download") == up.peers.ftp_file(),
            "{name}: download not byte-exact"
        );
        curl_ftp_upload(&up.lab, CLI, server, &up.peers.ca(), options, &upload, name)
            .expect_ok(&format!("upload {name}"));
        assert!(
            up.peers.ftp_uploaded(name) == std::fs::read(&upload).expect("upload file"),
            "{name}: upload not byte-exact"
        );
        up.peers.await_logged(
            "vsftpd.log",
            &format!("OK UPLOAD: Client \"{client}\", \"/upload/{name}\", 307200 bytes"),
        );
    }
    // The data connections were passive, as asked.
    for (client, command) in [(CLI_V4, "EPSV"), (CLI_V6, "EPSV"), (CLI_V4, "PASV")] {
        up.peers.await_logged(
            "vsftpd.log",
            &format!("FTP command: Client \"{client}\", \"{command}\""),
        );
    }
    let refused = curl_ftp_download(
        &up.lab,
        CLI,
        SRV_V4,
        &up.other_ca(),
        &[],
        &up.scratch.path("refused.bin"),
    );
    assert!(!refused.succeeded, "{}", refused.transcript);
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn psql_runs_a_query_with_ssl_verify_full_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-postgres");
    let query = "SELECT word, ssl, inet_client_addr() FROM greeting, pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (server, client) in FAMILIES {
        let rows = psql(&up.lab, CLI, server, &up.peers.ca(), query).expect_ok(&format!("psql via {server}"));
        // The row, over TLS, from the client's own address.
        assert_eq!(rows, format!("hello|t|{client}\n"));
    }
    let refused = psql(&up.lab, CLI, SRV_V4, &up.other_ca(), query);
    assert!(!refused.succeeded, "{}", refused.transcript);
    assert!(
        refused.transcript.contains("certificate verify failed"),
        "{}",
        refused.transcript
    );
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn slixmpp_logs_in_and_gets_its_message_back_over_xmpp_starttls_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-xmpp");
    for (server, _) in FAMILIES {
        let transcript = xmpp_login(&up.lab, CLI, server, &up.peers.ca()).expect_ok(&format!("slixmpp via {server}"));
        assert!(transcript.contains("logged in as tester@lab.test/"), "{transcript}");
        assert!(
            transcript.contains("message echoed: over STARTTLS through the lab"),
            "{transcript}"
        );
    }
    let refused = xmpp_login(&up.lab, CLI, SRV_V4, &up.other_ca());
    assert!(!refused.succeeded, "{}", refused.transcript);
    assert!(refused.transcript.contains("invalid chain"), "{}", refused.transcript);
    up.stop();
}
