//! The client API (`kiln.v1.Kiln`): submissions, reads, cancellation, logs, membership.
//!
//! Reads come from this coordinator's applied state, whichever role it has. Writes go through
//! [`Core::write`], which on a follower fails with the leader's address attached.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kiln_api::pb::{self, kiln_server::Kiln};
use kiln_api::validate::parse_pipeline;
use openraft::BasicNode;
use tonic::{Request, Response, Status};

use super::convert;
use crate::auth::{principal_of, target};
use crate::blobs::BlobStore;
use crate::core::{Core, now_ms};
use crate::error::Error;
use crate::state::{Cancelled, Command, Submitted, TaskRef, parse_run_id};

pub struct ClientService {
    pub core: Arc<Core>,
    pub blobs: BlobStore,
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Kiln for ClientService {
    #[tracing::instrument(skip_all, fields(file = %req.get_ref().file_name, request = %req.get_ref().request_id))]
    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        // The run's id is known at the end, after the request is taken apart.
        let caller = crate::auth::Caller::of(&req).cloned();
        let req = req.into_inner();
        let file = if req.file_name.is_empty() {
            "pipeline"
        } else {
            req.file_name.as_str()
        };
        // Off the async runtime: a big pipeline must not stall Raft's heartbeats.
        let (name, yaml) = (file.to_string(), req.pipeline_yaml);
        let mut pipeline = tokio::task::spawn_blocking(move || parse_pipeline(&name, &yaml))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        complete(&self.core, &mut pipeline, file, req.service_files)?;
        if !req.build_contexts.is_empty() {
            // Only the leader takes contexts, so that they are replicated before the proposal.
            self.core.ensure_leader()?;
        }
        let stored = store_build_contexts(&self.blobs, file, &mut pipeline, req.build_contexts)?;
        for (digest, bytes) in &stored {
            super::blobs::replicate(&self.core, digest, bytes).await?;
        }
        if !req.source_dir.is_empty() {
            if !req.source_dir.starts_with('/') {
                let reason = format!("source_dir: {:?} is not an absolute path", req.source_dir);
                return Err(Error::InvalidInput(reason).into());
            }
            for stage in &mut pipeline.stages {
                stage
                    .env
                    .entry("KILN_PIPELINE_DIR".into())
                    .or_insert_with(|| req.source_dir.clone());
            }
        }
        let trigger = if req.trigger.is_empty() {
            "manual".to_string()
        } else {
            req.trigger
        };
        let command = Command::SubmitRun {
            request_id: req.request_id,
            trigger,
            pipeline,
            only_tests: Default::default(),
            now_ms: now_ms(),
        };
        let Submitted { run, created } = self.core.write(command).await?;
        tracing::info!(run, created, "run submitted");
        if let Some(caller) = caller {
            caller.set_target(format!("run {}", crate::state::run_id(run)));
        }
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: crate::state::run_id(run),
            created,
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().run_id;
        let n = parse_run_id(&id).ok_or_else(|| Error::NotFound(format!("run {id} not found")))?;
        let waiting = self.core.waiting();
        if let Some(run) = self.core.state.read().runs.get(&n) {
            return Ok(Response::new(convert::run(run, &waiting)));
        }
        // Past retention: from the archive, as it was when it finished.
        let run = self
            .core
            .state
            .archived(n)
            .ok_or_else(|| Error::NotFound(format!("run {id} not found")))?;
        Ok(Response::new(convert::run(&run, &waiting)))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        Ok(Response::new(super::runs::list(
            &self.core,
            req.into_inner(),
        )?))
    }

    #[tracing::instrument(skip_all, fields(run = %req.get_ref().run_id))]
    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        target(&req, format!("run {}", req.get_ref().run_id));
        let id = req.into_inner().run_id;
        let run = parse_run_id(&id)
            .ok_or_else(|| Error::InvalidInput(format!("{id:?} is not a run id")))?;
        if !self.core.state.read().runs.contains_key(&run) {
            return Err(Error::NotFound(format!("run {id} not found")).into());
        }
        let Cancelled { kills } = self
            .core
            .write(Command::CancelRun {
                run,
                now_ms: now_ms(),
            })
            .await?;
        let state = self.core.state.read();
        self.core.sessions.kill(&state, &kills);
        Ok(Response::new(pb::CancelRunResponse {
            status: "cancelled".into(),
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let state = self.core.state.read();
        let live = self.core.liveness();
        let nodes = state
            .nodes
            .values()
            .map(|n| convert::node(n, live.get(&n.id)))
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        self.core.ensure_leader()?;
        let req = req.into_inner();
        let located = locate(&self.core.state.read(), &req);
        let (task_id, attempt, node) = match located {
            Ok(found) => found,
            // A run past retention: found in the archive, its log still on its node.
            Err(e) => {
                let archived = parse_run_id(&req.run_id).and_then(|n| self.core.state.archived(n));
                let Some(run) = archived else {
                    return Err(e.into());
                };
                let alone = crate::state::ClusterState {
                    runs: [(run.number, run)].into(),
                    ..Default::default()
                };
                locate(&alone, &req)?
            }
        };
        let session = self.core.sessions.get(&node).ok_or_else(|| {
            Error::Unavailable(format!(
                "node {node}, which ran {task_id}, is not connected"
            ))
        })?;
        let (request_id, mut rx) = self.core.sessions.start_log_request();
        session.send(pb::coordinator_message::Msg::LogRequest(pb::LogRequest {
            request_id,
            task_id,
            attempt,
            follow: req.follow,
        }));
        let stream = async_stream(move |tx| async move {
            while let Some(d) = rx.recv().await {
                if !d.error.is_empty() {
                    let _ = tx.send(Err(Status::not_found(d.error)));
                    return;
                }
                if !d.data.is_empty() && tx.send(Ok(pb::LogChunk { data: d.data })).is_err() {
                    return;
                }
                if d.eof {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let (state_sha256, state_index) = if req.get_ref().state_hash {
            self.core.state.sha256()
        } else {
            (String::new(), 0)
        };
        let metrics = self.core.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::ClusterStatusResponse {
            id: self.core.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            members,
            role: format!("{:?}", m.state).to_lowercase(),
            state_sha256,
            state_index,
        }))
    }

    async fn get_test_report(
        &self,
        req: Request<pb::GetTestReportRequest>,
    ) -> Result<Response<pb::TestReport>, Status> {
        let id = req.into_inner().run_id;
        let state = self.core.state.read();
        let run = parse_run_id(&id)
            .and_then(|n| state.runs.get(&n))
            .ok_or_else(|| Error::NotFound(format!("run {id} not found")))?;
        Ok(Response::new(super::test_queue::report(run)))
    }

    #[tracing::instrument(skip_all, fields(run = %req.get_ref().run_id, failed_only = req.get_ref().failed_only))]
    async fn rerun_run(
        &self,
        req: Request<pb::RerunRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        target(&req, format!("run {}", req.get_ref().run_id));
        Ok(Response::new(
            super::test_queue::rerun(&self.core, req.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(file = %req.get_ref().file_name))]
    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        target(
            &req,
            format!(
                "service file {} in {}",
                req.get_ref().file_name,
                req.get_ref().environment
            ),
        );
        let by = principal_of(&req);
        Ok(Response::new(
            super::services::deploy(&self.core, &self.blobs, req.into_inner(), by).await?,
        ))
    }

    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        Ok(Response::new(super::services::list(&self.core)))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        Ok(Response::new(super::services::get(
            &self.core,
            req.get_ref(),
        )?))
    }

    #[tracing::instrument(skip_all, fields(service = %req.get_ref().service, to = req.get_ref().to))]
    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        target(&req, format!("service {}", req.get_ref().service));
        Ok(Response::new(
            super::services::rollback(&self.core, req.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(service = %req.get_ref().service, replicas = req.get_ref().replicas))]
    async fn scale(
        &self,
        req: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        target(&req, format!("service {}", req.get_ref().service));
        Ok(Response::new(
            super::services::scale(&self.core, req.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(service = %req.get_ref().service))]
    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        target(&req, format!("service {}", req.get_ref().service));
        Ok(Response::new(
            super::services::promote(&self.core, req.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn add_repository(
        &self,
        req: Request<pb::AddRepositoryRequest>,
    ) -> Result<Response<pb::RepositoryView>, Status> {
        target(&req, format!("repository {}", req.get_ref().name));
        Ok(Response::new(
            super::repositories::add(&self.core, req.into_inner()).await?,
        ))
    }

    async fn remove_repository(
        &self,
        req: Request<pb::RemoveRepositoryRequest>,
    ) -> Result<Response<pb::RemoveRepositoryResponse>, Status> {
        target(&req, format!("repository {}", req.get_ref().name));
        super::repositories::remove(&self.core, req.into_inner()).await?;
        Ok(Response::new(pb::RemoveRepositoryResponse {}))
    }

    async fn list_repositories(
        &self,
        req: Request<pb::ListRepositoriesRequest>,
    ) -> Result<Response<pb::ListRepositoriesResponse>, Status> {
        Ok(Response::new(super::repositories::list(
            &self.core,
            req.get_ref(),
        )?))
    }

    async fn trigger_repository(
        &self,
        req: Request<pb::TriggerRepositoryRequest>,
    ) -> Result<Response<pb::TriggerRepositoryResponse>, Status> {
        target(
            &req,
            format!(
                "repository {} at {}",
                req.get_ref().repository,
                req.get_ref().r#ref
            ),
        );
        Ok(Response::new(
            super::repositories::trigger(&self.core, req.into_inner()).await?,
        ))
    }

    async fn deliver_webhook(
        &self,
        req: Request<pb::WebhookDelivery>,
    ) -> Result<Response<pb::WebhookAnswer>, Status> {
        Ok(Response::new(
            super::webhooks::delivered(&self.core, req.into_inner()).await,
        ))
    }

    async fn create_environment(
        &self,
        req: Request<pb::CreateEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentView>, Status> {
        target(&req, format!("environment {}", req.get_ref().name));
        Ok(Response::new(
            super::services::create_environment(&self.core, req.into_inner()).await?,
        ))
    }

    async fn list_environments(
        &self,
        _: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        Ok(Response::new(super::services::list_environments(
            &self.core,
        )))
    }

    #[tracing::instrument(skip_all, fields(service = %req.get_ref().service, from = %req.get_ref().from, to = %req.get_ref().to))]
    async fn promote_revision(
        &self,
        req: Request<pb::PromoteRevisionRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        target(
            &req,
            format!(
                "service {} from {} to {}",
                req.get_ref().service,
                req.get_ref().from,
                req.get_ref().to
            ),
        );
        let by = principal_of(&req);
        Ok(Response::new(
            super::services::promote_revision(&self.core, req.into_inner(), by).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(service = %req.get_ref().service, environment = %req.get_ref().environment))]
    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        target(
            &req,
            format!(
                "service {} in {}",
                req.get_ref().service,
                req.get_ref().environment
            ),
        );
        let by = principal_of(&req);
        Ok(Response::new(
            super::services::approve(&self.core, req.into_inner(), by).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id, addr = %req.get_ref().addr))]
    async fn join_cluster(
        &self,
        req: Request<pb::JoinClusterRequest>,
    ) -> Result<Response<pb::JoinClusterResponse>, Status> {
        target(
            &req,
            format!("coordinator {} at {}", req.get_ref().id, req.get_ref().addr),
        );
        // A coordinator joins as itself: its certificate names its Raft id.
        if let Some(crate::auth::Caller {
            who: crate::auth::Who::Coordinator(id),
            ..
        }) = crate::auth::Caller::of(&req)
            && *id != req.get_ref().id
        {
            return Err(Error::Forbidden(format!(
                "coordinator {id} may not join the cluster as coordinator {}",
                req.get_ref().id
            ))
            .into());
        }
        self.core.ensure_leader()?;
        let req = req.into_inner();
        if req.id == 0 || req.addr.is_empty() {
            return Err(
                Error::InvalidInput("join needs a non-zero id and an address".into()).into(),
            );
        }
        let raft = &self.core.raft;
        let node = BasicNode {
            addr: req.addr.clone(),
        };
        raft.add_learner(req.id, node, true)
            .await
            .map_err(membership_error)?;
        let voters = self.voters_with(|v| {
            v.insert(req.id);
        });
        raft.change_membership(voters, false)
            .await
            .map_err(membership_error)?;
        tracing::info!("coordinator joined as a voter");
        Ok(Response::new(pb::JoinClusterResponse {
            members: self.members(),
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        target(
            &req,
            format!("token {} ({})", req.get_ref().name, req.get_ref().role),
        );
        let by = principal_of(&req);
        Ok(Response::new(
            super::access::create_token(&self.core, req.into_inner(), by).await?,
        ))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(super::access::list_tokens(&self.core)))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        target(&req, format!("token {}", req.get_ref().token));
        super::access::revoke_token(&self.core, req.into_inner()).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::AuditEntries>, Status> {
        Ok(Response::new(super::access::list_audit(
            &self.core,
            req.into_inner(),
        )))
    }

    async fn record_audit(
        &self,
        req: Request<pb::AuditEntries>,
    ) -> Result<Response<pb::RecordAuditResponse>, Status> {
        super::access::record_audit(&self.core, req.into_inner()).await?;
        Ok(Response::new(pb::RecordAuditResponse {}))
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        _: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let bytes = super::backup::save(&self.core, &self.blobs).await?;
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = bytes
            .chunks(1 << 20)
            .map(|c| Ok(pb::SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    // The request holds a value: no span records its fields.
    async fn set_secret(
        &self,
        req: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretView>, Status> {
        target(&req, format!("secret {}", req.get_ref().name));
        let by = principal_of(&req);
        Ok(Response::new(
            super::secrets::set(&self.core, req.into_inner(), by).await?,
        ))
    }

    async fn list_secrets(
        &self,
        _: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        Ok(Response::new(super::secrets::list(&self.core)))
    }

    async fn remove_secret(
        &self,
        req: Request<pb::RemoveSecretRequest>,
    ) -> Result<Response<pb::RemoveSecretResponse>, Status> {
        target(&req, format!("secret {}", req.get_ref().name));
        super::secrets::remove(&self.core, req.into_inner()).await?;
        Ok(Response::new(pb::RemoveSecretResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn leave_cluster(
        &self,
        req: Request<pb::LeaveClusterRequest>,
    ) -> Result<Response<pb::LeaveClusterResponse>, Status> {
        target(&req, format!("coordinator {}", req.get_ref().id));
        self.core.ensure_leader()?;
        let id = req.into_inner().id;
        let mut was_voter = false;
        let voters = self.voters_with(|v| {
            was_voter = v.remove(&id);
        });
        if !was_voter {
            return Err(Error::NotFound(format!("coordinator {id} is not a voter")).into());
        }
        if voters.is_empty() {
            return Err(Error::InvalidInput("cannot remove the last voter".into()).into());
        }
        self.core
            .raft
            .change_membership(voters, false)
            .await
            .map_err(membership_error)?;
        tracing::info!("coordinator left the voters");
        Ok(Response::new(pb::LeaveClusterResponse {
            members: self.members(),
        }))
    }
}

impl ClientService {
    fn voters_with(&self, edit: impl FnOnce(&mut BTreeSet<u64>)) -> BTreeSet<u64> {
        let mut voters: BTreeSet<u64> = self
            .core
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        edit(&mut voters);
        voters
    }

    fn members(&self) -> Vec<pb::Member> {
        let metrics = self.core.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }
}

/// Moves each `build:` stage's packed context into the blob store and writes its digest into
/// the pipeline, so that only the digest goes through Raft. Returns what was stored, by
/// digest, for replication.
fn store_build_contexts(
    blobs: &BlobStore,
    file: &str,
    pipeline: &mut kiln_api::spec::Pipeline,
    mut contexts: std::collections::HashMap<String, Vec<u8>>,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut stored = Vec::new();
    use kiln_api::spec::{Container, limits::MAX_CONTEXT_BYTES};
    for stage in &mut pipeline.stages {
        let Some(Container::Build(build)) = &mut stage.container else {
            continue;
        };
        let field = format!("{file}: stages.{}.build.context", stage.name);
        let bytes = contexts.remove(&stage.name).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{field}: the build context was not sent with the submission (the kiln CLI packs it; other clients put a tar of it in build_contexts[{:?}])",
                stage.name
            ))
        })?;
        if bytes.len() > MAX_CONTEXT_BYTES {
            return Err(Error::InvalidInput(format!(
                "{field}: {} MiB packed, more than the limit of {} MiB",
                bytes.len() >> 20,
                MAX_CONTEXT_BYTES >> 20
            )));
        }
        build.context_digest = blobs.put(&bytes)?;
        stored.push((build.context_digest.clone(), bytes));
    }
    if let Some(name) = contexts.keys().next() {
        return Err(Error::InvalidInput(format!(
            "{file}: build_contexts[{name:?}]: no build: stage is named {name:?}"
        )));
    }
    Ok(stored)
}

fn membership_error<E: std::fmt::Display>(e: E) -> Status {
    Error::Conflict(format!("membership change failed: {e}")).into()
}

/// A stream fed by a spawned producer.
/// The task id, attempt and node of the stage attempt a log request names.
fn locate(
    state: &crate::state::ClusterState,
    req: &pb::StreamLogsRequest,
) -> Result<(String, u32, String), Error> {
    let stage_id = format!("{}/{}", req.run_id, req.stage);
    let tref = state.parse_task_id(&stage_id).ok_or_else(|| {
        Error::NotFound(format!(
            "stage {} of run {} not found",
            req.stage, req.run_id
        ))
    })?;
    let sharded = match tref {
        TaskRef::Stage(at) => state.stage_run(at).is_some_and(|s| s.is_sharded()),
        TaskRef::Replica(_) => false,
    };
    let tref = if sharded {
        state
            .parse_task_id(&format!("{stage_id}/{}", req.shard))
            .ok_or_else(|| {
                Error::NotFound(format!("stage {} has no shard {}", req.stage, req.shard))
            })?
    } else {
        tref
    };
    let task_id = state.task_id(tref);
    let task = state
        .task(tref)
        .ok_or_else(|| Error::NotFound(task_id.clone()))?;
    let want = if req.attempt == 0 {
        task.attempts.last().map(|a| a.attempt)
    } else {
        Some(req.attempt)
    };
    let attempt = want
        .and_then(|n| task.attempts.iter().find(|a| a.attempt == n))
        .ok_or_else(|| Error::NotFound(format!("{task_id} has no attempt {} yet", req.attempt)))?;
    Ok((state.task_id(tref), attempt.attempt, attempt.node.clone()))
}

fn async_stream<F, Fut>(producer: F) -> LogStream
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Result<pb::LogChunk, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

/// What every submission of a parsed pipeline is checked and completed with, whoever read
/// the file (a client, or the trigger loop from a commit): GPU shares that some GPU can
/// hold, secrets that are set, and the text of each service file its deploy stages name.
pub(crate) fn complete(
    core: &Core,
    pipeline: &mut kiln_api::spec::Pipeline,
    file: &str,
    service_files: std::collections::HashMap<String, String>,
) -> Result<(), Error> {
    check_gpu_shares(core, pipeline, file)?;
    for stage in &pipeline.stages {
        check_secrets(
            core,
            &stage.secrets,
            &format!("{file}: stages.{}", stage.name),
        )?;
    }
    super::service_files::attach(pipeline, file, service_files)
}

/// A stage or service asking for a secret nobody set is refused now, by name.
pub(crate) fn check_secrets(core: &Core, names: &[String], at: &str) -> Result<(), Error> {
    let state = core.state.read();
    match state.missing_secrets(names).first() {
        Some(name) => Err(Error::InvalidInput(format!(
            "{at}.secrets: {name} is not set (kiln secret set {name})"
        ))),
        None => Ok(()),
    }
}

/// A GPU share larger than every GPU in the cluster could never be placed: refuse it now,
/// naming the field, rather than leaving it pending for ever. (With no GPU node registered
/// yet, the stage waits with its reason instead.)
fn check_gpu_shares(
    core: &Core,
    pipeline: &kiln_api::spec::Pipeline,
    file: &str,
) -> Result<(), Error> {
    let state = core.state.read();
    let largest = state
        .nodes
        .values()
        .flat_map(|n| n.gpus.iter())
        .map(|g| g.memory_bytes)
        .max();
    let Some(largest) = largest else {
        return Ok(());
    };
    for stage in &pipeline.stages {
        if let Some(share) = stage
            .gpu
            .as_ref()
            .map(|g| g.share_bytes)
            .filter(|&s| s > largest)
        {
            return Err(Error::InvalidInput(format!(
                "{file}: stages.{}.resources.gpu_memory: {:.1} GiB is larger than any GPU in the cluster (the largest has {:.1} GiB)",
                stage.name,
                share as f64 / (1u64 << 30) as f64,
                largest as f64 / (1u64 << 30) as f64
            )));
        }
    }
    Ok(())
}
