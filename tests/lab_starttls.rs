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

use common::lab::{appliance_ca, lab_config_file, Appliance, Lab, CLI, SRV_V4, SRV_V6};
use common::starttls::{
    curl_ftp_download, curl_ftp_upload, curl_mail, psql, s_client, s_client_dialogue, swaks, xmpp_login, Clients,
    StarttlsPeers, CLI_V4, CLI_V6, FAMILIES, FIRST_MESSAGE_FETCHES,
};
use common::Scratch;

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
        let appliance = Appliance::start(&lab, &scratch, &lab_config_file(&scratch, "configs/lab.toml"));
        Direct {
            appliance,
            peers,
            scratch,
            lab,
        }
    }

    /// The clients, trusting the lab CA.
    fn clients(&self) -> Clients<'_> {
        Clients {
            lab: &self.lab,
            peers: &self.peers,
            scratch: &self.scratch,
            ca: self.peers.ca(),
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
        up.clients().swaks_delivers(server, client, port, &id, &mail(&id));
    }
    // A client trusting another CA gives up at the upgrade: nothing is sent.
    let file = up.scratch.path("refused.eml");
    std::fs::write(&file, mail("refused")).expect("mail file");
    let refused = swaks(&up.lab, CLI, SRV_V4, 25, &up.other_ca(), &file).expect_refused("swaks");
    assert!(refused.contains("certificate verify failed"), "{refused}");
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
        for (server, _) in FAMILIES {
            up.clients()
                .s_client_talks(protocol, server, port, "CN = mail.lab.test");
        }
        let (input, _) = s_client_dialogue(protocol);
        let refused = s_client(&up.lab, CLI, protocol, SRV_V4, port, &other_ca, input)
            .expect_refused(&format!("{protocol} with another CA"));
        assert!(
            refused.contains("unable to get local issuer certificate"),
            "{protocol}:\n{refused}"
        );
    }
    up.stop();
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_reads_the_waiting_message_over_imap_and_pop3_starttls_over_ipv4_and_ipv6() {
    let up = Direct::up("starttls-mail");
    for (server, client) in FAMILIES {
        for (scheme, path) in FIRST_MESSAGE_FETCHES {
            up.clients().curl_reads_first_message(server, client, scheme, path);
        }
    }
    for (scheme, _) in FIRST_MESSAGE_FETCHES {
        curl_mail(&up.lab, CLI, SRV_V4, &up.other_ca(), scheme, "")
            .expect_refused(&format!("{scheme} with another CA"));
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
    let refused = psql(&up.lab, CLI, SRV_V4, &up.other_ca(), query).expect_refused("psql");
    assert!(refused.contains("certificate verify failed"), "{refused}");
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
    let refused = xmpp_login(&up.lab, CLI, SRV_V4, &up.other_ca()).expect_refused("slixmpp");
    assert!(refused.contains("invalid chain"), "{refused}");
    up.stop();
}
