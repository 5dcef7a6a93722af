//! Which URLs are a provider's login URLs, compiled from its rules. Both ends use it: the agent to
//! find the URL on the screen, the host to check what an agent reports before a user sees it (a
//! guest is never trusted to have checked).

use regex::Regex;

use super::{LoginMode, ProviderDef};

/// The longest login URL either end accepts. Real ones are well under 2 KiB; anything near this is
/// not a login URL but a guest trying to make the host hold something large.
pub const MAX_LOGIN_URL: usize = 8 * 1024;

/// A pattern of the rules that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: bad pattern {pattern:?}: {source}")]
pub struct PatternError {
    /// The provider the pattern belongs to.
    pub provider: String,
    /// The pattern as written.
    pub pattern: String,
    /// What the regex compiler said.
    #[source]
    pub source: regex::Error,
}

/// One provider's login URL rules, compiled.
#[derive(Clone, Debug)]
pub struct LoginUrls {
    patterns: Vec<Regex>,
    required_params: Vec<String>,
    opaque_patterns: Vec<Regex>,
    device: Vec<(String, DeviceCodeRule)>,
}

/// How a device-code login's verification page and code look.
#[derive(Clone, Debug)]
pub struct DeviceCodeRule {
    /// The verification page's URL matches one of these (whole).
    pub url_patterns: Vec<Regex>,
    /// The one-time code matches this (a whole word).
    pub code_pattern: Regex,
}

impl DeviceCodeRule {
    /// Whether `url` and `code` are this rule's page and code.
    pub fn accepts(&self, url: &str, code: &str) -> bool {
        url.len() <= MAX_LOGIN_URL
            && code.len() <= 64
            && self.url_patterns.iter().any(|p| p.is_match(url))
            && self.code_pattern.is_match(code)
    }
}

fn compile(provider: &str, pattern: &str) -> Result<Regex, PatternError> {
    Regex::new(pattern).map_err(|source| PatternError {
        provider: provider.to_owned(),
        pattern: pattern.to_owned(),
        source,
    })
}

fn compile_all(provider: &str, patterns: &[String]) -> Result<Vec<Regex>, PatternError> {
    patterns.iter().map(|p| compile(provider, p)).collect()
}

impl LoginUrls {
    /// Compiles `def`'s URL patterns and every mode's device-code rule.
    pub fn compile(def: &ProviderDef) -> Result<Self, PatternError> {
        let device = def
            .modes
            .iter()
            .filter_map(|m| Some((m, m.device_code_pattern.as_ref()?)))
            .map(|(m, code)| {
                Ok((
                    m.id.clone(),
                    DeviceCodeRule {
                        url_patterns: compile_all(&def.id, &m.device_url_patterns)?,
                        code_pattern: compile(&def.id, code)?,
                    },
                ))
            })
            .collect::<Result<_, PatternError>>()?;
        Ok(Self {
            patterns: compile_all(&def.id, &def.url_patterns)?,
            required_params: def.required_params.clone(),
            opaque_patterns: compile_all(&def.id, &def.opaque_url_patterns)?,
            device,
        })
    }

    /// Whether `url` is one of this provider's login URLs: a pattern and every required query
    /// parameter (a cut-off URL lacks some), or a whole opaque pattern; never longer than
    /// [`MAX_LOGIN_URL`].
    pub fn accepts(&self, url: &str) -> bool {
        url.len() <= MAX_LOGIN_URL
            && ((self.patterns.iter().any(|p| p.is_match(url))
                && has_params(url, &self.required_params, &[]))
                || self.opaque_patterns.iter().any(|p| p.is_match(url)))
    }

    /// The device-code rule of login mode `mode`, if it is a device-code mode.
    pub fn device(&self, mode: &LoginMode) -> Option<&DeviceCodeRule> {
        self.device
            .iter()
            .find(|(id, _)| *id == mode.id)
            .map(|(_, rule)| rule)
    }
}

/// Whether the query of `url` has every name in `all` and, if `any` is not empty, one of `any`.
pub fn has_params(url: &str, all: &[String], any: &[String]) -> bool {
    let query = url
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let names: Vec<&str> = query
        .split('&')
        .map(|kv| kv.split('=').next().unwrap_or(""))
        .collect();
    all.iter().all(|n| names.contains(&n.as_str()))
        && (any.is_empty() || any.iter().any(|n| names.contains(&n.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderFile;

    fn urls(id: &str) -> (LoginUrls, ProviderDef) {
        let file = ProviderFile::builtin();
        let def = file.get(id).expect("a built-in provider").clone();
        (LoginUrls::compile(&def).expect("compiles"), def)
    }

    #[test]
    fn login_urls_need_their_pattern_their_parameters_and_a_sane_length() {
        let (codex, _) = urls("codex");
        let good = "https://auth.openai.com/oauth/authorize?response_type=code&client_id=x&code_challenge=y&state=z";
        assert!(codex.accepts(good));
        assert!(!codex.accepts(
            "https://auth.openai.com/oauth/authorize?response_type=code&client_id=x&code_challenge=y"
        ));
        assert!(!codex
            .accepts("https://evil.example/oauth/authorize?client_id=x&code_challenge=y&state=z"));
        let padded = format!("{good}&pad={}", "a".repeat(MAX_LOGIN_URL));
        assert!(!codex.accepts(&padded), "a huge URL is refused");
    }

    #[test]
    fn device_codes_follow_their_modes_rule() {
        let (codex, def) = urls("codex");
        let device = def.mode(Some("device_code")).expect("device mode");
        let rule = codex.device(device).expect("a device rule");
        assert!(rule.accepts("https://auth.openai.com/codex/device", "ABCD-EFGH"));
        assert!(!rule.accepts("https://evil.example/codex/device", "ABCD-EFGH"));
        assert!(!rule.accepts("https://auth.openai.com/codex/device", "not a code"));
        assert!(codex.device(def.mode(Some("browser")).unwrap()).is_none());
    }
}
