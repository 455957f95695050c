//! Probes DPDK virtual devices: what each offers (driver, receive and
//! transmit queues, RSS hash types), how `tlsgate` would steer it for
//! several workers, and whether it opens that way for two workers
//! (`EthDev::open` with two queues). Each device is probed in a child
//! process of its own
//! (the EAL starts once per process, and a device that cannot be created
//! must not hide the others).
//!
//! ```sh
//! cargo run -p dpdk --example vdev_queues              # the default set
//! cargo run -p dpdk --example vdev_queues -- 'net_pcap0,tx_pcap=/tmp/a.pcap,tx_pcap=/tmp/b.pcap'
//! ```

use std::process::{Command, ExitCode};

use dpdk::{Eal, EthDev, EthDevConfig, Mempool, RxSteering};

/// Workers the steering is shown for.
const WORKERS: [u16; 2] = [2, 4];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, spec] = args.as_slice() {
        if flag == "--one" {
            return match probe(spec) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    println!("{spec}: {err}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let scratch = std::env::temp_dir().join(format!("tlsgate-vdev-probe-{}", std::process::id()));
    if let Err(err) = std::fs::create_dir_all(&scratch) {
        eprintln!("{}: {err}", scratch.display());
        return ExitCode::FAILURE;
    }
    let path = |name: &str| scratch.join(name).display().to_string();
    // An empty capture (the pcap header only) to receive from.
    let empty = path("empty.pcap");
    let header: [u8; 24] = [
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ];
    if let Err(err) = std::fs::write(&empty, header) {
        eprintln!("{empty}: {err}");
        return ExitCode::FAILURE;
    }
    let specs = if args.is_empty() {
        vec![
            format!("net_pcap0,rx_pcap={empty},tx_pcap={}", path("out0.pcap")),
            format!(
                "net_pcap0,rx_pcap={empty},tx_pcap={},tx_pcap={}",
                path("out0.pcap"),
                path("out1.pcap")
            ),
            format!("net_pcap0,tx_pcap={}", path("out0.pcap")),
            "net_ring0".to_owned(),
            "net_null0".to_owned(),
            format!(
                "net_memif0,role=server,socket={},socket-abstract=no",
                path("memif.sock")
            ),
            "net_tap0,iface=tgprobe0".to_owned(),
        ]
    } else {
        args
    };
    let Ok(program) = std::env::current_exe() else {
        eprintln!("cannot find this program's path");
        return ExitCode::FAILURE;
    };
    for spec in specs {
        match Command::new(&program).args(["--one", &spec]).output() {
            Ok(output) => {
                let stdout = String::from_utf8_lossy(&output.stdout);
                match stdout.lines().last() {
                    Some(line) => println!("{line}"),
                    None => println!("{spec}: no answer ({})", output.status),
                }
            }
            Err(err) => println!("{spec}: cannot run the probe: {err}"),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    ExitCode::SUCCESS
}

/// One line on the device `spec`.
fn probe(spec: &str) -> Result<String, dpdk::DpdkError> {
    let eal = Eal::init(&[
        "--no-huge",
        "-m",
        "64",
        "--no-shconf",
        "--no-pci",
        "-l",
        "0",
        "--log-level=*:error",
        "--vdev",
        spec,
    ])?;
    let name = spec.split(',').next().unwrap_or(spec);
    let info = EthDev::info(&eal, name)?;
    let steering = WORKERS
        .iter()
        .map(|&workers| {
            let steering = info.steering(workers);
            let verdict = match steering {
                RxSteering::Software if info.max_tx_queues < workers => "refused: too few tx queues",
                RxSteering::Software => "software distribution",
                RxSteering::KernelFanout => "kernel fanout",
                RxSteering::SymmetricRss { .. } => "symmetric RSS",
                RxSteering::Single => "one queue",
            };
            format!("{workers} workers: {verdict}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    let pool = Mempool::new(&eal, "probe_pool", 2047, -1)?;
    let config = EthDevConfig {
        queues: 2,
        rx_descriptors: 256,
        tx_descriptors: 256,
        ..EthDevConfig::default()
    };
    let opened = match EthDev::open(&eal, name, &pool, config) {
        Ok(dev) => format!("opened for 2 workers: {} receive queue(s)", dev.rx_queues()),
        Err(err) => format!("not opened for 2 workers: {err}"),
    };
    Ok(format!(
        "{spec}: driver {}, max rx {} / tx {} queues, RSS hash types {:#x}, reta {}, key {} B -> {steering}; {opened}",
        info.driver, info.max_rx_queues, info.max_tx_queues, info.rss_offloads, info.reta_size, info.hash_key_size
    ))
}
