//! `EthDevConfig::min_rx_queues` against real DPDK (no hugepages): a
//! `net_ring` device (each queue loops what it transmits back to the
//! receive queue of the same index) opened with one queue pair and two
//! receive queues, as the load generator opens its ports facing tlsgate
//! with two workers. Queue 1 receives but has no transmit side: sending on
//! it must not reach the driver. The EAL can be initialised once per
//! process, so this is one test.
#![allow(clippy::expect_used)]

mod common;

use common::init_test_eal;
use dpdk::{EthDev, EthDevConfig, Mempool};
use port::{PacketBuf, Port};

#[test]
fn receive_only_queues_receive_and_never_transmit() {
    let eal = init_test_eal(&["net_ring0"]);
    let pool = Mempool::new(&eal, "receive_only_pool", 1023, -1).expect("pool");
    let config = EthDevConfig {
        min_rx_queues: 2,
        rx_descriptors: 256,
        tx_descriptors: 256,
        ..EthDevConfig::default()
    };
    let dev = EthDev::open(&eal, "net_ring0", &pool, config).expect("open net_ring0");
    assert_eq!(dev.rx_queues(), 2);
    let mut pair = dev.queue(0).expect("queue 0");
    let mut receive_only = dev.queue(1).expect("queue 1");
    assert!(dev.queue(2).is_err(), "queue 2 does not exist");
    assert!(pair.receives() && receive_only.receives());
    let in_use_at_start = pool.in_use();

    let frame = |queue: &mut dpdk::EthQueue, byte: u8| {
        let mut mbuf = queue.alloc().expect("mbuf");
        mbuf.grow_back(60).expect("room").fill(byte);
        vec![mbuf]
    };
    // Queue 0 transmits, and its frame comes back on receive queue 0.
    let mut sent = frame(&mut pair, 1);
    assert_eq!(pair.tx_burst(&mut sent), 1);
    let mut back = Vec::new();
    assert_eq!(pair.rx_burst(&mut back, 8), 1);
    assert_eq!(back[0].data(), [1; 60].as_slice());
    back.clear();
    // Queue 1 has no transmit queue: nothing is sent, the frame stays ours
    // (and is freed with the vector), and nothing arrives anywhere.
    let mut unsent = frame(&mut receive_only, 2);
    assert_eq!(receive_only.tx_burst(&mut unsent), 0);
    assert_eq!(unsent.len(), 1);
    drop(unsent);
    assert_eq!(receive_only.rx_burst(&mut back, 8), 0);
    assert_eq!(pair.rx_burst(&mut back, 8), 0);
    assert_eq!(pool.in_use(), in_use_at_start, "no mbuf leaked");
}
