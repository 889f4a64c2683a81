//! Applying a scheduling pass: every placement is checked again against the state as it is
//! now, and what no longer fits is rejected rather than over-committing a node.

use super::ClusterState;
use super::command::{Placed, Placement, Response};
use super::fit::{fits, gpus_fit};
use super::model::{Attempt, RunStatus, TaskRef, TaskStatus};

impl ClusterState {
    pub(super) fn place_batch(&mut self, placements: &[Placement], now_ms: i64) -> Response {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for p in placements {
            match self.place(p, now_ms) {
                Ok(()) => accepted.push(p.clone()),
                Err(reason) => rejected.push((p.task, reason)),
            }
        }
        Placed { accepted, rejected }.into()
    }

    fn place(&mut self, p: &Placement, now_ms: i64) -> Result<(), String> {
        let ask = self.ask(p.task);
        let task = self.task(p.task).ok_or("task not found")?;
        if task.status != TaskStatus::Pending || task.attempt != p.attempt {
            return Err(format!(
                "stale: task is {} at attempt {}",
                task.status, task.attempt
            ));
        }
        let gpu_request = self.stage(p.task).and_then(|s| s.gpu.clone());
        let node = self.nodes.get_mut(&p.node).ok_or("node not found")?;
        fits(node, Default::default(), ask).map_err(|m| m.as_str().to_string())?;
        match &gpu_request {
            Some(request) => {
                gpus_fit(node, &[], request, &p.gpus).map_err(|m| m.as_str().to_string())?
            }
            None if !p.gpus.is_empty() => {
                return Err("gpus granted to a task that asked for none".into());
            }
            None => {}
        }

        node.reserved = node.reserved.saturating_add(ask);
        node.allocations.insert(p.task);
        for grant in &p.gpus {
            if let Some(gpu) = node.gpus.iter_mut().find(|g| g.index == grant.index) {
                if grant.whole {
                    gpu.whole = Some(p.task);
                } else {
                    gpu.shares.insert(p.task, grant.memory_bytes);
                }
            }
        }
        self.pending.remove(&p.task);
        let task = match p.task {
            TaskRef::Stage(at) => {
                let run = self.runs.get_mut(&at.run).ok_or("run not found")?;
                if run.status == RunStatus::Pending {
                    run.status = RunStatus::Running;
                }
                &mut run.stages[at.stage as usize].shards[at.shard as usize]
            }
            TaskRef::Replica(at) => {
                let service = self
                    .services
                    .get_mut(&at.service)
                    .ok_or("service not found")?;
                &mut service
                    .replicas
                    .get_mut(&at.slot)
                    .ok_or("replica not found")?
                    .task
            }
        };
        task.status = TaskStatus::Placed;
        task.attempts.push(Attempt {
            attempt: p.attempt,
            node: p.node.clone(),
            status: TaskStatus::Placed,
            exit_code: None,
            message: String::new(),
            transitions: vec![(TaskStatus::Placed, now_ms)],
            gpus: p.gpus.clone(),
            image: None,
            artifacts: Default::default(),
        });
        // A replica restarts for as long as its service lives: keep its recent attempts.
        if matches!(p.task, TaskRef::Replica(_)) && task.attempts.len() > MAX_REPLICA_ATTEMPTS {
            let excess = task.attempts.len() - MAX_REPLICA_ATTEMPTS;
            task.attempts.drain(..excess);
        }
        Ok(())
    }
}

/// The attempts a service replica keeps in the state.
pub const MAX_REPLICA_ATTEMPTS: usize = 10;
