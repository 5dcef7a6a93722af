//! PID 1 after boot: reaps every process that ends up parented to it, restarts the agent if it
//! dies, and on a power-off request stops everything and powers the machine off.

use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{alarm, fork, sync, ForkResult, Pid};
use tracing::{error, info, warn};

/// How long processes get to exit on SIGTERM before SIGKILL at power-off.
const TERM_GRACE_SECS: u32 = 2;
/// An agent that dies sooner than this after its start counts as a crash loop.
const MIN_AGENT_LIFE: Duration = Duration::from_secs(5);
/// Crash-loop restarts tolerated before the VM powers off (the host sees it go away).
const MAX_FAST_RESTARTS: u32 = 5;

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGUSR2,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGALRM,
    ] {
        set.add(sig);
    }
    set
}

/// Forks the agent. Returns in the child (with the signal mask restored); PID 1 stays in the
/// supervisor loop for the life of the VM.
pub fn fork_agent() {
    let mut old = SigSet::empty();
    if let Err(e) =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), Some(&mut old))
    {
        error!(error = %e, "cannot block signals; running the agent as PID 1 without a supervisor");
        return;
    }
    let mut fast_restarts = 0u32;
    loop {
        let started = Instant::now();
        // SAFETY: called before any thread exists (the agent's runtime starts after boot returns).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
                return;
            }
            Ok(ForkResult::Parent { child }) => {
                supervise(child);
                if started.elapsed() < MIN_AGENT_LIFE {
                    fast_restarts += 1;
                    if fast_restarts > MAX_FAST_RESTARTS {
                        error!("agent keeps dying; powering off");
                        power_off();
                    }
                } else {
                    fast_restarts = 0;
                }
                warn!("agent exited; restarting it");
            }
            Err(e) => {
                error!(error = %e, "cannot fork the agent; powering off");
                power_off();
            }
        }
    }
}

/// Waits for signals until the agent process exits (returns) or power-off is requested (never
/// returns).
fn supervise(agent: Pid) {
    let set = handled();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if reap_all().contains(&agent) {
                    return;
                }
            }
            Ok(Signal::SIGUSR2 | Signal::SIGTERM | Signal::SIGINT) => {
                info!("power-off requested");
                power_off();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sigwait failed"),
        }
    }
}

/// Reaps every exited child without blocking; returns their PIDs.
fn reap_all() -> Vec<Pid> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped.push(pid);
                }
            }
        }
    }
}

/// Stops every process (TERM, then KILL after a grace period), syncs and powers off.
fn power_off() -> ! {
    let set = handled();
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    alarm::set(TERM_GRACE_SECS);
    loop {
        reap_all();
        // ECHILD: nothing left to wait for.
        if matches!(
            waitpid(None, Some(WaitPidFlag::WNOHANG)),
            Err(nix::Error::ECHILD)
        ) {
            break;
        }
        if let Ok(Signal::SIGALRM) = set.wait() {
            warn!("processes left after SIGTERM; killing them");
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
    }
    sync();
    info!("powering off");
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Only reached if the kernel refused; PID 1 must never exit.
    loop {
        let _ = set.wait();
    }
}
