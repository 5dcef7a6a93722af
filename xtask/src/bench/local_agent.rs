//! The real static agent as a local process on a Unix socket, started the way the host starts a VM's
//! agent: bind the hello listener, start it, wait for its hello. Shared by every benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use orchestrator::transport::UnixConnector;
use orchestrator::{AgentClient, HelloListener};

use crate::shell::step;

/// A running agent, killed on drop, with a private directory holding its socket and a `home/`.
pub struct LocalAgent {
    child: Child,
    socket: PathBuf,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalAgent {
    /// Starts `agent_bin` and waits for its hello; with `set_home`, its `HOME` is the private `home/`.
    pub async fn start(agent_bin: &Path, set_home: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let home = dir.path().join("home");
        std::fs::create_dir(&home)?;
        let hello = HelloListener::bind(dir.path().join("hello.sock"))?;
        step("starting the static agent on a Unix socket");
        let mut cmd = Command::new(agent_bin);
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--hello")
            .arg(format!("unix:{}", hello.path().display()))
            .env("AGENT_LOG", "warn")
            .stderr(Stdio::inherit());
        if set_home {
            cmd.env("HOME", &home);
        }
        let agent = Self {
            child: cmd.spawn()?,
            socket,
            home,
            _dir: dir,
        };
        hello.wait(Duration::from_secs(30)).await?;
        Ok(agent)
    }

    /// A new client connection.
    pub async fn client(&self) -> Result<AgentClient> {
        Ok(AgentClient::connect(&UnixConnector::new(&self.socket)).await?)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
