//! Playwright (`playwright-core` from the npm registry, no bundled browsers) driving Debian's
//! Chromium: installed once into the machine-wide cache at a pinned version.

use std::path::PathBuf;
use std::process::Command;

/// The pinned `playwright-core` (its Node.js requirement is met by Debian 12's Node 18).
pub const VERSION: &str = "1.48.2";

/// The `playwright-core` package directory, installed with npm if missing.
pub fn playwright_core() -> std::io::Result<PathBuf> {
    let dir = crate::cache_dir().join("playwright").join(VERSION);
    let package = dir.join("node_modules/playwright-core");
    if package.join("package.json").exists() {
        return Ok(package);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "installing playwright-core@{VERSION} into {}",
        dir.display()
    );
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .arg(format!("playwright-core@{VERSION}"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()?;
    if !status.success() || !package.join("package.json").exists() {
        return Err(std::io::Error::other(format!(
            "npm install playwright-core@{VERSION} failed ({status})"
        )));
    }
    Ok(package)
}
