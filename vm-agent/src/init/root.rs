//! Booting from a disk: the initramfs's agent mounts the golden image's copy-on-write disk
//! (`AGENT_ROOT=/dev/vda` on the kernel command line) and hands PID 1 over to the agent baked
//! into it, which boots the system from there (`switch_root`, as an initramfs does).

use std::ffi::CString;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot, execv};
use tracing::info;

use super::InitError;

/// Where the disk is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";
/// The agent in the disk image.
const DISK_AGENT: &str = "/usr/local/sbin/vm-agent";

fn sys(what: &str) -> impl FnOnce(nix::Error) -> InitError + '_ {
    move |source| InitError::Sys {
        what: what.to_owned(),
        source,
    }
}

/// Mounts `device` (ext4) and makes it `/`, then becomes its agent. Returns only on failure.
pub fn switch_to(device: &Path) -> InitError {
    match try_switch(device) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_switch(device: &Path) -> Result<std::convert::Infallible, InitError> {
    let _ = nix::unistd::mkdir(NEW_ROOT, nix::sys::stat::Mode::from_bits_truncate(0o755));
    // The device node may appear a moment after the module loaded.
    for _ in 0..200 {
        if device.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    mount(
        Some(device),
        NEW_ROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(sys("mounting the root disk"))?;
    info!(device = %device.display(), "init: switching to the root disk");
    chdir(NEW_ROOT).map_err(sys("entering the root disk"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the root disk to /"))?;
    chroot(".").map_err(sys("chroot to the root disk"))?;
    chdir("/").map_err(sys("chdir /"))?;
    let agent = CString::new(DISK_AGENT).map_err(|_| InitError::Sys {
        what: "agent path".into(),
        source: nix::Error::EINVAL,
    })?;
    execv(&agent, &[&agent]).map_err(sys("starting the disk's agent"))
}
