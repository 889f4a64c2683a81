//! The content-addressed blob store: build contexts that arrive with a submission are kept
//! here, on this coordinator's disk, under their SHA-256 digest. Only the digest goes through
//! Raft (DESIGN: "artifact bytes ... only digests go through Raft").
//!
//! Layout: `<data>/blobs/sha256/<64 hex digits>`. A blob is written to a temp file and
//! renamed into place, so a reader never sees half of one; storing the same bytes twice is
//! a no-op. Replication to a majority and fetching from peers are in `api::blobs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn open(data_dir: &Path) -> Result<BlobStore> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
        Ok(BlobStore { dir })
    }

    /// Stores `bytes` and returns their digest, `sha256:<hex>`.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let path = self.path(&digest)?;
        if path.is_file() {
            return Ok(digest);
        }
        let storage = |e: std::io::Error| Error::Storage(format!("{}: {e}", path.display()));
        let mut tmp = tempfile_in(&self.dir).map_err(storage)?;
        tmp.1.write_all(bytes).map_err(storage)?;
        tmp.1.sync_all().map_err(storage)?;
        std::fs::rename(&tmp.0, &path).map_err(storage)?;
        Ok(digest)
    }

    /// The file holding the blob, if this coordinator has it.
    pub fn get(&self, digest: &str) -> Result<Option<PathBuf>> {
        let path = self.path(digest)?;
        Ok(path.is_file().then_some(path))
    }

    fn path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                Error::InvalidInput(format!("{digest:?} is not a sha256:<hex> digest"))
            })?;
        Ok(self.dir.join(hex.to_ascii_lowercase()))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in sum {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(".tmp-{:016x}", rand::random::<u64>());
    let path = dir.join(name);
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_once_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"context").unwrap();
        assert_eq!(d, digest_of(b"context"));
        assert_eq!(store.put(b"context").unwrap(), d);
        let path = store.get(&d).unwrap().expect("stored");
        assert_eq!(std::fs::read(path).unwrap(), b"context");
        assert!(store.get(&digest_of(b"other")).unwrap().is_none());
        assert!(store.get("md5:abc").is_err());
    }
}
