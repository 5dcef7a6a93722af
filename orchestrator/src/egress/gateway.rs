//! The host end of the VMs' egress tunnels: each VM's tunnels arrive on a socket of its own, so
//! the gateway knows whose they are without asking the guest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::egress::{read_message, split_target, write_message, TunnelOpen, TunnelReply};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::allow::{Allow, AllowList, PatternError};
use super::upstream::{self, ProxyConfig, UpstreamError};
use super::EgressPorts;
use crate::store::AuditEvent;

/// Bytes carried per read in each direction of a tunnel.
const COPY_BUFFER: usize = 32 * 1024;

/// Refusals audited per VM; past it they are still events and logs, but a guest that loops on
/// refused destinations cannot fill the audit log.
const MAX_AUDITED_REFUSALS: u32 = 100;

/// How much a VM may ask of the gateway.
#[derive(Debug, Clone)]
pub struct EgressLimits {
    /// Tunnels of one VM open at once; more are answered 503.
    pub max_tunnels_per_vm: usize,
    /// How long a new tunnel may take to say what it wants.
    pub open_timeout: Duration,
    /// How long the upstream may take to open the way.
    pub upstream_timeout: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        Self {
            max_tunnels_per_vm: 4096,
            open_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(30),
        }
    }
}

/// Whose a VM is and where it may go.
#[derive(Debug, Clone)]
pub struct EgressVm {
    /// The owner: the tunnels leave through this user's port.
    pub user: String,
    /// The VM, for events and the audit log.
    pub vm_id: String,
    /// Where it may go.
    pub allow: AllowList,
}

/// What happened to a tunnel that did not go through, for the host service to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    /// The VM's owner.
    pub user: String,
    /// The VM.
    pub vm_id: String,
    /// `host:port` it asked for (as the guest sent it, cut to 300 characters).
    pub target: String,
    /// The status the client in the VM got.
    pub status: u16,
    /// Why (never a credential).
    pub reason: String,
}

/// Why a VM's tunnels could not be served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The VM's allow-list has a bad entry.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The VM's socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Carries VMs' tunnels to their owners' upstream ports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EgressGateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ports: EgressPorts,
    proxy: ProxyConfig,
    limits: EgressLimits,
    events: broadcast::Sender<EgressEvent>,
}

impl EgressGateway {
    /// A gateway to `proxy`, on the ports `ports` assigns.
    pub fn new(ports: EgressPorts, proxy: ProxyConfig, limits: EgressLimits) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                ports,
                proxy,
                limits,
                events,
            }),
        }
    }

    /// Refused and failed tunnels, from now on (a slow reader misses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<EgressEvent> {
        self.inner.events.subscribe()
    }

    /// Serves `vm`'s tunnels arriving at `path` (for hybrid vsock, the socket
    /// `<uds_path>_<egress port>` the VM's vsock device connects to) until the binding drops.
    pub fn serve_vm(&self, path: &Path, vm: EgressVm) -> Result<EgressBinding, GatewayError> {
        let allow = vm.allow.compile()?;
        let bind = |source| GatewayError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        let served = Arc::new(ServedVm {
            vm,
            allow,
            slots: Arc::new(Semaphore::new(self.inner.limits.max_tunnels_per_vm)),
            audited: AtomicU32::new(0),
        });
        let task = tokio::spawn(accept(self.inner.clone(), listener, served));
        Ok(EgressBinding {
            path: path.to_path_buf(),
            task,
        })
    }
}

/// A VM's tunnels being served; dropping it stops accepting new ones and removes the socket
/// (tunnels already open run to their end).
#[derive(Debug)]
pub struct EgressBinding {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl EgressBinding {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EgressBinding {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
struct ServedVm {
    vm: EgressVm,
    allow: Allow,
    slots: Arc<Semaphore>,
    audited: AtomicU32,
}

async fn accept(inner: Arc<Inner>, listener: UnixListener, vm: Arc<ServedVm>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors and similar: the tunnels we have go on.
            Err(e) => {
                warn!(vm = %vm.vm.vm_id, error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        let vm = vm.clone();
        match vm.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    serve_tunnel(&inner, &vm, stream).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let reply = TunnelReply::refused(503, "too many tunnels from this VM");
                    refuse(&inner, &vm, stream, "", reply, false).await;
                });
            }
        }
    }
}

async fn serve_tunnel(inner: &Inner, vm: &ServedVm, mut stream: UnixStream) {
    let open: TunnelOpen =
        match tokio::time::timeout(inner.limits.open_timeout, read_message(&mut stream)).await {
            Ok(Ok(open)) => open,
            Ok(Err(e)) => {
                debug!(vm = %vm.vm.vm_id, error = %e, "bad tunnel opening");
                let reply = TunnelReply::refused(400, "malformed tunnel opening");
                return refuse(inner, vm, stream, "", reply, false).await;
            }
            Err(_) => return,
        };
    let Ok((host, port)) = split_target(&open.target) else {
        let reply = TunnelReply::refused(400, "bad target: expected host:port");
        return refuse(inner, vm, stream, &open.target, reply, false).await;
    };
    if !vm.allow.allows(&host, port) {
        let reply = TunnelReply::refused(403, "destination not allowed for this VM");
        return refuse(inner, vm, stream, &open.target, reply, true).await;
    }
    // Looked up per tunnel: a rotation applies to the very next connection.
    let user_port = match inner.ports.port_of(&vm.vm.user).await {
        Ok(Some(port)) => port,
        Ok(None) => {
            let reply = TunnelReply::refused(502, "the VM's owner has no egress port");
            return refuse(inner, vm, stream, &open.target, reply, true).await;
        }
        Err(e) => {
            warn!(vm = %vm.vm.vm_id, error = %e, "egress port lookup failed");
            let reply = TunnelReply::refused(502, "egress port lookup failed");
            return refuse(inner, vm, stream, &open.target, reply, false).await;
        }
    };
    let mut upstream = match upstream::connect(
        &inner.proxy,
        user_port,
        &open,
        inner.limits.upstream_timeout,
    )
    .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            let reply = TunnelReply::refused(e.status(), reason_for_vm(&e));
            warn!(vm = %vm.vm.vm_id, target = %open.target, port = user_port, error = %e, "egress upstream failed");
            return refuse(inner, vm, stream, &open.target, reply, true).await;
        }
    };
    if write_message(&mut stream, &TunnelReply::open())
        .await
        .is_err()
    {
        return;
    }
    debug!(vm = %vm.vm.vm_id, target = %open.target, port = user_port, "egress tunnel open");
    match tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await
    {
        Ok((up, down)) => debug!(vm = %vm.vm.vm_id, up, down, "egress tunnel closed"),
        Err(e) => debug!(vm = %vm.vm.vm_id, error = %e, "egress tunnel ended"),
    }
}

/// What the VM's client is told: the upstream's refusal as it is; the host's own failures
/// without the upstream's address.
fn reason_for_vm(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Refused { reason, .. } => format!("upstream proxy: {reason}"),
        UpstreamError::Unreachable { .. } => "upstream proxy unreachable".into(),
        UpstreamError::Timeout(_) => "upstream proxy did not answer in time".into(),
        UpstreamError::Garbage(_) => "upstream proxy answered garbage".into(),
    }
}

/// Answers a tunnel with a refusal, tells subscribers, and audits it when `audit` (bounded per VM).
async fn refuse(
    inner: &Inner,
    vm: &ServedVm,
    mut stream: UnixStream,
    target: &str,
    reply: TunnelReply,
    audit: bool,
) {
    let target: String = target.chars().take(300).collect();
    let event = EgressEvent {
        user: vm.vm.user.clone(),
        vm_id: vm.vm.vm_id.clone(),
        target: target.clone(),
        status: reply.status,
        reason: reply.reason.clone(),
    };
    let _ = inner.events.send(event);
    if audit && vm.audited.fetch_add(1, Ordering::Relaxed) < MAX_AUDITED_REFUSALS {
        let entry = AuditEvent::EgressRefused {
            vm_id: vm.vm.vm_id.clone(),
            target,
            status: reply.status,
            reason: reply.reason.clone(),
        };
        if let Err(e) = inner.ports.store().audit(Some(&vm.vm.user), &entry).await {
            warn!(error = %e, "egress refusal not audited");
        }
    }
    let _ = write_message(&mut stream, &reply).await;
    linger(stream).await;
}

/// Closes a refused tunnel so its refusal arrives: a socket closed with unread input is reset,
/// and a reset can overtake the reply. Reads (and drops) what the guest still sends, briefly.
async fn linger(mut stream: UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
