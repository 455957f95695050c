//! DPDK Ethernet devices: look-up by name, configure, start, stop and close,
//! and per-queue handles that implement [`Port`].

use std::ffi::CString;
use std::sync::{Arc, Mutex};

use crate::eal::Eal;
use crate::error::{describe_errno, DpdkError};
use crate::mbuf::Mbuf;
use crate::mempool::{MbufPool, Mempool};
use port::{LinkState, Port, PortCounters};

/// How to set a device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthDevConfig {
    /// Receive/transmit queue pairs (one per worker).
    pub queues: u16,
    /// Receive queues to set up at least; those past `queues` only receive.
    /// For a peer of a device that transmits on more queues than it reads
    /// (the load generator facing a memif port of tlsgate with several
    /// workers, which transmit on a queue each): 1 otherwise.
    pub min_rx_queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Receive every frame regardless of destination MAC (a bridge must).
    pub promiscuous: bool,
}

impl Default for EthDevConfig {
    fn default() -> Self {
        EthDevConfig {
            queues: 1,
            min_rx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            promiscuous: true,
        }
    }
}

// The RSS hash types (`RTE_ETH_RSS_*` in rte_ethdev.h: `RTE_BIT64(n)`
// macros, which bindgen cannot evaluate; a test checks them against the
// system header).
const RSS_IPV4: u64 = 1 << 2;
const RSS_FRAG_IPV4: u64 = 1 << 3;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
const RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
const RSS_IPV6: u64 = 1 << 8;
const RSS_FRAG_IPV6: u64 = 1 << 9;
const RSS_NONFRAG_IPV6_TCP: u64 = 1 << 10;
const RSS_NONFRAG_IPV6_UDP: u64 = 1 << 11;
const RSS_NONFRAG_IPV6_OTHER: u64 = 1 << 13;

/// The hash types asked of a NIC's RSS: IPv4 and IPv6, TCP, UDP and other
/// (fragments by addresses). Not the `*_EX` types, which hash addresses from
/// IPv6 extension headers that only one direction may carry.
pub const SYMMETRIC_RSS_HF: u64 = RSS_IPV4
    | RSS_FRAG_IPV4
    | RSS_NONFRAG_IPV4_TCP
    | RSS_NONFRAG_IPV4_UDP
    | RSS_NONFRAG_IPV4_OTHER
    | RSS_IPV6
    | RSS_FRAG_IPV6
    | RSS_NONFRAG_IPV6_TCP
    | RSS_NONFRAG_IPV6_UDP
    | RSS_NONFRAG_IPV6_OTHER;

/// The RSS key length used when a driver does not say (Toeplitz keys are
/// 40 bytes on most NICs, 52 on Intel 700/800 series).
const DEFAULT_RSS_KEY_LEN: u8 = 40;

/// The driver whose queues are sockets in a kernel `PACKET_FANOUT_HASH`
/// group: the kernel's flow hash is symmetric.
const AF_PACKET_DRIVER: &str = "net_af_packet";

/// The driver that registers the mbuf pool with the kernel as its AF_XDP
/// UMEM: one region, the pool's size times its object size from the first
/// object.
const AF_XDP_DRIVER: &str = "net_af_xdp";

/// The mbuf pool for the devices named `ethdev_names`: one that is a single
/// region ([`Mempool::one_mbuf_per_page`]) when one of them is an af_xdp
/// device, DPDK's default layout otherwise.
pub fn pool_for_devices<'a>(
    eal: &Arc<Eal>,
    pool_name: &str,
    mbufs: u32,
    ethdev_names: impl IntoIterator<Item = &'a str>,
) -> Result<Arc<Mempool>, DpdkError> {
    if ethdev_names.into_iter().any(|name| name.starts_with(AF_XDP_DRIVER)) {
        Mempool::one_mbuf_per_page(eal, pool_name, mbufs, -1)
    } else {
        Mempool::new(eal, pool_name, mbufs, -1)
    }
}

/// The ethdev name of a virtual device spec (`net_af_packet0` of
/// `net_af_packet0,iface=eth0`); `None` when the spec does not start with a
/// `net_` driver name.
pub fn vdev_name(spec: &str) -> Option<&str> {
    spec.split(',')
        .next()
        .filter(|name| name.starts_with("net_") && name.len() > "net_".len())
}

/// For the lab's single-threaded tools (the load generator, the impairment
/// element): starts EAL with `eal_args` and the two virtual devices
/// `specs`, and opens each with one promiscuous queue pair on one pool of
/// `mbufs` named `pool_name`.
pub fn open_vdev_pair(
    eal_args: &str,
    specs: [&str; 2],
    pool_name: &str,
    mbufs: u32,
) -> Result<[EthQueue; 2], DpdkError> {
    let [(client, _), (server, _)] = open_vdev_pair_receiving(eal_args, specs, pool_name, mbufs, 1)?;
    Ok([client, server])
}

/// As [`open_vdev_pair`], but each device gets `rx_queues` receive queues
/// (at least one) and one transmit queue: per device, queue 0 (which
/// receives and transmits) and the others in order (which only receive).
/// The load generator's ports facing memif ports of tlsgate with
/// `rx_queues` workers (each of which transmits on its own queue).
pub fn open_vdev_pair_receiving(
    eal_args: &str,
    specs: [&str; 2],
    pool_name: &str,
    mbufs: u32,
    rx_queues: u16,
) -> Result<[(EthQueue, Vec<EthQueue>); 2], DpdkError> {
    let mut args: Vec<String> = eal_args.split_whitespace().map(str::to_owned).collect();
    let mut names = [""; 2];
    for (name, spec) in names.iter_mut().zip(specs) {
        *name = vdev_name(spec).ok_or_else(|| DpdkError::NotAVirtualDevice(spec.to_owned()))?;
        args.extend(["--vdev".to_owned(), spec.to_owned()]);
    }
    let eal = Eal::init(&args)?;
    let pool = pool_for_devices(&eal, pool_name, mbufs, names)?;
    let config = EthDevConfig {
        queues: 1,
        min_rx_queues: rx_queues.max(1),
        rx_descriptors: 1024,
        tx_descriptors: 1024,
        promiscuous: true,
    };
    let all_queues = |name: &str| -> Result<(EthQueue, Vec<EthQueue>), DpdkError> {
        let dev = EthDev::open(&eal, name, &pool, config)?;
        let receive_only = (1..dev.rx_queues())
            .map(|queue| dev.queue(queue))
            .collect::<Result<_, _>>()?;
        Ok((dev.queue(0)?, receive_only))
    };
    Ok([all_queues(names[0])?, all_queues(names[1])?])
}

/// A Toeplitz key of `len` bytes that hashes both directions of a flow
/// alike: 0x6d, 0x5a repeated. Its 16-bit period makes the hash of
/// (src, dst, sport, dport) equal to that of (dst, src, dport, sport) for
/// IPv4 and IPv6 (Woo and Park, "Scalable TCP Session Monitoring with
/// Symmetric Receive-side Scaling", 2012).
pub fn symmetric_rss_key(len: usize) -> Vec<u8> {
    [0x6d, 0x5a].into_iter().cycle().take(len).collect()
}

/// How a device spreads received frames over its queues (one per worker).
/// Every leg of a connection must reach the same worker, so with more than
/// one queue the spreading must be symmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxSteering {
    /// One queue: nothing is spread.
    Single,
    /// The NIC's RSS (Toeplitz) with the symmetric key of
    /// [`symmetric_rss_key`] over the hash types `rss_hf`.
    SymmetricRss { rss_hf: u64 },
    /// af_packet: the kernel's symmetric `PACKET_FANOUT_HASH` over the
    /// queue sockets (the PMD sets it up).
    KernelFanout,
    /// Neither: the device gets one receive queue (queue 0) and a transmit
    /// queue per worker, and the application spreads what queue 0 receives
    /// (tlsgate: worker 0, by a symmetric flow hash, over rings).
    Software,
}

impl RxSteering {
    /// The steering of `queues` receive queues (one per worker) on a device
    /// of `driver` whose RSS can hash `rss_offloads`
    /// (`flow_type_rss_offloads`): the kernel's fanout on af_packet, RSS
    /// when the device has a hash type of [`SYMMETRIC_RSS_HF`], software
    /// distribution otherwise.
    pub fn choose(driver: &str, rss_offloads: u64, queues: u16) -> RxSteering {
        if queues <= 1 {
            return RxSteering::Single;
        }
        if driver == AF_PACKET_DRIVER {
            return RxSteering::KernelFanout;
        }
        match rss_offloads & SYMMETRIC_RSS_HF {
            0 => RxSteering::Software,
            rss_hf => RxSteering::SymmetricRss { rss_hf },
        }
    }

    /// The receive queues a device needs for `queues` workers with this
    /// steering: one under software distribution, else one per worker.
    pub fn rx_queues(self, queues: u16) -> u16 {
        match self {
            RxSteering::Software => 1,
            RxSteering::Single | RxSteering::SymmetricRss { .. } | RxSteering::KernelFanout => queues.max(1),
        }
    }
}

impl std::fmt::Display for RxSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RxSteering::Single => write!(f, "one receive queue"),
            RxSteering::SymmetricRss { rss_hf } => {
                write!(f, "RSS with a symmetric Toeplitz key (hash types {rss_hf:#x})")
            }
            RxSteering::KernelFanout => write!(f, "the kernel's symmetric fanout hash (af_packet)"),
            RxSteering::Software => write!(
                f,
                "software distribution by worker 0 (neither RSS nor kernel fanout: one receive queue, read by \
                 worker 0, which hands each frame to its worker by a symmetric flow hash)"
            ),
        }
    }
}

/// What a device says about itself (`rte_eth_dev_info_get`), before it is
/// configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's name (`net_af_packet`, `net_pcap`, `net_ixgbe`, ...).
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// The RSS hash types the device can compute (0: no RSS).
    pub rss_offloads: u64,
    /// Entries of the RSS redirection table (0: the driver does not say).
    pub reta_size: u16,
    /// Bytes of the RSS key (0: the driver does not say).
    pub hash_key_size: u8,
}

impl DeviceInfo {
    /// The steering this device gets for `queues` workers.
    pub fn steering(&self, queues: u16) -> RxSteering {
        RxSteering::choose(&self.driver, self.rss_offloads, queues)
    }
}

/// A started Ethernet device. Stopped and closed when the last handle (the
/// device itself or one of its queues) is dropped.
#[derive(Debug)]
pub struct EthDev {
    port_id: u16,
    name: String,
    /// The driver's name (`net_af_packet`, `net_ixgbe`, `mlx5_pci`, ...).
    driver: String,
    steering: RxSteering,
    /// Queues `0..rx_queues` receive (all of them, or only queue 0 under
    /// software distribution, or more than transmit with
    /// [`EthDevConfig::min_rx_queues`]).
    rx_queues: u16,
    /// Queues `0..tx_queues` transmit.
    tx_queues: u16,
    /// Entries of the RSS redirection table (0: the driver does not say).
    reta_size: u16,
    mac: [u8; 6],
    /// The kernel interface behind a device that has one (af_packet, tap):
    /// its carrier is the link state, which such drivers do not follow.
    kernel_interface: Option<String>,
    pool: Arc<Mempool>,
    /// Which queues have been handed out (each to exactly one owner).
    queues_taken: Mutex<Vec<bool>>,
    _eal: Arc<Eal>,
}

impl EthDev {
    /// What the device named `name` says about itself (driver, queue and
    /// RSS limits), without configuring it.
    pub fn info(_eal: &Arc<Eal>, name: &str) -> Result<DeviceInfo, DpdkError> {
        let port_id = port_by_name(name)?;
        device_info(port_id, name).map(|(info, _)| info)
    }

    /// Finds the device named `name` (a vdev's name such as `net_af_packet0`,
    /// or a PCI address), configures it with `config` and starts it; received
    /// frames are stored in mbufs from `pool`. With several queues (workers),
    /// the receive side follows [`RxSteering::choose`]; under
    /// [`RxSteering::Software`] only queue 0 receives.
    pub fn open(eal: &Arc<Eal>, name: &str, pool: &Arc<Mempool>, config: EthDevConfig) -> Result<Arc<Self>, DpdkError> {
        let port_id = port_by_name(name)?;
        let check = |operation: &'static str, rc: i32| -> Result<(), DpdkError> {
            if rc < 0 {
                Err(DpdkError::Port {
                    port: port_id,
                    name: name.to_owned(),
                    operation,
                    reason: describe_errno(rc),
                })
            } else {
                Ok(())
            }
        };

        let (device, info) = device_info(port_id, name)?;
        let queues = config.queues.max(1);
        let steering = device.steering(queues);
        let rx_queues = steering.rx_queues(queues).max(config.min_rx_queues);
        if steering == RxSteering::Software && queues > info.max_tx_queues {
            return Err(DpdkError::NoFlowSteering {
                port: port_id,
                name: name.to_owned(),
                driver: device.driver,
                queues,
                max_tx_queues: info.max_tx_queues,
            });
        }
        if rx_queues > info.max_rx_queues || queues > info.max_tx_queues {
            return Err(DpdkError::Port {
                port: port_id,
                name: name.to_owned(),
                operation: "configure",
                reason: format!(
                    "{rx_queues} rx / {queues} tx queues needed ({steering}), the device has at most {} rx / {} tx",
                    info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        let driver = device.driver;
        if driver == AF_XDP_DRIVER && !pool.is_one_region() {
            return Err(DpdkError::Port {
                port: port_id,
                name: name.to_owned(),
                operation: "rte_eth_rx_queue_setup",
                reason: "the af_xdp driver registers the mbuf pool with the kernel as one region of its size times \
                         its object size, and this pool's mbufs lie beyond that (gaps between pages): the kernel \
                         would refuse them and the pool would drain until the port stops receiving; use a pool \
                         made by Mempool::one_mbuf_per_page"
                    .into(),
            });
        }
        let mut eth_conf = dpdk_sys::rte_eth_conf::default();
        if let RxSteering::SymmetricRss { rss_hf } = steering {
            let key_len = match info.hash_key_size {
                0 => DEFAULT_RSS_KEY_LEN,
                len => len,
            };
            // Leaked on purpose (at most 52 bytes per device opened): DPDK
            // keeps this pointer in its copy of the configuration, and
            // drivers read the key when the port starts (and restarts).
            let key: &'static mut [u8] = Box::leak(symmetric_rss_key(usize::from(key_len)).into_boxed_slice());
            eth_conf.rxmode.mq_mode = dpdk_sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            eth_conf.rx_adv_conf.rss_conf = dpdk_sys::rte_eth_rss_conf {
                rss_key: key.as_mut_ptr(),
                rss_key_len: key_len,
                rss_hf,
            };
        }
        // SAFETY: port_id is valid and stopped; eth_conf lives for the call
        // and the RSS key it points to, if any, forever.
        check("rte_eth_dev_configure", unsafe {
            dpdk_sys::rte_eth_dev_configure(port_id, rx_queues, queues, &eth_conf)
        })?;
        let (mut rx_desc, mut tx_desc) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: port_id is valid and configured; both are valid in/out pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: port_id is valid.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(port_id) };
        let socket = u32::try_from(socket).unwrap_or(u32::MAX); // SOCKET_ID_ANY
        for queue in 0..rx_queues {
            // SAFETY: port is configured with `rx_queues` receive queues; a
            // null conf selects the driver defaults; the pool outlives the
            // device (we keep an Arc to it).
            check("rte_eth_rx_queue_setup", unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(port_id, queue, rx_desc, socket, std::ptr::null(), pool.as_ptr())
            })?;
        }
        for queue in 0..queues {
            // SAFETY: port is configured with `queues` transmit queues; a
            // null conf selects the driver defaults.
            check("rte_eth_tx_queue_setup", unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(port_id, queue, tx_desc, socket, std::ptr::null())
            })?;
        }
        if config.promiscuous {
            // SAFETY: port_id is valid. Some virtual drivers do not support
            // promiscuous mode (they receive everything anyway): ignore.
            let _ = unsafe { dpdk_sys::rte_eth_promiscuous_enable(port_id) };
        }
        // SAFETY: port_id is valid and fully configured.
        check("rte_eth_dev_start", unsafe { dpdk_sys::rte_eth_dev_start(port_id) })?;

        let mut addr = dpdk_sys::rte_ether_addr::default();
        // SAFETY: port_id is valid; addr is a valid out pointer.
        check("rte_eth_macaddr_get", unsafe {
            dpdk_sys::rte_eth_macaddr_get(port_id, &mut addr)
        })?;

        Ok(Arc::new(EthDev {
            port_id,
            name: name.to_owned(),
            driver,
            steering,
            rx_queues,
            tx_queues: queues,
            reta_size: info.reta_size,
            mac: addr.addr_bytes,
            kernel_interface: kernel_interface_named(info.if_index),
            pool: Arc::clone(pool),
            queues_taken: Mutex::new(vec![false; usize::from(queues.max(rx_queues))]),
            _eal: Arc::clone(eal),
        }))
    }

    /// Hands out the queue pair `queue`; each queue can be taken once, since a
    /// DPDK queue must only ever be used by one thread. Under software
    /// distribution only queue 0 has a receive side (the others' `rx_burst`
    /// returns nothing, see [`EthQueue::receives`]); the receive queues past
    /// [`EthDevConfig::queues`] have no transmit side (`tx_burst` sends
    /// nothing).
    pub fn queue(self: &Arc<Self>, queue: u16) -> Result<EthQueue, DpdkError> {
        let mut taken = self
            .queues_taken
            .lock()
            .map_err(|_| self.error("queue", "queue table poisoned".into()))?;
        match taken.get_mut(usize::from(queue)) {
            Some(slot) if !*slot => {
                *slot = true;
                Ok(EthQueue {
                    dev: Arc::clone(self),
                    queue,
                    receives: queue < self.rx_queues,
                    transmits: queue < self.tx_queues,
                })
            }
            Some(_) => Err(self.error("queue", format!("queue {queue} is already in use"))),
            None => Err(self.error("queue", format!("queue {queue} does not exist"))),
        }
    }

    /// The driver's name, as DPDK reports it.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// How received frames are spread over the queues.
    pub fn steering(&self) -> RxSteering {
        self.steering
    }

    /// The device's name (as given to [`EthDev::open`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many queues were configured to receive.
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// Entries of the device's RSS redirection table (0 when unknown).
    pub fn reta_size(&self) -> u16 {
        self.reta_size
    }

    fn error(&self, operation: &'static str, reason: String) -> DpdkError {
        DpdkError::Port {
            port: self.port_id,
            name: self.name.clone(),
            operation,
            reason,
        }
    }

    /// The device's link state: the carrier of its kernel interface when it
    /// has one (DPDK's af_packet driver reports "up" whatever the veth or
    /// NIC below does), else what the driver reports.
    pub fn link(&self) -> LinkState {
        if let Some(carrier) = self.kernel_interface.as_deref().and_then(kernel_carrier) {
            return if carrier {
                LinkState::Up { speed_mbps: 0 }
            } else {
                LinkState::Down
            };
        }
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: port_id is valid; link is a valid out pointer.
        let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.port_id, &mut link) };
        if rc == 0 && u32::from(link.link_status()) == dpdk_sys::RTE_ETH_LINK_UP {
            LinkState::Up {
                speed_mbps: link.link_speed,
            }
        } else {
            LinkState::Down
        }
    }

    /// The driver's counters for the whole device.
    pub fn counters(&self) -> PortCounters {
        let mut stats = dpdk_sys::rte_eth_stats::default();
        // SAFETY: port_id is valid; stats is a valid out pointer.
        if unsafe { dpdk_sys::rte_eth_stats_get(self.port_id, &mut stats) } != 0 {
            return PortCounters::default();
        }
        PortCounters {
            rx_packets: stats.ipackets,
            tx_packets: stats.opackets,
            rx_bytes: stats.ibytes,
            tx_bytes: stats.obytes,
            rx_missed: stats.imissed,
            rx_errors: stats.ierrors,
            tx_errors: stats.oerrors,
            rx_no_mbuf: stats.rx_nombuf,
        }
    }
}

impl Drop for EthDev {
    fn drop(&mut self) {
        // SAFETY: no queue handle is left (each holds an Arc to us), so no
        // thread is bursting on this port any more.
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.port_id);
            dpdk_sys::rte_eth_dev_close(self.port_id);
        }
    }
}

/// One queue pair of an [`EthDev`], owned by one worker.
#[derive(Debug)]
pub struct EthQueue {
    dev: Arc<EthDev>,
    queue: u16,
    /// Whether this queue has a receive side (not under software
    /// distribution, except queue 0).
    receives: bool,
    /// Whether this queue has a transmit side (not the receive queues past
    /// [`EthDevConfig::queues`]).
    transmits: bool,
}

impl EthQueue {
    /// Whether frames can be received on this queue: false for the queues
    /// past 0 of a device under [`RxSteering::Software`], which only
    /// transmit.
    pub fn receives(&self) -> bool {
        self.receives
    }

    /// The queue's index.
    pub fn index(&self) -> u16 {
        self.queue
    }

    /// The device this queue belongs to.
    pub fn device(&self) -> &Arc<EthDev> {
        &self.dev
    }
}

impl Port for EthQueue {
    type Buf = Mbuf;
    type Pool = MbufPool;

    fn mac(&self) -> [u8; 6] {
        self.dev.mac
    }

    fn link(&self) -> LinkState {
        self.dev.link()
    }

    fn counters(&self) -> PortCounters {
        self.dev.counters()
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        if !self.receives {
            // No receive queue of this index was set up (calling the driver
            // with it would read past its queue table).
            return 0;
        }
        let want = u16::try_from(max).unwrap_or(u16::MAX);
        out.reserve(usize::from(want));
        let start = out.len();
        // SAFETY: `out` has room for `want` more pointers past `start`; Mbuf
        // is repr(transparent) over *mut rte_mbuf; this queue is used only by
        // its one owner (EthDev::queue hands it out once).
        let got = unsafe {
            let slots = out.as_mut_ptr().add(start).cast::<*mut dpdk_sys::rte_mbuf>();
            dpdk_sys::tg_eth_rx_burst(self.dev.port_id, self.queue, slots, want)
        };
        // SAFETY: the driver wrote `got` valid mbufs, now owned by `out`.
        unsafe { out.set_len(start + usize::from(got)) };
        for mbuf in &mut out[start..] {
            if mbuf.segments() > 1 {
                // Frames larger than one mbuf are linearised when they fit;
                // otherwise their first segment is all that is inspected.
                mbuf.linearize();
            }
        }
        usize::from(got)
    }

    fn tx_burst(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        let count = u16::try_from(frames.len()).unwrap_or(u16::MAX);
        if count == 0 || !self.transmits {
            // Nothing to send, or no transmit queue of this index was set up.
            return 0;
        }
        // SAFETY: the first `count` elements are valid owned mbufs laid out as
        // *mut rte_mbuf; this queue has one owner.
        let sent = unsafe {
            dpdk_sys::tg_eth_tx_burst(
                self.dev.port_id,
                self.queue,
                frames.as_mut_ptr().cast::<*mut dpdk_sys::rte_mbuf>(),
                count,
            )
        };
        let sent = usize::from(sent).min(frames.len());
        let remaining = frames.len() - sent;
        // SAFETY: the first `sent` mbufs now belong to the driver: they are
        // forgotten, not dropped, by moving the unsent tail over them and
        // shortening the vector. The tail stays owned by `frames`.
        unsafe {
            let base = frames.as_mut_ptr();
            std::ptr::copy(base.add(sent), base, remaining);
            frames.set_len(remaining);
        }
        sent
    }

    fn alloc(&mut self) -> Option<Mbuf> {
        self.dev.pool.alloc()
    }

    fn pool(&self) -> MbufPool {
        MbufPool(Arc::clone(&self.dev.pool))
    }
}

/// The port id of the device named `name`.
fn port_by_name(name: &str) -> Result<u16, DpdkError> {
    let c_name = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
    let mut port_id = 0u16;
    // SAFETY: c_name is a valid C string; port_id is a valid out pointer.
    if unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut port_id) } != 0 {
        return Err(DpdkError::PortNotFound(name.to_owned()));
    }
    Ok(port_id)
}

/// What port `port_id` (named `name`) says about itself, and the raw info.
fn device_info(port_id: u16, name: &str) -> Result<(DeviceInfo, dpdk_sys::rte_eth_dev_info), DpdkError> {
    let mut info = dpdk_sys::rte_eth_dev_info::default();
    // SAFETY: port_id is a valid port; info is a valid out pointer.
    let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(port_id, &mut info) };
    if rc < 0 {
        return Err(DpdkError::Port {
            port: port_id,
            name: name.to_owned(),
            operation: "rte_eth_dev_info_get",
            reason: describe_errno(rc),
        });
    }
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: rte_eth_dev_info_get set driver_name to the driver's
        // static NUL-terminated name (checked non-null above).
        unsafe { std::ffi::CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    let device = DeviceInfo {
        driver,
        max_rx_queues: info.max_rx_queues,
        max_tx_queues: info.max_tx_queues,
        rss_offloads: info.flow_type_rss_offloads,
        reta_size: info.reta_size,
        hash_key_size: info.hash_key_size,
    };
    Ok((device, info))
}

/// The name of the kernel interface with index `if_index` (0: none), from
/// `/sys/class/net/*/ifindex` of the process's network namespace.
fn kernel_interface_named(if_index: u32) -> Option<String> {
    if if_index == 0 {
        return None;
    }
    std::fs::read_dir("/sys/class/net").ok()?.flatten().find_map(|entry| {
        let index = std::fs::read_to_string(entry.path().join("ifindex")).ok()?;
        (index.trim().parse::<u32>().ok()? == if_index).then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// Whether the kernel interface `name` is operationally up (carrier, and
/// its peer up for a veth); `None` when the kernel does not know.
fn kernel_carrier(name: &str) -> Option<bool> {
    let state = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")).ok()?;
    match state.trim() {
        "up" => Some(true),
        "down" | "lowerlayerdown" | "notpresent" | "dormant" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The Toeplitz hash of `input` with `key`, as NICs compute RSS: for
    /// each input bit that is set, XOR in the 32 key bits starting there.
    fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
        let key_bit = |index: usize| key.get(index / 8).map_or(0, |byte| (byte >> (7 - index % 8)) & 1);
        let mut window = (0..32).fold(0u32, |window, index| window << 1 | u32::from(key_bit(index)));
        let mut hash = 0;
        for (index, byte) in input.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    hash ^= window;
                }
                window = window << 1 | u32::from(key_bit(32 + index * 8 + bit));
            }
        }
        hash
    }

    /// The RSS input of a TCP/UDP packet: source and destination address,
    /// then source and destination port.
    fn rss_input(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let mut input = octets(src);
        input.extend(octets(dst));
        input.extend(sport.to_be_bytes());
        input.extend(dport.to_be_bytes());
        input
    }

    /// The default key of Microsoft's RSS specification (most drivers'
    /// default too).
    const MICROSOFT_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];

    fn v4(text: &str) -> IpAddr {
        IpAddr::V4(text.parse::<Ipv4Addr>().expect("IPv4"))
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().expect("IPv6"))
    }

    fn tuples() -> Vec<(IpAddr, IpAddr, u16, u16)> {
        vec![
            (v4("66.9.149.187"), v4("161.142.100.80"), 2794, 1766),
            (v4("199.92.111.2"), v4("65.69.140.83"), 14230, 4739),
            (v4("198.18.0.1"), v4("198.18.0.2"), 45_000, 443),
            (v4("10.1.2.3"), v4("192.0.2.77"), 61_234, 8443),
            (v6("3ffe:2501:200:1fff::7"), v6("3ffe:2501:200:3::1"), 2794, 1766),
            (v6("2001:2::1"), v6("2001:2::2"), 45_001, 443),
            (v6("fe80::1:2:3:4"), v6("2001:db8:ffff::9"), 1024, 65_535),
        ]
    }

    #[test]
    fn toeplitz_matches_the_rss_specification() {
        // Microsoft's "Verifying the RSS Hash Calculation" examples.
        let (src, dst) = (v4("66.9.149.187"), v4("161.142.100.80"));
        assert_eq!(toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, 2794, 1766)), 0x51cc_c178);
        assert_eq!(
            toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, 2794, 1766)[..8]),
            0x323e_8fc2
        );
        let (src, dst) = (v4("199.92.111.2"), v4("65.69.140.83"));
        assert_eq!(toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, 14230, 4739)), 0xc626_b0ea);
        let (src, dst) = (v6("3ffe:2501:200:1fff::7"), v6("3ffe:2501:200:3::1"));
        assert_eq!(toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, 2794, 1766)), 0x4020_7d3d);
        assert_eq!(
            toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, 2794, 1766)[..32]),
            0x2cc1_8cd5
        );
    }

    #[test]
    fn the_key_in_use_hashes_both_directions_alike_and_the_default_key_does_not() {
        for len in [40, 52] {
            let key = symmetric_rss_key(len);
            assert_eq!(key.len(), len);
            assert!(key.chunks(2).all(|pair| pair == [0x6d, 0x5a]));
            for (src, dst, sport, dport) in tuples() {
                let forward = rss_input(src, dst, sport, dport);
                let backward = rss_input(dst, src, dport, sport);
                assert_eq!(toeplitz(&key, &forward), toeplitz(&key, &backward), "{src} {dst}");
                // Addresses only (fragments, other protocols) too.
                let addresses = forward.len() - 4;
                assert_eq!(
                    toeplitz(&key, &forward[..addresses]),
                    toeplitz(&key, &backward[..addresses]),
                    "{src} {dst}"
                );
            }
        }
        for (src, dst, sport, dport) in tuples() {
            assert_ne!(
                toeplitz(&MICROSOFT_KEY, &rss_input(src, dst, sport, dport)),
                toeplitz(&MICROSOFT_KEY, &rss_input(dst, src, dport, sport)),
                "{src} {dst}: the default key would send the two directions to different queues"
            );
        }
        // The symmetric hash still spreads: not every tuple hashes alike.
        let key = symmetric_rss_key(40);
        let hashes: std::collections::HashSet<_> = tuples()
            .into_iter()
            .map(|(src, dst, sport, dport)| toeplitz(&key, &rss_input(src, dst, sport, dport)))
            .collect();
        assert_eq!(hashes.len(), tuples().len());
    }

    #[test]
    fn rss_hash_types_match_the_system_header() {
        let include = std::process::Command::new("pkg-config")
            .args(["--variable=includedir", "libdpdk"])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|dir| dir.trim().to_owned())
            .filter(|dir| !dir.is_empty())
            .unwrap_or_else(|| "/usr/include/dpdk".into());
        let path = format!("{include}/rte_ethdev.h");
        let header = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        for (name, value) in [
            ("RTE_ETH_RSS_IPV4", RSS_IPV4),
            ("RTE_ETH_RSS_FRAG_IPV4", RSS_FRAG_IPV4),
            ("RTE_ETH_RSS_NONFRAG_IPV4_TCP", RSS_NONFRAG_IPV4_TCP),
            ("RTE_ETH_RSS_NONFRAG_IPV4_UDP", RSS_NONFRAG_IPV4_UDP),
            ("RTE_ETH_RSS_NONFRAG_IPV4_OTHER", RSS_NONFRAG_IPV4_OTHER),
            ("RTE_ETH_RSS_IPV6", RSS_IPV6),
            ("RTE_ETH_RSS_FRAG_IPV6", RSS_FRAG_IPV6),
            ("RTE_ETH_RSS_NONFRAG_IPV6_TCP", RSS_NONFRAG_IPV6_TCP),
            ("RTE_ETH_RSS_NONFRAG_IPV6_UDP", RSS_NONFRAG_IPV6_UDP),
            ("RTE_ETH_RSS_NONFRAG_IPV6_OTHER", RSS_NONFRAG_IPV6_OTHER),
        ] {
            let bit = header
                .lines()
                .find_map(|line| {
                    let mut words = line.split_whitespace();
                    (words.next() == Some("#define") && words.next() == Some(name)).then(|| words.next())?
                })
                .and_then(|definition| {
                    definition
                        .strip_prefix("RTE_BIT64(")?
                        .strip_suffix(')')?
                        .parse::<u32>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{name} not defined as RTE_BIT64(n)"));
            assert_eq!(value, 1 << bit, "{name}");
        }
    }

    #[test]
    fn several_queues_get_rss_the_kernel_fanout_or_software_distribution() {
        let nic_offloads = SYMMETRIC_RSS_HF | 1 << 6 | 1 << 15; // + SCTP, IPv6_EX
        assert_eq!(RxSteering::choose("net_ring", 0, 1), RxSteering::Single);
        assert_eq!(RxSteering::choose("net_ixgbe", nic_offloads, 1), RxSteering::Single);
        assert_eq!(RxSteering::choose("net_af_packet", 0, 2), RxSteering::KernelFanout);
        assert_eq!(
            RxSteering::choose("net_ixgbe", nic_offloads, 4),
            RxSteering::SymmetricRss {
                rss_hf: SYMMETRIC_RSS_HF
            }
        );
        // Only the hash types the device has are asked for.
        let v4_tcp = RSS_IPV4 | RSS_NONFRAG_IPV4_TCP | 1 << 6;
        assert_eq!(
            RxSteering::choose("net_x", v4_tcp, 2),
            RxSteering::SymmetricRss {
                rss_hf: RSS_IPV4 | RSS_NONFRAG_IPV4_TCP
            }
        );
        for driver in ["net_ring", "net_null", "net_pcap", "net_memif", "net_virtio"] {
            assert_eq!(RxSteering::choose(driver, 0, 2), RxSteering::Software, "{driver}");
        }
        assert_eq!(
            RxSteering::choose("net_x", 1 << 6, 2),
            RxSteering::Software,
            "SCTP-only RSS is no use"
        );
        // Software distribution: one receive queue, a transmit queue each.
        assert_eq!(RxSteering::Software.rx_queues(4), 1);
        assert_eq!(RxSteering::KernelFanout.rx_queues(4), 4);
        assert_eq!(RxSteering::Single.rx_queues(0), 1);
        assert!(RxSteering::Software
            .to_string()
            .contains("software distribution by worker 0"));
        let info = DeviceInfo {
            driver: "net_pcap".into(),
            max_rx_queues: 1,
            max_tx_queues: 2,
            rss_offloads: 0,
            reta_size: 0,
            hash_key_size: 0,
        };
        assert_eq!(info.steering(2), RxSteering::Software);
        assert_eq!(info.steering(1), RxSteering::Single);

        let refusal = DpdkError::NoFlowSteering {
            port: 1,
            name: "0000:03:00.0".into(),
            driver: "net_virtio".into(),
            queues: 2,
            max_tx_queues: 1,
        }
        .to_string();
        for needed in [
            "0000:03:00.0",
            "net_virtio",
            "2 workers",
            "transmit queue",
            "offers only 1",
            "dataplane.workers = 1",
        ] {
            assert!(refusal.contains(needed), "{refusal}");
        }
    }
}
