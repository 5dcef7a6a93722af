//! One PTY session: a process on a real pseudo-terminal, its output fanned out to any number of
//! attached clients (each first gets the scrollback, less its terminal queries), its login URLs detected, its terminal queries
//! answered.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc as async_mpsc;

use bytes::Bytes;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, MasterPty, PtySize};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::answer::AutoResponder;
use super::device::{DeviceCode, DeviceCodeFinder};
use crate::detect::{DetectedUrl, UrlDetector, UrlSource};
use crate::procset::ProcessSet;
use crate::providers::ProviderRules;

/// Bytes of recent output kept for clients that attach late.
pub const DEFAULT_SCROLLBACK: usize = 256 * 1024;
/// Read size from the PTY master.
const READ_CHUNK: usize = 64 * 1024;
/// Events buffered per attached client before it counts as lagging.
const EVENT_DEPTH: usize = 4096;
/// Input chunks queued for the PTY before writers wait.
const INPUT_DEPTH: usize = 256;

/// How a session's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

/// What a session tells its attached clients.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// Bytes the program wrote to the terminal.
    Output(Bytes),
    /// A login URL, reported once per session.
    Url(DetectedUrl),
    /// A device-code login's page and code, reported once.
    DeviceCode(DeviceCode),
    /// The process ended and all its output has been delivered.
    Exited(Exit),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The complete environment of the process.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Terminal width.
    pub cols: u16,
    /// Terminal height.
    pub rows: u16,
    /// Provider whose auto-responses apply (URL detection uses every rule regardless).
    pub provider: Option<String>,
    /// The provider's login mode (default: its first); a device-code mode's code is reported.
    pub mode: Option<String>,
    /// Bytes of scrollback to keep.
    pub scrollback: usize,
    /// The user the program runs as (`None`: as the agent).
    pub run_as: Option<crate::users::RunAs>,
}

/// Why a session could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// `argv` was empty.
    #[error("argv is empty")]
    EmptyArgv,
    /// The terminal size is zero or larger than any screen.
    #[error(
        "terminal size {cols}x{rows} is invalid (1 to {} columns, 1 to {} rows)",
        protocol::pty::MAX_COLS,
        protocol::pty::MAX_ROWS
    )]
    BadSize {
        /// Requested columns.
        cols: u16,
        /// Requested rows.
        rows: u16,
    },
    /// The provider is not in the rules.
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    /// The provider has no such login mode (or a mode was named without a provider).
    #[error("unknown login mode {0:?}")]
    UnknownMode(String),
    /// Opening the PTY or starting the program failed.
    #[error("cannot start {program:?} on a pty: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The session has ended; input, resize and signals no longer apply.
    #[error("the session has ended")]
    Ended,
    /// The PTY refused its new size.
    #[error("resizing the pty: {0}")]
    Resize(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The session's process group could not be signalled.
    #[error("signalling the session: {0}")]
    Signal(#[source] nix::errno::Errno),
}

/// Fixed-size buffer of the most recent output.
#[derive(Debug)]
struct Scrollback {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Scrollback {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }
}

/// State shared by the reader thread and the clients, under one lock so an attaching client sees
/// every byte exactly once (scrollback, then live events).
struct Shared {
    scrollback: Scrollback,
    urls: Vec<DetectedUrl>,
    exit: Option<Exit>,
    detector: UrlDetector,
    auto: Option<AutoResponder>,
    device: Option<DeviceCodeFinder>,
    /// The device code, once reported (for clients that attach later).
    device_code: Option<DeviceCode>,
}

/// A running (or ended) PTY session.
pub struct PtySession {
    id: String,
    pid: u32,
    /// The provider whose login this is, if any.
    provider: Option<String>,
    started: Instant,
    procs: ProcessSet,
    master: Mutex<Box<dyn MasterPty + Send>>,
    input: async_mpsc::Sender<Vec<u8>>,
    shared: Mutex<Shared>,
    events: broadcast::Sender<SessionEvent>,
}

impl std::fmt::Debug for PtySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySession")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish()
    }
}

/// A client's view when it attaches: what happened so far, then the live stream.
#[derive(Debug)]
pub struct Attachment {
    /// Recent output, oldest first.
    pub scrollback: Vec<u8>,
    /// URLs reported before the client attached.
    pub urls: Vec<DetectedUrl>,
    /// The device code, if one was reported before the client attached.
    pub device_code: Option<DeviceCode>,
    /// Set when the process had already ended.
    pub exit: Option<Exit>,
    /// Everything after the snapshot.
    pub events: broadcast::Receiver<SessionEvent>,
}

impl PtySession {
    /// Starts `opts.argv` on a new PTY. `id` names the session; `procs` is the set its
    /// processes belong to (the program is moved into it at once), ended with the session.
    pub fn spawn(
        id: String,
        opts: SpawnOptions,
        rules: Arc<ProviderRules>,
        procs: ProcessSet,
    ) -> Result<Arc<PtySession>, PtyError> {
        let Some(program) = opts.argv.first().cloned() else {
            return Err(PtyError::EmptyArgv);
        };
        if !size_ok(opts.cols, opts.rows) {
            return Err(PtyError::BadSize {
                cols: opts.cols,
                rows: opts.rows,
            });
        }
        let provider = match &opts.provider {
            Some(p) => Some(
                rules
                    .get(p)
                    .ok_or_else(|| PtyError::UnknownProvider(p.clone()))?,
            ),
            None => None,
        };
        let auto = provider.map(|p| AutoResponder::new(&p.auto_responses));
        let device = match (provider, &opts.mode) {
            (None, Some(mode)) => return Err(PtyError::UnknownMode(mode.clone())),
            (None, None) => None,
            (Some(p), mode) => p
                .mode(mode.as_deref())
                .ok_or_else(|| PtyError::UnknownMode(mode.clone().unwrap_or_default()))?
                .device
                .clone()
                .map(|rule| DeviceCodeFinder::new(&p.id, rule)),
        };
        let spawn_err = |source: Box<dyn std::error::Error + Send + Sync>| PtyError::Spawn {
            program: program.clone(),
            source,
        };
        let pair = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows: opts.rows,
                cols: opts.cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| spawn_err(e.into()))?;
        let mut cmd = CommandBuilder::from_argv(command_line(&opts, &procs).map_err(spawn_err)?);
        cmd.env_clear();
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if !opts.env.contains_key("TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        // Named even when it is the agent's own: portable-pty's default is `HOME`, which may not
        // exist for the program's user (`nobody`'s is `/nonexistent`).
        if let Some(cwd) = opts.cwd.clone().or_else(|| std::env::current_dir().ok()) {
            cmd.cwd(cwd);
        }
        let child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| spawn_err(e.into()))?;
        drop(pair.slave);
        let pid = child
            .process_id()
            .ok_or_else(|| spawn_err("the program has no process id".into()))?;
        // The child is reaped by our own waitpid (exact code and signal); dropping the handle
        // neither kills nor waits.
        drop(child);
        let reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| spawn_err(e.into()))?;
        // The reader waits on the terminal with a timeout while an answer is armed: its own
        // descriptor of the master, to poll.
        let readable = pair
            .master
            .as_raw_fd()
            .ok_or_else(|| spawn_err("the terminal has no descriptor".into()))
            .and_then(|fd| {
                // SAFETY: `fd` is the master's open descriptor, valid for this call (the master
                // lives in `pair`); it is only duplicated here.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                borrowed
                    .try_clone_to_owned()
                    .map_err(|e| spawn_err(e.into()))
            })?;
        let writer = pair.master.take_writer().map_err(|e| spawn_err(e.into()))?;
        let (input, input_rx) = async_mpsc::channel::<Vec<u8>>(INPUT_DEPTH);
        let (events, _) = broadcast::channel(EVENT_DEPTH);
        let session = Arc::new(PtySession {
            id,
            pid,
            provider: opts.provider.clone(),
            started: Instant::now(),
            procs,
            master: Mutex::new(pair.master),
            input,
            shared: Mutex::new(Shared {
                scrollback: Scrollback {
                    buf: VecDeque::new(),
                    cap: opts.scrollback.max(1),
                },
                urls: Vec::new(),
                exit: None,
                detector: UrlDetector::new(opts.cols, opts.rows, rules),
                auto,
                device,
                device_code: None,
            }),
            events,
        });
        std::thread::Builder::new()
            .name(format!("pty-in-{pid}"))
            .spawn(move || write_input(writer, input_rx))
            .map_err(|e| spawn_err(e.into()))?;
        let (exit_tx, exit_rx) = mpsc::sync_channel(1);
        let s = session.clone();
        std::thread::Builder::new()
            .name(format!("pty-out-{pid}"))
            .spawn(move || s.read_output(reader, readable, exit_rx))
            .map_err(|e| spawn_err(e.into()))?;
        let s = session.clone();
        std::thread::Builder::new()
            .name(format!("pty-wait-{pid}"))
            .spawn(move || {
                let exit = wait_exit(s.pid);
                let _ = exit_tx.send(exit);
                // Whatever the program left running goes with it; this also closes the terminal so
                // the reader sees the end of the output.
                s.kill_all();
            })
            .map_err(|e| spawn_err(e.into()))?;
        debug!(session = %session.id, pid, "pty session started");
        Ok(session)
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The provider whose login runs in this session, if it was started as one.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// When the session started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The process id (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a client. The agent answers the program's terminal queries whoever is attached
    /// (as tmux does for its panes): a person's terminal would answer late, once per terminal,
    /// and its answers would reach the program as typed keys. An `interactive` client (a
    /// person's terminal) is therefore shown the scrollback without its queries, and sends its
    /// keys through [`PtySession::write_typed`].
    pub fn attach(self: &Arc<Self>, interactive: bool) -> Attachment {
        let shared = self.lock();
        let (a, b) = shared.scrollback.buf.as_slices();
        let scrollback = [a, b].concat();
        Attachment {
            // Any other client gets the bytes as the program wrote them (the spawning call
            // itself can attach after the first output).
            scrollback: if interactive {
                crate::detect::without_queries(&scrollback)
            } else {
                scrollback
            },
            urls: shared.urls.clone(),
            device_code: shared.device_code.clone(),
            exit: shared.exit,
            events: self.events.subscribe(),
        }
    }

    /// Whether the process has ended.
    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Sends what a person's terminal sent, less its answers to terminal queries (the agent
    /// answered those already); waits while the program does not read.
    pub async fn write_typed(&self, bytes: &[u8]) -> Result<(), PtyError> {
        let keys = crate::detect::without_replies(bytes);
        if keys.is_empty() {
            return Ok(());
        }
        self.write(keys).await
    }

    /// Sends bytes to the program (as typed on its terminal); waits while the program does not read.
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), PtyError> {
        if self.lock().exit.is_some() {
            return Err(PtyError::Ended);
        }
        self.input.send(bytes).await.map_err(|_| PtyError::Ended)
    }

    /// Changes the terminal size (the program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), PtyError> {
        if !size_ok(cols, rows) {
            return Err(PtyError::BadSize { cols, rows });
        }
        let mut shared = self.lock();
        if shared.exit.is_some() {
            return Err(PtyError::Ended);
        }
        let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| PtyError::Resize(e.into()))?;
        shared.detector.resize(cols, rows);
        Ok(())
    }

    /// Sends a signal to the session's process group.
    pub fn signal(&self, signal: Signal) -> Result<(), PtyError> {
        if self.lock().exit.is_some() {
            return Err(PtyError::Ended);
        }
        killpg(self.pgid(), signal).map_err(PtyError::Signal)
    }

    /// A URL the program handed to `$BROWSER`/`xdg-open`. Reported unless already seen on screen.
    pub fn report_browser_url(&self, url: &str) -> Option<DetectedUrl> {
        let mut shared = self.lock();
        let found = shared.detector.report_external(url, UrlSource::Browser)?;
        shared.urls.push(found.clone());
        let _ = self.events.send(SessionEvent::Url(found.clone()));
        Some(found)
    }

    /// Kills every process of the session: its process group, anything that left the group but
    /// stayed in the terminal session, and what left both (a daemon that called `setsid`): the
    /// session's cgroup and environment marker find those ([`crate::procset`]).
    pub fn kill_all(&self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        for pid in session_members(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        self.procs.kill_all();
    }

    /// The session's processes still running, wherever they went.
    pub fn processes(&self) -> Vec<i32> {
        self.procs.members()
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }

    fn read_output(
        self: Arc<Self>,
        mut reader: Box<dyn Read + Send>,
        readable: OwnedFd,
        exited: mpsc::Receiver<Exit>,
    ) {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut last_output = Instant::now();
        loop {
            // An armed answer or a device code seen: wait for output only until it is due.
            let due = {
                let shared = self.lock();
                let answer = shared.auto.as_ref().and_then(|a| a.next_due(last_output));
                let code = shared.device.as_ref().and_then(|d| d.next_due(last_output));
                answer.into_iter().chain(code).min()
            };
            if let Some(due) = due {
                if !wait_readable(&readable, due) {
                    self.answer_due(last_output);
                    continue;
                }
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: every process closed the terminal.
                Err(_) => break,
            };
            last_output = Instant::now();
            let chunk = &buf[..n];
            let mut shared = self.lock();
            let urls = shared.detector.feed(chunk);
            let reply = shared.detector.take_replies();
            if shared.auto.is_some() || shared.device.is_some() {
                // The rendered screen, not raw bytes: prompts drawn with cursor moves still match.
                let screen = shared.detector.screen_text();
                if let Some(auto) = shared.auto.as_mut() {
                    auto.observe(&screen, last_output);
                }
                if let Some(device) = shared.device.as_mut() {
                    device.observe(&screen);
                }
            }
            shared.scrollback.push(chunk);
            let _ = self
                .events
                .send(SessionEvent::Output(Bytes::copy_from_slice(chunk)));
            for url in urls {
                shared.urls.push(url.clone());
                let _ = self.events.send(SessionEvent::Url(url));
            }
            drop(shared);
            self.send_keys(reply);
        }
        let exit = exited.recv().unwrap_or(Exit {
            code: None,
            signal: None,
        });
        let mut shared = self.lock();
        for url in shared.detector.finish() {
            shared.urls.push(url.clone());
            let _ = self.events.send(SessionEvent::Url(url));
        }
        let screen = shared.detector.screen_text();
        if let Some(code) = shared.device.as_mut().and_then(|d| d.finish(&screen)) {
            shared.device_code = Some(code.clone());
            let _ = self.events.send(SessionEvent::DeviceCode(code));
        }
        shared.exit = Some(exit);
        let _ = self.events.send(SessionEvent::Exited(exit));
        drop(shared);
        debug!(session = %self.id, ?exit, "pty session ended");
    }

    /// Sends the auto-answers that are due and reports a device code that is (the output has
    /// been quiet since `last_output`).
    fn answer_due(&self, last_output: Instant) {
        let mut shared = self.lock();
        let screen = shared.detector.screen_text();
        let now = Instant::now();
        let keys = shared
            .auto
            .as_mut()
            .map(|a| a.due(&screen, last_output, now))
            .unwrap_or_default();
        let code = shared
            .device
            .as_mut()
            .and_then(|d| d.due(&screen, last_output, now));
        if let Some(code) = code {
            shared.device_code = Some(code.clone());
            let _ = self.events.send(SessionEvent::DeviceCode(code));
        }
        drop(shared);
        if !keys.is_empty() {
            debug!(session = %self.id, "prompt answered");
        }
        self.send_keys(keys);
    }

    /// Writes bytes of the agent's own (terminal answers, auto-answers) to the program.
    fn send_keys(&self, keys: Vec<u8>) {
        if !keys.is_empty() && self.input.try_send(keys).is_err() {
            warn!(session = %self.id, "input queue full, terminal answer dropped");
        }
    }
}

/// The command line that starts `opts.argv` as a member of `procs`, as its user: through the
/// agent binary's wrapper ([`crate::procset::Enter`]) when the set has a cgroup or the program
/// runs as another user (the program is found on the session's `PATH` first, so a missing one is
/// refused here as before).
fn command_line(
    opts: &SpawnOptions,
    procs: &ProcessSet,
) -> Result<Vec<std::ffi::OsString>, Box<dyn std::error::Error + Send + Sync>> {
    let argv: Vec<std::ffi::OsString> = opts.argv.iter().map(Into::into).collect();
    let enter = crate::procset::Enter {
        cgroup: procs.cgroup().map(Into::into),
        user: opts
            .run_as
            .as_ref()
            .filter(|u| u.needs_switch())
            .map(|u| (u.uid, u.gid)),
    };
    if enter.is_nothing() {
        return Ok(argv);
    }
    let program = find_program(&opts.argv[0], opts.env.get("PATH"), opts.cwd.as_deref())
        .ok_or_else(|| format!("{:?} not found", opts.argv[0]))?;
    let mut line = enter.command_line(std::env::current_exe()?, program);
    line.extend(argv.into_iter().skip(1));
    Ok(line)
}

/// `name` as the program a shell would run: a path (relative ones from `cwd`) as it is, else the
/// first executable file of that name in `path`.
fn find_program(
    name: &str,
    path: Option<&String>,
    cwd: Option<&std::path::Path>,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = match cwd {
            Some(cwd) if !name.starts_with('/') => cwd.join(name),
            _ => PathBuf::from(name),
        };
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Waits until `fd` is readable or `deadline` passes; whether it is readable (an error counts as
/// readable: the read that follows reports it).
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if Instant::now() >= deadline => return false,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) | Err(_) => return true,
        }
    }
}

fn write_input(mut writer: Box<dyn Write + Send>, mut rx: async_mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = rx.blocking_recv() {
        if writer
            .write_all(&bytes)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

fn wait_exit(pid: u32) -> Exit {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Exit {
                    code: Some(code),
                    signal: None,
                }
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Exit {
                    code: None,
                    signal: Some(sig as i32),
                }
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                return Exit {
                    code: None,
                    signal: None,
                }
            }
        }
    }
}

/// Processes whose terminal session is `sid` (read from `/proc/<pid>/stat`).
fn session_members(sid: u32) -> Vec<i32> {
    crate::system::pids()
        .into_iter()
        .filter(|pid| {
            crate::system::stat_field(*pid, 3).and_then(|s| s.parse::<u32>().ok()) == Some(sid)
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Whether a terminal of `cols` x `rows` is one a screen can have: the detector keeps a cell per
/// position, and a 65535x65535 request would be a 34 GB screen.
fn size_ok(cols: u16, rows: u16) -> bool {
    (1..=protocol::pty::MAX_COLS).contains(&cols) && (1..=protocol::pty::MAX_ROWS).contains(&rows)
}
