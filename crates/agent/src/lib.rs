//! The kiln agent: one per node. It tells the leader what the node has, runs what the leader
//! assigns, keeps each task's output on the node's own disk, and reports what happened.
//!
//! - [`fingerprint`]: CPU and memory from sysinfo, labels, drivers.
//! - [`error`]: the agent's one error type, for itself and for tasks that cannot start.
//! - [`drivers`]: which drivers the node offers (`process`; `docker` while a daemon
//!   answers), re-checked while the agent runs.
//! - [`blobs`]: build contexts and model artifacts from the coordinators, by digest.
//! - [`docker`]: the Docker driver (bollard): containers with limits, GPUs, labels and
//!   adoption after a restart; image builds pushed to the cluster registry.
//! - [`health`]: health checks of service replicas (HTTP, TCP, exec), reported on change.
//! - [`process`]: the process driver (argv or `sh -c`, env, work directory, timeout, kill of
//!   the whole process group).
//! - [`shard`]: the test loop of a `tests:` stage's shard: batches from the leader's test
//!   queue, run with the suite's command, results read from its JUnit reports.
//! - [`runner`]: the task table: at most one run per (task, attempt), however often it is
//!   assigned, across restarts too (a task's log file is its record that it started).
//! - [`outbox`]: task events with sequence numbers, kept until the leader acknowledges them
//!   and re-sent after every reconnect.
//! - [`logs`]: where task output lives, and streaming it back on request.
//! - [`session`]: the one long-lived stream to the leader: register, heartbeats, events in;
//!   assignments, kills, acknowledgements and log requests out. It follows leader hints and
//!   reconnects after any failure, while tasks keep running.
//!
//! The agent never links the coordinator: it speaks only the agent protocol in `kiln-api`.

pub mod blobs;
pub mod docker;
pub mod drivers;
pub mod error;
pub mod fingerprint;
pub mod gpu;
pub mod health;
pub mod logs;
pub mod orphans;
pub mod outbox;
pub mod process;
pub mod redact;
pub mod runner;
pub mod session;
pub mod shard;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::leader::LeaderClient;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    /// gRPC addresses of the coordinators; any one will do, the agent finds the leader.
    pub coordinators: Vec<String>,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Override the CPU capacity reported (millicores).
    pub cpu_millis: Option<u64>,
    /// Override the memory capacity reported (bytes).
    pub memory_bytes: Option<u64>,
    /// Simulate GPUs from this spec (`4xH100-80GB,nvlink=0-1,2-3`) instead of reading NVML.
    pub simulate_gpus: Option<String>,
    /// `host:port` of the cluster's image registry: builds push there (images under it are
    /// pulled from it like any other).
    pub registry: Option<String>,
    /// The host this node's service replicas are reached at by the gateways.
    pub advertise: String,
    /// The service gateway's URL, given to every task as `KILN_GATEWAY`.
    pub gateway: Option<String>,
    /// TLS to the coordinators with this node's agent certificate; `None`: plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

pub use error::Error;

/// Runs the agent until `shutdown` is cancelled. Tasks still running then are left running
/// only if the process exits abruptly; on a clean shutdown they are killed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.node_id.is_empty() {
        return Err(Error::Config("node id must not be empty".into()));
    }
    if config.coordinators.is_empty() {
        return Err(Error::Config(
            "at least one coordinator address is needed".into(),
        ));
    }
    let gpus: Arc<dyn gpu::GpuSource> =
        gpu::detect(&config.node_id, config.simulate_gpus.as_deref())
            .map_err(Error::Config)?
            .into();
    let logs = logs::LogStore::open(&config.data_dir)?;
    // Before registering: no process task of an earlier life of this agent runs on.
    let orphans = orphans::sweep(&logs.data_dir().join("tasks"));
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "killed process tasks left running by the previous agent"
        );
    }
    let outbox = Arc::new(outbox::Outbox::default());
    let instance = docker::instance_id(&config.data_dir)?;
    let drivers = Arc::new(drivers::Drivers::new(instance, config.registry.clone()));
    let leader = Arc::new(
        LeaderClient::new(config.coordinators.clone())
            .tls(config.tls.clone())
            .connect_timeout(Duration::from_millis(300))
            .keep_alive(Duration::from_secs(1), Duration::from_secs(3))
            .retry_pause(Duration::from_millis(50)),
    );
    let runner = Arc::new(runner::Runner::new(
        logs.clone(),
        outbox.clone(),
        drivers.clone(),
        leader.clone(),
        config.advertise.clone(),
        config.gateway.clone(),
    ));
    // Docker first, then the containers this agent still owns: both must be known before
    // the first Register.
    drivers.probe().await;
    runner.adopt().await;
    tokio::spawn(drivers::watch(
        drivers.clone(),
        runner.clone(),
        shutdown.clone(),
    ));
    let node = fingerprint::fingerprint(&config, gpus);
    tracing::info!(node = %config.node_id, cpu_millis = node.cpu_millis, memory_bytes = node.memory_bytes, drivers = ?*drivers.offered().borrow(), "agent starting");
    session::run(config, node, leader, runner.clone(), outbox, logs, shutdown).await;
    runner.kill_all("agent shutting down");
    Ok(())
}

/// Removes every container this agent (its data dir) owns: for `kiln dev`, whose agent's
/// work ends with it. A cluster agent leaves them for its next start to adopt.
pub async fn remove_containers(config: &Config) -> Result<usize, Error> {
    let instance = docker::instance_id(&config.data_dir)?;
    let Ok(d) = docker::DockerDriver::connect(&instance, None).await else {
        return Ok(0);
    };
    let owned = d.owned().await.map_err(Error::Config)?;
    for c in &owned {
        docker::container::remove(&d, &c.id).await;
    }
    Ok(owned.len())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
