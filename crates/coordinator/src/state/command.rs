//! The commands that change the replicated state, and what applying each one answers.
//!
//! The leader fills in everything that is not a pure function of the state: the time
//! (`now_ms`), the scheduling pass's number, the agent's timestamps. Applying a command is
//! then deterministic on every coordinator.

use kiln_api::spec::{Pipeline, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::model::{GpuGrant, NodeId, StageRef, TaskRef, TaskStatus};
use super::repositories::{PushOutcome, PushSource, Repository};
use super::services::{Deploy, ServiceAction};
use super::suite::{Take, TestResult};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// An agent (re)connected with its fingerprint; the node becomes ready.
    RegisterNode {
        node: NodeRegistration,
        now_ms: i64,
    },
    /// The node's heartbeats stopped for longer than the grace period.
    MarkNodeDown {
        node: NodeId,
        now_ms: i64,
    },
    SubmitRun {
        request_id: String,
        trigger: String,
        pipeline: Pipeline,
        /// For a rerun of failed tests: the only test ids each `tests:` stage runs, by stage
        /// name. Empty runs every stage's whole suite.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        only_tests: BTreeMap<String, Vec<String>>,
        now_ms: i64,
    },
    /// Every placement of one scheduling pass, in one entry.
    PlaceBatch {
        pass: u64,
        placements: Vec<Placement>,
        now_ms: i64,
    },
    /// Task events from one agent, in the order it sent them.
    TaskEvents {
        node: NodeId,
        events: Vec<TaskEvent>,
        now_ms: i64,
    },
    CancelRun {
        run: u64,
        now_ms: i64,
    },
    /// A shard of a `tests:` stage asks for its next batch of test ids (`batch` counts its
    /// requests from 1), sending the suite's list when it was told to run `list:`.
    TakeTests {
        task: StageRef,
        attempt: u32,
        batch: u32,
        list: Option<Vec<String>>,
    },
    /// A shard's results for the batch it holds.
    ReportTests {
        task: StageRef,
        attempt: u32,
        batch: u32,
        results: Vec<TestResult>,
        /// The batch's wall time less its tests' times, as the shard measured it.
        #[serde(default)]
        overhead_ms: u64,
    },
    /// A new revision of a service (the service itself on its first deploy).
    Deploy {
        deploy: Box<Deploy>,
        /// Re-sending the same id answers the first deploy (as for runs).
        #[serde(default)]
        request_id: String,
        now_ms: i64,
    },
    /// Back to an earlier revision (`None`: the last known good one); the revision rolled
    /// back from is marked bad, with `reason`.
    Rollback {
        service: u64,
        to: Option<u32>,
        #[serde(default)]
        reason: Option<String>,
        now_ms: i64,
    },
    /// Decisions of the rollout controller or the autoscaler about one service.
    ServiceActions {
        service: u64,
        actions: Vec<ServiceAction>,
        now_ms: i64,
    },
    /// A new environment (`default` exists without one).
    CreateEnvironment {
        name: String,
        approval: bool,
        /// The gateway routes bare service names to this environment from now on.
        default: bool,
        /// Environment variables every replica in it gets.
        #[serde(default)]
        env: BTreeMap<String, String>,
        now_ms: i64,
    },
    /// Deploys into `to` the revision of `service` that is healthy in `from`.
    PromoteRevision {
        service: String,
        from: String,
        to: String,
        force: bool,
        #[serde(default)]
        request_id: String,
        /// Who asked: they may not approve it themselves.
        #[serde(default)]
        by: Option<String>,
        now_ms: i64,
    },
    /// Releases the deploy of `service` held for approval in `environment`.
    Approve {
        environment: String,
        service: String,
        #[serde(default)]
        request_id: String,
        now_ms: i64,
    },
    /// A deploy stage waited past its timeout.
    DeployStageTimedOut {
        task: StageRef,
        now_ms: i64,
    },
    /// `kiln repo add`, with the remote's heads as they were (a baseline: no runs for them).
    AddRepository {
        repository: Box<Repository>,
    },
    RemoveRepository {
        name: String,
    },
    /// A new API token (its hash only).
    CreateToken {
        token: super::access::Token,
    },
    /// Revokes a token by id, or every live token of a name.
    RevokeToken {
        token: String,
        now_ms: i64,
    },
    /// Calls made or refused, for the audit log.
    RecordAudit {
        entries: Vec<super::access::AuditEntry>,
    },
    /// Sets (or replaces) a secret, sealed before it was proposed.
    SetSecret {
        name: String,
        secret: super::secrets::Secret,
    },
    RemoveSecret {
        name: String,
    },
    /// Finished runs past retention leave the state for the archive on disk (written by
    /// the state machine on every coordinator as it applies this).
    ArchiveRuns {
        runs: Vec<u64>,
    },
    /// A new cluster's first command when it is made from a backup: the state it held.
    Restore {
        state: Box<super::ClusterState>,
    },
    /// A poll of the repository's remote ended, failed or not.
    RepositoryPolled {
        name: String,
        error: Option<String>,
        now_ms: i64,
    },
    /// A push seen by webhook, poll or hand (see `repositories.rs`).
    RecordPush {
        repository: String,
        git_ref: String,
        before: String,
        after: String,
        source: PushSource,
        now_ms: i64,
    },
    /// The trigger controller's outcome for a received push.
    StartPush {
        push: u64,
        outcome: PushOutcome,
        now_ms: i64,
    },
    /// The trigger controller could not start a push yet.
    PushFailed {
        push: u64,
        error: String,
    },
}

impl Command {
    /// A short name for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterNode { .. } => "register_node",
            Command::MarkNodeDown { .. } => "mark_node_down",
            Command::SubmitRun { .. } => "submit_run",
            Command::PlaceBatch { .. } => "place_batch",
            Command::TaskEvents { .. } => "task_events",
            Command::CancelRun { .. } => "cancel_run",
            Command::TakeTests { .. } => "take_tests",
            Command::ReportTests { .. } => "report_tests",
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::ServiceActions { .. } => "service_actions",
            Command::CreateEnvironment { .. } => "create_environment",
            Command::PromoteRevision { .. } => "promote_revision",
            Command::Approve { .. } => "approve",
            Command::DeployStageTimedOut { .. } => "deploy_stage_timed_out",
            Command::AddRepository { .. } => "add_repository",
            Command::RemoveRepository { .. } => "remove_repository",
            Command::RepositoryPolled { .. } => "repository_polled",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::RecordAudit { .. } => "record_audit",
            Command::SetSecret { .. } => "set_secret",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::Restore { .. } => "restore",
            Command::ArchiveRuns { .. } => "archive_runs",
            Command::RecordPush { .. } => "record_push",
            Command::StartPush { .. } => "start_push",
            Command::PushFailed { .. } => "push_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub capacity: Resources,
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
}

/// A GPU as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
    pub nvlink_peers: Vec<u32>,
    pub simulated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub task: TaskRef,
    pub attempt: u32,
    pub node: NodeId,
    /// The exact GPUs chosen, for a task that asks for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub task: TaskRef,
    pub attempt: u32,
    /// Running, Succeeded, Failed or Lost.
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub message: String,
    /// When the agent saw it happen.
    pub at_ms: i64,
    /// The image the attempt ran or pushed (Docker driver), pinned by digest.
    #[serde(default)]
    pub image: Option<String>,
    /// A replica's `host:port`, with its running event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A replica's health changed (with status `Running`): passing, or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<bool>,
    /// A replica's metrics `host:port`, with its running event, when apart from `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// What a succeeded task published: artifact name → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
}

/// A command's typed answer, taken out of a [`Response`] (which is handed back when it is
/// another answer).
pub trait Reply: Sized {
    fn from_response(r: Response) -> Result<Self, Response>;
}

/// Declares [`Response`] with one variant per typed answer, and each answer's [`Reply`].
macro_rules! responses {
    ($($(#[$doc:meta])* $variant:ident($ty:ty)),* $(,)?) => {
        /// What applying a command answered: one typed answer per command, or a rejection.
        /// Rejections are ordinary, replicated outcomes (the state did not allow the
        /// command); the proposer turns them into a conflict in one place (`Core::write`).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Response {
            $($(#[$doc])* $variant($ty),)*
            Rejected { reason: String },
            /// For Raft's own entries (blank, membership).
            Empty,
        }

        $(
            impl Reply for $ty {
                fn from_response(r: Response) -> Result<Self, Response> {
                    match r {
                        Response::$variant(v) => Ok(v),
                        other => Err(other),
                    }
                }
            }

            impl From<$ty> for Response {
                fn from(v: $ty) -> Response {
                    Response::$variant(v)
                }
            }
        )*
    };
}

responses!(
    NodeRegistered(NodeRegistered),
    NodeDown(NodeDown),
    Submitted(Submitted),
    Placed(Placed),
    EventsApplied(EventsApplied),
    Cancelled(Cancelled),
    /// The answer to [`Command::TakeTests`].
    Tests(Take),
    TestsReported(TestsReported),
    Deployed(Deployed),
    ServiceChanged(ServiceChanged),
    EnvironmentCreated(EnvironmentCreated),
    RepositoryChanged(RepositoryChanged),
    PushRecorded(PushRecorded),
    PushStarted(PushStarted),
    AccessChanged(AccessChanged),
);

impl Response {
    pub fn rejected(reason: impl Into<String>) -> Response {
        Response::Rejected {
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered;

/// A token was created or revoked, audit entries recorded, or a secret set or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessChanged;

/// A node was marked down; these of its tasks were lost with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDown {
    pub lost: Vec<TaskRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub run: u64,
    /// False when the request id was seen before: `run` is the first submission's.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub accepted: Vec<Placement>,
    pub rejected: Vec<(TaskRef, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsApplied {
    pub applied: u32,
    pub ignored: u32,
    pub kills: Vec<Kill>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub kills: Vec<Kill>,
}

/// How many of a [`Command::ReportTests`]'s results counted (the rest were not held by that
/// shard's attempt and batch, or were sent before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestsReported {
    pub accepted: u32,
}

/// A deploy (or promotion, or approval) applied: the service and its new revision; or held
/// for approval, with neither made yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub service: u64,
    pub revision: u32,
    pub awaiting_approval: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentCreated;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryChanged;

/// A push recorded (`created`), or the one already recorded for the same delivery or the
/// same (repository, ref, commit); `None` for a deletion, which starts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecorded {
    pub push: Option<u64>,
    pub created: bool,
}

/// What a push became: its run (if any), whether this command started it, and the attempts
/// of the runs it superseded to kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStarted {
    pub run: Option<u64>,
    pub created: bool,
    pub kills: Vec<Kill>,
}

/// A rollback or controller decisions applied: replicas to kill, and the actions skipped
/// because the state no longer called for them, with why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceChanged {
    pub kills: Vec<Kill>,
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// A task attempt the leader must tell an agent to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub task: TaskRef,
    pub attempt: u32,
    pub node: NodeId,
    pub reason: String,
}
