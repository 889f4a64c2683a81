//! Cluster secrets over the client API: set and remove (admin), list names (read). No call
//! answers a value; see `crate::secrets` for how they are kept.

use kiln_api::pb;
use kiln_api::validate::check_env_name;

use crate::core::{Core, now_ms};
use crate::error::{Error, Result};
use crate::state::secrets::Secret;
use crate::state::{AccessChanged, Command};

/// A value, at most (a certificate bundle or a service account key fits).
pub const MAX_VALUE_BYTES: usize = 64 << 10;

fn view(name: &str, s: &Secret) -> pb::SecretView {
    pb::SecretView {
        name: name.to_string(),
        updated_ms: s.updated_ms,
        updated_by: s.updated_by.clone(),
    }
}

pub async fn set(
    core: &Core,
    req: pb::SetSecretRequest,
    by: Option<String>,
) -> Result<pb::SecretView> {
    core.ensure_leader()?;
    check_env_name(&req.name).map_err(|e| Error::InvalidInput(format!("name: {e}")))?;
    if req.value.is_empty() || req.value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidInput(format!(
            "value: {} bytes; a secret holds 1 byte to {} KiB",
            req.value.len(),
            MAX_VALUE_BYTES >> 10
        )));
    }
    let secret = Secret {
        sealed: core.keyring.seal(&req.name, &req.value)?,
        updated_ms: now_ms(),
        updated_by: by.unwrap_or_else(|| "anonymous".into()),
    };
    let _: AccessChanged = core
        .write(Command::SetSecret {
            name: req.name.clone(),
            secret: secret.clone(),
        })
        .await?;
    Ok(view(&req.name, &secret))
}

pub fn list(core: &Core) -> pb::ListSecretsResponse {
    let state = core.state.read();
    pb::ListSecretsResponse {
        secrets: state.secrets.iter().map(|(n, s)| view(n, s)).collect(),
    }
}

pub async fn remove(core: &Core, req: pb::RemoveSecretRequest) -> Result<()> {
    core.ensure_leader()?;
    let _: AccessChanged = core.write(Command::RemoveSecret { name: req.name }).await?;
    Ok(())
}
