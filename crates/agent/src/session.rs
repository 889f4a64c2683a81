//! The agent's one long-lived stream to the leader.
//!
//! Connect to a coordinator; if it is a follower it refuses with the leader's address, and
//! the next attempt goes there. Once in: `Register` (with every task this agent knows),
//! re-send unacknowledged events, heartbeat, and handle what the leader pushes. When the
//! stream breaks (the leader died or stepped down), reconnect at once; running tasks are not
//! touched, and their events wait in the outbox.

use std::sync::Arc;
use std::time::Duration;

use kiln_api::pb::agent_service_client::AgentServiceClient;
use kiln_api::pb::{self, agent_message::Msg as Out, coordinator_message::Msg as In};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::Config;
use crate::fingerprint::{Fingerprint, Usage};
use crate::logs::{self, LogStore};
use crate::outbox::Outbox;
use crate::runner::Runner;

enum Ended {
    /// The coordinator is not the leader; try this address next.
    Redirect(String),
    /// The session broke after it was established.
    Broken,
    /// It could not be established.
    Failed(String),
    Shutdown,
}

pub async fn run(
    config: Config,
    node: Fingerprint,
    runner: Arc<Runner>,
    outbox: Arc<Outbox>,
    logs: LogStore,
    shutdown: CancellationToken,
) {
    let mut next_addr: Option<String> = None;
    let mut rotation = 0usize;
    let mut failures = 0u32;
    loop {
        let addr = next_addr.take().unwrap_or_else(|| {
            rotation += 1;
            config.coordinators[(rotation - 1) % config.coordinators.len()].clone()
        });
        match session(&addr, &config, &node, &runner, &outbox, &logs, &shutdown).await {
            Ended::Shutdown => return,
            Ended::Redirect(leader) => {
                tracing::debug!(%addr, %leader, "redirected to the leader");
                next_addr = Some(leader);
                failures += 1;
            }
            Ended::Broken => {
                tracing::info!(%addr, "session with the leader ended; reconnecting");
                failures = 0;
                continue;
            }
            Ended::Failed(e) => {
                tracing::debug!(%addr, error = %e, "could not open a session");
                failures += 1;
            }
        }
        // Back off a little once every coordinator has been tried, so a cluster with no
        // leader yet is not hammered; the first retries are immediate.
        if failures as usize >= config.coordinators.len() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

async fn session(
    addr: &str,
    config: &Config,
    node: &Fingerprint,
    runner: &Arc<Runner>,
    outbox: &Outbox,
    logs: &LogStore,
    shutdown: &CancellationToken,
) -> Ended {
    let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3)),
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut offered = runner.drivers().offered();
    let drivers = offered.borrow_and_update().clone();
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
    let _ = tx.send(pb::AgentMessage {
        msg: Some(Out::Register(register)),
    });
    let mut client = AgentServiceClient::new(channel);
    let mut inbound = match client
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let hint = status
                .metadata()
                .get(kiln_api::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok());
            return match hint {
                Some(leader) => Ended::Redirect(leader.to_string()),
                None => Ended::Failed(status.to_string()),
            };
        }
    };
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
            Ok(None) | Err(_) => break Ended::Broken,
        };
        match msg {
            In::Registered(r) => {
                tracing::info!(%addr, leader = r.leader_id, "registered with the leader");
                runner.set_leader(Some(addr.to_string()));
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
    runner.set_leader(None);
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
