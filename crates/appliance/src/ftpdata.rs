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
//! waiting is bounded ([`PER_CONTROL_LIMIT`]), as is the table
//! ([`TOTAL_LIMIT`]): past a bound the caller fails the control
//! connection rather than let a data connection go unrecognised. Sans-IO:
//! the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;

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

/// Who opens an announced data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `PASV`/`EPSV`: the client connects to the server.
    Client,
    /// `PORT`/`EPRT`: the server connects to the client.
    Server,
}

/// A data connection waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub opener: Opener,
    /// TLS (`PROT P`) or plain.
    pub protection: DataProtection,
    /// The control connection that announced it (its session serial).
    pub control: u64,
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

/// The expected data connections of one worker.
#[derive(Debug, Default)]
pub struct Expectations {
    awaited: HashMap<Awaited, Expected>,
}

impl Expectations {
    /// Expects a SYN from `from` to `to`:`port`, opened by `opener`, for
    /// the control connection `control`. The same SYN announced again
    /// (a repeated `PASV`) replaces the earlier expectation.
    #[allow(clippy::too_many_arguments)]
    pub fn expect(
        &mut self,
        control: u64,
        opener: Opener,
        (from, to, port): (IpAddr, IpAddr, u16),
        protection: DataProtection,
        now: Instant,
    ) -> Result<(), ExpectError> {
        self.awaited.retain(|_, expected| expected.expires > now);
        let awaited = Awaited { from, to, port };
        if !self.awaited.contains_key(&awaited) {
            let of_control = self
                .awaited
                .values()
                .filter(|expected| expected.control == control)
                .count();
            if of_control >= PER_CONTROL_LIMIT {
                return Err(ExpectError::TooManyForControl);
            }
            if self.awaited.len() >= TOTAL_LIMIT {
                return Err(ExpectError::TableFull);
            }
        }
        let expected = Expected {
            opener,
            protection,
            control,
            expires: now + EXPECTATION_LIFETIME,
        };
        self.awaited.insert(awaited, expected);
        Ok(())
    }

    /// Whether `syn` (a client's, or a server's for an active one) is an
    /// expected data connection, not yet lapsed.
    pub fn awaits(&self, syn: &FlowTuple, now: Instant) -> Option<Expected> {
        self.awaited
            .get(&Awaited::of(syn))
            .filter(|expected| expected.expires > now)
            .copied()
    }

    /// Takes the expectation `syn` fulfils (it is not expected again).
    pub fn take(&mut self, syn: &FlowTuple, now: Instant) -> Option<Expected> {
        self.awaited
            .remove(&Awaited::of(syn))
            .filter(|expected| expected.expires > now)
    }

    /// Forgets what the control connection `control` announced (it ended).
    pub fn forget(&mut self, control: u64) {
        self.awaited.retain(|_, expected| expected.control != control);
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
        expectations.expect(control, Opener::Client, endpoints, DataProtection::Private, now)
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
        assert_eq!(expectations.awaited.len(), 1);
        // Other control connections fill the table (one port each).
        for control in 2..(TOTAL_LIMIT as u64 + 1) {
            passive(&mut expectations, control, 1_000 + control as u16, later).unwrap();
        }
        assert_eq!(expectations.awaited.len(), TOTAL_LIMIT);
        assert_eq!(
            passive(&mut expectations, 5_000, 40_000, later),
            Err(ExpectError::TableFull)
        );
        expectations.forget(1);
        passive(&mut expectations, 5_000, 40_000, later).unwrap();
    }
}
