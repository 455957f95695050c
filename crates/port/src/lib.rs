//! The packet I/O the data plane is written against, without DPDK: the
//! [`Port`] a worker receives and transmits frames on, the [`PacketBuf`]
//! those frames are, the hand-off between workers ([`HandoffSender`],
//! [`HandoffReceiver`]), and the in-memory [`MemPort`].
//!
//! The `dpdk` crate implements these traits for its queue pairs, mbufs and
//! rings; everything above this crate (the engine, the load generator, the
//! impairment element) is written against the traits, so it builds and
//! tests in memory without libdpdk.
#![forbid(unsafe_code)]

mod handoff;
mod memport;
mod port;

pub use handoff::{HandoffReceiver, HandoffSender};
pub use memport::{MemPool, MemPort, MemPortControl};
pub use port::{BufPool, LinkState, PacketBuf, Port, PortCounters};
