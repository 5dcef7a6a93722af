//! Basic whole-file read and write. Writes are atomic (temp file in the same directory, fsync,
//! rename) so a reader never sees half a file, and walk to the directory one component at a
//! time without following a symlink (`creds::confine`, as the credential writer does): the
//! agent is root, and a guest user may have planted a link on the way.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use protocol::messages::{ReadFileRequest, ReadFileResponse, WriteFileRequest, WriteFileResponse};
use protocol::{ErrorBody, ErrorCode, MAX_BODY_BYTES};

use crate::creds::confine::{ConfinedPath, Owner};
use crate::creds::path_error;

/// Largest file served by `read_file`: its base64 form must fit in one response body.
pub const MAX_FILE_BYTES: u64 = (MAX_BODY_BYTES as u64 / 4) * 3 - 4096;

fn absolute(path: &str) -> Result<PathBuf, ErrorBody> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("path must be absolute: {path:?}"),
        ))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ErrorBody {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorCode::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorCode::Forbidden,
        _ => ErrorCode::Io,
    };
    ErrorBody::new(code, format!("{what} {}: {e}", path.display()))
}

/// Serves `read_file`.
pub async fn read(req: ReadFileRequest) -> Result<ReadFileResponse, ErrorBody> {
    let path = absolute(&req.path)?;
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(&path).map_err(|e| io_error("stat", &path, e))?;
        if !meta.is_file() {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("not a regular file: {}", path.display()),
            ));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "{} has {} bytes, limit {MAX_FILE_BYTES}",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        let content = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
        Ok(ReadFileResponse {
            content,
            mode: meta.permissions().mode() & 0o7777,
        })
    })
    .await
    .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?
}

/// Serves `write_file`.
pub async fn write(req: WriteFileRequest) -> Result<WriteFileResponse, ErrorBody> {
    let path = absolute(&req.path)?;
    tokio::task::spawn_blocking(move || write_atomic(&path, &req))
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?
}

/// Who owns what `write_file` creates: the owner of the nearest existing directory above it, so
/// a file the host writes into a user's home (a CLI's settings) is that user's and the CLI, which
/// runs as that user, can change it. Only root can give a file away; any other agent keeps it.
fn inherited_owner(path: &Path) -> Owner {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Owner::current();
    }
    path.ancestors()
        .skip(1)
        .find_map(|dir| std::fs::metadata(dir).ok().filter(|m| m.is_dir()))
        .map_or_else(Owner::current, |m| Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
}

fn write_atomic(path: &Path, req: &WriteFileRequest) -> Result<WriteFileResponse, ErrorBody> {
    use rustix::fs::{AtFlags, Mode, OFlags};

    let target = ConfinedPath::new(&[PathBuf::from("/")], path).map_err(path_error)?;
    let owner = inherited_owner(path);
    let create = req.create_dirs.then_some(owner);
    let Some((dir, _)) = target.open_parent(create).map_err(path_error)? else {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!("{} does not exist", target.parent().display()),
        ));
    };
    target.check_target(&dir).map_err(path_error)?;
    let mode = req.mode.unwrap_or(0o644) & 0o7777;
    let tmp = format!(
        ".{}.tmp-{}",
        target.name().to_string_lossy(),
        std::process::id()
    );
    let tmp_path = target.parent().join(&tmp);
    let result = (|| {
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_error("create", &tmp_path, e.into()))?;
        // Owner and mode first (the umask may have narrowed the mode at creation), the content
        // after: never a moment where another user could open it.
        owner
            .apply(&fd, mode)
            .map_err(|e| io_error("chown", &tmp_path, e.into()))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&req.content)
            .map_err(|e| io_error("write", &tmp_path, e))?;
        file.sync_all()
            .map_err(|e| io_error("fsync", &tmp_path, e))?;
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, target.name())
            .map_err(|e| io_error("rename", path, e.into()))?;
        let _ = rustix::fs::fsync(&dir);
        Ok(WriteFileResponse {
            bytes: req.content.len() as u64,
        })
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    }
    result
}
