//! Ranking feasible nodes. Higher scores win.

use kiln_api::spec::Resources;

use super::Ask;
use crate::state::Node;

pub trait Rank: Send + Sync {
    fn score(&self, node: &Node, extra: Resources, ask: &Ask) -> f64;
}

/// Bin-packing: prefer the node that will be fullest after the placement (the mean of its
/// CPU and memory fractions), so that whole nodes stay free for large asks.
pub struct BinPack;

impl Rank for BinPack {
    fn score(&self, node: &Node, extra: Resources, ask: &Ask) -> f64 {
        let after = node
            .reserved
            .saturating_add(extra)
            .saturating_add(ask.resources);
        let frac = |used: u64, cap: u64| {
            if cap == 0 {
                1.0
            } else {
                used as f64 / cap as f64
            }
        };
        (frac(after.cpu_millis, node.capacity.cpu_millis)
            + frac(after.memory_bytes, node.capacity.memory_bytes))
            / 2.0
    }
}
