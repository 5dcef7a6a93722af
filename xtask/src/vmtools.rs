//! Host tools a VM needs that Debian does not package: `vhost-device-vsock` (rust-vmm), the
//! vhost-user backend that gives each VM a hybrid vsock Unix socket without the host's vhost-vsock
//! kernel module. Installed with `cargo install` into the machine-wide cache
//! (`~/.cache/vm-agent/vm-tools/`) once, never committed.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::shell::{cargo, sh, step};

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
