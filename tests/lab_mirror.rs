//! The decrypt-mirror port and PCAP-over-IP in the namespace lab, with
//! tshark as the sensor that only listens: curl in the client namespace
//! fetches a URL with a marker over HTTPS, the appliance intercepts it, and
//! tshark finds the request in plaintext (a) on the mirror port's veth in
//! the sensor namespace, with the flow of the connection log, and (b) in
//! the PCAP-over-IP stream read with `nc HOST PORT | tshark -r -`. Needs
//! root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::lab::{curl, tls_config, Appliance, Lab, LabDriver, Origin, GW};
use common::Scratch;

const SENSOR: &str = "tg-sensor";
const RESOLVE: &str = "origin.test:443:198.18.0.2";
const MARKER: &str = "mirror-marker-5e1d";
const PCAP_OVER_IP: &str = "127.0.0.1:57012";

/// tshark's fields of each HTTP request (TLS port 443 dissected as HTTP):
/// client address and port, server address and port, URI.
const FIELDS: &str = "-n -d tcp.port==443,http -Y http.request -T fields -e ip.src -e tcp.srcport -e ip.dst \
                      -e tcp.dstport -e http.request.uri";

/// A process whose standard output lines are collected as they come;
/// killed when dropped.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    /// Starts `command`; when `ready` is given, waits (10 s at most) for a
    /// line of its standard error containing it.
    fn spawn(command: &mut Command, ready: Option<&str>) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let (err_sender, errors) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_sender.send(line);
            }
        });
        if let Some(ready) = ready {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match errors.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) if line.contains(ready) => break,
                    Ok(_) => {}
                    Err(_) => panic!("{command:?} did not print {ready:?} within 10 s"),
                }
            }
        }
        Lines { child, lines }
    }

    /// Waits up to `limit` for a line containing `text`.
    fn await_line(&self, text: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab's TLS configuration with `extra` appended.
fn config_with(scratch: &Scratch, origin: &Origin, extra: &str) -> (PathBuf, PathBuf) {
    let (config, ca) = tls_config(scratch, &origin.cert());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    (config, ca)
}

/// curl fetches the marker URL over HTTPS through the appliance.
fn fetch_marker(lab: &Lab, ca: &Path) {
    let url = format!("https://origin.test/index.html?{MARKER}");
    // HTTP/1.1, which tshark's http.request matches (curl would offer h2).
    let fetched = curl(lab, ca, &["--http1.1", "-o", "/dev/null", "--resolve", RESOLVE, &url]);
    assert!(
        fetched.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
}

/// The connection log's one record.
fn logged_connection(scratch: &Scratch) -> serde_json::Value {
    let log = std::fs::read_to_string(scratch.path("connections.jsonl")).expect("connection log");
    let records: Vec<serde_json::Value> = log.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 1, "{log}");
    records.into_iter().next().unwrap()
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn mirror_port_carries_the_plaintext_to_a_listening_tshark() {
    let lab = Lab::up();
    let scratch = Scratch::new("lab-mirror-port");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = config_with(
        &scratch,
        &origin,
        &format!(
            "\n[ports.mirror]\ndevice = \"{}\"\n",
            LabDriver::selected().device(4, "gwm0", 1)
        ),
    );
    let sensor = Lines::spawn(
        lab.cmd(SENSOR, "tshark")
            .args(["-i", "sens0", "-l"])
            .args(FIELDS.split_whitespace()),
        Some("Capturing on"),
    );
    let appliance = Appliance::start(&lab, &scratch, &config);
    fetch_marker(&lab, &ca);
    let seen = sensor.await_line(MARKER, Duration::from_secs(20));
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{status}");
    let seen = seen.unwrap_or_else(|| {
        panic!("tshark on the mirror port did not see the request in plaintext; the appliance printed:\n{printed}")
    });

    // The mirrored flow is the connection the log records.
    let record = logged_connection(&scratch);
    let fields: Vec<&str> = seen.split('\t').collect();
    assert_eq!(
        fields[..4],
        [
            record["src_ip"].as_str().unwrap(),
            &record["src_port"].to_string(),
            record["dest_ip"].as_str().unwrap(),
            &record["dest_port"].to_string(),
        ],
        "{seen}"
    );
    assert!(fields[4].ends_with(MARKER), "{seen}");

    let mirror = &report["mirror"];
    let device = format!("{}4", LabDriver::selected().vdev());
    assert_eq!(mirror["device"], device.as_str(), "{mirror}");
    assert!(mirror["frames"].as_u64().unwrap() >= 5, "{mirror}");
    assert_eq!(mirror["frames_dropped"], 0, "{mirror}");
    assert!(printed.contains(&format!("mirror port {device}:")), "{printed}");
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn pcap_over_ip_streams_the_plaintext_to_nc_and_tshark() {
    let lab = Lab::up();
    let scratch = Scratch::new("lab-pcap-over-ip");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = config_with(
        &scratch,
        &origin,
        &format!("\n[capture]\npcap_over_ip = \"{PCAP_OVER_IP}\"\n"),
    );
    let appliance = Appliance::start_reporting(&lab, &scratch, &config, 0.2);
    let (host, port) = PCAP_OVER_IP.split_once(':').unwrap();
    // On the management host (the appliance's namespace), as an operator would.
    let reader = Lines::spawn(
        lab.cmd(GW, "sh")
            .arg("-c")
            .arg(format!("nc -d {host} {port} | tshark -r - {FIELDS}")),
        None,
    );
    assert!(
        appliance.await_printed("pcap-over-ip: 1 clients connected", Duration::from_secs(10)),
        "the reader connected"
    );
    fetch_marker(&lab, &ca);
    // Stopping the appliance ends the stream, and tshark reads it to the end.
    let (status, report, _) = appliance.stop();
    assert!(status.success(), "{status}");
    let seen = reader
        .await_line(MARKER, Duration::from_secs(20))
        .expect("tshark read the request from the stream");
    let record = logged_connection(&scratch);
    assert!(
        seen.starts_with(&format!(
            "{}\t{}\t",
            record["src_ip"].as_str().unwrap(),
            record["src_port"]
        )),
        "{seen}"
    );
    let stream = &report["pcap_over_ip"];
    assert_eq!(stream["clients_accepted"], 1, "{stream}");
    assert!(stream["frames"].as_u64().unwrap() >= 5, "{stream}");
    assert_eq!(stream["frames_dropped"], 0, "{stream}");
    assert_eq!(stream["client_frames_dropped"], 0, "{stream}");
}
