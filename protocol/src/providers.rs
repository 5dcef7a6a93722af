//! The provider rules file (`providers.toml`): how each CLI logs in, which URLs are its login
//! URLs, which first-run prompts to answer, where its credential files live. One file and one
//! definition of its shape for the agent (which compiles the patterns), the orchestrator (login
//! recipes, push paths) and the test kit's fake CLIs (credential paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod urls;

pub use urls::{has_params, DeviceCodeRule, LoginUrls, PatternError, MAX_LOGIN_URL};

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

impl ProviderDef {
    /// The login mode `id`, or the default (first) one for `None`.
    pub fn mode(&self, id: Option<&str>) -> Option<&LoginMode> {
        match id {
            Some(id) => self.modes.iter().find(|m| m.id == id),
            None => self.modes.first(),
        }
    }
}

impl SeedFile {
    /// The content to write for a user whose home is `home`: `${HOME}` replaced by it,
    /// JSON-escaped (seed files are JSON).
    pub fn content_for(&self, home: &str) -> String {
        let escaped = serde_json::to_string(home).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or("");
        self.content.replace("${HOME}", escaped)
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
    /// Regular expressions a login URL of this provider matches (one of them).
    pub url_patterns: Vec<String>,
    /// Query parameters a login URL must carry (guards against a cut-off URL).
    #[serde(default)]
    pub required_params: Vec<String>,
    /// Login URLs whose query is opaque (no parameters to check): each pattern must match the
    /// whole URL, so its own shape guards against a cut-off one.
    #[serde(default)]
    pub opaque_url_patterns: Vec<String>,
    /// Destinations a login VM of this provider may reach through the egress proxy (`host`,
    /// `*.domain` or `host:port`); the host's allow-list.
    #[serde(default)]
    pub egress_hosts: Vec<String>,
    /// How the login can run; the first mode is the default.
    pub modes: Vec<LoginMode>,
    /// How the CLI answers one prompt without a terminal (`claude -p`, `codex exec`, `gemini -p`):
    /// the prompt is appended as the last argument. Empty: the host cannot run prompts.
    #[serde(default)]
    pub prompt_argv: Vec<String>,
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

/// One way a provider's login runs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoginMode {
    /// Stable id (`browser`, `paste_code`, `device_code`).
    pub id: String,
    /// The command that starts the login.
    pub argv: Vec<String>,
    /// Extra environment for it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Which URL the login wants.
    pub url: UrlKind,
    /// Device-code logins: patterns of the verification page's URL (whole URL).
    #[serde(default)]
    pub device_url_patterns: Vec<String>,
    /// Device-code logins: pattern of the one-time code (a whole word on the screen).
    #[serde(default)]
    pub device_code_pattern: Option<String>,
}

/// Which URL a login mode wants.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UrlKind {
    /// The URL the CLI hands to `$BROWSER`/`xdg-open`: Chromium beside the CLI opens it, the
    /// CLI's localhost callback completes the login.
    Browser,
    /// The printed link: opened on any device, its page shows a code to paste into the CLI.
    Printed,
    /// A verification page and a one-time code the user enters there.
    Device,
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
    /// JSON pointer to the token's expiry, Unix milliseconds, where the CLI writes one.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// JSON pointer to the granted scopes (an array of strings, or one space-separated string).
    #[serde(default)]
    pub scopes: Option<String>,
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

    /// The token's expiry (Unix ms) as the file states it, if the provider writes one.
    pub fn expiry_ms(&self, json: &serde_json::Value) -> Option<i64> {
        let v = json.pointer(self.expires_at.as_deref()?)?;
        v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
    }

    /// The scopes the file says were granted (empty when it says nothing).
    pub fn granted_scopes(&self, json: &serde_json::Value) -> Vec<String> {
        let Some(v) = self.scopes.as_deref().and_then(|p| json.pointer(p)) else {
            return Vec::new();
        };
        match v {
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
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
    fn every_provider_has_a_default_mode_and_device_modes_say_what_to_find() {
        for p in ProviderFile::builtin().provider {
            let default = p.mode(None).expect("a default mode");
            assert_eq!(p.mode(Some(&default.id)), Some(default), "{}", p.id);
            for m in &p.modes {
                assert_eq!(
                    m.url == UrlKind::Device,
                    !m.device_url_patterns.is_empty() && m.device_code_pattern.is_some(),
                    "{} {}",
                    p.id,
                    m.id
                );
            }
        }
    }

    #[test]
    fn seeds_get_the_users_home() {
        let claude = ProviderFile::builtin();
        let seed = &claude.get("claude_code").expect("claude").seed_files[0];
        let json: serde_json::Value =
            serde_json::from_str(&seed.content_for("/home/a \"b\"")).expect("still JSON");
        assert_eq!(
            json["projects"]["/home/a \"b\""]["hasTrustDialogAccepted"],
            serde_json::Value::Bool(true)
        );
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
