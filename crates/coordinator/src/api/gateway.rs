//! The gateway protocol (`kiln.v1.Gateway`): endpoint tables out, traffic reports in.
//!
//! Any coordinator streams the endpoint table from its applied state, anew after every
//! applied change that alters it; traffic reports go to the leader, which keeps them in
//! memory ([`crate::leader::traffic`]).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kiln_api::pb::{self, gateway_server::Gateway};
use tonic::{Request, Response, Status};

use crate::core::{Core, now_ms};
use crate::state::ClusterState;

pub struct GatewayService {
    pub core: Arc<Core>,
}

type TableStream = Pin<Box<dyn Stream<Item = Result<pb::EndpointTable, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    type WatchEndpointsStream = TableStream;

    async fn watch_endpoints(
        &self,
        _: Request<pb::WatchEndpointsRequest>,
    ) -> Result<Response<TableStream>, Status> {
        let core = self.core.clone();
        let mut applied = core.state.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<Vec<pb::ServiceEndpoints>> = None;
            loop {
                let (version, services) = {
                    let state = core.state.read();
                    (*applied.borrow_and_update(), table(&state))
                };
                if last.as_ref() != Some(&services) {
                    let msg = pb::EndpointTable {
                        version,
                        services: services.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(services);
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    // The gateway went away: nothing more to send it.
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_traffic(
        &self,
        req: Request<pb::TrafficReport>,
    ) -> Result<Response<pb::TrafficAck>, Status> {
        self.core.ensure_leader()?;
        self.core.traffic().record(req.into_inner(), now_ms());
        Ok(Response::new(pb::TrafficAck {}))
    }
}

/// Every service with the replicas that serve: running, healthy, not draining.
pub fn table(state: &ClusterState) -> Vec<pb::ServiceEndpoints> {
    let default = state.default_environment();
    state
        .services
        .values()
        .map(|s| pb::ServiceEndpoints {
            service: s.name.clone(),
            environment: s.environment.clone(),
            default_environment: s.environment == default,
            endpoints: s
                .replicas
                .iter()
                .filter(|(_, r)| r.serving())
                .filter_map(|(&slot, r)| {
                    Some(pb::Endpoint {
                        slot,
                        revision: r.revision,
                        address: r.endpoint.clone()?,
                    })
                })
                .collect(),
        })
        .collect()
}
