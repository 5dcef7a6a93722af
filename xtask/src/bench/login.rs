//! `bench login`: the whole login flow (browser VM up, hello, configure, seed files, login on a PTY,
//! URL detected, code typed, capture, seal, store, push into the CLI VM, wipe, destroy) against the
//! real static agent as local processes, with the fake CLIs replaying real recordings. The "user"
//! types the code the moment the URL appears, so the figure is the flow's own cost.
//!
//! Baseline in the same run: starting one local VM (agent process up, hello received) and destroying
//! it; `login_flow_vs_vm_start_ratio` says how many such starts the whole flow costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use orchestrator::egress::{EgressPorts, PortRange};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService, SessionState};
use orchestrator::store::{Store, StoreConfig};
use orchestrator::vault::{Keyring, Vault};
use orchestrator::vm::VmKind;
use orchestrator::vm::{VmBackend, VmSpec};
use test_kit::local_backend::{LocalAgentBackend, LocalOptions};

use super::{figure, stats::percentile};
use crate::shell::step;

const FLOWS: usize = 20;
/// A throwaway all-zero key: the bench measures sealing cost, not secrecy.
const KEY: &str = "bench:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let fake_cli = super::release_fake_cli()?;
    let rt = crate::shell::runtime()?;
    rt.block_on(measure(agent_bin, fake_cli))
}

/// A login service on local agents under `dir` (SQLite store, throwaway vault key), whose CLIs
/// are the fake ones replaying recordings; also returns its backend and store.
pub(super) async fn local_service(
    dir: &std::path::Path,
    agent_bin: std::path::PathBuf,
    fake_cli: &std::path::Path,
    config: LoginConfig,
) -> Result<(LoginService, Arc<LocalAgentBackend>, Store)> {
    let (backend, store) = local_backend(dir, agent_bin, fake_cli).await?;
    let service = service_on(backend.clone(), store.clone(), config)?;
    Ok((service, backend, store))
}

/// Local agent VMs under `dir` whose CLIs are the fake ones, and an SQLite store there.
pub(super) async fn local_backend(
    dir: &std::path::Path,
    agent_bin: std::path::PathBuf,
    fake_cli: &std::path::Path,
) -> Result<(Arc<LocalAgentBackend>, Store)> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(
        &StoreConfig::Sqlite {
            path: dir.join("login.db"),
        },
        "bench",
    )
    .await?;
    let bin = test_kit::fake_clis::install(
        &dir.join("bin"),
        fake_cli,
        &test_kit::fake_clis::fixtures_root(),
    )?;
    let backend = Arc::new(LocalAgentBackend::new(LocalOptions {
        agent_bin,
        root: dir.join("vms"),
        path_prepend: vec![bin],
        env: Vec::new(),
        agent_start_gate: None,
    }));
    Ok((backend, store))
}

/// A login service over `backend` and `store`, sealing with the throwaway key.
pub(super) fn service_on(
    backend: Arc<dyn orchestrator::vm::VmBackend>,
    store: Store,
    config: LoginConfig,
) -> Result<LoginService> {
    let vault = Arc::new(Vault::new(Keyring::from_spec(KEY, "bench")?));
    let egress = EgressPorts::new(store.clone(), PortRange::default());
    Ok(LoginService::new(backend, store, vault, egress, config))
}

/// One login, the user typing the code as soon as the URL shows; returns its duration.
pub(super) async fn one_flow(service: &LoginService, user: &str) -> Result<Duration> {
    let started = Instant::now();
    let id = service.start(user, "codex").await?;
    let mut events = service.subscribe(&id).await?;
    let mut end = None;
    while let Some(ev) = events.next().await {
        match ev.kind {
            LoginEventKind::AuthUrl { .. } => service.submit_code(&id, "fake-code-0001").await?,
            LoginEventKind::State { state, reason } if state.is_terminal() => {
                end = Some((state, reason))
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    ensure!(
        matches!(end, Some((SessionState::Completed, _))),
        "flow ended {end:?}"
    );
    Ok(elapsed)
}

async fn measure(agent_bin: std::path::PathBuf, fake_cli: std::path::PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (service, backend, _store) =
        local_service(dir.path(), agent_bin, &fake_cli, LoginConfig::default()).await?;

    step(&format!(
        "{FLOWS} full login flows (codex recording, code typed at once)"
    ));
    // A warm-up flow creates the CLI VM, as a returning user has one.
    one_flow(&service, "bench-user").await?;
    let mut flows = Vec::with_capacity(FLOWS);
    for i in 0..FLOWS {
        flows.push(one_flow(&service, "bench-user").await?);
        eprint!("\r  {}/{FLOWS}", i + 1);
    }
    eprintln!();

    step(&format!(
        "baseline: {FLOWS} local VM starts (agent hello) and destroys"
    ));
    let mut starts: Vec<Duration> = Vec::with_capacity(FLOWS);
    for _ in 0..FLOWS {
        let t = Instant::now();
        let spec = VmSpec {
            user_id: "bench-base".into(),
            kind: VmKind::Browser,
            session_id: None,
        };
        let handle = backend.create_vm(spec).await?;
        if let Some(hello) = &handle.hello {
            hello.wait(Duration::from_secs(30)).await?;
        }
        backend.destroy_vm(&handle.id).await?;
        starts.push(t.elapsed());
    }
    let flow_p50 = percentile(&mut flows, 50.0);
    let start_p50 = percentile(&mut starts, 50.0);
    figure(
        "login_flow_p50_ms",
        format!("{:.1}", flow_p50.as_secs_f64() * 1e3),
    );
    figure(
        "login_vm_start_destroy_p50_ms",
        format!("{:.1}", start_p50.as_secs_f64() * 1e3),
    );
    figure(
        "login_flow_vs_vm_start_ratio",
        format!(
            "{:.2}",
            flow_p50.as_secs_f64() / start_p50.as_secs_f64().max(1e-9)
        ),
    );
    Ok(())
}
