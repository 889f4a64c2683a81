//! Applying the test-queue commands of a `tests:` stage's shards (see [`super::suite`]).
//!
//! Both commands name the shard's task and attempt; one for an attempt that is no longer
//! current (the task moved on, was lost, or ended) is rejected or ignored, so a shard that
//! kept running on a node the cluster gave up on cannot take or report anything.

use super::ClusterState;
use super::command::{Response, TestsReported};
use super::model::StageRef;
use super::runs::history_key;
use super::suite::TestResult;

impl ClusterState {
    pub(super) fn take_tests(
        &mut self,
        task: StageRef,
        attempt: u32,
        batch: u32,
        list: Option<&[String]>,
    ) -> Response {
        if let Err(reason) = self.check_shard_attempt(task, attempt) {
            return Response::Rejected { reason };
        }
        let run = self.runs.get_mut(&task.run).expect("checked above");
        let key = history_key(
            &run.pipeline.name,
            &run.pipeline.stages[task.stage as usize].name,
        );
        let suite = run.stages[task.stage as usize]
            .suite
            .as_mut()
            .expect("checked above");
        if let Some(ids) = list
            && suite.ids.is_none()
        {
            if ids.is_empty() {
                return Response::Rejected {
                    reason: "tests.list printed no test ids".into(),
                };
            }
            suite.list(ids.to_vec(), self.test_history.get(&key));
        }
        let take = suite.take(task.shard, attempt, batch);
        Response::Tests(take)
    }

    pub(super) fn report_tests(
        &mut self,
        task: StageRef,
        attempt: u32,
        batch: u32,
        results: &[TestResult],
        overhead_ms: u64,
    ) -> Response {
        if self.check_shard_attempt(task, attempt).is_err() {
            return TestsReported { accepted: 0 }.into();
        }
        let retries = self.stage(task.into()).map_or(0, |s| s.retries);
        let run = self.runs.get_mut(&task.run).expect("checked above");
        let suite = run.stages[task.stage as usize]
            .suite
            .as_mut()
            .expect("checked above");
        let accepted = suite.report(task.shard, attempt, batch, results, retries, overhead_ms);
        TestsReported { accepted }.into()
    }

    /// What the task's shard holds goes back on the queue: its attempt ended.
    pub(super) fn release_tests(&mut self, task: StageRef) {
        if let Some(suite) = self
            .runs
            .get_mut(&task.run)
            .and_then(|r| r.stages.get_mut(task.stage as usize))
            .and_then(|s| s.suite.as_mut())
        {
            suite.release(task.shard);
        }
    }

    /// The task is a shard of a `tests:` stage, and `attempt` is its current, live attempt.
    fn check_shard_attempt(&self, task: StageRef, attempt: u32) -> Result<(), String> {
        let id = self.task_id(task.into());
        let t = self.task(task.into()).ok_or(format!("{id} not found"))?;
        if self
            .stage_run(task)
            .and_then(|s| s.suite.as_ref())
            .is_none()
        {
            return Err(format!("{id} has no tests:"));
        }
        if t.attempt != attempt || !t.status.is_allocated() {
            return Err(format!(
                "stale: {id} is {} at attempt {}, not at attempt {attempt}",
                t.status, t.attempt
            ));
        }
        Ok(())
    }
}
