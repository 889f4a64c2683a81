//! Deploy stages: a pipeline stage with `deploy:` runs on no node. When its needs have
//! succeeded, the state machine itself deploys (or promotes) the service, in the same apply:
//! the revision records the run and the image a stage it needs built. The stage then waits
//! for what the rollout controller decides about that revision:
//!
//! - the rollout completes healthy: the stage succeeds;
//! - it fails (and with `auto_revert` goes back to the last healthy revision): the stage
//!   fails with the reason;
//! - a later deploy supersedes it, or someone rolls the service back: the stage fails,
//!   saying so;
//! - in an environment that requires approval it waits, "awaiting approval", until
//!   `kiln approve`, and then for the rollout;
//! - the run is cancelled: a rollout still going is reverted to the revision it started
//!   from, a held deploy is dropped, and the stage ends cancelled.
//!
//! What a stage waits for is [`DeployWait`], in `ClusterState::deploy_waits`.

use kiln_api::spec::{DeployStage, ImageRef};
use kiln_api::validate::parse_service;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{Deployed, Response, ServiceChanged};
use super::model::{Attempt, AttemptEnd, RunStatus, StageRef, TaskStatus};
use super::services::Deploy;

/// The node name a deploy stage's attempt records: the coordinators ran it.
pub const COORDINATOR: &str = "(coordinator)";

/// What a running deploy stage waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployWait {
    /// `kiln approve` of the deploy held for `service` in `environment`.
    Approval {
        environment: String,
        service: String,
    },
    /// The rollout of `service` to `revision`.
    Rollout { service: u64, revision: u32 },
}

impl ClusterState {
    /// Deploys for a deploy stage whose needs have all succeeded.
    pub(super) fn start_deploy_stage(&mut self, at: StageRef, now_ms: i64) {
        let Some(run) = self.runs.get_mut(&at.run) else {
            return;
        };
        if run.status == RunStatus::Pending {
            run.status = RunStatus::Running;
        }
        let run_id = run.id();
        let stage = &run.pipeline.stages[at.stage as usize];
        let Some(deploy) = stage.deploy.clone() else {
            return;
        };
        let task = &mut run.stages[at.stage as usize].shards[at.shard as usize];
        task.status = TaskStatus::Running;
        task.attempts.push(Attempt {
            attempt: task.attempt,
            node: COORDINATOR.to_string(),
            status: TaskStatus::Running,
            exit_code: None,
            message: String::new(),
            transitions: vec![(TaskStatus::Placed, now_ms), (TaskStatus::Running, now_ms)],
            gpus: Vec::new(),
            image: None,
            artifacts: Default::default(),
        });
        let (answer, environment, name) = match deploy {
            DeployStage::Service {
                file,
                yaml,
                environment,
                image,
                model,
            } => {
                let model_digest = match &model {
                    None => None,
                    Some(m) => match self.artifact(at.run, &m.stage, &m.name) {
                        Some(digest) => Some(digest),
                        None => {
                            let reason = format!(
                                "model: stage {:?} published no artifact named {:?}",
                                m.stage, m.name
                            );
                            return self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms);
                        }
                    },
                };
                let mut spec = match parse_service(&file, &yaml) {
                    Ok(spec) => spec,
                    Err(e) => {
                        return self.end_deploy_stage(
                            at,
                            TaskStatus::Failed,
                            &e.to_string(),
                            now_ms,
                        );
                    }
                };
                let pinned = match image {
                    Some(ImageRef::Built { stage }) => match self.built_image(at.run, &stage) {
                        Some(image) => Some(image),
                        None => {
                            let reason = format!("image: stage {stage:?} recorded no image");
                            return self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms);
                        }
                    },
                    Some(ImageRef::Named(image)) => Some(image),
                    None => None,
                };
                if let Some(image) = &pinned {
                    spec.replica.pin_image(image);
                }
                // Unnamed: where the run's branch deploys, else the default environment.
                let environment = environment
                    .or_else(|| self.branch_environment(at.run))
                    .unwrap_or_else(|| self.default_environment().to_string());
                let name = spec.name.clone();
                let git = self.runs.get(&at.run).and_then(|r| r.git.clone());
                let d = Deploy {
                    image_digest: pinned.filter(|i| i.contains("@sha256:")),
                    model_digest,
                    run: Some(run_id),
                    commit: git.as_ref().map(|g| g.commit.clone()),
                    git,
                    ..Deploy::new(spec, &environment)
                };
                (self.deploy(&d, now_ms), environment, name)
            }
            DeployStage::Promote {
                service,
                from,
                environment,
            } => {
                let answer = self.promote(&service, &from, &environment, false, None, now_ms);
                (answer, environment, service)
            }
        };
        match answer {
            Response::Deployed(Deployed {
                awaiting_approval: true,
                ..
            }) => {
                let message = format!("awaiting approval in {environment}");
                self.note_deploy_stage(at, &message);
                self.deploy_waits.insert(
                    at,
                    DeployWait::Approval {
                        environment,
                        service: name,
                    },
                );
            }
            Response::Deployed(Deployed {
                service, revision, ..
            }) => self.wait_for_rollout(at, &name, &environment, service, revision),
            Response::Rejected { reason } => {
                self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms)
            }
            other => {
                let reason = format!("unexpected answer to a deploy: {other:?}");
                self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms);
            }
        }
    }

    fn wait_for_rollout(
        &mut self,
        at: StageRef,
        name: &str,
        env: &str,
        service: u64,
        revision: u32,
    ) {
        let message = format!("rolling out {name} revision {revision} in {env}");
        self.note_deploy_stage(at, &message);
        self.deploy_waits
            .insert(at, DeployWait::Rollout { service, revision });
    }

    /// A deploy held for approval was approved: its stage waits for the rollout now.
    pub(super) fn deploy_approved(
        &mut self,
        environment: &str,
        name: &str,
        service: u64,
        revision: u32,
    ) {
        let waiting = self.deploy_waits.iter().find_map(|(at, w)| match w {
            DeployWait::Approval {
                environment: e,
                service: s,
            } if e == environment && s == name => Some(*at),
            _ => None,
        });
        if let Some(at) = waiting {
            self.wait_for_rollout(at, name, environment, service, revision);
        }
    }

    /// The stages waiting for the approval of `name` in `environment` fail: `why`.
    pub(super) fn approvals_ended(
        &mut self,
        environment: &str,
        name: &str,
        why: &str,
        now_ms: i64,
    ) {
        let waiting: Vec<StageRef> = self
            .deploy_waits
            .iter()
            .filter(|(_, w)| matches!(w, DeployWait::Approval { environment: e, service: s } if e == environment && s == name))
            .map(|(at, _)| *at)
            .collect();
        for at in waiting {
            self.end_deploy_stage(at, TaskStatus::Failed, why, now_ms);
        }
    }

    /// The rollout of `service` to `revision` ended (`Ok`: healthy; `Err`: why not), or
    /// the revision will not be rolled out any more: the stages waiting for it end.
    pub(super) fn rollout_ended(
        &mut self,
        service: u64,
        revision: u32,
        outcome: Result<(), String>,
        now_ms: i64,
    ) {
        let ended: Vec<StageRef> = self
            .deploy_waits
            .iter()
            .filter(|(_, w)| matches!(w, DeployWait::Rollout { service: s, revision: r } if *s == service && *r == revision))
            .map(|(at, _)| *at)
            .collect();
        for at in ended {
            match &outcome {
                Ok(()) => {
                    let message = format!("revision {revision} healthy");
                    self.end_deploy_stage(at, TaskStatus::Succeeded, &message, now_ms);
                }
                Err(reason) => self.end_deploy_stage(at, TaskStatus::Failed, reason, now_ms),
            }
        }
    }

    /// The stages waiting for other revisions of `service` than `revision` fail: `why`.
    pub(super) fn rollouts_overtaken(
        &mut self,
        service: u64,
        revision: u32,
        why: &str,
        now_ms: i64,
    ) {
        let overtaken: Vec<(u32, StageRef)> = self
            .deploy_waits
            .iter()
            .filter_map(|(at, w)| match w {
                DeployWait::Rollout {
                    service: s,
                    revision: r,
                } if *s == service && *r != revision => Some((*r, *at)),
                _ => None,
            })
            .collect();
        for (r, at) in overtaken {
            let reason = format!("revision {r}: {why}");
            self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms);
        }
    }

    /// Cancels a running deploy stage (its run was cancelled).
    pub(super) fn cancel_deploy_stage(&mut self, at: StageRef, now_ms: i64) {
        let reason = format!("{} cancelled", super::run_id(at.run));
        self.abandon_deploy_stage(at, &reason, now_ms);
        self.end_deploy_stage(at, TaskStatus::Cancelled, "run cancelled", now_ms);
    }

    /// The running deploy stages that have waited longer than their stage's timeout (for an
    /// approval, or a rollout), as of `now_ms`.
    pub fn overdue_deploy_stages(&self, now_ms: i64) -> Vec<StageRef> {
        self.deploy_waits
            .keys()
            .filter(|at| {
                let Some(run) = self.runs.get(&at.run) else {
                    return false;
                };
                let timeout = run.pipeline.stages[at.stage as usize].timeout_ms as i64;
                let started = run.stages[at.stage as usize].shards[at.shard as usize]
                    .current()
                    .and_then(|a| a.time_of(TaskStatus::Running));
                started.is_some_and(|t| now_ms.saturating_sub(t) > timeout)
            })
            .copied()
            .collect()
    }

    /// A deploy stage waited past its timeout: it fails, and its deploy is abandoned as a
    /// cancelled one is. Does nothing to a stage that is no longer overdue.
    pub(super) fn deploy_stage_timed_out(&mut self, at: StageRef, now_ms: i64) -> Response {
        if !self.overdue_deploy_stages(now_ms).contains(&at) {
            return ServiceChanged::default().into();
        }
        let waited = match self.deploy_waits.get(&at) {
            Some(DeployWait::Approval { environment, .. }) => {
                format!("awaiting approval in {environment}")
            }
            _ => "waiting for the rollout".to_string(),
        };
        let timeout = self
            .runs
            .get(&at.run)
            .map_or(0, |r| r.pipeline.stages[at.stage as usize].timeout_ms);
        let reason = format!("timed out after {} s {waited}", timeout / 1000);
        self.abandon_deploy_stage(at, &reason, now_ms);
        self.end_deploy_stage(at, TaskStatus::Failed, &reason, now_ms);
        ServiceChanged::default().into()
    }

    /// What a deploy stage that stops waiting leaves behind goes: a rollout it started that
    /// is still going goes back to where it started from (marking its revision bad with
    /// `reason`); a deploy it holds for approval is dropped.
    fn abandon_deploy_stage(&mut self, at: StageRef, reason: &str, now_ms: i64) {
        match self.deploy_waits.get(&at).cloned() {
            Some(DeployWait::Rollout { service, revision }) => {
                let from = self
                    .services
                    .get(&service)
                    .and_then(|s| s.rollout.as_ref())
                    .filter(|r| r.to == revision)
                    .and_then(|r| r.from);
                if let Some(from) = from {
                    self.deploy_waits.remove(&at);
                    self.rollback(service, Some(from), Some(reason), now_ms);
                }
            }
            Some(DeployWait::Approval {
                environment,
                service,
            }) => {
                // Only this run's own deploy: a newer one held since is someone else's.
                let run = super::run_id(at.run);
                if let Some(env) = self.environments.get_mut(&environment)
                    && env
                        .awaiting
                        .get(&service)
                        .is_some_and(|h| h.deploy.run.as_deref() == Some(run.as_str()))
                {
                    env.awaiting.remove(&service);
                }
            }
            None => {}
        }
    }

    fn note_deploy_stage(&mut self, at: StageRef, message: &str) {
        if let Some(a) = self.task_mut(at.into()).and_then(|t| t.current_mut()) {
            a.message = message.to_string();
        }
    }

    /// Ends a deploy stage's attempt; a deploy is not retried.
    fn end_deploy_stage(&mut self, at: StageRef, status: TaskStatus, message: &str, now_ms: i64) {
        self.deploy_waits.remove(&at);
        let Some(t) = self.task_mut(at.into()) else {
            return;
        };
        if t.status.is_terminal() {
            return;
        }
        t.end_attempt(&AttemptEnd {
            status,
            exit_code: None,
            message,
            image: None,
            artifacts: None,
            at_ms: now_ms,
        });
        t.status = status;
        self.advance(at.run, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use kiln_api::validate::parse_pipeline;

    use super::*;
    use crate::state::services::ServiceAction;
    use crate::state::{Command, RunStatus};

    const SERVICE: &str = "name: web\ncommand: ./serve\nreplicas: 1\n";

    /// `yaml` checked, with `service.yaml` sent along for its deploy stages.
    fn pipeline(yaml: &str) -> kiln_api::spec::Pipeline {
        let mut pipeline = parse_pipeline("p.yaml", yaml).expect("valid");
        for stage in &mut pipeline.stages {
            if let Some(DeployStage::Service { yaml, .. }) = &mut stage.deploy {
                *yaml = SERVICE.to_string();
            }
        }
        pipeline
    }

    fn submit(s: &mut ClusterState, request_id: &str, yaml: &str, now_ms: i64) {
        s.apply(&Command::SubmitRun {
            request_id: request_id.into(),
            trigger: "manual".into(),
            pipeline: pipeline(yaml),
            only_tests: Default::default(),
            now_ms,
        });
    }

    /// A run of `yaml`, submitted.
    fn submitted(yaml: &str) -> ClusterState {
        let mut s = ClusterState::default();
        submit(&mut s, "", yaml, 1);
        s
    }

    /// A cluster with the environment `prod`, which requires approval.
    fn with_approval() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateEnvironment {
            name: "prod".into(),
            approval: true,
            default: false,
            env: Default::default(),
            now_ms: 0,
        });
        s
    }

    fn stage_status(s: &ClusterState, stage: u32) -> TaskStatus {
        s.runs[&1].stages[stage as usize].status()
    }

    fn healthy(s: &mut ClusterState, revision: u32) {
        s.apply(&Command::ServiceActions {
            service: 1,
            actions: vec![ServiceAction::Healthy { revision }],
            now_ms: 5,
        });
    }

    #[test]
    fn a_deploy_stage_deploys_at_once_and_ends_with_its_rollout() {
        let mut s =
            submitted("name: p\nstages:\n  - name: ship\n    deploy: { service: service.yaml }\n");
        assert_eq!(stage_status(&s, 0), TaskStatus::Running);
        let web = s.service_in("default", "web").expect("deployed");
        assert_eq!(web.revisions[0].run.as_deref(), Some("run-1"));
        assert!(s.pending.is_empty(), "no node runs a deploy stage");
        healthy(&mut s, 1);
        assert_eq!(stage_status(&s, 0), TaskStatus::Succeeded);
        assert_eq!(s.runs[&1].status, RunStatus::Succeeded);
        assert!(s.deploy_waits.is_empty());
    }

    #[test]
    fn a_later_deploy_overtakes_one_still_rolling_out() {
        let mut s = submitted(
            "name: p\nstages:\n  - name: one\n    deploy: { service: service.yaml }\n  - name: two\n    deploy: { service: service.yaml }\n",
        );
        assert_eq!(stage_status(&s, 0), TaskStatus::Failed, "superseded");
        let why = &s.runs[&1].stages[0].shards[0].attempts[0].message;
        assert_eq!(why, "revision 1: superseded by revision 2");
        healthy(&mut s, 2);
        assert_eq!(stage_status(&s, 1), TaskStatus::Succeeded);
        assert_eq!(s.runs[&1].status, RunStatus::Failed);
    }

    #[test]
    fn a_deploy_into_an_unknown_environment_fails_its_stage_with_the_reason() {
        let s = submitted(
            "name: p\nstages:\n  - name: ship\n    deploy: { service: service.yaml, environment: nope }\n",
        );
        assert_eq!(stage_status(&s, 0), TaskStatus::Failed);
        let why = &s.runs[&1].stages[0].shards[0].attempts[0].message;
        assert_eq!(why, "environment \"nope\" does not exist");
        assert!(s.services.is_empty(), "nothing deployed");
    }

    #[test]
    fn a_deploy_stage_waiting_past_its_timeout_fails_and_drops_its_held_deploy() {
        let mut s = with_approval();
        let yaml = "name: p\nstages:\n  - name: ship\n    timeout: 1m\n    deploy: { service: service.yaml, environment: prod }\n";
        submit(&mut s, "", yaml, 1_000);
        assert_eq!(
            stage_status(&s, 0),
            TaskStatus::Running,
            "awaiting approval"
        );
        assert!(s.overdue_deploy_stages(61_000).is_empty(), "not yet");
        let at = StageRef {
            run: 1,
            stage: 0,
            shard: 0,
        };
        assert_eq!(s.overdue_deploy_stages(61_001), vec![at]);
        s.apply(&Command::DeployStageTimedOut {
            task: at,
            now_ms: 61_001,
        });
        assert_eq!(stage_status(&s, 0), TaskStatus::Failed);
        let why = &s.runs[&1].stages[0].shards[0].attempts[0].message;
        assert_eq!(why, "timed out after 60 s awaiting approval in prod");
        assert!(
            s.environments["prod"].awaiting.is_empty(),
            "the held deploy is dropped"
        );
        assert!(s.deploy_waits.is_empty());
    }

    #[test]
    fn a_newer_deploy_awaiting_approval_supersedes_the_stage_waiting_on_an_older_one() {
        let mut s = with_approval();
        let yaml = "name: p\nstages:\n  - name: ship\n    deploy: { service: service.yaml, environment: prod }\n";
        submit(&mut s, "a", yaml, 1);
        submit(&mut s, "b", yaml, 2);
        let first = &s.runs[&1].stages[0];
        assert_eq!(first.status(), TaskStatus::Failed);
        assert_eq!(
            first.shards[0].attempts[0].message,
            "superseded by a newer deploy awaiting approval"
        );
        s.apply(&Command::Approve {
            environment: "prod".into(),
            service: "web".into(),
            request_id: String::new(),
            now_ms: 3,
        });
        let web = s.service_in("prod", "web").expect("deployed on approval");
        assert_eq!(web.revisions[0].run.as_deref(), Some("run-2"));
        healthy(&mut s, 1);
        assert_eq!(s.runs[&2].stages[0].status(), TaskStatus::Succeeded);
        assert!(s.deploy_waits.is_empty());
    }
}
