//! HTTP: `/healthz` for probes, `/metrics` for Prometheus, and `/hooks/REPOSITORY` for the
//! forges' webhooks ([`super::webhooks`]).
//!
//! Where the coordinator has TLS, so does this port (HTTPS with the same certificate and the
//! same accept loop, [`serve_tls`]), and every route passes the same authenticator as the
//! gRPC calls (`auth/policy.rs` has the HTTP routes too): `/metrics` needs the read role (a
//! client certificate or a Bearer token), probes and webhooks are open (a webhook proves
//! itself with the forge's signature).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::auth::tls::Conn;
use crate::auth::{Authenticator, HttpPeer};
use crate::core::Core;
use crate::state::NodeStatus;

pub fn router(core: Arc<Core>, auth: Arc<Authenticator>) -> Router {
    let hooks = Router::new()
        .route("/hooks/{repository}", post(super::webhooks::http))
        .layer(DefaultBodyLimit::max(super::webhooks::MAX_BODY));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(hooks)
        .with_state(core)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let auth = auth.clone();
                async move {
                    match auth.check_http(&req) {
                        Ok(()) => next.run(req).await,
                        Err(refused) => refused.into_response(),
                    }
                }
            },
        ))
}

/// Serves `router` on TLS connections from `incoming` until `stop`: each request carries
/// its connection's peer and certificates ([`HttpPeer`]) for the authenticator.
pub async fn serve_tls(
    router: Router,
    mut incoming: impl futures::Stream<Item = std::io::Result<TlsStream<Conn>>> + Unpin,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            s = incoming.next() => match s {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        let (conn, session) = stream.get_ref();
        let peer = HttpPeer {
            addr: conn.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            certs: session.peer_certificates().map(|c| Arc::new(c.to_vec())),
        };
        let app = router.clone().layer(axum::Extension(peer));
        let service = hyper_util::service::TowerToHyperService::new(app);
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// 200 while this coordinator knows a leader (itself or another), 503 otherwise.
async fn healthz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let leader = core.raft.metrics().borrow().current_leader;
    match leader {
        Some(l) => (StatusCode::OK, format!("ok: id {} leader {l}\n", core.id)),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no leader: id {}\n", core.id),
        ),
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let m = &core.metrics;
    {
        let raft = core.raft.metrics();
        let r = raft.borrow();
        m.raft_term.set(r.current_term as i64);
        m.raft_last_applied
            .set(r.last_applied.map_or(0, |l| l.index) as i64);
        m.raft_leader.set(r.current_leader.unwrap_or(0) as i64);
        m.is_leader.set((r.current_leader == Some(core.id)) as i64);
    }
    {
        let state = core.state.read();
        m.tasks.clear();
        for (status, n) in state.tasks_by_status() {
            m.tasks
                .get_or_create(&vec![("status".into(), status.into())])
                .set(n as i64);
        }
        let live = core.liveness();
        for family in [
            &m.gpu_utilization,
            &m.gpu_memory_used,
            &m.gpu_memory_total,
            &m.gpu_temperature,
            &m.gpu_power,
        ] {
            family.clear();
        }
        for node in state.nodes.values() {
            for gpu in &node.gpus {
                let labels = vec![
                    ("node".to_string(), node.id.clone()),
                    ("gpu".to_string(), gpu.index.to_string()),
                    ("model".to_string(), gpu.model.clone()),
                    ("simulated".to_string(), gpu.simulated.to_string()),
                ];
                m.gpu_memory_total
                    .get_or_create(&labels)
                    .set(gpu.memory_bytes as f64);
                let stats = live
                    .get(&node.id)
                    .and_then(|l| l.gpus.iter().find(|s| s.index == gpu.index));
                if let Some(s) = stats {
                    m.gpu_utilization
                        .get_or_create(&labels)
                        .set(s.utilization_percent);
                    m.gpu_memory_used
                        .get_or_create(&labels)
                        .set(s.memory_used_bytes as f64);
                    m.gpu_temperature
                        .get_or_create(&labels)
                        .set(s.temperature_celsius);
                    m.gpu_power.get_or_create(&labels).set(s.power_watts);
                }
            }
        }
        drop(live);
        m.nodes.clear();
        for status in [NodeStatus::Ready, NodeStatus::Down] {
            let n = state.nodes.values().filter(|x| x.status == status).count();
            m.nodes
                .get_or_create(&vec![("status".into(), status.as_str().into())])
                .set(n as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}
