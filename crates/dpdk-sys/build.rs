//! Builds the DPDK bindings: finds the system DPDK with pkg-config, compiles
//! the C shim for DPDK's `static inline` functions, and runs bindgen.

use std::env;
use std::path::PathBuf;

fn main() {
    let shim_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dpdk/shim");
    println!("cargo:rerun-if-changed={}", shim_dir.display());

    let dpdk = match pkg_config::Config::new().atleast_version("22.11").probe("libdpdk") {
        Ok(lib) => lib,
        Err(err) => {
            eprintln!(
                "dpdk-sys: the system DPDK (pkg-config libdpdk >= 22.11) was not found: {err}\n\
                 Install it with `scripts/setup.sh` (Debian: dpdk libdpdk-dev libclang-dev)."
            );
            std::process::exit(1);
        }
    };

    // pkg-config's cflags carry `-include rte_config.h -march=...`, which the
    // DPDK headers need for both the C compiler and clang (bindgen).
    let cflags = pkg_config_cflags();

    let mut build = cc::Build::new();
    build.file(shim_dir.join("tlsgate_shim.c")).include(&shim_dir);
    for path in &dpdk.include_paths {
        build.include(path);
    }
    for flag in &cflags {
        build.flag(flag);
    }
    build.warnings(true).compile("tlsgate_shim");

    let mut clang_args: Vec<String> = cflags;
    clang_args.push(format!("-I{}", shim_dir.display()));
    for path in &dpdk.include_paths {
        clang_args.push(format!("-I{}", path.display()));
    }

    let bindings = bindgen::Builder::default()
        .header(shim_dir.join("tlsgate_shim.h").display().to_string())
        .clang_args(&clang_args)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_function("tg_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_function("rte_get_next_lcore")
        .allowlist_function("rte_lcore_to_cpu_id")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_free")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_function("rte_mempool_in_use_count")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_info_get")
        .allowlist_function("rte_eth_dev_configure")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_link_get_nowait")
        .allowlist_function("rte_eth_stats_get")
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_eth_dev_set_mtu")
        .allowlist_function("rte_eth_dev_adjust_nb_rx_tx_desc")
        .allowlist_function("rte_ring_create")
        .allowlist_function("rte_ring_free")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("RTE_MAX_LCORE")
        .allowlist_var("RTE_ETH_LINK_UP")
        .allowlist_var("RTE_ETH_MQ_RX_RSS")
        .allowlist_var("RTE_ETH_RSS_.*")
        .allowlist_var("RING_F_SP_ENQ")
        .allowlist_var("RING_F_SC_DEQ")
        .allowlist_var("RING_F_EXACT_SZ")
        // The mbuf, mempool and ring layouts are read through the shim only: keep
        // them opaque so their packed/aligned unions never reach Rust.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .opaque_type("rte_ring")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|err| {
            eprintln!("dpdk-sys: bindgen failed on the DPDK headers: {err}");
            std::process::exit(1);
        });

    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(err) = bindings.write_to_file(out.join("bindings.rs")) {
        eprintln!("dpdk-sys: cannot write bindings: {err}");
        std::process::exit(1);
    }
}

fn pkg_config_cflags() -> Vec<String> {
    std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
