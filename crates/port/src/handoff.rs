//! A single-producer single-consumer hand-off of frames from one worker to
//! another: on DPDK an `rte_ring` of mbuf pointers (software flow
//! distribution, see the appliance's `distribution` module).

/// The sending end of a hand-off from the distributing worker to another
/// worker (an `rte_ring` producer on DPDK).
pub trait HandoffSender<B> {
    /// Moves frames from the front of `frames` while there is room; what
    /// does not fit stays in `frames`, in order. Returns how many moved.
    fn send(&mut self, frames: &mut Vec<B>) -> usize;
}

/// The receiving end of a hand-off (an `rte_ring` consumer on DPDK).
pub trait HandoffReceiver<B> {
    /// Moves up to `max` frames, oldest first, to the end of `out`; returns
    /// how many.
    fn receive(&mut self, out: &mut Vec<B>, max: usize) -> usize;
}
