//! Webhooks: `POST /hooks/REPOSITORY` on every coordinator's HTTP port.
//!
//! A delivery is answered within a second, and only after what it says is recorded through
//! Raft: the forge's 2xx then means the push survives the loss of the leader that took it
//! (the trigger loop starts it later, `controllers::triggers`). The order of work:
//!
//! 1. bodies larger than [`MAX_BODY`] are refused (413) before they are read in full;
//! 2. the repository is looked up (404), and the delivery verified with its secret before
//!    anything in it is parsed ([`forge`]: HMAC-SHA256 for GitHub and Gitea, the token for
//!    GitLab, compared in constant time) — a delivery that fails gets 401 and changes
//!    nothing;
//! 3. a push is recorded ([`Command::RecordPush`]): 202 with the push's number, and whether
//!    it is new (a redelivery, or a push the poll found first, is not); a ping answers 200,
//!    other events 202 "ignored", a branch deletion 200 and starts nothing.
//!
//! A coordinator that does not lead verifies the delivery too (it holds the same secrets),
//! then relays it, headers and raw body as they came, to the leader over gRPC
//! (`Kiln.DeliverWebhook`), and answers what the leader answered.
//!
//! Who may call: anyone who can reach the port; a delivery is trusted only for its
//! signature (or token), which only the repository's owner and kiln know.

pub mod forge;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use kiln_api::pb;
use serde_json::json;

use crate::core::{Core, now_ms};
use crate::state::{Command, PushRecorded, PushSource};
use forge::{Event, Reject};

/// The largest delivery taken (GitHub caps its payloads at 25 MB; a push's is kilobytes).
pub const MAX_BODY: usize = 5 << 20;
/// How long recording a delivery may take before the forge is told to try again.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer to the forge: a status and a small JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    fn new(status: StatusCode, body: serde_json::Value) -> Answer {
        Answer { status, body }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Answer {
        Answer::new(status, json!({ "error": message.into() }))
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> axum::response::Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// The axum handler.
pub async fn http(
    State(core): State<std::sync::Arc<Core>>,
    Path(repository): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if core.is_leader() {
        return receive(&core, &repository, &headers, &body).await;
    }
    // A follower holds the secrets too: what does not verify goes no further.
    if let Err(refused) = verify(&core, &repository, &headers, &body) {
        return refused;
    }
    relay(&core, repository, &headers, body).await
}

/// The delivery, verified with the repository's secret and parsed; or the answer that
/// refuses it.
fn verify(
    core: &Core,
    repository: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<forge::Delivery, Answer> {
    let secret = core
        .state
        .read()
        .repositories
        .get(repository)
        .map(|r| r.secret.clone());
    let Some(secret) = secret else {
        return Err(Answer::error(
            StatusCode::NOT_FOUND,
            format!("repository {repository:?} not found"),
        ));
    };
    forge::read(headers, body, &secret).map_err(|reject| match reject {
        Reject::Unauthorized(why) => {
            tracing::warn!(%repository, %why, "webhook refused");
            Answer::error(StatusCode::UNAUTHORIZED, why)
        }
        Reject::BadRequest(why) => Answer::error(StatusCode::BAD_REQUEST, why),
    })
}

/// Verifies a delivery for `repository` and records what it says. On the leader.
pub async fn receive(core: &Core, repository: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    let delivery = match verify(core, repository, headers, body) {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    let push = match delivery.event {
        Event::Ping => return Answer::new(StatusCode::OK, json!({ "ok": "pong" })),
        Event::Ignored(event) => {
            return Answer::new(StatusCode::ACCEPTED, json!({ "ignored": event }));
        }
        Event::Push(push) => push,
    };
    let deleted = push.deleted;
    let command = Command::RecordPush {
        repository: repository.to_string(),
        git_ref: push.git_ref.clone(),
        before: push.before,
        after: if deleted {
            kiln_api::git::ZERO_COMMIT.to_string()
        } else {
            push.after
        },
        source: PushSource::Webhook {
            forge: delivery.forge.as_str().to_string(),
            delivery: delivery.id,
        },
        now_ms: now_ms(),
    };
    let recorded = tokio::time::timeout(RECORD_TIMEOUT, core.write::<PushRecorded>(command)).await;
    match recorded {
        Ok(Ok(_)) if deleted => Answer::new(
            StatusCode::OK,
            json!({ "deleted": push.git_ref, "note": "a deletion starts nothing" }),
        ),
        Ok(Ok(r)) => Answer::new(
            StatusCode::ACCEPTED,
            json!({ "push": r.push, "created": r.created }),
        ),
        Ok(Err(e)) => Answer::error(e.http_status(), e.to_string()),
        Err(_) => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery was not recorded in time; send it again",
        ),
    }
}

/// Hands a delivery that reached a follower to the leader.
async fn relay(core: &Core, repository: String, headers: &HeaderMap, body: Bytes) -> Answer {
    let leader = match core.ensure_leader() {
        Err(crate::error::Error::NotLeader { leader: Some(addr) }) => addr,
        _ => {
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "no leader is elected yet");
        }
    };
    let delivery = pb::WebhookDelivery {
        repository,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let call = async {
        let mut client = pb::kiln_client::KilnClient::new(
            core.peers
                .channel(&leader)
                .await
                .map_err(|e| e.to_string())?,
        )
        .max_decoding_message_size(MAX_BODY + (1 << 20))
        .max_encoding_message_size(MAX_BODY + (1 << 20));
        client
            .deliver_webhook(delivery)
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.message().to_string())
    };
    match tokio::time::timeout(RECORD_TIMEOUT, call).await {
        Ok(Ok(a)) => {
            let status = StatusCode::from_u16(a.status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = serde_json::from_str(&a.body).unwrap_or_else(|_| json!({ "error": a.body }));
            Answer::new(status, body)
        }
        Ok(Err(e)) => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("relaying to the leader at {leader}: {e}"),
        ),
        Err(_) => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader at {leader} did not answer in time; send it again"),
        ),
    }
}

/// `Kiln.DeliverWebhook`: a relayed delivery, answered as the HTTP port would.
pub async fn delivered(core: &Core, d: pb::WebhookDelivery) -> pb::WebhookAnswer {
    let answer = if core.is_leader() {
        let mut headers = HeaderMap::new();
        for (k, v) in &d.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                headers.insert(k, v);
            }
        }
        if d.body.len() > MAX_BODY {
            Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        } else {
            receive(core, &d.repository, &headers, &d.body).await
        }
    } else {
        Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leader; send it again",
        )
    };
    pb::WebhookAnswer {
        status: u32::from(answer.status.as_u16()),
        body: answer.body.to_string(),
    }
}
