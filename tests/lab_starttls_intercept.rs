//! STARTTLS interception in the namespace lab (root, `#[ignore]`): tlsgate
//! with a `[[starttls]]` entry for every protocol of the real peers of
//! tests/lab/starttls-peers.sh in the server namespace — SMTP (Postfix, 25
//! and 587), IMAP and POP3 (Dovecot), XMPP (Prosody), FTP's control channel
//! (vsftpd) and PostgreSQL — whose lab CA the appliance trusts upstream,
//! between the real clients in the client namespace, which trust only the
//! appliance CA. The clients are those of the direct baselines
//! (tests/common/starttls.rs, tests/lab_starttls.rs); with the inspection
//! pair, the recording box of scripts/inspect-box.sh sees each conversation
//! in plaintext, the preamble and what went inside TLS. Run only through
//! the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_starttls_intercept -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::lab::{
    appliance_ca, assert_tcp_counters, await_records, box_dir, inspect_box, lab_config, Appliance, Lab, CLI, SRV_V4,
    SRV_V6,
};
use common::starttls::{
    assert_ftp_counters, curl_ftp_download, curl_ftp_upload, imap_injection, psql, psql_with, swaks_in_plaintext,
    xmpp_login, Clients, StarttlsPeers, CLI_V4, CLI_V6, FAMILIES, FIRST_MESSAGE_FETCHES, FTP_PASSIVE_PORTS,
    SERVER_NAME,
};
use common::Scratch;

/// The protocols of the peers, each on its default ports.
const PROTOCOLS: [&str; 6] = ["smtp", "imap", "pop3", "xmpp", "ftp", "postgres"];
/// What psql asks: the row, whether the server's side is TLS, and the
/// client address the server saw.
const QUERY: &str = "SELECT word, ssl, inet_client_addr() FROM greeting, pg_stat_ssl WHERE pid = pg_backend_pid()";
/// psql without SCRAM channel binding, which an interception breaks.
const WITHOUT_CHANNEL_BINDING: &str = "channel_binding=disable";
/// The SNI of clients that send the name they verify.
const NAMED: Option<&str> = Some(SERVER_NAME);
/// The counters of four connections upgraded and intercepted.
const FOUR_UPGRADED: [(&str, u64); 3] = [
    ("starttls_sessions", 4),
    ("starttls_upgraded", 4),
    ("tls_intercepted", 4),
];
/// What s_client shows of a forged certificate: its issuer.
const FORGED: &str = "tlsgate interception CA";

/// The lab, the peers, and tlsgate intercepting their STARTTLS.
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
        Intercepting::on("configs/lab.toml", name, false)
    }

    /// With `require_tls = true` in every entry.
    fn requiring_tls(name: &str) -> Intercepting {
        Intercepting::on("configs/lab.toml", name, true)
    }

    /// On the four-port lab (the inspection pair, a 500 ms SYN timeout):
    /// start the box first.
    fn inspected(name: &str) -> Intercepting {
        Intercepting::on("configs/lab-inspect.toml", name, false)
    }

    /// tlsgate on the lab configuration `base` with `[tls]`, the connection
    /// log and a `[[starttls]]` entry for each of [`PROTOCOLS`].
    fn on(base: &str, name: &str, require_tls: bool) -> Intercepting {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = StarttlsPeers::start(scratch.path("peers"));
        let ca_dir = appliance_ca(&scratch);
        let mut config = lab_config(base).replace("syn_timeout_ms = 8000", "syn_timeout_ms = 500");
        config.push_str(&peers.tls_and_log_config(&ca_dir, &scratch));
        for protocol in PROTOCOLS {
            config.push_str(&format!(
                "\n[[starttls]]\nprotocol = \"{protocol}\"\nrequire_tls = {require_tls}\n"
            ));
        }
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

    /// The clients, trusting only the appliance CA.
    fn clients(&self) -> Clients<'_> {
        Clients {
            lab: &self.lab,
            peers: &self.peers,
            scratch: &self.scratch,
            ca: self.ca.clone(),
        }
    }

    /// The connection log once it holds a record for each of `expected`
    /// (protocol, SNI if any, client address; in any order), each an
    /// upgraded and intercepted connection to a verified server with
    /// nothing discarded.
    fn upgraded_records(&self, expected: &[(&str, Option<&str>, &str)]) -> Vec<serde_json::Value> {
        let records = await_records(&self.scratch, expected.len());
        assert_eq!(records.len(), expected.len(), "{records:?}");
        for record in &records {
            assert_eq!(record["event_type"], "tls_intercept", "{record}");
            assert_eq!(record["starttls_outcome"], "upgraded", "{record}");
            assert_eq!(record["starttls_discarded_bytes"], 0, "{record}");
            assert_eq!(record["decision"], "intercept", "{record}");
            assert_eq!(record["upstream_verified"], true, "{record}");
        }
        let mut seen: Vec<(&str, Option<&str>, &str)> = records
            .iter()
            .map(|record| {
                (
                    record["starttls"].as_str().unwrap_or("-"),
                    record["sni"].as_str(),
                    record["src_ip"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        let mut expected = expected.to_vec();
        seen.sort_unstable();
        expected.sort_unstable();
        assert_eq!(seen, expected, "{records:?}");
        records
    }

    /// The box's recordings (tcpflow: one file per direction of each
    /// connection, named "SRC.SPORT-DST.DPORT") once `ready` holds for them
    /// (tcpflow writes what it saw on its own schedule), or as they are
    /// after 10 s.
    fn await_box_flows(&self, ready: impl Fn(&[(String, Vec<u8>)]) -> bool) -> Vec<(String, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let flows: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.scratch.path("box/flows"))
                .expect("the box's flows")
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(entry.path()).expect("a flow"))
                })
                .collect();
            if ready(&flows) || Instant::now() >= deadline {
                return flows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each direction of the recorded connections to `port`, the client's
    /// side first, once `ready` holds for the client's side (see
    /// [`Intercepting::await_box_flows`]).
    fn await_recorded_flows(&self, port: u16, ready: impl Fn(&str) -> bool) -> (String, String) {
        let port = format!(".{port:05}");
        let sides = |flows: &[(String, Vec<u8>)]| {
            let (mut up, mut down) = (String::new(), String::new());
            for (name, bytes) in flows {
                let Some((source, destination)) = name.split_once('-') else {
                    continue;
                };
                if destination.ends_with(&port) {
                    up.push_str(&String::from_utf8_lossy(bytes));
                } else if source.ends_with(&port) {
                    down.push_str(&String::from_utf8_lossy(bytes));
                }
            }
            (up, down)
        };
        sides(&self.await_box_flows(|flows| ready(&sides(flows).0)))
    }

    /// Stops tlsgate; its report.
    fn stop(self) -> serde_json::Value {
        let (status, report, printed) = self.appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        report
    }

    /// Stops tlsgate and checks the report's `tcp` counters named in
    /// `counters`; the report.
    fn stop_counting(self, counters: &[(&str, u64)]) -> serde_json::Value {
        let report = self.stop();
        assert_tcp_counters(&report, counters);
        report
    }
}

/// A mail with a unique Message-ID and enough body to take many segments.
fn mail(id: &str) -> String {
    common::starttls::mail("intercepted", id, 400)
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
        // swaks trusts only the appliance CA: the forged certificate.
        up.clients().swaks_delivers(server, client, port, &id, &mail(&id));
    }
    let expected: Vec<_> = cases.iter().map(|(_, client, _)| ("smtp", NAMED, *client)).collect();
    let records = up.upgraded_records(&expected);
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
    up.stop_counting(&FOUR_UPGRADED);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn openssl_s_client_starttls_smtp_is_intercepted_with_the_forged_certificate_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-s-client");
    for (server, _) in FAMILIES {
        up.clients()
            .s_client_talks("smtp", server, 25, FORGED)
            .expect_ok(&format!("s_client -starttls smtp to {server}:25 through tlsgate"));
    }
    let expected = FAMILIES.map(|(_, client)| ("smtp", NAMED, client));
    for record in up.upgraded_records(&expected) {
        assert_eq!(record["ended"], "closed", "{record}");
    }
    up.stop_counting(&[("starttls_upgraded", 2)]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_the_smtp_preamble_and_the_mail_in_plaintext() {
    let up = Intercepting::inspected("starttls-intercept-box");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    up.clients()
        .swaks_delivers(SRV_V4, CLI_V4, 25, "inspected", &mail("inspected"));
    // The recorder (tcpflow) holds the client's side of the conversation:
    // the preamble, then what went inside TLS, in plaintext.
    let (up_flow, down_flow) = up.await_recorded_flows(25, |flow| flow.contains("Subject: intercepted inspected"));
    assert!(up_flow.starts_with("EHLO client.lab.test\r\nSTARTTLS\r\n"), "{up_flow}");
    assert!(up_flow.contains("MAIL FROM:<sender@lab.test>"), "{up_flow}");
    assert!(up_flow.contains("Subject: intercepted inspected"), "{up_flow}");
    // The server's side, before and after the upgrade.
    assert!(
        down_flow.contains("250-STARTTLS") && down_flow.contains("queued as"),
        "{down_flow}"
    );
    for record in up.upgraded_records(&[("smtp", NAMED, CLI_V4)]) {
        assert_eq!(record["inspection"], "inspected", "{record}");
    }
    up.stop_counting(&[("inspected", 1)]);
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn openssl_s_client_starttls_imap_pop3_xmpp_ftp_and_postgres_verify_the_forged_certificate_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-s-client-all");
    let mut expected = Vec::new();
    for (protocol, port) in [
        ("imap", 143),
        ("pop3", 110),
        ("xmpp", 5222),
        ("ftp", 21),
        ("postgres", 5432),
    ] {
        for (server, client) in FAMILIES {
            up.clients().s_client_talks(protocol, server, port, FORGED);
            expected.push((protocol, NAMED, client));
        }
    }
    up.upgraded_records(&expected);
    up.stop_counting(&[
        ("starttls_sessions", 10),
        ("starttls_upgraded", 10),
        ("starttls_failed", 0),
    ]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_reads_the_waiting_message_byte_exact_over_intercepted_imap_and_pop3_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-mail");
    let mut expected = Vec::new();
    for (server, client) in FAMILIES {
        for (scheme, path) in FIRST_MESSAGE_FETCHES {
            // Transparent: Dovecot saw the client's own address.
            up.clients().curl_reads_first_message(server, client, scheme, path);
            expected.push((scheme, NAMED, client));
        }
    }
    up.upgraded_records(&expected);
    up.stop_counting(&FOUR_UPGRADED);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn slixmpp_logs_in_and_gets_its_message_back_through_intercepted_xmpp_over_ipv4_and_ipv6() {
    let up = Intercepting::up("starttls-intercept-xmpp");
    for (server, _) in FAMILIES {
        let transcript =
            xmpp_login(&up.lab, CLI, server, &up.ca).expect_ok(&format!("slixmpp via {server} through tlsgate"));
        assert!(transcript.contains("logged in as tester@lab.test/"), "{transcript}");
        assert!(
            transcript.contains("message echoed: over STARTTLS through the lab"),
            "{transcript}"
        );
    }
    up.upgraded_records(&FAMILIES.map(|(_, client)| ("xmpp", None, client)));
    up.stop_counting(&[("starttls_upgraded", 2), ("tls_intercepted", 2)]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn psql_verify_full_runs_its_query_through_intercepted_postgres_unless_scram_channel_binding_detects_it() {
    let up = Intercepting::up("starttls-intercept-postgres");
    for (server, client) in FAMILIES {
        let what = format!("psql via {server} through tlsgate");
        let rows = psql_with(&up.lab, CLI, server, &up.ca, WITHOUT_CHANNEL_BINDING, QUERY).expect_ok(&what);
        // The row, over TLS on the server's side, from the client's own address.
        assert_eq!(rows, format!("hello|t|{client}\n"));
        // libpq's default, channel_binding=prefer: SCRAM-SHA-256-PLUS binds
        // the login to the certificate the client saw, the forged one, and
        // the server refuses it.
        let refused = psql(&up.lab, CLI, server, &up.ca, QUERY);
        assert!(!refused.succeeded, "{what}: {}", refused.transcript);
        assert!(
            refused.transcript.contains("SCRAM channel binding check failed"),
            "{what}: {}",
            refused.transcript
        );
    }
    up.peers
        .await_logged("pg/postgresql.log", "FATAL:  SCRAM channel binding check failed");
    let expected: Vec<_> = FAMILIES
        .iter()
        .chain(&FAMILIES)
        .map(|(_, client)| ("postgres", NAMED, *client))
        .collect();
    up.upgraded_records(&expected);
    up.stop_counting(&[("starttls_upgraded", 4), ("tls_intercepted", 4)]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_imap_pop3_sql_and_xmpp_in_plaintext_before_and_after_the_upgrade() {
    let up = Intercepting::inspected("starttls-intercept-box-all");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    let message = String::from_utf8(up.peers.first_message()).expect("a text message");
    for (scheme, path) in FIRST_MESSAGE_FETCHES {
        up.clients().curl_reads_first_message(SRV_V4, CLI_V4, scheme, path);
    }
    let rows = psql_with(&up.lab, CLI, SRV_V4, &up.ca, WITHOUT_CHANNEL_BINDING, QUERY)
        .expect_ok("psql through tlsgate and the box");
    assert_eq!(rows, format!("hello|t|{CLI_V4}\n"));
    let transcript = xmpp_login(&up.lab, CLI, SRV_V4, &up.ca).expect_ok("slixmpp through tlsgate and the box");
    assert!(
        transcript.contains("message echoed: over STARTTLS through the lab"),
        "{transcript}"
    );
    let records = up.upgraded_records(&[
        ("imap", NAMED, CLI_V4),
        ("pop3", NAMED, CLI_V4),
        ("postgres", NAMED, CLI_V4),
        ("xmpp", None, CLI_V4),
    ]);
    // The client's commands: the upgrade in the preamble, then what went
    // inside TLS; the server's answers: the message itself.
    let (imap_up, imap_down) = up.await_recorded_flows(143, |flow| flow.contains(" FETCH 1 "));
    let starttls = imap_up.find(" STARTTLS\r\n").unwrap_or_else(|| panic!("{imap_up}"));
    let fetch = imap_up.find(" FETCH 1 ").unwrap_or_else(|| panic!("{imap_up}"));
    assert!(starttls < fetch, "{imap_up}");
    assert!(
        imap_up.contains(" AUTHENTICATE PLAIN") || imap_up.contains(" LOGIN "),
        "{imap_up}"
    );
    assert!(imap_down.contains(&message), "{imap_down}");
    let (pop3_up, pop3_down) = up.await_recorded_flows(110, |flow| flow.contains("RETR 1\r\n"));
    let stls = pop3_up.find("STLS\r\n").unwrap_or_else(|| panic!("{pop3_up}"));
    let retr = pop3_up.find("RETR 1\r\n").unwrap_or_else(|| panic!("{pop3_up}"));
    assert!(stls < retr, "{pop3_up}");
    assert!(pop3_down.contains(&message), "{pop3_down}");
    let (sql_up, sql_down) = up.await_recorded_flows(5432, |flow| flow.contains(QUERY));
    assert!(sql_up.contains(QUERY), "{sql_up}");
    assert!(sql_down.contains("hello"), "{sql_down}");
    let (xmpp_up, _) =
        up.await_recorded_flows(5222, |flow| flow.contains("<body>over STARTTLS through the lab</body>"));
    let upgrade = xmpp_up.find("<starttls").unwrap_or_else(|| panic!("{xmpp_up}"));
    let chat = xmpp_up
        .find("<body>over STARTTLS through the lab</body>")
        .unwrap_or_else(|| panic!("{xmpp_up}"));
    assert!(upgrade < chat && xmpp_up.contains("<message"), "{xmpp_up}");
    for record in &records {
        assert_eq!(record["inspection"], "inspected", "{record}");
    }
    up.stop_counting(&[("inspected", 4)]);
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn a_command_injected_after_imap_starttls_is_discarded_and_never_reaches_dovecot() {
    let up = Intercepting::inspected("starttls-intercept-injection");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    // `a STARTTLS` and `b LOGIN tester secret` in one segment.
    let transcript = imap_injection(&up.lab, CLI, SRV_V4, &up.ca).expect_ok("starttls-inject.py through tlsgate");
    assert!(transcript.contains("c OK"), "{transcript}");
    assert!(
        !transcript.lines().any(|line| line.starts_with("b ")),
        "the injected LOGIN was answered inside TLS:\n{transcript}"
    );
    // What went on to Dovecot: the upgrade request, then only the command
    // sent inside TLS.
    let (imap_up, _) = up.await_recorded_flows(143, |flow| flow.contains("c LOGOUT"));
    assert_eq!(imap_up, "a STARTTLS\r\nc LOGOUT\r\n");
    up.peers
        .await_logged("dovecot/dovecot.log", "imap-login: Info: Disconnected");
    let log = std::fs::read_to_string(up.peers.0.join("dovecot/dovecot.log")).expect("dovecot log");
    assert!(!log.contains("Login: user=<tester>"), "{log}");
    let injected = "b LOGIN tester secret\r\n".len();
    let records = await_records(&up.scratch, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(
        (
            &record["starttls"],
            &record["starttls_outcome"],
            &record["starttls_discarded_bytes"]
        ),
        (
            &serde_json::json!("imap"),
            &serde_json::json!("upgraded"),
            &serde_json::json!(injected)
        ),
        "{record}"
    );
    up.stop_counting(&[("starttls_injected_bytes_discarded", injected as u64)]);
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn require_tls_resets_swaks_and_psql_in_plaintext_and_logs_them_blocked_over_ipv4_and_ipv6() {
    let up = Intercepting::requiring_tls("starttls-intercept-require-tls");
    let file = up.scratch.path("plaintext.eml");
    std::fs::write(&file, mail("plaintext")).expect("mail file");
    for (server, client) in FAMILIES {
        let refused = swaks_in_plaintext(&up.lab, CLI, server, 25, &file);
        assert!(!refused.succeeded, "{}", refused.transcript);
        assert!(
            refused.transcript.contains("MAIL FROM:<sender@lab.test>"),
            "{}",
            refused.transcript
        );
        // Postfix saw the EHLO, then the connection reset: never the MAIL.
        up.peers
            .await_logged("maillog", &format!("lost connection after EHLO from unknown[{client}]"));
        // The StartupMessage (user and database) in plaintext.
        let refused = psql_with(&up.lab, CLI, server, &up.ca, "sslmode=disable", QUERY);
        assert!(!refused.succeeded, "{}", refused.transcript);
        up.peers
            .await_logged("pg/postgresql.log", &format!("connection received: host={client}"));
    }
    let records = await_records(&up.scratch, 4);
    assert_eq!(records.len(), 4, "{records:?}");
    for record in &records {
        let protocol = record["starttls"].as_str().expect("a [[starttls]] record");
        assert!(["smtp", "postgres"].contains(&protocol), "{record}");
        assert_eq!(record["starttls_outcome"], "blocked", "{record}");
        assert_eq!(record["decision"], "block", "{record}");
        assert_eq!(
            record["reason"],
            format!("require_tls: {protocol} content before STARTTLS"),
            "{record}"
        );
    }
    let maillog = std::fs::read_to_string(up.peers.0.join("maillog")).expect("maillog");
    assert!(
        !maillog.contains("from=<sender@lab.test>"),
        "nothing queued:\n{maillog}"
    );
    // PostgreSQL saw connections reset before their StartupMessage, which
    // it would have refused (hostssl only: "no pg_hba.conf entry").
    up.peers.await_logged(
        "pg/postgresql.log",
        "could not receive data from client: Connection reset by peer",
    );
    let pg_log = std::fs::read_to_string(up.peers.0.join("pg/postgresql.log")).expect("postgresql.log");
    assert!(!pg_log.contains("no pg_hba.conf entry"), "{pg_log}");
    up.stop_counting(&[
        ("starttls_sessions", 4),
        ("starttls_plaintext_blocked", 4),
        ("starttls_upgraded", 0),
    ]);
}

// --- FTP over AUTH TLS: the control connection and its TLS data connections ---

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_downloads_and_uploads_byte_exact_over_intercepted_ftp_with_intercepted_tls_data_connections_epsv_and_pasv() {
    let up = Intercepting::up("starttls-intercept-ftp");
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
    assert_ftp_counters(&up.stop(), ("starttls_upgraded", 4), 4);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_the_ftp_commands_and_the_files_downloaded_and_uploaded_in_plaintext() {
    let up = Intercepting::inspected("starttls-intercept-ftp-box");
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    let saved = up.scratch.path("inspected.bin");
    curl_ftp_download(&up.lab, CLI, SRV_V4, &up.ca, &[], &saved).expect_ok("download through tlsgate and the box");
    assert!(std::fs::read(&saved).expect("download") == up.peers.ftp_file());
    // curl ends each upload with its last data and close_notify, then a
    // RST (it closes with the forged server's session tickets unread):
    // the upload still crosses the box whole before the RST. Small files
    // failed most often (vsftpd: 426 "Failure reading network stream").
    let mut uploads = Vec::new();
    for (round, size) in [0usize, 1024, 200_000].into_iter().cycle().take(9).enumerate() {
        let name = format!("box-{round}-{size}");
        let upload: Vec<u8> = (0..size).map(|at| ((at + round) % 251) as u8).collect();
        let file = up.scratch.path(&format!("{name}.bin"));
        std::fs::write(&file, &upload).expect("upload file");
        curl_ftp_upload(&up.lab, CLI, SRV_V4, &up.ca, &[], &file, &name)
            .expect_ok(&format!("{name}: upload through tlsgate and the box"));
        assert!(up.peers.ftp_uploaded(&name) == upload, "{name}: uploaded byte-exact");
        uploads.push(upload);
    }
    let file = up.peers.ftp_file();
    let recorded: Vec<Vec<u8>> = up
        .await_box_flows(|flows| {
            let has = |content: &Vec<u8>| flows.iter().any(|(_, bytes)| bytes == content);
            has(&file) && uploads.iter().filter(|upload| !upload.is_empty()).all(has)
        })
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    // The control channel inside TLS, then the data connections' content.
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
        texts.iter().any(|flow| flow.contains("STOR box-2-200000\r\n")),
        "{texts:?}"
    );
    assert!(recorded.contains(&file), "the downloaded file, in plaintext");
    for upload in uploads.iter().filter(|upload| !upload.is_empty()) {
        assert!(
            recorded.contains(upload),
            "an uploaded file of {} bytes, in plaintext",
            upload.len()
        );
    }
    let report = up.stop();
    assert_eq!(
        (&report["tcp"]["ftp_data_tls"], &report["tcp"]["ftp_data_failed"]),
        (&serde_json::json!(10), &serde_json::json!(0)),
        "{report}"
    );
    inspect_box(&["stop", &dir]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn curl_moves_files_byte_exact_over_intercepted_ftp_over_ipv6_with_epsv() {
    let up = Intercepting::up("starttls-intercept-ftp-v6");
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
