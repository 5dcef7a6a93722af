//! The real provider CLIs (from the npm registry) at their pinned versions
//! (`tests/fixtures/provider-clis/package.json`), installed once into the machine-wide cache by
//! the test kit (`test_kit::provider_clis`), which the tests and the provider check share.

use std::process::Command;

use anyhow::Result;

use crate::shell::{sh, step};

/// Installs npm when missing, then the pinned CLIs unless they are in the cache already.
pub fn install() -> Result<()> {
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
    let set = test_kit::provider_clis::pinned()?;
    step(&format!(
        "provider CLIs: {:?} in {}",
        set.versions,
        set.bin.display()
    ));
    Ok(())
}
