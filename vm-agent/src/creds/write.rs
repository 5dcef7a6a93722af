//! Atomic, confined writes of pushed credential files.
//!
//! The file appears whole or not at all: a temp file in the same directory is written, given its
//! owner and mode 0600, fsynced, renamed over the target, and the directory is fsynced, so a crash
//! or power loss leaves either the old or the new credentials, never a torn file.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::confine::{ConfinedPath, CredPathError, Owner};

/// Mode of every credential file (all three CLIs use 0600).
pub const CREDENTIAL_FILE_MODE: u32 = 0o600;

/// Prefix/suffix shape of the agent's temp files, so a wipe can find leftovers of a crashed push.
pub(crate) fn temp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.tmp-", name.to_string_lossy())
}

/// What a successful push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The file written.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
    /// Hex sha256 of what was written, so the host can check it against what it sent.
    pub sha256: String,
    /// Directories that did not exist and were created (mode 0700, owned by the user).
    pub created_dirs: Vec<PathBuf>,
}

/// Writes `content` to `path` atomically, below one of `roots`, owned by `owner`, mode 0600.
pub fn put_file(
    roots: &[PathBuf],
    path: &Path,
    content: &[u8],
    owner: Owner,
) -> Result<PutOutcome, CredPathError> {
    stage(roots, path, content, owner)?.commit()
}

/// A credential file written whole beside its target, not yet in place: [`Staged::commit`] puts
/// it there; dropped uncommitted, it is removed and the target keeps its old content. Several
/// files are staged first and committed after, so a push of several is checked and written
/// whole before any old file is replaced.
#[derive(Debug)]
pub struct Staged {
    dir: OwnedFd,
    tmp_name: String,
    target: ConfinedPath,
    outcome: Option<PutOutcome>,
}

/// Writes `content` into a temp file beside `path` (confined to `roots`, owned by `owner`,
/// mode 0600, fsynced).
pub fn stage(
    roots: &[PathBuf],
    path: &Path,
    content: &[u8],
    owner: Owner,
) -> Result<Staged, CredPathError> {
    let target = ConfinedPath::new(roots, path)?;
    let full = target.full();
    let (dir, created_dirs) = target
        .open_parent(Some(owner))?
        .ok_or_else(|| CredPathError::io(&full, Errno::NOENT))?;
    target.check_target(&dir)?;
    let (tmp_name, tmp) = create_temp(&dir, &target)?;
    let staged = Staged {
        dir,
        tmp_name,
        target,
        outcome: Some(PutOutcome {
            path: full.clone(),
            len: content.len(),
            sha256: hex_sha256(content),
            created_dirs,
        }),
    };
    // On error `staged` drops here and removes the temp file.
    write_temp(&tmp, content, owner).map_err(|e| CredPathError::io(&full, e))?;
    Ok(staged)
}

impl Staged {
    /// Renames the staged file over its target and syncs the directory.
    pub fn commit(mut self) -> Result<PutOutcome, CredPathError> {
        let full = self.target.full();
        // A symlink planted at the target name between the check and now is replaced, not
        // followed: rename works on the directory entry.
        rustix::fs::renameat(
            &self.dir,
            self.tmp_name.as_str(),
            &self.dir,
            self.target.name(),
        )
        .and_then(|()| rustix::fs::fsync(&self.dir))
        .map_err(|e| CredPathError::io(&full, e))?;
        tracing::debug!(path = %full.display(), "credential file written");
        self.outcome
            .take()
            .ok_or_else(|| CredPathError::io(&full, Errno::INVAL))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp_name.as_str(), AtFlags::empty());
        }
    }
}

fn create_temp(dir: &OwnedFd, target: &ConfinedPath) -> Result<(String, OwnedFd), CredPathError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let prefix = temp_prefix(target.name());
    let mut last = Errno::EXIST;
    for attempt in 0..16u32 {
        let name = format!("{prefix}{}-{nanos:x}-{attempt}", std::process::id());
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(CREDENTIAL_FILE_MODE),
        ) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) => last = Errno::EXIST,
            Err(e) => return Err(CredPathError::io(&target.full(), e)),
        }
    }
    Err(CredPathError::io(&target.full(), last))
}

fn write_temp(fd: &OwnedFd, content: &[u8], owner: Owner) -> Result<(), Errno> {
    owner.apply(fd, CREDENTIAL_FILE_MODE)?;
    let mut rest = content;
    while !rest.is_empty() {
        match rustix::io::write(fd, rest) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::fsync(fd)
}

/// Lower-case hex sha256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
