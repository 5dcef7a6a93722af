//! The guest-initiated hello: the host learns the agent is up the moment it is, instead of sleeping
//! and polling.

use std::time::Duration;

use protocol::frame::{Frame, FrameDecoder, FrameKind};
use protocol::HelloAck;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};
use tracing::{debug, info, warn};

use crate::config::HostAddr;
use crate::state::Agent;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ACK_BYTES: usize = 64 * 1024;

/// Why one hello attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Connecting, writing or reading failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The host did not answer in time.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The host answered something that is not a hello ack.
    #[error("bad acknowledgement: {0}")]
    BadAck(String),
}

/// Dials `addr` and says hello until the host acknowledges, backing off between attempts. Gives up
/// only when the host explicitly refuses this agent.
pub async fn say_hello(addr: &HostAddr, agent: &Agent) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt(addr, agent).await {
            Ok(ack) if ack.accepted => {
                info!(%addr, attempts, "hello acknowledged");
                return;
            }
            Ok(ack) => {
                warn!(%addr, reason = ?ack.reason, "host refused this agent");
                return;
            }
            Err(e) => debug!(%addr, error = %e, attempts, "hello failed, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn attempt(addr: &HostAddr, agent: &Agent) -> Result<HelloAck, HelloError> {
    match addr {
        HostAddr::Vsock { cid, port } => {
            let stream = VsockStream::connect(VsockAddr::new(*cid, *port)).await?;
            exchange(stream, agent).await
        }
        HostAddr::Unix(path) => exchange(UnixStream::connect(path).await?, agent).await,
    }
}

async fn exchange<S>(mut stream: S, agent: &Agent) -> Result<HelloAck, HelloError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = Frame::message(&agent.hello()).map_err(|e| HelloError::BadAck(e.to_string()))?;
    stream.write_all(&frame.encode()).await?;
    stream.flush().await?;
    let read = async {
        let mut decoder = FrameDecoder::new(MAX_ACK_BYTES);
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(HelloError::BadAck("connection closed before ack".into()));
            }
            decoder
                .extend(&buf[..n])
                .map_err(|e| HelloError::BadAck(e.to_string()))?;
            if let Some(frame) = decoder
                .next_frame()
                .map_err(|e| HelloError::BadAck(e.to_string()))?
            {
                if frame.kind != FrameKind::Message {
                    return Err(HelloError::BadAck(format!("frame kind {:?}", frame.kind)));
                }
                return frame
                    .json::<HelloAck>()
                    .map_err(|e| HelloError::BadAck(e.to_string()));
            }
        }
    };
    tokio::time::timeout(ACK_TIMEOUT, read)
        .await
        .map_err(|_| HelloError::Timeout(ACK_TIMEOUT))?
}
