//! How each provider's CLI logs in, as data. The recipes come from the same provider rules the agent
//! uses ([`protocol::PROVIDER_RULES_TOML`]), so a new CLI or a moved credential file is one edit to
//! one file. The orchestrator needs only a few fields; the agent owns URL patterns, auto-responses
//! and credential validation.

use protocol::providers::ProviderFile;

pub use protocol::providers::{CredentialFile, LoginMode, LoginUrls, SeedFile, UrlKind};

/// One provider's login recipe.
#[derive(Debug, Clone)]
pub struct ProviderLogin {
    /// Provider id (`claude_code`, `codex`, `gemini_cli`).
    pub name: String,
    /// How the login can run; the first mode is the default.
    pub modes: Vec<LoginMode>,
    /// The main credential file, relative to the guest user's home (where pushes go).
    pub credential_file: String,
    /// Files written before the login starts.
    pub seed_files: Vec<SeedFile>,
    /// Where a login VM of this provider may go (its egress allow-list).
    pub egress_hosts: Vec<String>,
    /// How the CLI runs one prompt (the prompt is appended); empty: no prompts.
    pub prompt_argv: Vec<String>,
    /// The rules of the main credential file (its expiry and scopes fields).
    pub credential: CredentialFile,
    /// Which URLs are its login URLs: what a browser VM reports is checked against them before
    /// any user sees it (the agent checked too, but the guest is not trusted).
    pub urls: LoginUrls,
}

/// Why provider rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProviderRulesError {
    /// Not TOML of the expected shape.
    #[error("provider rules are not valid: {0}")]
    Parse(#[from] protocol::providers::ParseError),
    /// A provider has no credential path.
    #[error("provider {0} names no credential file")]
    NoCredentialFile(String),
    /// A URL pattern is not a valid regular expression.
    #[error(transparent)]
    Pattern(#[from] protocol::providers::PatternError),
}

/// Strips `~/` (or `~`) so the path is relative to the home.
fn home_relative(path: &str) -> String {
    path.trim_start_matches('~')
        .trim_start_matches('/')
        .to_owned()
}

impl ProviderLogin {
    /// Recipes from provider rules TOML (the shape of `protocol/src/providers.toml`).
    pub fn from_rules(toml_text: &str) -> Result<Vec<ProviderLogin>, ProviderRulesError> {
        let file = ProviderFile::parse(toml_text)?;
        file.provider
            .into_iter()
            .map(|def| {
                let cred = def
                    .credentials
                    .first()
                    .ok_or_else(|| ProviderRulesError::NoCredentialFile(def.id.clone()))?;
                let dir = home_relative(&cred.dir);
                let credential_file = if dir.is_empty() {
                    cred.file.clone()
                } else {
                    format!("{dir}/{}", cred.file)
                };
                let credential = cred.clone();
                let urls = LoginUrls::compile(&def)?;
                Ok(ProviderLogin {
                    urls,
                    name: def.id,
                    prompt_argv: def.prompt_argv,
                    credential,
                    egress_hosts: def.egress_hosts,
                    modes: def.modes,
                    credential_file,
                    seed_files: def
                        .seed_files
                        .into_iter()
                        .map(|s| SeedFile {
                            path: home_relative(&s.path),
                            ..s
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The login mode `id`, or the default (first) one for `None`.
    pub fn mode(&self, id: Option<&str>) -> Option<&LoginMode> {
        match id {
            Some(id) => self.modes.iter().find(|m| m.id == id),
            None => self.modes.first(),
        }
    }

    /// The built-in recipes for the three CLIs.
    pub fn builtin() -> Vec<ProviderLogin> {
        // The compiled-in rules are checked by this module's tests; an empty list would only make
        // every start fail with `UnknownProvider`.
        Self::from_rules(protocol::PROVIDER_RULES_TOML).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_recipes_cover_the_three_clis_with_home_relative_paths() {
        let all = ProviderLogin::from_rules(protocol::PROVIDER_RULES_TOML).expect("rules parse");
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["claude_code", "codex", "gemini_cli"]);
        let claude = &all[0];
        let default = claude.mode(None).expect("a default mode");
        assert_eq!(default.argv, ["claude", "auth", "login"]);
        assert_eq!(default.url, UrlKind::Browser);
        let device = all[1].mode(Some("device_code")).expect("codex device mode");
        assert_eq!(device.url, UrlKind::Device);
        assert_eq!(claude.credential_file, ".claude/.credentials.json");
        assert_eq!(claude.seed_files[0].path, ".claude.json");
        assert_eq!(claude.seed_files[0].mode, 0o600);
        assert_eq!(all[1].credential_file, ".codex/auth.json");
        assert_eq!(all[2].credential_file, ".gemini/oauth_creds.json");
        let builtin: Vec<String> = ProviderLogin::builtin()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(builtin, names);
    }

    #[test]
    fn a_provider_without_credential_paths_is_refused() {
        let rules = "[[provider]]\nid = \"x\"\nname = \"X\"\nmodes = []\nurl_patterns = []\n";
        let err = ProviderLogin::from_rules(rules).expect_err("no credentials");
        assert!(matches!(err, ProviderRulesError::NoCredentialFile(p) if p == "x"));
    }
}
