//! `cargo xtask demo`: the product's main flow in real microVMs, with readable progress.
//!
//! Builds the images (cached), then drives one login session with the orchestrator's `LoginService`
//! over the QEMU backend (TCG where there is no real KVM): the user's CLI VM (the golden CLI image,
//! with the real CLIs, on a disk of the user's own) and a browser VM (the test image) boot,
//! the browser VM's agent is configured with the user's egress proxy environment over vsock, the
//! provider's login (a fake CLI replaying a real recorded login) runs on a PTY there, its URL reaches
//! the host, the "user" pastes the code, the credential file is captured, sealed, stored, pushed into
//! the running CLI VM, and the browser VM is wiped and destroyed. The real `claude` in the CLI VM
//! then says it is logged in; the CLI VM is destroyed too (its disk with it), and the demo checks
//! that nothing is left behind.
//!
//! The login itself runs a fake CLI: a real one would need the provider's servers, which cannot
//! be reached here (`cargo xtask bench images` and the VM tests run the real CLIs' logins in the
//! browser image as far as their URL in Chromium).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use orchestrator::egress::{EgressPorts, PortRange, ProxyConfig};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService, SessionState};
use orchestrator::store::{Store, StoreConfig};
use orchestrator::vault::{Keyring, Vault};
use orchestrator::vm::{QemuLauncher, QemuVmBackend, VmBackend};
use orchestrator::AgentClient;
use protocol::Secret;

use crate::shell::step;

/// The demo user and the provider whose login the demo walks.
const USER: &str = "demo-user";
const PROVIDER: &str = "claude_code";
/// What the "user" pastes after logging in at the provider (obviously fake).
const FAKE_CODE: &str = "fake-auth-code-0001";

/// Runs the demo.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let browser = crate::image::prepare(crate::image::Which::Minimal)?;
    let cli = crate::image::prepare(crate::image::Which::Cli)?;
    step(&format!(
        "images ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let mut cli_config = cli.qemu_config();
    // Node.js CLIs: 512 MB.
    cli_config.memory_mib = 512;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(flow(
        QemuLauncher::new(browser.qemu_config()),
        QemuLauncher::new(cli_config),
    ))?;
    step(&format!(
        "demo done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A fresh random vault key for this run only: real keys come from the host's configuration.
fn ephemeral_keyring() -> Result<Keyring> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("reading /dev/urandom")?;
    let spec = format!(
        "demo:{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    Ok(Keyring::from_spec(&spec, "demo")?)
}

/// The egress proxy of the demo: from `DEMO_PROXY_HOST` / `_USER` / `_PASSWORD` when set, else a
/// placeholder on a reserved name (nothing in the demo goes out through it).
fn proxy() -> ProxyConfig {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    ProxyConfig {
        host: var("DEMO_PROXY_HOST", "proxy.invalid"),
        username: var("DEMO_PROXY_USER", "demo"),
        password: Secret::new(var("DEMO_PROXY_PASSWORD", "placeholder")),
    }
}

async fn flow(browser: QemuLauncher, cli: QemuLauncher) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &StoreConfig::Sqlite {
            path: dir.path().join("demo.db"),
        },
        "demo-host",
    )
    .await?;
    step(&format!(
        "store: SQLite at {}; vault: AES-256-GCM with a key made for this run",
        dir.path().join("demo.db").display()
    ));
    step(&format!(
        "VMs: QEMU ({}), the agent as PID 1, reached over virtio-vsock",
        browser.config().accel
    ));
    let disks = dir.path().join("cli-disks");
    let backend = Arc::new(QemuVmBackend::with_images(browser, cli, &disks, "/root"));
    let service = LoginService::new(
        backend.clone(),
        store.clone(),
        Arc::new(Vault::new(ephemeral_keyring()?)),
        EgressPorts::new(store.clone(), PortRange::default()),
        LoginConfig {
            proxy: Some(proxy()),
            hello_timeout: Duration::from_secs(60),
            ..LoginConfig::default()
        },
    );

    let started = Instant::now();
    let id = service.start(USER, PROVIDER).await?;
    step(&format!("login session {id}: {USER} links {PROVIDER}"));
    let mut events = service.subscribe(&id).await?;
    let mut last = Instant::now();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let mut end = None;
    let mut pasted = false;
    while let Some(ev) = events.next().await {
        let took = last.elapsed();
        match ev.kind {
            LoginEventKind::State { state, reason } => {
                last = Instant::now();
                steps.push((state.to_string(), took));
                step(&format!(
                    "  state {state:<20} (+{} ms){}",
                    took.as_millis(),
                    reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
                if state.is_terminal() {
                    end = Some(state);
                }
            }
            LoginEventKind::AuthUrl { url, source } => {
                let shown: String = url.chars().take(90).collect();
                let source = format!("{source:?}").to_lowercase();
                step(&format!(
                    "  login URL reached the host (from the {source}): {shown}..."
                ));
                // The browser shim and the screen may each report the URL; a person pastes once.
                if !pasted {
                    pasted = true;
                    step("  the user logs in at the provider and pastes the code into the CLI");
                    service.submit_code(&id, FAKE_CODE).await?;
                }
            }
            LoginEventKind::DeviceCode { url, code } => {
                step(&format!(
                    "  device code reached the host: open {url}, enter {code}"
                ));
            }
            LoginEventKind::Progress { step: what, detail } => {
                step(&format!("  {what}: {detail}"));
            }
        }
    }
    if end != Some(SessionState::Completed) {
        bail!("the login ended {end:?}");
    }
    step(&format!(
        "login completed in {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let record = store
        .credential(USER, PROVIDER)
        .await?
        .context("no stored credential")?;
    step(&format!(
        "stored sealed: version {}, key {}, {} bytes of ciphertext",
        record.version,
        record.envelope.key_id,
        record.envelope.ciphertext.len()
    ));

    let cli = backend.ensure_cli_vm(USER).await?;
    let client = AgentClient::connect(&*cli.connector).await?;
    let out = client
        .exec_collect(&["sh", "-c", "claude auth status"], None)
        .await?;
    let said = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if out.status.shell_code() != 0 {
        bail!("the CLI VM's CLI is not logged in: {said}");
    }
    step(&format!(
        "CLI VM {}: `claude auth status` says: {said}",
        cli.id
    ));
    drop(client);

    let t = Instant::now();
    let pids = backend.pids(&cli.id);
    let vm_dir: Option<PathBuf> = backend.dir(&cli.id);
    let report = service.destroy_vm(USER, &cli.id).await?;
    step(&format!(
        "CLI VM destroyed in {} ms: removed {} items (processes, sockets, files, its directory)",
        t.elapsed().as_millis(),
        report.removed.len()
    ));
    let left: Vec<u32> = pids
        .into_iter()
        .filter(|p| PathBuf::from(format!("/proc/{p}")).exists())
        .collect();
    let disks_left = std::fs::read_dir(&disks).map_or(0, |d| d.count());
    if !left.is_empty()
        || vm_dir.is_some_and(|d| d.exists())
        || !backend.vm_ids().is_empty()
        || disks_left > 0
    {
        bail!("something was left behind: processes {left:?}, {disks_left} CLI disks");
    }
    if !store.active_vms(None).await?.is_empty() || !store.active_sessions().await?.is_empty() {
        bail!("active rows left in the store");
    }
    step("zero traces: no VM process, no VM file, no CLI disk, no active store row");
    step("audit log:");
    for entry in store.audit_log(Some(USER)).await? {
        step(&format!(
            "  {:<22} {} {}",
            entry.event,
            entry.subject,
            entry.detail.chars().take(80).collect::<String>()
        ));
    }
    step("summary (time spent reaching each state):");
    for (state, took) in steps {
        step(&format!("  {state:<20} {:>7} ms", took.as_millis()));
    }
    Ok(())
}
