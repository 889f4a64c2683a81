//! Stories about sharded stages and their test queues: each step is one applied command.

use crate::state::command::{Placed, Submitted, TestsReported};
use kiln_api::spec::{Command as Cmd, Pipeline, Resources, Shards, Split, Stage, Tests};
use kiln_sharding::junit::Outcome;

use super::suite::{Take, TestResult};
use super::*;

fn suite_stage(name: &str, shards: u32, split: Split, retries: u32) -> Stage {
    Stage {
        interruptible: true,
        secrets: Vec::new(),
        name: name.into(),
        needs: vec![],
        command: Cmd::None,
        env: Default::default(),
        resources: Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
        },
        gpu: None,
        retries,
        timeout_ms: 60_000,
        constraints: Default::default(),
        container: None,
        shards: Some(Shards::Fixed(shards)),
        tests: Some(Tests {
            list: "list".into(),
            run: "run".into(),
            report: "*.xml".into(),
            split,
        }),
        deploy: None,
        artifacts: Vec::new(),
        inputs: Default::default(),
    }
}

fn after(mut s: Stage, need: &str) -> Stage {
    s.name = format!("after-{need}");
    s.needs = vec![need.into()];
    s.shards = None;
    s.tests = None;
    s.command = Cmd::Shell("true".into());
    s
}

fn register(s: &mut ClusterState, id: &str, now_ms: i64) {
    let node = NodeRegistration {
        id: id.into(),
        labels: Default::default(),
        drivers: vec!["process".into()],
        capacity: Resources {
            cpu_millis: 8000,
            memory_bytes: 1 << 30,
        },
        gpus: vec![],
    };
    s.apply(&Command::RegisterNode { node, now_ms });
}

struct World {
    s: ClusterState,
    run: u64,
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:02}")).collect()
}

impl World {
    fn new(stages: Vec<Stage>) -> World {
        World::with(ClusterState::default(), stages, Default::default())
    }

    fn with(
        mut s: ClusterState,
        stages: Vec<Stage>,
        only_tests: std::collections::BTreeMap<String, Vec<String>>,
    ) -> World {
        for n in ["n1", "n2"] {
            register(&mut s, n, 0);
        }
        let pipeline = Pipeline {
            on: None,
            concurrency: None,
            name: "p".into(),
            stages,
        };
        let run = match s.apply(&Command::SubmitRun {
            request_id: String::new(),
            trigger: "manual".into(),
            pipeline,
            only_tests,
            now_ms: 1,
        }) {
            Response::Submitted(Submitted { run, .. }) => run,
            other => panic!("{other:?}"),
        };
        World { s, run }
    }

    fn at(&self, shard: u32) -> StageRef {
        StageRef {
            run: self.run,
            stage: 0,
            shard,
        }
    }

    fn node(shard: u32) -> String {
        format!("n{}", shard % 2 + 1)
    }

    /// Places and starts a shard's current attempt.
    fn start(&mut self, shard: u32) {
        let task = self.at(shard);
        let attempt = self.s.task(task.into()).unwrap().attempt;
        let placement = Placement {
            task: task.into(),
            attempt,
            node: World::node(shard),
            gpus: vec![],
        };
        let r = self.s.apply(&Command::PlaceBatch {
            pass: 1,
            placements: vec![placement],
            now_ms: 2,
        });
        assert!(
            matches!(r, Response::Placed(Placed { ref rejected, .. }) if rejected.is_empty()),
            "{r:?}"
        );
        self.event(shard, TaskStatus::Running);
    }

    fn event(&mut self, shard: u32, status: TaskStatus) -> Response {
        let task = self.at(shard);
        let attempt = self.s.task(task.into()).unwrap().attempt;
        let e = TaskEvent {
            task: task.into(),
            attempt,
            status,
            exit_code: Some(0),
            message: String::new(),
            at_ms: 3,
            image: None,
            endpoint: None,
            health: None,
            metrics_endpoint: None,
            artifacts: Default::default(),
        };
        self.s.apply(&Command::TaskEvents {
            node: World::node(shard),
            events: vec![e],
            now_ms: 3,
        })
    }

    fn take(&mut self, shard: u32, batch: u32, list: Option<Vec<String>>) -> Take {
        let task = self.at(shard);
        let attempt = self.s.task(task.into()).unwrap().attempt;
        match self.s.apply(&Command::TakeTests {
            task,
            attempt,
            batch,
            list,
        }) {
            Response::Tests(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// Batch 1 of a shard that brings the list.
    fn batch_listed(&mut self, shard: u32, list: Vec<String>) -> Vec<String> {
        match self.take(shard, 1, Some(list)) {
            Take::Batch(ids) => ids,
            other => panic!("listed, still told {other:?}"),
        }
    }

    fn batch(&mut self, shard: u32, batch: u32) -> Vec<String> {
        match self.take(shard, batch, None) {
            Take::Batch(ids) => ids,
            other => panic!("not listed: {other:?}"),
        }
    }

    fn report(&mut self, shard: u32, batch: u32, results: &[(&str, Outcome, u64)]) -> u32 {
        let task = self.at(shard);
        let attempt = self.s.task(task.into()).unwrap().attempt;
        let results = results
            .iter()
            .map(|(id, outcome, ms)| TestResult {
                id: id.to_string(),
                outcome: *outcome,
                time_ms: *ms,
                message: String::new(),
            })
            .collect();
        match self.s.apply(&Command::ReportTests {
            task,
            attempt,
            batch,
            results,
            overhead_ms: 0,
        }) {
            Response::TestsReported(TestsReported { accepted }) => accepted,
            other => panic!("{other:?}"),
        }
    }

    /// Reports every id of a batch as passed, 10 ms each.
    fn pass_all(&mut self, shard: u32, batch: u32, ids: &[String]) {
        let results: Vec<(&str, Outcome, u64)> = ids
            .iter()
            .map(|id| (id.as_str(), Outcome::Passed, 10))
            .collect();
        assert_eq!(self.report(shard, batch, &results), ids.len() as u32);
    }

    /// Drains a shard: takes and passes batches until it is told it is done.
    fn drain(&mut self, shard: u32, mut batch: u32) -> u32 {
        loop {
            let ids = self.batch(shard, batch);
            if ids.is_empty() {
                return batch;
            }
            self.pass_all(shard, batch, &ids);
            batch += 1;
        }
    }

    fn stage(&self) -> &StageRun {
        &self.s.runs[&self.run].stages[0]
    }

    fn suite(&self) -> &suite::Suite {
        self.stage().suite.as_ref().unwrap()
    }
}

#[test]
fn a_sharded_stage_is_one_task_per_shard_and_its_dependents_wait_for_all() {
    let st = suite_stage("unit", 3, Split::Dynamic, 0);
    let mut w = World::new(vec![st.clone(), after(st, "unit")]);
    assert_eq!(w.stage().shards.len(), 3);
    assert_eq!(w.s.pending.len(), 3, "every shard is pending");
    assert_eq!(w.s.task_id(w.at(2).into()), "run-1/unit/2");
    assert_eq!(w.s.parse_task_id("run-1/unit/2"), Some(w.at(2).into()));
    assert_eq!(w.s.parse_task_id("run-1/unit/3"), None);
    assert_eq!(w.s.task_id(TaskRef::stage(w.run, 1)), "run-1/after-unit");

    for k in 0..3 {
        w.start(k);
    }
    assert_eq!(w.take(0, 1, None), Take::NeedList);
    assert!(matches!(w.take(0, 1, Some(ids(6))), Take::Batch(b) if !b.is_empty()));
    let held = w.batch(0, 1);
    w.pass_all(0, 1, &held);
    for k in 0..3 {
        w.drain(k, 2);
        w.event(k, TaskStatus::Succeeded);
        let dependent = w.s.runs[&w.run].stages[1].status();
        let want = if k < 2 {
            TaskStatus::Waiting
        } else {
            TaskStatus::Pending
        };
        assert_eq!(dependent, want, "after shard {k}");
    }
    assert_eq!(w.stage().status(), TaskStatus::Succeeded);
    assert!(w.suite().passed());
    assert_eq!(w.suite().counts()["passed"], 6);
}

#[test]
fn each_result_counts_once_whatever_is_re_sent() {
    let mut w = World::new(vec![suite_stage("unit", 2, Split::Dynamic, 0)]);
    w.start(0);
    w.start(1);
    w.take(0, 1, Some(ids(10)));
    let first = w.batch(0, 1);
    assert_eq!(
        w.batch(0, 1),
        first,
        "asking again for batch 1 answers the same batch"
    );
    let theirs = w.batch(1, 1);
    assert!(
        first.iter().all(|id| !theirs.contains(id)),
        "no id in two batches"
    );

    // Shard 1 reports shard 0's tests: none count.
    let foreign: Vec<(&str, Outcome, u64)> = first
        .iter()
        .map(|id| (id.as_str(), Outcome::Failed, 1))
        .collect();
    assert_eq!(w.report(1, 1, &foreign), 0, "not its batch");
    w.pass_all(0, 1, &first);
    assert_eq!(
        w.report(0, 1, &[(&first[0], Outcome::Failed, 1)]),
        0,
        "a replay"
    );
    for id in &first {
        assert_eq!(w.suite().tests[id].runs.len(), 1, "{id} ran once");
    }
}

#[test]
fn a_lost_shard_puts_its_batch_back_for_the_others() {
    let mut w = World::new(vec![suite_stage("unit", 2, Split::Dynamic, 0)]);
    w.start(0);
    w.start(1);
    w.take(0, 1, Some(ids(8)));
    let lost = w.batch(0, 1);
    // Shard 0's node goes away.
    w.s.apply(&Command::MarkNodeDown {
        node: "n1".into(),
        now_ms: 10,
    });
    let t = w.s.task(w.at(0).into()).unwrap();
    assert_eq!((t.status, t.attempt), (TaskStatus::Pending, 2));
    let next = w.batch(1, 1);
    assert_eq!(
        next[..lost.len().min(next.len())],
        lost[..lost.len().min(next.len())],
        "lost tests first"
    );
    // The stale attempt can neither report nor take.
    let old = StageRef {
        shard: 0,
        ..w.at(0)
    };
    let r = w.s.apply(&Command::TakeTests {
        task: old,
        attempt: 1,
        batch: 2,
        list: None,
    });
    assert!(
        matches!(r, Response::Rejected { ref reason } if reason.contains("stale")),
        "{r:?}"
    );
    w.pass_all(1, 1, &next);
    w.drain(1, 2);
    w.event(1, TaskStatus::Succeeded);
    // Shard 0 comes back elsewhere as attempt 2 and finds nothing left.
    register(&mut w.s, "n1", 11);
    w.start(0);
    assert!(w.batch(0, 1).is_empty());
    w.event(0, TaskStatus::Succeeded);
    assert!(w.suite().passed(), "{:?}", w.suite().counts());
    assert!(
        w.suite().tests.values().all(|t| t.runs.len() == 1),
        "every test once"
    );
}

#[test]
fn failed_tests_are_retried_and_a_pass_after_a_failure_is_flaky() {
    let mut w = World::new(vec![suite_stage("unit", 1, Split::Dynamic, 1)]);
    w.start(0);
    w.take(0, 1, Some(ids(2)));
    let b = w.batch(0, 1);
    assert_eq!(
        b.len(),
        1,
        "1 of 2 tests: half the work left, over 2 x 1 shard"
    );
    w.report(0, 1, &[(&b[0], Outcome::Failed, 5)]);
    assert_eq!(w.batch(0, 2), b, "the failed test comes back first");
    w.report(0, 2, &[(&b[0], Outcome::Passed, 5)]);
    let rest = w.batch(0, 3);
    w.report(0, 3, &[(&rest[0], Outcome::Failed, 5)]);
    assert_eq!(w.batch(0, 4), rest);
    w.report(0, 4, &[(&rest[0], Outcome::Failed, 5)]);
    assert!(w.batch(0, 5).is_empty(), "no retries left");
    w.event(0, TaskStatus::Succeeded);

    let verdicts: Vec<_> = [&b[0], &rest[0]]
        .iter()
        .map(|id| w.suite().tests[*id].verdict())
        .collect();
    assert_eq!(
        verdicts,
        vec![suite::Verdict::Flaky, suite::Verdict::Failed]
    );
    assert_eq!(
        w.stage().status(),
        TaskStatus::Failed,
        "a failed test fails the stage"
    );
    assert_eq!(w.s.runs[&w.run].status, RunStatus::Failed);
}

#[test]
fn an_unreported_id_is_errored_and_an_unfinished_suite_fails() {
    let mut w = World::new(vec![suite_stage("unit", 1, Split::Count, 0)]);
    w.start(0);
    w.take(0, 1, Some(ids(3)));
    let b = w.batch(0, 1);
    assert_eq!(b.len(), 3, "a count split hands a shard its whole part");
    w.report(0, 1, &[(&b[0], Outcome::Passed, 5)]);
    assert_eq!(w.suite().tests[&b[1]].verdict(), suite::Verdict::Errored);
    w.event(0, TaskStatus::Succeeded);
    assert_eq!(w.stage().status(), TaskStatus::Failed);
}

#[test]
fn history_makes_the_next_static_split_balanced_and_picks_the_shard_count() {
    // Run 1: one long test and nine short ones, by count.
    let mut w = World::new(vec![suite_stage("unit", 2, Split::Static, 0)]);
    let list = ids(10);
    for k in 0..2 {
        w.start(k);
    }
    let first = w.batch_listed(0, list.clone());
    assert_eq!(first, list[..5], "no history: by count");
    for k in 0..2 {
        let b = w.batch(k, 1);
        let results: Vec<(&str, Outcome, u64)> = b
            .iter()
            .map(|id| {
                (
                    id.as_str(),
                    Outcome::Passed,
                    if id == "t00" { 900 } else { 100 },
                )
            })
            .collect();
        w.report(k, 1, &results);
        w.drain(k, 2);
        w.event(k, TaskStatus::Succeeded);
    }
    let history = &w.s.test_history["p/unit"];
    assert_eq!(history.tests["t00"].ms, 900);
    assert_eq!(history.folds, 1);

    // Run 2: LPT puts the long test alone.
    let mut w2 = World::with(
        w.s.clone(),
        vec![suite_stage("unit", 2, Split::Static, 0)],
        Default::default(),
    );
    w2.start(0);
    assert_eq!(w2.batch_listed(0, list.clone()), vec!["t00".to_string()]);
    assert_eq!(w2.suite().queues[1].len(), 9);

    // `shards: { max: 8, target: 500ms }` over 1.8 s of recorded tests: 4 shards.
    let mut auto = suite_stage("unit", 1, Split::Dynamic, 0);
    auto.shards = Some(Shards::Auto {
        max: 8,
        target_ms: 500,
    });
    let w3 = World::with(w.s.clone(), vec![auto.clone()], Default::default());
    assert_eq!(w3.stage().shards.len(), 4);
    auto.name = "fresh".into();
    let w4 = World::with(w.s, vec![auto], Default::default());
    assert_eq!(w4.stage().shards.len(), 8, "no history: max");
}

#[test]
fn a_rerun_of_failed_tests_is_listed_at_submission() {
    let only = [(
        "unit".to_string(),
        vec!["t03".to_string(), "t07".to_string()],
    )]
    .into();
    let mut w = World::with(
        ClusterState::default(),
        vec![suite_stage("unit", 4, Split::Dynamic, 0)],
        only,
    );
    assert_eq!(w.stage().shards.len(), 2, "no more shards than tests");
    w.start(0);
    let b = w.batch(0, 1);
    assert_eq!(b, vec!["t03".to_string()], "no list needed");
}

#[test]
fn an_empty_list_is_refused() {
    let mut w = World::new(vec![suite_stage("unit", 1, Split::Dynamic, 0)]);
    w.start(0);
    let task = w.at(0);
    let r = w.s.apply(&Command::TakeTests {
        task,
        attempt: 1,
        batch: 1,
        list: Some(vec![]),
    });
    assert!(
        matches!(r, Response::Rejected { ref reason } if reason.contains("no test ids")),
        "{r:?}"
    );
}

#[test]
fn a_list_with_duplicates_queues_each_test_once_and_huge_times_are_capped() {
    let mut w = World::new(vec![suite_stage("unit", 1, Split::Count, 0)]);
    w.start(0);
    let list = vec!["a".to_string(), "b".into(), "a".into()];
    assert_eq!(w.batch_listed(0, list), vec!["a".to_string(), "b".into()]);
    w.report(
        0,
        1,
        &[("a", Outcome::Passed, u64::MAX), ("b", Outcome::Passed, 1)],
    );
    w.event(0, TaskStatus::Succeeded);
    assert_eq!(w.suite().tests.len(), 2);
    assert_eq!(w.suite().tests["a"].runs[0].time_ms, suite::MAX_TEST_MS);
    assert_eq!(w.s.test_history["p/unit"].tests["a"].ms, suite::MAX_TEST_MS);
}

#[test]
fn one_shard_lists_the_suite_and_the_others_wait_for_its_list() {
    let mut w = World::new(vec![suite_stage("unit", 3, Split::Dynamic, 0)]);
    for k in 0..3 {
        w.start(k);
    }
    assert_eq!(w.take(1, 1, None), Take::NeedList, "the first to ask lists");
    assert_eq!(w.take(0, 1, None), Take::Wait);
    assert_eq!(w.take(2, 1, None), Take::Wait);
    assert_eq!(
        w.take(1, 1, None),
        Take::NeedList,
        "asking again, it still lists"
    );
    // The lister's attempt ends without a list: the next to ask lists instead.
    w.event(1, TaskStatus::Failed);
    assert_eq!(w.take(2, 1, None), Take::NeedList);
    assert_eq!(w.take(0, 1, None), Take::Wait);
    assert!(matches!(w.take(2, 1, Some(ids(6))), Take::Batch(b) if !b.is_empty()));
    assert!(
        matches!(w.take(0, 1, None), Take::Batch(b) if !b.is_empty()),
        "the list came"
    );
}
