//! `bench rpc`: the foundation's figures against the real static agent over a Unix socket.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::frame::FrameKind;
use protocol::messages::ExecRequest;

use super::{figure, stats::percentile};
use crate::shell::step;

const ROUND_TRIPS: usize = 5_000;
const STREAM_BYTES: u64 = 256 * 1024 * 1024;
/// Alternated rounds of the streaming measurement and its baseline.
const ROUNDS: usize = 5;

fn median(runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Streams [`STREAM_BYTES`] of a process's output through the agent's `exec`; MB/s.
async fn exec_stream_mb_s(client: &orchestrator::AgentClient) -> Result<f64> {
    let req = ExecRequest {
        argv: vec![
            "head".into(),
            "-c".into(),
            STREAM_BYTES.to_string(),
            "/dev/zero".into(),
        ],
        ..Default::default()
    };
    let t = Instant::now();
    let mut call = client.exec(&req).await?;
    call.close_input();
    let mut got = 0u64;
    while let Some(item) = call.next().await? {
        if let orchestrator::client::StreamItem::Data(FrameKind::Stdout, b) = item {
            got += b.len() as u64;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        got == STREAM_BYTES,
        "exec streamed {got} bytes, expected {STREAM_BYTES}"
    );
    Ok(STREAM_BYTES as f64 / 1e6 / secs)
}

fn rss_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "VmRSS:")
}

/// The process's anonymous memory (heap, stacks): what it really costs, as opposed to the pages of
/// its own binary that fault-around maps in and the kernel can drop at will.
fn anon_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "RssAnon:")
}

fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agents = crate::agent::build()?;
    let rt = crate::shell::runtime()?;
    rt.block_on(desktop_idle(&agents.desktop))?;
    rt.block_on(measure(&agents.cli))
}

/// The browser VM's agent idle on a real X display it has been given: it must not touch the
/// display (nor grow) until a viewer asks.
async fn desktop_idle(agent_bin: &Path) -> Result<()> {
    step("the browser VM's agent, idle with an X display (Xvfb)");
    let x = test_kit::desktop::xserver::Xvfb::start(1280, 720);
    let agent =
        test_kit::AgentProcess::launch(agent_bin, &[("DISPLAY", x.display.as_str())], false)
            .await?;
    anyhow::ensure!(
        agent.hello.capabilities.iter().any(|c| c == "desktop"),
        "the desktop agent with a display does not offer its desktop: {:?}",
        agent.hello.capabilities
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    figure("agent_desktop_idle_rss_kb", rss_kb(agent.pid())?);
    figure("agent_desktop_idle_anon_kb", anon_kb(agent.pid())?);
    Ok(())
}

async fn measure(agent_bin: &Path) -> Result<()> {
    step("the CLI VM's agent (no desktop), idle");
    let agent = super::start_agent(agent_bin).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    figure("agent_idle_rss_kb", rss_kb(agent.pid())?);
    figure("agent_idle_anon_kb", anon_kb(agent.pid())?);

    let client = agent.client().await;
    step(&format!("{ROUND_TRIPS} sequential health round trips"));
    for _ in 0..200 {
        client.health().await?;
    }
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        client.health().await?;
        samples.push(t.elapsed());
    }
    figure(
        "rpc_roundtrip_p50_us",
        percentile(&mut samples, 50.0).as_micros(),
    );
    figure(
        "rpc_roundtrip_p99_us",
        percentile(&mut samples, 99.0).as_micros(),
    );

    // Alternated rounds, median of each: the two-core machine's noise hits both the same way.
    let (mut exec_runs, mut raw_runs) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        step(&format!(
            "round {round}/{ROUNDS}: {} MiB of exec output through the agent, then the same into a plain Unix socket pair",
            STREAM_BYTES >> 20
        ));
        exec_runs.push(exec_stream_mb_s(&client).await?);
        raw_runs.push(tokio::task::spawn_blocking(raw_socket_pair_mb_s).await??);
    }
    let (exec_mb_s, raw_mb_s) = (median(&mut exec_runs), median(&mut raw_runs));
    figure("exec_stream_mb_s", format!("{exec_mb_s:.0}"));
    figure("raw_unix_stream_mb_s", format!("{raw_mb_s:.0}"));
    figure(
        "exec_stream_vs_raw_ratio",
        format!("{:.2}", exec_mb_s / raw_mb_s),
    );
    drop(agent);
    Ok(())
}

/// The same producer writing the same bytes straight into a plain Unix socket pair: what streaming
/// process output costs with no agent and no protocol in between.
fn raw_socket_pair_mb_s() -> Result<f64> {
    use std::io::Read;
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let t = Instant::now();
    let mut producer = Command::new("head")
        .args(["-c", &STREAM_BYTES.to_string(), "/dev/zero"])
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(a)))
        .spawn()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = b.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    producer.wait()?;
    anyhow::ensure!(got == STREAM_BYTES, "baseline got {got} bytes");
    Ok(STREAM_BYTES as f64 / 1e6 / t.elapsed().as_secs_f64())
}
