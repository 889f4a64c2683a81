//! The test queue (`kiln.v1.TestQueue`), which the agents running a `tests:` stage's shards
//! call, and the test report (`Kiln.GetTestReport`) built from a run's suites.
//!
//! Both queue calls are Raft writes ([`Command::TakeTests`], [`Command::ReportTests`]): the
//! queue survives a leader change, and its answers are the state machine's, so every
//! coordinator agrees on who holds which test.

use std::sync::Arc;

use kiln_api::pb::{self, test_queue_server::TestQueue};
use kiln_sharding::junit::Outcome;
use tonic::{Request, Response, Status};

use crate::core::{Core, now_ms};
use crate::error::Error;
use crate::state::suite::{Take, TestResult, Verdict};
use crate::state::{
    Command, Run, StageRef, Submitted, TaskRef, TaskStatus, TestsReported, parse_run_id,
};

/// How long a shard waiting for another's list waits before asking again.
const LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct TestQueueService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl TestQueue for TestQueueService {
    #[tracing::instrument(skip_all, fields(task = %req.get_ref().task_id, batch = req.get_ref().batch))]
    async fn next_tests(
        &self,
        req: Request<pb::NextTestsRequest>,
    ) -> Result<Response<pb::NextTestsResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        let list = (!req.list.is_empty()).then_some(req.list);
        let mut applied = self.core.state.subscribe();
        loop {
            let command = Command::TakeTests {
                task,
                attempt: req.attempt,
                batch: req.batch,
                list: list.clone(),
            };
            match self.core.write(command).await? {
                Take::NeedList => {
                    return Ok(Response::new(pb::NextTestsResponse {
                        need_list: true,
                        ids: Vec::new(),
                    }));
                }
                Take::Batch(ids) => {
                    tracing::debug!(tests = ids.len(), "batch taken");
                    return Ok(Response::new(pb::NextTestsResponse {
                        need_list: false,
                        ids,
                    }));
                }
                // Another shard lists the suite: ask again once its list arrived, or its
                // attempt ended without one (read here, so waiting writes nothing).
                Take::Wait => loop {
                    let _ = tokio::time::timeout(LIST_WAIT, applied.changed()).await;
                    let state = self.core.state.read();
                    let suite = state.stage_run(task).and_then(|s| s.suite.as_ref());
                    if suite.is_none_or(|s| s.ids.is_some() || s.lister.is_none()) {
                        break;
                    }
                },
            }
        }
    }

    #[tracing::instrument(skip_all, fields(task = %req.get_ref().task_id, batch = req.get_ref().batch))]
    async fn report_tests(
        &self,
        req: Request<pb::ReportTestsRequest>,
    ) -> Result<Response<pb::ReportTestsResponse>, Status> {
        let req = req.into_inner();
        let task = self.task(&req.task_id)?;
        let results = req
            .results
            .into_iter()
            .map(|r| {
                let outcome = Outcome::parse(&r.outcome).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "results[{}].outcome: {:?} is not one of passed, failed, errored, skipped",
                        r.id, r.outcome
                    ))
                })?;
                Ok(TestResult {
                    id: r.id,
                    outcome,
                    time_ms: r.time_ms,
                    message: r.message,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let command = Command::ReportTests {
            task,
            attempt: req.attempt,
            batch: req.batch,
            results,
            overhead_ms: req.overhead_ms,
        };
        let TestsReported { accepted } = self.core.write(command).await?;
        Ok(Response::new(pb::ReportTestsResponse { accepted }))
    }
}

impl TestQueueService {
    /// The shard a task id names. Only the leader answers (a lagging follower might not
    /// know the run yet, and the queue is written on the leader anyway).
    fn task(&self, task_id: &str) -> Result<StageRef, Error> {
        self.core.ensure_leader()?;
        match self.core.state.read().parse_task_id(task_id) {
            Some(TaskRef::Stage(at)) => Ok(at),
            _ => Err(Error::NotFound(format!("task {task_id} not found"))),
        }
    }
}

/// `Kiln.RerunRun`: a run's pipeline again as a new run; with `failed_only`, each
/// `tests:` stage runs only the tests that did not pass.
pub async fn rerun(core: &Core, req: pb::RerunRunRequest) -> Result<pb::SubmitRunResponse, Error> {
    let (pipeline, only_tests) = {
        let state = core.state.read();
        let run = parse_run_id(&req.run_id)
            .and_then(|n| state.runs.get(&n))
            .ok_or_else(|| Error::NotFound(format!("run {} not found", req.run_id)))?;
        let only = if req.failed_only {
            failed_tests(run)?
        } else {
            Default::default()
        };
        (run.pipeline.clone(), only)
    };
    let trigger = format!(
        "{}:{}",
        if req.failed_only {
            "rerun-failed"
        } else {
            "rerun"
        },
        req.run_id
    );
    let command = Command::SubmitRun {
        request_id: req.request_id,
        trigger,
        pipeline,
        only_tests,
        now_ms: now_ms(),
    };
    let Submitted { run, created } = core.write(command).await?;
    tracing::info!(run, created, "rerun submitted");
    Ok(pb::SubmitRunResponse {
        run_id: crate::state::run_id(run),
        created,
    })
}

/// The tests of each `tests:` stage that did not pass in `run` (failed, errored, or never
/// run), by stage; an error when there are none, or while the run is still going.
fn failed_tests(
    run: &crate::state::Run,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, Error> {
    if !run.status.is_terminal() {
        return Err(Error::Conflict(format!(
            "{} is still {}: rerun its failed tests once it has ended",
            run.id(),
            run.status.as_str()
        )));
    }
    let mut only = std::collections::BTreeMap::new();
    let mut unlisted = false;
    for (spec, stage) in run.pipeline.stages.iter().zip(&run.stages) {
        let Some(suite) = &stage.suite else { continue };
        // A suite that was never listed (skipped, cancelled, its list: failed) runs whole.
        let Some(ids) = &suite.ids else {
            unlisted = true;
            continue;
        };
        let failed: Vec<String> = ids
            .iter()
            .filter(|id| suite.tests.get(*id).is_some_and(|t| !t.verdict().is_ok()))
            .cloned()
            .collect();
        only.insert(spec.name.clone(), failed);
    }
    if !unlisted && only.values().all(Vec::is_empty) {
        return Err(Error::InvalidInput(format!(
            "{} has no failed tests to rerun",
            run.id()
        )));
    }
    Ok(only)
}

/// The test report of a run: every `tests:` stage, its shards and its tests.
pub fn report(run: &Run) -> pb::TestReport {
    let suites = run
        .pipeline
        .stages
        .iter()
        .zip(&run.stages)
        .filter_map(|(spec, stage)| {
            let suite = stage.suite.as_ref()?;
            let shards: Vec<pb::ShardReport> = stage
                .shards
                .iter()
                .enumerate()
                .map(|(k, task)| {
                    let last = task.attempts.last();
                    let wall_ms = last
                        .and_then(|a| {
                            let start = a.time_of(TaskStatus::Running)?;
                            Some(a.finished_ms().unwrap_or(start) - start)
                        })
                        .unwrap_or(0);
                    let tests = suite
                        .tests
                        .values()
                        .flat_map(|t| &t.runs)
                        .filter(|r| r.shard == k as u32)
                        .count() as u32;
                    pb::ShardReport {
                        index: k as u32,
                        status: task.status.as_str().into(),
                        node: last.map(|a| a.node.clone()).unwrap_or_default(),
                        wall_ms,
                        tests,
                        attempts: task.attempts.len() as u32,
                    }
                })
                .collect();
            let mut tests: Vec<pb::TestCaseReport> = suite
                .tests
                .iter()
                .map(|(id, t)| {
                    let verdict = t.verdict();
                    let last = t.runs.last();
                    pb::TestCaseReport {
                        id: id.clone(),
                        verdict: verdict.as_str().into(),
                        time_ms: last.map_or(0, |r| r.time_ms),
                        message: match verdict {
                            Verdict::Failed | Verdict::Errored => {
                                last.map(|r| r.message.clone()).unwrap_or_default()
                            }
                            _ => String::new(),
                        },
                        runs: t
                            .runs
                            .iter()
                            .map(|r| pb::TestRunReport {
                                outcome: r.outcome.as_str().into(),
                                time_ms: r.time_ms,
                                shard: r.shard,
                                attempt: r.attempt,
                                message: r.message.clone(),
                            })
                            .collect(),
                    }
                })
                .collect();
            tests.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then(a.id.cmp(&b.id)));
            Some(pb::SuiteReport {
                stage: spec.name.clone(),
                split: suite.split.as_str().into(),
                imbalance: imbalance(&shards),
                shards,
                counts: suite
                    .counts()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v as u32))
                    .collect(),
                tests,
                listed: suite.ids.is_some(),
            })
        })
        .collect();
    pb::TestReport {
        run_id: run.id(),
        suites,
    }
}

/// The slowest shard's wall time over the mean, among shards that ran; 0 when none did.
fn imbalance(shards: &[pb::ShardReport]) -> f64 {
    let walls: Vec<f64> = shards
        .iter()
        .filter(|s| s.wall_ms > 0)
        .map(|s| s.wall_ms as f64)
        .collect();
    if walls.is_empty() {
        return 0.0;
    }
    let mean = walls.iter().sum::<f64>() / walls.len() as f64;
    walls.iter().copied().fold(0.0, f64::max) / mean
}
