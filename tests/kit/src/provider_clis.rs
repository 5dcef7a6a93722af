//! The real provider CLIs from the npm registry: the pinned set (`tests/fixtures/provider-clis/
//! package.json`, what the tests and the images use) and, for `cargo xtask provider-check`, the
//! newest published versions. Each set is installed once into the machine-wide cache
//! (`~/.cache/vm-agent/provider-clis/<hash of its package.json>`), so a fresh clone on the same
//! machine reuses it and a fresh machine installs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The npm package of each provider, by provider id.
pub const PACKAGES: [(&str, &str); 3] = [
    ("claude_code", "@anthropic-ai/claude-code"),
    ("codex", "@openai/codex"),
    ("gemini_cli", "@google/gemini-cli"),
];

/// The commands each package installs, by provider id.
pub const COMMANDS: [(&str, &str); 3] = [
    ("claude_code", "claude"),
    ("codex", "codex"),
    ("gemini_cli", "gemini"),
];

/// Why a set of CLIs could not be had.
#[derive(Debug)]
pub struct InstallError(pub String);

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstallError {}

/// An installed set of CLIs.
#[derive(Debug, Clone)]
pub struct CliSet {
    /// Where `node_modules/.bin` is.
    pub bin: PathBuf,
    /// Provider id → installed version.
    pub versions: BTreeMap<String, String>,
}

/// The pinned `package.json`.
pub fn pinned_package_json() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/provider-clis/package.json")
}

/// The pinned CLIs, installed if missing. Progress goes to stderr.
pub fn pinned() -> Result<CliSet, InstallError> {
    let json = std::fs::read(pinned_package_json())
        .map_err(|e| InstallError(format!("reading the pinned CLI versions: {e}")))?;
    install(&json)
}

/// The newest published version of each provider's CLI (`npm view`).
pub fn newest_versions() -> Result<BTreeMap<String, String>, InstallError> {
    let mut versions = BTreeMap::new();
    for (provider, package) in PACKAGES {
        let out = Command::new("npm")
            .args(["view", package, "version"])
            .output()
            .map_err(|e| InstallError(format!("npm view {package}: {e}")))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || version.is_empty() {
            return Err(InstallError(format!(
                "npm view {package}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        versions.insert(provider.to_owned(), version);
    }
    Ok(versions)
}

/// The `package.json` of a set of exact versions (provider id → version).
pub fn package_json(versions: &BTreeMap<String, String>) -> Vec<u8> {
    let deps: serde_json::Map<String, serde_json::Value> = PACKAGES
        .iter()
        .filter_map(|(provider, package)| {
            versions
                .get(*provider)
                .map(|v| (package.to_string(), serde_json::Value::String(v.clone())))
        })
        .collect();
    let json = serde_json::json!({
        "name": "provider-clis",
        "private": true,
        "dependencies": deps,
    });
    serde_json::to_vec_pretty(&json).unwrap_or_default()
}

/// Installs the CLIs of `package_json` (exact versions) into the cache, unless there already.
pub fn install(package_json: &[u8]) -> Result<CliSet, InstallError> {
    let pins: serde_json::Value = serde_json::from_slice(package_json)
        .map_err(|e| InstallError(format!("package.json: {e}")))?;
    let key: String = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(package_json);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    };
    let dest = crate::cache_dir().join("provider-clis").join(key);
    let bin = dest.join("node_modules").join(".bin");
    let ready = dest.join(".installed");
    if !ready.exists() {
        eprintln!(
            "==> installing the provider CLIs (npm) into {}",
            dest.display()
        );
        std::fs::create_dir_all(&dest)
            .map_err(|e| InstallError(format!("{}: {e}", dest.display())))?;
        std::fs::write(dest.join("package.json"), package_json)
            .map_err(|e| InstallError(format!("package.json: {e}")))?;
        let status = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(&dest)
            .status()
            .map_err(|e| InstallError(format!("npm (cargo xtask setup installs it): {e}")))?;
        if !status.success() {
            return Err(InstallError(format!("npm install failed: {status}")));
        }
        std::fs::write(&ready, b"")
            .map_err(|e| InstallError(format!("{}: {e}", ready.display())))?;
    }
    let versions = PACKAGES
        .iter()
        .filter_map(|(provider, package)| {
            let version = pins["dependencies"][package].as_str()?;
            Some((provider.to_string(), version.to_owned()))
        })
        .collect();
    Ok(CliSet { bin, versions })
}

impl CliSet {
    /// The command of `provider` in this set.
    pub fn command(&self, provider: &str) -> Option<PathBuf> {
        let name = COMMANDS.iter().find(|(p, _)| *p == provider)?.1;
        let path = self.bin.join(name);
        path.exists().then_some(path)
    }

    /// The directory to put first on `PATH` for this set.
    pub fn path_dir(&self) -> &Path {
        &self.bin
    }
}
