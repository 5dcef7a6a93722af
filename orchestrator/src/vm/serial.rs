//! A VM's serial console, kept bounded. QEMU connects its serial port to a socket the host
//! listens on (bound before QEMU starts, so no early byte is lost); a task copies what arrives
//! into `serial.log`, rotating it to `serial.log.1` at [`SERIAL_LOG_CAP`]. A guest writing to
//! its console forever costs the host at most twice that on disk, and a tail is read from the
//! end of the files, never by loading them whole.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tracing::debug;

/// Bytes of console kept in `serial.log` before it rotates.
pub const SERIAL_LOG_CAP: u64 = 1024 * 1024;

/// The socket QEMU's serial port connects to.
pub(super) const SERIAL_SOCKET: &str = "serial.sock";
/// The console log and its one rotated predecessor.
pub(super) const SERIAL_LOG: &str = "serial.log";
const SERIAL_LOG_OLD: &str = "serial.log.1";

/// Listens on `dir/serial.sock`; the returned task copies QEMU's console into the logs until
/// QEMU closes it.
pub(super) fn collect(dir: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(dir.join(SERIAL_SOCKET))?;
    let dir = dir.to_path_buf();
    // Created here, 0600: the console may show what the guest prints, for the host alone.
    let log = open_log(&dir.join(SERIAL_LOG))?;
    Ok(tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let mut log = log;
        let mut written = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if written + n as u64 > SERIAL_LOG_CAP {
                match rotate(&dir) {
                    Ok(fresh) => {
                        log = fresh;
                        written = 0;
                    }
                    Err(e) => {
                        debug!(error = %e, "serial log rotation failed; console dropped");
                        return;
                    }
                }
            }
            // A plain write of at most 16 KiB to a local file: cheaper than a hop to the blocking
            // pool for each read.
            if log.write_all(&buf[..n]).is_err() {
                return;
            }
            written += n as u64;
        }
    }))
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn rotate(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::rename(dir.join(SERIAL_LOG), dir.join(SERIAL_LOG_OLD))?;
    open_log(&dir.join(SERIAL_LOG))
}

/// The files the console log is kept in, oldest first.
pub(super) fn files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(SERIAL_LOG_OLD), dir.join(SERIAL_LOG)]
}

/// The last `max` bytes of the console (both files), as text (invalid UTF-8 replaced).
pub fn tail(dir: &Path, max: u64) -> String {
    let mut bytes = Vec::new();
    // Newest first, then what the older file adds in front.
    for path in files(dir).iter().rev() {
        let want = max.saturating_sub(bytes.len() as u64);
        if want == 0 {
            break;
        }
        let mut chunk = last_bytes(path, want);
        chunk.extend_from_slice(&bytes);
        bytes = chunk;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `max` bytes of the file at `path` as text (invalid UTF-8 replaced), read from its
/// end; empty when it cannot be read.
pub fn tail_file(path: &Path, max: u64) -> String {
    String::from_utf8_lossy(&last_bytes(path, max)).into_owned()
}

fn last_bytes(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let take = len.min(max);
    let mut chunk = Vec::with_capacity(take as usize);
    if file.seek(SeekFrom::Start(len - take)).is_err()
        || file.take(take).read_to_end(&mut chunk).is_err()
    {
        return Vec::new();
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_console_that_never_stops_stays_bounded_and_its_tail_reads_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let task = collect(dir.path()).unwrap();
        let mut guest = tokio::net::UnixStream::connect(dir.path().join(SERIAL_SOCKET))
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        // 5 MiB of console with invalid UTF-8 in it, then a last line.
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..80 {
            guest.write_all(&chunk).await.unwrap();
        }
        guest.write_all(b"\nthe last line\n").await.unwrap();
        drop(guest);
        task.await.unwrap();
        let on_disk: u64 = files(dir.path())
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= 2 * SERIAL_LOG_CAP, "{on_disk} bytes kept");
        let tail = tail(dir.path(), 2000);
        assert!(tail.ends_with("the last line\n"), "{tail:?}");
        assert!(tail.len() >= 2000, "lossy text of 2000 bytes");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SERIAL_LOG))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
