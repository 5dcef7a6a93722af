//! `x-probe`: the X client of the desktop VM tests (built static for musl and packed into the
//! desktop image, where no Debian X client would run without its libraries).
//!
//! - `x-probe fill RRGGBB` paints the whole screen one colour and exits. It sets the root window's
//!   background, as `xsetroot -solid` does, so the colour stays after the client is gone.
//! - `x-probe watch` covers the screen with an input-only window (the colour shows through) and
//!   prints one line per event on stdout: `ready` once it listens, `click BUTTON X Y` for a button
//!   press, `key KEYSYM` (hexadecimal, as the keyboard mapping names the key at the current shift
//!   level) for a key press. It runs until killed or its display goes away.

use std::io::Write;
use std::process::ExitCode;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, CreateWindowAux, EventMask, KeyButMask,
    WindowClass,
};
use x11rb::protocol::Event;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["fill", colour] => fill(colour),
        ["watch"] => watch(),
        _ => Err("usage: x-probe fill RRGGBB | x-probe watch".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fill(colour: &str) -> Result<(), Error> {
    let rgb = u32::from_str_radix(colour, 16).map_err(|_| format!("bad colour {colour:?}"))?;
    let (conn, screen_num) = x11rb::connect(None)?;
    let root = conn.setup().roots[screen_num].root;
    conn.change_window_attributes(
        root,
        &ChangeWindowAttributesAux::new().background_pixel(rgb),
    )?;
    conn.clear_area(false, root, 0, 0, 0, 0)?;
    // A round trip: the paint is done before the process says it is.
    conn.get_input_focus()?.reply()?;
    Ok(())
}

fn watch() -> Result<(), Error> {
    let (conn, screen_num) = x11rb::connect(None)?;
    let screen = conn.setup().roots[screen_num].clone();
    let window = conn.generate_id()?;
    conn.create_window(
        0,
        window,
        screen.root,
        0,
        0,
        screen.width_in_pixels,
        screen.height_in_pixels,
        0,
        WindowClass::INPUT_ONLY,
        0,
        &CreateWindowAux::new()
            .override_redirect(1)
            .event_mask(EventMask::BUTTON_PRESS | EventMask::KEY_PRESS),
    )?;
    conn.map_window(window)?;
    let min = conn.setup().min_keycode;
    let max = conn.setup().max_keycode;
    let mapping = conn.get_keyboard_mapping(min, max - min + 1)?.reply()?;
    let per = usize::from(mapping.keysyms_per_keycode.max(1));
    conn.get_input_focus()?.reply()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        match conn.wait_for_event()? {
            Event::ButtonPress(e) => {
                writeln!(out, "click {} {} {}", e.detail, e.event_x, e.event_y)?
            }
            Event::KeyPress(e) => {
                let level = usize::from(e.state.contains(KeyButMask::SHIFT));
                let index = usize::from(e.detail.saturating_sub(min)) * per + level;
                let keysym = mapping.keysyms.get(index).copied().unwrap_or(0);
                writeln!(out, "key {keysym:x}")?
            }
            _ => continue,
        }
        out.flush()?;
    }
}
