//! [`VmBackend`] over [`QemuLauncher`]: browser VMs come and go per login; each user has one CLI VM
//! that stays until the host destroys it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::{info, warn};

use super::backend::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec, VmStart};
use super::qemu::{PausedVm, QemuLauncher, QemuVm, Snapshot, UdpForward, UserNetwork, VmError};
use crate::client::AgentClient;
use protocol::desktop::IceSettings;

struct Running {
    user: String,
    kind: VmKind,
    vm: QemuVm,
    /// The host port of its desktop's UDP forward.
    desktop_port: Option<u16>,
    /// When the host last asked for it ([`VmBackend::ensure_cli_vm`]); what
    /// [`QemuVmBackend::pause_idle_cli`] measures idleness by.
    last_used: std::time::Instant,
}

/// How long [`QemuVmBackend::pause_idle_cli`] waits for a CLI VM's agent to say what it runs.
const IDLE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The golden snapshot browser VMs are cloned from: opened (or made) on first use.
struct BrowserSnapshots {
    dir: PathBuf,
    /// `Ok` once opened or made; `Err` with the reason when making it failed (not retried by
    /// this backend: every login would pay a failed boot).
    current: tokio::sync::Mutex<Option<Result<Snapshot, String>>>,
}

/// Where browser VMs' desktops are forwarded: each VM gets one UDP port of the range, the same
/// number on the host address and in the guest.
#[derive(Debug, Clone, Copy)]
struct DesktopForwards {
    host: IpAddr,
    first: u16,
    last: u16,
}

/// QEMU microVMs as a [`VmBackend`] (see the module docs).
pub struct QemuVmBackend {
    /// Boots the browser VMs.
    browser: QemuLauncher,
    /// Boots the CLI VMs.
    cli: QemuLauncher,
    /// Where each user's CLI VM keeps its disk between a stop and the next start, when the CLI
    /// launcher boots from a golden image.
    cli_disks: Option<PathBuf>,
    guest_home: String,
    vms: Mutex<HashMap<String, Running>>,
    /// Serialises `ensure_cli_vm`, so two logins of one user never boot two CLI VMs.
    cli_lock: tokio::sync::Mutex<()>,
    /// Browser VMs' desktop forwards, when set.
    desktop: Option<DesktopForwards>,
    /// Forward ports given to VMs, from the moment one is chosen (before the VM boots) until it
    /// is destroyed.
    desktop_ports: Mutex<std::collections::HashSet<u16>>,
    /// Browser VMs start from a snapshot, when set.
    snapshots: Option<BrowserSnapshots>,
    /// CLI VMs saved to disk and stopped, by user.
    paused: Mutex<HashMap<String, PausedVm>>,
}

impl std::fmt::Debug for QemuVmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVmBackend")
            .field("vms", &self.vm_ids())
            .finish()
    }
}

/// The home of the unprivileged user the CLIs and every program of the agent run as in every
/// image this project builds (`rootfs/common/setup.sh`, the test images).
pub const GUEST_HOME: &str = "/home/user";

impl QemuVmBackend {
    /// VMs booted by `qemu`, whose CLIs run as the guest user with home `guest_home`
    /// ([`GUEST_HOME`] in every image this project builds).
    pub fn new(qemu: QemuLauncher, guest_home: impl Into<String>) -> Self {
        Self {
            browser: qemu.clone(),
            cli: qemu,
            cli_disks: None,
            guest_home: guest_home.into(),
            vms: Mutex::new(HashMap::new()),
            cli_lock: tokio::sync::Mutex::new(()),
            desktop: None,
            desktop_ports: Mutex::new(std::collections::HashSet::new()),
            snapshots: None,
            paused: Mutex::new(HashMap::new()),
        }
    }

    /// Browser VMs from `browser` (the browser image: each on an overlay of its own, gone when it
    /// is destroyed), CLI VMs from `cli` (the CLI image) on a disk per user under `cli_disks`,
    /// kept when the VM is stopped ([`QemuVmBackend::stop_vm`]) and removed when it is
    /// destroyed.
    pub fn with_images(
        browser: QemuLauncher,
        cli: QemuLauncher,
        cli_disks: impl Into<PathBuf>,
        guest_home: impl Into<String>,
    ) -> Self {
        Self {
            browser,
            cli,
            cli_disks: Some(cli_disks.into()),
            guest_home: guest_home.into(),
            vms: Mutex::new(HashMap::new()),
            cli_lock: tokio::sync::Mutex::new(()),
            desktop: None,
            desktop_ports: Mutex::new(std::collections::HashSet::new()),
            snapshots: None,
            paused: Mutex::new(HashMap::new()),
        }
    }

    /// Gives every browser VM a network card whose UDP port `p` (one of `first..=last`, free on
    /// `host`) is forwarded from `host:p` to the guest's `p`, brings the guest's side up through
    /// its agent, and tells viewers to reach its desktop there ([`VmHandle::desktop`]): the shape
    /// of a gateway's per-VM media forward. `host` is the address viewers reach (loopback on a
    /// developer's machine).
    pub fn with_desktop_forwards(mut self, host: IpAddr, first: u16, last: u16) -> Self {
        self.desktop = Some(DesktopForwards { host, first, last });
        self
    }

    /// Starts every browser VM from the golden snapshot in `dir` instead of booting it: the
    /// snapshot is opened on first use, or made then (one boot until the browser is ready) when
    /// it is missing or was made with another QEMU, command line or image. A VM whose restore
    /// fails boots instead, and its handle says why ([`VmStart::BootedAfterFailedRestore`]).
    pub fn with_browser_snapshot(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshots = Some(BrowserSnapshots {
            dir: dir.into(),
            current: tokio::sync::Mutex::new(None),
        });
        self
    }

    /// The network card browser VMs get (forwards aside), which a snapshot must have too.
    fn browser_network_shape(&self) -> Option<UserNetwork> {
        self.desktop.map(|_| UserNetwork::default())
    }

    /// The golden snapshot, opened or made now if need be (see
    /// [`QemuVmBackend::with_browser_snapshot`]); `None` without snapshots.
    pub async fn browser_snapshot(&self) -> Option<Result<Snapshot, String>> {
        let snapshots = self.snapshots.as_ref()?;
        let mut current = snapshots.current.lock().await;
        if let Some(known) = &*current {
            return Some(known.clone());
        }
        let shape = self.browser_network_shape();
        let opened = match self
            .browser
            .open_snapshot(&snapshots.dir, shape.as_ref())
            .await
        {
            Ok(snapshot) => Ok(snapshot),
            Err(why) => {
                info!(dir = %snapshots.dir.display(), reason = %why, "making the browser snapshot");
                let timeout = self.browser.config().hello_timeout;
                let network = shape.is_some();
                self.browser
                    .make_snapshot(&snapshots.dir, shape, |connector| async move {
                        ready_for_snapshot(connector, network, timeout).await
                    })
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = &opened {
            warn!(error = %e, "no browser snapshot: browser VMs boot");
        }
        *current = Some(opened.clone());
        Some(opened)
    }

    /// A browser VM: restored from the snapshot when there is one, booted otherwise.
    async fn browser_vm(
        &self,
        id: &str,
        network: Option<UserNetwork>,
    ) -> (Result<QemuVm, VmError>, VmStart) {
        let failed = match self.browser_snapshot().await {
            None => None,
            Some(Ok(snapshot)) => {
                match self.browser.restore(id, &snapshot, network.clone()).await {
                    Ok(vm) => return (Ok(vm), VmStart::Restored),
                    Err(e) => {
                        warn!(vm = %id, error = %e, "restore failed: booting instead");
                        Some(format!("restoring from the snapshot failed: {e}"))
                    }
                }
            }
            Some(Err(e)) => Some(format!("no snapshot: {e}")),
        };
        let booted = match network {
            Some(network) => self.browser.create_with_network(id, network).await,
            None => self.browser.create(id).await,
        };
        let start = failed.map_or(VmStart::Booted, VmStart::BootedAfterFailedRestore);
        (booted, start)
    }

    /// Saves `user`'s running CLI VM to disk and stops it: it costs no memory until the next
    /// [`VmBackend::ensure_cli_vm`] resumes it with its processes and files as they were. Returns
    /// the bytes saved, `None` when the user has no running CLI VM on a disk of its own.
    pub async fn pause_cli(&self, user: &str) -> Result<Option<u64>, BackendError> {
        let _one_at_a_time = self.cli_lock.lock().await;
        self.pause_cli_locked(user).await
    }

    /// [`Self::pause_cli`] with `cli_lock` held.
    async fn pause_cli_locked(&self, user: &str) -> Result<Option<u64>, BackendError> {
        let Some(dir) = self.cli_disk(user).map(|d| d.with_extension("paused")) else {
            return Ok(None);
        };
        let running = {
            let mut vms = self.lock();
            let id = vms
                .iter()
                .find(|(_, r)| r.kind == VmKind::Cli && r.user == user)
                .map(|(id, _)| id.clone());
            id.and_then(|id| vms.remove(&id).map(|r| (id, r)))
        };
        let Some((id, running)) = running else {
            return Ok(None);
        };
        // A failed save leaves no VM: `pause` consumed it, and its processes went with it.
        let paused = running
            .vm
            .pause(&dir)
            .await
            .map_err(|e| BackendError::Pause {
                vm: id.clone(),
                source: e.into(),
            })?;
        let bytes = paused.state_bytes();
        info!(vm = %id, %user, bytes, "CLI VM paused");
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), paused);
        Ok(Some(bytes))
    }

    /// Pauses every CLI VM the host has not asked for ([`VmBackend::ensure_cli_vm`]) in `idle`
    /// and whose agent runs nothing (no exec, no PTY session): an idle user's VM then costs no
    /// memory, and the next `ensure_cli_vm` resumes it as it was. A VM whose agent does not
    /// answer within [`IDLE_CHECK_TIMEOUT`] is left running. Returns the users whose VMs were
    /// paused.
    pub async fn pause_idle_cli(&self, idle: std::time::Duration) -> Vec<String> {
        let candidates: Vec<String> = self
            .lock()
            .values()
            .filter(|r| r.kind == VmKind::Cli && r.last_used.elapsed() >= idle)
            .map(|r| r.user.clone())
            .collect();
        let mut paused = Vec::new();
        for user in candidates {
            // Checked and paused under the lock `ensure_cli_vm` holds: a VM handed out meanwhile
            // is not paused, nor one whose agent started a program since.
            let _one_at_a_time = self.cli_lock.lock().await;
            let connector = self
                .lock()
                .values()
                .find(|r| r.kind == VmKind::Cli && r.user == user && r.last_used.elapsed() >= idle)
                .map(|r| r.vm.connector());
            let Some(connector) = connector else {
                continue;
            };
            let running = tokio::time::timeout(IDLE_CHECK_TIMEOUT, async {
                let client = AgentClient::connect(&connector).await?;
                client
                    .call::<protocol::messages::Stats>(&protocol::messages::Empty {})
                    .await
                    .map(|stats| stats.running_processes)
            })
            .await;
            match running {
                Ok(Ok(0)) => {}
                Ok(Ok(running)) => {
                    info!(%user, running, "CLI VM idle for the host but running programs: kept");
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(%user, error = %e, "CLI VM's agent does not answer: not paused");
                    continue;
                }
                Err(_) => {
                    warn!(%user, "CLI VM's agent does not answer in time: not paused");
                    continue;
                }
            }
            match self.pause_cli_locked(&user).await {
                Ok(Some(_)) => paused.push(user),
                Ok(None) => {}
                Err(e) => warn!(%user, error = %e, "pausing an idle CLI VM failed"),
            }
        }
        paused
    }

    /// Runs [`Self::pause_idle_cli`] for `idle` a few times per period, until the backend is
    /// dropped (the task holds it weakly).
    pub fn pause_idle_cli_in_background(
        backend: &Arc<Self>,
        idle: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let backend = Arc::downgrade(backend);
        let every = (idle / 4).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                let paused = backend.pause_idle_cli(idle).await;
                if !paused.is_empty() {
                    info!(users = ?paused, "idle CLI VMs paused");
                }
            }
        })
    }

    /// Reserves a free forward port: not given to another VM (booting ones included), and
    /// bindable on the host address now. [`Self::release_desktop_port`] gives it back.
    fn reserve_desktop_port(&self, fwd: DesktopForwards) -> Option<u16> {
        let mut taken = self.desktop_ports.lock().unwrap_or_else(|p| p.into_inner());
        let port = (fwd.first..=fwd.last).find(|p| {
            !taken.contains(p) && std::net::UdpSocket::bind(SocketAddr::new(fwd.host, *p)).is_ok()
        })?;
        taken.insert(port);
        Some(port)
    }

    fn release_desktop_port(&self, port: Option<u16>) {
        if let Some(port) = port {
            self.desktop_ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&port);
        }
    }

    /// The disk of `user`'s CLI VM (named by a hash: user ids are not file names).
    fn cli_disk(&self, user: &str) -> Option<PathBuf> {
        use sha2::Digest;
        let dir = self.cli_disks.as_ref()?;
        self.cli.config().root_image.as_ref()?;
        let digest = sha2::Sha256::digest(user.as_bytes());
        let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("cli-{name}.qcow2")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the running VMs, sorted.
    pub fn vm_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// PIDs of a VM's QEMU and `vhost-device-vsock`.
    pub fn pids(&self, vm_id: &str) -> Vec<u32> {
        self.lock()
            .get(vm_id)
            .map(|r| r.vm.pids())
            .unwrap_or_default()
    }

    /// The private directory of a VM.
    pub fn dir(&self, vm_id: &str) -> Option<std::path::PathBuf> {
        self.lock().get(vm_id).map(|r| r.vm.dir().to_path_buf())
    }

    fn handle(&self, id: &str, vm: &QemuVm, created: bool, desktop_port: Option<u16>) -> VmHandle {
        let connector = vm.connector();
        let desktop = desktop_port
            .zip(self.desktop)
            .map(|(port, fwd)| IceSettings {
                bind: vec![IpAddr::V4(UserNetwork::GUEST_ADDR)],
                nat_1to1_ip: Some(fwd.host),
                udp_ports: Some((port, port)),
                ..IceSettings::default()
            });
        VmHandle {
            desktop,
            id: id.to_owned(),
            egress: Some(connector.host_listener_path(protocol::egress::DEFAULT_EGRESS_PORT)),
            connector: Arc::new(connector),
            hello: None,
            guest_home: self.guest_home.clone(),
            created,
            start: VmStart::Booted,
        }
    }

    async fn boot(&self, user: &str, kind: VmKind) -> Result<VmHandle, BackendError> {
        // A paused CLI VM comes back as the VM it was (the host's records name it): same id.
        let paused_id = match kind {
            VmKind::Cli => self
                .paused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(user)
                .map(|p| p.name().to_owned()),
            VmKind::Browser => None,
        };
        let id = paused_id.clone().unwrap_or_else(|| {
            let uuid = uuid::Uuid::new_v4().simple().to_string();
            format!("qemu-{}-{}", kind.as_str(), &uuid[..12])
        });
        let forward = match (kind, self.desktop) {
            (VmKind::Browser, Some(fwd)) => {
                Some(self.reserve_desktop_port(fwd).ok_or_else(|| {
                    BackendError::Create(
                        format!("no free desktop port in {}..={}", fwd.first, fwd.last).into(),
                    )
                })?)
            }
            _ => None,
        };
        let (created, start) = match (kind, self.cli_disk(user), forward) {
            (VmKind::Cli, Some(disk), _) => self.cli_vm(user, &id, &disk).await,
            (VmKind::Cli, None, _) => (self.cli.create(&id).await, VmStart::Booted),
            (VmKind::Browser, _, None) => self.browser_vm(&id, None).await,
            (VmKind::Browser, _, Some(port)) => {
                let host = self
                    .desktop
                    .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |f| f.host);
                let network = UserNetwork {
                    udp_forwards: vec![UdpForward {
                        host: SocketAddr::new(host, port),
                        guest_port: port,
                    }],
                };
                self.browser_vm(&id, Some(network)).await
            }
        };
        let vm = match created {
            Ok(vm) => vm,
            Err(e) => {
                self.release_desktop_port(forward);
                return Err(BackendError::Create(e.into()));
            }
        };
        if forward.is_some() && start != VmStart::Restored {
            // The guest's side of the forward: its card up at the address user-mode networking
            // gives it (the images configure no network: the agent needs only vsock). A clone's
            // came up in the snapshot.
            if let Err(e) = guest_network_up(&vm).await {
                let _ = vm.destroy().await;
                self.release_desktop_port(forward);
                return Err(BackendError::Create(e.into()));
            }
        }
        info!(vm = %id, %user, kind = kind.as_str(), start = ?start, boot_ms = vm.boot_to_hello().as_millis() as u64, "VM up");
        // A paused VM that comes back (resumed, or booted from its disk when that failed) is
        // not a new VM to the host.
        let mut handle = self.handle(&id, &vm, paused_id.is_none(), forward);
        handle.start = start;
        self.lock().insert(
            id,
            Running {
                user: user.to_owned(),
                kind,
                vm,
                desktop_port: forward,
                last_used: std::time::Instant::now(),
            },
        );
        Ok(handle)
    }

    /// `user`'s CLI VM on `disk`: resumed when it was paused, booted otherwise (also when the
    /// resume fails: its files are on the disk either way).
    async fn cli_vm(
        &self,
        user: &str,
        id: &str,
        disk: &std::path::Path,
    ) -> (Result<QemuVm, VmError>, VmStart) {
        let paused = self
            .paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        let mut start = VmStart::Booted;
        if let Some(paused) = paused {
            let dir = disk.with_extension("paused");
            match self.cli.resume(paused).await {
                Ok(vm) => return (Ok(vm), VmStart::Resumed),
                Err(e) => {
                    warn!(vm = %id, error = %e, "resume failed: booting instead");
                    let _ = std::fs::remove_dir_all(&dir);
                    start = VmStart::BootedAfterFailedRestore(format!("resuming failed: {e}"));
                }
            }
        }
        (self.cli.create_with_overlay(id, disk).await, start)
    }

    /// Stops a VM and removes everything it had, except a CLI VM's disk: its next
    /// [`VmBackend::ensure_cli_vm`] boots from it with the user's files as they were.
    pub async fn stop_vm(&self, vm_id: &str) -> Result<CleanupReport, BackendError> {
        self.take_down(vm_id).await.map(|(report, _)| report)
    }

    async fn destroy(&self, vm_id: &str) -> Result<CleanupReport, BackendError> {
        let (mut report, disk) = self.take_down(vm_id).await?;
        if let Some(disk) = disk.filter(|d| d.exists()) {
            std::fs::remove_file(&disk).map_err(|e| BackendError::Destroy {
                vm: vm_id.to_owned(),
                source: e.into(),
            })?;
            report.removed.push(format!("disk {}", disk.display()));
        }
        Ok(report)
    }

    /// Stops the VM; returns what went and the disk it kept outside its directory, if any.
    async fn take_down(
        &self,
        vm_id: &str,
    ) -> Result<(CleanupReport, Option<PathBuf>), BackendError> {
        let running = self.lock().remove(vm_id);
        let Some(running) = running else {
            return self.take_down_paused(vm_id);
        };
        self.release_desktop_port(running.desktop_port);
        let kept = running
            .vm
            .disk()
            .filter(|d| !d.starts_with(running.vm.dir()))
            .map(PathBuf::from);
        let report = running
            .vm
            .destroy()
            .await
            .map_err(|e| BackendError::Destroy {
                vm: vm_id.to_owned(),
                source: e.into(),
            })?;
        let mut removed: Vec<String> = report
            .stopped_pids
            .iter()
            .map(|pid| format!("process {pid}"))
            .collect();
        removed.extend(report.removed.iter().map(|p| p.display().to_string()));
        Ok((CleanupReport { removed }, kept))
    }

    /// [`Self::take_down`] of a paused CLI VM: its saved state goes (it holds no process); its disk
    /// is returned like a running one's.
    fn take_down_paused(
        &self,
        vm_id: &str,
    ) -> Result<(CleanupReport, Option<PathBuf>), BackendError> {
        let paused = {
            let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            let user = paused
                .iter()
                .find(|(_, p)| p.name() == vm_id)
                .map(|(user, _)| user.clone());
            user.and_then(|user| paused.remove(&user).map(|p| (user, p)))
        };
        let Some((user, paused)) = paused else {
            return Err(BackendError::UnknownVm(vm_id.to_owned()));
        };
        let state = paused.dir().display().to_string();
        paused.discard().map_err(|e| BackendError::Destroy {
            vm: vm_id.to_owned(),
            source: e.into(),
        })?;
        info!(vm = %vm_id, %user, "paused CLI VM taken down");
        Ok((
            CleanupReport {
                removed: vec![format!("paused state {state}")],
            },
            self.cli_disk(&user),
        ))
    }
}

/// Before the save, the guest's free memory is made zeros: the page cache is dropped, then a
/// tmpfs is filled with zeros up to all but [`FILL_MARGIN_MIB`] of the free memory and removed.
/// Freed pages keep what they held, and QEMU saves (and each restore loads) every page that is
/// not all zeros; zeroed, free memory costs a few bytes a page. The margin keeps the fill from
/// pushing out the pages Chromium runs from.
const ZERO_FREE_MEMORY: &str = r#"set -e
sync
echo 3 > /proc/sys/vm/drop_caches
free_mib=$(( $(awk '/^MemFree:/ { print $2 }' /proc/meminfo) / 1024 ))
fill=$(( free_mib - FILL_MARGIN_MIB ))
if [ "$fill" -gt 0 ]; then
  mkdir -p /run/vm-agent/zeroes
  mount -t tmpfs -o size=${fill}m,mode=0700 zeroes /run/vm-agent/zeroes
  dd if=/dev/zero of=/run/vm-agent/zeroes/fill bs=1M count=$fill 2>/dev/null || true
  umount /run/vm-agent/zeroes
  rmdir /run/vm-agent/zeroes
fi"#;
/// Free memory the zero fill leaves alone, MiB.
const FILL_MARGIN_MIB: u32 = 96;

/// What a browser VM does before it is saved as the golden snapshot: its browser up, its network
/// card up when browser VMs have one, and its free memory zeroed ([`ZERO_FREE_MEMORY`]: less
/// state to save and load).
async fn ready_for_snapshot(
    connector: crate::transport::HybridVsockConnector,
    network: bool,
    timeout: std::time::Duration,
) -> Result<(), String> {
    super::pool::browser_ready(&connector, timeout).await?;
    let client = AgentClient::connect(&connector)
        .await
        .map_err(|e| format!("reaching the agent: {e}"))?;
    if network {
        UserNetwork::bring_up_guest(&client).await?;
    }
    let script = ZERO_FREE_MEMORY.replace("FILL_MARGIN_MIB", &FILL_MARGIN_MIB.to_string());
    super::qemu::root_shell(&client, &script, "zeroing the guest's free memory").await
}

/// Brings the guest's network card up through its agent.
async fn guest_network_up(vm: &QemuVm) -> Result<(), String> {
    let client = AgentClient::connect(&vm.connector())
        .await
        .map_err(|e| format!("reaching the agent to bring its network up: {e}"))?;
    UserNetwork::bring_up_guest(&client).await
}

impl VmBackend for QemuVmBackend {
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>> {
        async move { self.boot(&spec.user_id, spec.kind).await }.boxed()
    }

    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>> {
        async move {
            let _one_at_a_time = self.cli_lock.lock().await;
            let existing = self
                .lock()
                .iter_mut()
                .find(|(_, r)| r.kind == VmKind::Cli && r.user == user_id)
                .map(|(id, r)| {
                    r.last_used = std::time::Instant::now();
                    self.handle(id, &r.vm, false, r.desktop_port)
                });
            match existing {
                Some(handle) => Ok(handle),
                None => self.boot(user_id, VmKind::Cli).await,
            }
        }
        .boxed()
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        async move {
            let mut removed = self.browser.sweep_orphans();
            if self.cli.config().run_dir != self.browser.config().run_dir {
                removed.extend(self.cli.sweep_orphans());
            }
            Ok(removed.iter().map(|d| d.display().to_string()).collect())
        }
        .boxed()
    }

    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>> {
        self.destroy(vm_id).boxed()
    }
}
