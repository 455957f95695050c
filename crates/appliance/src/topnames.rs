//! The most frequent server names (SNI) in bounded memory: the
//! Space-Saving algorithm (Metwally et al., 2005) over [`CAPACITY`]
//! counters. A name already counted is incremented; a new one takes the
//! place of the least counted, starting one above it, so every name seen
//! more than `total / CAPACITY` times is kept and a count overestimates by
//! at most the count it replaced. Clients choose the names, so the table
//! (and the labels the metrics endpoint makes of it) never grows past
//! [`CAPACITY`] however many names they send.

use serde::Serialize;

/// Names counted per worker, and shown in a report.
pub const CAPACITY: usize = 16;

/// One name and how often it was seen (an upper bound, see the module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameCount {
    pub sni: String,
    pub count: u64,
}

/// The Space-Saving table of one worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopNames {
    entries: Vec<NameCount>,
    /// Bumped at every change (for publishing only what changed).
    generation: u64,
}

impl TopNames {
    /// Counts one occurrence of `name`.
    pub fn note(&mut self, name: &str) {
        self.generation += 1;
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.sni == name) {
            entry.count += 1;
            return;
        }
        if self.entries.len() < CAPACITY {
            self.entries.push(NameCount {
                sni: name.to_owned(),
                count: 1,
            });
            return;
        }
        if let Some(least) = self.entries.iter_mut().min_by_key(|entry| entry.count) {
            least.sni = name.to_owned();
            least.count += 1;
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn entries(&self) -> &[NameCount] {
        &self.entries
    }
}

/// The [`CAPACITY`] most counted names of several tables (counts of one
/// name summed), most counted first, ties by name.
pub fn merged<'a>(tables: impl IntoIterator<Item = &'a [NameCount]>) -> Vec<NameCount> {
    let mut sums: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for entry in tables.into_iter().flatten() {
        *sums.entry(&entry.sni).or_default() += entry.count;
    }
    let mut merged: Vec<NameCount> = sums
        .into_iter()
        .map(|(sni, count)| NameCount {
            sni: sni.to_owned(),
            count,
        })
        .collect();
    merged.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.sni.cmp(&b.sni)));
    merged.truncate(CAPACITY);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_names_stay_and_the_table_stays_bounded() {
        let mut top = TopNames::default();
        // 20,000 distinct one-off names among three frequent ones, each seen
        // more than total / CAPACITY times (so kept, by the algorithm's bound).
        for round in 0..20_000u64 {
            top.note(&format!("noise{round}.test"));
            if round % 2 == 0 {
                top.note("popular.test");
            }
            if round % 4 == 0 {
                top.note("second.test");
            }
            if round % 8 == 0 {
                top.note("third.test");
            }
        }
        let total = 20_000 + 10_000 + 5_000 + 2_500;
        assert_eq!(top.generation(), total);
        assert_eq!(top.entries().len(), CAPACITY);
        let merged = merged([top.entries()]);
        let kept: Vec<(&str, u64)> = merged
            .iter()
            .take(3)
            .map(|entry| (entry.sni.as_str(), entry.count))
            .collect();
        let error = total / CAPACITY as u64;
        for ((name, count), (expected, real)) in
            kept.into_iter()
                .zip([("popular.test", 10_000), ("second.test", 5_000), ("third.test", 2_500)])
        {
            assert_eq!(name, expected);
            assert!((real..=real + error).contains(&count), "{name}: {count}");
        }
    }

    #[test]
    fn tables_merge_by_name() {
        let (mut a, mut b) = (TopNames::default(), TopNames::default());
        for _ in 0..3 {
            a.note("x.test");
        }
        b.note("x.test");
        b.note("y.test");
        b.note("y.test");
        let merged = merged([a.entries(), b.entries()]);
        assert_eq!(
            merged,
            [
                NameCount {
                    sni: "x.test".into(),
                    count: 4
                },
                NameCount {
                    sni: "y.test".into(),
                    count: 2
                }
            ]
        );
    }
}
