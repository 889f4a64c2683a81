//! A minimal HTTP/1.1 client and a steady load generator, for driving services through the
//! gateway: every request and its outcome is kept, so a test can count failures and see
//! which revision answered when.
//!
//! A coordinator's HTTP port speaks TLS: [`trust`] registers its address with the cluster's
//! CA, and requests to it go over rustls, checking the name `coordinator.kiln`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One answer: its status (0 when the connection failed) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub status: u16,
    pub body: String,
}

/// Sends one request (a new connection, `Connection: close`) and reads the answer.
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    request_to_host(addr, addr, method, path, body)
}

/// [`request`] with its own `Host:` header (a gateway routes `Host: SERVICE.ENV`).
pub fn request_to_host(addr: &str, host: &str, method: &str, path: &str, body: &str) -> Answer {
    request_with_headers(
        addr,
        method,
        path,
        &[("Host", host), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// The addresses that speak HTTPS, with the CA that signs their certificates.
static HTTPS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Requests to `addr` go over TLS, trusting the CA in `ca` (a coordinator's HTTP port).
pub fn trust(addr: &str, ca: &Path) {
    HTTPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(addr.to_string(), ca.to_path_buf());
}

fn tls_to(addr: &str, tcp: TcpStream) -> Result<Option<Box<dyn ReadWrite>>, String> {
    let ca = HTTPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(addr).cloned());
    let Some(ca) = ca else {
        return Ok(None);
    };
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        rustls_pki_types::ServerName::try_from("coordinator.kiln").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(Some(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Sends one request with exactly these headers, in this order, and reads the answer. It
/// adds `Host: ADDR` first unless `headers` hold a `Host`, and then `Content-Length` and
/// `Connection: close`; nothing else (no `Content-Type` unless given).
pub fn request_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let at = Instant::now();
    let fail = |e: String| Answer {
        at,
        status: 0,
        body: e,
    };
    let tcp = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut stream: Box<dyn ReadWrite> = match tls_to(addr, tcp.try_clone().expect("socket")) {
        Ok(Some(tls)) => tls,
        Ok(None) => Box::new(tcp),
        Err(e) => return fail(e),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    head.push_str("Connection: close\r\n\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    if let Err(e) = stream.write_all(&req) {
        return fail(e.to_string());
    }
    let mut raw = Vec::new();
    // A TLS server may close without close_notify: what was read is the answer.
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return fail(e.to_string());
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Answer { at, status, body }
}

/// `threads` clients sending the same request back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Load {
    pub fn start(addr: &str, path: &str, body: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let (stop, answers) = (stop.clone(), answers.clone());
                let (addr, path, body) = (addr.to_string(), path.to_string(), body.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let a = request(&addr, "POST", &path, &body);
                        answers.lock().unwrap().push(a);
                    }
                })
            })
            .collect();
        Load {
            stop,
            handles,
            answers,
        }
    }

    /// Stops the clients and returns every answer, oldest first.
    pub fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        let mut all = std::mem::take(&mut *self.answers.lock().unwrap());
        all.sort_by_key(|a| a.at);
        all
    }
}
