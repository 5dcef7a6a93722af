//! `bench images`: the golden images. Their sizes, how long building both takes from an empty
//! cache (packages to ext4; the kernel, Node.js tarball download aside, and the CLIs come from
//! their own caches), and, in the same run, boot times of the minimal image (to hello), the CLI
//! VM (to hello) and the browser VM (to Chromium answering on its DevTools pipe), then how long
//! a real CLI's URL takes to be committed in Chromium's tab (its way out through the host's
//! gateway and squid to a local stand-in for the provider, whose authority Chromium is given).
//! Every boot figure comes with the accelerator that ran.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use orchestrator::vm::QemuLauncher;
use orchestrator::AgentClient;

use orchestrator::egress::EgressLimits;
use test_kit::egress::{EgressRig, PROXY_PASSWORD};

use super::{figure, stats::percentile};
use crate::image::{rootfs, Which};
use crate::shell::step;

const BOOTS: usize = 3;

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let minimal = crate::image::prepare(Which::Minimal)?;
    let cli = crate::image::prepare(Which::Cli)?;
    let browser = crate::image::prepare(Which::Browser)?;
    for (name, assets) in [("browser", &browser), ("cli", &cli)] {
        let image = assets.root_image.as_ref().context("a disk image")?;
        figure(&format!("{name}_image_bytes"), allocated_bytes(image)?);
    }
    figure(
        "image_build_cold_s",
        format!("{:.0}", cold_build()?.as_secs_f64()),
    );

    let rt = crate::shell::runtime()?;
    rt.block_on(async {
        let minimal = QemuLauncher::new(minimal.qemu_config());
        figure("accel", minimal.config().accel);
        let p50 = boot_to_hello(&minimal, "minimal").await?;
        figure("minimal_boot_to_hello_ms_p50", p50.as_millis());
        let mut cli_config = cli.qemu_config();
        cli_config.memory_mib = 512;
        let p50 = boot_to_hello(&QemuLauncher::new(cli_config), "cli").await?;
        figure("cli_boot_to_hello_ms_p50", p50.as_millis());
        let mut browser_config = browser.qemu_config();
        browser_config.memory_mib = 1024;
        browser_config.vcpus = 2;
        browser_vm(&QemuLauncher::new(browser_config)).await
    })
}

/// Bytes the (sparse) image file takes on disk.
fn allocated_bytes(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Both golden images built from their recipes into an empty cache.
fn cold_build() -> Result<Duration> {
    let cache = crate::image::cache().join("bench-cold");
    if cache.exists() {
        std::fs::remove_dir_all(&cache)?;
    }
    let agents = crate::agent::build()?;
    step("building both golden images into an empty cache");
    let started = Instant::now();
    rootfs::build(&cache, rootfs::Golden::Cli, &agents.cli)?;
    rootfs::build(&cache, rootfs::Golden::Browser, &agents.desktop)?;
    let took = started.elapsed();
    std::fs::remove_dir_all(&cache)?;
    Ok(took)
}

async fn boot_to_hello(launcher: &QemuLauncher, name: &str) -> Result<Duration> {
    let mut samples = Vec::new();
    for i in 1..=BOOTS {
        let vm = launcher.create(&format!("bench-{name}-{i}")).await?;
        step(&format!(
            "{name} boot {i}/{BOOTS}: hello after {} ms",
            vm.boot_to_hello().as_millis()
        ));
        samples.push(vm.boot_to_hello());
        vm.destroy().await?;
    }
    Ok(percentile(&mut samples, 50.0))
}

/// Browser VM boots to Chromium answering; then, in the last one, each real CLI's login URL from
/// the CLI to Chromium's committed tab.
async fn browser_vm(launcher: &QemuLauncher) -> Result<()> {
    let mut ready = Vec::new();
    let mut navigated = Vec::new();
    let mut found = 0;
    for i in 1..=BOOTS {
        let launched = Instant::now();
        let vm = launcher.create(&format!("bench-browser-{i}")).await?;
        let client = AgentClient::connect(&vm.connector()).await?;
        test_kit::browser_vm::browser_ready(&client).await;
        ready.push(launched.elapsed());
        step(&format!(
            "browser boot {i}/{BOOTS}: hello after {} ms, Chromium ready after {} ms",
            vm.boot_to_hello().as_millis(),
            launched.elapsed().as_millis()
        ));
        if i == BOOTS {
            // The logins' way out, as the host service gives it: the host's gateway to a user's
            // squid port, squid taking the providers' hosts to a local stand-in (no provider is
            // reachable here). Without it every request fails, a CLI's too.
            let rig = EgressRig::for_logins().await;
            let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
            let socket = vm
                .connector()
                .host_listener_path(protocol::egress::DEFAULT_EGRESS_PORT);
            let (_, _egress) = rig
                .serve_login_vm(&gateway, &socket, "bench", vm.name())
                .await;
            // Chromium trusts the stand-in as it trusts the providers: the figure is the login
            // page loading, not Chromium's certificate-error page (~4 s more under emulation).
            test_kit::browser_vm::trust_authority(&client, &rig.origin.authority_base64()).await;
            // One login after the other, each dropped before the next, as a person retrying
            // would. A login that brings no URL to the tab is reported and the others still run.
            for provider in ["claude_code", "codex", "gemini_cli"] {
                let login = tokio::spawn({
                    let client = client.clone();
                    async move {
                        let (urls, call) =
                            test_kit::browser_vm::start_login(&client, provider).await;
                        let opened = test_kit::browser_vm::navigated(&client, &urls).await;
                        drop(call);
                        opened
                    }
                });
                match login.await {
                    Ok(opened) => {
                        let ms = opened.navigated_ms.unwrap_or(0) - opened.requested_ms;
                        step(&format!("{provider}: URL to Chromium's tab in {ms} ms"));
                        navigated.push(Duration::from_millis(ms));
                        found += 1;
                    }
                    Err(e) => step(&format!("{provider}: no URL reached Chromium's tab ({e})")),
                }
            }
        }
        drop(client);
        vm.destroy().await?;
    }
    figure(
        "browser_boot_to_chromium_ready_ms_p50",
        percentile(&mut ready, 50.0).as_millis(),
    );
    if !navigated.is_empty() {
        figure(
            "url_to_chromium_navigated_ms_p50",
            percentile(&mut navigated, 50.0).as_millis(),
        );
    }
    figure("real_cli_urls_found", found);
    Ok(())
}
