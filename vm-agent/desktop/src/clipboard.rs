//! The X clipboard shared with viewers, both ways.
//!
//! VM to viewer: XFixes tells when some X client takes the `CLIPBOARD` selection; the agent converts
//! it to UTF-8 text (`UTF8_STRING`, else Latin-1 `STRING`, either one piece or `INCR` chunks) and
//! publishes it to every viewer. Viewer to VM: the agent becomes the owner of `CLIPBOARD` and
//! `PRIMARY` and answers `SelectionRequest`s for `TARGETS`, `UTF8_STRING`, `STRING` and `TEXT`, so
//! Ctrl+V and middle click in any X client paste the viewer's text.
//!
//! One thread per watched display owns its own X connection and an unmapped window; it sleeps in
//! `poll(2)` until the X server or a viewer has something for it.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::desktop::MAX_CLIPBOARD_BYTES;
use tokio::sync::watch;
use tracing::{debug, warn};
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    self, Atom, AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, GetPropertyReply,
    PropMode, Property, SelectionNotifyEvent, SelectionRequestEvent, Window, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::DesktopError;

/// What the VM's clipboard holds, as viewers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipboardContent {
    /// UTF-8 text an X client copied.
    Text(Arc<str>),
    /// An X client copied text larger than [`MAX_CLIPBOARD_BYTES`]; it is not sent.
    TooLarge {
        /// At least this many bytes.
        bytes: usize,
    },
}

/// Why the viewer's text could not become the VM's clipboard.
#[derive(Debug, thiserror::Error)]
pub enum ClipboardError {
    /// Larger than [`MAX_CLIPBOARD_BYTES`].
    #[error("clipboard text of {bytes} bytes is over the limit of {MAX_CLIPBOARD_BYTES} bytes")]
    TooLarge {
        /// Size of the text.
        bytes: usize,
    },
    /// The X server refused or went away.
    #[error("display: {0}")]
    Display(String),
}

enum Command {
    Set(Arc<str>, mpsc::Sender<Result<(), ClipboardError>>),
    Quit,
}

/// The clipboard of one display.
#[derive(Debug)]
pub struct Clipboard {
    commands: mpsc::Sender<Command>,
    wake: UnixDatagram,
    content: watch::Sender<Option<ClipboardContent>>,
    thread: Option<JoinHandle<()>>,
}

impl Clipboard {
    /// Connects to `display` and starts watching its `CLIPBOARD` selection (whatever it holds now
    /// is read at once, so the first viewer sees it).
    pub fn start(display: &str) -> Result<Self, DesktopError> {
        let selections = Selections::open(display)?;
        let (commands, commands_rx) = mpsc::channel();
        let (wake, thread_wake) = UnixDatagram::pair()?;
        thread_wake.set_nonblocking(true)?;
        let content = watch::channel(None).0;
        let publish = content.clone();
        let name = display.to_string();
        let thread = std::thread::Builder::new()
            .name("desktop-clipboard".into())
            .spawn(move || {
                if let Err(e) = selections.run(&commands_rx, &thread_wake, &publish) {
                    warn!(display = %name, error = %e, "clipboard stopped");
                }
            })?;
        Ok(Self {
            commands,
            wake,
            content,
            thread: Some(thread),
        })
    }

    /// The VM's clipboard as it changes (`None` until some X client copied text).
    pub fn content(&self) -> watch::Receiver<Option<ClipboardContent>> {
        self.content.subscribe()
    }

    /// Makes `text` the VM's `CLIPBOARD` and `PRIMARY`; returns once the X server made the agent
    /// their owner, so a paste key injected next pastes it.
    pub fn set(&self, text: &str) -> Result<(), ClipboardError> {
        if text.len() > MAX_CLIPBOARD_BYTES {
            return Err(ClipboardError::TooLarge { bytes: text.len() });
        }
        let (ack, done) = mpsc::channel();
        let gone = || ClipboardError::Display("the clipboard thread stopped".into());
        self.commands
            .send(Command::Set(text.into(), ack))
            .map_err(|_| gone())?;
        let _ = self.wake.send(&[1]);
        done.recv_timeout(Duration::from_secs(5))
            .map_err(|_| gone())?
    }
}

impl Drop for Clipboard {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Quit);
        let _ = self.wake.send(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Atoms {
    clipboard: Atom,
    targets: Atom,
    utf8_string: Atom,
    text: Atom,
    incr: Atom,
    property: Atom,
}

/// A read of the selection in progress.
struct Transfer {
    target: Atom,
    /// `Some` once the owner switched to `INCR` chunks.
    incremental: Option<Vec<u8>>,
    /// Chunks still arrive after the limit was passed; they are dropped.
    over: Option<usize>,
}

struct Selections {
    conn: RustConnection,
    window: Window,
    atoms: Atoms,
    /// The viewer's text while the agent owns the selections.
    owned: Option<Arc<str>>,
    reading: Option<Transfer>,
}

impl Selections {
    fn open(display: &str) -> Result<Self, DesktopError> {
        let (conn, screen) = super::x11::open(display)?;
        let root = screen.root;
        conn.xfixes_query_version(5, 0)?
            .reply()
            .map_err(|e| DesktopError::Display(format!("no XFIXES on {display}: {e}")))?;
        let intern = |name: &[u8]| -> Result<Atom, DesktopError> {
            Ok(conn.intern_atom(false, name)?.reply()?.atom)
        };
        let atoms = Atoms {
            clipboard: intern(b"CLIPBOARD")?,
            targets: intern(b"TARGETS")?,
            utf8_string: intern(b"UTF8_STRING")?,
            text: intern(b"TEXT")?,
            incr: intern(b"INCR")?,
            property: intern(b"AGENT_SELECTION")?,
        };
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            -10,
            -10,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            x11rb::COPY_FROM_PARENT,
            &CreateWindowAux::new()
                .override_redirect(1)
                .event_mask(EventMask::PROPERTY_CHANGE),
        )?;
        conn.xfixes_select_selection_input(
            window,
            atoms.clipboard,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER,
        )?;
        conn.flush()?;
        let mut selections = Self {
            conn,
            window,
            atoms,
            owned: None,
            reading: None,
        };
        let owner = selections
            .conn
            .get_selection_owner(selections.atoms.clipboard)?
            .reply()?
            .owner;
        if owner != x11rb::NONE {
            selections.convert(selections.atoms.utf8_string, x11rb::CURRENT_TIME)?;
        }
        Ok(selections)
    }

    fn run(
        mut self,
        commands: &mpsc::Receiver<Command>,
        wake: &UnixDatagram,
        publish: &watch::Sender<Option<ClipboardContent>>,
    ) -> Result<(), DesktopError> {
        loop {
            while let Some(event) = self.conn.poll_for_event()? {
                if let Some(content) = self.event(event)? {
                    publish.send_replace(Some(content));
                }
            }
            let mut buf = [0u8; 16];
            loop {
                match wake.recv(&mut buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return Ok(()),
                }
            }
            let mut handled = false;
            while let Ok(command) = commands.try_recv() {
                handled = true;
                match command {
                    Command::Quit => return Ok(()),
                    Command::Set(text, ack) => {
                        let _ = ack.send(self.own(text));
                    }
                }
            }
            if handled {
                // Replies waited for meanwhile may have queued events the socket no longer shows.
                continue;
            }
            // Commands are read at the top of the loop.
            super::x11::wait(self.conn.stream().as_fd(), wake.as_fd())?;
        }
    }

    /// Becomes the owner of `CLIPBOARD` and `PRIMARY` with `text`.
    fn own(&mut self, text: Arc<str>) -> Result<(), ClipboardError> {
        let x = |e: &dyn std::fmt::Display| ClipboardError::Display(e.to_string());
        self.owned = Some(text);
        for selection in [self.atoms.clipboard, AtomEnum::PRIMARY.into()] {
            self.conn
                .set_selection_owner(self.window, selection, x11rb::CURRENT_TIME)
                .map_err(|e| x(&e))?;
            let owner = self
                .conn
                .get_selection_owner(selection)
                .map_err(|e| x(&e))?
                .reply()
                .map_err(|e| x(&e))?
                .owner;
            if owner != self.window {
                return Err(ClipboardError::Display(
                    "the X server did not make the agent the selection owner".into(),
                ));
            }
        }
        debug!("agent owns the clipboard");
        Ok(())
    }

    /// Handles one event; returns new clipboard content once a read finished.
    fn event(&mut self, event: Event) -> Result<Option<ClipboardContent>, DesktopError> {
        match event {
            Event::XfixesSelectionNotify(e) if e.selection == self.atoms.clipboard => {
                if e.owner != self.window && e.owner != x11rb::NONE {
                    self.convert(self.atoms.utf8_string, e.selection_timestamp)?;
                }
                Ok(None)
            }
            Event::SelectionNotify(e) if e.requestor == self.window => self.converted(&e),
            Event::PropertyNotify(e)
                if e.window == self.window
                    && e.atom == self.atoms.property
                    && e.state == Property::NEW_VALUE =>
            {
                self.chunk()
            }
            Event::SelectionRequest(e) => {
                self.serve(&e)?;
                Ok(None)
            }
            Event::SelectionClear(e) => {
                // Another client copied; keep serving the other selection we may still own.
                let other = if e.selection == self.atoms.clipboard {
                    AtomEnum::PRIMARY.into()
                } else {
                    self.atoms.clipboard
                };
                let still_owner =
                    self.conn.get_selection_owner(other)?.reply()?.owner == self.window;
                if !still_owner {
                    self.owned = None;
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Asks the owner of `CLIPBOARD` for its content as `target`.
    fn convert(&mut self, target: Atom, time: u32) -> Result<(), DesktopError> {
        self.reading = Some(Transfer {
            target,
            incremental: None,
            over: None,
        });
        self.conn.convert_selection(
            self.window,
            self.atoms.clipboard,
            target,
            self.atoms.property,
            time,
        )?;
        self.conn.flush()?;
        Ok(())
    }

    /// The owner answered a conversion.
    fn converted(
        &mut self,
        e: &SelectionNotifyEvent,
    ) -> Result<Option<ClipboardContent>, DesktopError> {
        let Some(target) = self.reading.as_ref().map(|t| t.target) else {
            return Ok(None);
        };
        if e.property == x11rb::NONE {
            // No UTF-8 from this owner: try Latin-1, then give up (not text).
            let retry = target == self.atoms.utf8_string;
            self.reading = None;
            if retry {
                self.convert(AtomEnum::STRING.into(), e.time)?;
            }
            return Ok(None);
        }
        let reply = self.take_property()?;
        if reply.type_ == self.atoms.incr {
            // Deleting the property (done above) asks the owner for the first chunk.
            if let Some(t) = self.reading.as_mut() {
                t.incremental = Some(Vec::new());
            }
            return Ok(None);
        }
        self.reading = None;
        let total = reply.value.len() + reply.bytes_after as usize;
        if total > MAX_CLIPBOARD_BYTES {
            return Ok(Some(ClipboardContent::TooLarge { bytes: total }));
        }
        Ok(Some(self.decode(target, reply.value)))
    }

    /// Reads and deletes our transfer property, at most one whole clipboard's worth (deleting
    /// it is also what asks an `INCR` owner for its next chunk).
    fn take_property(&self) -> Result<GetPropertyReply, DesktopError> {
        let limit = u32::try_from(MAX_CLIPBOARD_BYTES / 4 + 1).unwrap_or(u32::MAX);
        let reply = self
            .conn
            .get_property(
                true,
                self.window,
                self.atoms.property,
                AtomEnum::ANY,
                0,
                limit,
            )?
            .reply()?;
        self.conn.flush()?;
        Ok(reply)
    }

    /// One `INCR` chunk arrived (a zero-length one ends the transfer).
    fn chunk(&mut self) -> Result<Option<ClipboardContent>, DesktopError> {
        let Some(Transfer {
            incremental: Some(_),
            ..
        }) = self.reading
        else {
            return Ok(None);
        };
        let reply = self.take_property()?;
        let Some(transfer) = self.reading.as_mut() else {
            return Ok(None);
        };
        let Some(data) = transfer.incremental.as_mut() else {
            return Ok(None);
        };
        if !reply.value.is_empty() {
            match transfer.over.as_mut() {
                Some(over) => *over += reply.value.len(),
                None if data.len() + reply.value.len() > MAX_CLIPBOARD_BYTES => {
                    transfer.over = Some(data.len() + reply.value.len());
                    *data = Vec::new();
                }
                None => data.extend_from_slice(&reply.value),
            }
            return Ok(None);
        }
        let Some(transfer) = self.reading.take() else {
            return Ok(None);
        };
        if let Some(bytes) = transfer.over {
            return Ok(Some(ClipboardContent::TooLarge { bytes }));
        }
        let data = transfer.incremental.unwrap_or_default();
        Ok(Some(self.decode(transfer.target, data)))
    }

    fn decode(&self, target: Atom, data: Vec<u8>) -> ClipboardContent {
        let text: String = if target == self.atoms.utf8_string {
            String::from_utf8(data)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        } else {
            data.iter().map(|&b| char::from(b)).collect()
        };
        debug!(bytes = text.len(), "X clipboard read");
        ClipboardContent::Text(text.into())
    }

    /// Answers another client's request for the selections the agent owns.
    fn serve(&mut self, e: &SelectionRequestEvent) -> Result<(), DesktopError> {
        // Obsolete clients pass no property: the target names it.
        let property = if e.property == x11rb::NONE {
            e.target
        } else {
            e.property
        };
        let answered = match &self.owned {
            Some(text) if e.owner == self.window => {
                let string: Atom = AtomEnum::STRING.into();
                if e.target == self.atoms.targets {
                    let targets = [
                        self.atoms.targets,
                        self.atoms.utf8_string,
                        string,
                        self.atoms.text,
                    ];
                    self.conn.change_property32(
                        PropMode::REPLACE,
                        e.requestor,
                        property,
                        AtomEnum::ATOM,
                        &targets,
                    )?;
                    true
                } else if e.target == self.atoms.utf8_string || e.target == self.atoms.text {
                    self.put(
                        e.requestor,
                        property,
                        self.atoms.utf8_string,
                        text.as_bytes(),
                    )?
                } else if e.target == string {
                    let latin1: Vec<u8> = text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                        .collect();
                    self.put(e.requestor, property, string, &latin1)?
                } else {
                    false
                }
            }
            _ => false,
        };
        let notify = SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: e.time,
            requestor: e.requestor,
            selection: e.selection,
            target: e.target,
            property: if answered { property } else { x11rb::NONE },
        };
        self.conn
            .send_event(false, e.requestor, EventMask::NO_EVENT, notify)?;
        self.conn.flush()?;
        Ok(())
    }

    /// Writes `data` into the requestor's property in one piece; `false` when it is larger than
    /// the X server takes in one request.
    fn put(
        &self,
        requestor: Window,
        property: Atom,
        kind: Atom,
        data: &[u8],
    ) -> Result<bool, DesktopError> {
        if data.len() + 64 > self.conn.maximum_request_bytes() {
            warn!(
                bytes = data.len(),
                "clipboard text larger than one X request, refused"
            );
            return Ok(false);
        }
        self.conn
            .change_property8(PropMode::REPLACE, requestor, property, kind, data)?;
        Ok(true)
    }
}
