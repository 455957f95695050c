//! The tlsgate engine: configuration, the inline bridge, transparent TCP
//! splice, the decrypted capture, poll-mode workers and counters. Generic
//! over [`port::Port`] and free of DPDK: the DPDK assembly (and the offline
//! replay over DPDK's pcap driver) is the `dataplane` crate, and everything
//! here runs on in-memory ports.
#![forbid(unsafe_code)]

pub mod capture;
pub mod clock;
pub mod config;
pub mod connlog;
pub mod counters;
pub mod directory;
pub mod distribution;
pub mod engine;
pub mod ftpdata;
pub mod handoff;
pub mod histogram;
pub mod keylog;
pub mod learned;
pub mod mirror;
pub mod owned;
pub mod pcap_stream;
pub mod policy;
pub mod preflight;
pub mod privileges;
pub mod reload;
pub mod service;
pub mod setup;
pub mod side;
pub mod splice;
pub mod topnames;
pub mod worker;
pub mod writer;

pub use config::{Config, ConfigError};
pub use counters::Report;
pub use preflight::{preflight, Preflight};
pub use reload::{ReloadError, ReloadOutcome, Reloader};
pub use setup::{error_text, SetupError};
