//! The namespace lab for the system tests: bringing it up and down
//! (scripts/lab-up.sh, one lab at a time), `tlsgate run` in the appliance
//! namespace, an HTTPS origin, TLS configurations and curl in the client
//! namespace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{check_config, output, repo, text, Scratch};

pub const CLI: &str = "tg-cli";
pub const GW: &str = "tg-gw";
pub const SRV: &str = "tg-srv";
pub const SRV_V4: &str = "198.18.0.2";
pub const SRV_V6: &str = "2001:2::2";

/// One lab at a time: the namespaces have fixed names.
pub static LAB: Mutex<()> = Mutex::new(());

pub struct Lab {
    _exclusive: MutexGuard<'static, ()>,
}

impl Lab {
    /// The lab of scripts/lab-up.sh (client, appliance, server, box).
    pub fn up() -> Lab {
        Lab::with_script("scripts/lab-up.sh")
    }

    /// The load-generator lab of scripts/lab-loadgen.sh: both hosts' veth
    /// ends in one namespace (tg-lg) for tlsgate-loadgen.
    pub fn up_for_loadgen() -> Lab {
        Lab::with_script("scripts/lab-loadgen.sh")
    }

    fn with_script(script: &str) -> Lab {
        let exclusive = LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = output(Command::new("bash").arg(repo().join(script)));
        let lab = Lab { _exclusive: exclusive };
        assert!(result.status.success(), "{script} failed:\n{}", text(&result.stderr));
        lab
    }

    /// Another IPv4 address on the client's interface (198.18.0.0/24), so
    /// that the client namespace can also be another client
    /// (`curl --interface ADDRESS`); gone with the lab.
    pub fn add_client_v4(&self, address: &str) {
        self.ok(CLI, "ip", &["addr", "add", &format!("{address}/24"), "dev", "cli0"]);
    }

    pub fn cmd(&self, namespace: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace, program]);
        command
    }

    pub fn ok(&self, namespace: &str, program: &str, args: &[&str]) -> String {
        let result = output(self.cmd(namespace, program).args(args));
        assert!(
            result.status.success(),
            "{program} {args:?} in {namespace} failed:\n{}{}",
            text(&result.stdout),
            text(&result.stderr)
        );
        text(&result.stdout)
    }

    pub fn succeeds(&self, namespace: &str, program: &str, args: &[&str]) -> bool {
        output(self.cmd(namespace, program).args(args)).status.success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("scripts/lab-down.sh")).output();
    }
}

/// `tlsgate run` inside the appliance namespace.
pub struct Appliance {
    pub child: Child,
    report: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Appliance {
    pub fn start(lab: &Lab, scratch: &Scratch, config: &Path) -> Appliance {
        Appliance::spawn(lab.cmd(GW, env!("CARGO_BIN_EXE_tlsgate")), scratch, config, &[])
    }

    /// Like [`Appliance::start`], printing the counters every `seconds`
    /// (see [`Appliance::await_printed`]).
    pub fn start_reporting(lab: &Lab, scratch: &Scratch, config: &Path, seconds: f64) -> Appliance {
        let seconds = seconds.to_string();
        Appliance::spawn(
            lab.cmd(GW, env!("CARGO_BIN_EXE_tlsgate")),
            scratch,
            config,
            &["--stats-interval", &seconds],
        )
    }

    /// Waits up to `limit` for a line containing `text` printed from now
    /// on (what was printed before is skipped); returns whether it came.
    pub fn await_printed(&self, text: &str, limit: Duration) -> bool {
        for _ in self.lines.try_iter() {}
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// `tlsgate run` in this process's own namespace (for devices that need
    /// no network, such as memif).
    pub fn start_here(scratch: &Scratch, config: &Path) -> Appliance {
        Appliance::spawn(Command::new(env!("CARGO_BIN_EXE_tlsgate")), scratch, config, &[])
    }

    fn spawn(mut command: Command, scratch: &Scratch, config: &Path, options: &[&str]) -> Appliance {
        let report = scratch.path("report.json");
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--report-json")
            .arg(&report)
            .args(options)
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

    /// The CPUs each worker thread may run on (`Cpus_allowed_list`).
    pub fn worker_cpus(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).expect("tasks");
        tasks
            .filter_map(|task| {
                let path = task.ok()?.path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                if !name.starts_with("tlsgate-worker") {
                    return None;
                }
                let status = std::fs::read_to_string(path.join("status")).ok()?;
                let line = status.lines().find(|line| line.starts_with("Cpus_allowed_list:"))?;
                Some(line.trim_start_matches("Cpus_allowed_list:").trim().to_owned())
            })
            .collect()
    }

    /// SIGINT, then the exit status, the final counters and what it printed.
    pub fn stop(mut self) -> (ExitStatus, serde_json::Value, String) {
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

/// The environment variable that picks the DPDK driver of the appliance's
/// lab ports (scripts/lab-env.sh reads the same one for the scripts).
pub const LAB_DRIVER_VARIABLE: &str = "TLSGATE_LAB_DRIVER";

/// The lab ports' driver when [`LAB_DRIVER_VARIABLE`] is unset: the one
/// configs/lab.toml and configs/lab-inspect.toml are written for.
pub const DEFAULT_LAB_DRIVER: LabDriver = LabDriver::AfPacket;

/// A kernel-facing DPDK driver for the appliance's ports on the gw veths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabDriver {
    /// `net_af_packet`: a packet socket with mmap rings, a copy per frame.
    AfPacket,
    /// `net_af_xdp`: an XDP program on the veth hands frames to an AF_XDP
    /// socket whose UMEM is the mbuf pool (a veth has one queue per
    /// direction unless created with more).
    AfXdp,
}

impl LabDriver {
    /// [`LAB_DRIVER_VARIABLE`]'s driver, [`DEFAULT_LAB_DRIVER`] when unset;
    /// any other value fails the test, naming it.
    pub fn selected() -> LabDriver {
        match std::env::var(LAB_DRIVER_VARIABLE).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("") => DEFAULT_LAB_DRIVER,
            Ok("af_packet") => LabDriver::AfPacket,
            Ok("af_xdp") => LabDriver::AfXdp,
            other => panic!("{LAB_DRIVER_VARIABLE}={other:?}: expected af_packet or af_xdp"),
        }
    }

    /// The DPDK virtual device's name, without its number.
    pub fn vdev(self) -> &'static str {
        match self {
            LabDriver::AfPacket => "net_af_packet",
            LabDriver::AfXdp => "net_af_xdp",
        }
    }

    /// The device spec of lab port `index` (the vdev's number) on the gw
    /// veth `iface` with `queues` queue pairs (one per worker).
    pub fn device(self, index: u32, iface: &str, queues: u32) -> String {
        match self {
            LabDriver::AfPacket => {
                format!("net_af_packet{index},iface={iface},qpairs={queues},framesz=2048,blocksz=4096,framecnt=2048")
            }
            LabDriver::AfXdp => format!("net_af_xdp{index},iface={iface},start_queue=0,queue_count={queues}"),
        }
    }
}

/// `config` with every lab port's device (`device = "net_af_packetN,..."` or
/// `"net_af_xdpN,..."`) on `driver`, keeping its number, interface and
/// queue count; other lines as they are.
pub fn on_lab_driver(config: &str, driver: LabDriver) -> String {
    let mut out = String::with_capacity(config.len());
    for line in config.lines() {
        match lab_port_device(line) {
            Some((index, iface, queues)) => {
                out.push_str(&format!("device = \"{}\"", driver.device(index, &iface, queues)));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The number, interface and queue count of a lab port's `device = ...`
/// line on af_packet or af_xdp.
fn lab_port_device(line: &str) -> Option<(u32, String, u32)> {
    let spec = line.strip_prefix("device = \"")?.strip_suffix('"')?;
    let mut args = spec.split(',');
    let name = args.next()?;
    let index = name
        .strip_prefix(LabDriver::AfPacket.vdev())
        .or_else(|| name.strip_prefix(LabDriver::AfXdp.vdev()))?
        .parse()
        .ok()?;
    let (mut iface, mut queues) = (None, 1);
    for arg in args {
        match arg.split_once('=') {
            Some(("iface", value)) => iface = Some(value.to_owned()),
            Some(("qpairs" | "queue_count", value)) => queues = value.parse().ok()?,
            _ => {}
        }
    }
    Some((index, iface?, queues))
}

/// The shipped lab configuration at `path` (relative to the repository,
/// e.g. "configs/lab.toml") with its ports on [`LabDriver::selected`].
pub fn lab_config(path: &str) -> String {
    let shipped = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    on_lab_driver(&shipped, LabDriver::selected())
}

/// [`lab_config`] written to the scratch directory; returns its path.
pub fn lab_config_file(scratch: &Scratch, path: &str) -> PathBuf {
    let name = Path::new(path).file_name().expect("a file name");
    let written = scratch.path(&name.to_string_lossy());
    std::fs::write(&written, lab_config(path)).expect("write lab config");
    written
}

/// A configuration based on configs/lab.toml with two workers instead of
/// one, on af_packet whatever the lab driver: two queue pairs per port (the
/// kernel's fanout spreads the connections), worker 0 on CPU 0 beside the
/// main thread and worker 1 on CPU 1, and a pool for both workers' rings.
/// (DPDK 22.11's af_xdp takes its queue count from the interface's combined
/// channels, which a veth does not report, so on a veth it opens one queue:
/// "Specified queue count 2 is larger than combined queue count 1".)
pub fn with_two_workers(config: &str) -> String {
    let two = on_lab_driver(config, LabDriver::AfPacket)
        .replace("qpairs=1", "qpairs=2")
        .replace("workers = 1", "workers = 2")
        .replace("mbufs = 8191", "mbufs = 16383")
        .replace("\"-l\", \"0-1\"", "\"--lcores\", \"0@0,1@0,2@1\"");
    assert_ne!(two, config, "not based on configs/lab.toml");
    two
}

/// `config` plus interception of TCP `ports` in splice mode, with a 3 s
/// idle timeout.
pub fn with_splice(config: &str, ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{config}\n[intercept]\ntcp_ports = [{}]\nmode = \"splice\"\n\n[tcp]\ntimeout_ms = 3000\n",
        list.join(", ")
    )
}

/// A fresh appliance CA (`tlsgate ca init`) in the scratch directory `ca`;
/// returns that directory (ca.pem, ca.key).
pub fn appliance_ca(scratch: &Scratch) -> PathBuf {
    let ca_dir = scratch.path("ca");
    let made = output(
        Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .args(["ca", "init", "--dir"])
            .arg(&ca_dir),
    );
    assert!(made.status.success(), "ca init: {}", text(&made.stderr));
    ca_dir
}

pub fn tls_config(scratch: &Scratch, upstream_trust: &Path) -> (PathBuf, PathBuf) {
    let ca_dir = appliance_ca(scratch);
    let mut config = lab_config("configs/lab.toml");
    config.push_str(&format!(
        "\n[intercept]\ntcp_ports = [443]\nmode = \"tls\"\n\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{trust}\"\n\n[log]\nconnections = \"{logs}/connections.jsonl\"\nkeylog = \"{logs}/keys.log\"\n",
        ca = ca_dir.display(),
        trust = upstream_trust.display(),
        logs = scratch.0.display()
    ));
    let path = scratch.path("tls.toml");
    std::fs::write(&path, config).expect("write config");
    (path, ca_dir.join("ca.pem"))
}

/// An HTTPS origin (nginx) in the server namespace, stopped on drop.
pub struct Origin(pub PathBuf);

impl Origin {
    pub fn start(dir: PathBuf, name: &str, validity: &str) -> Origin {
        Origin::start_with(dir, name, validity, &[])
    }

    /// A valid origin.test speaking only `protocols` (nginx `ssl_protocols`,
    /// e.g. "TLSv1.2") with `ciphers` (`ssl_ciphers`; `None`: nginx's).
    pub fn start_speaking(dir: PathBuf, protocols: &str, ciphers: Option<&str>) -> Origin {
        let mut env = vec![("TG_ORIGIN_PROTOCOLS", protocols)];
        env.extend(ciphers.map(|ciphers| ("TG_ORIGIN_CIPHERS", ciphers)));
        Origin::start_with(dir, "origin.test", "valid", &env)
    }

    /// A valid origin.test that also serves its files in plain HTTP on
    /// port 80 (a server behind a downgrade).
    pub fn start_with_plain_http(dir: PathBuf) -> Origin {
        Origin::start_with(dir, "origin.test", "valid", &[("TG_ORIGIN_PLAIN", "1")])
    }

    fn start_with(dir: PathBuf, name: &str, validity: &str, env: &[(&str, &str)]) -> Origin {
        let started = output(
            Command::new("bash")
                .arg(repo().join("tests/lab/origin.sh"))
                .arg("start")
                .arg(&dir)
                .args([name, validity])
                .envs(env.iter().copied()),
        );
        assert!(started.status.success(), "origin: {}", text(&started.stderr));
        Origin(dir)
    }

    pub fn cert(&self) -> PathBuf {
        self.0.join("origin.crt")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/lab/origin.sh"))
            .arg("stop")
            .arg(&self.0)
            .output();
    }
}

/// `count` HTTPS downloads of origin.test's `file.bin` at once from the
/// client namespace (`curl --parallel`, one URL each with `?n=INDEX` and its
/// own output file under `downloads`): `options` come first, `per_download`
/// gives each URL's own options. Asserts that curl succeeded and that every
/// download is byte-exact `expected`.
pub fn parallel_downloads(
    lab: &Lab,
    ca: &Path,
    downloads: &Path,
    count: usize,
    options: &[&str],
    per_download: impl Fn(usize) -> Vec<&'static str>,
    expected: &[u8],
) {
    std::fs::create_dir_all(downloads).expect("downloads directory");
    let parallel = count.to_string();
    let mut args: Vec<String> = ["-sS", "--max-time", "60"]
        .iter()
        .chain(options)
        .chain(&[
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            &parallel,
            "--resolve",
            "origin.test:443:198.18.0.2",
            "--cacert",
        ])
        .map(|arg| arg.to_string())
        .collect();
    args.push(ca.display().to_string());
    for index in 0..count {
        args.extend(per_download(index).into_iter().map(str::to_owned));
        args.push("-o".into());
        args.push(downloads.join(format!("{index}.bin")).display().to_string());
        args.push(format!("https://origin.test/file.bin?n={index}"));
    }
    let result = output(lab.cmd(CLI, "curl").args(&args));
    assert!(result.status.success(), "curl: {}", text(&result.stderr));
    for index in 0..count {
        let got = std::fs::read(downloads.join(format!("{index}.bin"))).expect("download");
        assert!(got == expected, "download {index} is byte-exact");
    }
}

/// Waits up to 30 s until every one of `count` downloads under `downloads`
/// (parallel_downloads' files) holds at least `bytes`; false if not.
pub fn every_download_reached(downloads: &Path, count: usize, bytes: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let reached = (0..count)
            .filter(|index| {
                std::fs::metadata(downloads.join(format!("{index}.bin"))).is_ok_and(|file| file.len() >= bytes)
            })
            .count();
        if reached == count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs tests/lab/traffic.py in `namespace` with `args`.
pub fn traffic(lab: &Lab, namespace: &str, args: &[&str]) -> std::process::Output {
    output(
        lab.cmd(namespace, "python3")
            .arg(repo().join("tests/lab/traffic.py"))
            .args(args),
    )
}

/// Starts tests/lab/traffic.py's server in the server namespace on TCP
/// port 5001, giving it half a second to listen.
pub fn traffic_server(lab: &Lab) -> Child {
    let server = lab
        .cmd(SRV, "python3")
        .arg(repo().join("tests/lab/traffic.py"))
        .args(["serve", "--port", "5001"])
        .spawn()
        .expect("traffic server");
    std::thread::sleep(Duration::from_millis(500));
    server
}

/// Sizes cycled by the 50 jobs of one [`bulk_transfers`] run: mostly
/// 1-5 MB, one 50 MB upload and one 50 MB download.
const BULK_SIZES: &str = "1M,2M,1M,5M,1M,1M,2M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,1M,50M";

/// 100 parallel transfers from the client namespace through the appliance
/// to a [`traffic_server`] (started and stopped here), 50 to [`SRV_V4`]
/// then 50 to [`SRV_V6`], each checked byte-exact by traffic.py; `how`
/// names the set-up in the failure message.
pub fn bulk_transfers(lab: &Lab, how: &str) {
    let mut server = traffic_server(lab);
    for host in [SRV_V4, SRV_V6] {
        let result = traffic(
            lab,
            CLI,
            &[
                "run",
                "--host",
                host,
                "--port",
                "5001",
                "--jobs",
                "50",
                "--sizes",
                BULK_SIZES,
                "--timeout",
                "120",
            ],
        );
        assert!(
            result.status.success() && text(&result.stdout).contains("\"ok\": 50"),
            "transfers to {host} {how}: {}{}",
            text(&result.stdout),
            text(&result.stderr)
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Asserts that the `tcp` counters of the appliance's final `report` named
/// in `counters` have those values (all compared at once, so a failure
/// shows every one).
pub fn assert_tcp_counters(report: &serde_json::Value, counters: &[(&str, u64)]) {
    let seen: Vec<_> = counters
        .iter()
        .map(|(name, _)| (*name, report["tcp"][name].as_u64()))
        .collect();
    let expected: Vec<_> = counters.iter().map(|(name, count)| (*name, Some(*count))).collect();
    assert_eq!(seen, expected, "{report}");
}

/// Asserts that the appliance's final `report` spliced every connection of
/// one [`bulk_transfers`] run: under load a client may retry one whose
/// server leg the appliance gave up connecting (`server_timed_out`).
pub fn assert_bulk_transfers_spliced(report: &serde_json::Value) {
    let tcp = &report["tcp"];
    assert_eq!(
        tcp["sessions_opened"].as_u64().expect("sessions_opened"),
        100 + tcp["server_timed_out"].as_u64().expect("server_timed_out"),
        "every connection was spliced: {report}"
    );
}

/// The sessions each worker of the appliance's final report opened, in
/// worker order.
pub fn sessions_opened_by_worker(report: &serde_json::Value) -> Vec<u64> {
    report["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|worker| worker["sessions_opened"].as_u64().expect("sessions_opened"))
        .collect()
}

/// Asserts that both workers of a two-worker appliance opened sessions
/// (`what` says which), returning the per-worker counts.
pub fn assert_both_workers_opened_sessions(report: &serde_json::Value, what: &str) -> Vec<u64> {
    let opened = sessions_opened_by_worker(report);
    assert!(opened.len() == 2 && opened.iter().all(|&n| n > 0), "{what}: {opened:?}");
    opened
}

/// The connection log's records.
pub fn connection_log(scratch: &Scratch) -> Vec<serde_json::Value> {
    std::fs::read_to_string(scratch.path("connections.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect()
}

/// Waits up to 15 s for `count` connection-log records.
pub fn await_records(scratch: &Scratch, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = connection_log(scratch);
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn curl(lab: &Lab, ca: &Path, args: &[&str]) -> std::process::Output {
    output(
        lab.cmd(CLI, "curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .args(args),
    )
}

/// A tcpdump writing `file` in `namespace`, started and listening.
pub struct Capture {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    pub fn start(lab: &Lab, namespace: &str, interface: &str, file: &Path, filter: &str) -> Capture {
        let mut child = lab
            .cmd(namespace, "tcpdump")
            .args(["--immediate-mode", "-i", interface, "-U", "-w"])
            .arg(file)
            .arg(filter)
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("listening on") => Capture { child, stderr: lines },
            other => panic!("tcpdump did not start: {other:?}"),
        }
    }

    /// Stops the capture; returns tcpdump's closing report.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// tlsgate-impair, a binary of this package (cargo builds it for its tests).
pub fn impair_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsgate-impair"))
}

/// Puts the element on `link` with the given impairment each way.
pub fn impair(link: &str, a_to_b: &str, b_to_a: &str) {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/lab-impair.sh"))
            .args([link, a_to_b, b_to_a])
            .env("TG_IMPAIR_BIN", impair_binary()),
    );
    assert!(result.status.success(), "lab-impair.sh: {}", text(&result.stderr));
}

/// Stops the element on `link` and returns its final counters.
pub fn stop_impairment(link: &str) -> serde_json::Value {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/lab-impair.sh"))
            .args(["stop", link]),
    );
    assert!(result.status.success(), "lab-impair.sh stop: {}", text(&result.stderr));
    let json = std::fs::read(format!("/tmp/tlsgate-impair-{link}.json")).expect("the element's counters");
    serde_json::from_slice(&json).expect("counters JSON")
}

/// A TLS config (tls_config) on the four-port lab config, with the
/// inspection failure policy, a 500 ms `inspect.syn_timeout_ms` (the box is
/// a local bridge) and a decrypted capture.
pub fn inspect_config(scratch: &Scratch, origin: &Origin, failure: &str) -> (PathBuf, PathBuf) {
    inspect_config_with(scratch, origin, failure, Some(500))
}

/// Like [`inspect_config`], with `syn_timeout_ms` (`None`: lab-inspect.toml's,
/// the default).
pub fn inspect_config_with(
    scratch: &Scratch,
    origin: &Origin,
    failure: &str,
    syn_timeout_ms: Option<u64>,
) -> (PathBuf, PathBuf) {
    let (tls, ca) = tls_config(scratch, &origin.cert());
    let tls_text = std::fs::read_to_string(&tls).expect("tls config");
    let lab = lab_config("configs/lab.toml");
    let inspect = lab_config("configs/lab-inspect.toml");
    let extra = tls_text.strip_prefix(&lab).expect("tls_config extends lab.toml");
    let config = format!(
        "{}{extra}\n[capture]\npath = \"{}\"\nport_map = {{ 443 = 80 }}\n",
        inspect
            .replace("failure = \"fail_closed\"", &format!("failure = \"{failure}\""))
            .replace(
                "syn_timeout_ms = 8000",
                &format!("syn_timeout_ms = {}", syn_timeout_ms.unwrap_or(8000))
            ),
        scratch.path("decrypted.pcap").display()
    );
    let path = scratch.path("inspect.toml");
    std::fs::write(&path, config).expect("write config");
    let checked = check_config(&path);
    assert!(checked.contains("inspection:"), "{checked}");
    (path, ca)
}

/// Runs scripts/inspect-box.sh with `args`.
pub fn inspect_box(args: &[&str]) {
    let result = output(
        Command::new("bash")
            .arg(repo().join("scripts/inspect-box.sh"))
            .args(args),
    );
    assert!(
        result.status.success(),
        "inspect-box.sh {args:?}: {}{}",
        text(&result.stdout),
        text(&result.stderr)
    );
}

pub fn box_dir(scratch: &Scratch) -> String {
    scratch.path("box").display().to_string()
}
