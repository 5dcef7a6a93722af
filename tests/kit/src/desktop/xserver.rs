//! A real X server (Debian's Xvfb) and a real X client that paints and listens.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeGCAux, ChangeWindowAttributesAux, ConnectionExt as _, CreateGCAux, CreateWindowAux,
    EventMask, Rectangle, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

/// An Xvfb server on a display number of its own; killed on drop.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    /// `:N`.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb with a `width x height x 24` screen on a display number it picks itself
    /// (`-displayfd`), so parallel tests never race for one.
    pub fn start(width: u32, height: u32) -> Self {
        Self::start_with(width, height, &[])
    }

    /// [`Xvfb::start`] with more server arguments (e.g. `-extension MIT-SHM` to run without it).
    pub fn start_with(width: u32, height: u32, extra: &[&str]) -> Self {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let child_fd = write_end.as_raw_fd();
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            "-displayfd",
            "3",
            "-screen",
            "0",
            &format!("{width}x{height}x24"),
        ])
        .args(["-nolisten", "tcp"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(child_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("Xvfb from Debian's xvfb package must be installed (cargo xtask setup)");
        drop(write_end);
        let mut line = String::new();
        BufReader::new(std::fs::File::from(read_end))
            .read_line(&mut line)
            .expect("read display number");
        let number: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Xvfb said {line:?}"));
        Self {
            child,
            display: format!(":{number}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An X client with one window covering the screen: paints it one colour, reports clicks.
#[derive(Debug)]
pub struct Canvas {
    conn: RustConnection,
    window: u32,
}

impl Canvas {
    /// Maps a full-screen window of colour `rgb` (0xRRGGBB).
    pub fn open(display: &str, rgb: u32) -> Self {
        let (conn, screen_num) = x11rb::connect(Some(display)).expect("connect");
        let screen = conn.setup().roots[screen_num].clone();
        let window = conn.generate_id().expect("id");
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            screen.root,
            0,
            0,
            screen.width_in_pixels,
            screen.height_in_pixels,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(rgb)
                .override_redirect(1)
                .event_mask(EventMask::BUTTON_PRESS | EventMask::KEY_PRESS),
        )
        .expect("create window");
        conn.map_window(window).expect("map");
        conn.flush().expect("flush");
        let canvas = Self { conn, window };
        canvas.conn.sync().expect("sync");
        canvas
    }

    /// Repaints the window in `rgb`.
    pub fn paint(&self, rgb: u32) {
        self.conn
            .change_window_attributes(
                self.window,
                &ChangeWindowAttributesAux::new().background_pixel(rgb),
            )
            .expect("change");
        self.conn
            .clear_area(false, self.window, 0, 0, 0, 0)
            .expect("clear");
        self.conn.flush().expect("flush");
    }

    /// Paints 16 vertical stripes of changing colours shifted by `step` (a full-screen animation
    /// that changes every pixel column each step).
    pub fn paint_stripes(&self, step: u32) {
        let geometry = self
            .conn
            .get_geometry(self.window)
            .expect("geometry")
            .reply()
            .expect("geometry");
        let (w, h) = (u32::from(geometry.width), geometry.height);
        let gc = self.conn.generate_id().expect("id");
        self.conn
            .create_gc(gc, self.window, &CreateGCAux::new())
            .expect("gc");
        let stripes = 16u32;
        let stripe_w = w / stripes + 1;
        for i in 0..stripes {
            let colour = (i * 0x10_2040 + step * 0x03_0507) & 0xff_ffff;
            self.conn
                .change_gc(gc, &ChangeGCAux::new().foreground(colour))
                .expect("change gc");
            let x = ((i * stripe_w + step * 8) % w) as i16;
            let rect = Rectangle {
                x,
                y: 0,
                width: stripe_w as u16,
                height: h,
            };
            self.conn
                .poly_fill_rectangle(self.window, gc, &[rect])
                .expect("fill");
        }
        self.conn.free_gc(gc).expect("free gc");
        self.conn.flush().expect("flush");
    }

    /// Makes glyph `glyph` of the standard cursor font (e.g. 152, `XC_xterm`; 60, `XC_hand2`) the
    /// window's cursor, black on white.
    pub fn set_cursor(&self, glyph: u16) {
        let font = self.conn.generate_id().expect("id");
        self.conn.open_font(font, b"cursor").expect("cursor font");
        let cursor = self.conn.generate_id().expect("id");
        self.conn
            .create_glyph_cursor(
                cursor,
                font,
                font,
                glyph,
                glyph + 1,
                0,
                0,
                0,
                0xffff,
                0xffff,
                0xffff,
            )
            .expect("glyph cursor");
        self.conn
            .change_window_attributes(
                self.window,
                &ChangeWindowAttributesAux::new().cursor(cursor),
            )
            .expect("set cursor");
        self.conn.close_font(font).expect("close font");
        self.conn.sync().expect("sync");
    }

    /// The cursor the X server shows now, as XFixes reports it: (width, height, xhot, yhot).
    pub fn shown_cursor(&self) -> (u16, u16, u16, u16) {
        use x11rb::protocol::xfixes::ConnectionExt as _;
        self.conn
            .xfixes_query_version(4, 0)
            .expect("xfixes")
            .reply()
            .expect("xfixes");
        let image = self
            .conn
            .xfixes_get_cursor_image()
            .expect("cursor image")
            .reply()
            .expect("cursor image");
        (image.width, image.height, image.xhot, image.yhot)
    }

    /// Waits for a button press on the window; returns (button, x, y).
    pub fn wait_click(&self, timeout: Duration) -> Option<(u8, i16, i16)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            while let Some(event) = self.conn.poll_for_event().expect("x events") {
                if let Event::ButtonPress(e) = event {
                    return Some((e.detail, e.event_x, e.event_y));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

trait Sync {
    fn sync(&self) -> Result<(), x11rb::errors::ReplyError>;
}

impl Sync for RustConnection {
    fn sync(&self) -> Result<(), x11rb::errors::ReplyError> {
        self.get_input_focus()?.reply().map(|_| ())
    }
}
