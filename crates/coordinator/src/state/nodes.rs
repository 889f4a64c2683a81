//! Nodes joining, coming back, and being lost.

use super::ClusterState;
use super::command::{GpuDevice, NodeDown, NodeRegistered, NodeRegistration, Response};
use super::model::{Gpu, Node, NodeStatus};

impl ClusterState {
    pub(super) fn register_node(&mut self, reg: &NodeRegistration, now_ms: i64) -> Response {
        let node = self.nodes.entry(reg.id.clone()).or_insert_with(|| Node {
            id: reg.id.clone(),
            status: NodeStatus::Ready,
            labels: Default::default(),
            drivers: Vec::new(),
            capacity: reg.capacity,
            reserved: Default::default(),
            allocations: Default::default(),
            status_changed_ms: now_ms,
            gpus: Vec::new(),
        });
        update_gpus(&mut node.gpus, &reg.gpus);
        node.labels = reg.labels.clone();
        node.drivers = reg.drivers.clone();
        node.capacity = reg.capacity;
        if node.status != NodeStatus::Ready {
            node.status = NodeStatus::Ready;
            node.status_changed_ms = now_ms;
        }
        NodeRegistered.into()
    }

    /// Marks the node down and every task it held lost; those that may run again become
    /// pending with a new attempt.
    pub(super) fn mark_node_down(&mut self, id: &str, now_ms: i64) -> Response {
        let Some(node) = self.nodes.get_mut(id) else {
            return Response::Rejected {
                reason: format!("node {id} not found"),
            };
        };
        if node.status == NodeStatus::Down {
            return NodeDown { lost: Vec::new() }.into();
        }
        node.status = NodeStatus::Down;
        node.status_changed_ms = now_ms;
        let lost: Vec<_> = node.allocations.iter().copied().collect();
        for &task in &lost {
            self.lose_task(task, "node lost: heartbeats stopped", now_ms);
        }
        NodeDown { lost }.into()
    }
}

/// Takes the agent's GPU inventory, keeping the reservations on GPUs it still reports. A GPU
/// that disappeared is dropped only if nothing is reserved on it (its tasks keep their
/// reservation until they end).
fn update_gpus(gpus: &mut Vec<Gpu>, reported: &[GpuDevice]) {
    gpus.retain(|g| !g.is_free() || reported.iter().any(|r| r.index == g.index));
    for r in reported {
        match gpus.iter_mut().find(|g| g.index == r.index) {
            Some(g) => {
                g.uuid = r.uuid.clone();
                g.model = r.model.clone();
                g.memory_bytes = r.memory_bytes;
                g.nvlink_peers = r.nvlink_peers.clone();
                g.simulated = r.simulated;
            }
            None => gpus.push(Gpu {
                index: r.index,
                uuid: r.uuid.clone(),
                model: r.model.clone(),
                memory_bytes: r.memory_bytes,
                nvlink_peers: r.nvlink_peers.clone(),
                simulated: r.simulated,
                whole: None,
                shares: Default::default(),
            }),
        }
    }
    gpus.sort_by_key(|g| g.index);
}
