//! The agent protocol, leader side (`kiln.v1.AgentService/Session`).
//!
//! 1. The agent sends `Register`; it is committed as `RegisterNode` (the node becomes ready).
//! 2. The leader answers `Registered`, then reconciles: it re-sends the assignments of every
//!    task placed on the node that the agent did not list as known, and kills what the agent
//!    runs that should not run (cancelled, re-placed elsewhere, or unknown).
//! 3. Heartbeats update the leader's memory only. Task events are committed in batches, one
//!    Raft entry per batch, and acknowledged up to the last sequence number committed.
//!
//! A follower refuses the stream with the leader's address, and the agent goes there.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_api::pb::agent_service_server::AgentService;
use kiln_api::pb::{self, agent_message::Msg as In, coordinator_message::Msg as Out};
use kiln_api::spec::Resources;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::core::{Core, now_ms};
use crate::error::Error;
use crate::leader::sessions::Session;
use crate::state::{
    ClusterState, Command, EventsApplied, GpuDevice, NodeRegistered, NodeRegistration, Placement,
    TaskEvent, TaskStatus, is_task_id,
};

pub struct AgentApi {
    pub core: Arc<Core>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = OutStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        self.core.ensure_leader()?;
        let caller = crate::auth::Caller::of(&req).cloned();
        let mut inbound = req.into_inner();
        let register = match inbound.message().await? {
            Some(pb::AgentMessage {
                msg: Some(In::Register(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ));
            }
        };
        let node = register.node_id.clone();
        // Never the coordinators' own `(coordinator)`, which deploy stages' attempts record.
        if node == crate::state::deploy_stages::COORDINATOR {
            return Err(Status::invalid_argument(format!(
                "register.node_id: {node:?} is the coordinators' own"
            )));
        }
        if node.is_empty() {
            return Err(Status::invalid_argument(
                "register.node_id: must not be empty",
            ));
        }
        if let Some(caller) = caller {
            caller.set_target(format!("node {node}"));
            // An agent speaks for the node its certificate names, and no other.
            if let crate::auth::Who::Agent(own) = &caller.who
                && *own != node
            {
                return Err(Status::permission_denied(format!(
                    "{} may not register as node {node:?}",
                    caller.principal
                )));
            }
        }
        let span = tracing::info_span!("agent_session", %node);
        let _e = span.enter();

        let reg = NodeRegistration {
            id: node.clone(),
            labels: register.labels.clone().into_iter().collect(),
            drivers: register.drivers.clone(),
            capacity: Resources {
                cpu_millis: register.cpu_millis,
                memory_bytes: register.memory_bytes,
            },
            gpus: register
                .gpus
                .iter()
                .map(|g| GpuDevice {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                    nvlink_peers: g.nvlink_peers.clone(),
                    simulated: g.simulated,
                })
                .collect(),
        };
        drop(_e);
        let NodeRegistered = self
            .core
            .write(Command::RegisterNode {
                node: reg,
                now_ms: now_ms(),
            })
            .await?;
        self.core
            .liveness()
            .entry(node.clone())
            .or_default()
            .last_seen_ms = now_ms();

        let (tx, rx) = mpsc::unbounded_channel();
        let session = self.core.sessions.open(&node, tx);
        session.send(Out::Registered(pb::Registered {
            leader_id: self.core.id,
            heartbeat_ms: self.core.tuning.heartbeat.as_millis() as u64,
        }));
        reconcile(&self.core, &node, &register.known, &session);
        tracing::info!(%node, known = register.known.len(), "agent registered");

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_events(
            self.core.clone(),
            node.clone(),
            session.clone(),
            events_rx,
        ));
        tokio::spawn(read_inbound(
            self.core.clone(),
            node,
            session.clone(),
            inbound,
            events_tx,
        ));

        let closed = session.closed.clone();
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .take_until(async move { closed.cancelled_owned().await });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Brings the agent and the state into agreement after (re)registration.
fn reconcile(core: &Core, node: &str, known: &[pb::TaskRef], session: &Session) {
    let state = core.state.read();
    let known_set: HashSet<(&str, u32)> = known
        .iter()
        .map(|k| (k.task_id.as_str(), k.attempt))
        .collect();
    if let Some(n) = state.nodes.get(node) {
        for &task in &n.allocations {
            let Some(t) = state.task(task) else { continue };
            let id = state.task_id(task);
            if !known_set.contains(&(id.as_str(), t.attempt)) {
                let p = Placement {
                    task,
                    attempt: t.attempt,
                    node: node.to_string(),
                    gpus: t.current().map(|a| a.gpus.clone()).unwrap_or_default(),
                };
                if let Some(a) = core.assignment(&state, &p) {
                    session.send(Out::Assign(a));
                }
            }
        }
    }
    for k in known.iter().filter(|k| k.running) {
        let should_run = state
            .parse_task_id(&k.task_id)
            .and_then(|t| state.task(t))
            .is_some_and(|t| {
                t.attempt == k.attempt
                    && t.status.is_allocated()
                    && !t.cancel_requested
                    && t.current().is_some_and(|a| a.node == node)
            });
        if !should_run {
            session.send(Out::Kill(pb::KillTask {
                task_id: k.task_id.clone(),
                attempt: k.attempt,
                reason: "not assigned to this node".into(),
            }));
        }
    }
}

async fn read_inbound(
    core: Arc<Core>,
    node: String,
    session: Session,
    mut inbound: Streaming<pb::AgentMessage>,
    events: mpsc::UnboundedSender<pb::TaskEvent>,
) {
    loop {
        let msg = tokio::select! {
            _ = session.closed.cancelled() => break,
            m = inbound.message() => m,
        };
        match msg {
            Ok(Some(pb::AgentMessage { msg: Some(m) })) => match m {
                In::Heartbeat(h) => {
                    let mut live = core.liveness();
                    let l = live.entry(node.clone()).or_default();
                    l.last_seen_ms = now_ms();
                    l.cpu_percent = h.cpu_percent;
                    l.memory_used_bytes = h.memory_used_bytes;
                    l.gpus = h.gpus;
                }
                // The event committer stopped: it refused an event and ended the session.
                In::TaskEvent(e) => {
                    if events.send(e).is_err() {
                        break;
                    }
                }
                In::LogData(d) => core.sessions.route_log(d),
                In::Register(_) => tracing::warn!(%node, "ignoring a second Register"),
            },
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::info!(%node, error = %e, "agent stream ended");
                break;
            }
        }
    }
    core.sessions.close(&node, session.generation);
}

/// Commits the agent's task events in batches (whatever arrived while the previous batch was
/// being committed) and acknowledges them.
///
/// An event the leader cannot understand (a state it does not know, a task id that is not
/// one) is refused, not acknowledged and dropped: the events before it are committed and
/// acknowledged, and the session ends with `INVALID_ARGUMENT` naming it, so the agent keeps
/// it and says so. An event about a task the cluster no longer has (a replica already
/// removed) is understood: it changes nothing, and is acknowledged.
async fn commit_events(
    core: Arc<Core>,
    node: String,
    session: Session,
    mut rx: mpsc::UnboundedReceiver<pb::TaskEvent>,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = session.closed.cancelled() => return,
            n = rx.recv_many(&mut batch, 4096) => if n == 0 { return },
        }
        let mut up_to = 0;
        let mut events = Vec::with_capacity(batch.len());
        let mut refused = None;
        {
            let state = core.state.read();
            for e in batch.drain(..) {
                match understand(&state, &e) {
                    Ok(event) => {
                        up_to = up_to.max(e.seq);
                        events.extend(event);
                    }
                    Err(reason) => {
                        refused = Some(format!("task event {} ({}): {reason}", e.seq, e.task_id));
                        break;
                    }
                }
            }
            batch.clear();
        }
        let count = events.len() as u64;
        if !events.is_empty() {
            let written = core
                .write(Command::TaskEvents {
                    node: node.clone(),
                    events,
                    now_ms: now_ms(),
                })
                .await;
            match written {
                Ok(EventsApplied { kills, .. }) => {
                    let state = core.state.read();
                    core.sessions.kill(&state, &kills);
                }
                Err(Error::NotLeader { .. }) => {
                    session.closed.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "task events not committed; the agent will re-send them");
                    session.closed.cancel();
                    return;
                }
            }
        }
        core.metrics.task_events.inc_by(count);
        if up_to > 0 {
            session.send(Out::Ack(pb::AckEvents { up_to_seq: up_to }));
        }
        if let Some(reason) = refused {
            // The error ends the agent's stream (it is the last item it gets); the session
            // closes once the agent's side ends too (`read_inbound`).
            tracing::warn!(%node, %reason, "refusing an agent's task event");
            let _ = session.tx.send(Err(Status::invalid_argument(reason)));
            return;
        }
    }
}

/// An agent's event in the state's words; `None` for a task the cluster no longer has.
fn understand(state: &ClusterState, e: &pb::TaskEvent) -> Result<Option<TaskEvent>, String> {
    let status = match pb::TaskState::try_from(e.state) {
        Ok(pb::TaskState::Running) => TaskStatus::Running,
        Ok(pb::TaskState::Succeeded) => TaskStatus::Succeeded,
        Ok(pb::TaskState::Failed) => TaskStatus::Failed,
        Ok(pb::TaskState::Lost) => TaskStatus::Lost,
        Ok(pb::TaskState::Unspecified) | Err(_) => {
            return Err(format!(
                "state {} is not one this coordinator knows",
                e.state
            ));
        }
    };
    if !is_task_id(&e.task_id) {
        return Err("not a task id".into());
    }
    let Some(task) = state.parse_task_id(&e.task_id) else {
        return Ok(None);
    };
    Ok(Some(TaskEvent {
        task,
        attempt: e.attempt,
        status,
        exit_code: e.exit_code,
        message: e.message.clone(),
        at_ms: e.at_ms,
        image: (!e.image.is_empty()).then(|| e.image.clone()),
        endpoint: (!e.endpoint.is_empty()).then(|| e.endpoint.clone()),
        health: e.healthy,
        metrics_endpoint: (!e.metrics_endpoint.is_empty()).then(|| e.metrics_endpoint.clone()),
        artifacts: e.artifacts.clone().into_iter().collect(),
    }))
}
