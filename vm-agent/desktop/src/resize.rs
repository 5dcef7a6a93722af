//! The screen follows the viewer's window: XRandR sets the X screen to the size the viewer asks for.
//!
//! The mode is the output's own when it has one of that size; otherwise the agent creates it
//! (`RRCreateMode` + `RRAddOutputMode`), the way `xrandr --newmode/--addmode` does. The capture sees
//! the resulting `RRScreenChangeNotify` and the encoder follows with a keyframe of the new size, so
//! the viewer's video changes size without a reconnect.

use tracing::{debug, info};
use x11rb::connection::Connection;
use x11rb::protocol::randr::{self, ConnectionExt as _, ModeFlag, ModeInfo};
use x11rb::protocol::xproto::Window;
use x11rb::rust_connection::RustConnection;

use super::DesktopError;

/// Largest picture the H.264 encoder takes (level 5.2).
const MAX_WIDTH: u16 = 3840;
const MAX_HEIGHT: u16 = 2160;
/// Smallest size a viewer may ask for (a usable desktop, and no degenerate encoder input).
const MIN_SIZE: u16 = 64;

/// Changes the size of one display's screen.
pub struct Resizer {
    /// Modes the agent created live as long as this connection; a mode in use stays.
    conn: RustConnection,
    root: Window,
}

impl std::fmt::Debug for Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resizer").finish_non_exhaustive()
    }
}

impl Resizer {
    /// Connects to `display`; fails when it has no RandR 1.2.
    pub fn open(display: &str) -> Result<Self, DesktopError> {
        let (conn, screen) = super::x11::open(display)?;
        let root = screen.root;
        conn.randr_query_version(1, 2)?
            .reply()
            .map_err(|e| DesktopError::Display(format!("no RandR 1.2 on {display}: {e}")))?;
        Ok(Self { conn, root })
    }

    /// Sets the screen to `width x height` (made even and kept within what the X server and the
    /// encoder take); returns the size set.
    pub fn resize(&self, width: u32, height: u32) -> Result<(u16, u16), DesktopError> {
        let range = self.conn.randr_get_screen_size_range(self.root)?.reply()?;
        let fit = |v: u32, lo: u16, hi: u16| -> u16 {
            let hi = hi.max(lo);
            let v = u16::try_from(v).unwrap_or(u16::MAX).clamp(lo, hi);
            // H.264 4:2:0 needs even sizes.
            if v % 2 == 1 && v > lo {
                v - 1
            } else {
                v
            }
        };
        let w = fit(
            width,
            range.min_width.max(MIN_SIZE),
            range.max_width.min(MAX_WIDTH),
        );
        let h = fit(
            height,
            range.min_height.max(MIN_SIZE),
            range.max_height.min(MAX_HEIGHT),
        );
        let res = self
            .conn
            .randr_get_screen_resources_current(self.root)?
            .reply()?;
        let (output, crtc) = self.active_output(&res)?;
        let crtc_info = self
            .conn
            .randr_get_crtc_info(crtc, res.config_timestamp)?
            .reply()?;
        if (crtc_info.width, crtc_info.height) == (w, h) && self.screen_size()? == (w, h) {
            return Ok((w, h));
        }
        let mode = match res
            .modes
            .iter()
            .find(|m| (m.width, m.height) == (w, h))
            .map(|m| m.id)
        {
            Some(id) => {
                let output_info = self
                    .conn
                    .randr_get_output_info(output, res.config_timestamp)?
                    .reply()?;
                if !output_info.modes.contains(&id) {
                    self.conn.randr_add_output_mode(output, id)?;
                }
                id
            }
            None => self.create_mode(output, w, h)?,
        };
        let (cur_w, cur_h) = self.screen_size()?;
        // The screen must hold the CRTC at every step: grow it first, shrink it last.
        if w > cur_w || h > cur_h {
            self.set_screen_size(w.max(cur_w), h.max(cur_h))?;
        }
        let set = self
            .conn
            .randr_set_crtc_config(
                crtc,
                x11rb::CURRENT_TIME,
                res.config_timestamp,
                0,
                0,
                mode,
                randr::Rotation::ROTATE0,
                &[output],
            )?
            .reply()?;
        if set.status != randr::SetConfig::SUCCESS {
            return Err(DesktopError::Display(format!(
                "the X server refused mode {w}x{h}: {:?}",
                set.status
            )));
        }
        self.set_screen_size(w, h)?;
        info!(width = w, height = h, "screen resized for the viewer");
        Ok((w, h))
    }

    fn screen_size(&self) -> Result<(u16, u16), DesktopError> {
        let geometry =
            x11rb::protocol::xproto::ConnectionExt::get_geometry(&self.conn, self.root)?.reply()?;
        Ok((geometry.width, geometry.height))
    }

    fn set_screen_size(&self, w: u16, h: u16) -> Result<(), DesktopError> {
        // Keep 96 dpi, what desktops assume when nothing says otherwise.
        let mm = |px: u16| (u32::from(px) * 254).div_ceil(960);
        self.conn
            .randr_set_screen_size(self.root, w, h, mm(w), mm(h))?
            .check()?;
        Ok(())
    }

    /// The first connected output that drives a CRTC.
    fn active_output(
        &self,
        res: &randr::GetScreenResourcesCurrentReply,
    ) -> Result<(randr::Output, randr::Crtc), DesktopError> {
        for &output in &res.outputs {
            let info = self
                .conn
                .randr_get_output_info(output, res.config_timestamp)?
                .reply()?;
            if info.connection == randr::Connection::CONNECTED && info.crtc != x11rb::NONE {
                return Ok((output, info.crtc));
            }
        }
        Err(DesktopError::Display(
            "no active RandR output to resize".into(),
        ))
    }

    fn create_mode(&self, output: randr::Output, w: u16, h: u16) -> Result<u32, DesktopError> {
        let name = format!("{w}x{h}");
        // A plain 60 Hz timing without blanking: virtual X servers only use the size.
        let info = ModeInfo {
            id: 0,
            width: w,
            height: h,
            dot_clock: u32::from(w) * u32::from(h) * 60,
            hsync_start: w,
            hsync_end: w,
            htotal: w,
            hskew: 0,
            vsync_start: h,
            vsync_end: h,
            vtotal: h,
            name_len: u16::try_from(name.len()).unwrap_or(0),
            mode_flags: ModeFlag::default(),
        };
        let mode = self
            .conn
            .randr_create_mode(self.root, info, name.as_bytes())?
            .reply()?
            .mode;
        self.conn.randr_add_output_mode(output, mode)?.check()?;
        self.conn.flush()?;
        debug!(%name, mode, "created RandR mode");
        Ok(mode)
    }
}
