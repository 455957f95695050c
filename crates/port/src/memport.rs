//! An in-memory [`Port`]: frames are `Vec<u8>`s in queues that a test (or
//! an in-memory peer) fills and drains through a [`MemPortControl`]. Its
//! [`MemPool`] hands out spare buffers the way a mempool does: each frame
//! the control takes off the wire puts an empty buffer back, so a steady
//! flow of frames needs no heap allocation in the port's owner.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::port::{BufPool, LinkState, PacketBuf, Port, PortCounters};

/// The capacity of a buffer (an mbuf's data room is about as large).
const BUFFER_CAPACITY: usize = 2048;

/// At most this many spare buffers wait in the pool.
const MAX_SPARES: usize = 4096;

impl PacketBuf for Vec<u8> {
    fn data(&self) -> &[u8] {
        self
    }

    fn data_mut(&mut self) -> &mut [u8] {
        self
    }

    fn grow_back(&mut self, len: usize) -> Option<&mut [u8]> {
        let start = self.len();
        self.resize(start.checked_add(len)?, 0);
        self.get_mut(start..)
    }

    fn grow_front(&mut self, len: usize) -> Option<&mut [u8]> {
        self.splice(0..0, std::iter::repeat_n(0, len));
        self.get_mut(..len)
    }

    fn trim_front(&mut self, len: usize) -> bool {
        if len > self.len() {
            return false;
        }
        self.drain(..len);
        true
    }

    fn trim_to(&mut self, len: usize) -> bool {
        if len > self.len() {
            return false;
        }
        Vec::truncate(self, len);
        true
    }
}

#[derive(Debug)]
struct MemPortState {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    /// Empty buffers for [`MemPool::alloc`], put back as frames leave.
    spare: Vec<Vec<u8>>,
    /// At most this many frames accepted per tx burst (a full ring).
    tx_burst_limit: Option<usize>,
    /// At most this many frames can be allocated (pool exhaustion).
    alloc_limit: Option<usize>,
    link_up: bool,
    counters: PortCounters,
}

/// The port the appliance owns.
#[derive(Debug)]
pub struct MemPort {
    mac: [u8; 6],
    state: Arc<Mutex<MemPortState>>,
}

/// The other end of a [`MemPort`]: injects frames, collects what it sent,
/// and simulates a full transmit ring, a dry pool or a link going down.
#[derive(Debug, Clone)]
pub struct MemPortControl {
    state: Arc<Mutex<MemPortState>>,
}

fn lock(state: &Mutex<MemPortState>) -> MutexGuard<'_, MemPortState> {
    // A panic while holding the lock cannot leave the queues inconsistent.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemPort {
    pub fn new(mac: [u8; 6]) -> (MemPort, MemPortControl) {
        let state = Arc::new(Mutex::new(MemPortState {
            rx: VecDeque::new(),
            tx: Vec::new(),
            spare: Vec::new(),
            tx_burst_limit: None,
            alloc_limit: None,
            link_up: true,
            counters: PortCounters::default(),
        }));
        let control = MemPortControl {
            state: Arc::clone(&state),
        };
        (MemPort { mac, state }, control)
    }
}

impl MemPortControl {
    /// Queues `frame` for the port to receive.
    pub fn inject(&self, frame: Vec<u8>) {
        lock(&self.state).rx.push_back(frame);
    }

    /// Frames waiting to be received.
    pub fn pending_rx(&self) -> usize {
        lock(&self.state).rx.len()
    }

    /// Takes every frame the port has transmitted so far; the pool gets as
    /// many empty buffers back (as a NIC frees what it sent).
    pub fn take_transmitted(&self) -> Vec<Vec<u8>> {
        let mut state = lock(&self.state);
        let sent = std::mem::take(&mut state.tx);
        let refill = sent.len().min(MAX_SPARES.saturating_sub(state.spare.len()));
        state
            .spare
            .extend(std::iter::repeat_with(|| Vec::with_capacity(BUFFER_CAPACITY)).take(refill));
        sent
    }

    /// Limits how many frames one tx burst accepts (`None`: unlimited).
    pub fn set_tx_burst_limit(&self, limit: Option<usize>) {
        lock(&self.state).tx_burst_limit = limit;
    }

    /// Limits how many more buffers can be allocated (`None`: unlimited).
    pub fn set_alloc_limit(&self, limit: Option<usize>) {
        lock(&self.state).alloc_limit = limit;
    }

    pub fn set_link_up(&self, up: bool) {
        lock(&self.state).link_up = up;
    }
}

impl Port for MemPort {
    type Buf = Vec<u8>;
    type Pool = MemPool;

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link(&self) -> LinkState {
        if lock(&self.state).link_up {
            LinkState::Up { speed_mbps: 10_000 }
        } else {
            LinkState::Down
        }
    }

    fn counters(&self) -> PortCounters {
        lock(&self.state).counters
    }

    fn rx_burst(&mut self, out: &mut Vec<Vec<u8>>, max: usize) -> usize {
        let mut state = lock(&self.state);
        let take = max.min(state.rx.len());
        for _ in 0..take {
            if let Some(frame) = state.rx.pop_front() {
                state.counters.rx_packets += 1;
                state.counters.rx_bytes += frame.len() as u64;
                out.push(frame);
            }
        }
        take
    }

    fn tx_burst(&mut self, frames: &mut Vec<Vec<u8>>) -> usize {
        let mut state = lock(&self.state);
        let sent = state
            .tx_burst_limit
            .map_or(frames.len(), |limit| limit.min(frames.len()));
        for frame in frames.drain(..sent) {
            state.counters.tx_packets += 1;
            state.counters.tx_bytes += frame.len() as u64;
            state.tx.push(frame);
        }
        sent
    }

    fn alloc(&mut self) -> Option<Vec<u8>> {
        self.pool().alloc()
    }

    fn pool(&self) -> MemPool {
        MemPool {
            state: Arc::clone(&self.state),
        }
    }
}

/// The buffer pool of a [`MemPort`].
#[derive(Debug, Clone)]
pub struct MemPool {
    state: Arc<Mutex<MemPortState>>,
}

impl BufPool for MemPool {
    type Buf = Vec<u8>;

    fn alloc(&mut self) -> Option<Vec<u8>> {
        let mut state = lock(&self.state);
        if let Some(limit) = state.alloc_limit.as_mut() {
            *limit = limit.checked_sub(1)?;
        }
        Some(state.spare.pop().unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_flow_through_and_counters_count() {
        let (mut port, control) = MemPort::new([2, 0, 0, 0, 0, 9]);
        control.inject(vec![1; 60]);
        control.inject(vec![2; 70]);
        let mut rx = Vec::new();
        assert_eq!(port.rx_burst(&mut rx, 1), 1);
        assert_eq!(port.rx_burst(&mut rx, 8), 1);
        assert_eq!(rx, vec![vec![1; 60], vec![2; 70]]);
        assert_eq!(port.tx_burst(&mut rx), 2);
        assert!(rx.is_empty());
        assert_eq!(control.take_transmitted(), vec![vec![1; 60], vec![2; 70]]);
        let counters = port.counters();
        assert_eq!((counters.rx_packets, counters.tx_packets), (2, 2));
        assert_eq!((counters.rx_bytes, counters.tx_bytes), (130, 130));
    }

    #[test]
    fn partial_transmit_keeps_the_tail_in_order() {
        let (mut port, control) = MemPort::new([0; 6]);
        control.set_tx_burst_limit(Some(2));
        let mut frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
        assert_eq!(port.tx_burst(&mut frames), 2);
        assert_eq!(frames, vec![vec![2], vec![3], vec![4]]);
        assert_eq!(control.take_transmitted(), vec![vec![0], vec![1]]);
    }

    #[test]
    fn alloc_limit_and_link_state() {
        let (mut port, control) = MemPort::new([0; 6]);
        control.set_alloc_limit(Some(1));
        assert!(port.alloc().is_some());
        assert!(port.alloc().is_none());
        control.set_link_up(false);
        assert_eq!(port.link(), LinkState::Down);
    }

    #[test]
    fn transmitted_frames_put_empty_buffers_back_into_the_pool() {
        let (mut port, control) = MemPort::new([0; 6]);
        let mut pool = port.pool();
        let mut frames = vec![pool.alloc().expect("buffer"), pool.alloc().expect("buffer")];
        frames.iter_mut().for_each(|frame| frame.extend_from_slice(b"frame"));
        assert_eq!(port.tx_burst(&mut frames), 2);
        assert_eq!(lock(&control.state).spare.len(), 0);
        assert_eq!(control.take_transmitted(), vec![b"frame".to_vec(), b"frame".to_vec()]);
        assert_eq!(lock(&control.state).spare.len(), 2);
        let reused = pool.alloc().expect("buffer");
        assert!(reused.is_empty() && reused.capacity() >= BUFFER_CAPACITY);
        assert_eq!(lock(&control.state).spare.len(), 1);
    }

    #[test]
    fn vec_buffer_edits() {
        let mut buf = b"body".to_vec();
        buf.grow_front(2).expect("room").copy_from_slice(b"h:");
        buf.grow_back(1).expect("room").copy_from_slice(b"!");
        assert_eq!(buf, b"h:body!");
        assert!(buf.trim_front(2));
        assert!(buf.trim_to(4));
        assert_eq!(buf, b"body");
        assert!(!buf.trim_front(5));
    }
}
