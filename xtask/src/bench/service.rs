//! `bench service`: the host service over HTTP on loopback, VMs as local agents (release
//! builds), fake CLIs and the stand-in API.
//!
//! - `link_start_to_url_ms_p50`: `POST .../link/start` → the URL event on the session's SSE stream
//!   (a new user each time: the CLI VM and the browser VM start in it);
//! - `api_requests_per_s`: authenticated `GET /v1/accounts` from 64 connections, against the same
//!   server's `GET /hello` (`hello_requests_per_s`): `api_vs_hello_ratio`;
//! - `job_first_byte_ms_p50`: `POST /v1/jobs` → the first output byte on the job's stream;
//! - `sse_event_latency_ms_p99`: an event's server timestamp → its arrival at the client;
//! - with real microVMs (QEMU; emulated here) and a warm pool of one golden browser VM:
//!   `vm_link_start_to_desktop_frame_ms_p50`, `POST .../link/start` → the first decoded frame of
//!   the login VM's desktop in a viewer page (headless Chromium) that asked for it as soon as the
//!   session said `ready`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use host_service::ServiceConfig;
use serde_json::json;
use test_kit::service::{
    fake_cli_backend_with, file_config, tokens_in_vms, Client, ServiceRig, StandinApi,
};

use super::{figure, stats::percentile};
use crate::shell::step;

const LINKS: usize = 10;
const JOBS: usize = 20;
const CONNECTIONS: usize = 64;
const LOAD_FOR: Duration = Duration::from_secs(4);

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let fake_cli = super::release_fake_cli()?;
    let rt = crate::shell::runtime()?;
    rt.block_on(measure(agent_bin, fake_cli))?;
    vm_desktop()
}

const VM_LINKS: usize = 3;

/// `vm_link_start_to_desktop_frame_ms_p50` (see the module docs).
fn vm_desktop() -> Result<()> {
    use orchestrator::vm::{QemuLauncher, QemuVmBackend, WarmPool};
    let browser_assets = crate::image::prepare(crate::image::Which::Browser)?;
    let cli_assets = crate::image::prepare(crate::image::Which::Minimal)?;
    let mut browser = browser_assets.qemu_config();
    browser.memory_mib = 1024;
    browser.vcpus = 2;
    let rt = crate::shell::runtime()?;
    let _guard = rt.enter();
    let dir = tempfile::tempdir()?;
    let (first, last) = test_kit::ports::free_udp_range(8);
    let qemu = Arc::new(
        QemuVmBackend::with_images(
            QemuLauncher::new(browser),
            QemuLauncher::new(cli_assets.qemu_config()),
            dir.path().join("disks"),
            crate::image::GUEST_HOME,
        )
        .with_desktop_forwards(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            first,
            last,
        ),
    );
    let pool = WarmPool::new(qemu.clone(), 1, Duration::from_secs(300));
    let file = file_config(&dir.path().join("state.db"), &[]);
    let rig = rt.block_on(ServiceRig::start(
        &file,
        Arc::new(pool.clone()),
        ServiceConfig::default(),
    ))?;
    let mut c = rig.client();
    rt.block_on(c.register("vm-bench@example.test", "bench password"))?;
    let mut page = test_kit::desktop::chromium::Chromium::launch();
    let mut samples = Vec::new();
    let mut to_ready = Vec::new();
    let mut ready_to_frame = Vec::new();
    for i in 0..VM_LINKS {
        step(&format!(
            "VM link {}/{VM_LINKS}: waiting for the pool",
            i + 1
        ));
        ensure!(
            rt.block_on(pool.wait_ready(1, Duration::from_secs(300))) == 1,
            "the pool did not fill"
        );
        let t = Instant::now();
        let r = rt.block_on(c.post("/v1/accounts/claude_code/link/start", json!({})))?;
        let id = r.json["login_session_id"]
            .as_str()
            .context("no session")?
            .to_owned();
        let events = format!("/v1/accounts/claude_code/link/{id}/events");
        rt.block_on(c.sse_until(&events, Duration::from_secs(300), |e| {
            e.data["state"] == "ready" || e.data["state"] == "failed"
        }))?;
        let ready = t.elapsed();
        to_ready.push(ready);
        let ticket = rt.block_on(c.post(
            &format!("/v1/accounts/claude_code/link/{id}/desktop"),
            json!({}),
        ))?;
        let viewer = format!(
            "{}{}",
            rig.base,
            ticket.json["viewer_url"].as_str().context("no viewer")?
        );
        page.watch(&viewer, Duration::from_secs(180));
        samples.push(t.elapsed());
        ready_to_frame.push(t.elapsed() - ready);
        page.navigate("about:blank");
        rt.block_on(c.post(
            &format!("/v1/accounts/claude_code/link/{id}/cancel"),
            json!({}),
        ))?;
        rt.block_on(c.sse_until(&events, Duration::from_secs(120), |e| {
            e.data["state"] == "cancelled"
        }))?;
    }
    drop(page);
    rt.block_on(rig.stop());
    rt.block_on(pool.shutdown());
    for vm in qemu.vm_ids() {
        use orchestrator::vm::VmBackend;
        let _ = rt.block_on(qemu.destroy_vm(&vm));
    }
    figure(
        "vm_link_start_to_desktop_frame_ms_p50",
        percentile(&mut samples, 50.0).as_millis(),
    );
    // Where it goes: the flow up to `ready`, then the viewer's WebRTC set-up and first frame.
    figure(
        "vm_link_start_to_ready_ms_p50",
        percentile(&mut to_ready, 50.0).as_millis(),
    );
    figure(
        "vm_ready_to_desktop_frame_ms_p50",
        percentile(&mut ready_to_frame, 50.0).as_millis(),
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn measure(agent_bin: std::path::PathBuf, fake_cli: std::path::PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = fake_cli_backend_with(dir.path(), &agent_bin, &fake_cli)?;
    let api = StandinApi::start_verifying(tokens_in_vms(backend.clone())).await?;
    let file = file_config(&dir.path().join("state.db"), &[("FAKE_API_URL", &api.url)]);
    let config = ServiceConfig {
        auth_per_minute: 10_000,
        link_per_minute: 10_000,
        ..ServiceConfig::default()
    };
    let rig = ServiceRig::start(&file, backend.clone(), config).await?;

    step(&format!("{LINKS} links, each by a new user"));
    let mut to_url = Vec::new();
    let mut sse_latency = Vec::new();
    let mut last_user = None;
    for i in 0..LINKS {
        let mut c = rig.client();
        let r = c
            .register(&format!("bench{i}@example.test"), "bench password")
            .await?;
        ensure!(r.status == 201, "{r:?}");
        let t = Instant::now();
        let r = c
            .post("/v1/accounts/claude_code/link/start", json!({}))
            .await?;
        let id = r.json["login_session_id"]
            .as_str()
            .context("no session")?
            .to_owned();
        let path = format!("/v1/accounts/claude_code/link/{id}/events");
        let mut url_at = None;
        let code_client = c.clone();
        let code_path = format!("/v1/accounts/claude_code/link/{id}/code");
        c.sse_until(&path, Duration::from_secs(120), |ev| {
            let arrived = now_ms();
            if let Some(at) = ev.data["at_ms"].as_i64() {
                sse_latency.push(Duration::from_millis((arrived - at).max(0) as u64));
            }
            if ev.data["type"] == "auth_url" && url_at.is_none() {
                url_at = Some(t.elapsed());
                let (c, p) = (code_client.clone(), code_path.clone());
                tokio::spawn(async move {
                    let _ = c.post(&p, json!({"code": "fake-code"})).await;
                });
            }
            ev.data["type"] == "state"
                && ["completed", "failed", "timeout", "cancelled"]
                    .contains(&ev.data["state"].as_str().unwrap_or(""))
        })
        .await?;
        to_url.push(url_at.context("no URL event")?);
        last_user = Some(c);
    }
    let user = last_user.context("no user")?;

    step(&format!("{JOBS} prompts in the last user's CLI VM"));
    let mut first_byte = Vec::new();
    for _ in 0..JOBS {
        let t = Instant::now();
        let r = user
            .post(
                "/v1/jobs",
                json!({"provider": "claude_code", "prompt": "bench"}),
            )
            .await?;
        ensure!(r.status == 201, "{r:?}");
        let id = r.json["id"].as_str().context("no job id")?.to_owned();
        let mut first = None;
        let events = user
            .sse_until(
                &format!("/v1/jobs/{id}/stream"),
                Duration::from_secs(60),
                |e| {
                    if e.event == "output" && first.is_none() {
                        first = Some(t.elapsed());
                    }
                    e.event == "end"
                },
            )
            .await?;
        ensure!(
            events.last().is_some_and(|e| e.data["exit_code"] == 0),
            "{events:?}"
        );
        first_byte.push(first.context("no output")?);
    }

    step(&format!(
        "{CONNECTIONS} connections for {LOAD_FOR:?} each on /hello and /v1/accounts"
    ));
    let hello = load(&rig.base, "/hello", None).await?;
    let accounts = load(&rig.base, "/v1/accounts", user.token.clone()).await?;

    figure(
        "link_start_to_url_ms_p50",
        percentile(&mut to_url, 50.0).as_millis(),
    );
    figure(
        "job_first_byte_ms_p50",
        percentile(&mut first_byte, 50.0).as_millis(),
    );
    figure(
        "sse_event_latency_ms_p99",
        percentile(&mut sse_latency, 99.0).as_millis(),
    );
    figure("api_requests_per_s", accounts as u64);
    figure("hello_requests_per_s", hello as u64);
    figure("api_vs_hello_ratio", format!("{:.2}", accounts / hello));
    rig.stop().await;
    for vm in backend.vm_ids() {
        use orchestrator::vm::VmBackend;
        let _ = backend.destroy_vm(&vm).await;
    }
    Ok(())
}

/// Requests per second on `path` from [`CONNECTIONS`] clients of one connection each.
async fn load(base: &str, path: &str, token: Option<String>) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + LOAD_FOR;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = Client::new(base);
        c.token = token.clone();
        let (done, path) = (done.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match c.get(&path).await {
                    Ok(r) if r.status == 200 || path == "/hello" => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return Err(anyhow::anyhow!("{path} failed")),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / LOAD_FOR.as_secs_f64())
}
