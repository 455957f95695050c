//! Replay through the real appliance engine, in memory: each connection
//! sends the client payload of one flow of `pcap-fixtures/http-flows.pcapng`
//! (round robin) through the intercepting appliance (decrypted and
//! encrypted again there), and the origin side checks that it arrives
//! byte-exact before it answers. A client that sends other bytes than the
//! origin expects is counted as a mismatch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{bench, bench_with_origin};
use loadgen::replay::{read_capture, Flow};
use loadgen::{Hold, Plan, Replay, ReplayResponse};

fn fixture_flows() -> Vec<Flow> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pcap-fixtures/http-flows.pcapng");
    read_capture(&path).unwrap().flows
}

fn plan(connections: u64, replay: Replay, hold: Hold) -> Plan {
    let mut plan = common::plan(connections, hold);
    plan.replay = Some(replay);
    plan
}

#[test]
fn replayed_flows_arrive_byte_exact_at_the_origin_through_the_appliance() {
    let flows = fixture_flows();
    assert_eq!(flows.len(), 3);
    let payload: u64 = flows.iter().map(|flow| flow.payload.len() as u64).sum();
    let replay = Replay::new(flows, ReplayResponse::Original).unwrap();
    let mut bench = bench("replay-idle", plan(60, replay, Hold::Idle));
    let done = bench.run_until(20_000, |bench| bench.generator.finished());
    let stats = bench.generator.stats().clone();
    assert!(done, "{stats:?}");
    assert_eq!(
        (stats.opened, stats.accepted, stats.handshakes),
        (60, 60, 60),
        "{stats:?}"
    );
    assert_eq!(stats.replayed, 60, "every request byte-exact at the origin: {stats:?}");
    assert_eq!(stats.replayed_bytes, 20 * payload);
    assert_eq!((stats.replay_mismatches, stats.errors()), (0, 0), "{stats:?}");
    assert_eq!(
        stats.exchanges, 60,
        "every client got its flow's original response size"
    );
    assert_eq!(stats.live, 60, "held open");
    let summary = stats.summary();
    assert!(
        summary
            .to_string()
            .contains(&format!("replay: 60 byte-exact ({} B), 0 mismatched", 20 * payload)),
        "{summary}"
    );
    let splice = bench.engine.splicer().counters();
    assert_eq!(
        splice.tls_intercepted, 60,
        "every connection went through the interception"
    );
    assert_eq!(splice.sessions_live, 60);
    assert_eq!(bench.generator.frames_ignored(), 0);
}

#[test]
fn replay_with_a_fixed_response_closes_and_leaves_nothing_behind() {
    let replay = Replay::new(fixture_flows(), ReplayResponse::Fixed(20_000)).unwrap();
    let mut bench = bench("replay-close", plan(30, replay, Hold::Close));
    assert!(bench.run_until(20_000, |bench| bench.generator.finished()));
    let drained = bench.run_until(30_000, |bench| {
        bench.generator.stats().live == 0 && bench.engine.splicer().counters().sessions_live == 0
    });
    let stats = bench.generator.stats();
    assert!(drained, "{stats:?} {:?}", bench.engine.splicer().counters());
    assert_eq!(
        (stats.replayed, stats.exchanges, stats.errors()),
        (30, 30, 0),
        "{stats:?}"
    );
    assert_eq!(bench.engine.stack().live_flows(), 0);
}

#[test]
fn a_corrupted_payload_is_counted_as_a_mismatch_by_the_origin() {
    let flows = fixture_flows();
    let mut corrupted = flows.clone();
    // One byte of the reassembled POST body, in its second segment.
    corrupted[1].payload[2_000] ^= 0x20;
    let clients = plan(
        30,
        Replay::new(corrupted, ReplayResponse::Original).unwrap(),
        Hold::Idle,
    );
    let origins = plan(
        30,
        Replay::new(flows.clone(), ReplayResponse::Original).unwrap(),
        Hold::Idle,
    );
    let mut bench = bench_with_origin("replay-mismatch", clients, Some(origins));
    let done = bench.run_until(20_000, |bench| bench.generator.finished());
    let origin = bench.origin.as_ref().unwrap().stats().clone();
    assert!(done, "{:?} {origin:?}", bench.generator.stats());
    assert_eq!(origin.accepted, 30);
    assert_eq!(
        origin.replay_mismatches, 10,
        "every connection replaying the corrupted flow: {origin:?}"
    );
    assert_eq!(origin.replayed, 20);
    let exact = (flows[0].payload.len() + flows[2].payload.len()) as u64;
    assert_eq!(origin.replayed_bytes, 10 * exact);
    assert_eq!(origin.errors(), 10, "a mismatch is an error");
    // The origin still answers, so the clients finish their exchanges.
    let clients = bench.generator.stats();
    assert_eq!((clients.exchanges, clients.errors()), (30, 0), "{clients:?}");
}

#[test]
fn large_payloads_and_responses_are_written_as_the_sockets_take_them() {
    // Far more than the 8 KiB socket buffers and the generator's 16 KiB
    // limit of ciphertext waiting for a socket, in both directions.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let flow = Flow {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.18.0.2:80".parse().unwrap(),
        payload,
        server_bytes: 300_000,
        cut_at_gap: false,
    };
    let replay = Replay::new(vec![flow], ReplayResponse::Original).unwrap();
    let mut bench = bench("replay-large", plan(4, replay, Hold::Close));
    let done = bench.run_until(30_000, |bench| bench.generator.finished());
    let stats = bench.generator.stats();
    assert!(done, "{stats:?}");
    assert_eq!((stats.replayed, stats.replayed_bytes), (4, 800_000), "{stats:?}");
    assert_eq!((stats.exchanges, stats.errors()), (4, 0), "{stats:?}");
}
