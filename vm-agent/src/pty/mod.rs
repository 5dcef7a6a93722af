//! `pty`: programs on real pseudo-terminals (portable-pty), many at once, with login-URL detection
//! ([`crate::detect`]), terminal-query answers and first-run auto-responses from the provider rules.
//!
//! [`PtySessions`] is the agent's registry; [`serve`] is the `pty` call; [`session`] is one terminal.

pub mod serve;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::providers::ProviderRules;
pub use session::{PtyError, PtySession, SessionEvent, SpawnOptions};

pub use crate::providers::RULES_ENV;

/// The agent's PTY sessions and the provider rules they use.
#[derive(Debug)]
pub struct PtySessions {
    sessions: Mutex<HashMap<String, Arc<PtySession>>>,
    /// `None` until first use for a registry made by [`PtySessions::from_env`]: compiling the rules'
    /// patterns is most of the agent's start-up work under emulation, and the hello must not wait.
    rules: RwLock<Option<Arc<ProviderRules>>>,
    next: AtomicU64,
}

impl Default for PtySessions {
    fn default() -> Self {
        PtySessions::new(Arc::new(ProviderRules::builtin()))
    }
}

impl PtySessions {
    /// A registry using `rules`.
    pub fn new(rules: Arc<ProviderRules>) -> PtySessions {
        PtySessions {
            sessions: Mutex::new(HashMap::new()),
            rules: RwLock::new(Some(rules)),
            next: AtomicU64::new(1),
        }
    }

    /// A registry using the compiled-in rules, or the file named by [`RULES_ENV`] when set, built
    /// on first use ([`PtySessions::rules`]; the agent warms them up once its hello is out).
    pub fn from_env() -> PtySessions {
        PtySessions {
            sessions: Mutex::new(HashMap::new()),
            rules: RwLock::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// The rules in force (built now if this is their first use).
    pub fn rules(&self) -> Arc<ProviderRules> {
        if let Some(rules) = self
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return rules.clone();
        }
        let mut slot = self.rules.write().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| Arc::new(ProviderRules::from_env()))
            .clone()
    }

    /// Replaces the rules for sessions started from now on.
    pub fn set_rules(&self, rules: Arc<ProviderRules>) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Some(rules);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session and registers it.
    pub fn spawn(&self, mut opts: SpawnOptions) -> Result<Arc<PtySession>, PtyError> {
        let id = format!("pty-{}", self.next.fetch_add(1, Ordering::Relaxed));
        // Lets the browser shim say which session its URL belongs to.
        opts.env
            .insert(crate::shim::SESSION_ENV.to_owned(), id.clone());
        let rules = self.rules();
        // Registered before the program can run its first instruction: a CLI that calls `$BROWSER`
        // at once must find its session (the shim's lookup waits for this lock).
        let mut map = self.map();
        let session = PtySession::spawn(id.clone(), opts, rules)?;
        map.insert(id, session.clone());
        Ok(session)
    }

    /// The session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<PtySession>> {
        self.map().get(id).cloned()
    }

    /// Forgets a session (after it ended or was closed).
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Kills every session's process group (the agent is stopping: no program outlives it).
    pub fn kill_all(&self) {
        for session in self.map().values() {
            session.kill_all();
        }
    }

    /// Sessions currently registered.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
