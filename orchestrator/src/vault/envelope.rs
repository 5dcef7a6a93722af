//! What the store keeps: ciphertext plus what is needed to open it.

use std::fmt;
use std::str::FromStr;

use super::keys::KeyId;

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// How an envelope was sealed; stored as text so new schemes need no schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// AES-256-GCM under a host-held key from the configured keyring.
    HostAes256Gcm,
    /// Sealed to a key only the user (and their VM) holds; the host stores it but cannot open it.
    /// Reserved for the zero-knowledge mode: this build never produces it.
    UserSealed,
}

impl Scheme {
    /// Stable name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HostAes256Gcm => "host-aes256gcm-v1",
            Scheme::UserSealed => "user-sealed-v1",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = super::VaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host-aes256gcm-v1" => Ok(Scheme::HostAes256Gcm),
            "user-sealed-v1" => Ok(Scheme::UserSealed),
            _ => Err(super::VaultError::Malformed("unknown scheme")),
        }
    }
}

/// A sealed credential record. Holds no secret (ciphertext only), so it may be logged by length.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// How it was sealed.
    pub scheme: Scheme,
    /// Which configured key sealed it.
    pub key_id: KeyId,
    /// The per-record random nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the 16-byte authentication tag.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// The HPKE envelope a user-sealed record stores (its encapsulated key kept as the nonce), as
    /// the user's page receives it; `None` for a host-sealed record.
    pub fn user_sealed(&self) -> Option<protocol::sealed::Sealed> {
        (self.scheme == Scheme::UserSealed).then(|| protocol::sealed::Sealed {
            suite: protocol::sealed::SUITE.to_owned(),
            enc: self.nonce.clone(),
            ciphertext: self.ciphertext.clone(),
        })
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("scheme", &self.scheme)
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Which record an envelope belongs to; all of it is bound into the authentication tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordContext<'a> {
    /// The user owning the credential.
    pub user_id: &'a str,
    /// The provider (`claude_code`, `codex`, ...).
    pub provider: &'a str,
    /// The record version (bumped at every capture).
    pub version: i64,
}

impl RecordContext<'_> {
    /// Additional authenticated data: a domain label, then length-prefixed user id and provider,
    /// then the version, so no two distinct contexts encode alike.
    pub(crate) fn aad(&self) -> Vec<u8> {
        const LABEL: &[u8] = b"orchestrator.credential.v1\0";
        let mut aad =
            Vec::with_capacity(LABEL.len() + 16 + self.user_id.len() + self.provider.len());
        aad.extend_from_slice(LABEL);
        for field in [self.user_id, self.provider] {
            aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad
    }
}
