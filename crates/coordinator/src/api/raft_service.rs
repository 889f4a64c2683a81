//! The server side of the Raft transport: decode openraft's message, hand it to the local
//! Raft, encode its answer (including openraft's own errors, which the caller unpacks).

use std::sync::Arc;

use kiln_api::pb::RaftPayload;
use kiln_api::pb::raft_server::Raft as RaftRpc;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::core::Core;

pub struct RaftService {
    pub core: Arc<Core>,
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let payload = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { payload }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(&self.core.raft.append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.core.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        encode(&self.core.raft.install_snapshot(decode(req)?).await)
    }
}
