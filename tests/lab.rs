//! The namespace lab (scripts/lab-up.sh): `tlsgate run` between two veth
//! pairs through DPDK's af_packet driver, with real Linux hosts on both
//! sides: the plain bridge (ping, UDP, 50 MB over TCP) and the transparent
//! TCP splice (parallel byte-exact transfers over IPv4 and IPv6, terminated
//! connections seen in captures, refused and unreachable servers). Needs root; run by
//! scripts/test.sh. The lab is torn down even when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{
    assert_bulk_transfers_spliced, bulk_transfers, curl, lab_config, lab_config_file, parallel_downloads, tls_config,
    traffic, traffic_server, with_splice, with_two_workers, Appliance, Capture, Lab, Origin, CLI, SRV, SRV_V4, SRV_V6,
};
use common::{output, text, Scratch};

fn sha256(path: &Path) -> String {
    let result = output(Command::new("sha256sum").arg(path));
    assert!(result.status.success());
    text(&result.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// Sends `size_mb` of random bytes from `from` to `to` over TCP with socat
/// and checks both ends hold the same SHA-256.
fn transfer(lab: &Lab, scratch: &Scratch, from: &str, to: &str, to_addr: &str, size_mb: usize) {
    let sent = scratch.path(&format!("sent-{from}-{size_mb}"));
    let received = scratch.path(&format!("received-{to}-{size_mb}"));
    let made = output(
        Command::new("head")
            .args(["-c", &format!("{size_mb}M"), "/dev/urandom"])
            .stdout(std::fs::File::create(&sent).expect("create")),
    );
    assert!(made.status.success());
    let (listen, target) = if to_addr.contains(':') {
        (
            "TCP6-LISTEN:5001,reuseaddr",
            format!("TCP6:[{to_addr}]:5001,retry=50,interval=0.1"),
        )
    } else {
        (
            "TCP4-LISTEN:5001,reuseaddr",
            format!("TCP4:{to_addr}:5001,retry=50,interval=0.1"),
        )
    };
    let mut server = lab
        .cmd(to, "socat")
        .args(["-u", listen])
        .arg(format!("OPEN:{},creat,trunc", received.display()))
        .spawn()
        .expect("socat server");
    let client = output(
        lab.cmd(from, "timeout")
            .args(["120", "socat", "-u"])
            .arg(format!("OPEN:{}", sent.display()))
            .arg(&target),
    );
    if !client.status.success() {
        let _ = server.kill();
        let _ = server.wait();
        panic!("sending socat {from} -> {to_addr} failed: {}", text(&client.stderr));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let server_status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the receiving socat in {to} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(server_status.success());
    assert_eq!(
        std::fs::metadata(&received).expect("received").len(),
        (size_mb * 1024 * 1024) as u64
    );
    assert_eq!(
        sha256(&sent),
        sha256(&received),
        "{size_mb} MB {from} -> {to}: contents differ"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn bridges_ping_udp_and_tcp_through_af_packet_then_stops_cleanly() {
    let lab = Lab::up();
    let scratch = Scratch::new("lab");

    // Without the appliance the two hosts cannot reach each other.
    assert!(
        !lab.succeeds(CLI, "ping", &["-c", "1", "-W", "1", SRV_V4]),
        "the lab must not bridge by itself"
    );

    let appliance = Appliance::start(&lab, &scratch, &lab_config_file(&scratch, "configs/lab.toml"));
    // configs/lab.toml: -l 0-1, one worker: it owns lcore 1 (CPU 1). The
    // worker pins itself as it starts, just after `running` is printed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while appliance.worker_cpus() != vec!["1".to_owned()] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        appliance.worker_cpus(),
        vec!["1".to_owned()],
        "the worker is pinned to its lcore's CPU"
    );

    lab.ok(CLI, "ping", &["-c", "3", "-i", "0.2", "-W", "2", SRV_V4]);
    lab.ok(CLI, "ping", &["-6", "-c", "3", "-i", "0.2", "-W", "2", SRV_V6]);

    // UDP both address families: the server echoes each datagram back.
    let mut echo_v4 = lab
        .cmd(SRV, "socat")
        .args(["UDP4-RECVFROM:5300,fork", "PIPE"])
        .spawn()
        .expect("udp echo");
    let mut echo_v6 = lab
        .cmd(SRV, "socat")
        .args(["UDP6-RECVFROM:5301,fork", "PIPE"])
        .spawn()
        .expect("udp echo");
    std::thread::sleep(Duration::from_millis(300));
    for (target, message) in [
        (format!("UDP4:{SRV_V4}:5300"), "hello over udp4"),
        (format!("UDP6:[{SRV_V6}]:5301"), "hello over udp6"),
    ] {
        let mut reply = String::new();
        for _ in 0..5 {
            let result = output(
                lab.cmd(CLI, "bash")
                    .arg("-c")
                    .arg(format!("echo '{message}' | timeout 3 socat -t 1 - {target}")),
            );
            reply = text(&result.stdout);
            if reply.contains(message) {
                break;
            }
        }
        assert_eq!(reply.trim(), message, "UDP echo through the appliance ({target})");
    }
    let _ = echo_v4.kill();
    let _ = echo_v6.kill();
    let _ = echo_v4.wait();
    let _ = echo_v6.wait();

    transfer(&lab, &scratch, CLI, SRV, SRV_V4, 50);
    transfer(&lab, &scratch, SRV, CLI, "2001:2::1", 10);

    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
    assert!(printed.contains("final counters"), "{printed}");
    let client = &report["ports"][0];
    let server = &report["ports"][1];
    // 50 MB in MTU-sized segments is more than 35,000 frames one way.
    assert!(client["rx"].as_u64().unwrap() > 35_000, "{report}");
    assert!(server["rx"].as_u64().unwrap() > 7_000, "{report}");
    for port in [client, server] {
        assert_eq!(port["rx"], port["bridged"], "everything received was bridged: {report}");
        assert_eq!(port["dropped"], 0, "{report}");
        assert_eq!(port["malformed"], 0, "{report}");
    }
    assert_eq!(client["bridged"], server["tx"], "{report}");
    assert_eq!(server["bridged"], client["tx"], "{report}");
    let worker = &report["workers"][0];
    assert!(
        worker["busy_ns"].as_u64().unwrap() > 0 && worker["idle_ns"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// lab.toml plus interception of `ports` in splice mode.
fn splice_config(scratch: &Scratch, ports: &[u16]) -> PathBuf {
    let config = lab_config("configs/lab.toml");
    let path = scratch.path("splice.toml");
    std::fs::write(&path, with_splice(&config, ports)).expect("write config");
    path
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn splices_100_parallel_transfers_over_ipv4_and_ipv6_byte_exact() {
    let lab = Lab::up();
    let scratch = Scratch::new("splice-bulk");
    let appliance = Appliance::start(&lab, &scratch, &splice_config(&scratch, &[5001]));
    bulk_transfers(&lab, "spliced");
    // Let the appliance's legs finish TIME-WAIT (10 s) so a leak would show.
    std::thread::sleep(Duration::from_secs(12));
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{printed}");
    assert_bulk_transfers_spliced(&report);
    let tcp = &report["tcp"];
    assert_eq!(tcp["flows_live"], 0, "no flow leaked: {report}");
    assert_eq!(tcp["sessions_live"], 0, "no session leaked: {report}");
    assert_eq!(tcp["flows_created"], tcp["flows_freed"], "{report}");
    assert!(tcp["bytes_client_to_server"].as_u64().unwrap() > 100 << 20, "{report}");
    assert!(tcp["bytes_server_to_client"].as_u64().unwrap() > 100 << 20, "{report}");
    for port in [&report["ports"][0], &report["ports"][1]] {
        assert!(port["intercepted"].as_u64().unwrap() > 50_000, "{report}");
        assert_eq!(port["malformed"], 0, "{report}");
    }
}

/// The first SYN (without ACK) in a capture: MACs, addresses, ports, ISN.
fn first_syn(capture: &Path) -> (Vec<u8>, Vec<u8>, u16, u16, u32) {
    for frame in common::read_pcap(capture) {
        // Ethernet II, IPv4 (no VLAN in the lab).
        if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let tcp = &frame[14 + ihl..];
        let flags = tcp[13];
        if flags & 0x02 != 0 && flags & 0x10 == 0 {
            let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
            let addresses = frame[26..34].to_vec();
            return (
                frame[0..12].to_vec(),
                addresses,
                port(0),
                port(2),
                u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            );
        }
    }
    panic!("no SYN in {}", capture.display());
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn spliced_connection_is_terminated_yet_keeps_the_clients_identity() {
    let lab = Lab::up();
    let scratch = Scratch::new("splice-capture");
    let appliance = Appliance::start(&lab, &scratch, &splice_config(&scratch, &[5001]));
    let client_capture = scratch.path("client.pcap");
    let server_capture = scratch.path("server.pcap");
    let captures = [
        Capture::start(&lab, CLI, "cli0", &client_capture, "tcp port 5001"),
        Capture::start(&lab, SRV, "srv0", &server_capture, "tcp port 5001"),
    ];
    let mut server = traffic_server(&lab);
    let result = traffic(
        &lab,
        CLI,
        &[
            "run", "--host", SRV_V4, "--port", "5001", "--jobs", "1", "--sizes", "100K",
        ],
    );
    assert!(result.status.success(), "{}", text(&result.stdout));
    std::thread::sleep(Duration::from_millis(500));
    for capture in captures {
        capture.stop();
    }
    let _ = server.kill();
    let _ = server.wait();
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["tcp"]["sessions_opened"], 1, "{report}");

    let (client_macs, client_ips, client_sport, client_dport, client_isn) = first_syn(&client_capture);
    let (server_macs, server_ips, server_sport, server_dport, server_isn) = first_syn(&server_capture);
    // The server sees the client's MACs, addresses and ports...
    assert_eq!(client_macs, server_macs);
    assert_eq!(client_ips, server_ips);
    assert_eq!((client_sport, client_dport), (server_sport, server_dport));
    // ...on a connection the appliance opened itself: its own initial sequence number.
    assert_ne!(
        client_isn, server_isn,
        "the server must see the appliance's SYN, not the client's"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn refused_and_unreachable_servers_look_as_they_would_without_the_appliance() {
    let lab = Lab::up();
    let scratch = Scratch::new("splice-failures");
    let appliance = Appliance::start(&lab, &scratch, &splice_config(&scratch, &[5002, 5003]));

    // Nothing listens on 5002 at the server: the client is refused, at once.
    let started = Instant::now();
    let refused =
        output(
            lab.cmd(CLI, "socat")
                .args(["-u", "OPEN:/dev/null", "TCP4:198.18.0.2:5002,connect-timeout=5"]),
        );
    let took = started.elapsed();
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("Connection refused"),
        "{}",
        text(&refused.stderr)
    );
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");

    // A host that does not answer at all (the frames reach the server
    // machine, which is not 198.18.0.3 and drops them): the client gets
    // silence, then its own connect timeout, never a handshake.
    lab.ok(
        CLI,
        "ip",
        &[
            "neigh",
            "replace",
            "198.18.0.3",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "cli0",
        ],
    );
    let started = Instant::now();
    let silent = output(
        lab.cmd(CLI, "socat")
            .args(["-u", "OPEN:/dev/null", "TCP4:198.18.0.3:5003,connect-timeout=2"]),
    );
    let took = started.elapsed();
    assert!(!silent.status.success());
    let stderr = text(&silent.stderr);
    assert!(
        stderr.contains("timed out") || stderr.contains("Operation now in progress"),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(2), "failed after {took:?}: {stderr}");

    // A router on the server side answers with ICMP host unreachable: the
    // client hears of it at once, as it would without the appliance.
    lab.ok(SRV, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    lab.ok(SRV, "ip", &["route", "add", "unreachable", "198.18.0.4/32"]);
    lab.ok(
        CLI,
        "ip",
        &[
            "neigh",
            "replace",
            "198.18.0.4",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "cli0",
        ],
    );
    let started = Instant::now();
    let unreachable =
        output(
            lab.cmd(CLI, "socat")
                .args(["-u", "OPEN:/dev/null", "TCP4:198.18.0.4:5003,connect-timeout=10"]),
        );
    let took = started.elapsed();
    assert!(!unreachable.status.success());
    assert!(
        text(&unreachable.stderr).contains("No route to host"),
        "{}",
        text(&unreachable.stderr)
    );
    assert!(took < Duration::from_secs(2), "the unreachable error took {took:?}");

    // The appliance gives up on the silent server by itself (tcp.timeout_ms = 3 s).
    std::thread::sleep(Duration::from_secs(5));
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    let tcp = &report["tcp"];
    assert_eq!(tcp["server_refused"], 1, "{report}");
    assert!(tcp["server_timed_out"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(tcp["server_unreachable"], 1, "{report}");
    assert_eq!(tcp["sessions_live"], 0, "{report}");
}

/// lab.toml plus TLS interception of port 443 with a fresh CA in `scratch`,
/// trusting `upstream_trust` for the real servers.
#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn intercepts_https_with_forged_certificates_for_real_clients() {
    let lab = Lab::up();
    let scratch = Scratch::new("tls");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let appliance = Appliance::start(&lab, &scratch, &config);
    let resolve4 = "origin.test:443:198.18.0.2";
    let resolve6 = "origin.test:443:[2001:2::2]";

    // curl, HTTP/2 and HTTP/1.1, IPv4 and IPv6: byte-exact content.
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    for (resolve, version) in [
        (resolve4, "--http2"),
        (resolve4, "--http1.1"),
        (resolve6, "--http2"),
        (resolve6, "--http1.1"),
    ] {
        let body = scratch.path("body.bin");
        let result = curl(
            &lab,
            &ca,
            &[
                version,
                "--resolve",
                resolve,
                "https://origin.test/file.bin",
                "-w",
                "%{http_version}",
                "-o",
                body.to_str().unwrap(),
            ],
        );
        assert!(
            result.status.success(),
            "curl {version} via {resolve}: {}",
            text(&result.stderr)
        );
        let expected = if version == "--http2" { "2" } else { "1.1" };
        assert_eq!(
            text(&result.stdout),
            expected,
            "the HTTP version the server chose reaches the client"
        );
        assert!(
            std::fs::read(&body).expect("body") == file,
            "curl {version} via {resolve}: content differs"
        );
    }

    // The client sees the appliance's certificate with the real names.
    for version in ["-tls1_2", "-tls1_3"] {
        let result = output(
            lab.cmd(CLI, "bash")
                .arg("-c")
                .arg(format!(
                    "echo | timeout 10 openssl s_client -connect 198.18.0.2:443 -servername origin.test {version} -alpn h2,http/1.1 -CAfile {}",
                    ca.display()
                )),
        );
        let shown = text(&result.stdout);
        assert!(
            shown.contains("issuer=CN = tlsgate interception CA"),
            "{version}: {shown}"
        );
        assert!(
            shown.contains("subject=CN = origin.test, O = Lab Origin"),
            "{version}: {shown}"
        );
        assert!(shown.contains("ALPN protocol: h2"), "{version}: {shown}");
        assert!(shown.contains("Verify return code: 0 (ok)"), "{version}: {shown}");
        let protocol = if version == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
        assert!(shown.contains(protocol), "{version}: {shown}");
    }

    // Python's ssl module, without SNI by name: it connects to the IP address.
    let script = format!(
        "import ssl,socket\nctx=ssl.create_default_context(cafile='{}')\ns=ctx.wrap_socket(socket.create_connection(('198.18.0.2',443)),server_hostname='198.18.0.2')\ns.sendall(b'GET /index.html HTTP/1.1\\r\\nHost: origin.test\\r\\nConnection: close\\r\\n\\r\\n')\nprint(s.recv(4096).decode())",
        ca.display()
    );
    let result = output(lab.cmd(CLI, "python3").arg("-c").arg(&script));
    assert!(
        text(&result.stdout).contains("hello from origin.test"),
        "python: {}{}",
        text(&result.stdout),
        text(&result.stderr)
    );

    // h2load: many HTTP/2 streams over several intercepted connections.
    let result = output(lab.cmd(CLI, "h2load").args([
        "-n",
        "400",
        "-c",
        "8",
        "-m",
        "10",
        "--connect-to=198.18.0.2:443",
        "https://origin.test/index.html",
    ]));
    let report_text = text(&result.stdout);
    assert!(
        report_text.contains("400 succeeded, 0 failed"),
        "h2load: {report_text}{}",
        text(&result.stderr)
    );
    assert!(
        report_text.contains("Application protocol: h2"),
        "h2load: {report_text}"
    );

    // A client trusting only the real origin now fails: interception is real.
    let result = curl(
        &lab,
        &origin.cert(),
        &["--resolve", resolve4, "https://origin.test/index.html"],
    );
    assert!(
        !result.status.success(),
        "the origin's own certificate must not be what the client sees"
    );

    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{printed}");
    let tcp = &report["tcp"];
    assert!(
        tcp["tls_intercepted"].as_u64().unwrap() >= 15,
        "curl, openssl, python and h2load: {report}"
    );
    assert!(
        tcp["forged_cache_hits"].as_u64().unwrap() >= 5,
        "one forged certificate serves them all: {report}"
    );
    assert_eq!(
        tcp["forged_cache_misses"], 2,
        "one per name (origin.test and the IP address): {report}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn invalid_origin_certificates_still_fail_at_the_client() {
    let lab = Lab::up();
    let scratch = Scratch::new("tls-invalid");
    // The appliance trusts only the system CAs: the lab origin's self-signed
    // certificate is from an unknown issuer.
    let unknown = Origin::start(scratch.path("unknown"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let appliance = Appliance::start(&lab, &scratch, &config);
    let result = curl(
        &lab,
        &ca,
        &["--resolve", "origin.test:443:198.18.0.2", "https://origin.test/"],
    );
    assert_eq!(
        result.status.code(),
        Some(60),
        "unknown issuer: {}",
        text(&result.stderr)
    );
    drop(unknown);
    let (_, report, _) = appliance.stop();
    assert_eq!(report["tcp"]["tls_intercepted"], 0, "{report}");

    // Trusted but expired, and trusted but for another name.
    for (name, validity, asked) in [
        ("origin.test", "expired", "origin.test"),
        ("origin.test", "valid", "other.test"),
    ] {
        let origin = Origin::start(scratch.path(&format!("{validity}-{asked}")), name, validity);
        let scratch = Scratch::new(&format!("tls-invalid-{validity}-{asked}"));
        let (config, ca) = tls_config(&scratch, &origin.cert());
        let appliance = Appliance::start(&lab, &scratch, &config);
        let result = curl(
            &lab,
            &ca,
            &[
                "--resolve",
                &format!("{asked}:443:198.18.0.2"),
                &format!("https://{asked}/"),
            ],
        );
        assert_eq!(
            result.status.code(),
            Some(60),
            "{validity} {asked}: {}",
            text(&result.stderr)
        );
        let (_, report, _) = appliance.stop();
        assert_eq!(report["tcp"]["tls_intercepted"], 0, "{validity} {asked}: {report}");
    }
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn connection_log_and_key_log_let_an_analyst_decrypt_a_capture() {
    let lab = Lab::up();
    let scratch = Scratch::new("tls-logs");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let appliance = Appliance::start(&lab, &scratch, &config);

    // Capture both legs while curl fetches a page over TLS 1.3, then over
    // TLS 1.2 (HTTP/1.1 both times, so tshark shows the requests).
    let client_capture = scratch.path("client-leg.pcap");
    let server_capture = scratch.path("server-leg.pcap");
    let captures = [
        Capture::start(&lab, CLI, "cli0", &client_capture, "tcp port 443"),
        Capture::start(&lab, SRV, "srv0", &server_capture, "tcp port 443"),
    ];
    for version in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
        let mut args = vec!["--http1.1", "--resolve", "origin.test:443:198.18.0.2"];
        args.extend_from_slice(version);
        args.push("https://origin.test/index.html");
        let result = curl(&lab, &ca, &args);
        assert!(result.status.success(), "{version:?}: {}", text(&result.stderr));
    }
    std::thread::sleep(Duration::from_millis(500));
    for capture in captures {
        let report = capture.stop();
        assert!(report.contains("packets captured"), "tcpdump: {report}");
    }

    // With the key log, tshark decrypts each leg's capture: both requests
    // (TLS 1.3 and TLS 1.2) and their responses.
    let keys = scratch.path("keys.log");
    for (leg, capture) in [("client", &client_capture), ("server", &server_capture)] {
        let decrypted = output(
            Command::new("tshark")
                .args(["-n", "-r"])
                .arg(capture)
                .arg("-o")
                .arg(format!("tls.keylog_file:{}", keys.display()))
                .args([
                    "-Y",
                    "http",
                    "-T",
                    "fields",
                    "-e",
                    "http.request.uri",
                    "-e",
                    "http.file_data",
                ]),
        );
        let fields = text(&decrypted.stdout);
        assert_eq!(
            fields.matches("/index.html").count(),
            2,
            "{leg} leg: {fields}{}",
            text(&decrypted.stderr)
        );
        assert_eq!(
            fields.matches("hello from origin.test").count(),
            2,
            "{leg} leg responses: {fields}"
        );
    }
    let key_lines = std::fs::read_to_string(&keys).expect("key log");
    assert!(
        key_lines.lines().any(|line| line.starts_with("CLIENT_RANDOM ")),
        "TLS 1.2 secrets: {key_lines}"
    );

    // Rotation: move the connection log away, SIGHUP, a new file appears.
    let log = scratch.path("connections.jsonl");
    std::thread::sleep(Duration::from_millis(500));
    let rotated = scratch.path("connections.jsonl.1");
    let _ = std::fs::rename(&log, &rotated);
    assert!(
        output(Command::new("kill").args(["-HUP", &appliance.child.id().to_string()]))
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    let result = curl(
        &lab,
        &ca,
        &[
            "--resolve",
            "origin.test:443:198.18.0.2",
            "https://origin.test/index.html",
        ],
    );
    assert!(result.status.success());
    std::thread::sleep(Duration::from_millis(12_000)); // server legs leave TIME-WAIT: sessions end
    let (status, _, _) = appliance.stop();
    assert!(status.success());

    let records: Vec<serde_json::Value> = [&rotated, &log]
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|line| serde_json::from_str(&line).expect("one JSON object per line"))
        .collect();
    assert_eq!(records.len(), 3, "one record per connection: {records:?}");
    assert!(
        !std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "the reopened log gets the new records"
    );
    let first = &records[0];
    assert_eq!(first["sni"], "origin.test", "{first}");
    assert_eq!(first["dest_ip"], "198.18.0.2", "{first}");
    assert_eq!(first["dest_port"], 443, "{first}");
    assert_eq!(first["decision"], "intercept", "{first}");
    assert_eq!(first["upstream_verified"], true, "{first}");
    assert_eq!(first["alpn"], "http/1.1", "{first}");
    assert!(
        first["forged_cert_sha256"].as_str().is_some_and(|f| f.len() == 95),
        "{first}"
    );
    assert!(
        first["client_tls_version"].as_str().is_some_and(|v| v.contains("TLS")),
        "{first}"
    );
    assert!(first["plaintext_server_to_client"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["ended"], "closed", "{first}");
    // Logged when both directions closed, not after the appliance's legs
    // left TIME-WAIT (10 s).
    assert!(first["duration_ms"].as_u64().unwrap() < 5_000, "{first}");
    assert!(
        records[1]["client_tls_version"]
            .as_str()
            .is_some_and(|v| v.contains("1_2")),
        "{}",
        records[1]
    );
    assert_eq!(records[2]["forged_cache_hit"], true, "{}", records[2]);
    let key_lines = std::fs::read_to_string(&keys).expect("key log");
    assert!(
        key_lines
            .lines()
            .any(|line| line.starts_with("CLIENT_TRAFFIC_SECRET_0 ")),
        "{key_lines}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn policy_blocks_bypasses_and_fails_open_for_pinned_clients() {
    let lab = Lab::up();
    let scratch = Scratch::new("tls-policy");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let mut text_config = std::fs::read_to_string(&config).expect("config");
    text_config.push_str(
        "\n[[policy]]\naction = \"block\"\nsni = [\"blocked.test\"]\n\n[[policy]]\naction = \"bypass\"\nwhen = \"non_tls\"\n",
    );
    text_config = text_config.replace("[tls]\n", "[tls]\nfail_open_after = 3\nfail_open_window_secs = 60\n");
    std::fs::write(&config, text_config).expect("config");
    let appliance = Appliance::start(&lab, &scratch, &config);
    let resolve = "origin.test:443:198.18.0.2";

    // Clients that trust only the real certificate (they pin it) reject
    // the forged one; once three distinct clients did, the destination is
    // bypassed and a client then gets the real certificate.
    for from in ["198.18.0.3", "198.18.0.4", "198.18.0.1"] {
        if from != "198.18.0.1" {
            lab.add_client_v4(from);
        }
        let result = curl(
            &lab,
            &origin.cert(),
            &[
                "--interface",
                from,
                "--resolve",
                resolve,
                "https://origin.test/index.html",
            ],
        );
        assert_eq!(result.status.code(), Some(60), "{from}: {}", text(&result.stderr));
    }
    let result = curl(
        &lab,
        &origin.cert(),
        &["--resolve", resolve, "https://origin.test/index.html"],
    );
    assert!(result.status.success(), "fail-open: {}", text(&result.stderr));
    assert_eq!(text(&result.stdout).trim(), "hello from origin.test");

    // A name the policy blocks: reset during the handshake, no certificate.
    let result = curl(
        &lab,
        &ca,
        &["--resolve", "blocked.test:443:198.18.0.2", "https://blocked.test/"],
    );
    assert!(!result.status.success());
    assert_ne!(
        result.status.code(),
        Some(60),
        "blocked, not a certificate error: {}",
        text(&result.stderr)
    );

    // Plain HTTP on the intercepted port is bypassed by rule 2: nginx
    // itself answers that this is an HTTPS port.
    let result = output(
        lab.cmd(CLI, "curl")
            .args(["-sS", "--max-time", "10", "http://198.18.0.2:443/"]),
    );
    assert!(
        text(&result.stdout).contains("plain HTTP request was sent to HTTPS port"),
        "{}",
        text(&result.stdout)
    );

    // A client that offers only TLS 1.0: blocked by default, promptly.
    let started = Instant::now();
    let old_tls = output(lab.cmd(CLI, "bash").arg("-c").arg(
        "echo | timeout 10 openssl s_client -connect 198.18.0.2:443 -servername origin.test -tls1 -cipher DEFAULT@SECLEVEL=0",
    ));
    assert!(
        !text(&old_tls.stdout).contains("BEGIN CERTIFICATE"),
        "no certificate for TLS 1.0"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a TLS 1.0 client is answered promptly, not left hanging"
    );

    std::thread::sleep(Duration::from_millis(12_000)); // sessions end after TIME-WAIT
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    let tcp = &report["tcp"];
    assert_eq!(report["learned"]["added_fail_open"], 1, "{report}");
    assert!(tcp["blocked"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        tcp["bypassed"].as_u64().unwrap() >= 2,
        "fail-open and non-TLS: {report}"
    );

    let log = std::fs::read_to_string(scratch.path("connections.jsonl")).expect("connection log");
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let reasons: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r["decision"], r["reason"]))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("bypass") && r.contains("fail-open")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("block") && r.contains("rule 1")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("bypass") && r.contains("rule 2") && r.contains("not TLS")),
        "{reasons:?}"
    );
}

/// The base64 SHA-256 of a certificate's public key (Chromium's SPKI pin).
fn spki_sha256(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let result = output(Command::new("bash").arg("-c").arg(script));
    assert!(result.status.success());
    text(&result.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_browser_trusting_only_the_appliance_ca_browses_over_http1_and_http2() {
    let lab = Lab::up();
    let scratch = Scratch::new("tls-browser");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let appliance = Appliance::start(&lab, &scratch, &config);
    let browse = |extra: &[&str], trust: bool| {
        let profile = scratch.path(&format!("profile-{}-{trust}", extra.len()));
        let mut command = lab.cmd(CLI, "timeout");
        command.args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
        ]);
        command.args([
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]);
        command.arg(format!("--user-data-dir={}", profile.display()));
        command.arg("--host-resolver-rules=MAP origin.test 198.18.0.2");
        if trust {
            // Chromium trusts certificates chaining to exactly this key.
            command.arg(format!("--ignore-certificate-errors-spki-list={}", spki_sha256(&ca)));
        }
        command
            .args(extra)
            .args(["--dump-dom", "https://origin.test/index.html"]);
        output(&mut command)
    };
    for extra in [&[][..], &["--disable-http2"][..]] {
        let page = browse(extra, true);
        assert!(
            text(&page.stdout).contains("hello from origin.test"),
            "chromium {extra:?}: {}{}",
            text(&page.stdout),
            text(&page.stderr)
        );
    }
    // Without trusting the appliance CA the browser refuses the page.
    let page = browse(&[], false);
    assert!(
        !text(&page.stdout).contains("hello from origin.test"),
        "the forged certificate must not be trusted by default"
    );

    std::thread::sleep(Duration::from_millis(12_000));
    let (status, _, _) = appliance.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(scratch.path("connections.jsonl")).expect("connection log");
    let protocols: Vec<String> = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("json"))
        .filter(|record| record["plaintext_server_to_client"].as_u64().unwrap_or(0) > 0)
        .map(|record| record["alpn"].as_str().unwrap_or("none").to_owned())
        .collect();
    assert!(protocols.iter().any(|p| p == "h2"), "HTTP/2 end to end: {protocols:?}");
    assert!(
        protocols.iter().any(|p| p == "http/1.1"),
        "HTTP/1.1 end to end: {protocols:?}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn two_workers_share_the_connections_and_each_keeps_both_legs_of_its_own() {
    // Two poll-mode workers, two queue pairs per af_packet port: the kernel's
    // fanout hash is symmetric, so both legs of a connection (client port
    // and server port) reach the same worker, which alone holds its state.
    let lab = Lab::up();
    let scratch = Scratch::new("two-workers");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let text_config = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, with_two_workers(&text_config)).expect("write config");
    let appliance = Appliance::start(&lab, &scratch, &config);
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    parallel_downloads(
        &lab,
        &ca,
        &scratch.path("downloads"),
        40,
        &[],
        |index| vec![if index % 2 == 0 { "--http1.1" } else { "--http2" }],
        &file,
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    let workers = report["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{report}");
    let opened: Vec<u64> = workers.iter().map(|w| w["sessions_opened"].as_u64().unwrap()).collect();
    assert_eq!(opened.iter().sum::<u64>(), 40, "{report}");
    assert!(
        opened.iter().all(|&n| n > 0),
        "both workers took connections: {opened:?}"
    );
    assert!(workers.iter().all(|w| w["busy_ns"].as_u64().unwrap() > 0), "{report}");
    assert_eq!(report["tcp"]["tls_intercepted"], 40, "{report}");
    assert_eq!(report["tcp"]["tls_failed"], 0, "{report}");
}
