//! The records the replicated state is made of: nodes, runs, and the tasks inside runs.
//!
//! A task is one stage of one run, or one shard of a sharded stage; each time it is tried it
//! gets an [`Attempt`], numbered from 1, that records the node, the exit code and every
//! status it went through with the time. Tasks are addressed by [`TaskRef`] (run number,
//! stage index, shard index) inside the state and by their string id at the edges:
//! `run-7/build` for an unsharded stage, `run-7/test/2` for shard 2 of a sharded one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kiln_api::spec::{Pipeline, Resources};
use serde::{Deserialize, Serialize};

use super::command::{Kill, TaskEvent};
use super::suite::Suite;

pub type NodeId = String;

/// A task's address: a pipeline's (one stage of a run, or one shard of it) or a service's
/// (one replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskRef {
    Stage(StageRef),
    Replica(ReplicaRef),
}

/// A pipeline task: the run's number, the stage's index in the pipeline, and the shard's
/// index in the stage (0 for an unsharded stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StageRef {
    pub run: u64,
    pub stage: u32,
    pub shard: u32,
}

/// A service replica: the service's number and the replica's slot. Slots are never reused,
/// so an address always means the same replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaRef {
    pub service: u64,
    pub slot: u32,
}

impl TaskRef {
    /// The only task of an unsharded stage (shard 0 of a sharded one).
    pub fn stage(run: u64, stage: u32) -> TaskRef {
        TaskRef::shard(run, stage, 0)
    }

    pub fn shard(run: u64, stage: u32, shard: u32) -> TaskRef {
        TaskRef::Stage(StageRef { run, stage, shard })
    }

    pub fn replica(service: u64, slot: u32) -> TaskRef {
        TaskRef::Replica(ReplicaRef { service, slot })
    }
}

impl From<StageRef> for TaskRef {
    fn from(s: StageRef) -> TaskRef {
        TaskRef::Stage(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Ready,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// One GPU of a node: what the agent reported, and what is reserved on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
    pub nvlink_peers: Vec<u32>,
    pub simulated: bool,
    /// The task holding the whole GPU, if any.
    pub whole: Option<TaskRef>,
    /// Shares of its memory, by task. Never both `whole` and shares.
    #[serde(with = "pairs")]
    pub shares: BTreeMap<TaskRef, u64>,
}

/// A map with struct keys, stored as a list of pairs: JSON (the snapshot and log encoding)
/// only has string keys.
pub(super) mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

impl Gpu {
    pub fn shared_bytes(&self) -> u64 {
        self.shares.values().sum()
    }

    pub fn is_free(&self) -> bool {
        self.whole.is_none() && self.shares.is_empty()
    }
}

/// A reservation on one GPU: the whole of it, or a share of its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuGrant {
    pub index: u32,
    pub whole: bool,
    /// The share's size; for a whole GPU, its memory.
    pub memory_bytes: u64,
}

/// A machine running an agent, as the cluster has agreed it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub capacity: Resources,
    /// The sum of the resources of `allocations`; kept equal to it by every apply.
    pub reserved: Resources,
    pub allocations: BTreeSet<TaskRef>,
    pub status_changed_ms: i64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Some of its `needs` have not succeeded yet.
    Waiting,
    Pending,
    Placed,
    Running,
    Succeeded,
    Failed,
    /// Its node was lost while it was placed or running.
    Lost,
    /// A stage it needs failed, so it will never run.
    Skipped,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Pending => "pending",
            TaskStatus::Placed => "placed",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Lost => "lost",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "waiting" => TaskStatus::Waiting,
            "pending" => TaskStatus::Pending,
            "placed" => TaskStatus::Placed,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "lost" => TaskStatus::Lost,
            "skipped" => TaskStatus::Skipped,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }

    /// No further transition will happen to a task in this status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Lost
                | TaskStatus::Skipped
                | TaskStatus::Cancelled
        )
    }

    /// The task holds a reservation on a node.
    pub fn is_allocated(self) -> bool {
        matches!(self, TaskStatus::Placed | TaskStatus::Running)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One try of a task on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub node: NodeId,
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub message: String,
    /// Every status this attempt went through, with the time it was recorded.
    pub transitions: Vec<(TaskStatus, i64)>,
    /// The GPUs reserved for this attempt.
    #[serde(default)]
    pub gpus: Vec<GpuGrant>,
    /// The image it ran, or for a build the image it pushed, pinned by digest.
    #[serde(default)]
    pub image: Option<String>,
    /// What it published when it succeeded: artifact name → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
}

impl Attempt {
    pub fn time_of(&self, status: TaskStatus) -> Option<i64> {
        self.transitions
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, t)| *t)
    }

    pub fn finished_ms(&self) -> Option<i64> {
        self.transitions
            .iter()
            .find(|(s, _)| s.is_terminal())
            .map(|(_, t)| *t)
    }
}

/// One stage of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub status: TaskStatus,
    /// The number of the current (or last) attempt; 1 for the first try.
    pub attempt: u32,
    pub attempts: Vec<Attempt>,
    /// Attempts that ended in failure, counted against the stage's `retries`.
    pub failures: u32,
    /// Attempts lost with their node, counted against [`MAX_LOST_ATTEMPTS`].
    pub lost: u32,
    pub cancel_requested: bool,
}

/// A task whose node is lost is placed again this many times at most, whatever its
/// `retries` say: losing a machine is not the stage's fault (Buildkite retries agent loss
/// the same way).
pub const MAX_LOST_ATTEMPTS: u32 = 3;

impl Task {
    pub fn new(status: TaskStatus) -> Task {
        Task {
            status,
            attempt: 1,
            attempts: Vec::new(),
            failures: 0,
            lost: 0,
            cancel_requested: false,
        }
    }

    /// The record of the current attempt, once it was placed.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.attempt == self.attempt)
    }

    pub fn current_mut(&mut self) -> Option<&mut Attempt> {
        let attempt = self.attempt;
        self.attempts.last_mut().filter(|a| a.attempt == attempt)
    }
}

/// How an attempt ended: as its agent reported it, or lost with its node.
#[derive(Debug, Clone, Copy)]
pub struct AttemptEnd<'a> {
    /// Succeeded, Failed or Lost.
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub message: &'a str,
    /// The image it ran or pushed, when the agent says.
    pub image: Option<&'a str>,
    /// What it published, when it succeeded.
    pub artifacts: Option<&'a BTreeMap<String, String>>,
    pub at_ms: i64,
}

impl<'a> AttemptEnd<'a> {
    pub fn lost(message: &'a str, at_ms: i64) -> AttemptEnd<'a> {
        AttemptEnd {
            status: TaskStatus::Lost,
            exit_code: None,
            message,
            image: None,
            artifacts: None,
            at_ms,
        }
    }
}

/// What an agent's event did to a task ([`Task::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not for the current attempt on this node, or nothing new: changes nothing.
    Ignored,
    /// Placed → running. `kill_due`: it was cancelled meanwhile, so the kill (which may
    /// have reached the agent before the task started, and been lost) is sent again.
    Started { kill_due: bool },
    /// A running attempt's health checks started or stopped passing.
    Health(bool),
    /// The attempt ended, in this status; its reservation is to be released and what
    /// follows decided by the task's kind.
    Ended(TaskStatus),
}

/// The task lifecycle, the same for a pipeline stage and a service replica: which events
/// count (contract 3), placed → running, and closing an attempt. What follows an ended
/// attempt (the DAG moving on, a retry, a replica's restart) is the caller's.
impl Task {
    /// An event counts only for the current attempt, on the node it was placed on, while
    /// it holds that placement: an old attempt's event, another node's, or a replay of an
    /// end already applied changes nothing. This is what lets agents re-send freely.
    pub fn accepts(&self, node: &str, attempt: u32) -> bool {
        self.attempt == attempt
            && self.status.is_allocated()
            && self.current().is_some_and(|a| a.node == node)
    }

    /// Applies an agent's event: the one transition function for every kind of task.
    pub fn step(&mut self, node: &str, e: &TaskEvent) -> Step {
        if !self.accepts(node, e.attempt) {
            return Step::Ignored;
        }
        match (e.status, self.status) {
            (TaskStatus::Running, TaskStatus::Placed) => {
                self.status = TaskStatus::Running;
                if let Some(a) = self.current_mut() {
                    a.status = TaskStatus::Running;
                    if e.image.is_some() {
                        a.image = e.image.clone();
                    }
                    a.transitions.push((TaskStatus::Running, e.at_ms));
                }
                Step::Started {
                    kill_due: self.cancel_requested,
                }
            }
            (TaskStatus::Running, TaskStatus::Running) => match e.health {
                Some(ok) => Step::Health(ok),
                None => Step::Ignored,
            },
            (TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Lost, _) => {
                self.end_attempt(&AttemptEnd {
                    status: e.status,
                    exit_code: e.exit_code,
                    message: &e.message,
                    image: e.image.as_deref(),
                    artifacts: (!e.artifacts.is_empty()).then_some(&e.artifacts),
                    at_ms: e.at_ms,
                });
                Step::Ended(e.status)
            }
            _ => Step::Ignored,
        }
    }

    /// Closes the current attempt. The task's own status is left to the caller, which
    /// decides what follows.
    pub fn end_attempt(&mut self, end: &AttemptEnd) {
        if let Some(a) = self.current_mut() {
            a.status = end.status;
            a.exit_code = end.exit_code;
            a.message = end.message.to_string();
            if let Some(image) = end.image {
                a.image = Some(image.to_string());
            }
            if let Some(artifacts) = end.artifacts {
                a.artifacts = artifacts.clone();
            }
            a.transitions.push((end.status, end.at_ms));
        }
        match end.status {
            TaskStatus::Lost => self.lost += 1,
            TaskStatus::Failed => self.failures += 1,
            _ => {}
        }
    }

    /// A new attempt, waiting for a placement.
    pub fn retry(&mut self) {
        self.attempt += 1;
        self.status = TaskStatus::Pending;
    }

    /// The kill of the current attempt on its node, if it was placed.
    pub fn kill(&self, task: TaskRef, reason: &str) -> Option<Kill> {
        self.current().map(|a| Kill {
            task,
            attempt: self.attempt,
            node: a.node.clone(),
            reason: reason.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// One execution of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub number: u64,
    pub pipeline: Pipeline,
    pub status: RunStatus,
    pub trigger: String,
    pub request_id: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// One entry per stage, in the pipeline's order.
    pub stages: Vec<StageRun>,
    /// The repository, ref and commit of a git-triggered run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<super::repositories::GitInfo>,
    /// Why it failed before it started, or who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its concurrency group (`repository group`), when its pipeline names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
}

impl Run {
    pub fn id(&self) -> String {
        run_id(self.number)
    }

    /// Every task of the run with its address, stage by stage, shard by shard.
    pub fn tasks(&self) -> impl Iterator<Item = (StageRef, &Task)> {
        let number = self.number;
        self.stages.iter().enumerate().flat_map(move |(s, stage)| {
            stage.shards.iter().enumerate().map(move |(k, t)| {
                let at = StageRef {
                    run: number,
                    stage: s as u32,
                    shard: k as u32,
                };
                (at, t)
            })
        })
    }
}

/// One stage inside a run: its task, or one task per shard, and its test suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    /// One task for an unsharded stage; one per shard, by shard index, otherwise.
    pub shards: Vec<Task>,
    /// Set for a stage with `tests:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<Suite>,
}

impl StageRun {
    /// The stage's status, from its shards' (and its suite's verdict):
    ///
    /// - while any shard has not ended, the most advanced of the open ones (running, then
    ///   placed, pending, waiting);
    /// - once all have ended: cancelled, failed, lost or skipped if any shard ended so, in
    ///   that order; failed if the suite has a test that did not pass; else succeeded.
    pub fn status(&self) -> TaskStatus {
        use TaskStatus::*;
        let any = |s: TaskStatus| self.shards.iter().any(|t| t.status == s);
        for open in [Running, Placed, Pending, Waiting] {
            if any(open) {
                return open;
            }
        }
        for ended in [Cancelled, Failed, Lost, Skipped] {
            if any(ended) {
                return ended;
            }
        }
        match &self.suite {
            Some(suite) if !suite.passed() => Failed,
            _ => Succeeded,
        }
    }

    /// Sharded: more than one task, or a test suite (whose results are shown per shard).
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1 || self.suite.is_some()
    }
}

pub fn run_id(number: u64) -> String {
    format!("run-{number}")
}

/// Whether `id` has the shape of a task id (`run-7/build`, `run-7/test/2`, `svc/model/4`),
/// whether or not the cluster has that task.
pub fn is_task_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["svc", name, slot] => !name.is_empty() && number(slot),
        ["svc", env, name, slot] => !env.is_empty() && !name.is_empty() && number(slot),
        [run, stage] => run.strip_prefix("run-").is_some_and(number) && !stage.is_empty(),
        [run, stage, shard] => {
            run.strip_prefix("run-").is_some_and(number) && !stage.is_empty() && number(shard)
        }
        _ => false,
    }
}

/// Parses `run-7` (or a bare `7`) into a run number.
pub fn parse_run_id(id: &str) -> Option<u64> {
    id.strip_prefix("run-").unwrap_or(id).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_shapes() {
        for id in [
            "run-7/build",
            "run-7/test/2",
            "svc/model/4",
            "svc/staging/model/4",
        ] {
            assert!(is_task_id(id), "{id}");
        }
        for id in [
            "",
            "run-7",
            "7/build",
            "run-x/build",
            "run-7/test/x",
            "svc/model",
            "a/b/c/d",
        ] {
            assert!(!is_task_id(id), "{id}");
        }
    }
}
