//! The single-producer single-consumer mbuf ring against real DPDK (no
//! hugepages): mbufs move in and out in order and keep their bytes, a full
//! ring leaves the rest with the caller, frames cross threads, and dropping
//! a ring that still holds mbufs frees them (the pool is full again). Also
//! how a device without RSS or kernel fanout is opened for several workers
//! (software distribution: one receive queue, a transmit queue each), and
//! refused when it has too few transmit queues. The EAL can be initialised
//! once per process, so this is one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::init_test_eal;
use dpdk::{DpdkError, EthDev, EthDevConfig, Mbuf, Mempool, Ring, RxSteering};
use port::{PacketBuf, Port};

const POOL_SIZE: u32 = 4095;

fn numbered(pool: &Mempool, number: u32) -> Mbuf {
    let mut mbuf = pool.alloc().expect("mbuf");
    let len = 60 + (number % 64) as usize;
    let bytes = mbuf.grow_back(len).expect("room");
    bytes.fill((number % 251) as u8);
    bytes[..4].copy_from_slice(&number.to_be_bytes());
    mbuf
}

fn number_of(mbuf: &Mbuf) -> u32 {
    let data = mbuf.data();
    let number = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
    assert_eq!(
        data.len(),
        60 + (number % 64) as usize,
        "frame {number} keeps its length"
    );
    assert!(
        data[4..].iter().all(|byte| *byte == (number % 251) as u8),
        "frame {number} keeps its bytes"
    );
    number
}

#[test]
fn ring_hands_mbufs_over_and_frees_what_it_holds() {
    let scratch = std::env::temp_dir().join(format!("tlsgate-ring-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let pcap_out = scratch.join("out.pcap");
    let eal = init_test_eal(&["net_ring0", &format!("net_pcap0,tx_pcap={}", pcap_out.display())]);
    let pool = Mempool::new(&eal, "ring_test_pool", POOL_SIZE, -1).expect("pool");
    assert_eq!(pool.available(), POOL_SIZE);

    // In order, bytes intact; a full ring leaves the tail with the caller.
    let (mut producer, mut consumer) = Ring::spsc(&eal, "tg_test_ring", 64, -1).expect("ring");
    assert_eq!(producer.ring().capacity(), 64);
    assert_eq!(consumer.ring().name(), "tg_test_ring");
    assert!(consumer.ring().is_empty());
    let mut frames: Vec<Mbuf> = (0..100).map(|number| numbered(&pool, number)).collect();
    assert_eq!(producer.enqueue_burst(&mut frames), 64);
    assert_eq!(frames.len(), 36, "what did not fit stays with the caller");
    assert_eq!(
        frames.iter().map(number_of).collect::<Vec<_>>(),
        (64..100).collect::<Vec<_>>()
    );
    assert_eq!(producer.enqueue_burst(&mut frames), 0, "the ring is full");
    assert_eq!(consumer.ring().len(), 64);
    assert_eq!(pool.in_use(), 100);
    let mut out = Vec::new();
    assert_eq!(consumer.dequeue_burst(&mut out, 10), 10);
    assert_eq!(
        out.iter().map(number_of).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(producer.enqueue_burst(&mut frames), 10, "room again for 10");
    assert_eq!(frames.len(), 26);
    drop(out);
    drop(frames);
    assert_eq!(pool.in_use(), 64, "only the ring holds mbufs now");
    let mut out = Vec::new();
    assert_eq!(consumer.dequeue_burst(&mut out, 5), 5);
    assert_eq!(
        out.iter().map(number_of).collect::<Vec<_>>(),
        (10..15).collect::<Vec<_>>()
    );
    drop(out);
    assert_eq!(consumer.ring().len(), 59);
    let mut empty: Vec<Mbuf> = Vec::new();
    assert_eq!(producer.enqueue_burst(&mut empty), 0);

    // Names are process-wide.
    assert!(matches!(
        Ring::spsc(&eal, "tg_test_ring", 8, -1),
        Err(DpdkError::RingCreate { .. })
    ));
    let long = "x".repeat(40);
    let err = Ring::spsc(&eal, &long, 8, -1).expect_err("name too long");
    assert!(err.to_string().contains(&long), "{err}");
    assert!(matches!(
        Ring::spsc(&eal, "tg_zero", 0, -1),
        Err(DpdkError::RingCreate { .. })
    ));

    // Dropping a ring that still holds mbufs frees them, whichever end goes
    // last.
    drop(producer);
    assert_eq!(pool.in_use(), 59, "the consumer still holds the ring");
    drop(consumer);
    assert_eq!(pool.in_use(), 0, "the ring's mbufs went back to the pool");
    assert_eq!(pool.available(), POOL_SIZE);
    let (producer, consumer) = Ring::spsc(&eal, "tg_test_ring", 16, -1).expect("the name is free again");
    drop(consumer);
    let mut producer = producer;
    let mut frames: Vec<Mbuf> = (0..20).map(|number| numbered(&pool, number)).collect();
    assert_eq!(producer.enqueue_burst(&mut frames), 16);
    drop(frames);
    drop(producer);
    assert_eq!(pool.in_use(), 0, "dropped with the producer last");

    // Across threads: one producer, one consumer, a small ring.
    const FRAMES: u32 = 50_000;
    let (mut producer, mut consumer) = Ring::spsc(&eal, "tg_test_threads", 32, -1).expect("ring");
    std::thread::scope(|scope| {
        let pool = &pool;
        scope.spawn(move || {
            let mut next = 0;
            let mut pending = Vec::new();
            while next < FRAMES || !pending.is_empty() {
                while pending.len() < 8 && next < FRAMES {
                    pending.push(numbered(pool, next));
                    next += 1;
                }
                if producer.enqueue_burst(&mut pending) == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        let mut out = Vec::new();
        while expected < FRAMES {
            if consumer.dequeue_burst(&mut out, 16) == 0 {
                std::thread::yield_now();
            }
            for mbuf in out.drain(..) {
                assert_eq!(number_of(&mbuf), expected, "in order across threads");
                expected += 1;
            }
        }
    });
    assert!(consumer.ring().is_empty());
    drop(consumer);
    assert_eq!(pool.in_use(), 0);

    // A device with neither RSS nor kernel fanout, for two workers: one
    // receive queue (queue 0), a transmit queue each.
    let info = EthDev::info(&eal, "net_ring0").expect("info");
    assert_eq!(info.driver, "net_ring");
    assert_eq!(info.rss_offloads, 0);
    assert_eq!(info.steering(2), RxSteering::Software);
    let config = EthDevConfig {
        queues: 2,
        rx_descriptors: 256,
        tx_descriptors: 256,
        ..EthDevConfig::default()
    };
    let dev = EthDev::open(&eal, "net_ring0", &pool, config).expect("open net_ring0 for two workers");
    assert_eq!(dev.steering(), RxSteering::Software);
    assert_eq!(dev.rx_queues(), 1);
    let mut first = dev.queue(0).expect("queue 0");
    let mut second = dev.queue(1).expect("queue 1");
    assert!(first.receives() && !second.receives());
    let mut got = Vec::new();
    assert_eq!(second.rx_burst(&mut got, 32), 0, "queue 1 only transmits");
    // net_ring loops queue 0's transmit ring back to its receive ring.
    let mut frames: Vec<Mbuf> = (0..8).map(|number| numbered(&pool, number)).collect();
    assert_eq!(first.tx_burst(&mut frames), 8);
    assert_eq!(first.rx_burst(&mut got, 32), 8);
    assert_eq!(
        got.iter().map(number_of).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    drop(got);
    drop((first, second, dev));
    assert_eq!(pool.in_use(), 0);

    // Too few transmit queues: refused, naming the device and why.
    let pcap = EthDev::info(&eal, "net_pcap0").expect("info");
    assert_eq!((pcap.driver.as_str(), pcap.max_tx_queues), ("net_pcap", 1));
    match EthDev::open(&eal, "net_pcap0", &pool, config) {
        Err(err @ DpdkError::NoFlowSteering { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("net_pcap0") && message.contains("net_pcap") && message.contains("offers only 1"),
                "{message}"
            );
        }
        other => panic!("expected NoFlowSteering, got {other:?}"),
    }
    drop(pool);
    let _ = std::fs::remove_dir_all(&scratch);
}
