//! The cluster's secrets key, and sealing and opening secret values with it.
//!
//! A value is sealed with AES-256-GCM (ring) by the coordinator that takes it, before it is
//! proposed: the Raft log, the state and every snapshot hold only the nonce and the
//! ciphertext, bound to the secret's name (as associated data, so a ciphertext cannot be
//! moved to another name). Every coordinator holds the same key (`--secrets-key`, a file
//! `kiln tls init` writes beside the CA), so any leader can open a value when it hands a
//! task its secrets. Without a key, secrets cannot be set and tasks that ask for one are
//! given none.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::state::secrets::Sealed;

pub struct Keyring {
    key: Option<LessSafeKey>,
}

impl Keyring {
    /// No key: secrets cannot be set or opened.
    pub fn none() -> Keyring {
        Keyring { key: None }
    }

    /// Reads a key file: 32 bytes as 64 hex digits.
    pub fn load(path: &Path) -> Result<Keyring> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{}: a secrets key is 64 hex digits (kiln tls init writes one)",
                    path.display()
                ))
            })?;
        Ok(Keyring::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Keyring {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .ok()
            .map(LessSafeKey::new);
        Keyring { key }
    }

    fn key(&self) -> Result<&LessSafeKey> {
        self.key.as_ref().ok_or_else(|| {
            Error::Conflict(
                "this cluster has no secrets key: start the coordinators with --secrets-key FILE"
                    .into(),
            )
        })
    }

    pub fn seal(&self, name: &str, value: &str) -> Result<Sealed> {
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Internal("no randomness for a nonce".into()))?;
        let mut data = value.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut data,
        )
        .map_err(|_| Error::Internal("sealing a secret failed".into()))?;
        Ok(Sealed {
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(data),
        })
    }

    /// The value of a sealed secret, or `None` (no key, another key, or tampered with).
    pub fn open(&self, name: &str, sealed: &Sealed) -> Option<String> {
        let key = self.key.as_ref()?;
        let nonce: [u8; NONCE_LEN] = hex::decode(&sealed.nonce).ok()?.try_into().ok()?;
        let mut data = hex::decode(&sealed.ciphertext).ok()?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let ring = Keyring::from_bytes(&[7; 32]);
        let sealed = ring.seal("DB_PASSWORD", "hunter2").unwrap();
        assert!(!sealed.ciphertext.contains(&hex::encode("hunter2")));
        assert_eq!(
            ring.open("DB_PASSWORD", &sealed).as_deref(),
            Some("hunter2")
        );
        assert_eq!(ring.open("OTHER", &sealed), None, "bound to its name");
        assert_eq!(
            Keyring::from_bytes(&[8; 32]).open("DB_PASSWORD", &sealed),
            None
        );
        let again = ring.seal("DB_PASSWORD", "hunter2").unwrap();
        assert_ne!(again.nonce, sealed.nonce, "a fresh nonce every time");
        assert!(Keyring::none().seal("A", "b").is_err());
    }

    #[test]
    fn the_state_and_its_snapshots_hold_only_ciphertext() {
        use crate::state::{ClusterState, Command, secrets::Secret};
        let ring = Keyring::from_bytes(&[7; 32]);
        let mut state = ClusterState::default();
        let command = Command::SetSecret {
            name: "DB_PASSWORD".into(),
            secret: Secret {
                sealed: ring.seal("DB_PASSWORD", "hunter2-plain").unwrap(),
                updated_ms: 1,
                updated_by: "client/admin".into(),
            },
        };
        let entry = serde_json::to_string(&command).unwrap();
        state.apply(&command);
        // A snapshot is this serialisation of the state; a log entry, of the command.
        let snapshot = serde_json::to_string(&state).unwrap();
        for text in [entry, snapshot] {
            assert!(!text.contains("hunter2-plain"), "{text}");
        }
        let sealed = &state.secrets["DB_PASSWORD"].sealed;
        assert_eq!(
            ring.open("DB_PASSWORD", sealed).as_deref(),
            Some("hunter2-plain")
        );
    }
}
