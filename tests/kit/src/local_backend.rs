//! A [`VmBackend`] whose VMs are `vm-agent` processes on this machine, each on its own Unix socket
//! with its own HOME: the whole login flow runs for real (agent, hello, exec, files) without a
//! hypervisor. For development, tests and benches; production hosts implement [`VmBackend`] over
//! their VMM.
//!
//! Every process of a local VM carries `LOCAL_VM_ID=<id>` in its environment (the agent passes its
//! environment on to what it spawns), so destroying the VM finds and kills all of them, even
//! children the agent left behind when it was killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{debug, warn};

use orchestrator::transport::{HelloListener, UnixConnector};
use orchestrator::vm::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec};

use crate::agent::{agent_command, egress_args};

/// Environment variable marking every process of a local VM.
pub const VM_ID_ENV: &str = "LOCAL_VM_ID";

/// How to start local agents.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `vm-agent` binary.
    pub agent_bin: PathBuf,
    /// Directory under which each VM gets `<id>/` (sockets, `home/`).
    pub root: PathBuf,
    /// Directories put in front of `PATH` for the agents (fake CLIs in tests).
    pub path_prepend: Vec<PathBuf>,
    /// Extra environment for the agents (and so for what they spawn).
    pub env: Vec<(String, String)>,
    /// When set, each browser VM's agent process waits for this file to exist before the agent
    /// binary starts (a slow boot, to hold a login at `vm_created`).
    pub agent_start_gate: Option<PathBuf>,
}

/// A gate a test closes to hold the backend at one step, and opens to let it go on.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Self(Arc::new(watch::channel(true).0))
    }

    /// Holds callers at this step until [`Gate::open`].
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    /// Lets held and future callers through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn pass(&self) {
        let mut rx = self.0.subscribe();
        // Err only if the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|open| *open).await;
    }
}

struct LocalVm {
    user: String,
    kind: VmKind,
    dir: PathBuf,
    child: Child,
}

/// Agents as local processes (see the module docs).
pub struct LocalAgentBackend {
    options: LocalOptions,
    vms: Mutex<HashMap<String, LocalVm>>,
    /// Closed: `create_vm` waits before creating anything.
    pub create_gate: Gate,
    /// Closed: `ensure_cli_vm` waits before answering.
    pub cli_gate: Gate,
}

impl std::fmt::Debug for LocalAgentBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAgentBackend")
            .field("root", &self.options.root)
            .finish()
    }
}

impl LocalAgentBackend {
    /// A backend starting agents as described by `options`.
    pub fn new(options: LocalOptions) -> Self {
        Self {
            options,
            vms: Mutex::new(HashMap::new()),
            create_gate: Gate::new(),
            cli_gate: Gate::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalVm>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the VMs currently running.
    pub fn vm_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The HOME directory of a VM (where its CLIs write credentials).
    pub fn home_of(&self, vm_id: &str) -> Option<PathBuf> {
        self.lock().get(vm_id).map(|vm| vm.dir.join("home"))
    }

    /// The user's CLI VM id, if one runs.
    pub fn cli_vm_of(&self, user: &str) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, vm)| vm.kind == VmKind::Cli && vm.user == user)
            .map(|(id, _)| id.clone())
    }

    /// The agent's process id.
    pub fn agent_pid(&self, vm_id: &str) -> Option<u32> {
        self.lock().get(vm_id).and_then(|vm| vm.child.id())
    }

    /// Kills the agent with SIGKILL, as a crash would (the VM's other processes stay).
    pub fn kill_agent(&self, vm_id: &str) -> bool {
        let mut vms = self.lock();
        match vms.get_mut(vm_id) {
            Some(vm) => vm.child.start_kill().is_ok(),
            None => false,
        }
    }

    fn spawn(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        let id = format!(
            "local-{}-{}",
            spec.kind.as_str(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let dir = self.options.root.join(&id);
        let home = dir.join("home");
        std::fs::create_dir_all(&home)
            .map_err(|e| create_failed(format!("creating {}", home.display()), e))?;
        // The VM's own /tmp: what the agent and its programs put there (the browser shim's socket
        // directory among them) goes when the VM's directory goes, even after a SIGKILL.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| create_failed(format!("creating {}", tmp.display()), e))?;
        let agent_sock = dir.join("agent.sock");
        // Bound before the agent starts, so its first dial finds the socket.
        let hello = HelloListener::bind(dir.join("hello.sock"))
            .map_err(|e| BackendError::Create(e.into()))?;
        let mut path = self.options.path_prepend.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(path).map_err(|e| BackendError::Create(e.into()))?;
        let gate = self
            .options
            .agent_start_gate
            .as_ref()
            .filter(|_| spec.kind == VmKind::Browser);
        let egress = dir.join("egress.sock");
        let mut agent = agent_command(&self.options.agent_bin, &agent_sock, &hello);
        agent.args(egress_args(&egress));
        let mut cmd = match gate {
            None => Command::from(agent),
            Some(gate) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(r#"while [ ! -e "$0" ]; do sleep 0.02; done; exec "$@""#)
                    .arg(gate)
                    .arg(agent.get_program())
                    .args(agent.get_args());
                for (k, v) in agent.get_envs() {
                    if let Some(v) = v {
                        sh.env(k, v);
                    }
                }
                sh
            }
        };
        cmd.env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("PATH", path)
            .env(VM_ID_ENV, &id)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&home)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| create_failed("starting the agent".into(), e))?;
        debug!(vm = %id, pid = child.id(), "local agent started");
        let handle = VmHandle {
            id: id.clone(),
            connector: Arc::new(UnixConnector::new(&agent_sock)),
            hello: Some(hello),
            guest_home: home.display().to_string(),
            egress: Some(egress),
            desktop: None,
            created: true,
            start: orchestrator::vm::VmStart::Booted,
        };
        self.lock().insert(
            id,
            LocalVm {
                user: spec.user_id.clone(),
                kind: spec.kind,
                dir,
                child,
            },
        );
        Ok(handle)
    }

    async fn destroy(&self, vm_id: &str) -> Result<CleanupReport, BackendError> {
        let vm = self
            .lock()
            .remove(vm_id)
            .ok_or_else(|| BackendError::UnknownVm(vm_id.to_owned()))?;
        let LocalVm { dir, mut child, .. } = vm;
        let mut report = CleanupReport::default();
        if let Some(pid) = child.id() {
            let _ = child.start_kill();
            report.removed.push(format!("process {pid} (agent)"));
        }
        let _ = child.wait().await;
        for pid in kill_marked(vm_id).await {
            report.removed.push(format!("process {pid}"));
        }
        for name in ["agent.sock", "hello.sock"] {
            if dir.join(name).exists() {
                report
                    .removed
                    .push(format!("socket {}", dir.join(name).display()));
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| BackendError::Destroy {
                vm: vm_id.to_owned(),
                source: std::io::Error::new(e.kind(), format!("removing {}: {e}", dir.display()))
                    .into(),
            })?;
            report.removed.push(format!("directory {}", dir.display()));
        }
        Ok(report)
    }
}

impl VmBackend for LocalAgentBackend {
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>> {
        async move {
            self.create_gate.pass().await;
            self.spawn(&spec)
        }
        .boxed()
    }

    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>> {
        async move {
            self.cli_gate.pass().await;
            let existing = {
                let mut vms = self.lock();
                let found = vms
                    .iter_mut()
                    .find(|(_, vm)| vm.kind == VmKind::Cli && vm.user == user_id)
                    .map(|(id, vm)| {
                        (
                            id.clone(),
                            vm.dir.clone(),
                            matches!(vm.child.try_wait(), Ok(None)),
                        )
                    });
                found
            };
            match existing {
                Some((id, dir, true)) => Ok(VmHandle {
                    connector: Arc::new(UnixConnector::new(dir.join("agent.sock"))),
                    hello: None,
                    guest_home: dir.join("home").display().to_string(),
                    egress: Some(dir.join("egress.sock")),
                    desktop: None,
                    created: false,
                    start: orchestrator::vm::VmStart::Booted,
                    id,
                }),
                Some((id, _, false)) => {
                    warn!(vm = %id, "CLI VM's agent is gone; replacing the VM");
                    let _ = self.destroy(&id).await;
                    self.spawn(&VmSpec {
                        user_id: user_id.to_owned(),
                        kind: VmKind::Cli,
                        session_id: None,
                    })
                }
                None => self.spawn(&VmSpec {
                    user_id: user_id.to_owned(),
                    kind: VmKind::Cli,
                    session_id: None,
                }),
            }
        }
        .boxed()
    }

    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>> {
        self.destroy(vm_id).boxed()
    }
}

impl Drop for LocalAgentBackend {
    fn drop(&mut self) {
        // Tests that fail half-way still leave no agent behind: kill_on_drop covers the agents;
        // their children are killed by marker.
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            for pid in marked_processes(&id) {
                let _ = nix_kill(pid);
            }
        }
    }
}

/// An I/O failure while creating a VM, saying what was being done.
fn create_failed(what: String, e: std::io::Error) -> BackendError {
    BackendError::Create(std::io::Error::new(e.kind(), format!("{what}: {e}")).into())
}

/// Processes whose environment marks them as part of local VM `vm_id`.
pub fn marked_processes(vm_id: &str) -> Vec<u32> {
    let needle = format!("{VM_ID_ENV}={vm_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

async fn kill_marked(vm_id: &str) -> Vec<u32> {
    let mut killed = Vec::new();
    for _ in 0..50 {
        let pids = marked_processes(vm_id);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if nix_kill(pid).is_ok() && !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed
}

fn nix_kill(pid: u32) -> Result<(), nix::Error> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
}
