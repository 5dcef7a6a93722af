//! `cargo xtask demo`: the product's main flow in real microVMs, with readable progress.
//!
//! Builds the image (cached), boots a "browser VM" and a "CLI VM" side by side (QEMU, TCG where
//! there is no real KVM), configures both with the user's proxy environment over vsock, captures a
//! credential file from the browser VM and pushes it into the running CLI VM, shows the CLI VM
//! seeing it, then powers both off and destroys them, checking nothing is left behind. The login
//! itself (PTY, URL detection, callback) joins this walk when the login flow lands.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator::vm::{QemuBackend, QemuConfig, QemuVm};
use orchestrator::AgentClient;
use protocol::messages::{ConfigureRequest, WriteFileRequest};
use protocol::secret::EnvVars;

use crate::shell::step;

/// Obviously fake: demo data only.
const FAKE_CREDENTIAL: &str = r#"{"fake_cli":{"accessToken":"fake-access-token-0001"}}"#;
const CREDENTIAL_PATH: &str = "/root/.fake-cli/credentials.json";

/// Runs the demo.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let assets = crate::image::prepare(crate::image::Which::Minimal)?;
    step(&format!(
        "image ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let config = QemuConfig::new(
        &assets.vhost_device_vsock,
        &assets.image.kernel,
        &assets.image.initramfs,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(flow(QemuBackend::new(config)))?;
    step(&format!(
        "demo done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn timed(what: &str, since: Instant) {
    step(&format!("{what} ({} ms)", since.elapsed().as_millis()));
}

async fn flow(backend: QemuBackend) -> Result<()> {
    let t = Instant::now();
    step(&format!(
        "booting the browser VM and the CLI VM (accel {}; waiting for each agent's hello)",
        backend.config().accel
    ));
    let (browser, cli) = tokio::join!(backend.create("browser-vm"), backend.create("cli-vm"));
    let (mut browser, mut cli) = (browser.context("browser VM")?, cli.context("CLI VM")?);
    for vm in [&browser, &cli] {
        step(&format!(
            "  {}: hello after {} ms (agent start to hello {} ms, guest clock), dir {}",
            vm.name(),
            vm.boot_to_hello().as_millis(),
            vm.hello().start_to_hello_ms,
            vm.dir().display()
        ));
    }
    timed("state: vm_created -> ready", t);

    let result = walk(&browser, &cli).await;

    let t = Instant::now();
    for vm in [&mut browser, &mut cli] {
        let client = AgentClient::connect(&vm.connector()).await?;
        client.poweroff().await?;
        vm.wait_exit(Duration::from_secs(60)).await?;
    }
    timed("both guests powered off cleanly", t);
    let t = Instant::now();
    for vm in [browser, cli] {
        let name = vm.name().to_string();
        let dir = vm.dir().to_path_buf();
        let report = vm.destroy().await?;
        if dir.exists() {
            bail!("{} left behind", dir.display());
        }
        step(&format!(
            "  {name} destroyed: removed {} files and sockets and its directory",
            report.removed.len() - 1
        ));
    }
    timed("destroyed with zero traces", t);
    result
}

async fn walk(browser_vm: &QemuVm, cli_vm: &QemuVm) -> Result<()> {
    let browser = AgentClient::connect(&browser_vm.connector()).await?;
    let cli = AgentClient::connect(&cli_vm.connector()).await?;

    let t = Instant::now();
    // Placeholder proxy of the demo user: real hosts and passwords are configuration, never code.
    let env = EnvVars::from_pairs([
        ("HTTPS_PROXY", "http://proxy.invalid:10001"),
        ("HTTP_PROXY", "http://proxy.invalid:10001"),
        ("NO_PROXY", "localhost,127.0.0.1"),
    ]);
    for client in [&browser, &cli] {
        client
            .configure(&ConfigureRequest {
                env: env.clone(),
                session_id: Some("demo-session".into()),
                ..Default::default()
            })
            .await?;
    }
    timed(
        "configured both VMs with the proxy environment over vsock",
        t,
    );

    let t = Instant::now();
    // Stands in for the CLI's login writing its credential file in the browser VM.
    browser
        .exec_collect(
            &[
                "sh",
                "-c",
                &format!(
                    "mkdir -p /root/.fake-cli && printf '%s' '{FAKE_CREDENTIAL}' > {CREDENTIAL_PATH}.tmp && mv {CREDENTIAL_PATH}.tmp {CREDENTIAL_PATH}"
                ),
            ],
            None,
        )
        .await?;
    let captured = browser.read_file(CREDENTIAL_PATH).await?;
    timed(
        &format!(
            "captured {} bytes of credentials from the browser VM",
            captured.content.len()
        ),
        t,
    );

    let t = Instant::now();
    cli.write_file(&WriteFileRequest {
        path: CREDENTIAL_PATH.into(),
        content: captured.content,
        mode: Some(0o600),
        create_dirs: true,
    })
    .await?;
    timed("pushed them into the running CLI VM (0600)", t);

    let t = Instant::now();
    let out = cli
        .exec_collect(
            &[
                "sh",
                "-c",
                &format!(
                    "test -s {CREDENTIAL_PATH} && echo \"logged in (session $AGENT_SESSION_ID, proxy $HTTPS_PROXY, mode $(stat -c %a {CREDENTIAL_PATH}))\""
                ),
            ],
            None,
        )
        .await?;
    if out.status.shell_code() != 0 {
        bail!(
            "the CLI VM does not see the credentials: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    timed(
        &format!("CLI VM: {}", String::from_utf8_lossy(&out.stdout).trim()),
        t,
    );
    Ok(())
}
