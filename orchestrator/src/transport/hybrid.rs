//! Hybrid vsock: the guest's vsock ports reached through one Unix socket on the host.
//!
//! This is the protocol of Firecracker, Cloud Hypervisor and rust-vmm's `vhost-device-vsock`: the host
//! connects to the VMM's Unix socket, writes `CONNECT <port>\n`, reads `OK <host_port>\n`, and from then
//! on the stream is the guest's port. Guest-initiated connections to host port `P` arrive on a Unix
//! socket the host listens on at `<uds_path>_<P>` (see [`super::HelloListener`]).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{AgentStream, Connector, TransportError};

/// Longest acceptable handshake reply line.
const MAX_REPLY: usize = 64;
/// A VMM answers at once; a silent one is broken.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to guest `port` through the VMM's hybrid vsock Unix socket.
#[derive(Debug, Clone)]
pub struct HybridVsockConnector {
    uds_path: PathBuf,
    port: u32,
}

impl HybridVsockConnector {
    /// A connector for guest `port` behind the VMM socket at `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        Self {
            uds_path: uds_path.into(),
            port,
        }
    }

    /// Where guest-initiated connections to host `port` arrive.
    pub fn host_listener_path(&self, port: u32) -> PathBuf {
        let mut s = self.uds_path.clone().into_os_string();
        s.push(format!("_{port}"));
        s.into()
    }
}

impl Connector for HybridVsockConnector {
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>> {
        Box::pin(async move {
            let what = || format!("hvsock:{}:{}", self.uds_path.display(), self.port);
            let mut stream = UnixStream::connect(&self.uds_path)
                .await
                .map_err(|e| TransportError::io(format!("connect {}", what()), e))?;
            let handshake = async {
                stream
                    .write_all(format!("CONNECT {}\n", self.port).as_bytes())
                    .await
                    .map_err(|e| TransportError::io(format!("handshake {}", what()), e))?;
                // Byte by byte: whatever follows the newline already belongs to the guest's stream.
                let mut line = Vec::with_capacity(16);
                loop {
                    let byte = stream.read_u8().await.map_err(|e| {
                        TransportError::Handshake(format!(
                            "{}: connection closed during handshake (guest not listening yet?): {e}",
                            what()
                        ))
                    })?;
                    if byte == b'\n' {
                        break;
                    }
                    line.push(byte);
                    if line.len() > MAX_REPLY {
                        return Err(TransportError::Handshake(format!(
                            "{}: reply too long",
                            what()
                        )));
                    }
                }
                let reply = String::from_utf8_lossy(&line);
                match reply.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
                    Some(Ok(_)) => Ok(()),
                    _ => Err(TransportError::Handshake(format!(
                        "{}: unexpected reply {reply:?}",
                        what()
                    ))),
                }
            };
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    TransportError::Timeout(HANDSHAKE_TIMEOUT, "in hybrid vsock handshake")
                })??;
            Ok(Box::pin(stream) as AgentStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_listener_path_appends_the_port() {
        let c = HybridVsockConnector::new("/run/vm1/vm.vsock", 1024);
        assert_eq!(
            c.host_listener_path(1025),
            PathBuf::from("/run/vm1/vm.vsock_1025")
        );
    }
}
