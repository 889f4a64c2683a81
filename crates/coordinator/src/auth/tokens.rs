//! API token text: `kiln_<id>_<secret>`, made here, checked against a stored hash.
//!
//! The id (8 hex digits) is public and names the token in `kiln token list`; the secret (32
//! random bytes, hex) is shown once, to whoever created the token, and only its SHA-256 is
//! kept. Checking a token is a lookup by id and a constant-time comparison of hashes.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state::access::Token;

const PREFIX: &str = "kiln_";

/// A new token's id, secret, the text its holder sends, and the hash to store.
pub struct NewToken {
    pub id: String,
    pub text: String,
    pub hash: String,
}

pub fn generate() -> NewToken {
    let mut rng = rand::rng();
    let mut id = [0u8; 4];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewToken {
        text: format!("{PREFIX}{id}_{secret}"),
        hash: hash(&secret),
        id,
    }
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The id and secret of a token's text, if it has the shape of one.
pub fn parse(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 8 && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}

/// Whether `secret` is the one `token` was made with.
pub fn matches(token: &Token, secret: &str) -> bool {
    hash(secret).as_bytes().ct_eq(token.hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_api::auth::Role;

    #[test]
    fn a_token_matches_its_own_secret_only() {
        let new = generate();
        let (id, secret) = parse(&new.text).unwrap();
        assert_eq!(id, new.id);
        let stored = Token {
            id: new.id.clone(),
            name: "ci".into(),
            role: Role::Read,
            hash: new.hash.clone(),
            created_ms: 0,
            created_by: "client/admin".into(),
            expires_ms: None,
            revoked_ms: None,
        };
        assert!(matches(&stored, secret));
        assert!(!matches(&stored, "0".repeat(64).as_str()));
        assert!(!new.text.contains(&new.hash), "the hash is not the secret");
        for bad in ["", "kiln_", "kiln_abc_def", "bearer", "kiln_12345678_"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
