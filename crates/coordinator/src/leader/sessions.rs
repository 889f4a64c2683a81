//! The leader's agent sessions: one outbound channel per connected node, through which
//! assignments (built by `controllers::assignment`), kills, acknowledgements and log
//! requests are pushed.
//!
//! A session is replaced when its agent reconnects (the newer generation wins) and all are
//! closed when this coordinator stops being the leader, so agents go and find the new one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_api::pb::{self, coordinator_message::Msg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::{ClusterState, Kill};

pub type Outbound = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, tonic::Status>>;

#[derive(Clone)]
pub struct Session {
    pub tx: Outbound,
    pub generation: u64,
    /// Cancelled to end the session's streams.
    pub closed: CancellationToken,
}

impl Session {
    pub fn send(&self, msg: Msg) -> bool {
        self.tx
            .send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
            .is_ok()
    }
}

#[derive(Default)]
pub struct Sessions {
    by_node: Mutex<HashMap<String, Session>>,
    generations: AtomicU64,
    log_requests: Mutex<HashMap<u64, mpsc::UnboundedSender<pb::LogData>>>,
    log_ids: AtomicU64,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session for `node`, closing the one it replaces.
    pub fn open(&self, node: &str, tx: Outbound) -> Session {
        let session = Session {
            tx,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            closed: CancellationToken::new(),
        };
        if let Some(old) = self.map().insert(node.to_string(), session.clone()) {
            old.closed.cancel();
        }
        session
    }

    /// Removes the session if it is still the current one for `node`.
    pub fn close(&self, node: &str, generation: u64) {
        let mut map = self.map();
        if map.get(node).is_some_and(|s| s.generation == generation)
            && let Some(s) = map.remove(node)
        {
            s.closed.cancel();
        }
    }

    pub fn close_all(&self) {
        for (_, s) in self.map().drain() {
            s.closed.cancel();
        }
    }

    pub fn get(&self, node: &str) -> Option<Session> {
        self.map().get(node).cloned()
    }

    pub fn connected(&self) -> usize {
        self.map().len()
    }

    /// Pushes assignments to their nodes' agents (those connected).
    pub fn assign(&self, assignments: impl IntoIterator<Item = (String, pb::Assignment)>) {
        let map = self.map();
        for (node, a) in assignments {
            if let Some(session) = map.get(&node) {
                session.send(Msg::Assign(a));
            }
        }
    }

    /// Asks up to `most` connected agents (by node id) to fetch a commit ahead of its
    /// stages.
    pub fn prefetch(&self, checkout: &pb::Checkout, most: usize) {
        let map = self.map();
        let mut nodes: Vec<&String> = map.keys().collect();
        nodes.sort();
        for node in nodes.into_iter().take(most) {
            if let Some(session) = map.get(node) {
                session.send(Msg::Prefetch(checkout.clone()));
            }
        }
    }

    pub fn kill(&self, state: &ClusterState, kills: &[Kill]) {
        let map = self.map();
        for k in kills {
            if let Some(session) = map.get(&k.node) {
                session.send(Msg::Kill(pb::KillTask {
                    task_id: state.task_id(k.task),
                    attempt: k.attempt,
                    reason: k.reason.clone(),
                }));
            }
        }
    }

    /// Starts a log request; chunks arrive on the returned receiver.
    pub fn start_log_request(&self) -> (u64, mpsc::UnboundedReceiver<pb::LogData>) {
        let id = self.log_ids.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.log_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        (id, rx)
    }

    /// Routes a chunk from an agent to the client waiting for it.
    pub fn route_log(&self, data: pb::LogData) {
        let mut map = self.log_requests.lock().unwrap_or_else(|e| e.into_inner());
        let id = data.request_id;
        let done = data.eof || !data.error.is_empty();
        let delivered = map.get(&id).is_some_and(|tx| tx.send(data).is_ok());
        if done || !delivered {
            map.remove(&id);
        }
    }
}
