//! The appliance's own addresses on the server port (`ports.server.addresses`)
//! as the sources of `[[service]]` backend connections with `source =
//! "appliance"`: the route and next hop of a backend, the resolution of
//! that next hop's MAC ([`netstack::neighbour`]), and an ephemeral port of
//! the owned address that no other leg uses. Transparent flows never carry
//! an owned address (no host but the appliance has it), so these legs
//! cannot collide with them.

use std::collections::HashSet;
use std::net::IpAddr;

use netstack::neighbour::{NeighbourCounters, Neighbours, Outcome};
use netstack::{Instant, L2Header, OutFrame, Stack};
use wire::{FlowTuple, FrameClass};

use crate::side::Side;

/// The ports the backend legs leave from (IANA's dynamic range).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Where a backend leg from an owned address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedLeg {
    /// Its next hop's MAC is known: connect with this framing.
    Ready(FlowTuple, L2Header),
    /// Its next hop is being resolved: an [`Outcome`] follows; the tuple's
    /// port stays reserved until [`OwnedSources::release`].
    Waiting(FlowTuple),
}

/// The owned addresses of the server port and their neighbours.
#[derive(Debug)]
pub struct OwnedSources {
    neighbours: Neighbours,
    /// Tuples of legs waiting for their next hop (not in the stack yet).
    reserved: HashSet<FlowTuple>,
    next_port: u16,
    /// Frames to an owned address that no leg took.
    dropped: u64,
}

impl OwnedSources {
    pub fn new(neighbours: Neighbours) -> OwnedSources {
        OwnedSources {
            neighbours,
            reserved: HashSet::new(),
            next_port: *EPHEMERAL_PORTS.start(),
            dropped: 0,
        }
    }

    /// Whether `ip` is an owned address.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.neighbours.owns(ip)
    }

    /// The leg from an owned address to `backend` port `port` for the
    /// connection `waiter`: an ephemeral port free on the stack and among
    /// the waiting legs, and its framing now or later. Err: why there is
    /// no such leg.
    pub fn open(
        &mut self,
        stack: &Stack,
        backend: IpAddr,
        port: u16,
        waiter: u64,
        now: Instant,
    ) -> Result<OwnedLeg, String> {
        let route = self
            .neighbours
            .route(backend)
            .map_err(|err| format!("backend unreachable: {err}"))?;
        let tuple = self
            .free_tuple(stack, route.source, backend, port)
            .ok_or_else(|| format!("backend unreachable: no free port on {} for {backend}", route.source))?;
        match self.neighbours.resolve(route, waiter, now) {
            Ok(Some(l2)) => Ok(OwnedLeg::Ready(tuple, l2)),
            Ok(None) => {
                self.reserved.insert(tuple);
                Ok(OwnedLeg::Waiting(tuple))
            }
            Err(err) => Err(format!("backend unreachable: {err}")),
        }
    }

    fn free_tuple(&mut self, stack: &Stack, source: IpAddr, backend: IpAddr, port: u16) -> Option<FlowTuple> {
        let span = usize::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        (0..span).find_map(|_| {
            let src_port = self.next_port;
            self.next_port = if src_port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                src_port + 1
            };
            let tuple = FlowTuple {
                src_ip: source,
                src_port,
                dst_ip: backend,
                dst_port: port,
            };
            let free =
                stack.lookup(Side::Server.index(), &tuple.reversed()).is_none() && !self.reserved.contains(&tuple);
            free.then_some(tuple)
        })
    }

    /// A waiting leg's port is free again (it connected, or its
    /// connection ended).
    pub fn release(&mut self, tuple: &FlowTuple) {
        self.reserved.remove(tuple);
    }

    /// See [`Neighbours::receive`].
    pub fn receive(&mut self, frame: &[u8], class: &FrameClass, now: Instant) -> bool {
        self.neighbours.receive(frame, class, now)
    }

    /// Counts a frame to an owned address that no leg took (dropped).
    pub fn count_dropped(&mut self) {
        self.dropped += 1;
    }

    pub fn poll(&mut self, now: Instant) {
        self.neighbours.poll(now);
    }

    pub fn next_outcome(&mut self) -> Option<Outcome> {
        self.neighbours.next_outcome()
    }

    pub fn drain_output(&mut self, out: &mut Vec<OutFrame>) {
        self.neighbours.drain_output(out);
    }

    /// The neighbour table's counters, and the frames dropped.
    pub fn counters(&self) -> (NeighbourCounters, u64) {
        (self.neighbours.counters(), self.dropped)
    }
}
