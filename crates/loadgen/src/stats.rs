//! What the generator counted: connections opened, established, through
//! the TLS handshake and the exchange, replayed payloads checked by the
//! origin side, errors by kind, and the latency of the handshake (SYN to the
//! client's finished handshake) as percentiles.

use std::fmt;

/// Counters and latencies, updated as the generator runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub opened: u64,
    pub connected: u64,
    pub handshakes: u64,
    pub exchanges: u64,
    /// Connections held open now (client side).
    pub live: u64,
    pub resets: u64,
    pub timeouts: u64,
    pub tls_errors: u64,
    /// Replayed requests that arrived at the origin side byte-exact.
    pub replayed: u64,
    /// Their bytes.
    pub replayed_bytes: u64,
    /// Replayed requests that arrived different (other bytes, or more of
    /// them), or connections the origin side could not match to a flow.
    pub replay_mismatches: u64,
    /// Server-side connections accepted.
    pub accepted: u64,
    /// The latest TLS error, as an example of what went wrong.
    pub last_tls_error: Option<String>,
    /// Handshake latencies in microseconds, in completion order.
    handshake_us: Vec<u32>,
}

/// Percentiles of the handshake latency and the counters, for a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub opened: u64,
    pub handshakes: u64,
    pub exchanges: u64,
    pub live: u64,
    pub errors: u64,
    pub replayed: u64,
    pub replayed_bytes: u64,
    pub replay_mismatches: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

impl Stats {
    pub(crate) fn record_handshake(&mut self, micros: u64) {
        self.handshakes += 1;
        self.handshake_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }

    pub(crate) fn record_tls_error(&mut self, side: &str, error: &rustls::Error) {
        self.tls_errors += 1;
        self.last_tls_error = Some(format!("{side}: {error}"));
    }

    /// All errors, of every kind.
    pub fn errors(&self) -> u64 {
        self.resets + self.timeouts + self.tls_errors + self.replay_mismatches
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.handshake_us.clone();
        sorted.sort_unstable();
        let at = |fraction: f64| -> u32 {
            let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
            sorted.get(index).copied().unwrap_or(0)
        };
        Summary {
            opened: self.opened,
            handshakes: self.handshakes,
            exchanges: self.exchanges,
            live: self.live,
            errors: self.errors(),
            replayed: self.replayed,
            replayed_bytes: self.replayed_bytes,
            replay_mismatches: self.replay_mismatches,
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: sorted.last().copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} opened, {} TLS handshakes, {} exchanges, {} live, {} errors; handshake p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.opened,
            self.handshakes,
            self.exchanges,
            self.live,
            self.errors,
            f64::from(self.p50_us) / 1000.0,
            f64::from(self.p99_us) / 1000.0,
            f64::from(self.max_us) / 1000.0
        )?;
        if self.replayed + self.replay_mismatches > 0 {
            write!(
                f,
                "; replay: {} byte-exact ({} B), {} mismatched",
                self.replayed, self.replayed_bytes, self.replay_mismatches
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recorded_handshakes() {
        let mut stats = Stats::default();
        for micros in 1..=100 {
            stats.record_handshake(micros * 1000);
        }
        let summary = stats.summary();
        assert_eq!(summary.handshakes, 100);
        assert_eq!(
            (summary.p50_us, summary.p99_us, summary.max_us),
            (51_000, 99_000, 100_000)
        );
        assert_eq!(Stats::default().summary().p99_us, 0);
    }

    #[test]
    fn replay_mismatches_are_errors_and_shown_with_the_replayed_bytes() {
        let stats = Stats {
            replayed: 5,
            replayed_bytes: 500,
            replay_mismatches: 2,
            resets: 1,
            ..Stats::default()
        };
        assert_eq!(stats.errors(), 3);
        let text = stats.summary().to_string();
        assert!(text.contains("3 errors"), "{text}");
        assert!(text.ends_with("; replay: 5 byte-exact (500 B), 2 mismatched"), "{text}");
        assert!(!Stats::default().summary().to_string().contains("replay"));
    }
}
