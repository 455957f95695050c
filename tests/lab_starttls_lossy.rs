//! STARTTLS interception, upgrade/downgrade and owned-address termination
//! on paths like the users' (root, `#[ignore]`): the impairment element
//! (scripts/lab-impair.sh; the kernel has no netem) delays every frame by
//! 40 ms each way, loses 2%, reorders 5%, duplicates 1% and corrupts 0.5%
//! on the client link, the server link or both, so each leg has an 80 ms
//! round trip (160 ms end to end through both) with loss. Real clients and
//! servers: swaks to Postfix and curl reading back from Dovecot over IMAP
//! and POP3; curl moving 1 MiB each way over FTP AUTH TLS (its data
//! connections intercepted too); psql `verify-full` to PostgreSQL; curl's
//! plain HTTP upgraded to nginx's TLS and HTTPS downgraded to nginx's plain
//! HTTP with a 4 MiB body; a `[[service]]` whose backend is reached from the
//! appliance's own address, resolved by ARP / neighbour discovery through
//! the loss. Each test asserts byte-exactness, the appliance's counters
//! (every session upgraded or converted, none failed or timed out, the
//! only resets a peer's RST after its dialogue ended, corrupted frames
//! dropped as invalid) and a clean end (no flow left).
//! The values keep each test near a minute, the peers' start included (all
//! six took 292 s together): 40 ms each way is a long-haul round trip, 2%
//! loss costs every session several recoveries, and the 4 MiB bodies cross
//! the impaired link where the peers' kernel TCP sends them (the server
//! link), since smoltcp's recovery without SACK on an 80 ms path is slower
//! (docs/BENCHMARKS.md, lossy links). Run only through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_starttls_lossy -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};

use common::lab::{
    appliance_ca, connection_log, curl, impair, lab_config, tls_config, Appliance, Lab, LabDriver, Origin, CLI, SRV,
    SRV_V4, SRV_V6,
};
use common::lossy::{
    assert_clean_but_peer_resets, assert_corrupted_dropped, assert_impaired, content, peer_resets, stop_when_drained,
};
use common::starttls::{
    curl_ftp_download, curl_ftp_upload, curl_mail, mail, psql_with, queue_id, swaks, StarttlsPeers,
};
use common::terminate::TerminatePeers;
use common::{check_config, output, text, Scratch};

/// The impairment, the same each way on every impaired link.
const IMPAIRMENT: &str = "delay 40ms loss 2% reorder 5% 2ms duplicate 1% corrupt 0.5%";
/// The appliance's ports in its report: the client's and the server's.
const CLIENT_PORT: usize = 0;
const SERVER_PORT: usize = 1;
const CLI_V4: &str = "198.18.0.1";
const CLI_V6: &str = "2001:2::1";

/// Counters of sessions that went wrong; each must stay 0.
const STARTTLS_FAILURES: [&str; 6] = [
    "starttls_failed",
    "starttls_timeouts",
    "starttls_refused",
    "starttls_plaintext_blocked",
    "tls_failed",
    "handshake_timeouts",
];

/// Puts the element on each of `links` (before tlsgate binds them).
fn impair_links(links: &[&str]) {
    for link in links {
        impair(link, IMPAIRMENT, IMPAIRMENT);
    }
}

/// Stops the elements; each impaired its link both ways; the appliance
/// dropped the corrupted frames it got on each of those ports.
fn assert_impaired_links(links: &[&str], report: &serde_json::Value) {
    for link in links {
        assert_impaired(link);
        assert_corrupted_dropped(report, if *link == "client" { CLIENT_PORT } else { SERVER_PORT });
    }
}

/// Each of `counters` is 0 in the final report.
fn assert_zero(report: &serde_json::Value, counters: &[&str]) {
    for counter in counters {
        assert_eq!(report["tcp"][counter], 0, "{counter}: {report}");
    }
}

/// The STARTTLS peers, and tlsgate intercepting every protocol's STARTTLS
/// (`[[starttls]]` for each) and printing its counters each second, on the
/// lab with `links` impaired.
struct Intercepting {
    appliance: Appliance,
    peers: StarttlsPeers,
    /// The appliance CA, the only one the clients trust.
    ca: PathBuf,
    scratch: Scratch,
    lab: Lab,
}

impl Intercepting {
    fn up(name: &str, links: &[&str]) -> Intercepting {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = StarttlsPeers::start(scratch.path("peers"));
        let ca_dir = appliance_ca(&scratch);
        let mut config = lab_config("configs/lab.toml");
        config.push_str(&peers.tls_and_log_config(&ca_dir, &scratch));
        for protocol in ["smtp", "imap", "pop3", "ftp", "postgres"] {
            config.push_str(&format!("\n[[starttls]]\nprotocol = \"{protocol}\"\n"));
        }
        let path = scratch.path("starttls.toml");
        std::fs::write(&path, config).expect("write config");
        impair_links(links);
        let appliance = Appliance::start_reporting(&lab, &scratch, &path, 1.0);
        Intercepting {
            appliance,
            peers,
            ca: ca_dir.join("ca.pem"),
            scratch,
            lab,
        }
    }

    /// Stops tlsgate once every flow is gone, then the elements on `links`
    /// (see [`assert_impaired_links`]); asserts `sessions` sessions, all
    /// upgraded, none failed, and a clean end; the final report.
    fn stop(self, links: &[&str], sessions: usize, upgraded: usize) -> serde_json::Value {
        let report = stop_when_drained(self.appliance);
        assert_impaired_links(links, &report);
        let records = connection_log(&self.scratch);
        assert_eq!(records.len(), sessions, "{records:?}");
        for record in &records {
            if record["starttls"] != "ftp-data" {
                assert_eq!(record["starttls_outcome"], "upgraded", "{record}");
                assert_eq!(record["upstream_verified"], true, "{record}");
            }
        }
        assert_clean_but_peer_resets(&report, sessions, peer_resets(&records));
        assert_zero(&report, &STARTTLS_FAILURES);
        assert_eq!(report["tcp"]["starttls_upgraded"], upgraded, "{report}");
        report
    }
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn smtp_delivers_and_imap_and_pop3_read_back_byte_exact_through_starttls_interception_with_loss_on_both_links() {
    let links = ["client", "server"];
    let up = Intercepting::up("starttls-lossy-mail", &links);
    // swaks over IPv4 to 25 and over IPv6 to 587, each mail delivered intact.
    let mut stored = Vec::new();
    for (index, (server, port)) in [(SRV_V4, 25), (SRV_V6, 587)].into_iter().enumerate() {
        let id = format!("lossy-{index}-{port}");
        let text = mail("lossy", &id, 2000);
        let file = up.scratch.path(&format!("{id}.eml"));
        std::fs::write(&file, &text).expect("mail file");
        let transcript = swaks(&up.lab, CLI, server, port, &up.ca, &file).expect_ok("swaks through tlsgate");
        assert!(transcript.contains("=== TLS started with cipher"), "{transcript}");
        queue_id(&transcript);
        let delivered = up.peers.await_delivered(&format!("<{id}@lab.test>"));
        assert!(delivered.contains(&text), "delivered intact:\n{delivered}");
        stored.push(delivered.replace('\n', "\r\n"));
    }
    // Dovecot serves the stored mails (UID and number 2 and 3 after the
    // first message) byte for byte, over IMAP and POP3, IPv4 and IPv6.
    for (scheme, server, paths) in [
        ("imap", SRV_V4, ["INBOX;UID=2", "INBOX;UID=3"]),
        ("pop3", SRV_V6, ["2", "3"]),
    ] {
        for (path, expected) in paths.iter().zip(&stored) {
            let read = curl_mail(&up.lab, CLI, server, &up.ca, scheme, path).expect_ok(&format!("curl {scheme}"));
            assert!(
                read == *expected,
                "{scheme} {path} via {server}: not byte-exact:\n{read}"
            );
        }
    }
    up.stop(&links, 6, 6);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn ftp_auth_tls_moves_a_mebibyte_each_way_byte_exact_with_its_data_connections_intercepted_through_loss_on_both_links()
{
    let links = ["client", "server"];
    let up = Intercepting::up("starttls-lossy-ftp", &links);
    // vsftpd serves 1 MiB; curl uploads another.
    let download = content(1 << 20);
    std::fs::write(up.peers.0.join("ftp/file.bin"), &download).expect("the served file");
    let upload: Vec<u8> = content((1 << 20) + 7).into_iter().rev().collect();
    let file = up.scratch.path("upload.bin");
    std::fs::write(&file, &upload).expect("upload file");
    for (name, server, options) in [("pasv", SRV_V4, &["--disable-epsv"][..]), ("epsv", SRV_V6, &[][..])] {
        let saved = up.scratch.path(&format!("{name}.bin"));
        curl_ftp_download(&up.lab, CLI, server, &up.ca, options, &saved)
            .expect_ok(&format!("{name} download through tlsgate"));
        assert!(
            std::fs::read(&saved).expect("download") == download,
            "{name}: downloaded byte-exact"
        );
        curl_ftp_upload(&up.lab, CLI, server, &up.ca, options, &file, name)
            .expect_ok(&format!("{name} upload through tlsgate"));
        assert!(up.peers.ftp_uploaded(name) == upload, "{name}: uploaded byte-exact");
    }
    // Four control connections (upgraded), four data connections.
    let report = up.stop(&links, 8, 4);
    assert_eq!(report["tcp"]["ftp_data_tls"], 4, "{report}");
    assert_zero(&report, &["ftp_data_failed", "ftp_data_active"]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn psql_verify_full_reads_800_kb_of_rows_byte_exact_through_postgres_starttls_interception_with_loss_on_both_links() {
    let links = ["client", "server"];
    let up = Intercepting::up("starttls-lossy-postgres", &links);
    // One row of 100000 eight-digit numbers (800 kB), and who the server saw.
    let query = "SELECT string_agg(lpad(i::text, 8, '0'), '') || '|' || host(inet_client_addr()) || '|' || \
                 (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) FROM generate_series(1, 100000) i";
    let numbers: String = (1..=100_000).map(|i| format!("{i:08}")).collect();
    for (server, client) in [(SRV_V4, CLI_V4), (SRV_V6, CLI_V6)] {
        let rows = psql_with(&up.lab, CLI, server, &up.ca, "channel_binding=disable", query)
            .expect_ok(&format!("psql via {server} through tlsgate"));
        let tail = rows.get(numbers.len()..).unwrap_or(&rows);
        assert!(
            rows == format!("{numbers}|{client}|true\n"),
            "via {server}: {} bytes, not byte-exact, ending {tail:?}",
            rows.len()
        );
    }
    up.stop(&links, 2, 2);
}

/// tls_config intercepting 80 and 443, with `rule` appended and an origin
/// serving `body` as file.bin over TLS on 443 and plain HTTP on 80.
fn converting(name: &str, rule: &str, body: &[u8], links: &[&str]) -> (Lab, Scratch, Origin, Appliance, PathBuf) {
    let lab = Lab::up();
    let scratch = Scratch::new(name);
    let origin = Origin::start_with_plain_http(scratch.path("origin"));
    std::fs::write(origin.0.join("www/file.bin"), body).expect("file.bin");
    let (path, ca) = tls_config(&scratch, &origin.cert());
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        config.replace("tcp_ports = [443]", "tcp_ports = [80, 443]") + rule,
    )
    .expect("config");
    check_config(&path);
    impair_links(links);
    let appliance = Appliance::start_reporting(&lab, &scratch, &path, 1.0);
    (lab, scratch, origin, appliance, ca)
}

/// curl `url` (with `options`) into the scratch directory; byte-exact `body`.
fn fetch_byte_exact(lab: &Lab, scratch: &Scratch, ca: &Path, options: &[&str], url: &str, body: &[u8]) {
    let saved = scratch.path("body.bin");
    let saved_text = saved.display().to_string();
    let mut args = vec!["--max-time", "50", "-o", &saved_text];
    args.extend_from_slice(options);
    args.push(url);
    let result = curl(lab, ca, &args);
    assert!(result.status.success(), "curl {url}: {}", text(&result.stderr));
    assert!(std::fs::read(&saved).expect("body") == body, "{url}: not byte-exact");
}

/// Stops tlsgate once every flow is gone: the elements on `links`
/// impaired, both sessions converted (`counter`: upgraded or downgraded),
/// none failed, a clean end.
fn assert_converted(appliance: Appliance, scratch: &Scratch, links: &[&str], counter: &str) {
    let report = stop_when_drained(appliance);
    assert_impaired_links(links, &report);
    assert_clean_but_peer_resets(&report, 2, peer_resets(&connection_log(scratch)));
    assert_eq!(report["tcp"][counter], 2, "{report}");
    assert_zero(&report, &["conversion_failed", "tls_failed", "handshake_timeouts"]);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn an_upgrade_of_plain_http_to_the_origins_tls_moves_4_mib_byte_exact_with_loss_on_the_server_link() {
    let links = ["server"];
    let body = content(4 << 20);
    let rule = "\n[[policy]]\naction = \"upgrade\"\nport = [80]\nserver_port = 443\nserver_name = \"origin.test\"\n";
    let (lab, scratch, _origin, appliance, ca) = converting("starttls-lossy-upgrade", rule, &body, &links);
    for url in ["http://198.18.0.2/file.bin", "http://[2001:2::2]/file.bin"] {
        fetch_byte_exact(&lab, &scratch, &ca, &[], url, &body);
    }
    assert_converted(appliance, &scratch, &links, "upgraded");
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn a_downgrade_of_https_to_the_origins_plain_http_moves_4_mib_byte_exact_with_loss_on_the_server_link() {
    let links = ["server"];
    let body = content(4 << 20);
    let rule = "\n[[policy]]\naction = \"downgrade\"\nport = [443]\nserver_port = 80\n";
    let (lab, scratch, _origin, appliance, ca) = converting("starttls-lossy-downgrade", rule, &body, &links);
    for resolve in ["origin.test:443:198.18.0.2", "origin.test:443:[2001:2::2]"] {
        fetch_byte_exact(
            &lab,
            &scratch,
            &ca,
            &["--resolve", resolve],
            "https://origin.test/file.bin",
            &body,
        );
    }
    assert_converted(appliance, &scratch, &links, "downgraded");
}

/// The appliance's own addresses on the server port, and the server's
/// addresses on those prefixes (tests/lab/terminate-peers.sh), where nginx
/// reads PROXY on 8080.
const OWNED_V4: &str = "198.18.7.1";
const OWNED_V6: &str = "2001:2:0:7::1";
const LINKED_V4: &str = "198.18.7.2";
const LINKED_V6: &str = "2001:2:0:7::2";

#[test]
#[ignore = "needs root and the namespace lab"]
fn a_backend_behind_the_appliances_own_address_is_resolved_and_served_byte_exact_with_loss_on_the_server_link() {
    let links = ["server"];
    let lab = Lab::up();
    let scratch = Scratch::new("starttls-lossy-owned");
    // First: the element recreates the server's interface with only the
    // lab's own addresses, and the peers add the owned prefixes' to it.
    impair_links(&links);
    let peers = TerminatePeers::start(scratch.path("peers"));
    let mut config = lab_config("configs/lab.toml");
    let device = &format!("device = \"{}1,", LabDriver::selected().vdev());
    assert!(config.contains(device), "lab.toml's server device");
    config = config.replacen(
        device,
        &format!("addresses = [\"{OWNED_V4}/24\", \"{OWNED_V6}/64\"]\n{device}"),
        1,
    );
    for (name, destination, backend) in [("owned4", SRV_V4, LINKED_V4), ("owned6", SRV_V6, LINKED_V6)] {
        config.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\ndestinations = [\"{destination}\"]\nport = 443\n\
             server_names = [\"www.lab.test\"]\ncertificates = [{{ chain = \"{}\", key = \"{}\" }}]\n\
             backend = {{ address = \"{backend}\", port = 8080, source = \"appliance\" }}\nheader = \"proxy-v2\"\n",
            peers.pki("www.pem").display(),
            peers.pki("www.key").display(),
        ));
    }
    config.push_str(&format!(
        "\n[log]\nconnections = \"{}\"\n",
        scratch.path("connections.jsonl").display()
    ));
    let path = scratch.path("owned.toml");
    std::fs::write(&path, config).expect("write config");
    check_config(&path);
    let appliance = Appliance::start_reporting(&lab, &scratch, &path, 1.0);
    let body = peers.file();
    let rounds = 2;
    for round in 0..rounds {
        if round > 0 {
            // The server forgets the owned addresses: it resolves them again
            // through the loss (the appliance keeps the server's for 60 s).
            for owned in [OWNED_V4, OWNED_V6] {
                let _ = output(lab.cmd(SRV, "ip").args(["neigh", "del", owned, "dev", "srv0"]));
            }
        }
        for (address, owned) in [(SRV_V4, OWNED_V4), (SRV_V6, OWNED_V6)] {
            let resolve = format!("www.lab.test:443:{}", common::starttls::bracketed(address));
            let saved = scratch.path("body.bin");
            let saved_text = saved.display().to_string();
            let result = curl(
                &lab,
                &peers.root_ca(),
                &[
                    "--max-time",
                    "50",
                    "--resolve",
                    &resolve,
                    "-o",
                    &saved_text,
                    "https://www.lab.test/file.bin",
                ],
            );
            assert!(result.status.success(), "curl via {address}: {}", text(&result.stderr));
            assert!(
                std::fs::read(&saved).expect("body") == body,
                "via {address}: not byte-exact"
            );
            // "$proxy_protocol_addr $proxy_protocol_port $remote_addr ..."
            peers.await_logged("pp-owned.log", &format!(" {owned} "));
        }
    }
    let report = stop_when_drained(appliance);
    assert_impaired_links(&links, &report);
    let records = connection_log(&scratch);
    assert_eq!(records.len(), 2 * rounds, "{records:?}");
    assert_clean_but_peer_resets(&report, 2 * rounds, peer_resets(&records));
    let tcp = &report["tcp"];
    assert_eq!(tcp["terminated"], 2 * rounds, "{report}");
    assert_zero(
        &report,
        &[
            "neighbour_unresolved",
            "backend_refused",
            "terminate_failed",
            "handshake_timeouts",
        ],
    );
    assert!(tcp["neighbour_requests_sent"].as_u64() >= Some(2), "{report}");
    assert!(tcp["neighbour_requests_answered"].as_u64() >= Some(2), "{report}");
}
