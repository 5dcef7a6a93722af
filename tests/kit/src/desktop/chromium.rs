//! Headless Chromium (Debian's package) driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: fd 3 carries commands in, fd 4 answers out, NUL-separated JSON).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// An offer Chromium 156 made (a receive-only video transceiver and a data channel), before it
/// gathered any candidate, for tests that need a real browser's offer but no browser (its ICE
/// credentials and DTLS fingerprint are fake; see tests/fixtures/desktop).
pub fn captured_offer() -> String {
    let text = include_str!("../../../fixtures/desktop/chromium-offer.sdp");
    text.lines().map(|l| format!("{l}\r\n")).collect()
}

/// A running browser with one page attached.
#[derive(Debug)]
pub struct Chromium {
    child: Child,
    commands: std::fs::File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium on an empty profile and attaches to its first page.
    pub fn launch() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let (to_browser_read, to_browser_write) = nix::unistd::pipe().expect("pipe");
        let (from_browser_read, from_browser_write) = nix::unistd::pipe().expect("pipe");
        let child_in = to_browser_read.as_raw_fd();
        let child_out = from_browser_write.as_raw_fd();
        let mut cmd = Command::new("/usr/bin/chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-pipe",
            "--window-size=1280,720",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(child_in, 3) < 0 || libc::dup2(child_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("chromium from Debian's package must be installed (cargo xtask setup)");
        drop(to_browser_read);
        drop(from_browser_write);
        let (tx, answers) = mpsc::channel();
        let reader: OwnedFd = from_browser_read;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(std::fs::File::from(reader));
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(0, &mut buf) {
                if n == 0 {
                    return;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: std::fs::File::from(to_browser_write),
            answers,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let target = loop {
            let targets = browser.browser_call("Target.getTargets", json!({}));
            if let Some(t) = targets["targetInfos"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            {
                break t["targetId"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "chromium opened no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        // The page is exactly the desktop's size, so page and desktop pixels are the same.
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if answer["id"] == id {
                if let Some(err) = answer.get("error") {
                    panic!("chromium refused {method}: {err}");
                }
                return answer["result"].clone();
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A DevTools command on the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page threw on {expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "page never satisfied {expression} (status: {})",
                self.eval("window.viewer && window.viewer.status")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a browser on the viewer page at `url` and waits until it plays ([`Chromium::watch`]).
    pub fn viewer(url: &str) -> Self {
        let mut browser = Self::launch();
        browser.watch(url, Duration::from_secs(60));
        browser
    }

    /// Opens the viewer page at `url` and waits until its data channel is open and a video frame
    /// was decoded; fails the test after `timeout`.
    pub fn watch(&mut self, url: &str, timeout: Duration) {
        self.navigate(url);
        self.wait_for(
            "!!(window.viewer && window.viewer.frames > 0 && window.viewer.connected)",
            timeout,
        );
    }

    /// Waits until the viewer's video shows, at desktop pixel (x, y), `rgb` (0xRRGGBB) within
    /// `tol` on every channel (video coding shifts colours a little); returns the pixel. Fails the
    /// test after a minute.
    pub fn wait_colour(&mut self, x: u32, y: u32, rgb: u32, tol: i64) -> Vec<i64> {
        let want = [(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255].map(i64::from);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let px = self.eval(&format!("viewer.sample({x}, {y})"));
            let got: Vec<i64> = px
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                .unwrap_or_default();
            if got.len() == 4 && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= tol) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "pixel ({x},{y}) is {got:?}, expected about {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The viewer's selected ICE pair's remote end, as the browser's stats name it:
    /// `[address, port, candidateType]`, or `null` before a pair is selected.
    pub fn selected_remote_candidate(&mut self) -> Value {
        self.eval(
            "(async () => { const s = await viewer.pc.getStats(); let pair = null; \
             s.forEach(r => { if (r.type === 'transport' && r.selectedCandidatePairId) \
               pair = s.get(r.selectedCandidatePairId); }); \
             const c = pair && s.get(pair.remoteCandidateId); \
             return c ? [c.address, c.port, c.candidateType] : null; })()",
        )
    }

    /// A real mouse click at page coordinates.
    pub fn click(&mut self, x: f64, y: f64) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Resizes the page's window to `width x height` CSS pixels (the page gets a `resize` event),
    /// as a user resizing the browser window.
    pub fn set_viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// One real key event: `kind` is `keyDown` or `keyUp`, `modifiers` the DevTools bit set
    /// (2 = Ctrl).
    pub fn key_event(&mut self, kind: &str, key: &str, code: &str, vk: u32, modifiers: u32) {
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers}),
        );
    }

    /// Real key presses for each ASCII character of `text` (`\n` is Enter).
    pub fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            let (key, code, vk, txt) = match c {
                '\n' => (
                    "Enter".to_string(),
                    "Enter".to_string(),
                    13,
                    "\r".to_string(),
                ),
                c if c.is_ascii_lowercase() => (
                    c.to_string(),
                    format!("Key{}", c.to_ascii_uppercase()),
                    c.to_ascii_uppercase() as u32,
                    c.to_string(),
                ),
                c if c.is_ascii_digit() => {
                    (c.to_string(), format!("Digit{c}"), c as u32, c.to_string())
                }
                ' ' => (" ".into(), "Space".into(), 32, " ".into()),
                other => panic!("type_text does not know {other:?}"),
            };
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": txt}),
            );
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}),
            );
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
