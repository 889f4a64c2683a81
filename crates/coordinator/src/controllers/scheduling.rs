//! The scheduling loop: event-driven, one Raft entry per pass.
//!
//! It sleeps on the state's applied index and runs a pass whenever anything was applied (a
//! submission, a completion, a node joining or leaving); there is no polling interval between
//! a submission and its placement. Passes run one at a time, so each sees the placements of
//! the one before it.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::scheduler;
use crate::state::{Command, Placed};

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut applied = core.state.subscribe();
    let mut metrics = core.raft.metrics();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            r = metrics.changed() => if r.is_err() { return },
        }
        if !core.is_leader() {
            continue;
        }
        let woke = Instant::now();
        if let Err(e) = pass(&core).await {
            tracing::debug!(error = %e, "scheduling pass not committed");
            continue;
        }
        core.metrics
            .scheduling_seconds
            .observe(woke.elapsed().as_secs_f64());
    }
}

/// One pass: plan from the current state, commit, dispatch.
async fn pass(core: &Core) -> crate::error::Result<()> {
    let number = core.next_pass();
    let plan = {
        let state = core.state.read();
        if state.pending.is_empty() {
            core.waiting().clear();
            return Ok(());
        }
        scheduler::schedule(&state, number, &core.tuning.scheduler)
    };
    *core.waiting() = plan.waiting;
    if plan.placements.is_empty() {
        return Ok(());
    }
    let span = tracing::debug_span!(
        "schedule",
        pass = number,
        placements = plan.placements.len()
    );
    let _e = span.enter();
    let command = Command::PlaceBatch {
        pass: number,
        placements: plan.placements,
        now_ms: now_ms(),
    };
    drop(_e);
    let Placed { accepted, rejected } = core.write(command).await?;
    core.metrics.placements.inc_by(accepted.len() as u64);
    core.metrics
        .placements_rejected
        .inc_by(rejected.len() as u64);
    let state = core.state.read();
    let assignments = accepted
        .iter()
        .filter_map(|p| Some((p.node.clone(), core.assignment(&state, p)?)));
    core.sessions.assign(assignments);
    Ok(())
}
