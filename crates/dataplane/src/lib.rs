//! The appliance on DPDK: assembles the engines of `appliance` over DPDK
//! ports and runs them on pinned worker lcores ([`Dataplane`]), and replays
//! captures through the same engine over DPDK's pcap driver ([`replay()`]).
//! The only crate between the `tlsgate` binary and `dpdk`: everything it
//! assembles is written against `port::Port` and tested in memory.
#![forbid(unsafe_code)]

pub mod dataplane;
pub mod replay;

pub use dataplane::{Dataplane, DataplaneError, ReportSource, WorkerQueue};
pub use replay::{replay, ReplayError, ReplayFiles, ReplayOutcome, Timestamps};
