//! The decrypted capture: synthetic TCP streams written as pcap, read back
//! with pcap-file and `wire::classify`, and dissected by tshark (which must
//! be installed: `scripts/setup.sh` does it).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use appliance::capture::{CaptureError, CaptureSettings, CaptureStream, DecryptedCapture};
use pcap_file::pcap::PcapReader;
use pcap_file::{DataLink, TsResolution};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

/// A fresh, empty directory for one test, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(test: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("tlsgate-capture-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn settings(path: PathBuf) -> CaptureSettings {
    CaptureSettings {
        path,
        port_map: BTreeMap::from([(443, 80)]),
        rotate_bytes: None,
        rotate_secs: None,
        max_files: None,
    }
}

/// An HTTP/1.1 response whose body is `body_len` bytes of a pattern.
fn response(body_len: usize) -> Vec<u8> {
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n")
            .into_bytes();
    response.extend((0..body_len).map(|i| (i % 251) as u8));
    response
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
}

/// Writes one complete HTTP exchange: request, response, client FIN, server FIN.
fn http_exchange(capture: &DecryptedCapture, client: &str, server: &str, response: &[u8], start_ms: u64) {
    let mut stream = CaptureStream::new(
        client.parse().unwrap(),
        server.parse().unwrap(),
        CLIENT_MAC,
        SERVER_MAC,
        0xffff_f000,
    );
    stream.data(capture, true, REQUEST, at(start_ms));
    stream.data(capture, false, response, at(start_ms + 1));
    stream.fin(capture, true, at(start_ms + 2));
    stream.fin(capture, true, at(start_ms + 2));
    stream.fin(capture, false, at(start_ms + 3));
    // Nothing after the close.
    stream.data(capture, false, b"late", at(start_ms + 4));
    stream.reset(capture, true, at(start_ms + 4));
}

/// The frames of a pcap with their timestamps; checks the file header.
fn read_pcap(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let mut reader = PcapReader::new(File::open(path).unwrap()).unwrap();
    let header = reader.header();
    assert_eq!(header.datalink, DataLink::ETHERNET);
    assert_eq!(header.ts_resolution, TsResolution::MicroSecond);
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        assert_eq!(packet.orig_len as usize, packet.data.len());
        frames.push((packet.timestamp, packet.data.into_owned()));
    }
    frames
}

/// One direction of a stream as the frames show it.
#[derive(Debug, Default)]
struct Direction {
    next_seq: Option<u32>,
    payload: Vec<u8>,
    syn: bool,
    fin: bool,
    rst: bool,
}

/// What the frames of one stream show.
#[derive(Debug)]
struct Stream {
    client: SocketAddr,
    server: SocketAddr,
    to_server: Direction,
    to_client: Direction,
}

/// Parses every frame with `wire::classify` and checks the stream is
/// consistent: well-formed, checksums valid, a handshake first, each
/// segment continuing its direction's sequence numbers and acknowledging
/// everything the other side sent.
fn parse_stream(frames: &[Vec<u8>]) -> Stream {
    let mut stream: Option<Stream> = None;
    for (index, frame) in frames.iter().enumerate() {
        let class = wire::classify(frame).unwrap();
        assert_eq!(class.malformed, None, "frame {index}");
        assert!(class.tcp_checksum_ok(frame), "frame {index}");
        let (flow, info) = class.tcp().unwrap();
        let payload_start = class.l4_range().unwrap().start + info.header_len;
        let payload = &frame[payload_start..];
        assert_eq!(payload.len(), info.payload_len);
        let src = SocketAddr::new(flow.src_ip, flow.src_port);
        let dst = SocketAddr::new(flow.dst_ip, flow.dst_port);
        let stream = stream.get_or_insert_with(|| {
            assert!(
                info.flags.syn && !info.flags.ack,
                "the first frame must be the client's SYN"
            );
            Stream {
                client: src,
                server: dst,
                to_server: Direction::default(),
                to_client: Direction::default(),
            }
        });
        let from_client = src == stream.client;
        assert!(from_client && dst == stream.server || src == stream.server && dst == stream.client);
        let (sender, receiver) = if from_client {
            (&mut stream.to_server, &stream.to_client)
        } else {
            (&mut stream.to_client, &stream.to_server)
        };
        assert!(!sender.rst && !receiver.rst, "frame {index} after a RST");
        if info.flags.syn {
            assert!(!sender.syn, "frame {index}: second SYN");
            assert_eq!(info.payload_len, 0);
            sender.syn = true;
            sender.next_seq = Some(info.seq_number);
        } else if sender.fin {
            assert!(
                info.payload_len == 0 && !info.flags.fin,
                "frame {index}: data or FIN after FIN"
            );
        }
        assert_eq!(Some(info.seq_number), sender.next_seq, "frame {index}: seq");
        if info.flags.ack {
            assert_eq!(Some(info.ack_number), receiver.next_seq, "frame {index}: ack");
        } else {
            assert!(
                from_client && info.flags.syn,
                "frame {index}: only the client's SYN lacks ACK"
            );
        }
        assert!(info.payload_len <= 1460);
        assert!(
            info.payload_len == 0 || info.flags.psh,
            "frame {index}: data without PSH"
        );
        let advance = info.payload_len as u32 + u32::from(info.flags.syn) + u32::from(info.flags.fin);
        sender.next_seq = sender.next_seq.map(|seq| seq.wrapping_add(advance));
        sender.payload.extend_from_slice(payload);
        sender.fin |= info.flags.fin;
        sender.rst |= info.flags.rst;
    }
    stream.unwrap()
}

/// Runs tshark, which must be installed; returns its standard output.
fn tshark(args: &[&str]) -> String {
    let output = Command::new("tshark")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("tshark is required for this test (scripts/setup.sh installs it): {err}"));
    assert!(
        output.status.success(),
        "tshark {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn decode_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "{hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes of each direction of TCP stream 0 as tshark reassembles them:
/// (client to server, server to client).
fn tshark_follow(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let text = tshark(&["-r", path.to_str().unwrap(), "-q", "-z", "follow,tcp,raw,0"]);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let body = text
        .lines()
        .skip_while(|line| !line.starts_with("Node 1:"))
        .skip(1)
        .take_while(|line| !line.starts_with("====="));
    for line in body {
        match line.strip_prefix('\t') {
            Some(hex) => to_client.extend(decode_hex(hex)),
            None => to_server.extend(decode_hex(line)),
        }
    }
    (to_server, to_client)
}

/// Checks that tshark finds no TCP analysis problem (retransmission, lost
/// segment, ACK of unseen segment, ...), no malformed packet and no other
/// warning but that of a RST.
fn assert_tshark_clean(path: &Path) {
    let complaints = tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-Y",
        "tcp.analysis.flags || _ws.malformed || (_ws.expert.severity >= warning && !tcp.connection.rst)",
    ]);
    assert_eq!(complaints, "", "tshark complains about {}", path.display());
}

#[test]
fn http_exchange_reads_back_and_dissects_as_http() {
    let dir = ScratchDir::new("http");
    let path = dir.join("decrypted.pcap");
    let capture = DecryptedCapture::open(settings(path.clone())).unwrap();
    let response = response(5000);
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response, 0);
    // Handshake 3, request + ACK 2, response 4 segments + ACK 5, 2 × (FIN + ACK) 4.
    assert_eq!(capture.totals().frames, 14);
    assert_eq!(capture.totals().frames_dropped, 0);
    drop(capture);

    let frames = read_pcap(&path);
    assert_eq!(frames.len(), 14);
    assert_eq!(frames[0].0, Duration::from_secs(1_700_000_000));
    assert_eq!(
        frames[13].0,
        Duration::from_secs(1_700_000_000) + Duration::from_millis(3)
    );
    let frames: Vec<Vec<u8>> = frames.into_iter().map(|(_, frame)| frame).collect();
    let stream = parse_stream(&frames);
    assert_eq!(stream.client, "10.0.0.1:40000".parse().unwrap());
    assert_eq!(stream.server, "192.0.2.7:80".parse().unwrap(), "443 is mapped to 80");
    assert_eq!(stream.to_server.payload, REQUEST);
    assert_eq!(stream.to_client.payload, response);
    assert!(stream.to_server.fin && stream.to_client.fin);
    assert!(!stream.to_server.rst && !stream.to_client.rst);
    // Client data starts at ISN + 1.
    let first_data = wire::classify(&frames[3]).unwrap();
    assert_eq!(first_data.tcp().unwrap().1.seq_number, 0xffff_f001);

    let file = path.to_str().unwrap();
    let fields = tshark(&[
        "-r",
        file,
        "-Y",
        "http",
        "-T",
        "fields",
        "-e",
        "http.request.uri",
        "-e",
        "http.response.code",
    ]);
    let lines: Vec<&str> = fields.lines().collect();
    assert_eq!(lines, ["/x\t", "\t200"], "{fields}");
    let body = tshark(&[
        "-r",
        file,
        "-Y",
        "http.response",
        "-T",
        "fields",
        "-e",
        "http.content_length",
    ]);
    assert_eq!(body.trim(), "5000");
    assert_eq!(tshark_follow(&path), (REQUEST.to_vec(), response));
    assert_tshark_clean(&path);
}

#[test]
fn ipv6_stream_is_well_formed() {
    let dir = ScratchDir::new("ipv6");
    let path = dir.join("v6.pcap");
    let capture = DecryptedCapture::open(settings(path.clone())).unwrap();
    let response = response(3000);
    http_exchange(&capture, "[fd00::1]:50000", "[2001:db8::7]:443", &response, 0);
    drop(capture);

    let frames: Vec<Vec<u8>> = read_pcap(&path).into_iter().map(|(_, frame)| frame).collect();
    let stream = parse_stream(&frames);
    assert_eq!(stream.server, "[2001:db8::7]:80".parse().unwrap());
    assert_eq!(stream.to_server.payload, REQUEST);
    assert_eq!(stream.to_client.payload, response);
    for frame in &frames {
        let class = wire::classify(frame).unwrap();
        assert!(matches!(class.l3, wire::L3Kind::Ipv6 { fragment: false, .. }));
        assert!(class.tcp().unwrap().1.payload_len <= 1440);
    }
    assert_eq!(tshark_follow(&path), (REQUEST.to_vec(), response));
    assert_tshark_clean(&path);
}

#[test]
fn reset_ends_the_stream_and_unmapped_ports_stay() {
    let dir = ScratchDir::new("reset");
    let path = dir.join("reset.pcap");
    let capture = DecryptedCapture::open(settings(path.clone())).unwrap();
    let mut stream = CaptureStream::new(
        "10.0.0.1:40001".parse().unwrap(),
        "192.0.2.7:8443".parse().unwrap(),
        CLIENT_MAC,
        SERVER_MAC,
        7,
    );
    stream.data(&capture, true, b"hello", at(0));
    stream.fin(&capture, false, at(1));
    stream.reset(&capture, true, at(2));
    stream.reset(&capture, false, at(3));
    stream.data(&capture, true, b"more", at(4));
    stream.fin(&capture, true, at(5));
    // Handshake 3, data + ACK 2, FIN + ACK 2, RST 1.
    assert_eq!(capture.totals().frames, 8);
    drop(capture);

    let frames: Vec<Vec<u8>> = read_pcap(&path).into_iter().map(|(_, frame)| frame).collect();
    let stream = parse_stream(&frames);
    assert_eq!(stream.server, "192.0.2.7:8443".parse().unwrap());
    assert_eq!(stream.to_server.payload, b"hello");
    assert!(stream.to_client.fin && stream.to_server.rst);
    assert_tshark_clean(&path);
}

#[test]
fn fin_alone_writes_the_handshake_first() {
    let dir = ScratchDir::new("fin-only");
    let path = dir.join("fin.pcap");
    let capture = DecryptedCapture::open(settings(path.clone())).unwrap();
    let mut stream = CaptureStream::new(
        "10.0.0.1:40002".parse().unwrap(),
        "192.0.2.7:443".parse().unwrap(),
        CLIENT_MAC,
        SERVER_MAC,
        1,
    );
    stream.fin(&capture, false, at(0));
    stream.fin(&capture, true, at(1));
    assert_eq!(capture.totals().frames, 7);
    drop(capture);
    let frames: Vec<Vec<u8>> = read_pcap(&path).into_iter().map(|(_, frame)| frame).collect();
    let stream = parse_stream(&frames);
    assert!(stream.to_client.fin && stream.to_server.fin);
}

/// The files of a rotating capture, oldest first: the rotated ones by name
/// time and sequence number, then the current one.
fn capture_files(dir: &Path, current: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(String, u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path != current)
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let rest = name.strip_prefix("cap-").unwrap().strip_suffix(".pcap").unwrap();
            let (stamp, seq) = rest.split_once('-').unwrap();
            assert_eq!(stamp.len(), 15, "{name}");
            assert_eq!(&stamp[8..9], "T", "{name}");
            assert!(
                stamp.chars().filter(|c| *c != 'T').all(|c| c.is_ascii_digit()),
                "{name}"
            );
            (stamp.to_owned(), seq.parse().unwrap(), path)
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, _, path)| path).collect();
    files.push(current.to_owned());
    files
}

#[test]
fn rotation_by_size_splits_into_complete_files() {
    let dir = ScratchDir::new("rotate-size");
    let path = dir.join("cap.pcap");
    let limit = 4000;
    let capture = DecryptedCapture::open(CaptureSettings {
        rotate_bytes: Some(limit),
        ..settings(path.clone())
    })
    .unwrap();
    let response = response(20_000);
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response, 0);
    let written = capture.totals().frames;
    assert_eq!(capture.totals().frames_dropped, 0);
    drop(capture);

    let files = capture_files(&dir.0, &path);
    assert!(files.len() >= 5, "{files:?}");
    let mut frames = Vec::new();
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= limit, "{}", file.display());
        let in_file = read_pcap(file);
        assert!(!in_file.is_empty(), "{}", file.display());
        frames.extend(in_file.into_iter().map(|(_, frame)| frame));
    }
    assert_eq!(frames.len() as u64, written);
    let stream = parse_stream(&frames);
    assert_eq!(stream.to_server.payload, REQUEST);
    assert_eq!(stream.to_client.payload, response);
}

#[test]
fn rotation_by_time_follows_the_timestamps() {
    let dir = ScratchDir::new("rotate-time");
    let path = dir.join("cap.pcap");
    let capture = DecryptedCapture::open(CaptureSettings {
        rotate_secs: Some(1),
        ..settings(path.clone())
    })
    .unwrap();
    let mut stream = CaptureStream::new(
        "10.0.0.1:40000".parse().unwrap(),
        "192.0.2.7:443".parse().unwrap(),
        CLIENT_MAC,
        SERVER_MAC,
        100,
    );
    stream.data(&capture, true, REQUEST, at(0)); // 5 frames: file 1
    stream.data(&capture, false, b"HTTP/1.1 204 No Content\r\n\r\n", at(999)); // 2 frames: file 1
    stream.fin(&capture, true, at(1000)); // 2 frames: file 2
    stream.fin(&capture, false, at(2500)); // 2 frames: file 3
    drop(capture);

    let files = capture_files(&dir.0, &path);
    let per_file: Vec<Vec<(Duration, Vec<u8>)>> = files.iter().map(|file| read_pcap(file)).collect();
    let counts: Vec<usize> = per_file.iter().map(Vec::len).collect();
    assert_eq!(counts, [7, 2, 2], "{files:?}");
    let timestamps: Vec<Duration> = per_file.iter().map(|frames| frames[0].0).collect();
    let base = Duration::from_secs(1_700_000_000);
    assert_eq!(
        timestamps,
        [
            base,
            base + Duration::from_millis(1000),
            base + Duration::from_millis(2500)
        ]
    );
    let frames: Vec<Vec<u8>> = per_file.into_iter().flatten().map(|(_, frame)| frame).collect();
    let stream = parse_stream(&frames);
    assert!(stream.to_server.fin && stream.to_client.fin);
}

#[test]
fn a_previous_file_is_moved_aside_on_open() {
    let dir = ScratchDir::new("reopen");
    let path = dir.join("cap.pcap");
    let capture = DecryptedCapture::open(settings(path.clone())).unwrap();
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response(10), 0);
    drop(capture);
    let first = fs::read(&path).unwrap();

    // Its frames survive under the rotated name; a header-only file is overwritten.
    drop(DecryptedCapture::open(settings(path.clone())).unwrap());
    drop(DecryptedCapture::open(settings(path.clone())).unwrap());
    let files = capture_files(&dir.0, &path);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(fs::read(&files[0]).unwrap(), first);
    assert!(read_pcap(&path).is_empty());
}

#[test]
fn open_fails_with_a_typed_error_naming_the_path() {
    let dir = ScratchDir::new("unwritable");
    let blocker = dir.join("regular-file");
    fs::write(&blocker, b"not a directory").unwrap();
    let path = blocker.join("sub").join("cap.pcap");
    let error = DecryptedCapture::open(settings(path.clone())).unwrap_err();
    assert!(
        matches!(&error, CaptureError::CreateDir { path: named, .. } if *named == path),
        "{error:?}"
    );
    assert!(error.to_string().contains(path.to_str().unwrap()), "{error}");

    let error = DecryptedCapture::open(settings(dir.0.clone())).unwrap_err();
    assert!(
        matches!(&error, CaptureError::Create { path: named, .. } if *named == dir.0),
        "{error:?}"
    );
}

#[test]
fn a_destination_that_cannot_take_the_header_fails_at_open() {
    // Every write to /dev/full fails with ENOSPC: the header is written when
    // the file is created, so this is known at once (and the device is left
    // alone).
    let error = DecryptedCapture::open(settings(PathBuf::from("/dev/full"))).unwrap_err();
    assert!(
        matches!(&error, CaptureError::Write { source, .. } if source.raw_os_error() == Some(28)),
        "{error:?}"
    );
    assert!(fs::metadata("/dev/full").unwrap().file_type().is_char_device());
}

#[test]
fn files_are_readable_by_their_owner_only() {
    let dir = ScratchDir::new("mode");
    let path = dir.join("cap.pcap");
    // A header-only file left by an earlier run, readable by everyone.
    fs::write(&path, [0u8; 24]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let capture = DecryptedCapture::open(CaptureSettings {
        rotate_bytes: Some(4000),
        ..settings(path.clone())
    })
    .unwrap();
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response(20_000), 0);
    drop(capture);
    let files = capture_files(&dir.0, &path);
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[test]
fn max_files_keeps_the_newest_files_as_tcpdump_w_does() {
    let dir = ScratchDir::new("max-files");
    let path = dir.join("cap.pcap");
    // Files of an earlier run count too; other files in the directory do not.
    let earlier = dir.join("cap-20000101T000000-0.pcap");
    fs::write(&earlier, [0u8; 100]).unwrap();
    let unrelated = dir.join("cap-notes.pcap");
    fs::write(&unrelated, b"not ours").unwrap();
    let unlimited = |path: PathBuf, rotate| CaptureSettings {
        rotate_bytes: Some(rotate),
        ..settings(path)
    };
    let capture = DecryptedCapture::open(CaptureSettings {
        max_files: Some(3),
        ..unlimited(path.clone(), 4000)
    })
    .unwrap();
    let response = response(20_000);
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response, 0);
    let written = capture.totals().frames;
    drop(capture);
    assert!(!earlier.exists(), "the oldest file is deleted first");
    assert!(unrelated.exists());
    fs::remove_file(&unrelated).unwrap();
    let kept = capture_files(&dir.0, &path);
    assert_eq!(kept.len(), 3, "{kept:?}");

    // The same capture without the limit: the kept files are its last three.
    let all_dir = ScratchDir::new("max-files-unlimited");
    let all_path = all_dir.join("cap.pcap");
    let capture = DecryptedCapture::open(unlimited(all_path.clone(), 4000)).unwrap();
    http_exchange(&capture, "10.0.0.1:40000", "192.0.2.7:443", &response, 0);
    assert_eq!(capture.totals().frames, written);
    drop(capture);
    let all = capture_files(&all_dir.0, &all_path);
    assert!(all.len() > 3, "{all:?}");
    let contents = |files: &[PathBuf]| files.iter().map(|file| fs::read(file).unwrap()).collect::<Vec<_>>();
    assert!(
        contents(&kept) == contents(&all[all.len() - 3..]),
        "{kept:?} differ from the last of {all:?}"
    );
}

#[test]
fn mixed_address_families_are_counted_as_errors() {
    let dir = ScratchDir::new("mixed");
    let capture = DecryptedCapture::open(settings(dir.join("cap.pcap"))).unwrap();
    let mut stream = CaptureStream::new(
        "10.0.0.1:40000".parse().unwrap(),
        "[fd00::2]:443".parse().unwrap(),
        CLIENT_MAC,
        SERVER_MAC,
        0,
    );
    stream.data(&capture, true, b"x", at(0));
    assert_eq!(capture.totals().frames, 0);
    assert_eq!(capture.totals().frames_dropped, 5);
}

// ---------------------------------------------------------------------------
// A full disk: a small tmpfs as the capture directory (needs root).

/// A tmpfs of `size` mounted on a fresh directory; unmounted (and the
/// directory removed) when dropped.
struct Tmpfs(ScratchDir);

impl Tmpfs {
    fn mount(test: &str, size: &str) -> Tmpfs {
        let dir = ScratchDir::new(test);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs (needs root): {status}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

/// The frames [`http_exchange`] writes with a response of `len` bytes:
/// handshake 3, request + ACK 2, the response's segments + ACK, 2 × (FIN + ACK).
fn exchange_frames(len: usize) -> u64 {
    3 + 2 + len.div_ceil(1460) as u64 + 1 + 4
}

/// Checks that tshark reads `path` without an error and that every packet
/// in it is whole (captured at its full length, nothing malformed); returns
/// how many packets it read.
fn assert_tshark_reads_whole_packets(path: &Path) -> usize {
    let file = path.to_str().unwrap();
    let cut = tshark(&["-r", file, "-Y", "frame.cap_len < frame.len || _ws.malformed"]);
    assert_eq!(cut, "", "{file}: cut or malformed packets");
    tshark(&["-r", file, "-T", "fields", "-e", "frame.number"])
        .lines()
        .count()
}

/// Exchanges of one response size, each on its own client port, 10 ms apart.
struct Traffic {
    body: Vec<u8>,
    port: u16,
    ms: u64,
    /// Frames of every exchange so far.
    frames: u64,
}

impl Traffic {
    fn exchange(&mut self, capture: &DecryptedCapture) {
        let client = format!("10.0.0.1:{}", self.port);
        http_exchange(capture, &client, "192.0.2.7:443", &self.body, self.ms);
        self.frames += exchange_frames(self.body.len());
        self.port += 1;
        self.ms += 10;
    }
}

#[test]
#[ignore = "needs root: tmpfs"]
fn a_full_disk_drops_whole_frames_counts_them_and_leaves_readable_files() {
    let disk = Tmpfs::mount("full-disk", "256k");
    let path = disk.0.join("cap.pcap");
    let capture = DecryptedCapture::open(CaptureSettings {
        rotate_bytes: Some(100_000),
        ..settings(path.clone())
    })
    .unwrap();
    let mut traffic = Traffic {
        body: response(30_000),
        port: 40_000,
        ms: 0,
        frames: 0,
    };
    let per_exchange = exchange_frames(traffic.body.len());
    // Until the disk is full (256 KiB hold fewer than 20 exchanges), and on
    // for 2.5 s of drops and failed retries.
    while capture.totals().frames_dropped == 0 && traffic.ms < 1_000 {
        traffic.exchange(&capture);
    }
    assert!(capture.totals().frames_dropped > 0, "the disk never filled");
    let full_at = traffic.ms;
    while traffic.ms < full_at + 2_500 {
        traffic.exchange(&capture);
    }
    let totals = capture.totals();
    assert_eq!(totals.frames + totals.frames_dropped, traffic.frames, "{totals:?}");
    assert!(totals.bytes_dropped >= totals.frames_dropped * 54, "{totals:?}");
    assert!(totals.frames_dropped > per_exchange, "{totals:?}");

    // Space comes back (an operator deletes the rotated files, complete
    // pcaps): after the retry delay, whole exchanges are written again.
    let mut deleted = 0;
    for file in capture_files(&disk.0 .0, &path).iter().filter(|file| **file != path) {
        deleted += read_pcap(file).len() as u64;
        fs::remove_file(file).unwrap();
    }
    assert!(deleted > 0);
    traffic.ms += 1_000;
    traffic.exchange(&capture);
    let after = capture.totals();
    assert_eq!(after.frames - totals.frames, per_exchange, "{after:?}");
    assert_eq!(after.frames_dropped, totals.frames_dropped, "{after:?}");
    drop(capture);

    // Every file left holds the pcap header and whole records only: the
    // frames counted written are all there, and tshark reads each whole.
    let files = capture_files(&disk.0 .0, &path);
    let mut on_disk = 0;
    for file in &files {
        let len = fs::metadata(file).unwrap().len();
        assert!(len >= 24, "{} is {len} bytes", file.display());
        let frames = read_pcap(file).len();
        assert_eq!(assert_tshark_reads_whole_packets(file), frames, "{}", file.display());
        on_disk += frames as u64;
    }
    assert_eq!(deleted + on_disk, after.frames, "{files:?}");
}
