//! The guest kernel: Debian's packaged kernel, unpacked to a plain ELF (booted directly through PVH,
//! ~3x faster than the compressed bzImage under emulation) plus the virtio/vsock modules it needs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::progress;

/// Modules the guest needs for vsock, in load order (each needs the ones before it). The microvm
/// machine has no PCI bus, so the virtio PCI modules (~20 ms to load under emulation) are left out.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// Modules of the desktop image's network card (virtio-net over virtio-mmio), in load order after
/// [`MODULES`]: WebRTC media reaches the VM over UDP, never over vsock.
pub const NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

/// Modules of an image booting from a disk (virtio-blk over virtio-mmio, an ext4 root), in load
/// order after [`MODULES`]. `crc32c_generic`: mkfs.ext4 enables metadata checksums.
pub const BLOCK_MODULES: &[&str] = &[
    "virtio_blk",
    "crc16",
    "mbcache",
    "jbd2",
    "crc32c_generic",
    "ext4",
];

/// The xz stream magic inside a bzImage.
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

/// An unpacked kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Debian package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The plain ELF kernel.
    pub vmlinux: PathBuf,
    /// Module files in [`MODULES`] order.
    pub modules: Vec<PathBuf>,
    /// Module files in [`NET_MODULES`] order.
    pub net_modules: Vec<PathBuf>,
    /// Module files in [`BLOCK_MODULES`] order.
    pub block_modules: Vec<PathBuf>,
}

/// Returns the cached kernel under `cache`, downloading and unpacking Debian's current guest kernel
/// package the first time.
pub fn ensure(cache: &Path) -> Result<Kernel> {
    let package = current_package(cache)?;
    let dir = cache.join(&package);
    let module_paths = |names: &[&str]| -> Vec<PathBuf> {
        names
            .iter()
            .map(|m| dir.join("modules").join(format!("{m}.ko")))
            .collect()
    };
    let kernel = Kernel {
        vmlinux: dir.join("vmlinux"),
        modules: module_paths(MODULES),
        net_modules: module_paths(NET_MODULES),
        block_modules: module_paths(BLOCK_MODULES),
        package,
    };
    // A kernel unpacked before a module was added to the lists is unpacked again.
    let all_there = kernel
        .modules
        .iter()
        .chain(&kernel.net_modules)
        .chain(&kernel.block_modules)
        .all(|m| m.exists());
    if dir.join("complete").exists() && all_there {
        progress(&format!("kernel: {} (cached)", kernel.package));
        return Ok(kernel);
    }
    // Per-process work directory: two builds at once (parallel tests) must not trample each other.
    let work = cache.join(format!("{}.partial-{}", kernel.package, std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    progress(&format!("kernel: downloading {}", kernel.package));
    // apt-get prints progress on stdout, which is kept for results: send it to stderr.
    run(Command::new("apt-get")
        .args(["download", "-q", &kernel.package])
        .stdout(std::io::stderr())
        .current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    progress("kernel: extracting vmlinuz and modules");
    let tree = work.join("tree");
    fs::create_dir_all(&tree)?;
    let mut wanted: Vec<String> = vec!["./boot/vmlinuz-*".into()];
    wanted.extend(
        MODULES
            .iter()
            .chain(NET_MODULES)
            .chain(BLOCK_MODULES)
            .map(|m| format!("*/{m}.ko")),
    );
    let mut tar = Command::new("tar");
    tar.arg("-x")
        .arg("--wildcards")
        .arg("-C")
        .arg(&tree)
        .args(&wanted);
    let deb_tar = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let status = tar
        .stdin(deb_tar.stdout.context("dpkg-deb stdout")?)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("extracting {} failed: {status}", deb.display());
    }
    let out = work.join("out");
    fs::create_dir_all(out.join("modules"))?;
    for m in MODULES.iter().chain(NET_MODULES).chain(BLOCK_MODULES) {
        let name = format!("{m}.ko");
        let found = find_file(&tree, &name)?
            .with_context(|| format!("{} has no {name} (compressed modules?)", kernel.package))?;
        fs::copy(&found, out.join("modules").join(&name))?;
    }
    let vmlinuz = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .context("package has no /boot/vmlinuz-*")?;
    progress("kernel: unpacking vmlinuz to a plain ELF");
    unpack_bzimage(&vmlinuz, &out.join("vmlinux"))?;
    fs::write(out.join("complete"), format!("{}\n", kernel.package))?;
    if dir.exists() && !(dir.join("complete").exists() && all_there) {
        fs::remove_dir_all(&dir)?;
    }
    // Losing the race to a concurrent build is fine: its result is the same.
    if let Err(e) = fs::rename(&out, &dir) {
        if !dir.join("complete").exists() {
            return Err(e).context(format!("installing {}", dir.display()));
        }
    }
    fs::remove_dir_all(&work)?;
    Ok(kernel)
}

/// The versioned package `linux-image-amd64` depends on (refreshing apt's lists once if they are
/// missing); falls back to the newest cached kernel when apt cannot say (offline).
fn current_package(cache: &Path) -> Result<String> {
    if let Some(pkg) = apt_kernel_package() {
        return Ok(pkg);
    }
    progress("kernel: apt does not know linux-image-amd64; running apt-get update");
    let _ = Command::new("apt-get").args(["update", "-q"]).status();
    if let Some(pkg) = apt_kernel_package() {
        return Ok(pkg);
    }
    let mut cached: Vec<String> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("complete").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    cached.pop().context(
        "apt-cache cannot name the guest kernel package (linux-image-amd64); run `apt-get update`",
    )
}

fn apt_kernel_package() -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(|p| p.trim().to_string())
}

/// Decompresses the xz payload of a bzImage into the plain ELF kernel inside it.
fn unpack_bzimage(vmlinuz: &Path, vmlinux: &Path) -> Result<()> {
    let data = fs::read(vmlinuz)?;
    let start = data
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz stream in vmlinuz (not an xz-compressed bzImage)")?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(vmlinux)?)
        .spawn()
        .context("running xz (install xz-utils)")?;
    // Everything after the stream is trailing bzImage data; --single-stream ignores it.
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = data[start..].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&payload));
    let status = xz.wait()?;
    // xz stops reading after the stream: a broken pipe from the feeder is expected.
    let _ = feeder.join();
    if !status.success() {
        bail!("xz failed to unpack {}", vmlinuz.display());
    }
    let head = fs::read(vmlinux)?;
    if !head.starts_with(b"\x7fELF") {
        bail!("unpacked kernel {} is not an ELF", vmlinux.display());
    }
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(p) = find_file(&path, name)? {
                return Ok(Some(p));
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd);
    }
    Ok(())
}
