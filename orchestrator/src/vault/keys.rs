//! Configured encryption keys, addressed by id so they can rotate.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::KeyInit;
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use zeroize::Zeroizing;

use super::VaultError;

/// Name of a configured key (`[A-Za-z0-9._-]{1,64}`); stored beside every record it sealed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Validates a key id.
    pub fn new(id: &str) -> Result<Self, VaultError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(VaultError::Config(format!(
                "invalid key id {id:?} (want [A-Za-z0-9._-]{{1,64}})"
            )))
        }
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The set of AES-256 keys a host may use, one of them active for new records.
pub struct Keyring {
    active: KeyId,
    active_cipher: Aes256Gcm,
    keys: BTreeMap<KeyId, Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key...]` (each key 32 bytes, standard base64), as read from the
    /// host's configuration, with `active` the id new records are sealed with.
    ///
    /// Errors name the offending key id but never echo key material.
    pub fn from_spec(spec: &str, active: &str) -> Result<Self, VaultError> {
        let mut keys = BTreeMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| VaultError::Config("each key must be written id:base64".into()))?;
            let id = KeyId::new(id.trim())?;
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| VaultError::Config(format!("key {id} is not valid base64")))?,
            );
            let key = Key::<Aes256Gcm>::try_from(raw.as_slice()).map_err(|_| {
                VaultError::Config(format!("key {id} must be 32 bytes, got {}", raw.len()))
            })?;
            if keys.insert(id.clone(), Aes256Gcm::new(&key)).is_some() {
                return Err(VaultError::Config(format!("key {id} is configured twice")));
            }
        }
        let active = KeyId::new(active)?;
        let Some(active_cipher) = keys.get(&active).cloned() else {
            return Err(VaultError::UnknownKey(active));
        };
        Ok(Self {
            active,
            active_cipher,
            keys,
        })
    }

    /// The active key id.
    pub fn active_id(&self) -> &KeyId {
        &self.active
    }

    pub(crate) fn active(&self) -> (&KeyId, &Aes256Gcm) {
        (&self.active, &self.active_cipher)
    }

    pub(crate) fn get(&self, id: &KeyId) -> Option<&Aes256Gcm> {
        self.keys.get(id)
    }
}
