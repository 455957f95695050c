//! TLS through the inspection loop, in memory: a rustls client and a rustls
//! origin on smoltcp hosts, the appliance intercepting with a forged
//! certificate, the plaintext crossing an in-memory box, and the decrypted
//! capture recording what was passed on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::io::Write;
use std::sync::Arc;

use appliance::capture::CaptureSettings;
use appliance::config::InspectFailure;
use appliance::splice::InspectionSettings;
use appliance::writer::{CaptureQueue, Writer};
use harness::tls::{client_tls, drive, interception, origin, tls_exchange, Scratch};
use harness::{assert_no_leaks, exchange, pattern, policy, tcp_payload, v4, BoxMode, Lab, SERVER_V4};
use netstack::Duration;
use rustls::pki_types::CertificateDer;
use rustls::{ServerConfig, ServerConnection};
use smoltcp::socket::tcp::State;

struct Setup {
    lab: Lab,
    ca: CertificateDer<'static>,
    origin: Arc<ServerConfig>,
    /// The thread that writes the capture.
    capture: Writer,
    capture_path: std::path::PathBuf,
    _scratch: Scratch,
}

fn setup(name: &str, mode: BoxMode) -> Setup {
    setup_with(name, mode, &policy(&[443]), InspectFailure::FailClosed)
}

fn setup_with(
    name: &str,
    mode: BoxMode,
    intercept: &appliance::engine::InterceptPolicy,
    failure: InspectFailure,
) -> Setup {
    let settings = InspectionSettings {
        failure,
        syn_timeout: Duration::from_millis(300),
        timeout: Duration::from_secs(3),
    };
    setup_inspecting(name, mode, intercept, settings)
}

fn setup_inspecting(
    name: &str,
    mode: BoxMode,
    intercept: &appliance::engine::InterceptPolicy,
    settings: InspectionSettings,
) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin();
    let (context, ca) = interception(&scratch, &origin_ca);
    let capture_path = scratch.0.join("decrypted.pcap");
    let capture = Writer::start().unwrap();
    let queue = CaptureQueue::open(
        CaptureSettings {
            path: capture_path.clone(),
            port_map: [(443, 80)].into_iter().collect(),
            ..CaptureSettings::default()
        },
        capture.handle(),
    )
    .unwrap();
    let lab = Lab::with_inspection_and(intercept, settings, mode, move |engine| {
        engine.with_tls(context).with_capture(queue)
    });
    Setup {
        lab,
        ca,
        origin,
        capture,
        capture_path,
        _scratch: scratch,
    }
}

#[test]
fn https_plaintext_crosses_the_box_and_lands_in_the_decrypted_capture() {
    let Setup {
        mut lab,
        ca,
        origin,
        capture,
        capture_path,
        _scratch,
    } = setup("tls-loop", BoxMode::Pass);
    let listener = lab.server.listen(443, 256 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_000, 256 * 1024);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(origin).unwrap();
    server.set_buffer_limit(None);
    let request = b"GET /file HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    let body = pattern(100_000, 7);
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    let (mut at_client, mut at_server) = tls_exchange(
        &mut lab,
        (socket, listener),
        (&mut client, &mut server),
        (&request, &response),
        10_000,
    );
    // Memory accounting while the connection is open: one TLS session,
    // four flows (client, server and the two loop legs) with the buffer
    // pages the response passed through (at most their capacity).
    let counters = lab.engine.splicer().counters();
    assert_eq!(counters.tls_sessions_live, 1);
    assert_eq!(lab.engine.stack().live_flows(), 4);
    let buffers = lab.engine.stack().buffer_bytes();
    assert!(buffers > 64 * 1024 && buffers <= 4 * 2 * 32 * 1024, "{buffers}");
    assert!(at_client == response, "the response arrived byte-exact");
    let inspection = lab.inspection.as_ref().unwrap();
    assert_eq!(inspection.seen_up, request, "the box saw the request in plaintext");
    assert!(
        inspection.seen_down == response,
        "the box saw the response in plaintext"
    );

    // Both close: close_notify and FIN go round the loop and on.
    client.send_close_notify();
    let (mut client_saw_close, mut server_saw_close) = (false, false);
    let (mut server_closed, mut client_closed) = (false, false);
    let closed = lab.run_until(5_000, |lab| {
        client_saw_close |= drive(&mut lab.client, socket, &mut client, &mut at_client);
        server_saw_close |= drive(&mut lab.server, listener, &mut server, &mut at_server);
        if server_saw_close && !server_closed {
            server_closed = true;
            server.send_close_notify();
            drive(&mut lab.server, listener, &mut server, &mut at_server);
            lab.server.tcp(listener).close();
        }
        if client_saw_close && !client_closed {
            client_closed = true;
            lab.client.tcp(socket).close();
        }
        client_closed && matches!(lab.client.tcp(socket).state(), State::TimeWait | State::Closed)
    });
    assert!(closed, "clean close: client {:?}", lab.client.tcp(socket).state());
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.tls_intercepted, counters.inspected), (1, 1));
    let clean = lab.run_until(30_000, |lab| lab.engine.stack().live_flows() == 0);
    assert!(clean, "flows left: {}", lab.engine.stack().live_flows());
    assert_eq!(lab.engine.splicer().counters().tls_sessions_live, 0);
    assert_eq!(lab.engine.stack().buffer_bytes(), 0);

    // The decrypted capture holds the plaintext on port 80.
    drop(lab);
    drop(capture);
    let file = std::fs::File::open(&capture_path).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut flags = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let frame = packet.unwrap().data.into_owned();
        let class = wire::classify(&frame).unwrap();
        let (tuple, info) = class.tcp().unwrap();
        flags.push((info.flags.syn, info.flags.fin));
        let payload = tcp_payload(&frame).unwrap_or_default();
        if tuple.dst_port == 80 {
            up.extend_from_slice(payload);
        } else {
            assert_eq!(tuple.src_port, 80);
            down.extend_from_slice(payload);
        }
    }
    assert_eq!(up, request);
    assert!(down == response, "the capture holds the response byte-exact");
    assert!(
        flags.first().is_some_and(|f| f.0),
        "the capture starts with the handshake"
    );
    assert_eq!(flags.iter().filter(|f| f.1).count(), 2, "both FINs are in the capture");
}

#[test]
fn an_https_request_the_box_resets_fails_at_once_and_never_reaches_the_server() {
    // The box's verdict, not its failure: fail_open blocks too.
    for failure in [InspectFailure::FailClosed, InspectFailure::FailOpen] {
        an_https_request_the_box_resets_is_blocked(failure);
    }
}

fn an_https_request_the_box_resets_is_blocked(failure: InspectFailure) {
    let Setup {
        mut lab, ca, origin, ..
    } = setup_with("tls-block", BoxMode::ResetOn(b"EVIL"), &policy(&[443]), failure);
    let listener = lab.server.listen(443, 64 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_001, 64 * 1024);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(origin).unwrap();
    client.writer().write_all(b"GET /EVIL HTTP/1.1\r\n\r\n").unwrap();
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let mut handshaken_at = None;
    let reset = lab.run_until(5_000, |lab| {
        if lab.client.tcp(socket).state() == State::Established {
            drive(&mut lab.client, socket, &mut client, &mut at_client);
        }
        if lab.server.tcp(listener).state() == State::Established {
            drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        if !client.is_handshaking() && handshaken_at.is_none() {
            handshaken_at = Some(lab.now);
        }
        lab.client.tcp(socket).state() == State::Closed
    });
    assert!(reset, "the client was reset: {:?}", lab.client.tcp(socket).state());
    let handshaken_at = handshaken_at.expect("the TLS handshake completed first");
    assert!(lab.now - handshaken_at < Duration::from_millis(100), "promptly");
    assert!(at_server.is_empty(), "{failure:?}: nothing reached the origin");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.inspect_blocked, counters.inspect_failed_open), (1, 0));
}

#[test]
fn an_https_upload_and_download_outlive_a_box_that_dies_when_failing_open() {
    for (port, failure) in [(45_020, InspectFailure::FailOpen), (45_021, InspectFailure::FailClosed)] {
        let Setup {
            mut lab, ca, origin, ..
        } = setup_with("tls-box-dies", BoxMode::Pass, &policy(&[443]), failure);
        let listener = lab.server.listen(443, 512 * 1024);
        let socket = lab.client.connect(v4(SERVER_V4, 443), port, 512 * 1024);
        let mut client = client_tls(&ca);
        client.set_buffer_limit(None);
        let mut server = ServerConnection::new(origin).unwrap();
        server.set_buffer_limit(None);
        let mut request = b"POST /upload HTTP/1.1\r\nContent-Length: 150000\r\n\r\n".to_vec();
        request.extend_from_slice(&pattern(150_000, 9));
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".to_vec();
        response.extend_from_slice(&pattern(300_000, 10));
        client.writer().write_all(&request).unwrap();
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        let (mut answered, mut dead) = (false, false);
        let ended = lab.run_until(50_000, |lab| {
            if lab.client.tcp(socket).state() == State::Established {
                drive(&mut lab.client, socket, &mut client, &mut at_client);
            }
            if lab.server.tcp(listener).state() == State::Established {
                drive(&mut lab.server, listener, &mut server, &mut at_server);
            }
            if !at_server.is_empty() && !answered {
                // The answer starts while the upload goes on.
                answered = true;
                server.writer().write_all(&response).unwrap();
            }
            if !dead && at_server.len() >= 40_000 && at_client.len() >= 40_000 {
                dead = true;
                lab.inspection.as_mut().unwrap().mode = BoxMode::Stopped;
            }
            let complete = at_server.len() == request.len() && at_client.len() == response.len();
            complete || lab.client.tcp(socket).state() == State::Closed
        });
        assert!(
            ended && dead,
            "{failure:?}: the box died mid-transfer and the transfer ended"
        );
        let counters = lab.engine.splicer().counters();
        assert_eq!((counters.inspected, counters.tls_intercepted), (1, 1));
        match failure {
            InspectFailure::FailOpen => {
                assert!(at_server == request, "the upload arrived byte-exact");
                assert!(at_client == response, "the download arrived byte-exact");
                assert_eq!(
                    (
                        counters.inspect_failed_open_live,
                        counters.inspect_blocked,
                        counters.resets
                    ),
                    (1, 0, 0)
                );
                assert!(counters.inspect_unreturned_bytes > 0, "{counters:?}");
            }
            InspectFailure::FailClosed => {
                // Cut short (with congestion control the upload may have
                // crossed the box whole before it died; the download not).
                assert!(
                    at_server.len() + at_client.len() < request.len() + response.len(),
                    "{} B up, {} B down",
                    at_server.len(),
                    at_client.len()
                );
                assert_eq!(counters.inspect_failed_open, 0);
            }
        }
    }
}

#[test]
fn an_upload_the_client_ends_with_close_notify_then_a_reset_reaches_the_origin_whole_before_the_reset() {
    // curl uploading over FTPS ends so: its last data and close_notify,
    // then close() with the forged server's session tickets unread, which
    // makes its kernel send a RST. The RST arrives while the upload is
    // still in the box, and follows it.
    let Setup {
        mut lab, ca, origin, ..
    } = setup("tls-upload-reset", BoxMode::Pass);
    let listener = lab.server.listen(443, 256 * 1024);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_030, 256 * 1024);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(origin).unwrap();
    server.set_buffer_limit(None);
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let handshaken = lab.run_until(5_000, |lab| {
        if lab.client.tcp(socket).state() == State::Established {
            drive(&mut lab.client, socket, &mut client, &mut at_client);
        }
        if lab.server.tcp(listener).state() == State::Established {
            drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        !client.is_handshaking() && !server.is_handshaking()
    });
    assert!(handshaken, "both handshakes done");
    // A slow box: it holds what goes in (dropped, retransmitted later).
    lab.inspection.as_mut().unwrap().mode = BoxMode::Stopped;
    let upload = pattern(20_000, 11);
    client.writer().write_all(&upload).unwrap();
    client.send_close_notify();
    drive(&mut lab.client, socket, &mut client, &mut at_client);
    // The appliance acknowledged all of it, then the client resets.
    let taken = lab.run_until(2_000, |lab| lab.client.tcp(socket).send_queue() == 0);
    assert!(taken, "the appliance took the upload");
    lab.client.tcp(socket).abort();
    lab.run_for(20);
    lab.inspection.as_mut().unwrap().mode = BoxMode::Pass;
    let mut server_saw_close = false;
    let reset = lab.run_until(5_000, |lab| {
        if lab.server.tcp(listener).may_recv() {
            server_saw_close |= drive(&mut lab.server, listener, &mut server, &mut at_server);
        }
        lab.server.tcp(listener).state() == State::Closed
    });
    assert!(reset, "the origin was reset: {:?}", lab.server.tcp(listener).state());
    assert!(
        at_server == upload,
        "the upload reached the origin whole: {} of {} bytes",
        at_server.len(),
        upload.len()
    );
    assert!(server_saw_close, "and its close_notify, before the reset");
    assert_eq!(lab.inspection.as_ref().unwrap().seen_up, upload, "round the box");
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.tls_intercepted, counters.resets), (1, 1));
    assert_no_leaks(&mut lab);
}

/// The (source, destination) ports of the RST segments among `frames`.
fn resets(frames: &[Vec<u8>]) -> Vec<(u16, u16)> {
    let mut ports: Vec<_> = frames
        .iter()
        .filter_map(|frame| {
            let class = wire::classify(frame).ok()?;
            let (tuple, info) = class.tcp()?;
            info.flags.rst.then_some((tuple.src_port, tuple.dst_port))
        })
        .collect();
    ports.sort_unstable();
    ports
}

#[test]
fn shutdown_resets_every_leg_of_an_intercepted_and_a_spliced_connection() {
    use appliance::policy::{Action, Condition, Policy, PolicyRules, RuleConfig};
    let mut intercept = policy(&[443]);
    let bypass_non_tls = RuleConfig {
        action: Action::Bypass,
        dst: Vec::new(),
        src: Vec::new(),
        port: Vec::new(),
        sni: Vec::new(),
        no_sni: None,
        when: Some(Condition::NonTls),
        udp: None,
        server_port: None,
        server_name: None,
    };
    intercept.rules = Policy::new(&PolicyRules::from(vec![bypass_non_tls]), Arc::default(), false).unwrap();
    let Setup {
        mut lab, ca, origin, ..
    } = setup_with("tls-shutdown", BoxMode::Pass, &intercept, InspectFailure::FailClosed);

    // An intercepted HTTPS connection through the box, left open.
    let tls_listener = lab.server.listen(443, 64 * 1024);
    let tls_socket = lab.client.connect(v4(SERVER_V4, 443), 45_010, 64 * 1024);
    let mut client = client_tls(&ca);
    let mut server = ServerConnection::new(origin).unwrap();
    tls_exchange(
        &mut lab,
        (tls_socket, tls_listener),
        (&mut client, &mut server),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
        5_000,
    );

    // A connection that is not TLS: bypassed after its first bytes and
    // spliced as it is, also left open.
    let plain_listener = lab.server.listen(443, 64 * 1024);
    let plain_socket = lab.client.connect(v4(SERVER_V4, 443), 45_011, 64 * 1024);
    let (mut up, mut down): (&[u8], &[u8]) = (b"hello, not TLS\n", b"plain reply\n");
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let exchanged = lab.run_until(5_000, |lab| {
        if lab.client.tcp(plain_socket).state() == State::Established {
            exchange(&mut lab.client, plain_socket, &mut up, &mut at_client);
        }
        if lab.server.tcp(plain_listener).state() == State::Established {
            exchange(&mut lab.server, plain_listener, &mut down, &mut at_server);
        }
        at_server == b"hello, not TLS\n" && at_client == b"plain reply\n"
    });
    assert!(exchanged, "spliced exchange: {at_server:?} / {at_client:?}");
    let counters = lab.engine.splicer().counters();
    assert_eq!(
        (
            counters.sessions_live,
            counters.tls_intercepted,
            counters.bypassed,
            counters.inspected
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(lab.engine.stack().live_flows(), 6, "4 legs intercepted + 2 spliced");

    // The engine stops: one RST on each of the six legs, sent at once.
    let reset = lab.engine.shutdown(lab.now, std::time::Duration::from_secs(1));
    lab.engine_stopped = true;
    assert_eq!(reset, 6);
    let to_client = lab.client_port.take_transmitted();
    let to_server = lab.server_port.take_transmitted();
    assert_eq!(resets(&to_client), [(443, 45_010), (443, 45_011)]);
    assert_eq!(resets(&to_server), [(45_010, 443), (45_011, 443)]);
    let inspection = lab.inspection.as_ref().unwrap();
    assert_eq!(resets(&inspection.out_port.take_transmitted()), [(45_010, 443)]);
    assert_eq!(resets(&inspection.in_port.take_transmitted()), [(443, 45_010)]);

    // The hosts accept them: both ends of both connections are closed.
    lab.client.device.rx.extend(to_client);
    lab.server.device.rx.extend(to_server);
    lab.run_for(5);
    for (end, state) in [
        ("client, intercepted", lab.client.tcp(tls_socket).state()),
        ("client, spliced", lab.client.tcp(plain_socket).state()),
        ("server, intercepted", lab.server.tcp(tls_listener).state()),
        ("server, spliced", lab.server.tcp(plain_listener).state()),
    ] {
        assert_eq!(state, State::Closed, "{end}");
    }
    let counters = lab.engine.splicer().counters();
    assert_eq!((counters.reset_at_shutdown, counters.sessions_live), (6, 0));
    assert_eq!(lab.engine.stack().live_flows(), 0);
    assert_eq!(lab.totals(0).generated_dropped + lab.totals(1).generated_dropped, 0);
}

#[test]
fn https_round_the_loop_survives_loss_on_the_box_out_link() {
    // The default inspect.syn_timeout_ms: room for the loop SYN's
    // retransmissions.
    let settings = InspectionSettings {
        failure: InspectFailure::FailClosed,
        syn_timeout: Duration::from_secs(8),
        timeout: Duration::from_secs(3),
    };
    let Setup {
        mut lab, ca, origin, ..
    } = setup_inspecting("tls-loop-loss", BoxMode::Pass, &policy(&[443]), settings);
    for link in &mut lab.inspection.as_mut().unwrap().links[..2] {
        link.loss_percent = 5;
        link.reorder_percent = 10;
    }
    let request = b"GET /file HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    let body = pattern(16_000, 9);
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    let count = 200u16;
    let mut connections: Vec<_> = (0..count)
        .map(|i| {
            let listener = lab.server.listen(443, 64 * 1024);
            let socket = lab.client.connect(v4(SERVER_V4, 443), 46_000 + i, 64 * 1024);
            let mut client = client_tls(&ca);
            client.writer().write_all(&request).unwrap();
            let mut server = ServerConnection::new(Arc::clone(&origin)).unwrap();
            server.set_buffer_limit(None);
            (socket, listener, client, server, Vec::new(), Vec::new(), false)
        })
        .collect();
    let done = lab.run_until(120_000, |lab| {
        let mut all = true;
        for (socket, listener, client, server, at_server, at_client, answered) in connections.iter_mut() {
            if lab.client.tcp(*socket).state() == State::Established {
                drive(&mut lab.client, *socket, client, at_client);
            }
            if lab.server.tcp(*listener).state() == State::Established {
                drive(&mut lab.server, *listener, server, at_server);
            }
            if *at_server == request && !*answered {
                *answered = true;
                server.writer().write_all(&response).unwrap();
            }
            all &= at_client.len() == response.len();
        }
        all
    });
    let finished = connections.iter().filter(|c| c.5.len() == response.len()).count();
    let counters = lab.engine.splicer().counters();
    assert!(done, "{finished} of {count} finished: {counters:?}");
    assert!(connections.iter().all(|c| c.5 == response), "byte-exact");
    assert_eq!(
        (counters.inspected, counters.inspect_failed_closed, counters.resets),
        (u64::from(count), 0, 0),
        "{counters:?}"
    );
}
