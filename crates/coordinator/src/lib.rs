//! The kiln coordinator: it holds the cluster's state, replicated with Raft, and decides
//! where work runs.
//!
//! Layers, bottom up:
//!
//! - [`state`]: the replicated state and its commands. Pure: `apply(state, command)`.
//! - [`scheduler`]: pure placement, feasibility checks then ranking, one pass at a time.
//! - [`raft`]: openraft wired to sled (log, vote, snapshots) and to tonic (the network).
//! - [`controllers`]: the leader's loops: scheduling passes, task events, node liveness.
//! - [`api`]: the edges: gRPC for clients, agents and peers; HTTP for `/healthz` and
//!   `/metrics`.
//! - [`server`]: wiring it all together on bound listeners, with a shutdown signal.
//!
//! I/O lives only in `raft`, `controllers`, `api` and `server`.

pub mod raft;
pub mod scheduler;
pub mod state;
