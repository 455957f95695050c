//! The tlsgate engine: configuration, the inline bridge, transparent TCP
//! splice, the decrypted capture, poll-mode workers, counters, and offline
//! replay of captures. Generic over [`dpdk::Port`], so everything but the
//! DPDK assembly in [`dataplane`] runs on in-memory ports.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod connlog;
pub mod counters;
pub mod dataplane;
pub mod directory;
pub mod distribution;
pub mod engine;
pub mod learned;
pub mod mirror;
pub mod pcap_stream;
pub mod policy;
pub mod preflight;
pub mod replay;
pub mod splice;
pub mod worker;

pub use config::{Config, ConfigError};
pub use counters::Report;
pub use dataplane::{Dataplane, DataplaneError};
pub use preflight::preflight;
pub use replay::{replay, ReplayError, ReplayFiles, ReplayOutcome, Timestamps};
