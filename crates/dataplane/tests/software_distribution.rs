//! Software flow distribution end to end on real DPDK: two `net_pcap`
//! ports (a pcap device has neither RSS nor kernel fanout) bridged by one
//! worker and by two. With two, each port has one receive queue, which
//! worker 0 reads and spreads by the symmetric flow hash over rings, and a
//! transmit queue (its own output file) per worker. The input is every
//! fixture of pcap-fixtures/ plus many synthetic flows (TCP/IPv4, UDP/IPv6
//! with and without VLAN tags, fragments, ICMP echo and unreachable errors
//! quoting a TCP connection, ARP, LLDP, runts, a bad IPv4 checksum), the
//! client→server frames entering the client port and the server→client
//! frames the server port. Checked: every frame but the runts leaves the
//! other port exactly once; each flow (both directions, and the ICMP errors
//! about it) went through one worker, frames without a flow through worker
//! 0; each flow's frames keep their order in each direction and are the
//! same as with one worker; both workers carried frames on both ports; no
//! ring overflowed.
//!
//! The EAL can be initialised once per process, so each data plane runs in
//! a child process: this test binary itself, running only
//! `child_runs_the_dataplane` with the run's settings in its environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use appliance::Config;
use dataplane::Dataplane;
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};

const CHILD_DIR: &str = "TLSGATE_DISTRIBUTION_TEST_DIR";
const CHILD_WORKERS: &str = "TLSGATE_DISTRIBUTION_TEST_WORKERS";

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every frame of a pcap or pcapng file, in order.
fn read_capture(path: &Path) -> Vec<Vec<u8>> {
    let open = || BufReader::new(File::open(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())));
    if let Ok(mut reader) = PcapReader::new(open()) {
        let mut frames = Vec::new();
        while let Some(packet) = reader.next_packet() {
            frames.push(packet.expect("pcap record").data.into_owned());
        }
        return frames;
    }
    let mut reader = PcapNgReader::new(open()).expect("pcap or pcapng");
    let mut frames = Vec::new();
    while let Some(block) = reader.next_block() {
        match block.expect("pcapng block") {
            Block::EnhancedPacket(packet) => frames.push(packet.data.into_owned()),
            Block::SimplePacket(packet) => frames.push(packet.data.into_owned()),
            _ => {}
        }
    }
    frames
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut writer = PcapWriter::new(File::create(path).expect("create")).expect("pcap header");
    for (index, frame) in frames.iter().enumerate() {
        let time = Duration::from_secs(1_700_000_000) + Duration::from_micros(index as u64);
        writer
            .write_packet(&PcapPacket::new(time, frame.len() as u32, frame))
            .expect("write");
    }
}

/// A deterministic pseudo-random sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// --- Frames, built by hand -------------------------------------------------

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(src: [u8; 6], dst: [u8; 6], vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = dst.to_vec();
    frame.extend(src);
    for vid in vlans {
        frame.extend(0x8100u16.to_be_bytes());
        frame.extend(vid.to_be_bytes());
    }
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An IPv4 packet (`more`/`offset`: fragmentation) with a valid checksum.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, more: bool, offset: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x45, 0];
    packet.extend(((20 + payload.len()) as u16).to_be_bytes());
    packet.extend([0x12, 0x34]);
    packet.extend(((u16::from(more) << 13) | offset).to_be_bytes());
    packet.extend([64, proto, 0, 0]);
    packet.extend(src);
    packet.extend(dst);
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend(payload);
    packet
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend((payload.len() as u16).to_be_bytes());
    packet.extend([next_header, 64]);
    packet.extend(src);
    packet.extend(dst);
    packet.extend(payload);
    packet
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut segment = sport.to_be_bytes().to_vec();
    segment.extend(dport.to_be_bytes());
    segment.extend(7_000u32.to_be_bytes());
    segment.extend(9_000u32.to_be_bytes());
    segment.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend(payload);
    segment
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = sport.to_be_bytes().to_vec();
    datagram.extend(dport.to_be_bytes());
    datagram.extend(((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend([0, 0]);
    datagram.extend(payload);
    datagram
}

fn v6(prefix: u16, host: u16) -> [u8; 16] {
    let mut address = [0u8; 16];
    address[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    address[4..6].copy_from_slice(&prefix.to_be_bytes());
    address[14..].copy_from_slice(&host.to_be_bytes());
    address
}

/// Frames that must stay in order (one direction of a flow).
type Stream = Vec<Vec<u8>>;

/// The synthetic input: per stream (a flow direction, or a kind of frame
/// without a flow), its frames in order, client→server and server→client.
/// Every frame carries a serial number, so all are distinct.
fn synthetic() -> (Vec<Stream>, Vec<Stream>) {
    let mut serial = 0u32;
    let mut tag = || {
        serial += 1;
        serial.to_be_bytes().to_vec()
    };
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    // TCP over IPv4: 150 connections, 5 segments each way; ICMP "port
    // unreachable" from a router about 20 of them (server side).
    for flow in 0..150u16 {
        let client = [10, 1, (flow / 200) as u8, (flow % 200 + 1) as u8];
        let server = [203, 0, 113, (flow % 7 + 1) as u8];
        let client_port = 30_000 + flow;
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for segment in 0..5 {
            let flags = if segment == 0 { 0x02 } else { 0x18 };
            let packet = ipv4(client, server, 6, false, 0, &tcp(client_port, 443, flags, &tag()));
            up.push(ethernet(CLIENT_MAC, SERVER_MAC, &[], 0x0800, &packet));
            let flags = if segment == 0 { 0x12 } else { 0x18 };
            let packet = ipv4(server, client, 6, false, 0, &tcp(443, client_port, flags, &tag()));
            down.push(ethernet(SERVER_MAC, CLIENT_MAC, &[], 0x0800, &packet));
        }
        if flow % 7 == 0 {
            let quoted = ipv4(client, server, 6, false, 0, &tcp(client_port, 443, 0x02, &[]));
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend(&quoted);
            icmp.extend(tag());
            let packet = ipv4([192, 0, 2, 254], client, 1, false, 0, &icmp);
            down.push(ethernet(ROUTER_MAC, CLIENT_MAC, &[], 0x0800, &packet));
        }
        to_server.push(up);
        to_client.push(down);
    }
    // UDP over IPv6, every other flow on VLAN 20: 80 flows, 4 each way.
    for flow in 0..80u16 {
        let vlans: &[u16] = if flow % 2 == 0 { &[] } else { &[20] };
        let (client, server) = (v6(1, flow + 1), v6(2, flow % 5 + 1));
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let packet = ipv6(client, server, 17, &udp(5_000 + flow, 53, &tag()));
            up.push(ethernet(CLIENT_MAC, SERVER_MAC, vlans, 0x86dd, &packet));
            let packet = ipv6(server, client, 17, &udp(53, 5_000 + flow, &tag()));
            down.push(ethernet(SERVER_MAC, CLIENT_MAC, vlans, 0x86dd, &packet));
        }
        to_server.push(up);
        to_client.push(down);
    }
    // Fragmented UDP datagrams (3 fragments each) and ICMP echo, both ways.
    for host in 0..12u8 {
        let (a, b) = ([10, 9, 0, host + 1], [10, 9, 1, 1]);
        let (from, to, macs) = if host % 2 == 0 {
            (a, b, (CLIENT_MAC, SERVER_MAC))
        } else {
            (b, a, (SERVER_MAC, CLIENT_MAC))
        };
        let fragments = (0..3u16)
            .map(|index| {
                let mut payload = vec![0x5a; 16];
                payload.extend(tag());
                let packet = ipv4(from, to, 17, index < 2, index * 3, &payload);
                ethernet(macs.0, macs.1, &[], 0x0800, &packet)
            })
            .collect();
        let echo = |from, to, kind: u8, macs: ([u8; 6], [u8; 6]), tag: Vec<u8>| {
            let mut icmp = vec![kind, 0, 0, 0, 0, 1, 0, 1];
            icmp.extend(tag);
            ethernet(macs.0, macs.1, &[], 0x0800, &ipv4(from, to, 1, false, 0, &icmp))
        };
        if host % 2 == 0 {
            to_server.push(fragments);
        } else {
            to_client.push(fragments);
        }
        to_server.push(vec![echo(a, b, 8, (CLIENT_MAC, SERVER_MAC), tag())]);
        to_client.push(vec![echo(b, a, 0, (SERVER_MAC, CLIENT_MAC), tag())]);
    }
    // No flow: ARP, LLDP, a bad IPv4 checksum; runts (dropped).
    for index in 0..10u8 {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend(CLIENT_MAC);
        arp.extend([10, 1, 0, index]);
        arp.extend([0; 6]);
        arp.extend([10, 1, 0, 254]);
        arp.extend(tag());
        to_server.push(vec![ethernet(CLIENT_MAC, [0xff; 6], &[], 0x0806, &arp)]);
        let mut lldp = vec![0x02, 0x07, 0x04];
        lldp.extend(tag());
        lldp.resize(46, 0);
        to_client.push(vec![ethernet(
            SERVER_MAC,
            [1, 0x80, 0xc2, 0, 0, 0xe],
            &[],
            0x88cc,
            &lldp,
        )]);
    }
    for index in 0..4u8 {
        let mut packet = ipv4([10, 3, 0, index], [10, 4, 0, 1], 17, false, 0, &udp(9, 9, &tag()));
        packet[10] ^= 0xff;
        to_server.push(vec![ethernet(CLIENT_MAC, SERVER_MAC, &[], 0x0800, &packet)]);
        to_client.push(vec![vec![0xee; usize::from(index) * 3]]);
    }
    (to_server, to_client)
}

/// Merges streams into one sequence, each stream's frames in order, the
/// streams interleaved pseudo-randomly.
fn interleave(mut streams: Vec<std::collections::VecDeque<Vec<u8>>>, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut merged = Vec::new();
    streams.retain(|stream| !stream.is_empty());
    while !streams.is_empty() {
        let pick = (rng.next() % streams.len() as u64) as usize;
        merged.extend(streams[pick].pop_front());
        if streams[pick].is_empty() {
            streams.swap_remove(pick);
        }
    }
    merged
}

/// The two input files' frames: client→server (entering the client port)
/// and server→client (entering the server port).
fn inputs() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut to_server, mut to_client) = synthetic();
    let fixtures = repo().join("pcap-fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures)
        .expect("pcap-fixtures")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".pcap") || name.ends_with(".pcapng"))
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        // Each file is one stream per direction: the server's frames by
        // their source MAC, everything else from the client side.
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for frame in read_capture(&fixtures.join(&name)) {
            if frame.get(6..12) == Some(&SERVER_MAC[..]) {
                down.push(frame);
            } else {
                up.push(frame);
            }
        }
        to_server.push(up);
        to_client.push(down);
    }
    let mut rng = Rng(0x5eed_00ff_f10e);
    let to_server = interleave(to_server.into_iter().map(Into::into).collect(), &mut rng);
    let to_client = interleave(to_client.into_iter().map(Into::into).collect(), &mut rng);
    (to_server, to_client)
}

// --- Flows, as this test sees them -----------------------------------------

type Endpoint = (Vec<u8>, u16);
/// The unordered pair of endpoints of a frame's flow.
type FlowKey = (Endpoint, Endpoint);

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn key(a: Endpoint, b: Endpoint) -> FlowKey {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The flow a frame belongs to, written independently of the engine from
/// the documented rule: TCP/UDP by their endpoints, ICMP unreachable
/// errors by the TCP segment they quote, other IP (fragments, ICMP) by the
/// addresses; `None` for non-IP frames, runts and headers that fail
/// validation (the frames worker 0 gets).
fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let mut at = 12;
    let mut ethertype = be16(frame, at)?;
    for _ in 0..2 {
        if matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            at += 4;
            ethertype = be16(frame, at)?;
        }
    }
    let ip = frame.get(at + 2..)?;
    match ethertype {
        0x0800 => {
            let header = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            if ip[0] >> 4 != 4 || header < 20 || total < header || total > ip.len() || checksum(&ip[..header]) != 0 {
                return None;
            }
            let (src, dst) = (ip[12..16].to_vec(), ip[16..20].to_vec());
            let addresses = key((src.clone(), 0), (dst.clone(), 0));
            if be16(ip, 6)? & 0x3fff != 0 {
                return Some(addresses);
            }
            upper_layer(ip[9], src, dst, &ip[header..total], addresses, 1)
        }
        0x86dd => {
            let total = 40 + usize::from(be16(ip, 4)?);
            if ip.first()? >> 4 != 6 || total > ip.len() {
                return None;
            }
            let (src, dst) = (ip[8..24].to_vec(), ip[24..40].to_vec());
            let addresses = key((src.clone(), 0), (dst.clone(), 0));
            upper_layer(ip[6], src, dst, &ip[40..total], addresses, 58)
        }
        _ => None,
    }
}

fn upper_layer(proto: u8, src: Vec<u8>, dst: Vec<u8>, l4: &[u8], addresses: FlowKey, icmp: u8) -> Option<FlowKey> {
    match proto {
        6 => {
            let header = usize::from(*l4.get(12)? >> 4) * 4;
            (l4.len() >= 20 && header >= 20 && header <= l4.len())
                .then(|| key((src, be16(l4, 0).unwrap()), (dst, be16(l4, 2).unwrap())))
        }
        17 => {
            let len = usize::from(be16(l4, 4)?);
            (len >= 8 && len <= l4.len()).then(|| key((src, be16(l4, 0).unwrap()), (dst, be16(l4, 2).unwrap())))
        }
        _ if proto == icmp => {
            if l4.len() < if icmp == 1 { 8 } else { 4 } {
                return None;
            }
            let unreachable = if icmp == 1 { 3 } else { 1 };
            Some(
                (l4[0] == unreachable)
                    .then(|| quoted_tcp(l4.get(8..)?))
                    .flatten()
                    .unwrap_or(addresses),
            )
        }
        _ => Some(addresses),
    }
}

/// The endpoints of the TCP segment an unreachable error quotes.
fn quoted_tcp(quoted: &[u8]) -> Option<FlowKey> {
    let (src, dst, header) = match quoted.first()? >> 4 {
        4 => {
            let header = usize::from(quoted[0] & 0x0f) * 4;
            if quoted.len() < 20 || header < 20 || quoted[9] != 6 {
                return None;
            }
            (quoted[12..16].to_vec(), quoted[16..20].to_vec(), header)
        }
        6 => {
            if *quoted.get(6)? != 6 || quoted.len() < 40 {
                return None;
            }
            (quoted[8..24].to_vec(), quoted[24..40].to_vec(), 40)
        }
        _ => return None,
    };
    let ports = quoted.get(header..header + 8)?;
    Some(key((src, be16(ports, 0)?), (dst, be16(ports, 2)?)))
}

/// A runt: shorter than its Ethernet header with up to two VLAN tags.
fn is_runt(frame: &[u8]) -> bool {
    let is_tag = |at: usize| matches!(frame.get(at..at + 2), Some([0x81, 0x00] | [0x88, 0xa8] | [0x91, 0x00]));
    let mut header = 14;
    for tag_at in [12, 16] {
        if frame.len() >= tag_at + 2 && is_tag(tag_at) {
            header += 4;
        } else {
            break;
        }
    }
    frame.len() < header
}

/// The frames of each flow in order (frames without a flow under `None`).
fn by_flow(frames: &[Vec<u8>]) -> BTreeMap<Option<FlowKey>, Vec<Vec<u8>>> {
    let mut flows: BTreeMap<Option<FlowKey>, Vec<Vec<u8>>> = BTreeMap::new();
    for frame in frames {
        flows.entry(flow_key(frame)).or_default().push(frame.clone());
    }
    flows
}

// --- Runs ------------------------------------------------------------------

/// What one data plane run left: per worker, the frames it sent out of the
/// server port (client→server) and out of the client port, and its counters.
struct Run {
    to_server: Vec<Vec<Vec<u8>>>,
    to_client: Vec<Vec<Vec<u8>>>,
    counters: serde_json::Value,
}

fn run(scratch: &Path, workers: usize) -> Run {
    let dir = scratch.join(format!("workers-{workers}"));
    std::fs::create_dir_all(&dir).expect("run dir");
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_runs_the_dataplane", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, &dir)
        .env(CHILD_WORKERS, workers.to_string())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the child");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{workers} worker(s):\n{log}");
    let counters: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("counters.json")).expect("counters.json")).expect("json");
    assert_eq!(
        counters["finished"], true,
        "{workers} worker(s) did not finish: {counters}\n{log}"
    );
    Run {
        to_server: (0..workers)
            .map(|queue| read_capture(&dir.join(format!("server-out-{queue}.pcap"))))
            .collect(),
        to_client: (0..workers)
            .map(|queue| read_capture(&dir.join(format!("client-out-{queue}.pcap"))))
            .collect(),
        counters,
    }
}

/// Per flow, the one worker whose output holds its frames (both
/// directions); fails if a flow's frames left through two workers.
fn worker_of_each_flow(run: &Run) -> HashMap<Option<FlowKey>, usize> {
    let mut owners = HashMap::new();
    for outputs in [&run.to_server, &run.to_client] {
        for (worker, frames) in outputs.iter().enumerate() {
            for frame in frames {
                let owner = *owners.entry(flow_key(frame)).or_insert(worker);
                assert_eq!(
                    owner,
                    worker,
                    "a frame of flow {:?} left through two workers",
                    flow_key(frame)
                );
            }
        }
    }
    owners
}

/// Checks one direction of a run against its input: every frame but the
/// runts leaves exactly once, each flow's frames in their input order.
fn check_direction(input: &[Vec<u8>], outputs: &[Vec<Vec<u8>>], owners: &HashMap<Option<FlowKey>, usize>, what: &str) {
    let bridged: Vec<Vec<u8>> = input.iter().filter(|frame| !is_runt(frame)).cloned().collect();
    assert!(bridged.len() < input.len(), "{what}: the input has runts");
    let sent: usize = outputs.iter().map(Vec::len).sum();
    assert_eq!(sent, bridged.len(), "{what}: frames out");
    for (flow, frames) in by_flow(&bridged) {
        let owner = owners[&flow];
        let out = by_flow(&outputs[owner]).remove(&flow).unwrap_or_default();
        assert!(
            out == frames,
            "{what}: flow {flow:?} left worker {owner} changed or reordered"
        );
    }
}

#[test]
fn two_workers_bridge_every_flow_as_one_worker_does() {
    let scratch = std::env::temp_dir().join(format!("tlsgate-distribution-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    let (to_server, to_client) = inputs();
    write_pcap(&scratch.join("client-in.pcap"), &to_server);
    write_pcap(&scratch.join("server-in.pcap"), &to_client);
    let flows = by_flow(&to_server.iter().chain(&to_client).cloned().collect::<Vec<_>>());
    assert!(flows.len() > 250, "{} flows", flows.len());

    let one = run(&scratch, 1);
    let two = run(&scratch, 2);
    for (run, workers) in [(&one, 1), (&two, 2)] {
        let owners = worker_of_each_flow(run);
        check_direction(
            &to_server,
            &run.to_server,
            &owners,
            &format!("{workers} worker(s), client→server"),
        );
        check_direction(
            &to_client,
            &run.to_client,
            &owners,
            &format!("{workers} worker(s), server→client"),
        );
        assert_eq!(owners.get(&None), Some(&0), "frames without a flow go to worker 0");
    }

    // The same frames per flow and direction as with one worker.
    for (one_out, two_out, what) in [
        (&one.to_server, &two.to_server, "client→server"),
        (&one.to_client, &two.to_client, "server→client"),
    ] {
        let one_flows = by_flow(&one_out[0]);
        let mut two_flows = by_flow(&two_out[0]);
        for (flow, frames) in by_flow(&two_out[1]) {
            assert!(
                two_flows.insert(flow, frames).is_none(),
                "{what}: a flow on both workers"
            );
        }
        assert!(
            one_flows == two_flows,
            "{what}: two workers bridged differently from one"
        );
    }

    // Both workers carried frames of both ports; the counters agree.
    let owners = worker_of_each_flow(&two);
    let per_worker = |worker| owners.values().filter(|owner| **owner == worker).count();
    assert!(
        per_worker(1) > 50 && per_worker(0) > 50,
        "flows per worker: {} / {}",
        per_worker(0),
        per_worker(1)
    );
    let counters = &two.counters;
    for worker in 0..2 {
        for (port, frames_out) in [(0, &two.to_server), (1, &two.to_client)] {
            let totals = &counters["worker_ports"][worker][port];
            assert!(
                !frames_out[worker].is_empty(),
                "worker {worker} sent nothing from port {port}"
            );
            assert!(
                totals["rx"].as_u64().unwrap() > 0,
                "worker {worker}, port {port}: {counters}"
            );
            assert_eq!(
                totals["bridged"].as_u64().unwrap(),
                frames_out[worker].len() as u64,
                "worker {worker}, port {port}: {counters}"
            );
        }
    }
    for (port, input) in [(0, &to_server), (1, &to_client)] {
        let distribution = &counters["distribution"][port];
        let (kept, handed_off, ring_full) = (
            distribution["kept"].as_u64().unwrap(),
            distribution["handed_off"].as_u64().unwrap(),
            distribution["ring_full"].as_u64().unwrap(),
        );
        assert_eq!(ring_full, 0, "port {port}: {counters}");
        assert_eq!(kept + handed_off, input.len() as u64, "port {port}: {counters}");
        assert_eq!(
            handed_off,
            counters["worker_ports"][1][port]["rx"].as_u64().unwrap(),
            "port {port}: worker 1 received what worker 0 handed over"
        );
        assert_eq!(counters["report"]["ports"][port]["rx"], input.len() as u64);
    }
    assert!(
        one.counters["distribution"]
            .as_array()
            .unwrap()
            .iter()
            .all(serde_json::Value::is_null),
        "one worker: no distribution"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The data plane of one run, in a child process (see the module docs);
/// does nothing when run as an ordinary test.
#[test]
fn child_runs_the_dataplane() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    let workers: usize = std::env::var(CHILD_WORKERS)
        .expect("workers")
        .parse()
        .expect("a number");
    let input = |name: &str| dir.parent().expect("scratch").join(name);
    let device = |index: usize, input: PathBuf, output: &str| {
        let mut spec = format!("net_pcap{index},rx_pcap={}", input.display());
        for queue in 0..workers {
            spec.push_str(&format!(
                ",tx_pcap={}",
                dir.join(format!("{output}-{queue}.pcap")).display()
            ));
        }
        spec
    };
    let expected = [
        read_capture(&input("client-in.pcap")).len() as u64,
        read_capture(&input("server-in.pcap")).len() as u64,
    ];
    // Every lcore on the first CPU this process may use: correctness, not
    // speed, is tested, and any machine has one CPU.
    let cpu = dpdk::current_thread_cpus()
        .and_then(|cpus| cpus.split([',', '-']).next().map(str::to_owned))
        .unwrap_or_else(|| "0".into());
    let lcores = (0..=workers)
        .map(|lcore| format!("{lcore}@{cpu}"))
        .collect::<Vec<_>>()
        .join(",");
    let text = format!(
        r#"
[dataplane]
eal_args = ["--no-huge", "-m", "512", "--no-shconf", "--no-pci", "--lcores", "{lcores}", "--log-level=lib.eal:error"]
workers = {workers}
mbufs = 32767
rx_descriptors = 4096
idle_sleep_max_us = 50

[ports.client]
device = "{client}"

[ports.server]
device = "{server}"
"#,
        client = device(0, input("client-in.pcap"), "client-out"),
        server = device(1, input("server-in.pcap"), "server-out"),
    );
    // Worker w sends the client→server frames it bridges on the server
    // port's transmit queue w ("server-out-w"), the server→client ones on
    // the client port's ("client-out-w").
    let config = Config::parse(&text, Path::new("distribution-test.toml")).expect("config");
    let mut dataplane = Dataplane::open(&config, None, None).expect("data plane");
    let (stop, hangup) = (AtomicBool::new(false), AtomicBool::new(false));
    let started = Instant::now();
    let mut finished = false;
    dataplane
        .run(&stop, &hangup, Duration::from_millis(10), |report| {
            let done = report.ports.iter().zip(expected).all(|(port, expected)| {
                let totals = port.totals;
                totals.rx == expected && totals.bridged + totals.dropped + totals.intercepted == totals.rx
            });
            if done || started.elapsed() > Duration::from_secs(120) {
                finished = done;
                stop.store(true, Ordering::Relaxed);
            }
        })
        .expect("run");
    let counters = serde_json::json!({
        "finished": finished,
        "worker_ports": dataplane.worker_ports(),
        "distribution": dataplane.distribution(),
        "report": dataplane.report(),
    });
    // Closing the ports flushes the output files.
    drop(dataplane);
    std::fs::write(dir.join("counters.json"), counters.to_string()).expect("counters.json");
}
