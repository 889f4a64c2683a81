//! The agent's one long-lived stream to the leader.
//!
//! The stream is opened through the agent's [`LeaderClient`], which finds the leader and
//! follows a follower's hint. Once in: `Register` (with every task this agent knows),
//! re-send unacknowledged events, heartbeat, and handle what the leader pushes. When the
//! stream breaks (the leader died or stepped down), reconnect at once; running tasks are not
//! touched, and their events wait in the outbox.

use std::sync::Arc;
use std::time::Duration;

use kiln_api::leader::{CallError, LeaderClient};
use kiln_api::pb::agent_service_client::AgentServiceClient;
use kiln_api::pb::{self, agent_message::Msg as Out, coordinator_message::Msg as In};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::fingerprint::{Fingerprint, Usage};
use crate::logs::{self, LogStore};
use crate::outbox::Outbox;
use crate::runner::Runner;

enum Ended {
    /// The session broke after it was established.
    Broken,
    Shutdown,
}

type Inbound = tonic::Streaming<pb::CoordinatorMessage>;

pub async fn run(
    config: Config,
    node: Fingerprint,
    leader: Arc<LeaderClient>,
    runner: Arc<Runner>,
    outbox: Arc<Outbox>,
    logs: LogStore,
    shutdown: CancellationToken,
) {
    loop {
        // Registered with the drivers offered now; a change after this ends the session.
        let mut offered = runner.drivers().offered();
        let drivers = offered.borrow_and_update().clone();
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = open(&leader, &config, &node, &runner, drivers) => o,
        };
        let (tx, inbound) = match opened {
            Ok(o) => o,
            Err(e) => {
                // A refusal (a version the leader does not speak, say): said loudly, tried again.
                tracing::warn!(error = %e, "the leader refused this agent's session");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let addr = leader.leader().unwrap_or_default();
        let streams = (tx, inbound, offered);
        let ended = session(&addr, streams, &node, &runner, &outbox, &logs, &shutdown).await;
        match ended {
            Ended::Shutdown => return,
            Ended::Broken => {
                tracing::info!(%addr, "session with the leader ended; reconnecting");
                leader.forget();
            }
        }
    }
}

/// Opens the stream at the leader, wherever it is now, with this agent's `Register` first.
async fn open(
    leader: &LeaderClient,
    config: &Config,
    node: &Fingerprint,
    runner: &Runner,
    drivers: Vec<String>,
) -> Result<(mpsc::UnboundedSender<pb::AgentMessage>, Inbound), CallError> {
    let register = pb::Register {
        node_id: config.node_id.clone(),
        labels: config.labels.clone().into_iter().collect(),
        drivers,
        cpu_millis: node.cpu_millis,
        memory_bytes: node.memory_bytes,
        known: runner.known(),
        version: env!("CARGO_PKG_VERSION").into(),
        gpus: node.gpus.devices(),
    };
    leader
        .call(kiln_api::leader::forever(), |channel| {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(pb::AgentMessage {
                msg: Some(Out::Register(register.clone())),
            });
            async move {
                let inbound = AgentServiceClient::new(channel)
                    .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                    .await?
                    .into_inner();
                Ok((tx, inbound))
            }
        })
        .await
}

/// The open stream: what goes out, what comes in, and the drivers it registered with.
type Streams = (
    mpsc::UnboundedSender<pb::AgentMessage>,
    Inbound,
    tokio::sync::watch::Receiver<Vec<String>>,
);

async fn session(
    addr: &str,
    (tx, mut inbound, mut offered): Streams,
    node: &Fingerprint,
    runner: &Arc<Runner>,
    outbox: &Outbox,
    logs: &LogStore,
    shutdown: &CancellationToken,
) -> Ended {
    outbox.attach(tx.clone());
    let stop_heartbeats = CancellationToken::new();
    let ended = loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            // The drivers changed (Docker came or went): register again with the new list.
            _ = offered.changed() => break Ended::Broken,
            m = inbound.message() => m,
        };
        let msg = match msg {
            Ok(Some(pb::CoordinatorMessage { msg: Some(m) })) => m,
            Ok(Some(_)) => continue,
            Ok(None) => break Ended::Broken,
            // A refusal (an event the leader did not understand) says why; the event stays
            // in the outbox.
            Err(status) => {
                tracing::warn!(%addr, error = %status, "the leader ended the session");
                break Ended::Broken;
            }
        };
        match msg {
            In::Registered(r) => {
                tracing::info!(%addr, leader = r.leader_id, "registered with the leader");
                let every = Duration::from_millis(r.heartbeat_ms.max(50));
                let (gpus, runner) = (node.gpus.clone(), runner.clone());
                tokio::spawn(heartbeats(
                    tx.clone(),
                    every,
                    stop_heartbeats.clone(),
                    gpus,
                    runner,
                ));
            }
            In::Assign(a) => runner.assign(a),
            In::Kill(k) => runner.kill(&k.task_id, k.attempt, &k.reason),
            In::Prefetch(c) => runner.prefetch(c),
            In::Ack(a) => outbox.ack(a.up_to_seq),
            In::LogRequest(r) => {
                let Some(path) = logs.log_path(&r.task_id, r.attempt) else {
                    continue;
                };
                let done = runner.done(&r.task_id, r.attempt);
                let tx = tx.clone();
                tokio::spawn(logs::stream(path, r.request_id, r.follow, done, move |d| {
                    tx.send(pb::AgentMessage {
                        msg: Some(Out::LogData(d)),
                    })
                    .is_ok()
                }));
            }
        }
    };
    stop_heartbeats.cancel();
    outbox.detach();
    ended
}

async fn heartbeats(
    tx: mpsc::UnboundedSender<pb::AgentMessage>,
    every: Duration,
    stop: CancellationToken,
    gpus: Arc<dyn crate::gpu::GpuSource>,
    runner: Arc<Runner>,
) {
    let mut usage = Usage::default();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (cpu_percent, memory_used_bytes) = usage.sample();
        let hb = pb::Heartbeat {
            cpu_percent,
            memory_used_bytes,
            gpus: gpus.stats(&runner.gpu_load()),
        };
        if tx
            .send(pb::AgentMessage {
                msg: Some(Out::Heartbeat(hb)),
            })
            .is_err()
        {
            return;
        }
    }
}
