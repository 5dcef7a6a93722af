//! The agent's URL detector, provider rules and credential path confinement, compiled from the
//! agent's own source files (`vm-agent/src/detect`, `vm-agent/src/providers`,
//! `vm-agent/src/creds/confine.rs`) so the fuzz build needs only their few dependencies, not the
//! whole agent; the desktop's STUN and TURN code likewise ([`desktop`]). The protocol's decoders
//! are fuzzed through the `protocol` crate itself.

#[path = "../../vm-agent/src/providers/mod.rs"]
pub mod providers;

#[path = "../../vm-agent/src/detect/mod.rs"]
pub mod detect;

#[path = "../../vm-agent/src/creds/confine.rs"]
pub mod confine;

pub mod desktop;

pub mod input;

/// The built-in provider rules, compiled once per fuzzing process.
pub fn builtin_rules() -> std::sync::Arc<providers::ProviderRules> {
    static RULES: std::sync::OnceLock<std::sync::Arc<providers::ProviderRules>> =
        std::sync::OnceLock::new();
    RULES
        .get_or_init(|| std::sync::Arc::new(providers::ProviderRules::builtin()))
        .clone()
}
