//! Screen capture of an X display's root window.
//!
//! MIT-SHM `GetImage` into a memfd shared with the X server (no copy through the socket); plain
//! `GetImage` where the server has no SHM. XDamage tells when something changed, so an idle screen
//! costs nothing; RandR tells when the screen size changed.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use tracing::{debug, info};
use x11rb::connection::Connection;
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, Window};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use super::DesktopError;

/// What happened on the display since the last look.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Some pixels changed.
    pub damaged: bool,
    /// The screen size changed (the next grab has the new size).
    pub resized: bool,
}

/// A capture session on one display.
pub struct Capture {
    conn: RustConnection,
    root: Window,
    width: u16,
    height: u16,
    damage: damage::Damage,
    shm: Option<ShmSegment>,
    plain: Vec<u8>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("shm", &self.shm.is_some())
            .finish()
    }
}

/// A shared-memory segment attached to the X server.
struct ShmSegment {
    seg: u32,
    map: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this value alone (unmapped on drop) and only read through
// `&self`/`&mut self`, so moving it to another thread cannot alias it.
unsafe impl Send for ShmSegment {}

impl Capture {
    /// Connects to `display` and starts tracking damage on its root window.
    pub fn open(display: &str) -> Result<Self, DesktopError> {
        let (conn, screen) = super::x11::open(display)?;
        let root = screen.root;
        let (width, height) = (screen.width_in_pixels, screen.height_in_pixels);
        if screen.root_depth != 24 && screen.root_depth != 32 {
            return Err(DesktopError::Display(format!(
                "root depth {} is not supported (24 or 32)",
                screen.root_depth
            )));
        }
        conn.damage_query_version(1, 1)?
            .reply()
            .map_err(|e| DesktopError::Display(format!("no XDamage on {display}: {e}")))?;
        let damage = conn.generate_id()?;
        conn.damage_create(damage, root, damage::ReportLevel::NON_EMPTY)?;
        if conn.randr_query_version(1, 2)?.reply().is_ok() {
            conn.randr_select_input(root, randr::NotifyMask::SCREEN_CHANGE)?;
        }
        conn.flush()?;
        let mut capture = Self {
            conn,
            root,
            width,
            height,
            damage,
            shm: None,
            plain: Vec::new(),
        };
        capture.attach_shm();
        let name = display;
        info!(
            display = name,
            width,
            height,
            shm = capture.shm.is_some(),
            "capturing"
        );
        Ok(capture)
    }

    /// Current size in pixels.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// The X connection's socket, to wait on it.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.conn.stream().as_fd()
    }

    /// Whether frames come through shared memory.
    pub fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    /// Reads the events queued so far (without blocking) and repairs the damage.
    pub fn changes(&mut self) -> Result<Changes, DesktopError> {
        let mut changes = Changes::default();
        while let Some(event) = self.conn.poll_for_event()? {
            match event {
                Event::DamageNotify(_) => changes.damaged = true,
                Event::RandrScreenChangeNotify(e) => {
                    let quarter_turn = randr::Rotation::ROTATE90 | randr::Rotation::ROTATE270;
                    let (w, h) = if u16::from(e.rotation) & u16::from(quarter_turn) != 0 {
                        (e.height, e.width)
                    } else {
                        (e.width, e.height)
                    };
                    if (w, h) != (self.width, self.height) {
                        changes.resized = true;
                        changes.damaged = true;
                        self.width = w;
                        self.height = h;
                    }
                }
                _ => {}
            }
        }
        if changes.resized {
            debug!(width = self.width, height = self.height, "screen resized");
            self.attach_shm();
        }
        if changes.damaged {
            self.conn
                .damage_subtract(self.damage, x11rb::NONE, x11rb::NONE)?;
            self.conn.flush()?;
        }
        Ok(changes)
    }

    /// Grabs the whole screen as 32-bit BGRX pixels, `width * height * 4` bytes, with its width
    /// and height. A screen that changed size before its notification arrived makes the server
    /// refuse the grab (`Match`): the size is read again and the grab retried at the new size.
    pub fn grab(&mut self) -> Result<(&[u8], u16, u16), DesktopError> {
        if let Err(e) = self.try_grab() {
            if !e.is_display() || !self.refresh_size()? {
                return Err(e);
            }
            self.try_grab()?;
        }
        Ok((self.pixels(), self.width, self.height))
    }

    /// Reads the root window's size; true when it differs from what the capture assumed (the
    /// shared segment is remade for it).
    fn refresh_size(&mut self) -> Result<bool, DesktopError> {
        let geometry = self.conn.get_geometry(self.root)?.reply()?;
        if (geometry.width, geometry.height) == (self.width, self.height) {
            return Ok(false);
        }
        debug!(
            width = geometry.width,
            height = geometry.height,
            "screen size changed under a grab"
        );
        self.width = geometry.width;
        self.height = geometry.height;
        self.attach_shm();
        Ok(true)
    }

    /// The pixels of the last successful grab.
    fn pixels(&self) -> &[u8] {
        let len = usize::from(self.width) * usize::from(self.height) * 4;
        match &self.shm {
            // SAFETY: the mapping is `shm.len >= len` bytes long and lives as long as `shm`; the
            // server finished writing before it replied.
            Some(shm) => unsafe { std::slice::from_raw_parts(shm.map.as_ptr(), len.min(shm.len)) },
            None => &self.plain[..len.min(self.plain.len())],
        }
    }

    fn try_grab(&mut self) -> Result<(), DesktopError> {
        let len = usize::from(self.width) * usize::from(self.height) * 4;
        if let Some(shm) = &self.shm {
            self.conn
                .shm_get_image(
                    self.root,
                    0,
                    0,
                    self.width,
                    self.height,
                    !0,
                    ImageFormat::Z_PIXMAP.into(),
                    shm.seg,
                    0,
                )?
                .reply()?;
            return Ok(());
        }
        let reply = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                self.width,
                self.height,
                !0,
            )?
            .reply()?;
        self.plain = reply.data;
        if self.plain.len() < len {
            return Err(DesktopError::Display(format!(
                "GetImage returned {} bytes for {}x{}",
                self.plain.len(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }

    /// (Re)creates the shared segment for the current size; falls back to plain `GetImage`.
    fn attach_shm(&mut self) {
        if let Some(old) = self.shm.take() {
            let _ = self.conn.shm_detach(old.seg);
            unmap(&old);
        }
        match self.try_attach_shm() {
            Ok(shm) => self.shm = Some(shm),
            Err(e) => debug!(error = %e, "no MIT-SHM, using plain GetImage"),
        }
    }

    fn try_attach_shm(&self) -> Result<ShmSegment, DesktopError> {
        self.conn.shm_query_version()?.reply()?;
        let len = usize::from(self.width) * usize::from(self.height) * 4;
        // SAFETY: plain syscalls on a descriptor we own from here on.
        let fd = unsafe {
            let raw = libc::memfd_create(c"desktop-capture".as_ptr(), libc::MFD_CLOEXEC);
            if raw < 0 {
                return Err(DesktopError::Display("memfd_create failed".into()));
            }
            OwnedFd::from_raw_fd(raw)
        };
        // SAFETY: resizing our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), libc::off_t::try_from(len).unwrap_or(0)) } != 0
        {
            return Err(DesktopError::Display(
                "ftruncate of the capture buffer failed".into(),
            ));
        }
        // SAFETY: mapping a fresh memfd of `len` bytes, shared; unmapped in `unmap`.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(DesktopError::Display(
                "mmap of the capture buffer failed".into(),
            ));
        }
        let map = NonNull::new(map.cast::<u8>())
            .ok_or_else(|| DesktopError::Display("mmap returned null".into()))?;
        let segment = ShmSegment {
            seg: self.conn.generate_id()?,
            map,
            len,
            _fd: fd,
        };
        let for_server = segment
            ._fd
            .try_clone()
            .map_err(|e| DesktopError::Display(format!("dup: {e}")))?;
        let attached = self
            .conn
            .shm_attach_fd(segment.seg, for_server, false)
            .map_err(DesktopError::from)
            .and_then(|c| c.check().map_err(DesktopError::from));
        if let Err(e) = attached {
            unmap(&segment);
            return Err(e);
        }
        Ok(segment)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(shm) = self.shm.take() {
            unmap(&shm);
        }
    }
}

fn unmap(shm: &ShmSegment) {
    // SAFETY: `map`/`len` come from a successful mmap and no slice of it outlives `&mut Capture`.
    unsafe {
        libc::munmap(shm.map.as_ptr().cast(), shm.len);
    }
}
