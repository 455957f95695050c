//! The namespace lab (scripts/lab-up.sh): `tlsgate run` bridges two veth
//! pairs through DPDK's af_packet driver while real Linux hosts ping, send
//! UDP and move 50 MB over TCP through it. Needs root; run by
//! scripts/test.sh. The lab is torn down even when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{output, repo, text, Scratch};

const CLI: &str = "tg-cli";
const GW: &str = "tg-gw";
const SRV: &str = "tg-srv";
const SRV_V4: &str = "198.18.0.2";
const SRV_V6: &str = "2001:2::2";

/// One lab at a time: the namespaces have fixed names.
static LAB: Mutex<()> = Mutex::new(());

struct Lab {
    _exclusive: MutexGuard<'static, ()>,
}

impl Lab {
    fn up() -> Lab {
        let exclusive = LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = output(Command::new("bash").arg(repo().join("scripts/lab-up.sh")));
        let lab = Lab { _exclusive: exclusive };
        assert!(result.status.success(), "lab-up.sh failed:\n{}", text(&result.stderr));
        lab
    }

    fn cmd(&self, namespace: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace, program]);
        command
    }

    fn ok(&self, namespace: &str, program: &str, args: &[&str]) -> String {
        let result = output(self.cmd(namespace, program).args(args));
        assert!(
            result.status.success(),
            "{program} {args:?} in {namespace} failed:\n{}{}",
            text(&result.stdout),
            text(&result.stderr)
        );
        text(&result.stdout)
    }

    fn succeeds(&self, namespace: &str, program: &str, args: &[&str]) -> bool {
        output(self.cmd(namespace, program).args(args)).status.success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("scripts/lab-down.sh")).output();
    }
}

/// `tlsgate run` inside the appliance namespace.
struct Appliance {
    child: Child,
    report: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Appliance {
    fn start(lab: &Lab, scratch: &Scratch) -> Appliance {
        let report = scratch.path("report.json");
        let mut child = lab
            .cmd(GW, env!("CARGO_BIN_EXE_tlsgate"))
            .arg("run")
            .arg("--config")
            .arg(repo().join("configs/lab.toml"))
            .arg("--report-json")
            .arg(&report)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tlsgate");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let appliance = Appliance { child, report, lines };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match appliance.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("tlsgate: running") => return appliance,
                Ok(_) => {}
                Err(_) => panic!("tlsgate did not report running within 30 s"),
            }
        }
    }

    /// SIGINT, then the exit status, the final counters and what it printed.
    fn stop(mut self) -> (ExitStatus, serde_json::Value, String) {
        let pid = self.child.id().to_string();
        assert!(output(Command::new("kill").args(["-INT", &pid])).status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tlsgate did not stop within 20 s of SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        };
        let printed: Vec<String> = self.lines.try_iter().collect();
        let report = std::fs::read(&self.report).expect("final report written");
        (
            status,
            serde_json::from_slice(&report).expect("report json"),
            printed.join("\n"),
        )
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

    let appliance = Appliance::start(&lab, &scratch);

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
