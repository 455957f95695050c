//! The data connections an intercepted FTP control channel announced
//! (`[[starttls]] protocol = "ftp"`, see [`pipeline::Announcement`]),
//! expected for a short while so that their SYN is recognised although its
//! port is in no intercept list: a passive one (`PASV`/`EPSV`: the client's
//! SYN to the server) and an active one (`PORT`/`EPRT`: the server's SYN to
//! the address and port the client announced, whose TLS client is the FTP
//! client that accepted it) are both admitted and intercepted.
//!
//! Each expectation is taken by the first SYN that matches it and lapses
//! after [`EXPECTATION_LIFETIME`]. What one control connection may have
//! waiting is bounded ([`PER_CONTROL_LIMIT`]), as is what one worker's
//! control connections may have ([`TOTAL_LIMIT`]): past a bound the caller
//! fails the control connection rather than let a data connection go
//! unrecognised. Sans-IO: the caller passes `now`.
//!
//! With several workers the flow hash may give a data connection's SYN to
//! a worker other than the control connection's. The expectations are
//! therefore in one table the workers share ([`ExpectationTable`]: a few
//! mutex-guarded shards, and a count per awaited port read without a lock,
//! so that a SYN to a port nothing awaits takes no lock). Any worker finds
//! an expectation and its owner ([`Expected::worker`]) by the SYN's tuple,
//! whichever side sends it; only the owner expects, takes and forgets its
//! own ([`Expectations`], one per worker), and the other workers hand the
//! SYN to it (see [`crate::handoff`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mitm::GroupSessions;
use netstack::{Duration, Instant};
use starttls::DataProtection;
use wire::FlowTuple;

/// How long an announced data connection is waited for (vsftpd's own
/// `accept_timeout` is 60 s, clients connect at once).
pub const EXPECTATION_LIFETIME: Duration = Duration::from_secs(30);
/// Data connections one control connection may have announced and not
/// opened yet.
pub const PER_CONTROL_LIMIT: usize = 8;
/// Data connections all control connections of a worker may have waiting.
pub const TOTAL_LIMIT: usize = 1024;

const SHARDS: usize = 32;

/// Who opens an announced data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `PASV`/`EPSV`: the client connects to the server.
    Client,
    /// `PORT`/`EPRT`: the server connects to the client.
    Server,
}

/// A data connection waited for.
#[derive(Debug, Clone)]
pub struct Expected {
    pub opener: Opener,
    /// TLS (`PROT P`) or plain.
    pub protection: DataProtection,
    /// The control connection that announced it (its session serial on
    /// its worker).
    pub control: u64,
    /// The worker holding that control connection: the one that opens the
    /// data connection.
    pub worker: usize,
    /// The control connection's upstream TLS sessions, which a TLS data
    /// connection's upstream handshake resumes (see [`mitm::resume`]).
    pub sessions: Option<GroupSessions>,
    expires: Instant,
}

/// The SYN awaited: its source address, destination address and port
/// (the source port is the opener's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Awaited {
    from: IpAddr,
    to: IpAddr,
    port: u16,
}

impl Awaited {
    fn of(syn: &FlowTuple) -> Awaited {
        Awaited {
            from: syn.src_ip,
            to: syn.dst_ip,
            port: syn.dst_port,
        }
    }
}

/// Why a data connection cannot be expected: the caller fails the control
/// connection that announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExpectError {
    #[error("more than {PER_CONTROL_LIMIT} FTP data connections announced and not opened")]
    TooManyForControl,
    #[error("the table of expected FTP data connections is full ({TOTAL_LIMIT})")]
    TableFull,
}

/// The expected data connections of all workers.
#[derive(Debug)]
pub struct ExpectationTable {
    hasher: RandomState,
    shards: [Mutex<HashMap<Awaited, Expected>>; SHARDS],
    /// Expectations in the shards per awaited (destination) port.
    ports: Box<[AtomicU32]>,
}

impl Default for ExpectationTable {
    fn default() -> Self {
        ExpectationTable {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
            ports: (0..=u16::MAX).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl ExpectationTable {
    fn shard(&self, awaited: &Awaited) -> MutexGuard<'_, HashMap<Awaited, Expected>> {
        let index = (self.hasher.hash_one(awaited) % SHARDS as u64) as usize;
        // A poisoned shard only means a worker panicked while holding it;
        // each update is one statement, so the map is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn port(&self, awaited: &Awaited) -> &AtomicU32 {
        &self.ports[usize::from(awaited.port)]
    }

    fn insert(&self, awaited: Awaited, expected: Expected) {
        if self.shard(&awaited).insert(awaited, expected).is_none() {
            self.port(&awaited).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes the expectation of `awaited` if `worker`'s control
    /// connection `control` (any of `worker`'s, when `None`) announced it.
    fn remove(&self, awaited: &Awaited, worker: usize, control: Option<u64>) -> Option<Expected> {
        let mut shard = self.shard(awaited);
        let expected = shard.get(awaited)?;
        if expected.worker != worker || control.is_some_and(|control| control != expected.control) {
            return None;
        }
        let expected = shard.remove(awaited);
        // The port counts the entries in the shards: under the shard's lock.
        self.port(awaited).fetch_sub(1, Ordering::Relaxed);
        expected
    }

    fn get(&self, awaited: &Awaited) -> Option<Expected> {
        if self.port(awaited).load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.shard(awaited).get(awaited).cloned()
    }

    /// How many expectations the table holds, lapsed ones included.
    pub(crate) fn len(&self) -> u64 {
        self.ports
            .iter()
            .map(|count| u64::from(count.load(Ordering::Relaxed)))
            .sum()
    }
}

/// One worker's end of the expected data connections: it expects what its
/// control connections announce, finds any worker's, and takes and
/// forgets its own.
#[derive(Debug)]
pub struct Expectations {
    table: Arc<ExpectationTable>,
    worker: usize,
    /// What this worker's control connections announced and may still be
    /// in the table: their control connection and when they lapse.
    own: HashMap<Awaited, (u64, Instant)>,
}

impl Default for Expectations {
    /// A table of one worker's own.
    fn default() -> Self {
        Expectations::of_worker(Arc::default(), 0)
    }
}

impl Expectations {
    /// Worker `worker`'s end of `table`, shared with the other workers.
    pub fn of_worker(table: Arc<ExpectationTable>, worker: usize) -> Expectations {
        Expectations {
            table,
            worker,
            own: HashMap::new(),
        }
    }

    /// Expects a SYN from `from` to `to`:`port`, opened by `opener`, for
    /// this worker's control connection `control`. The same SYN announced
    /// again (a repeated `PASV`) replaces the earlier expectation.
    #[allow(clippy::too_many_arguments)]
    pub fn expect(
        &mut self,
        control: u64,
        opener: Opener,
        (from, to, port): (IpAddr, IpAddr, u16),
        protection: DataProtection,
        sessions: Option<GroupSessions>,
        now: Instant,
    ) -> Result<(), ExpectError> {
        let table = &self.table;
        let worker = self.worker;
        self.own.retain(|awaited, &mut (control, expires)| {
            let lapsed = expires <= now;
            if lapsed {
                table.remove(awaited, worker, Some(control));
            }
            !lapsed
        });
        let awaited = Awaited { from, to, port };
        if !self.own.contains_key(&awaited) {
            let of_control = self.own.values().filter(|(announcer, _)| *announcer == control).count();
            if of_control >= PER_CONTROL_LIMIT {
                return Err(ExpectError::TooManyForControl);
            }
            if self.own.len() >= TOTAL_LIMIT {
                return Err(ExpectError::TableFull);
            }
        }
        let expected = Expected {
            opener,
            protection,
            control,
            worker,
            sessions,
            expires: now + EXPECTATION_LIFETIME,
        };
        let expires = expected.expires;
        self.table.insert(awaited, expected);
        self.own.insert(awaited, (control, expires));
        Ok(())
    }

    /// Whether `syn` (whichever side sends it) is an expected data
    /// connection, not yet lapsed, of any worker (see [`Expected::worker`]).
    pub fn awaits(&self, syn: &FlowTuple, now: Instant) -> Option<Expected> {
        self.table
            .get(&Awaited::of(syn))
            .filter(|expected| expected.expires > now)
    }

    /// Takes the expectation `syn` fulfils, if this worker's control
    /// connection announced it (it is not expected again).
    pub fn take(&mut self, syn: &FlowTuple, now: Instant) -> Option<Expected> {
        let awaited = Awaited::of(syn);
        self.own.remove(&awaited)?;
        self.table
            .remove(&awaited, self.worker, None)
            .filter(|expected| expected.expires > now)
    }

    /// Forgets what this worker's control connection `control` announced
    /// (it ended): no worker finds it any more.
    pub fn forget(&mut self, control: u64) {
        let table = &self.table;
        let worker = self.worker;
        self.own.retain(|awaited, &mut (announcer, _)| {
            let of_control = announcer == control;
            if of_control {
                table.remove(awaited, worker, Some(control));
            }
            !of_control
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "198.18.0.10";
    const SERVER: &str = "198.18.1.20";

    fn syn(from: &str, to: &str, port: u16) -> FlowTuple {
        FlowTuple {
            src_ip: from.parse().unwrap(),
            dst_ip: to.parse().unwrap(),
            src_port: 50_000,
            dst_port: port,
        }
    }

    fn passive(expectations: &mut Expectations, control: u64, port: u16, now: Instant) -> Result<(), ExpectError> {
        let endpoints = (CLIENT.parse().unwrap(), SERVER.parse().unwrap(), port);
        expectations.expect(control, Opener::Client, endpoints, DataProtection::Private, None, now)
    }

    #[test]
    fn an_expected_syn_matches_once_until_it_lapses() {
        let mut expectations = Expectations::default();
        let start = Instant::from_secs(100);
        passive(&mut expectations, 1, 40_003, start).unwrap();
        passive(&mut expectations, 1, 40_004, start).unwrap();
        let expected = syn(CLIENT, SERVER, 40_003);
        assert!(
            expectations.awaits(&syn(CLIENT, SERVER, 40_005), start).is_none(),
            "another port"
        );
        assert!(
            expectations.awaits(&syn(SERVER, CLIENT, 40_003), start).is_none(),
            "the other way"
        );
        assert!(
            expectations
                .awaits(&syn("198.18.0.11", SERVER, 40_003), start)
                .is_none(),
            "another client"
        );
        let taken = expectations.take(&expected, start + Duration::from_secs(29)).unwrap();
        assert_eq!(
            (taken.opener, taken.protection, taken.control),
            (Opener::Client, DataProtection::Private, 1)
        );
        assert!(expectations.take(&expected, start).is_none(), "taken once");
        let lapsed = start + EXPECTATION_LIFETIME;
        assert!(expectations.awaits(&syn(CLIENT, SERVER, 40_004), lapsed).is_none());
        assert!(expectations.take(&syn(CLIENT, SERVER, 40_004), lapsed).is_none());
    }

    #[test]
    fn each_control_connection_and_the_table_are_bounded_and_lapsed_ones_make_room() {
        let mut expectations = Expectations::default();
        let now = Instant::from_secs(100);
        for port in 0..PER_CONTROL_LIMIT as u16 {
            passive(&mut expectations, 1, 40_000 + port, now).unwrap();
        }
        // The same announcement again replaces itself.
        passive(&mut expectations, 1, 40_000, now).unwrap();
        assert_eq!(
            passive(&mut expectations, 1, 41_000, now),
            Err(ExpectError::TooManyForControl)
        );
        passive(&mut expectations, 2, 41_000, now).unwrap();
        // Once lapsed they make room.
        let later = now + EXPECTATION_LIFETIME;
        passive(&mut expectations, 1, 41_000, later).unwrap();
        assert_eq!(expectations.own.len(), 1);
        // Other control connections fill the table (one port each).
        for control in 2..(TOTAL_LIMIT as u64 + 1) {
            passive(&mut expectations, control, 1_000 + control as u16, later).unwrap();
        }
        assert_eq!(expectations.own.len(), TOTAL_LIMIT);
        assert_eq!(
            passive(&mut expectations, 5_000, 40_000, later),
            Err(ExpectError::TableFull)
        );
        expectations.forget(1);
        passive(&mut expectations, 5_000, 40_000, later).unwrap();
    }

    #[test]
    fn every_worker_finds_an_expectation_only_its_owner_takes_and_forgets() {
        let table = Arc::new(ExpectationTable::default());
        let mut zero = Expectations::of_worker(Arc::clone(&table), 0);
        let mut one = Expectations::of_worker(Arc::clone(&table), 1);
        let now = Instant::from_secs(100);
        passive(&mut zero, 7, 40_003, now).unwrap();
        passive(&mut zero, 7, 40_004, now).unwrap();
        // Worker 1's control connection 7 is another one.
        passive(&mut one, 7, 40_005, now).unwrap();
        let found = one.awaits(&syn(CLIENT, SERVER, 40_003), now).unwrap();
        assert_eq!((found.worker, found.control), (0, 7), "found by the other worker");
        assert!(
            one.take(&syn(CLIENT, SERVER, 40_003), now).is_none(),
            "not the other's to take"
        );
        assert!(zero.awaits(&syn(CLIENT, SERVER, 40_003), now).is_some());
        assert_eq!(zero.take(&syn(CLIENT, SERVER, 40_003), now).unwrap().worker, 0);
        assert!(one.awaits(&syn(CLIENT, SERVER, 40_003), now).is_none(), "taken for all");
        // Forgetting worker 1's control 7 leaves worker 0's alone.
        one.forget(7);
        assert!(zero.awaits(&syn(CLIENT, SERVER, 40_005), now).is_none());
        assert!(one.awaits(&syn(CLIENT, SERVER, 40_004), now).is_some());
        zero.forget(7);
        assert!(
            one.awaits(&syn(CLIENT, SERVER, 40_004), now).is_none(),
            "forgotten for all"
        );
        assert_eq!(table.len(), 0);
        // A lapsed one is pruned from the table by its owner's next announcement.
        passive(&mut zero, 8, 40_006, now).unwrap();
        let later = now + EXPECTATION_LIFETIME;
        assert!(one.awaits(&syn(CLIENT, SERVER, 40_006), later).is_none(), "lapsed");
        passive(&mut zero, 8, 40_007, later).unwrap();
        assert_eq!(table.len(), 1);
        assert!(
            table
                .ports
                .iter()
                .filter(|count| count.load(Ordering::Relaxed) > 0)
                .count()
                == 1,
            "only the awaited port is counted"
        );
    }
}
