//! The leader's memory: what only the leader holds, never through Raft, rebuilt after a
//! failover from what agents and gateways send again.
//!
//! - [`sessions`]: one outbound channel per connected agent (assignments, kills,
//!   acknowledgements, log requests), and the log requests in flight.
//! - [`traffic`]: what the service gateways report: in-flight requests per replica (for
//!   draining), concurrency and request rates (for the autoscaler).
//! - [`Liveness`]: each node's last heartbeat and live usage.
//!
//! The scheduler's reasons for waiting tasks are leader memory too (`Core::waiting`).

pub mod sessions;
pub mod traffic;

/// Live figures an agent sends with each heartbeat; leader memory only, never replicated.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    pub last_seen_ms: i64,
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    /// Per-GPU live figures (NVML or simulated), by GPU index.
    pub gpus: Vec<kiln_api::pb::GpuStats>,
}
