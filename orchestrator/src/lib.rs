//! The orchestrator: a library the host service embeds to drive VM agents.
//!
//! - [`transport`]: how to reach an agent ([`transport::Connector`]: AF_VSOCK, hybrid vsock over a
//!   Unix socket, plain Unix socket) and how to hear its hello ([`transport::HelloListener`]).
//! - [`client`]: typed calls over one multiplexed HTTP/2 connection.
//!
//! No global state, no printing: logs go through `tracing`, errors are typed.

pub mod client;
pub mod creds;
pub mod pty;
pub mod transport;
pub mod vm;

pub use client::{AgentClient, ClientError};
pub use transport::{Connector, HelloListener, TransportError};
