//! `cargo xtask image minimal|desktop`: the test images. Debian's guest kernel as a plain ELF, and an initramfs
//! holding the static agent as PID 1 (`/init`), static busybox for a shell, the vsock modules the
//! agent loads at boot, and the fake CLIs of the tests (`claude`, `codex`, `gemini` on `PATH`). The
//! desktop image adds an X server and a network card for WebRTC media ([`desktop`]). Cached under
//! `target/vm-image/`, keyed by a hash of every input, so an unchanged image costs nothing and a
//! changed agent is picked up.

pub mod cpio;
pub mod desktop;
pub mod fake_clis;
pub mod kernel;
pub mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Bumped when the layout below changes, so old cached images are not reused.
const LAYOUT_VERSION: &str = "layout-4";

/// The unprivileged guest user of every image: name, uid (and gid), home.
pub const GUEST_USER: &str = "user";
/// See [`GUEST_USER`].
pub const GUEST_UID: u32 = 1000;
/// See [`GUEST_USER`]: where the CLIs keep their credentials (the orchestrator's word for it).
pub const GUEST_HOME: &str = orchestrator::vm::GUEST_HOME;

/// Where the agent finds the module load order in the image (one file name per line).
pub const MODULE_ORDER_PATH: &str = "/lib/modules/load-order";

/// A built image: what a VM boots.
#[derive(Debug, Clone)]
pub struct Image {
    /// Plain ELF kernel.
    pub kernel: PathBuf,
    /// Uncompressed newc initramfs.
    pub initramfs: PathBuf,
}

/// The images `cargo xtask image` builds.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Test image: Debian's kernel, the static agent as PID 1, busybox, vsock modules, fake CLIs.
    Minimal,
    /// The test image with Xvfb, a network card's modules and x-probe, for the desktop in a VM.
    Desktop,
    /// The browser VM's golden disk: Debian 12 with X, a window manager, a terminal, Chromium,
    /// Node.js, the real CLIs and the agent with its desktop (see rootfs/browser).
    Browser,
    /// The CLI VM's golden disk: Debian 12 with Node.js, the real CLIs and the agent without its
    /// desktop (see rootfs/cli).
    Cli,
}

impl Which {
    /// The agent the image's VMs run: the desktop and browser images' stream their display.
    fn agent(self) -> crate::agent::Flavour {
        match self {
            Which::Minimal | Which::Cli => crate::agent::Flavour::Cli,
            Which::Desktop | Which::Browser => crate::agent::Flavour::Desktop,
        }
    }

    /// Name of the image, as on the command line.
    fn name(self) -> &'static str {
        match self {
            Which::Minimal => "minimal",
            Which::Desktop => "desktop",
            Which::Browser => "browser",
            Which::Cli => "cli",
        }
    }

    /// The golden disk the initramfs switches to, for the disk images.
    fn golden(self) -> Option<rootfs::Golden> {
        match self {
            Which::Minimal | Which::Desktop => None,
            Which::Browser => Some(rootfs::Golden::Browser),
            Which::Cli => Some(rootfs::Golden::Cli),
        }
    }
}

/// Everything needed to boot a test VM, as printed by `cargo xtask image <which>`.
#[derive(Debug, Clone)]
pub struct VmAssets {
    /// The image.
    pub image: Image,
    /// The golden root disk (raw ext4, read-only: VMs boot from copy-on-write overlays of it), for
    /// the disk images.
    pub root_image: Option<PathBuf>,
    /// The vhost-user vsock backend binary.
    pub vhost_device_vsock: PathBuf,
    /// The QEMU the VMs run ([`crate::vmtools::qemu`]).
    pub qemu: PathBuf,
}

impl VmAssets {
    /// How the test kit configures VMs of these assets (a disk image's real CLIs need `-cpu max`
    /// under emulation), to adjust before making a launcher.
    pub fn qemu_config(&self) -> orchestrator::vm::QemuConfig {
        test_kit::vm::config(&test_kit::vm::VmAssets {
            kernel: self.image.kernel.clone(),
            initramfs: self.image.initramfs.clone(),
            root_image: self.root_image.clone(),
            vhost_device_vsock: self.vhost_device_vsock.clone(),
            qemu: self.qemu.clone(),
        })
    }
}

/// The machine-wide cache of images, kernels and tools: a fresh clone on the same machine
/// reuses them, a fresh machine builds them.
pub fn cache() -> PathBuf {
    test_kit::cache_dir()
}

/// Builds the static agent, the image around it and installs the vsock backend (all cached).
pub fn prepare(which: Which) -> Result<VmAssets> {
    crate::setup::run()?;
    let agent = crate::agent::build_flavour(which.agent())?;
    let vhost_device_vsock = crate::vmtools::vhost_device_vsock()?;
    let qemu = crate::vmtools::qemu()?;
    let cache = cache().join("vm-image");
    let root_image = match which.golden() {
        Some(golden) => Some(rootfs::build(&cache, golden, &agent)?),
        None => None,
    };
    // A disk image's initramfs only switches to the disk: the CLI agent is enough for that.
    let boot_agent = match which.golden() {
        Some(_) => crate::agent::build_flavour(crate::agent::Flavour::Cli)?,
        None => agent,
    };
    let image = build(&cache, &boot_agent, which)?;
    Ok(VmAssets {
        image,
        root_image,
        vhost_device_vsock,
        qemu,
    })
}

/// `cargo xtask image <which>`: builds and prints `kernel=`, `initramfs=`, `root_image=` (disk
/// images), `vhost_device_vsock=` and `qemu=` lines (the VM tests read them). With `snapshot`
/// (browser image only), also makes the golden snapshot the demo's browser VMs are restored from
/// and prints `snapshot=`.
pub fn run(which: Which, snapshot: bool) -> Result<()> {
    if snapshot && which != Which::Browser {
        bail!("--snapshot is for the browser image");
    }
    let assets = prepare(which)?;
    if snapshot {
        let mut config = assets.qemu_config();
        config.memory_mib = 1024;
        config.vcpus = 2;
        let dir = browser_snapshot_dir(&config, true);
        progress(&format!(
            "golden snapshot {} (booting the browser VM until Chromium is ready, then saving it)",
            dir.display()
        ));
        let backend = orchestrator::vm::QemuVmBackend::new(
            orchestrator::vm::QemuLauncher::new(config),
            GUEST_HOME,
        )
        .with_desktop_forwards(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            crate::demo::DESKTOP_PORTS.0,
            crate::demo::DESKTOP_PORTS.1,
        )
        .with_browser_snapshot(&dir);
        let made = crate::shell::runtime()?
            .block_on(backend.browser_snapshot())
            .context("snapshots are on")?
            .map_err(|e| anyhow::anyhow!("making the snapshot: {e}"))?;
        progress(&format!(
            "snapshot ready: {} bytes of state",
            made.state_bytes()
        ));
        println!("snapshot={}", dir.display());
    }
    println!("kernel={}", assets.image.kernel.display());
    println!("initramfs={}", assets.image.initramfs.display());
    if let Some(root) = &assets.root_image {
        println!("root_image={}", root.display());
    }
    println!("vhost_device_vsock={}", assets.vhost_device_vsock.display());
    println!("qemu={}", assets.qemu.display());
    Ok(())
}

/// Where the golden browser snapshot for VMs of `config` (with a network card or not) lives: in
/// the image cache, named by the image and the machine, so the demo's and the benchmark's
/// machines keep one each. A changed image, QEMU or machine is caught by the snapshot's own
/// record and the snapshot rebuilt in place.
pub fn browser_snapshot_dir(config: &orchestrator::vm::QemuConfig, network: bool) -> PathBuf {
    let image = config.root_image.as_deref().unwrap_or(&config.initramfs);
    let stem = image
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    cache().join("vm-image").join("snapshots").join(format!(
        "{stem}-{}m-{}c{}",
        config.memory_mib,
        config.vcpus,
        if network { "-net" } else { "" }
    ))
}

/// Prints one progress line on stderr (stdout is kept for results).
pub fn progress(msg: &str) {
    crate::shell::step(&format!("image: {msg}"));
}

/// Builds (or finds cached) the image `which` around the static `agent` binary.
pub fn build(cache: &Path, agent: &Path, which: Which) -> Result<Image> {
    fs::create_dir_all(cache)?;
    let kernel = kernel::ensure(&cache.join("kernel"))?;
    // The test images carry a shell and the fake CLIs; a disk image's initramfs only the agent
    // and the modules it needs to reach its disk.
    let test_image = which.golden().is_none();
    let busybox = if test_image {
        Some(find_static_busybox()?)
    } else {
        None
    };
    let fake_clis = if test_image {
        Some(fake_clis::FakeClis::collect()?)
    } else {
        None
    };
    let desktop = match which {
        Which::Desktop => Some(desktop::Desktop::collect()?),
        _ => None,
    };
    let module_paths: Vec<&PathBuf> = match which {
        Which::Minimal => kernel.modules.iter().collect(),
        Which::Desktop => kernel.modules.iter().chain(&kernel.net_modules).collect(),
        Which::Browser => kernel
            .modules
            .iter()
            .chain(&kernel.net_modules)
            .chain(&kernel.block_modules)
            .collect(),
        Which::Cli => kernel.modules.iter().chain(&kernel.block_modules).collect(),
    };

    let agent_bytes = fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    let busybox_bytes = match &busybox {
        Some(b) => fs::read(b)?,
        None => Vec::new(),
    };
    let applets = match &busybox {
        Some(b) => busybox_applets(b)?,
        None => Vec::new(),
    };
    let mut modules = Vec::new();
    for path in module_paths {
        let name = path
            .file_name()
            .context("module path")?
            .to_string_lossy()
            .into_owned();
        modules.push((name, fs::read(path)?));
    }

    let mut hash = Sha256::new();
    hash.update(LAYOUT_VERSION);
    hash.update(&agent_bytes);
    hash.update(&busybox_bytes);
    for (name, bytes) in &modules {
        hash.update(name);
        hash.update(bytes);
    }
    if let Some(fake_clis) = &fake_clis {
        fake_clis.hash_into(&mut hash);
    }
    if let Some(desktop) = &desktop {
        desktop.hash_into(&mut hash);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out_dir = cache.join(format!("{}-{key}", which.name()));
    let initramfs = out_dir.join("initramfs.cpio");
    prune_old_images(cache, which.name(), &out_dir);
    if initramfs.exists() {
        progress(&format!("initramfs: {} (cached)", initramfs.display()));
        return Ok(Image {
            kernel: kernel.vmlinux,
            initramfs,
        });
    }
    progress(&format!(
        "initramfs: packing agent ({} KiB), {} modules{}{}",
        agent_bytes.len() / 1024,
        modules.len(),
        fake_clis
            .as_ref()
            .map(|f| format!(", busybox, {}", f.describe()))
            .unwrap_or_default(),
        desktop
            .as_ref()
            .map(|d| format!(", {}", d.describe()))
            .unwrap_or_default()
    ));
    fs::create_dir_all(&out_dir)?;
    let partial = out_dir.join(format!("initramfs.cpio.partial-{}", std::process::id()));
    let mut w = cpio::CpioWriter::new(std::io::BufWriter::new(fs::File::create(&partial)?));
    for dir in [
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/root",
        "/etc",
        "/lib",
        "/lib/modules",
        "/run",
        "/var",
        "/home",
    ] {
        let mode = if dir == "/tmp" { 0o1777 } else { 0o755 };
        w.dir(dir, mode)?;
    }
    w.char_device("/dev/console", 0o600, 5, 1)?;
    w.char_device("/dev/null", 0o666, 1, 3)?;
    w.file("/usr/bin/vm-agent", 0o755, &agent_bytes)?;
    w.symlink("/init", "/usr/bin/vm-agent")?;
    if busybox.is_some() {
        w.file("/bin/busybox", 0o755, &busybox_bytes)?;
        for applet in &applets {
            if applet != "bin/busybox" {
                w.symlink(&format!("/{applet}"), "/bin/busybox")?;
            }
        }
    }
    let mut order = String::new();
    for (name, bytes) in &modules {
        w.file(&format!("/lib/modules/{name}"), 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file(MODULE_ORDER_PATH, 0o644, order.as_bytes())?;
    if let Some(fake_clis) = &fake_clis {
        fake_clis.pack(&mut w)?;
    }
    if let Some(desktop) = &desktop {
        desktop.pack(&mut w)?;
    }
    // The unprivileged user every exec and PTY program runs as (the agent alone is root), as
    // in the golden images (`rootfs/common/setup.sh`).
    w.dir_owned(GUEST_HOME, 0o700, GUEST_UID, GUEST_UID)?;
    w.file(
        "/etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\n{GUEST_USER}:x:{GUEST_UID}:{GUEST_UID}::{GUEST_HOME}:/bin/sh\n"
        )
        .as_bytes(),
    )?;
    w.file(
        "/etc/group",
        0o644,
        format!("root:x:0:\n{GUEST_USER}:x:{GUEST_UID}:\n").as_bytes(),
    )?;
    w.dir("/etc/vm-agent", 0o755)?;
    w.file(
        "/etc/vm-agent/agent.toml",
        0o644,
        format!("# Programs run as the unprivileged user.\nuser = \"{GUEST_USER}\"\n").as_bytes(),
    )?;
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&partial, &initramfs)?;
    progress(&format!("initramfs: {}", initramfs.display()));
    Ok(Image {
        kernel: kernel.vmlinux,
        initramfs,
    })
}

/// Builds workspace package `package` (release, static musl, like the agent) for the guest and
/// returns its binary, named like the package.
pub fn build_guest_binary(package: &str) -> Result<PathBuf> {
    crate::shell::step(&format!(
        "building the static {package} for the image (release, musl)"
    ));
    crate::shell::sh(crate::shell::cargo().args([
        "build",
        "--release",
        "--package",
        package,
        "--target",
        crate::agent::TARGET,
    ]))?;
    Ok(crate::shell::root()
        .join("target")
        .join(crate::agent::TARGET)
        .join("release")
        .join(package))
}

/// Removes builds of image `name` from earlier inputs (every agent change makes one), keeping
/// `current`.
fn prune_old_images(cache: &Path, name: &str, current: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let old = entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}-"))
            && path != current;
        if old && fs::remove_dir_all(&path).is_ok() {
            progress(&format!("removed the outdated image {}", path.display()));
        }
    }
}

/// Debian's `busybox-static` binary; refuses a dynamically linked busybox (it would not run in
/// an image without a libc).
fn find_static_busybox() -> Result<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let data = fs::read(&path).context("no /bin/busybox: install busybox-static")?;
    if has_interpreter(&data) {
        bail!("/bin/busybox is dynamically linked: install busybox-static");
    }
    Ok(path)
}

/// Whether an ELF64 file names a program interpreter (i.e. is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

/// Applet paths (`bin/sh`, `usr/bin/awk`, ...) as busybox lists them.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked on glibc hosts.
        assert!(has_interpreter(&me));
        assert!(!has_interpreter(b"not an elf"));
    }
}
