//! `vm-agent`: see the library documentation.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> std::process::ExitCode {
    // Invoked as `$BROWSER` or `xdg-open` by a program in one of our PTYs: hand the URL over, exit.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .is_some_and(|a| vm_agent::shim::invoked_as_shim(a))
    {
        return match vm_agent::shim::run_client(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vm-agent shim: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // The browser VM's terminal: show the agent's login session here.
    if args
        .get(1)
        .is_some_and(|a| a == vm_agent::pty::terminal::ATTACH_ARG)
    {
        let socket = args
            .get(2)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| vm_agent::pty::terminal::LOGIN_SOCKET.into());
        return match vm_agent::pty::terminal::attach(&socket) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vm-agent {}: {e}", vm_agent::pty::terminal::ATTACH_ARG);
                std::process::ExitCode::FAILURE
            }
        };
    }
    // Started by ourselves to run a PTY program inside its session's cgroup, as its user:
    // enter, become, exec.
    if args
        .get(1)
        .is_some_and(|a| a == vm_agent::procset::ENTER_ARG)
    {
        let e = vm_agent::procset::Enter::run(&args[2..]);
        eprintln!("vm-agent: {e}");
        return std::process::ExitCode::from(127);
    }
    let started = std::time::Instant::now();
    let pid1 = vm_agent::init::is_pid1();
    // `AGENT_LOG`: a level (`debug`) or per-target levels (`vm_agent::pty=trace,info`). A
    // target filter rather than an EnvFilter: no regex engine for span-field matching in the
    // agent, which every VM image carries.
    let filter = std::env::var("AGENT_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(!pid1),
        )
        .with(filter)
        .init();
    let config = if pid1 {
        // The kernel passes unknown boot parameters as arguments: ignore them, use the defaults.
        vm_agent::init::boot(started);
        vm_agent::AgentConfig::for_init(started)
    } else {
        let mut config = vm_agent::AgentConfig::from_args();
        config.started_at = Some(started);
        config
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vm-agent: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vm_agent::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
