//! What this node has: CPU and memory (sysinfo). Its drivers are in `drivers`.

use std::sync::Arc;

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::Config;
use crate::gpu::GpuSource;

/// The node's capacity and identity, as sent in `Register`.
#[derive(Clone)]
pub struct Fingerprint {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Arc<dyn GpuSource>,
}

pub fn fingerprint(config: &Config, gpus: Arc<dyn GpuSource>) -> Fingerprint {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .inspect_err(
        |e| tracing::warn!(error = %e, "cannot read CPU and memory; set --cpu and --memory"),
    )
    .ok();
    let cpus = match &sys {
        Some(s) => s.cpus().len(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Fingerprint {
        cpu_millis: config.cpu_millis.unwrap_or(cpus.max(1) as u64 * 1000),
        memory_bytes: config
            .memory_bytes
            .unwrap_or(sys.as_ref().map_or(0, |s| s.total_memory())),
        gpus,
    }
}

/// Live usage for heartbeats.
pub struct Usage {
    sys: Option<System>,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            sys: System::new().ok(),
        }
    }
}

impl Usage {
    /// (CPU %, memory used in bytes); zeros where the host cannot be read.
    pub fn sample(&mut self) -> (f64, u64) {
        let Some(sys) = self.sys.as_mut() else {
            return (0.0, 0);
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        (sys.global_cpu_usage() as f64, sys.used_memory())
    }
}
