//! The image's session programs (the browser VM's X server, window manager and terminal):
//! started in order at boot, each once the one before is ready, restarted when they exit. The
//! agent is the init; these are its children, so none outlives it.

use std::time::Duration;

use tokio::process::Command;
use tracing::{info, warn};

use crate::image::ServiceConfig;

/// How long a service may take to become ready before the next is started anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a service that exited is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Starts `services` in order and keeps them running until the agent stops.
pub fn start(services: Vec<ServiceConfig>) {
    if services.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for service in services {
            let ready = service.ready_path.clone();
            tokio::spawn(supervise(service));
            if let Some(path) = ready {
                let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
                while !path.exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !path.exists() {
                    warn!(path = %path.display(), "service not ready in time; going on");
                }
            }
        }
    });
}

/// Runs one service, again whenever it exits.
async fn supervise(service: ServiceConfig) {
    let Some((program, args)) = service.argv.split_first() else {
        warn!(service = %service.name, "service without a program");
        return;
    };
    loop {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&service.env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(mut child) => {
                info!(service = %service.name, pid = child.id(), "service started");
                let status = child.wait().await;
                warn!(service = %service.name, ?status, "service exited; starting it again");
            }
            Err(e) => warn!(service = %service.name, error = %e, "service cannot start"),
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}
