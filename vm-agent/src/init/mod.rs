//! Running as PID 1 of a minimal VM image: the image has no other init, so the agent prepares the
//! system itself (mounts, kernel modules, loopback), then forks. PID 1 stays behind as a small
//! supervisor that reaps every orphan and powers the VM off on request; the forked child serves the
//! host as the normal agent. Splitting the two keeps PID 1's `waitpid(-1)` from stealing the exit
//! status of processes the agent spawned and waits for itself.

mod modules;
mod mounts;
mod network;
mod root;
mod supervisor;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

pub use modules::MODULE_ORDER_PATH;

/// Kernel command-line variable naming the root disk to switch to (`AGENT_ROOT=/dev/vda`).
pub const ROOT_ENV: &str = "AGENT_ROOT";

/// Whether `/` is the initramfs (ramfs or tmpfs), as opposed to a disk we already switched to.
fn is_initramfs() -> bool {
    // `RAMFS_MAGIC` of linux/magic.h (nix names tmpfs's, not ramfs's).
    let ramfs = nix::sys::statfs::FsType(0x8584_58f6);
    nix::sys::statfs::statfs("/").is_ok_and(|fs| {
        let t = fs.filesystem_type();
        t == nix::sys::statfs::TMPFS_MAGIC || t == ramfs
    })
}

/// `PATH` for everything the agent starts: the kernel hands init no `PATH` at all.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the init duties failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system call of the boot sequence failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        source: nix::Error,
    },
    /// Power-off was asked of an agent that is not the VM's init (a development or test agent):
    /// refused, so a test can never power off the machine it runs on.
    #[error("this agent is not running as the VM's init; refusing to power off")]
    NotInit,
}

/// What PID 1 did before handing over to the agent process.
#[derive(Debug, Clone)]
pub struct Boot {
    /// When PID 1 started (agent exec), on the guest's monotonic clock.
    pub started: Instant,
    /// Time spent mounting file systems.
    pub mounts: Duration,
    /// Time spent loading kernel modules.
    pub modules: Duration,
    /// Modules loaded, in order.
    pub modules_loaded: Vec<String>,
}

/// Whether this process is PID 1 (the kernel ran the agent as `/init`).
pub fn is_pid1() -> bool {
    Pid::this().as_raw() == 1
}

/// Performs the init duties and forks. Returns only in the forked agent process; PID 1 itself
/// supervises until power-off and never returns. Must be called before any thread is started.
pub fn boot(started: Instant) -> Boot {
    std::env::set_var("PATH", DEFAULT_PATH);
    if std::env::var_os("HOME").is_none_or(|h| h == "/") {
        std::env::set_var("HOME", "/root");
    }
    let t = Instant::now();
    mounts::mount_all();
    let mounts = t.elapsed();
    let t = Instant::now();
    let modules_loaded = modules::load_listed(std::path::Path::new(MODULE_ORDER_PATH));
    let modules = t.elapsed();
    // A disk image's initramfs: the disk's own agent boots the system from here on.
    if let Some(device) = std::env::var_os(ROOT_ENV).filter(|_| is_initramfs()) {
        let e = root::switch_to(std::path::Path::new(&device));
        // PID 1 must not exit: go on from the initramfs, where the host hears from us.
        warn!(error = %e, "cannot boot from the root disk; staying in the initramfs");
    }
    if let Err(e) = network::loopback_up() {
        warn!(error = %e, "cannot bring up lo");
    }
    let boot = Boot {
        started,
        mounts,
        modules,
        modules_loaded,
    };
    info!(
        mounts_ms = boot.mounts.as_millis() as u64,
        modules_ms = boot.modules.as_millis() as u64,
        modules = boot.modules_loaded.len(),
        "init: system ready, starting agent"
    );
    supervisor::fork_agent();
    boot
}

/// Asks PID 1 to stop every process and power the VM off. Allowed only for an agent started by
/// [`boot`] (`under_init`); the caller should answer its client first, as the VM goes away.
pub fn request_poweroff(under_init: bool) -> Result<(), InitError> {
    if !under_init {
        return Err(InitError::NotInit);
    }
    kill(Pid::from_raw(1), Signal::SIGUSR2).map_err(|source| InitError::Sys {
        what: "signalling init".into(),
        source,
    })
}

/// How long after answering `poweroff` the agent asks init to power off: time for the answer to
/// leave through vsock before every process is stopped.
const POWEROFF_ANSWER_GRACE: Duration = Duration::from_millis(100);

/// Serves the `poweroff` call: refused outside the VM's init; otherwise answers at once and asks
/// PID 1 to power off right after, so the host gets its answer before the VM goes away.
pub async fn serve_poweroff(
    agent: &crate::state::Agent,
) -> Result<protocol::power::PoweroffResponse, protocol::ErrorBody> {
    if !agent.under_init() {
        return Err(protocol::ErrorBody::new(
            protocol::ErrorCode::Forbidden,
            InitError::NotInit.to_string(),
        ));
    }
    tokio::spawn(async {
        tokio::time::sleep(POWEROFF_ANSWER_GRACE).await;
        if let Err(e) = request_poweroff(true) {
            warn!(error = %e, "cannot request power-off");
        }
    });
    info!("power-off requested by the host");
    Ok(protocol::power::PoweroffResponse {
        after_ms: POWEROFF_ANSWER_GRACE.as_millis() as u64,
    })
}
