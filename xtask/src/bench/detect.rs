//! `bench detect`: URL detection latency and PTY throughput against the real static agent over a
//! Unix socket.
//!
//! - `detect_latency_p50_us` / `_p99_us`: a program on the agent's PTY writes a login URL carrying its
//!   own wall-clock timestamp (taken just before it writes) -> the `url` event reaches the client;
//! - `pty_throughput_mb_s`: output of a program on the agent's PTY, streamed to the client (through
//!   the screen model and detector), and `pty_throughput_vs_raw_ratio` against the same bytes read
//!   straight from a PTY in this process, in the same run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use orchestrator::client::StreamItem;
use portable_pty::{CommandBuilder, PtySize};
use protocol::frame::FrameKind;
use protocol::pty::{PtyEvent, PtyRequest, PtySpawn};

use super::{figure, stats::percentile};
use crate::shell::step;

/// URLs measured.
const SAMPLES: usize = 300;
/// Bytes streamed for throughput.
const FLOOD_BYTES: u64 = 64 * 1024 * 1024;
/// The flood: realistic terminal text lines.
const FLOOD: &str = "yes 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt' | head -c ";

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let rt = crate::shell::runtime()?;
    let raw = raw_pty_throughput()?;
    rt.block_on(measure(&agent_bin, raw))
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Bytes per second of the flood read straight from a PTY master.
fn raw_pty_throughput() -> Result<f64> {
    step("baseline: the flood read straight from a PTY");
    let pair = portable_pty::native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: 100,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("openpty: {e}"))?;
    let mut cmd = CommandBuilder::new("sh");
    cmd.args(["-c", &format!("{FLOOD}{FLOOD_BYTES}")]);
    let t0 = Instant::now();
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("spawn: {e}"))?;
    drop(pair.slave);
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("reader: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = child.wait();
    if total < FLOOD_BYTES {
        bail!("raw pty read only {total} bytes");
    }
    Ok(total as f64 / secs)
}

async fn measure(agent_bin: &Path, raw_bytes_per_s: f64) -> Result<()> {
    let agent = super::start_agent(agent_bin).await?;
    let _home: PathBuf = agent.home();
    let client = agent.client().await;

    step(&format!(
        "{SAMPLES} login URLs: written by the program -> url event at the client"
    ));
    let script = "while read -r x; do t=$(date +%s%N); printf '\\033[38;5;147mhttps://auth.openai.com/oauth/authorize?response_type=code&client_id=app_bench&code_challenge=c&state=%s\\033[39m\\r\\n' \"$t\"; done";
    let mut spawn = PtySpawn::new(["sh", "-c", script]);
    spawn.cols = 100;
    spawn.rows = 30;
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await?;
    let mut latencies = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        call.send(FrameKind::Stdin, Bytes::from_static(b"go\n"))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), call.next())
                .await
                .context("no url event within 10 s")??
            {
                Some(StreamItem::Event(PtyEvent::Url { url, .. })) => {
                    let received = now_ns();
                    let written: u128 = url
                        .rsplit_once("state=")
                        .and_then(|(_, t)| t.parse().ok())
                        .context("url without timestamp")?;
                    latencies.push(Duration::from_nanos(
                        u64::try_from(received.saturating_sub(written)).unwrap_or(u64::MAX),
                    ));
                    break;
                }
                Some(_) => {}
                None => bail!("pty call ended early"),
            }
        }
    }
    drop(call);

    step(&format!(
        "throughput: {} MiB of terminal text through the agent's PTY",
        FLOOD_BYTES >> 20
    ));
    let mut spawn = PtySpawn::new(["sh", "-c", &format!("{FLOOD}{FLOOD_BYTES}")]);
    spawn.cols = 100;
    spawn.rows = 30;
    let t0 = Instant::now();
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await?;
    let mut total = 0u64;
    while let Some(item) = call.next().await? {
        match item {
            StreamItem::Data(FrameKind::Stdout, b) => total += b.len() as u64,
            StreamItem::Event(PtyEvent::Exited(_)) => break,
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if total < FLOOD_BYTES {
        bail!("agent pty streamed only {total} bytes");
    }
    let agent_bytes_per_s = total as f64 / secs;

    figure(
        "detect_latency_p50_us",
        percentile(&mut latencies, 50.0).as_micros(),
    );
    figure(
        "detect_latency_p99_us",
        percentile(&mut latencies, 99.0).as_micros(),
    );
    figure(
        "pty_throughput_mb_s",
        format!("{:.1}", agent_bytes_per_s / 1e6),
    );
    figure(
        "pty_raw_throughput_mb_s",
        format!("{:.1}", raw_bytes_per_s / 1e6),
    );
    figure(
        "pty_throughput_vs_raw_ratio",
        format!("{:.2}", agent_bytes_per_s / raw_bytes_per_s),
    );
    Ok(())
}
