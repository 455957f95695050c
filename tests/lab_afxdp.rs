//! tlsgate on DPDK's af_xdp driver in the namespace lab: an XDP program on
//! each gw veth hands its frames to an AF_XDP socket whose UMEM is tlsgate's
//! mbuf pool. The splice under enough load to cycle every mbuf of the pool
//! many times (100 parallel byte-exact transfers, 334 MB), which stalled for
//! good when part of the pool lay outside the UMEM the driver registers: the
//! kernel dropped those mbufs from the fill ring and refused them on
//! transmit, the pool drained and the ports stopped receiving. A kernel
//! without AF_XDP sockets fails the test, saying so (like every missing lab
//! requirement, it never passes). Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::lab::{
    assert_bulk_transfers_spliced, bulk_transfers, lab_config, on_lab_driver, with_splice, Appliance, Lab, LabDriver,
    GW,
};
use common::{output, text, Scratch};

/// configs/lab.toml with af_xdp on both gw veths (whatever
/// `TLSGATE_LAB_DRIVER` says), splicing TCP port 5001.
fn af_xdp_splice_config(scratch: &Scratch) -> PathBuf {
    let config = on_lab_driver(&lab_config("configs/lab.toml"), LabDriver::AfXdp);
    let path = scratch.path("af_xdp.toml");
    std::fs::write(&path, with_splice(&config, &[5001])).expect("write config");
    path
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn af_xdp_splices_100_parallel_transfers_byte_exact_without_draining_the_pool() {
    let lab = Lab::up();
    // AF_XDP is address family 44 (CONFIG_XDP_SOCKETS).
    let probe = output(
        lab.cmd(GW, "python3")
            .args(["-c", "import socket; socket.socket(44, socket.SOCK_RAW, 0)"]),
    );
    assert!(
        probe.status.success(),
        "this kernel cannot open AF_XDP sockets, so af_xdp cannot run here: {}",
        text(&probe.stderr)
    );
    let scratch = Scratch::new("af-xdp-splice");
    let appliance = Appliance::start(&lab, &scratch, &af_xdp_splice_config(&scratch));
    // Each port receives about 70,000 frames per run, many times the
    // pool's 8191 mbufs.
    bulk_transfers(&lab, "over af_xdp");
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{printed}");
    assert_bulk_transfers_spliced(&report);
    let tcp = &report["tcp"];
    assert!(tcp["bytes_server_to_client"].as_u64().unwrap() > 100 << 20, "{report}");
    assert!(tcp["bytes_client_to_server"].as_u64().unwrap() > 100 << 20, "{report}");
    for port in report["ports"].as_array().expect("ports") {
        assert!(port["device"].as_str().unwrap().starts_with("net_af_xdp"), "{report}");
        assert!(port["rx"].as_u64().unwrap() > 80_000, "{report}");
        assert_eq!(port["malformed"], 0, "{report}");
    }
}
