//! `host-service --config FILE`: the example host service over QEMU microVMs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use host_service::config::{build, vault_from_env};
use host_service::{FileConfig, ServiceConfig};
use orchestrator::vm::{QemuConfig, QemuLauncher, QemuVmBackend, VmBackend, VmUser, WarmPool};

/// The example host service (see the crate docs and `config` for the file).
#[derive(Debug, Parser)]
struct Args {
    /// The TOML configuration.
    #[arg(long)]
    config: PathBuf,
}

fn qemu(
    vm: &host_service::config::VmSection,
    initramfs: &PathBuf,
    image: &Option<PathBuf>,
    mib: u32,
) -> Result<QemuConfig> {
    let mut c = QemuConfig::new(&vm.vhost_device_vsock, &vm.kernel, initramfs);
    if let Some(qemu) = &vm.qemu {
        c.qemu = qemu.clone();
    }
    c.root_image = image.clone();
    c.memory_mib = mib;
    c.vcpus = 2;
    // A named account that does not exist stops the service: QEMU never silently runs as root.
    c.run_as = match &vm.qemu_user {
        Some(name) => Some(
            VmUser::lookup(name)
                .with_context(|| format!("[vm] qemu_user {name:?}: no such account"))?,
        ),
        None => None,
    };
    Ok(c)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let file = FileConfig::load(&args.config)?;
    let vm = file
        .vm
        .clone()
        .context("[vm] is required: the binary runs QEMU microVMs")?;
    let mut qemu_backend = QemuVmBackend::with_images(
        QemuLauncher::new(qemu(
            &vm,
            &vm.browser_initramfs,
            &vm.browser_image,
            vm.browser_memory_mib,
        )?),
        QemuLauncher::new(qemu(
            &vm,
            &vm.cli_initramfs,
            &vm.cli_image,
            vm.cli_memory_mib,
        )?),
        &vm.disks,
        orchestrator::vm::GUEST_HOME,
    );
    if let Some(dir) = &vm.browser_snapshot {
        qemu_backend = qemu_backend.with_browser_snapshot(dir);
    }
    let qemu_backend = Arc::new(qemu_backend);
    if let Some(idle) = vm.cli_pause_idle_s.map(Duration::from_secs) {
        // Shorter would pause a VM between the service asking for it and using it.
        anyhow::ensure!(
            idle >= Duration::from_secs(60),
            "[vm] cli_pause_idle_s must be at least 60"
        );
        QemuVmBackend::pause_idle_cli_in_background(&qemu_backend, idle);
    }
    let backend: Arc<dyn VmBackend> = qemu_backend;
    let pool = WarmPool::new(
        backend,
        file.pool_size,
        Duration::from_secs(file.hello_timeout_s),
    );
    let state = build(
        &file,
        Arc::new(pool.clone()),
        vault_from_env()?,
        ServiceConfig::default(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&file.listen)
        .await
        .with_context(|| format!("binding {}", file.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "host service listening");
    host_service::serve_until(
        listener,
        state,
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping");
        },
        Duration::from_secs(5),
    )
    .await?;
    pool.shutdown().await;
    Ok(())
}
