//! The image registry `kiln dev` runs for its agent: Debian's `docker-registry` package
//! (the OCI distribution registry 2.8), started as a child process on 127.0.0.1 with its
//! storage under the dev data dir, and stopped with `kiln dev`. Docker lets loopback
//! registries speak plain HTTP by default, so no certificates are involved.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::CliError;

/// The registry program's name, as Debian installs it.
pub const PROGRAM: &str = "docker-registry";

pub struct LocalRegistry {
    /// `127.0.0.1:<port>`
    pub addr: String,
    _child: tokio::process::Child,
}

/// Where `docker-registry` is on `PATH`, if it is installed.
pub fn find_program() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(PROGRAM))
            .find(|p| p.is_file())
    })
}

/// Starts a registry with its storage in `dir`, and waits until it answers.
pub async fn start(program: &Path, dir: &Path) -> Result<LocalRegistry, CliError> {
    let fail = |e: String| CliError::Other(format!("starting the registry: {e}"));
    std::fs::create_dir_all(dir.join("storage")).map_err(|e| fail(e.to_string()))?;
    let dir = dir.canonicalize().map_err(|e| fail(e.to_string()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| fail(e.to_string()))?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        dir.join("storage").display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).map_err(|e| fail(e.to_string()))?;
    let log = std::fs::File::create(dir.join("registry.log")).map_err(|e| fail(e.to_string()))?;
    let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut child = tokio::process::Command::new(program)
        .arg("serve")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("{}: {e}", program.display())))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(&addr).await {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "{PROGRAM} exited with {status}; see {}",
                dir.join("registry.log").display()
            )));
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "{PROGRAM} did not answer on {addr} within 10s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(LocalRegistry {
        addr,
        _child: child,
    })
}

/// Does the registry at `addr` answer `GET /v2/` with 200?
pub async fn answers(addr: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
