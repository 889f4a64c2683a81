//! The leader's agent sessions: one outbound channel per connected node, through which
//! assignments, kills, acknowledgements and log requests are pushed.
//!
//! A session is replaced when its agent reconnects (the newer generation wins) and all are
//! closed when this coordinator stops being the leader, so agents go and find the new one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_api::pb::{self, coordinator_message::Msg};
use kiln_api::service::HealthCheck;
use kiln_api::spec::{Command, Container, ImageRef, Stage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::{ClusterState, Kill, Placement, ReplicaRef, StageRef, TaskRef};

pub type Outbound = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, tonic::Status>>;

#[derive(Clone)]
pub struct Session {
    pub tx: Outbound,
    pub generation: u64,
    /// Cancelled to end the session's streams.
    pub closed: CancellationToken,
}

impl Session {
    pub fn send(&self, msg: Msg) -> bool {
        self.tx
            .send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
            .is_ok()
    }
}

#[derive(Default)]
pub struct Sessions {
    by_node: Mutex<HashMap<String, Session>>,
    generations: AtomicU64,
    log_requests: Mutex<HashMap<u64, mpsc::UnboundedSender<pb::LogData>>>,
    log_ids: AtomicU64,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session for `node`, closing the one it replaces.
    pub fn open(&self, node: &str, tx: Outbound) -> Session {
        let session = Session {
            tx,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            closed: CancellationToken::new(),
        };
        if let Some(old) = self.map().insert(node.to_string(), session.clone()) {
            old.closed.cancel();
        }
        session
    }

    /// Removes the session if it is still the current one for `node`.
    pub fn close(&self, node: &str, generation: u64) {
        let mut map = self.map();
        if map.get(node).is_some_and(|s| s.generation == generation)
            && let Some(s) = map.remove(node)
        {
            s.closed.cancel();
        }
    }

    pub fn close_all(&self) {
        for (_, s) in self.map().drain() {
            s.closed.cancel();
        }
    }

    pub fn get(&self, node: &str) -> Option<Session> {
        self.map().get(node).cloned()
    }

    pub fn connected(&self) -> usize {
        self.map().len()
    }

    /// Pushes committed placements to their agents.
    pub fn dispatch(&self, state: &ClusterState, placements: &[Placement]) {
        let map = self.map();
        for p in placements {
            if let (Some(session), Some(a)) = (map.get(&p.node), assignment(state, p)) {
                session.send(Msg::Assign(a));
            }
        }
    }

    pub fn kill(&self, state: &ClusterState, kills: &[Kill]) {
        let map = self.map();
        for k in kills {
            if let Some(session) = map.get(&k.node) {
                session.send(Msg::Kill(pb::KillTask {
                    task_id: state.task_id(k.task),
                    attempt: k.attempt,
                    reason: k.reason.clone(),
                }));
            }
        }
    }

    /// Starts a log request; chunks arrive on the returned receiver.
    pub fn start_log_request(&self) -> (u64, mpsc::UnboundedReceiver<pb::LogData>) {
        let id = self.log_ids.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.log_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        (id, rx)
    }

    /// Routes a chunk from an agent to the client waiting for it.
    pub fn route_log(&self, data: pb::LogData) {
        let mut map = self.log_requests.lock().unwrap_or_else(|e| e.into_inner());
        let id = data.request_id;
        let done = data.eof || !data.error.is_empty();
        let delivered = map.get(&id).is_some_and(|tx| tx.send(data).is_ok());
        if done || !delivered {
            map.remove(&id);
        }
    }
}

/// The message that tells an agent to run a placed task.
pub fn assignment(state: &ClusterState, p: &Placement) -> Option<pb::Assignment> {
    match p.task {
        TaskRef::Stage(at) => stage_assignment(state, p, at),
        TaskRef::Replica(at) => replica_assignment(state, p, at),
    }
}

fn stage_assignment(state: &ClusterState, p: &Placement, at: StageRef) -> Option<pb::Assignment> {
    let run = state.runs.get(&at.run)?;
    let stage = run.pipeline.stages.get(at.stage as usize)?;
    // The stage that built an image is among this one's needs, so it has succeeded and its
    // attempt recorded the pushed image; an empty image fails on the agent, clearly.
    let built = |name: &str| {
        run.pipeline
            .stages
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| run.stages.get(i))
            .and_then(|s| s.shards.first())
            .and_then(|t| t.attempts.last())
            .and_then(|a| a.image.clone())
            .unwrap_or_default()
    };
    let mut a = base(state, p, stage, &built);
    a.run_id = run.id();
    a.env.insert("KILN_RUN_ID".into(), run.id());
    a.env
        .insert("KILN_PIPELINE".into(), run.pipeline.name.clone());
    a.env.insert("KILN_STAGE".into(), stage.name.clone());
    let shards = run
        .stages
        .get(at.stage as usize)
        .map_or(1, |s| s.shards.len());
    if stage.shards.is_some() {
        shard_env(&mut a.env, at.shard, shards as u32, stage.tests.is_some());
    }
    a.tests = stage.tests.as_ref().map(|t| pb::TestsSpec {
        list: t.list.clone(),
        run: t.run.clone(),
        report: t.report.clone(),
    });
    Some(a)
}

fn replica_assignment(
    state: &ClusterState,
    p: &Placement,
    at: ReplicaRef,
) -> Option<pb::Assignment> {
    let service = state.services.get(&at.service)?;
    let replica = service.replicas.get(&at.slot)?;
    let spec = &service.revision(replica.revision)?.spec;
    let mut a = base(state, p, &spec.replica, &|_| String::new());
    a.env.insert("KILN_SERVICE".into(), service.name.clone());
    a.env
        .insert("KILN_REVISION".into(), replica.revision.to_string());
    let health = &spec.health;
    let (http_path, tcp, exec) = match &health.check {
        HealthCheck::Http(path) => (path.clone(), false, String::new()),
        HealthCheck::Tcp => (String::new(), true, String::new()),
        HealthCheck::Exec(cmd) => (String::new(), false, cmd.clone()),
    };
    a.replica = Some(pb::ReplicaSpec {
        service: service.name.clone(),
        revision: replica.revision,
        container_port: u32::from(spec.port),
        health: Some(pb::HealthSpec {
            http_path,
            tcp,
            exec,
            interval_ms: health.interval_ms,
            timeout_ms: health.timeout_ms,
            startup_ms: health.startup_ms,
        }),
    });
    Some(a)
}

/// What every assignment carries: the command or image, the resources and GPUs, and the
/// task's identity in its environment.
fn base(
    state: &ClusterState,
    p: &Placement,
    stage: &Stage,
    built_image: &dyn Fn(&str) -> String,
) -> pb::Assignment {
    let task_id = state.task_id(p.task);
    let (shell, argv) = match &stage.command {
        Command::Shell(s) => (s.clone(), Vec::new()),
        Command::Argv(a) => (String::new(), a.clone()),
        Command::None => (String::new(), Vec::new()),
    };
    let (image, build) = match &stage.container {
        None => (String::new(), None),
        Some(Container::Image(ImageRef::Named(image))) => (image.clone(), None),
        Some(Container::Image(ImageRef::Built { stage: name })) => (built_image(name), None),
        Some(Container::Build(b)) => (
            String::new(),
            Some(pb::BuildSpec {
                context_digest: b.context_digest.clone(),
                dockerfile: b.dockerfile.clone(),
                name: b.name.clone(),
            }),
        ),
    };
    let mut env = stage.env.clone();
    env.insert("KILN_TASK_ID".into(), task_id.clone());
    env.insert("KILN_ATTEMPT".into(), p.attempt.to_string());
    env.insert("KILN_NODE".into(), p.node.clone());
    let gpu_indices: Vec<u32> = p.gpus.iter().map(|g| g.index).collect();
    let share = p
        .gpus
        .iter()
        .find(|g| !g.whole)
        .map_or(0, |g| g.memory_bytes);
    if !gpu_indices.is_empty() {
        let list = gpu_indices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        env.insert("CUDA_VISIBLE_DEVICES".into(), list.clone());
        env.insert("NVIDIA_VISIBLE_DEVICES".into(), list);
    }
    if share > 0 {
        // The task's budget on a shared GPU; frameworks read it to cap their allocator.
        env.insert("KILN_GPU_MEMORY_BYTES".into(), share.to_string());
    }
    pb::Assignment {
        task_id,
        attempt: p.attempt,
        stage: stage.name.clone(),
        shell,
        argv,
        env: env.into_iter().collect(),
        timeout_ms: stage.timeout_ms,
        cpu_millis: stage.resources.cpu_millis,
        memory_bytes: stage.resources.memory_bytes,
        gpu_indices,
        gpu_memory_bytes: share,
        image,
        build,
        ..Default::default()
    }
}

/// The shard's place in its stage, in every convention runners already read:
/// `KILN_SHARD_INDEX` / `KILN_SHARD_COUNT` (0-based), Bazel's `TEST_SHARD_INDEX` /
/// `TEST_TOTAL_SHARDS` (0-based; the agent adds `TEST_SHARD_STATUS_FILE`), and GitLab's
/// `CI_NODE_INDEX` / `CI_NODE_TOTAL` (1-based). A `tests:` shard gets only kiln's own pair:
/// the ids in its `KILN_TESTS_FILE` are already its share, and a runner that split them
/// again by the Bazel or GitLab variables would run a fraction of them.
fn shard_env(env: &mut HashMap<String, String>, index: u32, count: u32, tests: bool) {
    env.insert("KILN_SHARD_INDEX".into(), index.to_string());
    env.insert("KILN_SHARD_COUNT".into(), count.to_string());
    if tests {
        return;
    }
    env.insert("TEST_SHARD_INDEX".into(), index.to_string());
    env.insert("TEST_TOTAL_SHARDS".into(), count.to_string());
    env.insert("CI_NODE_INDEX".into(), (index + 1).to_string());
    env.insert("CI_NODE_TOTAL".into(), count.to_string());
}
