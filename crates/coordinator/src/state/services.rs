//! Services: long-running deployments, their immutable revisions and their replicas.
//!
//! A service is a list of [`Revision`]s (every `kiln deploy` adds one; none is ever
//! changed) and a set of [`Replica`]s, each a [`Task`] of one revision, placed by the
//! scheduler like any task and addressed as [`TaskRef::Replica`]. `target` is the revision
//! the service runs or is rolling out to; `stable` the last one that proved healthy.
//!
//! This module only applies decisions. Which replica to start or drain, when a rollout is
//! healthy or has failed, is decided on the leader by the rollout controller
//! (`controllers::rollout::plan`, a pure function of a service and the time) and proposed
//! as [`ServiceAction`]s, which are checked again here (a stale decision is skipped, not
//! applied). What replicas report comes in as task events: running (with the endpoint the
//! agent gave it), healthy or unhealthy, and exits, after which a replica waits out a
//! restart backoff and is started again, unless it was being stopped.
//!
//! A replica that is stopped is first **drained**: it leaves the gateways' endpoint tables
//! at once, and is killed only when the controller has seen the gateways finish its
//! in-flight requests (or a drain timeout passed).

use std::collections::{BTreeMap, VecDeque};

use kiln_api::service::ServiceSpec;
use kiln_api::spec::Stage;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{Deployed, Response, ServiceChanged, TaskEvent};
use super::model::{ReplicaRef, Task, TaskRef, TaskStatus};

/// How many events a service keeps for `kiln services` / `kiln history`.
const MAX_EVENTS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// From 1.
    pub number: u32,
    pub spec: ServiceSpec,
    /// For an image service, the image its replicas run, pinned by digest
    /// (`registry/app@sha256:…`, or a local image's `sha256:…` id), from its first replica.
    pub image_digest: Option<String>,
    /// `sha256:...` of the model artifact, as the CLI read it.
    pub model_digest: Option<String>,
    pub commit: Option<String>,
    pub created_ms: i64,
    /// When a rollout to it completed with every replica healthy.
    pub healthy_ms: Option<i64>,
    /// Why a rollout to it failed.
    pub failed: Option<String>,
    /// It was rolled back from, and why: deploying or promoting the same bytes again needs
    /// `force`.
    #[serde(default)]
    pub bad: Option<String>,
    /// Where it was promoted from (`staging revision 3`), for a promotion.
    #[serde(default)]
    pub promoted_from: Option<String>,
    /// The run whose deploy stage made it.
    #[serde(default)]
    pub run: Option<String>,
    /// The repository, ref, commit, author and title it was built from (a git-triggered
    /// run's deploy, or a promotion of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<super::repositories::GitInfo>,
}

impl Revision {
    /// Whether `d` would run the same thing again: the same spec (command, env, image
    /// reference...), the same image by digest when both know it, and the same model.
    fn same_bytes(&self, d: &Deploy) -> bool {
        let image = match (&self.image_digest, &d.image_digest) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.spec == d.spec && image && self.model_digest == d.model_digest
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub revision: u32,
    pub task: Task,
    /// `host:port` where it serves, once running.
    pub endpoint: Option<String>,
    /// `host:port` where it serves Prometheus metrics, when apart from `endpoint`.
    #[serde(default)]
    pub metrics_endpoint: Option<String>,
    /// Since when its health checks pass; `None` while they do not (or before the first).
    pub healthy_since: Option<i64>,
    /// Since when it is being drained (out of the endpoint tables, not yet killed).
    pub draining_since: Option<i64>,
    /// The kill was sent.
    pub stopping: bool,
    /// How often it exited and was started again.
    pub restarts: u32,
    /// When a replica that exited may start again.
    pub restart_after_ms: Option<i64>,
}

impl Replica {
    /// In service: running, passing its checks, not being drained.
    pub fn serving(&self) -> bool {
        self.task.status == TaskStatus::Running
            && self.healthy_since.is_some()
            && self.draining_since.is_none()
    }

    /// Counts toward the service: not being drained.
    pub fn live(&self) -> bool {
        self.draining_since.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutKind {
    /// `kiln deploy`: canaries first if the spec asks, then a rolling update.
    Deploy,
    /// `kiln rollback`: a revision that proved healthy, all at once, no canaries.
    Rollback,
    /// `auto_revert` after a failed rollout: like a rollback.
    Revert,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub from: Option<u32>,
    pub to: u32,
    pub kind: RolloutKind,
    pub started_ms: i64,
    /// The canaries were promoted (or there are none): the rolling update may proceed.
    pub promoted: bool,
    /// It failed without `auto_revert`: nothing more happens until a deploy or rollback.
    #[serde(default)]
    pub halted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub number: u64,
    pub name: String,
    /// The environment it lives in; a name is unique within one.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Revision `n` is `revisions[n - 1]`.
    pub revisions: Vec<Revision>,
    pub target: u32,
    pub stable: Option<u32>,
    /// How many replicas are wanted.
    pub desired: u32,
    pub replicas: BTreeMap<u32, Replica>,
    pub next_slot: u32,
    pub rollout: Option<Rollout>,
    /// What happened, newest last, bounded.
    pub events: VecDeque<(i64, String)>,
}

impl Service {
    pub fn revision(&self, n: u32) -> Option<&Revision> {
        n.checked_sub(1)
            .and_then(|i| self.revisions.get(i as usize))
    }

    /// The last known good revision: the newest that proved healthy, other than the one it
    /// runs (or rolls out to), and not itself rolled back from.
    pub fn last_known_good(&self) -> Option<u32> {
        self.revisions
            .iter()
            .rev()
            .find(|r| r.number != self.target && r.healthy_ms.is_some() && r.bad.is_none())
            .map(|r| r.number)
    }

    /// How gateways and traffic reports name it: `NAME.ENVIRONMENT`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.environment)
    }

    pub fn spec(&self) -> &ServiceSpec {
        &self.revision(self.target).expect("target exists").spec
    }

    pub(super) fn note(&mut self, at_ms: i64, text: String) {
        self.events.push_back((at_ms, text));
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

/// One decision of the rollout controller (or the autoscaler) about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceAction {
    /// A new replica of this revision.
    Start { revision: u32 },
    /// Take this replica out of the endpoint tables.
    Drain { slot: u32 },
    /// Kill this drained replica.
    Stop { slot: u32 },
    /// Start again a replica whose restart backoff has passed.
    Restart { slot: u32 },
    /// The rollout to this revision completed: every replica healthy.
    Healthy { revision: u32 },
    /// The rollout failed; go back to `revert_to` if set.
    Failed {
        revision: u32,
        reason: String,
        revert_to: Option<u32>,
    },
    /// The canaries proved healthy: roll on.
    Promote,
    /// The replica count changes (`kiln scale`, the autoscaler). The autoscaler's is
    /// skipped if a rollout started since it looked (`unless_rolling`).
    Scale {
        replicas: u32,
        reason: String,
        #[serde(default)]
        unless_rolling: bool,
    },
}

/// How long a replica that exited waits before it starts again: 500 ms, doubling, at most
/// 30 s (Nomad's restart delay, Kubernetes' crash-loop backoff).
pub fn restart_backoff_ms(restarts: u32) -> i64 {
    (500i64 << restarts.min(6)).min(30_000)
}

impl ClusterState {
    /// The service `name` in `environment`.
    pub fn service_in(&self, environment: &str, name: &str) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.name == name && s.environment == environment)
    }

    /// A new revision of a service (created on its first deploy) in its environment, and a
    /// rollout to it. Into an environment that requires approval it is held until approved
    /// (`approve`); the same bytes as a revision rolled back from are refused without
    /// `force`.
    pub(super) fn deploy(&mut self, d: &Deploy, now_ms: i64) -> Response {
        let Some(env) = self.environment(&d.environment) else {
            return rejected(&format!("environment {:?} does not exist", d.environment));
        };
        let existing = self.service_in(&d.environment, &d.spec.name);
        if !d.force
            && let Some(bad) = existing.and_then(|s| {
                s.revisions
                    .iter()
                    .rev()
                    .find(|r| r.bad.is_some() && r.same_bytes(d))
            })
        {
            return rejected(&format!(
                "{} revision {} in {} was rolled back ({}): deploy the same image and model again with --force",
                d.spec.name,
                bad.number,
                d.environment,
                bad.bad.as_deref().unwrap_or("")
            ));
        }
        if env.approval && !d.approved {
            return self.hold(d, now_ms);
        }
        let number = match existing {
            Some(s) => s.number,
            None => {
                let number = self.next_service.max(1);
                self.next_service = number + 1;
                self.services.insert(
                    number,
                    Service {
                        number,
                        name: d.spec.name.clone(),
                        environment: d.environment.clone(),
                        revisions: Vec::new(),
                        target: 0,
                        stable: None,
                        desired: d.spec.replicas,
                        replicas: BTreeMap::new(),
                        next_slot: 0,
                        rollout: None,
                        events: VecDeque::new(),
                    },
                );
                number
            }
        };
        let service = self.services.get_mut(&number).expect("inserted above");
        let revision = service.revisions.len() as u32 + 1;
        service.revisions.push(Revision {
            number: revision,
            spec: d.spec.clone(),
            image_digest: d.image_digest.clone(),
            model_digest: d.model_digest.clone(),
            commit: d.commit.clone(),
            created_ms: now_ms,
            healthy_ms: None,
            failed: None,
            bad: None,
            promoted_from: d.promoted_from.clone(),
            run: d.run.clone(),
            git: d.git.clone(),
        });
        service.desired = match &d.spec.autoscale {
            Some(a) if revision > 1 => service.desired.clamp(a.min, a.max),
            _ => d.spec.replicas,
        };
        let from = (service.target > 0).then_some(service.target);
        service.target = revision;
        service.rollout = Some(Rollout {
            from,
            to: revision,
            kind: RolloutKind::Deploy,
            started_ms: now_ms,
            promoted: d.spec.update.canary == 0 || from.is_none(),
            halted: false,
        });
        let how = match &d.promoted_from {
            Some(from) => format!("promoted from {from}"),
            None => "deployed".to_string(),
        };
        service.note(now_ms, format!("revision {revision} {how}"));
        let why = format!("superseded by revision {revision}");
        self.rollouts_overtaken(number, revision, &why, now_ms);
        Deployed {
            service: number,
            revision,
            awaiting_approval: false,
        }
        .into()
    }

    /// Puts an earlier revision back at once: `to`, or the last known good one (the newest
    /// that proved healthy, other than the one running, and not itself rolled back from).
    /// The revision rolled back from is marked bad, with `reason`.
    pub(super) fn rollback(
        &mut self,
        service: u64,
        to: Option<u32>,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Response {
        let Some(s) = self.services.get_mut(&service) else {
            return rejected("service not found");
        };
        let to = match to {
            Some(n) if s.revision(n).is_none() => {
                return rejected(&format!(
                    "{} has no revision {n} (revisions 1 to {})",
                    s.name,
                    s.revisions.len()
                ));
            }
            Some(n) => n,
            None => match s.last_known_good() {
                Some(n) => n,
                None => {
                    return rejected(&format!(
                        "{} has no earlier healthy revision to roll back to",
                        s.name
                    ));
                }
            },
        };
        if to == s.target && s.rollout.is_none() {
            return rejected(&format!("{} already runs revision {to}", s.name));
        }
        let from = s.target;
        if from != to
            && let Some(r) = s.revisions.get_mut(from as usize - 1)
        {
            r.bad = Some(reason.unwrap_or("rolled back").to_string());
        }
        s.target = to;
        s.rollout = Some(Rollout {
            from: Some(from),
            to,
            kind: RolloutKind::Rollback,
            started_ms: now_ms,
            promoted: true,
            halted: false,
        });
        let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
        s.note(now_ms, format!("rolled back to revision {to}{why}"));
        let why = format!("rolled back to revision {to}{why}");
        self.rollouts_overtaken(service, to, &why, now_ms);
        ServiceChanged::default().into()
    }

    /// A replica started (see `tasks.rs`): where it serves, and, for an image replica, the
    /// image it runs pinned by digest, which its revision keeps from the first replica on
    /// (a rollback or promotion then names those exact bytes).
    pub(super) fn replica_started(
        &mut self,
        at: ReplicaRef,
        endpoint: Option<String>,
        metrics_endpoint: Option<String>,
        image: Option<&str>,
    ) {
        let Some(s) = self.services.get_mut(&at.service) else {
            return;
        };
        let Some(r) = s.replicas.get_mut(&at.slot) else {
            return;
        };
        r.endpoint = endpoint;
        r.metrics_endpoint = metrics_endpoint;
        let revision = r.revision;
        if let (Some(image), Some(rev)) = (image, s.revisions.get_mut(revision as usize - 1)) {
            rev.image_digest.get_or_insert_with(|| image.to_string());
        }
    }

    /// A running replica's health checks started or stopped passing.
    /// Times are the leader's (`now_ms`), which the rollout controller compares them with.
    pub(super) fn replica_health(
        &mut self,
        at: ReplicaRef,
        ok: bool,
        e: &TaskEvent,
        now_ms: i64,
    ) -> bool {
        let Some(r) = self.replica_mut(at) else {
            return false;
        };
        r.healthy_since = ok.then(|| r.healthy_since.unwrap_or(now_ms));
        if e.endpoint.is_some() {
            r.endpoint = e.endpoint.clone();
        }
        true
    }

    /// A replica's attempt ended (see `tasks.rs`): a stopped replica goes; a lost one is
    /// placed again at once; one that exited, even cleanly, has failed as a service and
    /// waits out its restart backoff.
    pub(super) fn replica_attempt_ended(
        &mut self,
        at: ReplicaRef,
        status: TaskStatus,
        now_ms: i64,
    ) {
        let Some(s) = self.services.get_mut(&at.service) else {
            return;
        };
        let Some(r) = s.replicas.get_mut(&at.slot) else {
            return;
        };
        r.healthy_since = None;
        r.endpoint = None;
        r.metrics_endpoint = None;
        if r.draining_since.is_some() {
            s.replicas.remove(&at.slot);
            return;
        }
        if status == TaskStatus::Lost {
            r.task.retry();
            self.pending.insert(TaskRef::Replica(at));
            return;
        }
        if status == TaskStatus::Succeeded {
            r.task.failures += 1;
        }
        let message = r
            .task
            .current()
            .map(|a| a.message.clone())
            .unwrap_or_default();
        r.task.attempt += 1;
        r.task.status = TaskStatus::Waiting;
        r.restarts += 1;
        r.restart_after_ms = Some(now_ms + restart_backoff_ms(r.restarts - 1));
        s.note(
            now_ms,
            format!("replica {} exited ({message}); restarting", at.slot),
        );
    }

    fn replica_mut(&mut self, at: ReplicaRef) -> Option<&mut Replica> {
        self.services
            .get_mut(&at.service)?
            .replicas
            .get_mut(&at.slot)
    }

    /// What a replica runs: its revision's replica spec.
    pub fn replica_stage(&self, at: ReplicaRef) -> Option<&Stage> {
        let s = self.services.get(&at.service)?;
        let r = s.replicas.get(&at.slot)?;
        Some(&s.revision(r.revision)?.spec.replica)
    }
}

pub(super) fn new_replica(revision: u32, status: TaskStatus) -> Replica {
    Replica {
        revision,
        task: Task::new(status),
        endpoint: None,
        metrics_endpoint: None,
        healthy_since: None,
        draining_since: None,
        stopping: false,
        restarts: 0,
        restart_after_ms: None,
    }
}

fn rejected(reason: &str) -> Response {
    Response::Rejected {
        reason: reason.to_string(),
    }
}

/// A deploy, as proposed: the checked spec and what the CLI recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub spec: ServiceSpec,
    pub model_digest: Option<String>,
    pub commit: Option<String>,
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The image pinned by digest, when known before any replica runs (a promotion).
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Deploy even the same bytes as a revision that was rolled back from.
    #[serde(default)]
    pub force: bool,
    /// For a promotion: from where (`staging revision 3`).
    #[serde(default)]
    pub promoted_from: Option<String>,
    /// Approved already (an approval releasing a held deploy).
    #[serde(default)]
    pub approved: bool,
    /// The run whose deploy stage deploys it.
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<super::repositories::GitInfo>,
    /// The principal who asked for it (`token/alice`): not the one who may approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_by: Option<String>,
}

impl Deploy {
    /// A deploy of `spec` into `environment`, with nothing else known.
    pub fn new(spec: ServiceSpec, environment: &str) -> Deploy {
        Deploy {
            spec,
            model_digest: None,
            commit: None,
            environment: environment.to_string(),
            image_digest: None,
            force: false,
            promoted_from: None,
            approved: false,
            run: None,
            git: None,
            deployed_by: None,
        }
    }
}

/// The environment a service lives in when none is named.
pub const DEFAULT_ENVIRONMENT: &str = "default";

fn default_environment() -> String {
    DEFAULT_ENVIRONMENT.to_string()
}
