//! Fixed-bucket latency histograms the workers fill without allocating or
//! locking: one array of counts per histogram, bumped once per observation
//! (a connection's end, a finished TLS handshake), summed over the workers
//! like every other counter and published with them. The buckets are the
//! same for every histogram, 1 ms to 1 h on a 1-2.5-5 scale, so sums and
//! the Prometheus exposition need no per-histogram layout.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The upper bounds of the buckets, in microseconds (the last bucket,
/// `+Inf`, is implied by `count`).
pub const BOUNDS_MICROS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// Counts of observed durations per bucket (not cumulative), their number
/// and their sum.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    buckets: [u64; BOUNDS_MICROS.len()],
    count: u64,
    sum_micros: u64,
}

impl Histogram {
    /// Records one duration: one binary search and three additions.
    pub fn observe(&mut self, micros: u64) {
        let bucket = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        if let Some(slot) = self.buckets.get_mut(bucket) {
            *slot += 1;
        }
        self.count += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// `(upper bound in seconds, observations at or below it)` per bucket,
    /// as Prometheus writes them (`+Inf` left out: it is `count`).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        BOUNDS_MICROS
            .iter()
            .zip(self.buckets)
            .map(|(&bound, count)| {
                total += count;
                (bound as f64 / 1e6, total)
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in
    /// seconds; see [`quantile_bound`].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile_bound(&self.cumulative(), self.count, q)
    }
}

/// The upper bound (seconds) of the bucket that holds quantile `q` of
/// `count` observations, from cumulative `(bound, count)` buckets; `None`
/// with no observation, infinity when it lies beyond the last bound.
pub fn quantile_bound(cumulative: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * count as f64).ceil().max(1.0) as u64;
    Some(
        cumulative
            .iter()
            .find(|&&(_, below)| below >= rank)
            .map_or(f64::INFINITY, |&(bound, _)| bound),
    )
}

impl std::ops::AddAssign for Histogram {
    fn add_assign(&mut self, other: Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }
}

/// In the JSON report: `{"count": N, "sum": seconds, "buckets": [[le, cumulative], ...]}`,
/// the shape the metrics endpoint exposes as a histogram.
impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Histogram", 3)?;
        out.serialize_field("count", &self.count)?;
        out.serialize_field("sum", &self.sum_seconds())?;
        out.serialize_field("buckets", &self.cumulative())?;
        out.end()
    }
}

/// `COUNT (p50 <= X, p99 <= Y)` for the text report.
impl fmt::Display for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |name: &str, q: f64| match self.quantile(q) {
            None => format!("{name} -"),
            Some(bound) if bound.is_infinite() => {
                format!(
                    "{name} > {} s",
                    BOUNDS_MICROS.last().map_or(0, |bound| bound / 1_000_000)
                )
            }
            Some(bound) if bound < 1.0 => format!("{name} <= {} ms", (bound * 1e4).round() / 10.0),
            Some(bound) => format!("{name} <= {bound} s"),
        };
        write!(f, "{} ({}, {})", self.count, show("p50", 0.5), show("p99", 0.99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_quantiles_follow() {
        let mut histogram = Histogram::default();
        for micros in [0, 1_000, 1_001, 40_000, 40_000, 4_000_000_000] {
            histogram.observe(micros);
        }
        let cumulative = histogram.cumulative();
        assert_eq!(cumulative[0], (0.001, 2), "a bound is inclusive");
        assert_eq!(cumulative[1], (0.0025, 3));
        assert_eq!(cumulative[5], (0.05, 5));
        assert_eq!(
            cumulative.last().map(|&(_, below)| below),
            Some(5),
            "beyond the last bound"
        );
        assert_eq!(histogram.count(), 6);
        assert!((histogram.sum_seconds() - 4000.082001).abs() < 1e-6);
        assert_eq!(histogram.quantile(0.5), Some(0.0025));
        assert_eq!(histogram.quantile(0.8), Some(0.05));
        assert_eq!(histogram.quantile(0.0), Some(0.001));
        assert_eq!(histogram.quantile(1.0), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut sum = histogram;
        sum += histogram;
        assert_eq!(sum.count(), 12);
        assert_eq!(sum.cumulative()[5], (0.05, 10));
        let json = serde_json::to_value(histogram).expect("serialises");
        assert_eq!(json["count"], 6);
        assert_eq!(json["buckets"][0], serde_json::json!([0.001, 2]));
        assert_eq!(histogram.to_string(), "6 (p50 <= 2.5 ms, p99 > 3600 s)");
    }
}
