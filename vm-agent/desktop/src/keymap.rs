//! Browser keys (`KeyboardEvent.code` / `.key`) to X keysyms.

/// Keysym of `XK_Shift_L`, pressed around characters that need Shift.
pub const SHIFT_L: u32 = 0xffe1;

/// The keysym a browser key event stands for, or `None` for keys X has no symbol for.
///
/// Modifiers and keys that do not produce text are taken by their physical `code` (so left and right
/// stay apart); everything else by the `key` the browser's layout produced, so the character the user
/// typed is the one that arrives.
pub fn keysym(code: &str, key: &str) -> Option<u32> {
    if let Some(sym) = by_code(code) {
        return Some(sym);
    }
    let mut chars = key.chars();
    if let (Some(c), None) = (chars.next(), chars.clone().next()) {
        return Some(char_keysym(c));
    }
    if let Some(sym) = by_name(key) {
        return Some(sym);
    }
    // Dead keys and unidentified keys: fall back to the US meaning of the physical key.
    code_fallback(code).map(char_keysym)
}

/// Keysym of a character: Latin-1 maps to itself, the rest of Unicode to `0x0100_0000 + code point`.
pub fn char_keysym(c: char) -> u32 {
    match c {
        '\n' | '\r' => 0xff0d,
        '\t' => 0xff09,
        '\u{8}' => 0xff08,
        c if (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c) => c as u32,
        c => 0x0100_0000 + c as u32,
    }
}

/// Keys named by their physical position (modifiers, locks).
fn by_code(code: &str) -> Option<u32> {
    Some(match code {
        "ShiftLeft" => 0xffe1,
        "ShiftRight" => 0xffe2,
        "ControlLeft" => 0xffe3,
        "ControlRight" => 0xffe4,
        "CapsLock" => 0xffe5,
        "AltLeft" => 0xffe9,
        "AltRight" => 0xffea,
        "MetaLeft" | "OSLeft" => 0xffeb,
        "MetaRight" | "OSRight" => 0xffec,
        "NumLock" => 0xff7f,
        "ScrollLock" => 0xff14,
        _ => return None,
    })
}

/// Named non-character keys (`KeyboardEvent.key` values).
fn by_name(key: &str) -> Option<u32> {
    Some(match key {
        "Enter" => 0xff0d,
        "Tab" => 0xff09,
        "Backspace" => 0xff08,
        "Escape" => 0xff1b,
        "Delete" => 0xffff,
        "Insert" => 0xff63,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "ArrowLeft" => 0xff51,
        "ArrowUp" => 0xff52,
        "ArrowRight" => 0xff53,
        "ArrowDown" => 0xff54,
        "ContextMenu" => 0xff67,
        "PrintScreen" => 0xff61,
        "Pause" => 0xff13,
        "AltGraph" => 0xfe03,
        "Shift" => 0xffe1,
        "Control" => 0xffe3,
        "Alt" => 0xffe9,
        "Meta" => 0xffeb,
        f if f.len() >= 2 && f.starts_with('F') => {
            let n: u32 = f[1..].parse().ok()?;
            if (1..=24).contains(&n) {
                0xffbe + n - 1
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// The unshifted US character of a physical key.
fn code_fallback(code: &str) -> Option<char> {
    if let Some(letter) = code.strip_prefix("Key") {
        let mut c = letter.chars();
        return match (c.next(), c.next()) {
            (Some(l), None) if l.is_ascii_uppercase() => Some(l.to_ascii_lowercase()),
            _ => None,
        };
    }
    if let Some(digit) = code.strip_prefix("Digit") {
        return digit.chars().next().filter(char::is_ascii_digit);
    }
    Some(match code {
        "Space" => ' ',
        "Minus" => '-',
        "Equal" => '=',
        "BracketLeft" => '[',
        "BracketRight" => ']',
        "Backslash" => '\\',
        "Semicolon" => ';',
        "Quote" => '\'',
        "Backquote" => '`',
        "Comma" => ',',
        "Period" => '.',
        "Slash" => '/',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_follow_the_key_the_layout_produced() {
        assert_eq!(keysym("KeyA", "a"), Some(0x61));
        assert_eq!(keysym("KeyA", "A"), Some(0x41));
        assert_eq!(keysym("Digit2", "@"), Some(0x40));
        assert_eq!(keysym("KeyE", "é"), Some(0xe9));
        assert_eq!(keysym("KeyQ", "ж"), Some(0x0100_0436));
        assert_eq!(keysym("Space", " "), Some(0x20));
    }

    #[test]
    fn named_keys_and_modifiers_have_their_keysyms() {
        assert_eq!(keysym("Enter", "Enter"), Some(0xff0d));
        assert_eq!(keysym("ShiftRight", "Shift"), Some(0xffe2));
        assert_eq!(keysym("F5", "F5"), Some(0xffc2));
        assert_eq!(keysym("ArrowUp", "ArrowUp"), Some(0xff52));
        assert_eq!(keysym("BracketLeft", "Dead"), Some(u32::from(b'[')));
        assert_eq!(keysym("Lang9", "Unidentified"), None);
    }
}
