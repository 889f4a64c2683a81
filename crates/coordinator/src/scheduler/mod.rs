//! Placement, as a pure function: the cluster state in, one pass's placements out.
//!
//! ```text
//!  pending tasks ──► for each task, oldest run first
//!                      │
//!                      ▼  nodes in a rotated order seeded by (pass, task);
//!                      │  CPU-only work walks the nodes without GPUs first
//!                    feasibility stack: NodeReady → Driver → Constraints → Capacity → GpuCapacity
//!                      │      (a node that fails yields a named reason, counted)
//!                      ▼
//!                    rank the first `sample` feasible nodes: BinPack + GpuFit
//!                      │
//!                      ▼
//!                    best node (and its exact GPUs), reserved in the pass's overlay
//! ```
//!
//! Like Nomad, a pass scores a bounded sample of feasible nodes (two for batch work by
//! default) rather than all of them, so its cost stays flat as the cluster grows; setting
//! `sample` to `None` scores every feasible node. The starting node is chosen from a seed
//! derived from the pass number, so a pass can be replayed exactly.
//!
//! Work that asks for no GPU looks at nodes without GPUs first and goes to a GPU node only
//! when no CPU node fits, so GPUs are not blocked by CPU work. Siblings spread apart
//! (`SpreadGroup`, every feasible node scored): a service's replicas, and the shards of a
//! sharded stage, which would gain nothing from sharing one node's cores.
//!
//! A task that fits nowhere is not an error: it stays pending, and the pass reports why,
//! with the number of nodes that gave each reason ("cpu exhausted on 2 nodes"). Tasks with
//! the same ask as one that already failed in this pass are skipped with the same reason,
//! so a full cluster costs one scan per distinct shape, not per task.
//!
//! The capacity checks are [`crate::state::fit`]'s, the same functions the state machine
//! runs again when it applies the pass.

mod checks;
pub mod gpus;
mod rank;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use kiln_api::spec::Resources;

use crate::state::{ClusterState, GpuGrant, Node, NodeId, Placement, TaskRef};
pub use checks::{Ask, Check, Group, default_checks};
pub use rank::{BinPack, GpuFit, Rank, Spread, SpreadGroup};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How many feasible nodes to score per task; `None` scores them all.
    pub sample: Option<usize>,
    /// At most this many placements in one pass (one Raft entry).
    pub max_placements: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            sample: Some(2),
            max_placements: 4096,
        }
    }
}

/// What this pass has already reserved on one node.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    pub resources: Resources,
    pub gpus: Vec<GpuGrant>,
    /// The groups this pass placed a task of on the node, one entry per task.
    pub groups: Vec<Group>,
}

/// What one pass decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub placements: Vec<Placement>,
    /// Why each unplaced task waits, e.g. "no node fits: cpu exhausted on 2 nodes".
    pub waiting: BTreeMap<TaskRef, String>,
}

/// The fixed stack a pass runs: checks in order, rankers added.
struct Stack {
    checks: Box<[Box<dyn Check>]>,
    rankers: Vec<Box<dyn Rank>>,
}

/// Plans placements for every pending task that fits somewhere.
pub fn schedule(state: &ClusterState, pass: u64, config: &SchedulerConfig) -> Pass {
    let stack = Stack {
        checks: default_checks(),
        rankers: vec![Box::new(BinPack), Box::new(GpuFit)],
    };
    // Service replicas spread: away from their siblings first, then onto emptier nodes;
    // every feasible node is scored (a pass places few replicas).
    let replicas = Stack {
        checks: default_checks(),
        rankers: vec![Box::new(SpreadGroup), Box::new(Spread), Box::new(GpuFit)],
    };
    // The shards of a stage spread too (on one node they would share its cores and gain
    // nothing); otherwise they pack like any task.
    let shards = Stack {
        checks: default_checks(),
        rankers: vec![Box::new(SpreadGroup), Box::new(BinPack), Box::new(GpuFit)],
    };
    let (cpu_nodes, gpu_nodes): (Vec<&Node>, Vec<&Node>) =
        state.nodes.values().partition(|n| n.gpus.is_empty());
    let all: Vec<&Node> = state.nodes.values().collect();
    let mut overlay: HashMap<&NodeId, Planned> = HashMap::new();
    let mut failed_shapes: HashMap<Ask, String> = HashMap::new();
    let mut out = Pass::default();

    for &task in &state.pending {
        if out.placements.len() >= config.max_placements {
            break;
        }
        let (Some(stage), Some(t)) = (state.stage(task), state.task(task)) else {
            continue;
        };
        let mut ask = Ask::of(stage);
        let (stack, sample) = match task {
            TaskRef::Stage(at) if state.stage_run(at).is_some_and(|s| s.is_sharded()) => {
                ask.group = Some(Group::Stage {
                    run: at.run,
                    stage: at.stage,
                });
                (&shards, None)
            }
            TaskRef::Stage(_) => (&stack, config.sample),
            TaskRef::Replica(r) => {
                ask.group = Some(Group::Service(r.service));
                (&replicas, None)
            }
        };
        if let Some(reason) = failed_shapes.get(&ask) {
            out.waiting.insert(task, reason.clone());
            continue;
        }
        let seed = seed(pass, task);
        let picked = if ask.gpu.is_some() {
            // GPU work: only nodes with GPUs can take it.
            pick(&gpu_nodes, &overlay, &ask, stack, seed, sample)
                .map_err(|e| e.combined(&all, &overlay, &ask, stack))
        } else if !gpu_nodes.is_empty() && !cpu_nodes.is_empty() {
            // CPU work: GPU nodes only when no CPU node fits.
            pick(&cpu_nodes, &overlay, &ask, stack, seed, sample).or_else(|_| {
                pick(&gpu_nodes, &overlay, &ask, stack, seed, sample)
                    .map_err(|e| e.combined(&all, &overlay, &ask, stack))
            })
        } else {
            pick(&all, &overlay, &ask, stack, seed, sample)
        };
        match picked {
            Ok((node, grants)) => {
                let planned = overlay.entry(&node.id).or_default();
                planned.resources = planned.resources.saturating_add(ask.resources);
                planned.gpus.extend(grants.iter().copied());
                planned.groups.extend(ask.group);
                out.placements.push(Placement {
                    task,
                    attempt: t.attempt,
                    node: node.id.clone(),
                    gpus: grants,
                });
            }
            Err(no_fit) => {
                let reason = driver_missing(&all, ask.driver).unwrap_or_else(|| no_fit.to_string());
                failed_shapes.insert(ask, reason.clone());
                out.waiting.insert(task, reason);
            }
        }
    }
    out
}

/// Why no node fit: each reason with the number of nodes that gave it.
#[derive(Debug, Default)]
struct NoFit(BTreeMap<&'static str, usize>);

impl NoFit {
    /// The reasons over every node (for CPU work that tried CPU nodes, then GPU nodes).
    fn combined(
        self,
        all: &[&Node],
        overlay: &HashMap<&NodeId, Planned>,
        ask: &Ask,
        stack: &Stack,
    ) -> NoFit {
        let mut reasons = BTreeMap::new();
        for node in all {
            let planned = overlay.get(&node.id).cloned().unwrap_or_default();
            if let Some(r) = stack
                .checks
                .iter()
                .find_map(|c| c.check(node, &planned, ask).err())
            {
                *reasons.entry(r).or_default() += 1;
            }
        }
        NoFit(reasons)
    }
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no nodes registered");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
            .collect();
        write!(f, "no node fits: {}", parts.join(", "))
    }
}

/// Picks the best of the first `sample` feasible nodes, walking from a seeded offset.
fn pick<'a>(
    nodes: &[&'a Node],
    overlay: &HashMap<&NodeId, Planned>,
    ask: &Ask,
    stack: &Stack,
    seed: u64,
    sample: Option<usize>,
) -> Result<(&'a Node, Vec<GpuGrant>), NoFit> {
    if nodes.is_empty() {
        return Err(NoFit::default());
    }
    let start = (seed % nodes.len() as u64) as usize;
    let want = sample.unwrap_or(usize::MAX).max(1);
    let empty = Planned::default();
    let mut reasons = NoFit::default();
    let mut best: Option<(f64, &Node)> = None;
    let mut feasible = 0;
    for i in 0..nodes.len() {
        let node = nodes[(start + i) % nodes.len()];
        let planned = overlay.get(&node.id).unwrap_or(&empty);
        if let Some(reason) = stack
            .checks
            .iter()
            .find_map(|c| c.check(node, planned, ask).err())
        {
            *reasons.0.entry(reason).or_default() += 1;
            continue;
        }
        let score: f64 = stack
            .rankers
            .iter()
            .map(|r| r.score(node, planned, ask))
            .sum();
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, node));
        }
        feasible += 1;
        if feasible >= want {
            break;
        }
    }
    let (_, node) = best.ok_or(reasons)?;
    let grants = match &ask.gpu {
        None => Vec::new(),
        Some(request) => {
            let planned = overlay.get(&node.id).unwrap_or(&empty);
            gpus::choose(node, &planned.gpus, request)
                .map(|c| c.grants)
                .unwrap_or_default()
        }
    };
    Ok((node, grants))
}

/// When no ready node offers the driver at all, that is the reason to give, whatever else
/// the nodes lack: "no node offers driver docker: 2 ready nodes offer process".
fn driver_missing(nodes: &[&Node], driver: &str) -> Option<String> {
    let ready: Vec<&&Node> = nodes
        .iter()
        .filter(|n| n.status == crate::state::NodeStatus::Ready)
        .collect();
    if ready.is_empty() || ready.iter().any(|n| n.drivers.iter().any(|d| d == driver)) {
        return None;
    }
    let offered: std::collections::BTreeSet<&str> = ready
        .iter()
        .flat_map(|n| n.drivers.iter().map(String::as_str))
        .collect();
    let offered = if offered.is_empty() {
        "no driver".to_string()
    } else {
        offered.into_iter().collect::<Vec<_>>().join(", ")
    };
    let (n, s) = (ready.len(), if ready.len() == 1 { "" } else { "s" });
    let verb = if n == 1 { "offers" } else { "offer" };
    Some(format!(
        "no node offers driver {driver}: {n} ready node{s} {verb} {offered}"
    ))
}

/// A deterministic 64-bit mix of the pass number and the task (splitmix64).
fn seed(pass: u64, task: TaskRef) -> u64 {
    let (a, b) = match task {
        TaskRef::Stage(t) => (t.run, u64::from(t.stage) << 20 | u64::from(t.shard)),
        TaskRef::Replica(r) => (r.service ^ 0x5bd1_e995, u64::from(r.slot)),
    };
    let mut z = pass ^ a.rotate_left(17) ^ b.rotate_left(43);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
