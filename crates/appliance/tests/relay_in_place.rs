//! The relay reads ciphertext where it lies in each TCP leg's receive
//! buffer and leaves a partial record there while more can arrive behind
//! it. In memory, a bulk HTTPS exchange both ways must arrive byte-exact
//! whatever the buffers: smaller than one TLS record (each partial record
//! has to be taken, or the leg stalls with a full buffer), and sizes whose
//! ring wraps in the middle of records.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::io::Write;
use std::sync::Arc;

use harness::tls::{client_tls, drive, interception, origin_for, Scratch};
use harness::{close_both, pattern, policy, v4, Lab, SERVER_V4};
use rustls::ServerConnection;
use smoltcp::socket::tcp::State;

/// Uploads `up` and downloads `down` over an intercepted connection whose
/// appliance sockets have `buffer` bytes each way; both arrive byte-exact.
fn bulk_exchange(name: &str, buffer: usize, up: &[u8], down: &[u8]) {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin_for(&["origin.test"], rustls::DEFAULT_VERSIONS);
    let (context, ca) = interception(&scratch, &origin_ca);
    let mut intercept = policy(&[443]);
    intercept.stack.rx_buffer = buffer;
    intercept.stack.tx_buffer = buffer;
    let mut lab = Lab::with_engine(&intercept, |engine| engine.with_tls(context));
    let listener = lab.server.listen(443, 256 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 40_000, 256 * 1024);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(Arc::clone(&origin)).unwrap();
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let (mut up_sent, mut down_sent) = (0, 0);
    // Plaintext goes in 8 KiB pieces while the host socket has room, so
    // the harness's sockets always take a flight of records whole.
    let chunk = 8 * 1024;
    let done = lab.run_until(120_000, |lab| {
        if lab.client.tcp(socket).state() == State::Established {
            if !client.is_handshaking() && up_sent < up.len() && lab.client.tcp(socket).send_queue() < 64 * 1024 {
                let end = (up_sent + chunk).min(up.len());
                client.writer().write_all(&up[up_sent..end]).unwrap();
                up_sent = end;
            }
            drive(&mut lab.client, socket, &mut client, &mut at_client);
        }
        if lab.server.tcp(listener).state() == State::Established {
            if !server.is_handshaking() && down_sent < down.len() && lab.server.tcp(listener).send_queue() < 64 * 1024 {
                let end = (down_sent + chunk).min(down.len());
                server.writer().write_all(&down[down_sent..end]).unwrap();
                down_sent = end;
            }
            drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        at_server.len() >= up.len() && at_client.len() >= down.len()
    });
    assert!(
        done,
        "buffers of {buffer} B: {} of {} up, {} of {} down",
        at_server.len(),
        up.len(),
        at_client.len(),
        down.len()
    );
    assert!(at_server == up, "client → server bytes differ");
    assert!(at_client == down, "server → client bytes differ");
    close_both(&mut lab, socket, listener);
}

#[test]
fn buffers_smaller_than_a_record_take_every_partial_record_and_never_stall() {
    bulk_exchange("relay-in-place-small", 6000, &pattern(200_000, 1), &pattern(600_000, 2));
}

#[test]
fn rings_wrapping_inside_records_relay_byte_exact() {
    // Neither size is a multiple of a record: the rings wrap mid-record.
    for buffer in [40_000, 100_003] {
        bulk_exchange(
            "relay-in-place-wrap",
            buffer,
            &pattern(300_000, 3),
            &pattern(1_000_000, 4),
        );
    }
}

/// The relay encrypts records straight into a leg's send buffer while
/// they fit behind what is queued there, and into the session's queue
/// otherwise (the ring full or wrapping): a client that stops reading, so
/// that the appliance's ring towards it fills and the queue takes over,
/// then reads in bursts, so that the ring drains and refills many times
/// across both paths, must get every record, in order, byte-exact. While
/// it does not read, the server leg is read no further than the
/// back-pressure allows.
#[test]
fn a_client_that_stops_then_reads_in_bursts_gets_every_record_in_order() {
    let scratch = Scratch::new("relay-send-in-place");
    let (origin, origin_ca) = origin_for(&["origin.test"], rustls::DEFAULT_VERSIONS);
    let (context, ca) = interception(&scratch, &origin_ca);
    let mut intercept = policy(&[443]);
    // Not a multiple of a record: refills meet the wrap mid-record.
    let buffer = 50_003;
    intercept.stack.rx_buffer = buffer;
    intercept.stack.tx_buffer = buffer;
    let mut lab = Lab::with_engine(&intercept, |engine| engine.with_tls(context));
    let listener = lab.server.listen(443, 256 * 1024);
    let client_buffer = 16 * 1024;
    let socket = lab.client.connect(v4(SERVER_V4, 443), 40_001, client_buffer);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(Arc::clone(&origin)).unwrap();
    let down = pattern(3_000_000, 5);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let mut down_sent = 0;
    // The origin writes 8 KiB pieces while its socket has room.
    let mut serve = |lab: &mut Lab, server: &mut ServerConnection, at_server: &mut Vec<u8>| {
        if lab.server.tcp(listener).state() == State::Established {
            if !server.is_handshaking() && down_sent < down.len() && lab.server.tcp(listener).send_queue() < 64 * 1024 {
                let end = (down_sent + 8 * 1024).min(down.len());
                server.writer().write_all(&down[down_sent..end]).unwrap();
                down_sent = end;
            }
            drive(&mut lab.server, listener, server, at_server);
        }
        down_sent
    };

    // The handshakes and the first 100 kB.
    assert!(lab.run_until(20_000, |lab| {
        serve(lab, &mut server, &mut at_server);
        if lab.client.tcp(socket).state() == State::Established {
            drive(&mut lab.client, socket, &mut client, &mut at_client);
        }
        at_client.len() >= 100_000
    }));

    // The client stops reading: the download stalls, and the appliance
    // holds at most its two rings, the TLS backlog and a record or two.
    let mut stalled = 0;
    lab.run_until(2_000, |lab| {
        stalled = serve(lab, &mut server, &mut at_server);
        false
    });
    let delivered_to_appliance = stalled - lab.server.tcp(listener).send_queue();
    let bound = at_client.len() + client_buffer + 2 * buffer + pipeline::TLS_BACKLOG + 3 * 17 * 1024;
    assert!(
        delivered_to_appliance < bound,
        "the appliance took {delivered_to_appliance} bytes from the server while the client read nothing (at most {bound})"
    );
    assert!(
        stalled < down.len(),
        "the origin finished against a reader that stopped"
    );

    // It reads in bursts, one step in seven.
    let mut step = 0u64;
    let done = lab.run_until(300_000, |lab| {
        serve(lab, &mut server, &mut at_server);
        step += 1;
        if step.is_multiple_of(7) {
            drive(&mut lab.client, socket, &mut client, &mut at_client);
        }
        at_client.len() >= down.len()
    });
    assert!(done, "{} of {} bytes arrived", at_client.len(), down.len());
    assert!(at_client == down, "server → client bytes differ");
    close_both(&mut lab, socket, listener);
}
