//! Deploy stages that wait too long: a deploy stage waiting for an approval or a rollout
//! past its stage's `timeout` is proposed timed out, on the leader, which fails the stage
//! and abandons its deploy (`state::deploy_stages`). The state decides what is overdue;
//! this loop only brings the clock.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::{Command, ServiceChanged};

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while super::leader_tick(&core, &mut tick, &shutdown).await {
        let now = now_ms();
        let overdue = core.state.read().overdue_deploy_stages(now);
        for task in overdue {
            let command = Command::DeployStageTimedOut { task, now_ms: now };
            if let Err(e) = core.write::<ServiceChanged>(command).await {
                tracing::debug!(error = %e, "deploy stage timeout not applied");
            }
        }
    }
}
