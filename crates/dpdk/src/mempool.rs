//! A packet-buffer pool (`rte_pktmbuf_pool_create`, or one mbuf per page
//! for drivers that register the pool with the kernel), freed on drop.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::Eal;
use crate::error::{last_error, DpdkError};
use crate::mbuf::Mbuf;
use port::BufPool;

/// Data room of each mbuf: DPDK's default (2048 bytes + headroom), enough for
/// a 1518-byte Ethernet frame in one segment.
const DATA_ROOM: u16 = dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
/// The longest frame one mbuf of a [`Mempool`] holds (its data room less the
/// headroom; a [`Mempool::one_mbuf_per_page`] pool holds more); longer
/// frames arrive as chains of mbufs.
pub const MBUF_FRAME_BYTES: usize = (dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE - dpdk_sys::RTE_PKTMBUF_HEADROOM) as usize;
/// Per-lcore cache size; DPDK requires it to be <= size / 1.5.
const CACHE_SIZE: u32 = 256;
/// The object size of a [`Mempool::one_mbuf_per_page`] pool: the smallest
/// page size, so the objects tile 4 KiB pages and hugepages alike.
const PAGE_OBJECT_BYTES: u32 = 4096;

/// An mbuf pool. Mbufs taken from it must all be returned before it may be
/// freed; if some are still out when it is dropped it is leaked instead.
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    _eal: Arc<Eal>,
}

// SAFETY: a DPDK mempool is multi-producer/multi-consumer safe (default
// ring_mp_mc ops); the handle is only a pointer to it.
unsafe impl Send for Mempool {}
// SAFETY: see Send; all operations through &Mempool are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `size` mbufs named `name` (names are global to the
    /// process) on `socket_id` (-1 for any).
    pub fn new(eal: &Arc<Eal>, name: &str, size: u32, socket_id: i32) -> Result<Arc<Self>, DpdkError> {
        let c_name = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let cache = CACHE_SIZE.min(size * 2 / 3);
        // SAFETY: EAL is initialised (we hold an Eal); c_name is a valid C
        // string for the duration of the call (DPDK copies it).
        let raw = unsafe { dpdk_sys::rte_pktmbuf_pool_create(c_name.as_ptr(), size, cache, 0, DATA_ROOM, socket_id) };
        Mempool::created(eal, raw, name, size)
    }

    /// Creates a pool like [`Mempool::new`] whose objects (header, mbuf and
    /// data room) are 4 KiB each, back to back without gaps. The af_xdp
    /// driver registers a pool with the kernel as one region of `size` times
    /// the object size from the first object; in a default pool on 4 KiB
    /// pages (`--no-huge`) an object never crosses a page, so each takes a
    /// whole page and about 40 % of them lie past that region. The kernel
    /// refuses those (a fill ring entry is dropped, a transmitted frame
    /// never completes) and the pool drains until the port stops receiving.
    pub fn one_mbuf_per_page(eal: &Arc<Eal>, name: &str, size: u32, socket_id: i32) -> Result<Arc<Self>, DpdkError> {
        let c_name = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        let cache = CACHE_SIZE.min(size * 2 / 3);
        // SAFETY: as in `new`.
        let raw = unsafe {
            dpdk_sys::tg_pktmbuf_pool_create_tiled(c_name.as_ptr(), size, cache, PAGE_OBJECT_BYTES, socket_id)
        };
        Mempool::created(eal, raw, name, size)
    }

    fn created(eal: &Arc<Eal>, raw: *mut dpdk_sys::rte_mempool, name: &str, size: u32) -> Result<Arc<Self>, DpdkError> {
        let raw = NonNull::new(raw).ok_or_else(|| DpdkError::PoolCreate {
            name: name.to_owned(),
            size,
            reason: last_error(),
        })?;
        Ok(Arc::new(Mempool {
            raw,
            _eal: Arc::clone(eal),
        }))
    }

    /// Whether every mbuf lies within the pool's size times its object size
    /// from the first one: the one region the af_xdp driver registers.
    pub fn is_one_region(&self) -> bool {
        // SAFETY: raw is a live mempool; the check only reads its objects' addresses.
        unsafe { dpdk_sys::tg_mempool_is_one_region(self.raw.as_ptr()) != 0 }
    }

    /// Takes one empty mbuf from the pool, or `None` if it is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: raw is a live pktmbuf pool.
        let raw = unsafe { dpdk_sys::tg_pktmbuf_alloc(self.raw.as_ptr()) };
        // SAFETY: a non-null result is a fresh mbuf we now own exclusively.
        NonNull::new(raw).map(|raw| unsafe { Mbuf::from_raw(raw) })
    }

    /// Mbufs in the pool, ready to be taken (per-lcore caches included).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live mempool; the count only reads its state.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs currently taken from the pool (by us or by a driver's rings).
    pub fn in_use(&self) -> u32 {
        // SAFETY: as for `available`.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

/// A shared handle on a [`Mempool`], as a port's [`BufPool`].
#[derive(Debug, Clone)]
pub struct MbufPool(pub Arc<Mempool>);

impl BufPool for MbufPool {
    type Buf = Mbuf;

    fn alloc(&mut self) -> Option<Mbuf> {
        self.0.alloc()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        if self.in_use() != 0 {
            // Freeing now would leave live mbufs pointing into freed memory.
            return;
        }
        // SAFETY: no mbuf of this pool is outstanding and no device refers to
        // it any more (devices hold an Arc<Mempool>).
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}
