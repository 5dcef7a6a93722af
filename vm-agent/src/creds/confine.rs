//! Confining credential paths to allowed roots and walking them without ever following a symlink.
//!
//! The agent runs as root and writes into directories that the (untrusted) CLI user owns, so a path
//! is never handed to the kernel whole: it is split into components below an allowed root and each
//! component is opened relative to the directory file descriptor of its parent, with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (`openat2`) or, on kernels without it, `O_NOFOLLOW`.
//! A symlink planted at any level therefore fails the walk instead of redirecting it.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a credential path was refused or could not be walked. Paths are not secrets; contents never
/// appear here.
#[derive(Debug, thiserror::Error)]
pub enum CredPathError {
    /// Relative paths have no meaning for the agent: the caller resolves them against a home.
    #[error("credential path {0:?} is not absolute")]
    NotAbsolute(PathBuf),
    /// `..` could climb out of the allowed root, so it is refused before any lookup.
    #[error("credential path {0:?} contains `..`")]
    ParentComponent(PathBuf),
    /// The path is not below any allowed root (the home directories of configured users).
    #[error("credential path {0:?} is outside the allowed roots")]
    OutsideRoots(PathBuf),
    /// A symlink was found where a directory or file was expected; nothing was written through it.
    #[error("refusing to follow the symlink at {0:?}")]
    Symlink(PathBuf),
    /// A path component that must be a directory is something else.
    #[error("{0:?} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// The credential file's own name is taken by something that is not a regular file.
    #[error("{0:?} exists and is not a regular file")]
    NotARegularFile(PathBuf),
    /// Any other operating-system error, with the path it happened at.
    #[error("i/o error at {path:?}: {source}")]
    Io {
        /// Where it happened.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

impl CredPathError {
    pub(crate) fn io(path: &Path, errno: Errno) -> Self {
        CredPathError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        }
    }
}

/// A credential path split into an allowed root and the plain components below it.
#[derive(Debug, Clone)]
pub struct ConfinedPath {
    root: PathBuf,
    dirs: Vec<OsString>,
    name: OsString,
}

impl ConfinedPath {
    /// Checks `path` lexically against `roots`: absolute, no `..`, below the longest matching root.
    pub fn new(roots: &[PathBuf], path: &Path) -> Result<Self, CredPathError> {
        if !path.is_absolute() {
            return Err(CredPathError::NotAbsolute(path.to_path_buf()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(CredPathError::ParentComponent(path.to_path_buf()));
        }
        let root = roots
            .iter()
            .filter(|r| r.is_absolute() && !r.components().any(|c| c == Component::ParentDir))
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.components().count())
            .ok_or_else(|| CredPathError::OutsideRoots(path.to_path_buf()))?;
        let rest = path
            .strip_prefix(root)
            .map_err(|_| CredPathError::OutsideRoots(path.to_path_buf()))?;
        let mut parts: Vec<OsString> = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_os_string()),
                Component::CurDir => {}
                _ => return Err(CredPathError::OutsideRoots(path.to_path_buf())),
            }
        }
        let name = parts
            .pop()
            .ok_or_else(|| CredPathError::OutsideRoots(path.to_path_buf()))?;
        Ok(ConfinedPath {
            root: root.clone(),
            dirs: parts,
            name,
        })
    }

    /// The full path (for reports and errors).
    pub fn full(&self) -> PathBuf {
        let mut p = self.parent();
        p.push(&self.name);
        p
    }

    /// The directory that holds the file.
    pub fn parent(&self) -> PathBuf {
        let mut p = self.root.clone();
        for d in &self.dirs {
            p.push(d);
        }
        p
    }

    /// The file's own name.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Opens the parent directory by walking down from the root one component at a time, never
    /// following a symlink. Missing directories are created (mode 0700, owned by `create`) when
    /// `create` is given; otherwise a missing directory yields `Ok(None)`.
    pub fn open_parent(
        &self,
        create: Option<Owner>,
    ) -> Result<Option<(OwnedFd, Vec<PathBuf>)>, CredPathError> {
        let mut at = self.root.clone();
        // The root itself is trusted configuration (it may legitimately be reached via a symlink
        // such as /home -> /var/home); everything below it is not.
        let mut dir = match rustix::fs::open(
            &self.root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => return Err(CredPathError::io(&at, e)),
        };
        let mut created = Vec::new();
        for comp in &self.dirs {
            at.push(comp);
            let next = match open_dir_beneath(&dir, comp) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => match create {
                    None => return Ok(None),
                    Some(owner) => {
                        match rustix::fs::mkdirat(
                            &dir,
                            comp.as_os_str(),
                            Mode::from_raw_mode(0o700),
                        ) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(CredPathError::io(&at, e)),
                        }
                        let fd = open_dir_beneath(&dir, comp)
                            .map_err(|e| classify(&dir, comp, &at, e))?;
                        // Only directories made here are given to the user; existing ones keep
                        // their owner. The walk holds the fd, so this cannot be redirected.
                        owner
                            .apply(&fd, 0o700)
                            .map_err(|e| CredPathError::io(&at, e))?;
                        created.push(at.clone());
                        fd
                    }
                },
                Err(e) => return Err(classify(&dir, comp, &at, e)),
            };
            dir = next;
        }
        Ok(Some((dir, created)))
    }

    /// Refuses a file name taken by a symlink or a non-regular file; `Ok(false)` when absent.
    pub fn check_target(&self, dir: &OwnedFd) -> Result<bool, CredPathError> {
        match rustix::fs::statat(dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Ok(true),
                FileType::Symlink => Err(CredPathError::Symlink(self.full())),
                _ => Err(CredPathError::NotARegularFile(self.full())),
            },
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(CredPathError::io(&self.full(), e)),
        }
    }
}

/// Owner and group given to files and directories the agent creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
}

impl Owner {
    /// The owner of this process (what a non-root agent can give away).
    pub fn current() -> Self {
        Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    pub(crate) fn apply(&self, fd: &OwnedFd, mode: u32) -> Result<(), Errno> {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
        )?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
    }
}

/// Opens one directory entry below `dir` as a directory without following symlinks.
fn open_dir_beneath(dir: &OwnedFd, comp: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    match rustix::fs::openat2(
        dir,
        comp,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        // Kernels before 5.6 (or seccomp filters) lack openat2: a single-component O_NOFOLLOW
        // openat is just as strict for one name.
        Err(Errno::NOSYS) | Err(Errno::PERM) => rustix::fs::openat(dir, comp, flags, Mode::empty()),
        other => other,
    }
}

/// Turns a failed directory open into a clear error: a symlink, a non-directory, or plain i/o.
fn classify(dir: &OwnedFd, comp: &OsStr, at: &Path, e: Errno) -> CredPathError {
    if e == Errno::LOOP || e == Errno::NOTDIR || e == Errno::XDEV {
        if let Ok(st) = rustix::fs::statat(dir, comp, AtFlags::SYMLINK_NOFOLLOW) {
            return match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => CredPathError::Symlink(at.to_path_buf()),
                FileType::Directory => CredPathError::io(at, e),
                _ => CredPathError::NotADirectory(at.to_path_buf()),
            };
        }
    }
    CredPathError::io(at, e)
}
