//! Which finished runs leave the in-memory state for the archive on disk.
//!
//! Per pipeline, the newest `keep_last` finished runs stay, and so does every run that
//! finished less than `keep_for_ms` ago; the rest go (oldest first, a bounded number per
//! command). A run that has not finished never goes. `Command::ArchiveRuns` removes them
//! here; the state machine (`raft/state_machine.rs`) writes each into its `archive` tree on
//! every coordinator as it applies the command, where reads find them by id.

use std::collections::BTreeMap;

use super::ClusterState;
use super::command::{AccessChanged, Response};

/// How much of the run history stays in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_for_ms: i64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_last: 100,
            keep_for_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// Runs archived by one command, at most.
pub const ARCHIVE_BATCH: usize = 500;

impl ClusterState {
    /// The finished runs past `retention` at `now_ms`, oldest first, at most
    /// [`ARCHIVE_BATCH`].
    pub fn runs_to_archive(&self, retention: Retention, now_ms: i64) -> Vec<u64> {
        let mut by_pipeline: BTreeMap<&str, Vec<(u64, i64)>> = BTreeMap::new();
        for run in self.runs.values() {
            if let Some(finished) = run.finished_ms {
                by_pipeline
                    .entry(run.pipeline.name.as_str())
                    .or_default()
                    .push((run.number, finished));
            }
        }
        let mut out = Vec::new();
        for runs in by_pipeline.values_mut() {
            runs.sort_by_key(|r| std::cmp::Reverse(r.0));
            out.extend(
                runs.iter()
                    .skip(retention.keep_last)
                    .filter(|(_, finished)| now_ms - finished >= retention.keep_for_ms)
                    .map(|(n, _)| *n),
            );
        }
        out.sort_unstable();
        out.truncate(ARCHIVE_BATCH);
        out
    }

    /// Takes finished runs out of the in-memory state (the state machine has put them in
    /// the archive). A run still going, or already gone, is left as it is.
    pub(super) fn archive_runs(&mut self, runs: &[u64]) -> Response {
        for n in runs {
            if self.runs.get(n).is_some_and(|r| r.finished_ms.is_some()) {
                self.runs.remove(n);
            }
        }
        AccessChanged.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn submit(s: &mut ClusterState, pipeline: &str, request: &str) -> u64 {
        let yaml = format!("name: {pipeline}\nstages:\n  - name: a\n    command: x\n");
        let pipeline = kiln_api::validate::parse_pipeline("p.yaml", &yaml).unwrap();
        match s.apply(&Command::SubmitRun {
            request_id: request.into(),
            trigger: "manual".into(),
            pipeline,
            only_tests: Default::default(),
            now_ms: 0,
        }) {
            Response::Submitted(done) => done.run,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_newest_and_the_young_stay_and_unfinished_runs_never_go() {
        let mut s = ClusterState::default();
        let mut runs = Vec::new();
        for i in 0..5 {
            runs.push(submit(&mut s, "p", &format!("p{i}")));
        }
        let other = submit(&mut s, "q", "q0");
        // Runs 1-4 of p finished at 10, 20, 30, 40; run 5 of p still runs; q's finished.
        for (i, n) in runs.iter().take(4).enumerate() {
            s.runs.get_mut(n).unwrap().finished_ms = Some(10 * (i as i64 + 1));
        }
        s.runs.get_mut(&other).unwrap().finished_ms = Some(1);
        let keep_two = Retention {
            keep_last: 2,
            keep_for_ms: 0,
        };
        // p: the newest two finished (3, 4) stay, 1 and 2 go; q's only run stays.
        assert_eq!(s.runs_to_archive(keep_two, 100), vec![runs[0], runs[1]]);
        // Finished less than 85 ms before now: 2 (at 20) is young at 100.
        let young = Retention {
            keep_last: 2,
            keep_for_ms: 85,
        };
        assert_eq!(s.runs_to_archive(young, 100), vec![runs[0]]);
        s.apply(&Command::ArchiveRuns {
            runs: vec![runs[0], runs[1], runs[4]],
        });
        assert!(!s.runs.contains_key(&runs[0]) && !s.runs.contains_key(&runs[1]));
        assert!(
            s.runs.contains_key(&runs[4]),
            "a running run is never archived"
        );
        assert!(s.runs_to_archive(keep_two, 100).is_empty());
    }
}
