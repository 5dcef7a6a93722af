//! `pty`: programs on a real pseudo-terminal, with login-URL detection.
//!
//! Request body: a [`PtyRequest`] message frame, then `Stdin` frames (keys for the program) and
//! [`PtyControl`] message frames (resize, signal, close) in any order. Response body: a
//! [`PtyEvent::Started`] or [`PtyEvent::Attached`] message, the scrollback and then live output as
//! `Stdout` frames, [`PtyEvent::Url`] messages as login URLs are found (those found before an attach
//! come right after the scrollback), and [`PtyEvent::Exited`] once the program ended and all its output
//! was sent.
//!
//! A session outlives its call only when spawned with `keep_on_detach`; then another call can attach
//! to it by id (after a dropped connection, say) and closing it is explicit.

use serde::{Deserialize, Serialize};

use crate::messages::ExitStatus;
use crate::method::{Method, Streaming};
use crate::secret::EnvVars;
use crate::ErrorBody;

/// The widest terminal the agent makes (columns): wider than any real screen's text, small enough
/// that the agent's screen model of it stays a few megabytes.
pub const MAX_COLS: u16 = 1000;

/// The tallest terminal the agent makes (rows).
pub const MAX_ROWS: u16 = 500;

/// The `pty` streaming call.
#[derive(Debug)]
pub struct Pty;
impl Method for Pty {
    const NAME: &'static str = "pty";
}
impl Streaming for Pty {
    type Request = PtyRequest;
    type Event = PtyEvent;
}

/// Opening message of [`Pty`]: start a program, or attach to a running session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PtyRequest {
    /// Start a program on a new terminal.
    Spawn(PtySpawn),
    /// Attach to an existing session: its scrollback first, then live output.
    Attach {
        /// The session id from [`PtyEvent::Started`].
        session: String,
        /// This client is a person's terminal: it is shown the scrollback without its terminal
        /// queries, and what it sends reaches the program without its answers to them (the
        /// agent answers the program's queries itself).
        #[serde(default)]
        interactive: bool,
    },
}

/// What to start, on which terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySpawn {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Variables added on top of the configured environment for this program only.
    #[serde(default)]
    pub env: EnvVars,
    /// Working directory (default: the agent's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Terminal width in columns.
    #[serde(default = "default_cols")]
    pub cols: u16,
    /// Terminal height in rows.
    #[serde(default = "default_rows")]
    pub rows: u16,
    /// Provider whose first-run prompts are answered automatically (`claude_code`, `codex`,
    /// `gemini_cli`). URL detection applies every provider rule regardless.
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's login mode (`browser`, `paste_code`, `device_code`; default: its first):
    /// its environment is added under [`PtySpawn::env`], and a device-code mode reports
    /// [`PtyEvent::DeviceCode`].
    #[serde(default)]
    pub mode: Option<String>,
    /// This client is a person's terminal in raw mode: what it sends reaches the program without
    /// its answers to terminal queries (the agent answers the program's queries itself).
    #[serde(default)]
    pub interactive: bool,
    /// Keep the session running when this call ends, for a later attach; close it explicitly.
    #[serde(default)]
    pub keep_on_detach: bool,
    /// The guest user the program runs as, its `HOME`, `USER` and `LOGNAME` with it. Default: the
    /// image's unprivileged user (the agent alone is root), or the agent's own user where the
    /// image names none. Only an agent running as root can run a program as another user;
    /// `"root"` must be asked for by name.
    #[serde(default)]
    pub user: Option<String>,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

impl PtySpawn {
    /// A spawn of `argv` on an 80x24 terminal.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> PtySpawn {
        PtySpawn {
            argv: argv.into_iter().map(Into::into).collect(),
            env: EnvVars::default(),
            cwd: None,
            cols: default_cols(),
            rows: default_rows(),
            provider: None,
            mode: None,
            interactive: false,
            keep_on_detach: false,
            user: None,
        }
    }
}

/// Control messages a client sends during a [`Pty`] call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PtyControl {
    /// The terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Send a signal to the session's process group (`"INT"`, `"TERM"`, `"HUP"`, `"KILL"`, ...).
    Signal {
        /// Signal name, with or without `SIG`.
        signal: String,
    },
    /// End the session: its whole process group is killed.
    Close,
}

/// Where a login URL was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlSource {
    /// Rendered on the terminal.
    Screen,
    /// The target of an OSC 8 hyperlink.
    Hyperlink,
    /// An OSC 52 clipboard write.
    Clipboard,
    /// The program called `$BROWSER` / `xdg-open`.
    Browser,
}

/// Messages of a [`Pty`] response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PtyEvent {
    /// The program is running on a new terminal.
    Started {
        /// Session id, for attaching and closing.
        session: String,
        /// Process id (also its process group).
        pid: u32,
    },
    /// Attached to an existing session; its scrollback follows.
    Attached {
        /// Session id.
        session: String,
        /// Bytes of scrollback that follow.
        scrollback_bytes: u64,
    },
    /// A login URL, reported once per session.
    Url {
        /// The URL.
        url: String,
        /// The provider rule it matched.
        provider: String,
        /// Where it was found.
        source: UrlSource,
    },
    /// A device-code login's verification page and one-time code, reported once both are on
    /// the screen, whole.
    DeviceCode {
        /// The page where the user enters the code.
        url: String,
        /// The code.
        code: String,
        /// The provider whose login mode found it.
        provider: String,
    },
    /// The program ended; all its output has been sent.
    Exited(ExitStatus),
    /// A frame the client sent was refused: a control message that is not JSON or has an unknown
    /// `op`, a size of zero, an unknown signal, input after the program ended. The session and the
    /// call go on; only that frame was dropped. (A frame that breaks the framing itself ends the
    /// call's input side: nothing after it can be read, but the program and its output go on.)
    Error(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_and_defaulted() {
        let req: PtyRequest =
            serde_json::from_str(r#"{"op":"spawn","argv":["sh"]}"#).expect("parse");
        assert_eq!(req, PtyRequest::Spawn(PtySpawn::new(["sh"])));
        let ctl = serde_json::to_string(&PtyControl::Resize {
            cols: 100,
            rows: 30,
        })
        .expect("json");
        assert_eq!(ctl, r#"{"op":"resize","cols":100,"rows":30}"#);
        let ev = PtyEvent::Url {
            url: "https://x".into(),
            provider: "codex".into(),
            source: UrlSource::Browser,
        };
        assert_eq!(
            serde_json::to_string(&ev).expect("json"),
            r#"{"event":"url","url":"https://x","provider":"codex","source":"browser"}"#
        );
        let ev = PtyEvent::Error(ErrorBody::new(
            crate::ErrorCode::BadRequest,
            "unknown signal",
        ));
        let json = serde_json::to_string(&ev).expect("json");
        assert_eq!(
            json,
            r#"{"event":"error","code":"bad_request","message":"unknown signal"}"#
        );
        assert_eq!(serde_json::from_str::<PtyEvent>(&json).expect("parse"), ev);
    }
}
