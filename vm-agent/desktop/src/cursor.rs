//! The pointer's shape, for viewers to show as their own cursor.
//!
//! The X server keeps its cursor out of captured frames (a screen grab never contains it), and a
//! cursor drawn into the video would lag the viewer's hand by a round trip anyway. So, as remote
//! desktops do, the viewer's local cursor takes the VM cursor's shape: XFixes tells when the shape
//! shown changes (an I-beam over text, a hand over a link), the agent reads its image and publishes
//! it, and each viewer's session sends it over the data channel.
//!
//! One thread per watched display owns its own X connection and sleeps in `poll(2)` until the X
//! server or the owning [`Cursor`] has something for it.

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{debug, warn};
use x11rb::connection::Connection;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use super::DesktopError;

/// Larger cursors are not sent (a data channel message stays small; real cursors are 16-64 px).
pub const MAX_CURSOR_SIDE: u16 = 128;

/// A cursor shape as viewers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    /// The X server's serial of this shape (the same shape shown again keeps it).
    pub serial: u32,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Hot spot, from the left.
    pub xhot: u16,
    /// Hot spot, from the top.
    pub yhot: u16,
    /// `width * height` pixels, RGBA with straight (not premultiplied) alpha, row by row.
    pub rgba: Vec<u8>,
}

/// The cursor shape of one display, followed on a thread of its own.
#[derive(Debug)]
pub struct Cursor {
    wake: UnixDatagram,
    shape: watch::Sender<Option<Arc<CursorImage>>>,
    thread: Option<JoinHandle<()>>,
}

impl Cursor {
    /// Connects to `display` and starts following its cursor (the current shape is read at once).
    pub fn start(display: &str) -> Result<Self, DesktopError> {
        let (conn, screen) = super::x11::open(display)?;
        conn.xfixes_query_version(4, 0)?
            .reply()
            .map_err(|e| DesktopError::Display(format!("no XFIXES on {display}: {e}")))?;
        conn.xfixes_select_cursor_input(screen.root, xfixes::CursorNotifyMask::DISPLAY_CURSOR)?;
        conn.flush()?;
        let (wake, thread_wake) = UnixDatagram::pair()?;
        let shape = watch::channel(None).0;
        let publish = shape.clone();
        let name = display.to_string();
        let thread = std::thread::Builder::new()
            .name("desktop-cursor".into())
            .spawn(move || {
                if let Err(e) = follow(&conn, &thread_wake, &publish) {
                    warn!(display = %name, error = %e, "cursor shapes stopped");
                }
            })?;
        Ok(Self {
            wake,
            shape,
            thread: Some(thread),
        })
    }

    /// The cursor shape as it changes (`None` until it was read).
    pub fn shape(&self) -> watch::Receiver<Option<Arc<CursorImage>>> {
        self.shape.subscribe()
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let _ = self.wake.send(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Publishes the current shape, then every new one, until woken by the owner or the X server goes.
fn follow(
    conn: &RustConnection,
    wake: &UnixDatagram,
    publish: &watch::Sender<Option<Arc<CursorImage>>>,
) -> Result<(), DesktopError> {
    read_shape(conn, publish)?;
    loop {
        let mut changed = false;
        while let Some(event) = conn.poll_for_event()? {
            changed |= matches!(event, Event::XfixesCursorNotify(_));
        }
        if changed {
            read_shape(conn, publish)?;
        }
        if super::x11::wait(conn.stream().as_fd(), wake.as_fd())? {
            return Ok(());
        }
    }
}

/// Reads the shape shown now and publishes it when it is new.
fn read_shape(
    conn: &RustConnection,
    publish: &watch::Sender<Option<Arc<CursorImage>>>,
) -> Result<(), DesktopError> {
    let reply = conn.xfixes_get_cursor_image()?.reply()?;
    let same = publish
        .borrow()
        .as_ref()
        .is_some_and(|shown| shown.serial == reply.cursor_serial);
    if same {
        return Ok(());
    }
    if reply.width > MAX_CURSOR_SIDE || reply.height > MAX_CURSOR_SIDE {
        debug!(
            width = reply.width,
            height = reply.height,
            "cursor too large to send"
        );
        return Ok(());
    }
    let pixels = usize::from(reply.width) * usize::from(reply.height);
    if reply.cursor_image.len() < pixels {
        return Err(DesktopError::Display(format!(
            "cursor image of {} pixels for {}x{}",
            reply.cursor_image.len(),
            reply.width,
            reply.height
        )));
    }
    let image = CursorImage {
        serial: reply.cursor_serial,
        width: reply.width,
        height: reply.height,
        xhot: reply.xhot,
        yhot: reply.yhot,
        rgba: reply.cursor_image[..pixels]
            .iter()
            .flat_map(|&argb| straight_rgba(argb))
            .collect(),
    };
    publish.send_replace(Some(Arc::new(image)));
    Ok(())
}

/// XFixes gives premultiplied ARGB; browsers draw straight-alpha RGBA.
fn straight_rgba(argb: u32) -> [u8; 4] {
    let [a, r, g, b] = argb.to_be_bytes();
    if a == 0 {
        return [0, 0, 0, 0];
    }
    let unmultiply =
        |c: u8| ((u32::from(c) * 255 + u32::from(a) / 2) / u32::from(a)).min(255) as u8;
    [unmultiply(r), unmultiply(g), unmultiply(b), a]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiplied_argb_becomes_straight_rgba() {
        assert_eq!(straight_rgba(0xff10_2030), [0x10, 0x20, 0x30, 0xff]);
        assert_eq!(straight_rgba(0x0000_0000), [0, 0, 0, 0]);
        // Half-transparent white is stored as 0x80 in every channel.
        assert_eq!(straight_rgba(0x8080_8080), [255, 255, 255, 0x80]);
        // Garbage (a colour above its alpha) saturates instead of wrapping.
        assert_eq!(straight_rgba(0x10ff_ffff), [255, 255, 255, 0x10]);
    }
}
