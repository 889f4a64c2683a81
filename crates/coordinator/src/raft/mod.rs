//! Raft, from openraft 0.9, with everything durable in sled and every message over tonic.
//!
//! - [`log_store`]: the Raft log, the vote and the commit index in two sled trees; an append
//!   is acknowledged to openraft only after sled has flushed it.
//! - [`state_machine`]: applies committed [`Command`]s to the in-memory [`ClusterState`]
//!   (the state's `apply` is pure; this file is the I/O around it) and keeps snapshots in
//!   sled. On start it loads the last snapshot; openraft then re-applies the committed log
//!   after it, so a restart of every coordinator loses nothing acknowledged.
//! - [`network`]: the client side of the Raft RPCs. openraft's messages travel as JSON in a
//!   `bytes` field of `kiln.v1.Raft`; the server side is in `api::raft_service`.
//!
//! Storage is behind openraft's own traits, so openraft's storage test suite
//! (`Suite::test_all`) runs against the sled store (see `tests.rs`).
//!
//! [`Command`]: crate::state::Command
//! [`ClusterState`]: crate::state::ClusterState

// openraft's traits fix `StorageError` (224 bytes) as the error type of every storage call.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod state_machine;

#[cfg(test)]
mod tests;

// `declare_raft_types!` names `Cursor` unqualified for the snapshot data type.
use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// kiln's Raft types: commands in, responses out, u64 coordinator ids, `BasicNode`
    /// addresses (the coordinator's gRPC address).
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Opens (or creates) the sled database that holds one coordinator's Raft data.
pub fn open_db(dir: &std::path::Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir.join("raft.sled"))
        .mode(sled::Mode::HighThroughput)
        .open()
}

/// Raft timing for a cluster on one network. With the default 100 ms: heartbeats every 25 ms;
/// a follower calls an election after the leader's lease (200 ms) plus a random 100 to 200 ms
/// of silence; snapshots every 10,000 entries.
pub fn config(election_timeout_ms: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "kiln".into(),
        heartbeat_interval: (election_timeout_ms / 4).max(10),
        election_timeout_min: election_timeout_ms,
        election_timeout_max: election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1_000,
        max_payload_entries: 512,
        ..Default::default()
    }
}
