//! The leader's loops. Each runs on every coordinator and does its work only while that
//! coordinator leads; all of them act by proposing commands, never by editing state.
//!
//! - [`scheduling`]: wakes on every applied change, runs a scheduler pass over the state,
//!   commits the pass as one entry and pushes the placements to the agents.
//! - [`liveness`]: marks nodes down whose heartbeats stopped past the grace period.
//! - [`rollout`]: keeps each service at its desired count of healthy replicas and rolls
//!   it from revision to revision (canaries, rolling updates, auto-revert, draining).
//! - [`autoscale`]: sets autoscaled services' replica counts from live metrics (HPA rule,
//!   stabilisation window, panic mode, scale to zero).
//! - [`deploy_timeouts`]: fails deploy stages that waited past their timeout.
//! - [`triggers`]: starts each received push: reads its pipeline at its commit, applies
//!   the filters, proposes its run (or why it starts nothing).
//! - [`polling`]: polls each repository's heads and records the pushes no webhook told of.
//! - [`leadership`]: on gaining leadership starts every node's grace period afresh; on losing
//!   it closes the agent sessions so agents reconnect to the new leader.
//! - [`retention`]: moves finished runs past retention to the archive on disk.
//! - [`backups`]: scheduled backups, each kept only once a restore of it checks out.
//! - [`assignment`]: what an agent is told to run for a placed task.

pub mod assignment;
pub mod autoscale;
pub mod backups;
pub mod deploy_timeouts;
pub mod leadership;
pub mod liveness;
pub mod polling;
pub mod retention;
pub mod rollout;
pub mod scheduling;
pub mod triggers;

/// Waits for the next `tick` at which this coordinator leads; `false` once shut down. The
/// loops that act on a clock run `while leader_tick(..).await { .. }`.
pub async fn leader_tick(
    core: &crate::core::Core,
    tick: &mut tokio::time::Interval,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tick.tick() => {}
        }
        if core.is_leader() {
            return true;
        }
    }
}
