//! Learned bypasses: destinations the appliance stops intercepting because
//! of what traffic showed, shared by every worker. A destination is a
//! server name at one address and port, never a name alone, so what one
//! server does is learned for that server only. Two things are learned:
//! a server that asks for a client certificate (which the appliance cannot
//! present), and fail-open once enough *distinct* client addresses rejected
//! the forged certificate within a window (clients that pin certificates).
//! The caller learns only from servers whose chain verified for the name.
//!
//! Both tables (bypassed destinations, and rejections still counting
//! towards fail-open) are bounded: when full, the least recently used
//! entry is evicted. Every entry lives at most a time to live from when it
//! was added (use does not extend it). Sans-IO: the caller passes `now`
//! (the engine clock); one mutex, taken only at a ClientHello and when
//! something is learned.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use netstack::{Duration, Instant};
use serde::Serialize;

pub use crate::counters::LearnedTotals;

/// A server name at one destination address and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Destination {
    /// Lower case (names compare without case).
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
}

impl Destination {
    pub fn new(name: &str, addr: IpAddr, port: u16) -> Destination {
        Destination {
            name: name.to_ascii_lowercase(),
            addr,
            port,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.name, SocketAddr::new(self.addr, self.port))
    }
}

/// Why a destination was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Learned {
    /// Distinct clients kept rejecting the forged certificate.
    FailOpen,
    /// The server asks for a client certificate.
    ClientAuth,
}

/// How much is learned and for how long (from `[tls]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedSettings {
    /// Distinct client addresses whose rejections of the forged certificate
    /// for one destination make fail-open bypass it (0: never).
    pub fail_open_clients: usize,
    /// ... within this long of each other.
    pub fail_open_window: Duration,
    /// How long a learned bypass lasts.
    pub ttl: Duration,
    /// Entries each table holds at most (bypassed, and counting rejections).
    pub max_entries: usize,
}

impl Default for LearnedSettings {
    fn default() -> Self {
        LearnedSettings {
            fail_open_clients: 3,
            fail_open_window: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            max_entries: 10_000,
        }
    }
}

/// One bypassed destination, as listed to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnedEntry {
    pub destination: Destination,
    pub why: Learned,
    /// The reason every bypassed connection's log record gives.
    pub reason: String,
    /// Engine-clock milliseconds.
    pub added_ms: i64,
    pub expires_ms: i64,
}

/// A map bounded by least-recent use whose entries expire.
#[derive(Debug)]
struct Bounded<V> {
    entries: HashMap<Destination, Slot<V>>,
    /// Use order: the first entry is the least recently used.
    by_use: BTreeMap<u64, Destination>,
    /// Expiry order (deadline, then a tie-breaker).
    by_expiry: BTreeMap<(i64, u64), Destination>,
    ticket: u64,
    capacity: usize,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    used: u64,
    expiry: (i64, u64),
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            by_expiry: BTreeMap::new(),
            ticket: 0,
            capacity: capacity.max(1),
        }
    }

    fn next_ticket(&mut self) -> u64 {
        self.ticket += 1;
        self.ticket
    }

    /// Removes what expired at `now`; returns how many.
    fn expire(&mut self, now: i64) -> u64 {
        let mut expired = 0;
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(slot) = self.entries.remove(&key) {
                self.by_use.remove(&slot.used);
            }
            expired += 1;
        }
        expired
    }

    /// The live entry for `key`, marked as just used.
    fn get_mut(&mut self, key: &Destination) -> Option<&mut V> {
        let ticket = self.next_ticket();
        let slot = self.entries.get_mut(key)?;
        if let Some(key) = self.by_use.remove(&slot.used) {
            self.by_use.insert(ticket, key);
        }
        slot.used = ticket;
        Some(&mut slot.value)
    }

    /// Inserts (or replaces) `key`, living until `expires`; returns how many
    /// entries were evicted to make room.
    fn insert(&mut self, key: Destination, value: V, expires: i64) -> u64 {
        self.remove(&key);
        let mut evicted = 0;
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&oldest) {
                self.by_expiry.remove(&slot.expiry);
            }
            evicted += 1;
        }
        let (used, expiry) = (self.next_ticket(), (expires, self.next_ticket()));
        self.by_use.insert(used, key.clone());
        self.by_expiry.insert(expiry, key.clone());
        self.entries.insert(key, Slot { value, used, expiry });
        evicted
    }

    /// Moves the deadline of `key`.
    fn set_expiry(&mut self, key: &Destination, expires: i64) {
        let ticket = self.next_ticket();
        if let Some(slot) = self.entries.get_mut(key) {
            self.by_expiry.remove(&slot.expiry);
            slot.expiry = (expires, ticket);
            self.by_expiry.insert(slot.expiry, key.clone());
        }
    }

    fn remove(&mut self, key: &Destination) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.by_use.remove(&slot.used);
        self.by_expiry.remove(&slot.expiry);
        Some(slot.value)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Rejections of the forged certificate for one destination: the latest
/// one of each client address, within the window.
type Rejections = Vec<(IpAddr, i64)>;

#[derive(Debug)]
struct Tables {
    bypassed: Bounded<LearnedEntry>,
    pending: Bounded<Rejections>,
    totals: LearnedTotals,
}

impl Tables {
    fn expire(&mut self, now: i64) {
        self.totals.expired += self.bypassed.expire(now);
        self.pending.expire(now);
    }

    fn refresh_gauges(&mut self) {
        self.totals.live = self.bypassed.len() as u64;
        self.totals.pending_live = self.pending.len() as u64;
    }
}

/// The learned bypasses of every worker.
#[derive(Debug)]
pub struct LearnedStore {
    settings: LearnedSettings,
    tables: Mutex<Tables>,
}

impl Default for LearnedStore {
    fn default() -> Self {
        LearnedStore::new(LearnedSettings::default())
    }
}

impl LearnedStore {
    pub fn new(settings: LearnedSettings) -> Self {
        LearnedStore {
            settings,
            tables: Mutex::new(Tables {
                bypassed: Bounded::new(settings.max_entries),
                pending: Bounded::new(settings.max_entries),
                totals: LearnedTotals::default(),
            }),
        }
    }

    pub fn settings(&self) -> LearnedSettings {
        self.settings
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The reason `destination` is bypassed at `now`, if it is.
    pub fn bypassed(&self, destination: &Destination, now: Instant) -> Option<String> {
        let mut tables = self.tables();
        tables.expire(now.total_millis());
        let reason = tables.bypassed.get_mut(destination).map(|entry| entry.reason.clone());
        tables.refresh_gauges();
        reason
    }

    /// Bypasses `destination` from `now` for the time to live, for `why`;
    /// returns the new entry, or `None` if it was already bypassed.
    pub fn learn(&self, destination: Destination, why: Learned, now: Instant) -> Option<LearnedEntry> {
        let mut tables = self.tables();
        let now = now.total_millis();
        tables.expire(now);
        let learned = self.insert(&mut tables, destination, why, now);
        tables.refresh_gauges();
        learned
    }

    fn insert(&self, tables: &mut Tables, destination: Destination, why: Learned, now: i64) -> Option<LearnedEntry> {
        if tables.bypassed.get_mut(&destination).is_some() {
            return None;
        }
        let reason = match why {
            Learned::FailOpen => format!(
                "learned fail-open: {} distinct clients rejected the forged certificate for {destination}",
                self.settings.fail_open_clients
            ),
            Learned::ClientAuth => {
                format!("learned: {destination} asks for a client certificate, which the appliance cannot present")
            }
        };
        let entry = LearnedEntry {
            destination: destination.clone(),
            why,
            reason,
            added_ms: now,
            expires_ms: now.saturating_add(self.settings.ttl.total_millis() as i64),
        };
        tables.totals.evicted += tables.bypassed.insert(destination, entry.clone(), entry.expires_ms);
        match why {
            Learned::FailOpen => tables.totals.added_fail_open += 1,
            Learned::ClientAuth => tables.totals.added_client_auth += 1,
        }
        Some(entry)
    }

    /// Records that the client at `client` rejected the forged certificate
    /// for `destination` at `now`; returns the new entry when this makes
    /// fail-open bypass it (enough distinct clients within the window).
    pub fn record_rejection(&self, destination: Destination, client: IpAddr, now: Instant) -> Option<LearnedEntry> {
        let needed = self.settings.fail_open_clients;
        if needed == 0 {
            return None;
        }
        let window = self.settings.fail_open_window.total_millis() as i64;
        let mut tables = self.tables();
        let now = now.total_millis();
        tables.expire(now);
        if tables.bypassed.get_mut(&destination).is_some() {
            return None;
        }
        let clients = match tables.pending.get_mut(&destination) {
            Some(rejections) => {
                rejections.retain(|&(address, at)| address != client && at.saturating_add(window) > now);
                rejections.push((client, now));
                rejections.len()
            }
            None => {
                tables.totals.pending_evicted +=
                    tables
                        .pending
                        .insert(destination.clone(), vec![(client, now)], now.saturating_add(window));
                1
            }
        };
        let learned = if clients >= needed {
            tables.pending.remove(&destination);
            self.insert(&mut tables, destination, Learned::FailOpen, now)
        } else {
            // Forgotten once the window passes with no further rejection.
            tables.pending.set_expiry(&destination, now.saturating_add(window));
            None
        };
        tables.refresh_gauges();
        learned
    }

    /// Every bypassed destination at `now`, the soonest to expire first.
    pub fn list(&self, now: Instant) -> Vec<LearnedEntry> {
        let mut tables = self.tables();
        tables.expire(now.total_millis());
        tables.refresh_gauges();
        let mut entries: Vec<LearnedEntry> = tables
            .bypassed
            .entries
            .values()
            .map(|slot| slot.value.clone())
            .collect();
        entries.sort_by(|a, b| (a.expires_ms, &a.destination).cmp(&(b.expires_ms, &b.destination)));
        entries
    }

    /// Forgets the bypassed destinations with server name `name` (every
    /// one without a name), and the rejections counted for them; returns
    /// how many bypasses were removed.
    pub fn clear(&self, name: Option<&str>) -> usize {
        let name = name.map(str::to_ascii_lowercase);
        let matches = |destination: &Destination| name.as_ref().is_none_or(|name| destination.name == *name);
        let mut tables = self.tables();
        let bypassed: Vec<Destination> = tables.bypassed.entries.keys().filter(|d| matches(d)).cloned().collect();
        let pending: Vec<Destination> = tables.pending.entries.keys().filter(|d| matches(d)).cloned().collect();
        for destination in &bypassed {
            tables.bypassed.remove(destination);
        }
        for destination in &pending {
            tables.pending.remove(destination);
        }
        tables.totals.cleared += bypassed.len() as u64;
        tables.refresh_gauges();
        bypassed.len()
    }

    pub fn totals(&self) -> LearnedTotals {
        self.tables().totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        Instant::from_secs(secs as i64)
    }

    fn bank(addr: &str) -> Destination {
        Destination::new("Bank.Test", addr.parse().unwrap(), 443)
    }

    fn client(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    fn store(max_entries: usize) -> LearnedStore {
        LearnedStore::new(LearnedSettings {
            fail_open_clients: 3,
            fail_open_window: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            max_entries,
        })
    }

    #[test]
    fn fail_open_needs_distinct_clients_within_the_window_at_one_destination() {
        let store = store(100);
        for second in 0..10 {
            assert_eq!(store.record_rejection(bank("198.18.0.2"), client(1), at(second)), None);
        }
        assert_eq!(store.record_rejection(bank("198.18.0.2"), client(2), at(10)), None);
        // Another destination's rejections count for that one only.
        assert_eq!(store.record_rejection(bank("198.18.0.9"), client(3), at(11)), None);
        assert_eq!(store.totals().pending_live, 2);
        // A rejection counts for the window after it: client 1's latest
        // (second 9) no longer at 69, client 2's (second 10) no longer at 70.
        assert_eq!(store.record_rejection(bank("198.18.0.2"), client(3), at(69)), None);
        assert_eq!(store.record_rejection(bank("198.18.0.2"), client(4), at(70)), None);
        let learned = store.record_rejection(bank("198.18.0.2"), client(5), at(71)).unwrap();
        assert_eq!(learned.why, Learned::FailOpen);
        assert_eq!(learned.destination.name, "bank.test");
        assert!(store
            .bypassed(&bank("198.18.0.2"), at(71))
            .unwrap()
            .contains("3 distinct clients"));
        assert_eq!(store.bypassed(&bank("198.18.0.9"), at(71)), None);
        let totals = store.totals();
        // The other destination's lone rejection (second 11) was forgotten.
        assert_eq!((totals.live, totals.added_fail_open, totals.pending_live), (1, 1, 0));
        let off = LearnedStore::new(LearnedSettings {
            fail_open_clients: 0,
            ..LearnedSettings::default()
        });
        assert!((0..10).all(|i| off.record_rejection(bank("198.18.0.2"), client(i), at(0)).is_none()));
    }

    #[test]
    fn tables_stay_bounded_under_100k_random_names_and_entries_expire() {
        let store = store(1_000);
        let kept = Destination::new("kept.test", "198.18.0.2".parse().unwrap(), 443);
        assert!(store.learn(kept.clone(), Learned::ClientAuth, at(0)).is_some());
        assert!(
            store.learn(kept.clone(), Learned::ClientAuth, at(0)).is_none(),
            "learned once"
        );
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..100_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let name = format!("{seed:016x}.random.test");
            let destination = Destination::new(&name, "198.18.0.2".parse().unwrap(), 443);
            store.record_rejection(destination.clone(), client(1), at(1));
            store.learn(destination, Learned::ClientAuth, at(1));
            if i % 100 == 0 {
                // Recently used: survives the flood.
                assert!(store.bypassed(&kept, at(1)).is_some());
            }
        }
        let totals = store.totals();
        assert_eq!((totals.live, totals.pending_live), (1_000, 1_000));
        assert_eq!(totals.evicted, 100_000 + 1 - 1_000);
        assert_eq!(totals.pending_evicted, 100_000 - 1_000);
        assert!(store.bypassed(&kept, at(1)).is_some());
        // Pending rejections end with their window, bypasses at their TTL
        // (from when they were added: use does not extend it).
        assert_eq!(store.list(at(60)).len(), 1_000);
        assert_eq!(store.totals().pending_live, 1_000);
        assert_eq!(store.list(at(61)).len(), 1_000);
        assert_eq!(store.totals().pending_live, 0);
        assert!(store.bypassed(&kept, at(3599)).is_some());
        assert_eq!(store.bypassed(&kept, at(3600)), None);
        assert_eq!(store.list(at(3601)), Vec::new());
        let totals = store.totals();
        assert_eq!((totals.live, totals.expired), (0, 1_000));
    }

    #[test]
    fn the_operator_clears_by_name_or_everything() {
        let store = store(100);
        for addr in ["198.18.0.2", "198.18.0.3"] {
            store.learn(bank(addr), Learned::ClientAuth, at(0));
        }
        let other = Destination::new("other.test", "198.18.0.2".parse().unwrap(), 443);
        store.learn(other.clone(), Learned::ClientAuth, at(0));
        store.record_rejection(
            Destination::new("bank.test", "198.18.0.4".parse().unwrap(), 443),
            client(1),
            at(0),
        );
        assert_eq!(store.clear(Some("BANK.test")), 2);
        assert_eq!(
            store.list(at(1)).iter().map(|e| &e.destination).collect::<Vec<_>>(),
            [&other]
        );
        assert_eq!(store.totals().pending_live, 0, "its rejections are forgotten too");
        assert_eq!(store.clear(None), 1);
        let totals = store.totals();
        assert_eq!((totals.live, totals.cleared), (0, 3));
    }
}
