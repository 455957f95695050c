//! The privilege drop (`[process] user`): in the namespace lab, `tlsgate
//! run` with `user = "nobody"` runs every thread as nobody with no
//! capability and no_new_privs, still intercepts (curl sees the forged
//! certificate, the body byte-exact), reopens its connection log on SIGHUP,
//! rotates and prunes its decrypted capture and answers on its control
//! socket, all as nobody; chrooted, its logs and control socket live in
//! the jail and interception goes on. Without the lab: `check` and `run` name a user
//! that does not exist and a log directory the user cannot write, and `run`
//! still refuses a CA key readable by others. The lab test needs root; run
//! by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{curl, lab_config, tls_config, Appliance, Lab, Origin};
use common::{check_config, output, text, tlsgate, Scratch};

const RESOLVE: &str = "origin.test:443:198.18.0.2";
const FILE_URL: &str = "https://origin.test/file.bin";

/// nobody's user and group ids, from the user database.
fn nobody() -> (u32, u32) {
    let id = |option| {
        text(&output(Command::new("id").args([option, "nobody"])).stdout)
            .trim()
            .parse::<u32>()
            .expect("id nobody")
    };
    (id("-u"), id("-g"))
}

/// The value of `field` in a /proc status file.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} missing from {status}"))
        .trim()
}

/// Waits up to `limit` for `condition`, polling.
fn await_true(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

fn log_records(paths: &[&Path]) -> Vec<serde_json::Value> {
    paths
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn capture_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|entry| Some(entry.ok()?.path())).collect())
        .unwrap_or_default()
}

/// curl downloads file.bin trusting only the appliance CA: the forged
/// certificate, the origin's bytes.
fn download_intercepted(lab: &Lab, ca: &Path, expected: &[u8], saved: &Path) {
    let result = curl(
        lab,
        ca,
        &["-v", "--resolve", RESOLVE, "-o", &saved.display().to_string(), FILE_URL],
    );
    let handshake = text(&result.stderr);
    assert!(result.status.success(), "{handshake}");
    assert!(handshake.contains("issuer: CN=tlsgate interception CA"), "{handshake}");
    assert!(
        std::fs::read(saved).expect("download") == expected,
        "the body is byte-exact"
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn after_the_drop_every_thread_is_nobody_without_capabilities_and_interception_logs_and_rotation_work() {
    let lab = Lab::up();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("privdrop");
    // Where the run writes after the drop (logs, capture, control socket and
    // the final report) belongs to nobody; the CA stays root's (0600).
    assert!(output(Command::new("chown").arg("nobody:").arg(&scratch.0))
        .status
        .success());
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let expected = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    let capture_dir = scratch.path("capture");
    let socket = scratch.path("control.sock");
    let mut config_text = std::fs::read_to_string(&config).expect("config");
    config_text.push_str(&format!(
        "\n[process]\nuser = \"nobody\"\n\n[control]\nsocket = \"{}\"\n\n[capture]\npath = \"{}\"\nport_map = {{ 443 = 80 }}\nrotate_mb = 1\nmax_files = 2\n",
        socket.display(),
        capture_dir.join("decrypted.pcap").display()
    ));
    std::fs::write(&config, config_text).expect("config");
    let checked = check_config(&config);
    assert!(checked.contains("runs as user nobody"), "{checked}");

    let appliance = Appliance::start(&lab, &scratch, &config);
    let pid = appliance.child.id();
    // Every thread: EAL's (started before the drop), the workers, the
    // writer of the logs and the capture, and the control thread (after it).
    let tasks: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .map(|task| {
            let path = task.expect("task").path();
            let name = std::fs::read_to_string(path.join("comm")).expect("comm");
            (
                name.trim().to_owned(),
                std::fs::read_to_string(path.join("status")).expect("status"),
            )
        })
        .collect();
    let names: Vec<&str> = tasks.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        names.iter().any(|name| name.starts_with("tlsgate-worker"))
            && names.contains(&"tlsgate-writer")
            && names.len() >= 4,
        "{names:?}"
    );
    for (name, status) in &tasks {
        assert_eq!(
            status_field(status, "Uid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}"),
            "{name}"
        );
        assert_eq!(
            status_field(status, "Gid"),
            format!("{gid}\t{gid}\t{gid}\t{gid}"),
            "{name}"
        );
        assert_eq!(status_field(status, "Groups"), gid.to_string(), "{name}");
        for set in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
            assert_eq!(status_field(status, set), "0000000000000000", "{name} {set}");
        }
        assert_eq!(status_field(status, "NoNewPrivs"), "1", "{name}");
    }

    // Interception goes on as nobody.
    download_intercepted(&lab, &ca, &expected, &scratch.path("first.bin"));

    // Rotation of the connection log: moved away, SIGHUP, a new file that
    // nobody creates (and the key log likewise).
    let log = scratch.path("connections.jsonl");
    let rotated = scratch.path("connections.jsonl.1");
    let keys = scratch.path("keys.log");
    std::fs::rename(&log, &rotated).expect("move the log away");
    std::fs::rename(&keys, scratch.path("keys.log.1")).expect("move the key log away");
    assert!(output(Command::new("kill").args(["-HUP", &pid.to_string()]))
        .status
        .success());
    assert!(
        await_true(Duration::from_secs(5), || log.exists() && keys.exists()),
        "SIGHUP reopens both logs"
    );
    for path in [&log, &keys] {
        let meta = std::fs::metadata(path).expect("reopened log");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{} is nobody's", path.display());
    }

    // Two more downloads: the capture (1 MiB files, at most 2) rotates and
    // prunes as nobody.
    download_intercepted(&lab, &ca, &expected, &scratch.path("second.bin"));
    download_intercepted(&lab, &ca, &expected, &scratch.path("third.bin"));
    let listed = output(tlsgate().args(["learned", "list", "--config"]).arg(&config));
    assert!(listed.status.success(), "control socket: {}", text(&listed.stderr));

    // A session's record is written when it ends (its legs out of TIME-WAIT).
    assert!(
        await_true(Duration::from_secs(60), || log_records(&[&rotated, &log]).len() == 3),
        "three records: {:?}",
        log_records(&[&rotated, &log])
    );
    assert!(
        !log_records(&[&log]).is_empty(),
        "the reopened log gets the new records"
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert!(!socket.exists(), "the control socket is removed at the end");
    assert_eq!(report["capture"]["frames_dropped"], 0, "{report}");
    for dropped in [
        "log_records_dropped",
        "keylog_records_dropped",
        "capture_frames_dropped",
    ] {
        assert_eq!(report["writer"][dropped], 0, "{report}");
    }
    assert!(
        report["capture"]["bytes"].as_u64().unwrap() > 3 * 1024 * 1024,
        "{report}"
    );

    let files = capture_files(&capture_dir);
    assert_eq!(files.len(), 2, "rotated and pruned to max_files: {files:?}");
    for file in &files {
        let meta = std::fs::metadata(file).expect("capture file");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", file.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", file.display());
        let read = output(Command::new("tshark").arg("-r").arg(file).arg("-c").arg("1"));
        assert!(read.status.success(), "{}: {}", file.display(), text(&read.stderr));
    }
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn chrooted_the_logs_and_the_control_socket_live_inside_the_jail_and_interception_goes_on() {
    let lab = Lab::up();
    let (uid, _) = nobody();
    let scratch = Scratch::new("privdrop-chroot");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = tls_config(&scratch, &origin.cert());
    // The jail holds only a directory nobody writes; the CA, the trust
    // bundle and the report stay outside (read or created before the drop).
    let jail = scratch.path("jail");
    std::fs::create_dir_all(jail.join("logs")).expect("jail");
    assert!(output(Command::new("chown").arg("nobody:").arg(jail.join("logs")))
        .status
        .success());
    let mut config_text = std::fs::read_to_string(&config).expect("config");
    config_text = config_text.replace(
        &format!("connections = \"{}/connections.jsonl\"", scratch.0.display()),
        "connections = \"/logs/connections.jsonl\"",
    );
    config_text = config_text.replace(
        &format!("keylog = \"{}/keys.log\"", scratch.0.display()),
        "keylog = \"/logs/keys.log\"",
    );
    config_text.push_str(&format!(
        "\n[process]\nuser = \"nobody\"\nchroot = \"{}\"\n\n[control]\nsocket = \"/logs/control.sock\"\n",
        jail.display()
    ));
    std::fs::write(&config, config_text).expect("config");

    let appliance = Appliance::start(&lab, &scratch, &config);
    let pid = appliance.child.id();
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("root of the process");
    assert_eq!(root, jail, "chrooted");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(status_field(&status, "Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");

    let result = curl(
        &lab,
        &ca,
        &["-v", "--resolve", RESOLVE, "https://origin.test/index.html"],
    );
    let handshake = text(&result.stderr);
    assert!(result.status.success(), "{handshake}");
    assert!(handshake.contains("issuer: CN=tlsgate interception CA"), "{handshake}");
    assert_eq!(text(&result.stdout).trim(), "hello from origin.test");
    // `tlsgate learned` finds the socket inside the jail.
    let listed = output(tlsgate().args(["learned", "list", "--config"]).arg(&config));
    assert!(listed.status.success(), "control socket: {}", text(&listed.stderr));
    let log = jail.join("logs/connections.jsonl");
    assert!(
        await_true(Duration::from_secs(60), || log_records(&[&log]).len() == 1),
        "the record, in the jail: {:?}",
        log_records(&[&log])
    );
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert!(
        report["tcp"].is_object(),
        "the report is written outside the jail: {report}"
    );
    assert!(
        !jail.join("logs/control.sock").exists(),
        "the control socket is removed at the end"
    );
    assert!(!std::fs::read_to_string(jail.join("logs/keys.log"))
        .expect("key log")
        .is_empty());
}

/// A lab config (no devices are opened: everything below fails before EAL)
/// with `extra` appended, in `scratch`.
fn config_with(scratch: &Scratch, extra: &str) -> PathBuf {
    let mut config = lab_config("configs/lab.toml");
    config.push_str(extra);
    let path = scratch.path("config.toml");
    std::fs::write(&path, config).expect("config");
    path
}

/// The first line of what `tlsgate ARGS --config CONFIG` said on failure.
fn refusal(command: &str, config: &Path) -> String {
    let result = output(tlsgate().arg(command).arg("--config").arg(config));
    assert_eq!(result.status.code(), Some(1), "{command}: {}", text(&result.stdout));
    text(&result.stderr)
}

#[test]
fn check_and_run_name_an_unknown_user_and_a_log_directory_it_cannot_write() {
    let scratch = Scratch::new("privdrop-check");
    let config = config_with(&scratch, "\n[process]\nuser = \"tlsgate-no-such-user\"\n");
    for command in ["check", "run"] {
        let said = refusal(command, &config);
        assert!(
            said.contains("`process.user` \"tlsgate-no-such-user\": no such user on this system"),
            "{command}: {said}"
        );
    }

    // A log directory only its owner (here, whoever runs the test) may write.
    let logs = scratch.path("logs");
    std::fs::create_dir(&logs).expect("logs");
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = config_with(
        &scratch,
        &format!(
            "\n[process]\nuser = \"nobody\"\n[log]\nconnections = \"{}\"\n",
            logs.join("connections.jsonl").display()
        ),
    );
    for command in ["check", "run"] {
        let said = refusal(command, &config);
        assert!(
            said.contains("`log.connections`")
                && said.contains("logs is not writable by user nobody")
                && said.contains("after the privilege drop"),
            "{command}: {said}"
        );
    }
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    check_config(&config);
}

#[test]
fn run_with_a_user_still_refuses_a_ca_key_readable_by_others() {
    let scratch = Scratch::new("privdrop-ca");
    let ca = common::lab::appliance_ca(&scratch);
    std::fs::set_permissions(ca.join("ca.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = config_with(
        &scratch,
        &format!(
            "\n[process]\nuser = \"nobody\"\n[intercept]\ntcp_ports = [443]\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\n",
            ca = ca.display()
        ),
    );
    let said = refusal("run", &config);
    assert!(said.contains("ca.key can be read by other users"), "{said}");
}
