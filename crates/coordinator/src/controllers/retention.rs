//! On the leader, every `archive_every`: the finished runs past retention
//! (`ClusterState::runs_to_archive`) leave the in-memory state for the archive on disk,
//! through one `Command::ArchiveRuns` at a time.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::{AccessChanged, Command};

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(core.tuning.archive_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while super::leader_tick(&core, &mut tick, &shutdown).await {
        // Several batches in a row when a backlog built up.
        loop {
            let runs = core
                .state
                .read()
                .runs_to_archive(core.tuning.retention, now_ms());
            if runs.is_empty() {
                break;
            }
            let n = runs.len();
            match core
                .write::<AccessChanged>(Command::ArchiveRuns { runs })
                .await
            {
                Ok(_) => tracing::info!(runs = n, "runs past retention archived"),
                Err(e) => {
                    tracing::warn!(error = %e, "archiving runs failed; trying again later");
                    break;
                }
            }
        }
    }
}
