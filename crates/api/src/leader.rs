//! Reaching the leader: the one client loop that every kiln caller uses.
//!
//! Writes go to the Raft leader. A coordinator that is not the leader refuses a call with
//! `UNAVAILABLE` and, when it knows the leader, names the leader's gRPC address in the
//! [`LEADER_METADATA_KEY`] metadata ([`not_leader`] builds that answer). [`LeaderClient`]
//! is the other half:
//!
//! - it tries the address that answered last first, then the addresses it was given, in turn;
//! - it follows a leader hint at once;
//! - it retries connection failures and `UNAVAILABLE` answers (no leader elected yet, a
//!   leader that just died), pausing once every address was tried, until the caller's
//!   deadline;
//! - any other answer is the caller's: a refusal (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
//!   ...) is returned at once as [`CallError::Refused`].
//!
//! It keeps one channel to the address that answered last, so a caller that makes many calls
//! (an agent, a gateway, a shard) pays for a connection once per leader, not once per call.
//! Its users: the CLI, the agent's session and its shards' test loops, the gateway's traffic
//! reports, a coordinator joining a cluster, and `kiln-bench`.
//!
//! It does not decide what is safe to retry: every kiln write that can reach it twice is
//! idempotent (submissions, deploys, promotions and approvals carry a request id, agent
//! events a sequence, test-queue calls their batch number; a rollback is resolved to its
//! target before it is proposed), which is what makes following a leader safe.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

/// The metadata key under which a follower names the leader's gRPC address.
pub const LEADER_METADATA_KEY: &str = "kiln-leader";

/// The answer of a coordinator that is not the leader: `UNAVAILABLE`, naming the leader when
/// it is known.
pub fn not_leader(message: String, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(value) = leader.and_then(|l| l.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA_KEY, value);
    }
    status
}

/// The leader a refusal names, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The deadline of a caller that waits for a leader for as long as it runs (and stops
/// through its own shutdown signal).
pub fn forever() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Answers worth trying again, here or at another coordinator: the leader may be elsewhere,
/// not elected yet, or the connection broke mid-call.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// A coordinator answered, and its answer is final (it does not depend on where the
    /// call went).
    #[error("{}", .0.message())]
    Refused(Status),
    /// No leader answered before the deadline; the last problem seen.
    #[error("{0}")]
    Unreachable(String),
}

pub struct LeaderClient {
    /// The addresses to try when the last one that answered does not.
    seeds: Vec<String>,
    connect_timeout: Duration,
    /// Each call's own limit (within the caller's deadline), if any.
    call_timeout: Option<Duration>,
    /// The pause after every address was tried without an answer.
    retry_pause: Duration,
    keep_alive: Option<(Duration, Duration)>,
    /// TLS to the coordinators (`https`), or plaintext where `None` (`--insecure`).
    tls: Option<ClientTlsConfig>,
    /// The address that answered last, with its channel once connected.
    current: Mutex<Option<(String, Option<Channel>)>>,
}

impl LeaderClient {
    pub fn new(seeds: Vec<String>) -> LeaderClient {
        LeaderClient {
            seeds,
            connect_timeout: Duration::from_millis(500),
            call_timeout: None,
            retry_pause: Duration::from_millis(100),
            keep_alive: None,
            tls: None,
            current: Mutex::new(None),
        }
    }

    /// Speaks TLS to the coordinators with these settings (see [`crate::pki::TlsFiles`]).
    pub fn tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = Some(d);
        self
    }

    pub fn retry_pause(mut self, d: Duration) -> Self {
        self.retry_pause = d;
        self
    }

    /// HTTP/2 pings every `interval`, the connection dropped after `timeout` without an
    /// answer: for long-lived streams, so a dead leader is noticed.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// A client with the same addresses and settings that starts from this one's leader and
    /// its channel (calls share the connection), for a caller with its own limits.
    pub fn fork(&self) -> LeaderClient {
        LeaderClient {
            seeds: self.seeds.clone(),
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            retry_pause: self.retry_pause,
            keep_alive: self.keep_alive,
            tls: self.tls.clone(),
            current: Mutex::new(self.slot().clone()),
        }
    }

    /// The address that answered last: the leader, as far as this client knows.
    pub fn leader(&self) -> Option<String> {
        self.slot().as_ref().map(|(addr, _)| addr.clone())
    }

    /// Drops the channel to the last leader (its stream broke); the address is still tried
    /// first next time.
    pub fn forget(&self) {
        if let Some((_, channel)) = self.slot().as_mut() {
            *channel = None;
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(String, Option<Channel>)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some((a, Some(c))) = self.slot().as_ref()
            && a == addr
        {
            return Ok(c.clone());
        }
        let mut endpoint = crate::pki::endpoint(addr, self.tls.as_ref())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some((interval, timeout)) = self.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        *self.slot() = Some((addr.to_string(), Some(channel.clone())));
        Ok(channel)
    }

    /// Runs `op` on a channel to the leader, following hints and retrying what is worth
    /// retrying until `deadline`.
    pub async fn call<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut next = self.leader();
        let mut tried = 0usize;
        let mut hops = 0usize;
        let mut last = String::from("no coordinator address given");
        loop {
            let addr = match next.take() {
                Some(a) => a,
                None => {
                    if self.seeds.is_empty() {
                        return Err(CallError::Unreachable(last));
                    }
                    tried += 1;
                    self.seeds[(tried - 1) % self.seeds.len()].clone()
                }
            };
            let answer = match self.channel(&addr).await {
                Ok(channel) => match self.call_timeout {
                    Some(limit) => {
                        let limit = limit.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::timeout(limit, op(channel))
                            .await
                            .unwrap_or_else(|_| Err(Status::unavailable("the call timed out")))
                    }
                    None => op(channel).await,
                },
                Err(e) => Err(Status::unavailable(e)),
            };
            let status = match answer {
                Ok(v) => {
                    let mut slot = self.slot();
                    if slot.as_ref().is_none_or(|(a, _)| *a != addr) {
                        *slot = Some((addr, None));
                    }
                    return Ok(v);
                }
                Err(status) => status,
            };
            if !retryable(status.code()) {
                return Err(CallError::Refused(status));
            }
            last = format!("{addr}: {}", status.message());
            self.forget();
            if Instant::now() >= deadline {
                return Err(CallError::Unreachable(last));
            }
            match leader_hint(&status).filter(|l| *l != addr) {
                // Hints that go round in circles (stale views during an election) pause too.
                Some(leader) => {
                    hops += 1;
                    if hops.is_multiple_of(4) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(self.retry_pause.min(left)).await;
                    }
                    next = Some(leader);
                }
                // Every address tried once more: give an election time to finish.
                None if tried.is_multiple_of(self.seeds.len().max(1)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(self.retry_pause.min(left)).await;
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader_and_is_retryable() {
        let s = not_leader("not the leader".into(), Some("127.0.0.1:7000"));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(retryable(s.code()));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(leader_hint(&not_leader("no leader".into(), None)), None);
    }

    #[test]
    fn refusals_are_not_retried() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert!(!retryable(code), "{code:?}");
        }
    }

    #[tokio::test]
    async fn no_coordinator_answering_is_unreachable_at_the_deadline() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let client = LeaderClient::new(vec![format!("127.0.0.1:{port}")])
            .retry_pause(Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_millis(200);
        let answer: Result<(), _> = client.call(deadline, |_| async { Ok(()) }).await;
        match answer {
            Err(CallError::Unreachable(e)) => assert!(e.contains("cannot reach"), "{e}"),
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(Instant::now() >= deadline);
    }
}
