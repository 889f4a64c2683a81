//! Feasibility checks: each one small rule behind [`Check`], answering pass or a named
//! reason. They run in the order of [`default_checks`], cheapest and most selective first.

use std::collections::BTreeMap;

use kiln_api::spec::{GpuRequest, Resources, Stage};

use super::{Planned, gpus};
use crate::state::fit::{Misfit, fits};
use crate::state::{Node, NodeStatus, TaskRef};

/// What a task asks of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ask {
    pub resources: Resources,
    pub driver: &'static str,
    pub constraints: BTreeMap<String, String>,
    pub gpu: Option<GpuRequest>,
    /// Siblings that spread apart: a service's replicas, a sharded stage's shards.
    pub group: Option<Group>,
}

/// Tasks placed apart from each other where they fit ([`super::SpreadGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// The replicas of one service.
    Service(u64),
    /// The shards of one stage of one run.
    Stage { run: u64, stage: u32 },
}

impl Group {
    /// Whether `task` is one of the group.
    pub fn holds(self, task: &TaskRef) -> bool {
        match (self, task) {
            (Group::Service(s), TaskRef::Replica(r)) => r.service == s,
            (Group::Stage { run, stage }, TaskRef::Stage(at)) => at.run == run && at.stage == stage,
            _ => false,
        }
    }
}

impl Ask {
    pub fn of(stage: &Stage) -> Ask {
        Ask {
            resources: stage.resources,
            driver: stage.driver(),
            constraints: stage.constraints.clone(),
            gpu: stage.gpu.clone(),
            group: None,
        }
    }
}

pub trait Check: Send + Sync {
    /// `planned` is what this pass already reserved on the node.
    fn check(&self, node: &Node, planned: &Planned, ask: &Ask) -> Result<(), &'static str>;
}

pub fn default_checks() -> Box<[Box<dyn Check>]> {
    Box::new([
        Box::new(NodeReady),
        Box::new(Driver),
        Box::new(Constraints),
        Box::new(Capacity),
        Box::new(GpuCapacity),
    ])
}

/// Only ready nodes take work.
pub struct NodeReady;

impl Check for NodeReady {
    fn check(&self, node: &Node, _: &Planned, _: &Ask) -> Result<(), &'static str> {
        match node.status {
            NodeStatus::Ready => Ok(()),
            NodeStatus::Down => Err("node down"),
        }
    }
}

/// The node must offer the driver the task runs with.
pub struct Driver;

impl Check for Driver {
    fn check(&self, node: &Node, _: &Planned, ask: &Ask) -> Result<(), &'static str> {
        if node.drivers.iter().any(|d| d == ask.driver) {
            Ok(())
        } else {
            Err("driver not offered")
        }
    }
}

/// Every `constraints:` label must be present on the node with the same value.
pub struct Constraints;

impl Check for Constraints {
    fn check(&self, node: &Node, _: &Planned, ask: &Ask) -> Result<(), &'static str> {
        let ok = ask
            .constraints
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v));
        if ok {
            Ok(())
        } else {
            Err("constraint not met")
        }
    }
}

/// CPU and memory, through the same fit function the state machine applies.
pub struct Capacity;

impl Check for Capacity {
    fn check(&self, node: &Node, planned: &Planned, ask: &Ask) -> Result<(), &'static str> {
        fits(node, planned.resources, ask.resources).map_err(Misfit::as_str)
    }
}

/// GPUs: enough whole GPUs, or one with room for the share, of the model and size asked.
pub struct GpuCapacity;

impl Check for GpuCapacity {
    fn check(&self, node: &Node, planned: &Planned, ask: &Ask) -> Result<(), &'static str> {
        match &ask.gpu {
            None => Ok(()),
            Some(request) => gpus::choose(node, &planned.gpus, request)
                .map(|_| ())
                .map_err(Misfit::as_str),
        }
    }
}
