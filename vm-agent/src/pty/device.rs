//! Device-code logins (`codex login --device-auth`): the CLI prints a verification page and a
//! one-time code; the user opens the page on any device and types the code there. Found on the
//! rendered screen as whole words, the page first and the code after it. A code counts as whole
//! once more text follows it on the screen (codex prints a warning under it) or the output ends;
//! a code with nothing after it is reported only after the output has been quiet for [`QUIET`]
//! (a CLI that prints its code last and waits), so a terminal that stalls in the middle of the
//! code does not get it cut short.

use std::time::{Duration, Instant};

use crate::providers::DeviceCodeRule;

/// How long the output must be quiet before a device code with nothing after it counts as whole.
pub const QUIET: Duration = Duration::from_secs(1);

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
    /// The code seen has more text after it: whole now.
    followed: bool,
    reported: bool,
}

impl DeviceCodeFinder {
    /// A finder for `provider`'s device-code `rule`.
    pub fn new(provider: &str, rule: DeviceCodeRule) -> DeviceCodeFinder {
        DeviceCodeFinder {
            provider: provider.to_owned(),
            rule,
            seen: None,
            followed: false,
            reported: false,
        }
    }

    /// The program wrote output; `screen` is the rendered screen after it.
    pub fn observe(&mut self, screen: &str) {
        if !self.reported {
            let found = self.find(screen);
            self.followed = found.as_ref().is_some_and(|(_, followed)| *followed);
            self.seen = found.map(|(code, _)| code);
        }
    }

    /// When the seen code is due if no more output comes: at once when text follows it, after
    /// [`QUIET`] otherwise.
    pub fn next_due(&self, last_output: Instant) -> Option<Instant> {
        if self.reported || self.seen.is_none() {
            return None;
        }
        Some(if self.followed {
            last_output
        } else {
            last_output + QUIET
        })
    }

    /// The device code, once: when text follows it, or the output has been quiet since
    /// `last_output`, and it is still on `screen` as it was seen.
    pub fn due(&mut self, screen: &str, last_output: Instant, now: Instant) -> Option<DeviceCode> {
        if self.reported {
            return None;
        }
        let (found, followed) = self.find(screen)?;
        let quiet = now.saturating_duration_since(last_output) >= QUIET;
        if self.seen.as_ref() != Some(&found) || !(followed || quiet) {
            self.seen = Some(found);
            self.followed = followed;
            return None;
        }
        self.reported = true;
        Some(found)
    }

    /// The output has ended: the device code on `screen`, if it was not reported yet (nothing
    /// more can be added to it).
    pub fn finish(&mut self, screen: &str) -> Option<DeviceCode> {
        if self.reported {
            return None;
        }
        let (found, _) = self.find(screen)?;
        self.reported = true;
        Some(found)
    }

    /// The page and the code on `screen`, and whether more text follows the code.
    fn find(&self, screen: &str) -> Option<(DeviceCode, bool)> {
        let mut words = screen.split_whitespace();
        let url = words
            .by_ref()
            .find(|w| self.rule.url_patterns.iter().any(|p| p.is_match(w)))?;
        let code = words.find(|w| self.rule.code_pattern.is_match(w))?;
        let followed = words.next().is_some();
        Some((
            DeviceCode {
                url: url.to_owned(),
                code: code.to_owned(),
                provider: self.provider.clone(),
            },
            followed,
        ))
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
    const FOLLOWED: &str = "1. Open https://auth.example/device\n2. Enter this one-time code\n   \
         ABCD-12345\nContinue only if you started this login.\n";

    #[test]
    fn a_code_followed_by_text_is_whole_at_once() {
        let mut f = finder();
        let t0 = Instant::now();
        f.observe(FOLLOWED);
        assert_eq!(f.next_due(t0), Some(t0));
        let code = f.due(FOLLOWED, t0, t0).expect("due");
        assert_eq!(code.url, "https://auth.example/device");
        assert_eq!(code.code, "ABCD-12345");
        assert_eq!(f.due(FOLLOWED, t0, t0 + QUIET), None, "once");
        assert_eq!(f.next_due(t0), None);
    }

    #[test]
    fn a_code_with_nothing_after_it_waits_for_the_output_to_be_quiet() {
        let mut f = finder();
        let t0 = Instant::now();
        f.observe(SCREEN);
        assert_eq!(f.next_due(t0), Some(t0 + QUIET));
        assert_eq!(f.due(SCREEN, t0, t0 + QUIET / 2), None);
        assert!(f.due(SCREEN, t0, t0 + QUIET).is_some());
    }

    #[test]
    fn a_code_cut_short_is_not_reported_and_the_whole_one_is() {
        let mut f = finder();
        let t0 = Instant::now();
        let cut = SCREEN.replace("ABCD-12345", "ABCD-1234");
        f.observe(&cut);
        // The terminal stalls (shorter than QUIET), then the rest of the code and the text after.
        assert_eq!(f.due(&cut, t0, t0 + QUIET / 2), None);
        f.observe(FOLLOWED);
        assert_eq!(
            f.due(FOLLOWED, t0, t0 + QUIET / 2).map(|c| c.code),
            Some("ABCD-12345".to_owned())
        );
    }

    #[test]
    fn at_the_end_of_the_output_the_code_on_screen_is_whole() {
        let mut f = finder();
        f.observe(SCREEN);
        assert_eq!(
            f.finish(SCREEN).map(|c| c.code),
            Some("ABCD-12345".to_owned())
        );
        assert_eq!(f.finish(SCREEN), None, "once");
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
