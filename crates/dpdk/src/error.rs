//! The error type of every fallible DPDK operation.

use thiserror::Error;

/// What went wrong talking to DPDK; every variant says which call and why.
#[derive(Debug, Error)]
pub enum DpdkError {
    #[error("the DPDK EAL is already initialised in this process (it can be only once)")]
    EalAlreadyInitialized,
    #[error("EAL argument {0:?} contains a NUL byte")]
    InvalidArgument(String),
    #[error("EAL initialisation failed: {reason} (arguments: {args})")]
    EalInit { reason: String, args: String },
    #[error("cannot create mbuf pool {name:?} of {size} mbufs: {reason}")]
    PoolCreate { name: String, size: u32, reason: String },
    #[error("no DPDK port named {0:?}: is the device spec right, and was its driver loaded?")]
    PortNotFound(String),
    #[error("{0:?} is not a DPDK virtual device spec such as net_af_packet0,iface=eth0")]
    NotAVirtualDevice(String),
    #[error(
        "port {port} ({name}): driver {driver:?} has neither RSS nor af_packet's kernel fanout, so tlsgate spreads \
         this port's frames itself (one receive queue, read by worker 0 and handed to the others by a symmetric flow \
         hash), but each of the {queues} workers also needs a transmit queue of its own and the device offers only \
         {max_tx_queues}. Set dataplane.workers = 1 (one worker needs no distribution), give the device {queues} \
         transmit queues (net_pcap: one tx_pcap or tx_iface argument per queue), or use a NIC with RSS or \
         af_packet with qpairs=N"
    )]
    NoFlowSteering {
        port: u16,
        name: String,
        driver: String,
        queues: u16,
        max_tx_queues: u16,
    },
    #[error("cannot create ring {name:?} of {capacity} mbufs: {reason}")]
    RingCreate {
        name: String,
        capacity: usize,
        reason: String,
    },
    #[error("port {port} ({name}): {operation} failed: {reason}")]
    Port {
        port: u16,
        name: String,
        operation: &'static str,
        reason: String,
    },
}

/// The text DPDK gives for an error number (positive or negative).
pub(crate) fn describe_errno(code: i32) -> String {
    let code = code.checked_abs().unwrap_or(i32::MAX);
    // SAFETY: rte_strerror accepts any errno value and returns a pointer to a
    // static or thread-local NUL-terminated string that stays valid until the
    // next call on this thread; it is copied out immediately.
    let text = unsafe { std::ffi::CStr::from_ptr(dpdk_sys::rte_strerror(code)) };
    format!("{} (errno {code})", text.to_string_lossy())
}

/// The calling thread's `rte_errno`, described.
pub(crate) fn last_error() -> String {
    // SAFETY: reads the calling thread's per-lcore errno variable; no
    // preconditions.
    describe_errno(unsafe { dpdk_sys::tg_rte_errno() })
}
