//! The coordinator's side of TLS: its certificate, the cluster CA as the only root, and the
//! accept loop that bounds what an unauthenticated stranger can hold.
//!
//! The handshake asks every caller for a certificate but lets one without a certificate in:
//! a person may come with a token instead. A certificate that is offered must be signed with
//! the key it names (the handshake checks that); whether the cluster CA issued it is checked
//! per call in `layer.rs`, which can answer with a status and an audit entry.
//!
//! Before a caller is authenticated it can hold at most [`MAX_CONNECTIONS_PER_PEER`]
//! connections from one IP address, each of which must finish its handshake within
//! [`HANDSHAKE_TIMEOUT`]; tonic bounds the streams on one connection.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kiln_api::pki::TlsFiles;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::error::{Error, Result};

/// Connections one IP address may hold at once.
pub const MAX_CONNECTIONS_PER_PEER: usize = 512;
/// How long a new connection has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop allows a peer before it is authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_peer: usize,
    pub handshake: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_peer: MAX_CONNECTIONS_PER_PEER,
            handshake: HANDSHAKE_TIMEOUT,
        }
    }
}
/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// The coordinator's TLS: the server settings and the verifier the auth layer uses.
pub struct ServerTls {
    /// For gRPC (HTTP/2 only).
    pub acceptor: TlsAcceptor,
    /// For the HTTP port: HTTP/1.1 too (forges, Prometheus, curl).
    pub http_acceptor: TlsAcceptor,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

fn config_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {e}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> Result<ServerTls> {
        let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
            return Err(Error::InvalidInput(
                "a coordinator needs its certificate and key (--cert, --key)".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for ca in
            CertificateDer::pem_file_iter(&files.ca).map_err(|e| config_error(&files.ca, e))?
        {
            roots
                .add(ca.map_err(|e| config_error(&files.ca, e))?)
                .map_err(|e| config_error(&files.ca, e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| config_error(&files.ca, e))?;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| config_error(cert, e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| config_error(cert, e))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| config_error(key, e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_client_cert_verifier(Arc::new(Deferred {
                inner: verifier.clone(),
            }))
            .with_single_cert(chain, key_der)
            .map_err(|e| config_error(cert, e))?;
        let mut http = config.clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            http_acceptor: TlsAcceptor::from(Arc::new(http)),
            verifier,
        })
    }
}

/// Takes any certificate whose holder proves its key, leaving the question of who issued
/// it to the auth layer (see the module note).
#[derive(Debug)]
struct Deferred {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Live connections per IP address.
#[derive(Default, Clone)]
struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PeerCounts {
    fn enter(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its peer's count, given back when the connection closes.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A TCP connection that holds its peer's slot while it is open.
pub struct Conn {
    // Fields drop in order: the slot is given back before the socket closes, so a peer that
    // sees its connection end may open another at once.
    _slot: PeerSlot,
    stream: TcpStream,
}

impl Conn {
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The TLS connections of `listener`, through [`incoming`] with the default limits.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<tokio_rustls::server::TlsStream<Conn>>> {
    incoming(
        listener,
        Limits::default(),
        move |conn| {
            let acceptor = acceptor.clone();
            Box::pin(async move { acceptor.accept(conn).await })
        },
        stop,
    )
}

/// Accepts connections (within the per-peer cap) and hands them on: through the TLS
/// handshake (within its timeout) when `tls` is set.
pub fn incoming<T: Send + 'static>(
    listener: TcpListener,
    limits: Limits,
    handshake: impl Fn(Conn) -> futures::future::BoxFuture<'static, io::Result<T>>
    + Send
    + Sync
    + 'static,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<T>> {
    let (tx, rx) = mpsc::channel(64);
    let counts = PeerCounts::default();
    let handshake = Arc::new(handshake);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = counts.enter(addr.ip(), limits.per_peer) else {
                tracing::warn!(peer = %addr, "too many connections from one address; closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                _slot: slot,
                stream,
            };
            let (tx, handshake) = (tx.clone(), handshake.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake, handshake(conn)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    /// Reads until the server closes the connection (0 bytes), within `within`.
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_stranger_holds_few_connections_and_none_for_long_before_its_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            per_peer: 2,
            handshake: Duration::from_millis(300),
        };
        let stop = CancellationToken::new();
        // A handshake that never finishes: a peer that connects and says nothing.
        let mut conns = incoming(
            listener,
            limits,
            |conn: Conn| {
                Box::pin(async move {
                    let _held = conn;
                    std::future::pending::<io::Result<()>>().await
                })
            },
            stop.clone(),
        );
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        // Over the cap: closed at once, while the first two are still waiting.
        assert!(closed(&mut third, Duration::from_millis(200)).await);
        // Past the handshake timeout: both closed, and none was ever served.
        assert!(closed(&mut first, Duration::from_secs(5)).await);
        assert!(closed(&mut second, Duration::from_secs(5)).await);
        // Their slots were given back: a new connection is let in (and times out again).
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(!closed(&mut fourth, Duration::from_millis(100)).await);
        stop.cancel();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), conns.next())
                .await
                .map_or(true, |c| c.is_none()),
            "no connection got through"
        );
    }
}
