//! Node liveness: a ready node whose last heartbeat is older than the grace period is
//! proposed down, which marks its tasks lost and lets them be placed again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::{Command, NodeDown, NodeStatus};

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let grace = core.tuning.node_grace;
    let mut tick = tokio::time::interval((grace / 8).max(std::time::Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while super::leader_tick(&core, &mut tick, &shutdown).await {
        let now = now_ms();
        let expired: Vec<String> = {
            let state = core.state.read();
            let mut live = core.liveness();
            state
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Ready)
                .filter(|n| {
                    // A node the leader has not heard from yet starts its grace now.
                    let seen = live.entry(n.id.clone()).or_default();
                    if seen.last_seen_ms == 0 {
                        seen.last_seen_ms = now;
                    }
                    now - seen.last_seen_ms > grace.as_millis() as i64
                })
                .map(|n| n.id.clone())
                .collect()
        };
        for node in expired {
            tracing::warn!(%node, "node missed its heartbeats for the grace period: marking it down");
            if let Ok(NodeDown { lost }) = core
                .write(Command::MarkNodeDown {
                    node: node.clone(),
                    now_ms: now,
                })
                .await
            {
                if let Some(s) = core.sessions.get(&node) {
                    s.closed.cancel();
                }
                tracing::warn!(%node, lost = lost.len(), "node down; its tasks are lost");
            }
        }
    }
}
