//! The EAL set-up shared by the tests against real DPDK.
#![allow(clippy::expect_used)]

use std::sync::Arc;

use dpdk::Eal;

/// Initialises the EAL the way these tests need it: 4 KiB pages
/// (`--no-huge`), 256 MB, no shared config, no PCI, lcore 0 only, quiet,
/// with the virtual devices `vdevs` (each passed as `--vdev`). The EAL can be
/// initialised once per process.
pub fn init_test_eal(vdevs: &[&str]) -> Arc<Eal> {
    let mut args = vec![
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        "--no-pci",
        "-l",
        "0",
        "--log-level=lib.eal:error",
    ];
    for vdev in vdevs {
        args.extend(["--vdev", vdev]);
    }
    Eal::init(&args).expect("EAL init")
}
