//! One direction of the impairment element: frames in with `now`, each
//! lost, corrupted, duplicated or given a release time; frames out in
//! release order once their time has come.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use port::PacketBuf;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::spec::{Loss, Spec};

/// What the element did, frame by frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImpairmentStats {
    pub received: u64,
    pub released: u64,
    pub lost: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    /// Duplicates that could not be made (no buffer).
    pub duplicate_failed: u64,
    pub reordered: u64,
    /// Dropped because `limit` frames were already held.
    pub overflowed: u64,
}

struct Held<B> {
    release: Duration,
    sequence: u64,
    frame: B,
}

impl<B> Held<B> {
    fn key(&self) -> (Duration, u64) {
        (self.release, self.sequence)
    }
}

impl<B> PartialEq for Held<B> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<B> Eq for Held<B> {}
impl<B> PartialOrd for Held<B> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<B> Ord for Held<B> {
    /// Reversed, so that the max-heap pops the earliest release first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

/// One direction's impairment, seeded so that a run can be repeated.
pub struct Impairment<B> {
    spec: Spec,
    rng: SmallRng,
    held: BinaryHeap<Held<B>>,
    next_sequence: u64,
    /// The latest release time given to an in-order frame: jitter never
    /// lets a later frame overtake an earlier one.
    last_release: Duration,
    /// When the rate-limited link has finished sending what it holds.
    link_free_at: Duration,
    in_bad_state: bool,
    stats: ImpairmentStats,
}

/// The first byte a corruption may flip: after the Ethernet header, so the
/// frame still reaches its receiver, whose checksums must catch it.
const CORRUPT_FROM: usize = 14;

impl<B: PacketBuf> Impairment<B> {
    pub fn new(spec: Spec, seed: u64) -> Self {
        Impairment {
            spec,
            rng: SmallRng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            next_sequence: 0,
            last_release: Duration::ZERO,
            link_free_at: Duration::ZERO,
            in_bad_state: false,
            stats: ImpairmentStats::default(),
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn stats(&self) -> ImpairmentStats {
        self.stats
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The earliest release time of a held frame.
    pub fn next_release(&self) -> Option<Duration> {
        self.held.peek().map(|held| held.release)
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random_bool(probability.min(1.0))
    }

    fn lose(&mut self) -> bool {
        match self.spec.loss {
            None => false,
            Some(Loss::Random(p)) => self.chance(p),
            Some(Loss::GilbertElliott {
                enter_bad,
                leave_bad,
                loss_bad,
                loss_good,
            }) => {
                let flip = if self.in_bad_state { leave_bad } else { enter_bad };
                if self.chance(flip) {
                    self.in_bad_state = !self.in_bad_state;
                }
                let p = if self.in_bad_state { loss_bad } else { loss_good };
                self.chance(p)
            }
        }
    }

    fn hold(&mut self, frame: B, release: Duration) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.held.push(Held {
            release,
            sequence,
            frame,
        });
    }

    /// Takes one frame received at `now` (time since the element started).
    /// `copy` makes a duplicate when one is wanted (`None`: no buffer).
    pub fn admit(&mut self, mut frame: B, now: Duration, copy: impl FnOnce(&B) -> Option<B>) {
        self.stats.received += 1;
        if self.lose() {
            self.stats.lost += 1;
            return;
        }
        if self.held.len() >= self.spec.limit {
            self.stats.overflowed += 1;
            return;
        }
        let len = frame.data().len();
        if len > CORRUPT_FROM && self.chance(self.spec.corrupt) {
            let bit = self.rng.random_range(CORRUPT_FROM * 8..len * 8);
            if let Some(byte) = frame.data_mut().get_mut(bit / 8) {
                *byte ^= 1 << (bit % 8);
                self.stats.corrupted += 1;
            }
        }
        let mut sent_at = now;
        if let Some(rate) = self.spec.rate_bytes_per_sec {
            let start = self.link_free_at.max(now);
            self.link_free_at = start + Duration::from_secs_f64(len as f64 / rate as f64);
            sent_at = self.link_free_at;
        }
        let mut release = sent_at + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let jitter = self.spec.jitter.as_secs_f64();
            let offset = self.rng.random_range(-jitter..=jitter);
            release = Duration::from_secs_f64((release.as_secs_f64() + offset).max(sent_at.as_secs_f64()));
        }
        if self.chance(self.spec.reorder) {
            // Held back beyond the in-order release times: frames behind it
            // overtake it, and it does not hold them up.
            release = release.max(self.last_release) + self.spec.reorder_gap;
            self.stats.reordered += 1;
        } else {
            release = release.max(self.last_release);
            self.last_release = release;
        }
        if self.chance(self.spec.duplicate) {
            match copy(&frame) {
                Some(duplicate) if self.held.len() + 1 < self.spec.limit => {
                    self.hold(duplicate, release);
                    self.stats.duplicated += 1;
                }
                _ => self.stats.duplicate_failed += 1,
            }
        }
        self.hold(frame, release);
    }

    /// The next frame whose release time is not after `now`.
    pub fn release(&mut self, now: Duration) -> Option<B> {
        if self.held.peek()?.release > now {
            return None;
        }
        let held = self.held.pop()?;
        self.stats.released += 1;
        Some(held.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 60];
        bytes[20..24].copy_from_slice(&tag.to_be_bytes());
        bytes
    }

    fn tag(frame: &[u8]) -> u32 {
        u32::from_be_bytes([frame[20], frame[21], frame[22], frame[23]])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn element(text: &str) -> Impairment<Vec<u8>> {
        Impairment::new(Spec::parse(text).unwrap(), 7)
    }

    fn drain(element: &mut Impairment<Vec<u8>>, now: Duration) -> Vec<u32> {
        std::iter::from_fn(|| element.release(now)).map(|f| tag(&f)).collect()
    }

    #[test]
    fn transparent_passes_everything_at_once_in_order() {
        let mut e = element("");
        for i in 0..100 {
            e.admit(frame(i), ms(1), |f| Some(f.clone()));
        }
        assert_eq!(drain(&mut e, ms(1)), (0..100).collect::<Vec<_>>());
        assert_eq!(e.stats().released, 100);
    }

    #[test]
    fn delay_holds_each_frame_and_jitter_keeps_order() {
        let mut e = element("delay 50ms 10ms");
        for i in 0..1000u64 {
            e.admit(frame(i as u32), Duration::from_micros(i * 100), |f| Some(f.clone()));
        }
        assert!(e.release(ms(39)).is_none(), "nothing before delay - jitter");
        let out = drain(&mut e, ms(1000));
        assert_eq!(out, (0..1000).collect::<Vec<_>>(), "jitter alone never reorders");
        let mut e = element("delay 50ms");
        e.admit(frame(1), ms(10), |_| None);
        assert!(e.release(ms(59)).is_none());
        assert_eq!(e.next_release(), Some(ms(60)));
        assert_eq!(e.release(ms(60)).map(|f| tag(&f)), Some(1));
    }

    #[test]
    fn random_loss_rate_is_close_to_the_spec() {
        let mut e = element("loss 5%");
        let mut passed = 0u64;
        for i in 0..100_000 {
            e.admit(frame(i), ms(0), |_| None);
            passed += drain(&mut e, ms(0)).len() as u64;
        }
        let lost = e.stats().lost as f64 / 100_000.0;
        assert!((0.045..0.055).contains(&lost), "lost {lost}");
        assert_eq!(passed, 100_000 - e.stats().lost);
        assert_eq!(e.stats().overflowed, 0);
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts() {
        // Mean burst length 1/r = 5 frames, average loss p/(p+r) ≈ 4.8 %.
        let mut e = element("loss gemodel 1% 20%");
        let mut runs = Vec::new();
        let mut run = 0;
        for i in 0..200_000 {
            let before = e.stats().lost;
            e.admit(frame(i), ms(0), |_| None);
            if e.stats().lost > before {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
            let _ = e.release(ms(0));
        }
        let lost = e.stats().lost as f64 / 200_000.0;
        let mean_run = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        assert!((0.035..0.06).contains(&lost), "loss {lost}");
        assert!(mean_run > 3.5, "bursts average {mean_run} frames");
    }

    #[test]
    fn reorder_lets_later_frames_overtake() {
        let mut e = element("reorder 10% 2ms");
        for i in 0..10_000u64 {
            e.admit(frame(i as u32), Duration::from_micros(i * 10), |_| None);
        }
        let out = drain(&mut e, ms(10_000));
        assert_eq!(out.len(), 10_000, "nothing lost");
        let inversions = out.windows(2).filter(|w| w[0] > w[1]).count();
        let reordered = e.stats().reordered as f64 / 10_000.0;
        assert!((0.08..0.12).contains(&reordered), "reordered {reordered}");
        assert!(inversions > 500, "{inversions} inversions");
        let mut sorted = out.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn duplicates_and_corruption() {
        let mut e = element("duplicate 10% corrupt 10%");
        for i in 0..10_000 {
            e.admit(frame(i), ms(0), |f| Some(f.clone()));
        }
        let stats = e.stats();
        let mut out = Vec::new();
        while let Some(f) = e.release(ms(0)) {
            out.push(f);
        }
        assert_eq!(out.len() as u64, 10_000 + stats.duplicated);
        assert!((800..1200).contains(&stats.duplicated), "{stats:?}");
        assert!((800..1200).contains(&stats.corrupted), "{stats:?}");
        // A corrupted frame differs from the original in exactly one bit, never in the Ethernet header.
        let flipped: Vec<u32> = out
            .iter()
            .map(|f| {
                let clean = frame(tag(f));
                assert_eq!(f[..CORRUPT_FROM], clean[..CORRUPT_FROM]);
                f.iter().zip(&clean).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>()
            })
            .collect();
        assert!(flipped.iter().all(|&bits| bits <= 1));
        // (A flip inside the tag bytes changes the tag, so count by bits.)
        assert!(flipped.iter().filter(|&&bits| bits == 1).count() as u64 >= stats.corrupted * 9 / 10);
    }

    #[test]
    fn rate_serialises_and_limit_drops_the_excess() {
        // 60-byte frames at 6000 B/s: one frame every 10 ms.
        let mut e = element("rate 6kbps limit 5");
        for i in 0..10 {
            e.admit(frame(i), ms(0), |_| None);
        }
        assert_eq!(e.stats().overflowed, 5);
        assert_eq!(e.held(), 5);
        assert_eq!(drain(&mut e, ms(9)), Vec::<u32>::new());
        assert_eq!(drain(&mut e, ms(10)), vec![0]);
        assert_eq!(drain(&mut e, ms(35)), vec![1, 2]);
        assert_eq!(drain(&mut e, ms(50)), vec![3, 4]);
    }

    #[test]
    fn same_seed_same_run() {
        let run = || {
            let mut e = element("loss 3% reorder 5% duplicate 1% corrupt 1% delay 5ms 2ms");
            for i in 0..5000u64 {
                e.admit(frame(i as u32), Duration::from_micros(i * 50), |f| Some(f.clone()));
            }
            (drain(&mut e, ms(1000)), e.stats())
        };
        assert_eq!(run(), run());
    }
}
