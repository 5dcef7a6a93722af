//! Directories on the file systems the credential code must work on (tmpfs and ext4), made on the
//! spot when the machine has none: a tmpfs mount, or a loop-mounted ext4 image (needs root and
//! e2fsprogs). A test never silently runs on another file system.

use std::path::{Path, PathBuf};
use std::process::Command;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const EXT4_MAGIC: i64 = 0xEF53;

/// A scratch directory on a given file system, removed (and unmounted if mounted here) on drop.
pub struct FsDir {
    pub kind: &'static str,
    dir: tempfile::TempDir,
    mounted: Option<PathBuf>,
}

impl FsDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FsDir {
    fn drop(&mut self) {
        if let Some(mnt) = &self.mounted {
            let _ = Command::new("umount").arg("-l").arg(mnt).status();
        }
    }
}

fn magic(path: &Path) -> i64 {
    rustix::fs::statfs(path).map(|s| s.f_type).unwrap_or(0)
}

fn scratch_base() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Both kinds the tests cover.
pub fn all() -> Vec<FsDir> {
    vec![tmpfs(), ext4()]
}

/// A directory on tmpfs: `/dev/shm` when it is one, else a fresh tmpfs mount.
pub fn tmpfs() -> FsDir {
    for base in [Path::new("/dev/shm"), Path::new("/tmp")] {
        if magic(base) == TMPFS_MAGIC {
            let dir = tempfile::Builder::new()
                .prefix("creds-")
                .tempdir_in(base)
                .expect("tempdir on tmpfs");
            return FsDir {
                kind: "tmpfs",
                dir,
                mounted: None,
            };
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("creds-tmpfs-")
        .tempdir_in(scratch_base())
        .expect("tempdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(dir.path())
        .status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "no tmpfs on this machine and `mount -t tmpfs` failed (needs root): {ok:?}"
    );
    assert_eq!(magic(dir.path()), TMPFS_MAGIC);
    let mounted = Some(dir.path().to_path_buf());
    FsDir {
        kind: "tmpfs",
        dir,
        mounted,
    }
}

/// A directory on ext4: the target directory when it is on ext4, else a loop-mounted image.
pub fn ext4() -> FsDir {
    let base = scratch_base();
    std::fs::create_dir_all(&base).expect("target tmpdir");
    if magic(&base) == EXT4_MAGIC {
        let dir = tempfile::Builder::new()
            .prefix("creds-")
            .tempdir_in(&base)
            .expect("tempdir on ext4");
        return FsDir {
            kind: "ext4",
            dir,
            mounted: None,
        };
    }
    let dir = tempfile::Builder::new()
        .prefix("creds-ext4-")
        .tempdir_in(&base)
        .expect("tempdir");
    let image = dir.path().with_extension("img");
    let run = |cmd: &mut Command| {
        let st = cmd.status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "making an ext4 scratch file system failed ({cmd:?}: {st:?}); needs root and e2fsprogs"
        );
    };
    run(Command::new("truncate").args(["-s", "64M"]).arg(&image));
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(dir.path()));
    let _ = std::fs::remove_file(&image);
    assert_eq!(magic(dir.path()), EXT4_MAGIC);
    let mounted = Some(dir.path().to_path_buf());
    FsDir {
        kind: "ext4",
        dir,
        mounted,
    }
}
