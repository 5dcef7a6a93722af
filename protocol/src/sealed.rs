//! Credentials sealed to a public key: HPKE (RFC 9180) base mode with DHKEM(P-256, HKDF-SHA256),
//! HKDF-SHA256 and AES-256-GCM.
//!
//! Who holds the private keys: the **user** (their web page makes the key pair with WebCrypto and
//! never hands the private key to the host), and each **CLI VM's agent** (a key pair made at start,
//! kept in memory only). The browser VM's agent seals each captured credential to the user's key;
//! the page opens it and re-seals it to the CLI VM's key; the CLI VM's agent seals refreshed tokens
//! back to the user's key. The host only stores and relays [`Sealed`] envelopes.
//!
//! P-256 rather than X25519 because every browser's WebCrypto has ECDH P-256; the page's
//! implementation of the same suite is checked against the same RFC vectors as this one.
//!
//! Every envelope is bound to its user, provider and version through HPKE's `info` (see
//! [`SealContext::info`]), so an envelope moved to another user, provider or version does not open.

use std::fmt;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::messages::base64_bytes;

type Kem = DhP256HkdfSha256;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type HpkePublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// Name of the one suite this build seals with; an envelope naming another is refused.
pub const SUITE: &str = "hpke-base-p256-sha256-aes256gcm";

/// Length of an encoded public key (uncompressed SEC1 point, WebCrypto's `raw` format).
pub const PUBLIC_KEY_LEN: usize = 65;

/// Largest plaintext sealed or opened (the credential watch's size limit is far below it).
pub const MAX_PLAINTEXT: usize = 1024 * 1024;

/// Why sealing or opening failed. Never carries plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The public key is not a valid P-256 point in uncompressed form.
    #[error("not a P-256 public key (65-byte uncompressed point, base64)")]
    BadPublicKey,
    /// The envelope names a suite this build does not use.
    #[error("envelope suite {0:?} is not {SUITE}")]
    UnknownSuite(String),
    /// The envelope's encapsulated key or ciphertext is malformed or truncated.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Opening failed: another recipient's key, another user/provider/version, or tampered bytes.
    #[error("envelope does not open (wrong key, different user/provider/version, or tampered)")]
    Authentication,
    /// The plaintext is over [`MAX_PLAINTEXT`].
    #[error("credential too large to seal ({0} bytes)")]
    TooLarge(usize),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

/// A P-256 public key, as 65 uncompressed bytes; travels as base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    /// Checks that `bytes` is a point on P-256.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(SealError::BadPublicKey);
        }
        HpkePublicKey::from_bytes(bytes).map_err(|_| SealError::BadPublicKey)?;
        Ok(Self(bytes.to_vec()))
    }

    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// The encoded point.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A short, stable name for the key (hex of the first 8 bytes of its SHA-256): what a store
    /// records as the key an envelope was sealed to.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.0);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hpke(&self) -> Result<HpkePublicKey, SealError> {
        HpkePublicKey::from_bytes(&self.0).map_err(|_| SealError::BadPublicKey)
    }
}

impl TryFrom<String> for PublicKey {
    type Error = SealError;
    fn try_from(text: String) -> Result<Self, SealError> {
        Self::from_base64(&text)
    }
}

impl From<PublicKey> for String {
    fn from(key: PublicKey) -> String {
        key.to_base64()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A key pair whose private half never leaves the process that made it (a CLI VM's agent).
pub struct KeyPair {
    private: PrivateKey,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, SealError> {
        let mut ikm = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, ikm.as_mut())
            .map_err(|_| SealError::Random)?;
        Ok(Self::derive(ikm.as_ref()))
    }

    /// The key pair RFC 9180's `DeriveKeyPair` makes from `ikm` (tests and vectors).
    pub fn derive(ikm: &[u8]) -> Self {
        let (private, public) = Kem::derive_keypair(ikm);
        Self {
            private,
            public: PublicKey(public.to_bytes().to_vec()),
        }
    }

    /// The public half, to hand to whoever seals for this key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Opens `sealed`, which must have been sealed to this key for exactly `ctx`.
    pub fn open(
        &self,
        ctx: &SealContext<'_>,
        sealed: &Sealed,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SealError> {
        if sealed.suite != SUITE {
            return Err(SealError::UnknownSuite(sealed.suite.clone()));
        }
        if sealed.ciphertext.len() < 16 {
            return Err(SealError::Malformed("ciphertext shorter than its tag"));
        }
        if sealed.ciphertext.len() > MAX_PLAINTEXT + 16 {
            return Err(SealError::TooLarge(sealed.ciphertext.len()));
        }
        let enc = EncappedKey::from_bytes(&sealed.enc)
            .map_err(|_| SealError::Malformed("encapsulated key"))?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.private,
            &enc,
            &ctx.info(),
            &sealed.ciphertext,
            &[],
        )
        .map(zeroize::Zeroizing::new)
        .map_err(|_| SealError::Authentication)
    }
}

/// What an envelope is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// The user owning the credential.
    pub user: &'a str,
    /// The provider (`claude_code`, `codex`, `gemini_cli`).
    pub provider: &'a str,
    /// The credential's version (goes up with every capture and refresh).
    pub version: i64,
}

impl SealContext<'_> {
    /// HPKE `info`: a domain label, then length-prefixed (u32, big-endian) user and provider, then
    /// the version (i64, big-endian), so no two contexts encode alike. The page builds the same
    /// bytes.
    pub fn info(&self) -> Vec<u8> {
        const LABEL: &[u8] = b"vm-agent.credential.v1\0";
        let mut info = Vec::with_capacity(LABEL.len() + 16 + self.user.len() + self.provider.len());
        info.extend_from_slice(LABEL);
        for field in [self.user, self.provider] {
            info.extend_from_slice(&(field.len() as u32).to_be_bytes());
            info.extend_from_slice(field.as_bytes());
        }
        info.extend_from_slice(&self.version.to_be_bytes());
        info
    }
}

/// An HPKE envelope: the encapsulated key and the ciphertext (with its tag). Holds no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Always [`SUITE`].
    pub suite: String,
    /// The sender's encapsulated key (65 bytes).
    #[serde(with = "base64_bytes")]
    pub enc: Vec<u8>,
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("suite", &self.suite)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Seals `plaintext` to `recipient` for exactly `ctx`.
pub fn seal(
    recipient: &PublicKey,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    // `UnwrapErr` panics if the operating system's random source fails mid-seal: no envelope is
    // ever made with a weak ephemeral key.
    let mut rng = rand_core::UnwrapErr(rand_core::OsRng);
    seal_with_rng(recipient, ctx, plaintext, &mut rng)
}

fn seal_with_rng<R: rand_core::CryptoRng + rand_core::RngCore>(
    recipient: &PublicKey,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Sealed, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &recipient.hpke()?,
        &ctx.info(),
        plaintext,
        &[],
        rng,
    )
    .map_err(|_| SealError::Random)?;
    Ok(Sealed {
        suite: SUITE.to_owned(),
        enc: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

#[cfg(test)]
mod tests;
