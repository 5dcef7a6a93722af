//! `browser`: the browser VM's Chromium, started at boot on the VM's display as an unprivileged
//! user, waiting beside the CLI's terminal, and driven over its DevTools pipe ([`cdp`]). When a
//! CLI in a login session hands its login URL to `$BROWSER`/`xdg-open` (the agent's shim), the
//! URL is opened in Chromium's tab, but only if it is a login URL of that session's provider. A
//! Chromium that exits on its own is counted as a crash and started again.

pub mod cdp;

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::browser::{BrowserCrash, BrowserEvent, BrowserState, BrowserTab, OpenedUrl};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::image::BrowserConfig;
use cdp::Cdp;

/// How many crashes and opened URLs the state keeps.
const KEPT: usize = 8;
/// How long a DevTools call may take (emulated VMs are slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started browser may take to answer at all.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause before a crashed browser is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Events kept for a watcher that reads slowly; one further behind skips the oldest.
const EVENTS_KEPT: usize = 16;

/// Why the browser could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// The DevTools pipe failed.
    #[error("devtools pipe: {0}")]
    Pipe(#[source] std::io::Error),
    /// A message could not be encoded.
    #[error("devtools message: {0}")]
    Json(#[from] serde_json::Error),
    /// The browser refused a command.
    #[error("{method}: {message}")]
    Refused {
        /// The command.
        method: String,
        /// The browser's message.
        message: String,
    },
    /// No answer in time.
    #[error("{0}: no answer from the browser in time")]
    Timeout(String),
    /// The browser went away (crashed or was restarted).
    #[error("the browser went away")]
    Gone,
    /// No browser process runs.
    #[error("the browser is not running")]
    NotRunning,
    /// Starting it failed.
    #[error("starting the browser: {0}")]
    Start(String),
}

/// The running browser and what it did.
#[derive(Debug)]
pub struct Browser {
    /// The process's DevTools pipe, while one runs and answers.
    current: watch::Sender<Option<Arc<Running>>>,
    state: Mutex<Record>,
    started: Instant,
    /// What happens to it, for `browser_watch` calls.
    events: tokio::sync::broadcast::Sender<BrowserEvent>,
}

#[derive(Debug)]
struct Running {
    pid: u32,
    cdp: Cdp,
    /// The page target's DevTools session, once attached.
    page: tokio::sync::Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Record {
    starts: u32,
    crashes: VecDeque<BrowserCrash>,
    opened: VecDeque<OpenedUrl>,
}

impl Browser {
    /// Starts the browser of `config` (once its display is up) and keeps it running.
    pub fn start(config: BrowserConfig) -> Arc<Browser> {
        let browser = Arc::new(Browser {
            current: watch::channel(None).0,
            state: Mutex::default(),
            started: Instant::now(),
            events: tokio::sync::broadcast::channel(EVENTS_KEPT).0,
        });
        tokio::spawn(supervise(browser.clone(), config));
        browser
    }

    /// What happens to the browser from now on: first [`BrowserEvent::Watching`] with its state
    /// now, then each event as it happens. A receiver that falls more than a few events behind
    /// loses the oldest ([`tokio::sync::broadcast`]), never the browser's memory.
    pub fn watch(&self) -> (BrowserEvent, tokio::sync::broadcast::Receiver<BrowserEvent>) {
        // Subscribed first: an event between the two lines is in both, never in neither.
        let events = self.events.subscribe();
        let watching = BrowserEvent::Watching {
            ready: self.current.borrow().is_some(),
            starts: self.record().starts,
        };
        (watching, events)
    }

    fn tell(&self, event: BrowserEvent) {
        // No receiver is not an error: nobody watches.
        let _ = self.events.send(event);
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Opens `url` (a login URL of `provider`) in the browser's tab, waiting for the browser if it
    /// is still starting; the outcome goes into the state.
    pub fn open(self: &Arc<Self>, url: String, provider: String) {
        let requested_ms = self.now_ms();
        {
            let mut record = self.record();
            push_bounded(
                &mut record.opened,
                OpenedUrl {
                    url: url.clone(),
                    provider,
                    requested_ms,
                    navigated_ms: None,
                    error: None,
                },
            );
        }
        let browser = self.clone();
        tokio::spawn(async move {
            let outcome = browser.navigate(&url).await;
            let navigated_ms = browser.now_ms();
            let opened = {
                let mut record = browser.record();
                let entry = record
                    .opened
                    .iter_mut()
                    .rev()
                    .find(|o| o.url == url && o.requested_ms == requested_ms);
                entry.map(|entry| {
                    match outcome {
                        Ok(error) => {
                            entry.navigated_ms = Some(navigated_ms);
                            entry.error = error;
                        }
                        Err(e) => entry.error = Some(e.to_string()),
                    }
                    entry.clone()
                })
            };
            if let Some(opened) = opened {
                browser.tell(BrowserEvent::Opened(opened));
            }
            info!(url = %redacted(&url), ms = navigated_ms.saturating_sub(requested_ms), "login URL opened in the browser");
        });
    }

    /// Navigates the tab to `url`; returns the page's load error, if any (the tab still commits an
    /// error page then).
    async fn navigate(&self, url: &str) -> Result<Option<String>, BrowserError> {
        let running = self.wait_running(START_TIMEOUT).await?;
        let session = running.page_session().await?;
        let result = running
            .cdp
            .call(
                "Page.navigate",
                json!({ "url": url }),
                Some(&session),
                CALL_TIMEOUT,
            )
            .await?;
        Ok(result
            .get("errorText")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_owned))
    }

    async fn wait_running(&self, timeout: Duration) -> Result<Arc<Running>, BrowserError> {
        let mut rx = self.current.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(current)) => current.clone().ok_or(BrowserError::NotRunning),
            _ => Err(BrowserError::NotRunning),
        }
    }

    /// What the browser is doing.
    pub async fn state(&self) -> BrowserState {
        let running = self.current.borrow().clone();
        let tabs = match &running {
            Some(r) => r.tabs().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let record = self.record();
        BrowserState {
            ready: running.is_some(),
            pid: running.as_ref().map(|r| r.pid),
            starts: record.starts,
            crashes: record.crashes.iter().cloned().collect(),
            tabs,
            opened: record.opened.iter().cloned().collect(),
        }
    }
}

impl Running {
    /// The DevTools session of the first page target, attached on first use.
    async fn page_session(&self) -> Result<String, BrowserError> {
        let mut page = self.page.lock().await;
        if let Some(session) = page.as_ref() {
            return Ok(session.clone());
        }
        let targets = self
            .cdp
            .call("Target.getTargets", json!({}), None, CALL_TIMEOUT)
            .await?;
        let target = match first_page(&targets) {
            Some(id) => id,
            None => self
                .cdp
                .call(
                    "Target.createTarget",
                    json!({ "url": "about:blank" }),
                    None,
                    CALL_TIMEOUT,
                )
                .await?["targetId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let attached = self
            .cdp
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                None,
                CALL_TIMEOUT,
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Refused {
                method: "Target.attachToTarget".into(),
                message: "no session id".into(),
            })?
            .to_owned();
        *page = Some(session.clone());
        Ok(session)
    }

    async fn tabs(&self) -> Result<Vec<BrowserTab>, BrowserError> {
        let targets = self
            .cdp
            .call("Target.getTargets", json!({}), None, CALL_TIMEOUT)
            .await?;
        Ok(targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["type"] == "page")
            .map(|t| BrowserTab {
                url: t["url"].as_str().unwrap_or_default().to_owned(),
                title: t["title"].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }
}

fn first_page(targets: &Value) -> Option<String> {
    targets["targetInfos"]
        .as_array()?
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["targetId"].as_str())
        .map(str::to_owned)
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

/// A URL for the logs: its address, not its one-time parameters.
fn redacted(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Starts the browser once its display is up, and again whenever it exits.
async fn supervise(browser: Arc<Browser>, config: BrowserConfig) {
    let socket = x_socket(&config.display);
    while !std::path::Path::new(&socket).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        browser.record().starts += 1;
        match launch(&config) {
            Ok((mut child, cdp)) => {
                let pid = child.id().unwrap_or(0);
                info!(pid, "browser started");
                let running = Arc::new(Running {
                    pid,
                    cdp,
                    page: tokio::sync::Mutex::new(None),
                });
                let answered = tokio::select! {
                    r = running.cdp.call("Browser.getVersion", json!({}), None, START_TIMEOUT) => r.is_ok(),
                    _ = child.wait() => false,
                };
                if answered {
                    // Attached now, not when the first URL comes (a snapshot keeps the
                    // session): opening a URL is then a single call.
                    if let Err(e) = running.page_session().await {
                        debug!(error = %e, "no page session yet; the first URL attaches one");
                    }
                    browser.current.send_replace(Some(running));
                    debug!(pid, "browser answers on its DevTools pipe");
                    let starts = browser.record().starts;
                    browser.tell(BrowserEvent::Started { pid, starts });
                }
                let status = child.wait().await;
                browser.current.send_replace(None);
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                warn!(pid, %status, "the browser exited; starting it again");
                let crash = BrowserCrash {
                    at_ms: browser.now_ms(),
                    status,
                };
                push_bounded(&mut browser.record().crashes, crash.clone());
                browser.tell(BrowserEvent::Crashed(crash));
            }
            Err(e) => warn!(error = %e, "the browser cannot start"),
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

/// Serves `browser_watch` on `browser`: [`Browser::watch`]'s events as a frame stream, until the
/// caller drops the call.
pub async fn serve_watch(
    browser: Arc<Browser>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::rpc::body::ResponseBody> {
    use crate::rpc::body::{error, open_stream};
    use http_body_util::BodyExt;
    use tokio::sync::broadcast::error::RecvError;
    let opened =
        open_stream::<protocol::browser::BrowserWatch>(req, protocol::frame::DEFAULT_MAX_FRAME)
            .await;
    if let Err(e) = opened {
        return error(&e);
    }
    let (watching, mut events) = browser.watch();
    let (tx, body) = protocol::body::ChannelBody::channel(EVENTS_KEPT);
    tokio::spawn(async move {
        if tx.send_message(&watching).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = tx.closed() => return,
            };
            match event {
                Ok(event) => {
                    if tx.send_message(&event).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "a browser watcher fell behind; the oldest events were dropped"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    http::Response::new(body.boxed())
}

/// The X server's socket of `display` (`:0` → `/tmp/.X11-unix/X0`).
fn x_socket(display: &str) -> String {
    let number = display
        .trim_start_matches(':')
        .split('.')
        .next()
        .unwrap_or("0");
    format!("/tmp/.X11-unix/X{number}")
}

/// Starts the browser as its user, with the DevTools pipe on its fds 3 and 4.
fn launch(config: &BrowserConfig) -> Result<(tokio::process::Child, Cdp), BrowserError> {
    let start = |e: &dyn std::fmt::Display| BrowserError::Start(e.to_string());
    let user = crate::users::RunAs::lookup(&config.user).map_err(|e| start(&e))?;
    // Ours: `to_browser` (write) and `from_browser` (read). The browser's: fd 3 reads our
    // commands, fd 4 writes its answers. Kept above 10 until the child puts them in place, so
    // no dup2 can overwrite the other.
    let (cmd_read, to_browser) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| start(&e))?;
    let (from_browser, ans_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| start(&e))?;
    let high = |fd: &OwnedFd| -> Result<OwnedFd, BrowserError> {
        let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| start(&e))?;
        // SAFETY: `raw` is a new descriptor fcntl just returned; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    let (child_in, child_out) = (high(&cmd_read)?, high(&ans_write)?);
    drop((cmd_read, ans_write));
    let (child_in_raw, child_out_raw) = (child_in.as_raw_fd(), child_out.as_raw_fd());
    let (uid, gid) = (user.uid, user.gid);
    let profile = user.home.join(".config").join("vm-agent-chromium");
    let mut cmd = tokio::process::Command::new(&config.program);
    cmd.args(&config.args)
        .arg("--remote-debugging-pipe")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &config.user)
        .env("DISPLAY", &config.display)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(&user.home)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (dup2, setgroups, setgid, setuid) on values computed before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(child_in_raw, 3) < 0 || libc::dup2(child_out_raw, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::users::RunAs::become_user(uid, gid)
        });
    }
    let child = cmd.spawn().map_err(|e| start(&e))?;
    drop((child_in, child_out));
    let cdp = Cdp::new(File::from(to_browser), File::from(from_browser));
    Ok((child, cdp))
}
