//! The service gateway: one HTTP endpoint in front of every service's replicas.
//!
//! - [`table`]: the routing table, fed by the coordinators' endpoint stream: per service,
//!   the replicas that serve, each with its in-flight counter.
//! - [`proxy`]: the request path: find the service (first path segment, or the `Host`
//!   header), pick the replica with the fewest requests in flight, forward; a request whose
//!   connection failed before anything was sent goes to another replica; with no replica
//!   serving (scaled to zero, or starting) the request waits for one, up to a timeout.
//! - [`report`]: traffic back to the leader every 100 ms: in flight per replica (so a drained
//!   replica is killed only once nothing is in flight to it), requests and held requests per
//!   service (the autoscaler's inputs).
//!
//! A replica that leaves the table is never picked again, but its in-flight requests run to
//! their end: that is the gateway's half of draining. The other half is the leader waiting
//! for the reports to say so before it kills the replica.

pub mod proxy;
pub mod report;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Config {
    /// Coordinator gRPC addresses; any one will do.
    pub coordinators: Vec<String>,
    /// This gateway's name in traffic reports.
    pub id: String,
    /// How long a request waits for a replica when none serves.
    pub hold: Duration,
    /// TLS to the coordinators (a gateway or client certificate); `None`: plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Serves on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) {
    let table = Arc::new(table::Table::default());
    tokio::spawn(table::follow(
        table.clone(),
        config.coordinators.clone(),
        config.tls.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(report::run(table.clone(), config.clone(), shutdown.clone()));
    proxy::serve(listener, table, config.hold, shutdown).await;
}
