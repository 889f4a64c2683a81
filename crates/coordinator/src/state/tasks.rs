//! Task events and lost tasks, for every kind of task.
//!
//! The transitions themselves are [`Task`]'s ([`Task::step`], [`Task::end_attempt`]): one
//! guard that makes events idempotent, one placed → running with its cancel-kill, one way
//! to close an attempt. This file applies them to the cluster (reservations released,
//! kills collected) and hands an ended attempt to its kind, which decides what follows: a
//! pipeline stage moves its run's DAG on (`runs.rs`), a service replica restarts or goes
//! (`services.rs`).

use super::ClusterState;
use super::command::{EventsApplied, Kill, Response, TaskEvent};
use super::model::{AttemptEnd, Step, Task, TaskRef, TaskStatus};

impl ClusterState {
    pub(super) fn task_events(
        &mut self,
        node: &str,
        events: &[TaskEvent],
        now_ms: i64,
    ) -> Response {
        let (mut applied, mut ignored, mut kills) = (0, 0, Vec::new());
        for e in events {
            if self.task_event(node, e, now_ms, &mut kills) {
                applied += 1;
            } else {
                ignored += 1;
            }
        }
        EventsApplied {
            applied,
            ignored,
            kills,
        }
        .into()
    }

    /// Applies one event; false when it changes nothing (old attempt, other node, replay).
    fn task_event(
        &mut self,
        node: &str,
        e: &TaskEvent,
        now_ms: i64,
        kills: &mut Vec<Kill>,
    ) -> bool {
        let Some(task) = self.task_mut(e.task) else {
            return false;
        };
        match task.step(node, e) {
            Step::Ignored => false,
            Step::Started { kill_due } => {
                if kill_due {
                    kills.extend(task.kill(e.task, cancel_reason(e.task)));
                }
                if let TaskRef::Replica(at) = e.task {
                    let metrics = e.metrics_endpoint.clone();
                    self.replica_started(at, e.endpoint.clone(), metrics, e.image.as_deref());
                }
                true
            }
            Step::Health(ok) => match e.task {
                TaskRef::Replica(at) => self.replica_health(at, ok, e, now_ms),
                TaskRef::Stage(_) => false,
            },
            Step::Ended(status) => {
                self.attempt_ended(e.task, status, now_ms);
                true
            }
        }
    }

    /// The current attempt is lost with its node: closed as lost, and what follows decided
    /// as for any other end.
    pub(super) fn lose_task(&mut self, task: TaskRef, message: &str, at_ms: i64) {
        if let Some(t) = self.task_mut(task) {
            t.end_attempt(&AttemptEnd::lost(message, at_ms));
            self.attempt_ended(task, TaskStatus::Lost, at_ms);
        }
    }

    /// After an attempt was closed: its reservation goes, and its kind decides what follows.
    fn attempt_ended(&mut self, task: TaskRef, status: TaskStatus, now_ms: i64) {
        self.release(task);
        match task {
            TaskRef::Stage(at) => self.stage_attempt_ended(at, status, now_ms),
            TaskRef::Replica(at) => self.replica_attempt_ended(at, status, now_ms),
        }
    }

    /// Frees the task's reservation on its current node.
    pub(super) fn release(&mut self, task: TaskRef) {
        let ask = self.ask(task);
        let Some(node) = self
            .task(task)
            .and_then(|t| t.current())
            .map(|a| a.node.clone())
        else {
            return;
        };
        if let Some(n) = self.nodes.get_mut(&node)
            && n.allocations.remove(&task)
        {
            n.reserved = n.reserved.saturating_sub(ask);
            for gpu in &mut n.gpus {
                if gpu.whole == Some(task) {
                    gpu.whole = None;
                }
                gpu.shares.remove(&task);
            }
        }
    }

    pub(super) fn task_mut(&mut self, task: TaskRef) -> Option<&mut Task> {
        match task {
            TaskRef::Stage(at) => self
                .runs
                .get_mut(&at.run)?
                .stages
                .get_mut(at.stage as usize)?
                .shards
                .get_mut(at.shard as usize),
            TaskRef::Replica(at) => Some(
                &mut self
                    .services
                    .get_mut(&at.service)?
                    .replicas
                    .get_mut(&at.slot)?
                    .task,
            ),
        }
    }
}

/// Why a task that was asked to stop is killed.
pub(super) fn cancel_reason(task: TaskRef) -> &'static str {
    match task {
        TaskRef::Stage(_) => "run cancelled",
        TaskRef::Replica(_) => "replica stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::Attempt;

    /// A task placed on `n1` at attempt 2.
    fn placed() -> Task {
        let mut t = Task::new(TaskStatus::Placed);
        t.attempt = 2;
        t.attempts.push(Attempt {
            attempt: 2,
            node: "n1".into(),
            status: TaskStatus::Placed,
            exit_code: None,
            message: String::new(),
            transitions: vec![(TaskStatus::Placed, 0)],
            gpus: Vec::new(),
            image: None,
            artifacts: Default::default(),
        });
        t
    }

    fn event(status: TaskStatus, attempt: u32) -> TaskEvent {
        TaskEvent {
            task: TaskRef::stage(1, 0),
            attempt,
            status,
            exit_code: Some(0),
            message: String::new(),
            at_ms: 5,
            image: None,
            endpoint: None,
            health: None,
            metrics_endpoint: None,
            artifacts: Default::default(),
        }
    }

    #[test]
    fn only_the_current_attempt_on_its_node_moves_a_task() {
        use TaskStatus::*;
        // (who says it, which attempt, what) → what the task does
        let rows: &[(&str, &str, u32, TaskStatus, Step)] = &[
            ("start", "n1", 2, Running, Step::Started { kill_due: false }),
            ("another node", "n2", 2, Running, Step::Ignored),
            ("an old attempt", "n1", 1, Running, Step::Ignored),
            ("a later attempt", "n1", 3, Succeeded, Step::Ignored),
            ("an end", "n1", 2, Failed, Step::Ended(Failed)),
            ("not an agent's word", "n1", 2, Pending, Step::Ignored),
        ];
        for (name, node, attempt, status, want) in rows {
            let mut t = placed();
            assert_eq!(t.step(node, &event(*status, *attempt)), *want, "{name}");
        }
    }

    #[test]
    fn an_end_applies_once_and_a_cancelled_start_asks_for_its_kill_again() {
        let mut t = placed();
        t.cancel_requested = true;
        let start = t.step("n1", &event(TaskStatus::Running, 2));
        assert_eq!(start, Step::Started { kill_due: true });
        let end = event(TaskStatus::Failed, 2);
        assert_eq!(t.step("n1", &end), Step::Ended(TaskStatus::Failed));
        // The caller decides the task's status; until then a replay must not count twice.
        t.status = TaskStatus::Failed;
        assert_eq!(t.step("n1", &end), Step::Ignored);
        assert_eq!(t.failures, 1);
        let a = t.current().expect("attempt 2");
        let statuses: Vec<_> = a.transitions.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses,
            [TaskStatus::Placed, TaskStatus::Running, TaskStatus::Failed]
        );
    }
}
