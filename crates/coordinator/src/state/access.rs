//! Who may call, and who did: API tokens and the audit log, as replicated records.
//!
//! A token is stored as the SHA-256 of its secret, never the secret: the state, its
//! snapshots and its log can be read without handing out a way in. A token is known by a
//! short id that is also the first part of the text the holder sends (`kiln_<id>_<secret>`),
//! so checking one is a map lookup and one constant-time comparison (in `auth/`).
//!
//! The audit log keeps the newest [`AUDIT_KEEP`] entries: every mutating call and every
//! refused call, with who made it, from where, and what came of it.

use std::collections::VecDeque;

use kiln_api::auth::Role;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{AccessChanged, Response};

/// How many audit entries the state keeps (the oldest go first).
pub const AUDIT_KEEP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Short, public, unique: the token's name in `kiln token list` and in its text.
    pub id: String,
    /// What the holder called it (`ci`, `alice`); the principal is `token/<name>`.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub created_ms: i64,
    pub created_by: String,
    #[serde(default)]
    pub expires_ms: Option<i64>,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

impl Token {
    /// Why this token may not be used at `now_ms`, if it may not.
    pub fn unusable(&self, now_ms: i64) -> Option<&'static str> {
        if self.revoked_ms.is_some() {
            Some("token revoked")
        } else if self.expires_ms.is_some_and(|at| now_ms >= at) {
            Some("token expired")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Numbered from 1 in the order the cluster recorded them.
    #[serde(default)]
    pub seq: u64,
    pub at_ms: i64,
    /// `client/alice`, `token/ci`, `agent/gpu-1`, or what an unauthenticated caller showed.
    pub principal: String,
    /// The gRPC method or HTTP route.
    pub call: String,
    /// What the call named (a run, a service, a token), where the handler said.
    #[serde(default)]
    pub target: String,
    /// `ok`, or the refusal or error.
    pub result: String,
    pub peer: String,
}

impl ClusterState {
    pub(super) fn create_token(&mut self, token: &Token) -> Response {
        if self.tokens.contains_key(&token.id) {
            return Response::rejected(format!("token id {:?} exists", token.id));
        }
        self.tokens.insert(token.id.clone(), token.clone());
        AccessChanged.into()
    }

    /// Revokes by id, or by name when no id matches (every live token of that name).
    pub(super) fn revoke_token(&mut self, id_or_name: &str, now_ms: i64) -> Response {
        let ids: Vec<String> = match self.tokens.get(id_or_name) {
            Some(_) => vec![id_or_name.to_string()],
            None => self
                .tokens
                .values()
                .filter(|t| t.name == id_or_name && t.revoked_ms.is_none())
                .map(|t| t.id.clone())
                .collect(),
        };
        if ids.is_empty() {
            return Response::rejected(format!("no token {id_or_name:?}"));
        }
        for id in ids {
            if let Some(t) = self.tokens.get_mut(&id) {
                t.revoked_ms.get_or_insert(now_ms);
            }
        }
        AccessChanged.into()
    }

    pub(super) fn record_audit(&mut self, entries: &[AuditEntry]) -> Response {
        for e in entries {
            self.audit_seq += 1;
            self.audit.push_back(AuditEntry {
                seq: self.audit_seq,
                ..e.clone()
            });
        }
        while self.audit.len() > AUDIT_KEEP {
            self.audit.pop_front();
        }
        AccessChanged.into()
    }
}

/// The audit log, oldest first.
pub type AuditLog = VecDeque<AuditEntry>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn token(id: &str, name: &str) -> Token {
        Token {
            id: id.into(),
            name: name.into(),
            role: Role::Read,
            hash: "00".into(),
            created_ms: 1,
            created_by: "client/admin".into(),
            expires_ms: Some(100),
            revoked_ms: None,
        }
    }

    #[test]
    fn tokens_expire_and_revoke_by_id_or_name() {
        let mut s = ClusterState::default();
        let t = token("a1", "ci");
        assert_eq!(
            s.apply(&Command::CreateToken { token: t.clone() }),
            AccessChanged.into()
        );
        assert!(matches!(
            s.apply(&Command::CreateToken { token: t }),
            Response::Rejected { .. }
        ));
        s.apply(&Command::CreateToken {
            token: token("b2", "ci"),
        });
        assert_eq!(s.tokens["a1"].unusable(99), None);
        assert_eq!(s.tokens["a1"].unusable(100), Some("token expired"));
        s.apply(&Command::RevokeToken {
            token: "ci".into(),
            now_ms: 50,
        });
        assert_eq!(s.tokens["a1"].unusable(60), Some("token revoked"));
        assert_eq!(s.tokens["b2"].revoked_ms, Some(50));
        assert!(matches!(
            s.apply(&Command::RevokeToken {
                token: "nobody".into(),
                now_ms: 50
            }),
            Response::Rejected { .. }
        ));
    }

    #[test]
    fn the_audit_log_is_numbered_and_bounded() {
        let mut s = ClusterState::default();
        let entry = AuditEntry {
            seq: 0,
            at_ms: 1,
            principal: "token/ci".into(),
            call: "/kiln.v1.Kiln/Deploy".into(),
            target: String::new(),
            result: "ok".into(),
            peer: "127.0.0.1:1".into(),
        };
        s.apply(&Command::RecordAudit {
            entries: vec![entry.clone(); AUDIT_KEEP + 5],
        });
        assert_eq!(s.audit.len(), AUDIT_KEEP);
        assert_eq!(s.audit.front().map(|e| e.seq), Some(6));
        assert_eq!(s.audit.back().map(|e| e.seq), Some(AUDIT_KEEP as u64 + 5));
    }
}
