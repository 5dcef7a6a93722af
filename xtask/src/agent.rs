//! The static release agent, in its two flavours: what goes into every VM image.
//!
//! The CLI VM has no display, so its agent is built without the `desktop` feature (no video,
//! WebRTC or X11 code); the browser VM's agent has it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::shell::{cargo, root, sh, step};

/// Target of the static agent.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The agent's build profile (the workspace's Cargo.toml: release with whole-program LTO).
const PROFILE: &str = "agent";

/// Crates only the desktop brings in; the CLI VM's agent must have none of them.
const DESKTOP_ONLY_CRATES: &[&str] = &["agent-desktop", "openh264", "str0m", "x11rb"];

/// One flavour of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The CLI VM's agent: no desktop.
    Cli,
    /// The browser VM's agent: with the desktop.
    Desktop,
}

impl Flavour {
    /// The figure name of its size.
    fn size_figure(self) -> &'static str {
        match self {
            Flavour::Cli => "agent_size_bytes",
            Flavour::Desktop => "agent_desktop_size_bytes",
        }
    }

    /// Where the built binary is kept (the build of the other flavour overwrites cargo's own).
    fn kept_at(self) -> PathBuf {
        let name = match self {
            Flavour::Cli => "vm-agent",
            Flavour::Desktop => "vm-agent-desktop",
        };
        root().join("target").join("agents").join(name)
    }

    fn features(self) -> &'static [&'static str] {
        match self {
            Flavour::Cli => &["--no-default-features"],
            Flavour::Desktop => &["--features", "desktop"],
        }
    }
}

/// The two agents, built.
#[derive(Debug, Clone)]
pub struct Agents {
    /// Without the desktop (CLI VMs, and any VM without a display).
    pub cli: PathBuf,
    /// With the desktop (browser VMs).
    pub desktop: PathBuf,
}

/// Builds both flavours, checks they are static and that the CLI flavour has no desktop code,
/// prints `agent_size_bytes=N` and `agent_desktop_size_bytes=N`.
pub fn build() -> Result<Agents> {
    crate::setup::run()?;
    Ok(Agents {
        cli: build_flavour(Flavour::Cli)?,
        desktop: build_flavour(Flavour::Desktop)?,
    })
}

/// Builds one flavour (checked static; the CLI flavour checked free of desktop code) and prints
/// its size figure; returns where it is kept.
pub fn build_flavour(flavour: Flavour) -> Result<PathBuf> {
    if flavour == Flavour::Cli {
        check_cli_has_no_desktop()?;
    }
    step(&format!(
        "building the static agent (profile {PROFILE}, musl, {})",
        match flavour {
            Flavour::Cli => "without the desktop: the CLI VM's",
            Flavour::Desktop => "with the desktop: the browser VM's",
        }
    ));
    let kept = flavour.kept_at();
    let agents = kept.parent().context("agents directory")?;
    std::fs::create_dir_all(agents)?;
    // Both flavours land at one cargo path: held from the build to the copy, so another xtask
    // (tests build images in parallel) cannot put the other flavour there in between.
    let lock = std::fs::File::create(agents.join(".build.lock"))?;
    lock.lock().context("locking the agent build")?;
    sh(cargo()
        .args(["build", "--profile", PROFILE, "--package", "vm-agent"])
        .args(["--bin", "vm-agent"])
        .args(flavour.features())
        .args(["--target", TARGET]))?;
    let built = root()
        .join("target")
        .join(TARGET)
        .join(PROFILE)
        .join("vm-agent");
    check_static(&built)?;
    // Copied to a temporary name and renamed: a VM image build reading the old one never sees
    // half a binary.
    let tmp = kept.with_extension("tmp");
    std::fs::copy(&built, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::rename(&tmp, &kept)?;
    drop(lock);
    println!(
        "{}={}",
        flavour.size_figure(),
        std::fs::metadata(&kept)?.len()
    );
    Ok(kept)
}

fn check_static(path: &Path) -> Result<()> {
    let out = Command::new("file")
        .arg(path)
        .output()
        .context("running `file` on the agent")?;
    let description = String::from_utf8_lossy(&out.stdout).to_string();
    if !description.contains("statically linked") && !description.contains("static-pie linked") {
        bail!("agent is not static: {description}");
    }
    eprintln!("    {}", description.trim());
    Ok(())
}

/// Fails when the CLI flavour's dependency tree has any crate only the desktop needs.
fn check_cli_has_no_desktop() -> Result<()> {
    let out = cargo()
        .args(["tree", "--package", "vm-agent", "--no-default-features"])
        .args(["--target", TARGET, "--edges", "normal", "--prefix", "none"])
        .current_dir(root())
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = DESKTOP_ONLY_CRATES
        .iter()
        .copied()
        .filter(|c| tree.lines().any(|l| l.split(' ').next() == Some(*c)))
        .collect();
    if !found.is_empty() {
        bail!("the CLI VM's agent depends on desktop crates: {found:?}");
    }
    Ok(())
}
