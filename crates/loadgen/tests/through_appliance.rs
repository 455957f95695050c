//! The load generator against the real appliance engine, in memory: the
//! generator's client side and server side on two in-memory ports wired to
//! an `Engine` intercepting TLS on 443, on a virtual clock. Every planned
//! connection is intercepted (forged certificate verified by the clients,
//! the origin's certificate verified by the appliance), exchanges its
//! request and response, and is then held idle or closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bench, bench_with_buffers};
use loadgen::{Exchange, Hold, Plan};

fn plan(connections: u64, hold: Hold) -> Plan {
    let mut plan = common::plan(connections, hold);
    plan.exchange = Some(Exchange {
        request_bytes: 200,
        response_bytes: 5_000,
    });
    plan
}

#[test]
fn connections_are_intercepted_exchange_and_are_held_idle() {
    let mut bench = bench("idle", plan(300, Hold::Idle));
    let done = bench.run_until(20_000, |bench| bench.generator.finished());
    let stats = bench.generator.stats().clone();
    assert!(done, "{stats:?}");
    assert_eq!(stats.opened, 300);
    assert_eq!(stats.accepted, 300, "every connection reached the origin side");
    assert_eq!(
        (stats.handshakes, stats.exchanges, stats.errors()),
        (300, 300, 0),
        "{stats:?}"
    );
    assert_eq!(stats.live, 300, "held open");
    let summary = stats.summary();
    assert!(summary.p50_us > 0 && summary.p99_us >= summary.p50_us, "{summary}");
    let splice = bench.engine.splicer().counters();
    assert_eq!(splice.tls_intercepted, 300);
    assert_eq!(splice.sessions_live, 300, "the appliance holds every idle connection");
    assert_eq!(
        bench.engine.splicer().tls_buffer_bytes(),
        0,
        "idle sessions give their TLS buffers back"
    );
    assert_eq!(bench.stats.tcp.totals().flows_live, 600);
    assert_eq!(bench.generator.frames_ignored(), 0);

    // Idle for a minute: nothing times out on either side.
    bench.run_until(60_000, |_| false);
    assert_eq!(bench.generator.stats().live, 300);
    assert_eq!(bench.generator.stats().errors(), 0);
    assert_eq!(bench.engine.splicer().counters().sessions_live, 300);
}

#[test]
fn the_smallest_buffers_still_intercept_exchange_and_hold() {
    // What a million-connection run uses: 1 KiB socket buffers in the
    // appliance (its minimum) and 256 B in the generator (its minimum), so
    // every TLS flight and the 5 kB response cross many small windows.
    let mut bench = bench_with_buffers("small-buffers", plan(100, Hold::Idle), 1024, 256);
    let done = bench.run_until(30_000, |bench| bench.generator.finished());
    let stats = bench.generator.stats().clone();
    assert!(done, "{stats:?}");
    assert_eq!(
        (stats.handshakes, stats.exchanges, stats.live, stats.errors()),
        (100, 100, 100, 0),
        "{stats:?}"
    );
    assert_eq!(bench.engine.splicer().counters().sessions_live, 100);
    // A 1 KiB ring lives in a page of its own: at most one page each while
    // the exchanges are fresh, and none once the connections sit idle.
    assert!(bench.stats.tcp.totals().socket_buffer_bytes <= 200 * 2 * 4096);
    bench.run_until(2_000, |_| false);
    assert_eq!(bench.stats.tcp.totals().socket_buffer_bytes, 0);
    assert_eq!(bench.engine.splicer().counters().sessions_live, 100);
}

#[test]
fn large_windows_carry_a_bulk_response_intact() {
    // 64 KiB windows let more than rustls's 16 KiB of received plaintext
    // arrive at once: the generator must make room as it feeds rustls, not
    // drop what rustls refused (that broke the stream: "cannot decrypt").
    let mut plan = plan(3, Hold::Close);
    plan.exchange = Some(Exchange {
        request_bytes: 100,
        response_bytes: 2_000_000,
    });
    let mut bench = bench_with_buffers("bulk", plan, 64 * 1024, 64 * 1024);
    let done = bench.run_until(30_000, |bench| bench.generator.finished());
    let stats = bench.generator.stats().clone();
    assert!(done, "{stats:?}");
    assert_eq!((stats.exchanges, stats.errors()), (3, 0), "{stats:?}");
}

#[test]
fn closed_connections_leave_nothing_behind() {
    let mut bench = bench("close", plan(100, Hold::Close));
    assert!(bench.run_until(20_000, |bench| bench.generator.finished()));
    let drained = bench.run_until(30_000, |bench| {
        bench.generator.stats().live == 0 && bench.engine.splicer().counters().sessions_live == 0
    });
    let stats = bench.generator.stats();
    assert!(drained, "{stats:?} {:?}", bench.engine.splicer().counters());
    assert_eq!((stats.exchanges, stats.errors()), (100, 0), "{stats:?}");
    assert_eq!(bench.engine.stack().live_flows(), 0);
}
