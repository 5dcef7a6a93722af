//! Waiting for a VM is waiting for its agent's hello: the agent dials the host the moment it is up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::frame::{Frame, FrameDecoder, FrameKind};
use protocol::{Hello, HelloAck, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::TransportError;

const MAX_HELLO_BYTES: usize = 64 * 1024;
/// A connected agent sends its hello at once; this only guards against a stuck peer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens where an agent says hello: a Unix socket, which for hybrid vsock is `<uds_path>_<port>`.
///
/// Bind it before starting the VM: a guest dialling a socket that does not exist yet blocks for
/// seconds per attempt. The socket file is removed on drop.
#[derive(Debug)]
pub struct HelloListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HelloListener {
    /// Binds `path`, replacing a stale socket file.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, TransportError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::remove_file(&path) {
            Ok(()) => debug!(path = %path.display(), "removed stale hello socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TransportError::io(format!("remove {}", path.display()), e)),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| TransportError::io(format!("bind {}", path.display()), e))?;
        Ok(Self { listener, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a valid hello, acknowledges it and returns it. A malformed greeting
    /// or one of another protocol version is answered (refused) and logged, and waiting goes on.
    /// The connection is closed: the agent lets it be.
    pub async fn wait(&self, timeout: Duration) -> Result<Hello, TransportError> {
        self.wait_kept(timeout).await.map(|(hello, _)| hello)
    }

    /// [`HelloListener::wait`], returning the acknowledged connection too. While the host holds
    /// it open, the agent holds it as well and says hello again when it breaks under the agent
    /// (a VM restored from saved state, see [`crate::vm::snapshot`]).
    pub async fn wait_kept(
        &self,
        timeout: Duration,
    ) -> Result<(Hello, UnixStream), TransportError> {
        tokio::time::timeout(timeout, async {
            loop {
                let (stream, _) = self
                    .listener
                    .accept()
                    .await
                    .map_err(|e| TransportError::io("accept hello", e))?;
                match receive(stream).await {
                    Ok(kept) => return Ok(kept),
                    Err(e) => warn!(error = %e, "ignoring a bad hello"),
                }
            }
        })
        .await
        .map_err(|_| TransportError::Timeout(timeout, "waiting for the agent's hello"))?
    }
}

impl Drop for HelloListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn receive(mut stream: UnixStream) -> Result<(Hello, UnixStream), TransportError> {
    let read = async {
        let mut decoder = FrameDecoder::new(MAX_HELLO_BYTES);
        let mut buf = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| TransportError::io("read hello", e))?;
            if n == 0 {
                return Err(TransportError::BadHello(
                    "closed before a full hello".into(),
                ));
            }
            decoder
                .extend(&buf[..n])
                .map_err(|e| TransportError::BadHello(e.to_string()))?;
            if let Some(frame) = decoder
                .next_frame()
                .map_err(|e| TransportError::BadHello(e.to_string()))?
            {
                return Ok(frame);
            }
        }
    };
    let frame = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| TransportError::Timeout(READ_TIMEOUT, "reading hello"))??;
    if frame.kind != FrameKind::Message {
        return Err(TransportError::BadHello(format!(
            "frame kind {:?}",
            frame.kind
        )));
    }
    let hello: Hello = frame
        .json()
        .map_err(|e| TransportError::BadHello(e.to_string()))?;
    let ack = if hello.protocol_version == PROTOCOL_VERSION {
        HelloAck {
            accepted: true,
            reason: None,
        }
    } else {
        HelloAck {
            accepted: false,
            reason: Some(format!(
                "host speaks protocol {PROTOCOL_VERSION}, agent {}",
                hello.protocol_version
            )),
        }
    };
    let frame = Frame::message(&ack).map_err(|e| TransportError::BadHello(e.to_string()))?;
    stream
        .write_all(&frame.encode())
        .await
        .map_err(|e| TransportError::io("ack hello", e))?;
    match ack.reason {
        None => Ok((hello, stream)),
        Some(reason) => Err(TransportError::BadHello(reason)),
    }
}
