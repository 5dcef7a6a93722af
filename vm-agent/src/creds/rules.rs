//! Which credential files a provider has, resolved for one user: the paths and required fields come
//! from the shared provider rules ([`crate::providers`]), so a new CLI or a moved file is data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::providers::ProviderRules;

/// One credential file of a provider, resolved for a given home directory and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The file is complete when, for at least one of these alternatives, every JSON pointer in it
    /// names a non-empty string (or a non-null, non-string value).
    pub required_any_of: Vec<Vec<String>>,
    /// The rule it was resolved from (where expiry and scopes are written).
    pub spec: protocol::providers::CredentialFile,
}

impl CredentialFile {
    /// What the file says of itself that the host may know: expiry and scopes.
    pub fn meta(&self, content: &[u8]) -> protocol::creds::CredentialMeta {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(content) else {
            return protocol::creds::CredentialMeta::default();
        };
        protocol::creds::CredentialMeta {
            expires_at_ms: self.spec.expiry_ms(&json),
            scopes: self.spec.granted_scopes(&json),
        }
    }
}

/// The credential files of `provider` for a user whose home is `home`, honouring the provider's
/// environment overrides (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`, `GEMINI_CLI_HOME`) found in `env`.
/// `None` when the provider is unknown.
pub fn credential_rules(
    rules: &ProviderRules,
    provider: &str,
    home: &Path,
    env: &BTreeMap<String, String>,
) -> Option<Vec<CredentialFile>> {
    let provider = rules.get(provider)?;
    Some(
        provider
            .credentials
            .iter()
            .map(|c| CredentialFile {
                path: c.resolve(home, |name| env.get(name).cloned()),
                required_any_of: c.required_any_of.clone(),
                spec: c.clone(),
            })
            .collect(),
    )
}
