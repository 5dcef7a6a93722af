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

/// The connection a hello was acknowledged on, kept open as long as the host keeps it.
#[derive(Debug)]
pub enum HelloStream {
    /// Over vsock (in a VM).
    Vsock(VsockStream),
    /// Over a Unix socket (in development).
    Unix(UnixStream),
}

/// Dials `addr` and says hello until the host acknowledges, backing off between attempts; returns
/// the acknowledged connection. Gives up (`None`) only when the host explicitly refuses this agent.
pub async fn say_hello(addr: &HostAddr, agent: &Agent) -> Option<HelloStream> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt(addr, agent).await {
            Ok((ack, stream)) if ack.accepted => {
                info!(%addr, attempts, "hello acknowledged");
                return Some(stream);
            }
            Ok((ack, _)) => {
                warn!(%addr, reason = ?ack.reason, "host refused this agent");
                return None;
            }
            Err(e) => debug!(%addr, error = %e, attempts, "hello failed, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Holds the acknowledged hello connection. When the host closes it, returns: the host is done
/// listening. When it breaks under the agent (restoring a VM from saved state resets every vsock
/// connection of the guest), says hello again: that hello is how the host learns a restored VM is
/// running, instead of polling it.
pub async fn keep(addr: &HostAddr, agent: &Agent, stream: HelloStream) {
    let mut stream = stream;
    loop {
        let broken = match stream {
            HelloStream::Vsock(s) => vsock_ended(s).await,
            HelloStream::Unix(mut s) => ended(&mut s).await,
        };
        match broken {
            None => {
                debug!(%addr, "the host closed the hello connection");
                return;
            }
            Some(e) => info!(%addr, error = %e, "hello connection broken; saying hello again"),
        }
        match say_hello(addr, agent).await {
            Some(next) => stream = next,
            None => return,
        }
    }
}

/// [`ended`] for vsock, which must also wait for error readiness: a transport reset (a restore)
/// only raises an error on the socket (no input, no hang-up), which a plain read never wakes for.
async fn vsock_ended(stream: VsockStream) -> Option<std::io::Error> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    let fd: OwnedFd = stream.into();
    // SAFETY: `fd` is an open descriptor the `OwnedFd` owns; the `AsyncFd` takes the `OwnedFd`,
    // which returns that same descriptor until it is dropped with the `AsyncFd`.
    let registered =
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::ERROR) };
    let watched = match registered {
        Ok(watched) => watched,
        Err(e) => return Some(std::io::Error::other(e.to_string())),
    };
    let mut buf = [0u8; 64];
    loop {
        let mut guard = match watched.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(guard) => guard,
            Err(e) => return Some(e),
        };
        // SAFETY: `buf` is a live, writable buffer of the length given; the descriptor is owned
        // by `watched` for the whole call.
        let n = unsafe {
            libc::recv(
                watched.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return None,
            n if n > 0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Some(e);
            }
        }
    }
}

/// Waits for `stream` to end: `None` when closed by the peer, the error when broken. The host
/// sends nothing on it; anything it does send is read and dropped.
async fn ended<S: AsyncRead + Unpin>(stream: &mut S) -> Option<std::io::Error> {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return None,
            Ok(_) => continue,
            Err(e) => return Some(e),
        }
    }
}

async fn attempt(addr: &HostAddr, agent: &Agent) -> Result<(HelloAck, HelloStream), HelloError> {
    match addr {
        HostAddr::Vsock { cid, port } => {
            let mut stream = VsockStream::connect(VsockAddr::new(*cid, *port)).await?;
            let ack = exchange(&mut stream, agent).await?;
            Ok((ack, HelloStream::Vsock(stream)))
        }
        HostAddr::Unix(path) => {
            let mut stream = UnixStream::connect(path).await?;
            let ack = exchange(&mut stream, agent).await?;
            Ok((ack, HelloStream::Unix(stream)))
        }
    }
}

async fn exchange<S>(stream: &mut S, agent: &Agent) -> Result<HelloAck, HelloError>
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
