//! `Kiln.SaveSnapshot`: a backup of the state and every blob it names (role admin), and
//! putting a backup's state in place when a cluster is made from one.
//!
//! The state is taken as this coordinator has applied it (a consistent cut: one read of the
//! state machine); a blob this coordinator lacks is fetched from its peers, and one nobody
//! has is listed in the manifest as missing rather than failing the backup.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::blobs::BlobStore;
use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::{AccessChanged, ClusterState, Command};

pub use kiln_api::backup::restore_file;

/// The backup file's bytes.
pub async fn save(core: &Core, blobs: &BlobStore) -> Result<Vec<u8>> {
    let (state_json, digests, applied) = {
        let state = core.state.read();
        let json = serde_json::to_vec(&*state).map_err(|e| Error::Internal(e.to_string()))?;
        let applied = core
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        (json, state.blob_digests(), applied)
    };
    let mut held = BTreeMap::new();
    let mut missing = Vec::new();
    for digest in digests {
        match super::blobs::read_anywhere(core, blobs, &digest).await {
            Ok(bytes) => {
                held.insert(digest, bytes);
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "a blob the state names is on no coordinator");
                missing.push(digest);
            }
        }
    }
    kiln_api::backup::pack(now_ms(), applied, &state_json, &held, missing)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// On a new cluster's first member made with `kiln snapshot restore`: once it leads,
/// proposes the backup's state as the cluster's first command, then sets the file aside.
pub async fn restore_on_start(core: std::sync::Arc<Core>, data_dir: PathBuf) {
    let path = restore_file(&data_dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let state: ClusterState = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the state to restore");
            return;
        }
    };
    while !core.is_leader() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = core
        .write::<AccessChanged>(Command::Restore {
            state: Box::new(state),
        })
        .await;
    let aside = match &outcome {
        Ok(_) => {
            tracing::info!("the backup's state is restored");
            "restore.applied.json"
        }
        Err(e) => {
            tracing::error!(error = %e, "the backup's state was not restored");
            "restore.refused.json"
        }
    };
    let _ = std::fs::rename(&path, data_dir.join(aside));
}
