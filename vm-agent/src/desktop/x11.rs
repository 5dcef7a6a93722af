//! The one way every part of the desktop (capture, input, clipboard, resize) reaches the X server:
//! its own connection (each part runs on its own thread and must not wait on another's requests)
//! and the screen the display name selects.

use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::Screen;
use x11rb::rust_connection::RustConnection;

use super::DesktopError;

/// Connects to `display` (`:N` or `:N.S`) and returns the connection and the selected screen.
pub fn open(display: &str) -> Result<(RustConnection, Screen), DesktopError> {
    let (conn, screen_num) = x11rb::connect(Some(display))
        .map_err(|e| DesktopError::Display(format!("cannot connect to {display}: {e}")))?;
    let screen =
        conn.setup().roots.get(screen_num).cloned().ok_or_else(|| {
            DesktopError::Display(format!("{display} has no screen {screen_num}"))
        })?;
    Ok((conn, screen))
}
