//! Safe, RAII wrapper over the system DPDK: EAL initialisation, mbuf pools,
//! owned mbufs, Ethernet devices and their queues, and single-producer
//! single-consumer rings of mbufs between threads.
//!
//! Everything above this crate talks to a [`port::Port`]: the DPDK queue
//! pair ([`EthQueue`]) is one implementation, the in-memory
//! [`port::MemPort`] the other, so the layers above are testable without
//! DPDK and without root. [`Mbuf`] is a [`port::PacketBuf`], and the ring
//! ends are a [`port::HandoffSender`] and [`port::HandoffReceiver`].
//!
//! Ownership rules, in the order things are torn down: mbufs return to their
//! pool when dropped; a [`EthDev`] keeps its pool and the [`Eal`] alive; a
//! pool with mbufs still out is leaked rather than freed under them.

mod eal;
mod error;
mod ethdev;
mod mbuf;
mod mempool;
mod ring;

pub use eal::{current_thread_cpus, Eal};
pub use error::DpdkError;
pub use ethdev::{
    open_vdev_pair, open_vdev_pair_receiving, pool_for_devices, symmetric_rss_key, vdev_name, DeviceInfo, EthDev,
    EthDevConfig, EthQueue, RxSteering, SYMMETRIC_RSS_HF,
};
pub use mbuf::Mbuf;
pub use mempool::{MbufPool, Mempool, MBUF_FRAME_BYTES};
pub use ring::{Ring, RingConsumer, RingProducer};
