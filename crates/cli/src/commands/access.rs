//! `kiln tls`, `kiln token` and `kiln audit`: the cluster's certificates, API tokens, and
//! who did what.

use std::path::Path;
use std::time::{Duration, SystemTime};

use kiln_api::auth::Principal;
use kiln_api::pb;
use kiln_api::pki;

use super::read::print_json;
use crate::client::Client;
use crate::error::CliError;
use crate::render::clock_ms;

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn expiry(text: Option<&str>, default: Duration) -> Result<Duration, CliError> {
    match text {
        None => Ok(default),
        Some(t) => kiln_api::units::parse_duration_ms(t)
            .map(Duration::from_millis)
            .map_err(|e| CliError::Invalid(format!("--expires: {e}"))),
    }
}

/// `kiln tls init DIR`: a new cluster CA.
pub fn init(dir: &Path, force: bool, json: bool) -> Result<(), CliError> {
    let ca = pki::init(dir, force).map_err(|e| CliError::Invalid(e.to_string()))?;
    let cert = pki::ca_cert_path(dir);
    if json {
        print_json(&serde_json::json!({
            "ca": cert.display().to_string(),
            "key": pki::ca_key_path(dir).display().to_string(),
            "expires_ms": ms_of(ca.not_after),
        }));
    } else {
        println!(
            "cluster CA {} (key {}, mode 0600), expires {}",
            cert.display(),
            pki::ca_key_path(dir).display(),
            clock_ms(ms_of(ca.not_after))
        );
    }
    Ok(())
}

/// `kiln tls issue ROLE NAME`: a certificate from the CA in `dir`.
pub fn issue(
    dir: &Path,
    role: &str,
    name: &str,
    expires: Option<&str>,
    force: bool,
    json: bool,
) -> Result<(), CliError> {
    let principal = Principal::new(role, name).map_err(CliError::Invalid)?;
    let valid_for = expiry(expires, pki::LEAF_VALIDITY)?;
    let (cert, key, issued) = pki::issue(dir, &principal, valid_for, dir, force)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    if json {
        print_json(&serde_json::json!({
            "principal": principal.uri(),
            "cert": cert.display().to_string(),
            "key": key.display().to_string(),
            "expires_ms": ms_of(issued.not_after),
        }));
    } else {
        println!(
            "{} for {}: {} (key {}), expires {}",
            role,
            principal.uri(),
            cert.display(),
            key.display(),
            clock_ms(ms_of(issued.not_after))
        );
    }
    Ok(())
}

fn token_json(t: &pb::TokenView) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_ms": t.created_ms,
        "created_by": t.created_by,
        "expires_ms": (t.expires_ms > 0).then_some(t.expires_ms),
        "revoked_ms": (t.revoked_ms > 0).then_some(t.revoked_ms),
    })
}

pub async fn create_token(
    client: &mut Client,
    name: String,
    role: String,
    expires: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let expires_in_ms = match expires.as_deref() {
        None => 0,
        Some(_) => expiry(expires.as_deref(), Duration::ZERO)?.as_millis() as i64,
    };
    let req = pb::CreateTokenRequest {
        name,
        role,
        expires_in_ms,
    };
    let created = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.create_token(req).await }
        })
        .await?;
    let view = created.token.unwrap_or_default();
    if json {
        let mut v = token_json(&view);
        v["secret"] = created.secret.into();
        print_json(&v);
    } else {
        // The secret alone on stdout, so that `TOKEN=$(kiln token create ...)` works.
        println!("{}", created.secret);
        eprintln!(
            "token {} ({}, role {}) expires {}: shown once, keep it safe",
            view.id,
            view.name,
            view.role,
            if view.expires_ms > 0 {
                clock_ms(view.expires_ms)
            } else {
                "never".into()
            }
        );
    }
    Ok(())
}

pub async fn list_tokens(client: &mut Client, json: bool) -> Result<(), CliError> {
    let list = client
        .call(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })
        .await?;
    if json {
        print_json(&list.tokens.iter().map(token_json).collect::<Vec<_>>());
        return Ok(());
    }
    println!(
        "{:<10} {:<16} {:<8} {:<20} {:<20} CREATED BY",
        "ID", "NAME", "ROLE", "EXPIRES", "REVOKED"
    );
    for t in &list.tokens {
        println!(
            "{:<10} {:<16} {:<8} {:<20} {:<20} {}",
            t.id,
            t.name,
            t.role,
            clock_ms(t.expires_ms),
            clock_ms(t.revoked_ms),
            t.created_by
        );
    }
    Ok(())
}

pub async fn revoke_token(client: &mut Client, token: String, json: bool) -> Result<(), CliError> {
    let req = pb::RevokeTokenRequest {
        token: token.clone(),
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.revoke_token(req).await }
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "revoked": token }));
    } else {
        println!("revoked {token}");
    }
    Ok(())
}

pub async fn audit(
    client: &mut Client,
    since: Option<String>,
    limit: u32,
    json: bool,
) -> Result<(), CliError> {
    let since_ms = match since {
        None => 0,
        Some(ago) => {
            let ago = kiln_api::units::parse_duration_ms(&ago)
                .map_err(|e| CliError::Invalid(format!("--since: {e}")))?;
            ms_of(SystemTime::now()) - ago as i64
        }
    };
    let req = pb::ListAuditRequest { since_ms, limit };
    let log = client
        .call(|mut c| async move { c.list_audit(req).await })
        .await?;
    if json {
        let entries: Vec<_> = log
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "principal": e.principal,
                    "call": e.call,
                    "target": e.target,
                    "result": e.result,
                    "peer": e.peer,
                })
            })
            .collect();
        print_json(&entries);
        return Ok(());
    }
    for e in &log.entries {
        println!(
            "{} {:<28} {:<36} {:<30} {} from {}",
            clock_ms(e.at_ms),
            e.principal,
            e.call.trim_start_matches("/kiln.v1."),
            e.target,
            e.result,
            e.peer
        );
    }
    Ok(())
}

/// `kiln secret set NAME`: the value from stdin (one trailing newline dropped, so that
/// `echo VALUE | kiln secret set NAME` stores VALUE).
pub async fn set_secret(client: &mut Client, name: String, json: bool) -> Result<(), CliError> {
    use std::io::Read;
    let mut value = String::new();
    std::io::stdin()
        .take(MAX_SECRET_READ)
        .read_to_string(&mut value)
        .map_err(|e| CliError::Invalid(format!("reading the value from stdin: {e}")))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    let req = pb::SetSecretRequest { name, value };
    let view = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.set_secret(req).await }
        })
        .await?;
    if json {
        print_json(&serde_json::json!({
            "name": view.name,
            "updated_ms": view.updated_ms,
            "updated_by": view.updated_by,
        }));
    } else {
        println!("secret {} set", view.name);
    }
    Ok(())
}

/// Read at most this much from stdin (the coordinator refuses more than 64 KiB anyway).
const MAX_SECRET_READ: u64 = 1 << 20;

pub async fn list_secrets(client: &mut Client, json: bool) -> Result<(), CliError> {
    let list = client
        .call(|mut c| async move { c.list_secrets(pb::ListSecretsRequest {}).await })
        .await?;
    if json {
        let all: Vec<_> = list
            .secrets
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "updated_ms": s.updated_ms,
                    "updated_by": s.updated_by,
                })
            })
            .collect();
        print_json(&all);
        return Ok(());
    }
    println!("{:<32} {:<20} UPDATED BY", "NAME", "UPDATED");
    for s in &list.secrets {
        println!(
            "{:<32} {:<20} {}",
            s.name,
            clock_ms(s.updated_ms),
            s.updated_by
        );
    }
    Ok(())
}

pub async fn remove_secret(client: &mut Client, name: String, json: bool) -> Result<(), CliError> {
    let req = pb::RemoveSecretRequest { name: name.clone() };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.remove_secret(req).await }
        })
        .await?;
    if json {
        print_json(&serde_json::json!({ "removed": name }));
    } else {
        println!("secret {name} removed");
    }
    Ok(())
}
