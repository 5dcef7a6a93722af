//! Running commands with visible progress.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A progress line on stderr.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs `cmd` from the workspace root, inheriting output; fails on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    sh_in(cmd, &root())
}

/// [`sh`] in `dir`.
pub fn sh_in(cmd: &mut Command, dir: &std::path::Path) -> Result<()> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let status = cmd
        .current_dir(dir)
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    eprintln!("    ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo` with the same toolchain that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The async runtime xtask's commands run on: two workers, the cores CI has, so a bench's client
/// side never takes more than the machine's share it is measured against.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
