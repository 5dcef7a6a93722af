//! The decrypted credential: wiped from memory on drop, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// A provider credential file in the clear (as captured from, or pushed to, a VM).
///
/// The bytes are zeroed when the value is dropped; `Debug` and `Display` print `[redacted]`.
/// Deliberately not `Clone`, so copies of the secret are visible in review.
pub struct CredentialPlaintext(Zeroizing<Vec<u8>>);

impl CredentialPlaintext {
    /// Takes ownership of `bytes`; they are wiped when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// The bytes in the clear; the name makes every read visible in review.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CredentialPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for CredentialPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
