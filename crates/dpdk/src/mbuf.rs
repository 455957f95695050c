//! An owned packet buffer (`rte_mbuf`): freed back to its pool on drop.

use std::ptr::NonNull;

use port::PacketBuf;

/// One owned mbuf (possibly a chain). Dropping it frees it. It has the same
/// layout as a `*mut rte_mbuf`, so a `Vec<Mbuf>` can be handed to the burst
/// functions directly.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<dpdk_sys::rte_mbuf>,
}

// SAFETY: an mbuf is owned by exactly one Mbuf at a time, and DPDK allows an
// mbuf to be freed from any thread (the pool is multi-producer).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of `raw`.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nobody else owns or will free.
    pub(crate) unsafe fn from_raw(raw: NonNull<dpdk_sys::rte_mbuf>) -> Self {
        Mbuf { raw }
    }

    /// Number of segments in the chain.
    pub fn segments(&self) -> u16 {
        // SAFETY: self.raw is a valid mbuf we own.
        unsafe { dpdk_sys::tg_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// Makes a chained mbuf one contiguous segment. Fails (and leaves the
    /// chain as it was) if the data does not fit in the first segment.
    pub fn linearize(&mut self) -> bool {
        // SAFETY: self.raw is a valid mbuf we own exclusively.
        unsafe { dpdk_sys::tg_pktmbuf_linearize(self.raw.as_ptr()) == 0 }
    }
}

impl PacketBuf for Mbuf {
    fn data(&self) -> &[u8] {
        let raw = self.raw.as_ptr();
        // SAFETY: the first segment holds data_len initialised bytes starting
        // at mtod; the slice borrows self, so the mbuf outlives it.
        unsafe {
            let len = usize::from(dpdk_sys::tg_pktmbuf_data_len(raw));
            std::slice::from_raw_parts(dpdk_sys::tg_pktmbuf_data(raw), len)
        }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        let raw = self.raw.as_ptr();
        // SAFETY: as in `data`, and &mut self guarantees exclusive access.
        unsafe {
            let len = usize::from(dpdk_sys::tg_pktmbuf_data_len(raw));
            std::slice::from_raw_parts_mut(dpdk_sys::tg_pktmbuf_data(raw), len)
        }
    }

    fn grow_back(&mut self, len: usize) -> Option<&mut [u8]> {
        let add = u16::try_from(len).ok()?;
        // SAFETY: self.raw is a valid mbuf we own; append checks tailroom.
        let tail = NonNull::new(unsafe { dpdk_sys::tg_pktmbuf_append(self.raw.as_ptr(), add) })?;
        // SAFETY: DPDK reserved `len` bytes at `tail` in this mbuf's buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(tail.as_ptr().cast::<u8>(), len) })
    }

    fn grow_front(&mut self, len: usize) -> Option<&mut [u8]> {
        let add = u16::try_from(len).ok()?;
        // SAFETY: self.raw is a valid mbuf we own; prepend checks headroom.
        let head = NonNull::new(unsafe { dpdk_sys::tg_pktmbuf_prepend(self.raw.as_ptr(), add) })?;
        // SAFETY: DPDK moved the data start back by `len` bytes to `head`.
        Some(unsafe { std::slice::from_raw_parts_mut(head.as_ptr().cast::<u8>(), len) })
    }

    fn trim_front(&mut self, len: usize) -> bool {
        let Ok(cut) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: self.raw is a valid mbuf we own; adj checks the length.
        !unsafe { dpdk_sys::tg_pktmbuf_adj(self.raw.as_ptr(), cut) }.is_null()
    }

    fn trim_to(&mut self, len: usize) -> bool {
        let Some(cut) = self.data().len().checked_sub(len) else {
            return false;
        };
        if self.segments() != 1 {
            return false;
        }
        let Ok(cut) = u16::try_from(cut) else {
            return false;
        };
        // SAFETY: self.raw is a valid single-segment mbuf; trim checks length.
        unsafe { dpdk_sys::tg_pktmbuf_trim(self.raw.as_ptr(), cut) == 0 }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own this mbuf (chain) and nobody else will free it.
        unsafe { dpdk_sys::tg_pktmbuf_free(self.raw.as_ptr()) }
    }
}
