//! Host tools a VM needs that Debian does not package: `vhost-device-vsock` (rust-vmm), the
//! vhost-user backend that gives each VM a hybrid vsock Unix socket without the host's vhost-vsock
//! kernel module. Installed with `cargo install` into the machine-wide cache
//! (`~/.cache/vm-agent/vm-tools/`) once, never committed.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::shell::{cargo, sh, sh_in, step};

/// The backend version the VM tests were measured with (0.3.0 has a known stall on large
/// simultaneous two-way streams; see VM-RECIPE).
pub const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// Path of the `vhost-device-vsock` binary, installing it first if absent.
pub fn vhost_device_vsock() -> Result<PathBuf> {
    let install_root = crate::image::cache()
        .join("vm-tools")
        .join(format!("vhost-device-vsock-{VHOST_DEVICE_VSOCK_VERSION}"));
    let bin = install_root.join("bin").join("vhost-device-vsock");
    if bin.exists() {
        step(&format!(
            "vhost-device-vsock {VHOST_DEVICE_VSOCK_VERSION}: {} (cached)",
            bin.display()
        ));
        return Ok(bin);
    }
    step(&format!(
        "installing vhost-device-vsock {VHOST_DEVICE_VSOCK_VERSION} into {} (once, 1-3 min)",
        install_root.display()
    ));
    sh(cargo()
        .args([
            "install",
            "--quiet",
            "vhost-device-vsock",
            "--version",
            VHOST_DEVICE_VSOCK_VERSION,
            "--root",
        ])
        .arg(&install_root))?;
    if !bin.exists() {
        bail!("cargo install succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

/// The one change to Debian's QEMU (see the patch's header): saving a VM with a vhost-user vsock
/// device, which golden snapshots and paused CLI VMs need.
const QEMU_PATCH: &str = include_str!("../qemu/vhost-user-vsock-migration.patch");
/// The installed Debian package whose source is built (and whose firmware the build uses).
const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Where Debian keeps source packages: the archive, then the security archive.
const DEBIAN_POOLS: &[&str] = &[
    "http://deb.debian.org/debian/pool/main/q/qemu",
    "http://deb.debian.org/debian-security/pool/updates/main/q/qemu",
];
/// The build: one target, what our VMs use (user networking, seccomp, fdt for microvm), nothing
/// else; firmware from Debian's installed qemu-system-data.
const QEMU_CONFIGURE: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--enable-slirp",
    "--enable-seccomp",
    "--enable-kvm",
    "--enable-tcg",
    "--enable-fdt=system",
    "--disable-docs",
    "--disable-gtk",
    "--disable-sdl",
    "--disable-vnc",
    "--disable-opengl",
    "--disable-virglrenderer",
    "--disable-spice",
    "--disable-curl",
    "--disable-libusb",
    "--disable-usb-redir",
    "--disable-xen",
    "--disable-werror",
    "--disable-tools",
    "--disable-guest-agent",
    "--disable-debug-info",
];

/// Path of the QEMU the VMs run: Debian 12's own QEMU source (the installed package's version,
/// with Debian's patches) plus [`QEMU_PATCH`], built once into the machine-wide cache (a few
/// minutes), keyed by the source version, the patch and the build options. Debian's QEMU (7.2,
/// and 10.0 in bookworm-backports) refuses to save a VM with a vhost-user vsock device.
pub fn qemu() -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${source:Version}", QEMU_PACKAGE])
        .output()?;
    let source_version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || source_version.is_empty() {
        bail!("{QEMU_PACKAGE} is not installed (cargo xtask setup installs it)");
    }
    let source_version = source_version.as_str();
    let upstream = source_version
        .split_once(':')
        .map_or(source_version, |(_, v)| v);
    let mut key = Sha256::new();
    key.update(upstream.as_bytes());
    key.update(QEMU_PATCH.as_bytes());
    key.update(QEMU_CONFIGURE.join(" ").as_bytes());
    let key: String = key.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = crate::image::cache()
        .join("vm-tools")
        .join(format!("qemu-{upstream}-{key}"));
    let bin = root.join("bin").join("qemu-system-x86_64");
    if bin.exists() {
        step(&format!(
            "QEMU {upstream} + vsock migration: {} (cached)",
            bin.display()
        ));
        return Ok(bin);
    }
    step(&format!(
        "building QEMU {upstream} from Debian's source with the vsock migration patch into {} (once, ~5 min)",
        root.display()
    ));
    let work = tempfile::Builder::new().prefix("qemu-build").tempdir()?;
    let dsc = fetch_source(work.path(), upstream)?;
    let src = work.path().join("src");
    sh_in(
        std::process::Command::new("dpkg-source")
            .args(["--no-check", "-x"])
            .arg(&dsc)
            .arg(&src),
        work.path(),
    )?;
    let patch = work.path().join("vsock.patch");
    std::fs::write(&patch, QEMU_PATCH)?;
    sh_in(
        std::process::Command::new("patch")
            .args(["-p1", "-i"])
            .arg(&patch),
        &src,
    )?;
    let build = src.join("build");
    std::fs::create_dir_all(&build)?;
    sh_in(
        std::process::Command::new(src.join("configure"))
            .arg(format!("--with-pkgversion=vm-agent-{key}"))
            .args(QEMU_CONFIGURE),
        &build,
    )?;
    sh_in(
        std::process::Command::new("ninja").args(["qemu-system-x86_64"]),
        &build,
    )?;
    std::fs::create_dir_all(root.join("bin"))?;
    let staged = root.join("bin").join(".qemu-system-x86_64.new");
    std::fs::copy(build.join("qemu-system-x86_64"), &staged)?;
    std::fs::rename(&staged, &bin)?;
    step(&format!("QEMU built: {}", bin.display()));
    Ok(bin)
}

/// Downloads Debian's source package `qemu` at `version` into `dir`, each file checked against
/// the `.dsc`'s SHA-256 (the `.dsc` comes over plain HTTP, as apt's does, but apt would check it
/// against the signed Release file: here it is checked against the installed package's version
/// only). Returns the `.dsc`.
fn fetch_source(dir: &std::path::Path, version: &str) -> Result<PathBuf> {
    let dsc_name = format!("qemu_{version}.dsc");
    let dsc = dir.join(&dsc_name);
    let pool = DEBIAN_POOLS
        .iter()
        .find(|pool| {
            std::process::Command::new("curl")
                .args(["-fsSL", "-o"])
                .arg(&dsc)
                .arg(format!("{pool}/{dsc_name}"))
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| anyhow::anyhow!("{dsc_name} is in none of {DEBIAN_POOLS:?}"))?;
    let text = std::fs::read_to_string(&dsc)?;
    let files: Vec<(String, String)> = text
        .split("Checksums-Sha256:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.nth(1)?.to_owned()))
        })
        .collect();
    if files.is_empty() {
        bail!("{dsc_name} lists no files");
    }
    for (sha256, name) in files {
        step(&format!("downloading {name}"));
        let path = dir.join(&name);
        sh(std::process::Command::new("curl")
            .args(["-fsSL", "-o"])
            .arg(&path)
            .arg(format!("{pool}/{name}")))?;
        use sha2::{Digest, Sha256};
        let got: String = Sha256::digest(std::fs::read(&path)?)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != sha256 {
            bail!("{name}: SHA-256 {got}, the .dsc says {sha256}");
        }
    }
    Ok(dsc)
}
