//! Device-code logins (`codex login --device-auth`): the CLI prints a verification page and a
//! one-time code; the user opens the page on any device and types the code there. Found on the
//! rendered screen as whole words, the page first and the code after it, and reported once the
//! output has been quiet (a code cut short by a slow terminal is never reported), as long as
//! both are still on the screen.

use std::time::{Duration, Instant};

use crate::providers::DeviceCodeRule;

/// How long the output must be quiet before a device code counts as complete.
pub const QUIET: Duration = Duration::from_millis(200);

/// A verification page and its one-time code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCode {
    /// The page where the user enters the code.
    pub url: String,
    /// The code.
    pub code: String,
    /// The provider whose login mode found it.
    pub provider: String,
}

/// Looks for one device code on a session's screen.
#[derive(Debug)]
pub struct DeviceCodeFinder {
    provider: String,
    rule: DeviceCodeRule,
    seen: Option<DeviceCode>,
    reported: bool,
}

impl DeviceCodeFinder {
    /// A finder for `provider`'s device-code `rule`.
    pub fn new(provider: &str, rule: DeviceCodeRule) -> DeviceCodeFinder {
        DeviceCodeFinder {
            provider: provider.to_owned(),
            rule,
            seen: None,
            reported: false,
        }
    }

    /// The program wrote output; `screen` is the rendered screen after it.
    pub fn observe(&mut self, screen: &str) {
        if !self.reported {
            self.seen = self.find(screen);
        }
    }

    /// When the seen code is due if no more output comes.
    pub fn next_due(&self, last_output: Instant) -> Option<Instant> {
        (!self.reported && self.seen.is_some()).then_some(last_output + QUIET)
    }

    /// The device code, once, when the output has been quiet since `last_output` and the code
    /// seen is still on `screen`.
    pub fn due(&mut self, screen: &str, last_output: Instant, now: Instant) -> Option<DeviceCode> {
        if self.reported || now.saturating_duration_since(last_output) < QUIET {
            return None;
        }
        let found = self.find(screen)?;
        if self.seen.as_ref() != Some(&found) {
            self.seen = Some(found);
            return None;
        }
        self.reported = true;
        Some(found)
    }

    fn find(&self, screen: &str) -> Option<DeviceCode> {
        let mut words = screen.split_whitespace();
        let url = words
            .by_ref()
            .find(|w| self.rule.url_patterns.iter().any(|p| p.is_match(w)))?;
        let code = words.find(|w| self.rule.code_pattern.is_match(w))?;
        Some(DeviceCode {
            url: url.to_owned(),
            code: code.to_owned(),
            provider: self.provider.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finder() -> DeviceCodeFinder {
        DeviceCodeFinder::new(
            "codex",
            DeviceCodeRule {
                url_patterns: vec![
                    regex::Regex::new(r"^https://auth\.example/device$").expect("re")
                ],
                code_pattern: regex::Regex::new(r"^[A-Z0-9]{4,}-[A-Z0-9]{4,}$").expect("re"),
            },
        )
    }

    const SCREEN: &str =
        "1. Open https://auth.example/device\n2. Enter this one-time code\n   ABCD-12345\n";

    #[test]
    fn the_code_is_reported_once_the_output_is_quiet() {
        let mut f = finder();
        let t0 = Instant::now();
        f.observe(SCREEN);
        assert_eq!(f.next_due(t0), Some(t0 + QUIET));
        assert_eq!(f.due(SCREEN, t0, t0), None);
        let code = f.due(SCREEN, t0, t0 + QUIET).expect("due");
        assert_eq!(code.url, "https://auth.example/device");
        assert_eq!(code.code, "ABCD-12345");
        assert_eq!(f.due(SCREEN, t0, t0 + QUIET * 2), None, "once");
        assert_eq!(f.next_due(t0), None);
    }

    #[test]
    fn a_code_that_changed_since_it_was_seen_waits_for_quiet_again() {
        let mut f = finder();
        let t0 = Instant::now();
        f.observe(&SCREEN.replace("ABCD-12345", "ABCD-1234"));
        assert_eq!(f.due(SCREEN, t0, t0 + QUIET), None);
        assert!(f.due(SCREEN, t0, t0 + QUIET * 2).is_some());
    }

    #[test]
    fn no_code_before_the_page_no_page_no_code() {
        let mut f = finder();
        let t0 = Instant::now();
        f.observe("ABCD-12345 then https://auth.example/device");
        assert_eq!(f.next_due(t0), None);
        f.observe("https://other.example/device ABCD-12345");
        assert_eq!(f.next_due(t0), None);
    }
}
