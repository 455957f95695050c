//! The transparent userspace TCP stack of tlsgate, on unmodified smoltcp.
//!
//! It answers clients as the server they addressed (transparent accept) and
//! reaches servers as the client (transparent connect), with flows keyed by
//! the 6-tuple (input port + TCP 5-tuple). It does L2 itself: Ethernet and
//! VLAN tags are stripped before smoltcp (`Medium::Ip`, AnyIP) sees a packet,
//! the IP packet is trimmed to its stated length, and each frame it sends
//! carries the MAC pair and tags recorded for its flow. Transparent flows
//! never resolve addresses; [`neighbour`] answers ARP and neighbour
//! discovery for the appliance's own addresses and resolves the next hops
//! of the connections opened from them. Sans-IO: frames and `now` in, frames and events
//! out.
#![forbid(unsafe_code)]

mod device;
mod l2;
pub mod neighbour;
mod port_frames;
mod stack;
mod timer;
mod tx;

pub use device::{OutFrame, IP_MTU};
pub use l2::L2Header;
pub use port_frames::{PortFrames, Queued};
pub use smoltcp::socket::tcp::State as TcpState;
pub use smoltcp::time::{Duration, Instant};
pub use stack::{CongestionControl, Event, EventKind, FlowId, FlowKey, Stack, StackConfig, StackCounters, StackError};
pub use tx::{OutFrames, TxFrames};
