//! What the agent knows and what the host configured: one value shared by every connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use protocol::Hello;

use crate::config::{AgentConfig, ListenAddr};
use crate::providers::ProviderRules;

/// Capabilities every agent has, announced in the hello.
pub const CAPABILITIES: &[&str] = &["exec", "files", "configure", "stats", "creds", "pty"];

/// Announced as well when the agent was built with its desktop and has a display to stream.
pub const DESKTOP_CAPABILITY: &str = "desktop";

/// Agent-wide state. Not a global: created by [`crate::run`] and shared by reference count.
#[derive(Debug)]
pub struct Agent {
    started: Instant,
    /// Boot id, machine id and sealing key: replaced when a clone of a snapshot is restored.
    identity: RwLock<crate::restore::Identity>,
    listen_port: Option<u32>,
    configured: RwLock<Configured>,
    running: AtomicU32,
    under_init: bool,
    pty: Arc<crate::pty::PtySessions>,
    /// The egress proxy every started program is pointed at, when the agent runs one.
    egress_proxy: Option<std::net::SocketAddr>,
    /// The image's display, given to what the agent starts (gemini opens its browser only when
    /// it sees one).
    display: Option<String>,
    /// Built on first use: compiling the rules' patterns is most of the agent's start-up work
    /// under emulation, and the hello must not wait (the agent warms them up once it is out).
    providers: OnceLock<Arc<ProviderRules>>,
    shim: Option<crate::shim::ShimServer>,
    /// The last sealed version written per (home, provider): an older one is a replay.
    sealed_versions: std::sync::Mutex<BTreeMap<(std::path::PathBuf, String), i64>>,
    /// Request body bytes held at once, all calls together.
    body_budget: crate::rpc::body::BodyBudget,
    /// Whom programs run as.
    users: crate::users::Users,
    #[cfg(feature = "desktop")]
    desktops: Arc<agent_desktop::Desktops>,
    /// The browser VM's Chromium, when the image has one.
    #[cfg(feature = "desktop")]
    browser: Option<Arc<crate::browser::Browser>>,
}

/// Environment and session set by the host with `configure`.
#[derive(Debug, Default, Clone)]
pub struct Configured {
    /// Variables for every spawned process.
    pub env: protocol::secret::EnvVars,
    /// The login session this VM serves.
    pub session_id: Option<String>,
}

impl Agent {
    /// New state for an agent started now.
    pub fn new(config: &AgentConfig) -> Self {
        let listen_port = config.listen.iter().find_map(|l| match l {
            ListenAddr::Vsock(port) => Some(*port),
            ListenAddr::Unix(_) => None,
        });
        Self {
            started: config.started_at.unwrap_or_else(Instant::now),
            identity: RwLock::new(crate::restore::Identity::at_start(config.under_init)),
            listen_port,
            configured: RwLock::new(Configured::default()),
            running: AtomicU32::new(0),
            under_init: config.under_init,
            display: config.display.clone(),
            egress_proxy: None,
            pty: Arc::new(crate::pty::PtySessions::new(
                crate::procset::CgroupRoot::create(),
            )),
            providers: OnceLock::new(),
            shim: None,
            sealed_versions: std::sync::Mutex::default(),
            body_budget: crate::rpc::body::BodyBudget::new(),
            users: crate::users::Users::new(config.user.clone()),
            #[cfg(feature = "desktop")]
            desktops: Arc::new(agent_desktop::Desktops::new(config.display.clone())),
            #[cfg(feature = "desktop")]
            browser: None,
        }
    }

    /// Points every program the agent starts at the egress proxy listening on `addr`.
    pub fn with_egress_proxy(mut self, addr: std::net::SocketAddr) -> Self {
        self.egress_proxy = Some(addr);
        self
    }

    /// The PTY sessions.
    pub fn pty(&self) -> &Arc<crate::pty::PtySessions> {
        &self.pty
    }

    /// Starts the `$BROWSER`/`xdg-open` shim listener (see [`crate::shim`]); without it spawned PTY
    /// programs get no shim.
    pub fn with_shim(mut self, shim: crate::shim::ShimServer) -> Self {
        self.shim = Some(shim);
        self
    }

    /// The shim listener, when it started.
    pub fn shim(&self) -> Option<&crate::shim::ShimServer> {
        self.shim.as_ref()
    }

    /// Adds the shim's variables to a PTY program's environment: `BROWSER`, `PATH` (so `xdg-open`
    /// resolves to the shim) and the socket to report to.
    pub fn pty_shim_env(&self, env: &mut BTreeMap<String, String>) {
        if let Some(shim) = &self.shim {
            shim.program_env(env);
        }
    }

    /// The provider rules (login flows, URL patterns, credential files), one set for PTY
    /// sessions and credentials: compiled in, or the file named by
    /// [`RULES_ENV`](crate::providers::RULES_ENV). Built now if this is their first use.
    pub fn providers(&self) -> Arc<ProviderRules> {
        self.providers
            .get_or_init(|| Arc::new(ProviderRules::from_env()))
            .clone()
    }

    /// The budget every call's request body is read within.
    pub fn body_budget(&self) -> &crate::rpc::body::BodyBudget {
        &self.body_budget
    }

    /// The key credentials are sealed to for this VM (`creds_key`), kept in memory only; `None`
    /// when the random source failed.
    pub fn seal_key(&self) -> Option<Arc<protocol::sealed::KeyPair>> {
        self.identity().seal_key.clone()
    }

    /// Who this VM is now.
    pub fn identity(&self) -> std::sync::RwLockReadGuard<'_, crate::restore::Identity> {
        self.identity
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces who this VM is (a clone restored from a snapshot).
    pub fn set_identity(&self, identity: crate::restore::Identity) {
        *self
            .identity
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = identity;
    }

    /// Records that sealed `version` of `provider` was written in `home`, unless a later one was
    /// already: then returns that later version and records nothing.
    pub fn claim_sealed_version(
        &self,
        home: &std::path::Path,
        provider: &str,
        version: i64,
    ) -> Result<(), i64> {
        let mut seen = self
            .sealed_versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = seen
            .entry((home.to_path_buf(), provider.to_owned()))
            .or_insert(0);
        if version < *slot {
            return Err(*slot);
        }
        *slot = version;
        Ok(())
    }

    /// Whether this agent runs under its own PID 1 and may power the VM off.
    pub fn under_init(&self) -> bool {
        self.under_init
    }

    /// The displays being watched (`desktop` calls).
    #[cfg(feature = "desktop")]
    pub fn desktops(&self) -> Arc<agent_desktop::Desktops> {
        self.desktops.clone()
    }

    /// Drives `browser` (the image's Chromium).
    #[cfg(feature = "desktop")]
    pub fn with_browser(mut self, browser: Arc<crate::browser::Browser>) -> Self {
        self.browser = Some(browser);
        self
    }

    /// The browser the agent drives, if any.
    #[cfg(feature = "desktop")]
    pub fn browser(&self) -> Option<Arc<crate::browser::Browser>> {
        self.browser.clone()
    }

    /// Opens a URL a login session of `provider` handed to the browser, if the agent drives one
    /// and the URL is that provider's login URL; any other URL is never opened.
    pub fn open_login_url(&self, provider: &str, url: &str) {
        #[cfg(feature = "desktop")]
        if let Some(browser) = &self.browser {
            if self.providers().classify(url) == Some(provider) {
                browser.open(url.to_owned(), provider.to_owned());
            } else {
                tracing::warn!(
                    provider,
                    "a URL that is not the provider's login URL was not opened"
                );
            }
        }
        #[cfg(not(feature = "desktop"))]
        let _ = (provider, url);
    }

    /// The browser's state, if the agent drives one.
    pub async fn browser_state(&self) -> Option<protocol::browser::BrowserState> {
        #[cfg(feature = "desktop")]
        if let Some(browser) = &self.browser {
            return Some(browser.state().await);
        }
        None
    }

    /// What each watched display costs (none without the desktop feature).
    pub fn desktop_stats(&self) -> Vec<protocol::desktop::DesktopStats> {
        #[cfg(feature = "desktop")]
        return self.desktops.stats();
        #[cfg(not(feature = "desktop"))]
        Vec::new()
    }

    /// Whether this agent streams a desktop: built with it and given a display.
    pub fn has_desktop(&self) -> bool {
        #[cfg(feature = "desktop")]
        return self.desktops.default_display().is_some();
        #[cfg(not(feature = "desktop"))]
        false
    }

    /// Milliseconds since start.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The greeting, as sent to the host.
    pub fn hello(&self) -> Hello {
        let identity = self.identity();
        Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: protocol::PROTOCOL_VERSION,
            capabilities: CAPABILITIES
                .iter()
                .copied()
                .chain(self.has_desktop().then_some(DESKTOP_CAPABILITY))
                .map(str::to_owned)
                .collect(),
            boot_id: identity.boot_id.clone(),
            machine_id: identity.machine_id.clone(),
            start_to_hello_ms: self.uptime_ms(),
            listen_port: self.listen_port,
        }
    }

    /// A snapshot of the configured environment and session.
    pub fn configured(&self) -> Configured {
        self.configured
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Applies a `configure` request and returns the result.
    pub fn configure(&self, req: protocol::messages::ConfigureRequest) -> Configured {
        let mut guard = self
            .configured
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if req.replace {
            guard.env = Default::default();
        }
        for name in &req.unset {
            guard.env.0.remove(name);
        }
        guard.env.0.extend(req.env.0);
        if req.session_id.is_some() {
            guard.session_id = req.session_id;
        }
        guard.clone()
    }

    /// Whom programs run as.
    pub fn users(&self) -> &crate::users::Users {
        &self.users
    }

    /// The environment for a new process running as `run_as` (`None`: as the agent): the
    /// agent's own (with its display and its egress proxy), that user's `HOME`, `USER` and
    /// `LOGNAME`, then the configured environment, then `extra`.
    pub fn process_env(
        &self,
        extra: &protocol::secret::EnvVars,
        run_as: Option<&crate::users::RunAs>,
    ) -> BTreeMap<String, String> {
        let configured = self.configured();
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        if let Some(display) = &self.display {
            env.entry("DISPLAY".into())
                .or_insert_with(|| display.clone());
        }
        if let Some(proxy) = self.egress_proxy {
            env.extend(crate::egress::proxy_env(proxy).map(|(k, v)| (k.to_owned(), v)));
        }
        if let Some(user) = run_as {
            env.extend(user.env().map(|(k, v)| (k.to_owned(), v)));
        }
        env.extend(configured.env.0);
        if let Some(id) = configured.session_id {
            env.insert("AGENT_SESSION_ID".into(), id);
        }
        env.extend(extra.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Counts a process as running until the guard drops.
    pub fn track_process(&self) -> RunningGuard<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard(&self.running)
    }

    /// Processes currently running on behalf of the host.
    pub fn running_processes(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }
}

/// Decrements the running-process count on drop.
#[derive(Debug)]
pub struct RunningGuard<'a>(&'a AtomicU32);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
