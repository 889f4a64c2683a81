//! [`Core`]: what every part of a running coordinator shares — its Raft handle, the applied
//! state, the leader's in-memory views (agent sessions, liveness, waiting reasons) and the
//! metrics — and the one way to propose a command ([`Core::write`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};

use crate::error::{Error, Result};
use crate::leader::Liveness;
use crate::leader::sessions::Sessions;
use crate::leader::traffic::Traffic;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::raft::state_machine::SharedState;
use crate::raft::{NodeId, Raft};
use crate::scheduler::SchedulerConfig;
use crate::secrets::Keyring;
use crate::state::{ClusterState, Command, Placement, Reply, Response, TaskRef};

/// Settings that shape a coordinator's behaviour (not where it listens).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// A node whose heartbeats stop for this long is marked down.
    pub node_grace: Duration,
    /// How often agents are asked to heartbeat.
    pub heartbeat: Duration,
    pub election_timeout_ms: u64,
    pub scheduler: SchedulerConfig,
    /// Repositories may be paths on this machine (`kiln dev`, one user's machine); else
    /// only remotes, so that no caller reads a repository on the coordinator's disk.
    pub local_repositories: bool,
    /// How much run history stays in memory; the rest goes to the archive on disk.
    pub retention: crate::state::retention::Retention,
    /// How often the leader looks for runs past retention.
    pub archive_every: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            node_grace: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            election_timeout_ms: 100,
            scheduler: SchedulerConfig::default(),
            local_repositories: false,
            retention: Default::default(),
            archive_every: Duration::from_secs(30),
        }
    }
}

pub struct Core {
    pub id: NodeId,
    /// This coordinator's gRPC address, as peers and agents reach it.
    pub addr: String,
    pub raft: Raft,
    pub state: Arc<SharedState>,
    pub sessions: Sessions,
    pub liveness: Mutex<HashMap<String, Liveness>>,
    /// Why each pending task waits, from the leader's last scheduling pass.
    pub waiting: Mutex<BTreeMap<TaskRef, String>>,
    pub metrics: Metrics,
    pub tuning: Tuning,
    /// What the service gateways report (leader memory).
    pub traffic: Mutex<Traffic>,
    /// How to dial the other coordinators.
    pub peers: Peers,
    /// The cluster's secrets key.
    pub keyring: Keyring,
    passes: AtomicU64,
}

impl Core {
    pub fn new(
        id: NodeId,
        addr: String,
        raft: Raft,
        state: Arc<SharedState>,
        tuning: Tuning,
        peers: Peers,
        keyring: Keyring,
    ) -> Core {
        Core {
            id,
            addr,
            raft,
            state,
            sessions: Sessions::default(),
            liveness: Mutex::new(HashMap::new()),
            waiting: Mutex::new(BTreeMap::new()),
            metrics: Metrics::default(),
            tuning,
            traffic: Mutex::new(Traffic::new(now_ms())),
            peers,
            keyring,
            passes: AtomicU64::new(0),
        }
    }

    /// Proposes a command and waits until it is committed and applied here; answers the
    /// command's typed reply. The one place where a rejection (a replicated, deterministic
    /// outcome) becomes [`Error::Conflict`].
    pub async fn write<R: Reply>(&self, command: Command) -> Result<R> {
        let kind = command.kind();
        match self.raft.client_write(command).await {
            Ok(reply) => match R::from_response(reply.data) {
                Ok(r) => Ok(r),
                Err(Response::Rejected { reason }) => Err(Error::Conflict(reason)),
                Err(other) => Err(Error::Internal(format!(
                    "unexpected reply to {kind}: {other:?}"
                ))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Error::Conflict(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(Error::Storage(e.to_string())),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// `Ok` on the leader, else the error that tells the client where the leader is.
    pub fn ensure_leader(&self) -> Result<()> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(l) if l == self.id => Ok(()),
            Some(l) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone());
                Err(Error::NotLeader { leader: addr })
            }
            None => Err(Error::NotLeader { leader: None }),
        }
    }

    /// A fresh scheduling-pass number: the term in the high bits, a counter in the low.
    pub fn next_pass(&self) -> u64 {
        let term = self.raft.metrics().borrow().current_term;
        (term << 32) | (self.passes.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
    }

    pub fn liveness(&self) -> MutexGuard<'_, HashMap<String, Liveness>> {
        self.liveness.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn traffic(&self) -> MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The assignment of a placed task, with the secrets it names opened for it (here, at
    /// the edge: the state never holds them in clear). A secret that cannot be opened is
    /// left out, and the task runs without the variable.
    pub fn assignment(
        &self,
        state: &ClusterState,
        p: &Placement,
    ) -> Option<kiln_api::pb::Assignment> {
        let mut a = crate::controllers::assignment::assignment(state, p)?;
        a.secrets.retain(|name, value| {
            match state
                .secrets
                .get(name)
                .and_then(|s| self.keyring.open(name, &s.sealed))
            {
                Some(v) => {
                    *value = v;
                    true
                }
                None => {
                    tracing::warn!(secret = %name, task = %a.task_id, "a secret the task asks for cannot be opened");
                    false
                }
            }
        });
        Some(a)
    }

    pub fn waiting(&self) -> MutexGuard<'_, BTreeMap<TaskRef, String>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wall-clock milliseconds since the Unix epoch. Taken only at the edges (the leader puts it
/// into commands), never inside `state/`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
