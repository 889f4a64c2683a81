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
//! # Where things are
//!
//! - `command.rs`: the commands and their typed replies.
//! - `model.rs`: the records (nodes, runs, tasks, attempts) and the one task lifecycle
//!   (`Task::step`: which events count, placed → running, closing an attempt).
//! - `tasks.rs`: task events and lost tasks applied to the cluster, for every kind of task.
//! - `runs.rs`: submission, and what follows a stage's attempt (the DAG, retries).
//! - `repositories.rs`: watched git remotes, and pushes deduplicated into runs.
//! - `services.rs`, `service_actions.rs`: services, revisions, replicas, and the
//!   controllers' decisions about them.
//! - `suite.rs`, `suite_apply.rs`: a `tests:` stage's queue and its commands.
//! - `retention.rs`: which finished runs move to the archive on disk.
//! - `backup.rs`: the blobs a backup must hold; a restored state put in place.
//! - `access.rs`: API tokens (hashes only) and the audit log; `secrets.rs`: sealed secrets.
//! - `placement.rs`, `fit.rs`, `nodes.rs`: placing a pass, the fit rules, nodes.
//!
//! # What it does not do
//!
//! It does not decide where work goes (that is `scheduler/`), does not talk to agents, and
//! does not know about Raft. Heartbeats and live usage never come here.

pub mod access;
mod backup;
pub mod command;
pub mod deploy_stages;
pub mod environments;
pub mod fit;
pub mod model;
mod nodes;
mod placement;
pub mod repositories;
pub mod retention;
mod runs;
pub mod secrets;
mod service_actions;
pub mod services;
pub mod suite;
mod suite_apply;
mod tasks;

#[cfg(test)]
mod repository_tests;
#[cfg(test)]
mod sharding_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use kiln_api::spec::{Resources, Stage};
use kiln_sharding::history::StageHistory;
use serde::{Deserialize, Serialize};

pub use command::{
    AccessChanged, Cancelled, Command, Deployed, EnvironmentCreated, EventsApplied, GpuDevice,
    Kill, NodeDown, NodeRegistered, NodeRegistration, Placed, Placement, PushRecorded, PushStarted,
    Reply, RepositoryChanged, Response, ServiceChanged, Submitted, TaskEvent, TestsReported,
};
pub use model::{
    Attempt, Gpu, GpuGrant, Node, NodeId, NodeStatus, ReplicaRef, Run, RunStatus, StageRef,
    StageRun, Task, TaskRef, TaskStatus, is_task_id, parse_run_id, run_id,
};
pub use repositories::{GitInfo, Push, PushOutcome, PushSource, PushStatus, Repository};
pub use services::{Service, ServiceAction};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Services by number.
    #[serde(default)]
    pub services: BTreeMap<u64, Service>,
    #[serde(default)]
    pub next_service: u64,
    /// Environments made with `kiln env create` (`default` exists without).
    #[serde(default)]
    pub environments: BTreeMap<String, environments::Environment>,
    /// The environment bare service names route to, when not `default`.
    #[serde(default)]
    pub default_environment: Option<String>,
    /// Deploys, promotions and approvals by client request id, and what each answered:
    /// re-sending one answers it again instead of doing it twice.
    #[serde(default)]
    pub deploy_requests: BTreeMap<String, Deployed>,
    /// What each running deploy stage waits for.
    #[serde(default, with = "model::pairs")]
    pub deploy_waits: BTreeMap<StageRef, deploy_stages::DeployWait>,
    /// Watched git remotes, by name.
    #[serde(default)]
    pub repositories: BTreeMap<String, repositories::Repository>,
    /// Pushes by number: received, started or skipped.
    #[serde(default)]
    pub pushes: BTreeMap<u64, repositories::Push>,
    #[serde(default)]
    pub next_push: u64,
    /// Dedup keys of pushes: `repository ref commit`, `forge delivery-id`, or a manual
    /// trigger's request id.
    #[serde(default)]
    pub push_keys: BTreeMap<String, u64>,
    /// API tokens by id (hashes only).
    #[serde(default)]
    pub tokens: BTreeMap<String, access::Token>,
    /// The newest audit entries, oldest first.
    #[serde(default)]
    pub audit: access::AuditLog,
    #[serde(default)]
    pub audit_seq: u64,
    /// Cluster secrets by name, sealed.
    #[serde(default)]
    pub secrets: BTreeMap<String, secrets::Secret>,
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
            Command::Deploy {
                deploy,
                request_id,
                now_ms,
            } => self.once(request_id, |s| s.deploy(deploy, *now_ms)),
            Command::Rollback {
                service,
                to,
                reason,
                now_ms,
            } => self.rollback(*service, *to, reason.as_deref(), *now_ms),
            Command::ServiceActions {
                service,
                actions,
                now_ms,
            } => self.service_actions(*service, actions, *now_ms),
            Command::CreateEnvironment {
                name,
                approval,
                default,
                env,
                now_ms,
            } => self.create_environment(name, *approval, *default, env, *now_ms),
            Command::PromoteRevision {
                service,
                from,
                to,
                force,
                request_id,
                by,
                now_ms,
            } => self.once(request_id, |s| {
                s.promote(service, from, to, *force, by.as_deref(), *now_ms)
            }),
            Command::Approve {
                environment,
                service,
                request_id,
                now_ms,
            } => self.once(request_id, |s| s.approve(environment, service, *now_ms)),
            Command::DeployStageTimedOut { task, now_ms } => {
                self.deploy_stage_timed_out(*task, *now_ms)
            }
            Command::AddRepository { repository } => self.add_repository(repository),
            Command::RemoveRepository { name } => self.remove_repository(name),
            Command::CreateToken { token } => self.create_token(token),
            Command::RevokeToken { token, now_ms } => self.revoke_token(token, *now_ms),
            Command::RecordAudit { entries } => self.record_audit(entries),
            Command::SetSecret { name, secret } => self.set_secret(name, secret),
            Command::RemoveSecret { name } => self.remove_secret(name),
            Command::Restore { state } => self.restore(state),
            Command::ArchiveRuns { runs } => self.archive_runs(runs),
            Command::RepositoryPolled {
                name,
                error,
                now_ms,
            } => self.repository_polled(name, error.as_deref(), *now_ms),
            Command::RecordPush {
                repository,
                git_ref,
                before,
                after,
                source,
                now_ms,
            } => self.record_push(repository, git_ref, before, after, source, *now_ms),
            Command::StartPush {
                push,
                outcome,
                now_ms,
            } => self.start_push(*push, outcome, *now_ms),
            Command::PushFailed { push, error } => self.push_failed(*push, error),
        }
    }

    /// Applies a deploy-like command once per client request id: a re-sent one (a client
    /// retrying after an answer it lost) gets the first answer again.
    fn once(&mut self, request_id: &str, apply: impl FnOnce(&mut Self) -> Response) -> Response {
        if let Some(done) = self
            .deploy_requests
            .get(request_id)
            .filter(|_| !request_id.is_empty())
        {
            return done.clone().into();
        }
        let answer = apply(self);
        if let (Response::Deployed(d), false) = (&answer, request_id.is_empty()) {
            self.deploy_requests
                .insert(request_id.to_string(), d.clone());
        }
        answer
    }

    pub fn task(&self, task: TaskRef) -> Option<&Task> {
        match task {
            TaskRef::Stage(at) => self
                .runs
                .get(&at.run)?
                .stages
                .get(at.stage as usize)?
                .shards
                .get(at.shard as usize),
            TaskRef::Replica(at) => {
                Some(&self.services.get(&at.service)?.replicas.get(&at.slot)?.task)
            }
        }
    }

    pub fn stage_run(&self, at: StageRef) -> Option<&StageRun> {
        self.runs.get(&at.run)?.stages.get(at.stage as usize)
    }

    /// What the task runs: its stage, or its replica's revision's replica spec.
    pub fn stage(&self, task: TaskRef) -> Option<&Stage> {
        match task {
            TaskRef::Stage(at) => self
                .runs
                .get(&at.run)?
                .pipeline
                .stages
                .get(at.stage as usize),
            TaskRef::Replica(at) => self.replica_stage(at),
        }
    }

    /// What a task reserves on its node.
    pub fn ask(&self, task: TaskRef) -> Resources {
        self.stage(task).map(|s| s.resources).unwrap_or_default()
    }

    /// The task's id as users and agents see it: `run-7/build`, `run-7/test/2` for shard 2
    /// of a sharded stage, `svc/model/4` for replica slot 4 of service `model` in the
    /// `default` environment, `svc/staging/model/4` in `staging`.
    pub fn task_id(&self, task: TaskRef) -> String {
        match task {
            TaskRef::Stage(at) => {
                let stage = match self.stage(task) {
                    Some(stage) => stage.name.clone(),
                    None => format!("#{}", at.stage),
                };
                if self.stage_run(at).is_some_and(StageRun::is_sharded) {
                    format!("{}/{stage}/{}", run_id(at.run), at.shard)
                } else {
                    format!("{}/{stage}", run_id(at.run))
                }
            }
            TaskRef::Replica(at) => match self.services.get(&at.service) {
                Some(s) if s.environment == services::DEFAULT_ENVIRONMENT => {
                    format!("svc/{}/{}", s.name, at.slot)
                }
                Some(s) => format!("svc/{}/{}/{}", s.environment, s.name, at.slot),
                None => format!("svc/#{}/{}", at.service, at.slot),
            },
        }
    }

    /// Parses a task id (see [`ClusterState::task_id`]) back into a [`TaskRef`].
    pub fn parse_task_id(&self, id: &str) -> Option<TaskRef> {
        if let Some(rest) = id.strip_prefix("svc/") {
            let parts: Vec<&str> = rest.split('/').collect();
            let (env, name, slot) = match parts.as_slice() {
                [name, slot] => (services::DEFAULT_ENVIRONMENT, *name, *slot),
                [env, name, slot] => (*env, *name, *slot),
                _ => return None,
            };
            let service = self.service_in(env, name)?;
            let slot: u32 = slot.parse().ok()?;
            service.replicas.contains_key(&slot).then_some(())?;
            return Some(TaskRef::replica(service.number, slot));
        }
        let mut parts = id.splitn(3, '/');
        let first = parts.next()?;
        let run = parse_run_id(first)?;
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
        Some(TaskRef::shard(run, index as u32, shard))
    }

    /// Tasks counted by status, for metrics.
    pub fn tasks_by_status(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for run in self.runs.values() {
            for (_, task) in run.tasks() {
                *counts.entry(task.status.as_str()).or_insert(0) += 1;
            }
        }
        for service in self.services.values() {
            for r in service.replicas.values() {
                *counts.entry(r.task.status.as_str()).or_insert(0) += 1;
            }
        }
        counts
    }
}
