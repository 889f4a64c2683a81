//! Blobs from the coordinators' content-addressed store, by digest: build contexts for
//! image builds, and model artifacts for service replicas ([`Models`]).
//!
//! A model artifact is fetched once per node and kept, unpacked, in `<data>/models/<hex>`,
//! shared by every replica of every revision that names the same digest. It is unpacked
//! into a temporary directory and renamed into place, so a half-unpacked model is never
//! used, and made read-only (files 0444, or 0555 if executable; directories 0555): a
//! container replica gets it through a read-only mount; a process replica running as root
//! could still write to it. A stage's artifact inputs are kept and given the same way.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_api::leader::LeaderClient;
use kiln_api::pb;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// How long a fetch waits for a leader to fetch from.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// A blob from the leader, checked against its digest.
pub async fn fetch(leader: &LeaderClient, digest: &str) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + FETCH_PATIENCE;
    let bytes = leader
        .call(deadline, |channel| async move {
            let mut client = pb::blobs_client::BlobsClient::new(channel);
            let mut stream = client
                .fetch_blob(pb::FetchBlobRequest {
                    digest: digest.to_string(),
                })
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(bytes)
        })
        .await
        .map_err(|e| e.to_string())?;
    let sum: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if format!("sha256:{sum}") != digest {
        return Err("the bytes do not match the digest".into());
    }
    Ok(bytes)
}

/// Stores what a task publishes on the leader, which answers once a majority of the
/// coordinators hold it; returns its digest.
pub async fn publish(leader: &LeaderClient, bytes: Vec<u8>) -> Result<String, String> {
    let digest = format!(
        "sha256:{}",
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let deadline = Instant::now() + FETCH_PATIENCE;
    let (digest, bytes) = (&digest, &bytes);
    leader
        .call(deadline, |channel| async move {
            let chunks = kiln_api::artifact::put_chunks(digest, bytes);
            let mut req = tonic::Request::new(futures::stream::iter(chunks));
            req.metadata_mut().insert(
                kiln_api::PUBLISH_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            pb::blobs_client::BlobsClient::new(channel)
                .put_blob(req)
                .await
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(digest.clone())
}

/// The model artifacts on this node.
pub struct Models {
    root: PathBuf,
    /// One fetch at a time: two replicas of one revision starting together fetch it once.
    fetching: Mutex<()>,
}

impl Models {
    pub fn new(data_dir: &Path) -> Models {
        Models {
            root: data_dir.join("models"),
            fetching: Mutex::new(()),
        }
    }

    /// The directory holding the model `digest`, fetched and unpacked first if need be.
    pub async fn ensure(&self, leader: &LeaderClient, digest: &str) -> Result<PathBuf, String> {
        let fail = |e: String| format!("model {digest}: {e}");
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| fail("not a sha256 digest".into()))?;
        let _one = self.fetching.lock().await;
        let dir = self.root.join(hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let bytes = fetch(leader, digest).await.map_err(fail)?;
        let tmp = self.root.join(format!(".{hex}.unpacking"));
        let unpacked = (|| -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            tar::Archive::new(bytes.as_slice()).unpack(&tmp)?;
            read_only(&tmp)?;
            std::fs::rename(&tmp, &dir)
        })();
        unpacked.map_err(|e| fail(format!("unpacking into {}: {e}", dir.display())))?;
        Ok(dir)
    }
}

/// Files 0444 and directories 0555, below and at `path`.
fn read_only(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            read_only(&entry?.path())?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555))
    } else if meta.is_file() {
        // Executables stay executable.
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o555
        } else {
            0o444
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    } else {
        Ok(())
    }
}
