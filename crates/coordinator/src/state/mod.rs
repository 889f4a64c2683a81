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

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use kiln_api::spec::{Resources, Stage};
use serde::{Deserialize, Serialize};

pub use command::{Command, GpuDevice, Kill, NodeRegistration, Placement, Response, TaskEvent};
pub use model::{
    Attempt, Gpu, GpuGrant, Node, NodeId, NodeStatus, Run, RunStatus, Task, TaskRef, TaskStatus,
    parse_run_id, run_id,
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
                now_ms,
            } => self.submit_run(request_id, trigger, pipeline, *now_ms),
            Command::PlaceBatch {
                placements, now_ms, ..
            } => self.place_batch(placements, *now_ms),
            Command::TaskEvents {
                node,
                events,
                now_ms,
            } => self.task_events(node, events, *now_ms),
            Command::CancelRun { run, now_ms } => self.cancel_run(*run, *now_ms),
        }
    }

    pub fn task(&self, task: TaskRef) -> Option<&Task> {
        self.runs.get(&task.run)?.tasks.get(task.stage as usize)
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

    /// The task's id as users and agents see it: `run-7/build`.
    pub fn task_id(&self, task: TaskRef) -> String {
        match self.stage(task) {
            Some(stage) => format!("{}/{}", run_id(task.run), stage.name),
            None => format!("{}/#{}", run_id(task.run), task.stage),
        }
    }

    /// Parses `run-7/build` back into a [`TaskRef`].
    pub fn parse_task_id(&self, id: &str) -> Option<TaskRef> {
        let (run, stage) = id.split_once('/')?;
        let run = parse_run_id(run)?;
        let index = self
            .runs
            .get(&run)?
            .pipeline
            .stages
            .iter()
            .position(|s| s.name == stage)?;
        Some(TaskRef {
            run,
            stage: index as u32,
        })
    }

    /// Tasks counted by status, for metrics.
    pub fn tasks_by_status(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for run in self.runs.values() {
            for task in &run.tasks {
                *counts.entry(task.status.as_str()).or_insert(0) += 1;
            }
        }
        counts
    }
}
