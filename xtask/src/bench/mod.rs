//! `cargo xtask bench <name>`: figures as `name=value` lines on stdout, progress on stderr.
//! Timings are compared with a baseline measured in the same run wherever one exists.

mod boot;
mod creds;
mod desktop;
mod detect;
mod egress;
mod egress_tunnel;
mod hostile;
mod images;
mod login;
mod rpc;
mod seal;
mod service;
mod snapshot;
pub mod stats;
mod vault;

use anyhow::Result;
use clap::Subcommand;

use crate::shell::{cargo, sh, step};

/// The benchmarks.
#[derive(Subcommand)]
pub enum Which {
    /// Credential capture latency (vs a 2 s poller) and push latency (vs plain write_file).
    Creds,
    /// Desktop over WebRTC: glass-to-glass latency, encode time, sustained fps, agent CPU.
    Desktop,
    /// Login-URL detection latency over a PTY and PTY throughput vs a raw PTY read.
    Detect,
    /// Round trip latency, exec streaming throughput vs a raw Unix socket, agent idle RSS.
    Rpc,
    /// Real microVMs: QEMU launch to hello, agent start to hello (guest clock), guest agent RSS,
    /// destroy time; with the accelerator that ran.
    Boot,
    /// The whole login flow against local agents with a fake CLI, vs starting one local VM.
    Login,
    /// Egress port assignment: SQLite, and two orchestrators racing on PostgreSQL.
    Egress,
    /// The egress path (agent proxy, vsock tunnel, gateway, squid) vs squid directly: download
    /// MB/s, CONNECT latency, tunnels held at once.
    EgressTunnel,
    /// Sealing and opening a 4 KiB credential.
    Vault,
    /// A hostile guest: URL floods against the orchestrator (its peak memory), a CLI VM that
    /// never answers a push (another user's push meanwhile), hostile requests against the agent.
    Hostile,
    /// Zero-knowledge credentials: HPKE sealing and opening of a 4 KiB credential vs bare
    /// AES-256-GCM, and a refresh in the CLI VM to its sealed version in the store (local agents).
    Seal,
    /// The host service over HTTP (local agents): link start to URL, API requests per second vs
    /// a hello route, a prompt's first byte, SSE event latency.
    Service,
    /// Golden snapshots: browser VMs restored to Chromium ready vs cold boots, four restores at
    /// once, the snapshot's size, a paused CLI VM's resume to hello.
    Snapshot,
    /// The golden images: sizes, cold build time, boot times of the minimal, CLI and browser
    /// VMs, a real CLI's URL to Chromium's tab.
    Images,
}

/// Runs one benchmark, always from an optimized build: `cargo xtask` runs a debug build, in which the
/// host side of every benchmark (client, vault, store) would be measured unoptimized — generic code
/// such as AES-GCM is instantiated in our own crates, which the dev profile leaves at opt-level 0.
pub fn run(which: Which) -> Result<()> {
    if cfg!(debug_assertions) {
        step("re-running the benchmark from an optimized (release) build of xtask");
        let args: Vec<String> = std::env::args().skip(1).collect();
        return sh(cargo()
            .args(["run", "--release", "--package", "xtask", "--"])
            .args(args));
    }
    match which {
        Which::Creds => creds::run(),
        Which::Desktop => desktop::run(),
        Which::Detect => detect::run(),
        Which::Rpc => rpc::run(),
        Which::Boot => boot::run(),
        Which::Egress => egress::run(),
        Which::EgressTunnel => egress_tunnel::run(),
        Which::Login => login::run(),
        Which::Vault => vault::run(),
        Which::Hostile => hostile::run(),
        Which::Seal => seal::run(),
        Which::Service => service::run(),
        Which::Images => images::run(),
        Which::Snapshot => snapshot::run(),
    }
}

/// `fake-cli` built in release (replays recorded CLI logins, answers prompts): the benches' CLIs.
pub fn release_fake_cli() -> Result<std::path::PathBuf> {
    step("building fake-cli (replays recorded CLI logins, answers prompts)");
    sh(cargo().args(["build", "--release", "-p", "test-kit", "--bin", "fake-cli"]))?;
    Ok(crate::shell::root().join("target/release/fake-cli"))
}

/// Starts `agent_bin` on a Unix socket in a private directory (its HOME is `home/` there) and
/// waits for its hello, as the host starts a VM's agent.
pub async fn start_agent(agent_bin: &std::path::Path) -> Result<test_kit::AgentProcess> {
    step("starting the static agent on a Unix socket");
    Ok(test_kit::AgentProcess::launch(agent_bin, &[], false).await?)
}

/// Prints one figure line.
pub fn figure(name: &str, value: impl std::fmt::Display) {
    println!("{name}={value}");
}
