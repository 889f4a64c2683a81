//! The rollout controller: keeps every service at its desired count of healthy replicas of
//! its target revision, and moves it from one revision to the next without dropping
//! requests.
//!
//! [`plan`] is a pure function of a service, the time and which draining replicas the
//! gateways have finished with; the loop around it proposes what it returns as one
//! [`Command::ServiceActions`] per service, and sends the kills the state machine answers.
//!
//! A rollout to revision N (Kubernetes' rolling update, Nomad's canaries and auto_revert):
//!
//! 1. **Canaries** (`update.canary: C`, deploys only): C replicas of N start beside the old
//!    ones; nothing old stops. Once they are healthy, `auto_promote` (or `kiln promote`)
//!    lets the rollout go on.
//! 2. **Rolling**: replicas of N start while the live count stays within
//!    `desired + max_surge`; an old replica is drained while the serving count stays at or
//!    above `desired - max_unavailable` (old ones that do not serve go first: losing them
//!    costs nothing). A new replica serves once healthy for `min_healthy_time`.
//! 3. **Done** when `desired` replicas of N are healthy and nothing old is left: N is now the
//!    stable revision.
//! 4. **Failed** if not done within `healthy_deadline`: with `auto_revert`, the service goes
//!    back to its stable revision (a rollout of its own, all at once); without, the rollout
//!    halts where it is, old replicas still serving, for a person to decide.
//!
//! A rollback (`kiln rollback`, or an auto-revert) starts every replica of the old revision
//! at once and counts them healthy on their first passing check: that revision has proved
//! itself before. Draining: a replica to stop first leaves the endpoint tables; it is killed
//! once every gateway reports nothing in flight to it, or after [`DRAIN_TIMEOUT_MS`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::{Core, now_ms};
use crate::state::services::{Replica, RolloutKind, Service};
use crate::state::{Command, ServiceAction, ServiceChanged, TaskStatus};

/// A draining replica is killed after this long even if a gateway still reports requests.
pub const DRAIN_TIMEOUT_MS: i64 = 30_000;

/// Replicas with their slots.
type Slots<'a> = Vec<(u32, &'a Replica)>;

/// What to do next about one service.
pub fn plan(s: &Service, now_ms: i64, drained: &BTreeSet<u32>) -> Vec<ServiceAction> {
    let mut out = Vec::new();
    for (&slot, r) in &s.replicas {
        if let Some(since) = r.draining_since
            && !r.stopping
            && r.task.status.is_allocated()
            && (drained.contains(&slot) || now_ms - since >= DRAIN_TIMEOUT_MS)
        {
            out.push(ServiceAction::Stop { slot });
        }
        if r.task.status == TaskStatus::Waiting
            && r.draining_since.is_none()
            && r.restart_after_ms.is_some_and(|t| now_ms >= t)
        {
            out.push(ServiceAction::Restart { slot });
        }
    }
    let Some(revision) = s.revision(s.target) else {
        return out;
    };
    let update = &revision.spec.update;
    let desired = s.desired as usize;
    let live: Vec<(u32, &Replica)> = s
        .replicas
        .iter()
        .filter(|(_, r)| r.live())
        .map(|(&k, r)| (k, r))
        .collect();
    let (new, old): (Slots, Slots) = live.into_iter().partition(|(_, r)| r.revision == s.target);
    let start = |out: &mut Vec<ServiceAction>, n: usize| {
        out.extend((0..n).map(|_| ServiceAction::Start { revision: s.target }));
    };

    let Some(rollout) = &s.rollout else {
        // Steady: `desired` replicas of the target, nothing else.
        out.extend(old.iter().map(|&(slot, _)| ServiceAction::Drain { slot }));
        start(&mut out, desired.saturating_sub(new.len()));
        drain_extra(&mut out, &new, desired);
        return out;
    };
    if rollout.halted {
        return out;
    }
    let min_healthy_ms = match rollout.kind {
        RolloutKind::Deploy => update.min_healthy_time_ms as i64,
        // A revision going back into service proved itself before.
        RolloutKind::Rollback | RolloutKind::Revert => 0,
    };
    let healthy = |r: &Replica| {
        r.serving()
            && r.healthy_since
                .is_some_and(|t| now_ms - t >= min_healthy_ms)
    };
    let healthy_new = new.iter().filter(|(_, r)| healthy(r)).count();

    if !rollout.promoted {
        let canaries = update.canary as usize;
        start(&mut out, canaries.saturating_sub(new.len()));
        if healthy_new >= canaries {
            if update.auto_promote {
                out.push(ServiceAction::Promote);
            }
            // Waiting for `kiln promote` is not a failure.
            return out;
        }
    } else {
        let surge = match rollout.kind {
            RolloutKind::Deploy => update.max_surge as usize,
            RolloutKind::Rollback | RolloutKind::Revert => desired,
        };
        let room = (desired + surge).saturating_sub(new.len() + old.len());
        start(&mut out, desired.saturating_sub(new.len()).min(room));

        // Drain old replicas while enough serve: those not serving first.
        let floor = desired.saturating_sub(update.max_unavailable as usize);
        let mut serving = healthy_new + old.iter().filter(|(_, r)| r.serving()).count();
        for &(slot, r) in old.iter().filter(|(_, r)| !r.serving()) {
            let _ = r;
            out.push(ServiceAction::Drain { slot });
        }
        for &(slot, _) in old.iter().filter(|(_, r)| r.serving()) {
            if serving > floor {
                out.push(ServiceAction::Drain { slot });
                serving -= 1;
            }
        }
        drain_extra(&mut out, &new, desired);
        if old.is_empty() && healthy_new >= desired && new.len() <= desired {
            out.push(ServiceAction::Healthy {
                revision: rollout.to,
            });
            return out;
        }
    }
    if now_ms - rollout.started_ms >= update.healthy_deadline_ms as i64 {
        let revert_to = match rollout.kind {
            RolloutKind::Deploy if update.auto_revert => s.stable.filter(|&r| r != rollout.to),
            _ => None,
        };
        out.push(ServiceAction::Failed {
            revision: rollout.to,
            reason: format!(
                "{healthy_new} of {desired} replicas healthy after {} ms",
                update.healthy_deadline_ms
            ),
            revert_to,
        });
    }
    out
}

/// Drains replicas of the target beyond `desired`: those not serving first, then the
/// newest.
fn drain_extra(out: &mut Vec<ServiceAction>, new: &[(u32, &Replica)], desired: usize) {
    let mut order: Vec<&(u32, &Replica)> = new.iter().collect();
    order.sort_by_key(|(slot, r)| (r.serving(), std::cmp::Reverse(*slot)));
    for &&(slot, _) in order.iter().take(new.len().saturating_sub(desired)) {
        out.push(ServiceAction::Drain { slot });
    }
}

pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut applied = core.state.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = applied.changed() => if r.is_err() { return },
        }
        if !core.is_leader() {
            continue;
        }
        let now = now_ms();
        let decisions: Vec<(u64, Vec<ServiceAction>)> = {
            let state = core.state.read();
            let traffic = core.traffic();
            state
                .services
                .values()
                .map(|s| {
                    let drained = s
                        .replicas
                        .iter()
                        .filter_map(|(&slot, r)| {
                            let since = r.draining_since?;
                            traffic.drained(&s.key(), slot, since, now).then_some(slot)
                        })
                        .collect();
                    (s.number, plan(s, now, &drained))
                })
                .filter(|(_, actions)| !actions.is_empty())
                .collect()
        };
        for (service, actions) in decisions {
            tracing::debug!(service, ?actions, "rollout step");
            let command = Command::ServiceActions {
                service,
                actions,
                now_ms: now,
            };
            match core.write::<ServiceChanged>(command).await {
                Ok(changed) => {
                    if !changed.skipped.is_empty() {
                        tracing::debug!(service, skipped = ?changed.skipped, "rollout step partly stale");
                    }
                    let state = core.state.read();
                    core.sessions.kill(&state, &changed.kills);
                }
                Err(e) => tracing::debug!(error = %e, "rollout step not applied"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
