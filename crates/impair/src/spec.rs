//! The impairment of one direction, written in netem's words:
//! `delay 50ms 5ms loss 1% reorder 10% duplicate 1% corrupt 0.5% rate 100mbit`.

use std::time::Duration;

use thiserror::Error;

/// How frames are lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Each frame independently, with this probability (0..=1).
    Random(f64),
    /// Bursts: a two-state Gilbert–Elliott chain, as netem's `gemodel`.
    /// `enter_bad` and `leave_bad` are the per-frame transition
    /// probabilities; a frame is lost with `loss_bad` in the bad state and
    /// `loss_good` in the good one.
    GilbertElliott {
        enter_bad: f64,
        leave_bad: f64,
        loss_bad: f64,
        loss_good: f64,
    },
}

/// One direction's impairment. The default passes every frame at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub delay: Duration,
    /// Uniform in ±jitter around `delay`; order is kept (a later frame is
    /// never released before an earlier one unless `reorder` says so).
    pub jitter: Duration,
    pub loss: Option<Loss>,
    /// Probability that a frame is held back by `reorder_gap` more than its
    /// neighbours, so that frames behind it overtake it. Unlike netem this
    /// needs no `delay` to have an effect.
    pub reorder: f64,
    pub reorder_gap: Duration,
    pub duplicate: f64,
    /// Probability that one random bit after the Ethernet header is flipped.
    pub corrupt: f64,
    /// Serialisation rate in bytes per second (none: unlimited).
    pub rate_bytes_per_sec: Option<u64>,
    /// Frames held at once; a frame arriving at a full queue is dropped.
    pub limit: usize,
}

/// The default queue limit: 150 ms of a 300 MB/s path in 1500-byte frames.
pub const DEFAULT_LIMIT: usize = 30_000;
const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(2);

impl Default for Spec {
    fn default() -> Self {
        Spec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: None,
            reorder: 0.0,
            reorder_gap: DEFAULT_REORDER_GAP,
            duplicate: 0.0,
            corrupt: 0.0,
            rate_bytes_per_sec: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Why a specification was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unknown word {0:?} (expected delay, loss, reorder, duplicate, corrupt, rate or limit)")]
    UnknownWord(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{what}: {value:?} is not a time (like 50ms, 1.5s, 200us or 0)")]
    BadTime { what: &'static str, value: String },
    #[error("{what}: {value:?} is not a percentage between 0% and 100%")]
    BadPercent { what: &'static str, value: String },
    #[error("rate: {0:?} is not a rate (like 100mbit, 1gbit, 500kbit or 10mbps for bytes)")]
    BadRate(String),
    #[error("limit: {0:?} is not a frame count of at least 1")]
    BadLimit(String),
    #[error("jitter {jitter:?} is larger than the delay {delay:?}")]
    JitterAboveDelay { jitter: Duration, delay: Duration },
}

fn parse_time(what: &'static str, value: &str) -> Result<Duration, SpecError> {
    let bad = || SpecError::BadTime {
        what,
        value: value.to_owned(),
    };
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else if value == "0" {
        ("0", 1.0)
    } else {
        return Err(bad());
    };
    let seconds = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_percent(what: &'static str, value: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::BadPercent {
        what,
        value: value.to_owned(),
    };
    let number = value.strip_suffix('%').ok_or_else(bad)?;
    let percent = number.parse::<f64>().map_err(|_| bad())?;
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(bad());
    }
    Ok(percent / 100.0)
}

/// tc's units: `bit`, `kbit`, `mbit`, `gbit` are bits per second, `bps`,
/// `kbps`, `mbps`, `gbps` bytes per second (decimal multiples).
fn parse_rate(value: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadRate(value.to_owned());
    let lower = value.to_ascii_lowercase();
    let units: [(&str, f64); 8] = [
        ("kbit", 1e3 / 8.0),
        ("mbit", 1e6 / 8.0),
        ("gbit", 1e9 / 8.0),
        ("bit", 1.0 / 8.0),
        ("kbps", 1e3),
        ("mbps", 1e6),
        ("gbps", 1e9),
        ("bps", 1.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n, *scale)))
        .ok_or_else(bad)?;
    let bytes = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !bytes.is_finite() || !(1.0..=1e12).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

impl Spec {
    /// Parses netem-style words; an empty text or `none` passes everything.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let mut spec = Spec::default();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut i = 0;
        let value = |i: usize, what: &'static str| words.get(i).copied().ok_or(SpecError::MissingValue(what));
        // An optional second value: present when the next word is not a keyword.
        let optional = |i: usize| words.get(i).copied().filter(|w| !is_keyword(w));
        while let Some(&word) = words.get(i) {
            i += 1;
            match word {
                "none" => {}
                "delay" => {
                    spec.delay = parse_time("delay", value(i, "delay")?)?;
                    i += 1;
                    if let Some(jitter) = optional(i) {
                        spec.jitter = parse_time("delay jitter", jitter)?;
                        i += 1;
                    }
                }
                "loss" => {
                    let mut first = value(i, "loss")?;
                    i += 1;
                    if first == "random" {
                        first = value(i, "loss")?;
                        i += 1;
                    }
                    if first == "gemodel" {
                        let enter_bad = parse_percent("loss gemodel p", value(i, "loss gemodel")?)?;
                        i += 1;
                        let mut rest = [None, None, None];
                        for slot in &mut rest {
                            if let Some(word) = optional(i) {
                                *slot = Some(parse_percent("loss gemodel", word)?);
                                i += 1;
                            }
                        }
                        spec.loss = Some(Loss::GilbertElliott {
                            enter_bad,
                            // netem: r defaults to 1 - p.
                            leave_bad: rest[0].unwrap_or(1.0 - enter_bad),
                            loss_bad: rest[1].unwrap_or(1.0),
                            loss_good: rest[2].unwrap_or(0.0),
                        });
                    } else {
                        spec.loss = Some(Loss::Random(parse_percent("loss", first)?));
                    }
                }
                "reorder" => {
                    spec.reorder = parse_percent("reorder", value(i, "reorder")?)?;
                    i += 1;
                    if let Some(gap) = optional(i) {
                        spec.reorder_gap = parse_time("reorder gap", gap)?;
                        i += 1;
                    }
                }
                "duplicate" => {
                    spec.duplicate = parse_percent("duplicate", value(i, "duplicate")?)?;
                    i += 1;
                }
                "corrupt" => {
                    spec.corrupt = parse_percent("corrupt", value(i, "corrupt")?)?;
                    i += 1;
                }
                "rate" => {
                    spec.rate_bytes_per_sec = Some(parse_rate(value(i, "rate")?)?);
                    i += 1;
                }
                "limit" => {
                    let text = value(i, "limit")?;
                    spec.limit = text
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| SpecError::BadLimit(text.to_owned()))?;
                    i += 1;
                }
                other => return Err(SpecError::UnknownWord(other.to_owned())),
            }
        }
        if spec.jitter > spec.delay {
            return Err(SpecError::JitterAboveDelay {
                jitter: spec.jitter,
                delay: spec.delay,
            });
        }
        Ok(spec)
    }

    /// True when the element would pass every frame unchanged at once.
    pub fn is_transparent(&self) -> bool {
        self.delay.is_zero()
            && self.loss.is_none()
            && self.reorder == 0.0
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && self.rate_bytes_per_sec.is_none()
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "none" | "delay" | "loss" | "reorder" | "duplicate" | "corrupt" | "rate" | "limit"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_words_parse() {
        let spec =
            Spec::parse("delay 50ms 5ms loss 1% reorder 10% 3ms duplicate 1% corrupt 0.5% rate 100mbit limit 500")
                .unwrap();
        assert_eq!(spec.delay, Duration::from_millis(50));
        assert_eq!(spec.jitter, Duration::from_millis(5));
        assert_eq!(spec.loss, Some(Loss::Random(0.01)));
        assert!((spec.reorder - 0.1).abs() < 1e-12);
        assert_eq!(spec.reorder_gap, Duration::from_millis(3));
        assert!((spec.duplicate - 0.01).abs() < 1e-12);
        assert!((spec.corrupt - 0.005).abs() < 1e-12);
        assert_eq!(spec.rate_bytes_per_sec, Some(12_500_000));
        assert_eq!(spec.limit, 500);
        assert!(!spec.is_transparent());
        assert!(Spec::parse("").unwrap().is_transparent());
        assert!(Spec::parse("none").unwrap().is_transparent());
        assert_eq!(Spec::parse("loss random 3%").unwrap().loss, Some(Loss::Random(0.03)));
        assert_eq!(Spec::parse("rate 10mbps").unwrap().rate_bytes_per_sec, Some(10_000_000));
        assert_eq!(Spec::parse("delay 1.5s").unwrap().delay, Duration::from_millis(1500));
    }

    #[test]
    fn gemodel_defaults_follow_netem() {
        let spec = Spec::parse("loss gemodel 1% 30%").unwrap();
        assert_eq!(
            spec.loss,
            Some(Loss::GilbertElliott {
                enter_bad: 0.01,
                leave_bad: 0.3,
                loss_bad: 1.0,
                loss_good: 0.0
            })
        );
        let Some(Loss::GilbertElliott { leave_bad, .. }) = Spec::parse("loss gemodel 2% delay 1ms").unwrap().loss
        else {
            panic!("gemodel expected")
        };
        assert!((leave_bad - 0.98).abs() < 1e-12);
    }

    #[test]
    fn bad_words_are_named() {
        assert_eq!(Spec::parse("jitter 5ms"), Err(SpecError::UnknownWord("jitter".into())));
        assert_eq!(Spec::parse("delay"), Err(SpecError::MissingValue("delay")));
        assert!(matches!(Spec::parse("delay 50"), Err(SpecError::BadTime { .. })));
        assert!(matches!(Spec::parse("loss 101%"), Err(SpecError::BadPercent { .. })));
        assert!(matches!(Spec::parse("loss 5"), Err(SpecError::BadPercent { .. })));
        assert!(matches!(Spec::parse("rate fast"), Err(SpecError::BadRate(_))));
        assert!(matches!(Spec::parse("limit 0"), Err(SpecError::BadLimit(_))));
        assert!(matches!(
            Spec::parse("delay 1ms 5ms"),
            Err(SpecError::JitterAboveDelay { .. })
        ));
        assert!(matches!(Spec::parse("delay NaNms"), Err(SpecError::BadTime { .. })));
    }
}
