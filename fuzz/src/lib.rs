//! The agent's URL detector and provider rules, compiled from the agent's own source files
//! (`vm-agent/src/detect`, `vm-agent/src/providers`) so the fuzz build needs only their few
//! dependencies, not the whole agent.

#[path = "../../vm-agent/src/providers/mod.rs"]
pub mod providers;

#[path = "../../vm-agent/src/detect/mod.rs"]
pub mod detect;

pub mod input;
