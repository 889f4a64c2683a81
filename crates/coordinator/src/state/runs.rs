//! Runs and their tasks: submission, the agents' task events, the DAG moving forward,
//! retries, losses, cancellation, and the run's own status.
//!
//! A stage's status is its shards' ([`super::StageRun::status`]); the DAG moves on stage
//! statuses, so a stage that needs a sharded one starts once every shard has succeeded.

use std::collections::BTreeMap;

use kiln_api::spec::{Pipeline, Shards, Stage};
use kiln_sharding::history::StageHistory;

use super::ClusterState;
use super::command::{Cancelled, EventsApplied, Kill, Response, Submitted, TaskEvent};
use super::model::{
    MAX_LOST_ATTEMPTS, Run, RunStatus, StageRef, StageRun, Task, TaskRef, TaskStatus,
};
use super::suite::Suite;

/// The key of a stage's timing history: `pipeline/stage`.
pub fn history_key(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}/{stage}")
}

/// How many shards a stage runs as: as written; for `{ max, target }` the recorded suite
/// time over the target (at most `max`, and `max` with no history); for a rerun of some
/// tests, no more than there are tests.
fn shard_count(stage: &Stage, history: Option<&StageHistory>, only: Option<&Vec<String>>) -> u32 {
    let n = match stage.shards {
        None => 1,
        Some(Shards::Fixed(n)) => n,
        Some(Shards::Auto { max, target_ms }) => match history.map(StageHistory::total_ms) {
            Some(total) if total > 0 => u32::try_from(total.div_ceil(target_ms.max(1)))
                .unwrap_or(u32::MAX)
                .clamp(1, max),
            _ => max,
        },
    };
    match only {
        Some(ids) => n.min(ids.len().max(1) as u32),
        None => n,
    }
}

impl ClusterState {
    pub(super) fn submit_run(
        &mut self,
        request_id: &str,
        trigger: &str,
        pipeline: &Pipeline,
        only_tests: &BTreeMap<String, Vec<String>>,
        now_ms: i64,
    ) -> Response {
        if !request_id.is_empty()
            && let Some(&run) = self.requests.get(request_id)
        {
            return Submitted {
                run,
                created: false,
            }
            .into();
        }
        let number = self.next_run.max(1);
        self.next_run = number + 1;
        let stages: Vec<StageRun> = pipeline
            .stages
            .iter()
            .map(|s| {
                let status = if s.needs.is_empty() {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Waiting
                };
                let history = self.test_history.get(&history_key(&pipeline.name, &s.name));
                let only = only_tests.get(&s.name);
                let count = shard_count(s, history, only);
                let suite = s.tests.as_ref().map(|t| {
                    let mut suite = Suite::new(t.split, count);
                    if let Some(ids) = only {
                        suite.list(ids.clone(), history);
                    }
                    suite
                });
                StageRun {
                    shards: (0..count).map(|_| Task::new(status)).collect(),
                    suite,
                }
            })
            .collect();
        let run = Run {
            number,
            pipeline: pipeline.clone(),
            status: RunStatus::Pending,
            trigger: trigger.to_string(),
            request_id: request_id.to_string(),
            created_ms: now_ms,
            finished_ms: None,
            stages,
        };
        for (at, t) in run.tasks() {
            if t.status == TaskStatus::Pending {
                self.pending.insert(at.into());
            }
        }
        self.runs.insert(number, run);
        if !request_id.is_empty() {
            self.requests.insert(request_id.to_string(), number);
        }
        Submitted {
            run: number,
            created: true,
        }
        .into()
    }

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
        let at = match e.task {
            TaskRef::Stage(at) => at,
            TaskRef::Replica(at) => return self.replica_event(node, at, e, now_ms, kills),
        };
        let Some(task) = self.task(e.task) else {
            return false;
        };
        let current = task.current().filter(|a| a.node == node);
        if task.attempt != e.attempt || !task.status.is_allocated() || current.is_none() {
            return false;
        }
        match e.status {
            TaskStatus::Running if task.status == TaskStatus::Placed => {
                let cancel = task.cancel_requested;
                let t = self.task_mut(at);
                t.status = TaskStatus::Running;
                if let Some(a) = t.current_mut() {
                    a.status = TaskStatus::Running;
                    if e.image.is_some() {
                        a.image = e.image.clone();
                    }
                    a.transitions.push((TaskStatus::Running, e.at_ms));
                }
                if cancel {
                    kills.push(Kill {
                        task: e.task,
                        attempt: e.attempt,
                        node: node.to_string(),
                        reason: "run cancelled".into(),
                    });
                }
                true
            }
            TaskStatus::Succeeded => {
                self.finish_attempt(at, e, TaskStatus::Succeeded);
                self.task_mut(at).status = TaskStatus::Succeeded;
                self.advance(at.run, now_ms);
                true
            }
            TaskStatus::Failed => {
                self.finish_attempt(at, e, TaskStatus::Failed);
                let retries = self.stage(e.task).map(|s| s.retries).unwrap_or(0);
                let t = self.task_mut(at);
                if t.cancel_requested {
                    t.status = TaskStatus::Cancelled;
                } else {
                    t.failures += 1;
                    if t.failures <= retries {
                        t.attempt += 1;
                        t.status = TaskStatus::Pending;
                        self.pending.insert(e.task);
                        return true;
                    }
                    t.status = TaskStatus::Failed;
                }
                self.advance(at.run, now_ms);
                true
            }
            TaskStatus::Lost => {
                let message = if e.message.is_empty() {
                    "lost"
                } else {
                    e.message.as_str()
                };
                self.lose_task(e.task, message, e.at_ms);
                true
            }
            _ => false,
        }
    }

    /// Ends the current attempt as lost (its node is gone), frees its reservation, and puts
    /// the task back in line unless it was cancelled or lost too often. A lost replica is
    /// always placed again.
    pub(super) fn lose_task(&mut self, task: TaskRef, message: &str, at_ms: i64) {
        self.release(task);
        let task = match task {
            TaskRef::Stage(at) => at,
            TaskRef::Replica(at) => {
                self.end_replica_attempt(at, TaskStatus::Lost, None, message, at_ms, at_ms, true);
                return;
            }
        };
        self.release_tests(task);
        let t = self.task_mut(task);
        if let Some(a) = t.current_mut() {
            a.status = TaskStatus::Lost;
            a.message = message.to_string();
            a.transitions.push((TaskStatus::Lost, at_ms));
        }
        t.lost += 1;
        if t.cancel_requested {
            t.status = TaskStatus::Cancelled;
        } else if t.lost < MAX_LOST_ATTEMPTS {
            t.attempt += 1;
            t.status = TaskStatus::Pending;
            self.pending.insert(task.into());
            return;
        } else {
            t.status = TaskStatus::Lost;
        }
        self.advance(task.run, at_ms);
    }

    pub(super) fn cancel_run(&mut self, number: u64, now_ms: i64) -> Response {
        let Some(run) = self.runs.get_mut(&number) else {
            return Response::Rejected {
                reason: format!("{} not found", super::run_id(number)),
            };
        };
        if run.status.is_terminal() {
            let reason = format!("{} already {}", run.id(), run.status.as_str());
            return Response::Rejected { reason };
        }
        run.status = RunStatus::Cancelled;
        let mut kills = Vec::new();
        for (s, stage) in run.stages.iter_mut().enumerate() {
            for (k, t) in stage.shards.iter_mut().enumerate() {
                let task = TaskRef::shard(number, s as u32, k as u32);
                match t.status {
                    TaskStatus::Waiting | TaskStatus::Pending => {
                        t.status = TaskStatus::Cancelled;
                        self.pending.remove(&task);
                    }
                    TaskStatus::Placed | TaskStatus::Running => {
                        t.cancel_requested = true;
                        if let Some(a) = t.current() {
                            kills.push(Kill {
                                task,
                                attempt: t.attempt,
                                node: a.node.clone(),
                                reason: "run cancelled".into(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        self.advance(number, now_ms);
        Cancelled { kills }.into()
    }

    fn finish_attempt(&mut self, at: StageRef, e: &TaskEvent, status: TaskStatus) {
        self.release(e.task);
        self.release_tests(at);
        let a = self
            .task_mut(at)
            .current_mut()
            .expect("checked by the caller");
        a.status = status;
        a.exit_code = e.exit_code;
        a.message = e.message.clone();
        if e.image.is_some() {
            a.image = e.image.clone();
        }
        a.transitions.push((status, e.at_ms));
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

    /// After any task of the run ended: stages whose needs all succeeded start, stages
    /// behind one that did not succeed are skipped, suites that ended fold their timings
    /// into the history, and the run ends once every stage has.
    pub(super) fn advance(&mut self, number: u64, now_ms: i64) {
        self.unblock_dependents(number);
        self.skip_dependents(number);
        self.record_suites(number);
        self.settle_run(number, now_ms);
    }

    /// Waiting stages whose needs have all succeeded become pending, every shard of them.
    fn unblock_dependents(&mut self, number: u64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        for i in 0..run.stages.len() {
            if run.stages[i].status() != TaskStatus::Waiting {
                continue;
            }
            let ready = run.pipeline.stages[i].needs.iter().all(|need| {
                stage_index(run, need)
                    .is_some_and(|j| run.stages[j].status() == TaskStatus::Succeeded)
            });
            if ready {
                for (k, t) in run.stages[i].shards.iter_mut().enumerate() {
                    t.status = TaskStatus::Pending;
                    self.pending
                        .insert(TaskRef::shard(number, i as u32, k as u32));
                }
            }
        }
    }

    /// Waiting stages that need (directly or not) a stage that ended without succeeding will
    /// never run.
    fn skip_dependents(&mut self, number: u64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        loop {
            let mut changed = false;
            for i in 0..run.stages.len() {
                if run.stages[i].status() != TaskStatus::Waiting {
                    continue;
                }
                let blocked = run.pipeline.stages[i].needs.iter().any(|need| {
                    stage_index(run, need).is_some_and(|j| {
                        let s = run.stages[j].status();
                        s.is_terminal() && s != TaskStatus::Succeeded
                    })
                });
                if blocked {
                    for t in &mut run.stages[i].shards {
                        t.status = TaskStatus::Skipped;
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// A suite whose stage has ended folds its tests' times into the stage's history, once.
    fn record_suites(&mut self, number: u64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        for (spec, stage) in run.pipeline.stages.iter().zip(&mut run.stages) {
            let ended = stage.status().is_terminal();
            let Some(suite) = stage.suite.as_mut().filter(|s| ended && !s.recorded) else {
                continue;
            };
            suite.recorded = true;
            if suite.timings().next().is_none() {
                continue;
            }
            self.test_history
                .entry(history_key(&run.pipeline.name, &spec.name))
                .or_default()
                .record(suite.timings());
        }
    }

    /// Once every stage has ended, the run ends: cancelled if it was cancelled, succeeded if
    /// every stage succeeded, failed otherwise.
    fn settle_run(&mut self, number: u64, now_ms: i64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        if run.finished_ms.is_some() || !run.stages.iter().all(|s| s.status().is_terminal()) {
            return;
        }
        run.finished_ms = Some(now_ms);
        if run.status != RunStatus::Cancelled {
            let ok = run
                .stages
                .iter()
                .all(|s| s.status() == TaskStatus::Succeeded);
            run.status = if ok {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            };
        }
    }

    pub(super) fn task_mut(&mut self, task: StageRef) -> &mut Task {
        let run = self
            .runs
            .get_mut(&task.run)
            .expect("task checked by the caller");
        &mut run.stages[task.stage as usize].shards[task.shard as usize]
    }
}

fn stage_index(run: &Run, name: &str) -> Option<usize> {
    run.pipeline.stages.iter().position(|s| s.name == name)
}
