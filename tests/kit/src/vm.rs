//! Real microVMs for the tests: the image, kernel and vsock backend come from
//! `cargo xtask image minimal` (or `desktop`, with an X server and a network card; cached under
//! `target/`: seconds when nothing changed, a few minutes on a fresh machine), and VMs boot with the
//! orchestrator's QEMU backend.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use orchestrator::vm::{QemuConfig, QemuLauncher, UdpForward, UserNetwork};

pub use orchestrator::vm::GUEST_HOME;

/// What `cargo xtask image <which>` printed.
#[derive(Debug, Clone)]
pub struct VmAssets {
    /// Plain ELF guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the static agent as PID 1.
    pub initramfs: PathBuf,
    /// The golden root disk of the disk images (`browser`, `cli`).
    pub root_image: Option<PathBuf>,
    /// The vhost-user vsock backend.
    pub vhost_device_vsock: PathBuf,
    /// The QEMU the VMs run: Debian's own source with the vsock migration patch (xtask/qemu/).
    pub qemu: PathBuf,
}

/// Builds (or finds cached) the test image once per test binary. Panics with the build's output
/// when it fails: a VM test never skips.
pub fn assets() -> &'static VmAssets {
    static ASSETS: OnceLock<VmAssets> = OnceLock::new();
    ASSETS.get_or_init(|| build_assets("minimal"))
}

/// [`assets`] of the desktop image: Xvfb, `x-probe` and a network card's modules added.
pub fn desktop_assets() -> &'static VmAssets {
    static ASSETS: OnceLock<VmAssets> = OnceLock::new();
    ASSETS.get_or_init(|| build_assets("desktop"))
}

/// The browser VM's golden disk and its boot files (`cargo xtask image browser`: Debian 12, X,
/// Chromium, the real CLIs; minutes the first time on a machine, cached after).
pub fn browser_assets() -> &'static VmAssets {
    static ASSETS: OnceLock<VmAssets> = OnceLock::new();
    ASSETS.get_or_init(|| build_assets("browser"))
}

/// The CLI VM's golden disk and its boot files (`cargo xtask image cli`).
pub fn cli_assets() -> &'static VmAssets {
    static ASSETS: OnceLock<VmAssets> = OnceLock::new();
    ASSETS.get_or_init(|| build_assets("cli"))
}

fn build_assets(which: &str) -> VmAssets {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "image", which])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run `cargo xtask image minimal`");
    assert!(
        out.status.success(),
        "`cargo xtask image {which}` failed ({}); see its output above",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> PathBuf {
        let prefix = format!("{name}=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("`cargo xtask image {which}` printed no {name}=: {text}"))
    };
    VmAssets {
        kernel: field("kernel"),
        initramfs: field("initramfs"),
        root_image: text
            .lines()
            .find_map(|l| l.strip_prefix("root_image="))
            .map(PathBuf::from),
        vhost_device_vsock: field("vhost_device_vsock"),
        qemu: field("qemu"),
    }
}

/// A QEMU backend for the test image (accelerator detected: TCG on machines without real KVM).
pub fn launcher() -> QemuLauncher {
    QemuLauncher::new(config(assets()))
}

/// The account of this machine QEMU runs as in [`unprivileged_launcher`].
pub const VM_USER: &str = "nobody";

/// A QEMU backend for the test image whose QEMU runs as [`VM_USER`] (`QemuConfig::run_as`), with
/// copies of the files it opens and of QEMU itself in `files`, a directory that account can read
/// (the cached originals live under root's home); the caller removes it. Panics unless this process is
/// root: only root can start a process as another user.
pub fn unprivileged_launcher(files: &std::path::Path) -> QemuLauncher {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "VM processes can run as another user only when the host process is root"
    );
    let user = orchestrator::vm::VmUser::lookup(VM_USER)
        .unwrap_or_else(|| panic!("this machine has no user {VM_USER:?}"));
    let readable = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    readable(files, 0o755);
    let copy = |from: &std::path::Path, mode: u32| {
        let to = files.join(from.file_name().expect("a file name"));
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        readable(&to, mode);
        to
    };
    let assets = assets();
    let mut config = config(&VmAssets {
        kernel: copy(&assets.kernel, 0o644),
        initramfs: copy(&assets.initramfs, 0o644),
        root_image: None,
        vhost_device_vsock: assets.vhost_device_vsock.clone(),
        // The built QEMU lives in root's cache too.
        qemu: copy(&assets.qemu, 0o755),
    });
    config.run_as = Some(user);
    QemuLauncher::new(config)
}

/// A QEMU backend for the golden CLI image: the real CLIs are Node.js programs, for which the
/// old system's 256 MB is tight (gemini); 512 MB, one vCPU.
pub fn cli_launcher() -> QemuLauncher {
    let mut config = config(cli_assets());
    config.memory_mib = 512;
    QemuLauncher::new(config)
}

/// A user-mode network whose one UDP port `port` on the host's loopback reaches the same port in
/// the guest (the desktop's WebRTC port).
pub fn udp_from_loopback(port: u16) -> UserNetwork {
    UserNetwork {
        udp_forwards: vec![UdpForward {
            host: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            guest_port: port,
        }],
    }
}

/// The QEMU configuration of VMs booting `assets`, to adjust before making a backend.
pub fn config(assets: &VmAssets) -> QemuConfig {
    let mut config = QemuConfig::new(
        &assets.vhost_device_vsock,
        &assets.kernel,
        &assets.initramfs,
    );
    config.root_image = assets.root_image.clone();
    config.qemu = assets.qemu.clone();
    if config.root_image.is_some() {
        // The real CLIs in the disk images need AVX2 under emulation (see `tcg_cpu`).
        config.tcg_cpu = Some("max".into());
    }
    config
}
