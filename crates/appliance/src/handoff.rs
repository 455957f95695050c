//! Frames of a connection leg that reach a worker which does not hold it,
//! handed to the worker that does.
//!
//! Every worker's flow steering (NIC RSS, af_packet's kernel fanout,
//! software distribution) hashes a frame's endpoints, so all legs of a
//! connection that keep the client's endpoints (the client leg, an
//! intercepted connection's server leg, the inspection legs) reach the
//! worker that took the client's SYN. A leg the appliance opens to other
//! endpoints does not: a `[[service]]` backend leg goes from the client's
//! address and port to the backend's address and port, and its frames from
//! the backend hash as they like. Such a leg is registered here with its
//! owner, the worker that opened it ([`LegRegistry`], used by the splicer
//! wherever it connects such a leg). A worker that receives a TCP segment
//! (or an ICMP error quoting one) of a leg it has no flow for asks
//! [`WorkerHandoff::owner_elsewhere`]; if another worker holds the leg, the
//! frame is copied once into that worker's bounded inbox
//! ([`WorkerHandoff::hand`]), and the owner takes it as received on its own
//! server port ([`WorkerHandoff::take`], [`HandedFrame::from`]). A full inbox drops the frame
//! (counted; TCP retransmits it): a worker never waits for another.
//!
//! An FTP data connection is the other case: its endpoints are the data
//! port's, not the control connection's, so its SYN may reach a worker
//! other than the one whose control connection announced it (see
//! [`crate::ftpdata`]). That worker hands the SYN to the control
//! connection's, with the port it came in on ([`HandedFrame::from`]), and
//! the owner registers the data connection it opens
//! ([`LegRegistry::register_data_flow`]): every later segment of it, from
//! either port and in either direction, is handed the same way until the
//! session ends.
//!
//! Shared by the workers (only when there are several): the owner of each
//! registered leg or data connection in a few mutex-guarded shards, and a
//! count of them per remote port, read without a lock, so that the frames
//! of ports no such leg uses (all bridged traffic, usually) never take a
//! lock here.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

use wire::FlowTuple;

use crate::ftpdata::{ExpectationTable, Expectations};
use crate::side::Side;

const SHARDS: usize = 32;

/// A registered leg's owner, and how many of its sessions use the tuple
/// (a reused client port while the old leg lingers in TIME-WAIT).
#[derive(Debug, Clone, Copy)]
struct Owner {
    worker: usize,
    legs: u32,
}

/// The legs whose endpoints differ from their client's, by tuple (from the
/// appliance's side: the client's address and port to the remote end).
#[derive(Debug)]
pub struct LegDirectory {
    hasher: RandomState,
    shards: [Mutex<HashMap<FlowTuple, Owner>>; SHARDS],
    /// Registered legs per remote port (the tuple's destination port).
    remote_ports: Box<[AtomicU32]>,
}

impl Default for LegDirectory {
    fn default() -> Self {
        LegDirectory {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
            remote_ports: (0..=u16::MAX).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl LegDirectory {
    fn shard(&self, leg: &FlowTuple) -> MutexGuard<'_, HashMap<FlowTuple, Owner>> {
        let index = (self.hasher.hash_one(leg) % SHARDS as u64) as usize;
        // A poisoned shard only means a worker panicked while holding it;
        // each update is one statement, so the map is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remote_port(&self, leg: &FlowTuple) -> &AtomicU32 {
        &self.remote_ports[usize::from(leg.dst_port)]
    }

    fn register(&self, leg: &FlowTuple, worker: usize) {
        let mut shard = self.shard(leg);
        let port = self.remote_port(leg);
        match shard.get_mut(leg) {
            Some(owner) if owner.worker == worker => owner.legs += 1,
            Some(owner) => {
                // The same tuple from two workers: only a client SYN that
                // af_packet rolled over can do that. The latest holds it.
                port.fetch_sub(owner.legs, Ordering::Relaxed);
                *owner = Owner { worker, legs: 1 };
            }
            None => {
                shard.insert(*leg, Owner { worker, legs: 1 });
            }
        }
        port.fetch_add(1, Ordering::Relaxed);
    }

    fn unregister(&self, leg: &FlowTuple, worker: usize) {
        let mut shard = self.shard(leg);
        let Some(owner) = shard.get_mut(leg).filter(|owner| owner.worker == worker) else {
            return;
        };
        owner.legs -= 1;
        if owner.legs == 0 {
            shard.remove(leg);
        }
        // The port counts the legs in the map: under the shard's lock.
        self.remote_port(leg).fetch_sub(1, Ordering::Relaxed);
    }

    /// How many legs are registered, over all workers and ports.
    fn registered(&self) -> u64 {
        self.remote_ports
            .iter()
            .map(|count| u64::from(count.load(Ordering::Relaxed)))
            .sum()
    }

    /// The worker holding `leg`, if it is registered.
    pub fn owner(&self, leg: &FlowTuple) -> Option<usize> {
        if self.remote_port(leg).load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.shard(leg).get(leg).map(|owner| owner.worker)
    }
}

/// One worker's registrations: the splicer registers each leg it opens to
/// endpoints other than its client's, and each FTP data connection, and
/// lets go when its session ends.
#[derive(Debug, Clone)]
pub struct LegRegistry {
    directory: Arc<LegDirectory>,
    data_flows: Arc<LegDirectory>,
    worker: usize,
}

impl LegRegistry {
    /// This worker holds `leg` (client address and port → remote end).
    pub(crate) fn register(&self, leg: &FlowTuple) {
        self.directory.register(leg, self.worker);
    }

    /// One of this worker's sessions with `leg` ended.
    pub(crate) fn unregister(&self, leg: &FlowTuple) {
        self.directory.unregister(leg, self.worker);
    }

    /// This worker holds the FTP data connection `syn` opened (its SYN's
    /// source → destination, whichever side sent it).
    pub(crate) fn register_data_flow(&self, syn: &FlowTuple) {
        self.data_flows.register(syn, self.worker);
    }

    /// That data connection's session ended.
    pub(crate) fn unregister_data_flow(&self, syn: &FlowTuple) {
        self.data_flows.unregister(syn, self.worker);
    }
}

/// A frame handed to another worker, and the port it came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedFrame {
    pub from: Side,
    pub data: Vec<u8>,
}

/// Why a frame could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffError {
    /// The owner's inbox is full (it is behind): the frame is dropped.
    Full,
    /// The owner is gone (shutting down) or out of range.
    NoOwner,
}

/// One worker's ends of the hand-off: the shared directory, a sender to
/// every worker's inbox, and its own inbox.
#[derive(Debug)]
pub struct WorkerHandoff {
    directory: Arc<LegDirectory>,
    data_flows: Arc<LegDirectory>,
    expectations: Arc<ExpectationTable>,
    worker: usize,
    /// By worker index (this worker's own included, never used).
    inboxes: Vec<SyncSender<HandedFrame>>,
    inbox: Receiver<HandedFrame>,
}

impl WorkerHandoff {
    /// The hand-off of `workers` workers, each inbox holding up to
    /// `capacity` frames; one per worker, in worker order.
    pub fn for_workers(workers: usize, capacity: usize) -> Vec<WorkerHandoff> {
        let directory = Arc::new(LegDirectory::default());
        let data_flows = Arc::new(LegDirectory::default());
        let expectations = Arc::new(ExpectationTable::default());
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::sync_channel(capacity)).unzip();
        receivers
            .into_iter()
            .enumerate()
            .map(|(worker, inbox)| WorkerHandoff {
                directory: Arc::clone(&directory),
                data_flows: Arc::clone(&data_flows),
                expectations: Arc::clone(&expectations),
                worker,
                inboxes: senders.clone(),
                inbox,
            })
            .collect()
    }

    /// Where this worker's splicer registers the legs it opens.
    pub fn registry(&self) -> LegRegistry {
        LegRegistry {
            directory: Arc::clone(&self.directory),
            data_flows: Arc::clone(&self.data_flows),
            worker: self.worker,
        }
    }

    /// This worker's end of the FTP data connections all workers expect
    /// (one per worker: it keeps what this worker announced).
    pub fn ftp_expectations(&self) -> Expectations {
        Expectations::of_worker(Arc::clone(&self.expectations), self.worker)
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The worker, other than this one, that holds `leg` (client address
    /// and port → remote end, as the appliance connected it).
    pub fn owner_elsewhere(&self, leg: &FlowTuple) -> Option<usize> {
        self.directory.owner(leg).filter(|&owner| owner != self.worker)
    }

    /// The worker, other than this one, holding the connection of a TCP
    /// `segment` received on `from` that this worker has no flow for: a
    /// leg it opened to other endpoints (from the server port), or an FTP
    /// data connection (from either port, in either direction).
    pub fn holder_elsewhere(&self, from: Side, segment: &FlowTuple) -> Option<usize> {
        let reversed = segment.reversed();
        let leg = (from == Side::Server)
            .then(|| self.directory.owner(&reversed))
            .flatten();
        leg.or_else(|| self.data_flows.owner(segment))
            .or_else(|| self.data_flows.owner(&reversed))
            .filter(|&owner| owner != self.worker)
    }

    /// How many legs all workers have registered now (each ends with its
    /// session): a count that grows without end is a leak.
    pub fn registered_legs(&self) -> u64 {
        self.directory.registered() + self.data_flows.registered()
    }

    /// How many FTP data connections all workers expect now (lapsed ones
    /// until their worker's next announcement; each goes when taken or when
    /// its control connection ends).
    pub fn expected_ftp_data(&self) -> u64 {
        self.expectations.len()
    }

    /// Copies `frame`, received on `from`, into `owner`'s inbox.
    pub fn hand(&self, owner: usize, from: Side, frame: &[u8]) -> Result<(), HandoffError> {
        let inbox = self.inboxes.get(owner).ok_or(HandoffError::NoOwner)?;
        let handed = HandedFrame {
            from,
            data: frame.to_vec(),
        };
        inbox.try_send(handed).map_err(|err| match err {
            TrySendError::Full(_) => HandoffError::Full,
            TrySendError::Disconnected(_) => HandoffError::NoOwner,
        })
    }

    /// The oldest frame other workers handed to this one, if any.
    pub fn take(&self) -> Option<HandedFrame> {
        self.inbox.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(client_port: u16, remote_port: u16) -> FlowTuple {
        FlowTuple {
            src_ip: [198, 18, 0, 1].into(),
            dst_ip: [198, 18, 0, 2].into(),
            src_port: client_port,
            dst_port: remote_port,
        }
    }

    #[test]
    fn a_registered_leg_is_found_by_the_other_workers_until_it_ends() {
        let workers = WorkerHandoff::for_workers(3, 4);
        let (zero, one) = (&workers[0], &workers[1]);
        zero.registry().register(&leg(40_000, 8080));
        assert_eq!(one.owner_elsewhere(&leg(40_000, 8080)), Some(0));
        assert_eq!(workers[2].owner_elsewhere(&leg(40_000, 8080)), Some(0));
        assert_eq!(zero.owner_elsewhere(&leg(40_000, 8080)), None, "its own");
        assert_eq!(one.owner_elsewhere(&leg(40_001, 8080)), None);
        assert_eq!(one.owner_elsewhere(&leg(40_000, 8081)), None);
        // Twice on one worker (a reused client port while the old leg
        // lingers): held until both ended.
        zero.registry().register(&leg(40_000, 8080));
        assert_eq!(one.registered_legs(), 2, "counted once per session");
        zero.registry().unregister(&leg(40_000, 8080));
        assert_eq!(one.owner_elsewhere(&leg(40_000, 8080)), Some(0));
        zero.registry().unregister(&leg(40_000, 8080));
        assert_eq!(one.owner_elsewhere(&leg(40_000, 8080)), None);
        // Ending what a worker never registered changes nothing.
        one.registry().register(&leg(40_002, 8080));
        zero.registry().unregister(&leg(40_002, 8080));
        assert_eq!(zero.owner_elsewhere(&leg(40_002, 8080)), Some(1));
        one.registry().unregister(&leg(40_002, 8080));
        assert_eq!(zero.owner_elsewhere(&leg(40_002, 8080)), None);
        assert_eq!(zero.registered_legs(), 0);
        assert!(
            zero.directory
                .remote_ports
                .iter()
                .all(|count| count.load(Ordering::Relaxed) == 0),
            "every port's count is back to zero"
        );
    }

    #[test]
    fn frames_reach_the_owners_inbox_in_order_and_a_full_inbox_refuses() {
        let workers = WorkerHandoff::for_workers(2, 2);
        assert_eq!(workers[1].hand(0, Side::Server, b"one"), Ok(()));
        assert_eq!(workers[1].hand(0, Side::Client, b"two"), Ok(()));
        assert_eq!(workers[1].hand(0, Side::Server, b"three"), Err(HandoffError::Full));
        assert_eq!(workers[1].hand(2, Side::Server, b"nobody"), Err(HandoffError::NoOwner));
        assert_eq!(workers[1].take(), None, "nothing for worker 1");
        let taken = |from, data: &[u8]| {
            Some(HandedFrame {
                from,
                data: data.to_vec(),
            })
        };
        assert_eq!(workers[0].take(), taken(Side::Server, b"one"));
        assert_eq!(workers[0].take(), taken(Side::Client, b"two"));
        assert_eq!(workers[0].take(), None);
        assert_eq!(workers[1].hand(0, Side::Server, b"again"), Ok(()), "room again");
    }

    #[test]
    fn a_data_connection_is_found_from_either_port_in_either_direction() {
        let workers = WorkerHandoff::for_workers(2, 4);
        let (zero, one) = (&workers[0], &workers[1]);
        let syn = leg(40_000, 50_123);
        zero.registry().register_data_flow(&syn);
        for from in [Side::Client, Side::Server] {
            assert_eq!(one.holder_elsewhere(from, &syn), Some(0), "{from:?}");
            assert_eq!(one.holder_elsewhere(from, &syn.reversed()), Some(0), "{from:?}");
            assert_eq!(zero.holder_elsewhere(from, &syn), None, "its own");
        }
        assert_eq!(one.owner_elsewhere(&syn), None, "not a moved leg");
        assert_eq!(one.holder_elsewhere(Side::Client, &leg(40_001, 50_123)), None);
        // A moved leg is found from the server port only.
        one.registry().register(&leg(40_002, 8080));
        assert_eq!(
            zero.holder_elsewhere(Side::Server, &leg(40_002, 8080).reversed()),
            Some(1)
        );
        assert_eq!(zero.holder_elsewhere(Side::Client, &leg(40_002, 8080)), None);
        assert_eq!(zero.registered_legs(), 2);
        zero.registry().unregister_data_flow(&syn);
        one.registry().unregister(&leg(40_002, 8080));
        assert_eq!(one.holder_elsewhere(Side::Client, &syn), None);
        assert_eq!(zero.registered_legs(), 0);
    }
}
