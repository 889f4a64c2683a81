//! The node's GPUs: an inventory at registration, live figures with every heartbeat.
//!
//! Two sources behind one trait, [`GpuSource`]: [`nvml::Nvml`] reads real NVIDIA GPUs
//! through NVML (loaded at run time; without a driver the node simply has no GPUs, said
//! once in the log), and [`simulated::Simulated`] makes up GPUs from a spec such as
//! `4xH100-80GB,nvlink=0-1,2-3`, with figures that move with the work kiln placed on them.
//! Simulated GPUs say so: `simulated: true` travels with every device and is shown wherever
//! a GPU is.

pub mod nvml;
pub mod simulated;

use kiln_api::pb;

/// What kiln placed on one GPU of this node, from the tasks running here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub index: u32,
    /// Tasks holding the whole GPU.
    pub whole: u32,
    /// Bytes of memory held by shares.
    pub shared_bytes: u64,
    pub pids: Vec<u32>,
}

pub trait GpuSource: Send + Sync {
    fn devices(&self) -> Vec<pb::GpuDevice>;
    /// Live figures; `load` is what kiln runs on each GPU (the simulator's only input).
    fn stats(&self, load: &[Load]) -> Vec<pb::GpuStats>;
}

/// No GPUs.
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn devices(&self) -> Vec<pb::GpuDevice> {
        Vec::new()
    }

    fn stats(&self, _: &[Load]) -> Vec<pb::GpuStats> {
        Vec::new()
    }
}

/// The source for this agent: simulated if asked, else NVML if a driver answers, else none.
pub fn detect(node_id: &str, simulate: Option<&str>) -> Result<Box<dyn GpuSource>, String> {
    if let Some(spec) = simulate {
        let sim = simulated::Simulated::parse(node_id, spec)?;
        tracing::warn!(
            gpus = sim.devices().len(),
            "GPUs are SIMULATED from {spec:?}"
        );
        return Ok(Box::new(sim));
    }
    match nvml::Nvml::open() {
        Ok(n) => {
            tracing::info!(gpus = n.devices().len(), "GPUs from NVML");
            Ok(Box::new(n))
        }
        Err(e) => {
            tracing::info!("no NVIDIA GPUs: NVML is not available ({e}); this node offers none");
            Ok(Box::new(NoGpus))
        }
    }
}
