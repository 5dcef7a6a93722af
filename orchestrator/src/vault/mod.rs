//! Credential encryption at rest.
//!
//! Captured provider credentials are sealed with AES-256-GCM before they reach the store: a fresh
//! random 96-bit nonce per record, and additional authenticated data binding the record to its user
//! id, provider and record version, so a ciphertext copied onto another user's row (or replayed as an
//! older version) fails to open instead of handing one user's tokens to another.
//!
//! Keys come from configuration as `id:base64` pairs; records remember the id of the key that sealed
//! them, so keys rotate by adding a new active key: old records still open, and
//! [`Vault::reseal`] moves a record to the active key on demand.
//!
//! Every envelope also records its [`Scheme`]. Today the only scheme is
//! [`Scheme::HostAes256Gcm`] (the host holds the key). The planned zero-knowledge mode, where the
//! host seals to a user's public key and cannot open the result, is another scheme value on the same
//! envelope and store columns: [`Vault::open`] then answers [`VaultError::NotOpenableHere`] and the
//! envelope travels to the VM, which opens it.

mod envelope;
mod keys;
mod plaintext;

pub use envelope::{Envelope, RecordContext, Scheme, NONCE_LEN};
pub use keys::{KeyId, Keyring};
pub use plaintext::CredentialPlaintext;

use aes_gcm::aead::{AeadInOut, Generate};
use aes_gcm::Nonce;
use zeroize::Zeroizing;

/// Why sealing or opening failed. Never carries plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The envelope names a key this vault was not configured with.
    #[error("no key with id {0} is configured")]
    UnknownKey(KeyId),
    /// Authentication failed: wrong key, a different user/provider/version, or a tampered record.
    #[error(
        "credential record does not open (wrong key, different user/provider/version, or tampered)"
    )]
    Authentication,
    /// The envelope uses a scheme this host cannot open (sealed for the user).
    #[error("credential record uses scheme {0}, which this host cannot open")]
    NotOpenableHere(Scheme),
    /// The envelope is malformed (bad nonce length or truncated ciphertext).
    #[error("malformed credential record: {0}")]
    Malformed(&'static str),
    /// The operating system's random source failed; nothing was sealed.
    #[error("random source failed")]
    Random,
    /// The key configuration is unusable.
    #[error("vault key configuration: {0}")]
    Config(String),
}

/// Seals and opens credential records with the configured keyring.
pub struct Vault {
    keys: Keyring,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("active_key", self.keys.active_id())
            .finish()
    }
}

impl Vault {
    /// A vault over `keys`; new records are sealed with the keyring's active key.
    pub fn new(keys: Keyring) -> Self {
        Self { keys }
    }

    /// The key id new records are sealed with.
    pub fn active_key(&self) -> &KeyId {
        self.keys.active_id()
    }

    /// Encrypts `plaintext` for the record named by `ctx` under the active key.
    pub fn seal(
        &self,
        ctx: &RecordContext<'_>,
        plaintext: &CredentialPlaintext,
    ) -> Result<Envelope, VaultError> {
        let (key_id, cipher) = self.keys.active();
        let nonce = Nonce::try_generate().map_err(|_| VaultError::Random)?;
        let mut buf = Vec::with_capacity(plaintext.expose().len() + envelope::TAG_LEN);
        buf.extend_from_slice(plaintext.expose());
        cipher
            .encrypt_in_place(&nonce, &ctx.aad(), &mut buf)
            .map_err(|_| VaultError::Malformed("plaintext too long"))?;
        Ok(Envelope {
            scheme: Scheme::HostAes256Gcm,
            key_id: key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    /// Decrypts `envelope`, which must have been sealed for exactly `ctx`.
    pub fn open(
        &self,
        ctx: &RecordContext<'_>,
        envelope: &Envelope,
    ) -> Result<CredentialPlaintext, VaultError> {
        if envelope.scheme != Scheme::HostAes256Gcm {
            return Err(VaultError::NotOpenableHere(envelope.scheme));
        }
        let cipher = self
            .keys
            .get(&envelope.key_id)
            .ok_or_else(|| VaultError::UnknownKey(envelope.key_id.clone()))?;
        let nonce = Nonce::try_from(envelope.nonce.as_slice())
            .map_err(|_| VaultError::Malformed("nonce length"))?;
        if envelope.ciphertext.len() < envelope::TAG_LEN {
            return Err(VaultError::Malformed("ciphertext shorter than its tag"));
        }
        let mut buf = Zeroizing::new(envelope.ciphertext.clone());
        cipher
            .decrypt_in_place(&nonce, &ctx.aad(), &mut *buf)
            .map_err(|_| VaultError::Authentication)?;
        Ok(CredentialPlaintext::from_zeroizing(buf))
    }

    /// Re-encrypts `envelope` under the active key (same context, fresh nonce). Returns `None` when
    /// it already uses the active key.
    pub fn reseal(
        &self,
        ctx: &RecordContext<'_>,
        envelope: &Envelope,
    ) -> Result<Option<Envelope>, VaultError> {
        if envelope.scheme == Scheme::HostAes256Gcm && &envelope.key_id == self.active_key() {
            return Ok(None);
        }
        let plaintext = self.open(ctx, envelope)?;
        self.seal(ctx, &plaintext).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Obviously fake keys: all-zero and all-one bytes.
    const KEY_A: &str = "a:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "b:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn vault(spec: &str, active: &str) -> Vault {
        Vault::new(Keyring::from_spec(spec, active).expect("keyring"))
    }

    fn creds() -> CredentialPlaintext {
        CredentialPlaintext::new(
            br#"{"tokens":{"access_token":"fake-access-token-0001"}}"#.to_vec(),
        )
    }

    fn ctx<'a>(user: &'a str, provider: &'a str, version: i64) -> RecordContext<'a> {
        RecordContext {
            user_id: user,
            provider,
            version,
        }
    }

    #[test]
    fn sealed_record_opens_only_for_its_user_provider_and_version() {
        let v = vault(KEY_A, "a");
        let sealed = v.seal(&ctx("alice", "codex", 1), &creds()).expect("seal");
        assert_eq!(
            v.open(&ctx("alice", "codex", 1), &sealed)
                .expect("open")
                .expose(),
            creds().expose()
        );
        for wrong in [
            ctx("bob", "codex", 1),
            ctx("alice", "claude_code", 1),
            ctx("alice", "codex", 2),
        ] {
            assert!(
                matches!(v.open(&wrong, &sealed), Err(VaultError::Authentication)),
                "{wrong:?}"
            );
        }
        // Length-prefixed fields: moving bytes between user and provider does not collide.
        let shifted = ctx("alicec", "odex", 1);
        assert!(matches!(
            v.open(&shifted, &sealed),
            Err(VaultError::Authentication)
        ));
    }

    #[test]
    fn ciphertext_hides_the_plaintext_and_nonces_are_fresh() {
        let v = vault(KEY_A, "a");
        let one = v.seal(&ctx("alice", "codex", 1), &creds()).expect("seal");
        let two = v.seal(&ctx("alice", "codex", 1), &creds()).expect("seal");
        assert_ne!(one.nonce, two.nonce);
        assert_ne!(one.ciphertext, two.ciphertext);
        let needle = b"fake-access-token-0001";
        assert!(!one.ciphertext.windows(needle.len()).any(|w| w == needle));
        assert_eq!(
            one.ciphertext.len(),
            creds().expose().len() + envelope::TAG_LEN
        );
    }

    #[test]
    fn tampering_is_detected() {
        let v = vault(KEY_A, "a");
        let mut sealed = v.seal(&ctx("alice", "codex", 1), &creds()).expect("seal");
        sealed.ciphertext[3] ^= 1;
        assert!(matches!(
            v.open(&ctx("alice", "codex", 1), &sealed),
            Err(VaultError::Authentication)
        ));
        sealed.ciphertext.truncate(4);
        assert!(matches!(
            v.open(&ctx("alice", "codex", 1), &sealed),
            Err(VaultError::Malformed(_))
        ));
        sealed.nonce.pop();
        assert!(matches!(
            v.open(&ctx("alice", "codex", 1), &sealed),
            Err(VaultError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_keeps_old_records_open_and_reseals_on_demand() {
        let old = vault(KEY_A, "a");
        let sealed = old.seal(&ctx("alice", "codex", 3), &creds()).expect("seal");
        let rotated = vault(&format!("{KEY_A},{KEY_B}"), "b");
        assert_eq!(
            rotated
                .open(&ctx("alice", "codex", 3), &sealed)
                .expect("open")
                .expose(),
            creds().expose()
        );
        let moved = rotated
            .reseal(&ctx("alice", "codex", 3), &sealed)
            .expect("reseal")
            .expect("changed");
        assert_eq!(moved.key_id.as_str(), "b");
        assert!(rotated
            .reseal(&ctx("alice", "codex", 3), &moved)
            .expect("reseal")
            .is_none());
        // Once key a is retired, only the resealed record opens.
        let only_b = vault(KEY_B, "b");
        assert!(matches!(
            only_b.open(&ctx("alice", "codex", 3), &sealed),
            Err(VaultError::UnknownKey(_))
        ));
        assert!(only_b.open(&ctx("alice", "codex", 3), &moved).is_ok());
    }

    #[test]
    fn an_envelope_sealed_for_the_user_is_not_opened_by_the_host() {
        let v = vault(KEY_A, "a");
        let mut sealed = v.seal(&ctx("alice", "codex", 1), &creds()).expect("seal");
        sealed.scheme = Scheme::UserSealed;
        assert!(matches!(
            v.open(&ctx("alice", "codex", 1), &sealed),
            Err(VaultError::NotOpenableHere(_))
        ));
    }

    #[test]
    fn secrets_never_print() {
        let p = creds();
        assert_eq!(format!("{p:?} {p}"), "[redacted] [redacted]");
        let v = vault(KEY_A, "a");
        assert!(!format!("{v:?}").contains("AAAA"));
        let err = Keyring::from_spec("a:not-base64!!", "a").expect_err("bad");
        assert!(!err.to_string().contains("not-base64"), "{err}");
    }
}
