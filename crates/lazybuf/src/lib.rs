//! Socket buffers whose memory is committed only while it holds data.
//!
//! smoltcp sizes a socket's windows from its buffers once, at creation, and
//! cannot resize them. So every socket gets buffers as large as the largest
//! window it may ever need (several MiB), carved from an [`Arena`]: address
//! space reserved with `mmap(MAP_NORESERVE)`, whose pages the kernel commits
//! only when a byte is written to them. [`BackedSocket`] owns a TCP socket
//! and its two slots; once a ring is empty its pages are given back with
//! `madvise(MADV_DONTNEED)` ([`BackedSocket::discard_rx`],
//! [`BackedSocket::discard_tx`]). An idle connection then holds no buffer
//! memory at all, however large its windows may grow when data flows.
//!
//! This is one of the two crates allowed `unsafe` (with `dpdk`): every block
//! says why it is sound, and the API it offers is safe. The socket borrows
//! its buffers for as long as the wrapper lives and never longer: the slots
//! go back to the arena only after the socket is dropped.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use thiserror::Error;

/// The page size the arena rounds to and discards in.
pub const PAGE: usize = 4096;

/// Slots reserved by the first mapping; each later mapping doubles the total.
const FIRST_RESERVATION: usize = 64;

/// Why no slot could be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ArenaError {
    #[error("the buffer arena is full ({0} slots in use)")]
    Exhausted(usize),
    #[error("reserving address space for socket buffers failed (errno {0})")]
    Reserve(i32),
}

/// One anonymous mapping, unmapped when the last slot in it is gone.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is only an address range; the pages in it are reached
// through slots, each owned by one thread at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access to a Mapping reads only its address.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn reserve(len: usize) -> Result<Mapping, ArenaError> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory. MAP_NORESERVE: no commit
        // charge; a page costs memory only once written.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ArenaError::Reserve(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or(ArenaError::Reserve(0))?;
        Ok(Mapping { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is exactly one mapping made by `reserve`; every
        // slot in it holds an Arc to this Mapping, so none is left.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

struct Pool {
    mappings: Vec<Arc<Mapping>>,
    /// Slots not in use (most recently returned last: reused first).
    free: Vec<(Arc<Mapping>, usize)>,
    reserved: usize,
    in_use: usize,
    max_slots: usize,
}

/// A reservation of address space cut into equal slots. Cloning shares it.
#[derive(Clone)]
pub struct Arena {
    pool: Arc<Mutex<Pool>>,
    slot_size: usize,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("slot_size", &self.slot_size)
            .field("slots_in_use", &self.slots_in_use())
            .finish()
    }
}

impl Arena {
    /// An arena of at most `max_slots` slots of `slot_bytes` each (rounded
    /// up to whole pages). Address space is reserved as slots are needed,
    /// in mappings that double the reservation each time.
    pub fn new(slot_bytes: usize, max_slots: usize) -> Arena {
        Arena {
            pool: Arc::new(Mutex::new(Pool {
                mappings: Vec::new(),
                free: Vec::new(),
                reserved: 0,
                in_use: 0,
                max_slots,
            })),
            slot_size: slot_bytes.max(1).div_ceil(PAGE) * PAGE,
        }
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub fn slots_in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Separate mappings reserved so far (each is one kernel VMA at most).
    pub fn mappings(&self) -> usize {
        self.lock().mappings.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Result<Slot, ArenaError> {
        let mut pool = self.lock();
        if pool.free.is_empty() {
            let more = pool.reserved.max(FIRST_RESERVATION).min(pool.max_slots - pool.reserved);
            if more == 0 {
                return Err(ArenaError::Exhausted(pool.in_use));
            }
            let len = more
                .checked_mul(self.slot_size)
                .ok_or(ArenaError::Reserve(libc::ENOMEM))?;
            let mapping = Arc::new(Mapping::reserve(len)?);
            pool.free.extend(
                (0..more)
                    .rev()
                    .map(|index| (Arc::clone(&mapping), index * self.slot_size)),
            );
            pool.mappings.push(mapping);
            pool.reserved += more;
        }
        let (mapping, offset) = pool.free.pop().ok_or(ArenaError::Exhausted(pool.in_use))?;
        pool.in_use += 1;
        Ok(Slot {
            pool: Arc::clone(&self.pool),
            mapping,
            offset,
            len: self.slot_size,
        })
    }
}

/// One slot, handed out to at most one owner. Its pages are discarded when
/// it goes back, so a slot is all zeros and uncommitted when taken.
struct Slot {
    pool: Arc<Mutex<Pool>>,
    mapping: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl Slot {
    fn start(&self) -> *mut u8 {
        // SAFETY: offset + len lies within the mapping (slots are cut from it).
        unsafe { self.mapping.base.as_ptr().add(self.offset) }
    }

    /// Gives the slot's pages back to the kernel: they read as zeros and
    /// cost nothing until written again.
    fn discard(&self) {
        // SAFETY: the range is one slot of a live mapping. MADV_DONTNEED on
        // private anonymous memory only replaces its contents with zeros (a
        // valid value of every byte); no Rust reference is being read or
        // written during the call (the caller holds the slot's owner
        // mutably, or is dropping it).
        unsafe {
            libc::madvise(self.start().cast(), self.len, libc::MADV_DONTNEED);
        }
    }

    /// Bytes of the slot backed by memory now (mincore(2)).
    fn resident_bytes(&self) -> usize {
        let mut pages = vec![0u8; self.len / PAGE];
        // SAFETY: the range is one slot of a live mapping, page aligned; the
        // vector has one byte per page of it.
        let result = unsafe { libc::mincore(self.start().cast(), self.len, pages.as_mut_ptr()) };
        if result != 0 {
            return self.len;
        }
        pages.iter().filter(|page| **page & 1 == 1).count() * PAGE
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.discard();
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.in_use -= 1;
        pool.free.push((Arc::clone(&self.mapping), self.offset));
    }
}

/// A smoltcp TCP socket (in its own one-entry socket set) whose receive and
/// transmit rings live in two arena slots.
pub struct BackedSocket {
    // Declared first, so dropped first: the socket holds the only
    // references into the two slots below.
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    rx: Slot,
    tx: Slot,
}

impl BackedSocket {
    /// Takes two slots from `arena` and lets `build` make the socket from
    /// buffers of `rx_len` and `tx_len` bytes (each at most the slot size).
    /// `build` works for any lifetime of the buffers, so it cannot keep
    /// them anywhere but in the socket it returns.
    pub fn new(
        arena: &Arena,
        rx_len: usize,
        tx_len: usize,
        build: impl for<'a> FnOnce(tcp::SocketBuffer<'a>, tcp::SocketBuffer<'a>) -> tcp::Socket<'a>,
    ) -> Result<BackedSocket, ArenaError> {
        let rx = arena.take()?;
        let tx = arena.take()?;
        // SAFETY: each slot is a zero-filled range of a live mapping, given
        // out to no one else until `Slot::drop`; the Arc in the slot keeps
        // the mapping alive. The slices live in `sockets`, which is dropped
        // before `rx` and `tx` (field order) and never moved out of `self`
        // (every accessor below shortens the lifetime to a borrow of
        // `self`), so no slice outlives its slot.
        let (rx_buf, tx_buf): (&'static mut [u8], &'static mut [u8]) = unsafe {
            (
                std::slice::from_raw_parts_mut(rx.start(), rx_len.min(rx.len)),
                std::slice::from_raw_parts_mut(tx.start(), tx_len.min(tx.len)),
            )
        };
        let socket = build(tcp::SocketBuffer::new(rx_buf), tcp::SocketBuffer::new(tx_buf));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Ok(BackedSocket {
            sockets,
            handle,
            rx,
            tx,
        })
    }

    pub fn socket(&self) -> &tcp::Socket<'_> {
        self.sockets.get::<tcp::Socket>(self.handle)
    }

    pub fn socket_mut(&mut self) -> &mut tcp::Socket<'_> {
        let socket: *mut tcp::Socket<'static> = self.sockets.get_mut::<tcp::Socket>(self.handle);
        // SAFETY: only the lifetime parameter changes, to the borrow of
        // `self`: whatever the caller puts in its place (by mem::replace)
        // must outlive that borrow, and what it takes out cannot outlive it.
        unsafe { &mut *socket.cast::<tcp::Socket<'_>>() }
    }

    /// Polls the socket through `iface`.
    pub fn poll(&mut self, iface: &mut Interface, now: Instant, device: &mut (impl Device + ?Sized)) -> PollResult {
        let sockets: *mut SocketSet<'static> = &mut self.sockets;
        // SAFETY: as in `socket_mut`: the set is lent for this call only,
        // with its lifetime shortened to the borrow of `self`.
        let sockets = unsafe { &mut *sockets.cast::<SocketSet<'_>>() };
        iface.poll(now, device, sockets)
    }

    /// When the socket wants to be polled next.
    pub fn poll_at(&self, iface: &mut Interface, now: Instant) -> Option<smoltcp::time::Instant> {
        iface.poll_at(now, &self.sockets)
    }

    /// Gives the receive ring's pages back when it holds no bytes. The
    /// caller must know that no out-of-order segment waits in the ring
    /// either (smoltcp does not tell): those bytes would read as zeros.
    pub fn discard_rx(&mut self) -> bool {
        if self.socket().recv_queue() > 0 {
            return false;
        }
        self.rx.discard();
        true
    }

    /// Gives the transmit ring's pages back when nothing in it waits to be
    /// sent or acknowledged.
    pub fn discard_tx(&mut self) -> bool {
        if self.socket().send_queue() > 0 {
            return false;
        }
        self.tx.discard();
        true
    }

    /// Bytes of the two rings backed by memory now (a system call; for
    /// tests and diagnostics, not for every poll).
    pub fn resident_bytes(&self) -> usize {
        self.rx.resident_bytes() + self.tx.resident_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(arena: &Arena) -> Result<BackedSocket, ArenaError> {
        BackedSocket::new(arena, arena.slot_size(), arena.slot_size(), |rx, tx| {
            tcp::Socket::new(rx, tx)
        })
    }

    /// Bytes of page tables this process holds (VmPTE).
    fn page_table_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|line| line.starts_with("VmPTE:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
    }

    fn write_rx(backed: &BackedSocket, bytes: usize) {
        // SAFETY: (test) the range is within the live slot and the socket is
        // idle: nothing else reads or writes these bytes meanwhile.
        let storage = unsafe { std::slice::from_raw_parts_mut(backed.rx.start(), bytes) };
        storage.fill(0xa5);
    }

    #[test]
    fn slots_are_reused_zeroed_and_uncommitted() {
        let arena = Arena::new(1 << 20, 4);
        let first = socket(&arena).unwrap();
        assert_eq!(first.resident_bytes(), 0, "nothing is committed before it is written");
        write_rx(&first, 3 * PAGE + 1);
        assert_eq!(first.resident_bytes(), 4 * PAGE);
        let mut before = [first.rx.start(), first.tx.start()];
        drop(first);
        assert_eq!(arena.slots_in_use(), 0);
        let second = socket(&arena).unwrap();
        let mut reused = [second.rx.start(), second.tx.start()];
        before.sort();
        reused.sort();
        assert_eq!(reused, before, "the freed slots are reused");
        assert_eq!(second.resident_bytes(), 0, "a reused slot holds no pages");
        let rings = [second.rx.start(), second.tx.start()].map(|start| {
            // SAFETY: (test) the range is within a live slot of the idle
            // socket; only read.
            unsafe { std::slice::from_raw_parts(start, 4 * PAGE) }
        });
        assert!(rings.iter().all(|ring| ring.iter().all(|byte| *byte == 0)));
        assert_eq!(arena.mappings(), 1);
    }

    #[test]
    fn an_empty_ring_gives_its_pages_back() {
        let arena = Arena::new(4 << 20, 2);
        let mut backed = socket(&arena).unwrap();
        write_rx(&backed, 1 << 20);
        assert_eq!(backed.resident_bytes(), 1 << 20);
        assert!(backed.discard_rx());
        assert_eq!(backed.resident_bytes(), 0);
    }

    #[test]
    fn discarding_frees_the_page_tables_too() {
        // Touch one page in each of many 4 MiB slots: each needs a page of
        // page tables. After the discard they must be gone again
        // (CONFIG_PT_RECLAIM), or an idle connection keeps 8 KiB of them.
        const SOCKETS: usize = 256;
        let arena = Arena::new(4 << 20, 2 * SOCKETS);
        let mut sockets: Vec<_> = (0..SOCKETS).map(|_| socket(&arena).unwrap()).collect();
        let before = page_table_bytes();
        for backed in &sockets {
            write_rx(backed, 1);
        }
        let touched = page_table_bytes();
        assert!(touched >= before + SOCKETS * PAGE / 2, "{before} -> {touched}");
        for backed in &mut sockets {
            assert!(backed.discard_rx());
        }
        let after = page_table_bytes();
        assert!(
            after <= before + SOCKETS * PAGE / 16,
            "{before} -> {touched} -> {after}"
        );
    }

    #[test]
    fn exhaustion_is_a_typed_error() {
        let arena = Arena::new(PAGE, 3);
        let held = socket(&arena).unwrap();
        assert!(matches!(socket(&arena), Err(ArenaError::Exhausted(_))));
        assert_eq!(arena.slots_in_use(), 2, "the slot of the failed attempt went back");
        drop(held);
        assert!(socket(&arena).is_ok());
    }
}
