//! Stopping cleanly when the agent runs as an ordinary process (tests, a developer's machine): on
//! SIGTERM or SIGINT it kills its PTY programs' process groups and removes the browser shim's
//! directory before exiting. As a VM's PID 1 the agent never exits this way (init owns shutdown).

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::info;

use crate::state::Agent;

/// The stop signals, registered early so none is missed while the agent starts.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Registers for SIGTERM and SIGINT (replacing their default action of killing the process).
    pub fn register() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for one; returns its name.
    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Undoes what the agent left on the machine: PTY programs and the shim directory.
pub fn clean_up(agent: &Agent) {
    agent.pty().kill_all();
    if let Some(shim) = agent.shim() {
        shim.remove();
    }
    info!("agent stopped");
}
