//! The agent's greeting, sent on a guest-initiated connection the moment the agent is up.
//!
//! The host waits on this instead of sleeping or polling: the agent dials the host (vsock CID 2,
//! port [`crate::DEFAULT_HELLO_PORT`]), writes one [`crate::frame::FrameKind::Message`] frame holding a
//! [`Hello`], and waits for one frame holding a [`HelloAck`]. It retries with backoff until acknowledged.

use serde::{Deserialize, Serialize};

/// Who the agent is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Agent build version (crate version).
    pub agent_version: String,
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
    /// Features this agent offers (`exec`, `files`, ...), so the host can refuse early.
    pub capabilities: Vec<String>,
    /// The guest kernel's boot id: changes on every boot and on every clone restored from a
    /// snapshot ([`crate::restore`]), tells a rebooted or cloned VM apart.
    pub boot_id: String,
    /// The guest's machine id (`/etc/machine-id`), made by the agent at boot and again for every
    /// clone restored from a snapshot. Empty from an agent that does not run as the VM's init.
    #[serde(default)]
    pub machine_id: String,
    /// Milliseconds from agent start to this hello, on the guest's clock.
    #[serde(default)]
    pub start_to_hello_ms: u64,
    /// Port the agent accepts host connections on, when it listens on vsock.
    #[serde(default)]
    pub listen_port: Option<u32>,
}

/// The host's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// Whether the host accepts this agent (protocol version compatible).
    pub accepted: bool,
    /// Why not, when refused.
    #[serde(default)]
    pub reason: Option<String>,
}
