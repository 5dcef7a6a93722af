//! `cargo xtask demo`: the product's main flow with readable progress.
//!
//! Today it drives a real agent process over a Unix socket: wait for its hello, configure it, run a
//! process with the configured environment, push and read back a file. The VM issue moves this into
//! real microVMs over virtio-vsock.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use orchestrator::transport::UnixConnector;
use orchestrator::{AgentClient, HelloListener};
use protocol::messages::{ConfigureRequest, WriteFileRequest};
use protocol::secret::EnvVars;

use crate::shell::{cargo, sh, step};

/// Runs the demo.
pub fn run() -> Result<()> {
    crate::setup::run()?;
    step("building the agent");
    sh(cargo().args(["build", "--package", "vm-agent", "--bin", "vm-agent"]))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(flow())
}

async fn flow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("agent.sock");
    let hello = HelloListener::bind(dir.path().join("hello.sock"))?;
    let t0 = Instant::now();
    step("starting the agent (it dials us to say hello)");
    let mut child = Command::new(crate::shell::root().join("target/debug/vm-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--hello")
        .arg(format!("unix:{}", hello.path().display()))
        .env("AGENT_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()?;
    let result = async {
        let h = hello.wait(Duration::from_secs(30)).await?;
        step(&format!(
            "hello after {} ms: agent {} protocol {} capabilities {:?}",
            t0.elapsed().as_millis(),
            h.agent_version,
            h.protocol_version,
            h.capabilities
        ));
        let client = AgentClient::connect(&UnixConnector::new(&sock)).await?;
        let t = Instant::now();
        client
            .configure(&ConfigureRequest {
                env: EnvVars::from_pairs([("DEMO_GREETING", "hello from the host")]),
                session_id: Some("demo-session".into()),
                ..Default::default()
            })
            .await?;
        step(&format!(
            "configured the environment in {} µs",
            t.elapsed().as_micros()
        ));
        let t = Instant::now();
        let out = client
            .exec_collect(
                &["sh", "-c", "echo \"$DEMO_GREETING ($AGENT_SESSION_ID)\""],
                None,
            )
            .await?;
        step(&format!(
            "exec in {} ms -> {:?}, exit {}",
            t.elapsed().as_millis(),
            String::from_utf8_lossy(&out.stdout).trim(),
            out.status.shell_code()
        ));
        let path = dir.path().join("pushed.json");
        client
            .write_file(&WriteFileRequest {
                path: path.display().to_string(),
                content: br#"{"demo":true}"#.to_vec(),
                mode: Some(0o600),
                create_dirs: false,
            })
            .await?;
        let back = client.read_file(&path.display().to_string()).await?;
        step(&format!(
            "pushed a file and read it back: {} bytes, mode {:o}",
            back.content.len(),
            back.mode
        ));
        let stats = client.stats().await?;
        step(&format!(
            "summary: total {} ms, agent RSS {} KiB",
            t0.elapsed().as_millis(),
            stats.agent_rss_kb
        ));
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
