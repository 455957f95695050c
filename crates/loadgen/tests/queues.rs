//! The generator's ports with several receive queues ([`PortPump`]), in
//! memory: between the generator and the appliance engine, each side has two
//! queues, and what the appliance transmits comes back on the queue of the
//! "worker" its connection hashes to, as tlsgate with two workers does over
//! memif (each worker transmits on its own queue). Every queue must be read,
//! and the generator must transmit on queue 0 only (the one queue tlsgate's
//! worker 0 reads), in buffers of that queue's pool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bench, Bench};
use loadgen::{Exchange, Hold, Plan, PortPump};
use netstack::Duration;
use port::{MemPort, MemPortControl};

const WORKERS: usize = 2;

fn plan(connections: u64) -> Plan {
    let mut plan = common::plan(connections, Hold::Close);
    plan.exchange = Some(Exchange {
        request_bytes: 200,
        response_bytes: 3_000,
    });
    plan
}

/// The worker (queue) a frame's connection belongs to: a hash of its IPv4
/// addresses and TCP ports, the same both ways; queue 0 for anything else.
fn worker_of(frame: &[u8]) -> usize {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return 0;
    }
    let ports = 14 + usize::from(frame[14] & 0x0f) * 4;
    let Some(ports) = frame.get(ports..ports + 4) else {
        return 0;
    };
    let sum: usize = frame[26..34].iter().chain(ports).map(|&byte| usize::from(byte)).sum();
    sum % WORKERS
}

/// The generator's queues of one side, and their other ends.
fn side(mac: u8) -> (Vec<MemPort>, Vec<MemPortControl>) {
    (0..WORKERS).map(|_| MemPort::new([2, 0, 0, 0, 1, mac])).unzip()
}

/// Frames the appliance transmitted on each queue of the generator's sides.
#[derive(Debug, Default)]
struct Delivered {
    per_queue: [[u64; WORKERS]; 2],
}

/// Runs the bench for up to `limit_ms` with the generator on `pump`, whose
/// queues' other ends are `client` and `server` (every queue there gets
/// the appliance's frames, whether or not `pump` reads it), until the
/// generator is done.
fn run(
    bench: &mut Bench,
    pump: &mut PortPump<MemPort>,
    client: &[MemPortControl],
    server: &[MemPortControl],
    limit_ms: u64,
) -> Delivered {
    let mut delivered = Delivered::default();
    for _ in 0..limit_ms {
        if bench.generator.finished() {
            break;
        }
        let now = bench.now;
        pump.receive(&mut bench.generator, now);
        bench.generator.poll(now);
        pump.transmit(&mut bench.generator);
        for (generator_side, appliance_port) in [(client, &bench.client_port), (server, &bench.server_port)] {
            for frame in generator_side[0].take_transmitted() {
                appliance_port.inject(frame);
            }
            for other in &generator_side[1..] {
                assert!(
                    other.take_transmitted().is_empty(),
                    "the generator transmits on queue 0 only"
                );
            }
        }
        while bench.engine.poll(now) > 0 {}
        for (generator_side, appliance_port, index) in
            [(client, &bench.client_port, 0), (server, &bench.server_port, 1)]
        {
            for frame in appliance_port.take_transmitted() {
                let worker = worker_of(&frame);
                delivered.per_queue[index][worker] += 1;
                generator_side[worker].inject(frame);
            }
        }
        bench.now += Duration::from_millis(1);
    }
    delivered
}

#[test]
fn every_receive_queue_is_read_and_everything_is_sent_on_queue_0() {
    let mut bench = bench("queues", plan(100));
    let (client_queues, client) = side(0xc);
    let (server_queues, server) = side(0x5);
    let mut pump = PortPump::new(client_queues, server_queues, &mut bench.generator).unwrap();
    let delivered = run(&mut bench, &mut pump, &client, &server, 20_000);
    let stats = bench.generator.stats().clone();
    assert!(bench.generator.finished(), "{stats:?}");
    assert_eq!(
        (stats.handshakes, stats.exchanges, stats.errors()),
        (100, 100, 0),
        "{stats:?}"
    );
    assert_eq!(bench.engine.splicer().counters().tls_intercepted, 100);
    for (side, queues) in ["client", "server"].iter().zip(delivered.per_queue) {
        assert!(queues.iter().all(|&frames| frames > 100), "{side} side: {queues:?}");
    }
    assert_eq!(pump.tx_dropped(), 0);
}

#[test]
fn a_generator_reading_only_queue_0_loses_the_second_workers_connections() {
    // What the generator did before it polled every queue: the frames of
    // the connections hashed to queue 1 are never read, and those time out.
    let mut bench = bench("queue-0-only", plan(40));
    let (mut client_queues, client) = side(0xc);
    let (mut server_queues, server) = side(0x5);
    client_queues.truncate(1);
    server_queues.truncate(1);
    let mut pump = PortPump::new(client_queues, server_queues, &mut bench.generator).unwrap();
    let delivered = run(&mut bench, &mut pump, &client, &server, 20_000);
    let stats = bench.generator.stats().clone();
    // (The appliance holds a client's SYN-ACK until its upstream leg is
    // up: those connections' frames never reach the client side at all.)
    assert!(delivered.per_queue[1][1] > 0, "{delivered:?}");
    assert!(stats.handshakes < 40 && stats.errors() > 0, "{stats:?}");
}

#[test]
fn a_side_without_a_queue_is_refused() {
    let mut bench = bench("refused", plan(1));
    let (queues, _controls) = side(0xc);
    assert_eq!(
        PortPump::new(queues, Vec::new(), &mut bench.generator).unwrap_err(),
        loadgen::PortsError::NoQueue("server")
    );
}
