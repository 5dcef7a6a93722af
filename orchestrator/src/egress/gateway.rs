//! The host end of the VMs' egress tunnels: each VM's tunnels arrive on a socket of its own, so
//! the gateway knows whose they are without asking the guest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::egress::{
    join_target, linger, plain_request, read_message, split_target, write_message, TunnelKind,
    TunnelOpen, TunnelReply,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::allow::{Allow, AllowList, PatternError};
use super::upstream::{self, ProxyConfig, UpstreamError, UpstreamRequest};
use super::EgressPorts;
use crate::store::AuditEvent;

/// Bytes carried per read in each direction of a tunnel.
const COPY_BUFFER: usize = 32 * 1024;

/// Refusals audited per VM; past it they are still events and logs, but a guest that loops on
/// refused destinations cannot fill the audit log.
const MAX_AUDITED_REFUSALS: u32 = 100;

/// How much the VMs may ask of the gateway. Each open tunnel holds two of the host's descriptors
/// (the VM's socket and the upstream's): the host service raises its `RLIMIT_NOFILE` to match.
#[derive(Debug, Clone)]
pub struct EgressLimits {
    /// Tunnels of one VM open at once; more are answered 503.
    pub max_tunnels_per_vm: usize,
    /// Tunnels of all VMs open at once; more are answered 503.
    pub max_tunnels: usize,
    /// How long a new tunnel may take to say what it wants.
    pub open_timeout: Duration,
    /// How long the upstream may take to open the way.
    pub upstream_timeout: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        Self {
            max_tunnels_per_vm: 1024,
            max_tunnels: 8192,
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
    /// Slots for all VMs' tunnels.
    slots: Arc<Semaphore>,
    /// Per user, bumped when the user's port changes: open tunnels on the old port close.
    moves: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Inner {
    fn moved(&self, user: &str) -> watch::Receiver<u64> {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn move_user(&self, user: &str) {
        let moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = moves.get(user) {
            tx.send_modify(|n| *n += 1);
        }
    }
}

impl EgressGateway {
    /// A gateway to `proxy`, on the ports `ports` assigns.
    pub fn new(ports: EgressPorts, proxy: ProxyConfig, limits: EgressLimits) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                ports,
                proxy,
                slots: Arc::new(Semaphore::new(limits.max_tunnels)),
                limits,
                events,
                moves: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Moves `user` to another port ([`EgressPorts::rotate`]) and closes the user's open tunnels
    /// on the old one: from now on nothing of the user leaves through a port that may soon be
    /// another user's.
    pub async fn rotate(&self, user: &str) -> Result<u16, super::EgressError> {
        let port = self.inner.ports.rotate(user).await?;
        self.inner.move_user(user);
        Ok(port)
    }

    /// Gives the user's port back ([`EgressPorts::release`]) and closes the user's open tunnels.
    pub async fn release(&self, user: &str) -> Result<Option<u16>, super::EgressError> {
        let port = self.inner.ports.release(user).await?;
        self.inner.move_user(user);
        Ok(port)
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
        let slots = (
            vm.slots.clone().try_acquire_owned(),
            inner.slots.clone().try_acquire_owned(),
        );
        let (Ok(vm_slot), Ok(slot)) = slots else {
            // Over a limit: answered without a task of its own (a flood must not make the host
            // hold more), best effort, then closed.
            let reply = TunnelReply::refused(503, "too many tunnels");
            if let Ok(frame) = protocol::frame::Frame::message(&reply) {
                let _ = stream.try_write(&frame.encode());
            }
            let _ = inner.events.send(event(&vm, "", &reply));
            continue;
        };
        let inner = inner.clone();
        let vm = vm.clone();
        tokio::spawn(async move {
            serve_tunnel(&inner, &vm, stream).await;
            drop((vm_slot, slot));
        });
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
    // From here on only the normalised target is used: what was checked is what is asked for.
    let target = join_target(&host, port);
    if !vm.allow.allows(&host, port) {
        let reply = TunnelReply::refused(403, "destination not allowed for this VM");
        return refuse(inner, vm, stream, &target, reply, true).await;
    }
    let request = match (open.kind, open.head) {
        (TunnelKind::Connect, _) => UpstreamRequest::Connect(target.clone()),
        // A guest may skip the agent: the head is checked and rebuilt here, and must ask for
        // the very target the list allowed.
        (TunnelKind::Http, Some(head)) => match plain_request(head.as_bytes()) {
            Ok(plain) if plain.host == host && plain.port == port => {
                UpstreamRequest::Http(plain.head)
            }
            Ok(_) => {
                let reply = TunnelReply::refused(400, "request does not match its target");
                return refuse(inner, vm, stream, &target, reply, true).await;
            }
            Err(e) => {
                let reply = TunnelReply::refused(400, e.to_string());
                return refuse(inner, vm, stream, &target, reply, true).await;
            }
        },
        (TunnelKind::Http, None) => {
            let reply = TunnelReply::refused(400, "plain request without its head");
            return refuse(inner, vm, stream, &target, reply, false).await;
        }
    };
    // Subscribed before the lookup: a rotation from here on closes this tunnel.
    let mut moved = inner.moved(&vm.vm.user);
    // Looked up per tunnel: a rotation applies to the very next connection.
    let lookup = tokio::time::timeout(inner.limits.open_timeout, inner.ports.port_of(&vm.vm.user));
    let user_port = match lookup.await {
        Ok(Ok(Some(port))) => port,
        Ok(Ok(None)) => {
            let reply = TunnelReply::refused(502, "the VM's owner has no egress port");
            return refuse(inner, vm, stream, &target, reply, true).await;
        }
        Ok(Err(e)) => {
            warn!(vm = %vm.vm.vm_id, error = %e, "egress port lookup failed");
            let reply = TunnelReply::refused(502, "egress port lookup failed");
            return refuse(inner, vm, stream, &target, reply, false).await;
        }
        Err(_) => {
            warn!(vm = %vm.vm.vm_id, "egress port lookup timed out");
            let reply = TunnelReply::refused(504, "egress port lookup timed out");
            return refuse(inner, vm, stream, &target, reply, false).await;
        }
    };
    let mut upstream = match upstream::connect(
        &inner.proxy,
        user_port,
        &request,
        inner.limits.upstream_timeout,
    )
    .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            let reply = TunnelReply::refused(e.status(), reason_for_vm(&e));
            warn!(vm = %vm.vm.vm_id, %target, port = user_port, error = %e, "egress upstream failed");
            return refuse(inner, vm, stream, &target, reply, true).await;
        }
    };
    if write_message(&mut stream, &TunnelReply::open())
        .await
        .is_err()
    {
        return;
    }
    debug!(vm = %vm.vm.vm_id, %target, port = user_port, "egress tunnel open");
    let carried = tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    );
    tokio::select! {
        result = carried => match result {
            Ok((up, down)) => debug!(vm = %vm.vm.vm_id, up, down, "egress tunnel closed"),
            Err(e) => debug!(vm = %vm.vm.vm_id, error = %e, "egress tunnel ended"),
        },
        _ = moved.changed() => {
            debug!(vm = %vm.vm.vm_id, port = user_port, "egress port moved: tunnel closed");
        }
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

fn event(vm: &ServedVm, target: &str, reply: &TunnelReply) -> EgressEvent {
    EgressEvent {
        user: vm.vm.user.clone(),
        vm_id: vm.vm.vm_id.clone(),
        target: target.chars().take(300).collect(),
        status: reply.status,
        reason: reply.reason.clone(),
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
    let event = event(vm, target, &reply);
    if audit && vm.audited.fetch_add(1, Ordering::Relaxed) < MAX_AUDITED_REFUSALS {
        let entry = AuditEvent::EgressRefused {
            vm_id: event.vm_id.clone(),
            target: event.target.clone(),
            status: reply.status,
            reason: reply.reason.clone(),
        };
        let audited = inner.ports.store().audit(Some(&vm.vm.user), &entry);
        match tokio::time::timeout(inner.limits.open_timeout, audited).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "egress refusal not audited"),
            Err(_) => warn!("egress refusal not audited: the store timed out"),
        }
    }
    let _ = inner.events.send(event);
    let _ = write_message(&mut stream, &reply).await;
    linger(&mut stream).await;
}
