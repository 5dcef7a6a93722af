//! Installs what the project needs on a fresh Debian 12 machine. Idempotent: installed pieces are
//! skipped, so it is cheap to run before every test run.

use std::process::Command;

use anyhow::{bail, Result};

use crate::shell::{sh, step};

/// Debian packages the build, the tests and the benchmarks use. Each helper of the project adds
/// what its tests need here, with the reason.
pub const APT_PACKAGES: &[&str] = &[
    // `file` proves the agent is statically linked; musl-tools links C code into the static agent.
    "file",
    "musl-tools",
    // mkfs.ext4 and mount make ext4/tmpfs scratch file systems for the credential tests when the
    // machine has none; unshare runs the provider CLIs without network.
    "e2fsprogs",
    "util-linux",
    // Real microVMs (issue 6): QEMU (its firmware; the binary is built, see below), a static
    // busybox for the guest shell, xz to unpack Debian's guest kernel into a plain ELF.
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    // The VMs' QEMU is Debian's own source with one patch (xtask/qemu/): what builds it.
    "dpkg-dev",
    "patch",
    "meson",
    "ninja-build",
    "pkg-config",
    "flex",
    "bison",
    "libglib2.0-dev",
    "libpixman-1-dev",
    "libslirp-dev",
    "libseccomp-dev",
    "libfdt-dev",
    // The store's tests and `bench egress` run against a real PostgreSQL server (started by xtask as
    // a throwaway loopback-only cluster; the package's own cluster is not used).
    "postgresql",
    // Desktop (issue 7): nasm assembles OpenH264's SIMD kernels (without it the encoder silently
    // falls back to slow C); the tests run a real X server, headless Chromium as the viewer,
    // xdotool to find windows, and zenity as the GTK3 client that must receive typed keys.
    "nasm",
    "xvfb",
    "chromium",
    "xdotool",
    "zenity",
    // Desktop clipboard tests: xclip is the real X client that copies into and pastes from the
    // VM's CLIPBOARD/PRIMARY selections.
    "xclip",
    // Desktop TURN relay tests: coturn's `turnserver` is the real TURN server the agent allocates
    // a relay on (started by the tests on loopback; the package's own service is not used).
    "coturn",
    // `cargo xtask fuzz` (issue 3): cargo-fuzz's libfuzzer-sys compiles libFuzzer's C++ sources.
    "g++",
    // The provider check (and its test on the pinned CLIs): pyte is the independent terminal
    // emulator that reads the CLIs' output besides the agent's detector; `ip` brings loopback up
    // in the network namespace each CLI runs in.
    "python3-pyte",
    "iproute2",
    // The golden images (issue 13): mmdebstrap builds their Debian root file systems, qemu-img
    // makes each VM's copy-on-write overlay (Debian 12's, matching its qemu-system-x86; a newer
    // qemu-utils is replaced by it).
    "mmdebstrap",
    "qemu-utils",
    // Egress (issue 14): squid is the users' real upstream proxy (basic auth, a port per user;
    // started by the tests, the package's own service is not used), curl the client through the
    // agent's proxy, openssl the HTTPS origin's certificate.
    "squid",
    "curl",
    "openssl",
];

/// Rust targets the project builds for.
pub const RUST_TARGETS: &[&str] = &["x86_64-unknown-linux-musl"];

/// Runs the setup.
pub fn run() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        step("system packages: all present");
    } else {
        step(&format!(
            "installing system packages: {}",
            missing.join(" ")
        ));
        if !is_root() {
            bail!(
                "installing packages needs root; run as root or install: {}",
                missing.join(" ")
            );
        }
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    let targets = String::from_utf8_lossy(&targets.stdout).to_string();
    for t in RUST_TARGETS {
        if !targets.lines().any(|l| l.trim() == *t) {
            step(&format!("adding rust target {t}"));
            sh(Command::new("rustup").args(["target", "add", t]))?;
        }
    }
    crate::clis::install()?;
    // The page's tests: Playwright drives Debian's Chromium (no browser download).
    let playwright = test_kit::playwright::playwright_core()?;
    step(&format!("playwright-core: {}", playwright.display()));
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
