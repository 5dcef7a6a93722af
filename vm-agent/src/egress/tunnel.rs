//! One tunnel to the host: dial, say what the client wants, hear the host's answer, then carry
//! bytes both ways.

use protocol::egress::{read_message, write_message, TunnelOpen, TunnelReply, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};
use tracing::debug;

use crate::config::HostAddr;

/// Bytes carried per read in each direction: large enough that a download is not a syscall
/// storm, small enough for thousands of tunnels.
const COPY_BUFFER: usize = 32 * 1024;

/// Why a tunnel to the host failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The host's egress port could not be reached.
    #[error("dialling {addr}: {source}")]
    Dial {
        /// The host address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The opening exchange failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A connection to the host's egress port.
#[derive(Debug)]
pub enum HostStream {
    /// In a VM.
    Vsock(VsockStream),
    /// Local agents.
    Unix(UnixStream),
}

/// Dials the host, sends `open`, and returns the stream with the host's reply.
pub async fn open(
    host: &HostAddr,
    open: &TunnelOpen,
) -> Result<(HostStream, TunnelReply), TunnelError> {
    let dial = |source| TunnelError::Dial {
        addr: host.to_string(),
        source,
    };
    match host {
        HostAddr::Vsock { cid, port } => {
            let mut s = VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .map_err(dial)?;
            let reply = exchange(&mut s, open).await?;
            Ok((HostStream::Vsock(s), reply))
        }
        HostAddr::Unix(path) => {
            let mut s = UnixStream::connect(path).await.map_err(dial)?;
            let reply = exchange(&mut s, open).await?;
            Ok((HostStream::Unix(s), reply))
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    open: &TunnelOpen,
) -> Result<TunnelReply, TunnelError> {
    write_message(stream, open).await?;
    Ok(read_message(stream).await?)
}

/// Carries bytes both ways until both directions are done: an end of stream on one side is
/// passed on as a half-close of the other, and a slow side slows the other (each direction
/// holds one buffer, never more).
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, host: &mut HostStream) {
    let result = match host {
        HostStream::Vsock(s) => {
            tokio::io::copy_bidirectional_with_sizes(client, s, COPY_BUFFER, COPY_BUFFER).await
        }
        HostStream::Unix(s) => {
            tokio::io::copy_bidirectional_with_sizes(client, s, COPY_BUFFER, COPY_BUFFER).await
        }
    };
    match result {
        Ok((up, down)) => debug!(up, down, "egress tunnel closed"),
        Err(e) => debug!(error = %e, "egress tunnel ended"),
    }
}
