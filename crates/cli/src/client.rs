//! The CLI's client of the cluster: [`kiln_api::leader::LeaderClient`] (it finds the leader
//! and follows it) with the CLI's patience and its errors.

use std::future::Future;
use std::time::{Duration, Instant};

use kiln_api::leader::{CallError, LeaderClient};
use kiln_api::pb::kiln_client::KilnClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::error::CliError;

pub struct Client {
    leader: LeaderClient,
    /// How long to keep retrying while the cluster has no reachable leader.
    patience: Duration,
}

impl Client {
    pub fn new(addrs: Vec<String>, patience: Duration) -> Client {
        Client {
            leader: LeaderClient::new(addrs),
            patience,
        }
    }

    /// Runs `op` against the leader (or any coordinator, for reads that a follower answers).
    pub async fn call<T, F, Fut>(&mut self, op: F) -> Result<T, CliError>
    where
        F: Fn(KilnClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.patience;
        let answer = self
            .leader
            .call(deadline, |channel| {
                op(KilnClient::new(channel).max_decoding_message_size(256 << 20))
            })
            .await;
        match answer {
            Ok(reply) => Ok(reply.into_inner()),
            Err(CallError::Refused(status)) => Err(CliError::from_status(status)),
            Err(CallError::Unreachable(e)) => Err(CliError::Unavailable(e)),
        }
    }
}
