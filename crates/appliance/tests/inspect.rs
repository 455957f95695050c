//! The inspection loop, end to end in memory: the plaintext of every
//! intercepted connection leaves through `inspect_out`, crosses an
//! in-memory box and comes back on `inspect_in` before it goes on. The box
//! is authoritative (what it changes is relayed changed, what it resets is
//! reset on both legs), and a box that does not pass a connection's SYN, or
//! an inspection port whose link is down, fails open or closed as
//! configured; failing open, a box that dies under a live connection leaves
//! it to go on directly, byte-exact. Plain TCP (mode "splice") is used here; TLS through the loop
//! is shown with real clients in the namespace lab.

mod harness;

use appliance::config::InspectFailure;
use appliance::splice::InspectionSettings;
use harness::{
    assert_no_leaks, close_both, connect, exchange, pattern, policy, transfer, transfer_with, v4, BoxMode, Lab,
    SERVER_V4,
};
use netstack::Duration;
use smoltcp::socket::tcp::State;

const PORT: u16 = 80;

fn settings(failure: InspectFailure) -> InspectionSettings {
    InspectionSettings {
        failure,
        syn_timeout: Duration::from_millis(300),
        timeout: Duration::from_secs(3),
    }
}

fn lab(mode: BoxMode, failure: InspectFailure) -> Lab {
    Lab::with_inspection(&policy(&[PORT]), settings(failure), mode)
}

#[test]
fn plaintext_goes_round_the_box_byte_exact_both_ways() {
    let mut lab = lab(BoxMode::Pass, InspectFailure::FailClosed);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_000);
    let up = pattern(200_000, 1);
    let down = pattern(300_000, 2);
    transfer(&mut lab, client, server, &up, &down, 20_000);
    close_both(&mut lab, client, server);
    let inspection = lab.inspection.as_ref().unwrap();
    assert!(inspection.seen_up == up, "the box saw the client's bytes");
    assert!(inspection.seen_down == down, "the box saw the server's bytes");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspected, counters.inspect_blocked), (1, 0));
    // The loop uses the original 5-tuple on the inspection ports.
    let (out, back) = (lab.totals(2), lab.totals(3));
    assert!(
        out.rx > 0 && out.tx > 0 && back.rx > 0 && back.tx > 0,
        "{out:?} {back:?}"
    );
    assert_eq!(out.rx, out.intercepted + out.dropped);
    assert_no_leaks(&mut lab);
}

#[test]
fn what_the_box_changes_is_what_the_other_side_gets() {
    let mut lab = lab(BoxMode::Rewrite(b"secret", b"XXXXXX"), InspectFailure::FailClosed);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_001);
    let (mut to_server, mut to_client): (&[u8], &[u8]) = (b"GET /secret HTTP/1.0\r\n\r\n", b"the secret answer");
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let done = lab.run_until(3_000, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut at_client);
        exchange(&mut lab.server, server, &mut to_client, &mut at_server);
        at_server.len() == 24 && at_client.len() == 17
    });
    assert!(done, "{at_server:?} {at_client:?}");
    assert_eq!(at_server, b"GET /XXXXXX HTTP/1.0\r\n\r\n");
    assert_eq!(at_client, b"the XXXXXX answer");
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}

#[test]
fn bytes_a_client_sent_before_its_reset_cross_a_slow_box_then_the_reset_follows() {
    // An FTP upload in clear (PROT C) ends so when the client closes with
    // bytes unread: its last data, then a RST, while the data is still in
    // the box.
    let mut lab = lab(BoxMode::Pass, InspectFailure::FailClosed);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_050);
    lab.inspection.as_mut().unwrap().mode = BoxMode::Stopped;
    let upload = pattern(20_000, 5);
    assert_eq!(lab.client.tcp(client).send_slice(&upload).unwrap(), upload.len());
    let taken = lab.run_until(2_000, |lab| lab.client.tcp(client).send_queue() == 0);
    assert!(taken, "the appliance took the upload");
    lab.client.tcp(client).abort();
    lab.run_for(20);
    lab.inspection.as_mut().unwrap().mode = BoxMode::Pass;
    let mut at_server = Vec::new();
    let reset = lab.run_until(5_000, |lab| {
        exchange(&mut lab.server, server, &mut &[][..], &mut at_server);
        lab.server.tcp(server).state() == State::Closed
    });
    assert!(reset, "the server was reset: {:?}", lab.server.tcp(server).state());
    assert!(
        at_server == upload,
        "the upload reached the server whole first: {} of {} bytes",
        at_server.len(),
        upload.len()
    );
    assert_eq!(lab.engine.splicer().counters().resets, 1);
    assert_no_leaks(&mut lab);
}

#[test]
fn a_server_that_never_acknowledges_what_a_reset_client_sent_ends_the_session_and_its_loop() {
    // The client's RST waits for its bytes to be acknowledged by a server
    // that has gone silent: the server leg gives up after its
    // retransmissions, and the whole session ends with it (the loop legs
    // through the box included) long before the idle timeout.
    let mut policy = policy(&[PORT]);
    policy.stack.max_retransmissions = 2;
    let mut lab = Lab::with_inspection(&policy, settings(InspectFailure::FailClosed), BoxMode::Pass);
    let (client, _server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_051);
    lab.server_online = false;
    let upload = pattern(20_000, 6);
    assert_eq!(lab.client.tcp(client).send_slice(&upload).unwrap(), upload.len());
    let taken = lab.run_until(2_000, |lab| lab.client.tcp(client).send_queue() == 0);
    assert!(taken, "the appliance took the upload");
    lab.client.tcp(client).abort();
    let gave_up = lab.run_until(60_000, |lab| lab.engine.stack().counters().dead_peers > 0);
    assert!(gave_up, "the server leg gave up on its silent peer");
    let ended = lab.run_until(1_000, |lab| lab.engine.stack().live_flows() == 0);
    assert!(
        ended,
        "every leg ended with the server leg: {:?}",
        lab.engine.stack().flow_states().collect::<Vec<_>>()
    );
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.resets, counters.sessions_live), (1, 0));
    lab.server_online = true;
    assert_no_leaks(&mut lab);
}

#[test]
fn a_connection_the_box_resets_is_reset_on_both_legs_promptly() {
    // A reset is the box's verdict, not its failure: fail_open blocks too.
    for failure in [InspectFailure::FailClosed, InspectFailure::FailOpen] {
        a_connection_the_box_resets_is_reset(failure);
    }
}

fn a_connection_the_box_resets_is_reset(failure: InspectFailure) {
    let mut lab = lab(BoxMode::ResetOn(b"EVIL"), failure);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_002);
    let mut request: &[u8] = b"GET /EVIL HTTP/1.0\r\n\r\n";
    let mut nothing: &[u8] = b"";
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let reset = lab.run_until(500, |lab| {
        exchange(&mut lab.client, client, &mut request, &mut at_client);
        exchange(&mut lab.server, server, &mut nothing, &mut at_server);
        lab.client.tcp(client).state() == State::Closed && lab.server.tcp(server).state() == State::Closed
    });
    assert!(
        reset,
        "both ends reset within 500 ms: client {:?}, server {:?}",
        lab.client.tcp(client).state(),
        lab.server.tcp(server).state()
    );
    assert!(
        at_server.is_empty(),
        "{failure:?}: nothing of the blocked request reached the server"
    );
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspect_blocked, counters.inspect_failed_open), (1, 0));
    assert_no_leaks(&mut lab);
}

/// How an inspection box dies under live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// It stops forwarding: the loop legs go silent.
    Stops,
    /// Its link goes down (and nothing crosses it any more).
    LinkGoesDown,
}

fn kill_box(lab: &mut Lab, death: Death) {
    let Some(inspection) = lab.inspection.as_mut() else {
        return;
    };
    inspection.mode = BoxMode::Stopped;
    if death == Death::LinkGoesDown {
        inspection.in_port.set_link_up(false);
    }
}

/// Bytes each way large enough that the box dies with plenty in flight.
const LIVE_UP: usize = 300_000;
const LIVE_DOWN: usize = 400_000;
/// The box dies once this much arrived each way.
const DIES_AFTER: usize = 100_000;

#[test]
fn a_box_that_dies_mid_transfer_fails_open_and_the_transfer_finishes_byte_exact() {
    // With 128 KiB socket buffers more is in the loop than the appliance's
    // 64 KiB record of it: the rest waits in the exit leg's buffer.
    for (port, death, buffers) in [
        (40_010, Death::Stops, 32 * 1024),
        (40_011, Death::LinkGoesDown, 32 * 1024),
        (40_012, Death::Stops, 128 * 1024),
    ] {
        let mut intercept = policy(&[PORT]);
        intercept.stack.rx_buffer = buffers;
        intercept.stack.tx_buffer = buffers;
        let mut lab = Lab::with_inspection(&intercept, settings(InspectFailure::FailOpen), BoxMode::Pass);
        let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), port);
        let (up, down) = (pattern(LIVE_UP, 5), pattern(LIVE_DOWN, 6));
        let mut died_at = None;
        transfer_with(
            &mut lab,
            client,
            server,
            &up,
            &down,
            60_000,
            |lab, (at_server, at_client)| {
                if died_at.is_none() && at_server >= DIES_AFTER && at_client >= DIES_AFTER {
                    died_at = Some(lab.now);
                    kill_box(lab, death);
                }
            },
        );
        let died_at = died_at.expect("the box died mid-transfer");
        // Noticed in bounded time: when the fifth retransmission round is
        // due on a loop leg (31 s: rounds at 1, 3, 7 and 15 s unanswered)
        // when the box goes silent, the next link check (100 ms) when its
        // link goes down.
        let noticed_within = match death {
            Death::Stops => Duration::from_millis(31_000 + 1_000),
            Death::LinkGoesDown => Duration::from_millis(1_000),
        };
        assert!(
            lab.now - died_at < noticed_within,
            "{death:?}: finished {:?} after the box died",
            lab.now - died_at
        );
        let seen = lab.inspection.as_ref().unwrap().seen_up.len();
        assert!(
            seen < up.len(),
            "{death:?}: the box saw only part of the upload ({seen} B)"
        );
        let counters = lab.engine.splicer().counters();
        assert_eq!(
            (
                counters.inspected,
                counters.inspect_failed_open,
                counters.inspect_failed_open_live,
                counters.inspect_blocked,
                counters.resets
            ),
            (1, 1, 1, 0, 0),
            "{death:?}"
        );
        if death == Death::Stops {
            // It went silent with bytes it had not passed back: those went on
            // directly (the link check may find the loop empty).
            assert!(counters.inspect_unreturned_bytes > 0, "{counters:?}");
        }
        close_both(&mut lab, client, server);
        assert_no_leaks(&mut lab);
    }
}

#[test]
fn a_box_that_dies_holding_more_than_the_appliance_keeps_still_fails_open_exactly() {
    // 128 KiB socket buffers and a server that does not read yet: the loop
    // fills (its exit leg's buffer holds far more than the appliance's
    // 64 KiB record), then the box dies.
    let mut intercept = policy(&[PORT]);
    intercept.stack.rx_buffer = 128 * 1024;
    intercept.stack.tx_buffer = 128 * 1024;
    let mut lab = Lab::with_inspection(&intercept, settings(InspectFailure::FailOpen), BoxMode::Pass);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_014);
    let up = pattern(600_000, 11);
    let mut to_server = &up[..];
    let mut nothing = Vec::new();
    let filled = lab.run_until(5_000, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut nothing);
        up.len() - to_server.len() >= 400_000 && lab.inspection.as_ref().unwrap().seen_up.len() >= 250_000
    });
    assert!(filled, "the loop filled: {} B sent", up.len() - to_server.len());
    kill_box(&mut lab, Death::Stops);
    let mut at_server = Vec::new();
    let mut silent: &[u8] = b"";
    let done = lab.run_until(45_000, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut nothing);
        exchange(&mut lab.server, server, &mut silent, &mut at_server);
        at_server.len() == up.len()
    });
    assert!(done, "{} of {} B arrived", at_server.len(), up.len());
    assert!(at_server == up, "the upload arrived byte-exact");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspect_failed_open_live, counters.resets), (1, 0));
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}

#[test]
fn a_box_that_dies_mid_transfer_fails_closed_by_resetting_both_ends() {
    let mut lab = lab(BoxMode::Pass, InspectFailure::FailClosed);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_013);
    let (up, down) = (pattern(LIVE_UP, 7), pattern(LIVE_DOWN, 8));
    let (mut to_server, mut to_client) = (&up[..], &down[..]);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let mut dead = false;
    let reset = lab.run_until(45_000, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut at_client);
        exchange(&mut lab.server, server, &mut to_client, &mut at_server);
        if !dead && at_server.len() >= DIES_AFTER && at_client.len() >= DIES_AFTER {
            dead = true;
            kill_box(lab, Death::Stops);
        }
        lab.client.tcp(client).state() == State::Closed && lab.server.tcp(server).state() == State::Closed
    });
    assert!(dead, "the box died mid-transfer");
    assert!(reset, "both ends reset after the loop's timeout");
    assert!(at_server.len() < up.len() && at_client.len() < down.len());
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspected, counters.inspect_failed_open), (1, 0));
    assert_no_leaks(&mut lab);
}

#[test]
fn a_stopped_box_fails_closed_by_resetting_the_client() {
    let mut lab = lab(BoxMode::Stopped, InspectFailure::FailClosed);
    let listener = lab.server.listen(PORT, 64 * 1024);
    let client = lab.client.connect(v4(SERVER_V4, PORT), 40_003, 64 * 1024);
    let refused = lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Closed);
    assert!(refused, "client {:?}", lab.client.tcp(client).state());
    assert!(lab.now.total_millis() >= 300, "not before the SYN timeout");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspect_failed_closed, counters.inspected), (1, 0));
    assert_ne!(lab.server.tcp(listener).state(), State::Established);
    assert_no_leaks(&mut lab);
}

#[test]
fn a_stopped_box_fails_open_by_relaying_uninspected() {
    let mut lab = lab(BoxMode::Stopped, InspectFailure::FailOpen);
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_004);
    let up = pattern(50_000, 3);
    let down = pattern(70_000, 4);
    transfer(&mut lab, client, server, &up, &down, 10_000);
    close_both(&mut lab, client, server);
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspect_failed_open, counters.inspected), (1, 0));
    assert!(lab.inspection.as_ref().unwrap().seen_up.is_empty());
    assert_no_leaks(&mut lab);
}

#[test]
fn a_down_inspection_link_decides_at_once() {
    for failure in [InspectFailure::FailOpen, InspectFailure::FailClosed] {
        let mut lab = lab(BoxMode::Pass, failure);
        lab.inspection.as_ref().unwrap().in_port.set_link_up(false);
        lab.run_for(200);
        let listener = lab.server.listen(PORT, 64 * 1024);
        let client = lab.client.connect(v4(SERVER_V4, PORT), 40_005, 64 * 1024);
        let started = lab.now;
        let decided = lab.run_until(200, |lab| {
            matches!(lab.client.tcp(client).state(), State::Established | State::Closed)
        });
        assert!(decided, "{failure:?}: decided without waiting for the SYN timeout");
        let state = lab.client.tcp(client).state();
        let counters = lab.engine.splicer().counters();
        match failure {
            InspectFailure::FailOpen => {
                assert_eq!(state, State::Established);
                assert_eq!(lab.server.tcp(listener).state(), State::Established);
                assert_eq!(counters.inspect_failed_open, 1);
            }
            InspectFailure::FailClosed => {
                assert_eq!(state, State::Closed);
                assert_eq!(counters.inspect_failed_closed, 1);
            }
        }
        assert!(lab.now - started < Duration::from_millis(200));
    }
}

#[test]
fn a_hundred_concurrent_connections_round_the_loop_byte_exact() {
    let mut lab = lab(BoxMode::Pass, InspectFailure::FailClosed);
    let mut pairs = Vec::new();
    for i in 0..100u16 {
        let listener = lab.server.listen(PORT, 16 * 1024);
        let client = lab.client.connect(v4(SERVER_V4, PORT), 41_000 + i, 16 * 1024);
        pairs.push((
            client,
            listener,
            pattern(20_000 + usize::from(i) * 37, i as u8),
            pattern(30_000, 100 + i as u8),
        ));
    }
    let mut progress: Vec<(usize, usize, Vec<u8>, Vec<u8>)> =
        pairs.iter().map(|_| (0, 0, Vec::new(), Vec::new())).collect();
    let done = lab.run_until(60_000, |lab| {
        let mut all = true;
        for ((client, server, up, down), (sent_up, sent_down, at_server, at_client)) in
            pairs.iter().zip(progress.iter_mut())
        {
            let mut outgoing = &up[*sent_up..];
            let before = outgoing.len();
            exchange(&mut lab.client, *client, &mut outgoing, at_client);
            *sent_up += before - outgoing.len();
            let mut outgoing = &down[*sent_down..];
            let before = outgoing.len();
            exchange(&mut lab.server, *server, &mut outgoing, at_server);
            *sent_down += before - outgoing.len();
            all &= at_server.len() == up.len() && at_client.len() == down.len();
        }
        all
    });
    assert!(done, "transfers stalled");
    for ((_, _, up, down), (_, _, at_server, at_client)) in pairs.iter().zip(&progress) {
        assert!(at_server == up && at_client == down, "bytes differ");
    }
    for (client, server, _, _) in &pairs {
        lab.client.tcp(*client).close();
        lab.server.tcp(*server).close();
    }
    assert_eq!(lab.engine.splicer().counters().inspected, 100);
    assert_no_leaks(&mut lab);
}
