//! The decrypt-mirror port and PCAP-over-IP, in memory: an HTTPS exchange
//! intercepted by the engine (rustls client and origin on smoltcp hosts),
//! its plaintext's synthetic frames on an in-memory mirror port, in the
//! decrypted capture file and on a PCAP-over-IP client (a real TCP socket
//! on loopback), compared frame for frame; a mirror port that takes nothing
//! and a reader that reads nothing never hold back the data path.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use appliance::capture::{CaptureSettings, CaptureStream, FrameSink, Frames};
use appliance::mirror::{MirrorStats, Taps, MIRROR_QUEUE_FRAMES};
use appliance::pcap_stream::{PcapStream, StreamTotals, TOO_SLOW_AFTER};
use appliance::writer::{CaptureQueue, Writer};
use harness::tls::{client_tls, interception, origin, tls_exchange, Scratch};
use harness::{pattern, policy, v4, Lab, CLIENT_V4, SERVER_V4};
use pcap_file::pcap::PcapReader;
use port::{MemPort, MemPortControl};
use rustls::ServerConnection;

const MARKER: &str = "/mirror-marker-7f3a";

/// The lab's engine intercepting TLS on 443, its plaintext going to a
/// capture file, a mirror port and (when given) PCAP-over-IP.
struct Setup {
    lab: Lab,
    origin: Arc<rustls::ServerConfig>,
    ca: rustls::pki_types::CertificateDer<'static>,
    mirror: MemPortControl,
    mirror_stats: Arc<MirrorStats>,
    capture_path: std::path::PathBuf,
    /// The thread that writes the capture file.
    writer: Writer,
    _scratch: Scratch,
}

fn setup(name: &str, stream: Option<&PcapStream>) -> Setup {
    let scratch = Scratch::new(name);
    let (origin, origin_ca) = origin();
    let (context, ca) = interception(&scratch, &origin_ca);
    let capture_path = scratch.0.join("decrypted.pcap");
    let port_map: std::collections::BTreeMap<u16, u16> = [(443, 80)].into_iter().collect();
    let writer = Writer::start().unwrap();
    let capture = CaptureQueue::open(
        CaptureSettings {
            path: capture_path.clone(),
            port_map: port_map.clone(),
            ..CaptureSettings::default()
        },
        writer.handle(),
    )
    .unwrap();
    let taps = Taps::new(port_map).with_capture(capture);
    let taps = match stream {
        Some(stream) => taps.with_stream(stream.feed()),
        None => taps,
    };
    let (mirror_port, mirror) = MemPort::new([2, 0, 0, 0, 0, 0x20]);
    let mirror_stats = Arc::new(MirrorStats::default());
    let stats = Arc::clone(&mirror_stats);
    let lab = Lab::with_engine(&policy(&[443]), move |engine| {
        engine.with_tls(context).with_taps(taps).with_mirror(mirror_port, stats)
    });
    Setup {
        lab,
        origin,
        ca,
        mirror,
        mirror_stats,
        capture_path,
        writer,
        _scratch: scratch,
    }
}

/// One HTTPS request for `MARKER` answered with `body_len` bytes, through
/// the lab's engine; returns the response once the client has all of it.
fn https_exchange(setup: &mut Setup, body_len: usize) -> Vec<u8> {
    let lab = &mut setup.lab;
    let buffer = (body_len + 64 * 1024).max(256 * 1024);
    let listener = lab.server.listen(443, buffer);
    let socket = lab.client.connect(v4(SERVER_V4, 443), 45_000, buffer);
    let mut client = client_tls(&setup.ca);
    let mut server = ServerConnection::new(Arc::clone(&setup.origin)).unwrap();
    server.set_buffer_limit(None);
    let request = format!("GET {MARKER} HTTP/1.1\r\nHost: origin.test\r\n\r\n").into_bytes();
    let body = pattern(body_len, 3);
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    tls_exchange(
        lab,
        (socket, listener),
        (&mut client, &mut server),
        (&request, &response),
        60_000,
    );
    response
}

/// Ends the lab and the writer (which flushes the capture file) and
/// returns the frames of the capture file.
fn finish(setup: Setup) -> (Vec<Vec<u8>>, MemPortControl, Arc<MirrorStats>) {
    let Setup {
        lab,
        mirror,
        mirror_stats,
        capture_path,
        mut writer,
        _scratch,
        ..
    } = setup;
    drop(lab);
    writer.stop();
    let file = pcap_frames(&std::fs::read(&capture_path).unwrap());
    (file, mirror, mirror_stats)
}

/// The frames of a pcap (file or stream), checking its header.
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut reader = PcapReader::new(bytes).unwrap();
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        frames.push(packet.unwrap().data.into_owned());
    }
    frames
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A sink that keeps the frames of one call of a stream.
struct Kept(Option<Frames>);

impl FrameSink for &mut Kept {
    fn wire_port(&self, server_port: u16) -> u16 {
        server_port
    }

    fn write(&mut self, frames: Frames, _now: SystemTime) {
        self.0 = Some(frames);
    }
}

/// Waits (bounded) until the stream's counters satisfy `done`.
fn await_totals(stream: &PcapStream, limit: Duration, done: impl Fn(&StreamTotals) -> bool) -> StreamTotals {
    let deadline = Instant::now() + limit;
    loop {
        let totals = stream.totals();
        if done(&totals) || Instant::now() >= deadline {
            return totals;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
/// Reads what the stream sent until `frames` whole frames arrived (bounded).
fn read_stream(reader: &mut TcpStream, frames: usize) -> Vec<u8> {
    reader.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => bytes.extend_from_slice(&buf[..read]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("reading the stream: {err}"),
        }
        if bytes.len() > 24 && pcap_frames(&bytes).len() >= frames {
            break;
        }
    }
    bytes
}

/// tshark reading a pcap from its standard input (`nc HOST PORT | tshark -r -`):
/// the URIs of the HTTP requests it dissects.
fn tshark_request_uris(pcap: &[u8]) -> String {
    let mut tshark = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("tshark is required for this test (scripts/setup.sh installs it): {err}"));
    tshark.stdin.take().unwrap().write_all(pcap).unwrap();
    let output = tshark.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn mirror_port_and_pcap_over_ip_carry_the_frames_of_the_decrypted_capture() {
    let stream = PcapStream::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut reader = TcpStream::connect(stream.local_addr()).unwrap();
    let totals = await_totals(&stream, Duration::from_secs(10), |totals| totals.clients == 1);
    assert_eq!(totals.clients, 1, "the reader is connected");
    let mut setup = setup("mirror-same-frames", Some(&stream));
    https_exchange(&mut setup, 20_000);
    let (file, mirror, mirror_stats) = finish(setup);
    assert!(file.len() > 10, "{} frames in the capture file", file.len());

    // The mirror port sent exactly the frames of the capture file, in order.
    let mirrored = mirror.take_transmitted();
    assert!(
        mirrored == file,
        "{} mirrored frames, {} in the file",
        mirrored.len(),
        file.len()
    );
    let counted = mirror_stats.totals();
    assert_eq!(counted.frames, file.len() as u64);
    assert_eq!(counted.bytes, file.iter().map(|frame| frame.len() as u64).sum::<u64>());
    assert_eq!((counted.frames_dropped, counted.bytes_dropped), (0, 0));
    // Its first frame is the client's SYN to the mapped port, between the
    // real addresses; the request with the marker is in plaintext.
    let class = wire::classify(&mirrored[0]).unwrap();
    let (flow, info) = class.tcp().unwrap();
    assert!(info.flags.syn && !info.flags.ack);
    assert_eq!(
        (flow.src_ip, flow.dst_ip, flow.dst_port),
        (
            std::net::Ipv4Addr::from(CLIENT_V4).into(),
            std::net::Ipv4Addr::from(SERVER_V4).into(),
            80
        )
    );
    assert!(mirrored.iter().any(|frame| contains(frame, MARKER.as_bytes())));

    // The PCAP-over-IP reader got the same frames as a pcap stream.
    let streamed = read_stream(&mut reader, file.len());
    assert!(pcap_frames(&streamed) == file, "the stream carries the file's frames");
    let totals = stream.totals();
    assert_eq!(
        (totals.frames, totals.frames_dropped, totals.client_frames_dropped),
        (file.len() as u64, 0, 0)
    );
    assert!(
        tshark_request_uris(&streamed).contains(MARKER),
        "tshark -r - reads the stream"
    );
}

#[test]
fn a_mirror_port_that_takes_nothing_drops_and_counts_and_holds_nothing_back() {
    let mut setup = setup("mirror-full", None);
    setup.mirror.set_tx_burst_limit(Some(0));
    // Far more frames than the worker's queue holds.
    let body_len = (MIRROR_QUEUE_FRAMES + 1024) * 1460;
    https_exchange(&mut setup, body_len);
    let Setup {
        mut lab,
        mirror,
        mirror_stats,
        capture_path,
        mut writer,
        _scratch,
        ..
    } = setup;
    let stuck = mirror_stats.totals();
    assert_eq!((stuck.frames, stuck.bytes), (0, 0), "the port took nothing");
    // The queue is full and a burst is copied for the port; the rest was
    // dropped and counted.
    let burst = 32;
    mirror.set_tx_burst_limit(None);
    lab.step();
    let sent = mirror_stats.totals();
    assert_eq!(
        sent.frames,
        (MIRROR_QUEUE_FRAMES + burst) as u64,
        "what waited went out"
    );
    drop(lab);
    writer.stop();
    let file = pcap_frames(&std::fs::read(capture_path).unwrap());
    assert_eq!(
        sent.frames + sent.frames_dropped,
        file.len() as u64,
        "every frame sent or counted"
    );
    assert!(
        mirror.take_transmitted() == file[..MIRROR_QUEUE_FRAMES + burst],
        "the oldest frames, in order"
    );
}

#[test]
fn a_reader_that_reads_nothing_is_disconnected_and_never_slows_the_workers() {
    let stream = PcapStream::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let _stalled = TcpStream::connect(stream.local_addr()).unwrap();
    let connected = await_totals(&stream, Duration::from_secs(30), |totals| totals.clients == 1);
    assert_eq!(connected.clients, 1, "the reader is connected: {connected:?}");
    let mut taps = Taps::new(Default::default()).with_stream(stream.feed());
    let mut flow = CaptureStream::new(
        "198.18.0.1:40000".parse().unwrap(),
        "198.18.0.2:443".parse().unwrap(),
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        1,
    );
    // The frames of a 16 KiB write, built once (opening the flow): the
    // flood below hands them to the feed again and again, as Taps hands a
    // worker's frames to it, without a debug build's cost of building them.
    let mut kept = Kept(None);
    flow.data(&mut kept, false, &pattern(16 * 1024, 9), SystemTime::now());
    let frames = kept.0.expect("the frames of the write");
    let feed = stream.feed();
    // The worker feeds until the writer drops frames for the reader: the
    // kernel's buffers and the reader's queue are full, the reader is still
    // connected (only a connected reader's frames are dropped), and the feed
    // went on past it. A feed that waited for the reader would never get
    // here: it would hang until the reader is disconnected, and feed no one
    // after that. Bounded at 96 MiB, far beyond the queue and the buffers.
    let mut fed = 0;
    while stream.totals().client_frames_dropped == 0 && fed < 6 * 1024 {
        feed.send(&frames, SystemTime::now());
        fed += 1;
    }
    let past_the_reader = stream.totals();
    assert!(
        past_the_reader.client_frames_dropped > 0,
        "{fed} writes of 16 KiB fed: {past_the_reader:?}"
    );
    // The worker's traffic goes on, a write at each look, and keeps the
    // reader's queue above half full once the kernel has taken its share
    // (the flood may stop just below half). The writer counts the
    // disconnection, then the clients left: two counters, read one after
    // the other, so both are awaited.
    let totals = await_totals(&stream, TOO_SLOW_AFTER * 3, |totals| {
        feed.send(&frames, SystemTime::now());
        totals.clients_too_slow == 1 && totals.clients == 0
    });
    assert_eq!(totals.clients_too_slow, 1, "{totals:?}");
    assert_eq!(totals.clients, 0);
    // A new reader is served from the start of its own stream.
    let mut next = TcpStream::connect(stream.local_addr()).unwrap();
    let connected = await_totals(&stream, Duration::from_secs(30), |totals| totals.clients == 1);
    assert_eq!(connected.clients, 1, "the next reader is connected: {connected:?}");
    flow.data(
        &mut taps,
        true,
        b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        SystemTime::now(),
    );
    let frames = pcap_frames(&read_stream(&mut next, 2));
    assert_eq!(frames.len(), 2, "the data segment and its ACK");
    assert!(contains(&frames[0], b"/after"));
}
