//! What an agent is told to run: the [`pb::Assignment`] of a placed task, built from the
//! state — its command or image, resources and GPUs, and its environment (the task's
//! identity, its shard's place in every convention runners read, a replica's service and
//! health check). Pushed by the scheduling controller after a pass commits, and again by
//! reconciliation when an agent reconnects without knowing a task placed on it.

use std::collections::HashMap;

use kiln_api::pb;
use kiln_api::service::{HealthCheck, MetricsPort};
use kiln_api::spec::{Command, Container, ImageRef, Stage};

use crate::state::{ClusterState, GitInfo, Placement, ReplicaRef, StageRef, TaskRef};

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
    let built = |name: &str| state.built_image(at.run, name).unwrap_or_default();
    let mut a = base(state, p, stage, &built);
    a.run_id = run.id();
    a.artifacts = stage.artifacts.clone();
    // Its needs succeeded, so what it takes was published; one that was not fails there.
    a.inputs = stage
        .inputs
        .iter()
        .map(|(var, r)| {
            let digest = state
                .artifact(at.run, &r.stage, &r.name)
                .unwrap_or_default();
            (var.clone(), digest)
        })
        .collect();
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
    if let Some(git) = &run.git {
        checkout(state, &mut a, git);
    }
    Some(a)
}

/// A git-triggered run's stage works in a checkout of its commit, and knows which: a
/// build's context is then the directory in that checkout (nothing was uploaded).
fn checkout(state: &ClusterState, a: &mut pb::Assignment, git: &GitInfo) {
    let repo = state.repositories.get(&git.repository);
    a.checkout = Some(pb::Checkout {
        repository: git.repository.clone(),
        url: git.url.clone(),
        commit: git.commit.clone(),
        credentials: repo.and_then(|r| r.credentials.clone()).unwrap_or_default(),
    });
    a.env.insert("KILN_REPO".into(), git.repository.clone());
    a.env.insert("KILN_REF".into(), git.git_ref.clone());
    a.env.insert("KILN_COMMIT".into(), git.commit.clone());
    if let Some(branch) = git.branch() {
        a.env.insert("KILN_BRANCH".into(), branch.to_string());
    }
}

fn replica_assignment(
    state: &ClusterState,
    p: &Placement,
    at: ReplicaRef,
) -> Option<pb::Assignment> {
    let service = state.services.get(&at.service)?;
    let replica = service.replicas.get(&at.slot)?;
    let revision = service.revision(replica.revision)?;
    let spec = &revision.spec;
    let mut a = base(state, p, &spec.replica, &|_| String::new());
    a.env.insert("KILN_SERVICE".into(), service.name.clone());
    a.env
        .insert("KILN_ENVIRONMENT".into(), service.environment.clone());
    // The environment's own overrides, over the revision's.
    if let Some(env) = state.environments.get(&service.environment) {
        a.env.extend(env.env.clone());
    }
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
        model_digest: revision.model_digest.clone().unwrap_or_default(),
        metrics_container_port: match spec.autoscale.as_ref().map(|a| a.metrics.port) {
            Some(MetricsPort::Container(port)) => u32::from(port),
            _ => 0,
        },
        metrics_port_picked: spec
            .autoscale
            .as_ref()
            .is_some_and(|a| a.metrics.port == MetricsPort::Picked),
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
                context_dir: b.context.clone(),
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
    thread_pools(&mut env, stage.resources.cpu_millis);
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
        // Names only: `Core::assignment` opens the values.
        secrets: stage
            .secrets
            .iter()
            .map(|name| (name.clone(), String::new()))
            .collect(),
        ..Default::default()
    }
}

/// The variables thread pools size themselves by, set to the task's CPU reservation rounded
/// up (as Ray does for its tasks), unless the spec set them: a task that reserved one core
/// does not run BLAS on every core of the node beside its neighbours.
pub const THREAD_POOL_VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

fn thread_pools(env: &mut std::collections::BTreeMap<String, String>, cpu_millis: u64) {
    let threads = cpu_millis.div_ceil(1000).max(1).to_string();
    for var in THREAD_POOL_VARS {
        env.entry(var.to_string())
            .or_insert_with(|| threads.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_pools_get_the_reservation_rounded_up_unless_the_spec_says() {
        let mut env = std::collections::BTreeMap::new();
        env.insert("OMP_NUM_THREADS".to_string(), "8".to_string());
        thread_pools(&mut env, 1500);
        assert_eq!(env["OMP_NUM_THREADS"], "8", "the spec's own value stays");
        assert_eq!(env["OPENBLAS_NUM_THREADS"], "2");
        assert_eq!(env["RAYON_NUM_THREADS"], "2");
        let mut small = std::collections::BTreeMap::new();
        thread_pools(&mut small, 100);
        assert_eq!(small["MKL_NUM_THREADS"], "1", "at least one thread");
        assert_eq!(small.len(), THREAD_POOL_VARS.len());
    }
}
