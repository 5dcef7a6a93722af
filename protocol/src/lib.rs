//! Wire protocol between the host orchestrator and the in-VM agent.
//!
//! The transport is one byte stream per connection (virtio-vsock, hybrid vsock over a Unix socket,
//! or a plain Unix socket in tests) carrying **HTTP/2**. HTTP/2 gives us what a home-made framing would
//! have to prove: many concurrent exchanges on one connection and per-stream flow control, so a PTY
//! flood cannot delay a control message.
//!
//! On top of HTTP/2 every call is `POST /v1/<method>` with the header [`PROTOCOL_HEADER`]:
//! - *unary* calls carry one JSON request body and get one JSON response body;
//! - *streaming* calls (exec, event streams) carry a sequence of [`frame::Frame`]s in the request
//!   and/or response body.
//!
//! Errors are an HTTP status plus an [`ErrorBody`]. Unknown JSON fields are ignored (forward
//! compatibility); an unknown method is [`ErrorCode::UnknownMethod`]; a different protocol major version
//! is [`ErrorCode::VersionMismatch`]; a body or frame over the size limit is [`ErrorCode::TooLarge`] and
//! is refused before it is read into memory. None of these close the connection.
//!
//! This crate has no I/O policy and no runtime: both ends share it.

pub mod body;
pub mod browser;
pub mod creds;
pub mod desktop;
pub mod egress;
pub mod error;
pub mod frame;
pub mod hello;
pub mod http2;
pub mod messages;
pub mod method;
pub mod power;
pub mod providers;
pub mod pty;
pub mod restore;
pub mod sealed;
pub mod secret;
pub mod shim;

pub use error::{ErrorBody, ErrorCode};
pub use hello::{Hello, HelloAck};
pub use method::{Method, Streaming, Unary};
pub use secret::Secret;

/// Protocol version spoken by this build. A peer with a different version is refused with
/// [`ErrorCode::VersionMismatch`]; fields added in a compatible way do not bump it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The built-in provider rules (TOML): login command, URL patterns, auto-responses, seed files and
/// credential paths of each CLI. One file for both ends, so the agent's detection and capture and the
/// orchestrator's login recipes cannot drift apart; [`providers`] is its shape.
pub use providers::PROVIDER_RULES_TOML;

/// Request header carrying the caller's [`PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "x-agent-protocol";

/// Default guest port the agent listens on.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// Default host port the agent dials to say hello.
pub const DEFAULT_HELLO_PORT: u32 = 1025;

/// Largest unary request or response body either end accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
