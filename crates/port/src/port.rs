//! The `Port` abstraction the engine is written against: burst receive and
//! transmit of owned frames, plus the port's identity and counters.

/// An owned frame buffer: an mbuf on DPDK, a `Vec<u8>` in memory.
pub trait PacketBuf: Send + 'static {
    /// The frame's bytes (the first segment for a chained mbuf).
    fn data(&self) -> &[u8];
    /// The frame's bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `len` bytes at the end; `None` if there is no room.
    fn grow_back(&mut self, len: usize) -> Option<&mut [u8]>;
    /// Grows the frame by `len` bytes at the front; `None` if there is no room.
    fn grow_front(&mut self, len: usize) -> Option<&mut [u8]>;
    /// Removes `len` bytes from the front; false (unchanged) if too short.
    fn trim_front(&mut self, len: usize) -> bool;
    /// Shortens the frame to `len` bytes; false (unchanged) if that is not possible.
    fn trim_to(&mut self, len: usize) -> bool;
}

/// Where a port's buffers come from, usable away from the port itself: the
/// stack's transmit path takes its frames' buffers from it (an mbuf pool on
/// DPDK), so each frame is written once, in the buffer the port sends.
pub trait BufPool: Send + 'static {
    type Buf: PacketBuf;

    /// A new empty buffer, or `None` when the pool is exhausted.
    fn alloc(&mut self) -> Option<Self::Buf>;
}

/// Link state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up { speed_mbps: u32 },
    Down,
}

/// The driver's own counters for a port (device-wide, all queues).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames the hardware dropped because the receive ring was full.
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// Receive failures for lack of an mbuf.
    pub rx_no_mbuf: u64,
}

/// One receive/transmit queue pair of a network port, owned by one worker.
pub trait Port {
    type Buf: PacketBuf;
    type Pool: BufPool<Buf = Self::Buf>;

    fn mac(&self) -> [u8; 6];
    fn link(&self) -> LinkState;
    fn counters(&self) -> PortCounters;

    /// Receives up to `max` frames, appending them to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Buf>, max: usize) -> usize;

    /// Transmits frames from the front of `frames`. The frames the driver
    /// accepted are removed from `frames` and now belong to the driver (they
    /// are not freed here); the unsent tail stays in `frames`, in order, for
    /// the caller to retry or drop. Returns how many were accepted.
    fn tx_burst(&mut self, frames: &mut Vec<Self::Buf>) -> usize;

    /// A new empty frame buffer for a frame the appliance originates.
    fn alloc(&mut self) -> Option<Self::Buf>;

    /// A handle on the pool [`Port::alloc`] takes from, to fill frames
    /// where the port is out of reach.
    fn pool(&self) -> Self::Pool;
}
