//! The pipeline spec: what a user writes (the `*File` types, deserialised from YAML with
//! unknown fields refused) and what kiln keeps once it is checked ([`Pipeline`], which goes
//! into the replicated state as it is).
//!
//! ```yaml
//! name: hello
//! on:
//!   branches: [main, "release/**"]
//!   paths_ignore: ["docs/**", "*.md"]
//! concurrency:
//!   group: deploy-${{ git.branch }}
//!   cancel_in_progress: true
//! stages:
//!   - name: build
//!     command: cargo build --release
//!     resources: { cpu: 500m, memory: 256Mi }
//!   - name: train
//!     needs: [build]
//!     command: python train.py
//!     resources: { gpus: 2, gpu_model: "*H100*" }
//!     interruptible: false
//!   - name: test
//!     needs: [build]
//!     command: ["cargo", "test"]
//!     retries: 1
//!     timeout: 10m
//!     env: { RUST_LOG: info }
//!     constraints: { os: linux }
//!   - name: image
//!     needs: [test]
//!     build: { context: ., dockerfile: Dockerfile, name: app }
//!   - name: smoke
//!     needs: [image]
//!     image: ${{ stages.image.image }}
//!     command: ["/app", "--check"]
//! ```
//!
//! A stage with `image:` or `build:` runs on the Docker driver; any other stage on the
//! process driver ([`Stage::driver`]).
//!
//! `on:` picks the git pushes that start a run (a manual run ignores it; the rules are in
//! [`crate::git::filter`]). `concurrency:` puts runs into a group: with
//! `cancel_in_progress`, a newer run of the group supersedes the one in progress, whose
//! stages are cancelled except those marked `interruptible: false`, which finish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pipeline file as written; checked by [`crate::validate::parse_pipeline`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: String,
    /// Which git pushes start a run; absent, every branch and tag push does.
    pub on: Option<TriggersFile>,
    /// The group a run belongs to, and whether a newer run of it supersedes an older one.
    pub concurrency: Option<ConcurrencyFile>,
    #[serde(default)]
    pub stages: Vec<StageFile>,
}

/// `on:` as written: globs over branch names, tag names and changed paths.
///
/// ```yaml
/// on:
///   branches: [main, "release/**"]
///   tags: ["v*"]
///   paths: ["src/**", "Cargo.*"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersFile {
    pub branches: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub paths_ignore: Option<Vec<String>>,
}

/// `concurrency: { group: "${{ git.branch }}", cancel_in_progress: true }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// May use `${{ git.branch }}`, `${{ git.ref }}`, `${{ git.repository }}` and
    /// `${{ git.commit }}`.
    pub group: String,
    pub cancel_in_progress: Option<bool>,
}

/// One stage as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    pub name: String,
    #[serde(default)]
    pub needs: Vec<String>,
    pub command: Option<CommandFile>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesFile,
    pub retries: Option<i64>,
    pub timeout: Option<Scalar>,
    /// Node labels the stage must run on (`key: value`, all must match).
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Run the stage in this container image; `${{ stages.NAME.image }}` names the image an
    /// earlier `build:` stage pushed.
    pub image: Option<String>,
    /// Build an image from a directory beside the pipeline file, and push it.
    pub build: Option<BuildFile>,
    /// Run the stage as this many parallel shards: `shards: 4`, or
    /// `shards: { max: 8, target: 2m }` to pick the count from the recorded test timings.
    pub shards: Option<ShardsFile>,
    /// The stage runs a test suite that kiln splits over its shards.
    pub tests: Option<TestsFile>,
    /// The stage deploys a service (or promotes one) and succeeds once it is healthy.
    pub deploy: Option<DeployFile>,
    /// Files or directories (in the stage's work directory) the stage publishes when it
    /// succeeds, each named by its last path component: `${{ stages.NAME.artifacts.ART }}`.
    pub artifacts: Option<Vec<String>>,
    /// `false`: a run superseded by a newer one of its concurrency group lets this stage
    /// finish (a migration, a deploy) instead of cancelling it. `true` by default.
    pub interruptible: Option<bool>,
    /// Cluster secrets (`kiln secret set NAME`) the stage gets, each as the environment
    /// variable of its name, and redacted (`***`) from its log.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// `deploy:` as written: a service file deployed into an environment (optionally with the
/// image an earlier stage built), or a service promoted from another environment.
///
/// ```yaml
/// deploy: { service: service.yaml, environment: staging, image: ${{ stages.image.image }} }
/// deploy: { promote: model, from: staging, environment: production }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployFile {
    /// The service file, beside the pipeline file.
    pub service: Option<String>,
    pub environment: Option<String>,
    /// Replaces the service file's `image:`.
    pub image: Option<String>,
    /// A service to promote, by name, from the environment `from`.
    pub promote: Option<String>,
    pub from: Option<String>,
    /// The model: `${{ stages.NAME.artifacts.ART }}`, an artifact a stage it needs published.
    pub model: Option<String>,
}

/// `shards: 4` or `shards: { max: 8, target: 2m }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ShardsFile {
    Count(i64),
    Auto(ShardsAutoFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsAutoFile {
    pub max: i64,
    /// The wall time wanted per shard; the count is the recorded suite time over this.
    pub target: Scalar,
}

/// `tests: { list: ..., run: ..., report: ..., split: dynamic }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestsFile {
    /// Prints the suite's test ids, one a line (through `sh -c`).
    pub list: String,
    /// Runs the ids listed in the file `$KILN_TESTS_FILE` (through `sh -c`).
    pub run: String,
    /// A glob, relative to the task's work directory, of the JUnit XML files `run` writes.
    pub report: String,
    /// `dynamic` (the default), `static` (by recorded timings) or `count`.
    pub split: Option<String>,
}

/// `build: { context: ., dockerfile: Dockerfile, name: app }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    /// A directory, relative to the pipeline file's directory and inside it.
    pub context: String,
    /// The Dockerfile's path inside the context; `Dockerfile` by default.
    pub dockerfile: Option<String>,
    /// The repository name in the cluster registry.
    pub name: String,
}

/// `command: "make test"` runs through `sh -c`; `command: [make, test]` is exec'd as argv.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CommandFile {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    pub cpu: Option<Scalar>,
    pub memory: Option<Scalar>,
    /// Whole GPUs, given to this stage alone.
    pub gpus: Option<i64>,
    /// A share of one GPU, accounted by its memory (`20GiB`); several shares fit on one GPU.
    pub gpu_memory: Option<Scalar>,
    /// A glob on the GPU model name (`*H100*`).
    pub gpu_model: Option<String>,
    /// Only GPUs with at least this much memory in total.
    pub gpu_min_memory: Option<Scalar>,
}

/// A YAML scalar that may be written as a number or as text (`cpu: 2` and `cpu: 500m`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(v) => write!(f, "{v}"),
            Scalar::Float(v) => write!(f, "{v}"),
            Scalar::Text(v) => f.write_str(v),
        }
    }
}

/// A checked pipeline: names are valid and unique, `needs` form a DAG, every stage has a
/// command and sane resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Which git pushes start a run; `None` (no `on:`), every branch and tag push does.
    /// Manual runs ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Triggers>,
    /// The run's concurrency group; `None`, runs never supersede one another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    pub stages: Vec<Stage>,
}

/// A checked `on:`: every glob compiles, and at most one of `paths` and `paths_ignore` is
/// set. [`crate::git::filter`] applies it to a push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    /// Globs over branch names; `None` is every branch unless `tags` is set (then none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<String>>,
    /// Globs over tag names; `None` is every tag unless `branches` is set (then none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// A branch push runs only if a changed path matches one of these (empty: no filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// A branch push does not run if every changed path matches one of these (empty: no
    /// filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_ignore: Vec<String>,
}

/// A checked `concurrency:`: runs whose expanded `group` is the same belong together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// As written, `${{ git.* }}` included; [`crate::git::expand_group`] fills it in for a
    /// run.
    pub group: String,
    /// A newer run of the group cancels the one in progress (its interruptible stages).
    #[serde(default)]
    pub cancel_in_progress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub needs: Vec<String>,
    pub command: Command,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// GPUs, when the stage asks for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// How many times a failed attempt is tried again.
    pub retries: u32,
    pub timeout_ms: u64,
    pub constraints: BTreeMap<String, String>,
    /// Set when the stage runs in a container or builds an image (the Docker driver).
    #[serde(default)]
    pub container: Option<Container>,
    /// How many parallel tasks the stage runs as; `None` is one, unsharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Shards>,
    /// The test suite the stage runs and splits over its shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Tests>,
    /// A deploy stage: no command runs; the coordinator deploys, and the stage ends with
    /// the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployStage>,
    /// What the stage publishes when it succeeds (paths in its work directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Artifacts of earlier stages it takes, by the environment variable written
    /// `VAR: ${{ stages.X.artifacts.NAME }}`: the agent fetches each and sets VAR to where
    /// it is on the node (read-only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, ArtifactRef>,
    /// `false`: when a newer run of the concurrency group supersedes this run, this stage
    /// is left to finish rather than cancelled.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub interruptible: bool,
    /// The names of the cluster secrets it gets as environment variables (never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `interruptible`'s default (state written before the field existed deserialises to it).
fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// `${{ stages.STAGE.artifacts.NAME }}`: an artifact an earlier stage published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub stage: String,
    pub name: String,
}

/// An artifact's name: the last component of the path it was published from.
pub fn artifact_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// A checked `deploy:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployStage {
    /// Deploys a service file into `environment` (`None`: the default environment).
    Service {
        /// As the pipeline names it, beside the pipeline file.
        file: String,
        /// Its text, sent with the submission (the coordinator fills it in and checks it).
        yaml: String,
        environment: Option<String>,
        /// Replaces the service's image.
        image: Option<ImageRef>,
        /// The service's model, published by an earlier stage.
        #[serde(default)]
        model: Option<ArtifactRef>,
    },
    /// Deploys into `environment` the revision of `service` healthy in `from`.
    Promote {
        service: String,
        from: String,
        environment: String,
    },
}

/// How many shards a stage runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shards {
    Fixed(u32),
    /// As many as the recorded suite time needs to finish in `target_ms` per shard, at most
    /// `max`; `max` when there is no history yet.
    Auto {
        max: u32,
        target_ms: u64,
    },
}

/// A test suite: how to list it, run part of it, and find what it reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tests {
    pub list: String,
    pub run: String,
    pub report: String,
    pub split: Split,
}

/// How a suite's tests are divided among the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// Shards pull batches from one queue, longest tests first, until it is empty.
    Dynamic,
    /// Each shard gets a fixed part, balanced by recorded timings (by count without them).
    Static,
    /// Each shard gets an equal number of tests, in list order.
    Count,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Dynamic => "dynamic",
            Split::Static => "static",
            Split::Count => "count",
        }
    }

    pub fn parse(s: &str) -> Option<Split> {
        Some(match s {
            "dynamic" => Split::Dynamic,
            "static" => Split::Static,
            "count" => Split::Count,
            _ => return None,
        })
    }
}

impl Stage {
    /// The driver a node must offer to run this stage.
    pub fn driver(&self) -> &'static str {
        match self.container {
            Some(_) => drivers::DOCKER,
            None => drivers::PROCESS,
        }
    }

    /// Runs `image` (a reference pinned by digest) instead of the image it names; a stage
    /// that runs no image is left as it is.
    pub fn pin_image(&mut self, image: &str) {
        if let Some(Container::Image(ImageRef::Named(named))) = &mut self.container {
            *named = image.to_string();
        }
    }
}

/// The names of the drivers an agent can offer.
pub mod drivers {
    pub const PROCESS: &str = "process";
    pub const DOCKER: &str = "docker";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
    /// No command: a container runs its image's own entrypoint and command, and a build
    /// runs nothing before building.
    None,
}

/// What the Docker driver does for a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Container {
    /// Run the stage's command in this image.
    Image(ImageRef),
    /// Build an image and push it to the cluster registry.
    Build(Build),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRef {
    /// An image reference as written (`busybox:1.36`, `127.0.0.1:5000/app@sha256:...`).
    Named(String),
    /// The image that this (earlier, needed) stage built and pushed.
    Built { stage: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The context directory as written, relative to the pipeline file's directory.
    pub context: String,
    pub dockerfile: String,
    pub name: String,
    /// `sha256:<hex>` of the packed context, filled in by the coordinator once it stored the
    /// bytes; empty in a pipeline that was only parsed.
    pub context_digest: String,
}

/// What a task reserves on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

/// What a stage asks of GPUs: `count` whole GPUs, or (with `count` 0) a share of one GPU of
/// `share_bytes` of its memory. Either way only GPUs whose model matches `model` (a glob) and
/// that have at least `min_memory_bytes` in total are considered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuRequest {
    pub count: u32,
    pub share_bytes: u64,
    pub model: Option<String>,
    pub min_memory_bytes: u64,
}

impl GpuRequest {
    pub fn is_share(&self) -> bool {
        self.count == 0
    }

    /// Does a GPU of this model and memory qualify?
    pub fn accepts(&self, model: &str, memory_bytes: u64) -> bool {
        memory_bytes >= self.min_memory_bytes
            && memory_bytes >= self.share_bytes
            && self
                .model
                .as_deref()
                .is_none_or(|glob| glob_match(glob, model))
    }
}

/// Shell-style glob: `*` any run of characters, `?` one character; case-sensitive.
pub fn glob_match(glob: &str, text: &str) -> bool {
    fn go(g: &[char], t: &[char]) -> bool {
        match g.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    go(&g, &t)
}

/// Defaults for a stage that says nothing, in the spirit of GitLab's and Nomad's.
pub mod defaults {
    pub const CPU_MILLIS: u64 = 100;
    pub const MEMORY_BYTES: u64 = 64 << 20;
    /// GitLab CI's default job timeout.
    pub const TIMEOUT_MS: u64 = 60 * 60 * 1000;
}

/// Upper bounds past which a value is taken for a typo, not a wish.
pub mod limits {
    pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;
    pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
    pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;
    pub const MAX_RETRIES: i64 = 10;
    pub const MAX_STAGES: usize = 1000;
    pub const MAX_NAME_LEN: usize = 63;
    pub const MAX_GPUS: i64 = 64;
    /// No GPU made has more memory than this; a larger share is a typo.
    pub const MAX_GPU_MEMORY_BYTES: u64 = 1 << 40;
    /// The most shards one stage may run as.
    pub const MAX_SHARDS: i64 = 256;
    /// The largest packed build context a submission may carry.
    pub const MAX_CONTEXT_BYTES: usize = 64 << 20;
}
