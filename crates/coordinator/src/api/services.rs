//! The service half of the client API: deploy, list and inspect, roll back, scale,
//! promote. Each handler checks what it can against the applied state (so errors name the
//! service and revision), then proposes one command; the state machine checks again.

use kiln_api::pb;
use kiln_api::validate::parse_service;

use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::services::{Deploy, RolloutKind, Service};
use crate::state::{Command, Deployed, ServiceAction, ServiceChanged};

pub async fn deploy(core: &Core, req: pb::DeployRequest) -> Result<pb::DeployResponse> {
    let file = if req.file_name.is_empty() {
        "service".to_string()
    } else {
        req.file_name.clone()
    };
    let yaml = req.service_yaml;
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
            .or_insert(req.source_dir);
    }
    let deploy = Deploy {
        spec,
        model_digest: (!req.model_digest.is_empty()).then_some(req.model_digest),
        commit: (!req.commit.is_empty()).then_some(req.commit),
    };
    let command = Command::Deploy {
        deploy: Box::new(deploy),
        now_ms: now_ms(),
    };
    let Deployed { service, revision } = core.write(command).await?;
    let name = core
        .state
        .read()
        .services
        .get(&service)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    tracing::info!(service = %name, revision, "deployed");
    Ok(pb::DeployResponse {
        service: name,
        revision,
    })
}

pub fn list(core: &Core) -> pb::ListServicesResponse {
    let state = core.state.read();
    pb::ListServicesResponse {
        services: state.services.values().map(|s| view(core, s)).collect(),
    }
}

pub fn get(core: &Core, name: &str) -> Result<pb::ServiceView> {
    let state = core.state.read();
    Ok(view(core, find(&state, name)?))
}

pub async fn rollback(core: &Core, req: pb::RollbackRequest) -> Result<pb::ServiceView> {
    let number = {
        let state = core.state.read();
        let s = find(&state, &req.service)?;
        if req.to > 0 && s.revision(req.to).is_none() {
            return Err(Error::NotFound(format!(
                "{} has no revision {} (revisions 1 to {})",
                s.name,
                req.to,
                s.revisions.len()
            )));
        }
        s.number
    };
    let command = Command::Rollback {
        service: number,
        to: (req.to > 0).then_some(req.to),
        now_ms: now_ms(),
    };
    changed(core, command, &req.service).await
}

pub async fn scale(core: &Core, req: pb::ScaleRequest) -> Result<pb::ServiceView> {
    let number = {
        let state = core.state.read();
        let s = find(&state, &req.service)?;
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
            _ => s.number,
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
    changed(core, command, &req.service).await
}

pub async fn promote(core: &Core, req: pb::PromoteRequest) -> Result<pb::ServiceView> {
    let number = {
        let state = core.state.read();
        let s = find(&state, &req.service)?;
        if s.rollout.as_ref().is_none_or(|r| r.promoted) {
            return Err(Error::Conflict(format!(
                "{} has no canaries waiting for promotion",
                s.name
            )));
        }
        s.number
    };
    let command = Command::ServiceActions {
        service: number,
        actions: vec![ServiceAction::Promote],
        now_ms: now_ms(),
    };
    changed(core, command, &req.service).await
}

/// Proposes a command about a service and answers its view afterwards.
async fn changed(core: &Core, command: Command, name: &str) -> Result<pb::ServiceView> {
    let ServiceChanged { kills, .. } = core.write(command).await?;
    let state = core.state.read();
    core.sessions.kill(&state, &kills);
    Ok(view(core, find(&state, name)?))
}

fn find<'s>(state: &'s crate::state::ClusterState, name: &str) -> Result<&'s Service> {
    state
        .service_by_name(name)
        .ok_or_else(|| Error::NotFound(format!("service {name} not found")))
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
    pb::ServiceView {
        name: s.name.clone(),
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
                in_flight: traffic.in_flight(&s.name, slot, crate::core::now_ms()),
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
        autoscale: traffic.autoscale_view(&s.name),
    }
}
