//! Cluster secrets as the state holds them: sealed (see `crate::secrets`), never in clear.

use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::{AccessChanged, Response};

/// A value sealed with the cluster's secrets key: hex nonce and hex ciphertext (with tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub sealed: Sealed,
    pub updated_ms: i64,
    pub updated_by: String,
}

impl ClusterState {
    pub(super) fn set_secret(&mut self, name: &str, secret: &Secret) -> Response {
        self.secrets.insert(name.to_string(), secret.clone());
        AccessChanged.into()
    }

    pub(super) fn remove_secret(&mut self, name: &str) -> Response {
        if self.secrets.remove(name).is_none() {
            return Response::rejected(format!("no secret {name:?}"));
        }
        AccessChanged.into()
    }

    /// The secrets `names` asks for that are not set.
    pub fn missing_secrets<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| !self.secrets.contains_key(*n))
            .map(String::as_str)
            .collect()
    }
}
