//! The fake CLIs of the test image: `fake-cli` (tests/kit/src/bin/fake-cli/main.rs, built static for musl
//! through its own small package `tests/guest-fake-cli`), the recorded login flows it replays
//! (tests/fixtures/cli), and wrapper scripts named like the real CLIs (rootfs/fake-clis) on the
//! guest's `PATH`, so a login in the VM runs `codex login` exactly as it would with the real CLI.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use crate::shell::root;

/// Where the static fake-cli binary lives in the guest (the wrappers exec it).
const GUEST_BINARY: &str = "/usr/lib/fake-cli/fake-cli";
/// Where the wrappers' shared shell functions live in the guest.
const GUEST_COMMON: &str = "/usr/lib/fake-cli/common.sh";
/// Where the recordings live in the guest: `<provider>/<case>-<cols>x<rows>/`.
const GUEST_FIXTURES: &str = "/usr/share/fake-cli";
/// Where the wrappers go: on the agent's default `PATH`, ahead of `/usr/bin` and `/bin`.
const GUEST_WRAPPERS: &str = "/usr/local/bin";
/// The wrappers, named like the real CLIs.
const WRAPPERS: [&str; 3] = ["claude", "codex", "gemini"];

/// Everything the image needs for the fake CLIs, read into memory (hashed into the image's cache
/// key, then packed).
pub struct FakeClis {
    binary: Vec<u8>,
    common: Vec<u8>,
    wrappers: Vec<(String, Vec<u8>)>,
    /// Recording files as (path relative to the fixtures root, content), sorted.
    fixtures: Vec<(String, Vec<u8>)>,
}

impl FakeClis {
    /// Builds the static fake-cli (cargo's cache makes this quick when nothing changed) and reads
    /// the wrappers and recordings.
    pub fn collect() -> Result<FakeClis> {
        let binary_path = super::build_guest_binary("guest-fake-cli")?;
        let binary =
            fs::read(&binary_path).with_context(|| format!("reading {}", binary_path.display()))?;
        if super::has_interpreter(&binary) {
            bail!("{} is dynamically linked", binary_path.display());
        }
        let scripts = root().join("rootfs").join("fake-clis");
        let common = fs::read(scripts.join("common.sh")).context("rootfs/fake-clis/common.sh")?;
        let mut wrappers = Vec::new();
        for name in WRAPPERS {
            let data =
                fs::read(scripts.join(name)).with_context(|| format!("rootfs/fake-clis/{name}"))?;
            wrappers.push((name.to_owned(), data));
        }
        let fixtures = read_fixtures(&root().join("tests").join("fixtures").join("cli"))?;
        if fixtures.is_empty() {
            bail!("no recordings under tests/fixtures/cli");
        }
        Ok(FakeClis {
            binary,
            common,
            wrappers,
            fixtures,
        })
    }

    /// Feeds every byte that ends up in the image into the image's cache key.
    pub fn hash_into(&self, hash: &mut Sha256) {
        hash.update(b"fake-clis");
        hash.update(&self.binary);
        hash.update(&self.common);
        for (name, data) in self.wrappers.iter().chain(&self.fixtures) {
            hash.update(name.as_bytes());
            hash.update((data.len() as u64).to_le_bytes());
            hash.update(data);
        }
    }

    /// A one-line summary for progress output.
    pub fn describe(&self) -> String {
        format!(
            "fake-cli ({} KiB), {} recording files, wrappers {}",
            self.binary.len() / 1024,
            self.fixtures.len(),
            WRAPPERS.join("/")
        )
    }

    /// Writes the binary, the recordings and the wrappers (with their parent directories, which
    /// the kernel's initramfs unpacker does not create) into the image.
    pub fn pack<W: std::io::Write>(&self, w: &mut CpioWriter<W>) -> std::io::Result<()> {
        for dir in [
            "/usr/lib",
            "/usr/lib/fake-cli",
            "/usr/share",
            GUEST_FIXTURES,
        ] {
            w.dir(dir, 0o755)?;
        }
        w.dir("/usr/local", 0o755)?;
        w.dir(GUEST_WRAPPERS, 0o755)?;
        w.file(GUEST_BINARY, 0o755, &self.binary)?;
        w.file(GUEST_COMMON, 0o644, &self.common)?;
        for (name, data) in &self.wrappers {
            w.file(&format!("{GUEST_WRAPPERS}/{name}"), 0o755, data)?;
        }
        let mut made = std::collections::BTreeSet::new();
        for (rel, data) in &self.fixtures {
            // Parents first: `<provider>`, then `<provider>/<case>`.
            let parents: Vec<&Path> = Path::new(rel)
                .ancestors()
                .skip(1)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            for parent in parents.into_iter().rev() {
                if made.insert(parent.to_path_buf()) {
                    w.dir(&format!("{GUEST_FIXTURES}/{}", parent.display()), 0o755)?;
                }
            }
            w.file(&format!("{GUEST_FIXTURES}/{rel}"), 0o644, data)?;
        }
        Ok(())
    }
}

/// The recording files (`<provider>/<case>/<file>`) under `dir`, sorted so the image and its key
/// do not depend on directory order.
fn read_fixtures(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for provider in sorted_dirs(dir)? {
        for case in sorted_dirs(&provider)? {
            for file in ["output.bin", "session.json"] {
                let path = case.join(file);
                let data =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let rel = path
                    .strip_prefix(dir)
                    .context("fixture path")?
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, data));
            }
        }
    }
    Ok(files)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_recording_of_the_repository_in_order() {
        let files = read_fixtures(&root().join("tests/fixtures/cli")).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for needed in [
            "claude_code/auth-login-80x24/output.bin",
            "codex/login-100x30/session.json",
            "gemini_cli/display-80x24/output.bin",
            "gemini_cli/nobrowser-100x30/session.json",
        ] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
