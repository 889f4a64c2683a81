//! Placement, as a pure function: the cluster state in, one pass's placements out.
//!
//! ```text
//!  pending tasks ──► for each task, oldest run first
//!                      │
//!                      ▼  nodes in a rotated order seeded by (pass, task)
//!                    feasibility stack: NodeReady → Driver → Constraints → Capacity
//!                      │      (a node that fails yields a named reason, counted)
//!                      ▼
//!                    rank the first `sample` feasible nodes: BinPack
//!                      │
//!                      ▼
//!                    best node, reserved in the pass's overlay so the next task sees it
//! ```
//!
//! Like Nomad, a pass scores a bounded sample of feasible nodes (two for batch work by
//! default) rather than all of them, so its cost stays flat as the cluster grows; setting
//! `sample` to `None` scores every feasible node. Ties and the starting node are chosen
//! from a seed derived from the pass number, so a pass can be replayed exactly.
//!
//! A task that fits nowhere is not an error: it stays pending, and the pass reports why,
//! with the number of nodes that gave each reason ("cpu exhausted on 2 nodes"). Tasks with
//! the same ask and constraints as one that already failed in this pass are skipped with
//! the same reason, so a full cluster costs one scan per distinct shape, not per task.
//!
//! The capacity check is [`crate::state::fit::fits`], the same function the state machine
//! runs again when it applies the pass.

mod checks;
mod rank;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use kiln_api::spec::Resources;

use crate::state::{ClusterState, Node, NodeId, Placement, TaskRef};
pub use checks::{Ask, Check, default_checks};
pub use rank::{BinPack, Rank};

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

/// What one pass decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub placements: Vec<Placement>,
    /// Why each unplaced task waits, e.g. "no node fits: cpu exhausted on 2 nodes".
    pub waiting: BTreeMap<TaskRef, String>,
}

/// Plans placements for every pending task that fits somewhere.
pub fn schedule(state: &ClusterState, pass: u64, config: &SchedulerConfig) -> Pass {
    let checks = default_checks();
    let ranker = BinPack;
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let mut overlay: HashMap<&NodeId, Resources> = HashMap::new();
    let mut failed_shapes: HashMap<Ask, String> = HashMap::new();
    let mut out = Pass::default();

    for &task in &state.pending {
        if out.placements.len() >= config.max_placements {
            break;
        }
        let (Some(stage), Some(t)) = (state.stage(task), state.task(task)) else {
            continue;
        };
        let ask = Ask::of(stage);
        if let Some(reason) = failed_shapes.get(&ask) {
            out.waiting.insert(task, reason.clone());
            continue;
        }
        match pick(
            &nodes,
            &overlay,
            &ask,
            &checks,
            &ranker,
            seed(pass, task),
            config.sample,
        ) {
            Ok(node) => {
                let extra = overlay.entry(&node.id).or_default();
                *extra = extra.saturating_add(ask.resources);
                out.placements.push(Placement {
                    task,
                    attempt: t.attempt,
                    node: node.id.clone(),
                });
            }
            Err(reason) => {
                failed_shapes.insert(ask, reason.clone());
                out.waiting.insert(task, reason);
            }
        }
    }
    out
}

/// Picks the best of the first `sample` feasible nodes, walking from a seeded offset.
fn pick<'a>(
    nodes: &[&'a Node],
    overlay: &HashMap<&NodeId, Resources>,
    ask: &Ask,
    checks: &[Box<dyn Check>],
    ranker: &dyn Rank,
    seed: u64,
    sample: Option<usize>,
) -> Result<&'a Node, String> {
    if nodes.is_empty() {
        return Err("no nodes registered".into());
    }
    let start = (seed % nodes.len() as u64) as usize;
    let want = sample.unwrap_or(usize::MAX).max(1);
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best: Option<(f64, &Node)> = None;
    let mut feasible = 0;
    for i in 0..nodes.len() {
        let node = nodes[(start + i) % nodes.len()];
        let extra = overlay.get(&node.id).copied().unwrap_or_default();
        if let Some(reason) = checks.iter().find_map(|c| c.check(node, extra, ask).err()) {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        let score = ranker.score(node, extra, ask);
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, node));
        }
        feasible += 1;
        if feasible >= want {
            break;
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        if let Some(reason) = driver_missing(nodes, ask.driver) {
            return reason;
        }
        let parts: Vec<String> = reasons
            .iter()
            .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
            .collect();
        format!("no node fits: {}", parts.join(", "))
    })
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
    let mut z = pass ^ task.run.rotate_left(17) ^ (task.stage as u64).rotate_left(43);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
