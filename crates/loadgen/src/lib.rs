//! A userspace load generator for tlsgate, in the manner of TRex's stateful
//! mode: client and server populations on the project's own transparent TCP
//! stack, so no kernel file-descriptor limit applies and one process can
//! hold a very large number of connections.
//!
//! The generator has two ports: the client side (facing the appliance's
//! client port) opens TLS connections from many client addresses at a
//! target rate; the server side (facing the appliance's server port) accepts
//! every SYN for any address as the origin and completes TLS with a test
//! certificate. After an optional request/response exchange a connection is
//! held idle (both ends drop their TLS state and keep only the TCP
//! connection, which is all an idle connection needs) or closed. Instead of
//! a synthetic request, each connection can replay the client payload of a
//! TCP flow taken from a capture ([`replay`]), which the origin side checks
//! byte for byte. Sans-IO:
//! frames and `now` go in, frames and statistics come out; the binary (or a
//! test) moves the frames over DPDK or in-memory ports, with [`PortPump`]
//! (every receive queue of each side polled).
#![forbid(unsafe_code)]

mod generator;
mod plan;
mod ports;
pub mod replay;
mod stats;

pub use generator::{Generator, CLIENT_SIDE, SERVER_SIDE};
pub use plan::{Exchange, Hold, Plan, PlanError, Replay, ReplayResponse};
pub use ports::{PortPump, PortsError};
pub use stats::{Stats, Summary};
