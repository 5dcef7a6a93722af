//! Which destinations a VM may reach through its egress tunnels.

use protocol::egress::split_target;

/// Ports a bare host pattern allows.
const WEB_PORTS: [u16; 2] = [443, 80];

/// One allowed destination: `host`, `*.domain` (any subdomain, not the domain itself) or either
/// with `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// Lower-case host, or the domain with its leading dot for `*.domain`.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// Why an allow-list entry is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad egress pattern {0:?}: expected host, *.domain, or either with :port")]
pub struct PatternError(String);

impl Pattern {
    fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = || PatternError(text.to_owned());
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (host, port) = match split_target(rest) {
            Ok((host, port)) => (host, Some(port)),
            Err(_) => (
                split_target(&format!("{rest}:443")).map_err(|_| bad())?.0,
                None,
            ),
        };
        let host = if wildcard { format!(".{host}") } else { host };
        Ok(Self {
            host,
            wildcard,
            port,
        })
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => WEB_PORTS.contains(&port),
        };
        let host_ok = if self.wildcard {
            host.ends_with(&self.host)
        } else {
            host == self.host
        };
        port_ok && host_ok
    }
}

/// Destinations a VM may reach. Checked by the host on every tunnel; the guest cannot widen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// Anywhere the upstream proxy goes (a deployment's choice for CLI VMs).
    Any,
    /// Only these destinations.
    Only(Vec<String>),
}

/// An [`AllowList`] ready to check targets.
#[derive(Debug, Clone)]
pub(crate) enum Allow {
    Any,
    Only(Vec<Pattern>),
}

impl AllowList {
    /// The list of `patterns` (provider hosts and a deployment's own).
    pub fn only<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AllowList::Only(patterns.into_iter().map(Into::into).collect())
    }

    /// Checks every pattern.
    pub(crate) fn compile(&self) -> Result<Allow, PatternError> {
        match self {
            AllowList::Any => Ok(Allow::Any),
            AllowList::Only(patterns) => patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()
                .map(Allow::Only),
        }
    }
}

impl Allow {
    /// Whether `host:port` (already checked by [`split_target`]) may be reached.
    pub(crate) fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Allow::Any => true,
            Allow::Only(patterns) => patterns.iter().any(|p| p.allows(host, port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(patterns: &[&str]) -> Allow {
        AllowList::only(patterns.iter().copied())
            .compile()
            .expect("patterns")
    }

    #[test]
    fn hosts_domains_and_ports() {
        let a = allow(&["claude.ai", "*.anthropic.com", "origin.test:8443"]);
        assert!(a.allows("claude.ai", 443));
        assert!(a.allows("claude.ai", 80));
        assert!(!a.allows("claude.ai", 22), "a bare host is web ports only");
        assert!(!a.allows("evil-claude.ai", 443));
        assert!(!a.allows("claude.ai.evil.test", 443));
        assert!(a.allows("api.anthropic.com", 443));
        assert!(a.allows("a.b.anthropic.com", 443));
        assert!(
            !a.allows("anthropic.com", 443),
            "*.domain is subdomains only"
        );
        assert!(!a.allows("xanthropic.com", 443));
        assert!(a.allows("origin.test", 8443));
        assert!(!a.allows("origin.test", 443));
        assert!(Allow::Any.allows("anything.test", 22));
    }

    #[test]
    fn a_bad_pattern_is_refused_with_its_text() {
        for bad in ["", "*.", "a b", "host:0", "http://x.test"] {
            let err = AllowList::only([bad]).compile().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
