//! Recorded test timings for one stage of one pipeline, smoothed over runs and bounded.
//!
//! Each finished run folds its per-test times in with an exponentially weighted moving
//! average (`new = 0.7 × old + 0.3 × sample`): one slow run on a loaded machine moves an
//! estimate by 30 %, not 100 %, and a test that really got slower is believed within a few
//! runs. Integer arithmetic only, so every coordinator computes the same numbers.
//!
//! Bounded: at most [`MAX_TESTS`] ids are kept; past that the ones seen longest ago go
//! first. A renamed or deleted test keeps its entry until then, but no longer counts in
//! [`StageHistory::total_ms`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most test ids one stage's history keeps.
pub const MAX_TESTS: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// The smoothed time, in milliseconds.
    pub ms: u64,
    /// The number of the fold that last updated it (see [`StageHistory::folds`]).
    pub seen: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageHistory {
    pub tests: BTreeMap<String, Timing>,
    /// How many runs were folded in.
    pub folds: u64,
}

impl StageHistory {
    /// Folds one run's times in.
    pub fn record<'a>(&mut self, samples: impl IntoIterator<Item = (&'a str, u64)>) {
        self.folds += 1;
        let fold = self.folds;
        for (id, ms) in samples {
            self.tests
                .entry(id.to_string())
                .and_modify(|t| {
                    t.ms = (t.ms.saturating_mul(7) / 10).saturating_add(ms.saturating_mul(3) / 10);
                    t.seen = fold;
                })
                .or_insert(Timing { ms, seen: fold });
        }
        if self.tests.len() > MAX_TESTS {
            let mut by_age: Vec<(u64, String)> = self
                .tests
                .iter()
                .map(|(id, t)| (t.seen, id.clone()))
                .collect();
            by_age.sort();
            let excess = self.tests.len() - MAX_TESTS;
            for (_, id) in by_age.into_iter().take(excess) {
                self.tests.remove(&id);
            }
        }
    }

    /// True when none of `ids` has a recorded time.
    pub fn knows_none(&self, ids: &[String]) -> bool {
        !ids.iter().any(|id| self.tests.contains_key(id))
    }

    /// An estimate for each id: its recorded time (at least 1 ms, so that every test weighs
    /// something), or for a test never seen the mean of the known ones among `ids` (1 ms when
    /// none is known, which makes every split a split by count).
    pub fn estimates(&self, ids: &[String]) -> Vec<u64> {
        let known: Vec<u64> = ids
            .iter()
            .filter_map(|id| self.tests.get(id).map(|t| t.ms.max(1)))
            .collect();
        let mean = if known.is_empty() {
            1
        } else {
            (known.iter().fold(0u64, |s, &t| s.saturating_add(t)) / known.len() as u64).max(1)
        };
        ids.iter()
            .map(|id| self.tests.get(id).map_or(mean, |t| t.ms.max(1)))
            .collect()
    }

    /// The recorded time of the suite as the last run saw it (tests it did not run, renamed
    /// or deleted, do not count), for picking a shard count from a target.
    pub fn total_ms(&self) -> u64 {
        self.tests
            .values()
            .filter(|t| t.seen == self.folds)
            .fold(0, |sum, t| sum.saturating_add(t.ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_moves_thirty_percent() {
        let mut h = StageHistory::default();
        h.record([("a", 1000)]);
        assert_eq!(h.tests["a"].ms, 1000);
        h.record([("a", 2000)]);
        assert_eq!(h.tests["a"].ms, 1300);
        assert_eq!(h.folds, 2);
    }

    #[test]
    fn unknown_tests_weigh_the_mean_of_known_ones() {
        let mut h = StageHistory::default();
        h.record([("a", 100), ("b", 300), ("c", 0)]);
        let ids: Vec<String> = ["a", "b", "c", "new"].map(String::from).to_vec();
        assert_eq!(h.estimates(&ids), vec![100, 300, 1, 133]);
        assert!(h.knows_none(&["x".to_string()]));
        assert_eq!(StageHistory::default().estimates(&ids), vec![1; 4]);
    }

    #[test]
    fn the_oldest_ids_go_first_past_the_bound() {
        let mut h = StageHistory::default();
        let old: Vec<String> = (0..MAX_TESTS).map(|i| format!("old{i}")).collect();
        h.record(old.iter().map(|s| (s.as_str(), 5)));
        h.record([("old7", 5), ("new", 5)]);
        assert_eq!(h.tests.len(), MAX_TESTS);
        assert!(h.tests.contains_key("new") && h.tests.contains_key("old7"));
        assert!(
            !h.tests.contains_key("old0"),
            "the oldest, first by id, went"
        );
    }
}
