//! The request path. `GET /model/predict` (or `Host: model`, `GET /predict`) goes to a
//! replica of service `model` as `GET /predict`.
//!
//! Request bodies are read whole before forwarding (model requests are small), so that a
//! request whose connection to a replica failed can be sent to another one: only a failure
//! to connect is retried, where nothing was sent and nothing can have run twice. Answers
//! stream back as they come; the replica's in-flight count drops when the answer's body
//! has gone to the client. Keep-alive connections to replicas are pooled.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::table::{Backend, ServiceCounters, Table};

/// The largest request or response body the gateway carries.
pub const MAX_BODY: usize = 16 << 20;
/// How many connection failures a request may meet before it is answered 502.
const MAX_TRIES: usize = 3;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Serves on one single-threaded runtime per core, each accepting from the same listener
/// with a connection pool of its own (as nginx runs one event loop per worker): a request,
/// its replica connection and its answer never cross threads.
pub async fn serve(
    listener: TcpListener,
    table: Arc<Table>,
    hold: Duration,
    shutdown: CancellationToken,
) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "gateway listener unusable");
            return;
        }
    };
    let mut threads = Vec::new();
    for i in 0..workers {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "gateway listener unusable");
                break;
            }
        };
        let (table, shutdown) = (table.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("kiln-gateway-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => accept(l, table, hold, shutdown).await,
                            Err(e) => tracing::error!(error = %e, "gateway listener unusable"),
                        }
                    }),
                    Err(e) => tracing::error!(error = %e, "gateway worker runtime"),
                }
            });
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "gateway worker thread"),
        }
    }
    shutdown.cancelled().await;
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// One worker's accept loop.
async fn accept(
    listener: TcpListener,
    table: Arc<Table>,
    hold: Duration,
    shutdown: CancellationToken,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (table, client) = (table.clone(), client.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (table, client) = (table.clone(), client.clone());
                async move { Ok::<_, Infallible>(handle(req, &table, &client, hold).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

/// Counts one up while alive.
struct Count<'a>(&'a AtomicU32);

impl<'a> Count<'a> {
    fn up(n: &'a AtomicU32) -> Count<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Count(n)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight to a replica: counted on the replica and the service until the
/// response body has been sent (or dropped), and then counted as a finished request
/// unless it was [`abandoned`](InFlight::abandon) (never sent).
struct InFlight {
    backend: Arc<Backend>,
    service: Arc<ServiceCounters>,
    sent: bool,
}

impl InFlight {
    /// For a backend [`Table::pick`] returned, which counted the request on it already.
    fn picked(backend: Arc<Backend>, service: Arc<ServiceCounters>) -> InFlight {
        service.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend,
            service,
            sent: true,
        }
    }

    fn abandon(mut self) {
        self.sent = false;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.service.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.sent {
            self.service.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A replica's response body, streamed to the client, holding its [`InFlight`].
struct Tracked {
    body: Incoming,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn reply(status: StatusCode, text: String) -> Response<Body> {
    let body = Full::new(Bytes::from(text + "\n"))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// The service a request names (its counters and key), and the path to send on:
/// `/ENV/SERVICE/path`, `/SERVICE/path` (the default environment), or by `Host:` —
/// `SERVICE.ENV`, or `SERVICE` in the default environment — with the path as it is.
fn route<B>(table: &Table, req: &Request<B>) -> Option<(Arc<ServiceCounters>, String, String)> {
    let path = req.uri().path();
    let query = req.uri().query();
    let with_query = |p: &str| match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    // The path after its first `n` segments, always starting with '/'.
    let after = |n: usize| {
        let mut rest = path.trim_start_matches('/');
        for _ in 0..n {
            rest = rest.split_once('/').map_or("", |(_, r)| r);
        }
        with_query(&format!("/{rest}"))
    };
    let mut segments = path.trim_start_matches('/').split('/');
    let (first, second) = (segments.next().unwrap_or(""), segments.next());
    if let Some(second) = second.filter(|s| !s.is_empty())
        && let Some((key, counters)) = table.resolve(&format!("{first}/{second}"))
    {
        return Some((counters, key, after(2)));
    }
    if !first.is_empty()
        && let Some((key, counters)) = table.resolve(first)
    {
        return Some((counters, key, after(1)));
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = host.split(':').next().unwrap_or(host);
    let (key, counters) = table.resolve(host)?;
    Some((counters, key, with_query(path)))
}

async fn handle(
    req: Request<Incoming>,
    table: &Table,
    client: &HttpClient,
    hold: Duration,
) -> Response<Body> {
    let Some((counters, service, path)) = route(table, &req) else {
        let name = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        return reply(
            StatusCode::NOT_FOUND,
            format!("kiln gateway: no service {name:?}"),
        );
    };
    let (parts, body) = req.into_parts();
    // Read whole, so that a request can be offered to another replica.
    let body = if hyper::body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, format!("kiln gateway: {e}")),
        }
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let deadline = tokio::time::Instant::now() + hold;
    // Replicas whose connection failed, since the table last changed.
    let mut tried: Vec<u32> = Vec::new();
    let mut failures = 0usize;
    let mut changes: Option<tokio::sync::watch::Receiver<u64>> = None;
    loop {
        let Some(backend) = table.pick(&service, &tried) else {
            // Nothing serves (scaled to zero, starting), or every serving replica refused:
            // hold the request until the table changes, up to the hold timeout. Subscribe
            // first and pick once more, so that a change in between is not missed.
            let Some(rx) = changes.as_mut() else {
                changes = Some(table.subscribe());
                continue;
            };
            let _waiting = Count::up(&counters.waiting);
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return reply(StatusCode::SERVICE_UNAVAILABLE, "kiln gateway: shutting down".into());
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("kiln gateway: no replica of {service} became ready within {} ms", hold.as_millis()),
                    );
                }
            }
            tried.clear();
            continue;
        };
        // `pick` counted the request on the replica already, under the table's lock.
        let in_flight = InFlight::picked(backend.clone(), counters.clone());
        let Ok(uri) = format!("http://{}{path}", backend.address).parse::<hyper::Uri>() else {
            in_flight.abandon();
            return reply(StatusCode::BAD_REQUEST, "kiln gateway: bad path".into());
        };
        let mut out = Request::new(Full::new(body.clone()));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = headers.clone();
        match client.request(out).await {
            Ok(resp) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers.insert("x-kiln-replica", backend.label.clone());
                let body = Tracked {
                    body,
                    _in_flight: in_flight,
                };
                return Response::from_parts(head, body.boxed());
            }
            Err(e) => {
                in_flight.abandon();
                failures += 1;
                if e.is_connect() && failures < MAX_TRIES {
                    tracing::debug!(%service, slot = backend.slot, error = %e, "connect failed; trying another replica");
                    tried.push(backend.slot);
                    continue;
                }
                return reply(
                    StatusCode::BAD_GATEWAY,
                    format!("kiln gateway: replica {} of {service}: {e}", backend.slot),
                );
            }
        }
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let names: Vec<header::HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_api::pb;

    #[test]
    fn routes_by_first_segment_or_host() {
        let table = Table::default();
        table.update(&pb::EndpointTable {
            version: 1,
            services: vec![
                pb::ServiceEndpoints {
                    service: "model".into(),
                    endpoints: vec![],
                    environment: "production".into(),
                    default_environment: true,
                },
                pb::ServiceEndpoints {
                    service: "model".into(),
                    endpoints: vec![],
                    environment: "staging".into(),
                    default_environment: false,
                },
            ],
        });
        let at = |uri: &str, host: &str| {
            let req = Request::builder()
                .uri(uri)
                .header("host", host)
                .body(())
                .unwrap();
            route(&table, &req).map(|(_, s, p)| (s, p))
        };
        let want = |s: &str, p: &str| Some((s.to_string(), p.to_string()));
        let (prod, staging) = ("model.production", "model.staging");
        // The default environment by the bare name, as before environments.
        assert_eq!(
            at("/model/predict?x=1", "gw:80"),
            want(prod, "/predict?x=1")
        );
        assert_eq!(at("/model", "gw"), want(prod, "/"));
        assert_eq!(at("//model/a/b", "gw"), want(prod, "/a/b"));
        assert_eq!(at("/predict", "model:7480"), want(prod, "/predict"));
        // Any environment by /ENV/SERVICE/ or Host: SERVICE.ENV.
        assert_eq!(
            at("/staging/model/predict", "gw"),
            want(staging, "/predict")
        );
        assert_eq!(at("/production/model", "gw"), want(prod, "/"));
        assert_eq!(
            at("/predict", "model.staging:7480"),
            want(staging, "/predict")
        );
        assert_eq!(at("/other/x", "gw"), None);
        assert_eq!(at("/staging/other", "gw"), None);
    }
}
