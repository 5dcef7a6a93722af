//! Login sessions: linking a user's provider account through a browser VM.
//!
//! [`LoginService::start`] returns a session id at once; the flow runs in the background and its
//! progress is a stream of [`LoginEvent`]s that any subscriber, however late, replays from the first
//! event. The flow: make sure the user's CLI VM exists, create a browser VM through the
//! [`VmBackend`], wait for its agent's hello, serve its egress tunnels (through the user's egress
//! port, to the provider's hosts only), configure it (session id), run the provider's login, report its URL, capture the credential file once it
//! is complete, store it sealed, push it into the CLI VM, then wipe and destroy the browser VM.
//!
//! A session ends `completed`, `failed`, `timeout` (default 5 minutes from the start) or
//! `cancelled`, and whatever the end, everything it started is cleaned up: the login process, the
//! browser VM (through the backend, with an audit record of what was removed) and its store rows.
//! One session per (user, provider) is active at a time, across hosts sharing the store: a second
//! start returns the first session's id.

mod account;
mod chain;
mod checks;
mod deliver;
mod events;
mod flow;
mod handover;
mod provider;
mod state;

pub use account::{CliAgent, LinkedAccount, Recovered, Revoked, SessionInfo, RESTART_REASON};
pub use checks::CaptureRefused;
pub use events::{
    EventStream, LogFull, LoginEvent, LoginEventKind, MAX_GUEST_EVENTS, MAX_GUEST_EVENT_BYTES,
};
pub use handover::{Delivery, PendingDelivery};
pub use provider::{LoginMode, ProviderLogin, ProviderRulesError, SeedFile, UrlKind};
pub use state::{SessionState, UnknownState};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use protocol::body::FrameSender;
use protocol::frame::{Frame, FrameKind};
use tokio::sync::watch;

use crate::egress::{
    AllowList, EgressBinding, EgressEvent, EgressGateway, EgressLimits, EgressPorts, ProxyConfig,
};
use crate::store::{NewSession, SessionInsert, Store, StoreError};
use crate::vault::Vault;
use crate::vm::VmBackend;

/// Settings of the login flow.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// How long the user has from start to completion.
    pub timeout: Duration,
    /// How long a new VM's agent may take to say hello.
    pub hello_timeout: Duration,
    /// How long any one call to an agent may take (a unary call's answer, a stream's
    /// acceptance): a guest that takes a call and never answers costs this, not a stuck flow.
    pub call_timeout: Duration,
    /// The upstream egress proxy; `None` runs logins without a way out (development).
    pub proxy: Option<ProxyConfig>,
    /// Destinations a login VM may reach besides its provider's `egress_hosts` (a deployment's
    /// own: a corporate SSO page, say).
    pub login_egress: Vec<String>,
    /// Where the CLI VMs may go (default anywhere: a user's prompts fetch what they fetch).
    pub cli_egress: AllowList,
    /// What one VM may ask of the egress gateway.
    pub egress_limits: EgressLimits,
    /// Provider recipes (default: the built-in provider rules).
    pub providers: Vec<ProviderLogin>,
    /// First delay before retrying a failed push into the CLI VM; doubles per attempt.
    pub push_retry_delay: Duration,
    /// Automatic push retries before waiting for [`LoginService::push_pending`].
    pub push_retries: u32,
    /// How long a finished session's events stay available to subscribers.
    pub retain_finished: Duration,
    /// Who can open stored credentials: the host's vault, or only the user.
    pub sealing: Sealing,
}

/// Who can open a stored credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sealing {
    /// The host's vault seals and opens it (AES-256-GCM under a configured, rotating key), and
    /// the host pushes it into the CLI VM by itself.
    #[default]
    Host,
    /// The browser VM seals it to the user's public key (HPKE); the host stores and relays what
    /// it cannot open, and the user's page re-seals it to the CLI VM ([`LoginService::deliver`]).
    User,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            hello_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
            proxy: None,
            login_egress: Vec::new(),
            cli_egress: AllowList::Any,
            egress_limits: EgressLimits::default(),
            providers: ProviderLogin::builtin(),
            push_retry_delay: Duration::from_secs(2),
            push_retries: 5,
            retain_finished: Duration::from_secs(600),
            sealing: Sealing::Host,
        }
    }
}

/// Why a login call failed (the flow's own failures are session events, not errors).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No recipe for this provider.
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    /// The provider has no such login mode.
    #[error("provider {provider:?} has no login mode {mode:?}")]
    UnknownMode {
        /// The provider.
        provider: String,
        /// The mode asked for (empty: the provider has no modes at all).
        mode: String,
    },
    /// A user id must be non-empty.
    #[error("invalid user id")]
    InvalidUser,
    /// No such session on this host.
    #[error("unknown session {0}")]
    UnknownSession(String),
    /// The session is driven by another host sharing the store; follow it there.
    #[error("session {session} is driven by host {host}")]
    OtherHost {
        /// Session id.
        session: String,
        /// The host driving it.
        host: String,
    },
    /// The session is not waiting for the user (no login prompt to type into).
    #[error("session {session} is {state}, not awaiting the user")]
    NotAwaitingUser {
        /// Session id.
        session: String,
        /// Its state.
        state: SessionState,
    },
    /// The login program is gone (its terminal closed).
    #[error("the login program of session {0} no longer reads input")]
    InputClosed(String),
    /// The VM backend failed.
    #[error(transparent)]
    Backend(#[from] crate::vm::BackendError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A call to a VM's agent failed.
    #[error("agent call failed: {0}")]
    Agent(#[from] crate::client::ClientError),
    /// A VM's agent could not be reached.
    #[error("agent unreachable: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// The user's egress port could not be given or moved.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    /// The gateway could not serve a VM's egress.
    #[error(transparent)]
    Gateway(#[from] crate::egress::GatewayError),
    /// The vault could not seal or open a record.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// A delivery or push was refused: a stale version, a CLI VM that changed, a token chain
    /// another VM holds, or an envelope the VM's agent could not open. Nothing was written.
    #[error("refused: {0}")]
    Refused(String),
    /// The user-sealed mode needs the user's public key before a login.
    #[error("no public key is registered for this user: the page makes one")]
    NoUserKey,
    /// The session has no desktop to watch (its browser VM is not up, or is gone).
    #[error("session {0} has no desktop now")]
    NoDesktop(String),
    /// A step failed for a reason of its own.
    #[error("{0}")]
    Failed(String),
}

impl From<flow::FlowError> for LoginError {
    fn from(e: flow::FlowError) -> Self {
        use flow::FlowError as F;
        match e {
            F::Backend(e) => e.into(),
            F::Transport(e) => e.into(),
            F::Client(e) => e.into(),
            F::Store(e) => e.into(),
            F::Vault(e) => e.into(),
            F::Egress(e) => e.into(),
            F::Gateway(e) => e.into(),
            F::Login(reason) => LoginError::Failed(reason),
        }
    }
}

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) user: String,
    pub(crate) provider: ProviderLogin,
    /// How this login runs.
    pub(crate) mode: LoginMode,
    pub(crate) log: events::EventLog,
    pub(crate) cancel: watch::Sender<Option<String>>,
    pub(crate) state: Mutex<SessionState>,
    /// Keys for the login program's terminal, while it runs.
    input: Mutex<Option<FrameSender>>,
    /// The browser VM's agent, while the VM is up (its desktop is watched through it), and the
    /// VM's own desktop ICE settings when its backend gave it some.
    agent: Mutex<Option<BrowserAgent>>,
}

/// What a viewer of the login's desktop needs from its browser VM.
#[derive(Clone)]
pub(crate) struct BrowserAgent {
    pub(crate) client: crate::client::AgentClient,
    pub(crate) desktop: Option<protocol::desktop::IceSettings>,
}

impl Session {
    pub(crate) fn state(&self) -> SessionState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_input(&self, input: Option<FrameSender>) {
        *self.input.lock().unwrap_or_else(|p| p.into_inner()) = input;
    }

    fn input(&self) -> Option<FrameSender> {
        self.input.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_agent(&self, agent: Option<BrowserAgent>) {
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = agent;
    }

    fn agent(&self) -> Option<BrowserAgent> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn VmBackend>,
    pub(crate) store: Store,
    pub(crate) vault: Arc<Vault>,
    pub(crate) egress: EgressPorts,
    /// Carries the VMs' tunnels, when an upstream proxy is configured.
    pub(crate) gateway: Option<EgressGateway>,
    /// The CLI VMs' egress, served as long as the service runs: by user, the VM id and its binding.
    pub(crate) cli_egress: Mutex<HashMap<String, (String, EgressBinding)>>,
    pub(crate) config: LoginConfig,
    /// Refresh watches on the CLI VMs (see [`chain`]).
    pub(crate) followers: chain::Followers,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Inner {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs login sessions (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct LoginService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LoginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginService")
            .field("host", &self.inner.store.host_id())
            .finish()
    }
}

impl LoginService {
    /// A service creating VMs with `backend`, recording in `store`, sealing with `vault`, and
    /// routing VMs through the users' `egress` ports.
    pub fn new(
        backend: Arc<dyn VmBackend>,
        store: Store,
        vault: Arc<Vault>,
        egress: EgressPorts,
        config: LoginConfig,
    ) -> Self {
        let gateway = config
            .proxy
            .clone()
            .map(|proxy| EgressGateway::new(egress.clone(), proxy, config.egress_limits.clone()));
        Self {
            inner: Arc::new(Inner {
                backend,
                store,
                vault,
                egress,
                gateway,
                cli_egress: Mutex::new(HashMap::new()),
                config,
                followers: chain::Followers::default(),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The gateway carrying the VMs' egress (`None` without an upstream proxy): rotate a user's
    /// port through it ([`EgressGateway::rotate`]) so that open tunnels on the old port close.
    pub fn egress_gateway(&self) -> Option<&EgressGateway> {
        self.inner.gateway.as_ref()
    }

    /// Egress tunnels that were refused or failed upstream, from now on; `None` without an
    /// upstream proxy.
    pub fn egress_events(&self) -> Option<tokio::sync::broadcast::Receiver<EgressEvent>> {
        self.inner.gateway.as_ref().map(EgressGateway::subscribe)
    }

    /// Starts linking `provider` for `user` in the provider's default login mode and returns the
    /// session id at once, or the id of the session already active for this user and provider.
    pub async fn start(&self, user: &str, provider: &str) -> Result<String, LoginError> {
        self.start_in_mode(user, provider, None).await
    }

    /// [`LoginService::start`] in login mode `mode` (`browser`, `paste_code`, `device_code`: see
    /// the provider rules); `None` is the provider's default.
    pub async fn start_in_mode(
        &self,
        user: &str,
        provider: &str,
        mode: Option<&str>,
    ) -> Result<String, LoginError> {
        if user.trim().is_empty() {
            return Err(LoginError::InvalidUser);
        }
        let recipe = self
            .provider(provider)
            .cloned()
            .ok_or_else(|| LoginError::UnknownProvider(provider.to_owned()))?;
        if self.inner.config.sealing == Sealing::User && self.user_key(user).await?.is_none() {
            return Err(LoginError::NoUserKey);
        }
        let mode = recipe
            .mode(mode)
            .cloned()
            .ok_or_else(|| LoginError::UnknownMode {
                provider: provider.to_owned(),
                mode: mode.unwrap_or_default().to_owned(),
            })?;
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(Session {
            id: id.clone(),
            user: user.to_owned(),
            provider: recipe,
            mode,
            log: events::EventLog::new(),
            cancel: watch::channel(None).0,
            state: Mutex::new(SessionState::Pending),
            input: Mutex::new(None),
            agent: Mutex::new(None),
        });
        // Visible before the row exists, so a concurrent start that finds the row finds the session.
        self.inner.sessions().insert(id.clone(), session.clone());
        let timeout_ms =
            i64::try_from(self.inner.config.timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let new = NewSession {
            id: &id,
            user_id: user,
            provider,
            state: SessionState::Pending.as_str(),
            expires_at_ms: crate::store::now_ms() + timeout_ms,
        };
        match self.inner.store.insert_session(&new).await {
            Ok(SessionInsert::Created) => {}
            Ok(SessionInsert::Existing(row)) => {
                self.inner.sessions().remove(&id);
                return Ok(row.id);
            }
            Err(e) => {
                self.inner.sessions().remove(&id);
                return Err(e.into());
            }
        }
        session.log.push(LoginEventKind::State {
            state: SessionState::Pending,
            reason: None,
        });
        tracing::info!(session = %id, provider, "login session started");
        tokio::spawn(flow::drive(self.inner.clone(), session));
        Ok(id)
    }

    /// Events of a session from the first one, then live until it ends.
    pub async fn subscribe(&self, session_id: &str) -> Result<EventStream, LoginError> {
        if let Some(s) = self.inner.sessions().get(session_id) {
            return Ok(s.log.subscribe());
        }
        Err(self.not_here(session_id).await)
    }

    /// The session's current state.
    pub async fn state(&self, session_id: &str) -> Result<SessionState, LoginError> {
        if let Some(s) = self.inner.sessions().get(session_id) {
            return Ok(s.state());
        }
        match self.inner.store.session(session_id).await? {
            Some(row) => row
                .state
                .parse()
                .map_err(|e: UnknownState| StoreError::Corrupt(e.to_string()).into()),
            None => Err(LoginError::UnknownSession(session_id.to_owned())),
        }
    }

    /// Cancels a session in whatever state it is; everything it started is cleaned up before its
    /// `cancelled` event. Returns `false` when it had already ended.
    pub async fn cancel(&self, session_id: &str) -> Result<bool, LoginError> {
        let session = self.inner.sessions().get(session_id).cloned();
        let Some(session) = session else {
            return Err(self.not_here(session_id).await);
        };
        if session.state().is_terminal() {
            return Ok(false);
        }
        session
            .cancel
            .send_replace(Some("cancelled by request".into()));
        Ok(true)
    }

    /// Waits until the session ends and returns its final state and reason.
    pub async fn wait(
        &self,
        session_id: &str,
    ) -> Result<(SessionState, Option<String>), LoginError> {
        let mut events = self.subscribe(session_id).await?;
        let mut last = (SessionState::Pending, None);
        while let Some(ev) = events.next().await {
            if let LoginEventKind::State { state, reason } = ev.kind {
                last = (state, reason);
            }
        }
        Ok(last)
    }

    /// Types `code` and Enter into the login program's terminal: the code a provider shows after
    /// the user logged in, for CLIs that ask for it to be pasted (Claude Code, Gemini CLI). Only
    /// while the session awaits the user. The code is never logged.
    pub async fn submit_code(&self, session_id: &str, code: &str) -> Result<(), LoginError> {
        let session = self.inner.sessions().get(session_id).cloned();
        let Some(session) = session else {
            return Err(self.not_here(session_id).await);
        };
        let state = session.state();
        if state != SessionState::AwaitingUserAuth {
            return Err(LoginError::NotAwaitingUser {
                session: session_id.to_owned(),
                state,
            });
        }
        let input = session
            .input()
            .ok_or_else(|| LoginError::InputClosed(session_id.to_owned()))?;
        let mut keys = Vec::with_capacity(code.len() + 1);
        keys.extend_from_slice(code.trim_end_matches(['\r', '\n']).as_bytes());
        keys.push(b'\r');
        input
            .send(Frame::data(FrameKind::Stdin, Bytes::from(keys)))
            .await
            .map_err(|_| LoginError::InputClosed(session_id.to_owned()))
    }

    /// Destroys one of `user`'s VMs through the backend (the CLI VM when the user leaves, say) and
    /// records it like the flow does: the VM row leaves `active` and the audit log lists what the
    /// backend removed.
    pub async fn destroy_vm(
        &self,
        user: &str,
        vm_id: &str,
    ) -> Result<crate::vm::CleanupReport, LoginError> {
        flow::destroy_vm(&self.inner, user, vm_id).await
    }

    /// Retries every stored credential whose latest version has not reached its CLI VM. Returns how
    /// many were pushed now.
    pub async fn push_pending(&self) -> Result<usize, LoginError> {
        deliver::push_pending(&self.inner).await
    }

    async fn not_here(&self, session_id: &str) -> LoginError {
        match self.inner.store.session(session_id).await {
            Ok(Some(row)) if row.host_id != self.inner.store.host_id() => LoginError::OtherHost {
                session: row.id,
                host: row.host_id,
            },
            Ok(_) => LoginError::UnknownSession(session_id.to_owned()),
            Err(e) => e.into(),
        }
    }
}

/// Forgets a finished session after the retention time (weakly held: a dropped service lets go).
pub(crate) fn forget_later(inner: &Arc<Inner>, id: String) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let after = inner.config.retain_finished;
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some(inner) = weak.upgrade() {
            inner.sessions().remove(&id);
        }
    });
}
