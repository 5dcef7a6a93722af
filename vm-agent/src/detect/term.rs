//! The detector's terminal: the `vte` performer that keeps the screen model, answers terminal
//! queries, reads OSC 8 hyperlinks and OSC 52 clipboard writes, and at every checkpoint looks for
//! URLs in the rows printed on since the last one, joining rows that continue each other.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;

use super::screen::Screen;
use super::{DetectedUrl, UrlSource};
use crate::providers::ProviderRules;

/// How many distinct URLs one detector remembers (and so reports); protects memory against a flood.
const MAX_SEEN: usize = 4096;
/// How far up a logical line is followed when looking for its start.
const MAX_LINE_ROWS: usize = 64;
/// The most indentation a hard-wrapped continuation row may carry.
const MAX_INDENT: usize = 8;

/// A URL candidate that may still grow (its end touches the cursor or the last column).
#[derive(Clone, Debug)]
pub(super) struct Pending {
    start_row: usize,
    end_row: usize,
    text: String,
}

/// The `vte` performer: the screen plus detection state.
pub(super) struct Term {
    pub(super) screen: Screen,
    pub(super) rules: Arc<ProviderRules>,
    /// Rows printed on since the last checkpoint.
    pub(super) dirty: Option<(usize, usize)>,
    pub(super) pending: Vec<Pending>,
    pub(super) seen: HashSet<String>,
    pub(super) found: Vec<DetectedUrl>,
    pub(super) replies: Vec<u8>,
}

fn is_url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// One logical line: rows joined where one continues the next.
struct Line {
    /// ASCII text; non-URL or non-ASCII cells become a space, linked cells a `\x01` (never in a URL).
    text: Vec<u8>,
    /// Screen position of each byte of `text`.
    pos: Vec<(usize, usize)>,
    first_row: usize,
    last_row: usize,
}

impl Term {
    fn mark_dirty(&mut self, row: usize) {
        self.dirty = Some(match self.dirty {
            None => (row, row),
            Some((lo, hi)) => (lo.min(row), hi.max(row)),
        });
    }

    fn scrolled(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if let Some((lo, hi)) = self.dirty {
            self.dirty = if hi < n {
                None
            } else {
                Some((lo.saturating_sub(n), hi - n))
            };
        }
        let mut gone = Vec::new();
        self.pending.retain_mut(|p| {
            if p.end_row < n {
                gone.push(std::mem::take(&mut p.text));
                false
            } else {
                p.start_row = p.start_row.saturating_sub(n);
                p.end_row -= n;
                true
            }
        });
        // A held-back URL scrolled off the screen: the cursor certainly left it.
        for text in gone {
            self.consider(&text, UrlSource::Screen);
        }
    }

    fn cell_byte(&self, row: usize, col: usize) -> u8 {
        let c = self.screen.grid[row].cells[col];
        if c.linked {
            0x01
        } else if c.ch.is_ascii() && is_url_char(c.ch as u8) {
            c.ch as u8
        } else {
            b' '
        }
    }

    fn first_nonspace(&self, row: usize) -> usize {
        let cells = &self.screen.grid[row].cells;
        cells
            .iter()
            .position(|c| c.ch != ' ')
            .unwrap_or(cells.len())
    }

    /// Whether row `a + 1` continues row `a` (soft wrap, or a hard wrap inside a URL-looking run).
    fn continues(&self, a: usize) -> bool {
        let s = &self.screen;
        if a + 1 >= s.rows {
            return false;
        }
        if s.grid[a].wrapped {
            return true;
        }
        if !is_url_char(self.cell_byte(a, s.cols - 1)) {
            return false;
        }
        let indent = self.first_nonspace(a + 1);
        indent < s.cols
            && indent <= self.first_nonspace(a).min(MAX_INDENT)
            && is_url_char(self.cell_byte(a + 1, indent))
    }

    fn line_at(&self, row: usize) -> Line {
        let mut first = row;
        while first > 0 && row - first < MAX_LINE_ROWS && self.continues(first - 1) {
            first -= 1;
        }
        let mut line = Line {
            text: Vec::new(),
            pos: Vec::new(),
            first_row: first,
            last_row: first,
        };
        let mut r = first;
        loop {
            let soft = r > first && self.screen.grid[r - 1].wrapped;
            let start = if r > first && !soft {
                self.first_nonspace(r)
            } else {
                0
            };
            for col in start..self.screen.cols {
                if self.screen.grid[r].cells[col].ch == '\0' {
                    continue;
                }
                line.text.push(self.cell_byte(r, col));
                line.pos.push((r, col));
            }
            line.last_row = r;
            if r - first >= MAX_LINE_ROWS || !self.continues(r) {
                break;
            }
            r += 1;
        }
        line
    }

    /// Examines rows touched since the last checkpoint and the held-back URLs.
    pub(super) fn checkpoint(&mut self, force: bool) {
        let mut rows: Vec<usize> = Vec::new();
        if let Some((lo, hi)) = self.dirty.take() {
            // Fast path for plain output: a new URL needs a "://" on a touched row, or continues a
            // held-back one (then `pending` is not empty and its rows are scanned below).
            let has_colon = (lo..=hi.min(self.screen.rows - 1))
                .any(|r| self.screen.grid[r].cells.iter().any(|c| c.ch == ':'));
            if has_colon || !self.pending.is_empty() {
                rows.extend(lo..=hi);
            }
        }
        for p in std::mem::take(&mut self.pending) {
            rows.extend(p.start_row..=(p.end_row + 1).min(self.screen.rows - 1));
        }
        if rows.is_empty() {
            return;
        }
        rows.sort_unstable();
        rows.dedup();
        let mut done_until = None;
        for row in rows {
            if done_until.is_some_and(|d| row <= d) {
                continue;
            }
            let line = self.line_at(row);
            done_until = Some(line.last_row);
            self.scan_line(&line, force);
        }
    }

    fn scan_line(&mut self, line: &Line, force: bool) {
        let text = &line.text;
        let mut i = 0;
        while let Some(off) = find_scheme(&text[i..]) {
            let start = i + off;
            let mut end = start;
            while end < text.len() && is_url_char(text[end]) {
                end += 1;
            }
            i = end.max(start + 1);
            let url_end = trim_trailing(&text[start..end]) + start;
            if url_end <= start + 8 {
                continue;
            }
            let url = String::from_utf8_lossy(&text[start..url_end]).into_owned();
            let (end_row, end_col) = line.pos[url_end - 1];
            let touches_cursor = end == url_end && self.touches_cursor(end_row, end_col);
            // Ends exactly on the last column: a hard-wrapped continuation may still follow on the next
            // row, or the row below is being redrawn (CLIs erase and rewrite the first cells of a
            // wrapped URL when they repaint). Held back until the line grows or the stream ends.
            let may_continue =
                end == text.len() && end_col == self.screen.cols - 1 && end_row == line.last_row;
            if !force && (touches_cursor || may_continue) {
                self.pending.push(Pending {
                    start_row: line.first_row,
                    end_row,
                    text: url,
                });
            } else {
                self.consider(&url, UrlSource::Screen);
            }
        }
    }

    fn touches_cursor(&self, row: usize, col: usize) -> bool {
        let s = &self.screen;
        s.row == row && (s.col == col + 1 || (s.wrap_pending && s.col == col))
    }

    /// Reports `url` if a rule matches and it is new.
    pub(super) fn consider(&mut self, url: &str, source: UrlSource) {
        if self.seen.len() >= MAX_SEEN || self.seen.iter().any(|s| s.starts_with(url)) {
            // Already reported, or a cut-off copy of a reported URL (a repaint in progress).
            return;
        }
        let Some(provider) = self.rules.classify(url) else {
            return;
        };
        self.seen.insert(url.to_owned());
        self.found.push(DetectedUrl {
            url: url.to_owned(),
            provider: provider.to_owned(),
            source,
        });
    }

    fn before_control(&mut self) {
        if self.dirty.is_some() || !self.pending.is_empty() {
            self.checkpoint(false);
        }
    }

    fn after_control(&mut self) {
        if !self.pending.is_empty() {
            self.checkpoint(false);
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        if self.replies.len() < 64 * 1024 {
            self.replies.extend_from_slice(bytes);
        }
    }

    fn osc(&mut self, params: &[&[u8]], bell_terminated: bool) {
        let terminator: &[u8] = if bell_terminated { b"\x07" } else { b"\x1b\\" };
        match params {
            [b"8", _, uri @ ..] => {
                let uri = uri.join(&b';');
                self.screen.link_open = !uri.is_empty();
                if let Ok(uri) = std::str::from_utf8(&uri) {
                    self.consider(uri, UrlSource::Hyperlink);
                }
            }
            [b"52", _, data] if *data != b"?" => {
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(data) else {
                    return;
                };
                let text = String::from_utf8_lossy(&decoded);
                for word in text.split(|c: char| !c.is_ascii() || !is_url_char(c as u8)) {
                    if find_scheme(word.as_bytes()) == Some(0) {
                        let end = trim_trailing(word.as_bytes());
                        self.consider(&word[..end], UrlSource::Clipboard);
                    }
                }
            }
            [which @ (b"10" | b"11"), b"?"] => {
                let colour: &[u8] = if *which == b"10" {
                    b"rgb:ffff/ffff/ffff"
                } else {
                    b"rgb:0000/0000/0000"
                };
                let mut r = b"\x1b]".to_vec();
                r.extend_from_slice(which);
                r.push(b';');
                r.extend_from_slice(colour);
                r.extend_from_slice(terminator);
                self.reply(&r);
            }
            _ => {}
        }
    }
}

fn find_scheme(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 7 <= text.len() {
        let t = &text[i..];
        if t.starts_with(b"https://") || t.starts_with(b"http://") {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Length of `url` without trailing punctuation that belongs to the sentence, not the URL.
fn trim_trailing(url: &[u8]) -> usize {
    let mut end = url.len();
    while end > 0 {
        let c = url[end - 1];
        let unbalanced = |open: u8, close: u8| {
            c == close
                && url[..end].iter().filter(|&&b| b == open).count()
                    < url[..end].iter().filter(|&&b| b == close).count()
        };
        if b".,;:!?'\"".contains(&c) || unbalanced(b'(', b')') || unbalanced(b'[', b']') {
            end -= 1;
        } else {
            break;
        }
    }
    end
}

impl vte::Perform for Term {
    fn print(&mut self, c: char) {
        let scrolled = self.screen.print(c);
        self.scrolled(scrolled);
        self.mark_dirty(self.screen.row);
    }

    fn execute(&mut self, byte: u8) {
        self.before_control();
        let scrolled = match byte {
            b'\r' => {
                self.screen.carriage_return();
                0
            }
            b'\n' | 0x0b | 0x0c => self.screen.line_feed(),
            0x08 => {
                self.screen.backspace();
                0
            }
            b'\t' => {
                self.screen.tab();
                0
            }
            _ => 0,
        };
        self.scrolled(scrolled);
        self.after_control();
    }

    fn csi_dispatch(
        &mut self,
        params: &vte::Params,
        intermediates: &[u8],
        ignore: bool,
        action: char,
    ) {
        if ignore {
            return;
        }
        self.before_control();
        let values: Vec<u16> = params
            .iter()
            .map(|p| p.first().copied().unwrap_or(0))
            .collect();
        let first = values.first().copied().unwrap_or(0);
        match (intermediates, action) {
            ([], 'n') | ([b'?'], 'n') if first == 6 => {
                let q = if intermediates.is_empty() { "" } else { "?" };
                let r = format!("\x1b[{q}{};{}R", self.screen.row + 1, self.screen.col + 1);
                self.reply(r.as_bytes());
            }
            ([], 'n') if first == 5 => self.reply(b"\x1b[0n"),
            ([], 'c') if first == 0 => self.reply(b"\x1b[?1;2c"),
            ([b'>'], 'c') if first == 0 => self.reply(b"\x1b[>0;276;0c"),
            _ => {
                let scrolled = self.screen.csi(&values, intermediates, action);
                self.scrolled(scrolled);
            }
        }
        self.after_control();
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], ignore: bool, byte: u8) {
        if ignore {
            return;
        }
        self.before_control();
        let scrolled = self.screen.esc(intermediates, byte);
        self.scrolled(scrolled);
        self.after_control();
    }

    fn osc_dispatch(&mut self, params: &[&[u8]], bell_terminated: bool) {
        self.before_control();
        self.osc(params, bell_terminated);
        self.after_control();
    }
}
