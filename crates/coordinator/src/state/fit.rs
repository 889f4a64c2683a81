//! The one fit function. The scheduler asks it while it plans, and the state machine asks it
//! again while it applies the plan, because the scheduler's view may be stale (Nomad's
//! `AllocsFit`): whatever the scheduler believed, a node is never over-committed.

use kiln_api::spec::Resources;

use super::model::{Node, NodeStatus};

/// Why a request does not fit on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    NodeNotReady,
    Cpu,
    Memory,
}

impl Misfit {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfit::NodeNotReady => "node not ready",
            Misfit::Cpu => "cpu exhausted",
            Misfit::Memory => "memory exhausted",
        }
    }
}

/// Does `ask` fit on `node` on top of what it already holds plus `extra` (reservations made
/// earlier in the same scheduling pass)?
pub fn fits(node: &Node, extra: Resources, ask: Resources) -> Result<(), Misfit> {
    if node.status != NodeStatus::Ready {
        return Err(Misfit::NodeNotReady);
    }
    let after = node.reserved.saturating_add(extra).saturating_add(ask);
    if after.cpu_millis > node.capacity.cpu_millis {
        return Err(Misfit::Cpu);
    }
    if after.memory_bytes > node.capacity.memory_bytes {
        return Err(Misfit::Memory);
    }
    Ok(())
}
