//! From the replicated records to their wire form.

use std::collections::BTreeMap;

use kiln_api::pb;

use crate::core::Liveness;
use crate::state::{ClusterState, Node, Run, TaskRef, TaskStatus};

pub fn run(state: &ClusterState, r: &Run, waiting: &BTreeMap<TaskRef, String>) -> pb::Run {
    let stages = r
        .pipeline
        .stages
        .iter()
        .zip(&r.tasks)
        .enumerate()
        .map(|(i, (spec, task))| {
            let current = task.attempts.last();
            let tref = TaskRef {
                run: r.number,
                stage: i as u32,
            };
            pb::Stage {
                name: spec.name.clone(),
                needs: spec.needs.clone(),
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
                waiting_reason: waiting.get(&tref).cloned().unwrap_or_default(),
                image: current.and_then(|a| a.image.clone()).unwrap_or_default(),
                attempts: task
                    .attempts
                    .iter()
                    .map(|a| pb::Attempt {
                        attempt: a.attempt,
                        node: a.node.clone(),
                        status: a.status.as_str().into(),
                        exit_code: a.exit_code,
                        message: a.message.clone(),
                        placed_ms: a.time_of(TaskStatus::Placed).unwrap_or(0),
                        started_ms: a.time_of(TaskStatus::Running).unwrap_or(0),
                        finished_ms: a.finished_ms().unwrap_or(0),
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
                    })
                    .collect(),
            }
        })
        .collect();
    let _ = state;
    pb::Run {
        id: r.id(),
        pipeline: r.pipeline.name.clone(),
        status: r.status.as_str().into(),
        trigger: r.trigger.clone(),
        request_id: r.request_id.clone(),
        created_ms: r.created_ms,
        finished_ms: r.finished_ms.unwrap_or(0),
        stages,
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
