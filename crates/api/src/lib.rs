//! kiln's contract with the outside world, in one crate that every other kiln crate uses and
//! that uses no other kiln crate.
//!
//! - [`pb`]: the gRPC code generated from `proto/kiln/v1` (client API, agent protocol, Raft
//!   transport), with the descriptor set that server reflection serves.
//! - [`spec`]: the pipeline spec as users write it (YAML, deserialised with serde).
//! - [`service`]: the service spec (a long-running deployment: replicas, health, updates,
//!   autoscaling).
//! - [`validate`]: turning YAML text into a checked [`spec::Pipeline`], or into errors that
//!   name the file, the line where one is known, the field and the reason.
//! - [`artifact`]: packing a file or directory for the blob store, the same way everywhere.
//! - [`leader`]: the one client loop that finds the leader and follows it.
//! - [`git`]: git triggers as pure functions: which pushes start a run, which commits ask
//!   to skip CI, which environment a branch deploys to, a run's concurrency group.
//! - [`gitcmd`]: the `git` program, run the same way by coordinators and agents.
//! - [`backup`]: the backup file (`kiln snapshot`): a tar of a manifest, the state and its
//!   blobs, each checked by its SHA-256.
//! - [`auth`]: who is calling: the principals certificates name, the roles tokens carry.
//! - [`pki`]: the cluster CA and its certificates, and the TLS settings clients use.
//! - [`logs`]: how every kiln binary writes its log (text, or JSON with one event a line).
//! - [`units`]: the quantities specs are written in (`500m` CPU, `256Mi`, `5m`).
//!
//! Validation lives here, not in the coordinator, so that the CLI rejects bad input before
//! it touches the network and the coordinator rejects it again with the same words.

pub mod artifact;
pub mod auth;
pub mod backup;
pub mod git;
pub mod gitcmd;
pub mod leader;
pub mod logs;
pub mod pki;
pub mod service;
pub mod spec;
pub mod units;
pub mod validate;

/// Generated protobuf and gRPC code for the `kiln.v1` package.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kiln.v1");

    /// The encoded descriptor set of every kiln proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");
}

pub use leader::LEADER_METADATA_KEY;

/// The metadata key on a `Blobs.PutBlob` by which an agent publishes an artifact: only the
/// leader takes it, and answers once a majority of the coordinators hold it.
pub const PUBLISH_METADATA_KEY: &str = "kiln-blob-publish";
