//! Provider rules as data: how each CLI logs in, which URLs are its login URLs, which first-run
//! prompts to answer, and where its credential files live.
//!
//! The default set (`protocol/src/providers.toml`, shared with the orchestrator) is compiled in; a file of the same shape can
//! replace it at runtime, so a new CLI or a moved path is a configuration change, not a code change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::providers::ProviderFile;
pub use protocol::providers::{
    expand_home, has_params, CredentialFile, DeviceCodeRule, LoginUrls, PatternError, SeedFile,
    UrlKind,
};
use regex::Regex;

/// Environment variable naming a provider rules file that replaces the compiled-in rules.
pub const RULES_ENV: &str = "AGENT_PROVIDER_RULES";

/// The compiled-in provider rules.
pub const DEFAULT_RULES_TOML: &str = protocol::PROVIDER_RULES_TOML;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The file is not valid TOML of the expected shape.
    #[error("provider rules are not valid: {0}")]
    Parse(#[from] protocol::providers::ParseError),
    /// A URL or prompt pattern is not a valid regular expression.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// Two providers share one id.
    #[error("provider id {0:?} is defined twice")]
    DuplicateId(String),
    /// The rules file could not be read.
    #[error("cannot read provider rules {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A first-run prompt and the keys that answer it.
#[derive(Clone, Debug)]
pub struct AutoResponse {
    /// Matched against the rendered screen text.
    pub pattern: Regex,
    /// Bytes sent to the program when the pattern appears.
    pub keys: String,
    /// How many times at most this answer is sent in one session.
    pub max: u32,
    /// How long the output must be quiet before the keys are sent.
    pub quiet: std::time::Duration,
}

/// One CLI's rules, compiled.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Stable id used on the wire (`claude_code`, `codex`, `gemini_cli`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Which URLs are its login URLs (the host checks reports against the same rules).
    pub urls: LoginUrls,
    /// How the login can run; the first mode is the default.
    pub modes: Vec<Mode>,
    /// Files to create before the login starts.
    pub seed_files: Vec<SeedFile>,
    /// First-run prompts to answer.
    pub auto_responses: Vec<AutoResponse>,
    /// Where the CLI keeps its credentials.
    pub credentials: Vec<CredentialFile>,
}

/// One login mode, compiled.
#[derive(Clone, Debug)]
pub struct Mode {
    /// Stable id.
    pub id: String,
    /// Extra environment for the login program.
    pub env: BTreeMap<String, String>,
    /// Which URL the login wants.
    pub url: UrlKind,
    /// For device-code logins: what the verification page and the code look like.
    pub device: Option<DeviceCodeRule>,
}

impl Provider {
    /// The login mode `id`, or the default (first) one for `None`.
    pub fn mode(&self, id: Option<&str>) -> Option<&Mode> {
        match id {
            Some(id) => self.modes.iter().find(|m| m.id == id),
            None => self.modes.first(),
        }
    }
}

/// The catch-all rule for OAuth authorize URLs of CLIs without their own rule.
#[derive(Clone, Debug)]
pub struct GenericRule {
    /// Provider id reported for such URLs.
    pub id: String,
    /// All of these query parameters must be present.
    pub required_params: Vec<String>,
    /// At least one of these must be present too.
    pub any_params: Vec<String>,
}

/// The full rule set.
#[derive(Clone, Debug)]
pub struct ProviderRules {
    providers: Vec<Provider>,
    generic: Option<GenericRule>,
}

impl ProviderRules {
    /// The compiled-in rules.
    pub fn builtin() -> ProviderRules {
        // The compiled-in file is checked by a unit test, so this cannot fail at run time; fall back to
        // an empty set rather than panic if it ever did.
        ProviderRules::from_toml(DEFAULT_RULES_TOML).unwrap_or_else(|e| {
            tracing::error!(error = %e, "compiled-in provider rules are invalid");
            ProviderRules {
                providers: Vec::new(),
                generic: None,
            }
        })
    }

    /// Rules from TOML text of the same shape as `providers.toml`.
    pub fn from_toml(text: &str) -> Result<ProviderRules, ProviderError> {
        let file = ProviderFile::parse(text)?;
        let mut providers: Vec<Provider> = Vec::new();
        for def in file.provider {
            if providers.iter().any(|p| p.id == def.id) {
                return Err(ProviderError::DuplicateId(def.id));
            }
            let compile = |pattern: &str| {
                Regex::new(pattern).map_err(|source| PatternError {
                    provider: def.id.clone(),
                    pattern: pattern.to_owned(),
                    source,
                })
            };
            let urls = LoginUrls::compile(&def)?;
            let modes = def
                .modes
                .iter()
                .map(|m| Mode {
                    id: m.id.clone(),
                    env: m.env.clone(),
                    url: m.url,
                    device: urls.device(m).cloned(),
                })
                .collect();
            let auto_responses = def
                .auto_responses
                .iter()
                .map(|a| {
                    Ok(AutoResponse {
                        pattern: compile(&a.pattern)?,
                        keys: a.keys.clone(),
                        max: a.max,
                        quiet: std::time::Duration::from_millis(a.quiet_ms),
                    })
                })
                .collect::<Result<_, PatternError>>()?;
            providers.push(Provider {
                id: def.id,
                name: def.name,
                urls,
                modes,
                seed_files: def.seed_files,
                auto_responses,
                credentials: def.credentials,
            });
        }
        let generic = file.generic.map(|g| GenericRule {
            id: g.id,
            required_params: g.required_params,
            any_params: g.any_params,
        });
        Ok(ProviderRules { providers, generic })
    }

    /// The compiled-in rules, or the file named by [`RULES_ENV`] when set. A bad file is logged and
    /// the compiled-in rules are used, so the agent still serves.
    pub fn from_env() -> ProviderRules {
        let Some(path) = std::env::var_os(RULES_ENV) else {
            return ProviderRules::builtin();
        };
        match ProviderRules::load(Path::new(&path)) {
            Ok(rules) => {
                tracing::info!(path = %Path::new(&path).display(), "provider rules loaded");
                rules
            }
            Err(e) => {
                tracing::warn!(error = %e, "provider rules override refused, using the compiled-in rules");
                ProviderRules::builtin()
            }
        }
    }

    /// Rules from a file (the runtime override).
    pub fn load(path: &Path) -> Result<ProviderRules, ProviderError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProviderError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ProviderRules::from_toml(&text)
    }

    /// All providers, in file order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Which provider's login URL `url` is, if any (the generic OAuth rule last).
    pub fn classify(&self, url: &str) -> Option<&str> {
        if let Some(p) = self.providers.iter().find(|p| p.urls.accepts(url)) {
            return Some(&p.id);
        }
        let g = self.generic.as_ref()?;
        (url.starts_with("https://") && has_params(url, &g.required_params, &g.any_params))
            .then_some(g.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_parse_and_cover_the_three_clis() {
        let rules = ProviderRules::from_toml(DEFAULT_RULES_TOML).expect("compiled-in rules parse");
        let ids: Vec<&str> = rules.providers().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["claude_code", "codex", "gemini_cli"]);
        for p in rules.providers() {
            assert!(!p.credentials.is_empty(), "{} has credential paths", p.id);
            assert!(p
                .credentials
                .iter()
                .all(|c| c.mode == 0o600 && !c.required_any_of.is_empty()));
        }
    }

    #[test]
    fn classify_knows_each_cli_and_the_generic_rule() {
        let r = ProviderRules::builtin();
        assert_eq!(r.classify("https://claude.com/cai/oauth/authorize?code=true&client_id=x&code_challenge=y&state=z"), Some("claude_code"));
        assert_eq!(r.classify("https://auth.openai.com/oauth/authorize?response_type=code&client_id=x&code_challenge=y&state=z"), Some("codex"));
        assert_eq!(
            r.classify("https://accounts.google.com/o/oauth2/v2/auth?state=s&client_id=c"),
            Some("gemini_cli")
        );
        assert_eq!(
            r.classify("https://idp.example/authorize?client_id=a&response_type=code"),
            Some("generic_oauth")
        );
        // A cut-off claude URL (no state yet) is generic at most, never claude's.
        assert_eq!(
            r.classify(
                "https://claude.com/cai/oauth/authorize?code=true&client_id=x&code_challenge=y"
            ),
            Some("generic_oauth")
        );
        assert_eq!(
            r.classify("http://localhost:1455/auth/callback?client_id=a&response_type=code"),
            None
        );
        assert_eq!(
            r.classify("https://geminicli.com/docs/resources/tos-privacy/"),
            None
        );
        // Claude's short sign-in link: whole, or not at all.
        let challenge = "fake-code-challenge-00010000000000000000000";
        assert_eq!(
            r.classify(&format!("https://claude.ai/oauth/authorize?z-{challenge}")),
            Some("claude_code")
        );
        assert_eq!(
            r.classify(&format!("https://claude.ai/oauth/authorize?I{challenge}")),
            Some("claude_code")
        );
        assert_eq!(
            r.classify(&format!(
                "https://claude.ai/oauth/authorize?z-{}",
                &challenge[..30]
            )),
            None
        );
    }

    #[test]
    fn credential_paths_follow_the_env_overrides() {
        let r = ProviderRules::builtin();
        let home = Path::new("/home/u");
        let none = |_: &str| None;
        let path = |id: &str, env: &dyn Fn(&str) -> Option<String>| {
            r.get(id).map(|p| p.credentials[0].resolve(home, env))
        };
        assert_eq!(
            path("claude_code", &none),
            Some(PathBuf::from("/home/u/.claude/.credentials.json"))
        );
        assert_eq!(
            path("codex", &none),
            Some(PathBuf::from("/home/u/.codex/auth.json"))
        );
        assert_eq!(
            path("gemini_cli", &none),
            Some(PathBuf::from("/home/u/.gemini/oauth_creds.json"))
        );
        let env = |k: &str| match k {
            "CLAUDE_CONFIG_DIR" => Some("/cfg/claude".to_owned()),
            "CODEX_HOME" => Some("/cfg/codex".to_owned()),
            "GEMINI_CLI_HOME" => Some("/cfg/g".to_owned()),
            _ => None,
        };
        assert_eq!(
            path("claude_code", &env),
            Some(PathBuf::from("/cfg/claude/.credentials.json"))
        );
        assert_eq!(
            path("codex", &env),
            Some(PathBuf::from("/cfg/codex/auth.json"))
        );
        assert_eq!(
            path("gemini_cli", &env),
            Some(PathBuf::from("/cfg/g/.gemini/oauth_creds.json"))
        );
    }

    #[test]
    fn required_fields_decide_completeness() {
        let r = ProviderRules::builtin();
        let c = &r
            .get("claude_code")
            .map(|p| p.credentials[0].clone())
            .expect("claude rule");
        let full = serde_json::json!({"claudeAiOauth":{"accessToken":"fake-access-token-0001","refreshToken":"fake-refresh-token-0001","expiresAt":1,"scopes":["user:inference"]}});
        let partial = serde_json::json!({"claudeAiOauth":{"accessToken":"fake-access-token-0001"}});
        assert!(c.is_complete(&full));
        assert!(!c.is_complete(&partial));
        let codex = r
            .get("codex")
            .map(|p| p.credentials[0].clone())
            .expect("codex rule");
        assert!(
            codex.is_complete(&serde_json::json!({"OPENAI_API_KEY":"fake-openai-api-key-0001"}))
        );
        assert!(!codex.is_complete(&serde_json::json!({"OPENAI_API_KEY":"","tokens":{"access_token":"fake-access-token-0001"}})));
    }

    #[test]
    fn bad_rules_are_typed_errors() {
        assert!(matches!(
            ProviderRules::from_toml("provider = 3"),
            Err(ProviderError::Parse(_))
        ));
        let bad = "[[provider]]\nid='x'\nname='x'\nmodes=[]\nurl_patterns=['(']\n";
        assert!(matches!(
            ProviderRules::from_toml(bad),
            Err(ProviderError::Pattern { .. })
        ));
        let dup = "[[provider]]\nid='x'\nname='x'\nmodes=[]\nurl_patterns=[]\n[[provider]]\nid='x'\nname='y'\nmodes=[]\nurl_patterns=[]\n";
        assert!(matches!(
            ProviderRules::from_toml(dup),
            Err(ProviderError::DuplicateId(_))
        ));
    }
}
