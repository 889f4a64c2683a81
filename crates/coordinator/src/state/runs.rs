//! Runs and their tasks: submission, the agents' task events, the DAG moving forward,
//! retries, losses, cancellation, and the run's own status.

use kiln_api::spec::Pipeline;

use super::ClusterState;
use super::command::{Kill, Response, TaskEvent};
use super::model::{MAX_LOST_ATTEMPTS, Run, RunStatus, Task, TaskRef, TaskStatus};

impl ClusterState {
    pub(super) fn submit_run(
        &mut self,
        request_id: &str,
        trigger: &str,
        pipeline: &Pipeline,
        now_ms: i64,
    ) -> Response {
        if !request_id.is_empty()
            && let Some(&run) = self.requests.get(request_id)
        {
            return Response::Submitted {
                run,
                created: false,
            };
        }
        let number = self.next_run.max(1);
        self.next_run = number + 1;
        let tasks = pipeline
            .stages
            .iter()
            .map(|s| {
                Task::new(if s.needs.is_empty() {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Waiting
                })
            })
            .collect::<Vec<_>>();
        for (i, t) in tasks.iter().enumerate() {
            if t.status == TaskStatus::Pending {
                self.pending.insert(TaskRef {
                    run: number,
                    stage: i as u32,
                });
            }
        }
        self.runs.insert(
            number,
            Run {
                number,
                pipeline: pipeline.clone(),
                status: RunStatus::Pending,
                trigger: trigger.to_string(),
                request_id: request_id.to_string(),
                created_ms: now_ms,
                finished_ms: None,
                tasks,
            },
        );
        if !request_id.is_empty() {
            self.requests.insert(request_id.to_string(), number);
        }
        Response::Submitted {
            run: number,
            created: true,
        }
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
        Response::EventsApplied {
            applied,
            ignored,
            kills,
        }
    }

    /// Applies one event; false when it changes nothing (old attempt, other node, replay).
    fn task_event(
        &mut self,
        node: &str,
        e: &TaskEvent,
        now_ms: i64,
        kills: &mut Vec<Kill>,
    ) -> bool {
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
                let t = self.task_mut(e.task);
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
                self.finish_attempt(e, TaskStatus::Succeeded);
                self.task_mut(e.task).status = TaskStatus::Succeeded;
                self.unblock_dependents(e.task.run);
                self.settle_run(e.task.run, now_ms);
                true
            }
            TaskStatus::Failed => {
                self.finish_attempt(e, TaskStatus::Failed);
                let retries = self.stage(e.task).map(|s| s.retries).unwrap_or(0);
                let t = self.task_mut(e.task);
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
                self.skip_dependents(e.task.run);
                self.settle_run(e.task.run, now_ms);
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
    /// the task back in line unless it was cancelled or lost too often.
    pub(super) fn lose_task(&mut self, task: TaskRef, message: &str, at_ms: i64) {
        self.release(task);
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
            self.pending.insert(task);
            return;
        } else {
            t.status = TaskStatus::Lost;
        }
        self.skip_dependents(task.run);
        self.settle_run(task.run, at_ms);
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
        for (i, t) in run.tasks.iter_mut().enumerate() {
            let task = TaskRef {
                run: number,
                stage: i as u32,
            };
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
        self.settle_run(number, now_ms);
        Response::Cancelled { kills }
    }

    fn finish_attempt(&mut self, e: &TaskEvent, status: TaskStatus) {
        self.release(e.task);
        let a = self
            .task_mut(e.task)
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
    fn release(&mut self, task: TaskRef) {
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

    /// Waiting stages whose needs have all succeeded become pending.
    fn unblock_dependents(&mut self, number: u64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        for i in 0..run.tasks.len() {
            if run.tasks[i].status != TaskStatus::Waiting {
                continue;
            }
            let ready = run.pipeline.stages[i].needs.iter().all(|need| {
                stage_index(run, need).is_some_and(|j| run.tasks[j].status == TaskStatus::Succeeded)
            });
            if ready {
                run.tasks[i].status = TaskStatus::Pending;
                self.pending.insert(TaskRef {
                    run: number,
                    stage: i as u32,
                });
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
            for i in 0..run.tasks.len() {
                if run.tasks[i].status != TaskStatus::Waiting {
                    continue;
                }
                let blocked = run.pipeline.stages[i].needs.iter().any(|need| {
                    stage_index(run, need).is_some_and(|j| {
                        let s = run.tasks[j].status;
                        s.is_terminal() && s != TaskStatus::Succeeded
                    })
                });
                if blocked {
                    run.tasks[i].status = TaskStatus::Skipped;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Once every task has ended, the run ends: cancelled if it was cancelled, succeeded if
    /// every stage succeeded, failed otherwise.
    fn settle_run(&mut self, number: u64, now_ms: i64) {
        let Some(run) = self.runs.get_mut(&number) else {
            return;
        };
        if run.finished_ms.is_some() || !run.tasks.iter().all(|t| t.status.is_terminal()) {
            return;
        }
        run.finished_ms = Some(now_ms);
        if run.status != RunStatus::Cancelled {
            let ok = run.tasks.iter().all(|t| t.status == TaskStatus::Succeeded);
            run.status = if ok {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            };
        }
    }

    fn task_mut(&mut self, task: TaskRef) -> &mut Task {
        let run = self
            .runs
            .get_mut(&task.run)
            .expect("task checked by the caller");
        &mut run.tasks[task.stage as usize]
    }
}

fn stage_index(run: &Run, name: &str) -> Option<usize> {
    run.pipeline.stages.iter().position(|s| s.name == name)
}
