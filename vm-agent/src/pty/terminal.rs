//! The browser VM's terminal: an `xterm` on the VM's desktop showing the agent's own PTY session
//! of the CLI's login, so the person sees what the CLI prints and can type into it, while
//! detection, scrollback and the host's events stay with the agent. The terminal runs
//! `vm-agent attach-login`, which connects to the agent's login socket (root only) and joins it
//! to its own terminal; the agent streams the latest login session there (its scrollback first),
//! and the next one when it ends.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use super::session::SessionEvent;
use super::PtySessions;

/// The socket the terminal connects to.
pub const LOGIN_SOCKET: &str = "/run/vm-agent/login.sock";
/// The agent binary's argument that makes it the terminal's side.
pub const ATTACH_ARG: &str = "attach-login";

/// Serves the login socket at `path` until the agent stops; `owner` (uid, gid), the user the
/// terminal runs as, may connect to it.
pub async fn serve(sessions: Arc<PtySessions>, path: PathBuf, owner: Option<(u32, u32)>) {
    let listener = match bind(&path, owner) {
        Ok(l) => l,
        Err(e) => return warn!(path = %path.display(), error = %e, "no login terminal socket"),
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let sessions = sessions.clone();
                tokio::spawn(async move { show(&sessions, stream).await });
            }
            Err(e) => {
                warn!(error = %e, "login terminal accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn bind(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        // Root's; the terminal's user only passes through it (0711) to its socket.
        let mode = if owner.is_some() { 0o711 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        // In a directory only root writes: nothing can have replaced the socket by a link.
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(listener)
}

/// Shows login sessions on one terminal, one after the other, until the terminal goes away.
async fn show(sessions: &PtySessions, stream: UnixStream) {
    let (mut from_terminal, mut to_terminal) = stream.into_split();
    let mut waiting_said = false;
    loop {
        let Some(session) = sessions.latest_login().filter(|s| s.exit().is_none()) else {
            if !waiting_said {
                waiting_said = true;
                let _ = to_terminal
                    .write_all(b"Waiting for a login to start...\r\n")
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        waiting_said = false;
        debug!(session = %session.id(), "terminal attached to the login");
        let attachment = session.attach(true);
        if to_terminal.write_all(&attachment.scrollback).await.is_err() {
            return;
        }
        let mut events = attachment.events;
        let mut keys = [0u8; 4096];
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(SessionEvent::Output(bytes)) => {
                        if to_terminal.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Ok(SessionEvent::Exited(_)) | Err(RecvError::Closed) => break,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                },
                n = from_terminal.read(&mut keys) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if session.write_typed(&keys[..n]).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        let _ = to_terminal.write_all(b"\r\n[the login ended]\r\n").await;
    }
}

/// The terminal's side (`vm-agent attach-login`): joins this process's terminal (raw mode) to
/// the agent's login socket until either ends.
pub fn attach(socket: &Path) -> std::io::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &raw,
        );
    }
    let mut keys_to = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || keys_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut from = stream;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 16 * 1024];
    let result = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(t) = &saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
    }
    result
}
