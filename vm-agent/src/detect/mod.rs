//! OAuth/login URL detection on the output of a terminal program.
//!
//! CLIs print their login URL through colour codes, OSC 8 hyperlinks, soft wraps at the terminal
//! width, hard wraps they insert themselves (newline plus indentation inside the URL) and cursor-moving
//! redraws, and the bytes arrive in arbitrary reads. Regexes on raw bytes break on all of these, so the
//! detector keeps a screen model ([`screen`]) fed by the `vte` parser and looks for URLs in the rendered
//! rows, joining rows that continue each other.
//!
//! Determinism: the result must not depend on how the stream was split into reads. The screen is only
//! examined at *checkpoints* defined by the byte stream itself (just before and after every control
//! function, and at [`UrlDetector::finish`]), never at the end of a read. A URL whose end touches the
//! cursor or the last column may still be growing; it is held back as *pending* until the cursor leaves.

mod queries;
mod screen;
mod term;

use std::collections::HashSet;
use std::sync::Arc;

use crate::providers::ProviderRules;
use screen::Screen;
use term::Term;

pub use queries::{without_queries, without_replies};

/// Largest OSC string kept (OSC 8 targets and OSC 52 clipboard payloads); longer ones are cut, which
/// bounds memory whatever the program writes.
const OSC_MAX: usize = 16 * 1024;

pub use protocol::pty::UrlSource;

/// A login URL found in a session, reported once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectedUrl {
    /// The URL exactly as the CLI meant it.
    pub url: String,
    /// The id of the provider rule it matched (`claude_code`, `codex`, `gemini_cli`, `generic_oauth`).
    pub provider: String,
    /// Where it was first seen.
    pub source: UrlSource,
}

/// Finds login URLs in one terminal session's output. One per PTY session.
pub struct UrlDetector {
    parser: vte::Parser<OSC_MAX>,
    term: Term,
}

impl std::fmt::Debug for UrlDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlDetector")
            .field("cols", &self.term.screen.cols)
            .field("rows", &self.term.screen.rows)
            .field("reported", &self.term.seen.len())
            .finish()
    }
}

impl UrlDetector {
    /// A detector for a terminal of `cols` x `rows` using `rules` to decide which URLs count.
    pub fn new(cols: u16, rows: u16, rules: Arc<ProviderRules>) -> UrlDetector {
        UrlDetector {
            parser: vte::Parser::<OSC_MAX>::new_with_size(),
            term: Term {
                screen: Screen::new(cols, rows),
                rules,
                dirty: None,
                pending: Vec::new(),
                seen: HashSet::new(),
                found: Vec::new(),
                replies: Vec::new(),
            },
        }
    }

    /// Feeds output bytes (any split) and returns the URLs that became complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<DetectedUrl> {
        self.parser.advance(&mut self.term, bytes);
        std::mem::take(&mut self.term.found)
    }

    /// Declares the stream ended (or idle): URLs still held back as possibly incomplete are reported.
    pub fn finish(&mut self) -> Vec<DetectedUrl> {
        self.term.checkpoint(true);
        std::mem::take(&mut self.term.found)
    }

    /// Reports a URL that reached the agent some other way (the `$BROWSER` shim). Returns it if it
    /// matches a provider rule and was not reported before; the same URL later on screen is not
    /// reported again.
    pub fn report_external(&mut self, url: &str, source: UrlSource) -> Option<DetectedUrl> {
        self.term.consider(url, source);
        self.term.found.pop()
    }

    /// The terminal changed size.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.term.checkpoint(false);
        self.term.screen.resize(cols, rows);
        self.term.dirty = None;
        self.term.pending.clear();
    }

    /// Bytes to write back to the program: answers to the terminal queries seen so far.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.term.replies)
    }

    /// The rendered screen as text rows (for auto-response patterns and debugging).
    pub fn screen_text(&self) -> String {
        let mut out = String::new();
        for row in &self.term.screen.grid {
            let line: String = row
                .cells
                .iter()
                .filter(|c| c.ch != '\0')
                .map(|c| c.ch)
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
