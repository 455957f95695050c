//! DPDK Ethernet devices: look-up by name, configure, start, stop and close,
//! and per-queue handles that implement [`Port`].

use std::ffi::CString;
use std::sync::{Arc, Mutex};

use crate::eal::Eal;
use crate::error::{describe_errno, DpdkError};
use crate::mbuf::Mbuf;
use crate::mempool::Mempool;
use crate::port::{LinkState, Port, PortCounters};

/// How to set a device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthDevConfig {
    /// Receive/transmit queue pairs (one per worker).
    pub queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Receive every frame regardless of destination MAC (a bridge must).
    pub promiscuous: bool,
}

impl Default for EthDevConfig {
    fn default() -> Self {
        EthDevConfig {
            queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            promiscuous: true,
        }
    }
}

/// A started Ethernet device. Stopped and closed when the last handle (the
/// device itself or one of its queues) is dropped.
#[derive(Debug)]
pub struct EthDev {
    port_id: u16,
    name: String,
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
    /// Finds the device named `name` (a vdev's name such as `net_af_packet0`,
    /// or a PCI address), configures it with `config` and starts it; received
    /// frames are stored in mbufs from `pool`.
    pub fn open(eal: &Arc<Eal>, name: &str, pool: &Arc<Mempool>, config: EthDevConfig) -> Result<Arc<Self>, DpdkError> {
        let c_name = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let mut port_id = 0u16;
        // SAFETY: c_name is a valid C string; port_id is a valid out pointer.
        if unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut port_id) } != 0 {
            return Err(DpdkError::PortNotFound(name.to_owned()));
        }
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

        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: port_id is a valid port; info is a valid out pointer.
        check("rte_eth_dev_info_get", unsafe {
            dpdk_sys::rte_eth_dev_info_get(port_id, &mut info)
        })?;
        let queues = config.queues.max(1);
        if queues > info.max_rx_queues || queues > info.max_tx_queues {
            return Err(DpdkError::Port {
                port: port_id,
                name: name.to_owned(),
                operation: "configure",
                reason: format!(
                    "{queues} queues requested, the device has at most {} rx / {} tx",
                    info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        let eth_conf = dpdk_sys::rte_eth_conf::default();
        // SAFETY: port_id is valid and stopped; eth_conf lives for the call.
        check("rte_eth_dev_configure", unsafe {
            dpdk_sys::rte_eth_dev_configure(port_id, queues, queues, &eth_conf)
        })?;
        let (mut rx_desc, mut tx_desc) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: port_id is valid and configured; both are valid in/out pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: port_id is valid.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(port_id) };
        let socket = u32::try_from(socket).unwrap_or(u32::MAX); // SOCKET_ID_ANY
        for queue in 0..queues {
            // SAFETY: port is configured with `queues` queues; a null conf
            // selects the driver defaults; the pool outlives the device (we
            // keep an Arc to it).
            check("rte_eth_rx_queue_setup", unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(port_id, queue, rx_desc, socket, std::ptr::null(), pool.as_ptr())
            })?;
            // SAFETY: as above.
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
            mac: addr.addr_bytes,
            kernel_interface: kernel_interface_named(info.if_index),
            pool: Arc::clone(pool),
            queues_taken: Mutex::new(vec![false; usize::from(queues)]),
            _eal: Arc::clone(eal),
        }))
    }

    /// Hands out the queue pair `queue`; each queue can be taken once, since a
    /// DPDK queue must only ever be used by one thread.
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
                })
            }
            Some(_) => Err(self.error("queue", format!("queue {queue} is already in use"))),
            None => Err(self.error("queue", format!("queue {queue} does not exist"))),
        }
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
}

impl Port for EthQueue {
    type Buf = Mbuf;

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
        if count == 0 {
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
