//! The desktop as a user sees it: a real X server (Xvfb), the agent serving the `desktop` call, the
//! orchestrator relaying signalling, and the viewer page in real headless Chromium. The video must
//! show what X clients paint, and a click and keys in the viewer must reach X clients (a bare X
//! window, and a GTK3 dialog, since GTK treats synthetic keys differently). The clipboard goes both
//! ways between X clients (xclip, a GTK entry) and the page, and the X screen follows the page's
//! window size.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use test_kit::desktop::chromium::Chromium;
use test_kit::desktop::relay::Relay;
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::AgentProcess;

const W: u32 = 1280;
const H: u32 = 720;

/// The real agent binary on the X display (its `DISPLAY`), and the relay a host service would run.
fn start_agent(rt: &tokio::runtime::Runtime, display: &str) -> (AgentProcess, Relay) {
    rt.block_on(async {
        let agent = AgentProcess::start_with(&[("DISPLAY", display)]).await;
        let relay = Relay::start(agent.client().await, None).await;
        (agent, relay)
    })
}

fn open_viewer(relay: &Relay) -> Chromium {
    Chromium::viewer(&format!("http://{}/", relay.addr))
}

#[test]
fn the_viewer_shows_the_colours_an_x_client_paints() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(W, H);
    let canvas = Canvas::open(&x.display, 0xff0000);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);

    assert_eq!(
        browser.eval("[viewer.video.videoWidth, viewer.video.videoHeight]"),
        json!([W, H]),
        "the video has the desktop's size"
    );
    browser.wait_colour(640, 360, 0xff0000, 24);
    for colour in [0x00ff00, 0x0000ff, 0xffffff, 0x336699] {
        canvas.paint(colour);
        browser.wait_colour(640, 360, colour, 24);
        browser.wait_colour(5, 5, colour, 24);
    }
}

#[test]
fn a_click_and_keys_in_the_viewer_reach_x_clients() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(W, H);
    let canvas = Canvas::open(&x.display, 0x202020);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);
    browser.wait_for("viewer.dc.readyState === 'open'", Duration::from_secs(20));

    // The page is 1280x720 like the desktop, so page and desktop coordinates agree.
    browser.click(300.0, 200.0);
    let click = canvas
        .wait_click(Duration::from_secs(10))
        .expect("the X client saw no click");
    assert_eq!(click.0, 1, "left button");
    assert!(
        (click.1 - 300).abs() <= 1 && (click.2 - 200).abs() <= 1,
        "click at {click:?}"
    );
    drop(canvas);

    // A GTK3 dialog: the typed line comes back on its stdout when Enter is pressed.
    let zenity = Command::new("zenity")
        .args(["--entry", "--title=typing test", "--text=type here"])
        .env("DISPLAY", &x.display)
        .env("NO_AT_BRIDGE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("zenity from Debian's zenity package must be installed (cargo xtask setup)");
    let (wx, wy, ww, wh) = wait_for_window(&x.display, "typing test");
    // No window manager: keyboard focus follows the pointer, so click into the dialog.
    browser.click(f64::from(wx + ww / 2), f64::from(wy + wh / 2));
    browser.type_text("hello 42\n");
    let out = wait_output(zenity, Duration::from_secs(20));
    assert_eq!(
        out.trim_end(),
        "hello 42",
        "the GTK dialog received the typed text"
    );
}

/// Waits for a visible window named `title`; returns its geometry (x, y, width, height).
fn wait_for_window(display: &str, title: &str) -> (i32, i32, i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new("xdotool")
            .args([
                "search",
                "--onlyvisible",
                "--name",
                title,
                "getwindowgeometry",
                "--shell",
            ])
            .env("DISPLAY", display)
            .output()
            .expect("xdotool from Debian's xdotool package must be installed (cargo xtask setup)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('=')?.parse::<i32>().ok())
        };
        if let (true, Some(x), Some(y), Some(w), Some(h)) = (
            out.status.success(),
            field("X"),
            field("Y"),
            field("WIDTH"),
            field("HEIGHT"),
        ) {
            return (x, y, w, h);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("window {title:?} never appeared");
}

fn wait_output(mut child: std::process::Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                use std::io::Read;
                let _ = stdout.read_to_string(&mut out);
            }
            assert!(
                status.success(),
                "zenity exited with {status}, output {out:?}"
            );
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("zenity did not finish: the typed Enter never arrived");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_offers_and_missing_displays_are_clear_errors_and_the_agent_carries_on() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    rt.block_on(async {
        let agent = AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]).await;
        let client = agent.client().await;
        let garbage = protocol::desktop::DesktopOffer {
            sdp: "this is not SDP".into(),
            ..Default::default()
        };
        match client.desktop(&garbage).await {
            Err(orchestrator::ClientError::Agent(e)) => {
                assert_eq!(e.code, protocol::ErrorCode::BadRequest, "{e}")
            }
            other => panic!("expected a bad-request error, got {other:?}"),
        }
        let nowhere = protocol::desktop::DesktopOffer {
            sdp: "v=0".into(),
            display: Some(":9999".into()),
            ..Default::default()
        };
        match client.desktop(&nowhere).await {
            Err(orchestrator::ClientError::Agent(e)) => {
                assert_eq!(e.code, protocol::ErrorCode::NotFound, "{e}");
                assert!(e.message.contains(":9999"), "{e}");
            }
            other => panic!("expected a display error, got {other:?}"),
        }
        assert_eq!(
            client.health().await.expect("agent still serves").status,
            "ok"
        );
    });
}

#[test]
fn agentctl_desktop_offer_answers_a_browser_offer_for_scripting() {
    use std::io::{BufRead, BufReader, Write};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    let _canvas = Canvas::open(&x.display, 0x00ff00);
    let agent = rt.block_on(AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]));
    let mut browser = Chromium::launch();
    let offer = browser.eval(
        "(async () => { const pc = window.pc = new RTCPeerConnection(); \
         pc.addTransceiver('video', { direction: 'recvonly' }); pc.createDataChannel('input'); \
         await pc.setLocalDescription(await pc.createOffer()); \
         await new Promise(r => { if (pc.iceGatheringState === 'complete') r(); \
           pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); \
           setTimeout(r, 3000); }); \
         return pc.localDescription.sdp; })()",
    );
    let offer = offer.as_str().expect("offer sdp").to_string();

    let mut agentctl = Command::new(test_kit::workspace_bin("agentctl"))
        .arg("--connect")
        .arg(format!("unix:{}", agent.socket().display()))
        .args(["desktop", "offer", "--bind", "127.0.0.1", "--fps", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agentctl");
    let mut stdin = agentctl.stdin.take().expect("stdin");
    stdin.write_all(offer.as_bytes()).expect("write offer");
    drop(stdin);
    let mut lines = BufReader::new(agentctl.stdout.take().expect("stdout")).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json line");
    assert_eq!(first["event"], "answer", "{first}");
    let answer = first["sdp"].as_str().expect("answer sdp");
    assert!(answer.contains("H264"), "the answer sends H.264: {answer}");
    assert!(
        answer.contains("127.0.0.1"),
        "the answer lists the bound candidate: {answer}"
    );

    browser.eval(&format!(
        "pc.setRemoteDescription({{ type: 'answer', sdp: {} }}).then(() => true)",
        json!(answer)
    ));
    browser.wait_for(
        "(async () => { let n = 0; (await pc.getStats()).forEach(s => { \
           if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded || 0; }); \
           return n > 0; })()",
        Duration::from_secs(30),
    );
    // The session's events follow the answer as JSON lines.
    let next: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json line");
    assert!(next["event"].is_string(), "{next}");
    let _ = agentctl.kill();
    let _ = agentctl.wait();
}

/// Text copied with xclip (a real X client) on `display`; xclip serves it until it is killed.
struct Xclip(std::process::Child);

impl Xclip {
    fn copy(display: &str, text: &str) -> Self {
        use std::io::Write;
        let mut child = Command::new("xclip")
            .args(["-selection", "clipboard", "-in", "-quiet"])
            .env("DISPLAY", display)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xclip from Debian's xclip package must be installed (cargo xtask setup)");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to xclip");
        drop(stdin);
        Self(child)
    }
}

impl Drop for Xclip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an X client gets when it pastes `selection` (xclip -out), as target `target`.
fn x_paste(display: &str, selection: &str, target: &str) -> String {
    try_x_paste(display, selection, target).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`x_paste`], but an owner-less selection (xclip fails) is an `Err`, for polling.
fn try_x_paste(display: &str, selection: &str, target: &str) -> Result<String, String> {
    let out = Command::new("xclip")
        .args(["-selection", selection, "-out", "-target", target])
        .env("DISPLAY", display)
        .stderr(Stdio::piped())
        .output()
        .expect("xclip");
    if !out.status.success() {
        return Err(format!(
            "xclip -out {selection} {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8(out.stdout).expect("utf-8 from xclip"))
}

/// Waits until the viewer page's `expression` (a string or null) equals `want`.
fn wait_page_string(browser: &mut Chromium, expression: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = browser.eval(expression);
        if got.as_str() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{expression} is {} (first 80 chars), expected {:?}",
            got.to_string().chars().take(80).collect::<String>(),
            want.chars().take(80).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until an X client pasting CLIPBOARD gets `want`.
fn wait_x_paste(display: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Until the agent takes the selection, it may have no owner at all (the copier before it
        // was killed): that is "not yet", not a failure.
        let got = try_x_paste(display, "clipboard", "UTF8_STRING");
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the X clipboard holds {:?}, expected {:?}",
            got.map(|g| g.chars().take(80).collect::<String>()),
            want.chars().take(80).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn text_copied_in_the_vm_reaches_the_viewer_and_back() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(W, H);
    let _canvas = Canvas::open(&x.display, 0x202020);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);
    browser.wait_for("viewer.dc.readyState === 'open'", Duration::from_secs(20));

    // What the page puts into this machine's clipboard is recorded.
    browser.eval(
        "viewer.writes = []; Object.defineProperty(navigator, 'clipboard', { configurable: true, \
           value: { writeText: (t) => { viewer.writes.push(t); return Promise.resolve(); } } }); true",
    );
    // VM to browser: an X client copies; the viewer page shows it in its clipboard panel.
    let copied = "copied in the VM: grüße ✓ 🙂\nsecond line";
    let xclip = Xclip::copy(&x.display, copied);
    wait_page_string(&mut browser, "viewer.vmClipboard", copied);
    assert_eq!(
        browser.eval("document.getElementById('clipText').value"),
        json!(copied),
        "the panel shows the VM's clipboard"
    );
    assert_eq!(
        browser.eval("document.getElementById('clip').hidden"),
        json!(false)
    );
    // It reaches this machine's clipboard only when the user asks.
    assert_eq!(browser.eval("viewer.writes.length"), json!(0));
    let (cx, cy) = element_centre(&mut browser, "clipCopy");
    browser.click(cx, cy);
    browser.wait_for("viewer.writes.length === 1", Duration::from_secs(10));
    assert_eq!(browser.eval("viewer.writes[0]"), json!(copied));
    drop(xclip);

    // Larger than one data channel message: it arrives in pieces, whole.
    let big: String = (0..20_000).map(|i| format!("{i:05}ä\n")).collect();
    assert!(big.len() > 100 * 1024);
    let xclip = Xclip::copy(&x.display, &big);
    wait_page_string(&mut browser, "viewer.vmClipboard", &big);
    drop(xclip);

    // Over the 1 MiB limit: the viewer is told, and keeps what it had.
    let huge = "x".repeat(protocol::desktop::MAX_CLIPBOARD_BYTES + 10);
    let xclip = Xclip::copy(&x.display, &huge);
    browser.wait_for(
        "typeof viewer.clipboardError === 'string' && viewer.clipboardError.includes('more than')",
        Duration::from_secs(20),
    );
    assert_eq!(
        browser.eval("viewer.vmClipboard.length"),
        json!(big.chars().count())
    );
    drop(xclip);

    // Browser to VM through the panel: type the text, press "Copy to VM"; X clients paste it from
    // CLIPBOARD and PRIMARY.
    let pasted = "oauth-code-fake-0001 ✓";
    browser.eval(&format!(
        "document.getElementById('clipText').value = {}; true",
        json!(pasted)
    ));
    let (bx, by) = element_centre(&mut browser, "clipSend");
    browser.click(bx, by);
    wait_x_paste(&x.display, pasted);
    assert_eq!(x_paste(&x.display, "primary", "UTF8_STRING"), pasted);
    assert_eq!(
        x_paste(&x.display, "clipboard", "STRING"),
        "oauth-code-fake-0001 ?",
        "Latin-1 STRING for old clients"
    );
    let targets = x_paste(&x.display, "clipboard", "TARGETS");
    for t in ["UTF8_STRING", "STRING", "TARGETS"] {
        assert!(
            targets.lines().any(|l| l == t),
            "TARGETS lists {t}: {targets:?}"
        );
    }

    // Too large from the browser: the page refuses before sending; text sent around the page's
    // check is refused by the agent with a clear error; the VM's clipboard keeps its text.
    let refused = browser.eval(&format!(
        "viewer.sendClipboard('y'.repeat({}))",
        protocol::desktop::MAX_CLIPBOARD_BYTES + 1
    ));
    assert_eq!(refused, json!(false));
    browser.eval("viewer.clipboardError = null; true");
    browser.eval(
        "for (let i = 0; i < 40; i++) viewer.send({ type: 'clipboard', text: 'z'.repeat(30000), more: i < 39 }); true",
    );
    browser.wait_for(
        "typeof viewer.clipboardError === 'string' && viewer.clipboardError.includes('over the limit')",
        Duration::from_secs(20),
    );
    assert_eq!(x_paste(&x.display, "clipboard", "UTF8_STRING"), pasted);
    assert_eq!(browser.eval("viewer.connected"), json!(true));
}

#[test]
fn ctrl_v_in_the_viewer_pastes_the_browser_clipboard_into_a_gtk_app() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(W, H);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);
    browser.wait_for("viewer.dc.readyState === 'open'", Duration::from_secs(20));
    let zenity = Command::new("zenity")
        .args(["--entry", "--title=paste test", "--text=paste here"])
        .env("DISPLAY", &x.display)
        .env("NO_AT_BRIDGE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("zenity from Debian's zenity package must be installed (cargo xtask setup)");
    let (wx, wy, ww, wh) = wait_for_window(&x.display, "paste test");
    browser.click(f64::from(wx + ww / 2), f64::from(wy + wh / 2));
    // Ctrl+V as a user presses it: Ctrl goes down in the VM, the page receives the browser's
    // paste (with the clipboard text), then Ctrl comes up.
    browser.key_event("keyDown", "Control", "ControlLeft", 17, 2);
    browser.eval(
        "(() => { const dt = new DataTransfer(); dt.setData('text/plain', 'code-fake-4242'); \
         viewer.video.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true })); \
         return true; })()",
    );
    browser.key_event("keyUp", "Control", "ControlLeft", 17, 0);
    wait_x_paste(&x.display, "code-fake-4242");
    browser.type_text("\n");
    let out = wait_output(zenity, Duration::from_secs(20));
    assert_eq!(
        out.trim_end(),
        "code-fake-4242",
        "the GTK entry pasted the text"
    );
}

/// The centre of element `id` in page coordinates.
fn element_centre(browser: &mut Chromium, id: &str) -> (f64, f64) {
    let r = browser.eval(&format!(
        "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); \
         return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
    ));
    (
        r[0].as_f64().expect("x of element"),
        r[1].as_f64().expect("y of element"),
    )
}

/// The X screen's size as X clients see it.
fn x_screen_size(display: &str) -> (u16, u16) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::ConnectionExt as _;
    let (conn, screen) = x11rb::connect(Some(display)).expect("connect");
    let root = conn.setup().roots[screen].root;
    let g = conn
        .get_geometry(root)
        .expect("geometry")
        .reply()
        .expect("geometry");
    (g.width, g.height)
}

fn wait_sizes(browser: &mut Chromium, display: &str, want: (u16, u16)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let screen = x_screen_size(display);
        let video = browser.eval("[viewer.video.videoWidth, viewer.video.videoHeight]");
        if screen == want && video == json!([want.0, want.1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "X screen {screen:?}, video {video}; expected both {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_screen_follows_the_viewer_window_without_reconnecting() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Xvfb cannot grow past the size it started with: start large, the viewer shrinks it.
    let x = Xvfb::start(1920, 1080);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);
    wait_sizes(&mut browser, &x.display, (1280, 720));

    for (w, h) in [(1000u16, 600u16), (1600, 900), (801, 501)] {
        browser.set_viewport(u32::from(w), u32::from(h));
        let want = (w & !1, h & !1);
        wait_sizes(&mut browser, &x.display, want);
        // What a client paints at the new size shows in the video at the new size.
        let canvas = Canvas::open(&x.display, 0x3366cc);
        browser.wait_colour(u32::from(want.0) - 4, u32::from(want.1) - 4, 0x3366cc, 24);
        drop(canvas);
    }
    assert_eq!(
        browser.eval("viewer.connected"),
        json!(true),
        "one connection throughout"
    );
    assert_eq!(
        relay.sessions.lock().expect("sessions").len(),
        1,
        "no second offer"
    );
}

/// The agent's `stats` for its one watched display, `None` while nobody watches.
fn desktop_stats(
    rt: &tokio::runtime::Runtime,
    client: &orchestrator::AgentClient,
) -> Option<protocol::desktop::DesktopStats> {
    let mut desktops = rt.block_on(client.stats()).expect("stats").desktops;
    assert!(desktops.len() <= 1, "one display is watched: {desktops:?}");
    desktops.pop()
}

#[test]
fn an_unwatched_or_still_desktop_costs_nothing_and_a_new_viewer_gets_a_keyframe() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    let canvas = Canvas::open(&x.display, 0x204060);
    let (agent, relay) = start_agent(&rt, &x.display);
    let client = rt.block_on(agent.client());

    // An animation nobody watches is not captured at all: no capture runs.
    for step in 0..20 {
        canvas.paint_stripes(step);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        desktop_stats(&rt, &client),
        None,
        "nothing runs while nobody watches"
    );

    let mut first = open_viewer(&relay);
    canvas.paint(0x336699);
    first.wait_colour(320, 240, 0x336699, 24);
    let watched = desktop_stats(&rt, &client).expect("the watched display");
    assert_eq!(
        (watched.viewers, watched.width, watched.height, watched.shm),
        (1, 640, 480, true),
        "{watched:?}"
    );
    assert!(
        watched.keyframes >= 1,
        "the viewer started from a keyframe: {watched:?}"
    );

    // A still screen is not grabbed (only a keyframe request, e.g. a browser's PLI, would be).
    let settled = {
        let mut last = desktop_stats(&rt, &client).expect("watched");
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = desktop_stats(&rt, &client).expect("watched");
            if now == last {
                break now;
            }
            last = now;
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    let still = desktop_stats(&rt, &client).expect("watched");
    assert_eq!(
        still.frames_captured - settled.frames_captured,
        still.keyframes - settled.keyframes,
        "grabs of a still screen: {settled:?} -> {still:?}"
    );
    // A change is grabbed and shown.
    canvas.paint(0x993366);
    first.wait_colour(320, 240, 0x993366, 24);
    let changed = desktop_stats(&rt, &client).expect("watched");
    assert!(
        changed.frames_captured > still.frames_captured,
        "{changed:?}"
    );

    // A second viewer starts from a keyframe of its own.
    let second = open_viewer(&relay);
    let both = desktop_stats(&rt, &client).expect("watched");
    assert_eq!(both.viewers, 2, "{both:?}");
    assert!(
        both.keyframes > changed.keyframes,
        "{changed:?} -> {both:?}"
    );

    // Everyone leaves: the capture stops.
    drop(first);
    drop(second);
    relay.sessions.lock().expect("sessions").clear();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = desktop_stats(&rt, &client) {
        assert!(
            Instant::now() < deadline,
            "the capture outlived its viewers: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn without_mit_shm_frames_come_through_plain_get_image() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start_with(640, 480, &["-extension", "MIT-SHM"]);
    let canvas = Canvas::open(&x.display, 0xff8000);
    let (agent, relay) = start_agent(&rt, &x.display);
    let client = rt.block_on(agent.client());
    let mut browser = open_viewer(&relay);
    browser.wait_colour(320, 240, 0xff8000, 24);
    let watched = desktop_stats(&rt, &client).expect("the watched display");
    assert!(!watched.shm, "the X server has no MIT-SHM: {watched:?}");
    canvas.paint(0x0080ff);
    browser.wait_colour(320, 240, 0x0080ff, 24);
    browser.wait_colour(630, 470, 0x0080ff, 24);
}

#[test]
fn grabs_are_capped_at_the_configured_frame_rate() {
    use protocol::desktop::{DesktopOffer, IceSettings, VideoSettings};
    const FPS: u32 = 2;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let canvas = Canvas::open(&x.display, 0x000000);
    let (agent, _relay) = start_agent(&rt, &x.display);
    let client = rt.block_on(agent.client());
    let offer = DesktopOffer {
        sdp: test_kit::desktop::chromium::captured_offer(),
        display: Some(x.display.clone()),
        video: VideoSettings {
            fps: Some(FPS),
            bitrate_kbps: Some(300),
        },
        ice: IceSettings {
            bind: vec!["127.0.0.1".parse().expect("ip")],
            ..Default::default()
        },
    };
    // The viewer's session grabs from its start, connected or not.
    let started = Instant::now();
    let _session = rt.block_on(client.desktop(&offer)).expect("desktop call");
    let mut step = 0;
    while started.elapsed() < Duration::from_secs(3) {
        canvas.paint_stripes(step);
        step += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = desktop_stats(&rt, &client).expect("the watched display");
    let elapsed = started.elapsed().as_secs_f64();
    // One grab at the start, then at most one per 1/FPS s; a slower machine only grabs less.
    let most = (elapsed * f64::from(FPS)).floor() as u64 + 2;
    assert!(
        stats.frames_captured >= 2,
        "the animation is grabbed: {stats:?}"
    );
    assert!(
        stats.frames_captured <= most,
        "{step} repaints in {elapsed:.1} s at {FPS} fps gave {} grabs (at most {most})",
        stats.frames_captured
    );
}

#[test]
fn a_keyframe_request_from_a_viewer_gets_a_keyframe_on_a_still_screen() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x4080c0);
    let (agent, _relay) = start_agent(&rt, &x.display);
    let client = rt.block_on(agent.client());
    let mut viewer = test_kit::desktop::rtp_viewer::RtpViewer::connect(&rt, &client, &x.display);
    viewer.run_until(Duration::from_secs(30), |v| v.keyframes >= 1);
    // The screen stays still: without the request nothing would be grabbed or sent.
    for round in 1..=2 {
        let before = viewer.keyframes;
        viewer.request_keyframe();
        viewer.run_until(Duration::from_secs(10), |v| v.keyframes > before);
        let stats = desktop_stats(&rt, &client).expect("the watched display");
        assert!(
            stats.keyframes > round,
            "the agent encoded a keyframe per request: {stats:?}"
        );
    }
}

#[test]
fn the_viewer_takes_the_shape_of_the_vm_cursor() {
    const XC_XTERM: u16 = 152;
    const XC_HAND2: u16 = 60;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    let canvas = Canvas::open(&x.display, 0x808080);
    let (_agent, relay) = start_agent(&rt, &x.display);
    let mut browser = open_viewer(&relay);
    browser.wait_for("viewer.dc.readyState === 'open'", Duration::from_secs(20));
    // The pointer is over the window (it covers the screen): its cursor is the one shown.
    let mut shapes = Vec::new();
    for glyph in [XC_XTERM, XC_HAND2] {
        canvas.set_cursor(glyph);
        let (w, h, xhot, yhot) = canvas.shown_cursor();
        shapes.push((w, h, xhot, yhot));
        browser.wait_for(
            &format!(
                "!!viewer.cursor && viewer.cursor.width === {w} && viewer.cursor.height === {h} \
                 && viewer.cursor.xhot === {xhot} && viewer.cursor.yhot === {yhot} \
                 && viewer.cursor.opaque > 0 \
                 && viewer.video.style.cursor.startsWith('url(\"data:image/png')"
            ),
            Duration::from_secs(20),
        );
    }
    assert_ne!(shapes[0], shapes[1], "two different shapes were shown");
}
