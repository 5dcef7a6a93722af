//! `poweroff`: the host asks an agent running as the VM's init to stop everything and power the VM
//! off (a clean end instead of killing QEMU mid-write).

use serde::{Deserialize, Serialize};

use crate::messages::Empty;
use crate::method::{Method, Unary};

/// `poweroff`: stop every process, sync and power off. Refused (`forbidden`) by an agent that is not
/// the VM's init, e.g. one running on a developer's machine.
#[derive(Debug)]
pub struct Poweroff;
impl Method for Poweroff {
    const NAME: &'static str = "poweroff";
}
impl Unary for Poweroff {
    type Request = Empty;
    type Response = PoweroffResponse;
}

/// Answer to [`Poweroff`], sent before the VM goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoweroffResponse {
    /// Milliseconds after this answer at which the agent asks init to power off.
    pub after_ms: u64,
}
