//! From the replicated records to their wire form.

use std::collections::BTreeMap;

use kiln_api::pb;

use crate::leader::Liveness;
use crate::state::{Attempt, GitInfo, Node, Run, StageRun, Task, TaskRef, TaskStatus};

pub fn run(r: &Run, waiting: &BTreeMap<TaskRef, String>) -> pb::Run {
    let stages = r
        .pipeline
        .stages
        .iter()
        .zip(&r.stages)
        .enumerate()
        .map(|(i, (spec, stage))| {
            let shards: Vec<pb::Shard> = stage
                .shards
                .iter()
                .enumerate()
                .map(|(k, task)| {
                    let at = TaskRef::shard(r.number, i as u32, k as u32);
                    shard(k as u32, task, waiting.get(&at))
                })
                .collect();
            let mut out = pb::Stage {
                name: spec.name.clone(),
                needs: spec.needs.clone(),
                status: stage.status().as_str().into(),
                message: stage_message(stage),
                ..Default::default()
            };
            if stage.is_sharded() {
                // The stage as a whole: from its first shard's start to its last one's end.
                out.started_ms = shards
                    .iter()
                    .map(|k| k.started_ms)
                    .filter(|&t| t > 0)
                    .min()
                    .unwrap_or(0);
                if stage.status().is_terminal() {
                    out.finished_ms = shards.iter().map(|k| k.finished_ms).max().unwrap_or(0);
                }
                out.shards = shards;
            } else if let Some(only) = shards.into_iter().next() {
                out.attempt = only.attempt;
                out.node = only.node;
                out.exit_code = only.exit_code;
                out.started_ms = only.started_ms;
                out.finished_ms = only.finished_ms;
                out.waiting_reason = only.waiting_reason;
                out.image = only
                    .attempts
                    .last()
                    .map(|a| a.image.clone())
                    .unwrap_or_default();
                out.attempts = only.attempts;
            }
            out
        })
        .collect();
    pb::Run {
        id: r.id(),
        pipeline: r.pipeline.name.clone(),
        status: r.status.as_str().into(),
        trigger: r.trigger.clone(),
        request_id: r.request_id.clone(),
        created_ms: r.created_ms,
        finished_ms: r.finished_ms.unwrap_or(0),
        stages,
        git: r.git.as_ref().map(git),
        message: r.message.clone().unwrap_or_default(),
    }
}

pub fn git(g: &GitInfo) -> pb::GitSource {
    pb::GitSource {
        repository: g.repository.clone(),
        r#ref: g.git_ref.clone(),
        commit: g.commit.clone(),
        author: g.author.clone(),
        title: g.title.clone(),
    }
}

fn shard(index: u32, task: &Task, waiting: Option<&String>) -> pb::Shard {
    let current = task.attempts.last();
    pb::Shard {
        index,
        status: task.status.as_str().into(),
        attempt: if task.attempts.is_empty() {
            0
        } else {
            task.attempt
        },
        node: current.map(|a| a.node.clone()).unwrap_or_default(),
        exit_code: current.and_then(|a| a.exit_code),
        started_ms: current
            .and_then(|a| a.time_of(TaskStatus::Running))
            .unwrap_or(0),
        finished_ms: current
            .filter(|_| task.status.is_terminal())
            .and_then(|a| a.finished_ms())
            .unwrap_or(0),
        waiting_reason: waiting.cloned().unwrap_or_default(),
        attempts: task.attempts.iter().map(attempt).collect(),
    }
}

fn attempt(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        attempt: a.attempt,
        node: a.node.clone(),
        status: a.status.as_str().into(),
        exit_code: a.exit_code,
        message: a.message.clone(),
        placed_ms: a.time_of(TaskStatus::Placed).unwrap_or(0),
        started_ms: a.time_of(TaskStatus::Running).unwrap_or(0),
        finished_ms: a.finished_ms().unwrap_or(0),
        artifacts: a.artifacts.clone().into_iter().collect(),
        gpus: a
            .gpus
            .iter()
            .map(|g| pb::GpuGrant {
                index: g.index,
                whole: g.whole,
                memory_bytes: g.memory_bytes,
            })
            .collect(),
        image: a.image.clone().unwrap_or_default(),
        transitions: a
            .transitions
            .iter()
            .map(|(s, at)| pb::Transition {
                status: s.as_str().into(),
                at_ms: *at,
            })
            .collect(),
    }
}

/// What a stage's status alone does not say: a suite's failed tests.
fn stage_message(stage: &StageRun) -> String {
    let Some(suite) = &stage.suite else {
        return String::new();
    };
    if suite.ids.is_none() {
        return String::new();
    }
    let counts = suite.counts();
    let total = suite.tests.len();
    if !stage.status().is_terminal() {
        let left = counts.get("not_run").copied().unwrap_or(0);
        return format!("{} of {total} tests run", total - left);
    }
    let bad: usize = ["failed", "errored", "not_run"]
        .iter()
        .filter_map(|k| counts.get(k))
        .sum();
    let flaky = counts.get("flaky").copied().unwrap_or(0);
    match (bad, flaky) {
        (0, 0) => format!("{total} tests passed"),
        (0, f) => format!("{total} tests passed, {f} flaky"),
        (b, _) => format!("{b} of {total} tests did not pass"),
    }
}

pub fn node(n: &Node, live: Option<&Liveness>) -> pb::Node {
    let live = live.cloned().unwrap_or_default();
    pb::Node {
        id: n.id.clone(),
        status: n.status.as_str().into(),
        labels: n.labels.clone().into_iter().collect(),
        drivers: n.drivers.clone(),
        cpu_millis: n.capacity.cpu_millis,
        memory_bytes: n.capacity.memory_bytes,
        reserved_cpu_millis: n.reserved.cpu_millis,
        reserved_memory_bytes: n.reserved.memory_bytes,
        allocations: n.allocations.len() as u32,
        cpu_percent: live.cpu_percent,
        memory_used_bytes: live.memory_used_bytes,
        last_heartbeat_ms: live.last_seen_ms,
        gpus: n
            .gpus
            .iter()
            .map(|g| {
                let stats = live
                    .gpus
                    .iter()
                    .find(|s| s.index == g.index)
                    .cloned()
                    .unwrap_or_default();
                pb::Gpu {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                    nvlink_peers: g.nvlink_peers.clone(),
                    simulated: g.simulated,
                    whole_reserved: g.whole.is_some(),
                    shared_memory_reserved_bytes: g.shared_bytes(),
                    shares: g.shares.len() as u32,
                    utilization_percent: stats.utilization_percent,
                    memory_used_bytes: stats.memory_used_bytes,
                    temperature_celsius: stats.temperature_celsius,
                    power_watts: stats.power_watts,
                }
            })
            .collect(),
    }
}
