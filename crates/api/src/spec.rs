//! The pipeline spec: what a user writes (the `*File` types, deserialised from YAML with
//! unknown fields refused) and what kiln keeps once it is checked ([`Pipeline`], which goes
//! into the replicated state as it is).
//!
//! ```yaml
//! name: hello
//! stages:
//!   - name: build
//!     command: cargo build --release
//!     resources: { cpu: 500m, memory: 256Mi }
//!   - name: test
//!     needs: [build]
//!     command: ["cargo", "test"]
//!     retries: 1
//!     timeout: 10m
//!     env: { RUST_LOG: info }
//!     constraints: { os: linux }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pipeline file as written; checked by [`crate::validate::parse_pipeline`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: String,
    #[serde(default)]
    pub stages: Vec<StageFile>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub needs: Vec<String>,
    pub command: Command,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// How many times a failed attempt is tried again.
    pub retries: u32,
    pub timeout_ms: u64,
    pub constraints: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
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
}
