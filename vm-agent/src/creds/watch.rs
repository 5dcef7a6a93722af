//! Capturing credential files the moment a CLI finishes writing them.
//!
//! inotify (through `notify`) watches, for every credential file, the deepest directory of its path
//! that exists: the file's own directory once it exists, an ancestor until then. Any event on an
//! ancestor re-plans the watches (so `mkdir -p` several levels deep, or a directory moved into place,
//! is followed) and re-checks the files. A file is read only when a writer is done with it
//! (close-after-write, rename into place, creation), or after a quiet period following in-place
//! writes by a writer that keeps it open, and it counts only when it parses as JSON with the
//! provider's required fields. Identical content (as JSON, so whitespace does not count) is one
//! capture.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rustix::fs::{Mode, OFlags};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::confine::{ConfinedPath, CredPathError};
use super::rules::CredentialFile;
use super::write::hex_sha256;

/// After an in-place write with the file still open, wait this long for quiet before reading.
const QUIET_AFTER_WRITE: Duration = Duration::from_millis(150);
/// How often [`WatchState::replan`] looks again while directories keep appearing (each round
/// follows at least one new level of a `mkdir -p`).
const MAX_REPLAN_ROUNDS: usize = 32;
/// Credential files are a few KiB; anything bigger is not one and is not read into memory.
const MAX_CREDENTIAL_FILE: u64 = protocol::creds::MAX_CREDENTIAL_BYTES as u64;

/// Credential bytes: printed as `[redacted]`, never as content.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One complete, valid credential file as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The credential file.
    pub path: PathBuf,
    /// Its bytes exactly as on disk.
    pub content: SecretBytes,
    /// Hex sha256 of `content`.
    pub sha256: String,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A credential path is outside the allowed roots or otherwise refused.
    #[error(transparent)]
    Path(#[from] CredPathError),
    /// inotify could not be set up (for example, the watch limit is reached).
    #[error("cannot watch credential files: {0}")]
    Notify(#[from] notify::Error),
}

/// A running watch: captures arrive on the channel given to [`watch`] until this is dropped.
#[derive(Debug)]
pub struct CredentialWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CredentialWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `files` (all below `roots`). When `include_existing` is false, files already
/// valid at the start are taken as the baseline and only later changes are captured.
pub fn watch(
    roots: Vec<PathBuf>,
    files: Vec<CredentialFile>,
    include_existing: bool,
    out: mpsc::Sender<Capture>,
) -> Result<CredentialWatch, WatchError> {
    let targets = files
        .into_iter()
        .map(|f| {
            Ok(Target {
                confined: ConfinedPath::new(&roots, &f.path)?,
                rule: f,
                last_key: None,
            })
        })
        .collect::<Result<Vec<_>, CredPathError>>()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let _ = tx.send(ev);
    })?;
    let mut state = WatchState {
        watcher,
        watched: HashMap::new(),
        targets,
        out,
    };
    state.replan()?;
    // With `include_existing`, files already there are sent by the task's first check.
    if !include_existing {
        for t in &mut state.targets {
            if let Some((_, key)) = read_valid(t) {
                t.last_key = Some(key);
            }
        }
    }
    let task = tokio::spawn(state.run(rx));
    Ok(CredentialWatch { task })
}

struct Target {
    rule: CredentialFile,
    confined: ConfinedPath,
    /// sha256 of the canonical JSON of the last capture (or baseline).
    last_key: Option<[u8; 32]>,
}

struct WatchState {
    watcher: RecommendedWatcher,
    /// Watched directories and the (dev, inode) they had when the watch was added.
    watched: HashMap<PathBuf, (u64, u64)>,
    targets: Vec<Target>,
    out: mpsc::Sender<Capture>,
}

impl WatchState {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>) {
        // Whatever is already there (or appeared while the watch was being set up) is checked once.
        if !self.check_all().await {
            return;
        }
        let mut quiet_deadline: Option<Instant> = None;
        loop {
            let ev = match quiet_deadline {
                Some(at) => tokio::select! {
                    ev = rx.recv() => ev,
                    () = tokio::time::sleep_until(at) => {
                        quiet_deadline = None;
                        if !self.check_all().await { return; }
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(ev) = ev else { return };
            let mut replan = false;
            let mut check = false;
            match ev {
                Err(e) => {
                    tracing::warn!(error = %e, "credential watch error; re-scanning");
                    replan = true;
                }
                Ok(ev) => {
                    if ev.need_rescan() {
                        replan = true;
                    }
                    for p in &ev.paths {
                        for t in &self.targets {
                            if p == &t.rule.path {
                                match ev.kind {
                                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                                    | EventKind::Create(_)
                                    | EventKind::Modify(ModifyKind::Name(_))
                                    | EventKind::Remove(_) => check = true,
                                    EventKind::Modify(_) => {
                                        quiet_deadline = Some(Instant::now() + QUIET_AFTER_WRITE)
                                    }
                                    _ => {}
                                }
                            } else if t.rule.path.starts_with(p) {
                                // An ancestor changed: a directory appeared, vanished or moved.
                                if !matches!(ev.kind, EventKind::Access(_)) {
                                    replan = true;
                                }
                            }
                        }
                    }
                }
            }
            if replan {
                if let Err(e) = self.replan() {
                    tracing::warn!(error = %e, "cannot re-plan credential watches");
                }
                check = true;
            }
            if check && !self.check_all().await {
                return;
            }
        }
    }

    /// Watches the deepest existing directory of every target's path; drops watches no longer
    /// needed and renews those whose directory was replaced.
    ///
    /// Looks again after every change until nothing changes: a directory created between the look
    /// and the new watch on its parent raises no event on that watch, so only another look finds it
    /// (`mkdir -p a/b` racing the watch on `a`).
    fn replan(&mut self) -> Result<(), notify::Error> {
        for _ in 0..MAX_REPLAN_ROUNDS {
            let mut wanted: HashMap<PathBuf, (u64, u64)> = HashMap::new();
            for t in &self.targets {
                if let Some((dir, id)) = deepest_existing_dir(&t.rule.path) {
                    wanted.insert(dir, id);
                }
            }
            let stale: Vec<PathBuf> = self
                .watched
                .iter()
                .filter(|(p, id)| wanted.get(*p) != Some(id))
                .map(|(p, _)| p.clone())
                .collect();
            let mut changed = !stale.is_empty();
            for p in stale {
                let _ = self.watcher.unwatch(&p);
                self.watched.remove(&p);
            }
            for (dir, id) in wanted {
                if self.watched.contains_key(&dir) {
                    continue;
                }
                changed = true;
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::debug!(dir = %dir.display(), "watching for credentials");
                        self.watched.insert(dir, id);
                    }
                    // The directory vanished between the look and the watch: look again.
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            if !changed {
                return Ok(());
            }
        }
        tracing::warn!("credential directories keep changing; watching what was there last");
        Ok(())
    }

    /// Reads every target and sends a capture for each new valid content. `false` when the
    /// receiver is gone (the watch ends).
    async fn check_all(&mut self) -> bool {
        for t in &mut self.targets {
            let Some((capture, key)) = read_valid(t) else {
                continue;
            };
            if t.last_key == Some(key) {
                continue;
            }
            t.last_key = Some(key);
            tracing::info!(path = %capture.path.display(), sha256 = %capture.sha256, "credential file captured");
            if self.out.send(capture).await.is_err() {
                return false;
            }
        }
        true
    }
}

fn is_not_found(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The deepest existing real directory (not a symlink) on the way to `file`, with its identity.
fn deepest_existing_dir(file: &Path) -> Option<(PathBuf, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let mut dir = file.parent()?;
    loop {
        if let Ok(md) = std::fs::symlink_metadata(dir) {
            if md.is_dir() {
                return Some((dir.to_path_buf(), (md.dev(), md.ino())));
            }
        }
        dir = dir.parent()?;
    }
}

/// Reads the target without following symlinks and returns it when complete and valid, with the
/// dedupe key (sha256 of its canonical JSON).
fn read_valid(t: &Target) -> Option<(Capture, [u8; 32])> {
    let (dir, _) = t.confined.open_parent(None).ok()??;
    let fd = rustix::fs::openat(
        &dir,
        t.confined.name(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    // A CLI's credential file has one name. A second one means a hard link planted to make the
    // agent (often root) read someone else's file: not captured.
    if st.st_nlink != 1 {
        tracing::warn!(path = %t.rule.path.display(), "credential file has several hard links; ignored");
        return None;
    }
    let mut content = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_CREDENTIAL_FILE + 1)
        .read_to_end(&mut content)
        .ok()?;
    if content.len() as u64 > MAX_CREDENTIAL_FILE {
        return None;
    }
    let value: Value = serde_json::from_slice(&content).ok()?;
    if !has_required(&value, &t.rule.required_any_of) {
        tracing::debug!(path = %t.rule.path.display(), "credential file lacks required fields");
        return None;
    }
    let canonical = serde_json::to_vec(&value).ok()?;
    let key: [u8; 32] = Sha256::digest(&canonical).into();
    let mtime_ms = st.st_mtime * 1000 + st.st_mtime_nsec as i64 / 1_000_000;
    Some((
        Capture {
            path: t.rule.path.clone(),
            sha256: hex_sha256(&content),
            content: SecretBytes(content),
            mtime_ms,
        },
        key,
    ))
}

/// True when for some alternative every pointer names a non-empty string or non-null value.
pub fn has_required(value: &Value, any_of: &[Vec<String>]) -> bool {
    any_of.iter().any(|alt| {
        alt.iter().all(|ptr| match value.pointer(ptr) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        })
    })
}
