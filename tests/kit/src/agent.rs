//! The real `vm-agent` binary as a local process on a Unix socket, with its own HOME, started the
//! way the host starts a VM's agent: bind the hello listener, start the agent, wait for its hello.
//! One launcher for the tests ([`AgentProcess`]), the benchmarks and the local VM backend
//! ([`agent_command`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orchestrator::transport::UnixConnector;
use orchestrator::{AgentClient, HelloListener};
use protocol::Hello;

/// The agent's arguments: listening on `socket`, saying hello to `hello`.
pub fn agent_args(socket: &Path, hello: &HelloListener) -> [String; 4] {
    [
        "--listen".to_owned(),
        format!("unix:{}", socket.display()),
        "--hello".to_owned(),
        format!("unix:{}", hello.path().display()),
    ]
}

/// Arguments that give a local agent an egress proxy on a free loopback port, tunnelling to the
/// gateway socket `egress` (what a VM's agent does over vsock).
pub fn egress_args(egress: &Path) -> [String; 4] {
    [
        "--egress".to_owned(),
        format!("unix:{}", egress.display()),
        "--egress-proxy".to_owned(),
        "127.0.0.1:0".to_owned(),
    ]
}

/// The agent's command line ([`agent_args`]), logging warnings (or what `AGENT_LOG` of the
/// caller asks for). The caller adds HOME and the rest.
pub fn agent_command(agent_bin: &Path, socket: &Path, hello: &HelloListener) -> Command {
    let mut cmd = Command::new(agent_bin);
    cmd.args(agent_args(socket, hello)).env(
        "AGENT_LOG",
        std::env::var("AGENT_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// Path of a binary built from this workspace (`cargo build --workspace --bins`, which
/// `cargo xtask test` runs first). Panics with the fix when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// A running agent process, killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The greeting it sent when it came up.
    pub hello: Hello,
}

impl AgentProcess {
    /// Starts the workspace's agent listening on a fresh Unix socket and waits for its hello.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Same, with extra environment for the agent process.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        Self::launch(&workspace_bin("vm-agent"), env, false)
            .await
            .expect("start vm-agent")
    }

    /// Same, with the agent's log (stderr) kept in a file for [`AgentProcess::log`].
    pub async fn start_logged(env: &[(&str, &str)]) -> Self {
        Self::launch(&workspace_bin("vm-agent"), env, true)
            .await
            .expect("start vm-agent")
    }

    /// The agent's log so far (empty unless started with [`AgentProcess::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Starts `agent_bin` (a benchmark's release agent, say) in a private directory whose `home/`
    /// is its HOME, with `env` added, and waits up to 30 s for its hello. With `logged`, its
    /// stderr goes to a file ([`AgentProcess::log`]) instead of ours.
    pub async fn launch(
        agent_bin: &Path,
        env: &[(&str, &str)],
        logged: bool,
    ) -> std::io::Result<Self> {
        Self::launch_with_args(agent_bin, env, &[], logged).await
    }

    /// Same, with the workspace's agent, logged, tunnelling its egress to the gateway socket
    /// `egress` ([`egress_args`]).
    pub async fn start_with_egress(egress: &Path) -> Self {
        Self::launch_with_args(&workspace_bin("vm-agent"), &[], &egress_args(egress), true)
            .await
            .expect("start vm-agent")
    }

    /// [`AgentProcess::launch`] with extra agent arguments.
    pub async fn launch_with_args(
        agent_bin: &Path,
        env: &[(&str, &str)],
        args: &[String],
        logged: bool,
    ) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let hello =
            HelloListener::bind(dir.path().join("hello.sock")).map_err(std::io::Error::other)?;
        let stderr = if logged {
            Stdio::from(std::fs::File::create(dir.path().join("agent.log"))?)
        } else {
            Stdio::inherit()
        };
        let mut child = agent_command(agent_bin, &socket, &hello)
            .args(args)
            .env("HOME", &home)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        match hello.wait(Duration::from_secs(30)).await {
            Ok(hello) => Ok(Self {
                child,
                dir,
                socket,
                hello,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(format!(
                    "no hello from the agent: {e}"
                )))
            }
        }
    }

    /// The agent's HOME.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The agent's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A private directory for the test (the agent's HOME is `home/` inside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connector to this agent.
    pub fn connector(&self) -> UnixConnector {
        UnixConnector::new(&self.socket)
    }

    /// A new client connection.
    pub async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.connector())
            .await
            .expect("connect to agent")
    }

    /// Kills the agent now (to test a VM dying mid-flow).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the agent as a service manager would; see [`stop_agent`].
    pub fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        stop_agent(&mut self.child)
    }
}

/// Stops an agent process with SIGTERM and waits for it: it cleans up after itself (PTY programs,
/// the browser shim's directory in the temporary directory). Killed after 10 s. Returns the status.
pub fn stop_agent(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Gracefully, so no test leaves the agent's shim directory behind.
        let _ = self.terminate();
    }
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
