//! The service spec: a long-running deployment (a model server), what `kiln deploy` takes.
//!
//! ```yaml
//! name: model
//! command: exec ./model-server          # or image: registry/app@sha256:...
//! env: { MODEL_WEIGHTS: model/weights-v2.json }
//! replicas: 2                           # or autoscale:
//! autoscale: { min: 1, max: 8, metric: concurrency, target: 4, window: 5m }
//! resources: { cpu: 500m, memory: 256Mi, gpu_memory: 20Gi }
//! health:
//!   http: /ready                        # or tcp: true, or exec: ./check.sh
//!   interval: 1s
//!   timeout: 1s
//!   startup: 2m                         # slow model loads: the first pass may take this long
//! update:
//!   max_surge: 1
//!   max_unavailable: 0
//!   min_healthy_time: 2s
//!   healthy_deadline: 5m
//!   canary: 1
//!   auto_promote: false
//!   auto_revert: true
//! model: model/weights-v2.json          # the model artifact; its digest is recorded
//! ```
//!
//! A process replica listens on the port kiln gives it in `$PORT`; a container replica on
//! `port`, which kiln publishes on a port of the node. Checked by
//! [`crate::validate::parse_service`] into a [`ServiceSpec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{CommandFile, ResourcesFile, Scalar, Stage};

/// A service file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    pub command: Option<CommandFile>,
    pub image: Option<String>,
    /// The port a container replica listens on (process replicas use `$PORT`).
    pub port: Option<i64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesFile,
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    pub replicas: Option<i64>,
    pub autoscale: Option<AutoscaleFile>,
    pub health: Option<HealthFile>,
    pub update: Option<UpdateFile>,
    /// The model artifact, a file beside the service file; the CLI records its digest.
    pub model: Option<String>,
    /// Cluster secrets every replica gets as environment variables of their names.
    #[serde(default)]
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleFile {
    pub min: i64,
    pub max: i64,
    pub metric: String,
    pub target: Scalar,
    /// The scale-down stabilisation window (default 5m).
    pub window: Option<Scalar>,
    /// Where `prometheus:NAME` is scraped, when not `/metrics` on the serving port.
    pub metrics: Option<MetricsFile>,
}

/// `metrics: { port: 8082, path: /metrics }` as written: a container port for an image
/// replica, or `$METRICS_PORT` for a process replica (kiln picks a port and sets it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub port: Option<Scalar>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub http: Option<String>,
    pub tcp: Option<bool>,
    pub exec: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub startup: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    pub max_surge: Option<i64>,
    pub max_unavailable: Option<i64>,
    pub min_healthy_time: Option<Scalar>,
    pub healthy_deadline: Option<Scalar>,
    pub canary: Option<i64>,
    pub auto_promote: Option<bool>,
    pub auto_revert: Option<bool>,
}

/// A checked service spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    /// What each replica runs: command or image, env, resources, GPUs, constraints.
    pub replica: Stage,
    /// The container port of an image replica; 0 for a process replica.
    pub port: u16,
    /// The replica count when not autoscaled, and the starting count when autoscaled.
    pub replicas: u32,
    pub autoscale: Option<Autoscale>,
    pub health: Health,
    pub update: Update,
    /// The model artifact as written.
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    pub metric: Metric,
    /// The per-replica value the autoscaler aims for.
    pub target: f64,
    pub window_ms: u64,
    /// Where a `prometheus:` metric is scraped.
    #[serde(default)]
    pub metrics: MetricsEndpoint,
}

/// Where a replica serves its Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsEndpoint {
    pub port: MetricsPort,
    /// From `/`.
    pub path: String,
}

impl Default for MetricsEndpoint {
    fn default() -> Self {
        MetricsEndpoint {
            port: MetricsPort::Serving,
            path: "/metrics".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricsPort {
    /// The port the replica serves on.
    Serving,
    /// A port kiln picks for a process replica, given as `$METRICS_PORT`.
    Picked,
    /// This port of an image replica's container, published on the node.
    Container(u16),
}

/// What the autoscaler reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Requests in flight per replica, from the gateway.
    Concurrency,
    /// Requests per second per replica, from the gateway.
    Rps,
    /// CPU % of the replicas' nodes, from the agents' heartbeats.
    Cpu,
    /// GPU utilisation % of the replicas' GPUs (NVML or simulated).
    Gpu,
    /// A gauge scraped from each replica's Prometheus endpoint (`/metrics`), averaged.
    Prometheus(String),
}

impl Metric {
    pub fn parse(text: &str) -> Option<Metric> {
        Some(match text {
            "concurrency" => Metric::Concurrency,
            "rps" => Metric::Rps,
            "cpu" => Metric::Cpu,
            "gpu" => Metric::Gpu,
            _ => {
                let name = text.strip_prefix("prometheus:")?;
                let ok = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
                return ok.then(|| Metric::Prometheus(name.to_string()));
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Metric::Concurrency => "concurrency".into(),
            Metric::Rps => "rps".into(),
            Metric::Cpu => "cpu".into(),
            Metric::Gpu => "gpu".into(),
            Metric::Prometheus(name) => format!("prometheus:{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub check: HealthCheck,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// A replica that has not passed its first check this long after starting is failed.
    pub startup_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheck {
    /// GET this path; healthy on a 2xx answer.
    Http(String),
    /// Healthy while the port accepts connections.
    Tcp,
    /// Healthy while this command (`sh -c`, in the replica's work directory) exits 0.
    Exec(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// How many replicas above the desired count a rollout may run.
    pub max_surge: u32,
    /// How many replicas below the desired count may be unavailable during a rollout.
    pub max_unavailable: u32,
    /// A new replica counts as healthy after passing checks this long.
    pub min_healthy_time_ms: u64,
    /// A rollout not healthy by then has failed.
    pub healthy_deadline_ms: u64,
    /// Replicas of the new revision started beside the old ones before any old one stops.
    pub canary: u32,
    /// Promote the canaries once healthy, without `kiln promote`.
    pub auto_promote: bool,
    /// On a failed rollout, go back to the last healthy revision.
    pub auto_revert: bool,
}

pub mod defaults {
    pub const REPLICAS: u32 = 1;
    pub const HEALTH_INTERVAL_MS: u64 = 1_000;
    pub const HEALTH_TIMEOUT_MS: u64 = 1_000;
    pub const STARTUP_MS: u64 = 60_000;
    pub const MAX_SURGE: u32 = 1;
    pub const MIN_HEALTHY_TIME_MS: u64 = 2_000;
    /// Nomad's default.
    pub const HEALTHY_DEADLINE_MS: u64 = 5 * 60_000;
    /// Kubernetes' HPA scale-down stabilisation window.
    pub const WINDOW_MS: u64 = 5 * 60_000;
}

pub mod limits {
    pub const MAX_REPLICAS: i64 = 1000;
}
