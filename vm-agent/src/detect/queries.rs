//! Terminal queries and their answers. A terminal that is shown a session's scrollback answers
//! every query in it, and those answers reach the program as typed keys long after it stopped
//! waiting for them: a late device-attributes answer (`ESC [ ? 6 4 ; 1 ; 2 ...`) carries digits
//! that pick an item of a numbered menu. The agent answers the queries itself when they are live,
//! so a replay leaves them out ([`without_queries`]), and what a person's terminal sends is
//! typed into the program without its answers ([`without_replies`]): even a live answer comes
//! late from a terminal under load, once per terminal attached, after the program gave up waiting
//! (gemini's login picked "Use Gemini API Key" from one).

/// Which way a sequence goes between a program and its terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// The program asks the terminal.
    Query,
    /// The terminal answers.
    Reply,
}

/// `bytes` without the terminal queries in it (device attributes and status, cursor position,
/// version, mode and keyboard-protocol requests, window reports, colour and clipboard queries,
/// `DECRQSS`/`XTGETTCAP`). Everything else, including a sequence cut off at either end, is kept
/// byte for byte.
pub fn without_queries(bytes: &[u8]) -> Vec<u8> {
    strip(bytes, Said::Query)
}

/// What a terminal sent without its answers to queries (device attributes and status, cursor
/// position, mode, keyboard-protocol and window reports, every OSC and DCS string: keys never
/// make those). Keys, pastes, focus and mouse reports are kept byte for byte, and so is a
/// sequence cut off at either end. A modified F3 (`ESC [ 1 ; 2 R`) looks like a cursor position
/// report and goes with them.
pub fn without_replies(bytes: &[u8]) -> Vec<u8> {
    strip(bytes, Said::Reply)
}

fn strip(bytes: &[u8], drop: Said) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let len = match (bytes[i], bytes.get(i + 1)) {
            (0x1b, Some(b'[')) => csi(&bytes[i + 2..], drop).map(|(len, is)| (len + 2, is)),
            // A terminal sends no OSC or DCS string but an answer.
            (0x1b, Some(b']')) => string(&bytes[i + 2..])
                .map(|(body, len)| (len + 2, drop == Said::Reply || osc_query(body))),
            (0x1b, Some(b'P')) => string(&bytes[i + 2..])
                .map(|(body, len)| (len + 2, drop == Said::Reply || dcs_query(body))),
            _ => None,
        };
        match len {
            Some((len, true)) => i += len,
            Some((len, _)) => {
                out.extend_from_slice(&bytes[i..i + len]);
                i += len;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// A CSI sequence after `ESC [`: its length and whether it is `said` (a query, or an answer).
fn csi(rest: &[u8], said: Said) -> Option<(usize, bool)> {
    let end = rest.iter().position(|b| (0x40..=0x7e).contains(b))?;
    let (body, last) = (&rest[..end], rest[end]);
    if body.iter().any(|b| !(0x20..=0x3f).contains(b)) {
        return None;
    }
    let prefix = body.first().copied().filter(|b| b"?<=>".contains(b));
    let intermediates: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| (0x20..=0x2f).contains(b))
        .collect();
    let first: u32 = body
        .iter()
        .skip(usize::from(prefix.is_some()))
        .take_while(|b| b.is_ascii_digit())
        .fold(0, |n, b| {
            n.saturating_mul(10).saturating_add(u32::from(b - b'0'))
        });
    let query = || match (last, prefix, intermediates.as_slice()) {
        // Device status and cursor position reports.
        (b'n', _, []) => true,
        // Primary, secondary and tertiary device attributes.
        (b'c', None | Some(b'>' | b'='), []) => first == 0,
        // Terminal version (XTVERSION).
        (b'q', Some(b'>'), []) => true,
        // Keyboard protocol flags (kitty).
        (b'u', Some(b'?'), []) => true,
        // Mode state (DECRQM, ANSI and private).
        (b'p', _, [b'$']) => true,
        // Key modifier options (XTQMODKEYS) and a `?` in place of a value.
        (b'm', Some(b'?'), []) => true,
        (b'm', Some(b'>'), []) => body.contains(&b'?'),
        // Window and text-area reports.
        (b't', None, []) => matches!(first, 11 | 13 | 14 | 15 | 16 | 18 | 19 | 20 | 21),
        // Terminal parameters (DECREQTPARM).
        (b'x', None, []) => first <= 1,
        _ => false,
    };
    let reply = || match (last, prefix, intermediates.as_slice()) {
        // Device attributes; device status.
        (b'c', Some(b'?' | b'>' | b'='), []) | (b'n', None | Some(b'?'), []) => true,
        // Cursor position (and DECXCPR).
        (b'R', None | Some(b'?'), []) => true,
        // Mode state (DECRPM); keyboard protocol flags; key modifier options.
        (b'y', _, [b'$']) | (b'u', Some(b'?'), []) | (b'm', Some(b'>'), []) => true,
        // Window reports; terminal parameters.
        (b't' | b'x', None, []) => true,
        _ => false,
    };
    let is = match said {
        Said::Query => query(),
        Said::Reply => reply(),
    };
    Some((end + 1, is))
}

/// An OSC or DCS string after its introducer: its body and whole length (terminator included),
/// ended by BEL or `ESC \`. None when the string does not end in `rest`.
fn string(rest: &[u8]) -> Option<(&[u8], usize)> {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            0x07 => return Some((&rest[..i], i + 1)),
            0x1b if rest.get(i + 1) == Some(&b'\\') => return Some((&rest[..i], i + 2)),
            0x1b => return None,
            _ => i += 1,
        }
    }
    None
}

/// An OSC asking for a value: a colour (`4;N;?`, `10;?`, ...) or the clipboard (`52;c;?`).
fn osc_query(body: &[u8]) -> bool {
    body.split(|b| *b == b';')
        .skip(1)
        .any(|field| field == b"?")
}

/// A DCS asking for a setting (`DECRQSS`, `$q`) or a capability (`XTGETTCAP`, `+q`).
fn dcs_query(body: &[u8]) -> bool {
    body.starts_with(b"$q") || body.starts_with(b"+q")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_left_out_and_the_rest_kept_byte_for_byte() {
        let queries: [&[u8]; 17] = [
            b"\x1b[c",
            b"\x1b[0c",
            b"\x1b[>c",
            b"\x1b[=c",
            b"\x1b[6n",
            b"\x1b[?6n",
            b"\x1b[5n",
            b"\x1b[>q",
            b"\x1b[?u",
            b"\x1b[?1007$p",
            b"\x1b[?4m",
            b"\x1b[>4;?m",
            b"\x1b[18t",
            b"\x1b]11;?\x07",
            b"\x1b]4;1;?\x1b\\",
            b"\x1bP$qm\x1b\\",
            b"\x1bP+q544e\x1b\\",
        ];
        let kept: [&[u8]; 12] = [
            b"\x1b[1;31m",
            b"\x1b[>1u",
            b"\x1b[<u",
            b"\x1b[2 q",
            b"\x1b[>4;1m",
            b"\x1b[?25l",
            b"\x1b[8;30;100t",
            b"\x1b]0;title\x07",
            b"\x1b]8;;https://example.com/\x1b\\",
            b"\x1bPq#0;2;0;0;0\x1b\\",
            "héllo ❯".as_bytes(),
            b"\r\n",
        ];
        assert_strips(without_queries, &queries, &kept);
    }

    /// Each of `dropped` followed by one of `kept` in turn: `strip` keeps exactly the latter.
    fn assert_strips(strip: fn(&[u8]) -> Vec<u8>, dropped: &[&[u8]], kept: &[&[u8]]) {
        let mut mixed = Vec::new();
        let mut expected = Vec::new();
        for (i, d) in dropped.iter().enumerate() {
            let keep = kept[i % kept.len()];
            mixed.extend_from_slice(d);
            mixed.extend_from_slice(keep);
            expected.extend_from_slice(keep);
        }
        assert_eq!(
            String::from_utf8_lossy(&strip(&mixed)),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn a_sequence_cut_off_at_either_end_is_kept() {
        for cut in [
            &b"\x1b[6"[..],
            b"\x1b]11;?",
            b"6n plain",
            b"\x1b",
            b"\x1bP$q",
        ] {
            assert_eq!(without_queries(cut), cut);
        }
    }

    /// What xterm answered gemini's queries with in a browser VM, and what a person types.
    #[test]
    fn a_terminals_answers_are_left_out_of_what_it_types_and_keys_kept() {
        let replies: [&[u8]; 12] = [
            b"\x1b]11;rgb:2020/2828/3030\x1b\\",
            b"\x1bP>|XTerm(379)\x1b\\",
            b"\x1b[?64;1;2;6;9;15;16;17;18;21;22;28c",
            b"\x1b[>41;379;0c",
            b"\x1b[12;40R",
            b"\x1b[0n",
            b"\x1b[?2004;1$y",
            b"\x1b[?0u",
            b"\x1b[>4;2m",
            b"\x1b[8;30;100t",
            b"\x1bP1$r0m\x1b\\",
            b"\x1b]52;c;aGk=\x07",
        ];
        let keys: [&[u8]; 11] = [
            b"2",
            b"\r",
            b"\x1b[A",
            b"\x1bOB",
            b"\x1b[3~",
            b"\x1b[200~pasted\x1b[201~",
            b"\x1b[I",
            b"\x1b[<0;10;5M",
            b"\x1bx",
            b"\x1b",
            "é".as_bytes(),
        ];
        assert_strips(without_replies, &replies, &keys);
        for cut in [&b"\x1b[?64;1"[..], b"\x1b]11;rgb:2020", b"\x1bP>|XT"] {
            assert_eq!(without_replies(cut), cut);
        }
    }
}
