//! When the appliance gives a connection up, in memory on a virtual clock:
//! a leg that keeps making progress through heavy loss lives on however
//! long its peer stays silent between retransmissions (the old fixed
//! `tcp.timeout_ms` dropped it), and a peer that answers none of
//! `tcp.max_retransmissions` rounds is dead, and counted.

mod harness;

use appliance::config::InspectFailure;
use appliance::splice::InspectionSettings;
use harness::{
    assert_no_leaks, close_both, connect, exchange, pattern, policy, transfer_with, v4, BoxMode, Lab, SERVER_V4,
};
use netstack::Duration;
use smoltcp::socket::tcp::State;

const PORT: u16 = 443;

#[test]
fn a_leg_making_slow_progress_through_heavy_loss_is_never_dropped() {
    // The harness's tcp.timeout_ms is 3 s.
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_100);
    // A third of the frames lost both ways on the client's link (the
    // stack's prompted retransmissions recover from less without a silence
    // that long).
    for link in [0, 3] {
        lab.links[link].loss_percent = 35;
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

/// `count` connections at once from the client, each sending `up` bytes
/// and receiving `down` (both patterned by its index); asserts that every
/// one finished byte-exact within `limit_ms`.
fn concurrent_transfers(lab: &mut Lab, count: u16, up: usize, down: usize, limit_ms: u64) {
    let mut pairs = Vec::new();
    for i in 0..count {
        let listener = lab.server.listen(LOOP_PORT, 64 * 1024);
        let client = lab.client.connect(v4(SERVER_V4, LOOP_PORT), 42_000 + i, 64 * 1024);
        pairs.push((
            client,
            listener,
            pattern(up, i as u8),
            pattern(down, (i as u8).wrapping_add(100)),
        ));
    }
    let mut progress: Vec<(usize, usize, Vec<u8>, Vec<u8>)> =
        pairs.iter().map(|_| (0, 0, Vec::new(), Vec::new())).collect();
    let done = lab.run_until(limit_ms, |lab| {
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
    let finished = progress
        .iter()
        .zip(&pairs)
        .filter(|((_, _, at_server, at_client), (_, _, up, down))| at_server == up && at_client == down)
        .count();
    let counters = lab.engine.splicer().counters();
    assert!(done, "{finished} of {count} finished: {counters:?}");
    for (client, server, _, _) in &pairs {
        lab.client.tcp(*client).close();
        lab.server.tcp(*server).close();
    }
}

const LOOP_PORT: u16 = 80;

#[test]
fn every_connection_round_the_inspection_loop_survives_loss_on_the_box_out_link() {
    let settings = InspectionSettings {
        failure: InspectFailure::FailClosed,
        syn_timeout: Duration::from_secs(8),
        timeout: Duration::from_secs(3),
    };
    let mut lab = Lab::with_inspection(&policy(&[LOOP_PORT]), settings, BoxMode::Pass);
    let inspection = lab.inspection.as_mut().expect("box");
    for link in &mut inspection.links[..2] {
        link.loss_percent = 5;
        link.reorder_percent = 10;
    }
    concurrent_transfers(&mut lab, 200, 2_000, 16_000, 120_000);
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (counters.inspected, counters.inspect_failed_closed, counters.resets),
        (200, 0, 0),
        "{counters:?}"
    );
    let lost: u64 = lab
        .inspection
        .as_ref()
        .expect("box")
        .links
        .iter()
        .map(|link| link.lost)
        .sum();
    assert!(lost > 0);
    for link in &mut lab.inspection.as_mut().expect("box").links {
        link.loss_percent = 0;
        link.reorder_percent = 0;
    }
    assert_no_leaks(&mut lab);
}

/// A 300 kB download through a splice with `loss`% of the frames lost
/// both ways on the client link (the client leg sends into the loss, the
/// same losses every run): the virtual time it took, and the
/// retransmissions the stack prompted.
fn download_with_loss_on_the_client_link(loss: u32) -> (Duration, u64) {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_102);
    for link in [0, 3] {
        lab.links[link].loss_percent = loss;
    }
    let started = lab.now;
    transfer_with(&mut lab, client, server, b"", &pattern(300_000, 4), 600_000, |_, _| {});
    let took = lab.now - started;
    for link in [0, 3] {
        lab.links[link].loss_percent = 0;
    }
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
    (took, lab.engine.stack().counters().fast_retransmits_prompted)
}

#[test]
fn a_leg_sending_into_loss_resends_the_next_hole_without_waiting_for_its_timer() {
    // Without the stack's prompting smoltcp waits for its retransmission
    // timer (1 s, doubling) after a partial ACK, a SACKed tail, a lost tail
    // or a lost retransmission: this download took 1.06 s at 1% loss and
    // 19.1 s at 5%, against 42 ms without loss (56 ms and 1.1 s with it).
    let (lossless, prompted) = download_with_loss_on_the_client_link(0);
    assert!(lossless < Duration::from_millis(100), "{lossless}");
    assert_eq!(prompted, 0);
    for (loss, limit) in [(1, Duration::from_millis(200)), (5, Duration::from_secs(3))] {
        let (took, prompted) = download_with_loss_on_the_client_link(loss);
        assert!(took < limit, "{loss}% loss: {took}");
        assert!(prompted > 0, "{loss}% loss: nothing prompted");
    }
}

#[test]
fn a_lost_fin_alone_outstanding_is_sent_again() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_104);
    // Some data first: the legs sample the round trip and keep the
    // client's latest ACK, as a probe needs.
    transfer_with(&mut lab, client, server, b"", &pattern(20_000, 5), 5_000, |_, _| {});
    // The server closes; the client leg's FIN to the client is lost.
    lab.links[3].loss_percent = 100;
    lab.server.tcp(server).close();
    lab.run_for(30);
    lab.links[3].loss_percent = 0;
    // smoltcp sends it again on its own timer (a prompted fast retransmit
    // would have cancelled that timer and sent nothing: no data is
    // outstanding, and smoltcp's fast retransmit resends data only).
    let delivered = lab.run_until(5_000, |lab| lab.client.tcp(client).state() == State::CloseWait);
    assert!(delivered, "client {:?}", lab.client.tcp(client).state());
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}
