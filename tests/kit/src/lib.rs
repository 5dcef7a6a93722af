//! The test kit: what the integration tests (`tests/tests`) and xtask's benchmarks share.
//!
//! - [`agent`]: the real `vm-agent` binary as a local process on a Unix socket, started the way
//!   the host starts a VM's agent (bind the hello listener, start it, wait for its hello);
//! - [`local_backend`]: a [`orchestrator::vm::VmBackend`] whose "VMs" are such agents, each with
//!   its own HOME (the login flow without a hypervisor);
//! - [`vm`]: real microVMs from the images `cargo xtask image` builds;
//! - [`fake_clis`]: the provider CLIs faked by replaying recorded real logins (the `fake-cli`
//!   binary of this crate), writing credentials where the provider rules say;
//! - [`desktop`]: Xvfb, headless Chromium, the signalling relay, a browserless viewer, coturn;
//! - [`postgres`]: a throwaway loopback-only PostgreSQL cluster;
//! - [`egress`]: squid as the users' upstream proxy and an HTTPS origin standing in for a provider;
//! - [`provider_clis`]: the real CLIs from npm (pinned, or the newest), and [`provider_check`]:
//!   their logins through the agent checked against an independent reading;
//! - [`login`], [`ports`]: small shared set-ups.
//!
//! Test support panics with the reason when its set-up fails: that is the test's failure report.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod agent;
pub mod browser_vm;
pub mod credentials;
pub mod desktop;
pub mod egress;
pub mod fake_clis;
pub mod hostile;
pub mod local_backend;
pub mod login;
pub mod playwright;
pub mod ports;
pub mod postgres;
pub mod provider_check;
pub mod provider_clis;
pub mod service;
pub mod tap;
pub mod vm;

pub use agent::{process_alive, stop_agent, workspace_bin, AgentProcess};

/// The machine-wide cache of what is slow to make and keyed by its inputs (VM images, kernels,
/// the real CLIs, installed tools): `$XDG_CACHE_HOME/vm-agent` or `~/.cache/vm-agent`. A fresh
/// clone on the same machine reuses it; a fresh machine fills it.
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vm-agent")
}
