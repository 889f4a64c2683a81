//! Reacting to leadership changes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::Core;

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut metrics = core.raft.metrics();
    let mut leading = false;
    loop {
        let now_leading = metrics.borrow().current_leader == Some(core.id);
        if now_leading != leading {
            leading = now_leading;
            if leading {
                tracing::info!(id = core.id, "became leader");
                // Every node gets a full grace period to reconnect to the new leader, and
                // every gateway to report to it before a drain counts as done.
                core.liveness().clear();
                core.traffic().reset(crate::core::now_ms());
            } else {
                tracing::info!(id = core.id, "no longer leader; closing agent sessions");
                core.sessions.close_all();
                core.waiting().clear();
                core.traffic().reset(crate::core::now_ms());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}
