//! Ranking feasible nodes. Higher scores win; each ranker is one idea, and `pick` adds them.

use super::{Ask, Planned, gpus};
use crate::state::Node;

pub trait Rank: Send + Sync {
    fn score(&self, node: &Node, planned: &Planned, ask: &Ask) -> f64;
}

fn fractions_after(node: &Node, planned: &Planned, ask: &Ask) -> (f64, f64) {
    let after = node
        .reserved
        .saturating_add(planned.resources)
        .saturating_add(ask.resources);
    let frac = |used: u64, cap: u64| {
        if cap == 0 {
            1.0
        } else {
            used as f64 / cap as f64
        }
    };
    (
        frac(after.cpu_millis, node.capacity.cpu_millis),
        frac(after.memory_bytes, node.capacity.memory_bytes),
    )
}

/// Bin-packing (pipeline work): prefer the node that will be fullest after the placement
/// (the mean of its CPU and memory fractions), so that whole nodes stay free for large asks.
pub struct BinPack;

impl Rank for BinPack {
    fn score(&self, node: &Node, planned: &Planned, ask: &Ask) -> f64 {
        let (cpu, mem) = fractions_after(node, planned, ask);
        (cpu + mem) / 2.0
    }
}

/// Spreading (services): prefer the emptiest node, so replicas land apart.
pub struct Spread;

impl Rank for Spread {
    fn score(&self, node: &Node, planned: &Planned, ask: &Ask) -> f64 {
        let (cpu, mem) = fractions_after(node, planned, ask);
        1.0 - (cpu + mem) / 2.0
    }
}

/// Replicas of one service apart: a node scores lower for each replica of the same service
/// it holds or was given in this pass. Worth more than any resource ranker, so two replicas
/// share a node only when no other node fits.
pub struct SpreadGroup;

impl Rank for SpreadGroup {
    fn score(&self, node: &Node, planned: &Planned, ask: &Ask) -> f64 {
        let Some(group) = ask.group else {
            return 0.0;
        };
        let held = node.allocations.iter().filter(|t| group.holds(t)).count();
        let planned = planned.groups.iter().filter(|&&g| g == group).count();
        -10.0 * (held + planned) as f64
    }
}

/// GPU placement quality, worth more than CPU packing: keep whole GPUs whole (a share goes
/// on a GPU that is already shared), keep multi-GPU tasks on NVLink-connected sets, and fill
/// GPU nodes that are already in use.
pub struct GpuFit;

impl Rank for GpuFit {
    fn score(&self, node: &Node, planned: &Planned, ask: &Ask) -> f64 {
        match &ask.gpu {
            None => 0.0,
            Some(request) => {
                gpus::choose(node, &planned.gpus, request).map_or(0.0, |c| 2.0 * c.score)
            }
        }
    }
}
