//! Which connections the workers hold, for the one case where a frame
//! reaches a worker that does not hold its connection: af_packet's fanout
//! (DPDK 22.11 sets `PACKET_FANOUT_FLAG_ROLLOVER`) hands a frame to another
//! worker's socket when the socket its flow hash chose is (nearly) full.
//! Such a frame finds no flow there; bridged, it would reach the other end
//! with the wrong sequence numbers (and a server's SYN-ACK that way makes
//! the client reset the server leg). The worker drops it instead and counts
//! it (`misdirected`), and TCP retransmits it, normally to the right worker.
//!
//! Shared by the workers (only when there are several): a count of
//! sessions per client→server tuple in a few mutex-guarded shards, touched
//! when a session opens and ends, and read only for TCP segments to or from
//! an intercepted port that the reading worker has no flow for.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use wire::FlowTuple;

const SHARDS: usize = 32;

/// The sessions of all workers, by client→server tuple.
#[derive(Debug)]
pub struct SessionDirectory {
    hasher: RandomState,
    shards: [Mutex<HashMap<FlowTuple, u32>>; SHARDS],
}

impl Default for SessionDirectory {
    fn default() -> Self {
        SessionDirectory {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl SessionDirectory {
    fn shard(&self, tuple: &FlowTuple) -> std::sync::MutexGuard<'_, HashMap<FlowTuple, u32>> {
        let index = (self.hasher.hash_one(tuple) % SHARDS as u64) as usize;
        // A poisoned shard only means a worker panicked while holding it;
        // the counts are still consistent (each update is one statement).
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A session for `tuple` (client→server) opened.
    pub fn insert(&self, tuple: &FlowTuple) {
        *self.shard(tuple).entry(*tuple).or_default() += 1;
    }

    /// A session for `tuple` ended.
    pub fn remove(&self, tuple: &FlowTuple) {
        let mut shard = self.shard(tuple);
        if let Some(count) = shard.get_mut(tuple) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(tuple);
            }
        }
    }

    /// Sessions for `tuple` over all workers.
    pub fn sessions(&self, tuple: &FlowTuple) -> u32 {
        self.shard(tuple).get(tuple).copied().unwrap_or(0)
    }
}

/// One worker's view: the shared directory and its own sessions' share.
#[derive(Debug)]
pub(crate) struct WorkerDirectory {
    shared: std::sync::Arc<SessionDirectory>,
    own: HashMap<FlowTuple, u32>,
}

impl WorkerDirectory {
    pub(crate) fn new(shared: std::sync::Arc<SessionDirectory>) -> Self {
        WorkerDirectory {
            shared,
            own: HashMap::new(),
        }
    }

    pub(crate) fn opened(&mut self, tuple: &FlowTuple) {
        *self.own.entry(*tuple).or_default() += 1;
        self.shared.insert(tuple);
    }

    pub(crate) fn ended(&mut self, tuple: &FlowTuple) {
        if let Some(count) = self.own.get_mut(tuple) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.own.remove(tuple);
            }
            self.shared.remove(tuple);
        }
    }

    /// Whether another worker holds a session for `tuple` (client→server).
    pub(crate) fn held_elsewhere(&self, tuple: &FlowTuple) -> bool {
        self.shared.sessions(tuple) > self.own.get(tuple).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tuple(port: u16) -> FlowTuple {
        FlowTuple {
            src_ip: [198, 18, 0, 1].into(),
            dst_ip: [198, 18, 0, 2].into(),
            src_port: port,
            dst_port: 443,
        }
    }

    #[test]
    fn a_worker_sees_the_sessions_of_the_others_not_its_own() {
        let shared = Arc::new(SessionDirectory::default());
        let (mut a, mut b) = (
            WorkerDirectory::new(Arc::clone(&shared)),
            WorkerDirectory::new(Arc::clone(&shared)),
        );
        a.opened(&tuple(1));
        assert!(b.held_elsewhere(&tuple(1)));
        assert!(!a.held_elsewhere(&tuple(1)), "its own");
        assert!(!b.held_elsewhere(&tuple(2)));
        // The same tuple twice on one worker (a reused 4-tuple while the
        // old legs linger): held until both ended.
        a.opened(&tuple(1));
        a.ended(&tuple(1));
        assert!(b.held_elsewhere(&tuple(1)));
        a.ended(&tuple(1));
        assert!(!b.held_elsewhere(&tuple(1)));
        assert_eq!(shared.sessions(&tuple(1)), 0);
        // Ending what a worker never opened changes nothing.
        b.opened(&tuple(3));
        a.ended(&tuple(3));
        assert!(a.held_elsewhere(&tuple(3)));
    }
}
