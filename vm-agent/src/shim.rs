//! The `$BROWSER` / `xdg-open` shim: the agent binary, invoked under another name (a symlink), hands
//! the URL a CLI wants opened to the running agent and exits 0. Beats scraping the screen whenever the
//! CLI uses it, and the URL lands in the same per-session detector, so the same URL from the shim and
//! from the screen is one event.
//!
//! The agent listens on a Unix socket in its own directory. The programs run as the image's
//! unprivileged user, so the directory can be traversed but not listed (0711) and anyone may
//! connect to the socket (0666): what decides is the kernel's word on the caller
//! (`SO_PEERCRED`), which must be a process of the session it names. It gives every PTY program `BROWSER=<dir>/bin/vm-agent-browser`, `PATH=<dir>/bin:...` (gemini runs
//! `xdg-open` from `PATH`), [`SOCKET_ENV`] and [`SESSION_ENV`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::shim::{ShimRequest, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::pty::PtySessions;
pub use crate::pty::SESSION_ENV;

/// What the agent does with a URL a login session's CLI handed to the browser: `(provider, url)`.
pub type UrlOpener = dyn Fn(&str, &str) + Send + Sync;

/// Names the agent binary answers to as the shim.
pub const SHIM_NAMES: &[&str] = &["vm-agent-browser", "xdg-open"];
/// Variable telling the shim where the agent listens.
pub const SOCKET_ENV: &str = "AGENT_SHIM_SOCKET";
/// Name of the shim's directory under the temporary directory, followed by the agent's pid.
pub const DIR_PREFIX: &str = "vm-agent-shim-";

/// Why the shim could not hand its URL over.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No URL argument.
    #[error("usage: {0} URL")]
    Usage(String),
    /// Not started by the agent (no socket variable).
    #[error("{SOCKET_ENV} is not set: not running under the vm-agent")]
    NoSocket,
    /// Talking to the agent failed.
    #[error("cannot reach the agent: {0}")]
    Io(#[from] std::io::Error),
    /// The agent refused the URL.
    #[error("agent refused: {0}")]
    Refused(String),
}

/// Whether the binary was started under a shim name.
pub fn invoked_as_shim(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| SHIM_NAMES.contains(&n))
}

/// The shim side: sends the URL in `args` (after the program name) to the agent.
pub fn run_client(args: &[OsString]) -> Result<(), ShimError> {
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let url = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'))
        .ok_or_else(|| ShimError::Usage(name.clone()))?;
    let socket = std::env::var_os(SOCKET_ENV).ok_or(ShimError::NoSocket)?;
    let session = std::env::var(SESSION_ENV).unwrap_or_default();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = ShimRequest {
        session,
        url: url.into_owned(),
        via: name,
    };
    stream.write_all(request.to_line().as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    match reply.trim_end() {
        "ok" => Ok(()),
        other => Err(ShimError::Refused(other.to_owned())),
    }
}

/// The agent side: the private directory, its symlinks and the listening socket.
#[derive(Debug)]
pub struct ShimServer {
    dir: PathBuf,
    socket: PathBuf,
    listener: Mutex<Option<std::os::unix::net::UnixListener>>,
}

impl ShimServer {
    /// Creates a directory (0711: traversable, not listable) under `parent` with the shim
    /// symlinks to `exe` and binds the socket (0666; callers are checked by their process). Directories that agents killed without a chance to clean up left behind
    /// (same owner, process gone) are removed first.
    pub fn start(parent: &Path, exe: &Path) -> std::io::Result<ShimServer> {
        sweep_stale(parent);
        let dir = parent.join(format!("{DIR_PREFIX}{}", std::process::id()));
        if std::fs::symlink_metadata(&dir).is_ok() {
            // Ours by name: an earlier agent that had this pid (a VM's PID 1 on every boot).
            std::fs::remove_dir_all(&dir)?;
        }
        // Created with its final mode, and not over anything that appeared since: never a
        // moment at 0755.
        let private = || {
            let mut b = std::fs::DirBuilder::new();
            b.mode(0o711);
            b
        };
        private().create(&dir)?;
        private().create(dir.join("bin"))?;
        for name in SHIM_NAMES {
            std::os::unix::fs::symlink(exe, dir.join("bin").join(name))?;
        }
        let socket = dir.join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        Ok(ShimServer {
            dir,
            socket,
            listener: Mutex::new(Some(listener)),
        })
    }

    /// The private directory (socket and symlinks).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory now (on shutdown; dropping the server does it too).
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => debug!(dir = %self.dir.display(), "shim directory removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot remove the shim directory")
            }
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sets the variables a PTY program needs to reach the shim.
    pub fn program_env(&self, env: &mut BTreeMap<String, String>) {
        let bin = self.dir.join("bin");
        env.insert(
            "BROWSER".into(),
            bin.join("vm-agent-browser").display().to_string(),
        );
        let path = env.get("PATH").cloned().unwrap_or_default();
        env.insert("PATH".into(), format!("{}:{path}", bin.display()));
        env.insert(SOCKET_ENV.into(), self.socket.display().to_string());
    }

    /// Accepts shim connections until the agent stops. Each URL goes to its session's detector,
    /// then to `open` (the browser VM opens it in Chromium) with the session's provider, if the
    /// session runs a provider's login.
    pub async fn serve(&self, sessions: Arc<PtySessions>, open: Arc<UrlOpener>) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(tokio::net::UnixListener::from_std);
        let listener = match listener {
            Some(Ok(l)) => l,
            Some(Err(e)) => return warn!(error = %e, "shim listener unusable"),
            None => return,
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (sessions, open) = (sessions.clone(), open.clone());
                    tokio::spawn(async move { handle(&sessions, &*open, stream).await });
                }
                Err(e) => {
                    warn!(error = %e, "shim accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ShimServer {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes `<parent>/vm-agent-shim-<pid>` directories of this user whose agent no longer runs.
fn sweep_stale(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = rustix::process::getuid().as_raw();
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if pid == own || !ours || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            debug!(dir = %path.display(), "stale shim directory removed");
        }
    }
}

async fn handle(sessions: &PtySessions, open: &UrlOpener, stream: tokio::net::UnixStream) {
    // Who is calling, from the kernel (SO_PEERCRED), not from what the caller says.
    let caller = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok());
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    // One byte past the limit, so a longer line is refused as too long rather than cut.
    let mut reader = tokio::io::BufReader::new(read).take(MAX_LINE as u64 + 1);
    let reply = match reader.read_until(b'\n', &mut line).await {
        Ok(_) => answer(sessions, open, caller, &line),
        Err(e) => format!("error: {e}"),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
}

fn answer(sessions: &PtySessions, open: &UrlOpener, caller: Option<u32>, line: &[u8]) -> String {
    let request = match ShimRequest::parse(line) {
        Ok(request) => request,
        Err(e) => return format!("error: {e}"),
    };
    let (session, url) = (request.session.as_str(), request.url.as_str());
    let Some(s) = sessions.get(session) else {
        return format!("error: no pty session {session:?}");
    };
    // A session's URLs come from its own programs: another process (another session's CLI, a
    // process of the guest user outside any login) cannot put a URL into it.
    if !caller.is_some_and(|pid| crate::system::descends_from(pid, s.pid())) {
        warn!(
            session,
            ?caller,
            "a shim call from outside its session refused"
        );
        return format!("error: the caller is not a process of pty session {session:?}");
    }
    let reported = s.report_browser_url(url);
    if let Some(provider) = s.provider() {
        open(provider, url);
    }
    debug!(
        session,
        new = reported.is_some(),
        "url from the browser shim"
    );
    "ok".into()
}
