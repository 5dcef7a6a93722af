//! The image's session programs (the browser VM's X server, window manager and terminal):
//! started in order at boot, each once the one before is ready, restarted when they exit. The
//! agent is the init; these are its children, so none outlives it. They run as the image's
//! unprivileged user like every other program: a window manager's menu or a terminal on a desktop
//! the viewer (and a page in Chromium, through the X server) can drive must not be root's.

use std::time::Duration;

use tokio::process::Command;
use tracing::{info, warn};

use crate::image::ServiceConfig;

/// How long a service may take to become ready before the next is started anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a service that exited is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Where X servers put their sockets: made by root, writable by all (sticky), since an X server
/// that is not root cannot make it.
const X11_SOCKET_DIR: &str = "/tmp/.X11-unix";

/// Starts `services` in order, each as its user (see [`crate::users`]), and keeps them running
/// until the agent stops. A service whose user cannot be resolved is not started.
pub fn start(services: Vec<ServiceConfig>, users: &crate::users::Users) {
    if services.is_empty() {
        return;
    }
    if let Err(e) = x11_socket_dir() {
        warn!(error = %e, dir = X11_SOCKET_DIR, "cannot make the X socket directory");
    }
    let services: Vec<_> = services
        .into_iter()
        .filter_map(|service| match users.resolve(service.user.as_deref()) {
            Ok(user) => Some((service, user)),
            Err(e) => {
                warn!(service = %service.name, error = %e, "service not started");
                None
            }
        })
        .collect();
    tokio::spawn(async move {
        for (service, user) in services {
            let ready = service.ready_path.clone();
            tokio::spawn(supervise(service, user));
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

fn x11_socket_dir() -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .mode(0o1777)
        .create(X11_SOCKET_DIR)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The umask narrowed the mode at creation.
    std::fs::set_permissions(X11_SOCKET_DIR, std::fs::Permissions::from_mode(0o1777))
}

/// Runs one service as `user` (the agent's own when `None`), again whenever it exits.
async fn supervise(service: ServiceConfig, user: Option<crate::users::RunAs>) {
    let Some((program, args)) = service.argv.split_first() else {
        warn!(service = %service.name, "service without a program");
        return;
    };
    loop {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(user) = &user {
            cmd.envs(user.env()).current_dir(&user.home);
            if user.needs_switch() {
                cmd.uid(user.uid).gid(user.gid);
            }
        }
        cmd.envs(&service.env);
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
