//! Assembles the DPDK data plane from a [`Config`]: EAL, the mbuf pool, the
//! ports with one queue pair per worker (or, for a driver that cannot
//! spread frames over queues, one receive queue that worker 0 distributes
//! over rings, see [`appliance::distribution`]), and the worker threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::capture::CaptureSettings;
use appliance::clock::{random_seed, EngineStart};
use appliance::config::{Config, Device};
use appliance::connlog::ConnectionLog;
use appliance::counters::{MirrorReport, PortReport, PortTotals, Report, TcpTotals, WorkerStats, WorkerTotals};
use appliance::directory::SessionDirectory;
use appliance::distribution::{DistributionStats, DistributionTotals, Distributor, Receive, SteeredPort};
use appliance::engine::{Engine, EngineStats, InterceptPolicy, Side};
use appliance::handoff::WorkerHandoff;
use appliance::keylog::KeyLog;
use appliance::mirror::{MirrorStats, MirrorTotals, Taps};
use appliance::pcap_stream::{PcapStream, StreamFeed};
use appliance::privileges::RunAs;
use appliance::reload::{Reloader, WorkerInbox};
use appliance::worker::{run_worker, supervise, EngineClock, TimedPoller};
use appliance::writer::{CaptureQueue, Writer, WriterError, WriterHandle};
use appliance::SetupError;
use dpdk::{DpdkError, Eal, EthDev, EthDevConfig, EthQueue, Ring, RingConsumer, RingProducer, RxSteering};
use thiserror::Error;

/// Why the data plane could not start.
#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("the OS gave no entropy for the TCP initial sequence numbers")]
    Entropy,
    #[error("worker thread {0} panicked")]
    WorkerPanicked(usize),
    #[error(
        "dataplane.workers = {workers}: ports {fanout} are spread over the workers by af_packet's kernel fanout hash \
         and ports {rss} by NIC RSS; the two hashes differ, so the legs of a connection would reach different workers. \
         Use the same kind of device on every port (all af_packet, or all NICs with RSS), or one worker"
    )]
    MixedSteering { workers: u16, fanout: String, rss: String },
    #[error(
        "dataplane.workers = {workers}: ports {software} have neither RSS nor af_packet's kernel fanout, so worker 0 \
         spreads their frames by tlsgate's own symmetric flow hash, while ports {hardware} are spread by their device \
         (NIC RSS or the kernel's fanout hash); the hashes differ, so the legs of a connection would reach different \
         workers. Use the same kind of device on every port (all without RSS, all af_packet, or all NICs with RSS), \
         or one worker"
    )]
    SoftwareMixed {
        workers: u16,
        software: String,
        hardware: String,
    },
    #[error(
        "dataplane.workers = {workers} is not a power of two, and the RSS ports {ports} differ in driver or redirection \
         table size, so the same hash could select different queues on them and the legs of a connection reach \
         different workers. Use a power-of-two number of workers, or the same NIC model on every port"
    )]
    RssTablesDiffer { workers: u16, ports: String },
    #[error(
        "dataplane.workers = {workers}, but the EAL core list (-l in dataplane.eal_args) has {lcores} worker lcore(s) \
         besides the main one; give one lcore per worker, e.g. -l 0-{workers}"
    )]
    NotEnoughLcores { workers: usize, lcores: usize },
}

/// How one port spreads its frames over the workers' queues.
#[derive(Debug, Clone, Copy)]
struct PortSteering<'a> {
    name: &'a str,
    driver: &'a str,
    steering: RxSteering,
    reta_size: u16,
}

/// With several workers, every port must send a connection's frames to the
/// same worker's queue, whichever port they cross: the ports must not mix
/// af_packet's fanout with NIC RSS, nor either with software distribution
/// (each has its own hash), and NICs whose redirection tables differ agree
/// only for a power-of-two number of queues (a device under software
/// distribution refuses on its own when it has too few transmit queues,
/// `DpdkError::NoFlowSteering`).
fn check_steering<'a>(workers: u16, ports: impl IntoIterator<Item = PortSteering<'a>>) -> Result<(), DataplaneError> {
    if workers <= 1 {
        return Ok(());
    }
    let ports: Vec<_> = ports.into_iter().collect();
    let names = |wanted: fn(&RxSteering) -> bool| {
        ports
            .iter()
            .filter(|port| wanted(&port.steering))
            .map(|port| port.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fanout = names(|steering| *steering == RxSteering::KernelFanout);
    let rss = names(|steering| matches!(steering, RxSteering::SymmetricRss { .. }));
    let software = names(|steering| *steering == RxSteering::Software);
    if !fanout.is_empty() && !rss.is_empty() {
        return Err(DataplaneError::MixedSteering { workers, fanout, rss });
    }
    if !software.is_empty() && (!fanout.is_empty() || !rss.is_empty()) {
        return Err(DataplaneError::SoftwareMixed {
            workers,
            software,
            hardware: if fanout.is_empty() { rss } else { fanout },
        });
    }
    let mut tables = ports
        .iter()
        .filter(|port| matches!(port.steering, RxSteering::SymmetricRss { .. }))
        .map(|port| (port.driver, port.reta_size));
    let first = tables.next();
    if !workers.is_power_of_two() && tables.any(|table| Some(table) != first) {
        return Err(DataplaneError::RssTablesDiffer { workers, ports: rss });
    }
    Ok(())
}

/// One worker's queue on one port: its own queue pair, or under software
/// distribution its transmit queue with the port's receive queue (worker 0,
/// which distributes) or its ring from worker 0 (the others).
pub type WorkerQueue = SteeredPort<EthQueue, RingProducer, RingConsumer>;

/// Where a worker's frames of one port come from.
type WorkerReceive = Receive<dpdk::Mbuf, RingProducer, RingConsumer>;

/// A running set of ports, ready for workers.
pub struct Dataplane {
    eal: Arc<Eal>,
    /// The EAL worker lcore each worker thread is pinned to, in order.
    lcores: Vec<u32>,
    /// Every port, in [`Side`] order.
    devices: Vec<(Device, Arc<EthDev>)>,
    /// Per port (in [`Side`] order), what worker 0 did with its frames when
    /// the port is under software distribution.
    distribution: Vec<Option<Arc<DistributionStats>>>,
    workers: Vec<WorkerSlot>,
    max_sleep: Duration,
    burst_size: usize,
    policy: InterceptPolicy,
    connection_log: Option<Arc<ConnectionLog>>,
    /// Live reload of the policy, TLS material and logs (SIGHUP, and the
    /// control channel's `reload`).
    reloader: Arc<Reloader>,
    capture: Option<CaptureQueue>,
    /// The thread that writes the logs and the capture file.
    writer: Writer,
    /// The PCAP-over-IP listener (`capture.pcap_over_ip`).
    stream: Option<PcapStream>,
    /// Server ports the plaintext's frames show as others (`capture.port_map`).
    port_map: std::collections::BTreeMap<u16, u16>,
    /// The decrypt-mirror port (`[ports.mirror]`).
    mirror: Option<(Device, Arc<EthDev>)>,
    /// The process's resident memory when stop was requested, before the
    /// workers let go of their connections (set by [`Dataplane::run`]).
    rss_at_stop: Option<u64>,
    /// Every worker's engine clock (see [`Dataplane::clock`]).
    clock: EngineClock,
}

/// What every worker's engine shares: logs, the decrypted capture and
/// PCAP-over-IP, and (with several workers) the directory of their
/// sessions.
#[derive(Clone, Default)]
struct SharedOutputs {
    connection_log: Option<Arc<ConnectionLog>>,
    capture: Option<CaptureQueue>,
    stream: Option<StreamFeed>,
    port_map: std::collections::BTreeMap<u16, u16>,
    directory: Option<Arc<SessionDirectory>>,
    /// The `[[service]]` entries, terminated by every worker.
    services: Option<Arc<appliance::service::Services>>,
}

impl SharedOutputs {
    /// A worker's outputs of the plaintext (without the mirror port).
    fn taps(&self) -> Taps {
        let taps = Taps::new(self.port_map.clone());
        let taps = match &self.capture {
            Some(capture) => taps.with_capture(capture.clone()),
            None => taps,
        };
        match &self.stream {
            Some(feed) => taps.with_stream(feed.clone()),
            None => taps,
        }
    }
}

/// A worker's engine over its queues (client, server, and the inspection
/// pair when configured), with TLS interception, the outputs of the
/// plaintext (its queue of the mirror port among them), the hand-off of
/// backend legs' frames between the workers and the connection log when
/// configured.
fn assemble<P: port::Port>(
    ports: WorkerPorts<P>,
    stats: EngineStats,
    burst_size: usize,
    policy: &InterceptPolicy,
    start: EngineStart,
    tls: Option<mitm::TlsContext>,
    outputs: SharedOutputs,
) -> Option<Engine<P>> {
    let WorkerPorts {
        data: queues,
        mirror,
        handoff,
    } = ports;
    let mut queues = queues.into_iter();
    let (client, server) = (queues.next()?, queues.next()?);
    let mut engine = Engine::new(client, server, stats, burst_size, policy, start);
    if let (Some(inspect_out), Some(inspect_in), Some(settings)) = (queues.next(), queues.next(), policy.inspection) {
        engine = engine.with_inspection(inspect_out, inspect_in, settings);
    }
    let engine = match tls {
        Some(tls) => engine.with_tls(tls),
        None => engine,
    };
    let engine = engine.with_taps(outputs.taps());
    let engine = match mirror {
        Some((port, stats)) => engine.with_mirror(port, stats),
        None => engine,
    };
    let engine = match outputs.directory {
        Some(directory) => engine.with_directory(directory),
        None => engine,
    };
    let engine = match outputs.services {
        Some(services) => engine.with_services(services),
        None => engine,
    };
    let engine = match handoff {
        Some(handoff) => engine.with_handoff(handoff),
        None => engine,
    };
    Some(match outputs.connection_log {
        Some(log) => engine.with_connection_log(log),
        None => engine,
    })
}

/// One worker's queues: on the data ports (in [`Side`] order), its
/// transmit queue on the mirror port with its counters, and its ends of
/// the hand-off of backend legs' frames between the workers (several
/// workers).
struct WorkerPorts<P> {
    data: Vec<P>,
    mirror: Option<(P, Arc<MirrorStats>)>,
    handoff: Option<WorkerHandoff>,
}

struct WorkerSlot {
    queues: Option<WorkerPorts<WorkerQueue>>,
    /// What its queue of the mirror port did.
    mirror_stats: Arc<MirrorStats>,
    tls: Option<mitm::TlsContext>,
    /// The seed of its engine's random choices (from the OS's entropy).
    seed: u64,
    /// Where reloaded rules reach this worker.
    inbox: Option<WorkerInbox>,
    engine: EngineStats,
    stats: Arc<WorkerStats>,
    /// The ports this worker distributes to the others (worker 0 only).
    handoffs: Vec<Arc<DistributionStats>>,
}

/// Where each worker receives one port's frames: its own queue, or under
/// software distribution worker 0 the port's queue (handing the others'
/// frames over one ring per worker) and the others their ring. Returns the
/// receive side of each worker, in order, and the distribution's counters.
fn receivers(
    eal: &Arc<Eal>,
    port: usize,
    dev: &EthDev,
    engines: &[EngineStats],
    ring_capacity: usize,
) -> Result<(Vec<WorkerReceive>, Option<Arc<DistributionStats>>), DataplaneError> {
    if dev.steering() != RxSteering::Software {
        return Ok((engines.iter().map(|_| Receive::Queue).collect(), None));
    }
    let stats = Arc::new(DistributionStats::default());
    let mut outputs = vec![None];
    let mut consumers = Vec::new();
    for worker in 1..engines.len() {
        let (producer, consumer) = Ring::spsc(eal, &format!("tg_dist_p{port}_w{worker}"), ring_capacity, -1)?;
        outputs.push(Some(producer));
        consumers.push(Receive::Handoff(consumer));
    }
    // Frames dropped on a full ring are counted on worker 0's side of the port.
    let port_stats = engines
        .first()
        .and_then(|engine| engine.ports.get(port))
        .cloned()
        .ok_or_else(|| SetupError::Device(format!("no counters for port {port}")))?;
    let distributor = Distributor::new(outputs, Arc::clone(&stats), port_stats);
    let mut receivers = vec![Receive::Distribute(distributor)];
    receivers.extend(consumers);
    Ok((receivers, Some(stats)))
}

impl Dataplane {
    /// Initialises EAL and opens the ports of `config` (or `devices`, when
    /// given, in place of the configured data ports: replay uses pcap
    /// devices, without the mirror port and PCAP-over-IP, the outputs of a
    /// live appliance). With `run_as`, the process switches to that user
    /// once the ports, rings and TLS contexts are made, and opens the logs,
    /// the capture and PCAP-over-IP after that, as that user (see
    /// [`appliance::privileges`]).
    pub fn open(
        config: &Config,
        devices: Option<Vec<Device>>,
        run_as: Option<&RunAs>,
    ) -> Result<Dataplane, DataplaneError> {
        let live = devices.is_none();
        let devices = match devices {
            Some(devices) => devices,
            None => config.devices().map_err(SetupError::Device)?,
        };
        let mirror = match live {
            true => config.mirror_device().map_err(SetupError::Device)?,
            false => None,
        };
        let appliance::Preflight { policy, services } = appliance::preflight(config)?;
        if let Some(run_as) = run_as {
            // Before EAL starts its threads, so that they inherit it.
            run_as.forbid_new_privileges().map_err(SetupError::from)?;
        }
        let dataplane = &config.dataplane;
        let mut eal_args = dataplane.eal_args.clone();
        for device in devices.iter().chain(&mirror) {
            eal_args.extend(device.eal_args());
        }
        let eal = Eal::init(&eal_args)?;
        let lcores = eal.worker_lcores();
        if lcores.len() < usize::from(dataplane.workers) {
            return Err(DataplaneError::NotEnoughLcores {
                workers: usize::from(dataplane.workers),
                lcores: lcores.len(),
            });
        }
        let pool = dpdk::pool_for_devices(
            &eal,
            "tlsgate_frames",
            dataplane.mbufs,
            devices.iter().chain(&mirror).map(Device::ethdev_name),
        )?;
        let dev_config = EthDevConfig {
            queues: dataplane.workers,
            min_rx_queues: 1,
            rx_descriptors: dataplane.rx_descriptors,
            tx_descriptors: dataplane.tx_descriptors,
            promiscuous: true,
        };
        let devices = devices
            .into_iter()
            .map(|device| {
                let dev = EthDev::open(&eal, device.ethdev_name(), &pool, dev_config)?;
                Ok((device, dev))
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        // Only transmitted on: its receive side is never read.
        let mirror = match mirror {
            Some(device) => {
                let dev = EthDev::open(&eal, device.ethdev_name(), &pool, dev_config)?;
                tracing::info!(
                    "mirror port {} (driver {}): a copy of the intercepted plaintext, {} transmit queues",
                    device.ethdev_name(),
                    dev.driver(),
                    dataplane.workers
                );
                Some((device, dev))
            }
            None => None,
        };
        for (device, dev) in &devices {
            if dev.steering() == RxSteering::Software {
                let others = match dataplane.workers {
                    2 => "worker 1".to_owned(),
                    workers => format!("each of workers 1-{}", workers.saturating_sub(1)),
                };
                tracing::info!(
                    "port {} (driver {}): {}; {} transmit queues, a ring of {} frames to {others}",
                    device.ethdev_name(),
                    dev.driver(),
                    dev.steering(),
                    dataplane.workers,
                    dataplane.rx_descriptors,
                );
            } else {
                tracing::info!(
                    "port {} (driver {}): {}",
                    device.ethdev_name(),
                    dev.driver(),
                    dev.steering()
                );
            }
        }
        check_steering(
            dataplane.workers,
            devices.iter().map(|(device, dev)| PortSteering {
                name: device.ethdev_name(),
                driver: dev.driver(),
                steering: dev.steering(),
                reta_size: dev.reta_size(),
            }),
        )?;
        let engines: Vec<EngineStats> = (0..dataplane.workers).map(|_| EngineStats::default()).collect();
        let mut distribution = Vec::new();
        // Per port, the receive side of each worker, in worker order.
        let mut port_receivers = Vec::new();
        for (port, (_, dev)) in devices.iter().enumerate() {
            let (receive, stats) = receivers(&eal, port, dev, &engines, usize::from(dataplane.rx_descriptors))?;
            port_receivers.push(receive.into_iter());
            distribution.push(stats);
        }
        let handoffs: Vec<Arc<DistributionStats>> = distribution.iter().flatten().cloned().collect();
        // A [[service]] backend leg's frames may hash to another worker than
        // its connection's: that worker hands them over (an inbox of a
        // receive ring's size per worker).
        let mut leg_handoffs = match dataplane.workers {
            0 | 1 => Vec::new(),
            workers => WorkerHandoff::for_workers(usize::from(workers), usize::from(dataplane.rx_descriptors)),
        }
        .into_iter();
        let mut workers = (0..dataplane.workers)
            .zip(engines)
            .map(|(queue, engine)| {
                let queues = devices
                    .iter()
                    .zip(&mut port_receivers)
                    .map(|((_, dev), receive)| {
                        let receive = receive
                            .next()
                            .ok_or_else(|| SetupError::Device(format!("no receive side for worker {queue}")))?;
                        Ok(SteeredPort::new(dev.queue(queue)?, receive))
                    })
                    .collect::<Result<Vec<_>, DataplaneError>>()?;
                let mirror_stats = Arc::new(MirrorStats::default());
                let mirror_queue = match &mirror {
                    Some((_, dev)) => Some((
                        SteeredPort::new(dev.queue(queue)?, Receive::Queue),
                        Arc::clone(&mirror_stats),
                    )),
                    None => None,
                };
                Ok(WorkerSlot {
                    queues: Some(WorkerPorts {
                        data: queues,
                        mirror: mirror_queue,
                        handoff: leg_handoffs.next(),
                    }),
                    mirror_stats,
                    tls: policy.tls_context().map_err(SetupError::from)?,
                    seed: random_seed().map_err(|_| DataplaneError::Entropy)?,
                    // Set once the reloader exists, after the logs are open.
                    inbox: None,
                    engine,
                    stats: Arc::default(),
                    // Worker 0 distributes the ports under software distribution.
                    handoffs: if queue == 0 { handoffs.clone() } else { Vec::new() },
                })
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        // Everything that needs root is done: DPDK's memory, the ports and
        // rings, the CA key read. The outputs are opened as the new user.
        if let Some(run_as) = run_as {
            run_as.enter().map_err(SetupError::from)?;
            tracing::info!(
                "dropped privileges: running as {}{}, no capabilities, no_new_privs",
                run_as.who(),
                run_as
                    .chroot
                    .as_ref()
                    .map_or(String::new(), |root| format!(", chrooted to {}", root.display()))
            );
        }
        // The writer thread starts with the new user's credentials too.
        let writer = Writer::start()?;
        let key_log = match &config.log.keylog {
            Some(path) => Some(Arc::new(
                KeyLog::open(path, writer.handle()).map_err(SetupError::KeyLog)?,
            )),
            None => None,
        };
        if let Some(key_log) = &key_log {
            for tls in workers.iter_mut().filter_map(|slot| slot.tls.as_mut()) {
                tls.set_key_log(key_log.clone());
            }
        }
        let connection_log = match &config.log.connections {
            Some(path) => Some(Arc::new(
                ConnectionLog::open(path, writer.handle()).map_err(SetupError::from)?,
            )),
            None => None,
        };
        let port_map: std::collections::BTreeMap<u16, u16> = match &config.capture {
            Some(capture) => capture.ports().map_err(SetupError::Device)?.into_iter().collect(),
            None => Default::default(),
        };
        let capture = match &config.capture {
            Some(capture @ appliance::config::Capture { path: Some(path), .. }) => Some(
                CaptureQueue::open(
                    CaptureSettings {
                        path: path.clone(),
                        port_map: port_map.clone(),
                        rotate_bytes: capture.rotate_mb.map(|mb| mb.saturating_mul(1 << 20)),
                        rotate_secs: capture.rotate_secs,
                        max_files: capture.max_files,
                    },
                    writer.handle(),
                )
                .map_err(SetupError::from)?,
            ),
            _ => None,
        };
        let listen = config.capture.as_ref().and_then(|capture| capture.pcap_over_ip);
        let stream = match listen.filter(|_| live) {
            Some(listen) => {
                let stream = PcapStream::start(listen).map_err(SetupError::from)?;
                tracing::info!(
                    "PCAP-over-IP on {}: the intercepted plaintext as a live pcap stream (e.g. nc {} {} | tshark -r -)",
                    stream.local_addr(),
                    stream.local_addr().ip(),
                    stream.local_addr().port()
                );
                if !listen.ip().is_loopback() {
                    tracing::warn!(
                        "capture.pcap_over_ip {listen} is not a loopback address: whoever reaches it reads the \
                         decrypted plaintext (the stream is not authenticated)"
                    );
                }
                Some(stream)
            }
            None => None,
        };
        let (reloader, inboxes) = Reloader::new(
            config,
            Arc::new(services),
            Arc::clone(policy.rules.learned()),
            key_log,
            connection_log.clone(),
            writer.handle().clone(),
            usize::from(dataplane.workers),
        );
        for (slot, inbox) in workers.iter_mut().zip(inboxes) {
            slot.inbox = Some(inbox);
        }
        Ok(Dataplane {
            eal,
            lcores,
            devices,
            distribution,
            workers,
            max_sleep: Duration::from_micros(u64::from(dataplane.idle_sleep_max_us)),
            burst_size: usize::from(dataplane.burst_size),
            policy,
            connection_log,
            reloader: Arc::new(reloader),
            capture,
            writer,
            stream,
            port_map,
            mirror,
            rss_at_stop: None,
            clock: EngineClock::start(),
        })
    }

    fn outputs(&self) -> SharedOutputs {
        SharedOutputs {
            connection_log: self.connection_log.clone(),
            capture: self.capture.clone(),
            stream: self.stream.as_ref().map(PcapStream::feed),
            port_map: self.port_map.clone(),
            directory: (self.workers.len() > 1).then(Arc::default),
            services: Some(self.reloader.services()),
        }
    }

    /// The engine of worker 0 and its counters, for callers that drive
    /// polling themselves (replay). Returns `None` once taken.
    pub fn take_first_worker(&mut self) -> Option<(Engine<WorkerQueue>, Arc<WorkerStats>, Duration)> {
        let outputs = self.outputs();
        let slot = self.workers.first_mut()?;
        let engine = assemble(
            slot.queues.take()?,
            slot.engine.clone(),
            self.burst_size,
            &self.policy,
            EngineStart {
                now: netstack::Instant::ZERO,
                wall: self.clock.wall(),
                seed: slot.seed,
            },
            slot.tls.take(),
            outputs,
        )?;
        Some((engine, Arc::clone(&slot.stats), self.max_sleep))
    }

    /// Runs one worker thread per queue pair until `stop` is set, reloading
    /// (see [`Reloader::hangup`]) whenever `hangup` is set; `tick` is
    /// called about every `interval` (zero: never) on this thread with a
    /// fresh report.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        hangup: &AtomicBool,
        interval: Duration,
        mut tick: impl FnMut(&Report),
    ) -> Result<(), DataplaneError> {
        let max_sleep = self.max_sleep;
        let burst_size = self.burst_size;
        let policy = self.policy.clone();
        let clock = self.clock;
        let eal = Arc::clone(&self.eal);
        let outputs = self.outputs();
        // What the workers obey: set by the control thread once it has
        // taken its last sample (see `supervise`).
        let halt = &AtomicBool::new(false);
        let outcome = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (index, slot) in self.workers.iter_mut().enumerate() {
                let Some(queues) = slot.queues.take() else {
                    continue;
                };
                let engine_stats = slot.engine.clone();
                let handoffs = slot.handoffs.clone();
                let tls = slot.tls.take();
                let seed = slot.seed;
                let inbox = slot.inbox.take();
                let outputs = outputs.clone();
                let stats = Arc::clone(&slot.stats);
                let eal = Arc::clone(&eal);
                let lcore = self.lcores.get(index).copied();
                let policy = policy.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("tlsgate-worker-{index}"))
                    .spawn_scoped(scope, move || {
                        if let Err(err) = eal.register_thread() {
                            // Works unregistered too, without mempool caches.
                            tracing::warn!("worker {index}: {err}");
                        }
                        if let Some(lcore) = lcore {
                            match eal.pin_current_thread(lcore) {
                                Ok(()) => tracing::info!(
                                    "worker {index} runs on lcore {lcore} (cpus {})",
                                    dpdk::current_thread_cpus().as_deref().unwrap_or("unknown")
                                ),
                                Err(err) => tracing::warn!("worker {index}: {err}"),
                            }
                        }
                        let mut poller = TimedPoller::new(&stats, max_sleep)
                            .with_clock(clock)
                            .with_handoffs(handoffs);
                        let start = EngineStart {
                            now: poller.now(),
                            wall: clock.wall(),
                            seed,
                        };
                        let engine = assemble(queues, engine_stats, burst_size, &policy, start, tls, outputs);
                        match engine {
                            Some(mut engine) => {
                                let reset = run_worker(&mut engine, &mut poller, halt, inbox.as_ref());
                                if reset > 0 {
                                    tracing::info!("worker {index}: reset {reset} connection legs at shutdown");
                                }
                            }
                            None => tracing::error!("worker {index}: fewer than two ports"),
                        }
                    });
                match handle {
                    Ok(handle) => handles.push((index, handle)),
                    Err(err) => {
                        tracing::error!("cannot start worker {index}: {err}");
                        halt.store(true, Ordering::Release);
                        return Err(DataplaneError::WorkerPanicked(index));
                    }
                }
            }
            let mut last_tick = Instant::now();
            // The process's memory is sampled before the workers are halted
            // (they reset and free their connections then).
            let rss = supervise(
                stop,
                halt,
                || handles.iter().any(|(_, h)| h.is_finished()),
                || {
                    if hangup.swap(false, Ordering::Relaxed) {
                        self.reloader.hangup();
                    }
                    if !interval.is_zero() && last_tick.elapsed() >= interval {
                        last_tick = Instant::now();
                        tick(&self.report());
                    }
                },
                appliance::counters::resident_bytes,
            );
            // A worker that ended on its own (a panic) stops the others too.
            stop.store(true, Ordering::Relaxed);
            let joined = handles
                .into_iter()
                .try_for_each(|(index, handle)| handle.join().map_err(|_| DataplaneError::WorkerPanicked(index)));
            Ok((rss, joined))
        });
        let (rss, joined) = outcome?;
        self.rss_at_stop = rss;
        // The workers are gone: everything they queued goes to the files.
        self.writer.stop();
        for ((device, _), totals) in self.devices.iter().zip(self.distribution()) {
            if let Some(totals) = totals {
                tracing::info!(
                    "port {}: software distribution: worker 0 kept {} frames, handed {} to the other workers, dropped \
                     {} on full rings",
                    device.ethdev_name(),
                    totals.kept,
                    totals.handed_off,
                    totals.ring_full
                );
            }
        }
        joined
    }

    /// Waits until everything the workers queued for the logs and the
    /// capture is written (for a caller that drove worker 0 itself, before
    /// its final report; [`Dataplane::run`] stops the writer on its own).
    pub fn flush_outputs(&self) {
        self.writer.handle().flush();
    }

    /// The learned bypasses every worker shares (for the control channel).
    pub fn learned(&self) -> Arc<appliance::learned::LearnedStore> {
        Arc::clone(self.policy.rules.learned())
    }

    /// The engine clock the workers of [`Dataplane::run`] read.
    pub fn clock(&self) -> EngineClock {
        self.clock
    }

    /// Per port (in [`Side`] order), what worker 0 did with the frames of a
    /// port under software distribution (`None` for the other ports).
    pub fn distribution(&self) -> Vec<Option<DistributionTotals>> {
        self.distribution
            .iter()
            .map(|stats| stats.as_ref().map(|stats| stats.totals()))
            .collect()
    }

    /// Each worker's own counters per port (in [`Side`] order; the report
    /// sums them over the workers).
    pub fn worker_ports(&self) -> Vec<Vec<PortTotals>> {
        self.workers
            .iter()
            .map(|slot| {
                slot.engine
                    .ports
                    .iter()
                    .take(self.devices.len())
                    .map(|port| port.totals())
                    .collect()
            })
            .collect()
    }

    /// The live reload of this instance (see [`appliance::reload`]).
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// Reloads from the configuration file at `path` on SIGHUP (the file
    /// `run` started from); without it SIGHUP only reopens the logs.
    pub fn reload_from(self, path: &std::path::Path) -> Self {
        self.reloader.set_source(path);
        self
    }

    /// Every counter, summed over workers per port.
    pub fn report(&self) -> Report {
        let mut report = self.report_source().report();
        if let Some(rss) = self.rss_at_stop {
            report.rss_bytes = Some(rss);
        }
        report
    }

    /// A handle that makes the same report from another thread (the
    /// metrics endpoint) while the workers run: it only reads their
    /// counters. Drop it before the data plane: it keeps the ports open.
    pub fn report_source(&self) -> ReportSource {
        ReportSource {
            ports: Side::ALL
                .into_iter()
                .zip(&self.devices)
                .map(|(side, (device, dev))| (side, device.ethdev_name().to_owned(), Arc::clone(dev)))
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|slot| (slot.engine.clone(), Arc::clone(&slot.stats)))
                .collect(),
            learned: Arc::clone(self.policy.rules.learned()),
            reloader: Arc::clone(&self.reloader),
            capture: self.capture.clone(),
            writer: self.writer.handle().clone(),
            stream: self.stream.as_ref().map(PcapStream::feed),
            mirror: self.mirror.as_ref().map(|(device, dev)| {
                (
                    device.ethdev_name().to_owned(),
                    Arc::clone(dev),
                    self.workers.iter().map(|slot| Arc::clone(&slot.mirror_stats)).collect(),
                )
            }),
        }
    }
}

/// What a [`Report`] is read from: every worker's counters, the ports'
/// driver counters, the learned bypasses, the reloads, the capture,
/// PCAP-over-IP and the mirror port (see
/// [`Dataplane::report_source`]).
#[derive(Clone)]
pub struct ReportSource {
    ports: Vec<(Side, String, Arc<EthDev>)>,
    workers: Vec<(EngineStats, Arc<WorkerStats>)>,
    learned: Arc<appliance::learned::LearnedStore>,
    reloader: Arc<Reloader>,
    capture: Option<CaptureQueue>,
    /// What the writer thread dropped.
    writer: WriterHandle,
    stream: Option<StreamFeed>,
    /// The mirror port's name and device, and each worker's queue on it.
    mirror: Option<(String, Arc<EthDev>, Vec<Arc<MirrorStats>>)>,
}

impl ReportSource {
    /// Every counter now, summed over workers per port; `rss_bytes` is
    /// sampled now.
    pub fn report(&self) -> Report {
        let ports = self
            .ports
            .iter()
            .map(|(side, device, dev)| {
                let mut totals = PortTotals::default();
                for (engine, _) in &self.workers {
                    totals += engine.ports[side.index()].totals();
                }
                PortReport {
                    role: side.role(),
                    device: device.clone(),
                    totals,
                    driver: dev.counters(),
                }
            })
            .collect();
        let top_sni: Vec<_> = self.workers.iter().map(|(engine, _)| engine.tcp.top_sni()).collect();
        Report {
            top_sni: appliance::topnames::merged(top_sni.iter().map(Vec::as_slice)),
            learned: self.learned.totals(),
            reloads: self.reloader.totals(),
            rss_bytes: appliance::counters::resident_bytes(),
            capture: self.capture.as_ref().map(|capture| capture.totals()),
            writer: self.writer.totals(),
            pcap_over_ip: self.stream.as_ref().map(StreamFeed::totals),
            mirror: self.mirror.as_ref().map(|(device, dev, queues)| MirrorReport {
                device: device.clone(),
                totals: queues.iter().fold(MirrorTotals::default(), |mut sum, queue| {
                    sum += queue.totals();
                    sum
                }),
                driver: dev.counters(),
            }),
            ports,
            workers: self
                .workers
                .iter()
                .map(|(engine, stats)| {
                    let splice = engine.tcp.totals().splice;
                    WorkerTotals {
                        sessions_opened: splice.sessions_opened,
                        sessions_live: splice.sessions_live,
                        ..stats.totals()
                    }
                })
                .collect(),
            tcp: self.workers.iter().fold(TcpTotals::default(), |mut sum, (engine, _)| {
                sum += engine.tcp.totals();
                sum
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSS: RxSteering = RxSteering::SymmetricRss {
        rss_hf: dpdk::SYMMETRIC_RSS_HF,
    };

    fn port(name: &'static str, driver: &'static str, steering: RxSteering, reta_size: u16) -> PortSteering<'static> {
        PortSteering {
            name,
            driver,
            steering,
            reta_size,
        }
    }

    #[test]
    fn ports_must_spread_a_connection_alike() {
        let fanout = [
            port("net_af_packet0", "net_af_packet", RxSteering::KernelFanout, 0),
            port("net_af_packet1", "net_af_packet", RxSteering::KernelFanout, 0),
        ];
        assert!(check_steering(2, fanout).is_ok());
        assert!(check_steering(3, fanout).is_ok());
        let same_nics = [
            port("0000:03:00.0", "net_i40e", RSS, 512),
            port("0000:03:00.1", "net_i40e", RSS, 512),
        ];
        assert!(check_steering(3, same_nics).is_ok());
        let mixed = [
            port("net_af_packet0", "net_af_packet", RxSteering::KernelFanout, 0),
            port("0000:03:00.1", "net_i40e", RSS, 512),
        ];
        let err = check_steering(2, mixed).expect_err("fanout and RSS differ");
        assert!(matches!(err, DataplaneError::MixedSteering { .. }));
        let message = err.to_string();
        assert!(
            message.contains("net_af_packet0") && message.contains("0000:03:00.1"),
            "{message}"
        );
        assert!(check_steering(1, mixed).is_ok(), "one worker gets everything anyway");
        let other_nics = [
            port("0000:03:00.0", "net_i40e", RSS, 512),
            port("0000:04:00.0", "mlx5_pci", RSS, 64),
        ];
        assert!(check_steering(4, other_nics).is_ok(), "power of two: the tables agree");
        assert!(matches!(
            check_steering(3, other_nics),
            Err(DataplaneError::RssTablesDiffer { workers: 3, .. })
        ));
    }

    #[test]
    fn software_distribution_is_not_mixed_with_a_device_hash() {
        let software = [
            port("net_pcap0", "net_pcap", RxSteering::Software, 0),
            port("net_memif1", "net_memif", RxSteering::Software, 0),
            port("net_ring2", "net_ring", RxSteering::Software, 0),
            port("net_ring3", "net_ring", RxSteering::Software, 0),
        ];
        assert!(check_steering(2, software).is_ok());
        assert!(
            check_steering(3, software).is_ok(),
            "one hash on every port: any worker count"
        );
        for other in [
            port("net_af_packet1", "net_af_packet", RxSteering::KernelFanout, 0),
            port("0000:03:00.1", "net_i40e", RSS, 512),
        ] {
            let mixed = [port("net_pcap0", "net_pcap", RxSteering::Software, 0), other];
            let err = check_steering(2, mixed).expect_err("the hashes differ");
            assert!(matches!(err, DataplaneError::SoftwareMixed { .. }), "{err}");
            let message = err.to_string();
            assert!(
                message.contains("net_pcap0") && message.contains(other.name) && message.contains("worker 0"),
                "{message}"
            );
            assert!(check_steering(1, mixed).is_ok(), "one worker gets everything anyway");
        }
    }
}
