//! The frame layer of tlsgate: checked, zero-copy views over received
//! Ethernet frames and the classifier the engine runs on every one of them,
//! [`segment`], the builder of synthetic TCP frames, [`proxy`], the PROXY
//! protocol and write-ip headers a terminating service sends its backend, and
//! [`neighbour`], ARP and neighbour discovery for the appliance's own addresses.
//!
//! Nothing in this crate panics on any input: every length comes from a
//! checked view (smoltcp's `smoltcp::wire` for ARP, IPv4, IPv6, TCP, UDP and
//! ICMP; [`ethernet`] for the Ethernet II header with its VLAN tags), and a
//! frame that fails a check yields a [`WireError`] instead.
//!
//! See [`classify`](classify::classify) for which frames are dropped and which
//! are bridged unchanged but counted as malformed.

#![forbid(unsafe_code)]

pub mod classify;
mod error;
pub mod ethernet;
pub mod icmp;
pub mod neighbour;
pub mod proxy;
pub mod segment;

#[cfg(test)]
mod test_frames;

pub use classify::{classify, FlowTuple, FrameClass, L3Kind, L4Kind, TcpFlags, TcpInfo};
pub use error::{Layer, MalformedReason, WireError};
pub use ethernet::{EthernetHeader, VlanTag};
pub use segment::{ethernet_mss, SegmentControl, SegmentError, TcpSegment};
/// The IP protocol numbers [`FrameClass::stated_flow`] reports.
pub use smoltcp::wire::IpProtocol;
