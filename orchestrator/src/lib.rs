//! The orchestrator: a library the host service embeds to drive VM agents.
//!
//! - [`transport`]: how to reach an agent ([`transport::Connector`]: AF_VSOCK, hybrid vsock over a
//!   Unix socket, plain Unix socket) and how to hear its hello ([`transport::HelloListener`]).
//! - [`client`]: typed calls over one multiplexed HTTP/2 connection.
//! - [`login`]: login sessions end to end (browser VM, PTY login, capture, seal, push) over a
//!   [`vm::VmBackend`].
//! - [`vault`]: credential encryption at rest; [`store`]: durable state (SQLite or PostgreSQL);
//!   [`egress`]: per-user egress proxy ports.
//!
//! No global state, no printing: logs go through `tracing`, errors are typed.

pub mod client;
pub mod creds;
pub mod desktop;
pub mod egress;
pub mod login;
pub mod pty;
pub mod store;
pub mod transport;
pub mod vault;
pub mod vm;

pub use client::{AgentClient, ClientError};
pub use transport::{Connector, HelloListener, TransportError};
