//! Which drivers this node offers, kept true while it runs: `process` always, `docker` only
//! while a Docker daemon answers. The daemon is probed at start and every
//! [`PROBE_EVERY`]; when the answer changes, the session re-registers with the new list (see
//! `session`), so the scheduler never places container work on a node that cannot run it.
//! When Docker comes (back), containers this agent owns are adopted again.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiln_api::spec::drivers::{DOCKER, PROCESS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::docker::DockerDriver;
use crate::runner::Runner;

/// How often the Docker daemon is checked.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

pub struct Drivers {
    instance: String,
    registry: Option<String>,
    docker: RwLock<Option<DockerDriver>>,
    offered: watch::Sender<Vec<String>>,
}

impl Drivers {
    /// `instance` labels this agent's containers; `registry` is where builds push.
    pub fn new(instance: String, registry: Option<String>) -> Drivers {
        Drivers {
            instance,
            registry,
            docker: RwLock::new(None),
            offered: watch::Sender::new(vec![PROCESS.to_string()]),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn docker(&self) -> Option<DockerDriver> {
        self.docker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The drivers offered now, changing when Docker comes or goes.
    pub fn offered(&self) -> watch::Receiver<Vec<String>> {
        self.offered.subscribe()
    }

    /// Checks the daemon and updates what is offered. Returns true when Docker has just
    /// become available.
    pub async fn probe(&self) -> bool {
        let current = self.docker();
        let alive = match &current {
            Some(d) => tokio::time::timeout(Duration::from_secs(3), d.client.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if alive {
            return false;
        }
        let next = match DockerDriver::connect(&self.instance, self.registry.clone()).await {
            Ok(d) => Some(d),
            Err(e) => {
                if current.is_some() {
                    tracing::warn!(error = %e, "the Docker daemon stopped answering; no longer offering docker");
                } else {
                    tracing::debug!(error = %e, "no Docker daemon");
                }
                None
            }
        };
        let became = current.is_none() && next.is_some();
        if became {
            tracing::info!("Docker daemon found; offering the docker driver");
        }
        let mut list = vec![PROCESS.to_string()];
        if next.is_some() {
            list.push(DOCKER.to_string());
        }
        *self.docker.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.offered.send_if_modified(|old| {
            let changed = *old != list;
            *old = list;
            changed
        });
        became
    }
}

/// Re-probes Docker every [`PROBE_EVERY`] until shutdown; adopts owned containers whenever
/// Docker (re)appears.
pub async fn watch(drivers: Arc<Drivers>, runner: Arc<Runner>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
        if drivers.probe().await {
            runner.adopt().await;
        }
    }
}
