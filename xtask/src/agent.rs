//! The static release agent: what goes into every VM image.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::shell::{cargo, root, sh, step};

/// Target of the static agent.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the agent, checks it is static, prints `agent_size_bytes=N`, returns its path.
pub fn build() -> Result<PathBuf> {
    crate::setup::run()?;
    step("building the static agent (release, musl)");
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "vm-agent",
        "--bin",
        "vm-agent",
        "--target",
        TARGET,
    ]))?;
    let path = root()
        .join("target")
        .join(TARGET)
        .join("release")
        .join("vm-agent");
    let out = Command::new("file")
        .arg(&path)
        .output()
        .context("running `file` on the agent")?;
    let description = String::from_utf8_lossy(&out.stdout).to_string();
    if !description.contains("statically linked") && !description.contains("static-pie linked") {
        bail!("agent is not static: {description}");
    }
    let size = std::fs::metadata(&path)?.len();
    eprintln!("    {}", description.trim());
    println!("agent_size_bytes={size}");
    Ok(path)
}
