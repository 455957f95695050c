//! The engine of one worker: every frame received on one port leaves the
//! other port unchanged, in bursts, except TCP segments of intercepted
//! connections, which go to the transparent TCP stack and the splice layer.
//! Runts (frames too short to hold their Ethernet header) are dropped;
//! frames with malformed L3 headers are bridged like any other and counted
//! (see `wire::classify` for the rule), except around the intercepted
//! ports: a TCP segment to or from one (or of an intercepted connection)
//! with a bad checksum or header, or the first fragment of one, is
//! dropped, and so is UDP to or from one unless `intercept.udp` (or a
//! rule) bypasses it. Nothing from the client port reaches a `[[service]]`
//! backend: only the appliance connects there.

use std::sync::Arc;

use netstack::neighbour::{NeighbourConfig, Neighbours, OwnedAddress};
use netstack::{Duration, Instant, OutFrame, PortFrames, Queued, Stack, StackConfig};
use port::{LinkState, PacketBuf, Port};
use wire::{FlowTuple, IpProtocol};

use crate::clock::{EngineStart, WallAnchor};
use crate::config::{Config, InterceptMode, InvalidUpstreamPolicy, StarttlsPort, Tls};
use crate::counters::{PortStats, TcpStats, TcpTotals};
use crate::ftpdata::{Expected, Opener};
use crate::handoff::{HandoffError, WorkerHandoff};
use crate::owned::OwnedSources;
use crate::policy::{Action, Policy, UdpPolicy};
use crate::splice::{Admission, InspectionSettings, Limits, Splicer, Unreachable};
use mitm::{CertificateAuthority, Forger, InvalidUpstream, MitmError, TlsContext, UpstreamTrust, WallClock};

pub use crate::side::Side;

/// Transmit attempts on a full ring before the remaining frames are dropped.
const TX_ATTEMPTS: u32 = 16;

/// Sessions reset per batch at shutdown (their RSTs are sent before the
/// next batch, so the frames waiting at once stay bounded).
const SHUTDOWN_BATCH: usize = 256;

/// How often the inspection ports' links are checked.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often at most a worker publishes its most frequent server names
/// (a copy of at most `topnames::CAPACITY` names).
const TOP_SNI_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// What the engine intercepts, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct InterceptPolicy {
    /// Destination ports whose new connections (client SYNs) are spliced.
    pub tcp_ports: Vec<u16>,
    pub mode: InterceptMode,
    /// UDP to and from `tcp_ports`, unless a rule says otherwise.
    pub udp: UdpPolicy,
    pub stack: StackConfig,
    pub hold_synack: bool,
    /// Admission and time limits of the sessions.
    pub limits: Limits,
    /// The `[tls]` settings, when connections are intercepted in mode "tls".
    pub tls: Option<Tls>,
    /// The `[[policy]]` rules.
    pub rules: Policy,
    /// The `[[starttls]]` entries, per port.
    pub starttls: Vec<StarttlsPort>,
    /// The inspection loop, when `[ports.inspect_out]`/`[ports.inspect_in]`
    /// are configured.
    pub inspection: Option<InspectionSettings>,
    /// The appliance's own addresses on the server port
    /// (`ports.server.addresses`, with their prefixes); none by default.
    pub owned_addresses: Vec<OwnedAddress>,
    /// Their gateways (`ports.server.gateways`).
    pub gateways: Vec<std::net::IpAddr>,
}

/// A TLS setting whose file cannot be used: the key, and (as the source)
/// the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`")]
pub struct TlsSettingError {
    pub key: &'static str,
    #[source]
    pub source: MitmError,
}

impl InterceptPolicy {
    /// The policy of a validated configuration (its rules were checked).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let tcp = &config.tcp;
        let rules = config.policy().map_err(|(key, reason)| format!("{key}: {reason}"))?;
        Ok(InterceptPolicy {
            rules,
            tcp_ports: config.intercept.tcp_ports.clone(),
            mode: config.intercept.mode,
            udp: config.intercept.udp,
            stack: StackConfig {
                rx_buffer: tcp.rx_buffer,
                tx_buffer: tcp.tx_buffer,
                timeout: netstack::Duration::from_millis(tcp.timeout_ms),
                max_retransmissions: tcp.max_retransmissions,
                congestion_control: tcp.congestion_control.into(),
                max_flows: tcp.max_connections.saturating_mul(config.sockets_per_connection()),
            },
            hold_synack: tcp.hold_synack,
            limits: Limits::from_config(tcp),
            inspection: config.ports.inspect_out.as_ref().map(|_| InspectionSettings {
                failure: config.inspect.failure,
                syn_timeout: Duration::from_millis(config.inspect.syn_timeout_ms),
                timeout: Duration::from_millis(tcp.timeout_ms),
            }),
            tls: config.intercepts_tls().then(|| config.tls.clone()),
            starttls: config.starttls_ports(),
            owned_addresses: config
                .ports
                .server
                .addresses
                .iter()
                .map(|prefix| OwnedAddress {
                    address: prefix.0.addr(),
                    prefix_len: prefix.0.prefix_len(),
                })
                .collect(),
            gateways: config.ports.server.gateways.clone(),
        })
    }

    /// A worker's TLS context (its own forger and caches; without a key
    /// log, [`TlsContext::set_key_log`] adds it), if TLS is intercepted.
    /// Fails with the setting (and, in the error, the file) at fault. Its
    /// clock shows 1970 until the engine it is given to puts it on the
    /// engine's own ([`Engine::with_tls`], [`Engine::reload`]): only an
    /// engine knows the date.
    pub fn tls_context(&self) -> Result<Option<TlsContext>, TlsSettingError> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let at = |key: &'static str| move |source: MitmError| TlsSettingError { key, source };
        let (Some(ca_cert), Some(ca_key)) = (&tls.ca_cert, &tls.ca_key) else {
            return Err(at("tls.ca_cert")(MitmError::Config(
                "tls.ca_cert and tls.ca_key are required".into(),
            )));
        };
        let ca = CertificateAuthority::load(ca_cert, ca_key).map_err(at("tls.ca_cert, tls.ca_key"))?;
        let ca = match &tls.ca_chain {
            Some(chain) => ca.with_chain(chain).map_err(at("tls.ca_chain"))?,
            None => ca,
        };
        let leaf_key = match &tls.leaf_key {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|err| MitmError::File {
                    path: path.clone(),
                    reason: err.to_string(),
                });
                let key = pem.and_then(|pem| {
                    rcgen::KeyPair::from_pem(&pem).map_err(|err| MitmError::Pem {
                        path: path.clone(),
                        reason: err.to_string(),
                    })
                });
                Some(key.map_err(at("tls.leaf_key"))?)
            }
            None => None,
        };
        let forger = Forger::new(ca, leaf_key, tls.cert_cache).map_err(at("tls.leaf_key"))?;
        let trust = UpstreamTrust::from_bundle(tls.upstream_trust.bundle()).map_err(at("tls.upstream_trust"))?;
        let invalid = match tls.invalid_upstream {
            InvalidUpstreamPolicy::Mirror => InvalidUpstream::Mirror,
            InvalidUpstreamPolicy::Refuse => InvalidUpstream::Refuse,
        };
        TlsContext::new(
            forger,
            trust,
            invalid,
            None,
            WallClock::new(time::OffsetDateTime::UNIX_EPOCH),
        )
        .map(Some)
        .map_err(at("tls"))
    }
}

/// The counters one engine writes: per port, and of its TCP stack.
#[derive(Debug, Default, Clone)]
pub struct EngineStats {
    /// Indexed by [`Side::index`] (the inspection ports' stay zero without them).
    pub ports: [Arc<PortStats>; 4],
    pub tcp: Arc<TcpStats>,
}

/// One worker's share of the appliance: a queue pair on each port, and the
/// TCP stack and sessions of the connections that land on this worker.
pub struct Engine<P: Port> {
    /// Indexed by [`Side::index`]: client and server, then the inspection pair if any.
    ports: Vec<P>,
    stats: [Arc<PortStats>; 4],
    burst_size: usize,
    frames: Vec<P::Buf>,
    intercept_ports: Vec<u16>,
    /// The `[[starttls]]` ports (TCP only: their UDP is not touched).
    starttls_ports: Vec<u16>,
    udp: UdpPolicy,
    stack: Stack,
    splicer: Splicer,
    /// The neighbour table's frames to send (ARP, ND): copied into port
    /// buffers. The stack writes its own straight into them ([`PortFrames`]).
    neighbour_output: Vec<OutFrame>,
    outgoing: [Vec<P::Buf>; 4],
    tcp_stats: Arc<TcpStats>,
    /// When the inspection ports' links are checked next.
    next_link_check: Instant,
    /// The generation of the server names last published, and when they
    /// may be published next.
    top_sni_published: u64,
    next_top_sni_publish: Instant,
    /// The decrypt-mirror port, when configured.
    mirror: Option<MirrorPort<P>>,
    /// The hand-off of frames of connection legs between the workers, when
    /// there are several.
    handoff: Option<WorkerHandoff>,
    /// The date of the engine clock's zero.
    wall: WallAnchor,
    /// The date of the TLS contexts, set at each poll: every context this
    /// engine is given reads it.
    tls_clock: WallClock,
}

/// This worker's transmit queue on the decrypt-mirror port.
struct MirrorPort<P: Port> {
    port: P,
    /// Frames copied into buffers that the port has not taken yet.
    pending: Vec<P::Buf>,
}

impl<P: Port> Engine<P> {
    /// An engine between `client` and `server`, counting into `stats`,
    /// from the time, date and seed its driver gives in `start`.
    pub fn new(
        client: P,
        server: P,
        stats: EngineStats,
        burst_size: usize,
        policy: &InterceptPolicy,
        start: EngineStart,
    ) -> Self {
        let EngineStart { now, wall, seed } = start;
        let mut splicer = Splicer::new(policy.hold_synack, policy.rules.clone(), policy.limits, wall);
        splicer.set_starttls(&policy.starttls);
        if !policy.owned_addresses.is_empty() {
            // Owned addresses: ARP and neighbour discovery for them are
            // answered with the server port's MAC, frames to them are the
            // appliance's (never bridged), and the backends of services
            // with `source = "appliance"` are connected from them.
            splicer.set_owned(OwnedSources::new(Neighbours::new(NeighbourConfig {
                port: Side::Server.index(),
                mac: server.mac(),
                addresses: policy.owned_addresses.clone(),
                gateways: policy.gateways.clone(),
            })));
        }
        let mut stack = Stack::new(Side::ALL.len(), policy.stack, now, seed);
        stack.set_tx_frames(port_frames(&[&client, &server]));
        Engine {
            ports: vec![client, server],
            stats: stats.ports,
            burst_size: burst_size.max(1),
            frames: Vec::with_capacity(burst_size.max(1)),
            intercept_ports: policy.tcp_ports.clone(),
            starttls_ports: policy.starttls.iter().map(|entry| entry.port).collect(),
            udp: policy.udp,
            stack,
            splicer,
            neighbour_output: Vec::new(),
            outgoing: Default::default(),
            tcp_stats: stats.tcp,
            next_link_check: now,
            top_sni_published: 0,
            next_top_sni_publish: now,
            mirror: None,
            handoff: None,
            wall,
            tls_clock: WallClock::new(wall.at(now).into()),
        }
    }

    /// Terminates TLS for the destinations of `services` (`[[service]]`):
    /// their SYNs are answered by the appliance, whatever the intercepted
    /// ports and the policy say.
    pub fn with_services(mut self, services: Arc<crate::service::Services>) -> Self {
        self.splicer.set_services(services);
        self
    }

    /// Sends the plaintext of intercepted connections out of `inspect_out`
    /// and takes it back from the box on `inspect_in`.
    pub fn with_inspection(mut self, inspect_out: P, inspect_in: P, settings: InspectionSettings) -> Self {
        self.ports.truncate(2);
        self.ports.push(inspect_out);
        self.ports.push(inspect_in);
        self.stack
            .set_tx_frames(port_frames(&self.ports.iter().collect::<Vec<_>>()));
        self.splicer.set_inspection(settings);
        self
    }

    /// Intercepts TLS on the spliced connections with `context` (mode
    /// "tls"), which from now on works at this engine's date.
    pub fn with_tls(mut self, mut context: mitm::TlsContext) -> Self {
        context.set_clock(self.tls_clock.clone());
        self.splicer.set_tls(context);
        self
    }

    /// Puts reloaded `rules` in force for new connections (see
    /// [`Splicer::reload`]), their TLS context at this engine's date;
    /// called by the worker between two polls.
    pub fn reload(&mut self, mut rules: crate::splice::Rules) {
        if let Some(context) = rules.tls.as_mut() {
            context.set_clock(self.tls_clock.clone());
        }
        self.splicer.reload(rules);
    }

    /// Records the plaintext of every intercepted TLS connection in `taps`
    /// (the decrypted capture, PCAP-over-IP).
    pub fn with_taps(mut self, taps: crate::mirror::Taps) -> Self {
        self.splicer.set_taps(taps);
        self
    }

    /// Records the plaintext of every intercepted TLS connection in the
    /// decrypted capture `capture` (its port map applies).
    pub fn with_capture(self, capture: crate::writer::CaptureQueue) -> Self {
        let port_map = capture.settings().port_map.clone();
        self.with_taps(crate::mirror::Taps::new(port_map).with_capture(capture))
    }

    /// Transmits a copy of every intercepted TLS connection's plaintext, as
    /// the frames of the decrypted capture, on `port` (this worker's queue
    /// of the decrypt-mirror port), counting into `stats`; see
    /// [`crate::mirror`]. Call after [`Engine::with_taps`].
    pub fn with_mirror(mut self, port: P, stats: Arc<crate::mirror::MirrorStats>) -> Self {
        self.splicer
            .taps_mut()
            .set_mirror(crate::mirror::MirrorQueue::new(stats));
        self.mirror = Some(MirrorPort {
            port,
            pending: Vec::with_capacity(self.burst_size),
        });
        self
    }

    /// Shares the record of which connections each worker holds with the
    /// other workers' engines (`directory`), so that a frame of a connection
    /// another worker holds is dropped here rather than bridged.
    pub fn with_directory(mut self, directory: Arc<crate::directory::SessionDirectory>) -> Self {
        self.splicer.set_directory(directory);
        self
    }

    /// Shares the server legs each worker opens to other endpoints than
    /// their client's (a service's backend legs), and the FTP data
    /// connections each worker's control connections announce, with the
    /// other workers' engines: a frame of such a leg or data connection
    /// (its SYN included) that reaches this worker is handed to the worker
    /// holding it, and the frames they hand to this one are taken as
    /// received on the port they came in on (see [`crate::handoff`]).
    pub fn with_handoff(mut self, handoff: WorkerHandoff) -> Self {
        self.splicer.set_leg_registry(handoff.registry());
        self.splicer.set_ftp_expectations(handoff.ftp_expectations());
        self.handoff = Some(handoff);
        self
    }

    /// Records every intercepted connection in `log` when it ends.
    pub fn with_connection_log(mut self, log: std::sync::Arc<crate::connlog::ConnectionLog>) -> Self {
        self.splicer.set_log(log);
        self
    }

    /// One poll of both ports and of the stack's timers; returns how many
    /// frames were received.
    pub fn poll(&mut self, now: Instant) -> usize {
        self.tls_clock.set(self.wall.at(now).into());
        if self.ports.len() == Side::ALL.len() && now >= self.next_link_check {
            self.next_link_check = now + LINK_CHECK_INTERVAL;
            let up = self.ports[2..].iter().all(|port| port.link() != LinkState::Down);
            self.splicer.set_inspection_links_up(&mut self.stack, up, now);
        }
        let mut received = 0;
        for side in Side::ALL.into_iter().take(self.ports.len()) {
            received += self.forward(side, now);
        }
        received += self.receive_handed(now);
        self.stack.poll_timers(now);
        if let Some(owned) = self.splicer.owned_mut() {
            owned.poll(now);
        }
        self.splicer.handle_events(&mut self.stack, now);
        self.splicer.expire_timeouts(&mut self.stack, now);
        self.stack.flush(now);
        self.splicer.handle_events(&mut self.stack, now);
        self.send_stack_output(None);
        self.send_mirror();
        self.tcp_stats.publish(&self.tcp_totals());
        let top_sni = self.splicer.top_sni();
        if top_sni.generation() != self.top_sni_published && now >= self.next_top_sni_publish {
            self.top_sni_published = top_sni.generation();
            self.next_top_sni_publish = now + TOP_SNI_PUBLISH_INTERVAL;
            self.tcp_stats.publish_top_sni(top_sni.entries());
        }
        received
    }

    /// Transmits the frames waiting for the mirror port, a burst at a time,
    /// until the port takes no more (the rest wait for the next poll);
    /// never waits for it.
    fn send_mirror(&mut self) {
        let (Some(mirror), Some(queue)) = (self.mirror.as_mut(), self.splicer.taps_mut().mirror_mut()) else {
            return;
        };
        loop {
            while mirror.pending.len() < self.burst_size {
                let Some(frame) = queue.front() else { break };
                let Some(buf) = copy_frame(&mut mirror.port, frame) else {
                    break;
                };
                mirror.pending.push(buf);
                queue.pop();
            }
            if mirror.pending.is_empty() {
                return;
            }
            let offered = mirror.pending.len();
            let bytes_before: usize = mirror.pending.iter().map(|buf| buf.data().len()).sum();
            let sent = mirror.port.tx_burst(&mut mirror.pending);
            let bytes_left: usize = mirror.pending.iter().map(|buf| buf.data().len()).sum();
            queue.stats().add_sent(sent as u64, (bytes_before - bytes_left) as u64);
            if sent < offered {
                return;
            }
        }
    }

    fn tcp_totals(&self) -> TcpTotals {
        let stack = self.stack.counters();
        let splice = self.splicer.counters();
        let forge = self.splicer.forge_counters();
        TcpTotals {
            flows_live: stack.flows_live,
            flows_created: stack.flows_created,
            flows_freed: stack.flows_freed,
            flows_refused: stack.flows_refused,
            syn_retransmits_withheld: stack.syn_retransmits_withheld,
            dead_peers: stack.dead_peers,
            synacks_repeated: stack.synacks_repeated,
            fast_retransmits_prompted: stack.fast_retransmits_prompted,
            connect_timeouts: stack.connect_timeouts,
            splice,
            forged_cache_hits: forge.hits,
            forged_cache_misses: forge.misses,
            forged_cache_bytes: forge.cache_bytes,
            memory_per_flow: self.stack.memory_per_flow() as u64,
            socket_buffer_bytes: self.stack.buffer_bytes() as u64,
        }
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    pub fn splicer(&self) -> &Splicer {
        &self.splicer
    }

    /// Its end of the workers' hand-off, when there are several.
    pub fn handoff(&self) -> Option<&WorkerHandoff> {
        self.handoff.as_ref()
    }

    /// Receives one burst on `from`: intercepted TCP goes to the stack, the
    /// rest out of the other port.
    fn forward(&mut self, from: Side, now: Instant) -> usize {
        let (ingress, egress) = match from {
            Side::Client => (0, 1),
            Side::Server => (1, 0),
            Side::InspectOut | Side::InspectIn => return self.receive_inspection(from, now),
        };
        let frames = &mut self.frames;
        let received = self.ports[ingress].rx_burst(frames, self.burst_size);
        if received == 0 {
            return 0;
        }
        let in_stats = &self.stats[ingress];
        in_stats.add_rx(received as u64);

        let mut runts = 0u64;
        let mut malformed = 0u64;
        let mut intercepted = 0u64;
        let mut misdirected = 0u64;
        let mut udp_blocked = 0u64;
        let mut invalid = 0u64;
        // Segments neither bridged nor taken by the stack for want of a
        // flow: to a service's backend (not SYNs), a service's SYN the
        // stack did not take.
        let mut withheld = 0u64;
        let (mut handed_off, mut handoff_dropped) = (0u64, 0u64);
        let stack = &mut self.stack;
        let splicer = &mut self.splicer;
        let intercept_ports = &self.intercept_ports;
        let handoff = self.handoff.as_ref();
        // A frame of a leg another worker holds: copied to it, or dropped
        // when its queue is full (TCP retransmits). Whether it was handed.
        let mut hand = |owner: usize, frame: &[u8]| match handoff.map(|handoff| handoff.hand(owner, from, frame)) {
            Some(Ok(())) => {
                handed_off += 1;
                true
            }
            Some(Err(HandoffError::Full | HandoffError::NoOwner)) | None => {
                handoff_dropped += 1;
                false
            }
        };
        let guard = Guard {
            from,
            intercept_ports,
            starttls_ports: &self.starttls_ports,
            udp: self.udp,
        };
        frames.retain_mut(|frame| {
            let class = match wire::classify(frame.data()) {
                Err(_) => {
                    runts += 1;
                    return false;
                }
                Ok(class) => class,
            };
            if let Some(owned) = take_owned(from, stack, splicer, frame.data_mut(), &class, now) {
                match owned {
                    OwnedFrame::Taken => intercepted += 1,
                    OwnedFrame::Invalid => {
                        malformed += 1;
                        invalid += 1;
                    }
                    OwnedFrame::Dropped => withheld += 1,
                }
                return false;
            }
            if class.malformed.is_some() || is_fragment(&class) {
                malformed += u64::from(class.malformed.is_some());
                // What cannot be checked, aimed at an intercepted port (or
                // at a service's backend), is dropped; the rest keeps the
                // cable rule.
                let aimed = guard.aimed_at(&class, frame.data(), splicer);
                invalid += u64::from(aimed);
                return !aimed;
            }
            if let Some(wire::L4Kind::Udp { flow }) = class.l4() {
                let blocked = guard
                    .udp_client_tuple(flow)
                    .is_some_and(|tuple| guard.udp_policy(splicer.policy(), &tuple) == UdpPolicy::Block);
                udp_blocked += u64::from(blocked);
                return !blocked;
            }
            let Some((tuple, info)) = class.tcp() else {
                if from != Side::Server {
                    return true;
                }
                if let Some(owner) = quoted_leg_elsewhere(stack, handoff, frame.data(), &class) {
                    // About another worker's backend leg: its business.
                    hand(owner, frame.data());
                    return false;
                }
                if !pass_on_unreachable(stack, splicer, frame.data_mut(), &class) {
                    // About the appliance's own backend leg: it ended there.
                    intercepted += 1;
                    return false;
                }
                return true;
            };
            let flow = stack.lookup(ingress, tuple);
            // A segment of a leg another worker opened to other endpoints
            // than its client's (a backend leg), or of an FTP data
            // connection another worker holds: the hash brought it here.
            let elsewhere = match (flow, handoff) {
                (None, Some(handoff)) => handoff.holder_elsewhere(from, tuple),
                _ => None,
            };
            let to_backend = flow.is_none() && guard.to_backend(tuple, splicer);
            let guarded = flow.is_some() || elsewhere.is_some() || to_backend || guard.client_tuple(tuple).is_some();
            if guarded && !class.tcp_checksum_ok(frame.data()) {
                // Neither bridged (the cable rule would let it reach the
                // origin uninspected) nor fed to the stack.
                malformed += 1;
                invalid += 1;
                return false;
            }
            if let Some(owner) = elsewhere {
                hand(owner, frame.data());
                return false;
            }
            let opening = info.flags.syn && !info.flags.ack && !info.flags.rst && class.is_tcp_candidate();
            // An FTP data connection an intercepted control channel
            // announced (crate::ftpdata), its opener's SYN (a client's to a
            // passive one, a server's to an active one): to the worker
            // holding the control connection (dropped if its inbox is full:
            // never bridged for that), then as `open_ftp_data` decides.
            let ftp_data = if opening && flow.is_none() {
                expected_ftp_data(splicer, from, tuple, now)
            } else {
                None
            };
            if let Some(expected) = ftp_data {
                if !class.tcp_checksum_ok(frame.data()) {
                    // Like any guarded segment: neither passed on nor opened.
                    malformed += 1;
                    invalid += 1;
                    return false;
                }
                if handoff.is_some_and(|handoff| handoff.worker() != expected.worker) {
                    if hand(expected.worker, frame.data()) {
                        splicer.count_ftp_data_handed_over();
                    }
                    return false;
                }
                return match open_ftp_data(stack, splicer, frame.data(), &class, expected, now) {
                    Fate::Bridged => true,
                    Fate::Taken => {
                        intercepted += 1;
                        false
                    }
                    Fate::Withheld => {
                        withheld += 1;
                        false
                    }
                };
            }
            let syn = from == Side::Client && opening;
            let serves = syn && splicer.serves(tuple);
            let starttls = if syn { splicer.starttls(tuple.dst_port) } else { None };
            let opens = syn && (serves || intercept_ports.contains(&tuple.dst_port) || starttls.is_some());
            match flow {
                Some(flow) => {
                    // A new SYN for a connection the appliance has already
                    // closed (its leg lingers in TIME-WAIT) opens a new one,
                    // as a host would; anything else goes to the existing
                    // flow, and a segment it cannot parse is dropped there.
                    if !(opens && stack.state(flow) == Ok(netstack::TcpState::TimeWait)) {
                        let _ = stack.ingress(flow, frame.data(), &class, now);
                        intercepted += 1;
                        return false;
                    }
                }
                None => {
                    // A segment of a connection another worker holds (a
                    // frame af_packet rolled over from a full socket) is
                    // not this worker's to bridge or to open.
                    if guard
                        .client_tuple(tuple)
                        .is_some_and(|client_tuple| splicer.held_by_another_worker(&client_tuple))
                    {
                        misdirected += 1;
                        return false;
                    }
                }
            }
            if serves {
                // The operator's own service: terminated, not judged by the
                // policy, and never bridged (nothing else serves there): a
                // SYN the stack did not take is dropped, the client retries.
                if splicer.open_service(stack, frame.data(), &class, now).is_ok() {
                    intercepted += 1;
                } else {
                    withheld += 1;
                }
                return false;
            }
            if to_backend {
                // Only the appliance connects to a service's backend (from
                // the server port): a client's SYN there is refused, its
                // other segments go nowhere.
                if syn {
                    splicer.refuse_backend_direct(stack, frame.data(), &class, now);
                    intercepted += 1;
                } else {
                    withheld += 1;
                }
                return false;
            }
            if opens {
                match splicer.policy().at_syn(tuple) {
                    Some(verdict) if verdict.action == Action::Bypass => {
                        splicer.log_decision(tuple, &verdict, now);
                        return true;
                    }
                    Some(verdict) if verdict.action == Action::Block => {
                        splicer.block(stack, frame.data(), &class, &verdict, now);
                        intercepted += 1;
                        return false;
                    }
                    // A `[[starttls]]` port the operator bypasses or blocks.
                    _ if starttls.is_some_and(|entry| entry.action == Action::Bypass) => {
                        splicer.log_starttls_bypass(tuple, now);
                        return true;
                    }
                    _ if starttls.is_some_and(|entry| entry.action == Action::Block) => {
                        splicer.block_starttls(stack, frame.data(), &class, now);
                        intercepted += 1;
                        return false;
                    }
                    _ => match splicer.open(stack, frame.data(), &class, now) {
                        Ok(Admission::Opened | Admission::Refused | Admission::Dropped) => {
                            intercepted += 1;
                            return false;
                        }
                        // The table is full and the operator chose to bridge.
                        Ok(Admission::Bridge) | Err(_) => {}
                    },
                }
            }
            // Not intercepted (or at capacity with `tcp.at_capacity =
            // "bridge"`): a cable passes it on.
            true
        });
        self.splicer.handle_events(&mut self.stack, now);

        let to_send = frames.len();
        let unsent = transmit(&mut self.ports[egress], frames);
        frames.clear();

        let sent = (to_send - unsent) as u64;
        self.stats[egress].add_tx(sent);
        in_stats.add_bridged(sent);
        in_stats.add_intercepted(intercepted);
        in_stats.add_dropped(runts + misdirected + udp_blocked + invalid + withheld + handoff_dropped + unsent as u64);
        in_stats.add_misdirected(misdirected);
        in_stats.add_handed_off(handed_off);
        in_stats.add_handoff_dropped(handoff_dropped);
        in_stats.add_udp_blocked(udp_blocked);
        in_stats.add_invalid_dropped(invalid);
        in_stats.add_malformed(runts + malformed);
        received
    }

    /// Takes up to a burst of the frames other workers handed to this one
    /// (see [`crate::handoff`]) as received on the port they came in on:
    /// segments of this worker's legs go to the stack, the SYN of an FTP
    /// data connection this worker's control connection announced opens as
    /// [`open_ftp_data`] decides, an ICMP error about a server leg goes to
    /// the splicer (never further: it is about the appliance's own leg),
    /// and a frame whose leg ended meanwhile is dropped. The worker that
    /// received it counted it as received; this one counts it as
    /// intercepted, bridged or dropped. Returns how many it took.
    fn receive_handed(&mut self, now: Instant) -> usize {
        let Some(handoff) = self.handoff.as_ref() else {
            return 0;
        };
        let mut taken = 0usize;
        while taken < self.burst_size {
            let Some(handed) = handoff.take() else { break };
            taken += 1;
            let (ingress, egress) = match handed.from {
                Side::Client => (Side::Client, Side::Server),
                _ => (Side::Server, Side::Client),
            };
            let in_stats = &self.stats[ingress.index()];
            match handed_frame_fate(&mut self.stack, &mut self.splicer, ingress, &handed.data, now) {
                Fate::Taken => in_stats.add_intercepted(1),
                Fate::Withheld => in_stats.add_dropped(1),
                Fate::Bridged => {
                    let port = &mut self.ports[egress.index()];
                    let sent = copy_frame(port, &handed.data).is_some_and(|buf| transmit(port, &mut vec![buf]) == 0);
                    if sent {
                        in_stats.add_bridged(1);
                        self.stats[egress.index()].add_tx(1);
                    } else {
                        in_stats.add_dropped(1);
                    }
                }
            }
        }
        if taken == 0 {
            return 0;
        }
        self.splicer.handle_events(&mut self.stack, now);
        taken
    }

    /// Receives one burst on an inspection port: segments of loop
    /// connections go to the stack (a SYN the box passed to `inspect_in`
    /// opens the loop's inner leg); nothing is bridged from these ports, so
    /// everything else is dropped.
    fn receive_inspection(&mut self, side: Side, now: Instant) -> usize {
        let index = side.index();
        let Some(port) = self.ports.get_mut(index) else {
            return 0;
        };
        let frames = &mut self.frames;
        let received = port.rx_burst(frames, self.burst_size);
        if received == 0 {
            return 0;
        }
        let (mut intercepted, mut malformed, mut invalid) = (0u64, 0u64, 0u64);
        for frame in frames.iter() {
            let Ok(class) = wire::classify(frame.data()) else {
                malformed += 1;
                continue;
            };
            if class.malformed.is_some() {
                malformed += 1;
                continue;
            }
            let Some((tuple, info)) = class.tcp() else {
                continue;
            };
            if !class.tcp_checksum_ok(frame.data()) {
                malformed += 1;
                invalid += 1;
                continue;
            }
            if let Some(flow) = self.stack.lookup(index, tuple) {
                let _ = self.stack.ingress(flow, frame.data(), &class, now);
                intercepted += 1;
            } else if side == Side::InspectIn
                && info.flags.syn
                && !info.flags.ack
                && self.splicer.accept_loop(&mut self.stack, frame.data(), &class, now)
            {
                intercepted += 1;
            }
        }
        frames.clear();
        self.splicer.handle_events(&mut self.stack, now);
        let stats = &self.stats[index];
        stats.add_rx(received as u64);
        stats.add_intercepted(intercepted);
        stats.add_dropped(received as u64 - intercepted);
        stats.add_malformed(malformed);
        stats.add_invalid_dropped(invalid);
        received
    }

    /// Ends this engine's part of every connection before its ports stop:
    /// a RST on every live leg of every session (client, server and
    /// inspection legs; legs in TIME-WAIT are left alone), so that neither
    /// the clients nor the servers keep half of a connection nobody serves
    /// any more. The RSTs are sent in batches, waiting for full transmit
    /// rings and an empty buffer pool for up to `budget` (wall time) in all;
    /// what still cannot be sent then is counted as `generated_dropped`.
    /// Nothing is received any more. Returns the legs reset.
    pub fn shutdown(&mut self, now: Instant, budget: std::time::Duration) -> u64 {
        let deadline = std::time::Instant::now() + budget;
        let before = self.splicer.counters().reset_at_shutdown;
        loop {
            let visited = self.splicer.reset_for_shutdown(&mut self.stack, SHUTDOWN_BATCH, now);
            self.stack.flush(now);
            self.splicer.handle_events(&mut self.stack, now);
            self.stack.flush(now);
            self.send_stack_output(Some(deadline));
            if visited == 0 {
                break;
            }
        }
        // The sensors see the resets too, as far as the mirror port takes them.
        self.send_mirror();
        self.tcp_stats.publish(&self.tcp_totals());
        self.tcp_stats.publish_top_sni(self.splicer.top_sni().entries());
        self.splicer.counters().reset_at_shutdown - before
    }

    /// Sends the stack's frames (already in port buffers) and the
    /// neighbour table's (copied into port buffers). With a `deadline`
    /// (shutdown), full rings and an empty pool are waited for until then
    /// instead of dropping after [`TX_ATTEMPTS`].
    fn send_stack_output(&mut self, deadline: Option<std::time::Instant>) {
        if let Some(owned) = self.splicer.owned_mut() {
            owned.drain_output(&mut self.neighbour_output);
        }
        for out in self.neighbour_output.drain(..) {
            if let (Some(port), Some(stats), Some(queue)) = (
                self.ports.get_mut(out.port),
                self.stats.get(out.port),
                self.outgoing.get_mut(out.port),
            ) {
                queue_copy(port, queue, stats, &out.frame, deadline, self.burst_size);
            }
        }
        if let Some(frames) = self.stack.take_tx_frames::<PortFrames<P::Pool>>() {
            for (index, frame) in frames.drain() {
                let (Some(port), Some(stats), Some(queue)) = (
                    self.ports.get_mut(index),
                    self.stats.get(index),
                    self.outgoing.get_mut(index),
                ) else {
                    continue;
                };
                match frame {
                    Queued::InPortBuffer(buf) => {
                        queue.push(buf);
                        if deadline.is_some() && queue.len() >= self.burst_size {
                            send_generated(port, queue, stats, deadline);
                        }
                    }
                    Queued::Spilled(bytes) => queue_copy(port, queue, stats, &bytes, deadline, self.burst_size),
                }
            }
        }
        for ((port, queue), stats) in self.ports.iter_mut().zip(&mut self.outgoing).zip(&self.stats) {
            send_generated(port, queue, stats, deadline);
        }
    }
}

/// The stack's transmit sink on the pools of `ports` (indexed by [`Side::index`]).
fn port_frames<P: Port>(ports: &[&P]) -> Box<PortFrames<P::Pool>> {
    Box::new(PortFrames::new(ports.iter().map(|port| port.pool()).collect()))
}

/// Queues a copy of `frame` in a buffer of `port` on `queue`, or counts it
/// as dropped when the pool has none. With a `deadline` (shutdown), an
/// empty pool is waited for until then, sending what is queued meanwhile,
/// and a queue of `burst` frames is sent at once.
fn queue_copy<P: Port>(
    port: &mut P,
    queue: &mut Vec<P::Buf>,
    stats: &PortStats,
    frame: &[u8],
    deadline: Option<std::time::Instant>,
    burst: usize,
) {
    let mut copied = copy_frame(port, frame);
    if let Some(deadline) = deadline {
        // The pool is empty while the rings hold frames: send what is
        // queued and wait for the driver to return buffers.
        while copied.is_none() && std::time::Instant::now() < deadline {
            send_generated(port, queue, stats, Some(deadline));
            std::thread::yield_now();
            copied = copy_frame(port, frame);
        }
    }
    match copied {
        Some(buf) => queue.push(buf),
        None => stats.add_generated_dropped(1),
    }
    if deadline.is_some() && queue.len() >= burst {
        send_generated(port, queue, stats, deadline);
    }
}

/// Which traffic of the client and server ports is aimed at an intercepted
/// port, and what becomes of its UDP.
struct Guard<'a> {
    from: Side,
    intercept_ports: &'a [u16],
    starttls_ports: &'a [u16],
    udp: UdpPolicy,
}

impl Guard<'_> {
    /// The client→server tuple of a TCP packet of `flow`, if it goes to an
    /// intercepted or `[[starttls]]` port (from the client) or comes from
    /// one (from the server).
    fn client_tuple(&self, flow: &FlowTuple) -> Option<FlowTuple> {
        self.client_tuple_of(flow, &[self.intercept_ports, self.starttls_ports])
    }

    /// The same for a UDP packet: only the intercepted ports count.
    fn udp_client_tuple(&self, flow: &FlowTuple) -> Option<FlowTuple> {
        self.client_tuple_of(flow, &[self.intercept_ports])
    }

    fn client_tuple_of(&self, flow: &FlowTuple, lists: &[&[u16]]) -> Option<FlowTuple> {
        let listed = |port: u16| lists.iter().any(|ports| ports.contains(&port));
        match self.from {
            Side::Client if listed(flow.dst_port) => Some(*flow),
            Side::Server if listed(flow.src_port) => Some(flow.reversed()),
            _ => None,
        }
    }

    /// Whether a packet the engine cannot check (a malformed one, an IP
    /// fragment) is TCP to or from an intercepted port or from the client
    /// port to a service's backend, or UDP the policy blocks there: its
    /// ports as its header states them (a first fragment's; later
    /// fragments are useless without it).
    fn aimed_at(&self, class: &wire::FrameClass, frame: &[u8], splicer: &Splicer) -> bool {
        let Some((protocol, flow)) = class.stated_flow(frame) else {
            return false;
        };
        if protocol == IpProtocol::Tcp && self.to_backend(&flow, splicer) {
            return true;
        }
        if protocol == IpProtocol::Tcp {
            return self.client_tuple(&flow).is_some();
        }
        self.udp_client_tuple(&flow)
            .is_some_and(|tuple| self.udp_policy(splicer.policy(), &tuple) == UdpPolicy::Block)
    }

    /// Whether TCP `flow` comes from the client port to a service's backend
    /// (see [`Splicer::reaches_backend`]).
    fn to_backend(&self, flow: &FlowTuple, splicer: &Splicer) -> bool {
        self.from == Side::Client && splicer.reaches_backend(flow)
    }

    /// What becomes of UDP client→server `tuple` to an intercepted port.
    fn udp_policy(&self, rules: &Policy, tuple: &FlowTuple) -> UdpPolicy {
        rules.udp(tuple).map_or(self.udp, |(udp, _)| udp)
    }
}

/// What became of a frame to an owned address (see [`take_owned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnedFrame {
    /// The appliance took it.
    Taken,
    /// Malformed, or a TCP segment whose checksum fails (corrupted on the
    /// way): dropped as invalid, like such a frame of any intercepted flow.
    Invalid,
    /// Nothing takes it: dropped, never bridged.
    Dropped,
}

/// What becomes of a frame that is the appliance's own, received `from`
/// a port: `None` when it is not (no owned addresses, another
/// destination); [`OwnedFrame::Taken`] when the appliance took it (an ARP
/// request or neighbour solicitation for an owned address, answered on the
/// server port; an answer to one; a segment of a backend leg from an owned
/// address; an ICMP error about one); [`OwnedFrame::Invalid`] for a
/// malformed frame or a failing TCP checksum from the server port; else
/// [`OwnedFrame::Dropped`] (anything else to an owned address, from either
/// port: never bridged).
fn take_owned(
    from: Side,
    stack: &mut Stack,
    splicer: &mut Splicer,
    frame: &mut [u8],
    class: &wire::FrameClass,
    now: Instant,
) -> Option<OwnedFrame> {
    let owned = splicer.owned_mut()?;
    if from == Side::Server && owned.receive(frame, class, now) {
        return Some(OwnedFrame::Taken);
    }
    // A TCP candidate's destination is already parsed; other IP packets
    // are read again.
    let destination = match class.tcp() {
        Some((tuple, _)) => Some(tuple.dst_ip),
        None => class.ip_destination(frame),
    };
    if !destination.is_some_and(|ip| owned.owns(ip)) {
        return None;
    }
    if from == Side::Server && !is_fragment(class) {
        let tcp = class.tcp();
        if class.malformed.is_some() || tcp.is_some() && !class.tcp_checksum_ok(frame) {
            return Some(OwnedFrame::Invalid);
        }
        if let Some((tuple, _)) = tcp {
            if let Some(flow) = stack.lookup(Side::Server.index(), tuple) {
                let _ = stack.ingress(flow, frame, class, now);
                return Some(OwnedFrame::Taken);
            }
        } else if !pass_on_unreachable(stack, splicer, frame, class) {
            return Some(OwnedFrame::Taken);
        }
    }
    if let Some(owned) = splicer.owned_mut() {
        owned.count_dropped();
    }
    Some(OwnedFrame::Dropped)
}

/// Whether the frame is a fragment of an IPv4 or IPv6 packet.
fn is_fragment(class: &wire::FrameClass) -> bool {
    matches!(
        class.l3,
        wire::L3Kind::Ipv4 { fragment: true, .. } | wire::L3Kind::Ipv6 { fragment: true, .. }
    )
}

/// A port buffer holding a copy of `frame`, if one can be had.
fn copy_frame<P: Port>(port: &mut P, frame: &[u8]) -> Option<P::Buf> {
    let mut buf = port.alloc()?;
    buf.grow_back(frame.len())?.copy_from_slice(frame);
    Some(buf)
}

/// Transmits the stack's frames queued for `port` and counts them; with a
/// `deadline`, a full ring is waited for until then.
fn send_generated<P: Port>(
    port: &mut P,
    queue: &mut Vec<P::Buf>,
    stats: &PortStats,
    deadline: Option<std::time::Instant>,
) {
    if queue.is_empty() {
        return;
    }
    let total = queue.len();
    let unsent = match deadline {
        Some(deadline) => transmit_until(port, queue, deadline),
        None => transmit(port, queue),
    };
    queue.clear();
    let sent = (total - unsent) as u64;
    stats.add_generated(sent);
    stats.add_tx(sent);
    stats.add_generated_dropped(unsent as u64);
}

/// An ICMP destination unreachable about the SYN of a server leg that is
/// still connecting ends that session, and goes on to the client quoting the
/// client's own sequence number (so its kernel accepts it), unless it is
/// about a terminated connection's backend leg (the client was reset; false:
/// not passed on); any other ICMP error is bridged as it is.
fn pass_on_unreachable(stack: &mut Stack, splicer: &mut Splicer, frame: &mut [u8], class: &wire::FrameClass) -> bool {
    let Some(quote) = wire::icmp::quoted_tcp(frame, class) else {
        return true;
    };
    let Some(server_leg) = stack.lookup(Side::Server.index(), &quote.tuple.reversed()) else {
        return true;
    };
    match splicer.server_unreachable(stack, server_leg) {
        Unreachable::NotConnecting => true,
        Unreachable::PassOn { client_isn } => {
            wire::icmp::rewrite_quoted_seq(frame, class, &quote, client_isn);
            true
        }
        Unreachable::BackendLeg => false,
    }
}

/// The worker, other than this one, holding the leg whose segment an ICMP
/// error from the server port quotes, when this one has no flow for it.
fn quoted_leg_elsewhere(
    stack: &Stack,
    handoff: Option<&WorkerHandoff>,
    frame: &[u8],
    class: &wire::FrameClass,
) -> Option<usize> {
    let handoff = handoff?;
    let quote = wire::icmp::quoted_tcp(frame, class)?;
    let leg = quote.tuple.reversed();
    if stack.lookup(Side::Server.index(), &leg).is_some() {
        return None;
    }
    handoff.holder_elsewhere(Side::Server, &leg)
}

/// The FTP data connection `syn`, received on `from`, opens, if an
/// intercepted control channel of any worker announced one that `from`'s
/// side opens (a client's SYN to a passive one, a server's to an active
/// one).
fn expected_ftp_data(splicer: &Splicer, from: Side, syn: &FlowTuple, now: Instant) -> Option<Expected> {
    let opener = match from {
        Side::Client => Opener::Client,
        Side::Server => Opener::Server,
        Side::InspectOut | Side::InspectIn => return None,
    };
    splicer
        .expected_ftp_data(syn, now)
        .filter(|expected| expected.opener == opener)
}

/// What becomes of a frame decided on its own: an FTP data connection's
/// SYN, a frame another worker handed over.
enum Fate {
    /// Passed on (the policy bypasses it, or the table is full and the
    /// operator bridges).
    Bridged,
    /// Taken by the appliance (intercepted, or blocked with a RST).
    Taken,
    /// Dropped (an active-mode SYN refused, a frame whose leg is gone).
    Withheld,
}

/// Opens the FTP data connection `expected` that `frame` (its opener's
/// SYN) starts, on the worker whose control connection announced it: a
/// passive one is intercepted unless the policy bypasses or blocks it; an
/// active one is refused unless the policy bypasses it.
fn open_ftp_data(
    stack: &mut Stack,
    splicer: &mut Splicer,
    frame: &[u8],
    class: &wire::FrameClass,
    expected: Expected,
    now: Instant,
) -> Fate {
    let Some((tuple, _)) = class.tcp() else {
        return Fate::Withheld;
    };
    match expected.opener {
        Opener::Client => match splicer.policy().at_syn(tuple) {
            Some(verdict) if verdict.action == Action::Bypass => {
                splicer.log_decision(tuple, &verdict, now);
                Fate::Bridged
            }
            Some(verdict) if verdict.action == Action::Block => {
                splicer.block(stack, frame, class, &verdict, now);
                Fate::Taken
            }
            _ => match splicer.open(stack, frame, class, now) {
                Ok(Admission::Opened | Admission::Refused | Admission::Dropped) => Fate::Taken,
                // The table is full and the operator chose to bridge.
                Ok(Admission::Bridge) | Err(_) => Fate::Bridged,
            },
        },
        // The server's SYN, the roles reversed: judged by the policy as
        // client → server.
        Opener::Server => {
            let client_to_server = tuple.reversed();
            match splicer.policy().at_syn(&client_to_server) {
                Some(verdict) if verdict.action == Action::Bypass => {
                    splicer.log_decision(&client_to_server, &verdict, now);
                    Fate::Bridged
                }
                // Dropped while it is expected (its retransmissions too).
                Some(verdict) if verdict.action == Action::Block => {
                    splicer.log_decision(&client_to_server, &verdict, now);
                    Fate::Withheld
                }
                _ => match splicer.open_active_ftp_data(stack, frame, class, now) {
                    Ok(Admission::Opened | Admission::Refused | Admission::Dropped) => Fate::Taken,
                    // The table is full and the operator chose to bridge.
                    Ok(Admission::Bridge) => Fate::Bridged,
                    Err(_) => Fate::Withheld,
                },
            }
        }
    }
}

/// What becomes of a frame another worker handed to this one, received
/// there on `from` (see [`Engine::receive_handed`]).
fn handed_frame_fate(stack: &mut Stack, splicer: &mut Splicer, from: Side, frame: &[u8], now: Instant) -> Fate {
    let Ok(class) = wire::classify(frame) else {
        return Fate::Withheld;
    };
    if let Some((tuple, info)) = class.tcp() {
        if let Some(flow) = stack.lookup(from.index(), tuple) {
            let _ = stack.ingress(flow, frame, &class, now);
            return Fate::Taken;
        }
        let opening = info.flags.syn && !info.flags.ack && !info.flags.rst && class.is_tcp_candidate();
        // Checked by the worker that handed it: it came here because this
        // worker's control connection announced it.
        return match expected_ftp_data(splicer, from, tuple, now).filter(|_| opening) {
            Some(expected) => open_ftp_data(stack, splicer, frame, &class, expected, now),
            None => Fate::Withheld,
        };
    }
    if from == Side::Server {
        if let Some(quote) = wire::icmp::quoted_tcp(frame, &class) {
            if let Some(leg) = stack.lookup(from.index(), &quote.tuple.reversed()) {
                splicer.server_unreachable(stack, leg);
                return Fate::Taken;
            }
        }
    }
    Fate::Withheld
}

/// Transmits `frames` on `port`, retrying a full ring a few times; returns
/// how many could not be sent (still in `frames`).
fn transmit<P: Port>(port: &mut P, frames: &mut Vec<P::Buf>) -> usize {
    let mut attempts = 0;
    while !frames.is_empty() && attempts < TX_ATTEMPTS {
        if port.tx_burst(frames) == 0 {
            attempts += 1;
        }
    }
    frames.len()
}

/// Transmits `frames` on `port`, retrying a full ring until `deadline`;
/// returns how many could not be sent (still in `frames`).
fn transmit_until<P: Port>(port: &mut P, frames: &mut Vec<P::Buf>, deadline: std::time::Instant) -> usize {
    while !frames.is_empty() {
        if port.tx_burst(frames) == 0 {
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::yield_now();
        }
    }
    frames.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use port::{MemPort, MemPortControl};

    fn bridge(burst: usize) -> (Engine<MemPort>, MemPortControl, MemPortControl, EngineStats) {
        let (client, client_ctl) = MemPort::new([2, 0, 0, 0, 0, 0xc]);
        let (server, server_ctl) = MemPort::new([2, 0, 0, 0, 0, 0x5]);
        let stats = EngineStats::default();
        (
            Engine::new(
                client,
                server,
                stats.clone(),
                burst,
                &InterceptPolicy::default(),
                EngineStart {
                    now: Instant::ZERO,
                    wall: WallAnchor::new(std::time::SystemTime::UNIX_EPOCH),
                    seed: 1,
                },
            ),
            client_ctl,
            server_ctl,
            stats,
        )
    }

    /// An Ethernet frame with an unassigned ethertype and `fill` as payload.
    fn frame(fill: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5];
        frame.resize(len.max(14), fill);
        frame
    }

    /// A minimal valid IPv4/UDP frame, padded to 60 bytes.
    fn udp_frame() -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2];
        let mut sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
        frame.resize(60, 0);
        frame
    }

    #[test]
    fn frames_cross_unchanged_both_ways_in_order() {
        let (mut bridge, client, server, stats) = bridge(4);
        let from_client: Vec<_> = (0..10).map(|i| frame(i, 60 + usize::from(i))).collect();
        let from_server: Vec<_> = (0..3).map(|i| frame(100 + i, 1514)).collect();
        from_client.iter().cloned().for_each(|f| client.inject(f));
        from_server.iter().cloned().for_each(|f| server.inject(f));
        while bridge.poll(Instant::ZERO) > 0 {}
        assert_eq!(server.take_transmitted(), from_client);
        assert_eq!(client.take_transmitted(), from_server);
        let (c, s) = (stats.ports[0].totals(), stats.ports[1].totals());
        assert_eq!((c.rx, c.bridged, c.dropped, c.malformed, c.tx), (10, 10, 0, 0, 3));
        assert_eq!((s.rx, s.bridged, s.dropped, s.malformed, s.tx), (3, 3, 0, 0, 10));
    }

    #[test]
    fn runts_are_dropped_and_l3_malformed_frames_bridged() {
        let (mut bridge, client, server, stats) = bridge(32);
        let good = udp_frame();
        let mut bad_checksum = good.clone();
        bad_checksum[24] ^= 0xff;
        client.inject(vec![]);
        client.inject(vec![0xff; 13]);
        client.inject(good.clone());
        client.inject(bad_checksum.clone());
        while bridge.poll(Instant::ZERO) > 0 {}
        assert_eq!(server.take_transmitted(), vec![good, bad_checksum]);
        let c = stats.ports[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped, c.malformed), (4, 2, 2, 3));
    }

    #[test]
    fn full_transmit_ring_drops_after_retries_without_losing_count() {
        let (mut bridge, client, server, stats) = bridge(8);
        server.set_tx_burst_limit(Some(0));
        (0..8).for_each(|i| client.inject(frame(i, 64)));
        assert_eq!(bridge.poll(Instant::ZERO), 8);
        assert!(server.take_transmitted().is_empty());
        let c = stats.ports[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped), (8, 0, 8));

        // A ring that takes 3 per burst still delivers everything, in order.
        server.set_tx_burst_limit(Some(3));
        let frames: Vec<_> = (0..8).map(|i| frame(50 + i, 64)).collect();
        frames.iter().cloned().for_each(|f| client.inject(f));
        bridge.poll(Instant::ZERO);
        assert_eq!(server.take_transmitted(), frames);
        let c = stats.ports[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped), (16, 8, 8));
        assert_eq!(stats.ports[1].totals().tx, 8);
    }

    #[test]
    fn burst_size_bounds_each_poll() {
        let (mut bridge, client, _server, _stats) = bridge(4);
        (0..10).for_each(|i| client.inject(frame(i, 60)));
        assert_eq!(bridge.poll(Instant::ZERO), 4);
        assert_eq!(client.pending_rx(), 6);
    }
}
