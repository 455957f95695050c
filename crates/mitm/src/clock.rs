//! The date the TLS layer works at. mitm reads no clock: its driver sets
//! this one (the appliance's engine at each poll, from its monotonic clock
//! and the date that clock started at), and everything that needs the date
//! reads it: the validity of forged certificates, the verification of the
//! real server's chain, and rustls (ticket ages, session expiry) through
//! its [`TimeProvider`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

/// A date that its driver sets; clones share it.
#[derive(Debug, Clone)]
pub struct WallClock {
    /// Microseconds since the Unix epoch.
    micros: Arc<AtomicI64>,
}

impl WallClock {
    /// A clock showing `now` until it is [set](WallClock::set).
    pub fn new(now: OffsetDateTime) -> WallClock {
        let clock = WallClock {
            micros: Arc::new(AtomicI64::new(0)),
        };
        clock.set(now);
        clock
    }

    /// From now on the clock (and every clone) shows `now`.
    pub fn set(&self, now: OffsetDateTime) {
        let micros = now.unix_timestamp_nanos() / 1_000;
        self.micros
            .store(i64::try_from(micros).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The date last set.
    pub fn now(&self) -> OffsetDateTime {
        let nanos = i128::from(self.micros.load(Ordering::Relaxed)) * 1_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The date last set, as rustls counts it (dates before 1970 as 1970).
    pub fn unix_time(&self) -> UnixTime {
        let micros = u64::try_from(self.micros.load(Ordering::Relaxed)).unwrap_or(0);
        UnixTime::since_unix_epoch(std::time::Duration::from_micros(micros))
    }
}

impl TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.unix_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_show_the_date_last_set() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = WallClock::new(start);
        let shared = clock.clone();
        assert_eq!(shared.now(), start);
        let later = start + time::Duration::seconds(90);
        clock.set(later);
        assert_eq!(shared.now(), later);
        assert_eq!(
            shared.current_time(),
            Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_700_000_090
            )))
        );
    }
}
