//! A netem-like impairment element for the lab (this kernel has no netem):
//! per direction, delay with jitter, random or bursty (Gilbert–Elliott)
//! loss, reordering, duplication, corruption, a rate limit and a queue
//! limit. Sans-IO: frames and an explicit `now` go in, frames come out when
//! their release time has come; the `tlsgate-impair` binary drives it on two
//! DPDK ports.
#![forbid(unsafe_code)]

mod element;
mod spec;

pub use element::{Impairment, ImpairmentStats};
pub use spec::{Loss, Spec, SpecError};
