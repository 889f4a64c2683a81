//! The kiln coordinator: it holds the cluster's state, replicated with Raft, and decides
//! where work runs.
//!
//! Layers, bottom up:
//!
//! - [`state`]: the replicated state and its commands. Pure: `apply(state, command)`.
//! - [`scheduler`]: pure placement, feasibility checks then ranking, one pass at a time.
//! - [`raft`]: openraft wired to sled (log, vote, snapshots) and to tonic (the network).
//! - [`leader`]: the leader's memory, never replicated: agent sessions, gateway traffic,
//!   node liveness.
//! - [`core`]: what the running parts share, and `Core::write`, the one way to propose.
//! - [`controllers`]: the leader's loops: scheduling passes, node liveness, leadership.
//! - [`api`]: the edges: gRPC for clients, agents and peers; HTTP for `/healthz` and
//!   `/metrics`.
//! - [`blobs`]: the content-addressed store for build contexts (bytes outside Raft).
//! - [`server`]: wiring it all together on bound listeners, with a shutdown signal.
//!
//! I/O lives only in `raft`, `blobs`, `controllers`, `api` and `server`; `state` and `scheduler`
//! are plain data in, decisions out.

pub mod api;
pub mod auth;
pub mod blobs;
pub mod controllers;
pub mod core;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod peers;
pub mod raft;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;

pub use error::{Error, Result};
pub use server::{Config, Coordinator, start};
