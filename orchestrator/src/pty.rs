//! `agentctl pty`: run a program on a PTY in the guest and stream what happens as JSON lines
//! (`started`, `output`, `url`, `exited`), or attach the local terminal for a person
//! (`--interactive`).

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use protocol::frame::{Frame, FrameKind};
use protocol::pty::{PtyControl, PtyEvent, PtyRequest, PtySpawn};
use protocol::secret::EnvVars;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::client::StreamItem;
use crate::{AgentClient, ClientError};

/// Arguments of `agentctl pty`.
#[derive(Debug, Clone, clap::Args)]
pub struct PtyArgs {
    /// Provider whose first-run prompts are answered (claude_code, codex, gemini_cli).
    #[arg(long)]
    pub provider: Option<String>,
    /// Terminal width.
    #[arg(long, default_value_t = 100)]
    pub cols: u16,
    /// Terminal height.
    #[arg(long, default_value_t = 30)]
    pub rows: u16,
    /// Attach the local terminal (raw mode) instead of printing JSON lines.
    #[arg(long)]
    pub interactive: bool,
    /// Forward this process's standard input as keys (JSON mode).
    #[arg(long)]
    pub stdin: bool,
    /// NAME=VALUE for the program (repeatable).
    #[arg(long = "env", value_parser = crate::pty::parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
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

impl PtyArgs {
    /// Runs the program; returns its shell-style exit code. JSON lines go to `emit`.
    pub async fn run(
        self,
        client: &AgentClient,
        emit: &mut dyn FnMut(serde_json::Value),
    ) -> Result<i32, PtyCommandError> {
        let spawn = PtySpawn {
            argv: self.argv,
            env: EnvVars::from_pairs(self.env),
            cwd: self.cwd,
            cols: self.cols,
            rows: self.rows,
            provider: self.provider,
            interactive: self.interactive,
            keep_on_detach: false,
        };
        let mut call = client.pty(&PtyRequest::Spawn(spawn)).await?;
        let _raw = self.interactive.then(RawMode::enter);
        if self.interactive || self.stdin {
            if let Some(input) = call.input() {
                tokio::spawn(async move {
                    let mut stdin = tokio::io::stdin();
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = stdin.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let frame =
                            Frame::data(FrameKind::Stdin, Bytes::copy_from_slice(&buf[..n]));
                        if input.send(frame).await.is_err() {
                            break;
                        }
                    }
                });
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
                    if let PtyEvent::Exited(status) = &event {
                        code = status.shell_code();
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

/// Sends a control message on an open `pty` call.
pub async fn control(
    call: &crate::client::StreamCall<protocol::pty::Pty>,
    control: &PtyControl,
) -> Result<(), ClientError> {
    let frame = Frame::message(control).map_err(|e| ClientError::Decode(e.to_string()))?;
    call.send_frame(frame).await
}
