//! Tokens and the audit log over the client API (role admin, see `auth/policy.rs`).

use kiln_api::auth::{Role, check_name};
use kiln_api::pb;

use crate::auth::{audit, tokens};
use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::access::Token;
use crate::state::{AccessChanged, Command};

/// The longest a token may live: a year (`--expires` is for shorter).
const MAX_EXPIRY_MS: i64 = 366 * 24 * 3600 * 1000;

fn view(t: &Token) -> pb::TokenView {
    pb::TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.to_string(),
        created_ms: t.created_ms,
        created_by: t.created_by.clone(),
        expires_ms: t.expires_ms.unwrap_or(0),
        revoked_ms: t.revoked_ms.unwrap_or(0),
    }
}

pub async fn create_token(
    core: &Core,
    req: pb::CreateTokenRequest,
    by: Option<String>,
) -> Result<pb::CreateTokenResponse> {
    core.ensure_leader()?;
    check_name(&req.name).map_err(|e| Error::InvalidInput(format!("name: {e}")))?;
    let role = Role::parse(&req.role).map_err(|e| Error::InvalidInput(format!("role: {e}")))?;
    if !(0..=MAX_EXPIRY_MS).contains(&req.expires_in_ms) {
        return Err(Error::InvalidInput(format!(
            "expires: {} ms is not between 0 (never) and a year",
            req.expires_in_ms
        )));
    }
    let new = tokens::generate();
    let now = now_ms();
    let token = Token {
        id: new.id,
        name: req.name,
        role,
        hash: new.hash,
        created_ms: now,
        created_by: by.unwrap_or_else(|| "anonymous".into()),
        expires_ms: (req.expires_in_ms > 0).then(|| now + req.expires_in_ms),
        revoked_ms: None,
    };
    let _: AccessChanged = core
        .write(Command::CreateToken {
            token: token.clone(),
        })
        .await?;
    Ok(pb::CreateTokenResponse {
        token: Some(view(&token)),
        secret: new.text,
    })
}

pub fn list_tokens(core: &Core) -> pb::ListTokensResponse {
    let state = core.state.read();
    pb::ListTokensResponse {
        tokens: state.tokens.values().map(view).collect(),
    }
}

pub async fn revoke_token(core: &Core, req: pb::RevokeTokenRequest) -> Result<()> {
    core.ensure_leader()?;
    let _: AccessChanged = core
        .write(Command::RevokeToken {
            token: req.token,
            now_ms: now_ms(),
        })
        .await?;
    Ok(())
}

pub fn list_audit(core: &Core, req: pb::ListAuditRequest) -> pb::AuditEntries {
    let state = core.state.read();
    let mut entries: Vec<pb::AuditEntry> = state
        .audit
        .iter()
        .filter(|e| e.at_ms >= req.since_ms)
        .map(audit::to_pb)
        .collect();
    if req.limit > 0 && entries.len() > req.limit as usize {
        entries.drain(..entries.len() - req.limit as usize);
    }
    pb::AuditEntries { entries }
}

/// A follower's entries, recorded by the leader.
pub async fn record_audit(core: &Core, req: pb::AuditEntries) -> Result<()> {
    core.ensure_leader()?;
    let entries = req.entries.into_iter().map(audit::from_pb).collect();
    let _: AccessChanged = core.write(Command::RecordAudit { entries }).await?;
    Ok(())
}
