//! `agentctl pty`: run a program on a PTY in the guest and stream what happens as JSON lines
//! (`started`, `output`, `url`, `exited`), or attach the local terminal for a person
//! (`--interactive`).

use std::io::{Read, Write};

use base64::Engine;
use bytes::Bytes;
use protocol::frame::{Frame, FrameKind};
use protocol::pty::{PtyControl, PtyEvent, PtyRequest, PtySpawn};
use protocol::secret::EnvVars;
use serde_json::json;

use orchestrator::client::StreamItem;
use orchestrator::{AgentClient, ClientError};

/// Arguments of `agentctl pty`.
#[derive(Debug, Clone, clap::Args)]
pub struct PtyArgs {
    /// Provider whose first-run prompts are answered (claude_code, codex, gemini_cli).
    #[arg(long)]
    pub provider: Option<String>,
    /// The provider's login mode (browser, paste_code, device_code; default: its first).
    #[arg(long, requires = "provider")]
    pub mode: Option<String>,
    /// Terminal width (default: the local terminal's with `--interactive`, following its resizes;
    /// otherwise 100).
    #[arg(long)]
    pub cols: Option<u16>,
    /// Terminal height (default: the local terminal's with `--interactive`; otherwise 30).
    #[arg(long)]
    pub rows: Option<u16>,
    /// Attach the local terminal (raw mode) instead of printing JSON lines.
    #[arg(long)]
    pub interactive: bool,
    /// Forward this process's standard input as keys (JSON mode).
    #[arg(long)]
    pub stdin: bool,
    /// NAME=VALUE for the program (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// The guest user to run as (default: the image's unprivileged user).
    #[arg(long)]
    pub user: Option<String>,
    /// Program and arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Why `agentctl pty` failed.
#[derive(Debug, thiserror::Error)]
pub enum PtyCommandError {
    /// The agent call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local terminal could not be used.
    #[error("local terminal: {0}")]
    Io(#[from] std::io::Error),
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        RawMode(saved)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            use nix::sys::termios::{tcsetattr, SetArg};
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}

/// Size used when neither the flags nor a local terminal give one.
const DEFAULT_SIZE: (u16, u16) = (100, 30);

/// The local terminal's size (columns, rows), if standard output is a terminal that knows it.
fn local_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Sends the local terminal's new size to the session on every SIGWINCH until the call ends.
async fn follow_resizes(
    mut winch: tokio::signal::unix::Signal,
    input: protocol::body::FrameSender,
) {
    while winch.recv().await.is_some() {
        let Some((cols, rows)) = local_size() else {
            continue;
        };
        let Ok(frame) = Frame::message(&PtyControl::Resize { cols, rows }) else {
            return;
        };
        if input.send(frame).await.is_err() {
            return;
        }
    }
}

/// Sends this process's standard input to the session as keys until either side ends.
fn forward_stdin(runtime: &tokio::runtime::Handle, input: &protocol::body::FrameSender) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let frame = Frame::data(FrameKind::Stdin, Bytes::copy_from_slice(&buf[..n]));
        if runtime.block_on(input.send(frame)).is_err() {
            return;
        }
    }
}

impl PtyArgs {
    /// Runs the program; returns its shell-style exit code. JSON lines go to `emit`.
    pub async fn run(
        self,
        client: &AgentClient,
        emit: &mut dyn FnMut(serde_json::Value),
    ) -> Result<i32, PtyCommandError> {
        // A person's terminal: the program gets its size and follows it, unless a size was given.
        // SIGWINCH is watched before the size is read, so a resize in between is not missed.
        let follow = self.interactive && self.cols.is_none() && self.rows.is_none();
        let winch = if follow {
            Some(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::window_change(),
            )?)
        } else {
            None
        };
        let local = self.interactive.then(local_size).flatten();
        let (cols, rows) = match (self.cols, self.rows, local) {
            (Some(c), Some(r), _) => (c, r),
            (c, r, Some((lc, lr))) => (c.unwrap_or(lc), r.unwrap_or(lr)),
            (c, r, None) => (c.unwrap_or(DEFAULT_SIZE.0), r.unwrap_or(DEFAULT_SIZE.1)),
        };
        let spawn = PtySpawn {
            argv: self.argv,
            env: EnvVars::from_pairs(self.env),
            cwd: self.cwd,
            cols,
            rows,
            provider: self.provider,
            mode: self.mode,
            interactive: self.interactive,
            keep_on_detach: false,
            user: self.user,
        };
        let mut call = client.pty(&PtyRequest::Spawn(spawn)).await?;
        let _raw = self.interactive.then(RawMode::enter);
        if let (Some(winch), Some(input)) = (winch, call.input()) {
            tokio::spawn(follow_resizes(winch, input));
        }
        if self.interactive || self.stdin {
            if let Some(input) = call.input() {
                // A plain thread, not tokio's stdin: a read blocked on a person's terminal cannot be
                // cancelled, and on the runtime's blocking pool it would keep agentctl from exiting
                // after the program ended until the next key press.
                let runtime = tokio::runtime::Handle::current();
                std::thread::spawn(move || forward_stdin(&runtime, &input));
            }
        }
        let mut code = 255;
        while let Some(item) = call.next().await? {
            match item {
                StreamItem::Data(_, bytes) if self.interactive => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                StreamItem::Data(_, bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => emit(json!({"event": "output", "text": text})),
                    Err(_) => emit(json!({
                        "event": "output",
                        "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                    })),
                },
                StreamItem::Event(event) => {
                    match &event {
                        PtyEvent::Exited(status) => code = status.shell_code(),
                        // The person sees what the agent refused (the terminal is raw: \r\n).
                        PtyEvent::Error(e) if self.interactive => {
                            eprint!("agentctl: pty: {e}\r\n");
                        }
                        _ => {}
                    }
                    if !self.interactive {
                        emit(json!(event));
                    }
                }
            }
        }
        Ok(code)
    }
}
