//! The tower layer in front of every gRPC service: authenticate, authorise by [`policy`],
//! hand the [`Caller`] to the handler, and audit.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use kiln_api::auth::{Principal, Role};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::audit::AuditSink;
use super::policy::{self, Need, Who};
use super::{Caller, tokens};
use crate::core::now_ms;
use crate::raft::state_machine::SharedState;
use crate::state::access::AuditEntry;

/// Decides who a request comes from and whether it may be made.
pub struct Authenticator {
    /// Checks that the cluster CA issued a certificate and that it is valid now; `None`
    /// with `--insecure` (plaintext: nobody is authenticated, everything is allowed).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    state: Arc<SharedState>,
    audit: AuditSink,
}

/// Who is at the other end of an HTTPS connection (the HTTP port's own connection info).
#[derive(Debug, Clone)]
pub struct HttpPeer {
    pub addr: String,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A refused call: the status to answer and what to record.
struct Refusal {
    status: Status,
    principal: String,
}

impl Authenticator {
    pub fn new(
        verifier: Option<Arc<dyn ClientCertVerifier>>,
        state: Arc<SharedState>,
        audit: AuditSink,
    ) -> Authenticator {
        Authenticator {
            verifier,
            state,
            audit,
        }
    }

    fn peer<B>(req: &http::Request<B>) -> (String, Option<Arc<Vec<CertificateDer<'static>>>>) {
        let ext = req.extensions();
        if let Some(p) = ext.get::<HttpPeer>() {
            return (p.addr.clone(), p.certs.clone());
        }
        match ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            Some(tls) => (
                tls.get_ref()
                    .remote_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                tls.peer_certs(),
            ),
            None => (
                ext.get::<TcpConnectInfo>()
                    .and_then(|c| c.remote_addr())
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                None,
            ),
        }
    }

    /// The principal a verified certificate names.
    fn certificate(
        &self,
        verifier: &dyn ClientCertVerifier,
        certs: &[CertificateDer<'static>],
    ) -> Result<Principal, Refusal> {
        let Some((leaf, intermediates)) = certs.split_first() else {
            return Err(unauthenticated("anonymous", "no certificate"));
        };
        let claimed = kiln_api::pki::inspect(leaf)
            .ok()
            .and_then(|i| i.principal)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown certificate".into());
        if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return Err(unauthenticated(
                &format!("{claimed} (unverified)"),
                &format!("certificate refused: {}", describe(&e)),
            ));
        }
        kiln_api::pki::inspect(leaf)
            .ok()
            .and_then(|i| i.principal)
            .ok_or_else(|| {
                unauthenticated(
                    "unknown certificate",
                    "the certificate names no kiln principal (spiffe://kiln/ROLE/NAME)",
                )
            })
    }

    fn token(&self, text: &str) -> Result<(String, Role), Refusal> {
        let refuse = |why: &str| unauthenticated("token (unverified)", why);
        let (id, secret) = tokens::parse(text).ok_or_else(|| refuse("malformed token"))?;
        let state = self.state.read();
        let token = state
            .tokens
            .get(id)
            .ok_or_else(|| refuse("unknown token"))?;
        if !tokens::matches(token, secret) {
            return Err(refuse("unknown token"));
        }
        if let Some(why) = token.unusable(now_ms()) {
            return Err(unauthenticated(&format!("token/{}", token.name), why));
        }
        Ok((format!("token/{}", token.name), token.role))
    }

    /// Who sent `req`, and whether they may make it; `Ok(None)` without authentication.
    fn check<B>(&self, req: &http::Request<B>, peer: &str) -> Result<Option<Caller>, Refusal> {
        let Some(verifier) = self.verifier.as_deref() else {
            return Ok(None);
        };
        let (_, certs) = Self::peer(req);
        let path = req.uri().path();
        let rule = policy::rule(path);
        let cert = match certs.as_deref() {
            Some(certs) if !certs.is_empty() => Some(self.certificate(verifier, certs)?),
            _ => None,
        };
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let (who, principal) = match (bearer, cert) {
            (Some(text), _) => {
                let (name, role) = self.token(text)?;
                (
                    Who::Person {
                        name: name.clone(),
                        role,
                    },
                    name,
                )
            }
            (None, Some(p)) => {
                let name = p.to_string();
                let who = match p {
                    Principal::Coordinator(id) => Who::Coordinator(id),
                    Principal::Agent(n) => Who::Agent(n),
                    Principal::Gateway(n) => Who::Gateway(n),
                    Principal::Client(_) => Who::Person {
                        name: name.clone(),
                        role: Role::Admin,
                    },
                };
                (who, name)
            }
            (None, None) if rule.is_some_and(|r| r.need.public) => {
                return Ok(Some(Caller::new(
                    Who::Person {
                        name: "anonymous".into(),
                        role: Role::Read,
                    },
                    "anonymous".into(),
                    peer.into(),
                )));
            }
            (None, None) => {
                return Err(unauthenticated(
                    "anonymous",
                    "no client certificate or token (see `kiln tls issue` and `kiln token create`)",
                ));
            }
        };
        let Some(rule) = rule else {
            return Err(denied(
                &principal,
                &format!("no rule admits calls to {path}"),
            ));
        };
        if !rule.need.public && !rule.need.admits(&who) {
            return Err(denied(
                &principal,
                &format!(
                    "{principal} may not call {path}: it needs {}",
                    describe_need(&rule.need)
                ),
            ));
        }
        Ok(Some(Caller::new(who, principal, peer.into())))
    }

    /// For the HTTP port: who sent `req`, or the refusal as an HTTP answer (and an audit
    /// entry).
    pub fn check_http<B>(&self, req: &http::Request<B>) -> Result<(), (http::StatusCode, String)> {
        let (peer, _) = Self::peer(req);
        match self.check(req, &peer) {
            Ok(_) => Ok(()),
            Err(refusal) => {
                let refusal = self.refused(refusal, req.uri().path(), &peer);
                let status = match refusal.status.code() {
                    Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
                    _ => http::StatusCode::FORBIDDEN,
                };
                Err((status, format!("{}\n", refusal.status.message())))
            }
        }
    }

    /// Logs and audits a refusal; hands it back to be answered.
    fn refused(&self, refusal: Refusal, call: &str, peer: &str) -> Refusal {
        tracing::warn!(principal = %refusal.principal, %call, %peer, status = %refusal.status.message(), "call refused");
        self.record(
            refusal.principal.clone(),
            call,
            String::new(),
            format!(
                "refused: {:?}: {}",
                refusal.status.code(),
                refusal.status.message()
            ),
            peer,
        );
        refusal
    }

    fn record(&self, principal: String, call: &str, target: String, result: String, peer: &str) {
        self.audit.record(AuditEntry {
            seq: 0,
            at_ms: now_ms(),
            principal,
            call: call.to_string(),
            target,
            result,
            peer: peer.to_string(),
        });
    }
}

fn unauthenticated(principal: &str, why: &str) -> Refusal {
    Refusal {
        status: Status::unauthenticated(why.to_string()),
        principal: principal.to_string(),
    }
}

fn denied(principal: &str, why: &str) -> Refusal {
    Refusal {
        status: Status::permission_denied(why.to_string()),
        principal: principal.to_string(),
    }
}

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "it has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet".into()
        }
        // Another CA with the same name as this one's gives a bad signature, not an
        // unknown issuer: either way, not ours.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "it was not issued by this cluster's CA".into()
        }
        other => other.to_string(),
    }
}

fn describe_need(need: &Need) -> String {
    let mut who: Vec<String> = Vec::new();
    if need.coordinator {
        who.push("a coordinator certificate".into());
    }
    if need.agent {
        who.push("an agent certificate".into());
    }
    if need.gateway {
        who.push("a gateway certificate".into());
    }
    if let Some(role) = need.role {
        who.push(format!("the role {role} or above"));
    }
    if who.is_empty() {
        "nobody".into()
    } else {
        who.join(" or ")
    }
}

/// The result an answer gives, for the audit log: `ok`, or its status.
fn result_of(resp: &http::Response<Body>) -> Option<String> {
    let headers = resp.headers();
    if headers.contains_key(kiln_api::LEADER_METADATA_KEY) {
        // Not the leader: the caller asks it again there, where it is recorded.
        return None;
    }
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => Some("ok".into()),
        Some(code) => {
            let code = Code::from_bytes(code.as_bytes());
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(format!("{code:?}: {message}"))
        }
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let (peer, _) = Authenticator::peer(&req);
            let call = req.uri().path().to_string();
            let caller = match auth.check(&req, &peer) {
                Ok(caller) => caller,
                Err(refusal) => return Ok(auth.refused(refusal, &call, &peer).status.into_http()),
            };
            let mutates = policy::rule(&call).is_some_and(|r| r.mutates);
            if let Some(caller) = &caller {
                req.extensions_mut().insert(caller.clone());
            }
            let resp = inner.call(req).await?;
            if let (true, Some(caller)) = (mutates, caller)
                && let Some(result) = result_of(&resp)
            {
                auth.record(
                    caller.principal.clone(),
                    &call,
                    caller.target(),
                    result,
                    &peer,
                );
            }
            Ok(resp)
        })
    }
}
