//! Removing a provider's credential files, and the temp files a push or a CLI may have left.

use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::confine::{ConfinedPath, CredPathError};
use super::write::temp_prefix;

/// Removes `path` and temp files next to it (the agent's own `.NAME.tmp-*` and the common
/// `NAME.tmp*` writer convention). Symlinks are removed as links, never followed. Returns what was
/// removed; a missing file or directory is not an error (wiping twice is fine).
pub fn wipe_file(roots: &[PathBuf], path: &Path) -> Result<Vec<PathBuf>, CredPathError> {
    let target = ConfinedPath::new(roots, path)?;
    let Some((dir, _)) = target.open_parent(None)? else {
        return Ok(Vec::new());
    };
    let name = target.name().to_string_lossy().into_owned();
    let ours = temp_prefix(target.name());
    let theirs = format!("{name}.tmp");
    let parent = target.parent();

    let mut doomed = Vec::new();
    let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| CredPathError::io(&parent, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CredPathError::io(&parent, e))?;
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if entry_name == name || entry_name.starts_with(&ours) || entry_name.starts_with(&theirs) {
            doomed.push(entry_name);
        }
    }

    let mut removed = Vec::new();
    for entry_name in doomed {
        let at = parent.join(&entry_name);
        match rustix::fs::statat(&dir, entry_name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(CredPathError::NotARegularFile(at));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(CredPathError::io(&at, e)),
        }
        match rustix::fs::unlinkat(&dir, entry_name.as_str(), AtFlags::empty()) {
            Ok(()) => removed.push(at),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(CredPathError::io(&at, e)),
        }
    }
    if !removed.is_empty() {
        rustix::fs::fsync(&dir).map_err(|e| CredPathError::io(&parent, e))?;
    }
    Ok(removed)
}
