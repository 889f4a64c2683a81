//! A client of the cluster that finds the leader by itself: it tries the given addresses in
//! turn, follows the `kiln-leader` hint a follower answers with, and retries while no leader
//! is elected, until a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use kiln_api::pb::kiln_client::KilnClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::CliError;

pub struct Client {
    addrs: Vec<String>,
    /// How long to keep retrying while the cluster has no reachable leader.
    patience: Duration,
    /// The address that answered last, tried first next time.
    preferred: Option<String>,
}

impl Client {
    pub fn new(addrs: Vec<String>, patience: Duration) -> Client {
        Client {
            addrs,
            patience,
            preferred: None,
        }
    }

    async fn connect(addr: &str) -> Result<KilnClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(KilnClient::new(channel).max_decoding_message_size(256 << 20))
    }

    /// Runs `op` against the leader (or any coordinator, for reads that a follower answers).
    pub async fn call<T, F, Fut>(&mut self, op: F) -> Result<T, CliError>
    where
        F: Fn(KilnClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.patience;
        let mut next = self.preferred.clone();
        let mut rotation = 0usize;
        let mut last_error = String::from("no coordinator address given");
        loop {
            let addr = match next.take() {
                Some(a) => a,
                None => {
                    if self.addrs.is_empty() {
                        return Err(CliError::Unavailable(last_error));
                    }
                    rotation += 1;
                    if rotation > self.addrs.len()
                        && (rotation - 1).is_multiple_of(self.addrs.len())
                    {
                        if Instant::now() >= deadline {
                            return Err(CliError::Unavailable(last_error));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    self.addrs[(rotation - 1) % self.addrs.len()].clone()
                }
            };
            let client = match Self::connect(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = format!("cannot reach {e}");
                    continue;
                }
            };
            match op(client).await {
                Ok(reply) => {
                    self.preferred = Some(addr);
                    return Ok(reply.into_inner());
                }
                Err(status) => {
                    let hint = status
                        .metadata()
                        .get(kiln_api::LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok());
                    if let Some(leader) = hint {
                        next = Some(leader.to_string());
                        continue;
                    }
                    match status.code() {
                        Code::Unavailable | Code::Unknown | Code::Cancelled => {
                            last_error = format!("{addr}: {}", status.message());
                            if Instant::now() >= deadline {
                                return Err(CliError::Unavailable(last_error));
                            }
                        }
                        _ => return Err(CliError::from_status(status)),
                    }
                }
            }
        }
    }
}
