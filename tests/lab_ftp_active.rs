//! FTP active mode through tlsgate in the namespace lab (root, `#[ignore]`):
//! tests/lab/ftp-active.py (Python's ftplib: curl 7.88 cannot do active
//! FTPS, curl issue 10666) in the client namespace announces its data port
//! (EPRT, or PORT) on an FTP control connection
//! upgraded with AUTH TLS to vsftpd in the server namespace
//! (tests/lab/starttls-peers.sh, `connect_from_port_20=YES`), which then
//! connects to the client from port 20. tlsgate intercepts the control connection
//! (`[[starttls]] protocol = "ftp"`) and the data connection the server
//! opens: it answers vsftpd's SYN as the client and connects to the client
//! as the server; the client, which accepted the connection, is still the TLS client and
//! sees a forged certificate (it trusts only the appliance CA), and vsftpd
//! sees the data connection's TLS resume the control connection's
//! (`require_ssl_reuse=YES`). With the inspection pair, the recording box
//! of scripts/inspect-box.sh sees the file in plaintext. The direct
//! baseline moves the same files through tlsgate bridging. Run only through
//! the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_ftp_active -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::lab::{appliance_ca, await_records, box_dir, inspect_box, lab_config, Appliance, Lab, CLI, SRV_V4, SRV_V6};
use common::starttls::{assert_ftp_counters, Session, StarttlsPeers, SERVER_NAME};
use common::{output, repo, Scratch};

const CLI_V4: &str = "198.18.0.1";
const CLI_V6: &str = "2001:2::1";

/// tests/lab/ftp-active.py in the client namespace: `action` (`download`
/// or `upload`) of `local` as `remote` at `server`, announced with
/// `announce` (`eprt` or `port`), trusting only `ca`.
fn ftp_active(
    lab: &Lab,
    server: &str,
    ca: &Path,
    (announce, action): (&str, &str),
    local: &Path,
    remote: &str,
) -> Session {
    Session::of(output(
        lab.cmd(CLI, "/usr/bin/python3")
            .arg(repo().join("tests/lab/ftp-active.py"))
            .args([server])
            .arg(ca)
            .args([announce, action])
            .arg(local)
            .arg(remote),
    ))
}

/// The lab, vsftpd (among the other peers) and tlsgate intercepting FTP
/// (or bridging it, for the direct baseline).
struct FtpLab {
    appliance: Appliance,
    peers: StarttlsPeers,
    scratch: Scratch,
    /// The only CA the client trusts: the appliance's (the peers' for the direct
    /// baseline).
    ca: PathBuf,
    lab: Lab,
}

impl FtpLab {
    /// tlsgate on the lab configuration `base` with `[tls]` trusting the
    /// peers' CA upstream, the connection log and `[[starttls]] protocol =
    /// "ftp"` (port 21, intercepted) unless `bridged` (the direct
    /// baseline: nothing intercepted, the client trusts the peers' CA).
    fn on(base: &str, name: &str, bridged: bool) -> FtpLab {
        let lab = Lab::up();
        let scratch = Scratch::new(name);
        let peers = StarttlsPeers::start(scratch.path("peers"));
        let ca_dir = appliance_ca(&scratch);
        let mut config = lab_config(base).replace("syn_timeout_ms = 8000", "syn_timeout_ms = 500");
        config.push_str(&format!(
            "\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{trust}\"\n\n\
             [log]\nconnections = \"{logs}/connections.jsonl\"\n",
            ca = ca_dir.display(),
            trust = peers.ca().display(),
            logs = scratch.0.display()
        ));
        if !bridged {
            config.push_str("\n[[starttls]]\nprotocol = \"ftp\"\n");
        }
        let path = scratch.path("ftp.toml");
        std::fs::write(&path, config).expect("write config");
        let appliance = Appliance::start(&lab, &scratch, &path);
        let ca = if bridged { peers.ca() } else { ca_dir.join("ca.pem") };
        FtpLab {
            appliance,
            peers,
            scratch,
            ca,
            lab,
        }
    }

    /// The connection log's records once it holds `count`, each an
    /// intercepted connection to a verified vsftpd; the data connections'
    /// (`starttls = "ftp-data"`), which must number `data`.
    fn data_records(&self, count: usize, data: usize) -> Vec<serde_json::Value> {
        let records = await_records(&self.scratch, count);
        assert_eq!(records.len(), count, "{records:?}");
        for record in &records {
            assert_eq!(record["event_type"], "tls_intercept", "{record}");
            assert_eq!(record["upstream_verified"], true, "{record}");
        }
        let data_records: Vec<_> = records
            .into_iter()
            .filter(|record| record["starttls"] == "ftp-data")
            .collect();
        assert_eq!(data_records.len(), data, "{data_records:?}");
        data_records
    }

    /// Stops tlsgate; its report.
    fn stop(self) -> serde_json::Value {
        let (status, report, printed) = self.appliance.stop();
        assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
        report
    }
}

/// The client downloads and uploads byte-exact in active mode, EPRT and PORT
/// over IPv4 and EPRT over IPv6, and vsftpd got each command.
fn move_files_in_active_mode(up: &FtpLab) {
    let upload: Vec<u8> = (0..200_000u32).map(|at| (at % 251) as u8).collect();
    // EPRT over both families, and PORT (IPv4 only: it carries an IPv4 address).
    let cases = [
        (SRV_V4, CLI_V4, "eprt", "eprt4", "EPRT"),
        (SRV_V4, CLI_V4, "port", "port4", "PORT"),
        (SRV_V6, CLI_V6, "eprt", "eprt6", "EPRT"),
    ];
    for (server, client, announce, name, command) in cases {
        let saved = up.scratch.path(&format!("{name}.bin"));
        ftp_active(&up.lab, server, &up.ca, (announce, "download"), &saved, "file.bin")
            .expect_ok(&format!("{name} download"));
        assert!(
            std::fs::read(&saved).expect("download") == up.peers.ftp_file(),
            "{name}: downloaded byte-exact"
        );
        let file = up.scratch.path(&format!("{name}-upload.bin"));
        std::fs::write(&file, &upload).expect("upload file");
        ftp_active(
            &up.lab,
            server,
            &up.ca,
            (announce, "upload"),
            &file,
            &format!("upload/{name}"),
        )
        .expect_ok(&format!("{name} upload"));
        assert!(up.peers.ftp_uploaded(name) == upload, "{name}: uploaded byte-exact");
        // Active, as asked: vsftpd got the command inside TLS.
        up.peers
            .await_logged("vsftpd.log", &format!("FTP command: Client \"{client}\", \"{command} "));
    }
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn direct_baseline_moves_files_byte_exact_in_active_mode_through_a_bridging_tlsgate() {
    let up = FtpLab::on("configs/lab.toml", "ftp-active-direct", true);
    move_files_in_active_mode(&up);
    let report = up.stop();
    assert_eq!(report["tcp"]["tls_intercepted"], 0, "{report}");
    assert_eq!(report["tcp"]["ftp_data_active"], 0, "{report}");
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn ftplib_downloads_and_uploads_byte_exact_over_intercepted_ftp_in_active_mode_eprt_and_port_over_ipv4_eprt_over_ipv6()
{
    let up = FtpLab::on("configs/lab.toml", "ftp-active", false);
    move_files_in_active_mode(&up);
    // Six control connections, six data connections, each opened by vsftpd
    // from port 20, logged client → server.
    for record in up.data_records(12, 6) {
        assert_eq!(record["sni"], SERVER_NAME, "{record}");
        assert_eq!(record["dest_port"], 20, "{record}");
        assert!(
            [CLI_V4, CLI_V6].contains(&record["src_ip"].as_str().unwrap()),
            "{record}"
        );
        assert_eq!(
            record["server_resumed"], true,
            "resumed the control session upstream: {record}"
        );
        assert_eq!(record["ended"], "closed", "{record}");
    }
    assert_ftp_counters(&up.stop(), ("ftp_data_active", 6), 6);
}

#[test]
#[ignore = "needs root and the namespace lab"]
fn the_inspection_box_sees_a_file_moved_in_active_mode_in_plaintext() {
    let up = FtpLab::on("configs/lab-inspect.toml", "ftp-active-box", false);
    let dir = box_dir(&up.scratch);
    inspect_box(&["bridge", &dir]);
    let saved = up.scratch.path("inspected.bin");
    ftp_active(&up.lab, SRV_V4, &up.ca, ("eprt", "download"), &saved, "file.bin")
        .expect_ok("active download through tlsgate and the box");
    assert!(std::fs::read(&saved).expect("download") == up.peers.ftp_file());
    let file = up.peers.ftp_file();
    // tcpflow writes what it saw on its own schedule.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = std::fs::read_dir(up.scratch.path("box/flows"))
            .expect("the box's flows")
            .flatten()
            .any(|entry| std::fs::read(entry.path()).is_ok_and(|bytes| bytes == file));
        if seen || Instant::now() >= deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(seen, "the box saw the downloaded file in plaintext");
    let data = up.data_records(2, 1);
    assert_eq!(data[0]["inspection"], "inspected", "{:?}", data[0]);
    let report = up.stop();
    assert_eq!(report["tcp"]["ftp_data_active"], 1, "{report}");
    inspect_box(&["stop", &dir]);
}
