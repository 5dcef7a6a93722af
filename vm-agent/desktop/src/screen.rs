//! One watched display: a capture-and-encode thread, the encoded frames every viewer of it receives,
//! the input injector, and who holds control.
//!
//! The thread exists only while some viewer holds the [`Screen`]: nothing is captured or encoded while
//! nobody watches. It sleeps in `poll(2)` on the X connection and a command socket, so an idle screen
//! costs no CPU; when XDamage reports a change it grabs and encodes at most `fps` times a second.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::desktop::DesktopStats;
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use super::capture::Capture;
use super::clipboard::{Clipboard, ClipboardContent, ClipboardError};
use super::cursor::{Cursor, CursorImage};
use super::encode::{EncodedFrame, Encoder, EncoderSettings};
use super::input::Injector;
use super::resize::Resizer;
use super::DesktopError;

/// Frames buffered per viewer before a slow viewer skips ahead (and gets a keyframe).
const FRAME_QUEUE: usize = 8;

/// A frame as viewers receive it.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// The encoded picture.
    pub frame: EncodedFrame,
    /// When the screen was grabbed.
    pub captured: Instant,
    /// RTP timestamp (90 kHz clock since the capture started).
    pub rtp_90khz: u64,
    /// How long grabbing and encoding took.
    pub encode_time: Duration,
}

/// What the capture thread has done, for the `stats` call.
#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    keyframes: AtomicU64,
    /// `width << 16 | height`.
    size: AtomicU32,
    shm: AtomicBool,
}

impl Counters {
    fn grabbed(&self, capture: &Capture) {
        self.captured.fetch_add(1, Ordering::Relaxed);
        let (w, h) = capture.size();
        self.size
            .store(u32::from(w) << 16 | u32::from(h), Ordering::Relaxed);
        self.shm.store(capture.uses_shm(), Ordering::Relaxed);
    }
}

const CMD_KEYFRAME: u8 = b'k';
const CMD_QUIT: u8 = b'q';

/// A display being watched by at least one viewer.
#[derive(Debug)]
pub struct Screen {
    display: String,
    frames: broadcast::Sender<Arc<VideoFrame>>,
    commands: UnixDatagram,
    injector: Mutex<Injector>,
    control: Mutex<Control>,
    holder: watch::Sender<Option<u64>>,
    /// `None` when the X server has no XFIXES.
    clipboard: Option<Clipboard>,
    /// `None` when the X server has no XFIXES 4.
    cursor: Option<Cursor>,
    /// `None` when the X server has no RandR 1.2.
    resizer: Option<Mutex<Resizer>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Control {
    next_id: u64,
    viewers: Vec<u64>,
}

impl Screen {
    /// Opens the display and starts capturing.
    pub fn start(display: &str, settings: EncoderSettings) -> Result<Self, DesktopError> {
        let capture = Capture::open(display)?;
        let injector = Injector::open(display)?;
        let encoder = Encoder::new(settings)?;
        let display_name = display;
        let clipboard = Clipboard::start(display)
            .inspect_err(|e| warn!(display = %display_name, error = %e, "no clipboard sharing"))
            .ok();
        let cursor = Cursor::start(display)
            .inspect_err(|e| warn!(display = %display_name, error = %e, "no cursor shapes"))
            .ok();
        let resizer = Resizer::open(display)
            .inspect_err(|e| warn!(display = %display_name, error = %e, "the screen cannot follow the viewer"))
            .ok()
            .map(Mutex::new);
        let (frames, _) = broadcast::channel(FRAME_QUEUE);
        let (commands, thread_commands) = UnixDatagram::pair()
            .map_err(|e| DesktopError::Display(format!("command socket: {e}")))?;
        thread_commands
            .set_nonblocking(true)
            .map_err(|e| DesktopError::Display(format!("command socket: {e}")))?;
        let sender = frames.clone();
        let name = display.to_string();
        let counters = Arc::new(Counters::default());
        let (w, h) = capture.size();
        counters
            .size
            .store(u32::from(w) << 16 | u32::from(h), Ordering::Relaxed);
        counters.shm.store(capture.uses_shm(), Ordering::Relaxed);
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("desktop-capture".into())
            .spawn(move || {
                let sinks = Sinks {
                    frames: &sender,
                    commands: &thread_commands,
                    counters: &thread_counters,
                };
                if let Err(e) = capture_loop(capture, encoder, settings, sinks) {
                    warn!(display = %name, error = %e, "capture stopped");
                }
            })
            .map_err(|e| DesktopError::Display(format!("capture thread: {e}")))?;
        Ok(Self {
            display: display.to_string(),
            frames,
            commands,
            injector: Mutex::new(injector),
            control: Mutex::new(Control::default()),
            holder: watch::channel(None).0,
            clipboard,
            cursor,
            resizer,
            counters,
            thread: Some(thread),
        })
    }

    /// What watching this display costs right now.
    pub fn stats(&self) -> DesktopStats {
        let viewers = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .viewers
            .len();
        let size = self.counters.size.load(Ordering::Relaxed);
        DesktopStats {
            display: self.display.clone(),
            viewers: u32::try_from(viewers).unwrap_or(u32::MAX),
            width: size >> 16,
            height: size & 0xffff,
            frames_captured: self.counters.captured.load(Ordering::Relaxed),
            keyframes: self.counters.keyframes.load(Ordering::Relaxed),
            shm: self.counters.shm.load(Ordering::Relaxed),
        }
    }

    /// The display name.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Frames from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<VideoFrame>> {
        self.frames.subscribe()
    }

    /// Asks for a keyframe (a viewer joined, lost packets, or asked with PLI/FIR).
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(&[CMD_KEYFRAME]);
    }

    /// Registers a viewer; the first one gets control.
    pub fn join(&self) -> u64 {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.next_id += 1;
        let id = control.next_id;
        control.viewers.push(id);
        if self.holder.borrow().is_none() {
            self.holder.send_replace(Some(id));
        }
        id
    }

    /// Removes a viewer; control passes to the longest-watching remaining viewer.
    pub fn leave(&self, id: u64) {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.viewers.retain(|v| *v != id);
        if *self.holder.borrow() == Some(id) {
            self.release_keys();
            self.holder.send_replace(control.viewers.first().copied());
        }
    }

    /// Lets go of every key and button the holder left pressed, so none stays down for the next.
    fn release_keys(&self) {
        let mut injector = self.injector.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = injector.release_all() {
            warn!(error = %e, "releasing held keys");
        }
    }

    /// Gives control to `id`.
    pub fn take_control(&self, id: u64) {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if *self.holder.borrow() != Some(id) {
            self.release_keys();
            self.holder.send_replace(Some(id));
        }
    }

    /// Who holds control, as it changes.
    pub fn holder(&self) -> watch::Receiver<Option<u64>> {
        self.holder.subscribe()
    }

    /// The VM's clipboard as X clients copy to it; `None` when the display cannot share it.
    pub fn clipboard_content(&self) -> Option<watch::Receiver<Option<ClipboardContent>>> {
        self.clipboard.as_ref().map(Clipboard::content)
    }

    /// The cursor's shape as it changes; `None` when the display cannot tell it.
    pub fn cursor_shape(&self) -> Option<watch::Receiver<Option<Arc<CursorImage>>>> {
        self.cursor.as_ref().map(Cursor::shape)
    }

    /// Makes `text` the VM's clipboard for viewer `id` if it holds control; returns whether it did.
    pub fn set_clipboard(&self, id: u64, text: &str) -> Result<bool, ClipboardError> {
        if *self.holder.borrow() != Some(id) {
            return Ok(false);
        }
        let clipboard = self.clipboard.as_ref().ok_or_else(|| {
            ClipboardError::Display("the X server cannot share its clipboard (no XFIXES)".into())
        })?;
        clipboard.set(text)?;
        Ok(true)
    }

    /// Sets the screen size for viewer `id` if it holds control; returns the size set, `None` when
    /// the viewer does not hold control.
    pub fn resize(
        &self,
        id: u64,
        width: u32,
        height: u32,
    ) -> Result<Option<(u16, u16)>, DesktopError> {
        if *self.holder.borrow() != Some(id) {
            return Ok(None);
        }
        let resizer = self.resizer.as_ref().ok_or_else(|| {
            DesktopError::Display("the X server cannot change its screen size (no RandR)".into())
        })?;
        let resizer = resizer.lock().unwrap_or_else(|p| p.into_inner());
        resizer.resize(width, height).map(Some)
    }

    /// Injects input from viewer `id` if it holds control; returns whether it did.
    pub fn input(
        &self,
        id: u64,
        event: &protocol::desktop::InputEvent,
    ) -> Result<bool, DesktopError> {
        if *self.holder.borrow() != Some(id) {
            return Ok(false);
        }
        self.injector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(event)?;
        Ok(true)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.commands.send(&[CMD_QUIT]);
        if let Some(thread) = self.thread.take() {
            // The thread wakes on the command at once; joining keeps a restarted screen from racing
            // the old one for the X server.
            let _ = thread.join();
        }
        debug!(display = %self.display, "capture stopped, nobody watches");
    }
}

/// Where the capture thread's work goes, and where its commands come from.
struct Sinks<'a> {
    frames: &'a broadcast::Sender<Arc<VideoFrame>>,
    commands: &'a UnixDatagram,
    counters: &'a Counters,
}

fn capture_loop(
    mut capture: Capture,
    mut encoder: Encoder,
    settings: EncoderSettings,
    sinks: Sinks<'_>,
) -> Result<(), DesktopError> {
    let Sinks {
        frames,
        commands,
        counters,
    } = sinks;
    let started = Instant::now();
    let interval = Duration::from_secs(1) / settings.fps.max(1);
    let mut last: Option<Instant> = None;
    let mut dirty = true;
    loop {
        dirty |= capture.changes()?.damaged;
        let mut buf = [0u8; 64];
        loop {
            match commands.recv(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    for &cmd in &buf[..n] {
                        match cmd {
                            CMD_QUIT => return Ok(()),
                            CMD_KEYFRAME => {
                                encoder.request_keyframe();
                                dirty = true;
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Ok(()),
            }
        }
        if dirty {
            if let Some(last) = last {
                let since = last.elapsed();
                if since < interval {
                    // Pace to `fps`; damage arriving meanwhile joins this frame.
                    std::thread::sleep(interval - since);
                    // Damage that arrived meanwhile is in this grab; repair it so it is not
                    // reported again.
                    capture.changes()?;
                }
            }
            let t0 = Instant::now();
            last = Some(t0);
            dirty = false;
            let (pixels, w, h) = capture.grab()?;
            let encoded = encoder.encode(pixels, usize::from(w), usize::from(h))?;
            counters.grabbed(&capture);
            if let Some(frame) = encoded {
                if frame.keyframe {
                    counters.keyframes.fetch_add(1, Ordering::Relaxed);
                }
                let rtp_90khz = u64::try_from(t0.duration_since(started).as_micros() * 9 / 100)
                    .unwrap_or(u64::MAX);
                let _ = frames.send(Arc::new(VideoFrame {
                    frame,
                    captured: t0,
                    rtp_90khz,
                    encode_time: t0.elapsed(),
                }));
            }
            continue;
        }
        // A command is read at the top of the loop.
        super::x11::wait(capture.fd(), commands.as_fd())?;
    }
}
