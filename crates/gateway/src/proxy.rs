//! The request path. `GET /model/predict` (or `Host: model`, `GET /predict`) goes to a
//! replica of service `model` as `GET /predict`.
//!
//! Bodies are read whole before forwarding (model requests and answers are small), so that
//! a request whose connection to a replica failed can be sent to another one: only a
//! failure to connect is retried, where nothing was sent and nothing can have run twice.
//! Keep-alive connections to replicas are pooled.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::table::Table;

/// The largest request or response body the gateway carries.
pub const MAX_BODY: usize = 16 << 20;
/// How many replicas a request is offered to when connections fail.
const MAX_TRIES: usize = 3;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn serve(
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

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")));
    *r.status_mut() = status;
    r
}

/// The service a request names, and the path to send on.
fn route(table: &Table, req: &Request<Incoming>) -> Option<(String, String)> {
    let path = req.uri().path();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let trimmed = path.trim_start_matches('/');
    let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if !first.is_empty() && table.knows(first) {
        return Some((first.to_string(), format!("/{rest}{query}")));
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = host.split(':').next().unwrap_or(host);
    table
        .knows(host)
        .then(|| (host.to_string(), format!("{path}{query}")))
}

async fn handle(
    req: Request<Incoming>,
    table: &Table,
    client: &HttpClient,
    hold: Duration,
) -> Response<Full<Bytes>> {
    let Some((service, path)) = route(table, &req) else {
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
    let Some(counters) = table.counters(&service) else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("kiln gateway: no service {service:?}"),
        );
    };
    let _in_flight = Count::up(&counters.in_flight);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, format!("kiln gateway: {e}")),
    };
    let deadline = tokio::time::Instant::now() + hold;
    let mut tried: Vec<u32> = Vec::new();
    let mut changes = table.subscribe();
    loop {
        let Some(backend) = table.pick(&service, &tried) else {
            // Nothing serves (scaled to zero, starting, or every replica refused): hold the
            // request until the table changes, up to the hold timeout.
            let _waiting = Count::up(&counters.waiting);
            tokio::select! {
                r = changes.changed() => if r.is_err() {
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
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(format!("http://{}{path}", backend.address));
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != header::HOST {
                out = out.header(name, value);
            }
        }
        let Ok(out) = out.body(Full::new(body.clone())) else {
            return reply(StatusCode::BAD_REQUEST, "kiln gateway: bad request".into());
        };
        let sent = {
            let _busy = Count::up(&backend.in_flight);
            match client.request(out).await {
                Ok(resp) => {
                    let (mut head, body) = resp.into_parts();
                    match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => {
                            strip_hop_by_hop(&mut head.headers);
                            if let Ok(v) = HeaderValue::from_str(&format!(
                                "{}/{}",
                                backend.revision, backend.slot
                            )) {
                                head.headers.insert("x-kiln-replica", v);
                            }
                            Ok(Response::from_parts(head, Full::new(b.to_bytes())))
                        }
                        Err(e) => Err((false, e.to_string())),
                    }
                }
                Err(e) => Err((e.is_connect(), e.to_string())),
            }
        };
        match sent {
            Ok(response) => {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                return response;
            }
            Err((true, e)) if tried.len() + 1 < MAX_TRIES => {
                tracing::debug!(%service, slot = backend.slot, error = %e, "connect failed; trying another replica");
                tried.push(backend.slot);
            }
            Err((_, e)) => {
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
