//! The backup file `kiln snapshot save` writes and `restore` reads: a tar of
//!
//! - `manifest.json`: format version, when, the Raft index the state was taken at, the
//!   SHA-256 and size of the state, and of every blob;
//! - `state.json`: the replicated state, as the coordinators serialise it;
//! - `blobs/sha256/<hex>`: every build context, model and artifact the state names.
//!
//! Reading checks every file against the manifest (a blob's name is its digest), so a
//! damaged or truncated backup is refused before anything is restored from it.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_ms: i64,
    /// The Raft index of the last command in the state.
    pub applied_index: u64,
    pub state_sha256: String,
    pub state_bytes: u64,
    /// Blob digest (`sha256:<hex>`) → size.
    pub blobs: BTreeMap<String, u64>,
    /// Blobs the state names that no coordinator had (they cannot be restored).
    #[serde(default)]
    pub missing: Vec<String>,
}

/// A backup read and checked.
pub struct Backup {
    pub manifest: Manifest,
    pub state_json: Vec<u8>,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a kiln backup: {0}")]
    Malformed(String),
    #[error("damaged: {0}")]
    Damaged(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Packs a backup.
pub fn pack(
    created_ms: i64,
    applied_index: u64,
    state_json: &[u8],
    blobs: &BTreeMap<String, Vec<u8>>,
    missing: Vec<String>,
) -> std::io::Result<Vec<u8>> {
    let manifest = Manifest {
        format: FORMAT,
        created_ms,
        applied_index,
        state_sha256: sha256_hex(state_json),
        state_bytes: state_json.len() as u64,
        blobs: blobs
            .iter()
            .map(|(d, b)| (d.clone(), b.len() as u64))
            .collect(),
        missing,
    };
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    add("manifest.json", &manifest)?;
    add("state.json", state_json)?;
    for (digest, bytes) in blobs {
        add(&blob_path(digest), bytes)?;
    }
    tar.into_inner()
}

/// Reads and checks a backup: every file present, of its size and SHA-256, nothing else.
pub fn read(bytes: &[u8]) -> Result<Backup, BackupError> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| BackupError::Malformed(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::Malformed(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| BackupError::Malformed(e.to_string()))?
            .display()
            .to_string();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| BackupError::Damaged(format!("{path}: {e}")))?;
        files.insert(path, data);
    }
    let manifest: Manifest = serde_json::from_slice(
        files
            .get("manifest.json")
            .ok_or_else(|| BackupError::Malformed("no manifest.json".into()))?,
    )
    .map_err(|e| BackupError::Malformed(format!("manifest.json: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Malformed(format!(
            "format {} (this kiln reads format {FORMAT})",
            manifest.format
        )));
    }
    let state_json = files
        .remove("state.json")
        .ok_or_else(|| BackupError::Damaged("state.json is missing".into()))?;
    if sha256_hex(&state_json) != manifest.state_sha256 {
        return Err(BackupError::Damaged(
            "state.json does not match its SHA-256 in the manifest".into(),
        ));
    }
    let mut blobs = BTreeMap::new();
    for (digest, size) in &manifest.blobs {
        let path = blob_path(digest);
        let data = files
            .remove(&path)
            .ok_or_else(|| BackupError::Damaged(format!("{path} is missing")))?;
        if data.len() as u64 != *size || format!("sha256:{}", sha256_hex(&data)) != *digest {
            return Err(BackupError::Damaged(format!(
                "{path} does not match its digest"
            )));
        }
        blobs.insert(digest.clone(), data);
    }
    files.remove("manifest.json");
    if let Some(extra) = files.keys().next() {
        return Err(BackupError::Damaged(format!(
            "{extra} is not in the manifest"
        )));
    }
    Ok(Backup {
        manifest,
        state_json,
        blobs,
    })
}

/// The file a new cluster's first coordinator finds its state to restore in.
pub fn restore_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("restore.json")
}

/// Makes `data_dir` (new or empty, else refused) the data dir of a new cluster's first
/// coordinator: the blobs where its blob store keeps them, the state in [`restore_file`].
pub fn unpack_into(backup: &Backup, data_dir: &std::path::Path) -> Result<(), String> {
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(format!(
            "{}: not empty; a backup is restored only into a new data dir",
            data_dir.display()
        ));
    }
    let blobs = data_dir.join("blobs").join("sha256");
    let fail = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&blobs).map_err(|e| fail(&blobs, e))?;
    for (digest, bytes) in &backup.blobs {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes).map_err(|e| fail(&path, e))?;
    }
    let state = restore_file(data_dir);
    std::fs::write(&state, &backup.state_json).map_err(|e| fail(&state, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let blob = b"model weights".to_vec();
        let digest = format!("sha256:{}", sha256_hex(&blob));
        pack(
            1,
            7,
            br#"{"runs":{}}"#,
            &BTreeMap::from([(digest, blob)]),
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn a_backup_reads_back_whole() {
        let b = read(&sample()).unwrap();
        assert_eq!(b.manifest.applied_index, 7);
        assert_eq!(b.state_json, br#"{"runs":{}}"#);
        assert_eq!(b.blobs.values().next().unwrap(), b"model weights");
    }

    #[test]
    fn a_damaged_or_truncated_backup_is_refused() {
        let good = sample();
        let at = good
            .windows(13)
            .position(|w| w == b"model weights")
            .unwrap();
        let mut flipped = good.clone();
        flipped[at] ^= 1;
        let e = read(&flipped).err().unwrap().to_string();
        assert!(e.contains("does not match its digest"), "{e}");
        let truncated = &good[..good.len() / 2];
        assert!(read(truncated).is_err());
        assert!(read(b"not a tar at all").is_err());
    }
}
