//! Prometheus metrics. Counters and histograms are updated where things happen; gauges that
//! mirror Raft or the state are filled in when `/metrics` is scraped, so they cost nothing
//! between scrapes.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub raft_term: Gauge,
    pub raft_last_applied: Gauge,
    pub raft_leader: Gauge,
    pub is_leader: Gauge,
    pub tasks: Family<Labels, Gauge>,
    pub nodes: Family<Labels, Gauge>,
    pub placements: Counter,
    pub placements_rejected: Counter,
    /// Time from a change that woke the scheduler to the commit of its pass.
    pub scheduling_seconds: Histogram,
    pub task_events: Counter,
    /// Per GPU, labelled by node, index, model and whether it is simulated.
    pub gpu_utilization: Family<Labels, FloatGauge>,
    pub gpu_memory_used: Family<Labels, FloatGauge>,
    pub gpu_memory_total: Family<Labels, FloatGauge>,
    pub gpu_temperature: Family<Labels, FloatGauge>,
    pub gpu_power: Family<Labels, FloatGauge>,
    /// Scheduled backups, by result (`ok`: taken and verified).
    pub snapshots: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let m = Metrics {
            raft_term: Gauge::default(),
            raft_last_applied: Gauge::default(),
            raft_leader: Gauge::default(),
            is_leader: Gauge::default(),
            tasks: Family::default(),
            nodes: Family::default(),
            placements: Counter::default(),
            placements_rejected: Counter::default(),
            scheduling_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            task_events: Counter::default(),
            gpu_utilization: Family::default(),
            gpu_memory_used: Family::default(),
            gpu_memory_total: Family::default(),
            gpu_temperature: Family::default(),
            gpu_power: Family::default(),
            snapshots: Family::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_last_applied",
            "Index of the last applied Raft entry",
            m.raft_last_applied.clone(),
        );
        registry.register(
            "raft_leader",
            "Id of the current leader (0 if none)",
            m.raft_leader.clone(),
        );
        registry.register("raft_is_leader", "1 on the leader", m.is_leader.clone());
        registry.register("tasks", "Tasks by status", m.tasks.clone());
        registry.register(
            "snapshots",
            "Scheduled backups by result (ok: taken and verified by a restore)",
            m.snapshots.clone(),
        );
        registry.register("nodes", "Nodes by status", m.nodes.clone());
        registry.register("placements", "Placements committed", m.placements.clone());
        registry.register(
            "placements_rejected",
            "Placements rejected on apply",
            m.placements_rejected.clone(),
        );
        registry.register(
            "scheduling_seconds",
            "Wake-up to committed scheduling pass",
            m.scheduling_seconds.clone(),
        );
        registry.register(
            "task_events",
            "Task events committed",
            m.task_events.clone(),
        );
        registry.register(
            "gpu_utilization_percent",
            "GPU utilisation",
            m.gpu_utilization.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use",
            m.gpu_memory_used.clone(),
        );
        registry.register(
            "gpu_memory_total_bytes",
            "GPU memory in total",
            m.gpu_memory_total.clone(),
        );
        registry.register(
            "gpu_temperature_celsius",
            "GPU temperature",
            m.gpu_temperature.clone(),
        );
        registry.register("gpu_power_watts", "GPU power draw", m.gpu_power.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
