//! The replicated cluster state, and the one way to change it: [`ClusterState::apply`].
//!
//! Everything that must survive the loss of a coordinator lives here: nodes as the cluster
//! agreed they are, every run with its tasks, and every attempt of every task with each
//! status it went through. Raft orders [`Command`]s into a log; every coordinator applies the
//! same commands in the same order and so holds the same state.
//!
//! # Invariants
//!
//! - `apply` is a function of (state, command) and nothing else: no clock, no randomness, no
//!   I/O. The leader puts the time and the pass number into the command before proposing it.
//! - A node's `reserved` is the sum of the asks of its `allocations`, and never exceeds its
//!   capacity: placements are re-checked with [`fit::fits`] as they are applied, and what no
//!   longer fits is rejected (a normal, replicated answer, not an error).
//! - Applying a task event twice changes nothing: events name their attempt, and an event
//!   that does not move the attempt forward is ignored. Agents may therefore re-send freely.
//! - A submission carrying a request id is stored once: re-submitting answers the first run.
//!
//! # What it does not do
//!
//! It does not decide where work goes (that is `scheduler/`), does not talk to agents, and
//! does not know about Raft. Heartbeats and live usage never come here.

pub mod command;
pub mod fit;
pub mod model;
mod nodes;
mod placement;
mod runs;
pub mod suite;
mod testing;

#[cfg(test)]
mod sharding_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use kiln_api::spec::{Resources, Stage};
use kiln_sharding::history::StageHistory;
use serde::{Deserialize, Serialize};

pub use command::{Command, GpuDevice, Kill, NodeRegistration, Placement, Response, TaskEvent};
pub use model::{
    Attempt, Gpu, GpuGrant, Node, NodeId, NodeStatus, Run, RunStatus, StageRun, Task, TaskRef,
    TaskStatus, parse_run_id, run_id,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, Node>,
    pub runs: BTreeMap<u64, Run>,
    /// Client request ids already seen, for idempotent submission.
    pub requests: BTreeMap<String, u64>,
    /// Tasks waiting for a placement, oldest run first: the scheduler's work list.
    pub pending: BTreeSet<TaskRef>,
    pub next_run: u64,
    /// Recorded test timings, by `pipeline/stage`, for splitting the next runs' suites.
    #[serde(default)]
    pub test_history: BTreeMap<String, StageHistory>,
}

impl ClusterState {
    /// Applies one command. Deterministic: the same state and command always give the same
    /// new state and response.
    pub fn apply(&mut self, command: &Command) -> Response {
        match command {
            Command::RegisterNode { node, now_ms } => self.register_node(node, *now_ms),
            Command::MarkNodeDown { node, now_ms } => self.mark_node_down(node, *now_ms),
            Command::SubmitRun {
                request_id,
                trigger,
                pipeline,
                only_tests,
                now_ms,
            } => self.submit_run(request_id, trigger, pipeline, only_tests, *now_ms),
            Command::PlaceBatch {
                placements, now_ms, ..
            } => self.place_batch(placements, *now_ms),
            Command::TaskEvents {
                node,
                events,
                now_ms,
            } => self.task_events(node, events, *now_ms),
            Command::CancelRun { run, now_ms } => self.cancel_run(*run, *now_ms),
            Command::TakeTests {
                task,
                attempt,
                batch,
                list,
            } => self.take_tests(*task, *attempt, *batch, list.as_deref()),
            Command::ReportTests {
                task,
                attempt,
                batch,
                results,
                overhead_ms,
            } => self.report_tests(*task, *attempt, *batch, results, *overhead_ms),
        }
    }

    pub fn task(&self, task: TaskRef) -> Option<&Task> {
        self.runs
            .get(&task.run)?
            .stages
            .get(task.stage as usize)?
            .shards
            .get(task.shard as usize)
    }

    pub fn stage_run(&self, task: TaskRef) -> Option<&StageRun> {
        self.runs.get(&task.run)?.stages.get(task.stage as usize)
    }

    pub fn stage(&self, task: TaskRef) -> Option<&Stage> {
        self.runs
            .get(&task.run)?
            .pipeline
            .stages
            .get(task.stage as usize)
    }

    /// What a task reserves on its node.
    pub fn ask(&self, task: TaskRef) -> Resources {
        self.stage(task).map(|s| s.resources).unwrap_or_default()
    }

    /// The task's id as users and agents see it: `run-7/build`, or `run-7/test/2` for shard
    /// 2 of a sharded stage.
    pub fn task_id(&self, task: TaskRef) -> String {
        let stage = match self.stage(task) {
            Some(stage) => stage.name.clone(),
            None => format!("#{}", task.stage),
        };
        if self.stage_run(task).is_some_and(StageRun::is_sharded) {
            format!("{}/{stage}/{}", run_id(task.run), task.shard)
        } else {
            format!("{}/{stage}", run_id(task.run))
        }
    }

    /// Parses `run-7/build` or `run-7/test/2` back into a [`TaskRef`].
    pub fn parse_task_id(&self, id: &str) -> Option<TaskRef> {
        let mut parts = id.splitn(3, '/');
        let run = parse_run_id(parts.next()?)?;
        let stage = parts.next()?;
        let shard = match parts.next() {
            Some(k) => k.parse().ok()?,
            None => 0,
        };
        let r = self.runs.get(&run)?;
        let index = r.pipeline.stages.iter().position(|s| s.name == stage)?;
        let stage_run = r.stages.get(index)?;
        if shard as usize >= stage_run.shards.len() {
            return None;
        }
        Some(TaskRef {
            run,
            stage: index as u32,
            shard,
        })
    }

    /// Tasks counted by status, for metrics.
    pub fn tasks_by_status(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for run in self.runs.values() {
            for (_, task) in run.tasks() {
                *counts.entry(task.status.as_str()).or_insert(0) += 1;
            }
        }
        counts
    }
}
