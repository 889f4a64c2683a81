//! Git webhooks, the pure part: which forge sent a delivery, whether it is genuine, and
//! what was pushed. [`read`] takes a request's headers, its raw body and the shared secret,
//! and returns a [`Delivery`] or a [`Reject`] (401 or 400). No I/O, no async, no clock: the
//! axum handler beside this file does the HTTP and decides what a push starts.
//!
//! # Order of work
//!
//! 1. **Which forge.** The event header names it. Gitea and Forgejo also send GitHub's
//!    headers (`X-GitHub-Event`, `X-Hub-Signature-256`), so `X-Gitea-Event` and
//!    `X-Forgejo-Event` are looked for first, then `X-Gitlab-Event`, then `X-GitHub-Event`.
//! 2. **Verify, before parsing.** An unverified body is never handed to serde_json: anyone
//!    can reach a webhook URL, and only the secret's holder gets to make us parse.
//! 3. **Parse** only the fields kiln uses into small structs that ignore the rest. A push's
//!    `ref` must be a full ref and `before`/`after` 40 lowercase hex; an error names the field
//!    (`"ref: missing"`, `"after: not a 40-hex commit id"`).
//!
//! # What each forge sends
//!
//! - **GitHub** ("Webhook events and payloads", "Validating webhook deliveries"):
//!   `X-GitHub-Event` (`push`, `ping`, ...), `X-GitHub-Delivery` (a GUID), and
//!   `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the raw body keyed by the secret.
//! - **GitLab** ("Webhook events"; the secret token under "Webhooks"): `X-Gitlab-Event`
//!   (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`, ...), `X-Gitlab-Event-UUID`, and
//!   `X-Gitlab-Token`: the secret itself, in plain. The token proves the sender knows the
//!   secret but does not bind the body; that is left to TLS.
//! - **Gitea** ("Webhooks") and **Forgejo**: `X-Gitea-Event` / `X-Forgejo-Event` (`push`, ...),
//!   `X-Gitea-Delivery` / `X-Forgejo-Delivery`, and `X-Gitea-Signature` /
//!   `X-Forgejo-Signature`: the HMAC-SHA256 of the body as bare hex, no `sha256=` prefix.
//!
//! # Constant time
//!
//! A signature is checked with `hmac::Mac::verify_slice`, which compares tags in constant
//! time. GitLab's token is compared as SHA-256 digests with `subtle::ConstantTimeEq`: the
//! digests have equal lengths, so neither the token's length nor its content shows in the
//! timing. An empty secret verifies nothing, since an HMAC keyed with nothing is a MAC
//! anyone can compute.
//!
//! # Not done here
//!
//! Replay protection (the delivery id is returned so the caller can drop repeats), mapping
//! a delivery to a project, and SHA-256 object-format repositories, whose 64-hex ids are
//! rejected as "not a 40-hex commit id".

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub use kiln_api::git::ZERO_COMMIT;

/// The forge that sent a delivery. Forgejo counts as Gitea: it sends Gitea's payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

impl Forge {
    /// The lowercase name used in logs, metrics labels and routes.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }
}

/// A verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub forge: Forge,
    /// The forge's delivery id: X-GitHub-Delivery, X-Gitea-Delivery, X-Gitlab-Event-UUID
    /// (None when absent).
    pub id: Option<String>,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// GitHub `ping` (sent when a webhook is created).
    Ping,
    Push(Push),
    /// A verified delivery of an event kiln does not act on (e.g. GitHub `issues`, GitLab
    /// `Merge Request Hook`), with its event name.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref: `refs/heads/main`, `refs/tags/v1`.
    pub git_ref: String,
    /// 40-hex commit ids; `before` is forty zeros for a new branch, `after` forty zeros for
    /// a deletion.
    pub before: String,
    pub after: String,
    /// The branch or tag was deleted (after is all zeros, or GitHub's `deleted: true`).
    pub deleted: bool,
    /// The head commit's author name and full message, when the payload carries them
    /// (GitHub `head_commit`, GitLab/Gitea: the entry of `commits` whose id == after, else the
    /// last one; Gitea's `head_commit` first when present).
    pub author: Option<String>,
    pub message: Option<String>,
}

/// Why a request is not a delivery. The message is safe to send back: it names a header or
/// a field, never the secret or the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// 401: signature/token missing or wrong. The String says which header, never the secret
    /// or the expected value.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: not a delivery kiln understands (no forge event header, body not JSON, a required
    /// field missing or of the wrong type, named: "ref: missing", "after: not a 40-hex commit
    /// id").
    #[error("{0}")]
    BadRequest(String),
}

/// The headers that name the event, in the order they are looked for: Gitea and Forgejo
/// also send `X-GitHub-Event`, so theirs must win.
const EVENT_HEADERS: [(&str, Forge); 4] = [
    ("X-Gitea-Event", Forge::Gitea),
    ("X-Forgejo-Event", Forge::Gitea),
    ("X-Gitlab-Event", Forge::GitLab),
    ("X-GitHub-Event", Forge::GitHub),
];

/// Recognises, verifies and (for a push) parses one delivery. `body` must be the raw bytes
/// as received: the signature covers them, not any re-encoding.
pub fn read(headers: &HeaderMap, body: &[u8], secret: &str) -> Result<Delivery, Reject> {
    let (forge, name) = detect(headers)?;
    verify(forge, headers, body, secret)?;
    let event = match (forge, name) {
        (Forge::GitHub, "ping") => Event::Ping,
        (Forge::GitHub | Forge::Gitea, "push") | (Forge::GitLab, "Push Hook" | "Tag Push Hook") => {
            Event::Push(parse_push(body)?)
        }
        _ => Event::Ignored(name.to_owned()),
    };
    Ok(Delivery {
        forge,
        id: delivery_id(forge, headers),
        event,
    })
}

/// The lowercase hex HMAC-SHA256 of `body` keyed by `secret`: Gitea's `X-Gitea-Signature`,
/// and GitHub's `X-Hub-Signature-256` after `sha256=`. For the tests, which sign their own
/// deliveries.
#[cfg(test)]
pub fn sign(secret: &str, body: &[u8]) -> String {
    match keyed_mac(secret, body) {
        Some(mac) => hex::encode(mac.finalize().into_bytes()),
        None => unreachable!("HMAC accepts keys of any length"),
    }
}

/// The forge and the event name, from the first event header present.
fn detect(headers: &HeaderMap) -> Result<(Forge, &str), Reject> {
    for (header, forge) in EVENT_HEADERS {
        if let Some(value) = headers.get(header) {
            let name = value
                .to_str()
                .map_err(|_| bad(format!("{header}: not visible ASCII")))?;
            return Ok((forge, name));
        }
    }
    Err(bad(
        "no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event header",
    ))
}

/// Checks the delivery's proof of the secret, in constant time.
fn verify(forge: Forge, headers: &HeaderMap, body: &[u8], secret: &str) -> Result<(), Reject> {
    if secret.is_empty() {
        return Err(Reject::Unauthorized(
            "no webhook secret is configured, so no delivery verifies".to_owned(),
        ));
    }
    match forge {
        Forge::GitHub => {
            let header = "X-Hub-Signature-256";
            let value = header_text(headers, header)?;
            let sig_hex = value
                .strip_prefix("sha256=")
                .ok_or_else(|| unauthorized(header, "not sha256=<hex>"))?;
            verify_mac(header, sig_hex, secret, body)
        }
        Forge::Gitea => {
            // Forgejo sends both names with the same value; older Forgejo only its own.
            let header = ["X-Gitea-Signature", "X-Forgejo-Signature"]
                .into_iter()
                .find(|h| headers.contains_key(*h))
                .unwrap_or("X-Gitea-Signature");
            let sig_hex = header_text(headers, header)?;
            verify_mac(header, sig_hex, secret, body)
        }
        Forge::GitLab => {
            let header = "X-Gitlab-Token";
            let token = headers
                .get(header)
                .ok_or_else(|| unauthorized(header, "missing"))?;
            // `ct_eq` on slices returns early when lengths differ; digests never do.
            let given = <Sha256 as sha2::Digest>::digest(token.as_bytes());
            let wanted = <Sha256 as sha2::Digest>::digest(secret.as_bytes());
            if bool::from(given.as_slice().ct_eq(wanted.as_slice())) {
                Ok(())
            } else {
                Err(unauthorized(header, "wrong token"))
            }
        }
    }
}

/// A signature header's value as text; absent or unreadable is unauthorized.
fn header_text<'a>(headers: &'a HeaderMap, header: &str) -> Result<&'a str, Reject> {
    let value = headers
        .get(header)
        .ok_or_else(|| unauthorized(header, "missing"))?;
    value.to_str().map_err(|_| unauthorized(header, "not hex"))
}

/// Checks a hex HMAC-SHA256 of `body` with `verify_slice` (constant time).
fn verify_mac(header: &str, hex_sig: &str, secret: &str, body: &[u8]) -> Result<(), Reject> {
    let sig = hex::decode(hex_sig).map_err(|_| unauthorized(header, "not hex"))?;
    let mac = keyed_mac(secret, body).ok_or_else(|| unauthorized(header, "cannot key the MAC"))?;
    mac.verify_slice(&sig)
        .map_err(|_| unauthorized(header, "does not match the body"))
}

/// An HMAC-SHA256 keyed by `secret` over `body`. HMAC takes any key length, so this is
/// always `Some`; the `Option` only spares callers a panic path.
fn keyed_mac(secret: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(body);
    Some(mac)
}

/// The forge's id for this delivery, if it sent one.
fn delivery_id(forge: Forge, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match forge {
        Forge::GitHub => &["X-GitHub-Delivery"],
        Forge::GitLab => &["X-Gitlab-Event-UUID"],
        Forge::Gitea => &["X-Gitea-Delivery", "X-Forgejo-Delivery"],
    };
    names
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::to_owned)
}

/// A push as all three forges send it; the rest of the payload is ignored. The required
/// strings are kept as raw JSON so a wrong type can be reported by field name.
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: Option<Value>,
    before: Option<Value>,
    after: Option<Value>,
    /// GitHub only.
    deleted: Option<bool>,
    /// GitHub and Gitea; GitHub sends null when a ref is deleted.
    head_commit: Option<Commit>,
    /// All three; the head commit's entry for GitLab.
    commits: Option<Vec<Commit>>,
}

#[derive(Deserialize)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    author: Option<Author>,
}

#[derive(Deserialize)]
struct Author {
    name: Option<String>,
}

fn parse_push(body: &[u8]) -> Result<Push, Reject> {
    let payload: PushPayload = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            bad(format!("payload: {e}"))
        } else {
            bad(format!("body is not JSON: {e}"))
        }
    })?;
    let git_ref = string("ref", payload.git_ref)?;
    if !git_ref.starts_with("refs/") {
        return Err(bad("ref: not a full ref (refs/...)"));
    }
    if !kiln_api::git::valid_ref(&git_ref) {
        return Err(bad(format!(
            "ref: not a valid ref name (at most {} bytes, git's rules)",
            kiln_api::git::MAX_REF_BYTES
        )));
    }
    let before = commit_id("before", payload.before)?;
    let after = commit_id("after", payload.after)?;
    let deleted = after == ZERO_COMMIT || payload.deleted == Some(true);
    let head = match payload.head_commit {
        Some(commit) => Some(commit),
        None => head_of(payload.commits.unwrap_or_default(), &after),
    };
    let (author, message) = match head {
        Some(commit) => (commit.author.and_then(|a| a.name), commit.message),
        None => (None, None),
    };
    Ok(Push {
        git_ref,
        before,
        after,
        deleted,
        author,
        message,
    })
}

/// The entry of `commits` whose id is `after`, else the last one (GitLab lists oldest first).
fn head_of(mut commits: Vec<Commit>, after: &str) -> Option<Commit> {
    match commits.iter().position(|c| c.id.as_deref() == Some(after)) {
        Some(i) => Some(commits.swap_remove(i)),
        None => commits.pop(),
    }
}

/// A required string field.
fn string(field: &str, value: Option<Value>) -> Result<String, Reject> {
    match value {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(bad(format!("{field}: missing"))),
        Some(_) => Err(bad(format!("{field}: not a string"))),
    }
}

/// A required commit id: 40 lowercase hex, zeros allowed.
fn commit_id(field: &str, value: Option<Value>) -> Result<String, Reject> {
    let id = string(field, value)?;
    if id.len() == 40 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id)
    } else {
        Err(bad(format!("{field}: not a 40-hex commit id")))
    }
}

fn bad(message: impl Into<String>) -> Reject {
    Reject::BadRequest(message.into())
}

fn unauthorized(header: &str, what: &str) -> Reject {
    Reject::Unauthorized(format!("{header}: {what}"))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_PUSH: &str = include_str!("testdata/github-push.json");
    const GITHUB_PING: &str = include_str!("testdata/github-ping.json");
    const GITHUB_DELETE: &str = include_str!("testdata/github-delete.json");
    const GITLAB_PUSH: &str = include_str!("testdata/gitlab-push.json");
    const GITLAB_TAG_PUSH: &str = include_str!("testdata/gitlab-tag-push.json");
    const GITEA_PUSH: &str = include_str!("testdata/gitea-push.json");

    const GITHUB_ID: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    const GITLAB_ID: &str = "13792a34-cac6-4bda-95a8-c58e5aed4a2f";
    const GITEA_ID: &str = "f6266f16-1bf3-46a5-9ea4-602e06ead473";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.insert(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// A GitHub delivery of `body`, signed with `secret`.
    fn github_signed(event: &str, body: &str, secret: &str) -> Result<Delivery, Reject> {
        let signature = format!("sha256={}", sign(secret, body.as_bytes()));
        let map = headers(&[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", GITHUB_ID),
            ("X-Hub-Signature-256", signature.as_str()),
        ]);
        read(&map, body.as_bytes(), SECRET)
    }

    fn github(event: &str, body: &str) -> Result<Delivery, Reject> {
        github_signed(event, body, SECRET)
    }

    fn gitlab(event: &str, body: &str, token: &str) -> Result<Delivery, Reject> {
        let map = headers(&[
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Event-UUID", GITLAB_ID),
            ("X-Gitlab-Token", token),
        ]);
        read(&map, body.as_bytes(), SECRET)
    }

    /// Gitea's headers as it sends them, GitHub's copies included.
    fn gitea_headers(event: &str, signature: &str) -> HeaderMap {
        let github_signature = format!("sha256={signature}");
        headers(&[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", GITEA_ID),
            ("X-Hub-Signature-256", github_signature.as_str()),
            ("X-Gitea-Event", event),
            ("X-Gitea-Delivery", GITEA_ID),
            ("X-Gitea-Signature", signature),
        ])
    }

    /// `body` with its top-level object changed by `edit`.
    fn edited(body: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut value: Value = serde_json::from_str(body).unwrap();
        edit(value.as_object_mut().unwrap());
        value.to_string()
    }

    fn is_unauthorized(result: &Result<Delivery, Reject>) -> bool {
        matches!(result, Err(Reject::Unauthorized(_)))
    }

    #[test]
    fn sign_matches_githubs_documented_example() {
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn github_push_parses() {
        let expected = Delivery {
            forge: Forge::GitHub,
            id: Some(GITHUB_ID.to_owned()),
            event: Event::Push(Push {
                git_ref: "refs/heads/main".to_owned(),
                before: "7cea710f62cb9d71c3f545e815375058d590b7f1".to_owned(),
                after: "7dd52b69157ba70883ba3c139d6ffad9547a71f7".to_owned(),
                deleted: false,
                author: Some("Ada Lovelace".to_owned()),
                message: Some(
                    "Schedule a build on push\n\nThe coordinator now verifies GitHub deliveries \
                     and\nproposes a build for the pushed commit."
                        .to_owned(),
                ),
            }),
        };
        assert_eq!(github("push", GITHUB_PUSH), Ok(expected));
    }

    #[test]
    fn github_deletion_is_a_deleted_push() {
        let expected = Event::Push(Push {
            git_ref: "refs/heads/feature/webhooks".to_owned(),
            before: "6960fee15b143db0ff1ee3e4ade6fb8a4cd7dda8".to_owned(),
            after: ZERO_COMMIT.to_owned(),
            deleted: true,
            author: None,
            message: None,
        });
        assert_eq!(github("push", GITHUB_DELETE).map(|d| d.event), Ok(expected));
    }

    #[test]
    fn github_ping_is_ping() {
        assert_eq!(
            github("ping", GITHUB_PING).map(|d| d.event),
            Ok(Event::Ping)
        );
    }

    #[test]
    fn github_other_event_is_ignored_unparsed() {
        let got = github("issues", "not json, and never parsed");
        assert_eq!(
            got.map(|d| d.event),
            Ok(Event::Ignored("issues".to_owned()))
        );
    }

    #[test]
    fn gitlab_push_parses() {
        let expected = Delivery {
            forge: Forge::GitLab,
            id: Some(GITLAB_ID.to_owned()),
            event: Event::Push(Push {
                git_ref: "refs/heads/main".to_owned(),
                before: "f49de81d68684cd98ce6506fb4a6be6590507834".to_owned(),
                after: "6c3bd43f199a9726419025c836310fe4b071af14".to_owned(),
                deleted: false,
                author: Some("Ada Lovelace".to_owned()),
                message: Some(
                    "Verify GitLab tokens in constant time\n\nCompare SHA-256 digests so a \
                     length mismatch\ndoes not leak through timing.\n"
                        .to_owned(),
                ),
            }),
        };
        assert_eq!(gitlab("Push Hook", GITLAB_PUSH, SECRET), Ok(expected));
    }

    #[test]
    fn gitlab_tag_push_parses() {
        let expected = Event::Push(Push {
            git_ref: "refs/tags/v0.3.0".to_owned(),
            before: ZERO_COMMIT.to_owned(),
            after: "2370c225288e9433a3722c1288720d22fb245962".to_owned(),
            deleted: false,
            author: None,
            message: None,
        });
        let got = gitlab("Tag Push Hook", GITLAB_TAG_PUSH, SECRET);
        assert_eq!(got.map(|d| d.event), Ok(expected));
    }

    #[test]
    fn gitlab_head_is_the_commit_whose_id_is_after_not_the_last() {
        let body = edited(GITLAB_PUSH, |p| {
            p.get_mut("commits")
                .unwrap()
                .as_array_mut()
                .unwrap()
                .reverse();
        });
        let got = gitlab("Push Hook", &body, SECRET).map(|d| match d.event {
            Event::Push(push) => push.author,
            other => panic!("not a push: {other:?}"),
        });
        assert_eq!(got, Ok(Some("Ada Lovelace".to_owned())));
    }

    #[test]
    fn gitlab_other_event_is_ignored() {
        let got = gitlab("Merge Request Hook", "{}", SECRET).map(|d| d.event);
        assert_eq!(got, Ok(Event::Ignored("Merge Request Hook".to_owned())));
    }

    #[test]
    fn gitlab_delivery_id_is_none_when_absent() {
        let map = headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", SECRET)]);
        let got = read(&map, GITLAB_PUSH.as_bytes(), SECRET).map(|d| d.id);
        assert_eq!(got, Ok(None));
    }

    #[test]
    fn gitea_push_parses() {
        let map = gitea_headers("push", &sign(SECRET, GITEA_PUSH.as_bytes()));
        let expected = Delivery {
            forge: Forge::Gitea,
            id: Some(GITEA_ID.to_owned()),
            event: Event::Push(Push {
                git_ref: "refs/heads/develop".to_owned(),
                before: "22d1847c89a1b613333612adb5ef09580cbc38d1".to_owned(),
                after: "229becdd558cabbade982ec9efbf980bc18709cc".to_owned(),
                deleted: false,
                author: Some("Margaret Hamilton".to_owned()),
                message: Some(
                    "Detect Forgejo deliveries\n\nForgejo sends X-Forgejo-Event next to the \
                     Gitea headers.\n"
                        .to_owned(),
                ),
            }),
        };
        assert_eq!(read(&map, GITEA_PUSH.as_bytes(), SECRET), Ok(expected));
    }

    #[test]
    fn gitea_wins_over_github_headers() {
        let map = gitea_headers("push", &sign(SECRET, GITEA_PUSH.as_bytes()));
        let got = read(&map, GITEA_PUSH.as_bytes(), SECRET).map(|d| d.forge);
        assert_eq!(got, Ok(Forge::Gitea));
    }

    #[test]
    fn forgejo_headers_alone_are_gitea() {
        let signature = sign(SECRET, GITEA_PUSH.as_bytes());
        let map = headers(&[
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Delivery", GITEA_ID),
            ("X-Forgejo-Signature", signature.as_str()),
        ]);
        let got = read(&map, GITEA_PUSH.as_bytes(), SECRET).map(|d| (d.forge, d.id));
        assert_eq!(got, Ok((Forge::Gitea, Some(GITEA_ID.to_owned()))));
    }

    #[test]
    fn github_wrong_signature_is_unauthorized() {
        assert!(is_unauthorized(&github_signed(
            "push",
            GITHUB_PUSH,
            "another secret"
        )));
    }

    #[test]
    fn github_unverified_body_is_never_parsed() {
        assert!(is_unauthorized(&github_signed(
            "push",
            "not json",
            "another secret"
        )));
    }

    #[test]
    fn github_missing_signature_is_unauthorized() {
        let map = headers(&[("X-GitHub-Event", "push")]);
        let got = read(&map, GITHUB_PUSH.as_bytes(), SECRET);
        assert_eq!(
            got,
            Err(Reject::Unauthorized(
                "X-Hub-Signature-256: missing".to_owned()
            ))
        );
    }

    #[test]
    fn github_signature_without_prefix_is_unauthorized() {
        let signature = sign(SECRET, GITHUB_PUSH.as_bytes());
        let map = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", signature.as_str()),
        ]);
        assert!(is_unauthorized(&read(&map, GITHUB_PUSH.as_bytes(), SECRET)));
    }

    #[test]
    fn gitlab_wrong_token_is_unauthorized() {
        assert!(is_unauthorized(&gitlab(
            "Push Hook",
            GITLAB_PUSH,
            "It's a Secret"
        )));
    }

    #[test]
    fn gitlab_missing_token_is_unauthorized() {
        let map = headers(&[("X-Gitlab-Event", "Push Hook")]);
        let got = read(&map, GITLAB_PUSH.as_bytes(), SECRET);
        assert_eq!(
            got,
            Err(Reject::Unauthorized("X-Gitlab-Token: missing".to_owned()))
        );
    }

    #[test]
    fn gitea_wrong_signature_is_unauthorized() {
        let map = gitea_headers("push", &sign("another secret", GITEA_PUSH.as_bytes()));
        assert!(is_unauthorized(&read(&map, GITEA_PUSH.as_bytes(), SECRET)));
    }

    #[test]
    fn empty_secret_verifies_nothing() {
        let signature = format!("sha256={}", sign("", GITHUB_PUSH.as_bytes()));
        let map = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", signature.as_str()),
        ]);
        assert!(is_unauthorized(&read(&map, GITHUB_PUSH.as_bytes(), "")));
    }

    #[test]
    fn empty_gitlab_token_and_secret_verify_nothing() {
        let map = headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "")]);
        assert!(is_unauthorized(&read(&map, GITLAB_PUSH.as_bytes(), "")));
    }

    #[test]
    fn signed_body_that_is_not_json_is_bad_request() {
        let got = github("push", "ref=refs/heads/main");
        assert!(matches!(got, Err(Reject::BadRequest(m)) if m.starts_with("body is not JSON")));
    }

    #[test]
    fn missing_after_is_bad_request_naming_after() {
        let body = edited(GITHUB_PUSH, |p| {
            p.remove("after");
        });
        assert_eq!(
            github("push", &body),
            Err(Reject::BadRequest("after: missing".to_owned()))
        );
    }

    #[test]
    fn uppercase_after_is_not_a_commit_id() {
        let body = edited(GITHUB_PUSH, |p| {
            p.insert(
                "after".to_owned(),
                Value::from("7DD52B69157BA70883BA3C139D6FFAD9547A71F7"),
            );
        });
        let expected = Reject::BadRequest("after: not a 40-hex commit id".to_owned());
        assert_eq!(github("push", &body), Err(expected));
    }

    #[test]
    fn ref_of_wrong_type_is_bad_request_naming_ref() {
        let body = edited(GITHUB_PUSH, |p| {
            p.insert("ref".to_owned(), Value::from(7));
        });
        assert_eq!(
            github("push", &body),
            Err(Reject::BadRequest("ref: not a string".to_owned()))
        );
    }

    #[test]
    fn short_ref_is_bad_request() {
        let body = edited(GITHUB_PUSH, |p| {
            p.insert("ref".to_owned(), Value::from("main"));
        });
        let got = github("push", &body);
        assert!(matches!(got, Err(Reject::BadRequest(m)) if m.starts_with("ref:")));
    }

    #[test]
    fn no_event_header_is_bad_request() {
        let mut map = HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("application/json"));
        let expected = Reject::BadRequest(
            "no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event header".to_owned(),
        );
        assert_eq!(read(&map, GITHUB_PUSH.as_bytes(), SECRET), Err(expected));
    }

    #[test]
    fn forge_names() {
        let names = [Forge::GitHub, Forge::GitLab, Forge::Gitea].map(Forge::as_str);
        assert_eq!(names, ["github", "gitlab", "gitea"]);
    }
}
