//! `cargo xtask demo`: the host service with its web page over real microVMs.
//!
//! Builds the images (cached), then serves the example host service (`orchestrator/host-service`)
//! on loopback with the QEMU backend (TCG where there is no usable KVM), an SQLite store in a
//! directory of this run, a vault key made for this run, and a warm pool of browser VMs booted
//! ahead. It prints the address to open and stays up until Ctrl-C, then destroys every VM it made.
//!
//! - `cargo xtask demo`: the browser VMs boot the golden browser image (X, a terminal, Chromium,
//!   the real CLIs), the CLI VMs the golden CLI image. Logins reach the providers only through an
//!   upstream proxy: set `DEMO_PROXY_HOST` (`host:port`), `DEMO_PROXY_USER` and
//!   `DEMO_PROXY_PASSWORD`; without one the VMs have no way out.
//! - `cargo xtask demo --check`: the whole walk headless over the service's HTTP API, then exits
//!   with its verdict (CI runs it): sign up, link Claude Code (in a browser VM of the test image,
//!   whose fake CLI replays a recorded real login: the providers cannot be reached here), paste
//!   the code, see the account linked, run the real `claude auth status` as a job in the user's
//!   CLI VM (golden CLI image), rotate the egress port, revoke (the same job then says logged
//!   out), and check that nothing is left: no VM process, no disk, no active store row.
//! - `--sealing user` (the default): zero-knowledge credentials; the browser VM seals the capture
//!   to the user's key, which the page makes and keeps (the headless walk plays the page: it makes
//!   a key, registers its public half, and re-seals the stored envelope to the CLI VM's key).
//!   `--sealing host`: the host's vault seals and pushes by itself.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use host_service::config::{EgressSection, FileConfig, StoreSection};
use host_service::ServiceConfig;
use orchestrator::login::{PendingDelivery, Sealing};
use orchestrator::vault::{Keyring, Vault};
use orchestrator::vm::{QemuLauncher, QemuVmBackend, WarmPool};
use protocol::sealed::KeyPair;
use serde_json::json;
use test_kit::service::Client;

use crate::shell::step;

/// What `cargo xtask demo` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Run the whole walk headless and exit with its verdict.
    #[arg(long)]
    pub check: bool,
    /// Loopback port to serve on (0: any free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Browser VMs booted ahead.
    #[arg(long, default_value_t = 1)]
    pub pool: usize,
    /// Who seals credentials: the user (zero-knowledge; the page holds the key) or the host.
    #[arg(long, value_enum, default_value_t = DemoSealing::User)]
    pub sealing: DemoSealing,
}

/// `--sealing`: [`orchestrator::login::Sealing`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSealing {
    /// The host's vault seals and pushes.
    Host,
    /// Sealed to the user's key in the browser VM; the user's page delivers.
    User,
}

impl From<DemoSealing> for Sealing {
    fn from(s: DemoSealing) -> Self {
        match s {
            DemoSealing::Host => Sealing::Host,
            DemoSealing::User => Sealing::User,
        }
    }
}

const PROVIDER: &str = "claude_code";
/// UDP ports of the browser VMs' desktop forwards (on loopback).
pub const DESKTOP_PORTS: (u16, u16) = (40000, 40063);
/// How long the interactive demo lets a CLI VM idle before pausing it (the host service's
/// `[vm] cli_pause_idle_s`).
const CLI_PAUSE_IDLE: Duration = Duration::from_secs(600);
/// What the "user" pastes after logging in at the provider (obviously fake).
const FAKE_CODE: &str = "fake-auth-code-0001";

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let browser = if args.check {
        crate::image::prepare(crate::image::Which::Minimal)?
    } else {
        crate::image::prepare(crate::image::Which::Browser)?
    };
    let cli = crate::image::prepare(crate::image::Which::Cli)?;
    step(&format!(
        "images ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let mut browser_config = browser.qemu_config();
    if !args.check {
        browser_config.memory_mib = 1024;
        browser_config.vcpus = 2;
    }
    let mut cli_config = cli.qemu_config();
    // Node.js CLIs: 512 MB.
    cli_config.memory_mib = 512;
    let rt = crate::shell::runtime()?;
    rt.block_on(serve(
        args,
        QemuLauncher::new(browser_config),
        QemuLauncher::new(cli_config),
    ))
}

/// A fresh random vault key for this run only: real keys come from the host's configuration.
fn ephemeral_vault() -> Result<Arc<Vault>> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("reading /dev/urandom")?;
    let spec = format!(
        "demo:{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    Ok(Arc::new(Vault::new(Keyring::from_spec(&spec, "demo")?)))
}

async fn serve(args: DemoArgs, browser: QemuLauncher, cli: QemuLauncher) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let proxy_host = std::env::var("DEMO_PROXY_HOST").ok();
    if let Ok(password) = std::env::var("DEMO_PROXY_PASSWORD") {
        std::env::set_var(host_service::config::PROXY_PASSWORD_ENV, password);
    }
    let file = FileConfig {
        listen: format!("127.0.0.1:{}", args.port),
        host_id: "demo-host".into(),
        pool_size: args.pool,
        login_minutes: 10,
        hello_timeout_s: 180,
        sealing: args.sealing.into(),
        job_env: Default::default(),
        store: StoreSection {
            sqlite: Some(dir.path().join("state.db")),
            postgres: false,
        },
        egress: EgressSection {
            proxy_user: std::env::var("DEMO_PROXY_USER").ok(),
            proxy_host: proxy_host.clone(),
            ..EgressSection::default()
        },
        vm: None,
    };
    step(&format!(
        "VMs: QEMU ({}), the agent as PID 1, reached over virtio-vsock; store: SQLite in {}; vault key made for this run; credentials sealed by the {:?}",
        browser.config().accel,
        dir.path().display(),
        format!("{:?}", args.sealing).to_lowercase()
    ));
    match &proxy_host {
        Some(h) => step(&format!("egress: through the upstream proxy {h}")),
        None => step("egress: no upstream proxy (DEMO_PROXY_HOST unset): the VMs have no way out"),
    }
    let disks = dir.path().join("cli-disks");
    let snapshot = crate::image::browser_snapshot_dir(browser.config(), !args.check);
    step(&format!(
        "browser VMs are restored from the golden snapshot {} (made on first use if missing)",
        snapshot.display()
    ));
    let mut backend = QemuVmBackend::with_images(browser, cli, &disks, crate::image::GUEST_HOME)
        .with_browser_snapshot(&snapshot);
    if !args.check {
        // The golden browser VM's desktop reaches the page through a UDP forward of its own.
        backend = backend.with_desktop_forwards(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            DESKTOP_PORTS.0,
            DESKTOP_PORTS.1,
        );
    }
    let qemu = Arc::new(backend);
    if !args.check {
        QemuVmBackend::pause_idle_cli_in_background(&qemu, CLI_PAUSE_IDLE);
        step(&format!(
            "a CLI VM unused and running nothing for {} min is paused to its disk",
            CLI_PAUSE_IDLE.as_secs() / 60
        ));
    }
    let pool = WarmPool::new(qemu.clone(), args.pool, Duration::from_secs(180));
    step(&format!(
        "warm pool: booting {} browser VM(s) ahead",
        args.pool
    ));
    let state = host_service::config::build(
        &file,
        Arc::new(pool.clone()),
        ephemeral_vault()?,
        ServiceConfig::default(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&file.listen)
        .await
        .with_context(|| format!("binding {}", file.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(host_service::serve_until(
        listener,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let t = Instant::now();
    let ready = pool.wait_ready(args.pool, Duration::from_secs(300)).await;
    step(&format!(
        "{ready} browser VM(s) ready in the pool after {:.1}s",
        t.elapsed().as_secs_f64()
    ));

    let verdict = if args.check {
        walk(&base, args.sealing.into()).await
    } else {
        step(&format!(
            "open {base} (Ctrl-C stops the service and removes every VM)"
        ));
        tokio::signal::ctrl_c().await?;
        Ok(())
    };

    step("stopping: the pool's VMs and every user's CLI VM are destroyed");
    let _ = stop.send(());
    let _ = server.await;
    pool.shutdown().await;
    let store = orchestrator::store::Store::open(
        &orchestrator::store::StoreConfig::Sqlite {
            path: dir.path().join("state.db"),
        },
        "demo-host",
    )
    .await?;
    let owners: std::collections::HashMap<String, String> = store
        .active_vms(None)
        .await?
        .into_iter()
        .map(|v| (v.id, v.user_id))
        .collect();
    for vm in qemu.vm_ids() {
        let user = owners.get(&vm).map_or("unknown", String::as_str);
        if let Err(e) = state.login.destroy_vm(user, &vm).await {
            step(&format!("destroying {vm} failed: {e}"));
        }
    }
    let left = qemu.vm_ids();
    let disks_left = std::fs::read_dir(&disks).map_or(0, |d| d.count());
    let active_vms = store.active_vms(None).await?.len();
    let active_sessions = store.active_sessions().await?.len();
    if args.check {
        step("audit log:");
        for entry in store.audit_log(None).await? {
            step(&format!(
                "  {:<22} {} {}",
                entry.event,
                entry.subject,
                entry.detail.chars().take(80).collect::<String>()
            ));
        }
    }
    verdict?;
    ensure!(
        left.is_empty() && disks_left == 0 && active_vms == 0 && active_sessions == 0,
        "something was left behind: VMs {left:?}, {disks_left} disks, {active_vms} active VM rows, {active_sessions} active sessions"
    );
    step("zero traces: no VM process, no CLI disk, no active store row");
    Ok(())
}

/// The walk a person does on the page, over the same API.
async fn walk(base: &str, sealing: Sealing) -> Result<()> {
    let mut c = Client::new(base);
    let r = c.register("demo@example.test", "demo password 1").await?;
    ensure!(r.status == 201, "sign-up failed: {r:?}");
    step("signed up demo@example.test");
    let user_key = match sealing {
        Sealing::Host => None,
        Sealing::User => Some(register_user_key(&c).await?),
    };

    let t = Instant::now();
    let r = c
        .post(&format!("/v1/accounts/{PROVIDER}/link/start"), json!({}))
        .await?;
    ensure!(r.status == 201, "link start failed: {r:?}");
    let id = r.json["login_session_id"]
        .as_str()
        .context("no session id")?
        .to_owned();
    step(&format!("link {PROVIDER}: login session {id}"));
    let events_path = format!("/v1/accounts/{PROVIDER}/link/{id}/events");
    let mut pasted = false;
    let mut last = Instant::now();
    let mut end = String::new();
    let client = c.clone();
    let events = c
        .sse_until(&events_path, Duration::from_secs(600), |ev| {
            let d = &ev.data;
            match d["type"].as_str() {
                Some("state") => {
                    let s = d["state"].as_str().unwrap_or("");
                    step(&format!(
                        "  state {s:<20} (+{} ms){}",
                        last.elapsed().as_millis(),
                        d["reason"]
                            .as_str()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ));
                    last = Instant::now();
                    if ["completed", "failed", "timeout", "cancelled"].contains(&s) {
                        end = s.to_owned();
                        return true;
                    }
                }
                Some("auth_url") if !pasted => {
                    pasted = true;
                    let url: String = d["url"].as_str().unwrap_or("").chars().take(90).collect();
                    step(&format!(
                        "  login URL on the event stream after {} ms: {url}...",
                        t.elapsed().as_millis()
                    ));
                    step("  the user logs in at the provider and pastes the code");
                    let client = client.clone();
                    let path = format!("/v1/accounts/{PROVIDER}/link/{id}/code");
                    tokio::spawn(async move {
                        let _ = client.post(&path, json!({"code": FAKE_CODE})).await;
                    });
                }
                Some("progress") => step(&format!(
                    "  {}: {}",
                    d["step"].as_str().unwrap_or(""),
                    d["detail"].as_str().unwrap_or("")
                )),
                _ => {}
            }
            false
        })
        .await?;
    ensure!(end == "completed", "the login ended {end:?}: {events:?}");
    step(&format!("linked in {:.1}s", t.elapsed().as_secs_f64()));
    if let Some(key) = &user_key {
        deliver_as_the_page(&c, key).await?;
    }

    let accounts = c.get("/v1/accounts").await?;
    let a = &accounts.json[0];
    ensure!(a["status"] == "linked", "account not linked: {accounts:?}");
    step(&format!(
        "account: {} {} (sealed by the {}, egress port {}, scopes {})",
        a["provider"], a["status"], a["sealing"], a["egress_port"], a["scopes"]
    ));

    let (code, out) = job(
        &c,
        json!({"provider": PROVIDER, "argv": ["claude", "auth", "status"]}),
    )
    .await?;
    ensure!(
        code == Some(0),
        "the CLI VM's real claude is not logged in: {out}"
    );
    step(&format!(
        "job in the CLI VM, real `claude auth status`: {}",
        one_line(&out)
    ));

    let r = c
        .post(&format!("/v1/accounts/{PROVIDER}/rotate-egress"), json!({}))
        .await?;
    ensure!(r.status == 200, "rotate failed: {r:?}");
    step(&format!("egress port rotated to {}", r.json["new_port"]));

    let r = c
        .post(&format!("/v1/accounts/{PROVIDER}/revoke"), json!({}))
        .await?;
    ensure!(r.json["stored"] == true, "revoke failed: {r:?}");
    step(&format!(
        "revoked: stored credential deleted, wiped in the CLI VM: {}",
        r.json["wiped"]
    ));
    let (code, out) = job(
        &c,
        json!({"provider": PROVIDER, "argv": ["claude", "auth", "status"]}),
    )
    .await?;
    ensure!(code != Some(0), "still logged in after revoke: {out}");
    step(&format!(
        "`claude auth status` after revoke: {}",
        one_line(&out)
    ));
    Ok(())
}

/// What the page does when it first runs in a browser: makes the user's key pair (WebCrypto
/// there) and registers the public half.
async fn register_user_key(c: &Client) -> Result<KeyPair> {
    let key = KeyPair::generate()?;
    let r = c
        .put(
            "/v1/keys/user",
            json!({"public_key": key.public().to_base64()}),
        )
        .await?;
    ensure!(r.status == 200, "registering the user's key failed: {r:?}");
    step(&format!(
        "the page made the user's key and registered its public half (fingerprint {})",
        key.public().fingerprint()
    ));
    Ok(key)
}

/// What the page does with a user-sealed capture: opens the stored envelope with the user's key
/// and re-seals it to the CLI VM's key; the service hands it to the VM, whose agent opens it.
async fn deliver_as_the_page(c: &Client, key: &KeyPair) -> Result<()> {
    let r = c.get(&format!("/v1/accounts/{PROVIDER}/delivery")).await?;
    ensure!(r.status == 200, "nothing to deliver: {r:?}");
    let pending: PendingDelivery = serde_json::from_value(r.json)?;
    let delivery = test_kit::login::reseal_as_the_page(key, &pending)?;
    let r = c
        .post(
            &format!("/v1/accounts/{PROVIDER}/delivery"),
            serde_json::to_value(&delivery)?,
        )
        .await?;
    ensure!(r.status == 200, "delivery refused: {r:?}");
    step(&format!(
        "the page opened version {} with the user's key and re-sealed it to CLI VM {} (key {}): delivered",
        pending.version,
        pending.vm_id,
        pending.vm_key.fingerprint()
    ));
    Ok(())
}

/// Runs a job to its end; its exit code and output.
async fn job(c: &Client, body: serde_json::Value) -> Result<(Option<i64>, String)> {
    let r = c.post("/v1/jobs", body).await?;
    if r.status != 201 {
        bail!("job refused: {r:?}");
    }
    let id = r.json["id"].as_str().context("no job id")?.to_owned();
    let events = c
        .sse_until(
            &format!("/v1/jobs/{id}/stream"),
            Duration::from_secs(600),
            |e| e.event == "end",
        )
        .await?;
    let out: String = events
        .iter()
        .filter(|e| e.event == "output")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    let end = events.last().map(|e| e.data.clone()).unwrap_or_default();
    Ok((end["exit_code"].as_i64(), out))
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(160)
        .collect()
}
