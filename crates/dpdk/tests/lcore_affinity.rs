//! A thread pinned to an lcore runs on that lcore's CPUs as `--lcores`
//! mapped them (lcore 1 on CPU 0 here), which is what the workers' log line
//! reports. Its own process: the EAL can be initialised once.

use dpdk::{current_thread_cpus, Eal};

#[test]
fn a_thread_pinned_to_an_lcore_runs_on_the_cpus_lcores_mapped_it_to() {
    let eal = Eal::init(&[
        "--no-huge",
        "-m",
        "64",
        "--no-shconf",
        "--no-pci",
        "--lcores",
        "0@0,1@0",
        "--log-level=lib.eal:error",
    ])
    .expect("EAL init");
    assert_eq!(eal.worker_lcores(), [1]);
    let cpus = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                eal.pin_current_thread(1).expect("pin to lcore 1");
                current_thread_cpus()
            })
            .join()
            .expect("thread")
    });
    // lcore 1 is mapped to CPU 0 (rte_lcore_to_cpu_id would say otherwise).
    assert_eq!(cpus.as_deref(), Some("0"));
}
