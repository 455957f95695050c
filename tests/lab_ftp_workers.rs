//! FTP interception on two workers in the namespace lab (root, `#[ignore]`):
//! tlsgate on af_packet with `qpairs=2` (the kernel's fanout hash spreads
//! the connections over the workers) intercepts vsftpd's AUTH TLS control
//! connections (tests/lab/starttls-peers.sh) and their passive data
//! connections, whose SYNs the hash gives to either worker: one that lands
//! on the worker not holding its control connection is handed to it.
//! curl, trusting only the appliance CA, downloads and uploads byte-exact.
//! Run only through the lab lock:
//! `flock /tmp/tlsgate-lab.lock cargo test --test lab_ftp_workers -- --ignored --exact NAME`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use common::lab::{
    appliance_ca, assert_both_workers_opened_sessions, await_records, lab_config, with_two_workers, Appliance, Lab,
    CLI, SRV_V4,
};
use common::starttls::{curl_ftp_download, curl_ftp_upload, StarttlsPeers};
use common::Scratch;

/// Transfers at once, and rounds of them: half downloads, half uploads,
/// EPSV and PASV alternating. Several control connections to one vsftpd at
/// once, each on either worker, with their data connections overlapping:
/// each data connection's upstream handshake must resume its own control
/// connection's session (`require_ssl_reuse`), which it finds in that
/// control connection's own session store whatever the others take.
const PARALLEL: usize = 6;
const ROUNDS: usize = 5;

/// [`PARALLEL`] × [`ROUNDS`] transfers through two workers: all
/// byte-exact, every data connection intercepted as TLS resuming its
/// control connection's session upstream, and some data SYNs handed to the
/// other worker (`ftp_data_handed_over`).
#[test]
#[ignore = "needs root and the namespace lab"]
fn two_workers_intercept_30_ftp_transfers_6_at_a_time_byte_exact_each_resuming_its_control_connections_session() {
    let lab = Lab::up();
    let scratch = Scratch::new("ftp-workers");
    let peers = StarttlsPeers::start(scratch.path("peers"));
    let ca_dir = appliance_ca(&scratch);
    let mut config = lab_config("configs/lab.toml");
    config.push_str(&peers.tls_and_log_config(&ca_dir, &scratch));
    config.push_str("\n[[starttls]]\nprotocol = \"ftp\"\n");
    let path = scratch.path("ftp-workers.toml");
    std::fs::write(&path, with_two_workers(&config)).expect("write config");
    let appliance = Appliance::start(&lab, &scratch, &path);
    let ca = ca_dir.join("ca.pem");
    let upload: Vec<u8> = (0..200_000u32).map(|at| (at * 7 % 251) as u8).collect();
    let source = scratch.path("upload.bin");
    std::fs::write(&source, &upload).expect("upload file");

    for round in 0..ROUNDS {
        std::thread::scope(|scope| {
            let transfers: Vec<_> = (0..PARALLEL)
                .map(|slot| {
                    let (lab, ca, source, scratch) = (&lab, &ca, &source, &scratch);
                    scope.spawn(move || {
                        let name = format!("r{round}-s{slot}");
                        let options: &[&str] = if slot % 4 < 2 { &[] } else { &["--disable-epsv"] };
                        if slot % 2 == 0 {
                            let saved = scratch.path(&format!("{name}.bin"));
                            curl_ftp_download(lab, CLI, SRV_V4, ca, options, &saved)
                                .expect_ok(&format!("{name} download"));
                            (name, Some(saved))
                        } else {
                            curl_ftp_upload(lab, CLI, SRV_V4, ca, options, source, &name)
                                .expect_ok(&format!("{name} upload"));
                            (name, None)
                        }
                    })
                })
                .collect();
            for transfer in transfers {
                match transfer.join().expect("transfer thread") {
                    (name, Some(saved)) => assert!(
                        std::fs::read(&saved).expect("download") == peers.ftp_file(),
                        "{name}: downloaded byte-exact"
                    ),
                    (name, None) => assert!(peers.ftp_uploaded(&name) == upload, "{name}: uploaded byte-exact"),
                }
            }
        });
    }

    let transfers = (PARALLEL * ROUNDS) as u64;
    let records = await_records(&scratch, 2 * transfers as usize);
    let data: Vec<_> = records
        .iter()
        .filter(|record| record["starttls"] == "ftp-data")
        .collect();
    assert_eq!(data.len() as u64, transfers, "{records:?}");
    for record in data {
        assert_eq!(record["event_type"], "tls_intercept", "{record}");
        assert_eq!(record["upstream_verified"], true, "{record}");
        assert_eq!(record["server_resumed"], true, "{record}");
    }
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "tlsgate exited with {status}:\n{printed}");
    let tcp = &report["tcp"];
    assert_eq!(tcp["starttls_upgraded"], transfers, "{report}");
    assert_eq!(tcp["ftp_data_tls"], transfers, "{report}");
    assert_eq!(tcp["ftp_data_failed"], 0, "{report}");
    let handed_over = tcp["ftp_data_handed_over"].as_u64().expect("ftp_data_handed_over");
    assert!(
        handed_over > 0,
        "some data SYNs reached the other worker and were handed over: {report}"
    );
    let opened = assert_both_workers_opened_sessions(&report, "both workers held control connections");
    println!("{handed_over} of {transfers} data SYNs handed over; sessions opened by worker: {opened:?}");
}
