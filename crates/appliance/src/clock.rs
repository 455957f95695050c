//! What an engine is given instead of reading a clock or the OS's entropy:
//! its driver (the worker, a test) passes the engine clock's reading at
//! each call, the date that clock's zero is, and a seed. So the engine and
//! everything below it (netstack, mitm, the splice) read no clock, and a
//! test on a virtual clock with a fixed date and seed runs the same way
//! every time.

use std::time::{Duration, SystemTime};

use netstack::Instant;

/// The date of the engine clock's zero: the engine clock (monotonic,
/// [`Instant`]) plus this anchor is the date of its forged certificates,
/// of its capture's timestamps and of its log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallAnchor {
    at_zero: SystemTime,
}

impl WallAnchor {
    /// The engine clock's zero is `at_zero`.
    pub fn new(at_zero: SystemTime) -> WallAnchor {
        WallAnchor { at_zero }
    }

    /// The date at engine time `now`.
    pub fn at(&self, now: Instant) -> SystemTime {
        self.at_zero + Duration::from_micros(u64::try_from(now.total_micros()).unwrap_or(0))
    }
}

/// What its driver gives an engine to start from.
#[derive(Debug, Clone, Copy)]
pub struct EngineStart {
    /// The engine clock's reading now.
    pub now: Instant,
    /// The date of the engine clock's zero.
    pub wall: WallAnchor,
    /// The seed of the engine's random choices (its TCP stack's initial
    /// sequence numbers): from the OS's entropy in `run`
    /// ([`random_seed`]), fixed in tests.
    pub seed: u64,
}

/// A seed from the OS's entropy (no clock in it).
pub fn random_seed() -> Result<u64, ring::error::Unspecified> {
    let bytes: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_the_anchor_plus_the_engine_time() {
        let zero = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let anchor = WallAnchor::new(zero);
        assert_eq!(anchor.at(Instant::ZERO), zero);
        assert_eq!(
            anchor.at(Instant::from_millis(1_500)),
            zero + Duration::from_millis(1_500)
        );
    }
}
