//! The coordinator's edges: gRPC for clients ([`client`]), agents ([`agent`]), peers
//! ([`raft_service`]), build-context blobs for both ([`blobs`]), the test queue of sharded
//! stages ([`test_queue`]), services ([`services`]) and their gateways ([`gateway`]), repositories
//! ([`repositories`]), HTTP for probes, Prometheus and the forges' webhooks ([`http`],
//! [`webhooks`]). Handlers translate between
//! the wire and [`crate::core::Core`]; errors become gRPC statuses in `error.rs` only.

pub mod access;
pub mod agent;
pub mod backup;
pub mod blobs;
pub mod client;
pub(crate) mod convert;
pub mod gateway;
pub mod http;
pub mod raft_service;
pub mod repositories;
pub mod runs;
pub mod secrets;
pub mod service_files;
pub mod services;
pub mod test_queue;
pub mod webhooks;
