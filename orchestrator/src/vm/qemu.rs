//! A QEMU microVM per agent, with vsock through `vhost-device-vsock` (a vhost-user backend that
//! needs no vhost-vsock kernel module on the host and exposes the guest's vsock as a hybrid Unix
//! socket).
//!
//! Each VM gets a private, short directory (Unix socket paths are limited to 108 bytes and the
//! backend appends `_<port>`), holding every file and socket the VM uses; [`QemuVm::destroy`] stops
//! both processes by PID and removes that directory, listing what it removed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use protocol::Hello;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use super::qmp::{Qmp, QmpError, QmpListener, QMP_SOCKET};
use super::{serial, watch};
use crate::transport::{HelloListener, HybridVsockConnector, TransportError};

mod saved;
pub use saved::{PausedVm, Snapshot, SnapshotError};

/// Name of the vhost-user socket between QEMU and the backend.
const VHOST_SOCKET: &str = "vhost.sock";
/// Name of the hybrid vsock socket the host connects through.
const VSOCK_SOCKET: &str = "vm.vsock";
/// Longest Unix socket path the kernel accepts (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long the backend may take to create its socket.
const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a log an error carries.
const LOG_TAIL_BYTES: usize = 2000;
/// In every VM directory: `<pid> <start time>` of the host process that made it.
const OWNER_FILE: &str = "owner";
/// How long QEMU may take to connect its monitor after launch.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(30);

/// How a VM starts.
#[derive(Debug, Clone, Copy)]
enum Start<'a> {
    /// Booting its kernel.
    Cold,
    /// From saved state (`state`, written by QEMU's migration to a file).
    Incoming {
        /// The state file.
        state: &'a Path,
        /// The disk the VM's new overlay is made over (a snapshot's), when it needs one.
        backing: Option<&'a Path>,
        /// One of many clones of a snapshot (it takes a fresh identity), not a VM resumed.
        clone: bool,
    },
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through a real KVM module (`kvm_intel` / `kvm_amd`).
    Kvm,
    /// Software emulation (TCG): slower, works everywhere.
    Tcg,
}

impl Accel {
    /// KVM only where a real KVM module is loaded: a `/dev/kvm` served by something else (e.g. the
    /// nested `kvm_pvm`) cannot run a stock guest kernel, so its presence proves nothing.
    pub fn detect() -> Self {
        let real_kvm = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
            .iter()
            .any(|p| Path::new(p).exists());
        if real_kvm {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// The name QEMU and the benchmarks use.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every VM of a [`QemuLauncher`] is made of.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary (`qemu-system-x86_64`).
    pub qemu: PathBuf,
    /// The `vhost-device-vsock` binary.
    pub vhost_device_vsock: PathBuf,
    /// Plain ELF guest kernel (booted directly through PVH).
    pub kernel: PathBuf,
    /// Initramfs with the agent as `/init`.
    pub initramfs: PathBuf,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Parent of the per-VM directories; keep it short (socket path limit).
    pub run_dir: PathBuf,
    /// Accelerator, normally [`Accel::detect`].
    pub accel: Accel,
    /// Guest vsock port the agent listens on.
    pub agent_port: u32,
    /// Host vsock port the agent says hello to.
    pub hello_port: u32,
    /// How long to wait for the agent's hello (emulation on a busy machine is slow).
    pub hello_timeout: Duration,
    /// Extra kernel command-line words; `NAME=value` words the kernel does not know become the
    /// agent's environment (e.g. `AGENT_LOG=debug`). Never put secrets here: the host sends
    /// configuration over vsock instead.
    pub kernel_args: Vec<String>,
    /// A network card, or none (the default): the agent itself needs only vsock.
    pub network: Option<UserNetwork>,
    /// A golden root disk (raw ext4, never written): each VM boots from a copy-on-write overlay
    /// of it, and the initramfs switches to it (`AGENT_ROOT`). `None`: the initramfs is the
    /// whole system.
    pub root_image: Option<PathBuf>,
    /// The `qemu-img` binary that makes the overlays.
    pub qemu_img: PathBuf,
    /// The guest CPU model under emulation (`-cpu`), when QEMU's default will not do: the real
    /// CLIs' native binaries use AVX2 (claude-code, built with Bun, dies with SIGILL on
    /// `qemu64`). With KVM the host's CPU is passed through regardless.
    pub tcg_cpu: Option<String>,
    /// A dedicated unprivileged account QEMU runs as from its first instruction, when the host
    /// process is root: a guest that breaks out of QEMU lands in an account with no
    /// capabilities that can write only its VM's disk and connect to its sockets (the VM's
    /// directory stays root's, 0711, its logs and owner stamp unreadable). Every VM of a launcher
    /// shares the account, so an escape from one QEMU reaches the others' disks (a per-VM
    /// account would separate them: not done). The vsock backend, which reads the guest's queues
    /// in memory-safe Rust, stays the host's user. The kernel, initramfs and root image must be
    /// readable by the account (with KVM, `/dev/kvm` too). `None`: QEMU runs as the host process.
    pub run_as: Option<VmUser>,
}

/// The user a VM's processes run as ([`QemuConfig::run_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmUser {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id (its only group).
    pub gid: u32,
}

impl VmUser {
    /// The account `name` of this host, if it has one.
    pub fn lookup(name: &str) -> Option<VmUser> {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(VmUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }

    /// Gives `path` (in a directory only root writes, so no link can have replaced it; a link
    /// itself would be changed, not its target) to this user.
    fn own(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }
}

/// A network card on QEMU's user-mode network (slirp): the VM is reached from the host only on the
/// UDP ports forwarded to it, which is the shape of a gateway's per-VM forward that WebRTC media
/// needs (the desktop's `IceSettings::nat_1to1_ip` and `udp_ports` describe it to the agent).
///
/// Not a firewall: through QEMU's NAT the guest can open connections to the host (as
/// [`UserNetwork::HOST_ALIAS`]) and beyond. QEMU's `restrict=on` would stop that, but it also drops
/// the guest's UDP replies on the forwards, so it cannot be used here. Deployments that must
/// confine VMs put them behind a real gateway (tap device and packet filter) instead.
///
/// The guest configures its side itself: address [`UserNetwork::GUEST_ADDR`] on `eth0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNetwork {
    /// UDP forwards from a host socket address to the same guest's port.
    pub udp_forwards: Vec<UdpForward>,
}

impl UserNetwork {
    /// The guest's address on the user-mode network (QEMU's fixed default).
    pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    /// The prefix length of that network.
    pub const PREFIX_LEN: u8 = 24;
    /// Where forwarded traffic appears to come from inside the guest (the host's alias).
    pub const HOST_ALIAS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// Brings the guest's card up at [`UserNetwork::GUEST_ADDR`] through its agent (the images
    /// configure no network: the agent needs only vsock). As the guest's root, asked for by
    /// name: programs run as the image's unprivileged user otherwise.
    pub async fn bring_up_guest(client: &crate::AgentClient) -> Result<(), String> {
        let script = format!(
            "ip link set eth0 up && ip addr add {}/{} dev eth0",
            Self::GUEST_ADDR,
            Self::PREFIX_LEN
        );
        root_shell(client, &script, "bringing the guest's network up").await
    }
}

/// Runs `script` with `sh -c` as the guest's root (asked for by name: programs run as the image's
/// unprivileged user otherwise); an exit other than 0 is an error naming `what`.
pub(crate) async fn root_shell(
    client: &crate::AgentClient,
    script: &str,
    what: &str,
) -> Result<(), String> {
    let request = protocol::messages::ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        user: Some("root".into()),
        ..Default::default()
    };
    let out = async {
        let mut call = client.exec(&request).await?;
        // No input: the call ends once its request side is closed too.
        call.close_input();
        call.collect_exec().await
    }
    .await
    .map_err(|e| format!("{what}: {e}"))?;
    if out.status.shell_code() != 0 {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// One forwarded UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpForward {
    /// Host address and port QEMU listens on.
    pub host: SocketAddr,
    /// Guest port the datagrams go to.
    pub guest_port: u16,
}

impl QemuConfig {
    /// Defaults for a test VM around `kernel` and `initramfs`: 128 MiB, 1 vCPU, directories under
    /// `/tmp`, accelerator detected, default ports, 90 s to hello.
    pub fn new(
        vhost_device_vsock: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initramfs: impl Into<PathBuf>,
    ) -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            vhost_device_vsock: vhost_device_vsock.into(),
            kernel: kernel.into(),
            initramfs: initramfs.into(),
            memory_mib: 128,
            vcpus: 1,
            run_dir: PathBuf::from("/tmp"),
            accel: Accel::detect(),
            agent_port: protocol::DEFAULT_AGENT_PORT,
            hello_port: protocol::DEFAULT_HELLO_PORT,
            hello_timeout: Duration::from_secs(90),
            kernel_args: Vec::new(),
            network: None,
            root_image: None,
            qemu_img: PathBuf::from("qemu-img"),
            tcg_cpu: None,
            run_as: None,
        }
    }
}

/// Why a VM could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The per-VM directory is too long for the Unix socket paths inside it.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run_dir")]
    PathTooLong(PathBuf),
    /// A process of the VM exited while it was being started.
    #[error("{process} exited during start ({status}); its log ends with:\n{log}")]
    Exited {
        /// `qemu` or `vhost-device-vsock`.
        process: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The backend did not create its socket in time.
    #[error("vhost-device-vsock created no socket within {0:?}")]
    BackendTimeout(Duration),
    /// No hello in time.
    #[error("no hello from the agent within {timeout:?}; the serial console ends with:\n{serial}")]
    HelloTimeout {
        /// How long was waited.
        timeout: Duration,
        /// The end of the guest's serial console.
        serial: String,
    },
    /// The hello listener failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// QEMU's monitor failed.
    #[error(transparent)]
    Monitor(#[from] QmpError),
    /// Loading or saving a VM's state failed.
    #[error("{0}")]
    State(String),
    /// `qemu-img` could not make the VM's overlay.
    #[error("making the disk overlay {path}: {detail}")]
    Overlay {
        /// The overlay.
        path: PathBuf,
        /// What qemu-img said.
        detail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// The overlay's name in a VM's directory.
const OVERLAY: &str = "root.qcow2";

/// Starts QEMU microVMs, each with its own `vhost-device-vsock`.
#[derive(Debug, Clone)]
pub struct QemuLauncher {
    config: QemuConfig,
}

/// What [`QemuVm::destroy`] did: the audit record of a VM leaving no traces.
#[derive(Debug, Clone)]
pub struct DestroyReport {
    /// Every file, socket and directory removed (the VM directory last).
    pub removed: Vec<PathBuf>,
    /// PIDs stopped (QEMU, then the backend).
    pub stopped_pids: Vec<u32>,
    /// How long destruction took.
    pub elapsed: Duration,
}

/// A running VM whose agent has said hello.
#[derive(Debug)]
pub struct QemuVm {
    name: String,
    dir: PathBuf,
    /// The VM's copy-on-write root disk (in `dir` unless it outlives the VM).
    disk: Option<PathBuf>,
    qemu: Option<Child>,
    backend: Option<Child>,
    hello: Hello,
    boot_to_hello: Duration,
    connector: HybridVsockConnector,
    /// Copies the serial console into its bounded logs while QEMU runs.
    console: Option<tokio::task::JoinHandle<()>>,
    /// QEMU's monitor (stop, save, resume).
    qmp: Option<Qmp>,
    /// The connection the agent's hello came on, held open: the agent holds it too and says
    /// hello again when a restore breaks it.
    hello_conn: Option<tokio::net::UnixStream>,
    /// What the VM was started with (its network included): a restore needs the same.
    config: QemuConfig,
}

impl QemuLauncher {
    /// A launcher starting VMs as `config` says.
    pub fn new(config: QemuConfig) -> Self {
        Self { config }
    }

    /// The configuration VMs are started with.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// Boots a VM and returns once its agent has said hello. `name` is for logs only. With a root
    /// image, the VM's overlay lives in its directory and goes when it is destroyed. On any failure
    /// everything started so far is stopped and removed.
    pub async fn create(&self, name: &str) -> Result<QemuVm, VmError> {
        self.create_with(name, None, None).await
    }

    /// [`QemuLauncher::create`] with a network card of its own (a VM's own UDP forward, say)
    /// instead of the configuration's.
    pub async fn create_with_network(
        &self,
        name: &str,
        network: UserNetwork,
    ) -> Result<QemuVm, VmError> {
        self.create_with(name, None, Some(network)).await
    }

    /// [`QemuLauncher::create`] booting from the overlay at `overlay`, made from the root image if
    /// it does not exist yet and kept when the VM is destroyed: the disk of a VM that is stopped
    /// and started again with its files (a user's CLI VM).
    pub async fn create_with_overlay(&self, name: &str, overlay: &Path) -> Result<QemuVm, VmError> {
        self.create_with(name, Some(overlay), None).await
    }

    async fn create_with(
        &self,
        name: &str,
        overlay: Option<&Path>,
        network: Option<UserNetwork>,
    ) -> Result<QemuVm, VmError> {
        self.start(name, overlay, network, Start::Cold).await
    }

    /// Makes a VM's directory and starts it as `start` says.
    async fn start(
        &self,
        name: &str,
        overlay: Option<&Path>,
        network: Option<UserNetwork>,
        start: Start<'_>,
    ) -> Result<QemuVm, VmError> {
        let own;
        let cfg = match network {
            Some(network) => {
                own = QemuConfig {
                    network: Some(network),
                    ..self.config.clone()
                };
                &own
            }
            None => &self.config,
        };
        let dir = tempfile::Builder::new()
            .prefix("vm")
            .rand_bytes(6)
            .tempdir_in(&cfg.run_dir)
            .map_err(io(format!(
                "create a VM directory in {}",
                cfg.run_dir.display()
            )))?
            .keep();
        // Whose VM this is, so a sweep after a crash knows the owner is gone. The directory is
        // root's whatever the umask: its sockets reach the VM's agent and its logs hold the
        // console; QEMU's account may only pass through it (0711) to the sockets it is given.
        let mode = if cfg.run_as.is_some() { 0o711 } else { 0o700 };
        let made =
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .and_then(|()| std::fs::write(dir.join(OWNER_FILE), owner_stamp()));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io("write the VM's owner file")(e));
        }
        let disk = cfg
            .root_image
            .as_ref()
            .map(|_| overlay.map_or_else(|| dir.join(OVERLAY), Path::to_path_buf));
        let mut vm = QemuVm {
            name: name.to_string(),
            connector: HybridVsockConnector::new(dir.join(VSOCK_SOCKET), cfg.agent_port),
            disk,
            dir,
            qemu: None,
            backend: None,
            hello: Hello {
                agent_version: String::new(),
                protocol_version: 0,
                capabilities: Vec::new(),
                boot_id: String::new(),
                machine_id: String::new(),
                start_to_hello_ms: 0,
                listen_port: None,
            },
            boot_to_hello: Duration::ZERO,
            console: None,
            qmp: None,
            hello_conn: None,
            config: cfg.clone(),
        };
        // On error `vm` drops here, which kills what was started and removes the directory.
        vm.boot(start).await?;
        Ok(vm)
    }
}

impl QemuVm {
    async fn boot(&mut self, start: Start<'_>) -> Result<(), VmError> {
        let cfg = self.config.clone();
        if let (Some(golden), Some(disk)) = (&cfg.root_image, &self.disk) {
            if !disk.exists() {
                match start {
                    // A clone's writes go to its own overlay over the snapshot's frozen disk.
                    Start::Incoming {
                        backing: Some(backing),
                        ..
                    } => make_overlay(&cfg.qemu_img, backing, "qcow2", disk).await?,
                    _ => make_overlay(&cfg.qemu_img, golden, "raw", disk).await?,
                }
            }
            if let Some(user) = cfg.run_as {
                user.own(disk)
                    .map_err(io(format!("give {} to the VM's user", disk.display())))?;
            }
        }
        let vsock = self.dir.join(VSOCK_SOCKET);
        let hello_path = self.connector.host_listener_path(cfg.hello_port);
        if hello_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmError::PathTooLong(hello_path));
        }
        // Listen before the guest can dial: a missing socket costs the guest seconds per attempt.
        let hello = HelloListener::bind(&hello_path)?;

        let vhost = self.dir.join(VHOST_SOCKET);
        let backend_log = self.dir.join("vhost-device-vsock.log");
        let mut backend = Command::new(&cfg.vhost_device_vsock)
            .arg("--guest-cid")
            .arg("3")
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&vsock)
            .stdin(Stdio::null())
            .stdout(log_file(&backend_log)?)
            .stderr(log_file(&backend_log)?)
            .kill_on_drop(true)
            .vm_process(None)
            .spawn()
            .map_err(io(format!("start {}", cfg.vhost_device_vsock.display())))?;
        let created = tokio::time::timeout(BACKEND_START_TIMEOUT, async {
            tokio::select! {
                r = watch::file_created(&self.dir, VHOST_SOCKET) => r.map_err(io("watch for the backend socket")),
                status = backend.wait() => Err(exited("vhost-device-vsock", status, &backend_log)),
            }
        })
        .await;
        self.backend = Some(backend);
        created.map_err(|_| VmError::BackendTimeout(BACKEND_START_TIMEOUT))??;
        let give = |path: &Path| match cfg.run_as {
            Some(user) => user
                .own(path)
                .map_err(io(format!("give {} to QEMU's account", path.display()))),
            None => Ok(()),
        };
        give(&vhost)?;

        let serial = self.dir.join(serial::SERIAL_SOCKET);
        let monitor = self.dir.join(QMP_SOCKET);
        for path in [&serial, &monitor] {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::PathTooLong(path.clone()));
            }
        }
        // Listening before QEMU starts: QEMU connects its serial port and monitor at launch.
        self.console =
            Some(serial::collect(&self.dir).map_err(io("listen for the serial console"))?);
        give(&serial)?;
        let qmp = QmpListener::bind(&monitor).map_err(io("listen for QEMU's monitor"))?;
        give(&monitor)?;
        let qemu_log = self.dir.join("qemu.log");
        let launched = Instant::now();
        let mut args = qemu_args(&cfg, &self.dir, self.disk.as_deref());
        if let Start::Incoming { .. } = start {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        let mut qemu = Command::new(&cfg.qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file(&qemu_log)?)
            .stderr(log_file(&qemu_log)?)
            .kill_on_drop(true)
            .vm_process(cfg.run_as)
            .spawn()
            .map_err(io(format!("start {}", cfg.qemu.display())))?;
        info!(vm = %self.name, dir = %self.dir.display(), accel = %cfg.accel, pid = qemu.id(), "qemu started");
        let backend = self.backend.as_mut().ok_or_else(|| VmError::Io {
            what: "backend handle".into(),
            source: std::io::Error::other("missing"),
        })?;
        let incoming = match start {
            Start::Incoming { state, .. } => Some(state),
            Start::Cold => None,
        };
        let outcome = tokio::select! {
            r = async {
                let mut qmp = qmp.accept(MONITOR_TIMEOUT).await?;
                if let Some(state) = incoming {
                    let monitor_ms = launched.elapsed().as_millis() as u64;
                    saved::load(&mut qmp, state, cfg.hello_timeout).await?;
                    debug!(
                        vm = %self.name,
                        monitor_ms,
                        loaded_ms = launched.elapsed().as_millis() as u64,
                        "state loaded"
                    );
                }
                let kept = match hello.wait_kept(cfg.hello_timeout).await {
                    Ok(kept) => kept,
                    Err(TransportError::Timeout(timeout, _)) => {
                        return Err(VmError::HelloTimeout {
                            timeout,
                            serial: serial::tail(&self.dir, LOG_TAIL_BYTES as u64),
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok((qmp, kept))
            } => r,
            status = qemu.wait() => Err(exited("qemu", status, &qemu_log)),
            status = backend.wait() => Err(exited("vhost-device-vsock", status, &backend_log)),
        };
        self.qemu = Some(qemu);
        let (qmp, (hello, conn)) = outcome?;
        self.qmp = Some(qmp);
        self.hello_conn = Some(conn);
        self.hello = hello;
        if let Start::Incoming { clone, .. } = start {
            debug!(vm = %self.name, hello_ms = launched.elapsed().as_millis() as u64, "hello again");
            self.hello = saved::tell_restored(&self.connector, clone).await?;
        }
        self.boot_to_hello = launched.elapsed();
        info!(
            vm = %self.name,
            boot_to_hello_ms = self.boot_to_hello.as_millis() as u64,
            agent_start_to_hello_ms = self.hello.start_to_hello_ms,
            restored = incoming.is_some(),
            "agent said hello"
        );
        // `hello` drops here: its socket file goes with it.
        Ok(())
    }

    /// The VM's name, as given to [`QemuLauncher::create`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The private directory holding every file of this VM.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's copy-on-write root disk, when it boots from one.
    pub fn disk(&self) -> Option<&Path> {
        self.disk.as_deref()
    }

    /// The agent's hello.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// From QEMU's launch to the hello arriving on the host.
    pub fn boot_to_hello(&self) -> Duration {
        self.boot_to_hello
    }

    /// A connector to the agent's port through the hybrid vsock socket.
    pub fn connector(&self) -> HybridVsockConnector {
        self.connector.clone()
    }

    /// PIDs of QEMU and the backend, while they run.
    pub fn pids(&self) -> Vec<u32> {
        [&self.qemu, &self.backend]
            .into_iter()
            .filter_map(|c| c.as_ref().and_then(Child::id))
            .collect()
    }

    /// The guest's serial console (kernel messages, agent logs): what its bounded logs still
    /// hold, at most [`serial::SERIAL_LOG_CAP`] twice over.
    pub fn serial_log(&self) -> String {
        serial::tail(&self.dir, 2 * serial::SERIAL_LOG_CAP)
    }

    /// Waits up to `timeout` for QEMU to exit by itself (the guest powered off).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let qemu = self.qemu.as_mut().ok_or_else(|| VmError::Io {
            what: "wait for qemu".into(),
            source: std::io::Error::other("qemu is not running"),
        })?;
        tokio::time::timeout(timeout, qemu.wait())
            .await
            .map_err(|_| VmError::Io {
                what: "wait for qemu".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("still running after {timeout:?}"),
                ),
            })?
            .map_err(io("wait for qemu"))
    }

    /// Stops QEMU and the backend by PID, removes every file and socket of the VM and its
    /// directory, and returns what was removed. Also recorded as an `audit` event.
    pub async fn destroy(mut self) -> Result<DestroyReport, VmError> {
        let started = Instant::now();
        if let Some(console) = self.console.take() {
            console.abort();
        }
        let mut stopped_pids = Vec::new();
        for child in [self.qemu.take(), self.backend.take()]
            .into_iter()
            .flatten()
        {
            if let Some(pid) = stop(child).await? {
                stopped_pids.push(pid);
            }
        }
        let mut removed = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(format!("list {}", self.dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let result = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(io(format!("remove {}", path.display())))?;
            removed.push(path);
        }
        std::fs::remove_dir(&self.dir).map_err(io(format!("remove {}", self.dir.display())))?;
        removed.push(self.dir.clone());
        let report = DestroyReport {
            removed,
            stopped_pids,
            elapsed: started.elapsed(),
        };
        info!(
            target: "audit",
            vm = %self.name,
            removed = ?report.removed,
            stopped_pids = ?report.stopped_pids,
            "vm destroyed"
        );
        Ok(report)
    }
}

impl Drop for QemuVm {
    /// A VM dropped without [`QemuVm::destroy`] (an error, a panicking test) still leaves nothing
    /// behind: processes are killed and the directory removed, best effort.
    fn drop(&mut self) {
        if let Some(console) = self.console.take() {
            console.abort();
        }
        for child in [self.qemu.as_mut(), self.backend.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.start_kill();
        }
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                warn!(dir = %self.dir.display(), error = %e, "cannot remove VM directory");
            }
        }
    }
}

/// Kills `child` and waits for it; returns its PID if it was still running.
async fn stop(mut child: Child) -> Result<Option<u32>, VmError> {
    let pid = child.id();
    if pid.is_some() {
        child.start_kill().map_err(io("kill"))?;
    }
    let status = child.wait().await.map_err(io("wait"))?;
    debug!(?pid, %status, "stopped");
    Ok(pid)
}

/// Makes `overlay`, a qcow2 whose reads fall through to `golden` (of `format`) and whose writes
/// stay in it.
async fn make_overlay(
    qemu_img: &Path,
    golden: &Path,
    format: &str,
    overlay: &Path,
) -> Result<(), VmError> {
    let golden = std::fs::canonicalize(golden).map_err(io(format!("find {}", golden.display())))?;
    if let Some(parent) = overlay.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&golden)
        .arg(overlay)
        .output()
        .await
        .map_err(io(format!("start {}", qemu_img.display())))?;
    if !out.status.success() {
        return Err(VmError::Overlay {
            path: overlay.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// QEMU's command line for a VM whose sockets are in `dir`. A restore must use the same one (bar
/// `-incoming` and the host's side of forwards): the saved state is only valid for it.
fn qemu_args(cfg: &QemuConfig, dir: &Path, disk: Option<&Path>) -> Vec<String> {
    let vhost = dir.join(VHOST_SOCKET);
    let serial = dir.join(serial::SERIAL_SOCKET);
    let monitor = dir.join(QMP_SOCKET);
    let mem = format!("{}M", cfg.memory_mib);
    let mut args: Vec<String> = vec!["-accel".into(), cfg.accel.as_str().into()];
    if cfg.accel == Accel::Kvm {
        args.extend(["-cpu".into(), "host".into()]);
    } else if let Some(cpu) = &cfg.tcg_cpu {
        args.extend(["-cpu".into(), cpu.clone()]);
    }
    args.extend(
        [
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,memory-backend=mem0",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            // QEMU's seccomp filter: no obsolete system calls, no privilege changes, no new
            // processes, no scheduler or resource changes, whatever a guest makes it do.
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
        .map(String::from),
    );
    args.extend([
        "-m".into(),
        mem.clone(),
        "-smp".into(),
        cfg.vcpus.to_string(),
        // vhost-user needs guest memory the backend can map.
        "-object".into(),
        format!("memory-backend-memfd,id=mem0,size={mem},share=on"),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", vhost.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock0".into(),
        "-chardev".into(),
        format!("socket,id=serial0,path={}", serial.display()),
        "-serial".into(),
        "chardev:serial0".into(),
        // The monitor: QEMU connects to the host's socket, as for the serial port.
        "-chardev".into(),
        format!("socket,id=qmp0,path={}", monitor.display()),
        "-mon".into(),
        "chardev=qmp0,mode=control".into(),
        "-kernel".into(),
        cfg.kernel.display().to_string(),
        "-initrd".into(),
        cfg.initramfs.display().to_string(),
    ]);
    let mut kernel_args = cfg.kernel_args.clone();
    if let Some(disk) = disk {
        args.extend([
            "-drive".into(),
            format!(
                "id=root,file={},format=qcow2,if=none,discard=unmap",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
        ]);
        kernel_args.push("AGENT_ROOT=/dev/vda".into());
    }
    args.extend(["-append".into(), kernel_cmdline(&kernel_args)]);
    if let Some(net) = &cfg.network {
        // No restrict=on: it drops the guest's replies on UDP forwards (see UserNetwork).
        let mut netdev = String::from("user,id=net0");
        for fwd in &net.udp_forwards {
            let host_ip = match fwd.host.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            netdev.push_str(&format!(
                ",hostfwd=udp:{host_ip}:{}-:{}",
                fwd.host.port(),
                fwd.guest_port
            ));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-device,netdev=net0".into(),
        ]);
    }
    args
}

/// The guest kernel command line. `tsc_early_khz` matters: without it the microvm machine hangs in
/// about one boot in five under emulation (no fallback timer when TSC calibration fails).
fn kernel_cmdline(extra: &[String]) -> String {
    let mut cmdline = String::from(
        "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check cryptomgr.notests \
         mitigations=off audit=0 8250.nr_uarts=1 random.trust_cpu=on",
    );
    if let Some(khz) = host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    for word in extra {
        cmdline.push(' ');
        cmdline.push_str(word);
    }
    cmdline
}

/// The host CPU's clock in kHz, from `/proc/cpuinfo`: under emulation the guest's TSC runs at it.
fn host_tsc_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// This process as a VM directory's owner: its pid and its start time (clock ticks since boot,
/// from `/proc/self/stat`), so a reused pid is not taken for it.
fn owner_stamp() -> String {
    format!("{} {}", std::process::id(), start_time("self").unwrap_or(0))
}

fn start_time(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 counts from the pid; after the `(comm)` field, it is the 20th.
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process an owner file names still runs.
fn owner_alive(stamp: &str) -> bool {
    let mut parts = stamp.split_whitespace();
    let (Some(pid), Some(started)) = (parts.next(), parts.next()) else {
        return false;
    };
    pid.parse::<u32>().is_ok() && start_time(pid).map(|t| t.to_string()) == Some(started.to_owned())
}

impl QemuLauncher {
    /// Removes the VM directories in this launcher's `run_dir` whose owning host process is gone
    /// (its VMs' processes died with it: parent-death signal); returns them. A directory without
    /// an owner file is not judged (it is not one of ours, or is being made right now).
    pub fn sweep_orphans(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.config.run_dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let is_vm_dir = entry.file_name().to_string_lossy().starts_with("vm")
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_vm_dir {
                continue;
            }
            let Ok(stamp) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
                continue;
            };
            if owner_alive(&stamp) {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    info!(dir = %dir.display(), "swept a VM directory its crashed owner left");
                    removed.push(dir);
                }
                Err(e) => warn!(dir = %dir.display(), error = %e, "cannot sweep a VM directory"),
            }
        }
        removed
    }
}

/// A VM's processes run as the VM's user, if it has one, and end with the host process that
/// started them, even when it is killed and `kill_on_drop` never runs: no QEMU outlives a crashed
/// orchestrator holding a user's VM.
trait VmProcess {
    fn vm_process(&mut self, run_as: Option<VmUser>) -> &mut Self;
}

impl VmProcess for Command {
    fn vm_process(&mut self, run_as: Option<VmUser>) -> &mut Self {
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (setgroups, setgid, setuid, prctl, getppid) on values
        // copied before the fork, touching no memory of the parent and allocating nothing.
        unsafe {
            self.pre_exec(move || {
                if let Some(VmUser { uid, gid }) = run_as {
                    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
                    let gid = Gid::from_raw(gid);
                    setgroups(&[gid])?;
                    setgid(gid)?;
                    setuid(Uid::from_raw(uid))?;
                }
                // After the change of user: the kernel clears the parent-death signal when a
                // process's credentials change (which is why QEMU's own `-runas` cannot be used).
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // The host died between the fork and here: no signal will come, so do not run.
                if nix::unistd::getppid() != parent {
                    return Err(nix::errno::Errno::ESRCH.into());
                }
                Ok(())
            });
        }
        self
    }
}

fn log_file(path: &Path) -> Result<std::fs::File, VmError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("open {}", path.display())))
}

fn exited(process: &'static str, status: std::io::Result<ExitStatus>, log: &Path) -> VmError {
    match status {
        Ok(status) => VmError::Exited {
            process,
            status,
            log: serial::tail_file(log, LOG_TAIL_BYTES as u64),
        },
        Err(e) => VmError::Io {
            what: format!("wait for {process}"),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_removes_only_directories_whose_owner_is_gone() {
        let run = tempfile::tempdir().unwrap();
        let mut cfg = QemuConfig::new("/bin/vhost", "/k", "/i");
        cfg.run_dir = run.path().to_path_buf();
        let launcher = QemuLauncher::new(cfg);
        let make = |name: &str, owner: Option<String>| {
            let dir = run.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("serial.log"), b"x").unwrap();
            if let Some(owner) = owner {
                std::fs::write(dir.join(OWNER_FILE), owner).unwrap();
            }
            dir
        };
        let mine = make("vmMine01", Some(owner_stamp()));
        // A pid that exited (a child reaped here), and a live pid with another start time.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = make("vmDead01", Some(format!("{dead_pid} 12345")));
        let reused = make("vmReus01", Some(format!("{} 1", std::process::id())));
        let unowned = make("vmNone01", None);
        let other = make("notavm", Some(format!("{dead_pid} 1")));
        let mut removed = launcher.sweep_orphans();
        removed.sort();
        let mut want = vec![dead, reused];
        want.sort();
        assert_eq!(removed, want);
        for kept in [mine, unowned, other] {
            assert!(kept.exists(), "{} swept", kept.display());
        }
    }

    #[test]
    fn a_vm_process_dies_with_what_started_it() {
        // The thread that forks stands for the orchestrator: when it goes, the child goes,
        // though nothing kills it (no kill_on_drop).
        let pid = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let child = Command::new("sleep")
                    .arg("1000")
                    .vm_process(None)
                    .spawn()
                    .unwrap();
                let pid = child.id().unwrap();
                std::mem::forget(child);
                pid
            })
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Killed, it is a zombie (or reaped): state Z, or no such process.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {pid} outlived its parent: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    }

    #[test]
    fn command_line_has_the_recipe_essentials() {
        let mut cfg = QemuConfig::new("/bin/vhost", "/k/vmlinux", "/k/initramfs.cpio");
        cfg.accel = Accel::Tcg;
        let args = qemu_args(&cfg, Path::new("/tmp/vmX"), None);
        let joined = args.join(" ");
        assert!(joined.starts_with("-accel tcg -M microvm"));
        assert!(joined.contains("memory-backend-memfd,id=mem0,size=128M,share=on"));
        assert!(joined.contains("socket,id=vsock0,path=/tmp/vmX/vhost.sock"));
        assert!(joined.contains(
            "-chardev socket,id=qmp0,path=/tmp/vmX/qmp.sock -mon chardev=qmp0,mode=control"
        ));
        assert!(!joined.contains("-cpu host"));
        assert!(!joined.contains("-netdev"), "no network card unless asked");
        assert!(
            joined.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"),
            "{joined}"
        );
        cfg.network = Some(UserNetwork {
            udp_forwards: vec![UdpForward {
                host: "127.0.0.1:40000".parse().unwrap(),
                guest_port: 40001,
            }],
        });
        let joined = qemu_args(&cfg, Path::new("/v"), None).join(" ");
        assert!(joined.contains(
            "-netdev user,id=net0,hostfwd=udp:127.0.0.1:40000-:40001 \
             -device virtio-net-device,netdev=net0"
        ));
        assert!(!joined.contains("AGENT_ROOT") && !joined.contains("-drive"));
        let joined = qemu_args(
            &cfg,
            Path::new("/v"),
            Some(Path::new("/tmp/vmX/root.qcow2")),
        )
        .join(" ");
        assert!(joined.contains(
            "-drive id=root,file=/tmp/vmX/root.qcow2,format=qcow2,if=none,discard=unmap \
             -device virtio-blk-device,drive=root"
        ));
        assert!(joined.contains("AGENT_ROOT=/dev/vda"));
        cfg.network = None;
        cfg.accel = Accel::Kvm;
        assert!(qemu_args(&cfg, Path::new("/v"), None)
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }

    #[test]
    fn accel_follows_the_kvm_modules_not_dev_kvm() {
        let expected = if Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists()
        {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        assert_eq!(Accel::detect(), expected);
    }

    #[tokio::test]
    async fn a_backend_that_cannot_start_leaves_nothing_behind() {
        let run = tempfile::tempdir().unwrap();
        let mut cfg = QemuConfig::new("/nonexistent/vhost-device-vsock", "/k", "/i");
        cfg.run_dir = run.path().to_path_buf();
        let err = QemuLauncher::new(cfg).create("t").await.unwrap_err();
        assert!(matches!(err, VmError::Io { .. }), "{err}");
        assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 0);
    }
}
