//! Viewer input injected into the X server with XTEST.
//!
//! Keys are looked up in the server's keyboard mapping by keysym; a character the mapping lacks is
//! bound to a spare keycode first (so pasted text in any script arrives). Shift is pressed around a
//! character that needs it and is not already held. Whatever is still pressed when the controlling
//! viewer leaves is released, so no key or button stays stuck.

use std::collections::HashMap;

use protocol::desktop::InputEvent;
use tracing::debug;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _, Keycode, Keysym, Window};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::keymap;
use super::DesktopError;

/// An injector on one display.
pub struct Injector {
    conn: RustConnection,
    root: Window,
    min_keycode: Keycode,
    per_keycode: usize,
    keysyms: Vec<Keysym>,
    spare: Vec<Keycode>,
    next_spare: usize,
    /// Keys down, by browser `code`: the keycode pressed and whether we added a Shift around it.
    pressed: HashMap<String, (Keycode, bool)>,
    buttons: Vec<u8>,
    shift_held: u32,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("pressed", &self.pressed.len())
            .finish()
    }
}

impl Injector {
    /// Connects to `display` and reads its keyboard mapping.
    pub fn open(display: &str) -> Result<Self, DesktopError> {
        let (conn, screen) = super::x11::open(display)?;
        conn.xtest_get_version(2, 2)?
            .reply()
            .map_err(|e| DesktopError::Display(format!("no XTEST on {display}: {e}")))?;
        let setup = conn.setup();
        let root = screen.root;
        let (min_keycode, max_keycode) = (setup.min_keycode, setup.max_keycode);
        let mut injector = Self {
            conn,
            root,
            min_keycode,
            per_keycode: 1,
            keysyms: Vec::new(),
            spare: Vec::new(),
            next_spare: 0,
            pressed: HashMap::new(),
            buttons: Vec::new(),
            shift_held: 0,
        };
        injector.read_mapping(max_keycode)?;
        Ok(injector)
    }

    fn read_mapping(&mut self, max_keycode: Keycode) -> Result<(), DesktopError> {
        let count = max_keycode - self.min_keycode + 1;
        let map = self
            .conn
            .get_keyboard_mapping(self.min_keycode, count)?
            .reply()?;
        self.per_keycode = usize::from(map.keysyms_per_keycode).max(1);
        self.keysyms = map.keysyms;
        self.spare = self
            .keysyms
            .chunks(self.per_keycode)
            .enumerate()
            .filter(|(_, syms)| syms.iter().all(|&s| s == 0))
            .filter_map(|(i, _)| u8::try_from(i).ok().map(|i| self.min_keycode + i))
            .collect();
        Ok(())
    }

    /// Applies one input event.
    pub fn apply(&mut self, event: &InputEvent) -> Result<(), DesktopError> {
        match event {
            InputEvent::Move { x, y } => {
                let (x, y) = (clamp_coord(*x), clamp_coord(*y));
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, x, y)?;
            }
            InputEvent::Button { button, down } => {
                let Some(x_button) = x_button(*button) else {
                    return Ok(());
                };
                if *down {
                    self.buttons.push(x_button);
                    self.fake(xproto::BUTTON_PRESS_EVENT, x_button, 0, 0)?;
                } else {
                    self.buttons.retain(|b| *b != x_button);
                    self.fake(xproto::BUTTON_RELEASE_EVENT, x_button, 0, 0)?;
                }
            }
            InputEvent::Wheel { dx, dy } => {
                for (delta, neg, pos) in [(*dy, 4u8, 5u8), (*dx, 6, 7)] {
                    let clicks = wheel_clicks(delta);
                    let button = if delta < 0.0 { neg } else { pos };
                    for _ in 0..clicks {
                        self.fake(xproto::BUTTON_PRESS_EVENT, button, 0, 0)?;
                        self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)?;
                    }
                }
            }
            InputEvent::Key { code, key, down } => self.key(code, key, *down)?,
            InputEvent::Text { text } => {
                for c in text.chars() {
                    self.tap(keymap::char_keysym(c))?;
                }
            }
            // Handled by the session, not injected.
            InputEvent::TakeControl | InputEvent::Clipboard { .. } | InputEvent::Resize { .. } => {}
        }
        self.conn.flush()?;
        Ok(())
    }

    fn key(&mut self, code: &str, key: &str, down: bool) -> Result<(), DesktopError> {
        if !down {
            if let Some((keycode, shifted)) = self.pressed.remove(code) {
                self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)?;
                if shifted {
                    self.release_shift()?;
                }
                if is_shift(code) {
                    self.shift_held = self.shift_held.saturating_sub(1);
                }
            }
            return Ok(());
        }
        if self.pressed.contains_key(code) {
            // Auto-repeat: X repeats by itself only for held hardware keys, so tap again.
            if let Some(&(keycode, _)) = self.pressed.get(code) {
                self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)?;
                self.fake(xproto::KEY_PRESS_EVENT, keycode, 0, 0)?;
            }
            return Ok(());
        }
        let Some(sym) = keymap::keysym(code, key) else {
            debug!(code, "key without keysym ignored");
            return Ok(());
        };
        let (keycode, column) = self.keycode_for(sym)?;
        let shifted = column == 1 && self.shift_held == 0;
        if shifted {
            self.press_shift()?;
        }
        self.fake(xproto::KEY_PRESS_EVENT, keycode, 0, 0)?;
        if is_shift(code) {
            self.shift_held += 1;
        }
        self.pressed.insert(code.to_string(), (keycode, shifted));
        Ok(())
    }

    fn tap(&mut self, sym: Keysym) -> Result<(), DesktopError> {
        let (keycode, column) = self.keycode_for(sym)?;
        let shifted = column == 1 && self.shift_held == 0;
        if shifted {
            self.press_shift()?;
        }
        self.fake(xproto::KEY_PRESS_EVENT, keycode, 0, 0)?;
        self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)?;
        if shifted {
            self.release_shift()?;
        }
        Ok(())
    }

    fn press_shift(&mut self) -> Result<(), DesktopError> {
        let (keycode, _) = self.keycode_for(keymap::SHIFT_L)?;
        self.fake(xproto::KEY_PRESS_EVENT, keycode, 0, 0)
    }

    fn release_shift(&mut self) -> Result<(), DesktopError> {
        let (keycode, _) = self.keycode_for(keymap::SHIFT_L)?;
        self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)
    }

    /// The keycode and column (0 plain, 1 shifted) producing `sym`, binding a spare keycode when the
    /// mapping has none.
    fn keycode_for(&mut self, sym: Keysym) -> Result<(Keycode, usize), DesktopError> {
        let found = self
            .keysyms
            .chunks(self.per_keycode)
            .enumerate()
            .find_map(|(i, syms)| {
                syms.iter()
                    .take(2)
                    .position(|&s| s == sym)
                    .map(|col| (i, col))
            });
        if let Some((index, column)) = found {
            let keycode = u8::try_from(index)
                .ok()
                .and_then(|i| self.min_keycode.checked_add(i))
                .ok_or_else(|| DesktopError::Display("keycode out of range".into()))?;
            return Ok((keycode, column));
        }
        if self.spare.is_empty() {
            return Err(DesktopError::Display(format!(
                "no keycode free for keysym {sym:#x}"
            )));
        }
        let keycode = self.spare[self.next_spare % self.spare.len()];
        self.next_spare += 1;
        let syms = vec![sym; self.per_keycode];
        self.conn
            .change_keyboard_mapping(1, keycode, self.per_keycode as u8, &syms)?;
        // Wait until the server applied it, so the key event below uses the new mapping.
        self.conn.get_input_focus()?.reply()?;
        let index = usize::from(keycode - self.min_keycode) * self.per_keycode;
        // Forget whatever keysym the spare keycode carried before.
        for (slot, s) in self.keysyms[index..index + self.per_keycode]
            .iter_mut()
            .zip(&syms)
        {
            *slot = *s;
        }
        Ok((keycode, 0))
    }

    /// Releases every key and button still held (the controlling viewer left).
    pub fn release_all(&mut self) -> Result<(), DesktopError> {
        let keys: Vec<(Keycode, bool)> = self.pressed.drain().map(|(_, v)| v).collect();
        for (keycode, shifted) in keys {
            self.fake(xproto::KEY_RELEASE_EVENT, keycode, 0, 0)?;
            if shifted {
                self.release_shift()?;
            }
        }
        self.shift_held = 0;
        for button in std::mem::take(&mut self.buttons) {
            self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)?;
        }
        self.conn.flush()?;
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), DesktopError> {
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)?;
        Ok(())
    }
}

fn is_shift(code: &str) -> bool {
    code == "ShiftLeft" || code == "ShiftRight"
}

/// `MouseEvent.button` to the X button number.
fn x_button(browser: u8) -> Option<u8> {
    match browser {
        0 => Some(1),
        1 => Some(2),
        2 => Some(3),
        3 => Some(8),
        4 => Some(9),
        _ => None,
    }
}

/// Wheel pixels to clicks (a browser notch is about 100 px; any scroll is at least one click).
fn wheel_clicks(delta: f64) -> u32 {
    if delta == 0.0 || !delta.is_finite() {
        0
    } else {
        ((delta.abs() / 100.0).round() as u32).clamp(1, 20)
    }
}

fn clamp_coord(v: f64) -> i16 {
    if v.is_finite() {
        v.round().clamp(0.0, f64::from(i16::MAX)) as i16
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_deltas_become_clicks() {
        assert_eq!(wheel_clicks(0.0), 0);
        assert_eq!(wheel_clicks(3.0), 1);
        assert_eq!(wheel_clicks(-250.0), 3);
        assert_eq!(wheel_clicks(f64::NAN), 0);
        assert_eq!(wheel_clicks(1e9), 20);
    }

    #[test]
    fn browser_buttons_map_to_x_buttons() {
        assert_eq!(x_button(0), Some(1));
        assert_eq!(x_button(2), Some(3));
        assert_eq!(x_button(7), None);
    }

    #[test]
    fn coordinates_are_clamped() {
        assert_eq!(clamp_coord(-5.0), 0);
        assert_eq!(clamp_coord(12.6), 13);
        assert_eq!(clamp_coord(1e12), i16::MAX);
    }
}
