//! Health checks of the service replicas this agent runs: an HTTP GET that must answer 2xx,
//! a TCP connect, or a command that must exit 0, every `interval`, each bounded by
//! `timeout`.
//!
//! Only changes are reported (healthy, unhealthy), as task events through the outbox, so
//! they reach the leader exactly as reliably as exits do. A replica that has not passed a
//! single check `startup` after it started is killed: a model that never finishes loading
//! is a failed replica, restarted with backoff by the leader. So is one whose checks, once
//! passing, keep failing for as long (a Kubernetes liveness probe's job).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// What the checker tells its runner.
pub enum Verdict {
    /// Health changed.
    Health(bool),
    /// No check passed within the startup deadline, or none since for as long: kill it.
    Failed(String),
}

/// Checks `addr` (the replica's `host:port`) until `done` turns true.
pub async fn watch(
    spec: pb::HealthSpec,
    addr: String,
    work: PathBuf,
    mut done: watch::Receiver<bool>,
    report: impl Fn(Verdict),
) {
    let started = Instant::now();
    let interval = Duration::from_millis(spec.interval_ms.max(10));
    let timeout = Duration::from_millis(spec.timeout_ms.max(10));
    let startup = Duration::from_millis(spec.startup_ms.max(1));
    let mut healthy: Option<bool> = None;
    let mut ever = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        let ok = tokio::time::timeout(timeout, check(&spec, &addr, &work))
            .await
            .unwrap_or(false);
        if *done.borrow() {
            return;
        }
        if healthy != Some(ok) && (ok || ever) {
            report(Verdict::Health(ok));
        }
        healthy = Some(ok);
        ever |= ok;
        if !ever && started.elapsed() >= startup {
            report(Verdict::Failed(format!(
                "no health check passed within the {} ms startup deadline",
                spec.startup_ms
            )));
            return;
        }
        failing_since = if ok {
            None
        } else {
            failing_since.or(Some(Instant::now()))
        };
        if ever && failing_since.is_some_and(|t| t.elapsed() >= startup) {
            report(Verdict::Failed(format!(
                "health checks failed for {} ms",
                spec.startup_ms
            )));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = done.changed() => return,
        }
    }
}

async fn check(spec: &pb::HealthSpec, addr: &str, work: &std::path::Path) -> bool {
    if !spec.http_path.is_empty() {
        http_ok(addr, &spec.http_path).await
    } else if !spec.exec.is_empty() {
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&spec.exec)
            .current_dir(work)
            .env("KILN_ENDPOINT", addr)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .is_ok_and(|s| s.success())
    } else {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    }
}

/// `GET path` over HTTP/1.1; true on a 2xx status line.
async fn http_ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    // "HTTP/1.1 200"
    read == head.len() && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_checks_want_a_2xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        assert!(http_ok(&addr, "/ready").await);
        assert!(!http_ok(&addr, "/ready").await);
        assert!(!http_ok("127.0.0.1:1", "/ready").await, "nothing listens");
    }
}
