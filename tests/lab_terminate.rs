//! The namespace lab (root, `#[ignore]`) for the termination mode
//! (`[[service]]`, stud on the wire) with real peers: tlsgate answers the
//! client's connections to 198.18.0.2:443 and [2001:2::2]:443 itself with
//! the services' own chains (a lab PKI, not the appliance CA) and forwards
//! the plaintext to backends in the server namespace
//! (tests/lab/terminate-peers.sh): nginx reading PROXY v1 / v2 on HTTP/1.1
//! and HTTP/2 listeners and logging `$proxy_protocol_addr`, and HAProxy on
//! another address (`accept-proxy`) echoing the source and the AUTHORITY TLV
//! it got. Clients: curl (HTTP/1.1, HTTP/2), `openssl s_client
//! -verify_return_error` and h2load. With two workers, 200 parallel
//! connections whose backend legs' frames the kernel's fanout may give to
//! the other worker (handed over), and sessions resumed on both workers. Run only through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_terminate -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::lab::{
    assert_both_workers_opened_sessions, await_records, curl, lab_config, sessions_opened_by_worker, with_two_workers,
    Appliance, Lab, LabDriver, CLI, SRV, SRV_V4, SRV_V6,
};
use common::terminate::TerminatePeers as Peers;
use common::{check_config, output, text, Scratch};

const CLI_V4: &str = "198.18.0.1";
const CLI_V6: &str = "2001:2::1";
/// HAProxy's addresses (terminate-peers.sh): a second host behind the appliance.
const HA_V4: &str = "198.18.0.4";
const HA_V6: &str = "2001:2::4";
/// `[2001:2::2]`, for `--resolve` and `-connect`.
const SRV_V6_BRACKETED: &str = "[2001:2::2]";

/// A ticket key file: 80 random bytes, readable by its owner only.
fn ticket_key(path: &Path) {
    let made = output(Command::new("head").args(["-c", "80", "/dev/urandom"]));
    assert!(made.status.success());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("ticket key");
    file.write_all(&made.stdout).expect("ticket key");
}

/// One `[[service]]` of [`service_config`]: name, answers HOST.lab.test
/// with HOST's chain, destinations, port, backend, header, ALPN.
type ServiceRow<'a> = (&'a str, &'a str, &'a [&'a str], u16, String, &'a str, &'a str);

/// configs/lab.toml plus one `[[service]]` per backend of the peers, all at
/// 198.18.0.2 / 2001:2::2 port 443, told apart by the server name; every
/// service resumes with the ticket key `tickets`. With `owned`, the server
/// port also owns [`OWNED_V4`] and [`OWNED_V6`] and the services of
/// [`owned_services`] reach their backends from them; then `edit`. Checked
/// with `tlsgate check`.
fn service_config(
    scratch: &Scratch,
    peers: &Peers,
    tickets: &Path,
    owned: bool,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let both = &[SRV_V4, SRV_V6][..];
    let ha_v4 = format!("{{ address = \"{HA_V4}\", port = 8090 }}");
    let ha_v6 = format!("{{ address = \"{HA_V6}\", port = 8090 }}");
    let mut services: Vec<ServiceRow> = vec![
        (
            "www",
            "www",
            both,
            443,
            "{ port = 8080 }".to_owned(),
            "proxy-v2",
            "http/1.1",
        ),
        (
            "v1",
            "v1",
            both,
            443,
            "{ port = 8081 }".to_owned(),
            "proxy-v1",
            "http/1.1",
        ),
        ("h2", "h2", both, 443, "{ port = 8082 }".to_owned(), "proxy-v2", "h2"),
        // HAProxy is another host: reached transparently, per address family.
        ("ha4", "ha", &[SRV_V4][..], 443, ha_v4, "proxy-v2", "http/1.1"),
        ("ha6", "ha", &[SRV_V6][..], 443, ha_v6, "proxy-v2", "http/1.1"),
        // Nothing listens on 8099.
        (
            "down",
            "down",
            both,
            443,
            "{ port = 8099 }".to_owned(),
            "proxy-v2",
            "http/1.1",
        ),
    ];
    let mut config = lab_config("configs/lab.toml");
    if owned {
        services.extend(owned_services());
        let device = &format!("device = \"{}1,", LabDriver::selected().vdev());
        assert!(config.contains(device), "lab.toml's server device");
        config = config.replacen(
            device,
            &format!(
                "addresses = [\"{OWNED_V4}/24\", \"{OWNED_V6}/64\"]\ngateways = [\"{LINKED_V4}\", \"{LINKED_V6}\"]\n{device}"
            ),
            1,
        );
    }
    for (name, host, destinations, port, backend, header, alpn) in services {
        let destinations: Vec<String> = destinations.iter().map(|address| format!("\"{address}\"")).collect();
        config.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\ndestinations = [{}]\nport = {port}\n\
             server_names = [\"{host}.lab.test\"]\n\
             certificates = [{{ chain = \"{}\", key = \"{}\" }}]\n\
             backend = {backend}\nheader = \"{header}\"\nalpn = [\"{alpn}\"]\nticket_key = \"{}\"\n",
            destinations.join(", "),
            peers.pki(&format!("{host}.pem")).display(),
            peers.pki(&format!("{host}.key")).display(),
            tickets.display(),
        ));
    }
    config.push_str(&format!(
        "\n[log]\nconnections = \"{}\"\n",
        scratch.path("connections.jsonl").display()
    ));
    let path = scratch.path("terminate.toml");
    std::fs::write(&path, edit(config)).expect("write config");
    check_config(&path);
    path
}

/// The lab, its peers and tlsgate running the services.
struct Terminating {
    appliance: Appliance,
    peers: Peers,
    scratch: Scratch,
    lab: Lab,
}

impl Terminating {
    fn up(name: &str) -> Terminating {
        Terminating::up_with(name, false, |config| config)
    }

    /// [`Terminating::up`], with `owned` and `edit`: see [`service_config`].
    fn up_with(name: &str, owned: bool, edit: impl FnOnce(String) -> String) -> Terminating {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = Peers::start(scratch.path("peers"));
        ticket_key(&scratch.path("tickets.key"));
        let config = service_config(&scratch, &peers, &scratch.path("tickets.key"), owned, edit);
        let appliance = Appliance::start(&lab, &scratch, &config);
        Terminating {
            appliance,
            peers,
            scratch,
            lab,
        }
    }

    /// curl from the client namespace to `https://HOST.lab.test/PATH` at
    /// `address` (443), trusting only the lab root CA; `-w` prints
    /// "http_version local_port ssl_verify_result".
    fn curl(&self, host: &str, address: &str, path: &str, options: &[&str]) -> Output {
        self.curl_at(host, 443, address, path, options)
    }

    /// [`Terminating::curl`] to `port`.
    fn curl_at(&self, host: &str, port: u16, address: &str, path: &str, options: &[&str]) -> Output {
        let resolve = format!("{host}.lab.test:{port}:{address}");
        let url = format!("https://{host}.lab.test:{port}/{path}");
        let mut args = vec![
            "--resolve",
            &resolve,
            "-w",
            "%{http_version} %{local_port} %{ssl_verify_result}",
        ];
        args.extend_from_slice(options);
        args.push(&url);
        curl(&self.lab, &self.peers.root_ca(), &args)
    }

    /// Downloads the backend's file.bin from HOST over `address` into the
    /// scratch directory, checks it byte-exact and the chain verified;
    /// returns curl's "http_version" and the client's port.
    fn download(&self, host: &str, address: &str, http: &str) -> (String, String) {
        self.download_at(host, 443, address, http)
    }

    /// [`Terminating::download`] from `port`.
    fn download_at(&self, host: &str, port: u16, address: &str, http: &str) -> (String, String) {
        let saved = self
            .scratch
            .path(&format!("{host}-{port}-{}.bin", address.replace([':', '[', ']'], "_")));
        let saved_text = saved.display().to_string();
        let result = self.curl_at(host, port, address, "file.bin", &[http, "-o", &saved_text]);
        assert!(
            result.status.success(),
            "curl {host} via {address}: {}",
            text(&result.stderr)
        );
        let shown = text(&result.stdout);
        let fields: Vec<&str> = shown.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{shown}");
        assert_eq!(fields[2], "0", "the chain verified against the lab root: {shown}");
        let got = std::fs::read(&saved).expect("download");
        assert!(
            got == self.peers.file(),
            "{host} via {address}: {} bytes, not byte-exact",
            got.len()
        );
        (fields[0].to_owned(), fields[1].to_owned())
    }

    /// `openssl s_client` to HOST.lab.test at `address`:443 with `options`,
    /// verifying against the lab root (`-verify_return_error`), sending one
    /// request and waiting for the backend to close (so every session ticket
    /// has arrived); what it printed.
    fn s_client(&self, host: &str, address: &str, options: &str) -> String {
        let result = output(self.lab.cmd(CLI, "bash").arg("-c").arg(format!(
            "printf 'GET /index.html HTTP/1.1\\r\\nHost: {host}.lab.test\\r\\nConnection: close\\r\\n\\r\\n' | \
             timeout 10 openssl s_client -connect {address}:443 -servername {host}.lab.test -ign_eof \
             -verify_return_error -CAfile {} {options}",
            self.peers.root_ca().display()
        )));
        format!("{}{}", text(&result.stdout), text(&result.stderr))
    }

    /// Stops tlsgate: its connection log and final report.
    fn stop(self) -> (Vec<serde_json::Value>, serde_json::Value) {
        let (status, report, printed) = self.appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        (common::lab::connection_log(&self.scratch), report)
    }

    /// Stops tlsgate and starts it again on the same configuration (after
    /// `between` ran): another box of an ECMP group with the same files.
    /// The final report of the first process.
    fn restart(self, between: impl FnOnce(&Scratch)) -> (Terminating, serde_json::Value) {
        let Terminating {
            appliance,
            peers,
            scratch,
            lab,
        } = self;
        let (status, report, printed) = appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        between(&scratch);
        let appliance = Appliance::start(&lab, &scratch, &scratch.path("terminate.toml"));
        let up = Terminating {
            appliance,
            peers,
            scratch,
            lab,
        };
        (up, report)
    }
}

/// Whether the connection-log record is of a connection `service` answered.
fn served_by(record: &serde_json::Value, service: &str) -> bool {
    record["event_type"] == "tls_terminate"
        && record["decision"] == "terminate"
        && record["reason"] == format!("service {service}")
}

/// The record of the terminated connection from the client port `port`.
fn record_from_port<'a>(records: &'a [serde_json::Value], port: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|record| record["src_port"] == port.parse::<u64>().expect("a port"))
        .unwrap_or_else(|| panic!("no record from client port {port}: {records:?}"))
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn proxy_v1_and_v2_tell_nginx_the_client_address_and_the_body_is_byte_exact_over_ipv4_and_ipv6() {
    let up = Terminating::up("terminate-nginx");
    let mut ports = Vec::new();
    for (host, log) in [("www", "pp-v2.log"), ("v1", "pp-v1.log")] {
        for (address, client) in [(SRV_V4, CLI_V4), (SRV_V6_BRACKETED, CLI_V6)] {
            let (version, port) = up.download(host, address, "--http1.1");
            assert_eq!(version, "1.1");
            // "$proxy_protocol_addr $proxy_protocol_port $remote_addr
            // $remote_port ...": the PROXY header named the client's own
            // address and port, and the backend leg came from them too.
            let line = up.peers.await_logged(log, &format!("{client} {port} "));
            assert_eq!(
                line,
                format!("{client} {port} {client} {port} HTTP/1.1 200 3145728 /file.bin")
            );
            ports.push((host, port));
        }
    }

    // The chain the client is shown is the service's own, verified.
    let shown = up.s_client("www", SRV_V4, "");
    assert!(shown.contains("depth=1 CN = tlsgate lab intermediate CA"), "{shown}");
    assert!(shown.contains("depth=0 CN = www.lab.test"), "{shown}");
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    assert!(shown.contains("hello from the lab backend"), "{shown}");

    let records = await_records(&up.scratch, 5);
    let (_, report) = up.stop();
    for (host, port) in &ports {
        let record = record_from_port(&records, port);
        assert!(served_by(record, host), "{record}");
        assert_eq!(record["sni"], format!("{host}.lab.test"), "{record}");
        assert_eq!(record["alpn"], "http/1.1", "{record}");
    }
    assert!(report["tcp"]["terminated"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(report["tcp"]["tls_intercepted"], 0, "{report}");
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn http2_runs_end_to_end_with_curl_and_h2load_to_an_http2_backend() {
    let up = Terminating::up("terminate-h2");
    for (address, client) in [(SRV_V4, CLI_V4), (SRV_V6_BRACKETED, CLI_V6)] {
        let (version, port) = up.download("h2", address, "--http2");
        assert_eq!(version, "2", "ALPN h2 to the client");
        let line = up.peers.await_logged("pp-h2.log", &format!("{client} {port} "));
        assert_eq!(
            line,
            format!("{client} {port} {client} {port} HTTP/2.0 200 3145728 /file.bin")
        );
    }
    let shown = up.s_client("h2", SRV_V4, "-alpn h2,http/1.1");
    assert!(shown.contains("ALPN protocol: h2"), "{shown}");
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");

    // h2load (it does not verify certificates; curl and s_client did):
    // 200 requests on 4 connections, over both families.
    for address in [SRV_V4, SRV_V6_BRACKETED] {
        let result = output(up.lab.cmd(CLI, "timeout").args([
            "60",
            "h2load",
            "-n",
            "200",
            "-c",
            "4",
            "--connect-to",
            &format!("{address}:443"),
            "https://h2.lab.test/index.html",
        ]));
        let shown = text(&result.stdout);
        assert!(result.status.success(), "h2load: {shown}{}", text(&result.stderr));
        assert!(shown.contains("Application protocol: h2"), "{shown}");
        assert!(
            shown.contains("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed"),
            "{shown}"
        );
        assert!(shown.contains("status codes: 200 2xx"), "{shown}");
    }
    let logged = std::fs::read_to_string(up.peers.0.join("pp-h2.log")).expect("h2 log");
    let h2load_lines = logged
        .lines()
        .filter(|line| line.ends_with(" HTTP/2.0 200 27 /index.html"));
    assert_eq!(
        h2load_lines
            .filter(|line| line.starts_with(&format!("{CLI_V4} ")) || line.starts_with(&format!("{CLI_V6} ")))
            .count(),
        400,
        "every request reached the HTTP/2 backend from the client's address:\n{logged}"
    );
    await_records(&up.scratch, 11);
    let (records, _) = up.stop();
    assert!(
        records
            .iter()
            .filter(|record| served_by(record, "h2") && record["alpn"] == "h2")
            .count()
            >= 11,
        "{records:?}"
    );
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn haproxy_on_another_host_gets_the_client_address_and_the_server_name_in_proxy_v2() {
    let up = Terminating::up("terminate-haproxy");
    for (address, client) in [(SRV_V4, CLI_V4), (SRV_V6_BRACKETED, CLI_V6)] {
        let result = up.curl("ha", address, "", &["-o", "-"]);
        assert!(result.status.success(), "curl: {}", text(&result.stderr));
        let shown = text(&result.stdout);
        // Body "src=... port=... authority=...", then -w's "1.1 PORT 0".
        let (body, written) = shown.split_once('\n').expect("body line");
        let port = written.split_whitespace().nth(1).expect("local port");
        assert_eq!(
            body,
            format!("src={client} port={port} authority=ha.lab.test"),
            "{shown}"
        );
        // The backend leg itself came from the client's address too
        // (transparent, not from an appliance address).
        let line = up
            .peers
            .await_logged("haproxy.log", &format!("src={client} port={port} "));
        assert!(line.contains(&format!("connection_from={client} GET / 200")), "{line}");
    }
    await_records(&up.scratch, 2);
    let (records, _) = up.stop();
    for service in ["ha4", "ha6"] {
        assert!(records.iter().any(|record| served_by(record, service)), "{records:?}");
    }
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn sessions_resume_with_the_ticket_key_file_across_a_restart_and_not_with_another_key() {
    let up = Terminating::up("terminate-resume");
    let versions = ["-tls1_3", "-tls1_2"];
    let session = |up: &Terminating, version: &str| up.scratch.path(&format!("session{version}")).display().to_string();
    for version in versions {
        let first = up.s_client("www", SRV_V4, &format!("{version} -sess_out {}", session(&up, version)));
        assert!(first.contains("\nNew, "), "{first}");
        assert!(first.contains("hello from the lab backend"), "{first}");
        let again = up.s_client("www", SRV_V4, &format!("{version} -sess_in {}", session(&up, version)));
        assert!(again.contains("\nReused, "), "the same process resumes: {again}");
    }

    // Another process (another box of an ECMP group) with the same file,
    // over the other address family.
    let (up, report) = up.restart(|_| {});
    assert_eq!(report["tcp"]["tickets_resumed"], 2, "{report}");
    for version in versions {
        let again = up.s_client(
            "www",
            SRV_V6_BRACKETED,
            &format!("{version} -sess_in {}", session(&up, version)),
        );
        assert!(
            again.contains("\nReused, "),
            "another process with the same key file resumes: {again}"
        );
    }

    // A new key file: the old tickets are refused, full handshakes instead.
    let (up, report) = up.restart(|scratch| {
        ticket_key(&scratch.path("tickets.key"));
        std::fs::remove_file(scratch.path("connections.jsonl")).expect("connection log");
    });
    assert_eq!(report["tcp"]["tickets_resumed"], 2, "{report}");
    for version in versions {
        let again = up.s_client("www", SRV_V4, &format!("{version} -sess_in {}", session(&up, version)));
        assert!(again.contains("\nNew, "), "another key does not resume: {again}");
        assert!(again.contains("Verify return code: 0 (ok)"), "{again}");
    }
    await_records(&up.scratch, 2);
    let (records, report) = up.stop();
    assert_eq!(report["tcp"]["tickets_resumed"], 0, "{report}");
    assert!(
        records.iter().all(|record| record["client_resumed"] == false),
        "{records:?}"
    );
}

/// A refused backend, an unknown name and a client going straight to a
/// backend's port (refused at its SYN: it could write its own PROXY
/// header) each cost the client a RST and leave a record.
#[test]
#[ignore = "needs root and the namespace lab"]
fn a_refused_backend_and_an_unknown_name_reset_the_client_and_leave_a_record() {
    let up = Terminating::up("terminate-refused");
    for address in [SRV_V4, SRV_V6_BRACKETED] {
        let result = up.curl("down", address, "", &["-o", "/dev/null"]);
        assert!(!result.status.success());
        let said = text(&result.stderr);
        assert!(said.contains("Connection reset by peer"), "a RST: {said}");
    }
    // No service answers this name at 198.18.0.2:443.
    let result = output(up.lab.cmd(CLI, "curl").args([
        "-sS",
        "--max-time",
        "10",
        "-k",
        "--resolve",
        &format!("nobody.lab.test:443:{SRV_V4}"),
        "https://nobody.lab.test/",
    ]));
    assert!(!result.status.success());
    assert!(
        text(&result.stderr).contains("Connection reset by peer"),
        "{}",
        text(&result.stderr)
    );
    // Straight to www's backend (nginx reading PROXY v2 on 8080): a client
    // there could write its own header. The appliance refuses the SYN.
    for address in [SRV_V4, SRV_V6_BRACKETED] {
        let result = output(up.lab.cmd(CLI, "curl").args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{address}:8080/index.html"),
        ]));
        // curl's 7, "Couldn't connect to server": a RST to the SYN
        // (nginx, reached, would close on the missing header: 52 or 56).
        assert_eq!(result.status.code(), Some(7), "{}", text(&result.stderr));
    }
    // The appliance keeps serving the other services.
    let (version, _) = up.download("www", SRV_V4, "--http1.1");
    assert_eq!(version, "1.1");

    let records = await_records(&up.scratch, 6);
    let (_, report) = up.stop();
    let refused: Vec<_> = records.iter().filter(|record| served_by(record, "down")).collect();
    assert_eq!(refused.len(), 2, "{records:?}");
    for record in refused {
        assert_eq!(record["ended"], "backend refused", "{record}");
    }
    let unknown: Vec<_> = records
        .iter()
        .filter(|record| record["ended"] == "no service for nobody.lab.test")
        .collect();
    assert_eq!(unknown.len(), 1, "{records:?}");
    assert_eq!(unknown[0]["decision"], "terminate", "{records:?}");
    assert_eq!(unknown[0]["sni"], "nobody.lab.test", "{records:?}");
    let straight: Vec<_> = records
        .iter()
        .filter(|record| record["dest_port"] == 8080 && record["event_type"] == "syn_block")
        .collect();
    assert_eq!(straight.len(), 2, "{records:?}");
    assert_eq!(report["tcp"]["backend_refused"], 2, "{report}");
    assert_eq!(report["tcp"]["backend_direct_refused"], 2, "{report}");
    assert_eq!(report["tcp"]["terminate_failed"], 1, "{report}");
    // The www download, and maybe the refused ones: their handshakes go on
    // while the backend leg opens.
    assert!(report["tcp"]["terminated"].as_u64().unwrap() >= 1, "{report}");
}

/// Two workers on af_packet (`qpairs=2`: the kernel's fanout hash spreads
/// the connections). A backend leg leaves from the client's address and port
/// for another port (nginx on the server, 8080) or another address (HAProxy
/// on 198.18.0.4), so the kernel may give its frames to the other worker,
/// which hands them to the one holding the connection. 200 connections at
/// once all complete byte-exact, and the hand-off ran (`handed_off`). Then,
/// in a fresh process, one session's ticket resumes 16 connections that
/// both workers took: the ticket key is the process's, not a worker's.
#[test]
#[ignore = "needs root and the namespace lab"]
fn two_workers_terminate_200_parallel_connections_and_resume_each_others_sessions() {
    let up = Terminating::up_with("terminate-workers", false, |config| with_two_workers(&config));
    let downloads = up.scratch.path("parallel");
    std::fs::create_dir_all(&downloads).expect("downloads directory");
    // Even: www (every tenth file.bin, 3 MiB; the others index.html); odd:
    // ha, whose HAProxy answers with what the PROXY header told it.
    let root = up.peers.root_ca().display().to_string();
    let mut args: Vec<String> = [
        "-sS",
        "--max-time",
        "120",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "200",
        "--resolve",
        "www.lab.test:443:198.18.0.2",
        "--resolve",
        "ha.lab.test:443:198.18.0.2",
        "--cacert",
        &root,
    ]
    .map(str::to_owned)
    .to_vec();
    let url = |index: usize| match (index % 2, index % 20) {
        (0, 0) => "https://www.lab.test/file.bin",
        (0, _) => "https://www.lab.test/index.html",
        _ => "https://ha.lab.test/",
    };
    for index in 0..200 {
        args.extend([
            "-o".to_owned(),
            downloads.join(index.to_string()).display().to_string(),
            url(index).to_owned(),
        ]);
    }
    let result = output(up.lab.cmd(CLI, "curl").args(&args));
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    let (file, index_html) = (up.peers.file(), b"hello from the lab backend\n".to_vec());
    let mut ha_ports = std::collections::BTreeSet::new();
    for index in 0..200 {
        let got = std::fs::read(downloads.join(index.to_string())).expect("download");
        match url(index) {
            "https://ha.lab.test/" => {
                let body = String::from_utf8(got).expect("text");
                let port = body
                    .strip_prefix(&format!("src={CLI_V4} port="))
                    .and_then(|rest| rest.strip_suffix(" authority=ha.lab.test\n"))
                    .unwrap_or_else(|| panic!("download {index}: {body:?}"));
                ha_ports.insert(port.parse::<u64>().expect("a port"));
            }
            "https://www.lab.test/file.bin" => assert!(got == file, "download {index} is byte-exact"),
            _ => assert_eq!(got, index_html, "download {index}"),
        }
    }
    // HAProxy was told each client's own port, once each.
    let records = await_records(&up.scratch, 200);
    let ha_records: std::collections::BTreeSet<u64> = records
        .iter()
        .filter(|record| served_by(record, "ha4"))
        .map(|record| record["src_port"].as_u64().expect("src_port"))
        .collect();
    assert_eq!(ha_ports.len(), 100);
    assert_eq!(ha_ports, ha_records);

    let (up, report) = up.restart(|scratch| {
        std::fs::remove_file(scratch.path("connections.jsonl")).expect("connection log");
    });
    assert_eq!(report["tcp"]["terminated"], 200, "{report}");
    assert_eq!(report["tcp"]["terminate_failed"], 0, "{report}");
    assert_eq!(report["tcp"]["backend_refused"], 0, "{report}");
    assert_both_workers_opened_sessions(&report, "both workers");
    let server_port = &report["ports"][1];
    assert!(
        server_port["handed_off"].as_u64().expect("handed_off") > 0,
        "backend frames reached the other worker and were handed over: {server_port}"
    );

    // One full handshake, then 16 resumptions of its session.
    let session = up.scratch.path("session").display().to_string();
    let first = up.s_client("www", SRV_V4, &format!("-sess_out {session}"));
    assert!(first.contains("\nNew, "), "{first}");
    for _ in 0..16 {
        let again = up.s_client("www", SRV_V4, &format!("-sess_in {session}"));
        assert!(again.contains("\nReused, "), "{again}");
        assert!(again.contains("hello from the lab backend"), "{again}");
    }
    let (_, report) = up.stop();
    assert_eq!(report["tcp"]["tickets_resumed"], 16, "{report}");
    let opened = sessions_opened_by_worker(&report);
    assert_eq!(opened.iter().sum::<u64>(), 17, "{opened:?}");
    assert!(
        opened.iter().all(|&n| n > 0),
        "both workers resumed the session one of them began: {opened:?}"
    );
}

// ---------------------------------------------------------------------------
// Backends behind the appliance's own address (`ports.server.addresses`,
// `backend.source = "appliance"`): nginx on the owned prefixes of the server
// link and on another subnet through a gateway (tests/lab/terminate-peers.sh),
// reachable only from the appliance's address.

/// The appliance's own addresses on the server port.
const OWNED_V4: &str = "198.18.7.1";
const OWNED_V6: &str = "2001:2:0:7::1";
/// The server's addresses on the owned prefixes (also the gateways).
const LINKED_V4: &str = "198.18.7.2";
const LINKED_V6: &str = "2001:2:0:7::2";

/// The services of the owned-address test, all answering www.lab.test
/// with PROXY v2: port 8443 to nginx on the owned prefixes, 8444 to nginx
/// on another subnet through the gateway, 8445 to an address where nobody
/// answers ARP.
fn owned_services() -> Vec<ServiceRow<'static>> {
    let backend = |address: &str| format!("{{ address = \"{address}\", port = 8080, source = \"appliance\" }}");
    vec![
        (
            "linked4",
            "www",
            &[SRV_V4][..],
            8443,
            backend(LINKED_V4),
            "proxy-v2",
            "http/1.1",
        ),
        (
            "linked6",
            "www",
            &[SRV_V6][..],
            8443,
            backend(LINKED_V6),
            "proxy-v2",
            "http/1.1",
        ),
        (
            "routed4",
            "www",
            &[SRV_V4][..],
            8444,
            backend("198.18.8.2"),
            "proxy-v2",
            "http/1.1",
        ),
        (
            "routed6",
            "www",
            &[SRV_V6][..],
            8444,
            backend("2001:2:0:8::2"),
            "proxy-v2",
            "http/1.1",
        ),
        (
            "nowhere",
            "www",
            &[SRV_V4][..],
            8445,
            backend("198.18.7.99"),
            "proxy-v2",
            "http/1.1",
        ),
    ]
}

/// nginx behind the appliance's own address gets the client's address in
/// PROXY v2 while the connection itself comes from the owned address (an
/// ephemeral port), the body byte-exact, on the owned prefix and through
/// the gateway, IPv4 and IPv6; the server's kernel resolves the owned
/// addresses through the appliance (ARP, neighbour discovery); a backend
/// whose next hop never answers costs the client a RST and a record.
#[test]
#[ignore = "needs root and the namespace lab"]
fn a_backend_behind_the_appliances_own_address_gets_the_client_address_and_the_body_byte_exact() {
    let up = Terminating::up_with("terminate-owned", true, |config| config);
    for (round, port) in [8443, 8444, 8443].into_iter().enumerate() {
        if round == 2 {
            // The server forgets the owned addresses: it must resolve them
            // again, through the appliance's answers (the appliance still
            // knows the server's MAC).
            for owned in [OWNED_V4, OWNED_V6] {
                let _ = output(up.lab.cmd(SRV, "ip").args(["neigh", "del", owned, "dev", "srv0"]));
            }
        }
        for (address, client, owned) in [(SRV_V4, CLI_V4, OWNED_V4), (SRV_V6_BRACKETED, CLI_V6, OWNED_V6)] {
            let (version, local) = up.download_at("www", port, address, "--http1.1");
            assert_eq!(version, "1.1");
            // "$proxy_protocol_addr $proxy_protocol_port $remote_addr $remote_port ..."
            let line = up.peers.await_logged("pp-owned.log", &format!("{client} {local} "));
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields[2], owned, "the connection came from the owned address: {line}");
            let source_port: u16 = fields[3].parse().expect("a port");
            assert!(source_port >= 49_152, "an ephemeral port: {line}");
            assert_eq!(fields[4..], ["HTTP/1.1", "200", "3145728", "/file.bin"], "{line}");
        }
    }
    let result = up.curl_at("www", 8445, SRV_V4, "", &["-o", "/dev/null"]);
    assert!(!result.status.success());
    assert!(
        text(&result.stderr).contains("Connection reset by peer"),
        "{}",
        text(&result.stderr)
    );

    let records = await_records(&up.scratch, 7);
    let (_, report) = up.stop();
    let unresolved: Vec<_> = records.iter().filter(|record| served_by(record, "nowhere")).collect();
    assert_eq!(unresolved.len(), 1, "{records:?}");
    assert_eq!(
        unresolved[0]["ended"],
        "backend unreachable: 198.18.7.99 did not answer ARP/neighbour discovery"
    );
    let tcp = &report["tcp"];
    assert!(tcp["neighbour_requests_answered"].as_u64().unwrap() >= 2, "{report}");
    // The next hops: 198.18.7.2, 2001:2:0:7::2 (also the gateways; more if
    // the run outlived their 60 s), then three requests for 198.18.7.99.
    assert!(tcp["neighbour_requests_sent"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(tcp["neighbour_unresolved"], 1, "{report}");
    assert_eq!(tcp["backend_refused"], 1, "{report}");
}
