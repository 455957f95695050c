//! The userspace load generator in the namespace lab: `tlsgate-loadgen`
//! plays every client and every origin on two DPDK af_packet ports in one
//! namespace (scripts/lab-loadgen.sh), `tlsgate run` intercepts between
//! them. No kernel socket is involved, so no file-descriptor limit applies.
//! Needs root; run by scripts/test.sh (which builds both binaries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::lab::{appliance_ca, lab_config, Appliance, Lab};
use common::{output, repo, text, Scratch};

/// tlsgate-loadgen, a binary of this package (cargo builds it for its tests).
fn loadgen_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsgate-loadgen"))
}

/// The origin's certificate and key (served by the load generator's origin
/// side, trusted by the appliance) and the appliance's CA directory.
struct Credentials {
    cert: PathBuf,
    key: PathBuf,
    ca_dir: PathBuf,
}

fn credentials(scratch: &Scratch) -> Credentials {
    let key = scratch.path("origin.key");
    let cert = scratch.path("origin.crt");
    let made = output(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=origin.test",
                "-addext",
                "subjectAltName=DNS:origin.test,IP:198.18.0.2",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ]),
    );
    assert!(made.status.success(), "openssl: {}", text(&made.stderr));
    Credentials {
        cert,
        key,
        ca_dir: appliance_ca(scratch),
    }
}

/// `tlsgate run` intercepting 443 between the load generator's two ports.
fn intercepting_appliance(lab: &Lab, scratch: &Scratch, credentials: &Credentials) -> Appliance {
    let mut config = lab_config("configs/lab.toml");
    config.push_str(&format!(
        "\n[intercept]\ntcp_ports = [443]\n\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{cert}\"\n\n[tcp]\nrx_buffer = 4096\ntx_buffer = 4096\n",
        ca = credentials.ca_dir.display(),
        cert = credentials.cert.display()
    ));
    let config_path = scratch.path("tlsgate.toml");
    std::fs::write(&config_path, config).unwrap();
    Appliance::start(lab, scratch, &config_path)
}

/// The load generator's ports in the lab: af_packet on both veth ends in tg-lg.
const LAB_PORTS: [&str; 6] = [
    "--client-device",
    "net_af_packet0,iface=cli0,framesz=2048,blocksz=4096,framecnt=2048",
    "--server-device",
    "net_af_packet1,iface=srv0,framesz=2048,blocksz=4096,framecnt=2048",
    "--eal-args",
    "--no-huge -m 512 --no-shconf --no-pci -l 0 --file-prefix loadgen",
];

/// Runs tlsgate-loadgen in tg-lg on [`LAB_PORTS`] with `args`.
fn run_loadgen(lab: &Lab, scratch: &Scratch, credentials: &Credentials, args: &[&str]) -> serde_json::Value {
    let mut command = lab.cmd("tg-lg", loadgen_binary().to_str().unwrap());
    command.args(LAB_PORTS);
    run_loadgen_with(command, scratch, credentials, args)
}

/// Runs `command` (tlsgate-loadgen with its ports) with the common
/// arguments (populations, credentials) and `args`; returns its JSON report.
fn run_loadgen_with(
    mut command: Command,
    scratch: &Scratch,
    credentials: &Credentials,
    args: &[&str],
) -> serde_json::Value {
    let report = scratch.path("loadgen.json");
    let run = output(
        command
            .args([
                "--clients",
                "198.18.64.0/18",
                "--clients",
                "198.18.128.0/18",
                "--server",
                "198.18.0.2:443",
                "--until-done",
                "--trust",
            ])
            .arg(credentials.ca_dir.join("ca.pem"))
            .arg("--cert")
            .arg(&credentials.cert)
            .arg("--key")
            .arg(&credentials.key)
            .arg("--report-json")
            .arg(&report)
            .args(args),
    );
    assert!(
        run.status.success(),
        "tlsgate-loadgen: {}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// The generator's report shows every one of `connections` opened,
/// handshaken, exchanged, accepted and still live, with no error.
fn assert_all_held(generated: &serde_json::Value, connections: u64) {
    for key in ["opened", "handshakes", "exchanges", "live", "accepted"] {
        assert_eq!(generated[key], connections, "{key}: {generated}");
    }
    for key in ["resets", "timeouts", "tls_errors"] {
        assert_eq!(generated[key], 0, "{key}: {generated}");
    }
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn the_load_generator_holds_thousands_of_intercepted_tls_connections_through_dpdk() {
    let lab = Lab::up_for_loadgen();
    let scratch = Scratch::new("loadgen");
    let credentials = credentials(&scratch);
    let appliance = intercepting_appliance(&lab, &scratch, &credentials);
    let generated = run_loadgen(
        &lab,
        &scratch,
        &credentials,
        &[
            "--connections",
            "3000",
            // What a debug build of tlsgate handshakes at with room to
            // spare (600/s kept its worker 93 % busy): the test is about
            // holding the connections, not about the rate.
            "--rate",
            "300",
            "--request-bytes",
            "200",
            "--response-bytes",
            "2000",
            "--hold",
            "idle",
            "--duration",
            "240",
        ],
    );
    assert_all_held(&generated, 3000);

    // The appliance held every one of them, idle, until it stopped: then it
    // reset both legs of each (and so holds nothing any more).
    let (status, tlsgate, _) = appliance.stop();
    assert!(status.success());
    let tcp = &tlsgate["tcp"];
    assert_eq!(tcp["tls_intercepted"], 3000, "{tlsgate}");
    assert_eq!(tcp["reset_at_shutdown"], 6000, "{tlsgate}");
    assert_eq!(tcp["sessions_live"], 0, "{tlsgate}");
    assert_eq!(tcp["flows_live"], 0, "{tlsgate}");
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn the_load_generator_replays_captured_requests_through_the_appliance() {
    let lab = Lab::up_for_loadgen();
    let scratch = Scratch::new("loadgen-replay");
    let credentials = credentials(&scratch);
    let appliance = intercepting_appliance(&lab, &scratch, &credentials);
    let capture = repo().join("pcap-fixtures/http-flows.pcapng");
    // 30 connections, round robin over the capture's three client payloads
    // (83, 3242 and 675 bytes), each answered with the captured response
    // size, then closed.
    let generated = run_loadgen(
        &lab,
        &scratch,
        &credentials,
        &[
            "--replay",
            capture.to_str().unwrap(),
            "--connections",
            "30",
            "--rate",
            "100",
            "--hold",
            "close",
            "--duration",
            "60",
        ],
    );
    assert_eq!(generated["handshakes"], 30, "{generated}");
    assert_eq!(
        generated["replayed"], 30,
        "every payload arrived byte-exact: {generated}"
    );
    assert_eq!(generated["replayed_bytes"], 10 * (83 + 3242 + 675), "{generated}");
    for key in ["replay_mismatches", "resets", "timeouts", "tls_errors"] {
        assert_eq!(generated[key], 0, "{key}: {generated}");
    }
    let (status, tlsgate, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(tlsgate["tcp"]["tls_intercepted"], 30, "{tlsgate}");
}

#[test]
#[ignore = "needs root (DPDK): run scripts/test.sh"]
fn the_load_generator_attaches_to_the_appliance_over_memif() {
    // No network at all: tlsgate's two ports are memif servers on sockets
    // in the scratch directory, the generator connects to them as memif
    // clients (shared-memory rings between the two processes).
    // Alone on the machine, like the lab tests (it uses the same lcores).
    let _exclusive = common::lab::LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let scratch = Scratch::new("loadgen-memif");
    let credentials = credentials(&scratch);
    let socket = |name: &str| scratch.path(name).display().to_string();
    let config = format!(
        "[dataplane]\neal_args = [\"--no-huge\", \"-m\", \"512\", \"--no-shconf\", \"--no-pci\", \"-l\", \"0-1\", \"--file-prefix\", \"tgmemif\"]\nworkers = 1\n\n[ports.client]\ndevice = \"net_memif0,role=server,socket={client},id=0\"\n\n[ports.server]\ndevice = \"net_memif1,role=server,socket={server},id=0\"\n\n[intercept]\ntcp_ports = [443]\n\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{cert}\"\n",
        client = socket("client.sock"),
        server = socket("server.sock"),
        ca = credentials.ca_dir.display(),
        cert = credentials.cert.display()
    );
    let config_path = scratch.path("tlsgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let appliance = Appliance::start_here(&scratch, &config_path);
    let mut command = Command::new(loadgen_binary());
    command.args([
        "--client-device",
        &format!("net_memif0,role=client,socket={},id=0", socket("client.sock")),
        "--server-device",
        &format!("net_memif1,role=client,socket={},id=0", socket("server.sock")),
        "--eal-args",
        "--no-huge -m 512 --no-shconf --no-pci -l 0 --file-prefix lgmemif",
    ]);
    let generated = run_loadgen_with(
        command,
        &scratch,
        &credentials,
        &[
            "--connections",
            "1000",
            "--rate",
            "300",
            "--request-bytes",
            "200",
            "--response-bytes",
            "2000",
            "--hold",
            "idle",
            "--duration",
            "60",
        ],
    );
    assert_all_held(&generated, 1000);
    let (status, tlsgate, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(tlsgate["tcp"]["tls_intercepted"], 1000, "{tlsgate}");
    assert_eq!(tlsgate["tcp"]["reset_at_shutdown"], 2000, "{tlsgate}");
    assert_eq!(tlsgate["ports"][0]["driver"]["rx_missed"], 0, "{tlsgate}");
}
