//! The real provider CLIs (from the npm registry) that the credential tests run offline to prove a
//! pushed credential file makes them consider themselves logged in. Pinned in
//! `tests/fixtures/provider-clis/package.json`, installed once into `target/provider-clis`.

use std::process::Command;

use anyhow::{Context, Result};

use crate::shell::{root, sh, step};

/// Installs the pinned CLIs unless the same pins are already installed.
pub fn install() -> Result<()> {
    let pins = root().join("tests/fixtures/provider-clis/package.json");
    let dest = root().join("target/provider-clis");
    let wanted = std::fs::read(&pins).with_context(|| format!("reading {}", pins.display()))?;
    let installed_pins = std::fs::read(dest.join("package.json")).unwrap_or_default();
    let bins = ["claude", "codex"].map(|b| dest.join("node_modules/.bin").join(b));
    if installed_pins == wanted && bins.iter().all(|b| b.exists()) {
        step("provider CLIs: present");
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        step("installing nodejs and npm (the provider CLIs come from the npm registry)");
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nodejs",
                "npm",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    step("installing the provider CLIs (npm) into target/provider-clis");
    std::fs::create_dir_all(&dest)?;
    std::fs::write(dest.join("package.json"), &wanted)?;
    sh(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&dest))
}
