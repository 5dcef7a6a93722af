//! Basic whole-file read and write. Writes are atomic (temp file in the same directory, fsync,
//! rename) so a reader never sees half a file. The hardened credential writer is separate.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::messages::{ReadFileRequest, ReadFileResponse, WriteFileRequest, WriteFileResponse};
use protocol::{ErrorBody, ErrorCode, MAX_BODY_BYTES};

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

fn write_atomic(path: &Path, req: &WriteFileRequest) -> Result<WriteFileResponse, ErrorBody> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "path has no file name",
        ));
    };
    if req.create_dirs {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    }
    let mode = req.mode.unwrap_or(0o644) & 0o7777;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io_error("create", &tmp, e))?;
        file.write_all(&req.content)
            .map_err(|e| io_error("write", &tmp, e))?;
        // The umask may have narrowed the mode at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error("chmod", &tmp, e))?;
        file.sync_all().map_err(|e| io_error("fsync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error("rename", path, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(WriteFileResponse {
            bytes: req.content.len() as u64,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
