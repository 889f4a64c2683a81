//! Applying committed entries to the cluster state, and snapshots of it in sled.
//!
//! The state itself lives in memory behind [`SharedState`], which the API reads and the
//! controllers watch. Durability comes from the log plus snapshots: the last snapshot is in
//! sled's `snapshot` tree, and openraft re-applies the committed entries after it on start.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{LogId, NodeId, StorageError, TypeConfig};
use crate::state::{ClusterState, Command, Response, Run};

/// Writes the finished runs among `runs` into the archive, before the command takes them out
/// of the state (the same runs `ClusterState::archive_runs` removes).
fn archive(tree: &sled::Tree, state: &ClusterState, runs: &[u64]) -> Result<(), StorageError> {
    for n in runs {
        if let Some(run) = state.runs.get(n).filter(|r| r.finished_ms.is_some()) {
            let bytes = serde_json::to_vec(run).map_err(|e| StorageIOError::write(&e))?;
            tree.insert(n.to_be_bytes(), bytes)
                .map_err(|e| StorageIOError::write(&e))?;
        }
    }
    Ok(())
}

/// The applied state, shared between the state machine (the only writer) and readers.
pub struct SharedState {
    state: RwLock<ClusterState>,
    /// The index of the last applied entry; changes wake the controllers.
    applied: watch::Sender<u64>,
    /// Runs archived out of the state (`Command::ArchiveRuns`), as JSON by run number
    /// (big-endian, so the tree is in run order); the same on every coordinator.
    archive: sled::Tree,
}

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        // A poisoned lock means a panic inside `apply`, which is a bug; reading what was
        // there is still the most useful thing to do.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// An archived run.
    pub fn archived(&self, run: u64) -> Option<Run> {
        let bytes = self.archive.get(run.to_be_bytes()).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Archived runs numbered below `before` (all, without), newest first, at most `limit`,
    /// that `keep` accepts.
    pub fn archived_before(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Run) -> bool,
    ) -> Vec<Run> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        self.archive
            .range(..end)
            .rev()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice::<Run>(&v).ok())
            .filter(|r| keep(r))
            .take(limit)
            .collect()
    }

    /// How many runs the archive holds.
    pub fn archived_count(&self) -> usize {
        self.archive.len()
    }

    /// A receiver that changes whenever entries are applied.
    /// The SHA-256 of the state's canonical JSON (object keys sorted), with the applied
    /// index it is of: members that applied the same log answer the same.
    pub fn sha256(&self) -> (String, u64) {
        use sha2::{Digest, Sha256};
        let state = self.read();
        let index = *self.applied.borrow();
        let canonical = serde_json::to_value(&*state)
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default();
        (hex::encode(Sha256::digest(&canonical)), index)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: ClusterState,
    /// The archive, so that a member that installs the snapshot has it too.
    #[serde(default)]
    archive: Vec<(u64, Run)>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    snapshots: sled::Tree,
    db: sled::Db,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
}

const CURRENT: &[u8] = b"current";

impl StateMachineStore {
    /// Opens the state machine, starting from the last snapshot if there is one.
    pub fn open(db: &sled::Db) -> Result<StateMachineStore, StorageError> {
        let snapshots = db
            .open_tree("snapshot")
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let (applied, _) = watch::channel(0);
        let archive = db
            .open_tree("archive")
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let mut sm = StateMachineStore {
            shared: Arc::new(SharedState {
                state: RwLock::new(ClusterState::default()),
                applied,
                archive,
            }),
            snapshots,
            db: db.clone(),
            last_applied: None,
            membership: StoredMembership::default(),
        };
        if let Some(stored) = sm.load_snapshot()? {
            sm.restore(&stored.meta, &stored.data)?;
        }
        Ok(sm)
    }

    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let Some(bytes) = self
            .snapshots
            .get(CURRENT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let stored =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(stored))
    }

    fn restore(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let body: SnapshotBody = serde_json::from_slice(data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        for (n, run) in &body.archive {
            let bytes = serde_json::to_vec(run)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
            self.shared
                .archive
                .insert(n.to_be_bytes(), bytes)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        }
        *self.shared.state.write().unwrap_or_else(|e| e.into_inner()) = body.state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared
            .applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn save_snapshot(&self, stored: &StoredSnapshot) -> Result<(), StorageError> {
        let sig = Some(stored.meta.signature());
        let bytes = serde_json::to_vec(stored)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        self.snapshots
            .insert(CURRENT, bytes)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = {
            let state = self.shared.read();
            let archive = self.shared.archived_before(None, usize::MAX, |_| true);
            serde_json::to_vec(&SnapshotBody {
                state: state.clone(),
                archive: archive.into_iter().map(|r| (r.number, r)).collect(),
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        };
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        {
            let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(command) => {
                        let _span =
                            tracing::debug_span!("apply", index = entry.log_id.index).entered();
                        if let Command::ArchiveRuns { runs } = &command {
                            archive(&self.shared.archive, &state, runs)?;
                        }
                        let response = state.apply(&command);
                        tracing::debug!(command = command.kind(), ?response, "applied");
                        response
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Empty
                    }
                };
                responses.push(response);
            }
        }
        self.shared
            .applied
            .send_replace(self.last_applied.map_or(0, |l| l.index));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.restore(meta, &data)?;
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.load_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
