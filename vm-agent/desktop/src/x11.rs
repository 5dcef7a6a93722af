//! The one way every part of the desktop (capture, input, clipboard, cursor, resize) reaches the X
//! server: its own connection (each part runs on its own thread and must not wait on another's
//! requests) and the screen the display name selects; and the one way their threads sleep.

use std::os::fd::BorrowedFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::Screen;
use x11rb::rust_connection::RustConnection;

use super::DesktopError;

/// Connects to `display` (`:N` or `:N.S`) and returns the connection and the selected screen.
pub fn open(display: &str) -> Result<(RustConnection, Screen), DesktopError> {
    let (conn, screen_num) =
        x11rb::connect(Some(display)).map_err(|source| DesktopError::Connect {
            display: display.to_owned(),
            source,
        })?;
    let screen =
        conn.setup().roots.get(screen_num).cloned().ok_or_else(|| {
            DesktopError::Display(format!("{display} has no screen {screen_num}"))
        })?;
    Ok((conn, screen))
}

/// Sleeps until the X connection `x` or the owner's socket `wake` has something to read. Returns
/// whether `wake` has; an X server that went away is an error.
pub fn wait(x: BorrowedFd<'_>, wake: BorrowedFd<'_>) -> Result<bool, DesktopError> {
    let mut fds = [
        PollFd::new(x, PollFlags::POLLIN),
        PollFd::new(wake, PollFlags::POLLIN),
    ];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(DesktopError::Display(format!("poll: {e}"))),
    }
    let x_hung_up = fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
    if x_hung_up {
        return Err(DesktopError::Display(
            "the X server closed the connection".into(),
        ));
    }
    Ok(fds[1].revents().is_some_and(|r| !r.is_empty()))
}
