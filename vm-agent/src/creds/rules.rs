//! Where each provider keeps its credential files and what a complete file must contain.
//!
//! Stand-in for the shared `providers` module: everything the `creds` code needs goes through
//! [`credential_rules`], so switching to the shared provider data is a one-line change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One credential file of a provider, resolved for a given home directory and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The file is complete when, for at least one of these alternatives, every JSON pointer in it
    /// names a non-empty string (or a non-null, non-string value).
    pub required_any_of: Vec<Vec<String>>,
}

/// The credential files of `provider` for a user whose home is `home`, honouring the provider's
/// environment overrides (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`, `GEMINI_CLI_HOME`) found in `env`.
/// `None` when the provider is unknown.
pub fn credential_rules(
    provider: &str,
    home: &Path,
    env: &BTreeMap<String, String>,
) -> Option<Vec<CredentialFile>> {
    let dir_or = |var: &str, default: PathBuf| -> PathBuf {
        match env.get(var) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => default,
        }
    };
    let ptrs = |alts: &[&[&str]]| -> Vec<Vec<String>> {
        alts.iter()
            .map(|alt| alt.iter().map(|p| (*p).to_string()).collect())
            .collect()
    };
    match provider {
        "claude_code" => Some(vec![CredentialFile {
            path: dir_or("CLAUDE_CONFIG_DIR", home.join(".claude")).join(".credentials.json"),
            required_any_of: ptrs(&[&[
                "/claudeAiOauth/accessToken",
                "/claudeAiOauth/refreshToken",
            ]]),
        }]),
        "codex" => Some(vec![CredentialFile {
            path: dir_or("CODEX_HOME", home.join(".codex")).join("auth.json"),
            required_any_of: ptrs(&[
                &[
                    "/tokens/id_token",
                    "/tokens/access_token",
                    "/tokens/refresh_token",
                ],
                &["/OPENAI_API_KEY"],
            ]),
        }]),
        "gemini_cli" => Some(vec![CredentialFile {
            path: dir_or("GEMINI_CLI_HOME", home.to_path_buf())
                .join(".gemini")
                .join("oauth_creds.json"),
            required_any_of: ptrs(&[&["/access_token", "/refresh_token"]]),
        }]),
        _ => None,
    }
}
