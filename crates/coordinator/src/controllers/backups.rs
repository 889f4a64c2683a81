//! Scheduled backups (`--snapshot-dir DIR --snapshot-every 1h --keep 24`), each verified
//! before it is kept.
//!
//! On the leader, every interval: take a backup as `kiln snapshot save` does, then prove it
//! restores: read it back (every file against its SHA-256), unpack it into a scratch data
//! dir as `kiln snapshot restore` does, read that dir's state back and compare it with the
//! state that was saved, and every blob file with its digest. Only then is the file renamed
//! into place, and the oldest beyond `keep` deleted. A backup that fails any step is not
//! kept, and says why (`kiln_snapshots_total{result="failed"}` and the log).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::state::ClusterState;

#[derive(Debug, Clone)]
pub struct Schedule {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: usize,
}

const SUFFIX: &str = ".kiln-backup";

pub async fn run(
    core: Arc<Core>,
    blobs: BlobStore,
    schedule: Schedule,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(schedule.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the first backup comes one interval after the start.
    tick.tick().await;
    while super::leader_tick(&core, &mut tick, &shutdown).await {
        let outcome = take(&core, &blobs, &schedule).await;
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        core.metrics
            .snapshots
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        match outcome {
            Ok(path) => {
                tracing::info!(file = %path.display(), "scheduled backup taken and verified")
            }
            Err(e) => tracing::error!(error = %e, "scheduled backup failed; nothing kept"),
        }
    }
}

async fn take(core: &Core, blobs: &BlobStore, schedule: &Schedule) -> Result<PathBuf> {
    let bytes = crate::api::backup::save(core, blobs).await?;
    let dir = schedule.dir.clone();
    let keep = schedule.keep;
    tokio::task::spawn_blocking(move || {
        let io = |p: &Path, e: std::io::Error| Error::Storage(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let backup = verify(&bytes, &dir)?;
        let name = format!(
            "kiln-{:015}-{}{SUFFIX}",
            backup.manifest.created_ms, backup.manifest.applied_index
        );
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.partial"));
        std::fs::write(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
        // Room first, so that there are never more than `keep` in the directory.
        prune(&dir, keep - 1).map_err(|e| io(&dir, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(path)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// Reads the backup, restores it into a scratch data dir, and compares what is there with
/// what was saved.
fn verify(bytes: &[u8], dir: &Path) -> Result<kiln_api::backup::Backup> {
    let bad = |why: String| Error::Internal(format!("the backup does not verify: {why}"));
    let backup = kiln_api::backup::read(bytes).map_err(|e| bad(e.to_string()))?;
    let scratch = dir.join(format!(".verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let checked = (|| {
        kiln_api::backup::unpack_into(&backup, &scratch)?;
        let saved: ClusterState =
            serde_json::from_slice(&backup.state_json).map_err(|e| e.to_string())?;
        let restored =
            std::fs::read(kiln_api::backup::restore_file(&scratch)).map_err(|e| e.to_string())?;
        let restored: ClusterState =
            serde_json::from_slice(&restored).map_err(|e| e.to_string())?;
        if restored != saved {
            return Err("the restored state differs from the saved one".to_string());
        }
        let store = BlobStore::open(&scratch).map_err(|e| e.to_string())?;
        for digest in backup.blobs.keys() {
            let path = store
                .get(digest)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("blob {digest} is not in the restored store"))?;
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            if crate::blobs::digest_of(&bytes) != *digest {
                return Err(format!("blob {digest} does not match once restored"));
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    checked.map_err(bad)?;
    Ok(backup)
}

/// Deletes the oldest backups beyond the newest `keep` (names sort by time).
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kiln-") && n.ends_with(SUFFIX))
        })
        .collect();
    all.sort();
    let extra = all.len().saturating_sub(keep);
    for old in &all[..extra] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn backup(state: &ClusterState) -> Vec<u8> {
        let blob = b"weights".to_vec();
        let blobs = BTreeMap::from([(crate::blobs::digest_of(&blob), blob)]);
        let json = serde_json::to_vec(state).unwrap();
        kiln_api::backup::pack(1, 2, &json, &blobs, vec![]).unwrap()
    }

    #[test]
    fn only_a_backup_that_restores_verifies_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClusterState {
            next_run: 7,
            ..Default::default()
        };
        let good = backup(&state);
        assert!(verify(&good, dir.path()).is_ok());
        let mut bad = good.clone();
        let at = bad.windows(7).position(|w| w == b"weights").unwrap();
        bad[at] ^= 1;
        let e = verify(&bad, dir.path()).err().unwrap().to_string();
        assert!(e.contains("does not verify"), "{e}");
        // Nothing of the checks is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        for t in 1..=4 {
            std::fs::write(dir.path().join(format!("kiln-{t:015}-1{SUFFIX}")), b"x").unwrap();
        }
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("kiln-{:015}-1{SUFFIX}", 3),
                format!("kiln-{:015}-1{SUFFIX}", 4)
            ]
        );
    }
}
