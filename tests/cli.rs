//! The command line as an operator meets it: help, version, and `check`
//! explaining what is wrong with a configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::lab::{on_lab_driver, LabDriver, DEFAULT_LAB_DRIVER, LAB_DRIVER_VARIABLE};
use common::{check_config, output, repo, text, tlsgate, write_null_ports_config, Scratch};

#[test]
fn help_and_version() {
    let help = output(tlsgate().arg("--help"));
    assert!(help.status.success());
    let help = text(&help.stdout);
    for command in ["run", "check", "replay"] {
        assert!(help.contains(command), "{help}");
    }
    let version = output(tlsgate().arg("--version"));
    assert!(version.status.success());
    assert!(text(&version.stdout).starts_with(&format!("tlsgate {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn check_accepts_the_shipped_configs() {
    for name in ["lab.toml", "inline-bridge.toml"] {
        let result = output(
            tlsgate()
                .arg("check")
                .arg("--config")
                .arg(repo().join("configs").join(name)),
        );
        assert!(result.status.success(), "{name}: {}", text(&result.stderr));
        assert!(text(&result.stdout).contains("configuration is valid"));
    }
}

/// The lab configurations carry the default lab driver's device specs, so
/// `TLSGATE_LAB_DRIVER` unset runs them as shipped; the scripts' switch
/// (scripts/lab-env.sh `tg_lab_config`) writes the same configs as the
/// tests' (`on_lab_driver`), and `tlsgate check` accepts them on every lab
/// driver.
#[test]
fn shipped_lab_configs_are_on_the_default_lab_driver_and_check_on_every_driver() {
    let scratch = Scratch::new("lab-drivers");
    for name in ["lab.toml", "lab-inspect.toml"] {
        let shipped = std::fs::read_to_string(repo().join("configs").join(name)).expect("lab config");
        assert_eq!(on_lab_driver(&shipped, DEFAULT_LAB_DRIVER), shipped, "{name}");
        for (driver, variable) in [(LabDriver::AfPacket, "af_packet"), (LabDriver::AfXdp, "af_xdp")] {
            let config = on_lab_driver(&shipped, driver);
            let scripts = output(
                Command::new("bash")
                    .args(["-c", ". scripts/lab-env.sh && tg_lab_config \"configs/$0\"", name])
                    .env(LAB_DRIVER_VARIABLE, variable)
                    .current_dir(repo()),
            );
            assert!(scripts.status.success(), "{}", text(&scripts.stderr));
            assert_eq!(text(&scripts.stdout), config, "{variable}: scripts and tests differ");
            let ports = shipped.matches("\ndevice = ").count();
            let on_driver = format!("\ndevice = \"{}", driver.vdev());
            assert_eq!(config.matches(&on_driver).count(), ports, "{driver:?}: {config}");
            let path = scratch.path(&format!("{driver:?}-{name}"));
            std::fs::write(&path, &config).expect("write");
            check_config(&path);
        }
    }
}

#[test]
fn check_explains_broken_configs() {
    let scratch = Scratch::new("check");
    let lab = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("lab.toml");
    let cases = [
        (lab.replace("workers = 1", "workers = 1\nworkerz = 2"), "workerz"),
        (lab.replace("workers = 1", "workers = 0"), "dataplane.workers"),
        (lab.replace("burst_size = 32", "burst_size = \"lots\""), "burst_size"),
        (
            lab.replace(&format!("{}1,", DEFAULT_LAB_DRIVER.vdev()), "bogus1,"),
            "ports.server.device",
        ),
        ("[dataplane]\n".to_owned(), "ports"),
        ("this is = = not toml".to_owned(), "line 1"),
    ];
    for (index, (config, key)) in cases.iter().enumerate() {
        let path = scratch.path(&format!("broken{index}.toml"));
        std::fs::write(&path, config).expect("write");
        let result = output(tlsgate().arg("check").arg("--config").arg(&path));
        assert!(!result.status.success(), "case {index} accepted");
        let stderr = text(&result.stderr);
        assert!(stderr.contains(key), "case {index}: expected {key:?} in: {stderr}");
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "case {index}: the file is named: {stderr}"
        );
    }
    let missing = output(tlsgate().args(["check", "--config", "/nonexistent/tlsgate.toml"]));
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("/nonexistent/tlsgate.toml"));
}

#[test]
fn run_and_check_explain_too_few_lcores_for_the_workers() {
    let scratch = Scratch::new("lcores");
    let config = scratch.path("two-workers.toml");
    write_null_ports_config(&config, 2);
    for command in [&["run", "--duration", "1"][..], &["check"]] {
        let result = output(tlsgate().args(command).arg("--config").arg(&config));
        assert!(!result.status.success(), "{command:?}");
        let stderr = text(&result.stderr);
        assert!(
            stderr.contains("`dataplane.workers`: 2 workers") && stderr.contains("`-l 0-1`"),
            "{command:?}: {stderr}"
        );
    }
}

#[test]
fn learned_needs_a_control_socket_and_a_running_instance() {
    let scratch = Scratch::new("learned-cli");
    let lab = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("lab.toml");
    let without = scratch.path("without.toml");
    std::fs::write(&without, &lab).expect("write");
    let result = output(tlsgate().args(["learned", "list", "--config"]).arg(&without));
    assert!(!result.status.success());
    assert!(
        text(&result.stderr).contains("no [control] socket"),
        "{}",
        text(&result.stderr)
    );
    let socket = scratch.path("control.sock");
    let with = scratch.path("with.toml");
    std::fs::write(
        &with,
        format!("{lab}\n[control]\nsocket = {:?}\n", socket.display().to_string()),
    )
    .expect("write");
    let result = output(tlsgate().args(["learned", "clear", "--config"]).arg(&with));
    assert!(!result.status.success());
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("cannot reach a running tlsgate") && stderr.contains("control.sock"),
        "{stderr}"
    );
}

#[test]
fn reload_finds_the_control_socket_even_in_a_file_that_does_not_load() {
    let scratch = Scratch::new("reload-cli");
    let lab = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("lab.toml");
    let reload = |config: &std::path::Path| {
        let result = output(tlsgate().args(["reload", "--config"]).arg(config));
        assert_eq!(result.status.code(), Some(1));
        text(&result.stderr)
    };
    let without = scratch.path("without.toml");
    std::fs::write(&without, &lab).expect("write");
    let said = reload(&without);
    assert!(
        said.contains("no [control] socket") && said.contains("SIGHUP"),
        "{said}"
    );
    // A broken file still names the socket: the running instance is asked
    // (and would refuse the file, saying why).
    let socket = scratch.path("control.sock");
    let broken = scratch.path("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "{lab}\n[control]\nsocket = {:?}\n[[policy]]\naction = \"block\"\ndst = [\"nowhere\"]\n",
            socket.display().to_string()
        ),
    )
    .expect("write");
    let said = reload(&broken);
    assert!(
        said.contains("cannot reach a running tlsgate") && said.contains("control.sock"),
        "{said}"
    );
    // Without a socket, the file's own error.
    let unusable = scratch.path("unusable.toml");
    std::fs::write(
        &unusable,
        format!("{lab}\n[[policy]]\naction = \"block\"\ndst = [\"nowhere\"]\n"),
    )
    .expect("write");
    let said = reload(&unusable);
    assert!(
        said.contains("policy[1].dst") && said.contains("unusable.toml"),
        "{said}"
    );
}

/// Every subcommand path below `path`, depth first, as listed under
/// "Commands:" in their `-h` (clap's own `help` left out).
fn subcommands(path: &[String]) -> Vec<Vec<String>> {
    let help = output(tlsgate().args(path).arg("-h"));
    assert!(help.status.success(), "{path:?}");
    let help = text(&help.stdout);
    let mut found = vec![path.to_vec()];
    let Some(commands) = help.split("Commands:\n").nth(1) else {
        return found;
    };
    for line in commands.lines().take_while(|line| line.starts_with("  ")) {
        let name = line.split_whitespace().next().expect("a command name");
        if name != "help" {
            let mut below = path.to_vec();
            below.push(name.to_owned());
            found.extend(subcommands(&below));
        }
    }
    found
}

#[test]
fn every_command_and_option_has_help() {
    let commands = subcommands(&[]);
    assert!(commands.len() >= 9, "{commands:?}");
    for command in commands {
        let help = text(&output(tlsgate().args(&command).arg("-h")).stdout);
        for section in help
            .split("\n\n")
            .filter(|s| s.starts_with("Commands:") || s.starts_with("Options:"))
        {
            for entry in section.lines().skip(1) {
                // "  -c, --config <CONFIG>  The configuration file (TOML)."
                let described = entry.trim().split("  ").filter(|part| !part.trim().is_empty()).count() >= 2;
                assert!(described, "tlsgate {}: blank help entry {entry:?}", command.join(" "));
            }
        }
    }
}

#[test]
fn help_documents_environment_signals_and_exit_status() {
    let help = text(&output(tlsgate().arg("--help")).stdout);
    for needle in [
        "TLSGATE_LOG ",
        "TLSGATE_LOG_FORMAT",
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "Exit status",
        "0  success",
        "1  the command failed",
        "2  the command line is invalid",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

#[test]
fn a_reader_closing_the_pipe_early_is_not_a_crash() {
    let scratch = Scratch::new("epipe");
    let dir = scratch.path("ca");
    assert!(output(tlsgate().args(["ca", "init", "--dir"]).arg(&dir))
        .status
        .success());
    // The read end is closed before tlsgate writes: every write gets EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let result = output(
        tlsgate()
            .args(["ca", "show", "--dir"])
            .arg(&dir)
            .stdout(writer)
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `run` carries on without its status lines.
    let config = scratch.path("null.toml");
    write_null_ports_config(&config, 1);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let result = output(
        tlsgate()
            .args(["run", "--duration", "0.5", "--stats-interval", "0.1", "--config"])
            .arg(&config)
            .arg("--report-json")
            .arg(scratch.path("report.json"))
            .stdout(writer)
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("status lines are not printed any more").count(),
        1,
        "{stderr}"
    );
    assert!(scratch.path("report.json").exists(), "run went on to its end: {stderr}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes_and_an_invalid_filter_is_named() {
    let result = output(
        tlsgate()
            .env("TLSGATE_LOG", "tlsgate=loud")
            .args(["check", "--config"])
            .arg(repo().join("configs/lab.toml")),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("TLSGATE_LOG=\"tlsgate=loud\"") && stderr.contains("level"),
        "the value and the parse error are named: {stderr}"
    );
    assert!(!result.stderr.contains(&0x1b), "ESC in logs to a pipe: {stderr:?}");

    let json = output(
        tlsgate()
            .env("TLSGATE_LOG", "tlsgate=loud")
            .env("TLSGATE_LOG_FORMAT", "json")
            .args(["check", "--config"])
            .arg(repo().join("configs/lab.toml")),
    );
    let line = text(&json.stderr);
    let record: serde_json::Value = serde_json::from_str(line.lines().next().expect("a log line")).expect("JSON log");
    assert_eq!(record["level"], "WARN", "{record}");
}

#[test]
fn an_error_names_its_cause_once() {
    let result = output(tlsgate().args(["check", "--config", "/nonexistent/tlsgate.toml"]));
    assert_eq!(result.status.code(), Some(1));
    let stderr = text(&result.stderr);
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/tlsgate.toml"), "{stderr}");
}

#[test]
fn check_loads_what_run_would_load() {
    let scratch = Scratch::new("check-loads");
    let (config, ca_pem) = common::lab::tls_config(&scratch, &scratch.path("ca/ca.pem"));
    let valid = std::fs::read_to_string(&config).expect("config");
    let checked = output(tlsgate().arg("check").arg("--config").arg(&config));
    assert!(checked.status.success(), "{}", text(&checked.stderr));

    let other = scratch.path("other");
    assert!(output(tlsgate().args(["ca", "init", "--dir"]).arg(&other))
        .status
        .success());
    let ca = ca_pem.parent().expect("ca dir").display().to_string();
    let logs = scratch.0.display().to_string();
    let cases = [
        (
            valid.replace(&format!("{ca}/ca.pem\""), &format!("{ca}/missing.pem\"")),
            vec!["tls.ca_cert", "missing.pem", "No such file or directory"],
        ),
        (
            valid.replace(&format!("{ca}/ca.key"), &format!("{}/ca.key", other.display())),
            vec!["tls.ca_key", "other/ca.key", "is not the key of the CA certificate"],
        ),
        (
            valid.replace(
                &format!("upstream_trust = \"{ca}/ca.pem\""),
                "upstream_trust = \"/nonexistent/bundle.pem\"",
            ),
            vec![
                "tls.upstream_trust",
                "/nonexistent/bundle.pem",
                "No such file or directory",
            ],
        ),
        (
            valid.replace(&format!("{logs}/connections.jsonl"), "/sys/connections.jsonl"),
            vec![
                "log.connections",
                "/sys/connections.jsonl",
                "not writable",
                "ermission denied",
            ],
        ),
        (
            valid.replace(&format!("{logs}/keys.log"), "/nonexistent-dir/keys.log"),
            vec!["log.keylog", "/nonexistent-dir/keys.log"],
        ),
        (
            format!("{valid}\n[capture]\npath = \"/sys/tlsgate/decrypted.pcap\"\n"),
            vec!["capture.path", "/sys/tlsgate/decrypted.pcap", "ermission denied"],
        ),
    ];
    for (index, (broken, needles)) in cases.iter().enumerate() {
        assert_ne!(broken, &valid, "case {index} changes the config");
        let path = scratch.path(&format!("broken{index}.toml"));
        std::fs::write(&path, broken).expect("write");
        let result = output(tlsgate().arg("check").arg("--config").arg(&path));
        let stderr = text(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "case {index} accepted: {stderr}");
        assert!(stderr.contains(&*path.to_string_lossy()), "case {index}: {stderr}");
        for needle in needles {
            assert_eq!(
                stderr.matches(needle).count(),
                1,
                "case {index}: {needle:?} once in: {stderr}"
            );
        }
    }
}

/// `check` loads every `[[service]]` file as `run` would and names the key
/// at fault.
#[test]
fn check_loads_every_service_file_and_names_its_key() {
    let scratch = Scratch::new("check-services");
    let (config, ca_pem) = common::lab::tls_config(&scratch, &scratch.path("ca/ca.pem"));
    let valid = std::fs::read_to_string(&config).expect("config");
    let www = scratch.path("www");
    assert!(output(tlsgate().args(["ca", "init", "--dir"]).arg(&www))
        .status
        .success());
    let tickets = scratch.path("tickets.key");
    std::fs::write(&tickets, [7u8; 80]).expect("ticket file");
    std::fs::set_permissions(&tickets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let service = |chain: &str, key: &str, tickets: &str| {
        format!(
            "{valid}\n[[service]]\nname = \"www\"\ndestinations = [\"198.18.1.2\"]\nport = 443\n\
             certificates = [ {{ chain = \"{chain}\", key = \"{key}\" }} ]\nbackend = {{ port = 8080 }}\n\
             header = \"proxy-v2\"\nticket_key = \"{tickets}\"\n"
        )
    };
    let (chain, key) = (www.join("ca.pem"), www.join("ca.key"));
    let (chain, key, tickets) = (
        chain.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
        tickets.to_str().expect("utf-8"),
    );
    let good = scratch.path("good.toml");
    std::fs::write(&good, service(chain, key, tickets)).expect("write");
    let checked = output(tlsgate().arg("check").arg("--config").arg(&good));
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(
        text(&checked.stdout).contains("service \"www\": 1 certificate chain(s)"),
        "{}",
        text(&checked.stdout)
    );

    let other_key = ca_pem.with_file_name("ca.key");
    let cases = [
        (
            service(chain, other_key.to_str().expect("utf-8"), tickets),
            vec!["service[0].certificates[0].key", "does not match its certificate"],
        ),
        (
            service("/nonexistent/www.pem", key, tickets),
            vec!["service[0].certificates[0].chain", "/nonexistent/www.pem"],
        ),
        (
            service(chain, key, "/nonexistent/tickets.key"),
            vec!["service[0].ticket_key", "/nonexistent/tickets.key"],
        ),
    ];
    for (index, (broken, needles)) in cases.iter().enumerate() {
        let path = scratch.path(&format!("broken{index}.toml"));
        std::fs::write(&path, broken).expect("write");
        let result = output(tlsgate().arg("check").arg("--config").arg(&path));
        let stderr = text(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "case {index} accepted: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "case {index}: {needle:?} in: {stderr}");
        }
    }
}

/// `tlsgate run` under systemd (`Type=notify`, the packaged unit): READY=1
/// goes to `NOTIFY_SOCKET` once the ports are up, never when they cannot
/// be opened; without `NOTIFY_SOCKET`, or with one nobody listens on,
/// the appliance runs as usual.
#[test]
fn run_tells_systemd_it_is_ready_once_its_ports_are_up() {
    use std::os::unix::net::UnixDatagram;

    let scratch = Scratch::new("notify");
    let notify_path = scratch.path("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    systemd.set_nonblocking(true).expect("nonblocking");
    let mut message = [0u8; 4096];

    let broken = scratch.path("broken.toml");
    write_null_ports_config(&broken, 1);
    let config = std::fs::read_to_string(&broken).expect("read");
    std::fs::write(&broken, config.replace("net_null1", "net_af_packet1,iface=tg-no-such0")).expect("write");
    let result = output(
        tlsgate()
            .args(["run", "--duration", "5", "--config"])
            .arg(&broken)
            .env("NOTIFY_SOCKET", &notify_path),
    );
    assert!(!result.status.success(), "{}", text(&result.stdout));
    assert!(
        systemd.recv(&mut message).is_err(),
        "readiness sent for ports that never came up: {}",
        text(&message)
    );

    let config = scratch.path("null.toml");
    write_null_ports_config(&config, 1);
    let result = output(
        tlsgate()
            .args(["run", "--duration", "0.5", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let length = systemd.recv(&mut message).expect("READY=1 was sent");
    let sent = text(&message[..length]);
    assert!(sent.lines().any(|line| line == "READY=1"), "{sent}");
    assert!(
        sent.lines()
            .any(|line| line.starts_with("STATUS=") && line.contains("net_null0")),
        "{sent}"
    );
    assert!(systemd.recv(&mut message).is_err(), "sent once");

    for notify in [None, Some(scratch.path("nobody-listens.sock"))] {
        let mut command = tlsgate();
        command.args(["run", "--duration", "0.5", "--config"]).arg(&config);
        match &notify {
            Some(path) => command.env("NOTIFY_SOCKET", path),
            None => command.env_remove("NOTIFY_SOCKET"),
        };
        let result = output(&mut command);
        let stderr = text(&result.stderr);
        assert!(result.status.success(), "{notify:?}: {stderr}");
        assert_eq!(
            stderr.contains("cannot tell systemd"),
            notify.is_some(),
            "{notify:?}: {stderr}"
        );
    }
}

/// `configs/tlsgate.toml`, installed by the Debian package as
/// `/etc/tlsgate/tlsgate.toml`, passes `check` once its CA exists (the
/// package's postinst creates one), and every path it writes, commented
/// examples included, lies where the packaged unit lets tlsgate write.
#[test]
fn the_packaged_config_passes_check_and_writes_only_where_the_unit_allows() {
    let shipped = std::fs::read_to_string(repo().join("configs/tlsgate.toml")).expect("configs/tlsgate.toml");
    let unit = std::fs::read_to_string(repo().join("crates/tlsgate/debian/tlsgate.service")).expect("tlsgate.service");
    let setting = |name: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(&format!("{name}=")))
            .flat_map(|value| value.split_whitespace().map(str::to_owned))
            .collect()
    };
    let mut writable = setting("ReadWritePaths");
    writable.extend(setting("RuntimeDirectory").iter().map(|dir| format!("/run/{dir}")));
    let written: Vec<&str> = shipped
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|value| value.starts_with("/var/") || value.starts_with("/run/"))
        .collect();
    assert!(written.len() >= 4, "log, key log, capture, control socket: {written:?}");
    for path in &written {
        assert!(
            writable.iter().any(|dir| path.starts_with(&format!("{dir}/"))),
            "{path} is outside the unit's writable paths {writable:?}"
        );
    }
    assert!(
        shipped.contains(r#""--file-prefix", "tlsgate""#) && writable.iter().any(|dir| dir == "/run/dpdk/tlsgate"),
        "the EAL's runtime files (--file-prefix) go where the unit lets them"
    );

    let scratch = Scratch::new("packaged");
    let relocated = shipped
        .replace("/etc/tlsgate/", &format!("{}/etc/", scratch.0.display()))
        .replace("/var/log/tlsgate/", &format!("{}/log/", scratch.0.display()))
        .replace("/run/tlsgate/", &format!("{}/run/", scratch.0.display()))
        // The package creates the `tlsgate` user (scripts/test-package.sh
        // checks the installed file with it); here the scratch directories
        // are the test's own.
        .replace("user = \"tlsgate\"", "");
    for dir in ["log", "run"] {
        std::fs::create_dir_all(scratch.path(dir)).expect("mkdir");
    }
    assert!(
        output(tlsgate().args(["ca", "init", "--dir"]).arg(scratch.path("etc/ca")))
            .status
            .success()
    );
    let config = scratch.path("tlsgate.toml");
    std::fs::write(&config, relocated).expect("write");
    let result = output(tlsgate().arg("check").arg("--config").arg(&config));
    let stdout = text(&result.stdout);
    assert!(result.status.success(), "{}", text(&result.stderr));
    for expected in [
        "the CA with its key (matching)",
        "PCI device",
        "intercept: new TCP connections to ports [443]",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in: {stdout}");
    }
}

/// README's "Install on an appliance" shows the packaged configuration
/// without its comments: that block and `configs/tlsgate.toml` agree.
#[test]
fn the_readme_shows_the_packaged_config() {
    let settings = |toml: &str| -> Vec<String> {
        toml.lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty() && !line.trim_start().starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Install on an appliance\n")
        .nth(1)
        .expect("README has an \"Install on an appliance\" section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block in the section");
    let shipped = std::fs::read_to_string(repo().join("configs/tlsgate.toml")).expect("configs/tlsgate.toml");
    assert_eq!(settings(block), settings(&shipped));
}

/// `--log-format journald` speaks the journal's native protocol to
/// /run/systemd/journal/socket. In a private mount namespace whose /run is
/// a fresh tmpfs, a datagram socket stands in for journald: the warning
/// about an invalid `TLSGATE_LOG` reaches it with its priority and
/// identifier, and not standard error. Without that socket the same run
/// says so and logs as text on standard error.
#[test]
#[ignore = "needs root: a private mount namespace (unshare) standing in for journald"]
fn journald_logs_reach_the_journal_socket_or_fall_back_to_text() {
    const STAND_IN: &str = r#"
import os, socket, subprocess, sys
def run():
    return subprocess.run([sys.argv[1], "--log-format", "journald", "ca", "show", "--dir", "/nonexistent"],
                          env=dict(os.environ, TLSGATE_LOG="[[bad"), capture_output=True, text=True).stderr
print("FALLBACK", run().replace("\n", " | "))
os.makedirs("/run/systemd/journal")
journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journal.bind("/run/systemd/journal/socket")
journal.settimeout(10)
print("STDERR", run().replace("\n", " | "))
def fields(datagram):  # the native protocol: KEY=value, or KEY, a u64 length and the value
    found, at = {}, 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        if b"=" in datagram[at:end]:
            key, value = datagram[at:end].split(b"=", 1)
            at = end + 1
        else:
            key, size = datagram[at:end], int.from_bytes(datagram[end + 1:end + 9], "little")
            value, at = datagram[end + 9:end + 9 + size], end + 10 + size
        found[key.decode()] = value.decode()
    return found
for _ in range(4):
    entry = fields(journal.recv(1 << 16))
    if "MESSAGE" in entry:
        print("JOURNAL", " | ".join(f"{key}={value}" for key, value in entry.items()))
        break
"#;
    let result = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs /run && exec python3 -c "$0" "$1""#)
        .arg(STAND_IN)
        .arg(env!("CARGO_BIN_EXE_tlsgate"))
        .output()
        .expect("unshare");
    let stdout = text(&result.stdout);
    assert!(result.status.success(), "{stdout}{}", text(&result.stderr));
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} line in: {stdout}"))
            .to_owned()
    };
    let fallback = line("FALLBACK ");
    assert!(
        fallback.contains("cannot open the journal's socket") && fallback.contains("not a valid log filter"),
        "{fallback}"
    );
    let stderr = line("STDERR ");
    assert!(!stderr.contains("not a valid log filter"), "{stderr}");
    let journal = line("JOURNAL ");
    for field in [
        "PRIORITY=4",
        "SYSLOG_IDENTIFIER=tlsgate",
        "TLSGATE_LOG=\"[[bad\" is not a valid log filter",
    ] {
        assert!(journal.contains(field), "{field:?} in {journal}");
    }
}
