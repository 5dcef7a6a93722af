//! [`VmBackend`] over [`QemuLauncher`]: browser VMs come and go per login; each user has one CLI VM
//! that stays until the host destroys it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::info;

use super::backend::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec};
use super::qemu::{QemuLauncher, QemuVm, UdpForward, UserNetwork};
use crate::client::AgentClient;
use protocol::desktop::IceSettings;

struct Running {
    user: String,
    kind: VmKind,
    vm: QemuVm,
    /// The host port of its desktop's UDP forward.
    desktop_port: Option<u16>,
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
        }
    }

    async fn boot(&self, user: &str, kind: VmKind) -> Result<VmHandle, BackendError> {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("qemu-{}-{}", kind.as_str(), &uuid[..12]);
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
        let created = match (kind, self.cli_disk(user), forward) {
            (VmKind::Cli, Some(disk), _) => self.cli.create_with_overlay(&id, &disk).await,
            (VmKind::Cli, None, _) => self.cli.create(&id).await,
            (VmKind::Browser, _, None) => self.browser.create(&id).await,
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
                self.browser.create_with_network(&id, network).await
            }
        };
        let vm = match created {
            Ok(vm) => vm,
            Err(e) => {
                self.release_desktop_port(forward);
                return Err(BackendError::Create(e.into()));
            }
        };
        if forward.is_some() {
            // The guest's side of the forward: its card up at the address user-mode networking
            // gives it (the images configure no network: the agent needs only vsock).
            if let Err(e) = guest_network_up(&vm).await {
                let _ = vm.destroy().await;
                self.release_desktop_port(forward);
                return Err(BackendError::Create(e.into()));
            }
        }
        info!(vm = %id, %user, kind = kind.as_str(), boot_ms = vm.boot_to_hello().as_millis() as u64, "VM up");
        let handle = self.handle(&id, &vm, true, forward);
        self.lock().insert(
            id,
            Running {
                user: user.to_owned(),
                kind,
                vm,
                desktop_port: forward,
            },
        );
        Ok(handle)
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
        let running = self
            .lock()
            .remove(vm_id)
            .ok_or_else(|| BackendError::UnknownVm(vm_id.to_owned()))?;
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
                .iter()
                .find(|(_, r)| r.kind == VmKind::Cli && r.user == user_id)
                .map(|(id, r)| self.handle(id, &r.vm, false, r.desktop_port));
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
