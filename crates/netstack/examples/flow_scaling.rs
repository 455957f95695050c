//! Per-packet cost of the transparent TCP stack with many live flows.
//!
//! For each N in `--flows` (default 1000,100000,1000000) a fresh child
//! process (so RSS and allocator state are per N) acts as N clients
//! (198.18.0.0/16, many source ports) talking to `--servers` server addresses
//! (198.19.0.x:443): it sends a SYN per flow ([`Stack::accept`], SYN-ACK not
//! held), reads the stack's ISN from the SYN-ACK and completes the handshake
//! with an ACK ([`Stack::lookup`] + [`Stack::ingress`]), so N flows are
//! Established. It then delivers rounds of `--packets` data segments (1-100
//! payload bytes, in-sequence) to flows drawn uniformly at random over all N
//! (cold caches, like real traffic), alternating round by round with rounds
//! to `--hot` flows only (warm caches: isolates algorithmic growth from
//! memory-hierarchy growth): the first ones, set up one after the other and
//! so compact in memory, and as many scattered at random over the table
//! (same cache footprint, but spread over many more pages). Per segment
//! the timed work is what a relay does: lookup, ingress, the events (reading
//! what became readable), flush and draining the output. `poll_timers` runs
//! after every burst of 32 segments, timed separately, and once more while
//! idle to show the timer-wheel scan. Last, a pointer chase over as much
//! memory as the flows took prices one dependent miss at that size.
//!
//! A real clock drives the stack (`now` read once per burst); `timeout` is
//! the appliance default (10 s). The flows set up first stay idle for the
//! whole setup, so they must outlive it: the stack applies `timeout` only
//! while a flow waits for its peer (smoltcp 0.14's own timeout would also
//! close idle connections). An idle-timeout probe, printed first, checks it.
//!
//! ```text
//! cargo run --release -p netstack --example flow_scaling -- \
//!     [--flows 1000,100000,1000000] [--packets 200000] [--rounds 7] [--hot 1000] \
//!     [--buffer 1024] [--servers 16] [--timeout-secs 10]
//! ```
//!
//! Progress goes to stderr; the Markdown table to stdout.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Instant as WallInstant;

use netstack::{Duration, EventKind, FlowId, Instant, OutFrame, Stack, StackConfig};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};
use wire::FrameClass;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Segments per burst: `now` is read and `poll_timers` runs once per burst.
const BURST: usize = 32;
/// Distinct client addresses; further flows use further source ports.
const CLIENT_HOSTS: usize = 65_000;
const PAYLOAD: [u8; 100] = [0x61; 100];
const RESULT_TAG: &str = "flow_scaling-result";
/// Virtual 1 ms ticks the idle timer-wheel measurement advances by.
const IDLE_TICKS: u64 = 4096;

#[derive(Debug, Clone)]
struct Options {
    flows: Vec<usize>,
    packets: usize,
    rounds: usize,
    hot: usize,
    buffer: usize,
    servers: u32,
    timeout_secs: u64,
    /// Set in a child process: measure this one N and print a result line.
    child: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flows: vec![1_000, 100_000, 1_000_000],
            packets: 200_000,
            rounds: 7,
            hot: 1_000,
            buffer: 1024,
            servers: 16,
            timeout_secs: 10,
            child: None,
        }
    }
}

const USAGE: &str = "usage: flow_scaling [--flows N,N,...] [--packets M] [--rounds R] [--hot H] \
[--buffer BYTES] [--servers K] [--timeout-secs S]";

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T> {
    let value = value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{flag} {value}: not a number\n{USAGE}").into())
}

fn parse_options() -> Result<Options> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--flows" => {
                let list = args.next().ok_or_else(|| format!("--flows needs a value\n{USAGE}"))?;
                options.flows = list
                    .split(',')
                    .map(|item| number("--flows", Some(item.to_string())))
                    .collect::<Result<_>>()?;
            }
            "--packets" => options.packets = number(&flag, args.next())?,
            "--rounds" => options.rounds = number(&flag, args.next())?,
            "--hot" => options.hot = number(&flag, args.next())?,
            "--buffer" => options.buffer = number(&flag, args.next())?,
            "--servers" => options.servers = number(&flag, args.next())?,
            "--timeout-secs" => options.timeout_secs = number(&flag, args.next())?,
            "--child" => options.child = Some(number(&flag, args.next())?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    if options.flows.contains(&0) || options.packets == 0 || options.rounds == 0 || options.servers == 0 {
        return Err(format!("flows, packets, rounds and servers must be > 0\n{USAGE}").into());
    }
    Ok(options)
}

/// SplitMix64: a small, fast, seedable generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0; the modulo bias is negligible).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// The stack's clock: wall time since start, plus any virtual skip forward
/// (so it never goes backwards).
struct Clock {
    start: WallInstant,
    skipped_micros: i64,
}

impl Clock {
    fn now(&self) -> Instant {
        let micros = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        Instant::from_micros(micros.saturating_add(self.skipped_micros))
    }

    fn skip(&mut self, by: Duration) {
        let micros = i64::try_from(by.total_micros()).unwrap_or(i64::MAX);
        self.skipped_micros = self.skipped_micros.saturating_add(micros);
    }
}

/// The client and server ends of flow `index`.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    client: Ipv4Addr,
    server: Ipv4Addr,
    client_port: u16,
    server_port: u16,
}

fn endpoints(index: usize, servers: u32) -> Result<Endpoints> {
    let host = u32::try_from(index % CLIENT_HOSTS + 1)?;
    let client_port = u16::try_from(1024 + index / CLIENT_HOSTS).map_err(|_| "too many flows for the port range")?;
    let server = u32::try_from(index % servers as usize + 1)?;
    Ok(Endpoints {
        client: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host),
        server: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + server),
        client_port,
        server_port: 443,
    })
}

/// Writes into `frame` the Ethernet/IPv4/TCP frame the client of `ends`
/// sends, with correct checksums, padded to the 60-byte Ethernet minimum.
fn build_frame(frame: &mut Vec<u8>, ends: &Endpoints, control: TcpControl, seq: u32, ack: Option<u32>, data: &[u8]) {
    let tcp = TcpRepr {
        src_port: ends.client_port,
        dst_port: ends.server_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|ack| TcpSeqNumber(ack as i32)),
        window_len: 65_535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: data,
    };
    let ip = Ipv4Repr {
        src_addr: ends.client,
        dst_addr: ends.server,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let len = 14 + ip.buffer_len() + tcp.buffer_len();
    frame.clear();
    frame.resize(len.max(60), 0);
    frame[..6].copy_from_slice(&SERVER_MAC);
    frame[6..12].copy_from_slice(&CLIENT_MAC);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let caps = ChecksumCapabilities::default();
    let mut ip_packet = Ipv4Packet::new_unchecked(&mut frame[14..len]);
    ip.emit(&mut ip_packet, &caps);
    let mut tcp_packet = TcpPacket::new_unchecked(ip_packet.payload_mut());
    tcp.emit(
        &mut tcp_packet,
        &IpAddress::Ipv4(ends.client),
        &IpAddress::Ipv4(ends.server),
        &caps,
    );
}

/// The stack's ISN, from its SYN-ACK answering a SYN with `client_isn`.
fn parse_synack(frame: &[u8], client_isn: u32) -> Result<u32> {
    let ip = Ipv4Packet::new_checked(frame.get(14..).ok_or("short SYN-ACK frame")?)?;
    let tcp = TcpPacket::new_checked(ip.payload())?;
    if !(tcp.syn() && tcp.ack()) || tcp.ack_number() != TcpSeqNumber(client_isn.wrapping_add(1) as i32) {
        return Err(format!("expected a SYN-ACK of {client_isn}+1, got {tcp}").into());
    }
    Ok(tcp.seq_number().0 as u32)
}

/// Opens flow `index` with a full three-way handshake; returns its id and
/// the sequence number the client acknowledges from now on.
fn establish(
    stack: &mut Stack,
    index: usize,
    ends: &Endpoints,
    client_isn: u32,
    frame: &mut Vec<u8>,
    out: &mut Vec<OutFrame>,
    now: Instant,
) -> Result<(FlowId, u32)> {
    build_frame(frame, ends, TcpControl::Syn, client_isn, None, &[]);
    let class = wire::classify(frame)?;
    let id = stack.accept(0, frame, &class, false, index as u64, now)?;
    out.clear();
    stack.drain_output(out);
    let synack = out.first().ok_or("the stack sent no SYN-ACK")?;
    let server_next = parse_synack(&synack.frame, client_isn)?.wrapping_add(1);
    out.clear();
    build_frame(
        frame,
        ends,
        TcpControl::None,
        client_isn.wrapping_add(1),
        Some(server_next),
        &[],
    );
    let class = wire::classify(frame)?;
    let (tuple, _) = class.tcp().ok_or("the ACK is not a TCP candidate")?;
    if stack.lookup(0, tuple) != Some(id) {
        return Err(format!("the handshake ACK of flow {index} does not look up its flow").into());
    }
    stack.ingress(id, frame, &class, now)?;
    stack.drain_output(out);
    out.clear();
    Ok((id, server_next))
}

/// Kilobytes of resident memory of this process.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Prepared data segments: all frames in one arena, so the benchmark
/// itself neither allocates nor frees per frame (freeing 10^5 small frames
/// at once makes glibc's `malloc_consolidate` stall a later allocation
/// inside the stack for tens of milliseconds).
#[derive(Default)]
struct Segments {
    bytes: Vec<u8>,
    /// Start and end of each frame in `bytes`, and its classification.
    items: Vec<(usize, usize, FrameClass)>,
}

/// The client side of every flow: next sequence number to send and what it
/// acknowledges.
struct Clients {
    ends: Vec<Endpoints>,
    seq: Vec<u32>,
    ack: Vec<u32>,
}

impl Clients {
    /// Fills `into` with `count` in-sequence data segments to flows drawn
    /// by `pick`.
    fn segments(
        &mut self,
        into: &mut Segments,
        count: usize,
        rng: &mut Rng,
        mut pick: impl FnMut(&mut Rng) -> usize,
    ) -> Result<()> {
        into.bytes.clear();
        into.items.clear();
        let mut frame = Vec::with_capacity(256);
        for _ in 0..count {
            let flow = pick(rng);
            let len = 1 + rng.below(PAYLOAD.len());
            let (ends, seq, ack) = (
                self.ends.get(flow).ok_or("flow out of range")?,
                self.seq.get_mut(flow).ok_or("flow out of range")?,
                self.ack.get(flow).ok_or("flow out of range")?,
            );
            build_frame(&mut frame, ends, TcpControl::Psh, *seq, Some(*ack), &PAYLOAD[..len]);
            *seq = seq.wrapping_add(len as u32);
            let class = wire::classify(&frame)?;
            let start = into.bytes.len();
            into.bytes.extend_from_slice(&frame);
            into.items.push((start, into.bytes.len(), class));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct RoundStats {
    packets: u64,
    packet_ns: u64,
    timer_calls: u64,
    timer_ns: u64,
    frames_out: u64,
    timer_frames: u64,
    bytes_in: u64,
    bytes_read: u64,
    lost_flows: u64,
}

fn nanos(since: WallInstant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Reads whatever became readable; counts flows that went away.
fn handle_events(stack: &mut Stack, scratch: &mut [u8], stats: &mut RoundStats) -> Result<()> {
    while let Some(event) = stack.next_event() {
        match event.kind {
            EventKind::Readable => loop {
                let read = stack.recv(event.flow, scratch)?;
                if read == 0 {
                    break;
                }
                stats.bytes_read += read as u64;
            },
            EventKind::Closed => stats.lost_flows += 1,
            _ => {}
        }
    }
    Ok(())
}

/// Delivers `segments` in bursts of [`BURST`], timing the per-segment work
/// and `poll_timers` separately.
fn run_round(stack: &mut Stack, segments: &Segments, clock: &Clock) -> Result<RoundStats> {
    let mut stats = RoundStats::default();
    let mut out = Vec::with_capacity(4 * BURST);
    let mut scratch = vec![0u8; 4096];
    for burst in segments.items.chunks(BURST) {
        let now = clock.now();
        let started = WallInstant::now();
        for (start, end, class) in burst {
            let frame = segments.bytes.get(*start..*end).ok_or("segment out of range")?;
            let (tuple, info) = class.tcp().ok_or("not a TCP candidate")?;
            let flow = stack.lookup(0, tuple).ok_or("a data segment matches no flow")?;
            stack.ingress(flow, frame, class, now)?;
            handle_events(stack, &mut scratch, &mut stats)?;
            stack.flush(now);
            stack.drain_output(&mut out);
            stats.frames_out += out.len() as u64;
            out.clear();
            stats.bytes_in += info.payload_len as u64;
        }
        stats.packet_ns += nanos(started);
        stats.packets += burst.len() as u64;

        let started = WallInstant::now();
        stack.poll_timers(now);
        handle_events(stack, &mut scratch, &mut stats)?;
        stack.flush(now);
        stack.drain_output(&mut out);
        stats.frames_out += out.len() as u64;
        stats.timer_frames += out.len() as u64;
        out.clear();
        stats.timer_ns += nanos(started);
        stats.timer_calls += 1;
    }
    Ok(stats)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[len / 2],
        len => (values[len / 2 - 1] + values[len / 2]) / 2.0,
    }
}

/// Medians over the rounds of one workload.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    /// The per-segment path: lookup, ingress, events, recv, flush, drain.
    ingress_ns: f64,
    /// The same plus the segment's share of `poll_timers` (delayed ACKs).
    all_in_ns: f64,
    timer_ns_per_call: f64,
    total: RoundStats,
}

/// A named way of drawing the flow each segment goes to.
type Workload<'a> = (&'a str, &'a dyn Fn(&mut Rng) -> usize);

/// Rounds of segments for each workload, the workloads alternating round by
/// round so that interference from other tenants hits them alike.
fn measure(
    stack: &mut Stack,
    clients: &mut Clients,
    clock: &Clock,
    options: &Options,
    rng: &mut Rng,
    workloads: &[Workload<'_>],
) -> Result<Vec<Measured>> {
    let mut segments = Segments::default();
    // One short warm-up round each: output vectors, allocator, predictors.
    for (_, pick) in workloads {
        clients.segments(&mut segments, (options.packets / 4).max(BURST), rng, pick)?;
        run_round(stack, &segments, clock)?;
    }
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new(), RoundStats::default()); workloads.len()];
    for round in 0..options.rounds {
        for ((label, pick), (ingress, all_in, timer, total)) in workloads.iter().zip(samples.iter_mut()) {
            clients.segments(&mut segments, options.packets, rng, pick)?;
            let stats = run_round(stack, &segments, clock)?;
            let packets = stats.packets as f64;
            ingress.push(stats.packet_ns as f64 / packets);
            all_in.push((stats.packet_ns + stats.timer_ns) as f64 / packets);
            timer.push(stats.timer_ns as f64 / stats.timer_calls as f64);
            eprintln!(
                "  {label} round {round}: {:.0} ns/segment ({:.0} with timers), poll_timers {:.0} ns/call, \
                 {:.2} frames out/segment ({:.2} from timers)",
                stats.packet_ns as f64 / packets,
                (stats.packet_ns + stats.timer_ns) as f64 / packets,
                stats.timer_ns as f64 / stats.timer_calls as f64,
                stats.frames_out as f64 / packets,
                stats.timer_frames as f64 / packets,
            );
            total.packets += stats.packets;
            total.packet_ns += stats.packet_ns;
            total.timer_calls += stats.timer_calls;
            total.timer_ns += stats.timer_ns;
            total.frames_out += stats.frames_out;
            total.timer_frames += stats.timer_frames;
            total.bytes_in += stats.bytes_in;
            total.bytes_read += stats.bytes_read;
            total.lost_flows += stats.lost_flows;
        }
    }
    Ok(samples
        .into_iter()
        .map(|(mut ingress, mut all_in, mut timer, total)| Measured {
            ingress_ns: median(&mut ingress),
            all_in_ns: median(&mut all_in),
            timer_ns_per_call: median(&mut timer),
            total,
        })
        .collect())
}

/// Measures one N; returns the fields of the result line.
fn measure_flows(flows: usize, options: &Options) -> Result<BTreeMap<&'static str, String>> {
    let mut result = BTreeMap::new();
    let mut clock = Clock {
        start: WallInstant::now(),
        skipped_micros: 0,
    };
    let mut rng = Rng(0x7153_2024 ^ flows as u64);
    let config = StackConfig {
        rx_buffer: options.buffer,
        tx_buffer: options.buffer,
        timeout: Duration::from_secs(options.timeout_secs),
        max_flows: flows,
        ..StackConfig::default()
    };
    let rss_before = rss_kib();
    let mut stack = Stack::new(1, config, clock.now(), 1);
    let mut clients = Clients {
        ends: Vec::with_capacity(flows),
        seq: Vec::with_capacity(flows),
        ack: Vec::with_capacity(flows),
    };
    let mut frame = Vec::with_capacity(128);
    let mut out = Vec::new();
    let mut connected = 0usize;
    let setup_started = WallInstant::now();
    for index in 0..flows {
        let ends = endpoints(index, options.servers)?;
        let isn = rng.next() as u32;
        let (_, server_next) = establish(&mut stack, index, &ends, isn, &mut frame, &mut out, clock.now())?;
        while let Some(event) = stack.next_event() {
            if event.kind == EventKind::Connected {
                connected += 1;
            }
        }
        clients.ends.push(ends);
        clients.seq.push(isn.wrapping_add(1));
        clients.ack.push(server_next);
        if index % 1024 == 1023 {
            stack.poll_timers(clock.now());
            stack.drain_output(&mut out);
            out.clear();
        }
        if index % 100_000 == 99_999 {
            eprintln!(
                "  {} flows established, {:.1} s",
                index + 1,
                setup_started.elapsed().as_secs_f64()
            );
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    // The SYN-ACK retransmission deadlines left stale entries in the wheel;
    // skip past them (the flows' own timeout is far away) and sweep once.
    clock.skip(Duration::from_secs(2));
    let sweep_started = WallInstant::now();
    let entries_before_sweep = stack.timer_entries();
    stack.poll_timers(clock.now());
    let sweep_ms = sweep_started.elapsed().as_secs_f64() * 1e3;
    stack.drain_output(&mut out);
    let swept_frames = out.len();
    out.clear();
    while stack.next_event().is_some() {}
    if connected != flows || stack.live_flows() != flows {
        return Err(format!(
            "setup: {connected} Connected events, {} live flows, {flows} expected",
            stack.live_flows()
        )
        .into());
    }
    let rss_after = rss_kib();
    eprintln!(
        "  setup of {flows} flows: {setup_s:.1} s; RSS {} MiB; post-setup sweep of {entries_before_sweep} wheel \
         entries {sweep_ms:.1} ms ({swept_frames} frames)",
        rss_after / 1024
    );
    result.insert("flows", flows.to_string());
    result.insert("setup_s", format!("{setup_s:.2}"));
    result.insert("memory_per_flow", stack.memory_per_flow().to_string());
    result.insert("rss_mib", format!("{:.0}", rss_after as f64 / 1024.0));
    result.insert(
        "rss_per_flow",
        format!(
            "{:.0}",
            (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / flows as f64
        ),
    );
    result.insert("sweep_ms", format!("{sweep_ms:.1}"));

    // Hot sets: the first flows (allocated one after the other, so compact
    // in memory) and as many scattered at random over the table.
    let hot_len = options.hot.clamp(1, flows);
    let scattered: Vec<usize> = (0..hot_len).map(|_| rng.below(flows)).collect();
    let cold_pick = |rng: &mut Rng| rng.below(flows);
    let compact_pick = |rng: &mut Rng| rng.below(hot_len);
    let scattered_pick = |rng: &mut Rng| scattered.get(rng.below(hot_len)).copied().unwrap_or(0);
    let measured = measure(
        &mut stack,
        &mut clients,
        &clock,
        options,
        &mut rng,
        &[
            ("all flows", &cold_pick),
            ("hot compact", &compact_pick),
            ("hot scattered", &scattered_pick),
        ],
    )?;
    let (cold, hot, scattered) = match measured.as_slice() {
        [cold, hot, scattered] => (*cold, *hot, *scattered),
        _ => return Err("expected three workloads".into()),
    };

    // Let the pending delayed ACKs go first.
    clock.skip(Duration::from_millis(20));
    stack.poll_timers(clock.now());
    stack.drain_output(&mut out);
    out.clear();
    while stack.next_event().is_some() {}
    // The wheel while nothing is due: each call advances the clock by one
    // 1 ms tick, so it scans exactly one slot, holding its share of every
    // entry (live and stale) in the wheel; a whole round of slots is timed.
    let entries_idle = stack.timer_entries();
    let mut idle_ns = 0u64;
    for _ in 0..IDLE_TICKS {
        clock.skip(Duration::from_millis(1));
        let now = clock.now();
        let started = WallInstant::now();
        stack.poll_timers(now);
        stack.drain_output(&mut out);
        idle_ns += nanos(started);
        out.clear();
        while stack.next_event().is_some() {}
    }

    let lost = cold.total.lost_flows + hot.total.lost_flows + scattered.total.lost_flows;
    let unread = [cold, hot, scattered]
        .iter()
        .map(|measured| measured.total.bytes_in.saturating_sub(measured.total.bytes_read))
        .sum::<u64>();
    let per_segment = |total: &RoundStats, count: u64| count as f64 / total.packets as f64;
    result.insert("ns_cold", format!("{:.0}", cold.ingress_ns));
    result.insert("ns_cold_all", format!("{:.0}", cold.all_in_ns));
    result.insert("ns_hot", format!("{:.0}", hot.ingress_ns));
    result.insert("ns_hot_all", format!("{:.0}", hot.all_in_ns));
    result.insert("ns_scattered", format!("{:.0}", scattered.ingress_ns));
    result.insert("timer_ns_cold", format!("{:.0}", cold.timer_ns_per_call));
    result.insert("timer_ns_hot", format!("{:.0}", hot.timer_ns_per_call));
    result.insert(
        "frames_cold",
        format!("{:.2}", per_segment(&cold.total, cold.total.frames_out)),
    );
    result.insert(
        "timer_frames_cold",
        format!("{:.2}", per_segment(&cold.total, cold.total.timer_frames)),
    );
    result.insert(
        "frames_hot",
        format!("{:.2}", per_segment(&hot.total, hot.total.frames_out)),
    );
    result.insert("idle_ns_per_tick", format!("{:.0}", idle_ns as f64 / IDLE_TICKS as f64));
    result.insert("wheel_entries", entries_idle.to_string());
    result.insert("lost_flows", lost.to_string());
    result.insert("unread_bytes", unread.to_string());
    result.insert("live_flows", stack.live_flows().to_string());

    // The price of one miss in a working set as large as the flows' state.
    let working_set = usize::try_from(rss_after.saturating_sub(rss_before) * 1024)?;
    drop(stack);
    drop(clients);
    result.insert("load_ns", format!("{:.0}", dependent_load_ns(working_set, &mut rng)));
    Ok(result)
}

/// Nanoseconds per dependent load at random over `bytes` of memory (a
/// pointer chase through one random cycle of its cache lines): what one
/// cache-and-TLB miss costs in a working set that large.
fn dependent_load_ns(bytes: usize, rng: &mut Rng) -> f64 {
    const WORDS_PER_LINE: usize = 64 / std::mem::size_of::<usize>();
    const STEPS: u64 = 2_000_000;
    let lines = (bytes / 64).max(2);
    // Sattolo's shuffle: a single cycle through every line.
    let mut order: Vec<usize> = (0..lines).collect();
    for i in (1..lines).rev() {
        order.swap(i, rng.below(i));
    }
    let mut next = vec![0usize; lines * WORDS_PER_LINE];
    for (k, &line) in order.iter().enumerate() {
        let successor = order.get((k + 1) % lines).copied().unwrap_or(0);
        if let Some(slot) = next.get_mut(line * WORDS_PER_LINE) {
            *slot = successor * WORDS_PER_LINE;
        }
    }
    drop(order);
    let mut at = 0usize;
    let started = WallInstant::now();
    for _ in 0..STEPS {
        at = next.get(at).copied().unwrap_or(0);
    }
    std::hint::black_box(at);
    nanos(started) as f64 / STEPS as f64
}

/// Shows how smoltcp's `timeout` treats an idle Established flow: one flow,
/// one data segment (read and acknowledged), then 10.5 s of peer silence.
fn probe_idle_timeout() -> Result<String> {
    let start = Instant::from_millis(0);
    let config = StackConfig {
        rx_buffer: 1024,
        tx_buffer: 1024,
        ..StackConfig::default()
    };
    let mut stack = Stack::new(1, config, start, 1);
    let ends = endpoints(0, 1)?;
    let (mut frame, mut out) = (Vec::new(), Vec::new());
    let (id, server_next) = establish(&mut stack, 0, &ends, 1000, &mut frame, &mut out, start)?;
    build_frame(&mut frame, &ends, TcpControl::Psh, 1001, Some(server_next), b"hello");
    let class = wire::classify(&frame)?;
    stack.ingress(id, &frame, &class, Instant::from_millis(1))?;
    let mut scratch = [0u8; 64];
    let read = stack.recv(id, &mut scratch)?;
    stack.flush(Instant::from_millis(1));
    stack.poll_timers(Instant::from_millis(100));
    while stack.next_event().is_some() {}
    let state_before = stack.state(id)?;
    out.clear();
    stack.drain_output(&mut out);
    let acked = out.len();
    out.clear();
    stack.poll_timers(Instant::from_millis(10_500));
    stack.drain_output(&mut out);
    let mut events = Vec::new();
    while let Some(event) = stack.next_event() {
        events.push(format!("{:?}", event.kind));
    }
    let rst = out.iter().any(|sent| {
        Ipv4Packet::new_checked(sent.frame.get(14..).unwrap_or_default())
            .ok()
            .and_then(|ip| TcpPacket::new_checked(ip.payload()).ok().map(|tcp| tcp.rst()))
            .unwrap_or(false)
    });
    Ok(format!(
        "idle-timeout probe (timeout {} s, default): Established flow, {read} bytes read, {acked} ACK(s) sent, \
         tx buffer empty, state {state_before}; after 10.5 s of peer silence: live flows {}, events [{}], \
         RST sent: {rst} ({})",
        config.timeout.secs(),
        stack.live_flows(),
        events.join(", "),
        if stack.live_flows() == 1 {
            "ok: an idle connection lives on"
        } else {
            "BUG: the idle connection was closed"
        }
    ))
}

fn child_result(flows: usize, options: &Options) -> Result<BTreeMap<String, String>> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .args([
            "--child",
            &flows.to_string(),
            "--packets",
            &options.packets.to_string(),
            "--rounds",
            &options.rounds.to_string(),
            "--hot",
            &options.hot.to_string(),
            "--buffer",
            &options.buffer.to_string(),
            "--servers",
            &options.servers.to_string(),
            "--timeout-secs",
            &options.timeout_secs.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("the measurement of {flows} flows failed ({})", output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_TAG))
        .ok_or("the child printed no result")?;
    Ok(line
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

fn field(row: &BTreeMap<String, String>, key: &str) -> String {
    row.get(key).cloned().unwrap_or_else(|| "?".to_string())
}

/// How many dependent misses the extra cost of random over hot traffic is.
fn misses(row: &BTreeMap<String, String>) -> String {
    let value = |key: &str| row.get(key).and_then(|value| value.parse::<f64>().ok());
    match (value("ns_cold"), value("ns_hot"), value("load_ns")) {
        (Some(cold), Some(hot), Some(load)) if load > 0.0 => format!("{:.1}", (cold - hot) / load),
        _ => "?".to_string(),
    }
}

fn ratio(first: &BTreeMap<String, String>, last: &BTreeMap<String, String>, key: &str) -> String {
    let value = |row: &BTreeMap<String, String>| row.get(key).and_then(|value| value.parse::<f64>().ok());
    match (value(first), value(last)) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
        _ => "?".to_string(),
    }
}

fn main() -> Result<()> {
    let options = parse_options()?;
    if let Some(flows) = options.child {
        let result = measure_flows(flows, &options)?;
        let fields: Vec<String> = result.iter().map(|(key, value)| format!("{key}={value}")).collect();
        println!("{RESULT_TAG} {}", fields.join(" "));
        return Ok(());
    }
    let probe = probe_idle_timeout()?;
    eprintln!("{probe}");
    let mut rows = Vec::new();
    for &flows in &options.flows {
        eprintln!("measuring {flows} flows ...");
        rows.push(child_result(flows, &options)?);
    }
    println!(
        "Per-segment cost of the netstack with N Established flows ({} B rx + {} B tx buffers, {} rounds of {} \
         segments of 1-100 B, median; bursts of {BURST}; hot sets of {} flows):\n",
        options.buffer, options.buffer, options.rounds, options.packets, options.hot
    );
    println!(
        "| flows | setup (s) | memory_per_flow (B) | RSS (MiB) | RSS/flow (B) | random: ns/seg | random: ns/seg incl. \
         timers | random: Mseg/s incl. timers | random: frames out/seg | hot compact: ns/seg | hot scattered: ns/seg \
         | poll_timers ns/call | idle wheel ns/tick | wheel entries | dependent load ns (same working set) | \
         (random - hot compact) / load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let rate = row
            .get("ns_cold_all")
            .and_then(|ns| ns.parse::<f64>().ok())
            .filter(|ns| *ns > 0.0)
            .map_or("?".to_string(), |ns| format!("{:.2}", 1e3 / ns));
        let cells = [
            field(row, "flows"),
            field(row, "setup_s"),
            field(row, "memory_per_flow"),
            field(row, "rss_mib"),
            field(row, "rss_per_flow"),
            field(row, "ns_cold"),
            field(row, "ns_cold_all"),
            rate,
            field(row, "frames_cold"),
            field(row, "ns_hot"),
            field(row, "ns_scattered"),
            field(row, "timer_ns_cold"),
            field(row, "idle_ns_per_tick"),
            field(row, "wheel_entries"),
            field(row, "load_ns"),
            misses(row),
        ];
        println!("| {} |", cells.join(" | "));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "\ncost({})/cost({}): random {} (incl. timers {}), hot compact {} (incl. timers {}), hot scattered {}, \
             idle wheel tick {}",
            field(last, "flows"),
            field(first, "flows"),
            ratio(first, last, "ns_cold"),
            ratio(first, last, "ns_cold_all"),
            ratio(first, last, "ns_hot"),
            ratio(first, last, "ns_hot_all"),
            ratio(first, last, "ns_scattered"),
            ratio(first, last, "idle_ns_per_tick"),
        );
    }
    for row in &rows {
        let suspicious = ["lost_flows", "unread_bytes"]
            .iter()
            .any(|key| row.get(*key).is_some_and(|value| value != "0"))
            || row.get("live_flows") != row.get("flows");
        println!(
            "\n{} flows: {} frames out/segment ({} from poll_timers; hot compact {}), post-setup wheel sweep {} ms, \
             lost flows {}, unread bytes {}{}",
            field(row, "flows"),
            field(row, "frames_cold"),
            field(row, "timer_frames_cold"),
            field(row, "frames_hot"),
            field(row, "sweep_ms"),
            field(row, "lost_flows"),
            field(row, "unread_bytes"),
            if suspicious { " (UNEXPECTED)" } else { "" }
        );
    }
    println!("\n{probe}");
    Ok(())
}
