//! `desktop`: the VM's X11 desktop streamed to a viewer over WebRTC, input sent back.
//!
//! The call carries only the signalling; media and input travel peer to peer (UDP, DTLS-SRTP and an
//! SCTP data channel) between the agent and the viewer's browser. Request body: a [`DesktopOffer`]
//! message frame, then [`DesktopSignal`] message frames (the viewer's trickled ICE candidates).
//! Response body: [`DesktopEvent`] message frames, the first one being [`DesktopEvent::Answer`]. The
//! viewer's session lives as long as the call: dropping the call disconnects that viewer.
//!
//! The data channel (any label) carries [`InputEvent`]s from the viewer and [`ViewerMessage`]s to it,
//! as JSON text messages.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::method::{Method, Streaming};

/// `desktop`: one viewer of the VM's desktop.
#[derive(Debug)]
pub struct Desktop;
impl Method for Desktop {
    const NAME: &'static str = "desktop";
}
impl Streaming for Desktop {
    type Request = DesktopOffer;
    type Event = DesktopEvent;
}

/// Opening message of [`Desktop`]: the viewer's SDP offer and how to serve it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopOffer {
    /// The browser's SDP offer (a receive-only video transceiver and a data channel).
    pub sdp: String,
    /// X display to stream (default: the agent's `DISPLAY`, else `:0`).
    #[serde(default)]
    pub display: Option<String>,
    /// Encoder settings; the first viewer of a display sets them.
    #[serde(default)]
    pub video: VideoSettings,
    /// Where the agent's media socket can be reached.
    #[serde(default)]
    pub ice: IceSettings,
}

/// Encoder settings. Unset fields take the agent's defaults (30 fps, 4000 kbit/s).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSettings {
    /// Highest frame rate; frames are only produced when the screen changed.
    #[serde(default)]
    pub fps: Option<u32>,
    /// Target bitrate in kbit/s.
    #[serde(default)]
    pub bitrate_kbps: Option<u32>,
}

/// ICE configuration from the host.
///
/// The agent gathers host candidates on `bind` (default: every non-loopback interface address, or
/// loopback when there is none), on a port of `udp_ports` when set, and a server-reflexive one for
/// `nat_1to1_ip` (the gateway forwards the same UDP port to the VM); all of these are in the answer.
/// It then asks the STUN servers of `servers` (and TURN servers over UDP, which answer STUN too)
/// which address its socket appears from outside, and trickles that as a
/// [`DesktopEvent::Candidate`] when it is new. On every `turn:` server (UDP transport, with
/// `username` and `credential`) it allocates a relay of its own from the same socket and trickles
/// it as a `relay` candidate, so a VM behind a symmetric NAT or without any forward still gets
/// media through; `turns:` and `?transport=tcp` servers are skipped with a warning in the agent's
/// log (the browser may still relay through them), and a server that refuses the credentials or
/// does not answer costs one warning, not the session. [`DesktopEvent::EndOfCandidates`] follows
/// once every server answered or was given up (a few seconds at most). The relay forwards only
/// from addresses the viewer announced (TURN permissions): the browser needs a STUN or TURN server
/// of its own so that it has a server-reflexive or relay candidate (its mDNS `.local` host
/// candidates are no addresses); the host may give the browser the same `servers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceSettings {
    /// STUN and TURN servers, as the browser's `RTCIceServer`s (the same JSON works for both).
    #[serde(default)]
    pub servers: Vec<IceServer>,
    /// Local addresses to gather host candidates on.
    #[serde(default)]
    pub bind: Vec<IpAddr>,
    /// Public address that maps 1:1 onto the VM (same port numbers).
    #[serde(default)]
    pub nat_1to1_ip: Option<IpAddr>,
    /// Fixed UDP port range (inclusive) for the media socket, e.g. the gateway's per-VM forward.
    /// Every viewer's session binds a port of its own, so the range's size is how many viewers can
    /// watch at once.
    #[serde(default)]
    pub udp_ports: Option<(u16, u16)>,
}

/// One STUN or TURN server, shaped like the browser's `RTCIceServer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`, `stuns:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (never printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::secret::Secret<String>>,
}

/// Messages after the offer in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum DesktopSignal {
    /// A trickled ICE candidate of the viewer (`candidate:...` line, as in `RTCIceCandidate`).
    Candidate {
        /// The candidate attribute.
        candidate: String,
    },
    /// The viewer gathered all its candidates.
    EndOfCandidates,
}

/// Messages of the response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DesktopEvent {
    /// The agent's SDP answer; it already lists the agent's host and NAT 1:1 candidates.
    Answer {
        /// SDP text.
        sdp: String,
    },
    /// A candidate of the agent found after the answer (a server-reflexive address a STUN server
    /// reported, or a relay on a TURN server), as an `RTCIceCandidate.candidate` line.
    Candidate {
        /// The candidate attribute.
        candidate: String,
    },
    /// The agent will send no more candidates.
    EndOfCandidates,
    /// Media is flowing to this viewer.
    Connected,
    /// Whether this viewer's input is injected (one viewer holds control at a time).
    Control {
        /// True when this viewer holds control.
        held: bool,
    },
    /// Every few seconds while frames flow: what this viewer was sent and what encoding cost.
    Stats {
        /// Frames sent to this viewer so far.
        frames: u64,
        /// Median time to grab and encode a frame over the last period, ms.
        encode_ms_p50: f64,
        /// 95th percentile of the same, ms.
        encode_ms_p95: f64,
    },
    /// The viewer's session ended (ICE failed, the peer closed, the display went away).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Input from the viewer, as JSON text messages on the data channel. Coordinates are in desktop
/// pixels (the video's own size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputEvent {
    /// Pointer moved to `(x, y)`.
    Move {
        /// Column.
        x: f64,
        /// Row.
        y: f64,
    },
    /// A pointer button changed; `button` is `MouseEvent.button` (0 left, 1 middle, 2 right, 3 back,
    /// 4 forward).
    Button {
        /// Browser button number.
        button: u8,
        /// Pressed (true) or released.
        down: bool,
    },
    /// Wheel scrolled, in `WheelEvent` pixels (positive: down / right).
    Wheel {
        /// Horizontal delta.
        #[serde(default)]
        dx: f64,
        /// Vertical delta.
        #[serde(default)]
        dy: f64,
    },
    /// A key changed, as `KeyboardEvent.code` and `KeyboardEvent.key`.
    Key {
        /// Physical key (`KeyA`, `ShiftLeft`, ...).
        code: String,
        /// Produced character or key name (`a`, `A`, `Enter`, ...).
        key: String,
        /// Pressed (true) or released.
        down: bool,
    },
    /// Text to type as it is (a paste).
    Text {
        /// The text.
        text: String,
    },
    /// Asks for input control.
    TakeControl,
    /// A piece of text for the VM's clipboard (`CLIPBOARD` and `PRIMARY`); pieces with `more` are
    /// followed by the rest (see [`clipboard_pieces`]). At most [`MAX_CLIPBOARD_BYTES`] in all.
    Clipboard {
        /// This piece.
        text: String,
        /// More pieces follow.
        #[serde(default)]
        more: bool,
    },
    /// The viewer's video area is `width x height` device pixels: the VM's screen follows it.
    Resize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Largest clipboard text carried either way (1 MiB of UTF-8); larger text is refused with a
/// [`ViewerMessage::Error`] (viewer to VM) or announced as [`ViewerMessage::ClipboardTooLarge`].
pub const MAX_CLIPBOARD_BYTES: usize = 1 << 20;

/// Clipboard text travels in pieces of at most this many bytes (browsers take data channel messages
/// of 256 KiB; a piece stays below that even with every character JSON-escaped).
pub const CLIPBOARD_CHUNK_BYTES: usize = 32 * 1024;

/// Messages from the agent to the viewer, as JSON text messages on the data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewerMessage {
    /// A piece of the text an X client copied; pieces with `more` are followed by the rest.
    Clipboard {
        /// This piece.
        text: String,
        /// More pieces follow.
        #[serde(default)]
        more: bool,
    },
    /// An X client copied text larger than [`MAX_CLIPBOARD_BYTES`]; it is not sent.
    ClipboardTooLarge {
        /// Its size in bytes (at least).
        bytes: u64,
    },
    /// Whether this viewer's input is injected: sent when the data channel opens and whenever
    /// control moves (another viewer took it, or its holder left).
    Control {
        /// True when this viewer holds control.
        held: bool,
    },
    /// The VM's cursor took this shape (sent when the data channel opens and on every change).
    /// The page shows it as its own cursor over the video: X keeps the cursor out of the frames.
    Cursor {
        /// Width in pixels.
        width: u16,
        /// Height in pixels.
        height: u16,
        /// Hot spot, from the left.
        xhot: u16,
        /// Hot spot, from the top.
        yhot: u16,
        /// `width * height` RGBA pixels (straight alpha), row by row, base64.
        rgba: String,
    },
    /// Something the viewer sent was refused.
    Error {
        /// Why, for the user.
        message: String,
    },
}

/// One streamed display, as the `stats` call reports it: what watching it costs and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopStats {
    /// The X display.
    pub display: String,
    /// Viewers watching it.
    pub viewers: u32,
    /// Screen size in pixels, as last captured.
    pub width: u32,
    /// Screen height in pixels, as last captured.
    pub height: u32,
    /// Screen grabs since capture started. A still screen adds none: grabs follow XDamage
    /// reports and keyframe requests only.
    pub frames_captured: u64,
    /// Of those, grabs encoded as keyframes (a viewer joined, lost packets or sent PLI/FIR).
    pub keyframes: u64,
    /// Whether grabs go through MIT-SHM shared memory (else plain `GetImage` over the socket).
    pub shm: bool,
}

/// Splits `text` into clipboard pieces of at most [`CLIPBOARD_CHUNK_BYTES`] on character
/// boundaries (an empty text is one empty piece).
pub fn clipboard_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > CLIPBOARD_CHUNK_BYTES {
        let mut cut = CLIPBOARD_CHUNK_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_events_parse_as_the_viewer_sends_them() {
        let e: InputEvent =
            serde_json::from_str(r#"{"type":"key","code":"KeyA","key":"a","down":true}"#).unwrap();
        assert_eq!(
            e,
            InputEvent::Key {
                code: "KeyA".into(),
                key: "a".into(),
                down: true
            }
        );
        let e: InputEvent = serde_json::from_str(r#"{"type":"wheel","dy":120}"#).unwrap();
        assert_eq!(e, InputEvent::Wheel { dx: 0.0, dy: 120.0 });
        assert!(serde_json::from_str::<InputEvent>(r#"{"type":"teleport"}"#).is_err());
    }

    #[test]
    fn clipboard_pieces_split_on_character_boundaries() {
        assert_eq!(clipboard_pieces(""), vec![""]);
        let text = "ä".repeat(CLIPBOARD_CHUNK_BYTES);
        let pieces = clipboard_pieces(&text);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() <= CLIPBOARD_CHUNK_BYTES));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn ice_servers_read_the_browsers_json_and_never_print_the_password() {
        let ice: IceSettings = serde_json::from_str(
            r#"{"servers":[{"urls":["stun:stun.example.org"]},
                {"urls":["turn:turn.example.org"],"username":"u","credential":"fake-turn-password"}],
                "nat_1to1_ip":"203.0.113.7","udp_ports":[40000,40009]}"#,
        )
        .unwrap();
        assert_eq!(ice.servers.len(), 2);
        assert_eq!(ice.udp_ports, Some((40000, 40009)));
        let turn = &ice.servers[1];
        assert_eq!(
            turn.credential.as_ref().map(|c| c.expose().as_str()),
            Some("fake-turn-password")
        );
        assert!(!format!("{ice:?}").contains("fake-turn-password"));
        let back = serde_json::to_string(&ice.servers).unwrap();
        assert!(
            back.contains(r#""credential":"fake-turn-password""#),
            "{back}"
        );
        assert!(!back.contains(r#""username":null"#), "{back}");
    }

    #[test]
    fn an_offer_with_only_sdp_takes_defaults() {
        let o: DesktopOffer = serde_json::from_str(r#"{"sdp":"v=0","future":1}"#).unwrap();
        assert_eq!(o.sdp, "v=0");
        assert_eq!(o.video, VideoSettings::default());
        assert!(o.ice.bind.is_empty());
    }
}
