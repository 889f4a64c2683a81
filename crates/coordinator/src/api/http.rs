//! HTTP: `/healthz` for probes and `/metrics` for Prometheus.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::core::Core;
use crate::state::NodeStatus;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(core)
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
