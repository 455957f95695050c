//! The appliance's own addresses on one port, and their neighbours: the
//! ARP requests and IPv6 neighbour solicitations for an owned address are
//! answered with the port's MAC, and the MAC of a next hop (the backend
//! itself when it is on an owned prefix, else the family's gateway) is
//! resolved for the connections the appliance opens from an owned address.
//!
//! Sans-IO on the caller's clock: frames in ([`Neighbours::receive`]),
//! frames out ([`Neighbours::drain_output`]), and the outcome of every
//! resolution a connection waits for ([`Neighbours::next_outcome`]). The
//! table is bounded ([`MAX_ENTRIES`] next hops, [`MAX_WAITERS`] waiting
//! connections), a request is sent [`ATTEMPTS`] times [`RETRY_INTERVAL`]
//! apart before its waiters are told it failed, and an answer is kept for
//! [`LIFETIME`]. Only answers to a resolution under way are learned
//! (nothing unsolicited: a host on the link can neither plant an entry for
//! a next hop the appliance never asked about nor change a known one).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};
use wire::neighbour::{self, NeighbourMessage};
use wire::FrameClass;

use crate::device::OutFrame;
use crate::l2::L2Header;

/// Time between two requests for the same next hop.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Requests sent for a next hop before its waiters are told it failed.
pub const ATTEMPTS: u32 = 3;
/// How long an answer is used before the next hop is asked again.
pub const LIFETIME: Duration = Duration::from_secs(60);
/// Next hops known or being resolved at once.
pub const MAX_ENTRIES: usize = 64;
/// Connections waiting for resolutions at once.
pub const MAX_WAITERS: usize = 4096;

/// An address the appliance owns on its port, with the length of the
/// prefix on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl OwnedAddress {
    /// Whether `other` is on this address's prefix (same family).
    pub fn on_link(&self, other: IpAddr) -> bool {
        match (self.address, other) {
            (IpAddr::V4(own), IpAddr::V4(other)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len.min(32)))
                    .unwrap_or(0);
                u32::from(own) & mask == u32::from(other) & mask
            }
            (IpAddr::V6(own), IpAddr::V6(other)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len.min(128)))
                    .unwrap_or(0);
                u128::from(own) & mask == u128::from(other) & mask
            }
            _ => false,
        }
    }
}

/// The owned addresses of one port, its MAC and its gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourConfig {
    /// The stack's index of the port.
    pub port: usize,
    pub mac: [u8; 6],
    pub addresses: Vec<OwnedAddress>,
    /// At most one per family, each on one of `addresses`' prefixes.
    pub gateways: Vec<IpAddr>,
}

/// How the appliance reaches a destination from its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The owned address the connection leaves from.
    pub source: IpAddr,
    /// Whose MAC its frames go to: the destination, or the gateway.
    pub next_hop: IpAddr,
}

/// What became of a resolution a connection waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Frames of the connection `waiter` go with this header.
    Resolved { waiter: u64, l2: L2Header },
    /// `next_hop` did not answer.
    Failed { waiter: u64, next_hop: IpAddr },
}

/// Why a connection cannot leave from an owned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeighbourError {
    #[error("no owned address of {0}'s family, or {0} is on no owned prefix and there is no gateway of its family")]
    NoRoute(IpAddr),
    #[error("too many address resolutions under way")]
    Full,
}

/// What the neighbour table did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighbourCounters {
    /// ARP requests and neighbour solicitations for an owned address answered.
    pub answered: u64,
    /// ARP requests and neighbour solicitations sent.
    pub requests_sent: u64,
    /// Next hops resolved (answers learned).
    pub resolved: u64,
    /// Connections told their next hop did not answer.
    pub failed: u64,
    /// Connections refused for a full table.
    pub refused: u64,
}

#[derive(Debug)]
enum Entry {
    Resolved {
        mac: [u8; 6],
        expires: Instant,
    },
    Resolving {
        source: IpAddr,
        attempts: u32,
        next_try: Instant,
        waiters: Vec<u64>,
    },
}

/// The neighbour table of one port; see the module documentation.
#[derive(Debug)]
pub struct Neighbours {
    config: NeighbourConfig,
    entries: HashMap<IpAddr, Entry>,
    /// Waiters of all `Resolving` entries.
    waiting: usize,
    outcomes: VecDeque<Outcome>,
    output: Vec<OutFrame>,
    counters: NeighbourCounters,
}

impl Neighbours {
    pub fn new(config: NeighbourConfig) -> Neighbours {
        Neighbours {
            config,
            entries: HashMap::new(),
            waiting: 0,
            outcomes: VecDeque::new(),
            output: Vec::new(),
            counters: NeighbourCounters::default(),
        }
    }

    /// The stack's index of the port.
    pub fn port(&self) -> usize {
        self.config.port
    }

    /// Whether `ip` is one of the appliance's own addresses on the port.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.config.addresses.iter().any(|owned| owned.address == ip)
    }

    /// The owned address a connection to `destination` leaves from (the
    /// first of its family whose prefix holds it, else the first of its
    /// family) and its next hop (the destination when on that prefix,
    /// else the family's gateway).
    pub fn route(&self, destination: IpAddr) -> Result<Route, NeighbourError> {
        let family = || {
            self.config
                .addresses
                .iter()
                .filter(|owned| owned.address.is_ipv4() == destination.is_ipv4())
        };
        if let Some(owned) = family().find(|owned| owned.on_link(destination)) {
            return Ok(Route {
                source: owned.address,
                next_hop: destination,
            });
        }
        let gateway = self
            .config
            .gateways
            .iter()
            .find(|gateway| gateway.is_ipv4() == destination.is_ipv4());
        match (family().next(), gateway) {
            (Some(owned), Some(gateway)) => Ok(Route {
                source: owned.address,
                next_hop: *gateway,
            }),
            _ => Err(NeighbourError::NoRoute(destination)),
        }
    }

    /// The framing of a connection from `route.source` through
    /// `route.next_hop`: at once when its MAC is known, else `None`, and
    /// [`Outcome`] tells `waiter` later (a request goes out now unless one
    /// is under way).
    pub fn resolve(&mut self, route: Route, waiter: u64, now: Instant) -> Result<Option<L2Header>, NeighbourError> {
        let own_mac = self.config.mac;
        match self.entries.get_mut(&route.next_hop) {
            Some(Entry::Resolved { mac, expires }) if *expires > now => {
                return Ok(Some(L2Header::new(*mac, own_mac, &[])));
            }
            Some(Entry::Resolving { waiters, .. }) => {
                if self.waiting >= MAX_WAITERS {
                    self.counters.refused += 1;
                    return Err(NeighbourError::Full);
                }
                waiters.push(waiter);
                self.waiting += 1;
                return Ok(None);
            }
            _ => {}
        }
        if self.waiting >= MAX_WAITERS || !self.make_room(route.next_hop) {
            self.counters.refused += 1;
            return Err(NeighbourError::Full);
        }
        self.entries.insert(
            route.next_hop,
            Entry::Resolving {
                source: route.source,
                attempts: 1,
                next_try: now + RETRY_INTERVAL,
                waiters: vec![waiter],
            },
        );
        self.waiting += 1;
        self.ask(route.source, route.next_hop);
        Ok(None)
    }

    /// Room for an entry of `next_hop`: its own expired one goes, else the
    /// resolved one that expires first (an expired one if any); false when
    /// every entry is a resolution under way.
    fn make_room(&mut self, next_hop: IpAddr) -> bool {
        if self.entries.remove(&next_hop).is_some() || self.entries.len() < MAX_ENTRIES {
            return true;
        }
        let oldest = self
            .entries
            .iter()
            .filter_map(|(ip, entry)| match entry {
                Entry::Resolved { expires, .. } => Some((*expires, *ip)),
                Entry::Resolving { .. } => None,
            })
            .min();
        match oldest {
            Some((_, ip)) => {
                self.entries.remove(&ip);
                true
            }
            None => false,
        }
    }

    fn ask(&mut self, source: IpAddr, next_hop: IpAddr) {
        if let Some(frame) = neighbour::request(self.config.mac, source, next_hop, &[]) {
            self.counters.requests_sent += 1;
            self.output.push(OutFrame {
                port: self.config.port,
                frame,
            });
        }
    }

    /// Takes a frame received on the port if it is the appliance's: an ARP
    /// request or neighbour solicitation for an owned address (answered,
    /// with the request's VLAN tags), an answer sent to an owned address
    /// (learned if it answers a resolution under way). False: not the
    /// appliance's (bridged as before).
    pub fn receive(&mut self, frame: &[u8], class: &FrameClass, now: Instant) -> bool {
        let Some(message) = neighbour::message(frame, class) else {
            return false;
        };
        match message {
            NeighbourMessage::Request {
                target,
                asker,
                asker_mac,
            } => {
                if !self.owns(target) {
                    return false;
                }
                if self.owns(asker) {
                    // Another host claims an owned address (or a looped
                    // copy of a request): nothing to answer.
                    return true;
                }
                if let Some(reply) = neighbour::reply(self.config.mac, target, asker, asker_mac, class.l2.vlan_tags()) {
                    self.counters.answered += 1;
                    self.output.push(OutFrame {
                        port: self.config.port,
                        frame: reply,
                    });
                }
                true
            }
            NeighbourMessage::Reply { address, mac, to } => {
                if !self.owns(to) {
                    return false;
                }
                self.learn(address, mac, now);
                true
            }
        }
    }

    /// Takes `mac` for `address` if a resolution of it is under way; a
    /// known next hop keeps its MAC until it expires (an answer nobody
    /// asked for changes nothing).
    fn learn(&mut self, address: IpAddr, mac: [u8; 6], now: Instant) {
        let own_mac = self.config.mac;
        let Some(entry) = self.entries.get_mut(&address) else {
            return;
        };
        let Entry::Resolving { waiters, .. } = entry else {
            return;
        };
        self.waiting = self.waiting.saturating_sub(waiters.len());
        self.counters.resolved += 1;
        let l2 = L2Header::new(mac, own_mac, &[]);
        self.outcomes
            .extend(waiters.drain(..).map(|waiter| Outcome::Resolved { waiter, l2 }));
        *entry = Entry::Resolved {
            mac,
            expires: now + LIFETIME,
        };
    }

    /// Sends the requests due again, and fails the resolutions that ran
    /// out of attempts.
    pub fn poll(&mut self, now: Instant) {
        if self.waiting == 0 {
            return;
        }
        let mut again = Vec::new();
        let mut failed = Vec::new();
        for (ip, entry) in &mut self.entries {
            if let Entry::Resolving {
                source,
                attempts,
                next_try,
                ..
            } = entry
            {
                if *next_try > now {
                    continue;
                }
                if *attempts >= ATTEMPTS {
                    failed.push(*ip);
                } else {
                    *attempts += 1;
                    *next_try = now + RETRY_INTERVAL;
                    again.push((*source, *ip));
                }
            }
        }
        for (source, next_hop) in again {
            self.ask(source, next_hop);
        }
        for next_hop in failed {
            if let Some(Entry::Resolving { waiters, .. }) = self.entries.remove(&next_hop) {
                self.waiting = self.waiting.saturating_sub(waiters.len());
                self.counters.failed += waiters.len() as u64;
                self.outcomes
                    .extend(waiters.into_iter().map(|waiter| Outcome::Failed { waiter, next_hop }));
            }
        }
    }

    /// Takes the next outcome of a resolution, if any.
    pub fn next_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.pop_front()
    }

    /// Moves the frames to send into `out` (appending).
    pub fn drain_output(&mut self, out: &mut Vec<OutFrame>) {
        out.append(&mut self.output);
    }

    pub fn counters(&self) -> NeighbourCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::classify;

    const OWN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x5];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x9];

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn table() -> Neighbours {
        Neighbours::new(NeighbourConfig {
            port: 1,
            mac: OWN_MAC,
            addresses: vec![
                OwnedAddress {
                    address: ip("198.18.7.1"),
                    prefix_len: 24,
                },
                OwnedAddress {
                    address: ip("2001:2:7::1"),
                    prefix_len: 64,
                },
            ],
            gateways: vec![ip("198.18.7.254")],
        })
    }

    fn feed(table: &mut Neighbours, frame: &[u8], now: Instant) -> bool {
        table.receive(frame, &classify(frame).unwrap(), now)
    }

    fn sent(table: &mut Neighbours) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        table.drain_output(&mut out);
        out.into_iter().map(|out| out.frame).collect()
    }

    #[test]
    fn routes_on_link_through_the_gateway_or_not_at_all() {
        let table = table();
        assert_eq!(
            table.route(ip("198.18.7.9")),
            Ok(Route {
                source: ip("198.18.7.1"),
                next_hop: ip("198.18.7.9")
            })
        );
        assert_eq!(
            table.route(ip("198.18.9.2")),
            Ok(Route {
                source: ip("198.18.7.1"),
                next_hop: ip("198.18.7.254")
            })
        );
        assert_eq!(
            table.route(ip("2001:2:9::2")),
            Err(NeighbourError::NoRoute(ip("2001:2:9::2")))
        );
    }

    #[test]
    fn answers_requests_for_owned_addresses_only() {
        let mut table = table();
        let asking = neighbour::request(PEER_MAC, ip("198.18.7.9"), ip("198.18.7.1"), &[]).unwrap();
        assert!(feed(&mut table, &asking, Instant::ZERO));
        let answer = sent(&mut table);
        assert_eq!(answer.len(), 1);
        let read = neighbour::message(&answer[0], &classify(&answer[0]).unwrap());
        assert_eq!(
            read,
            Some(NeighbourMessage::Reply {
                address: ip("198.18.7.1"),
                mac: OWN_MAC,
                to: ip("198.18.7.9")
            })
        );
        let solicit = neighbour::request(PEER_MAC, ip("2001:2:7::9"), ip("2001:2:7::1"), &[]).unwrap();
        assert!(feed(&mut table, &solicit, Instant::ZERO));
        assert_eq!(sent(&mut table).len(), 1);
        let other = neighbour::request(PEER_MAC, ip("198.18.7.9"), ip("198.18.7.2"), &[]).unwrap();
        assert!(!feed(&mut table, &other, Instant::ZERO));
        assert!(sent(&mut table).is_empty());
        assert_eq!(table.counters().answered, 2);
    }

    #[test]
    fn resolves_once_for_every_waiter_and_caches_until_expiry() {
        let mut table = table();
        let route = table.route(ip("198.18.7.9")).unwrap();
        assert_eq!(table.resolve(route, 1, Instant::ZERO), Ok(None));
        assert_eq!(table.resolve(route, 2, Instant::ZERO), Ok(None));
        assert_eq!(sent(&mut table).len(), 1, "one request for both waiters");
        let answer = neighbour::reply(PEER_MAC, ip("198.18.7.9"), ip("198.18.7.1"), OWN_MAC, &[]).unwrap();
        assert!(feed(&mut table, &answer, Instant::from_millis(5)));
        let l2 = L2Header::new(PEER_MAC, OWN_MAC, &[]);
        assert_eq!(table.next_outcome(), Some(Outcome::Resolved { waiter: 1, l2 }));
        assert_eq!(table.next_outcome(), Some(Outcome::Resolved { waiter: 2, l2 }));
        assert_eq!(table.resolve(route, 3, Instant::from_secs(1)), Ok(Some(l2)));
        // Expired: asked again.
        assert_eq!(table.resolve(route, 4, Instant::from_secs(61)), Ok(None));
        assert_eq!(sent(&mut table).len(), 1);
    }

    #[test]
    fn unsolicited_answers_are_not_learned() {
        let mut table = table();
        let answer = neighbour::reply(PEER_MAC, ip("198.18.7.9"), ip("198.18.7.1"), OWN_MAC, &[]).unwrap();
        assert!(
            feed(&mut table, &answer, Instant::ZERO),
            "sent to an owned address: the appliance's"
        );
        let route = table.route(ip("198.18.7.9")).unwrap();
        assert_eq!(table.resolve(route, 1, Instant::ZERO), Ok(None));
        assert!(feed(&mut table, &answer, Instant::ZERO));
        // Another MAC for the known next hop, unasked: ignored.
        let forged = neighbour::reply([2, 6, 6, 6, 6, 6], ip("198.18.7.9"), ip("198.18.7.1"), OWN_MAC, &[]).unwrap();
        assert!(feed(&mut table, &forged, Instant::from_millis(1)));
        assert_eq!(
            table.resolve(route, 2, Instant::from_millis(2)),
            Ok(Some(L2Header::new(PEER_MAC, OWN_MAC, &[])))
        );
    }

    #[test]
    fn retries_then_fails_every_waiter() {
        let mut table = table();
        let route = table.route(ip("2001:2:7::9")).unwrap();
        assert_eq!(table.resolve(route, 7, Instant::ZERO), Ok(None));
        let mut requests = sent(&mut table).len();
        for ms in (0..=5_000).step_by(100) {
            table.poll(Instant::from_millis(ms));
            requests += sent(&mut table).len();
        }
        assert_eq!(requests, ATTEMPTS as usize);
        assert_eq!(
            table.next_outcome(),
            Some(Outcome::Failed {
                waiter: 7,
                next_hop: ip("2001:2:7::9")
            })
        );
        assert_eq!(table.next_outcome(), None);
        assert_eq!(table.counters().failed, 1);
    }

    #[test]
    fn bounded_entries_and_waiters() {
        let mut table = table();
        for host in 0..MAX_ENTRIES as u32 {
            let route = Route {
                source: ip("198.18.7.1"),
                next_hop: IpAddr::V4((u32::from(std::net::Ipv4Addr::new(198, 18, 7, 0)) + 2 + host).into()),
            };
            assert_eq!(table.resolve(route, u64::from(host), Instant::ZERO), Ok(None));
        }
        let one_more = table.route(ip("198.18.7.250")).unwrap();
        assert_eq!(table.resolve(one_more, 999, Instant::ZERO), Err(NeighbourError::Full));
        let route = table.route(ip("198.18.7.2")).unwrap();
        for waiter in MAX_ENTRIES..MAX_WAITERS {
            assert_eq!(table.resolve(route, waiter as u64, Instant::ZERO), Ok(None));
        }
        assert_eq!(table.resolve(route, 0, Instant::ZERO), Err(NeighbourError::Full));
        assert_eq!(table.counters().refused, 2);
    }
}
