//! Where host connections come from: AF_VSOCK in a VM, a Unix socket in development.
//! There is deliberately no TCP listener.

pub mod hello;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use tracing::{debug, warn};

use crate::config::ListenAddr;
use crate::rpc;
use crate::state::Agent;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// AF_VSOCK listener.
    Vsock(VsockListener),
    /// Unix socket listener.
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file is replaced; the new one is owner-only.
    pub fn bind(addr: &ListenAddr) -> std::io::Result<Self> {
        match addr {
            ListenAddr::Vsock(port) => Ok(Listener::Vsock(VsockListener::bind(VsockAddr::new(
                VMADDR_CID_ANY,
                *port,
            ))?)),
            ListenAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => debug!(path = %path.display(), "removed stale socket"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let listener = UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(listener))
            }
        }
    }

    /// Accepts connections forever, serving each on its own task.
    pub async fn serve(self, agent: Arc<Agent>) -> std::io::Result<()> {
        loop {
            match &self {
                Listener::Vsock(l) => {
                    let (stream, peer) = l.accept().await?;
                    debug!(?peer, "host connected over vsock");
                    tokio::spawn(rpc::serve_connection(stream, agent.clone()));
                }
                Listener::Unix(l) => match l.accept().await {
                    Ok((stream, _)) => {
                        debug!("host connected over unix socket");
                        tokio::spawn(rpc::serve_connection(stream, agent.clone()));
                    }
                    // Out of descriptors and similar: keep serving the connections we have.
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}
