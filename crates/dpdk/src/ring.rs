//! A single-producer single-consumer `rte_ring` of owned mbufs: how one
//! thread hands frames to another without a lock (software flow
//! distribution). The ring is split into a [`RingProducer`] and a
//! [`RingConsumer`]; neither can be cloned, so there is exactly one thread
//! on each end, which is what `RING_F_SP_ENQ | RING_F_SC_DEQ` requires.
//! Mbufs are moved in and out like frames on a queue: what the ring accepted
//! belongs to it, what it did not stays with the caller, and whatever is
//! still in the ring when both ends are gone is freed with it.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::Eal;
use crate::error::{last_error, DpdkError};
use crate::mbuf::Mbuf;
use port::{HandoffReceiver, HandoffSender};

/// Mbufs moved per call when a dropped ring is emptied.
const DRAIN_BURST: u16 = 64;

/// The ring itself, shared by its two ends and freed (with the mbufs still
/// in it) when both are dropped.
#[derive(Debug)]
pub struct Ring {
    raw: NonNull<dpdk_sys::rte_ring>,
    name: String,
    capacity: usize,
    _eal: Arc<Eal>,
}

// SAFETY: the ring is only reached through its two ends: one producer and
// one consumer, each owned by one thread at a time (neither is Clone nor
// Sync), which is exactly the SP/SC discipline the ring was created for;
// the counts read through `&Ring` are atomic loads in DPDK.
unsafe impl Send for Ring {}
// SAFETY: see Send; `&Ring` only reads the ring's counters.
unsafe impl Sync for Ring {}

impl Ring {
    /// Creates a ring named `name` (process-wide, at most 28 bytes) that
    /// holds up to `capacity` mbufs, on NUMA socket `socket_id` (-1: any),
    /// and returns its two ends.
    pub fn spsc(
        eal: &Arc<Eal>,
        name: &str,
        capacity: usize,
        socket_id: i32,
    ) -> Result<(RingProducer, RingConsumer), DpdkError> {
        let error = |reason: String| DpdkError::RingCreate {
            name: name.to_owned(),
            capacity,
            reason,
        };
        let c_name = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let count = u32::try_from(capacity)
            .ok()
            .filter(|count| *count >= 1)
            .ok_or_else(|| error("the capacity must be at least 1 and fit in 32 bits".into()))?;
        let flags = dpdk_sys::RING_F_SP_ENQ | dpdk_sys::RING_F_SC_DEQ | dpdk_sys::RING_F_EXACT_SZ;
        // SAFETY: EAL is initialised (we hold an Eal); c_name is a valid C
        // string for the duration of the call (DPDK copies it).
        let raw = unsafe { dpdk_sys::rte_ring_create(c_name.as_ptr(), count, socket_id, flags) };
        let raw = NonNull::new(raw).ok_or_else(|| error(last_error()))?;
        let ring = Arc::new(Ring {
            raw,
            name: name.to_owned(),
            // SAFETY: raw is a live ring we just created.
            capacity: unsafe { dpdk_sys::tg_ring_capacity(raw.as_ptr()) } as usize,
            _eal: Arc::clone(eal),
        });
        Ok((
            RingProducer {
                ring: Arc::clone(&ring),
            },
            RingConsumer { ring },
        ))
    }

    /// The ring's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs the ring can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many mbufs are in the ring now (a snapshot: the other end may be
    /// moving frames meanwhile).
    pub fn len(&self) -> usize {
        // SAFETY: raw is a live ring; the count is computed from its
        // producer and consumer indices, read atomically.
        unsafe { dpdk_sys::tg_ring_count(self.raw.as_ptr()) as usize }
    }

    /// Whether the ring is empty now (a snapshot, like [`Ring::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves up to `max` mbufs from the ring to the end of `out`; returns
    /// how many. Only the consumer (or the last owner, on drop) calls this.
    fn dequeue(&self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let want = u32::try_from(max).unwrap_or(u32::MAX);
        out.reserve(want as usize);
        let start = out.len();
        // SAFETY: `out` has room for `want` more pointers past `start`; Mbuf
        // is repr(transparent) over *mut rte_mbuf; the caller is the ring's
        // only consumer.
        let got = unsafe {
            let slots = out.as_mut_ptr().add(start).cast::<*mut dpdk_sys::rte_mbuf>();
            dpdk_sys::tg_ring_dequeue_burst(self.raw.as_ptr(), slots, want)
        };
        // SAFETY: the ring held only owned mbufs (put there by the producer,
        // which gave up their ownership); `got` of them are now in `out`.
        unsafe { out.set_len(start + got as usize) };
        got as usize
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Both ends are gone (each holds an Arc): nobody else touches the
        // ring any more. Free what is still in it, then the ring.
        let mut left = Vec::with_capacity(usize::from(DRAIN_BURST));
        while self.dequeue(&mut left, usize::from(DRAIN_BURST)) > 0 {
            left.clear();
        }
        // SAFETY: the ring is empty and no end refers to it any more.
        unsafe { dpdk_sys::rte_ring_free(self.raw.as_ptr()) }
    }
}

/// The enqueuing end of a [`Ring`], owned by one thread.
#[derive(Debug)]
pub struct RingProducer {
    ring: Arc<Ring>,
}

impl RingProducer {
    /// Moves mbufs from the front of `frames` into the ring, as many as fit.
    /// Those the ring accepted are removed from `frames` (they now belong to
    /// the ring and, through it, to the consumer); the rest stays in
    /// `frames`, in order, for the caller to retry or drop. Returns how many
    /// were accepted.
    pub fn enqueue_burst(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        let count = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        if count == 0 {
            return 0;
        }
        // SAFETY: the first `count` elements are valid owned mbufs laid out
        // as *mut rte_mbuf; this is the ring's only producer.
        let accepted = unsafe {
            dpdk_sys::tg_ring_enqueue_burst(
                self.ring.raw.as_ptr(),
                frames.as_ptr().cast::<*mut dpdk_sys::rte_mbuf>(),
                count,
            )
        };
        let accepted = (accepted as usize).min(frames.len());
        let remaining = frames.len() - accepted;
        // SAFETY: the first `accepted` mbufs now belong to the ring: they are
        // forgotten, not dropped, by moving the rest over them and shortening
        // the vector. The rest stays owned by `frames`.
        unsafe {
            let base = frames.as_mut_ptr();
            std::ptr::copy(base.add(accepted), base, remaining);
            frames.set_len(remaining);
        }
        accepted
    }

    /// The ring this end feeds.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

/// The dequeuing end of a [`Ring`], owned by one thread.
#[derive(Debug)]
pub struct RingConsumer {
    ring: Arc<Ring>,
}

impl RingConsumer {
    /// Moves up to `max` mbufs from the ring to the end of `out`, in the
    /// order they were enqueued; returns how many.
    pub fn dequeue_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.ring.dequeue(out, max)
    }

    /// The ring this end drains.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

impl HandoffSender<Mbuf> for RingProducer {
    fn send(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        self.enqueue_burst(frames)
    }
}

impl HandoffReceiver<Mbuf> for RingConsumer {
    fn receive(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.dequeue_burst(out, max)
    }
}
