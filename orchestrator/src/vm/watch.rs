//! Waiting for a file to appear, by inotify rather than polling: the vhost-user backend creates its
//! socket a few milliseconds after start, and QEMU must not dial it earlier.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// Resolves once `dir/name` exists.
pub async fn file_created(dir: &Path, name: &str) -> std::io::Result<()> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
    // Checked after the watch is in place, so a creation in between is not missed.
    if dir.join(name).exists() {
        return Ok(());
    }
    // SAFETY: the descriptor is owned by the `Inotify` moved into the `AsyncFd`, so it stays open
    // and the same for the `AsyncFd`'s whole life.
    let fd = unsafe { AsyncFd::register(Watch(inotify)) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable().await?;
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                if events
                    .iter()
                    .any(|e| e.name.as_deref() == Some(OsStr::new(name)))
                {
                    return Ok(());
                }
            }
            Err(nix::Error::EAGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// An inotify instance as tokio's reactor wants it.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_file_created_later_and_one_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let waiter = tokio::spawn({
            let dir = dir.path().to_path_buf();
            async move { file_created(&dir, "sock").await }
        });
        tokio::task::yield_now().await;
        std::fs::write(dir.path().join("other"), b"").unwrap();
        std::fs::write(&path, b"").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("noticed in time")
            .unwrap()
            .unwrap();
        file_created(dir.path(), "sock").await.unwrap();
    }
}
