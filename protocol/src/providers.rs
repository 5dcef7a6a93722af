//! The provider rules file (`providers.toml`): how each CLI logs in, which URLs are its login
//! URLs, which first-run prompts to answer, where its credential files live. One file and one
//! definition of its shape for the agent (which compiles the patterns), the orchestrator (login
//! recipes, push paths) and the test kit's fake CLIs (credential paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The built-in provider rules (TOML).
pub const PROVIDER_RULES_TOML: &str = include_str!("providers.toml");

/// Why a rules file does not parse.
pub type ParseError = toml::de::Error;

impl ProviderFile {
    /// Parses rules of the shape of `providers.toml`.
    pub fn parse(text: &str) -> Result<ProviderFile, ParseError> {
        toml::from_str(text)
    }

    /// The built-in rules. They are checked by this module's tests; were they ever broken, the
    /// result is an empty file (every provider unknown), not a panic.
    pub fn builtin() -> ProviderFile {
        Self::parse(PROVIDER_RULES_TOML).unwrap_or(ProviderFile {
            generic: None,
            provider: Vec::new(),
        })
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&ProviderDef> {
        self.provider.iter().find(|p| p.id == id)
    }
}

/// The whole file: the catch-all rule and the providers, in file order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// The rule for OAuth URLs of CLIs without their own.
    pub generic: Option<GenericDef>,
    /// One entry per CLI.
    #[serde(default)]
    pub provider: Vec<ProviderDef>,
}

/// The catch-all rule: any `https` URL with all of `required_params` and one of `any_params`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GenericDef {
    /// Provider id reported for such URLs.
    pub id: String,
    /// Query parameters that must all be present.
    #[serde(default)]
    pub required_params: Vec<String>,
    /// Query parameters of which one must be present.
    #[serde(default)]
    pub any_params: Vec<String>,
}

/// One CLI: how it logs in, its login URLs, the prompts to answer, its credential files.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderDef {
    /// Stable id used on the wire (`claude_code`, `codex`, `gemini_cli`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// The command that starts the login flow.
    pub login_argv: Vec<String>,
    /// Extra environment for the login flow.
    #[serde(default)]
    pub login_env: BTreeMap<String, String>,
    /// Regular expressions a login URL of this provider matches (one of them).
    pub url_patterns: Vec<String>,
    /// Query parameters a login URL must carry (guards against a cut-off URL).
    #[serde(default)]
    pub required_params: Vec<String>,
    /// Files to create before the login starts.
    #[serde(default)]
    pub seed_files: Vec<SeedFile>,
    /// First-run prompts to answer.
    #[serde(default)]
    pub auto_responses: Vec<AutoResponseDef>,
    /// Where the CLI keeps its credentials (the first is the one a push writes).
    #[serde(default)]
    pub credentials: Vec<CredentialFile>,
}

/// A first-run prompt and the keys that answer it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AutoResponseDef {
    /// Regular expression matched against the rendered screen text.
    pub pattern: String,
    /// Bytes sent to the program when the pattern appears.
    pub keys: String,
    /// How many times at most this answer is sent in one session.
    #[serde(default = "one")]
    pub max: u32,
    /// Milliseconds the program's output must have been quiet before the keys are sent: the
    /// newest CLIs drop keys that arrive while they are still drawing the prompt.
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
}

fn default_quiet_ms() -> u64 {
    300
}

fn one() -> u32 {
    1
}

fn mode_0600() -> u32 {
    0o600
}

/// A file the login flow needs before it starts (e.g. Claude's onboarding flag).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Path, `~/` meaning the login user's home.
    pub path: String,
    /// Exact content to write when the file does not exist yet.
    pub content: String,
    /// Unix mode of the file.
    #[serde(default = "mode_0600")]
    pub mode: u32,
}

/// One credential file of a provider, with the environment variables that move it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// Default directory, `~/` meaning the user's home.
    pub dir: String,
    /// When this variable is set, it *is* the directory (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`).
    #[serde(default)]
    pub dir_env: Option<String>,
    /// When this variable is set, it replaces the home in `dir` (`GEMINI_CLI_HOME`).
    #[serde(default)]
    pub home_env: Option<String>,
    /// File name inside the directory.
    pub file: String,
    /// Unix mode the CLI gives the file (and a push must give it).
    #[serde(default = "mode_0600")]
    pub mode: u32,
    /// The file is a complete login when, for at least one alternative, every JSON pointer (RFC 6901)
    /// in it names a non-empty string or another non-null value (a partial write fails this).
    #[serde(default)]
    pub required_any_of: Vec<Vec<String>>,
}

impl CredentialFile {
    /// Where the file is for a user with `home`, given the CLI's environment (`env` looks a variable up).
    pub fn resolve(&self, home: &Path, env: impl Fn(&str) -> Option<String>) -> PathBuf {
        let set = |name: &Option<String>| name.as_deref().and_then(&env).filter(|v| !v.is_empty());
        if let Some(dir) = set(&self.dir_env) {
            return PathBuf::from(dir).join(&self.file);
        }
        let home = set(&self.home_env)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.to_path_buf());
        expand_home(&self.dir, &home).join(&self.file)
    }

    /// Whether `json` is a complete login, not a partial write: one alternative of
    /// `required_any_of` is fully present.
    pub fn is_complete(&self, json: &serde_json::Value) -> bool {
        let present = |p: &String| match json.pointer(p) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        self.required_any_of
            .iter()
            .any(|alt| alt.iter().all(present))
    }
}

/// `~/x` under `home`; other paths unchanged.
pub fn expand_home(path: &str, home: &Path) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if path == "~" => home.to_path_buf(),
        None => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_rules_parse() {
        let file = ProviderFile::parse(PROVIDER_RULES_TOML).expect("providers.toml parses");
        assert_eq!(ProviderFile::builtin(), file);
        let ids: Vec<&str> = file.provider.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["claude_code", "codex", "gemini_cli"]);
    }

    #[test]
    fn credential_paths_follow_home_and_the_moving_variables() {
        let file = ProviderFile::builtin();
        let home = Path::new("/home/u");
        let path = |id: &str, env: &[(&str, &str)]| {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            file.get(id).expect("provider").credentials[0].resolve(home, |k| env.get(k).cloned())
        };
        assert_eq!(
            path("claude_code", &[]),
            Path::new("/home/u/.claude/.credentials.json")
        );
        assert_eq!(
            path("claude_code", &[("CLAUDE_CONFIG_DIR", "/c")]),
            Path::new("/c/.credentials.json")
        );
        assert_eq!(
            path("codex", &[("CODEX_HOME", "/x")]),
            Path::new("/x/auth.json")
        );
        assert_eq!(
            path("gemini_cli", &[("GEMINI_CLI_HOME", "/g")]),
            Path::new("/g/.gemini/oauth_creds.json")
        );
    }
}
