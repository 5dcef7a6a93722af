//! `pty`: programs on real pseudo-terminals (portable-pty), many at once, with login-URL detection
//! ([`crate::detect`]), terminal-query answers and first-run auto-responses from the provider rules
//! the agent hands each new session.
//!
//! [`PtySessions`] is the agent's registry; [`serve`] is the `pty` call; [`session`] is one terminal.

pub mod answer;
pub mod device;
pub mod serve;
pub mod session;
pub mod terminal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::procset::{CgroupRoot, ProcessSet};

use crate::providers::ProviderRules;
pub use session::{PtyError, PtySession, SessionEvent, SpawnOptions};

/// Variable telling a PTY program (and the browser shim it may run) which session it is in.
pub const SESSION_ENV: &str = "AGENT_PTY_SESSION";

/// The agent's PTY sessions.
#[derive(Debug)]
pub struct PtySessions {
    sessions: Mutex<HashMap<String, Arc<PtySession>>>,
    /// Where each session gets a cgroup, when the agent can make them.
    cgroups: Option<CgroupRoot>,
}

impl PtySessions {
    /// An empty registry whose sessions each get a cgroup under `cgroups` (when given) besides
    /// their environment marker ([`crate::procset`]).
    pub fn new(cgroups: Option<CgroupRoot>) -> PtySessions {
        PtySessions {
            sessions: Mutex::new(HashMap::new()),
            cgroups,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session detecting URLs and answering prompts by `rules`, and registers it.
    pub fn spawn(
        &self,
        mut opts: SpawnOptions,
        rules: Arc<ProviderRules>,
    ) -> Result<Arc<PtySession>, PtyError> {
        // Unique across agents and unguessable: it also marks every process of the session.
        let id = format!("pty-{}", crate::system::random_hex(16));
        // Lets the browser shim say which session its URL belongs to, and marks every process
        // the session starts.
        opts.env.insert(SESSION_ENV.to_owned(), id.clone());
        let procs = ProcessSet::new(self.cgroups.as_ref(), &id, SESSION_ENV, &id);
        // Registered before the program can run its first instruction: a CLI that calls `$BROWSER`
        // at once must find its session (the shim's lookup waits for this lock).
        let mut map = self.map();
        let session = PtySession::spawn(id.clone(), opts, rules, procs)?;
        map.insert(id, session.clone());
        Ok(session)
    }

    /// The most recent session running a provider's login (what the browser VM's terminal shows).
    pub fn latest_login(&self) -> Option<Arc<PtySession>> {
        self.map()
            .values()
            .filter(|s| s.provider().is_some())
            .max_by_key(|s| s.started())
            .cloned()
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
