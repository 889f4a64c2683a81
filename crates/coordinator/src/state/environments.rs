//! Environments: the named places services run in (`staging`, `production`), and the
//! delivery between them.
//!
//! A service lives in one environment, and its name is unique there: `model` in staging and
//! `model` in production are two services with their own revisions, replicas, rollouts and
//! last known good revision (`Service::stable`). The environment `default` always exists;
//! it is where a service goes when none is named, and until another is made the default,
//! the one the gateway also routes by the bare service name.
//!
//! - **Approval.** An environment created with `approval` holds every deploy into it
//!   (`Environment::awaiting`) until `approve`: nothing changes in the environment before.
//! - **Promotion** (`promote`) deploys into one environment exactly the revision that is
//!   healthy in another: the same spec, the image pinned by the digest its replicas ran, the
//!   same model digest and commit. It goes through `deploy`, so approval and the refusal of
//!   revisions rolled back from apply to it too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{Deployed, EnvironmentCreated, Response};
use super::services::{DEFAULT_ENVIRONMENT, Deploy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    /// Deploys into it wait for an approval.
    pub approval: bool,
    pub created_ms: i64,
    /// Deploys waiting for approval, by service name (a newer one replaces an older one).
    #[serde(default)]
    pub awaiting: BTreeMap<String, Held>,
    /// Environment variables every replica in it gets, over the revision's own: what makes
    /// one environment's copy of a revision differ from another's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A deploy held for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub deploy: Deploy,
    pub requested_ms: i64,
}

/// The implicit `default` environment: no approval, nothing held.
fn implicit() -> Environment {
    Environment {
        name: DEFAULT_ENVIRONMENT.to_string(),
        approval: false,
        created_ms: 0,
        awaiting: BTreeMap::new(),
        env: BTreeMap::new(),
    }
}

impl ClusterState {
    /// The environment `name`, if it exists (`default` always does).
    pub fn environment(&self, name: &str) -> Option<Environment> {
        match self.environments.get(name) {
            Some(e) => Some(e.clone()),
            None if name == DEFAULT_ENVIRONMENT => Some(implicit()),
            None => None,
        }
    }

    /// Every environment, `default` first.
    pub fn environments(&self) -> Vec<Environment> {
        let mut all = vec![
            self.environment(DEFAULT_ENVIRONMENT)
                .unwrap_or_else(implicit),
        ];
        all.extend(
            self.environments
                .values()
                .filter(|e| e.name != DEFAULT_ENVIRONMENT)
                .cloned(),
        );
        all
    }

    /// The environment the gateway also routes by bare service names.
    pub fn default_environment(&self) -> &str {
        self.default_environment
            .as_deref()
            .unwrap_or(DEFAULT_ENVIRONMENT)
    }

    pub(super) fn create_environment(
        &mut self,
        name: &str,
        approval: bool,
        default: bool,
        env: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Response {
        if self.environments.contains_key(name) {
            return Response::rejected(format!("environment {name:?} exists already"));
        }
        self.environments.insert(
            name.to_string(),
            Environment {
                name: name.to_string(),
                approval,
                created_ms: now_ms,
                awaiting: BTreeMap::new(),
                env: env.clone(),
            },
        );
        if default {
            self.default_environment = Some(name.to_string());
        }
        EnvironmentCreated.into()
    }

    /// Holds a deploy until it is approved.
    pub(super) fn hold(&mut self, d: &Deploy, now_ms: i64) -> Response {
        let Some(env) = self.environments.get_mut(&d.environment) else {
            return Response::rejected(format!("environment {:?} does not exist", d.environment));
        };
        let replaced = env.awaiting.insert(
            d.spec.name.clone(),
            Held {
                deploy: d.clone(),
                requested_ms: now_ms,
            },
        );
        if replaced.is_some() {
            let why = "superseded by a newer deploy awaiting approval";
            self.approvals_ended(&d.environment, &d.spec.name, why, now_ms);
        }
        Deployed {
            service: 0,
            revision: 0,
            awaiting_approval: true,
        }
        .into()
    }

    /// Releases the deploy of `service` held in `environment`.
    pub(super) fn approve(&mut self, environment: &str, service: &str, now_ms: i64) -> Response {
        let held = self
            .environments
            .get_mut(environment)
            .and_then(|e| e.awaiting.remove(service));
        let Some(held) = held else {
            return Response::rejected(format!(
                "nothing awaits approval for {service} in {environment}"
            ));
        };
        let mut d = held.deploy;
        d.approved = true;
        let answer = self.deploy(&d, now_ms);
        match &answer {
            Response::Deployed(Deployed {
                service: number,
                revision,
                ..
            }) => self.deploy_approved(environment, service, *number, *revision),
            // Refused now (the same bytes were rolled back from meanwhile): the stage that
            // waited for this approval ends with the reason.
            Response::Rejected { reason } => {
                self.approvals_ended(environment, service, reason, now_ms)
            }
            _ => {}
        }
        answer
    }

    /// Deploys into `to` the revision of `service` that is healthy in `from`.
    pub(super) fn promote(
        &mut self,
        service: &str,
        from: &str,
        to: &str,
        force: bool,
        by: Option<&str>,
        now_ms: i64,
    ) -> Response {
        if from == to {
            return Response::rejected(format!("{service}: promoting from {from} to itself"));
        }
        let Some(s) = self.service_in(from, service) else {
            return Response::rejected(format!("{service} does not run in {from}"));
        };
        let healthy = s.rollout.is_none() && s.stable == Some(s.target);
        let Some(r) = s.revision(s.target).filter(|_| healthy) else {
            return Response::rejected(format!(
                "{service} is not healthy in {from} (revision {} is not its last healthy one, or a rollout is going on): nothing to promote",
                s.target
            ));
        };
        let mut spec = r.spec.clone();
        if let Some(digest) = &r.image_digest {
            spec.replica.pin_image(digest);
        }
        let d = Deploy {
            spec,
            model_digest: r.model_digest.clone(),
            commit: r.commit.clone(),
            environment: to.to_string(),
            image_digest: r.image_digest.clone(),
            force,
            promoted_from: Some(format!("{from} revision {}", r.number)),
            approved: false,
            run: None,
            git: r.git.clone(),
            deployed_by: by.map(str::to_string),
        };
        self.deploy(&d, now_ms)
    }
}
