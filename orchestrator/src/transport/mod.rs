//! Reaching an agent: three connectors behind one trait, and the hello listener.
//!
//! | connector | address | used with |
//! |---|---|---|
//! | [`VsockConnector`] | AF_VSOCK `(cid, port)` | QEMU with vhost-vsock, Cloud Hypervisor in kernel mode |
//! | [`HybridVsockConnector`] | Unix socket + `CONNECT <port>` | Firecracker, Cloud Hypervisor, `vhost-device-vsock` |
//! | [`UnixConnector`] | Unix socket | development and tests |

mod hello;
mod hybrid;
mod unix;
mod uri;
mod vsock;

use std::pin::Pin;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

pub use hello::HelloListener;
pub use hybrid::HybridVsockConnector;
pub use unix::UnixConnector;
pub use uri::{connector_from_uri, hello_listener_path, UriError};
pub use vsock::VsockConnector;

/// A byte stream to an agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// A connected stream, whatever the transport.
pub type AgentStream = Pin<Box<dyn AgentIo>>;

/// Opens byte streams to one agent.
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Opens a new stream to the agent.
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>>;
}

/// Why a stream could not be opened or a hello not received.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The OS refused (no such socket, connection refused, ...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hybrid-vsock handshake was answered with something other than `OK <port>`.
    #[error("hybrid vsock handshake failed: {0}")]
    Handshake(String),
    /// A vsock address that must never be dialled from a host.
    #[error(
        "refusing to connect to vsock CID {0}: CIDs 0-2 are the hypervisor and host, not a guest"
    )]
    ReservedCid(u32),
    /// Nothing happened in time.
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),
    /// The agent's hello was malformed or of an incompatible protocol.
    #[error("bad hello: {0}")]
    BadHello(String),
}

impl TransportError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io {
            what: what.into(),
            source,
        }
    }
}
