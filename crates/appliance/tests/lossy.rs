//! When the appliance gives a connection up, in memory on a virtual clock:
//! a leg that keeps making progress through heavy loss lives on however
//! long its peer stays silent between retransmissions (the old fixed
//! `tcp.timeout_ms` dropped it), and a peer that answers none of
//! `tcp.max_retransmissions` rounds is dead, and counted.

mod harness;

use harness::{assert_no_leaks, close_both, connect, exchange, pattern, policy, transfer_with, v4, Lab, SERVER_V4};
use netstack::Duration;

const PORT: u16 = 443;

#[test]
fn a_leg_making_slow_progress_through_heavy_loss_is_never_dropped() {
    // The harness's tcp.timeout_ms is 3 s.
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_100);
    // A quarter of the frames lost both ways on the client's link.
    for link in [0, 3] {
        lab.links[link].loss_percent = 25;
        lab.links[link].reorder_percent = 10;
    }
    let (up, down) = (pattern(20_000, 1), pattern(150_000, 2));
    let (mut heard_at, mut frames_from_client, mut longest_silence) = (lab.now, 0, Duration::ZERO);
    transfer_with(&mut lab, client, server, &up, &down, 1_200_000, |lab, _| {
        let rx = lab.totals(0).rx;
        if rx != frames_from_client {
            frames_from_client = rx;
            longest_silence = longest_silence.max(lab.now - heard_at);
            heard_at = lab.now;
        }
    });
    // The client leg waited with data outstanding through silences longer
    // than the timeout: a fixed timer would have ended the connection.
    assert!(
        longest_silence > Duration::from_secs(3),
        "the loss must make the client silent past the timeout (longest {longest_silence})"
    );
    let lost = lab.links[0].lost + lab.links[3].lost;
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.resets, lab.engine.stack().counters().dead_peers),
        (0, 0),
        "lost {lost}"
    );
    for link in [0, 3] {
        lab.links[link].loss_percent = 0;
        lab.links[link].reorder_percent = 0;
    }
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}

#[test]
fn a_client_that_vanishes_mid_download_is_dead_after_its_retransmissions_and_counted() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_101);
    let down = pattern(200_000, 3);
    let (mut to_client, mut at_client, mut nothing) = (&down[..], Vec::new(), Vec::new());
    let started = lab.run_until(5_000, |lab| {
        exchange(&mut lab.server, server, &mut to_client, &mut nothing);
        exchange(&mut lab.client, client, &mut &b""[..], &mut at_client);
        at_client.len() >= 50_000
    });
    assert!(started, "the download started");
    // The client's cable is cut: nothing crosses its link either way.
    for link in [0, 3] {
        lab.links[link].loss_percent = 100;
    }
    let vanished = lab.now;
    let given_up = lab.run_until(200_000, |lab| {
        exchange(&mut lab.server, server, &mut to_client, &mut nothing);
        lab.engine.splicer().counters().sessions_live == 0
    });
    assert!(given_up, "the session ended");
    // Six rounds unanswered (1 s to 32 s apart), given up when the seventh
    // is due: never after the 3 s timeout alone.
    let after = lab.now - vanished;
    assert!(after > Duration::from_secs(60), "given up after {after}");
    let stack = lab.engine.stack().counters();
    let splice = lab.engine.splicer().counters();
    assert_eq!(
        (stack.dead_peers, stack.connect_timeouts, splice.resets),
        (1, 0, 1),
        "{stack:?} {splice:?}"
    );
    // The server was told with a RST.
    assert!(lab.run_until(1_000, |lab| lab.server.tcp(server).state()
        == smoltcp::socket::tcp::State::Closed));
    assert_no_leaks(&mut lab);
}
