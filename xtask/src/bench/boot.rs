//! `bench boot`: real microVMs, booted one after the other. QEMU launch to the agent's hello on the
//! host, the agent's own start-to-hello on the guest clock, the agent's RSS in the guest, and how
//! long destroying a VM takes. Every figure says which accelerator ran (TCG is ~10x slower than
//! KVM, so figures from the two are not comparable).

use std::time::Duration;

use anyhow::{Context, Result};
use orchestrator::vm::{QemuConfig, QemuLauncher};
use orchestrator::AgentClient;

use super::{figure, stats::percentile};
use crate::shell::step;

const BOOTS: usize = 5;

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let assets = crate::image::prepare(crate::image::Which::Minimal)?;
    let mut config = QemuConfig::new(
        &assets.vhost_device_vsock,
        &assets.image.kernel,
        &assets.image.initramfs,
    );
    config.qemu = assets.qemu.clone();
    let rt = crate::shell::runtime()?;
    rt.block_on(measure(QemuLauncher::new(config)))
}

async fn measure(backend: QemuLauncher) -> Result<()> {
    let accel = backend.config().accel;
    let mut boot_to_hello = Vec::new();
    let mut agent_to_hello = Vec::new();
    let mut destroy = Vec::new();
    let mut rss = Vec::new();
    for i in 1..=BOOTS {
        let vm = backend
            .create(&format!("bench-{i}"))
            .await
            .with_context(|| format!("boot {i}"))?;
        let client = AgentClient::connect(&vm.connector()).await?;
        let stats = client.stats().await?;
        drop(client);
        step(&format!(
            "boot {i}/{BOOTS} ({accel}): hello after {} ms (agent start to hello {} ms), agent RSS {} KiB",
            vm.boot_to_hello().as_millis(),
            vm.hello().start_to_hello_ms,
            stats.agent_rss_kb
        ));
        // Where the agent's start-to-hello went, from its own log on the serial console.
        for line in vm.serial_log().lines().filter(|l| l.contains("vm_agent")) {
            step(&format!("  guest: {}", line.trim()));
        }
        boot_to_hello.push(vm.boot_to_hello());
        agent_to_hello.push(Duration::from_millis(vm.hello().start_to_hello_ms));
        rss.push(stats.agent_rss_kb);
        let report = vm.destroy().await?;
        destroy.push(report.elapsed);
    }
    rss.sort_unstable();
    figure("accel", accel);
    figure("boots", BOOTS);
    figure(
        "boot_to_hello_ms_p50",
        percentile(&mut boot_to_hello, 50.0).as_millis(),
    );
    figure(
        "boot_to_hello_ms_max",
        percentile(&mut boot_to_hello, 100.0).as_millis(),
    );
    figure(
        "agent_start_to_hello_ms_p50",
        percentile(&mut agent_to_hello, 50.0).as_millis(),
    );
    figure("guest_rss_kb", rss[rss.len() / 2]);
    figure(
        "destroy_ms_p50",
        format!(
            "{:.1}",
            percentile(&mut destroy, 50.0).as_secs_f64() * 1000.0
        ),
    );
    Ok(())
}
