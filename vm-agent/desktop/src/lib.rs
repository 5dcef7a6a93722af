//! The VM's X11 desktop streamed to viewers over WebRTC, their input injected back.
//!
//! [`capture`] grabs the root window (MIT-SHM, XDamage), [`encode`] makes H.264 of it, [`screen`]
//! runs both on a thread while someone watches and shares the frames, [`rtc`] is one viewer's WebRTC
//! session ([`reflexive`] learns its public address from STUN servers, [`turn`] relays through
//! TURN servers), [`input`] injects its pointer and keys with XTEST ([`keymap`] translates browser
//! keys), [`clipboard`] shares the X clipboard both ways, [`cursor`] gives viewers the pointer's
//! shape, [`resize`] makes the screen follow the viewer's window (XRandR), and [`serve`] is the
//! `desktop` call that carries the signalling over the host connection.
//!
//! The agent uses it behind its `desktop` feature; the CLI VM's agent is built without it.

pub mod capture;
pub mod clipboard;
pub mod cursor;
pub mod encode;
pub mod input;
pub mod keymap;
pub mod reflexive;
pub mod resize;
pub mod rtc;
pub mod screen;
pub mod serve;
pub mod turn;
pub mod x11;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use protocol::{ErrorBody, ErrorCode};

use encode::EncoderSettings;
use screen::Screen;

/// Why the desktop could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// The X display is missing or lacks what the desktop needs (an extension, a screen).
    #[error("display: {0}")]
    Display(String),
    /// No connection to the X display could be made.
    #[error("cannot connect to {display}: {source}")]
    Connect {
        /// The display.
        display: String,
        /// Why.
        #[source]
        source: x11rb::errors::ConnectError,
    },
    /// The X connection failed.
    #[error("X11 connection: {0}")]
    X11(#[from] x11rb::errors::ConnectionError),
    /// The X server refused a request.
    #[error("X11 request: {0}")]
    X11Reply(#[from] x11rb::errors::ReplyError),
    /// The X server refused a request that allocates an id.
    #[error("X11 request: {0}")]
    X11Id(#[from] x11rb::errors::ReplyOrIdError),
    /// The encoder refused its settings or a frame.
    #[error("encoder: {0}")]
    Encoder(#[from] openh264::Error),
    /// A frame does not fit the encoder.
    #[error("encoder: {0}")]
    Encode(String),
    /// The viewer's offer cannot be answered.
    #[error("bad offer: {0}")]
    BadOffer(String),
    /// No usable local candidate.
    #[error("ice: {0}")]
    Ice(String),
    /// The WebRTC state machine failed.
    #[error("webrtc: {0}")]
    Rtc(#[from] str0m::RtcError),
    /// A socket call failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl DesktopError {
    /// Whether the X display itself is the problem (as opposed to the encoder or the network).
    pub fn is_display(&self) -> bool {
        matches!(
            self,
            DesktopError::Display(_)
                | DesktopError::Connect { .. }
                | DesktopError::X11(_)
                | DesktopError::X11Reply(_)
                | DesktopError::X11Id(_)
        )
    }

    /// The error as the caller receives it.
    pub fn to_error_body(&self) -> ErrorBody {
        let code = match self {
            DesktopError::BadOffer(_) => ErrorCode::BadRequest,
            e if e.is_display() => ErrorCode::NotFound,
            DesktopError::Io(_) | DesktopError::Ice(_) => ErrorCode::Io,
            _ => ErrorCode::Internal,
        };
        ErrorBody::new(code, self.to_string())
    }
}

/// The displays being watched, shared by every connection of the agent. A display's capture runs
/// while at least one viewer holds its [`Screen`].
#[derive(Debug, Default)]
pub struct Desktops {
    default_display: Option<String>,
    screens: Mutex<HashMap<String, Weak<Screen>>>,
    dtls: Mutex<DtlsIdentity>,
}

/// The agent's DTLS certificate, made once in the background and used by every viewer session:
/// making one (an ECDSA key and a signature) takes seconds in an emulated guest, and a viewer
/// should not wait for it. Each session still shows its fingerprint in its own SDP.
#[derive(Default, Clone)]
struct DtlsIdentity(Arc<std::sync::OnceLock<str0m::crypto::dtls::DtlsCert>>);

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("ready", &self.0.get().is_some())
            .finish()
    }
}

impl Desktops {
    /// No display watched yet; an offer naming no display streams `default_display`. An agent
    /// with a display starts making its DTLS certificate now, on a thread of its own.
    pub fn new(default_display: Option<String>) -> Self {
        let desktops = Self {
            default_display,
            screens: Mutex::default(),
            dtls: Mutex::default(),
        };
        if desktops.default_display.is_some() {
            desktops.renew_identity();
        }
        desktops
    }

    /// Drops the DTLS certificate and starts making a new one, on a thread of its own (viewers
    /// that come meanwhile make their own). A VM cloned from a snapshot calls this once it is
    /// reseeded: every clone would otherwise show viewers the snapshot's certificate and key.
    pub fn renew_identity(&self) {
        let dtls = DtlsIdentity::default();
        let cell = dtls.0.clone();
        *self.dtls.lock().unwrap_or_else(|p| p.into_inner()) = dtls;
        let made = std::thread::Builder::new()
            .name("dtls-cert".into())
            .spawn(move || {
                lowest_priority();
                let provider = str0m::crypto::from_feature_flags();
                if let Some(cert) = provider.dtls_provider.generate_certificate() {
                    let _ = cell.set(cert);
                }
            });
        if let Err(e) = made {
            tracing::warn!(error = %e, "no thread for the DTLS certificate; each viewer makes one");
        }
    }

    /// The agent's DTLS certificate, once made (`None` before: the session makes its own).
    pub(crate) fn dtls_cert(&self) -> Option<str0m::crypto::dtls::DtlsCert> {
        self.dtls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get()
            .cloned()
    }

    /// The display an offer naming none streams, if the agent has one.
    pub fn default_display(&self) -> Option<&str> {
        self.default_display.as_deref()
    }

    /// The watched screen of `display`, started with `settings` if nobody watches it yet.
    pub fn screen(
        &self,
        display: &str,
        settings: EncoderSettings,
    ) -> Result<Arc<Screen>, DesktopError> {
        let mut screens = self.screens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(screen) = screens.get(display).and_then(Weak::upgrade) {
            return Ok(screen);
        }
        let screen = Arc::new(Screen::start(display, settings)?);
        screens.retain(|_, s| s.strong_count() > 0);
        screens.insert(display.to_string(), Arc::downgrade(&screen));
        Ok(screen)
    }

    /// The displays being watched, by name.
    pub fn stats(&self) -> Vec<protocol::desktop::DesktopStats> {
        // Read outside the lock: the last viewer may leave meanwhile, and dropping a screen
        // joins its capture thread.
        let watched: Vec<Arc<Screen>> = self
            .screens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut stats: Vec<_> = watched.iter().map(|screen| screen.stats()).collect();
        stats.sort_by(|a, b| a.display.cmp(&b.display));
        stats
    }
}

/// Puts the calling thread last in line for the CPU. The certificate is made in the background
/// while, in a VM just restored from a snapshot, Chromium and the login's CLI wake on the same
/// few (emulated) CPUs: they must not wait behind it, and a viewer that comes first makes its own.
fn lowest_priority() {
    // SAFETY: setpriority reads no memory of ours; with `who` 0 it changes only the calling
    // thread (Linux keeps a nice value per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "the DTLS thread keeps its priority");
    }
}
