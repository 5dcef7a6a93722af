//! What the desktop image adds to the test image: an X server (Debian's Xvfb with the shared
//! libraries `ldd` names, `xkbcomp` and the keyboard data it compiles), the network card's modules
//! (WebRTC media reaches the VM over UDP), and `x-probe`, the static X client of the tests
//! (tests/guest-x-probe). Files keep their host paths, so the guest's dynamic loader finds the
//! libraries where the host's does.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;

/// Programs copied with their libraries.
const PROGRAMS: &[&str] = &["/usr/bin/Xvfb", "/usr/bin/xkbcomp"];
/// The keyboard descriptions Xvfb compiles its keymap from.
const XKB_DATA: &str = "/usr/share/X11/xkb";
/// Where the static X client of the tests lives in the guest.
const GUEST_PROBE: &str = "/usr/bin/x-probe";
/// Where Xvfb writes compiled keymaps; must exist.
const XKB_OUTPUT: &str = "/var/lib/xkb";

/// The desktop's files, read into memory (hashed into the image's cache key, then packed).
pub struct Desktop {
    /// Guest path to (mode, content) of regular files.
    files: BTreeMap<String, (u32, Vec<u8>)>,
    /// Guest path to target of symbolic links.
    links: BTreeMap<String, String>,
}

impl Desktop {
    /// Builds x-probe and reads Xvfb, xkbcomp, their libraries and the XKB data.
    pub fn collect() -> Result<Desktop> {
        let mut files = BTreeMap::new();
        let mut links = BTreeMap::new();
        for program in PROGRAMS {
            let path = Path::new(program);
            if !path.exists() {
                bail!("{program} is missing: install Debian's xvfb and x11-xkb-utils (cargo xtask setup)");
            }
            add_file(&mut files, path, 0o755)?;
            for lib in shared_libraries(path)? {
                add_file(&mut files, &lib, 0o755)?;
            }
        }
        walk(Path::new(XKB_DATA), &mut files, &mut links)?;
        let probe = super::build_guest_binary("guest-x-probe")?;
        let data = fs::read(&probe).with_context(|| format!("reading {}", probe.display()))?;
        if super::has_interpreter(&data) {
            bail!("{} is dynamically linked", probe.display());
        }
        files.insert(GUEST_PROBE.to_owned(), (0o755, data));
        Ok(Desktop { files, links })
    }

    /// Feeds every byte that ends up in the image into the image's cache key.
    pub fn hash_into(&self, hash: &mut Sha256) {
        hash.update(b"desktop");
        for (path, (mode, data)) in &self.files {
            hash.update(path.as_bytes());
            hash.update(mode.to_le_bytes());
            hash.update((data.len() as u64).to_le_bytes());
            hash.update(data);
        }
        for (path, target) in &self.links {
            hash.update(path.as_bytes());
            hash.update(target.as_bytes());
        }
    }

    /// A one-line summary for progress output.
    pub fn describe(&self) -> String {
        let bytes: usize = self.files.values().map(|(_, d)| d.len()).sum();
        format!(
            "Xvfb, xkbcomp, x-probe and {} more files ({} KiB)",
            self.files.len().saturating_sub(3),
            bytes / 1024
        )
    }

    /// Writes every file and link with its parent directories, and the keymap output directory.
    pub fn pack<W: std::io::Write>(&self, w: &mut CpioWriter<W>) -> std::io::Result<()> {
        for (path, (mode, data)) in &self.files {
            w.parents(path)?;
            w.file(path, *mode, data)?;
        }
        for (path, target) in &self.links {
            w.parents(path)?;
            w.symlink(path, target)?;
        }
        w.parents(&format!("{XKB_OUTPUT}/x"))
    }
}

/// Adds the file at `path` (links followed) under its own path.
fn add_file(files: &mut BTreeMap<String, (u32, Vec<u8>)>, path: &Path, mode: u32) -> Result<()> {
    let guest = path.to_str().context("non-UTF-8 path")?.to_owned();
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    files.insert(guest, (mode, data));
    Ok(())
}

/// The libraries `ldd` resolves for `program`, with the dynamic loader, as absolute paths.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", program.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            // `libX.so.6 => /lib/.../libX.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let word = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            word.starts_with('/').then(|| PathBuf::from(word))
        })
        .collect();
    if libs.is_empty() {
        bail!("ldd named no libraries for {}: {text}", program.display());
    }
    Ok(libs)
}

/// Adds the tree under `dir`: files as read-only data, links as links.
fn walk(
    dir: &Path,
    files: &mut BTreeMap<String, (u32, Vec<u8>)>,
    links: &mut BTreeMap<String, String>,
) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let kind = fs::symlink_metadata(&path)?.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path)?;
            let guest = path.to_str().context("non-UTF-8 path")?.to_owned();
            links.insert(guest, target.to_string_lossy().into_owned());
        } else if kind.is_dir() {
            walk(&path, files, links)?;
        } else {
            add_file(files, &path, 0o644)?;
        }
    }
    Ok(())
}
