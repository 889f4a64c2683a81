//! Getting audit entries into the replicated log without slowing the calls they describe.
//!
//! The auth layer drops each entry into a bounded queue and goes on. One task per
//! coordinator takes what has queued up and writes it as one `RecordAudit` command: itself
//! when it leads, else through the leader (`Kiln.RecordAudit`, coordinators only). A full
//! queue (a flood of refused calls) drops entries and says so in the log rather than let a
//! stranger fill memory.

use std::sync::Arc;
use std::time::Duration;

use kiln_api::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::state::access::AuditEntry;
use crate::state::{AccessChanged, Command};

/// Entries waiting to be written, at most.
const QUEUE: usize = 4096;
/// Entries in one command, at most.
const BATCH: usize = 256;

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEntry>,
}

impl AuditSink {
    pub fn new() -> (AuditSink, mpsc::Receiver<AuditEntry>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (AuditSink { tx }, rx)
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.tx.try_send(entry) {
            tracing::warn!(error = %e, "audit queue full: an entry was dropped");
        }
    }
}

/// Writes queued entries until shutdown.
pub async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<AuditEntry>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        for attempt in 1..=5 {
            match write(&core, &batch).await {
                Ok(()) => break,
                Err(e) if attempt == 5 => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit entries not recorded");
                }
                Err(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200 * attempt)) => {}
                    }
                }
            }
        }
    }
}

async fn write(core: &Core, entries: &[AuditEntry]) -> Result<()> {
    match core.ensure_leader() {
        Ok(()) => {
            core.write::<AccessChanged>(Command::RecordAudit {
                entries: entries.to_vec(),
            })
            .await?;
            Ok(())
        }
        Err(Error::NotLeader { leader: Some(addr) }) => {
            let channel = core.peers.channel(&addr).await?;
            pb::kiln_client::KilnClient::new(channel)
                .record_audit(pb::AuditEntries {
                    entries: entries.iter().map(to_pb).collect(),
                })
                .await
                .map_err(|s| Error::Unavailable(s.message().to_string()))?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub fn to_pb(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        at_ms: e.at_ms,
        principal: e.principal.clone(),
        call: e.call.clone(),
        target: e.target.clone(),
        result: e.result.clone(),
        peer: e.peer.clone(),
    }
}

pub fn from_pb(e: pb::AuditEntry) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_ms: e.at_ms,
        principal: e.principal,
        call: e.call,
        target: e.target,
        result: e.result,
        peer: e.peer,
    }
}
