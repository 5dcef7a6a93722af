//! The driver of one login session: the happy path, and the cleanup that runs whatever the end.

use std::sync::Arc;
use std::time::Duration;

use protocol::browser::{BrowserEvent, BrowserWatch};
use protocol::creds::{CapturedCredential, CredsScope, CredsWatchRequest, SealTo, SealedCapture};
use protocol::messages::{ConfigureRequest, Empty, WriteFileRequest};
use protocol::pty::{Pty, PtyEvent, PtyRequest, PtySpawn};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::deliver::{push, retry_later, store_sealed};
use super::events::LoginEventKind;
use super::state::SessionState;
use super::{forget_later, Inner, LoginError, Sealing, Session};
use crate::client::{AgentClient, ClientError, StreamCall, StreamItem};
use crate::egress::{AllowList, EgressBinding, EgressVm};
use crate::store::{AuditEvent, StoreError};
use crate::transport::TransportError;
use crate::vault::{CredentialPlaintext, VaultError};
use crate::vm::VmKind;
use crate::vm::{BackendError, CleanupReport, VmHandle, VmSpec};

/// Terminal size of the login PTY: wide enough that the CLIs' long URLs wrap little.
const LOGIN_COLS: u16 = 100;
const LOGIN_ROWS: u16 = 30;
/// How many browser events (crashes, restarts, opened pages) one login shows: the guest sends
/// them, so they are bounded apart from the login URLs' budget.
const MAX_BROWSER_EVENTS: usize = 8;
/// The longest guest text (an exit status, a load error) a browser event shows.
const MAX_BROWSER_TEXT: usize = 80;
/// How long after the login command exits its credential file may still arrive (the CLI writes
/// it, then exits; the watch reports it a moment later).
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// How a flow step failed; the text becomes the session's reason (never holds a secret).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    #[error("VM backend: {0}")]
    Backend(#[from] BackendError),
    #[error("agent unreachable: {0}")]
    Transport(#[from] TransportError),
    #[error("agent call failed: {0}")]
    Client(#[from] ClientError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
    #[error("egress: {0}")]
    Egress(#[from] crate::egress::EgressError),
    #[error("egress: {0}")]
    Gateway(#[from] crate::egress::GatewayError),
    #[error("{0}")]
    Login(String),
}

/// What the flow started and cleanup must undo.
#[derive(Default)]
struct Resources {
    /// A VM creation in flight (run as a task so a cancel never drops a half-made VM).
    creating: Option<JoinHandle<Result<VmHandle, BackendError>>>,
    /// The browser VM, once created.
    browser: Option<Browser>,
}

struct Browser {
    handle: VmHandle,
    client: Option<AgentClient>,
    login: Option<StreamCall<Pty>>,
    /// Its way out; dropped with the VM.
    egress: Option<EgressBinding>,
}

enum Outcome {
    Completed,
    Failed(String),
    Timeout,
    Cancelled(String),
}

/// Runs the session to its end and records the end.
pub(crate) async fn drive(inner: Arc<Inner>, session: Arc<Session>) {
    let mut res = Resources::default();
    let deadline = tokio::time::Instant::now() + inner.config.timeout;
    let mut cancel = session.cancel.subscribe();
    let outcome = tokio::select! {
        r = run(&inner, &session, &mut res) => match r {
            Ok(()) => Outcome::Completed,
            Err(e) => Outcome::Failed(e.to_string()),
        },
        reason = async {
            match cancel.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or_default(),
                Err(_) => "service stopped".to_owned(),
            }
        } => Outcome::Cancelled(reason),
        _ = tokio::time::sleep_until(deadline) => Outcome::Timeout,
    };
    cleanup(&inner, &session, res).await;
    let (state, reason) = match outcome {
        Outcome::Completed => (SessionState::Completed, None),
        Outcome::Failed(r) => (SessionState::Failed, Some(r)),
        Outcome::Timeout => (
            SessionState::Timeout,
            Some(format!("not completed within {:?}", inner.config.timeout)),
        ),
        Outcome::Cancelled(r) => (SessionState::Cancelled, Some(r)),
    };
    if let Err(e) = inner
        .store
        .set_session_state(&session.id, state.as_str(), reason.as_deref())
        .await
    {
        warn!(session = %session.id, error = %e, "recording the session's end failed");
    }
    let ended = AuditEvent::SessionEnded {
        session_id: session.id.clone(),
        state: state.as_str().into(),
        reason: reason.clone(),
    };
    if let Err(e) = inner.store.audit(Some(&session.user), &ended).await {
        warn!(session = %session.id, error = %e, "audit failed");
    }
    info!(session = %session.id, state = %state, reason = reason.as_deref().unwrap_or(""), "login session ended");
    *session.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    session.log.push(LoginEventKind::State { state, reason });
    forget_later(&inner, session.id.clone());
}

async fn set_state(inner: &Inner, session: &Session, state: SessionState) -> Result<(), FlowError> {
    let current = session.state();
    if !current.can_move_to(state) {
        return Err(FlowError::Login(format!(
            "internal: {current} cannot move to {state}"
        )));
    }
    if !inner
        .store
        .set_session_state(&session.id, state.as_str(), None)
        .await?
    {
        return Err(FlowError::Login("the session was closed elsewhere".into()));
    }
    *session.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    session.log.push(LoginEventKind::State {
        state,
        reason: None,
    });
    Ok(())
}

/// How many URLs outside its provider's rules a login VM may report before its session ends: a
/// real CLI prints none (the agent finds only matching ones).
const MAX_REFUSED_URLS: usize = 8;

/// Counts a login URL or device code the provider's rules refuse (never shown): the first one is
/// said in the session's events, too many end the session.
fn refused_url(session: &Session, refused: &mut usize, len: usize) -> Result<(), FlowError> {
    *refused += 1;
    warn!(session = %session.id, len, refused = *refused, "the login VM reported a URL its provider's rules refuse: not shown");
    if *refused == 1 {
        progress(
            session,
            "url_refused",
            format!("the login VM reported a {len}-byte URL that is not this provider's login URL: not shown"),
        );
    }
    if *refused > MAX_REFUSED_URLS {
        return Err(FlowError::Login(format!(
            "the login VM reported {refused} URLs that are not this provider's login URLs: not a login, stopped"
        )));
    }
    Ok(())
}

fn progress(session: &Session, step: &str, detail: String) {
    session.log.push(LoginEventKind::Progress {
        step: step.into(),
        detail,
    });
}

fn guest_path(home: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        home.trim_end_matches('/'),
        relative.trim_start_matches('/')
    )
}

/// Serves the user's CLI VM's egress, unless that VM is served already. Kept by user: a CLI VM
/// created anew (new id, new socket) replaces the binding of the one before it.
pub(super) fn serve_cli_egress(inner: &Inner, user: &str, cli: &VmHandle) -> Result<(), FlowError> {
    let (Some(gateway), Some(path)) = (&inner.gateway, &cli.egress) else {
        return Ok(());
    };
    let mut served = inner.cli_egress.lock().unwrap_or_else(|p| p.into_inner());
    // Served already: the same VM on the same socket. A resumed VM keeps its id but its socket
    // is new (every QEMU start has a directory of its own).
    if !cli.created
        && served
            .get(user)
            .is_some_and(|(id, binding)| *id == cli.id && binding.path() == path.as_path())
    {
        return Ok(());
    }
    let binding = gateway.serve_vm(
        path,
        EgressVm {
            user: user.to_owned(),
            vm_id: cli.id.clone(),
            allow: inner.config.cli_egress.clone(),
        },
    )?;
    served.insert(user.to_owned(), (cli.id.clone(), binding));
    Ok(())
}

/// Shows the session's user the login VM's tunnels that were refused or failed upstream (an
/// `egress_refused` progress event: target, status, reason), until the session ends.
fn forward_refusals(
    gateway: &crate::egress::EgressGateway,
    session: &Arc<Session>,
    vm_id: &str,
    lifetime: Duration,
) {
    let mut events = gateway.subscribe();
    let weak = Arc::downgrade(session);
    let vm_id = vm_id.to_owned();
    // No session outlives its timeout: the task ends then even if no event comes.
    let deadline = tokio::time::Instant::now() + lifetime;
    tokio::spawn(async move {
        loop {
            let received = tokio::time::timeout_at(deadline, events.recv()).await;
            let event = match received {
                Err(_) => return,
                Ok(Ok(e)) => e,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            };
            let Some(session) = weak.upgrade() else {
                return;
            };
            if session.state().is_terminal() {
                return;
            }
            if event.vm_id == vm_id {
                progress(
                    &session,
                    "egress_refused",
                    format!("{}: {} {}", event.target, event.status, event.reason),
                );
            }
        }
    });
}

/// The happy path. Every resource it makes is put into `res` before the next await, so cleanup
/// finds it whenever this future is dropped.
async fn run(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    res: &mut Resources,
) -> Result<(), FlowError> {
    let user = session.user.as_str();
    let provider = &session.provider;

    // pending: the CLI VM the credentials will go to, and the user's egress port.
    let cli = super::deliver::ensure_cli(inner, user).await?;
    progress(session, "cli_vm", cli.id.clone());

    let spec = VmSpec {
        user_id: user.to_owned(),
        kind: VmKind::Browser,
        session_id: Some(session.id.clone()),
    };
    let backend = inner.backend.clone();
    let task = res
        .creating
        .insert(tokio::spawn(async move { backend.create_vm(spec).await }));
    let joined = task.await;
    res.creating = None;
    let handle =
        joined.map_err(|e| FlowError::Login(format!("VM creation task failed: {e}")))??;
    let vm_id = handle.id.clone();
    let hello = res
        .browser
        .insert(Browser {
            handle,
            client: None,
            login: None,
            egress: None,
        })
        .handle
        .hello
        .take();
    record_created(
        inner,
        user,
        &res_browser(res)?.handle,
        VmKind::Browser,
        Some(&session.id),
    )
    .await?;
    set_state(inner, session, SessionState::VmCreated).await?;
    match &res_browser(res)?.handle.start {
        crate::vm::VmStart::Restored => progress(
            session,
            "vm_restored",
            "started from the golden snapshot".into(),
        ),
        crate::vm::VmStart::BootedAfterFailedRestore(why) => progress(
            session,
            "vm_restore_failed",
            format!("booted instead: {why}"),
        ),
        crate::vm::VmStart::Booted | crate::vm::VmStart::Resumed => {}
    }

    // vm_created → ready: the agent says hello, is configured, gets its seed files.
    if let Some(hello) = hello {
        hello.wait(inner.config.hello_timeout).await?;
    }
    let connector = res_browser(res)?.handle.connector.clone();
    let client = AgentClient::connect_with_retry(&*connector, inner.config.hello_timeout)
        .await?
        .with_deadline(inner.config.call_timeout);
    res_browser(res)?.client = Some(client.clone());
    session.set_agent(Some(super::BrowserAgent {
        client: client.clone(),
        desktop: res_browser(res)?.handle.desktop.clone(),
    }));
    // Its way out: the user's port, the provider's hosts. Bound before the login runs, so the
    // first connection the CLI or Chromium makes finds it.
    if let (Some(gateway), Some(path)) = (&inner.gateway, &res_browser(res)?.handle.egress) {
        let mut allow = provider.egress_hosts.clone();
        allow.extend(inner.config.login_egress.iter().cloned());
        let binding = gateway.serve_vm(
            path,
            EgressVm {
                user: user.to_owned(),
                vm_id: vm_id.clone(),
                allow: AllowList::Only(allow),
            },
        )?;
        res_browser(res)?.egress = Some(binding);
        forward_refusals(gateway, session, &vm_id, inner.config.timeout);
    }
    client
        .configure(&ConfigureRequest {
            session_id: Some(session.id.clone()),
            ..Default::default()
        })
        .await?;
    let home = res_browser(res)?.handle.guest_home.clone();
    for seed in &provider.seed_files {
        client
            .write_file(&WriteFileRequest {
                path: guest_path(&home, &seed.path),
                content: seed.content_for(&home).into_bytes(),
                mode: Some(seed.mode),
                create_dirs: true,
            })
            .await?;
    }
    progress(session, "browser_vm", vm_id);
    set_state(inner, session, SessionState::Ready).await?;

    // ready → awaiting_user_auth: watch the credential files, run the login on a PTY (the agent
    // answers terminal queries and first-run prompts, and reports the login URL it detects).
    let scope = CredsScope {
        provider: provider.name.clone(),
        home: Some(home.clone()),
        ..Default::default()
    };
    // In the user-sealed mode the browser VM seals the capture to the user's key: the host never
    // holds the file.
    let seal_to = match inner.config.sealing {
        Sealing::Host => None,
        Sealing::User => {
            let recipient = super::chain::user_key(inner, user)
                .await?
                .ok_or_else(|| FlowError::Login(LoginError::NoUserKey.to_string()))?;
            let current = inner
                .store
                .credential(user, &provider.name)
                .await?
                .map_or(0, |c| c.version);
            Some(SealTo {
                recipient,
                user: user.to_owned(),
                first_version: current + 1,
            })
        }
    };
    let mut watch = client
        .creds_watch(&CredsWatchRequest {
            scope,
            include_existing: false,
            seal_to: seal_to.clone(),
        })
        .await?;
    // The login runs in the home (claude's trust seed names it); the agent adds the mode's
    // environment and, for a device-code mode, reports the code.
    let mut spawn = PtySpawn::new(session.mode.argv.clone());
    spawn.cwd = Some(home.clone());
    spawn.provider = Some(provider.name.clone());
    spawn.mode = Some(session.mode.id.clone());
    spawn.cols = LOGIN_COLS;
    spawn.rows = LOGIN_ROWS;
    // Chromium's crashes, restarts and opened pages reach the login's events as they happen (an
    // agent that drives no browser refuses the call: nothing to watch).
    let mut browser_events = 0usize;
    let mut browser_watch = match client.open::<BrowserWatch>(&Empty {}).await {
        Ok(call) => Some(call),
        Err(e) => {
            debug!(error = %e, "no browser to watch");
            None
        }
    };
    let call = client.pty(&PtyRequest::Spawn(spawn)).await?;
    session.set_input(call.input());
    let login = res_browser(res)?.login.insert(call);
    let mut exited: Option<(i32, tokio::time::Instant)> = None;
    let mut refused = 0usize;
    let captured = loop {
        let grace_over = async {
            match exited {
                Some((_, at)) => tokio::time::sleep_until(at + EXIT_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = login.next(), if exited.is_none() => match item? {
                Some(StreamItem::Event(PtyEvent::Url { url, source, .. })) => {
                    // The guest's word is not enough: only a URL of this provider's rules is
                    // ever shown to the user.
                    if !provider.urls.accepts(&url) {
                        refused_url(session, &mut refused, url.len())?;
                        continue;
                    }
                    // State first: whoever sees the URL may act on it at once (submit a code).
                    if session.state() == SessionState::Ready {
                        set_state(inner, session, SessionState::AwaitingUserAuth).await?;
                    }
                    session
                        .log
                        .push_from_guest(LoginEventKind::AuthUrl { url, source })
                        .map_err(|e| FlowError::Login(e.to_string()))?;
                }
                Some(StreamItem::Event(PtyEvent::DeviceCode { url, code, .. })) => {
                    let rule = provider.urls.device(&session.mode);
                    if !rule.is_some_and(|r| r.accepts(&url, &code)) {
                        refused_url(session, &mut refused, url.len() + code.len())?;
                        continue;
                    }
                    if session.state() == SessionState::Ready {
                        set_state(inner, session, SessionState::AwaitingUserAuth).await?;
                    }
                    session
                        .log
                        .push_from_guest(LoginEventKind::DeviceCode { url, code })
                        .map_err(|e| FlowError::Login(e.to_string()))?;
                }
                Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                    exited = Some((status.shell_code(), tokio::time::Instant::now()));
                }
                Some(_) => {}
                None => exited = Some((-1, tokio::time::Instant::now())),
            },
            event = next_browser_event(&mut browser_watch) => match event {
                Some(event) => {
                    let accepts = |url: &str| provider.urls.accepts(url);
                    let Some((step, detail)) = browser_progress(&event, &accepts) else { continue };
                    progress(session, step, detail);
                    browser_events += 1;
                    if browser_events == MAX_BROWSER_EVENTS {
                        // A browser that keeps crashing has said enough; the login goes on.
                        warn!("browser events beyond the session's bound: no longer reported");
                        browser_watch = None;
                    }
                }
                None => browser_watch = None,
            },
            capture = next_capture(&mut watch, seal_to.is_some()) => match capture? {
                Some(c) => break c,
                None => return Err(FlowError::Login("the agent ended the credential watch".into())),
            },
            () = grace_over => {
                let code = exited.map_or(-1, |(code, _)| code);
                return Err(FlowError::Login(format!(
                    "the login command exited with status {code} without writing credentials"
                )));
            }
        }
    };
    // The file is complete: the login process has nothing left to do.
    session.set_input(None);
    res_browser(res)?.login = None;
    drop(watch);
    drop(browser_watch);

    // authenticating: check, seal, store, push.
    if session.state() == SessionState::Ready {
        // A fresh login VM holds no credential: one written before any login URL was shown is
        // not a login the user did, and linking it would hand the user someone else's account.
        return Err(FlowError::Login(
            "the login VM wrote a credential before showing a login URL: refused".into(),
        ));
    }
    let expected = guest_path(&home, &provider.credential_file);
    match &captured {
        Captured::Plain(c) => super::checks::plain(provider, &expected, c),
        Captured::Sealed(c) => super::checks::sealed(provider, &expected, c),
    }
    .map_err(|e| FlowError::Login(e.to_string()))?;
    set_state(inner, session, SessionState::Authenticating).await?;
    // The agent reports only complete, valid files of the provider's shape.
    let captured = match captured {
        Captured::Plain(c) => c,
        Captured::Sealed(c) => {
            let Some(to) = &seal_to else {
                return Err(FlowError::Login(
                    "internal: a sealed capture unasked".into(),
                ));
            };
            if c.provider != provider.name || c.version != to.first_version {
                return Err(FlowError::Login(format!(
                    "the browser VM sent a capture of {} version {} for {} version {}",
                    c.provider, c.version, provider.name, to.first_version
                )));
            }
            let version = super::handover::store_capture(inner, user, &to.recipient, &c).await?;
            progress(
                session,
                "captured",
                format!("version {version}, sealed to the user"),
            );
            progress(
                session,
                "push_pending",
                "sealed to the user's key: the user's page delivers it to the CLI VM".into(),
            );
            return Ok(());
        }
    };
    let plaintext = CredentialPlaintext::new(captured.content);
    let version = store_sealed(inner, user, provider, &plaintext, None).await?;
    progress(session, "captured", format!("version {version}"));
    match push(inner, user, provider, version, &plaintext).await {
        Ok(()) => progress(session, "pushed", format!("version {version}")),
        Err(e) => {
            let reason = e.to_string();
            warn!(session = %session.id, error = %reason, "push into the CLI VM failed; will retry");
            inner
                .store
                .audit(
                    Some(user),
                    &AuditEvent::CredentialPushFailed {
                        provider: provider.name.clone(),
                        version,
                        reason: reason.clone(),
                    },
                )
                .await?;
            progress(session, "push_pending", reason);
            retry_later(inner, user.to_owned(), provider.name.clone());
        }
    }
    Ok(())
}

/// A capture, plain or sealed in the VM, as the watch was asked for.
enum Captured {
    Plain(CapturedCredential),
    Sealed(SealedCapture),
}

/// The next event of the browser watch; never, without one. A watch that ends or fails is
/// `None` (the login goes on without it).
async fn next_browser_event(watch: &mut Option<StreamCall<BrowserWatch>>) -> Option<BrowserEvent> {
    let Some(call) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match call.next().await {
            Ok(Some(StreamItem::Event(event))) => return Some(event),
            Ok(Some(StreamItem::Data(..))) => continue,
            Ok(None) => return None,
            Err(e) => {
                debug!(error = %e, "the browser watch ended");
                return None;
            }
        }
    }
}

/// What a login's events say of a browser event: `(step, detail)`, or nothing. The guest's words
/// are not trusted: a page is shown only if the provider's rules `accept` its URL, and then only its
/// origin (the rest may hold the login's one-time state); texts are short and printable.
fn browser_progress(
    event: &BrowserEvent,
    accepts: &dyn Fn(&str) -> bool,
) -> Option<(&'static str, String)> {
    match event {
        BrowserEvent::Watching { .. } => None,
        BrowserEvent::Crashed(crash) => Some((
            "browser_crashed",
            format!(
                "Chromium exited on its own ({}) {:.1} s into the VM's agent; restarting it",
                shown(&crash.status),
                crash.at_ms as f64 / 1000.0
            ),
        )),
        BrowserEvent::Started { starts, .. } if *starts > 1 => Some((
            "browser_restarted",
            format!("Chromium runs again (start {starts})"),
        )),
        BrowserEvent::Started { .. } => None,
        BrowserEvent::Opened(opened) if accepts(&opened.url) => {
            let origin = origin(&opened.url);
            Some(match &opened.error {
                None => ("browser_opened", format!("Chromium opened {origin}")),
                Some(error) => (
                    "browser_open_failed",
                    format!("Chromium could not load {origin}: {}", shown(error)),
                ),
            })
        }
        BrowserEvent::Opened(_) => None,
    }
}

/// `scheme://host[:port]` of a URL, without user information.
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    shown(&format!("{scheme}://{host}"))
}

/// Guest text as a login event shows it: printable ASCII, at most [`MAX_BROWSER_TEXT`] chars.
fn shown(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_BROWSER_TEXT)
        .collect()
}

async fn next_capture(
    watch: &mut crate::creds::CredsWatchCall,
    sealed: bool,
) -> Result<Option<Captured>, ClientError> {
    Ok(if sealed {
        watch.next_sealed().await?.map(Captured::Sealed)
    } else {
        watch.next_capture().await?.map(Captured::Plain)
    })
}

fn res_browser(res: &mut Resources) -> Result<&mut Browser, FlowError> {
    res.browser
        .as_mut()
        .ok_or_else(|| FlowError::Login("internal: no browser VM".into()))
}

pub(super) async fn record_created(
    inner: &Inner,
    user: &str,
    handle: &VmHandle,
    kind: VmKind,
    session: Option<&str>,
) -> Result<(), FlowError> {
    inner
        .store
        .record_vm_created(&handle.id, user, kind, session)
        .await?;
    inner
        .store
        .audit(
            Some(user),
            &AuditEvent::VmCreated {
                vm_id: handle.id.clone(),
                kind: kind.as_str().into(),
            },
        )
        .await?;
    Ok(())
}

/// Undoes whatever the flow started: the login process, the credential files in the browser VM,
/// the browser VM itself (recorded with what the backend removed).
async fn cleanup(inner: &Inner, session: &Session, mut res: Resources) {
    let user = session.user.as_str();
    session.set_input(None);
    session.set_agent(None);
    if let Some(task) = res.creating.take() {
        // A creation was in flight: let it finish, then destroy what it made.
        if let Ok(Ok(handle)) = task.await {
            if let Err(e) =
                record_created(inner, user, &handle, VmKind::Browser, Some(&session.id)).await
            {
                warn!(error = %e, "recording a VM created during cancel failed");
            }
            res.browser = Some(Browser {
                handle,
                client: None,
                login: None,
                egress: None,
            });
        }
    }
    let Some(mut browser) = res.browser.take() else {
        return;
    };
    // Dropping the call kills the login's process group in the VM.
    drop(browser.login.take());
    if let Some(client) = browser.client.take() {
        let scope = CredsScope {
            provider: session.provider.name.clone(),
            home: Some(browser.handle.guest_home.clone()),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(5), client.creds_wipe(&scope)).await {
            Ok(Ok(wiped)) => {
                let event = AuditEvent::CredentialWiped {
                    provider: session.provider.name.clone(),
                    vm_id: browser.handle.id.clone(),
                };
                tracing::debug!(files = wiped.removed.len(), "credential files wiped");
                if let Err(e) = inner.store.audit(Some(user), &event).await {
                    warn!(error = %e, "audit failed");
                }
            }
            Ok(Err(e)) => warn!(error = %e, "wipe failed; the VM is destroyed anyway"),
            Err(_) => warn!("wipe timed out; the VM is destroyed anyway"),
        }
    }
    let vm_id = browser.handle.id.clone();
    drop(browser);
    if let Err(e) = destroy_vm(inner, user, &vm_id).await {
        warn!(vm = %vm_id, error = %e, "destroying the browser VM failed");
    }
}

/// Destroys a VM through the backend and records it: the VM row leaves the `active` state and the
/// audit log lists what the backend removed.
pub(crate) async fn destroy_vm(
    inner: &Inner,
    user: &str,
    vm_id: &str,
) -> Result<CleanupReport, LoginError> {
    let report = inner.backend.destroy_vm(vm_id).await?;
    inner.store.record_vm_destroyed(vm_id).await?;
    let destroyed = AuditEvent::VmDestroyed {
        vm_id: vm_id.to_owned(),
        removed: report.removed.clone(),
    };
    inner.store.audit(Some(user), &destroyed).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::browser::{BrowserCrash, OpenedUrl};

    #[test]
    fn browser_events_become_progress_without_url_parameters() {
        let accepts = |url: &str| url.starts_with("https://claude.ai/");
        let crash = BrowserEvent::Crashed(BrowserCrash {
            at_ms: 12_345,
            status: format!("signal: 9 (SIGKILL)\u{1b}[2J{}", "x".repeat(500)),
        });
        let (step, detail) = browser_progress(&crash, &accepts).expect("a crash is reported");
        assert_eq!(step, "browser_crashed");
        assert!(
            detail.contains("signal: 9") && detail.contains("12.3 s"),
            "{detail}"
        );
        assert!(!detail.contains('\u{1b}') && detail.len() < 200, "{detail}");
        let again = BrowserEvent::Started { pid: 7, starts: 2 };
        assert_eq!(
            browser_progress(&again, &accepts).map(|p| p.0),
            Some("browser_restarted")
        );
        let first = BrowserEvent::Started { pid: 7, starts: 1 };
        assert_eq!(
            browser_progress(&first, &accepts),
            None,
            "the first start is no news"
        );
        let opened = |url: &str, error: Option<&str>| {
            BrowserEvent::Opened(OpenedUrl {
                url: url.into(),
                provider: "claude_code".into(),
                requested_ms: 1,
                navigated_ms: Some(2),
                error: error.map(str::to_owned),
            })
        };
        let login = "https://claude.ai/oauth/authorize?code_challenge=SECRET#frag";
        let (step, detail) = browser_progress(&opened(login, None), &accepts).expect("opened");
        assert_eq!(step, "browser_opened");
        assert_eq!(detail, "Chromium opened https://claude.ai");
        let failed = opened(login, Some("net::ERR_NAME_NOT_RESOLVED"));
        let (step, detail) = browser_progress(&failed, &accepts).expect("failed");
        assert_eq!(step, "browser_open_failed");
        assert!(!detail.contains("SECRET"), "{detail}");
        assert!(detail.contains("ERR_NAME_NOT_RESOLVED"), "{detail}");
        let phishing = opened("https://evil.example/claude.ai/", None);
        assert_eq!(
            browser_progress(&phishing, &accepts),
            None,
            "a page the provider's rules refuse is never shown"
        );
        assert_eq!(
            origin("https://user:pw@claude.ai:443/x"),
            "https://claude.ai:443"
        );
    }
}
