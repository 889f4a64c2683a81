//! A sharded stage's test suite inside a run: the queue of test ids its shards pull from,
//! what each shard holds, and every result — the replicated half of dynamic test splitting.
//!
//! The life of a suite:
//!
//! 1. The stage's shards are placed (apart, where they fit). The first shard to ask for
//!    work ([`Command::TakeTests`](super::Command::TakeTests)) without a list is told to run
//!    the suite's `list:` command and ask again with what it printed; the others are told
//!    to wait for that list (and one of them lists if the lister's attempt ends without
//!    one); the first list to arrive is the suite (later ones are ignored), and its queues are built from the recorded
//!    timings: one queue, longest first, for a dynamic split; one per shard for a static
//!    split (LPT over the timings, by count without any) or a count split.
//! 2. A shard takes a batch ([`kiln_sharding::split::Batching`] sizes it from the shared queue,
//!    or all of its own queue), runs it, and reports one result per id
//!    ([`Command::ReportTests`](super::Command::ReportTests)). Only ids the shard holds at
//!    that attempt and batch are accepted, each once: this is what makes each test's result
//!    count exactly once, however often an agent re-sends.
//! 3. A failed test goes back to the front of the queue until it has failed `retries + 1`
//!    times; one that fails and then passes is flaky.
//! 4. When a shard's attempt ends for any reason (lost with its node, failed, cancelled),
//!    what it held goes back to the front of the queue for the next taker.
//! 5. Once every shard has ended, the suite's verdict is final and its times are folded
//!    into the stage's timing history.
//!
//! Taking is idempotent per (shard, attempt, batch): asking again for the batch already
//! held answers the same ids, so an agent whose answer was lost in a leader change gets
//! its batch, not a second one.

use std::collections::{BTreeMap, VecDeque};

use kiln_api::spec::Split;
use kiln_sharding::history::StageHistory;
use kiln_sharding::junit::Outcome;
use kiln_sharding::split;
use serde::{Deserialize, Serialize};

/// The most tests one suite holds; a longer list is cut.
pub const MAX_TESTS: usize = 100_000;

/// Reported times are capped at a week: a report's `time="1e30"` must not overflow the
/// sums that estimates and history are made of.
pub const MAX_TEST_MS: u64 = 7 * 24 * 3_600_000;

/// One result reported for one test id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub id: String,
    pub outcome: Outcome,
    pub time_ms: u64,
    pub message: String,
}

/// One run of one test: what it gave, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRun {
    pub outcome: Outcome,
    pub time_ms: u64,
    pub shard: u32,
    pub attempt: u32,
    pub message: String,
}

/// A test's verdict in a finished (or finishing) suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Failed, then passed on a retry.
    Flaky,
    Skipped,
    Failed,
    Errored,
    /// Never reported: its shards ended before it ran.
    NotRun,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Flaky => "flaky",
            Verdict::Skipped => "skipped",
            Verdict::Failed => "failed",
            Verdict::Errored => "errored",
            Verdict::NotRun => "not_run",
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(self, Verdict::Passed | Verdict::Flaky | Verdict::Skipped)
    }
}

/// A test of the suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Test {
    /// From the timing history when the suite was listed.
    pub estimate_ms: u64,
    pub runs: Vec<TestRun>,
}

impl Test {
    pub fn verdict(&self) -> Verdict {
        let Some(last) = self.runs.last() else {
            return Verdict::NotRun;
        };
        match last.outcome {
            Outcome::Passed if self.runs.iter().any(|r| r.outcome.is_failure()) => Verdict::Flaky,
            Outcome::Passed => Verdict::Passed,
            Outcome::Skipped => Verdict::Skipped,
            Outcome::Failed => Verdict::Failed,
            Outcome::Errored => Verdict::Errored,
        }
    }

    fn failures(&self) -> u32 {
        self.runs.iter().filter(|r| r.outcome.is_failure()).count() as u32
    }
}

/// The batch a shard holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub attempt: u32,
    pub batch: u32,
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suite {
    pub split: Split,
    /// The ids in list order, once a shard listed them (or the rerun that made this suite
    /// named them).
    pub ids: Option<Vec<String>>,
    pub tests: BTreeMap<String, Test>,
    /// Waiting ids: one queue for a dynamic split, one per shard otherwise.
    pub queues: Vec<VecDeque<String>>,
    /// What each shard holds now, by shard.
    pub held: Vec<Option<Held>>,
    /// The timings were folded into the history (once, when the suite ended).
    pub recorded: bool,
    /// What a batch costs besides its tests (the runner starting, the round trips), as the
    /// shards measured it, smoothed; sizes the dynamic batches.
    #[serde(default)]
    pub overhead_ms: Option<u64>,
    /// The shard (and attempt) told to list the suite, until a list arrives: the others
    /// wait for it rather than collect the suite again.
    #[serde(default)]
    pub lister: Option<(u32, u32)>,
}

/// What a shard asking for work is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Take {
    /// No list yet: run the suite's `list:` and ask again with it.
    NeedList,
    /// No list yet, and another shard is making it: ask again once it has.
    Wait,
    /// These ids; none means the shard is done.
    Batch(Vec<String>),
}

impl Suite {
    pub fn new(split: Split, shards: u32) -> Suite {
        Suite {
            split,
            ids: None,
            tests: BTreeMap::new(),
            queues: Vec::new(),
            held: vec![None; shards as usize],
            recorded: false,
            overhead_ms: None,
            lister: None,
        }
    }

    /// Fixes the suite's ids (duplicates dropped, at most [`MAX_TESTS`]) and builds the
    /// queues. Ignored once listed.
    pub fn list(&mut self, ids: Vec<String>, history: Option<&StageHistory>) {
        if self.ids.is_some() {
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .take(MAX_TESTS)
            .collect();
        let empty = StageHistory::default();
        let history = history.unwrap_or(&empty);
        let estimates = history.estimates(&ids);
        let shards = self.held.len();
        let plan = match self.split {
            Split::Dynamic => vec![split::longest_first(&estimates)],
            Split::Static if !history.knows_none(&ids) => split::by_time(&estimates, shards),
            Split::Static | Split::Count => split::by_count(ids.len(), shards),
        };
        self.queues = plan
            .into_iter()
            .map(|q| q.into_iter().map(|i| ids[i].clone()).collect())
            .collect();
        self.tests = ids
            .iter()
            .zip(&estimates)
            .map(|(id, &estimate_ms)| {
                let test = Test {
                    estimate_ms,
                    runs: Vec::new(),
                };
                (id.clone(), test)
            })
            .collect();
        self.ids = Some(ids);
    }

    fn queue_of(&self, shard: u32) -> usize {
        match self.split {
            Split::Dynamic => 0,
            Split::Static | Split::Count => shard as usize,
        }
    }

    /// The next batch for `shard` at (`attempt`, `batch`).
    pub fn take(&mut self, shard: u32, attempt: u32, batch: u32) -> Take {
        if self.ids.is_none() {
            // One shard lists; the others wait for its list.
            return match self.lister {
                Some(l) if l != (shard, attempt) => Take::Wait,
                _ => {
                    self.lister = Some((shard, attempt));
                    Take::NeedList
                }
            };
        }
        let Some(slot) = self.held.get(shard as usize) else {
            return Take::Batch(Vec::new());
        };
        if let Some(h) = slot
            && h.attempt == attempt
            && h.batch == batch
        {
            return Take::Batch(h.ids.clone());
        }
        self.release(shard);
        let q = self.queue_of(shard);
        let Some(queue) = self.queues.get_mut(q) else {
            return Take::Batch(Vec::new());
        };
        let n = match self.split {
            Split::Dynamic => {
                let estimate = |id: &String| self.tests.get(id).map_or(1, |t| t.estimate_ms.max(1));
                let batching = split::Batching {
                    shards: self.held.len(),
                    overhead_ms: self.overhead_ms.unwrap_or(0),
                    suite_ms: self.tests.values().map(|t| t.estimate_ms.max(1)).sum(),
                };
                batching.next_len(&queue.iter().map(estimate).collect::<Vec<_>>())
            }
            Split::Static | Split::Count => queue.len(),
        };
        let ids: Vec<String> = queue.drain(..n).collect();
        self.held[shard as usize] = Some(Held {
            attempt,
            batch,
            ids: ids.clone(),
        });
        Take::Batch(ids)
    }

    /// Records a shard's results for the batch it holds, and the batch's measured overhead;
    /// returns how many results were accepted. Results for ids it does not hold (at this
    /// attempt and batch) are ignored; an id it holds but did not report is errored. Failed
    /// tests with retries left go back to the front of the queue.
    pub fn report(
        &mut self,
        shard: u32,
        attempt: u32,
        batch: u32,
        results: &[TestResult],
        retries: u32,
        overhead_ms: u64,
    ) -> u32 {
        let Some(Some(held)) = self.held.get(shard as usize) else {
            return 0;
        };
        if held.attempt != attempt || held.batch != batch {
            return 0;
        }
        let ids = std::mem::take(&mut self.held[shard as usize])
            .map(|h| h.ids)
            .unwrap_or_default();
        let overhead_ms = overhead_ms.min(MAX_TEST_MS);
        self.overhead_ms = Some(match self.overhead_ms {
            None => overhead_ms,
            Some(old) => (7 * old + 3 * overhead_ms + 5) / 10,
        });
        let q = self.queue_of(shard);
        let mut again = Vec::new();
        let mut accepted = 0;
        let results: BTreeMap<&str, &TestResult> =
            results.iter().map(|r| (r.id.as_str(), r)).collect();
        for id in &ids {
            let run = match results.get(id.as_str()) {
                Some(r) => {
                    accepted += 1;
                    TestRun {
                        outcome: r.outcome,
                        time_ms: r.time_ms.min(MAX_TEST_MS),
                        shard,
                        attempt,
                        message: r.message.clone(),
                    }
                }
                None => TestRun {
                    outcome: Outcome::Errored,
                    time_ms: 0,
                    shard,
                    attempt,
                    message: "the shard reported no result for it".into(),
                },
            };
            let Some(test) = self.tests.get_mut(id) else {
                continue;
            };
            test.runs.push(run);
            if test.runs.last().is_some_and(|r| r.outcome.is_failure())
                && test.failures() <= retries
            {
                again.push(id.clone());
            }
        }
        if let Some(queue) = self.queues.get_mut(q) {
            for id in again.into_iter().rev() {
                queue.push_front(id);
            }
        }
        accepted
    }

    /// Puts what `shard` holds back at the front of its queue (its attempt ended without
    /// reporting it).
    pub fn release(&mut self, shard: u32) {
        // A lister that ended without a list: the next shard to ask lists.
        if self.ids.is_none() && self.lister.is_some_and(|(s, _)| s == shard) {
            self.lister = None;
        }
        let Some(held) = self.held.get_mut(shard as usize).and_then(Option::take) else {
            return;
        };
        let q = self.queue_of(shard);
        if let Some(queue) = self.queues.get_mut(q) {
            for id in held.ids.into_iter().rev() {
                queue.push_front(id);
            }
        }
    }

    /// Every listed test ended passed, flaky or skipped.
    pub fn passed(&self) -> bool {
        self.ids.is_some() && self.tests.values().all(|t| t.verdict().is_ok())
    }

    /// Counts by verdict, for messages.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for t in self.tests.values() {
            *counts.entry(t.verdict().as_str()).or_default() += 1;
        }
        counts
    }

    /// The last time of each test that ran to a pass or a failure, for the history.
    pub fn timings(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tests.iter().filter_map(|(id, t)| {
            let last = t.runs.last()?;
            matches!(last.outcome, Outcome::Passed | Outcome::Failed)
                .then_some((id.as_str(), last.time_ms))
        })
    }
}
