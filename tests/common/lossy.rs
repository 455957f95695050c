//! What the lab tests on impaired links (tests/lab_lossy.rs,
//! tests/lab_starttls_lossy.rs) check after the impairment element
//! (scripts/lab-impair.sh) ran: that it impaired, that the appliance dropped
//! the corrupted frames, and that it ended clean.

use std::time::Duration;

use super::lab::{stop_impairment, Appliance};

/// Deterministic content of `len` bytes, so any corruption shows.
pub fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 9) as u8))
        .collect()
}

/// Stops the element on `link`; asserts it lost, reordered, duplicated and
/// corrupted frames both ways (so the test proved something) and returns its
/// final counters.
pub fn assert_impaired(link: &str) -> serde_json::Value {
    let counters = stop_impairment(link);
    for direction in ["a_to_b", "b_to_a"] {
        for what in ["lost", "reordered", "duplicated", "corrupted"] {
            assert!(
                counters[direction][what].as_u64() > Some(0),
                "{link} {direction}: nothing {what}: {counters}"
            );
        }
    }
    counters
}

/// Stops tlsgate (started with `Appliance::start_reporting`) once every flow
/// is gone (the last closes retransmitted through the loss, TIME-WAIT over);
/// returns its final report.
pub fn stop_when_drained(appliance: Appliance) -> serde_json::Value {
    let drained = appliance.await_printed("tcp: 0 flows live", Duration::from_secs(60));
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{printed}");
    assert!(drained, "flows still live a minute after the traffic: {report}");
    report
}

/// The final report: every session opened finished, none was reset or
/// dropped by a timer, none was still open at stop, and no flow is left.
pub fn assert_clean(report: &serde_json::Value, sessions: usize) {
    assert_clean_but_peer_resets(report, sessions, 0);
}

/// [`assert_clean`], but `peer_resets` sessions were reset by a peer after
/// their dialogue ended (a real client or server that closes with unread
/// bytes, such as the other side's close_notify, sends a RST): the
/// connection log's records that ended "reset by the client" or "reset by
/// the server" (see [`peer_resets`]).
pub fn assert_clean_but_peer_resets(report: &serde_json::Value, sessions: usize, peer_resets: usize) {
    let tcp = &report["tcp"];
    assert_eq!(tcp["sessions_opened"], sessions, "{report}");
    assert_eq!(tcp["resets"], peer_resets, "{report}");
    for counter in [
        "dead_peers",
        "connect_timeouts",
        "server_timed_out",
        "reset_at_shutdown",
        "flows_live",
        "sessions_live",
    ] {
        assert_eq!(tcp[counter], 0, "{counter}: {report}");
    }
    assert_eq!(tcp["flows_created"], tcp["flows_freed"], "{report}");
}

/// Corrupted frames reached the appliance on port `index` and were dropped
/// as invalid (bad checksums), never fed to the stack or bridged.
pub fn assert_corrupted_dropped(report: &serde_json::Value, index: usize) {
    let port = &report["ports"][index];
    assert!(port["invalid_dropped"].as_u64() > Some(0), "port {index}: {report}");
}

/// How many of the connection log's `records` ended with a peer's RST;
/// asserts every record ended closed or so (never timed out, never reset
/// by the appliance or the inspector).
pub fn peer_resets(records: &[serde_json::Value]) -> usize {
    let mut resets = 0;
    for record in records {
        match record["ended"].as_str() {
            Some("closed") => {}
            Some("reset by the client" | "reset by the server") => resets += 1,
            _ => panic!("ended otherwise: {record}"),
        }
    }
    resets
}
