//! What a browser VM claims, checked before the host acts on it. The agent checked too, but the
//! guest may be compromised: a capture is stored only if it is the provider's file, at the
//! provider's path, of a credential's size (and, when the host can read it, of the provider's
//! shape).

use protocol::creds::{CapturedCredential, CredentialMeta, SealedCapture, MAX_CREDENTIAL_BYTES};
use protocol::sealed::PUBLIC_KEY_LEN;

use super::provider::ProviderLogin;

/// Scopes a stored credential may list, and the length of each.
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 256;

/// Why a capture was refused. Never carries the capture's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureRefused {
    /// Another provider's file.
    #[error("the login VM sent a {got} credential for a {want} login")]
    Provider {
        /// What it said.
        got: String,
        /// The session's provider.
        want: String,
    },
    /// Not at the provider's credential path.
    #[error("the login VM sent a credential from {got}, not from {want}")]
    Path {
        /// Where it said the file was.
        got: String,
        /// The provider's path in that VM.
        want: String,
    },
    /// Larger than any credential file.
    #[error("the login VM sent a {0}-byte credential; the limit is {MAX_CREDENTIAL_BYTES}")]
    TooLarge(usize),
    /// Not the provider's shape (not JSON, or a required field missing).
    #[error("the login VM sent a file that is not a complete {0} credential")]
    Shape(String),
    /// A sealed envelope that cannot be one (its encapsulated key is not a P-256 point's size).
    #[error("the login VM sent a malformed envelope")]
    Envelope,
    /// Metadata out of any credential's range.
    #[error("the login VM sent implausible metadata ({0})")]
    Meta(&'static str),
}

/// Checks a plain capture of `provider`'s file, expected at `path`.
pub(super) fn plain(
    provider: &ProviderLogin,
    path: &str,
    c: &CapturedCredential,
) -> Result<(), CaptureRefused> {
    common(provider, path, &c.provider, &c.path, c.content.len())?;
    let json: serde_json::Value = serde_json::from_slice(&c.content)
        .map_err(|_| CaptureRefused::Shape(provider.name.clone()))?;
    if !provider.credential.is_complete(&json) {
        return Err(CaptureRefused::Shape(provider.name.clone()));
    }
    Ok(())
}

/// Checks a capture sealed in the VM (its content cannot be read here: size, path and the
/// metadata in clear are what can be checked).
pub(super) fn sealed(
    provider: &ProviderLogin,
    path: &str,
    c: &SealedCapture,
) -> Result<(), CaptureRefused> {
    // The ciphertext carries a 16-byte tag.
    let len = c.sealed.ciphertext.len().saturating_sub(16);
    common(provider, path, &c.provider, &c.path, len)?;
    if c.sealed.enc.len() != PUBLIC_KEY_LEN {
        return Err(CaptureRefused::Envelope);
    }
    meta(&c.meta)
}

fn common(
    provider: &ProviderLogin,
    want_path: &str,
    got_provider: &str,
    got_path: &str,
    len: usize,
) -> Result<(), CaptureRefused> {
    if got_provider != provider.name {
        return Err(CaptureRefused::Provider {
            got: got_provider.chars().take(64).collect(),
            want: provider.name.clone(),
        });
    }
    if got_path != want_path {
        return Err(CaptureRefused::Path {
            got: got_path.chars().take(256).collect(),
            want: want_path.to_owned(),
        });
    }
    if len > MAX_CREDENTIAL_BYTES {
        return Err(CaptureRefused::TooLarge(len));
    }
    Ok(())
}

fn meta(m: &CredentialMeta) -> Result<(), CaptureRefused> {
    // Unix milliseconds of the year 3000: no credential expires later, or before 1970.
    const LATEST: i64 = 32_503_680_000_000;
    if m.expires_at_ms.is_some_and(|t| !(0..=LATEST).contains(&t)) {
        return Err(CaptureRefused::Meta("expiry"));
    }
    if m.scopes.len() > MAX_SCOPES || m.scopes.iter().any(|s| s.len() > MAX_SCOPE_LEN) {
        return Err(CaptureRefused::Meta("scopes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codex() -> ProviderLogin {
        ProviderLogin::builtin()
            .into_iter()
            .find(|p| p.name == "codex")
            .expect("codex")
    }

    fn capture(provider: &str, path: &str, content: &[u8]) -> CapturedCredential {
        CapturedCredential {
            provider: provider.into(),
            path: path.into(),
            content: content.to_vec(),
            sha256: String::new(),
            mtime_ms: 0,
        }
    }

    #[test]
    fn only_the_providers_file_of_its_shape_and_size_passes() {
        let p = codex();
        let path = "/root/.codex/auth.json";
        let good =
            br#"{"tokens":{"access_token":"fake-a","refresh_token":"fake-r","id_token":"fake-i"}}"#;
        assert_eq!(plain(&p, path, &capture("codex", path, good)), Ok(()));
        assert!(matches!(
            plain(&p, path, &capture("claude_code", path, good)),
            Err(CaptureRefused::Provider { .. })
        ));
        assert!(matches!(
            plain(
                &p,
                path,
                &capture("codex", "/root/.ssh/authorized_keys", good)
            ),
            Err(CaptureRefused::Path { .. })
        ));
        assert_eq!(
            plain(&p, path, &capture("codex", path, b"{\"tokens\":{}}")),
            Err(CaptureRefused::Shape("codex".into()))
        );
        assert_eq!(
            plain(&p, path, &capture("codex", path, b"not json")),
            Err(CaptureRefused::Shape("codex".into()))
        );
        let huge = vec![b' '; MAX_CREDENTIAL_BYTES + 1];
        assert_eq!(
            plain(&p, path, &capture("codex", path, &huge)),
            Err(CaptureRefused::TooLarge(MAX_CREDENTIAL_BYTES + 1))
        );
    }

    #[test]
    fn implausible_metadata_is_refused() {
        let ok = CredentialMeta {
            expires_at_ms: Some(1_900_000_000_000),
            scopes: vec!["user:inference".into()],
        };
        assert_eq!(meta(&ok), Ok(()));
        let far = CredentialMeta {
            expires_at_ms: Some(i64::MAX),
            ..ok.clone()
        };
        assert_eq!(meta(&far), Err(CaptureRefused::Meta("expiry")));
        let many = CredentialMeta {
            scopes: vec!["s".into(); MAX_SCOPES + 1],
            ..ok
        };
        assert_eq!(meta(&many), Err(CaptureRefused::Meta("scopes")));
    }
}
