//! The service half of the client API: deploy, list and inspect, roll back, scale,
//! promote canaries; environments, promotion between them, approval. Each handler checks
//! what it can against the applied state (so errors name the service, environment and
//! revision), then proposes one command; the state machine checks again. An empty
//! environment in a request is the default environment.

use kiln_api::pb;
use kiln_api::validate::parse_service;

use crate::blobs::BlobStore;
use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::environments::Environment;
use crate::state::services::{Deploy, RolloutKind, Service};
use crate::state::{
    ClusterState, Command, Deployed, EnvironmentCreated, ServiceAction, ServiceChanged,
};

pub async fn deploy(
    core: &Core,
    blobs: &BlobStore,
    mut req: pb::DeployRequest,
    by: Option<String>,
) -> Result<pb::DeployResponse> {
    let file = if req.file_name.is_empty() {
        "service".to_string()
    } else {
        req.file_name.clone()
    };
    let yaml = std::mem::take(&mut req.service_yaml);
    let mut spec = tokio::task::spawn_blocking(move || parse_service(&file, &yaml))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    if !req.source_dir.is_empty() {
        if !req.source_dir.starts_with('/') {
            let reason = format!("source_dir: {:?} is not an absolute path", req.source_dir);
            return Err(Error::InvalidInput(reason));
        }
        spec.replica
            .env
            .entry("KILN_SERVICE_DIR".into())
            .or_insert(req.source_dir.clone());
    }
    super::client::check_secrets(core, &spec.replica.secrets, &spec.name)?;
    let environment = {
        let state = core.state.read();
        let env = environment(&state, &req.environment)?;
        env.to_string()
    };
    let model_digest = store_model(core, blobs, &mut req).await?;
    let deploy = Deploy {
        model_digest,
        commit: (!req.commit.is_empty()).then_some(req.commit),
        force: req.force,
        deployed_by: by,
        ..Deploy::new(spec, &environment)
    };
    let name = deploy.spec.name.clone();
    let command = Command::Deploy {
        deploy: Box::new(deploy),
        request_id: req.request_id.clone(),
        now_ms: now_ms(),
    };
    deployed(core, command, &name, &environment).await
}

/// Keeps a deploy's model archive on a majority of the coordinators (as a build context is
/// kept) before the deploy is proposed; its digest is the revision's model digest.
async fn store_model(
    core: &Core,
    blobs: &BlobStore,
    req: &mut pb::DeployRequest,
) -> Result<Option<String>> {
    let archive = std::mem::take(&mut req.model_archive);
    if archive.is_empty() {
        if !req.model_digest.is_empty() {
            return Err(Error::InvalidInput(
                "model_digest: send the model itself in model_archive (the kiln CLI does)".into(),
            ));
        }
        return Ok(None);
    }
    if archive.len() > kiln_api::spec::limits::MAX_CONTEXT_BYTES {
        return Err(Error::InvalidInput(format!(
            "model_archive: larger than the limit of {} MiB",
            kiln_api::spec::limits::MAX_CONTEXT_BYTES >> 20
        )));
    }
    // Only the leader takes it, so that it is replicated before the proposal.
    core.ensure_leader()?;
    let digest = blobs.put(&archive)?;
    if !req.model_digest.is_empty() && req.model_digest != digest {
        return Err(Error::InvalidInput(format!(
            "model_digest: {} is not the archive's digest {digest}",
            req.model_digest
        )));
    }
    super::blobs::replicate(core, &digest, &archive).await?;
    Ok(Some(digest))
}

/// Proposes a deploy, a promotion or an approval, and says what came of it.
async fn deployed(
    core: &Core,
    command: Command,
    name: &str,
    environment: &str,
) -> Result<pb::DeployResponse> {
    let Deployed {
        revision,
        awaiting_approval,
        ..
    } = core.write(command).await?;
    tracing::info!(service = %name, %environment, revision, awaiting_approval, "deployed");
    Ok(pb::DeployResponse {
        service: name.to_string(),
        revision,
        awaiting_approval,
        environment: environment.to_string(),
    })
}

pub async fn promote_revision(
    core: &Core,
    req: pb::PromoteRevisionRequest,
    by: Option<String>,
) -> Result<pb::DeployResponse> {
    let (from, to) = {
        let state = core.state.read();
        let to = environment(&state, &req.to)?.to_string();
        let from = find(&state, &req.from, &req.service)?.environment.clone();
        (from, to)
    };
    let command = Command::PromoteRevision {
        service: req.service.clone(),
        from,
        to: to.clone(),
        force: req.force,
        request_id: req.request_id.clone(),
        by,
        now_ms: now_ms(),
    };
    deployed(core, command, &req.service, &to).await
}

/// Releases a held deploy; `by` (the caller) may not be the one who asked for it.
pub async fn approve(
    core: &Core,
    req: pb::ApproveRequest,
    by: Option<String>,
) -> Result<pb::DeployResponse> {
    let env = {
        let state = core.state.read();
        let env = environment(&state, &req.environment)?.to_string();
        let held = state
            .environment(&env)
            .and_then(|mut e| e.awaiting.remove(&req.service));
        if let (Some(asked), Some(by)) = (
            held.as_ref().and_then(|h| h.deploy.deployed_by.as_deref()),
            &by,
        ) && asked == by
        {
            return Err(Error::Forbidden(format!(
                "{by} asked for this deploy of {} in {env}: another principal must approve it",
                req.service
            )));
        }
        let awaits = held.is_some();
        let answered = state.deploy_requests.contains_key(&req.request_id);
        if !awaits && !answered {
            return Err(Error::Conflict(format!(
                "nothing awaits approval for {} in {env}",
                req.service
            )));
        }
        env
    };
    let command = Command::Approve {
        environment: env.clone(),
        service: req.service.clone(),
        request_id: req.request_id.clone(),
        now_ms: now_ms(),
    };
    deployed(core, command, &req.service, &env).await
}

pub async fn create_environment(
    core: &Core,
    req: pb::CreateEnvironmentRequest,
) -> Result<pb::EnvironmentView> {
    if let Err(reason) = kiln_api::validate::check_environment(&req.name) {
        return Err(Error::InvalidInput(format!("name: {reason}")));
    }
    for key in req.env.keys() {
        kiln_api::validate::check_env_name(key)
            .map_err(|reason| Error::InvalidInput(format!("env: {reason}")))?;
    }
    let command = Command::CreateEnvironment {
        name: req.name.clone(),
        approval: req.approval,
        default: req.default,
        env: req.env.clone().into_iter().collect(),
        now_ms: now_ms(),
    };
    let EnvironmentCreated = core.write(command).await?;
    let state = core.state.read();
    let env = state
        .environment(&req.name)
        .ok_or_else(|| Error::Internal("the environment vanished".into()))?;
    Ok(environment_view(&state, &env))
}

pub fn list_environments(core: &Core) -> pb::ListEnvironmentsResponse {
    let state = core.state.read();
    pb::ListEnvironmentsResponse {
        environments: state
            .environments()
            .iter()
            .map(|e| environment_view(&state, e))
            .collect(),
    }
}

fn environment_view(state: &ClusterState, e: &Environment) -> pb::EnvironmentView {
    pb::EnvironmentView {
        name: e.name.clone(),
        approval: e.approval,
        default: state.default_environment() == e.name,
        env: e.env.clone().into_iter().collect(),
        services: state
            .services
            .values()
            .filter(|s| s.environment == e.name)
            .map(|s| s.name.clone())
            .collect(),
        awaiting: e
            .awaiting
            .iter()
            .map(|(service, held)| pb::AwaitingApproval {
                service: service.clone(),
                requested_ms: held.requested_ms,
                promoted_from: held.deploy.promoted_from.clone().unwrap_or_default(),
                image: held.deploy.image_digest.clone().unwrap_or_default(),
                model_digest: held.deploy.model_digest.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The environment a request names (empty: the default one), which must exist.
fn environment<'s>(state: &'s ClusterState, name: &'s str) -> Result<&'s str> {
    let name = if name.is_empty() {
        state.default_environment()
    } else {
        name
    };
    match state.environment(name) {
        Some(_) => Ok(name),
        None => Err(Error::NotFound(format!(
            "environment {name:?} does not exist (kiln env create {name})"
        ))),
    }
}

pub fn list(core: &Core) -> pb::ListServicesResponse {
    let state = core.state.read();
    pb::ListServicesResponse {
        services: state.services.values().map(|s| view(core, s)).collect(),
    }
}

pub fn get(core: &Core, req: &pb::GetServiceRequest) -> Result<pb::ServiceView> {
    let state = core.state.read();
    Ok(view(core, find(&state, &req.environment, &req.name)?))
}

pub async fn rollback(core: &Core, req: pb::RollbackRequest) -> Result<pb::ServiceView> {
    let (number, env, to) = {
        let state = core.state.read();
        let s = find(&state, &req.environment, &req.service)?;
        if req.to > 0 && s.revision(req.to).is_none() {
            return Err(Error::NotFound(format!(
                "{} has no revision {} (revisions 1 to {})",
                s.name,
                req.to,
                s.revisions.len()
            )));
        }
        // Resolved here, so that a retried proposal lands on the same revision.
        let to = if req.to > 0 {
            Some(req.to)
        } else {
            s.last_known_good()
        };
        (s.number, s.environment.clone(), to)
    };
    let command = Command::Rollback {
        service: number,
        to,
        reason: (!req.reason.is_empty()).then_some(req.reason),
        now_ms: now_ms(),
    };
    changed(core, command, &env, &req.service).await
}

pub async fn scale(core: &Core, req: pb::ScaleRequest) -> Result<pb::ServiceView> {
    let (number, env) = {
        let state = core.state.read();
        let s = find(&state, &req.environment, &req.service)?;
        let max = kiln_api::service::limits::MAX_REPLICAS as u32;
        match &s.spec().autoscale {
            Some(a) if req.replicas < a.min || req.replicas > a.max => {
                return Err(Error::InvalidInput(format!(
                    "replicas: {} is outside {}'s autoscale range ({} to {})",
                    req.replicas, s.name, a.min, a.max
                )));
            }
            _ if req.replicas > max => {
                return Err(Error::InvalidInput(format!(
                    "replicas: {} is more than the limit of {max}",
                    req.replicas
                )));
            }
            _ => (s.number, s.environment.clone()),
        }
    };
    let action = ServiceAction::Scale {
        replicas: req.replicas,
        reason: "kiln scale".into(),
        unless_rolling: false,
    };
    let command = Command::ServiceActions {
        service: number,
        actions: vec![action],
        now_ms: now_ms(),
    };
    changed(core, command, &env, &req.service).await
}

pub async fn promote(core: &Core, req: pb::PromoteRequest) -> Result<pb::ServiceView> {
    let (number, env) = {
        let state = core.state.read();
        let s = find(&state, &req.environment, &req.service)?;
        if s.rollout.as_ref().is_none_or(|r| r.promoted) {
            return Err(Error::Conflict(format!(
                "{} has no canaries waiting for promotion",
                s.name
            )));
        }
        (s.number, s.environment.clone())
    };
    let command = Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Promote],
        now_ms: now_ms(),
    };
    changed(core, command, &env, &req.service).await
}

/// Proposes a command about a service and answers its view afterwards.
async fn changed(
    core: &Core,
    command: Command,
    environment: &str,
    name: &str,
) -> Result<pb::ServiceView> {
    let ServiceChanged { kills, .. } = core.write(command).await?;
    let state = core.state.read();
    core.sessions.kill(&state, &kills);
    Ok(view(core, find(&state, environment, name)?))
}

/// The service `name` in `environment` (empty: the default one).
fn find<'s>(state: &'s ClusterState, environment: &str, name: &str) -> Result<&'s Service> {
    let env = self::environment(state, environment)?;
    state
        .service_in(env, name)
        .ok_or_else(|| Error::NotFound(format!("service {name} not found in {env}")))
}

/// A service as the API shows it.
pub fn view(core: &Core, s: &Service) -> pb::ServiceView {
    let traffic = core.traffic();
    let rollout = match &s.rollout {
        None => "none",
        Some(r) if !r.promoted => "canary",
        Some(r) => match r.kind {
            RolloutKind::Deploy => "rolling",
            RolloutKind::Rollback => "rollback",
            RolloutKind::Revert => "revert",
        },
    };
    let key = s.key();
    pb::ServiceView {
        name: s.name.clone(),
        environment: s.environment.clone(),
        revision: s.target,
        stable: s.stable.unwrap_or(0),
        desired: s.desired,
        rollout: rollout.into(),
        serving: s.replicas.values().filter(|r| r.serving()).count() as u32,
        replicas: s
            .replicas
            .iter()
            .map(|(&slot, r)| pb::ReplicaView {
                slot,
                revision: r.revision,
                status: r.task.status.as_str().into(),
                node: r.task.current().map(|a| a.node.clone()).unwrap_or_default(),
                endpoint: r.endpoint.clone().unwrap_or_default(),
                healthy: r.healthy_since.is_some(),
                draining: r.draining_since.is_some(),
                restarts: r.restarts,
                attempt: r.task.attempt,
                in_flight: traffic.in_flight(&key, slot, crate::core::now_ms()),
            })
            .collect(),
        revisions: s
            .revisions
            .iter()
            .map(|r| pb::RevisionView {
                number: r.number,
                created_ms: r.created_ms,
                healthy_ms: r.healthy_ms.unwrap_or(0),
                failed: r.failed.clone().unwrap_or_default(),
                image: match &r.spec.replica.container {
                    Some(kiln_api::spec::Container::Image(kiln_api::spec::ImageRef::Named(i))) => {
                        i.clone()
                    }
                    _ => String::new(),
                },
                image_digest: r.image_digest.clone().unwrap_or_default(),
                model: r.spec.model.clone().unwrap_or_default(),
                model_digest: r.model_digest.clone().unwrap_or_default(),
                commit: r.commit.clone().unwrap_or_default(),
                spec_json: serde_json::to_string_pretty(&r.spec).unwrap_or_default(),
                bad: r.bad.clone().unwrap_or_default(),
                promoted_from: r.promoted_from.clone().unwrap_or_default(),
                run: r.run.clone().unwrap_or_default(),
                git: r.git.as_ref().map(super::convert::git),
            })
            .collect(),
        events: s
            .events
            .iter()
            .map(|(at_ms, text)| pb::ServiceEvent {
                at_ms: *at_ms,
                text: text.clone(),
            })
            .collect(),
        autoscale: traffic.autoscale_view(&key),
    }
}
