//! Runs the safe wrapper against real DPDK (no hugepages): a `net_ring`
//! device loops transmitted mbufs back to its receive queue, which shows
//! burst I/O, ownership on partial transmit, and that no mbuf leaks.
//! The EAL can be initialised once per process, so this is one test.

mod common;

use common::init_test_eal;
use dpdk::{DpdkError, Eal, EthDev, EthDevConfig, Mempool};
use port::{PacketBuf, Port};

fn frame(index: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| index.wrapping_add(i as u8)).collect()
}

#[test]
fn ring_device_round_trip_partial_tx_and_no_leaks() {
    let eal = init_test_eal(&["net_ring0"]);
    assert!(matches!(
        Eal::init(&["--no-huge"]),
        Err(DpdkError::EalAlreadyInitialized)
    ));

    let pool = Mempool::new(&eal, "test_pool", 4095, -1).expect("pool");
    assert!(matches!(
        EthDev::open(&eal, "net_nonexistent9", &pool, EthDevConfig::default()),
        Err(DpdkError::PortNotFound(_))
    ));
    let config = EthDevConfig {
        rx_descriptors: 512,
        tx_descriptors: 512,
        ..EthDevConfig::default()
    };
    let dev = EthDev::open(&eal, "net_ring0", &pool, config).expect("open net_ring0");
    let mut queue = dev.queue(0).expect("queue 0");
    assert!(dev.queue(0).is_err(), "a queue is handed out only once");
    assert!(dev.queue(1).is_err(), "queue 1 does not exist");
    let in_use_at_start = pool.in_use();

    // Round trip: what is sent comes back byte for byte, in order.
    let mut out = Vec::new();
    for index in 0..32u8 {
        let mut mbuf = queue.alloc().expect("mbuf");
        let len = 60 + usize::from(index);
        mbuf.grow_back(len).expect("room").copy_from_slice(&frame(index, len));
        out.push(mbuf);
    }
    assert_eq!(queue.tx_burst(&mut out), 32);
    assert!(out.is_empty());
    let mut back = Vec::new();
    assert_eq!(queue.rx_burst(&mut back, 64), 32);
    for (index, mbuf) in back.iter().enumerate() {
        let len = 60 + index;
        assert_eq!(mbuf.data(), frame(index as u8, len).as_slice());
    }
    drop(back);
    assert_eq!(pool.in_use(), in_use_at_start, "received mbufs returned to the pool");

    // A full ring: the driver takes what fits, the unsent tail stays ours.
    let mut many: Vec<_> = (0..2000u32)
        .map(|i| {
            let mut mbuf = queue.alloc().expect("mbuf");
            mbuf.grow_back(64).expect("room").fill((i % 251) as u8);
            mbuf
        })
        .collect();
    let total = many.len();
    let mut accepted = 0;
    while queue.tx_burst(&mut many) > 0 {
        accepted = total - many.len();
    }
    assert!(accepted > 0 && accepted < total, "ring accepted {accepted} of {total}");
    assert_eq!(many.len(), total - accepted);
    // The tail is intact and in order.
    for (offset, mbuf) in many.iter().enumerate() {
        assert_eq!(mbuf.data()[0], ((accepted + offset) % 251) as u8);
    }
    drop(many);
    let mut drained = Vec::new();
    while queue.rx_burst(&mut drained, 256) > 0 {}
    assert_eq!(drained.len(), accepted);
    for (index, mbuf) in drained.iter().enumerate() {
        assert_eq!(mbuf.data(), [(index % 251) as u8; 64].as_slice());
    }
    drop(drained);
    assert_eq!(pool.in_use(), in_use_at_start, "no mbuf leaked or double-freed");

    // Editing a frame in place: prepend/remove_front/truncate.
    let mut mbuf = queue.alloc().expect("mbuf");
    mbuf.grow_back(10).expect("room").copy_from_slice(b"0123456789");
    mbuf.grow_front(4).expect("headroom").copy_from_slice(b"head");
    assert_eq!(mbuf.data(), b"head0123456789");
    assert!(mbuf.trim_front(4));
    assert!(mbuf.trim_to(5));
    assert_eq!(mbuf.data(), b"01234");
    assert!(!mbuf.trim_to(6), "cannot grow by truncating");
    assert!(mbuf.grow_back(100_000).is_none(), "no room for 100 kB");
    drop(mbuf);

    let counters = queue.counters();
    assert!(counters.tx_packets >= 32 + accepted as u64);
    assert_eq!(queue.mac().len(), 6);
    drop(queue);
    drop(dev);
    assert_eq!(pool.in_use(), 0);
}
