//! `bench snapshot`: browser VMs restored from the golden snapshot against cold boots of the same
//! machine, in one run: each to its Chromium answering (after a restore: the agent's hello again,
//! the `restored` call, then the browser); four restores at once; a paused CLI VM's resume to its
//! hello. With the accelerator that ran.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use orchestrator::vm::{QemuLauncher, QemuVmBackend, VmBackend, VmKind, VmSpec, VmStart};
use orchestrator::AgentClient;

use super::{figure, stats::percentile};
use crate::image::Which;
use crate::shell::step;

const COLD_BOOTS: usize = 3;
const RESTORES: usize = 5;
const CONCURRENT: usize = 4;
const RESUMES: usize = 3;

fn browser_spec(i: usize) -> VmSpec {
    VmSpec {
        user_id: format!("bench-{i}"),
        kind: VmKind::Browser,
        session_id: None,
    }
}

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let browser = crate::image::prepare(Which::Browser)?;
    let cli = crate::image::prepare(Which::Cli)?;
    let mut config = browser.qemu_config();
    config.memory_mib = 1024;
    config.vcpus = 2;
    let snapshot_dir = crate::image::browser_snapshot_dir(&config, false);
    let mut cli_config = cli.qemu_config();
    cli_config.memory_mib = 512;
    let disks = tempfile::tempdir()?;
    let rt = crate::shell::runtime()?;
    rt.block_on(async {
        let launcher = QemuLauncher::new(config);
        figure("accel", launcher.config().accel);
        let cold = cold_boots(&launcher).await?;
        let backend = QemuVmBackend::with_images(
            launcher,
            QemuLauncher::new(cli_config),
            disks.path(),
            crate::image::GUEST_HOME,
        )
        .with_browser_snapshot(&snapshot_dir);
        step("opening (or making) the golden snapshot");
        let made = Instant::now();
        let snapshot = backend
            .browser_snapshot()
            .await
            .context("snapshots on")?
            .map_err(|e| anyhow::anyhow!("the snapshot: {e}"))?;
        step(&format!(
            "snapshot ready after {:.1}s",
            made.elapsed().as_secs_f64()
        ));
        let restored = restores(&backend).await?;
        figure("cold_boot_to_chromium_ready_ms_p50", cold.as_millis());
        figure("restore_to_chromium_ready_ms_p50", restored.as_millis());
        figure(
            "restore_vs_cold_ratio",
            format!("{:.3}", restored.as_secs_f64() / cold.as_secs_f64()),
        );
        figure("snapshot_bytes", snapshot.state_bytes());
        let concurrent = concurrent_restores(&backend).await?;
        figure("restore_concurrent_4_ms_p50", concurrent.as_millis());
        let resumed = cli_resumes(&backend).await?;
        figure("cli_resume_to_hello_ms_p50", resumed.as_millis());
        Ok(())
    })
}

async fn cold_boots(launcher: &QemuLauncher) -> Result<Duration> {
    let mut samples = Vec::new();
    for i in 1..=COLD_BOOTS {
        let started = Instant::now();
        let vm = launcher.create(&format!("bench-cold-{i}")).await?;
        let client = AgentClient::connect(&vm.connector()).await?;
        test_kit::browser_vm::browser_ready(&client).await;
        samples.push(started.elapsed());
        step(&format!(
            "cold boot {i}/{COLD_BOOTS}: Chromium ready after {} ms",
            started.elapsed().as_millis()
        ));
        drop(client);
        vm.destroy().await?;
    }
    Ok(percentile(&mut samples, 50.0))
}

/// One restore to its Chromium answering; the VM is destroyed after.
async fn restore_once(backend: &QemuVmBackend, i: usize) -> Result<Duration> {
    let started = Instant::now();
    let vm = backend.create_vm(browser_spec(i)).await?;
    anyhow::ensure!(
        vm.start == VmStart::Restored,
        "VM {i} was not restored: {:?}",
        vm.start
    );
    let client = AgentClient::connect(&*vm.connector).await?;
    test_kit::browser_vm::browser_ready(&client).await;
    let took = started.elapsed();
    drop(client);
    backend.destroy_vm(&vm.id).await?;
    Ok(took)
}

async fn restores(backend: &QemuVmBackend) -> Result<Duration> {
    let mut samples = Vec::new();
    for i in 1..=RESTORES {
        let took = restore_once(backend, i).await?;
        step(&format!(
            "restore {i}/{RESTORES}: Chromium ready after {} ms",
            took.as_millis()
        ));
        samples.push(took);
    }
    Ok(percentile(&mut samples, 50.0))
}

async fn concurrent_restores(backend: &QemuVmBackend) -> Result<Duration> {
    let all =
        futures_util::future::join_all((1..=CONCURRENT).map(|i| restore_once(backend, 100 + i)))
            .await;
    let mut samples = all.into_iter().collect::<Result<Vec<_>>>()?;
    step(&format!(
        "{CONCURRENT} restores at once: {:?} ms",
        samples.iter().map(Duration::as_millis).collect::<Vec<_>>()
    ));
    Ok(percentile(&mut samples, 50.0))
}

/// A CLI VM paused and resumed: from asking for it to its hello (the `restored` call included).
async fn cli_resumes(backend: &QemuVmBackend) -> Result<Duration> {
    let first = backend.ensure_cli_vm("bench-cli").await?;
    step(&format!("CLI VM {} booted", first.id));
    let mut samples = Vec::new();
    for i in 1..=RESUMES {
        let bytes = backend
            .pause_cli("bench-cli")
            .await?
            .context("a running CLI VM")?;
        let started = Instant::now();
        let vm = backend.ensure_cli_vm("bench-cli").await?;
        let took = started.elapsed();
        anyhow::ensure!(vm.start == VmStart::Resumed, "not resumed: {:?}", vm.start);
        step(&format!(
            "CLI resume {i}/{RESUMES}: {bytes} bytes of state, hello after {} ms",
            took.as_millis()
        ));
        samples.push(took);
        if i == RESUMES {
            backend.destroy_vm(&vm.id).await?;
        }
    }
    Ok(percentile(&mut samples, 50.0))
}
