//! The one fit function. The scheduler asks it while it plans, and the state machine asks it
//! again while it applies the plan, because the scheduler's view may be stale (Nomad's
//! `AllocsFit`): whatever the scheduler believed, a node is never over-committed.

use kiln_api::spec::{GpuRequest, Resources};

use super::model::{GpuGrant, Node, NodeStatus};

/// Why a request does not fit on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    NodeNotReady,
    Cpu,
    Memory,
    NoGpus,
    GpuModel,
    Gpus,
    GpuMemory,
    /// A grant names a GPU the node does not have, or does not match the request's shape.
    BadGrant,
}

impl Misfit {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfit::NodeNotReady => "node not ready",
            Misfit::Cpu => "cpu exhausted",
            Misfit::Memory => "memory exhausted",
            Misfit::NoGpus => "no gpus",
            Misfit::GpuModel => "no gpu matches the model or memory asked",
            Misfit::Gpus => "gpus exhausted",
            Misfit::GpuMemory => "gpu memory exhausted",
            Misfit::BadGrant => "gpu grant does not match the request",
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

/// Do these exact GPU grants fit on `node` on top of what it holds plus `planned` (grants
/// made earlier in the same pass), and do they give `request` what it asked for?
pub fn gpus_fit(
    node: &Node,
    planned: &[GpuGrant],
    request: &GpuRequest,
    grants: &[GpuGrant],
) -> Result<(), Misfit> {
    let whole = grants.iter().filter(|g| g.whole).count() as u32;
    let shape_ok = if request.is_share() {
        grants.len() == 1 && !grants[0].whole && grants[0].memory_bytes == request.share_bytes
    } else {
        whole == request.count && grants.len() as u32 == request.count
    };
    if !shape_ok {
        return Err(Misfit::BadGrant);
    }
    for (i, g) in grants.iter().enumerate() {
        if grants[..i].iter().any(|o| o.index == g.index) {
            return Err(Misfit::BadGrant);
        }
        let gpu = node
            .gpus
            .iter()
            .find(|d| d.index == g.index)
            .ok_or(Misfit::BadGrant)?;
        if !request.accepts(&gpu.model, gpu.memory_bytes) {
            return Err(Misfit::GpuModel);
        }
        let earlier = planned.iter().filter(|p| p.index == g.index);
        let (planned_whole, planned_shared) = earlier.fold((false, 0u64), |(w, s), p| {
            (w || p.whole, s + if p.whole { 0 } else { p.memory_bytes })
        });
        if g.whole {
            if gpu.whole.is_some() || !gpu.shares.is_empty() || planned_whole || planned_shared > 0
            {
                return Err(Misfit::Gpus);
            }
        } else if gpu.whole.is_some()
            || planned_whole
            || gpu.shared_bytes() + planned_shared + g.memory_bytes > gpu.memory_bytes
        {
            return Err(Misfit::GpuMemory);
        }
    }
    Ok(())
}
