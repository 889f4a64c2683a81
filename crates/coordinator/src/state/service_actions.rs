//! Applying the rollout controller's and the autoscaler's decisions about one service.
//!
//! The decisions ([`ServiceAction`]) were made on the leader from a view that may be stale
//! by the time they apply. So each action is a small function that either applies or is
//! **skipped with a reason** ("replica 4 is not draining"): a stale decision is a normal
//! outcome, reported back in [`ServiceChanged::skipped`], never an error. Only what no
//! state could ever allow (an unknown service or revision) rejects a batch, and that is
//! checked for the whole batch before any of it applies: a batch never half-applies.

use super::ClusterState;
use super::command::{Kill, Response, ServiceChanged};
use super::model::{TaskRef, TaskStatus};
use super::services::{Rollout, RolloutKind, Service, ServiceAction, new_replica};
use super::tasks::cancel_reason;

/// What an applied action asks of the cluster beyond its service.
enum Effect {
    None,
    /// The replica in this slot waits for a placement.
    Queue(u32),
    /// The replica in this slot no longer does.
    Unqueue(u32),
    Kill(Kill),
    /// The rollout to this revision ended: healthy, or failed with why.
    RolloutEnded(u32, Result<(), String>),
}

/// Applied, or skipped because the state no longer calls for it (with why).
type Applied = Result<Effect, String>;

impl ClusterState {
    pub(super) fn service_actions(
        &mut self,
        number: u64,
        actions: &[ServiceAction],
        now_ms: i64,
    ) -> Response {
        let Some(s) = self.services.get_mut(&number) else {
            return Response::rejected(format!("service {number} not found"));
        };
        if let Some(reason) = actions.iter().find_map(|a| s.impossible(a)) {
            return Response::rejected(reason);
        }
        let mut changed = ServiceChanged::default();
        let mut ended = Vec::new();
        for action in actions {
            let effect = match s.act(number, action, now_ms) {
                Ok(effect) => effect,
                Err(reason) => {
                    changed.skipped.push(reason);
                    continue;
                }
            };
            match effect {
                Effect::None => {}
                Effect::Queue(slot) => {
                    self.pending.insert(TaskRef::replica(number, slot));
                }
                Effect::Unqueue(slot) => {
                    self.pending.remove(&TaskRef::replica(number, slot));
                }
                Effect::Kill(kill) => changed.kills.push(kill),
                Effect::RolloutEnded(revision, outcome) => ended.push((revision, outcome)),
            }
        }
        for (revision, outcome) in ended {
            self.rollout_ended(number, revision, outcome, now_ms);
        }
        changed.into()
    }
}

impl Service {
    /// Why no state of this service could ever allow `action`, if so.
    fn impossible(&self, action: &ServiceAction) -> Option<String> {
        let revisions = match action {
            ServiceAction::Start { revision } | ServiceAction::Healthy { revision } => {
                vec![*revision]
            }
            ServiceAction::Failed {
                revision,
                revert_to,
                ..
            } => std::iter::once(*revision).chain(*revert_to).collect(),
            _ => Vec::new(),
        };
        revisions
            .into_iter()
            .find(|n| self.revision(*n).is_none())
            .map(|n| format!("{} has no revision {n}", self.name))
    }

    fn act(&mut self, number: u64, action: &ServiceAction, now_ms: i64) -> Applied {
        match action {
            ServiceAction::Start { revision } => Ok(self.start(*revision)),
            ServiceAction::Drain { slot } => self.drain(*slot, now_ms),
            ServiceAction::Stop { slot } => self.stop(number, *slot),
            ServiceAction::Restart { slot } => self.restart(*slot),
            ServiceAction::Healthy { revision } => self.healthy(*revision, now_ms),
            ServiceAction::Failed {
                revision,
                reason,
                revert_to,
            } => self.failed(*revision, reason, *revert_to, now_ms),
            ServiceAction::Promote => self.promote(now_ms),
            ServiceAction::Scale {
                replicas,
                reason,
                unless_rolling,
            } => self.scale(*replicas, reason, *unless_rolling, now_ms),
        }
    }

    /// A new replica of `revision`, in a slot never used before.
    fn start(&mut self, revision: u32) -> Effect {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.replicas
            .insert(slot, new_replica(revision, TaskStatus::Pending));
        Effect::Queue(slot)
    }

    /// Out of the endpoint tables at once. A replica never placed, or waiting to restart,
    /// has nothing to drain or kill: it simply goes.
    fn drain(&mut self, slot: u32, now_ms: i64) -> Applied {
        let r = self
            .replicas
            .get_mut(&slot)
            .ok_or_else(|| format!("replica {slot} is gone"))?;
        if r.draining_since.is_some() {
            return Err(format!("replica {slot} is already draining"));
        }
        r.draining_since = Some(now_ms);
        if r.task.status.is_allocated() {
            return Ok(Effect::None);
        }
        self.replicas.remove(&slot);
        Ok(Effect::Unqueue(slot))
    }

    /// The kill of a drained replica. It also marks the task cancelled, which is what
    /// reconciliation reads: an agent that reconnects is told to stop it again, so a kill
    /// lost with a session is not a replica that runs for ever.
    fn stop(&mut self, number: u64, slot: u32) -> Applied {
        let r = self
            .replicas
            .get_mut(&slot)
            .ok_or_else(|| format!("replica {slot} is gone"))?;
        if r.draining_since.is_none() || r.stopping {
            return Err(format!(
                "replica {slot} is not draining, or already stopping"
            ));
        }
        let task = TaskRef::replica(number, slot);
        let kill = r
            .task
            .kill(task, cancel_reason(task))
            .ok_or_else(|| format!("replica {slot} was never placed"))?;
        r.stopping = true;
        r.task.cancel_requested = true;
        Ok(Effect::Kill(kill))
    }

    /// A replica whose restart backoff has passed waits for a placement again.
    fn restart(&mut self, slot: u32) -> Applied {
        let r = self
            .replicas
            .get_mut(&slot)
            .filter(|r| r.task.status == TaskStatus::Waiting && r.draining_since.is_none())
            .ok_or_else(|| format!("replica {slot} is not waiting to restart"))?;
        r.task.status = TaskStatus::Pending;
        r.restart_after_ms = None;
        Ok(Effect::Queue(slot))
    }

    /// The rollout to `revision` completed: it is the stable revision now.
    fn healthy(&mut self, revision: u32, now_ms: i64) -> Applied {
        if self.rollout.as_ref().is_none_or(|r| r.to != revision) {
            return Err(format!("no rollout to revision {revision}"));
        }
        self.rollout = None;
        self.stable = Some(revision);
        if let Some(r) = self.revisions.get_mut(revision as usize - 1) {
            r.healthy_ms.get_or_insert(now_ms);
        }
        self.note(now_ms, format!("revision {revision} healthy"));
        Ok(Effect::RolloutEnded(revision, Ok(())))
    }

    /// The rollout to `revision` failed: back to `revert_to` at once, or halt there.
    fn failed(
        &mut self,
        revision: u32,
        reason: &str,
        revert_to: Option<u32>,
        now_ms: i64,
    ) -> Applied {
        if self
            .rollout
            .as_ref()
            .is_none_or(|r| r.to != revision || r.halted)
        {
            return Err(format!("no live rollout to revision {revision}"));
        }
        if let Some(r) = self.revisions.get_mut(revision as usize - 1) {
            r.failed = Some(reason.to_string());
        }
        self.note(now_ms, format!("revision {revision} failed: {reason}"));
        let mut outcome = format!("revision {revision} failed: {reason}");
        match revert_to {
            Some(to) => {
                self.target = to;
                self.rollout = Some(Rollout {
                    from: Some(revision),
                    to,
                    kind: RolloutKind::Revert,
                    started_ms: now_ms,
                    promoted: true,
                    halted: false,
                });
                self.note(now_ms, format!("reverted to revision {to}"));
                outcome.push_str(&format!("; reverted to revision {to}"));
            }
            None => {
                if let Some(r) = self.rollout.as_mut() {
                    r.halted = true;
                }
            }
        }
        Ok(Effect::RolloutEnded(revision, Err(outcome)))
    }

    /// The canaries proved healthy: the rolling update may go on. The rolling phase gets
    /// its own `healthy_deadline` (a person may have taken their time to promote). One no
    /// longer due is skipped; `kiln promote` checks before proposing, to say so.
    fn promote(&mut self, now_ms: i64) -> Applied {
        let r = self
            .rollout
            .as_mut()
            .filter(|r| !r.promoted)
            .ok_or("nothing awaits promotion")?;
        r.promoted = true;
        r.started_ms = now_ms;
        let to = r.to;
        self.note(now_ms, format!("canaries of revision {to} promoted"));
        Ok(Effect::None)
    }

    /// A new replica count. The autoscaler's (`unless_rolling`) is skipped once a rollout
    /// has started since it looked.
    fn scale(&mut self, replicas: u32, reason: &str, unless_rolling: bool, now_ms: i64) -> Applied {
        if unless_rolling && self.rollout.is_some() {
            return Err("a rollout started: the autoscaler waits".into());
        }
        if replicas != self.desired {
            let text = format!("scaled {} → {replicas}: {reason}", self.desired);
            self.note(now_ms, text);
            self.desired = replicas;
        }
        Ok(Effect::None)
    }
}

#[cfg(test)]
mod tests {
    use kiln_api::validate::parse_service;

    use super::*;
    use crate::state::Command;
    use crate::state::services::Deploy;

    /// A cluster with one service `m` (revision 1, two replicas wanted, none started).
    fn world() -> (ClusterState, u64) {
        let mut s = ClusterState::default();
        let spec =
            parse_service("svc.yaml", "name: m\ncommand: ./serve\nreplicas: 2\n").expect("valid");
        s.apply(&Command::Deploy {
            deploy: Box::new(Deploy::new(spec, "default")),
            request_id: String::new(),
            now_ms: 0,
        });
        let number = s.services.keys().next().copied().expect("a service");
        (s, number)
    }

    fn act(s: &mut ClusterState, service: u64, actions: Vec<ServiceAction>) -> Response {
        s.apply(&Command::ServiceActions {
            service,
            actions,
            now_ms: 10,
        })
    }

    #[test]
    fn a_batch_with_an_impossible_action_applies_none_of_it() {
        let (mut s, n) = world();
        let before = s.clone();
        let r = act(
            &mut s,
            n,
            vec![
                ServiceAction::Start { revision: 1 },
                ServiceAction::Start { revision: 9 },
            ],
        );
        assert_eq!(r, Response::rejected("m has no revision 9"));
        assert_eq!(s, before, "the first start must not have applied");
        let r = act(&mut s, 77, vec![ServiceAction::Promote]);
        assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    }

    #[test]
    fn stale_actions_are_skipped_with_a_reason_and_the_rest_apply() {
        let (mut s, n) = world();
        let r = act(
            &mut s,
            n,
            vec![
                ServiceAction::Start { revision: 1 },
                ServiceAction::Stop { slot: 0 },
                ServiceAction::Restart { slot: 5 },
                ServiceAction::Promote,
            ],
        );
        let Response::ServiceChanged(changed) = r else {
            panic!("expected a change, got {r:?}");
        };
        assert_eq!(
            changed.skipped,
            vec![
                "replica 0 is not draining, or already stopping".to_string(),
                "replica 5 is not waiting to restart".to_string(),
                "nothing awaits promotion".to_string(),
            ]
        );
        assert!(changed.kills.is_empty());
        assert_eq!(s.services[&n].replicas.len(), 1);
        assert!(s.pending.contains(&TaskRef::replica(n, 0)));
    }

    #[test]
    fn draining_a_replica_that_never_ran_removes_it_and_its_place_in_line() {
        let (mut s, n) = world();
        act(&mut s, n, vec![ServiceAction::Start { revision: 1 }]);
        act(&mut s, n, vec![ServiceAction::Drain { slot: 0 }]);
        assert!(s.services[&n].replicas.is_empty());
        assert!(s.pending.is_empty());
    }

    #[test]
    fn a_deploy_sent_again_with_its_request_id_is_made_once() {
        let (mut s, n) = world();
        let spec =
            parse_service("svc.yaml", "name: m\ncommand: ./serve2\nreplicas: 2\n").expect("valid");
        let deploy = Command::Deploy {
            deploy: Box::new(Deploy::new(spec, "default")),
            request_id: "req-1".into(),
            now_ms: 5,
        };
        let first = s.apply(&deploy);
        let again = s.apply(&deploy);
        assert_eq!(first, again, "the first answer, again");
        assert_eq!(
            s.services[&n].revisions.len(),
            2,
            "one new revision, not two"
        );
    }
}
