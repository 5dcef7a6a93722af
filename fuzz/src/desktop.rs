//! The agent desktop's STUN and TURN code (`vm-agent/desktop/src/reflexive.rs`, `turn.rs` and
//! its codec), compiled from its own source files: the desktop crate itself would bring
//! OpenH264's C++ build and the WebRTC stack into the fuzz build.

#[path = "../../vm-agent/desktop/src/reflexive.rs"]
pub mod reflexive;

#[path = "../../vm-agent/desktop/src/turn.rs"]
pub mod turn;
