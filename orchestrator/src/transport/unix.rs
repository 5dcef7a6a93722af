//! Plain Unix socket connector (the agent's `--listen unix:/path`).

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tokio::net::UnixStream;

use super::{AgentStream, Connector, TransportError};

/// Connects to an agent listening on a Unix socket.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: PathBuf,
}

impl UnixConnector {
    /// A connector for the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Connector for UnixConnector {
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>> {
        Box::pin(async move {
            let stream = UnixStream::connect(&self.path).await.map_err(|e| {
                TransportError::io(format!("connect unix:{}", self.path.display()), e)
            })?;
            Ok(Box::pin(stream) as AgentStream)
        })
    }
}
