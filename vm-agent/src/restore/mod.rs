//! Who this VM is, and what changes when it wakes from saved state (`restored`).
//!
//! Clones restored from one snapshot share everything the snapshot held. The host's `restored`
//! call (sent once the agent has said hello again, see [`crate::transport::hello`]) makes each one
//! its own before anything in it makes a key or a PKCE verifier: the host's entropy is credited to
//! the kernel's pool and the generator reseeded at once, the clock is set, and a clone takes a new
//! machine id, boot id, sealing key and desktop DTLS certificate (made after the reseed, from the
//! reseeded generator), and every process's user-space generator reseeds ([`fork_wipe`]: its
//! state came from the snapshot). TURN credentials are never in a snapshot: each viewer session
//! brings its own.

mod fork_wipe;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::restore::{RestoredRequest, ENTROPY_BYTES};
use protocol::{ErrorBody, ErrorCode, Hello};
use tracing::{info, warn};

use crate::state::Agent;
use crate::system;

/// Where the machine id lives (systemd's and D-Bus's place; the images ship it empty).
const MACHINE_ID: &str = "/etc/machine-id";
/// The kernel's boot id, which it makes once per boot and never again.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// A clone's own boot id, bind-mounted over [`KERNEL_BOOT_ID`] so every reader sees it.
const CLONE_BOOT_ID: &str = "/run/vm-agent/boot_id";

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: u32 = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: u32 = 0x5207;

/// Who this VM is.
#[derive(Debug)]
pub struct Identity {
    /// The boot id the agent reports (the kernel's, or a clone's own).
    pub boot_id: String,
    /// `/etc/machine-id`; empty when the agent does not run as the VM's init and found none.
    pub machine_id: String,
    /// The key credentials are sealed to for this VM, in memory only; `None` when the random
    /// source failed.
    pub seal_key: Option<Arc<protocol::sealed::KeyPair>>,
}

/// Why a restore step failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Only the VM's init may reseed, set the clock and change the machine's ids.
    #[error("only an agent running as the VM's init handles a restore")]
    NotInit,
    /// The entropy is not [`ENTROPY_BYTES`] long.
    #[error("expected {ENTROPY_BYTES} bytes of entropy, got {0}")]
    EntropyLength(usize),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<RestoreError> for ErrorBody {
    fn from(e: RestoreError) -> Self {
        let code = match e {
            RestoreError::NotInit => ErrorCode::Forbidden,
            RestoreError::EntropyLength(_) => ErrorCode::BadRequest,
            RestoreError::Sys { .. } => ErrorCode::Internal,
        };
        ErrorBody::new(code, e.to_string())
    }
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Sys { what, source }
}

impl Identity {
    /// The identity at agent start. The VM's init makes a machine id for this boot (the images
    /// ship none); any other agent reports the machine's.
    pub fn at_start(under_init: bool) -> Self {
        let machine_id = if under_init {
            new_machine_id()
                .inspect_err(|e| warn!(error = %e, "cannot write a machine id"))
                .unwrap_or_default()
        } else {
            fs::read_to_string(MACHINE_ID)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            boot_id: system::boot_id(),
            machine_id,
            seal_key: new_seal_key(),
        }
    }

    /// A clone's own identity: new machine id, new boot id over the kernel's, new sealing key.
    fn for_clone() -> Result<Self, RestoreError> {
        let machine_id = new_machine_id()?;
        let boot_id = new_boot_id()?;
        Ok(Self {
            boot_id,
            machine_id,
            seal_key: new_seal_key(),
        })
    }
}

fn new_seal_key() -> Option<Arc<protocol::sealed::KeyPair>> {
    protocol::sealed::KeyPair::generate()
        .inspect_err(|e| tracing::error!(error = %e, "no key for sealed credentials"))
        .ok()
        .map(Arc::new)
}

/// Serves `restored` (see the module docs); answers the hello as it is afterwards.
pub async fn serve(agent: &Agent, request: RestoredRequest) -> Result<Hello, ErrorBody> {
    if !agent.under_init() {
        return Err(RestoreError::NotInit.into());
    }
    let clone = request.clone;
    let started = std::time::Instant::now();
    apply(&request)?;
    let applied_us = started.elapsed().as_micros() as u64;
    let mut identity_us = 0;
    if clone {
        agent.set_identity(Identity::for_clone()?);
        identity_us = started.elapsed().as_micros() as u64;
        #[cfg(feature = "desktop")]
        agent.desktops().renew_identity();
        let wiped = fork_wipe::wipe_all();
        info!(
            processes = wiped.processes,
            pages = wiped.pages,
            "user-space generators reseed from the kernel"
        );
    }
    let hello = agent.hello();
    info!(
        clone,
        boot_id = %hello.boot_id,
        applied_us,
        identity_us,
        took_us = started.elapsed().as_micros() as u64,
        "restored: entropy credited, clock set"
    );
    Ok(hello)
}

fn apply(request: &RestoredRequest) -> Result<(), RestoreError> {
    let entropy = &request.entropy.expose().0;
    if entropy.len() != ENTROPY_BYTES {
        return Err(RestoreError::EntropyLength(entropy.len()));
    }
    reseed(entropy)?;
    let now = Duration::from_millis(request.unix_time_ms);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now.into())
        .map_err(|e| sys("setting the clock")(e.into()))
}

/// Credits `entropy` to the kernel's input pool and reseeds its generator from it now (without
/// the reseed the generator would go on from the snapshot's state until its next timed reseed).
fn reseed(entropy: &[u8]) -> Result<(), RestoreError> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let bits = i32::try_from(entropy.len() * 8).map_err(|_| RestoreError::EntropyLength(0))?;
    let size = i32::try_from(entropy.len()).map_err(|_| RestoreError::EntropyLength(0))?;
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    let random = fs::File::open("/dev/urandom").map_err(sys("opening /dev/urandom"))?;
    // SAFETY: `info` is a complete rand_pool_info whose buf_size matches the bytes after its
    // header; the kernel reads exactly that much from it and keeps no pointer.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        return Err(sys("crediting entropy (RNDADDENTROPY)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(sys("reseeding (RNDRESEEDCRNG)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Writes a new machine id (32 hex digits) in place and returns it.
fn new_machine_id() -> Result<String, RestoreError> {
    let id = system::random_hex(16);
    write_in_place(Path::new(MACHINE_ID), &format!("{id}\n"), 0o444)
        .map_err(sys("writing /etc/machine-id"))?;
    Ok(id)
}

/// Gives the VM a boot id of its own: written to a file bind-mounted over the kernel's (once;
/// later clones of a clone rewrite the same file, which the mount shows).
fn new_boot_id() -> Result<String, RestoreError> {
    let hex = system::random_hex(16);
    let mut bytes: Vec<char> = hex.chars().collect();
    // A version 4 UUID, as the kernel's is: version nibble 4, variant bits 10.
    bytes[12] = '4';
    bytes[16] = ['8', '9', 'a', 'b'][usize::from(bytes[16] as u8 % 4)];
    let hex: String = bytes.into_iter().collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    let file = Path::new(CLONE_BOOT_ID);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(sys("creating /run/vm-agent"))?;
    }
    write_in_place(file, &format!("{id}\n"), 0o444).map_err(sys("writing the clone's boot id"))?;
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(KERNEL_BOOT_ID))
        })
        .unwrap_or(false);
    if !mounted {
        nix::mount::mount(
            Some(file),
            KERNEL_BOOT_ID,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| sys("bind-mounting the clone's boot id")(e.into()))?;
    }
    Ok(system::boot_id())
}

/// Rewrites `path` in place (a bind mount shows the same inode), creating it with `mode`.
fn write_in_place(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // Not synced: the ids are made again at every boot and restore, so one lost to a crash
    // costs nothing, and a sync (a flush through the disk to the host) is the slow part of a
    // restore.
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrong_amount_of_entropy_is_refused_before_any_change() {
        let request = RestoredRequest {
            entropy: protocol::Secret::new(protocol::restore::EntropyBytes(vec![1; 3])),
            unix_time_ms: 0,
            clone: false,
        };
        assert!(matches!(
            apply(&request),
            Err(RestoreError::EntropyLength(3))
        ));
    }
}
