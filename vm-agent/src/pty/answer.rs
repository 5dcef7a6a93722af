//! First-run prompts answered from the provider rules, when the program is ready for the keys.
//!
//! The newest CLIs drop input that arrives while they are still drawing or before their input
//! handling starts (claude's trust dialog ignores keys for ~150 ms after it appears; codex's TUI
//! ignores an Enter sent in the same instant as "Press enter to continue"). So a prompt that
//! newly appears on the screen only *arms* its answer; the keys go out once the program's output
//! has been quiet for the rule's quiet time (terminal queries are answered at once, so those
//! answers always go first), and only if the prompt is still on the screen. A prompt drawn under a
//! never-ending animation is answered after [`MAX_WAIT`] regardless.

use std::time::{Duration, Instant};

use crate::providers::AutoResponse;

/// The longest an armed answer waits for the output to go quiet.
pub const MAX_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Rule {
    rule: AutoResponse,
    fired: u32,
    /// The pattern was on the screen at the last look.
    present: bool,
    /// When the pattern newly appeared and the answer became due (not yet sent).
    armed: Option<Instant>,
}

/// One session's auto-responses.
#[derive(Debug)]
pub struct AutoResponder {
    rules: Vec<Rule>,
}

impl AutoResponder {
    /// Answers for `rules`, none armed.
    pub fn new(rules: &[AutoResponse]) -> AutoResponder {
        AutoResponder {
            rules: rules
                .iter()
                .map(|r| Rule {
                    rule: r.clone(),
                    fired: 0,
                    present: false,
                    armed: None,
                })
                .collect(),
        }
    }

    /// The program wrote output; `screen` is the rendered screen after it. Arms the answers whose
    /// prompt newly appeared, disarms those whose prompt went away.
    pub fn observe(&mut self, screen: &str, now: Instant) {
        for r in &mut self.rules {
            let matches = r.rule.pattern.is_match(screen);
            if matches && !r.present && r.fired < r.rule.max {
                r.armed = Some(now);
            }
            if !matches {
                r.armed = None;
            }
            r.present = matches;
        }
    }

    /// When the next armed answer is due if no more output comes, given the last output at
    /// `last_output`.
    pub fn next_due(&self, last_output: Instant) -> Option<Instant> {
        self.rules
            .iter()
            .filter_map(|r| {
                let armed = r.armed?;
                Some((last_output + r.rule.quiet).min(armed + MAX_WAIT))
            })
            .min()
    }

    /// The keys of the answers due at `now` (output quiet long enough, or waited too long), in
    /// rule order; each fires once per appearance of its prompt, at most `max` times.
    pub fn due(&mut self, screen: &str, last_output: Instant, now: Instant) -> Vec<u8> {
        let mut keys = Vec::new();
        for r in &mut self.rules {
            let Some(armed) = r.armed else {
                continue;
            };
            let quiet = now.saturating_duration_since(last_output) >= r.rule.quiet;
            if !(quiet || now.saturating_duration_since(armed) >= MAX_WAIT) {
                continue;
            }
            r.armed = None;
            if r.rule.pattern.is_match(screen) {
                r.fired += 1;
                keys.extend_from_slice(r.rule.keys.as_bytes());
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder(quiet_ms: u64) -> AutoResponder {
        AutoResponder::new(&[AutoResponse {
            pattern: regex::Regex::new("Press enter").expect("pattern"),
            keys: "\r".into(),
            max: 1,
            quiet: Duration::from_millis(quiet_ms),
        }])
    }

    #[test]
    fn a_prompt_is_answered_only_once_the_output_is_quiet() {
        let mut r = responder(300);
        let t0 = Instant::now();
        r.observe("Press enter to continue", t0);
        assert!(
            r.due("Press enter to continue", t0, t0).is_empty(),
            "not at once"
        );
        // More output (a redraw) 100 ms later pushes the answer back.
        let t1 = t0 + Duration::from_millis(100);
        r.observe("Press enter to continue", t1);
        assert_eq!(r.next_due(t1), Some(t1 + Duration::from_millis(300)));
        let before = t1 + Duration::from_millis(299);
        assert!(r.due("Press enter to continue", t1, before).is_empty());
        let after = t1 + Duration::from_millis(300);
        assert_eq!(r.due("Press enter to continue", t1, after), b"\r");
        // Once: nothing more, however long the prompt stays.
        assert_eq!(r.next_due(t1), None);
        assert!(r
            .due("Press enter to continue", t1, after + MAX_WAIT)
            .is_empty());
    }

    #[test]
    fn a_prompt_gone_before_it_was_due_is_not_answered() {
        let mut r = responder(300);
        let t0 = Instant::now();
        r.observe("Press enter to continue", t0);
        let t1 = t0 + Duration::from_millis(50);
        r.observe("something else", t1);
        assert_eq!(r.next_due(t1), None);
        assert!(r.due("something else", t1, t1 + MAX_WAIT).is_empty());
    }

    #[test]
    fn an_endless_animation_delays_the_answer_at_most_max_wait() {
        let mut r = responder(300);
        let t0 = Instant::now();
        r.observe("Press enter to continue |", t0);
        let mut t = t0;
        while t < t0 + MAX_WAIT {
            t += Duration::from_millis(100);
            r.observe("Press enter to continue /", t);
            if t < t0 + MAX_WAIT {
                assert!(r.due("Press enter to continue /", t, t).is_empty());
            }
        }
        assert_eq!(r.due("Press enter to continue /", t, t0 + MAX_WAIT), b"\r");
    }
}
