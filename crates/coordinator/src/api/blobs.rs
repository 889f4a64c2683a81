//! `kiln.v1.Blobs`: build contexts, model artifacts and published artifacts by digest, for
//! agents (`FetchBlob`; `PutBlob` with `kiln-blob-publish` to publish) and between
//! coordinators (`PutBlob`, and `FetchBlob` with `kiln-blob-local-only`).
//!
//! Durability without Raft: [`replicate`] runs before a submission's digest is proposed and
//! returns only once a majority of the voters (this one included) hold the bytes, so a
//! context named by an acknowledged run survives the loss of any minority of coordinators,
//! like the run itself (DESIGN contract 1). A coordinator asked for a blob it lacks (it was
//! down during the upload) fetches it from its peers, checks the digest, and keeps it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kiln_api::pb::{self, blobs_client::BlobsClient, blobs_server::Blobs};
use kiln_api::spec::limits::MAX_CONTEXT_BYTES;
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::{BlobStore, digest_of};
use crate::core::Core;
use crate::error::Error;

/// Metadata on a `FetchBlob` between coordinators: answer from this disk, ask no peer.
const LOCAL_ONLY: &str = "kiln-blob-local-only";

/// Blobs travel in chunks of this size, well under gRPC's default 4 MiB message limit.
const CHUNK: usize = 1 << 20;
/// How long pushing a blob to one peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

pub struct BlobService {
    pub core: Arc<Core>,
    pub blobs: BlobStore,
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Blobs for BlobService {
    type FetchBlobStream = BlobStream;

    async fn fetch_blob(
        &self,
        req: Request<pb::FetchBlobRequest>,
    ) -> Result<Response<BlobStream>, Status> {
        let local_only = req.metadata().contains_key(LOCAL_ONLY);
        let digest = req.into_inner().digest;
        let bytes = if local_only {
            match self.blobs.get(&digest)? {
                Some(path) => read_local(&path).await?,
                None => return Err(Error::NotFound(format!("blob {digest} not found")).into()),
            }
        } else {
            read_anywhere(&self.core, &self.blobs, &digest).await?
        };
        let chunks: Vec<Result<pb::BlobChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|c| {
                Ok(pb::BlobChunk {
                    data: c.to_vec(),
                    digest: String::new(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn put_blob(
        &self,
        req: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        // An agent publishing an artifact: only the leader takes it, and answers once a
        // majority holds it (a peer's copy is just stored).
        let publish = req.metadata().contains_key(kiln_api::PUBLISH_METADATA_KEY);
        if publish {
            self.core.ensure_leader()?;
        }
        let mut stream = req.into_inner();
        let mut digest = String::new();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if digest.is_empty() {
                digest = chunk.digest;
            }
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() > MAX_CONTEXT_BYTES {
                return Err(
                    Error::InvalidInput("blob larger than a build context may be".into()).into(),
                );
            }
        }
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(
                Error::InvalidInput(format!("blob named {digest:?} has digest {actual}")).into(),
            );
        }
        self.blobs.put(&bytes)?;
        if publish {
            replicate(&self.core, &digest, &bytes).await?;
        }
        Ok(Response::new(pb::PutBlobResponse { digest }))
    }
}

async fn read_local(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    tokio::fs::read(path)
        .await
        .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))
}

/// A blob's bytes: from this coordinator's store, or else from a peer's (then kept here).
pub async fn read_anywhere(core: &Core, blobs: &BlobStore, digest: &str) -> Result<Vec<u8>, Error> {
    match blobs.get(digest)? {
        Some(path) => read_local(&path).await,
        None => fetch_from_peers(core, blobs, digest).await,
    }
}

async fn fetch_from_peers(core: &Core, blobs: &BlobStore, digest: &str) -> Result<Vec<u8>, Error> {
    {
        for addr in peers(core, false) {
            match fetch_from(core, &addr, digest).await {
                Ok(bytes) if digest_of(&bytes) == digest => {
                    blobs.put(&bytes)?;
                    return Ok(bytes);
                }
                Ok(_) => {
                    tracing::warn!(%addr, %digest, "a peer sent a blob that does not match its digest")
                }
                Err(e) => {
                    tracing::debug!(%addr, %digest, error = %e, "blob not fetched from a peer")
                }
            }
        }
        Err(Error::NotFound(format!(
            "blob {digest} is on no reachable coordinator"
        )))
    }
}

/// Pushes a blob this coordinator holds to the other voters, and returns once a majority of
/// all voters (this one included) hold it.
pub async fn replicate(core: &Core, digest: &str, bytes: &[u8]) -> Result<(), Error> {
    let voters = voter_count(core);
    let need = voters / 2 + 1;
    let peers = peers(core, true);
    let pushes = peers.iter().map(|addr| async move {
        let r = tokio::time::timeout(PEER_TIMEOUT, put_to(core, addr, digest, bytes)).await;
        match r {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(%addr, %digest, error = %e, "blob not stored on a peer");
                false
            }
            Err(_) => {
                tracing::warn!(%addr, %digest, "timed out storing a blob on a peer");
                false
            }
        }
    });
    // Every peer gets its copy when it can; a majority is what the caller waits for.
    let held = 1 + futures::future::join_all(pushes)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    if held >= need {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the blob {digest} reached {held} of {voters} coordinators; a majority must hold it"
        )))
    }
}

fn voter_count(core: &Core) -> usize {
    core.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count()
        .max(1)
}

/// The gRPC addresses of the other members (only voters, if asked).
fn peers(core: &Core, voters_only: bool) -> Vec<String> {
    let metrics = core.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .filter(|(id, _)| **id != core.id && (!voters_only || voters.contains(id)))
        .map(|(_, n)| n.addr.clone())
        .collect()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn fetch_from(core: &Core, addr: &str, digest: &str) -> Result<Vec<u8>, BoxError> {
    let mut client = BlobsClient::new(core.peers.channel(addr).await?);
    let mut req = Request::new(pb::FetchBlobRequest {
        digest: digest.to_string(),
    });
    req.metadata_mut()
        .insert(LOCAL_ONLY, tonic::metadata::MetadataValue::from_static("1"));
    let mut stream = client.fetch_blob(req).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
        if bytes.len() > MAX_CONTEXT_BYTES {
            return Err("blob larger than a build context may be".into());
        }
    }
    Ok(bytes)
}

async fn put_to(core: &Core, addr: &str, digest: &str, bytes: &[u8]) -> Result<(), BoxError> {
    let mut client = BlobsClient::new(core.peers.channel(addr).await?);
    let chunks = kiln_api::artifact::put_chunks(digest, bytes);
    client.put_blob(futures::stream::iter(chunks)).await?;
    Ok(())
}
