//! Task output on the node's disk: `<data>/tasks/<run>/<stage>/<attempt>/output.log`, with
//! the task's work directory beside it. Logs never go through Raft; the coordinator asks for
//! them on demand and relays them (as Nomad does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_api::pb;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::Error;

#[derive(Debug, Clone)]
pub struct LogStore {
    root: PathBuf,
}

impl LogStore {
    pub fn open(data_dir: &Path) -> Result<LogStore, Error> {
        let root = data_dir.join("tasks");
        let io = |source| Error::Io {
            path: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        // Absolute, because work directories are bind-mounted into containers.
        let root = root.canonicalize().map_err(io)?;
        Ok(LogStore { root })
    }

    /// The agent's data directory (absolute), where the store lives.
    pub fn data_dir(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }

    /// The directory of one attempt; `None` for ids that could escape the store.
    pub fn attempt_dir(&self, task_id: &str, attempt: u32) -> Option<PathBuf> {
        let mut dir = self.root.clone();
        for part in task_id.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
                return None;
            }
            dir.push(part);
        }
        Some(dir.join(attempt.to_string()))
    }

    pub fn log_path(&self, task_id: &str, attempt: u32) -> Option<PathBuf> {
        self.attempt_dir(task_id, attempt)
            .map(|d| d.join("output.log"))
    }
}

/// Streams a log file as `LogData` messages. With `follow`, keeps reading until `done` turns
/// true and the file is read to its end.
pub async fn stream(
    path: PathBuf,
    request_id: u64,
    follow: bool,
    mut done: Option<watch::Receiver<bool>>,
    send: impl Fn(pb::LogData) -> bool,
) {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            send(pb::LogData {
                request_id,
                error: format!("no log: {e}"),
                ..Default::default()
            });
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                send(pb::LogData {
                    request_id,
                    error: format!("reading log: {e}"),
                    ..Default::default()
                });
                return;
            }
        };
        if n > 0 {
            if !send(pb::LogData {
                request_id,
                data: buf[..n].to_vec(),
                ..Default::default()
            }) {
                return;
            }
            continue;
        }
        // At the end of what is written so far.
        let finished = match &done {
            Some(rx) => *rx.borrow(),
            None => true,
        };
        if !follow || finished {
            send(pb::LogData {
                request_id,
                eof: true,
                ..Default::default()
            });
            return;
        }
        if let Some(rx) = done.as_mut() {
            // Wake when the task ends, or re-read after a short pause for new output.
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        } else {
            done = None;
        }
    }
}
