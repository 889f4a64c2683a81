//! The task table. Each (task, attempt) runs at most once, however often it is assigned:
//! repeats within this process are recognised from the table, and repeats after a restart
//! from the attempt's log file on disk, whose presence means the attempt already started —
//! such an attempt is reported lost rather than run a second time.
//!
//! Tasks with an image or a build go to the Docker driver ([`crate::docker`]); the rest to
//! the process driver. Containers outlive an agent restart: the next agent process adopts
//! the ones it owns ([`Runner::adopt`]) before it registers, so they are known (not lost)
//! and their result is still reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_api::leader::LeaderClient;
use kiln_api::pb;
use tokio::sync::{oneshot, watch};

use crate::docker;
use crate::drivers::Drivers;
use crate::logs::LogStore;
use crate::outbox::Outbox;
use crate::process::Outcome;
use crate::shard;
use crate::{Error, health, now_ms, process};

type Key = (String, u32);

struct Entry {
    /// Present while the task runs.
    kill: Option<oneshot::Sender<String>>,
    /// The GPUs it was given, and its share of GPU memory (0 for whole GPUs).
    gpus: Vec<u32>,
    gpu_share: u64,
    pid: Option<u32>,
    /// Turns true when the task has finished.
    done: watch::Receiver<bool>,
    /// Runs in a container, which survives this agent process.
    container: bool,
    /// Works in a checkout of this repository's commit, removed when it ends (a tree per
    /// task would fill the disk; the log and what it published stay).
    checkout: Option<String>,
}

pub struct Runner {
    logs: LogStore,
    outbox: Arc<Outbox>,
    drivers: Arc<Drivers>,
    tasks: Mutex<HashMap<Key, Entry>>,
    /// The way to the leader, shared with the session: shards call the test queue and
    /// builds fetch their context through it.
    leader: Arc<LeaderClient>,
    /// The host gateways reach this node's replicas at.
    advertise: String,
    /// The service gateway's URL, given to every task as `KILN_GATEWAY`.
    gateway: Option<String>,
    /// Model artifacts on this node, for replicas.
    models: crate::blobs::Models,
    /// One cached clone per repository, for the checkouts of git-triggered stages.
    repos: kiln_api::gitcmd::Caches,
}

impl Runner {
    pub fn new(
        logs: LogStore,
        outbox: Arc<Outbox>,
        drivers: Arc<Drivers>,
        leader: Arc<LeaderClient>,
        advertise: String,
        gateway: Option<String>,
    ) -> Runner {
        let models = crate::blobs::Models::new(logs.data_dir());
        let repos = kiln_api::gitcmd::Caches::new(logs.data_dir().join("git"));
        Runner {
            logs,
            outbox,
            drivers,
            tasks: Mutex::new(HashMap::new()),
            leader,
            advertise,
            gateway,
            models,
            repos,
        }
    }

    pub fn drivers(&self) -> &Arc<Drivers> {
        &self.drivers
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(
        &self,
        a: &pb::Assignment,
        state: pb::TaskState,
        exit_code: Option<i32>,
        message: String,
    ) {
        let none = Published::default();
        self.emit(&a.task_id, a.attempt, state, exit_code, message, none);
    }

    fn emit(
        &self,
        task_id: &str,
        attempt: u32,
        state: pb::TaskState,
        exit_code: Option<i32>,
        message: String,
        published: Published,
    ) {
        self.outbox.emit(pb::TaskEvent {
            seq: 0,
            task_id: task_id.to_string(),
            attempt,
            state: state.into(),
            exit_code,
            message,
            at_ms: now_ms(),
            image: published.image.unwrap_or_default(),
            artifacts: published.artifacts,
            ..Default::default()
        });
    }

    /// A replica's running event with its endpoint (its metrics endpoint, if apart, and in a
    /// container the image it runs, pinned), or a change of its health.
    fn emit_replica(
        &self,
        a: &pb::Assignment,
        endpoint: &str,
        metrics: &str,
        healthy: Option<bool>,
        image: &str,
    ) {
        self.outbox.emit(pb::TaskEvent {
            seq: 0,
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            state: pb::TaskState::Running.into(),
            at_ms: now_ms(),
            endpoint: endpoint.to_string(),
            healthy,
            image: image.to_string(),
            metrics_endpoint: metrics.to_string(),
            ..Default::default()
        });
    }

    /// Records how a task ended and marks it done.
    fn finish(
        self: &Arc<Self>,
        key: &Key,
        outcome: Outcome,
        published: Published,
        done: watch::Sender<bool>,
    ) {
        let state = if outcome.succeeded {
            pb::TaskState::Succeeded
        } else {
            pb::TaskState::Failed
        };
        tracing::info!(task = %key.0, attempt = key.1, ?state, message = %outcome.message, "task finished");
        self.emit(
            &key.0,
            key.1,
            state,
            outcome.exit_code,
            outcome.message,
            published,
        );
        let checkout = match self.table().get_mut(key) {
            Some(entry) => {
                entry.kill = None;
                entry.checkout.clone()
            }
            None => None,
        };
        if let Some(repository) = checkout
            && let Some(dir) = self.logs.attempt_dir(&key.0, key.1)
        {
            let runner = self.clone();
            tokio::spawn(async move {
                runner
                    .release_checkout(&repository, &dir.join("work"))
                    .await
            });
        }
        let _ = done.send(true);
    }

    /// Starts an assigned task unless this attempt was already started: claims it in the
    /// table, prepares its directory, and hands it to its driver. Whatever stops it from
    /// starting is reported once, as the attempt's end.
    pub fn assign(self: &Arc<Self>, mut a: pb::Assignment) {
        // Set here only, from what this agent fetched: the container driver mounts it.
        a.env.remove("KILN_MODEL_DIR");
        if let Some(gateway) = &self.gateway {
            a.env
                .entry("KILN_GATEWAY".into())
                .or_insert_with(|| gateway.clone());
        }
        let key = (a.task_id.clone(), a.attempt);
        let Some(done_tx) = self.claim(&a) else {
            return;
        };
        let _span = tracing::info_span!("task", task = %a.task_id, attempt = a.attempt).entered();
        let dir = match self.prepare(&a) {
            Ok(dir) => dir,
            Err(e) => return self.not_started(&a, e, &done_tx),
        };
        // What it takes from the blob store, by the variable that says where: a replica's
        // model, a stage's inputs.
        let mut fetch: Vec<(String, String)> = a.inputs.clone().into_iter().collect();
        if let Some(model) = a.replica.as_ref().map(|r| r.model_digest.clone())
            && !model.is_empty()
        {
            fetch.push(("KILN_MODEL_DIR".into(), model));
        }
        if fetch.is_empty() && a.checkout.is_none() {
            if let Err(e) = self.start(a.clone(), key, dir, &done_tx) {
                self.not_started(&a, e, &done_tx);
            }
            return;
        }
        // It starts once its checkout and what it takes are on this node.
        let runner = self.clone();
        tokio::spawn(async move {
            let mut a = a;
            if let Some(c) = &a.checkout
                && let Err(e) = runner.checkout(c, &dir.work).await
            {
                let _ = std::fs::write(&dir.log, format!("kiln: {e}\n"));
                return runner.not_started(&a, e, &done_tx);
            }
            for (var, digest) in fetch {
                match runner.models.ensure(&runner.leader, &digest).await {
                    Ok(path) => {
                        a.env.insert(var, path.display().to_string());
                    }
                    Err(e) => {
                        let e = Error::Model(format!("{var}: {e}"));
                        return runner.not_started(&a, e, &done_tx);
                    }
                }
            }
            if let Err(e) = runner.start(a.clone(), key, dir, &done_tx) {
                runner.not_started(&a, e, &done_tx);
            }
        });
    }

    /// Fetches a commit a push is about to run into this node's cached clone, in the
    /// background: the checkouts of its stages then wait only for what is left of it.
    pub fn prefetch(self: &Arc<Self>, c: pb::Checkout) {
        if kiln_api::gitcmd::local_path(&c.url).is_some_and(|p| p.exists()) {
            return; // checked out from where it is
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let credentials = Some(c.credentials.as_str()).filter(|s| !s.is_empty());
            let fetched = match runner.repos.get(&c.repository, credentials).await {
                Ok(cache) => cache.fetch(&c.url, &c.commit).await,
                Err(e) => Err(e),
            };
            if let Err(e) = fetched {
                tracing::info!(repository = %c.repository, commit = %c.commit, error = %e, "prefetch failed");
            }
        });
    }

    /// A clean checkout of the run's commit in the task's work directory, from this node's
    /// cached clone of the repository (fetched into first when it lacks the commit).
    async fn checkout(&self, c: &pb::Checkout, work: &std::path::Path) -> Result<(), Error> {
        let fail = |e: kiln_api::gitcmd::GitError| {
            Error::Checkout(format!("{} at {}: {e}", c.repository, c.commit))
        };
        let credentials = Some(c.credentials.as_str()).filter(|s| !s.is_empty());
        // A repository on this machine (kiln dev): checked out from where it is.
        if let Some(path) = kiln_api::gitcmd::local_path(&c.url).filter(|p| p.exists()) {
            let git = kiln_api::gitcmd::Git::new(credentials);
            return kiln_api::gitcmd::checkout_shared(&git, &path, &c.commit, work)
                .await
                .map_err(fail);
        }
        let cache = self
            .repos
            .get(&c.repository, credentials)
            .await
            .map_err(fail)?;
        cache.fetch(&c.url, &c.commit).await.map_err(fail)?;
        cache.checkout(&c.url, &c.commit, work).await.map_err(fail)
    }

    /// Removes a finished task's checkout (and forgets it in the cache).
    async fn release_checkout(&self, repository: &str, work: &std::path::Path) {
        match self.repos.get(repository, None).await {
            Ok(cache) => cache.release(work).await,
            Err(_) => {
                let _ = std::fs::remove_dir_all(work);
            }
        }
    }

    /// The one way a task that could not start is reported: as its attempt's end.
    fn not_started(&self, a: &pb::Assignment, e: Error, done_tx: &watch::Sender<bool>) {
        tracing::info!(task = %a.task_id, attempt = a.attempt, error = %e, "task did not start");
        self.event(a, e.task_state(), e.exit_code(), e.to_string());
        let _ = done_tx.send(true);
    }

    /// Enters the attempt in the table; `None` if it is there already (a repeated
    /// assignment).
    fn claim(&self, a: &pb::Assignment) -> Option<watch::Sender<bool>> {
        let (done_tx, done_rx) = watch::channel(false);
        let mut table = self.table();
        let key = (a.task_id.clone(), a.attempt);
        if table.contains_key(&key) {
            return None;
        }
        table.insert(
            key,
            Entry {
                kill: None,
                gpus: a.gpu_indices.clone(),
                gpu_share: a.gpu_memory_bytes,
                pid: None,
                done: done_rx,
                container: false,
                checkout: a.checkout.as_ref().map(|c| c.repository.clone()),
            },
        );
        Some(done_tx)
    }

    /// The attempt's directory, with an empty `work/`. An attempt whose log already exists
    /// started under an earlier agent process: it is not run a second time.
    fn prepare(&self, a: &pb::Assignment) -> Result<AttemptDir, Error> {
        let dir = self
            .logs
            .attempt_dir(&a.task_id, a.attempt)
            .ok_or_else(|| Error::TaskId(a.task_id.clone()))?;
        let log = dir.join("output.log");
        if log.exists() {
            return Err(Error::Restarted);
        }
        let work = dir.join("work");
        std::fs::create_dir_all(&work).map_err(|source| Error::Io {
            path: work.display().to_string(),
            source,
        })?;
        Ok(AttemptDir { dir, work, log })
    }

    /// Hands the task to its driver: Docker for an image or a build, the shard loop for a
    /// `tests:` shard, the process driver for the rest.
    fn start(
        self: &Arc<Self>,
        a: pb::Assignment,
        key: Key,
        dir: AttemptDir,
        done_tx: &watch::Sender<bool>,
    ) -> Result<(), Error> {
        if !a.image.is_empty() || a.build.is_some() {
            let Some(d) = self.drivers.docker() else {
                let _ = std::fs::write(&dir.log, "kiln: no Docker daemon answers on this node\n");
                return Err(Error::NoDocker);
            };
            let publish = match &a.replica {
                Some(r) => Some(self.publish(r)?),
                None => None,
            };
            self.start_container(d, a, key, dir, publish, done_tx.clone());
        } else if let Some(spec) = a.tests.clone() {
            self.start_tests(a, spec, key, dir, done_tx.clone());
        } else {
            self.start_process(a, key, dir, done_tx.clone())?;
        }
        Ok(())
    }

    /// A command on the node, as a process group; for a service replica, with `$PORT`.
    fn start_process(
        self: &Arc<Self>,
        mut a: pb::Assignment,
        key: Key,
        dir: AttemptDir,
        done_tx: watch::Sender<bool>,
    ) -> Result<(), Error> {
        let endpoint = match &a.replica {
            Some(_) => {
                let port = free_port().map_err(Error::NoPort)?;
                a.env.insert("PORT".into(), port.to_string());
                Some(format!("{}:{port}", self.advertise))
            }
            None => None,
        };
        // Metrics apart from the serving port, on a port picked here too.
        let metrics = match &a.replica {
            Some(r) if r.metrics_port_picked => {
                let port = free_port().map_err(Error::NoPort)?;
                a.env.insert("METRICS_PORT".into(), port.to_string());
                format!("{}:{port}", self.advertise)
            }
            _ => String::new(),
        };
        // Bazel's sharding protocol: a runner that shards touches this file to say so.
        let status_file = a
            .env
            .contains_key("TEST_TOTAL_SHARDS")
            .then(|| dir.dir.join("shard-status"));
        if let Some(path) = &status_file {
            a.env
                .insert("TEST_SHARD_STATUS_FILE".into(), path.display().to_string());
        }
        let (child, copier) = process::spawn(&a, &dir.work, &dir.log)
            .map_err(Error::Spawn)?
            .into_parts();
        if let Some(pid) = child.id() {
            crate::orphans::record(&dir.dir, pid);
        }
        match &endpoint {
            Some(endpoint) => self.emit_replica(&a, endpoint, &metrics, None, ""),
            None => self.event(&a, pb::TaskState::Running, None, String::new()),
        }
        let (kill_tx, kill_rx) = oneshot::channel();
        let done = {
            let mut table = self.table();
            let entry = table.get_mut(&key);
            entry.map(|entry| {
                entry.kill = Some(kill_tx);
                entry.pid = child.id();
                entry.done.clone()
            })
        };
        if let (Some(endpoint), Some(spec), Some(done)) = (
            endpoint,
            a.replica.as_ref().and_then(|r| r.health.clone()),
            done,
        ) {
            self.watch_health(&a, spec, endpoint, dir.work.clone(), done);
        }
        let runner = self.clone();
        let timeout = Duration::from_millis(a.timeout_ms.max(1));
        tokio::spawn(async move {
            let mut kill_rx = kill_rx;
            let mut outcome = process::wait(child, timeout, &mut kill_rx).await;
            process::Spawned::flushed(copier).await;
            crate::orphans::forget(&dir.dir);
            if let Some(path) = status_file
                && outcome.succeeded
                && !path.exists()
            {
                outcome.message = "warning: the runner did not touch TEST_SHARD_STATUS_FILE, so it may not shard (each shard may have run every test)".into();
            }
            let (outcome, published) = runner.publish_artifacts(&a, &dir.work, outcome).await;
            runner.finish(&key, outcome, published, done_tx);
        });
        Ok(())
    }

    /// After a task succeeded: its `artifacts:`, packed and stored on a majority of the
    /// coordinators; a path that is missing or not stored fails the task, saying which.
    async fn publish_artifacts(
        &self,
        a: &pb::Assignment,
        work: &std::path::Path,
        outcome: Outcome,
    ) -> (Outcome, Published) {
        let mut published = Published::default();
        if !outcome.succeeded || a.artifacts.is_empty() {
            return (outcome, published);
        }
        for path in &a.artifacts {
            let stored = async {
                let full = work.join(path);
                if !full.exists() {
                    return Err("not found in the work directory".to_string());
                }
                // What a task publishes is its own: nothing a symlink reaches outside.
                let inside = full
                    .canonicalize()
                    .and_then(|f| Ok(f.starts_with(work.canonicalize()?)))
                    .unwrap_or(false);
                let linked = std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_symlink());
                if !inside || linked {
                    return Err("a symlink, or outside the work directory".to_string());
                }
                let limit = kiln_api::spec::limits::MAX_CONTEXT_BYTES;
                let bytes = kiln_api::artifact::pack(&full, limit).map_err(|e| e.to_string())?;
                crate::blobs::publish(&self.leader, bytes).await
            };
            match stored.await {
                Ok(digest) => {
                    let name = kiln_api::spec::artifact_name(path).to_string();
                    published.artifacts.insert(name, digest);
                }
                Err(e) => {
                    let failed = Outcome {
                        succeeded: false,
                        exit_code: outcome.exit_code,
                        message: format!("artifacts: {path}: {e}"),
                    };
                    return (failed, Published::default());
                }
            }
        }
        (outcome, published)
    }

    /// Checks a replica's health until it ends, reporting changes; kills it when it misses
    /// its startup deadline.
    fn watch_health(
        self: &Arc<Self>,
        a: &pb::Assignment,
        spec: pb::HealthSpec,
        endpoint: String,
        work: std::path::PathBuf,
        done: watch::Receiver<bool>,
    ) {
        let runner = self.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let addr = endpoint.clone();
            health::watch(spec, addr, work, done, |verdict| match verdict {
                health::Verdict::Health(ok) => runner.emit_replica(&a, &endpoint, "", Some(ok), ""),
                health::Verdict::Failed(reason) => runner.kill(&a.task_id, a.attempt, &reason),
            })
            .await;
        });
    }

    /// Runs a `tests:` shard's test loop ([`crate::shard`]).
    fn start_tests(
        self: &Arc<Self>,
        a: pb::Assignment,
        spec: pb::TestsSpec,
        key: Key,
        dir: AttemptDir,
        done_tx: watch::Sender<bool>,
    ) {
        self.event(&a, pb::TaskState::Running, None, String::new());
        let (kill_tx, mut kill_rx) = oneshot::channel();
        if let Some(entry) = self.table().get_mut(&key) {
            entry.kill = Some(kill_tx);
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let (work, log) = (&dir.work, &dir.log);
            let outcome = shard::run(&a, &spec, work, log, &mut kill_rx, &runner.leader).await;
            runner.finish(&key, outcome, Published::default(), done_tx);
        });
    }

    /// Where a container replica's port is published: a free port of the node, bound to
    /// the address the gateways reach it at.
    fn publish(&self, r: &pb::ReplicaSpec) -> Result<docker::container::Publish, Error> {
        let host_port = free_port().map_err(Error::NoPort)?;
        let host_ip = match self.advertise.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => "0.0.0.0".to_string(),
        };
        let metrics = match r.metrics_container_port {
            0 => None,
            port => Some((port as u16, free_port().map_err(Error::NoPort)?)),
        };
        Ok(docker::container::Publish {
            container_port: r.container_port as u16,
            host_ip,
            host_port,
            endpoint: format!("{}:{host_port}", self.advertise),
            metrics,
        })
    }

    /// Hands an `image:` or `build:` task to the Docker driver; a replica's container with
    /// its port published, reported running at that endpoint and health-checked there.
    fn start_container(
        self: &Arc<Self>,
        d: docker::DockerDriver,
        a: pb::Assignment,
        key: Key,
        dir: AttemptDir,
        publish: Option<docker::container::Publish>,
        done_tx: watch::Sender<bool>,
    ) {
        let (kill_tx, kill_rx) = oneshot::channel();
        let done = {
            let mut table = self.table();
            table.get_mut(&key).map(|entry| {
                entry.kill = Some(kill_tx);
                entry.container = true;
                entry.done.clone()
            })
        };
        let runner = self.clone();
        tokio::spawn(async move {
            let (outcome, image) = match &a.build {
                Some(spec) => {
                    // Building counts as running from the start.
                    runner.event(&a, pb::TaskState::Running, None, String::new());
                    let (work, log) = (&dir.work, &dir.log);
                    docker::build::run(&d, &a, spec, work, log, kill_rx, &runner.leader).await
                }
                None => {
                    let started = |pinned: &str| match (&publish, done) {
                        (Some(p), Some(done)) => {
                            let metrics = p.metrics.map(|m| m.1).map_or(String::new(), |port| {
                                format!("{}:{port}", runner.advertise)
                            });
                            runner.emit_replica(&a, &p.endpoint, &metrics, None, pinned);
                            if let Some(spec) = a.replica.as_ref().and_then(|r| r.health.clone()) {
                                let (endpoint, work) = (p.endpoint.clone(), dir.work.clone());
                                runner.watch_health(&a, spec, endpoint, work, done);
                            }
                        }
                        _ => runner.emit(
                            &a.task_id,
                            a.attempt,
                            pb::TaskState::Running,
                            None,
                            String::new(),
                            Published {
                                image: Some(a.image.clone()),
                                ..Default::default()
                            },
                        ),
                    };
                    let (work, log) = (&dir.work, &dir.log);
                    let publish_ref = publish.as_ref();
                    let outcome =
                        docker::container::run(&d, &a, work, log, publish_ref, kill_rx, started)
                            .await;
                    (outcome, Some(a.image.clone()).filter(|i| !i.is_empty()))
                }
            };
            let (outcome, mut published) = runner.publish_artifacts(&a, &dir.work, outcome).await;
            published.image = image;
            runner.finish(&key, outcome, published, done_tx);
        });
    }

    /// Takes over the containers this agent owns that are still on the Docker daemon (left
    /// by an earlier agent process): each is watched to its end again and its result
    /// reported. Call before registering, so the leader learns they are known.
    pub async fn adopt(self: &Arc<Self>) {
        let Some(d) = self.drivers.docker() else {
            return;
        };
        let owned = match d.owned().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this agent's containers");
                return;
            }
        };
        for c in owned {
            let key = (c.task_id.clone(), c.attempt);
            let log = self.logs.log_path(&c.task_id, c.attempt);
            let Some(log) = log.filter(|_| c.attempt > 0) else {
                tracing::warn!(container = %c.id, "removing a container with unreadable kiln labels");
                docker::container::remove(&d, &c.id).await;
                continue;
            };
            let (kill_tx, kill_rx) = oneshot::channel();
            let (done_tx, done_rx) = watch::channel(false);
            {
                let mut table = self.table();
                if table.contains_key(&key) {
                    continue;
                }
                table.insert(
                    key.clone(),
                    Entry {
                        kill: Some(kill_tx),
                        done: done_rx.clone(),
                        container: true,
                        // Not in the container's labels: an adopted task's GPU figures
                        // come from NVML alone.
                        gpus: Vec::new(),
                        gpu_share: 0,
                        pid: None,
                        checkout: None,
                    },
                );
            }
            tracing::info!(task = %c.task_id, attempt = c.attempt, container = %c.id, "adopting a running container");
            // A replica's checks go on where they were: the leader already knows its endpoint.
            if let (Some(endpoint), Some(replica)) = (&c.endpoint, &c.replica)
                && let Some(spec) = replica.health.clone()
            {
                let a = pb::Assignment {
                    task_id: c.task_id.clone(),
                    attempt: c.attempt,
                    replica: Some(replica.clone()),
                    ..Default::default()
                };
                let work = log.with_file_name("work");
                self.watch_health(&a, spec, endpoint.clone(), work, done_rx.clone());
            }
            let runner = self.clone();
            let d = d.clone();
            let logs = if c.secrets {
                docker::container::Logs::Skip
            } else {
                docker::container::Logs::Rewrite
            };
            tokio::spawn(async move {
                let outcome =
                    docker::container::supervise(&d, &c.id, &log, logs, c.deadline_ms, kill_rx)
                        .await;
                runner.finish(&key, outcome, Published::default(), done_tx);
            });
        }
    }

    pub fn kill(&self, task_id: &str, attempt: u32, reason: &str) {
        let sender = self
            .table()
            .get_mut(&(task_id.to_string(), attempt))
            .and_then(|e| e.kill.take());
        if let Some(tx) = sender {
            tracing::info!(task = task_id, attempt, reason, "killing task");
            let _ = tx.send(reason.to_string());
        }
    }

    /// Kills every process task. Containers are left running: the next agent process on
    /// this node adopts them.
    pub fn kill_all(&self, reason: &str) {
        for entry in self.table().values_mut().filter(|e| !e.container) {
            if let Some(tx) = entry.kill.take() {
                let _ = tx.send(reason.to_string());
            }
        }
    }

    /// Everything the leader should know this agent has: running tasks, and finished ones
    /// whose final event is not acknowledged yet.
    pub fn known(&self) -> Vec<pb::TaskRef> {
        let mut known: Vec<pb::TaskRef> = self
            .table()
            .iter()
            .filter(|(_, e)| e.kill.is_some())
            .map(|((task_id, attempt), _)| pb::TaskRef {
                task_id: task_id.clone(),
                attempt: *attempt,
                running: true,
            })
            .collect();
        for (task_id, attempt) in self.outbox.pending_tasks() {
            if !known
                .iter()
                .any(|k| k.task_id == task_id && k.attempt == attempt)
            {
                known.push(pb::TaskRef {
                    task_id,
                    attempt,
                    running: false,
                });
            }
        }
        known
    }

    /// What the running tasks hold on each GPU, for GPU statistics.
    pub fn gpu_load(&self) -> Vec<crate::gpu::Load> {
        let mut load: Vec<crate::gpu::Load> = Vec::new();
        for e in self.table().values().filter(|e| e.kill.is_some()) {
            for &index in &e.gpus {
                let pos = match load.iter().position(|l| l.index == index) {
                    Some(p) => p,
                    None => {
                        load.push(crate::gpu::Load {
                            index,
                            ..Default::default()
                        });
                        load.len() - 1
                    }
                };
                let l = &mut load[pos];
                if e.gpu_share > 0 {
                    l.shared_bytes += e.gpu_share;
                } else {
                    l.whole += 1;
                }
                l.pids.extend(e.pid);
            }
        }
        load
    }

    /// A receiver that turns true when the attempt finishes; `None` if it never ran here.
    pub fn done(&self, task_id: &str, attempt: u32) -> Option<watch::Receiver<bool>> {
        self.table()
            .get(&(task_id.to_string(), attempt))
            .map(|e| e.done.clone())
    }

    pub fn logs(&self) -> &LogStore {
        &self.logs
    }
}

/// What a task reports beside how it went: the image it ran or pushed, and what it
/// published.
#[derive(Debug, Default)]
struct Published {
    image: Option<String>,
    artifacts: std::collections::HashMap<String, String>,
}

/// Where an attempt keeps its output and works.
struct AttemptDir {
    dir: std::path::PathBuf,
    work: std::path::PathBuf,
    log: std::path::PathBuf,
}

/// A port no one listens on now, for a replica to bind.
fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("0.0.0.0:0").map(|l| l.local_addr().map(|a| a.port()))?
}
