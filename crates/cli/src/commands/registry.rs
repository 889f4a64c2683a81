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

/// Whether an image a deploy names in a registry (`host[:port]/repo[:tag|@digest]`) is there,
/// asked of the registry's API (`HEAD /v2/REPO/manifests/REF`) over plain HTTP, as the
/// cluster registries kiln runs speak. Only a registry's own "manifest unknown" refuses: one
/// this machine cannot ask may still be reached by the nodes, so the deploy goes on, saying
/// so. An image with no registry host (a local image, or Docker Hub's) is not asked about.
pub fn check_image(file: &str, image: &str) -> Result<(), CliError> {
    let (name, reference) = kiln_agent::docker::split_reference(image);
    let Some((host, repo)) = name.split_once('/') else {
        return Ok(());
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Ok(());
    }
    match manifest_status(host, repo, reference) {
        Ok(200) => Ok(()),
        Ok(404) => Err(CliError::Invalid(format!(
            "{file}: image: {image} is not in the registry {host} (manifest unknown)"
        ))),
        Ok(status) => {
            eprintln!(
                "kiln: the registry {host} answered {status} about {image}; deploying anyway"
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("kiln: cannot ask the registry {host} about {image} ({e}); deploying anyway");
            Ok(())
        }
    }
}

fn manifest_status(host: &str, repo: &str, reference: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or(std::io::ErrorKind::NotFound)?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
    write!(
        stream,
        "HEAD /v2/{repo}/manifests/{reference} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}
