//! Runs and their tasks: submission, what follows a stage's ended attempt (the DAG moving
//! forward, retries, losses), cancellation, and the run's own status. The events themselves
//! go through the one task lifecycle (`tasks.rs`, [`Task::step`]).
//!
//! A stage's status is its shards' ([`super::StageRun::status`]); the DAG moves on stage
//! statuses, so a stage that needs a sharded one starts once every shard has succeeded.

use std::collections::BTreeMap;

use kiln_api::spec::{Pipeline, Shards, Stage, artifact_name};
use kiln_sharding::history::StageHistory;

use super::ClusterState;
use super::command::{Cancelled, Kill, Response, Submitted};
use super::model::{
    MAX_LOST_ATTEMPTS, Run, RunStatus, StageRef, StageRun, Task, TaskRef, TaskStatus,
};
use super::suite::Suite;
use super::tasks::cancel_reason;

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
        let run = self.new_run(request_id, trigger, pipeline, only_tests, now_ms);
        Submitted { run, created: true }.into()
    }

    /// A new run of `pipeline`, its first stages pending (or deploying); answers its number.
    pub(super) fn new_run(
        &mut self,
        request_id: &str,
        trigger: &str,
        pipeline: &Pipeline,
        only_tests: &BTreeMap<String, Vec<String>>,
        now_ms: i64,
    ) -> u64 {
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
            git: None,
            message: None,
            concurrency_group: None,
        };
        let mut deploys = Vec::new();
        for (at, t) in run.tasks() {
            if t.status != TaskStatus::Pending {
                continue;
            }
            if run.pipeline.stages[at.stage as usize].deploy.is_some() {
                deploys.push(at);
            } else {
                self.pending.insert(at.into());
            }
        }
        self.runs.insert(number, run);
        for at in deploys {
            self.start_deploy_stage(at, now_ms);
        }
        if !request_id.is_empty() {
            self.requests.insert(request_id.to_string(), number);
        }
        number
    }

    /// A stage's attempt ended (see `tasks.rs`): its tests go back to the queue unless
    /// reported, and the task succeeds, fails, is cancelled, or is tried again — failures
    /// within the stage's `retries`, losses within [`MAX_LOST_ATTEMPTS`] — and the run's
    /// DAG moves on.
    pub(super) fn stage_attempt_ended(&mut self, at: StageRef, status: TaskStatus, now_ms: i64) {
        self.release_tests(at);
        let retries = self.stage(at.into()).map_or(0, |s| s.retries);
        let declared: Vec<String> = self
            .stage(at.into())
            .map(|s| {
                s.artifacts
                    .iter()
                    .map(|p| artifact_name(p).to_string())
                    .collect()
            })
            .unwrap_or_default();
        let Some(t) = self.task_mut(at.into()) else {
            return;
        };
        // A success without what the stage declared it publishes (an agent that adopted the
        // task after a restart could not publish) is a failure, said so.
        let mut status = status;
        if status == TaskStatus::Succeeded
            && let Some(a) = t.current_mut()
            && let Some(missing) = declared.iter().find(|n| !a.artifacts.contains_key(*n))
        {
            a.status = TaskStatus::Failed;
            a.message = format!("artifact {missing:?} was not published");
            t.failures += 1;
            status = TaskStatus::Failed;
        }
        let again = match status {
            _ if t.cancel_requested => false,
            TaskStatus::Failed => t.failures <= retries,
            TaskStatus::Lost => t.lost < MAX_LOST_ATTEMPTS,
            _ => false,
        };
        if again {
            t.retry();
            self.pending.insert(at.into());
            return;
        }
        t.status = match status {
            TaskStatus::Failed | TaskStatus::Lost if t.cancel_requested => TaskStatus::Cancelled,
            _ => status,
        };
        self.advance(at.run, now_ms);
    }

    pub(super) fn cancel_run(&mut self, number: u64, now_ms: i64) -> Response {
        let Some(run) = self.runs.get(&number) else {
            return Response::Rejected {
                reason: format!("{} not found", super::run_id(number)),
            };
        };
        // A superseded run is cancelled while its uninterruptible stages still run: those
        // can still be cancelled by hand.
        if run.finished_ms.is_some() {
            let reason = format!("{} already {}", run.id(), run.status.as_str());
            return Response::Rejected { reason };
        }
        let kills = self.stop_run(number, "", false, now_ms);
        Cancelled { kills }.into()
    }

    /// Cancels a run: what has not started never will, what runs is killed (`why` says
    /// why, when not the user) — except, with `spare_uninterruptible`, running stages
    /// marked `interruptible: false`, which are let finish.
    pub(super) fn stop_run(
        &mut self,
        number: u64,
        why: &str,
        spare_uninterruptible: bool,
        now_ms: i64,
    ) -> Vec<Kill> {
        let Some(run) = self.runs.get_mut(&number) else {
            return Vec::new();
        };
        run.status = RunStatus::Cancelled;
        if !why.is_empty() {
            run.message = Some(format!("cancelled: {why}"));
        }
        let (mut kills, mut deploys) = (Vec::new(), Vec::new());
        for (s, stage) in run.stages.iter_mut().enumerate() {
            let spec = &run.pipeline.stages[s];
            let spared = spare_uninterruptible && !spec.interruptible;
            for (k, t) in stage.shards.iter_mut().enumerate() {
                let task = TaskRef::shard(number, s as u32, k as u32);
                match t.status {
                    TaskStatus::Waiting | TaskStatus::Pending => {
                        t.status = TaskStatus::Cancelled;
                        self.pending.remove(&task);
                    }
                    TaskStatus::Placed | TaskStatus::Running if spared => {}
                    TaskStatus::Placed | TaskStatus::Running if spec.deploy.is_some() => {
                        deploys.push(StageRef {
                            run: number,
                            stage: s as u32,
                            shard: k as u32,
                        });
                    }
                    TaskStatus::Placed | TaskStatus::Running => {
                        t.cancel_requested = true;
                        let reason = match why {
                            "" => cancel_reason(task).to_string(),
                            why => format!("cancelled: {why}"),
                        };
                        kills.extend(t.kill(task, &reason));
                    }
                    _ => {}
                }
            }
        }
        for at in deploys {
            self.cancel_deploy_stage(at, now_ms);
        }
        self.advance(number, now_ms);
        kills
    }

    /// After any task of the run ended: stages whose needs all succeeded start, stages
    /// behind one that did not succeed are skipped, suites that ended fold their timings
    /// into the history, and the run ends once every stage has.
    pub(super) fn advance(&mut self, number: u64, now_ms: i64) {
        self.unblock_dependents(number, now_ms);
        self.skip_dependents(number);
        self.record_suites(number);
        self.settle_run(number, now_ms);
    }

    /// The image stage `name` of run `number` pushed, pinned by digest, once it succeeded.
    pub fn built_image(&self, number: u64, name: &str) -> Option<String> {
        let run = self.runs.get(&number)?;
        let i = stage_index(run, name)?;
        run.stages
            .get(i)?
            .shards
            .first()?
            .attempts
            .last()?
            .image
            .clone()
    }

    /// The digest of the artifact `name` that stage `stage` of run `number` published.
    pub fn artifact(&self, number: u64, stage: &str, name: &str) -> Option<String> {
        let run = self.runs.get(&number)?;
        let i = stage_index(run, stage)?;
        let published = &run
            .stages
            .get(i)?
            .shards
            .first()?
            .attempts
            .last()?
            .artifacts;
        published.get(name).cloned()
    }

    /// Waiting stages whose needs have all succeeded become pending, every shard of them;
    /// a deploy stage is started (no node runs it).
    fn unblock_dependents(&mut self, number: u64, now_ms: i64) {
        let mut deploys = Vec::new();
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
                let deploy = run.pipeline.stages[i].deploy.is_some();
                for (k, t) in run.stages[i].shards.iter_mut().enumerate() {
                    t.status = TaskStatus::Pending;
                    let at = StageRef {
                        run: number,
                        stage: i as u32,
                        shard: k as u32,
                    };
                    if deploy {
                        deploys.push(at);
                    } else {
                        self.pending.insert(at.into());
                    }
                }
            }
        }
        for at in deploys {
            self.start_deploy_stage(at, now_ms);
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
}

fn stage_index(run: &Run, name: &str) -> Option<usize> {
    run.pipeline.stages.iter().position(|s| s.name == name)
}
