//! The fit rules. The scheduler asks them while it plans, and the state machine asks them
//! again while it applies the plan, because the scheduler's view may be stale (Nomad's
//! `AllocsFit`): whatever the scheduler believed, a node is never over-committed.
//!
//! - [`fits`]: CPU and memory, for the scheduler's `Capacity` check and for the apply.
//! - [`grant_fits`]: one grant on one GPU, given its [`GpuUse`]. The scheduler's GPU choice
//!   (`scheduler::gpus::choose`) considers only GPUs this rule admits, and the apply checks
//!   the chosen grants with [`gpus_fit`], which applies it to each.

use kiln_api::spec::{GpuRequest, Resources};

use super::model::{Gpu, GpuGrant, Node, NodeStatus};

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

/// What is taken on one GPU: the node's reservations plus the grants made earlier in the
/// same pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuUse {
    pub whole_taken: bool,
    pub shared_bytes: u64,
}

impl GpuUse {
    pub fn of(gpu: &Gpu, planned: &[GpuGrant]) -> GpuUse {
        let mine = planned.iter().filter(|p| p.index == gpu.index);
        mine.fold(
            GpuUse {
                whole_taken: gpu.whole.is_some(),
                shared_bytes: gpu.shared_bytes(),
            },
            |u, p| GpuUse {
                whole_taken: u.whole_taken || p.whole,
                shared_bytes: u.shared_bytes + if p.whole { 0 } else { p.memory_bytes },
            },
        )
    }

    pub fn is_free(self) -> bool {
        !self.whole_taken && self.shared_bytes == 0
    }
}

/// The per-GPU rule, the one both the scheduler (choosing) and the state machine (checking
/// what was chosen) apply: a whole GPU must be free; a share must find the GPU not held
/// whole and enough of its memory unshared.
pub fn grant_fits(gpu: &Gpu, used: GpuUse, whole: bool, memory_bytes: u64) -> Result<(), Misfit> {
    if whole {
        return if used.is_free() {
            Ok(())
        } else {
            Err(Misfit::Gpus)
        };
    }
    if used.whole_taken || used.shared_bytes.saturating_add(memory_bytes) > gpu.memory_bytes {
        return Err(Misfit::GpuMemory);
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
        grant_fits(gpu, GpuUse::of(gpu, planned), g.whole, g.memory_bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(whole: bool, shares: &[u64]) -> Gpu {
        Gpu {
            index: 0,
            uuid: "GPU-0".into(),
            model: "H100".into(),
            memory_bytes: 80,
            nvlink_peers: Vec::new(),
            simulated: true,
            whole: whole.then(|| crate::state::TaskRef::stage(1, 0)),
            shares: shares
                .iter()
                .enumerate()
                .map(|(i, b)| (crate::state::TaskRef::stage(2, i as u32), *b))
                .collect(),
        }
    }

    fn share(bytes: u64) -> GpuGrant {
        GpuGrant {
            index: 0,
            whole: false,
            memory_bytes: bytes,
        }
    }

    #[test]
    fn the_per_gpu_rule() {
        let fits = |g: &Gpu, planned: &[GpuGrant], whole: bool, bytes: u64| {
            grant_fits(g, GpuUse::of(g, planned), whole, bytes)
        };
        assert_eq!(fits(&gpu(false, &[]), &[], true, 80), Ok(()));
        assert_eq!(fits(&gpu(true, &[]), &[], true, 80), Err(Misfit::Gpus));
        assert_eq!(fits(&gpu(false, &[10]), &[], true, 80), Err(Misfit::Gpus));
        assert_eq!(
            fits(&gpu(false, &[]), &[share(1)], true, 80),
            Err(Misfit::Gpus)
        );
        assert_eq!(fits(&gpu(false, &[40]), &[], false, 40), Ok(()));
        assert_eq!(
            fits(&gpu(false, &[40]), &[share(10)], false, 40),
            Err(Misfit::GpuMemory)
        );
        assert_eq!(fits(&gpu(true, &[]), &[], false, 1), Err(Misfit::GpuMemory));
    }
}
