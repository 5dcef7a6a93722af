//! Every process a session started, wherever it went, so ending the session ends all of them.
//!
//! A process group is not enough: CLIs start daemons that call `setsid` (codex's app-server and
//! its `pid-update-loop`), leaving the group, the terminal session and their parent. Two nets catch
//! them:
//! - a cgroup v2 per session, where the agent can make one (root in the VM, or a delegated
//!   subtree): membership is inherited by every descendant and cannot be left without privilege,
//!   and `cgroup.kill` ends them all at once;
//! - the session's environment marker (`<var>=<unique id>`), which the agent gives the program
//!   and which descendants inherit: processes carrying it are found in `/proc`. This also works
//!   without cgroups (an unprivileged agent on a developer's machine) and catches a child that
//!   forked in the moment before the program was moved into its cgroup.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// First argument of the agent binary run as the wrapper that starts a session's program:
/// `vm-agent --enter CGROUP|- UID:GID|- PROGRAM ARGS...` (see [`Enter`]).
pub const ENTER_ARG: &str = "--enter";

/// What the wrapper does before it becomes a session's program (same pid, environment and
/// terminal): it moves into the session's cgroup, so nothing the program forks can start
/// outside, then becomes the program's user, so the program never runs a single instruction
/// with the agent's rights. The order matters: moving into a cgroup needs the agent's rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enter {
    /// The cgroup to move into.
    pub cgroup: Option<PathBuf>,
    /// The user id and group id to become.
    pub user: Option<(u32, u32)>,
}

impl Enter {
    /// Whether the program can be started directly (no cgroup, no other user).
    pub fn is_nothing(&self) -> bool {
        self.cgroup.is_none() && self.user.is_none()
    }

    /// The wrapper's command line up to and including `program` (its arguments follow).
    pub fn command_line(&self, agent: PathBuf, program: PathBuf) -> Vec<OsString> {
        let cgroup = self
            .cgroup
            .as_ref()
            .map_or_else(|| OsString::from("-"), |c| c.clone().into_os_string());
        let user = self
            .user
            .map_or_else(|| "-".to_owned(), |(uid, gid)| format!("{uid}:{gid}"));
        vec![
            agent.into(),
            ENTER_ARG.into(),
            cgroup,
            user.into(),
            program.into(),
        ]
    }

    /// The wrapper's side, with the arguments after [`ENTER_ARG`]: enters, then becomes the
    /// program. Returns only if it could not: a user it could not become is an error, and the
    /// program is not started.
    pub fn run(args: &[OsString]) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let usage = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("usage: vm-agent {ENTER_ARG} CGROUP|- UID:GID|- PROGRAM [ARGS...]"),
            )
        };
        let [cgroup, user, program, rest @ ..] = args else {
            return usage();
        };
        let user = match user.to_str() {
            Some("-") => None,
            Some(pair) => match pair
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
            {
                Some(ids) => Some(ids),
                None => return usage(),
            },
            None => return usage(),
        };
        if cgroup != "-" {
            // "0": the writing process. If this fails the program still runs (its environment
            // marker still finds what it starts).
            let _ = std::fs::write(Path::new(cgroup).join("cgroup.procs"), "0");
        }
        if let Some((uid, gid)) = user {
            // The terminal is the program's, as a login gives it: a program that opens its
            // terminal by name (`/dev/tty`: password prompts, pagers) can.
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                if let Err(e) = std::os::unix::fs::fchown(&stdin, Some(uid), Some(gid)) {
                    return e;
                }
            }
            if let Err(e) = crate::users::RunAs::become_user(uid, gid) {
                return e;
            }
            // The terminal entered the working directory as root: enter it again as the user,
            // so a directory the user may not search is refused rather than kept.
            if let Err(e) = std::env::current_dir().and_then(std::env::set_current_dir) {
                return e;
            }
        }
        std::process::Command::new(program).args(rest).exec()
    }
}

/// Prefix of the agent's own cgroup (`vm-agent.<pid>`) under the cgroup it was started in.
const AGENT_CGROUP_PREFIX: &str = "vm-agent.";
/// Rounds of killing what is found, for processes that fork while being killed.
const KILL_ROUNDS: usize = 50;

/// Where the agent makes its sessions' cgroups: `<its own cgroup>/vm-agent.<pid>`, when cgroup
/// v2 is mounted and writable; `None` otherwise (the marker still works).
#[derive(Debug)]
pub struct CgroupRoot {
    dir: PathBuf,
}

impl CgroupRoot {
    /// Finds the cgroup v2 mount and the agent's own cgroup, sweeps the cgroups of agents that
    /// died without cleaning up, and makes the agent's own; `None` where that is not possible.
    pub fn create() -> Option<CgroupRoot> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        let parent = mount.join(own.trim_start_matches('/'));
        sweep_stale(&parent);
        let dir = parent.join(format!("{AGENT_CGROUP_PREFIX}{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(CgroupRoot { dir }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(CgroupRoot { dir }),
            Err(e) => {
                debug!(dir = %dir.display(), error = %e, "no cgroup for sessions; markers only");
                None
            }
        }
    }

    /// The directory of the agent's cgroup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        // Sessions remove their own; an empty directory is all that is left.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One session's processes.
#[derive(Debug)]
pub struct ProcessSet {
    marker: String,
    cgroup: Option<PathBuf>,
}

impl ProcessSet {
    /// A set named `name` (unique in the agent) whose processes carry the environment entry
    /// `marker_var=marker_value`; with a cgroup under `root` when there is one.
    pub fn new(
        root: Option<&CgroupRoot>,
        name: &str,
        marker_var: &str,
        marker_value: &str,
    ) -> ProcessSet {
        let cgroup = root.and_then(|root| {
            let dir = root.dir.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "session cgroup not made; marker only");
                    None
                }
            }
        });
        ProcessSet {
            marker: format!("{marker_var}={marker_value}"),
            cgroup,
        }
    }

    /// The set's cgroup, if it has one: a program started through [`ENTER_ARG`] with it
    /// runs inside it from its first instruction.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// The processes of the set still running (zombies excluded).
    pub fn members(&self) -> Vec<i32> {
        let mut pids = self.cgroup_members();
        for pid in marked_processes(&self.marker) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids.retain(|pid| alive(*pid));
        pids
    }

    fn cgroup_members(&self) -> Vec<i32> {
        let Some(dir) = &self.cgroup else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process of the set with SIGKILL, again until none is left (a process forking
    /// while being killed). Returns the pids killed.
    pub fn kill_all(&self) -> Vec<i32> {
        let mut killed = Vec::new();
        for round in 0..KILL_ROUNDS {
            if let Some(dir) = &self.cgroup {
                // Linux 5.14+; older kernels are covered by the list below.
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
            let pids = self.members();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() && !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            if round > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        killed
    }
}

impl Drop for ProcessSet {
    fn drop(&mut self) {
        self.kill_all();
        if let Some(dir) = &self.cgroup {
            // Emptied above; the kernel refuses to remove a cgroup with processes in it.
            for _ in 0..KILL_ROUNDS {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            warn!(dir = %dir.display(), "session cgroup left behind");
        }
    }
}

/// Processes whose environment holds `entry` (`NAME=value`). Unreadable ones (another user's,
/// gone) are skipped.
pub fn marked_processes(entry: &str) -> Vec<i32> {
    crate::system::pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == entry.as_bytes()))
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(|pid| crate::system::stat_field(pid, 0))
        .is_some_and(|state| state != "Z")
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `... mount_point options - fstype source super_options`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The agent's own cgroup v2 path (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Removes `vm-agent.<pid>` cgroups under `parent` whose agent is gone, killing what is left in
/// them (a crashed agent's sessions).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(AGENT_CGROUP_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || alive(pid) {
            continue;
        }
        let stale = entry.path();
        if let Ok(sessions) = std::fs::read_dir(&stale) {
            for session in sessions.flatten().filter(|s| s.path().is_dir()) {
                let _ = std::fs::write(session.path().join("cgroup.kill"), "1");
                for _ in 0..KILL_ROUNDS {
                    if std::fs::remove_dir(session.path()).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if std::fs::remove_dir(&stale).is_ok() {
            debug!(dir = %stale.display(), "stale agent cgroup removed");
        }
    }
}
