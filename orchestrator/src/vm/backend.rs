//! The [`VmBackend`] trait: what the login flow needs from whatever runs VMs (create, destroy, and
//! how to reach a VM's agent).

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::transport::{Connector, HelloListener};

/// What a VM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    /// Ephemeral desktop VM where the user logs a CLI in.
    Browser,
    /// Persistent VM where the CLIs run.
    Cli,
}

impl VmKind {
    /// Stable name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            VmKind::Browser => "browser",
            VmKind::Cli => "cli",
        }
    }
}

impl fmt::Display for VmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Owner.
    pub user_id: String,
    /// Browser (ephemeral) or CLI (persistent) VM.
    pub kind: VmKind,
    /// Login session the VM serves (browser VMs).
    pub session_id: Option<String>,
}

/// A VM the backend created or found, and how to reach its agent.
pub struct VmHandle {
    /// The backend's id of the VM.
    pub id: String,
    /// Opens streams to the VM's agent.
    pub connector: Arc<dyn Connector>,
    /// Where the agent says hello, bound before the VM started; `None` when the VM was already up
    /// (its hello came long ago).
    pub hello: Option<HelloListener>,
    /// Home directory of the guest user the CLIs run as (credential paths are relative to it).
    pub guest_home: String,
    /// Where the host accepts the VM's egress tunnels ([`crate::egress::EgressGateway::serve_vm`]):
    /// for hybrid vsock the socket its device connects to for the egress port; `None` when the
    /// VM has no way out.
    pub egress: Option<std::path::PathBuf>,
    /// How a viewer reaches this VM's desktop (its agent's ICE settings: the addresses and port
    /// of the VM's own media forward), when the backend gives it one; `None`: the host's
    /// settings apply.
    pub desktop: Option<protocol::desktop::IceSettings>,
    /// Whether this call created the VM (as opposed to finding it running).
    pub created: bool,
    /// How a created VM started (booted, restored from saved state, or booted because a
    /// restore failed).
    pub start: VmStart,
}

/// How a VM started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VmStart {
    /// Booted from its kernel (or found running).
    #[default]
    Booted,
    /// Cloned from a golden snapshot.
    Restored,
    /// Resumed from its own saved state (a paused CLI VM).
    Resumed,
    /// Booted from its kernel because starting it from saved state failed, for this reason.
    BootedAfterFailedRestore(String),
}

impl fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmHandle")
            .field("id", &self.id)
            .field("connector", &self.connector)
            .field("guest_home", &self.guest_home)
            .field("egress", &self.egress)
            .field("desktop", &self.desktop)
            .field("created", &self.created)
            .field("start", &self.start)
            .finish()
    }
}

/// What destroying a VM removed, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// One line per removed item (`process 1234`, `socket /run/vm/x.sock`, `disk ...`).
    pub removed: Vec<String>,
}

/// What a backend's own failure carries: its typed error, kept as the source.
pub type BackendCause = Box<dyn std::error::Error + Send + Sync>;

/// Why the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VM could not be created.
    #[error("creating the VM failed: {0}")]
    Create(#[source] BackendCause),
    /// The VM could not be (fully) destroyed.
    #[error("destroying VM {vm}: {source}")]
    Destroy {
        /// VM id.
        vm: String,
        /// What failed.
        #[source]
        source: BackendCause,
    },
    /// The VM could not be saved and stopped; it no longer runs (a paused VM is saved and then
    /// stopped, and a failed save stops it too).
    #[error("pausing VM {vm} failed, and it was stopped: {source}")]
    Pause {
        /// VM id.
        vm: String,
        /// What failed.
        #[source]
        source: BackendCause,
    },
    /// No such VM.
    #[error("unknown VM {0}")]
    UnknownVm(String),
}

/// What the host service provides to run VMs: the login flow creates browser VMs, makes sure CLI VMs
/// exist, and destroys what it created. Implementations must make `destroy_vm` remove everything
/// the VM had (processes, sockets, disks, devices) and say what in the report.
pub trait VmBackend: Send + Sync + 'static {
    /// Creates and starts a VM. The returned handle's hello listener is bound before the VM starts.
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>>;

    /// The user's persistent CLI VM, created if it does not exist.
    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>>;

    /// Destroys a VM and everything it had.
    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>>;

    /// Removes what VMs of a host process that is gone left behind (a crashed predecessor's VM
    /// directories, sockets, logs); returns what it removed. Called once at start
    /// ([`crate::login::LoginService::recover`]). Backends with nothing to sweep keep the default.
    fn sweep(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
